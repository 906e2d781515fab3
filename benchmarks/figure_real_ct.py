"""Render docs/img/real_ct_meshes.png: classical segmentation of the two shared real CTs.

Left: ``ct_thorax_small`` (3 mm), our bones in colour over the reference label map's bone
(vertebrae and ribs) as a white wireframe, with the bone-mask Dice. Right: ``ct_abdomen_dicom``
(20 slices), our bones in colour with their names. Anterior views, patient left on the right.

    python benchmarks/figure_real_ct.py [--out docs/img/real_ct_meshes.png]

Needs ``../shared/data`` (the product never does).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyvista as pv
import vtk

from orthonav.core.case import LabelTable
from orthonav.core.volume import Volume, read_volume
from orthonav.segmentation.classical import segment_classical
from orthonav.segmentation.importer import read_dicom_ct
from orthonav.segmentation.meshing import label_meshes

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _panel(plotter: pv.Plotter, meshes: dict[str, pv.PolyData], title: str, reference: pv.PolyData | None = None) -> None:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    colours = [tuple(cmap(i % 20)[:3]) for i in range(len(meshes))]
    for i, (name, mesh) in enumerate(meshes.items()):
        plotter.add_mesh(mesh, color=colours[i % len(colours)], smooth_shading=True)
        plotter.add_point_labels([mesh.center], [name], font_size=10, shape_opacity=0.6, always_visible=True, show_points=False)
    if reference is not None:
        plotter.add_mesh(reference, style="wireframe", color="white", opacity=0.5, line_width=1)
    plotter.add_text(title, font_size=9, position="upper_left")
    plotter.set_background("white")
    # Anterior view in LPS: looking from -y (anterior) towards +y, head (+z) up; patient
    # left (+x) then appears on the viewer's right.
    plotter.view_vector((0.0, -1.0, 0.0), viewup=(0.0, 0.0, 1.0))
    plotter.reset_camera()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img" / "real_ct_meshes.png")
    args = ap.parse_args()
    vtk.vtkSMPTools.SetBackend("STDThread")
    pv.global_theme.multi_samples = 0

    folder = DATA / "ct_thorax_small"
    ct = read_volume(folder / "example_ct_sm.nii.gz")
    ref = read_volume(folder / "example_seg.nii.gz").array_zyx
    names = {int(k): v for k, v in json.loads((folder / "labels_total_v2.json").read_text()).items()}
    truth = np.isin(ref, [v for v, n in names.items() if n.startswith(("vertebrae_", "rib_"))])
    seg = segment_classical(ct)
    ours = seg.labels.array_zyx > 0
    dice = 2.0 * float((ours & truth).sum()) / float(ours.sum() + truth.sum())
    thorax = label_meshes(seg.labels, seg.table)
    reference = label_meshes(Volume(truth.astype(np.uint8), ct.lps_from_ijk), LabelTable(labels={1: "reference"}))["reference"]

    abdomen_ct = read_dicom_ct(DATA / "ct_abdomen_dicom")
    seg_a = segment_classical(abdomen_ct)
    abdomen = label_meshes(seg_a.labels, seg_a.table)

    p = pv.Plotter(shape=(1, 2), off_screen=True, window_size=(1800, 900), border=True)
    p.subplot(0, 0)
    sp = ct.spacing_mm
    _panel(p, thorax, f"ct_thorax_small ({sp[0]:.0f} mm): ours (colours), TotalSegmentator reference (white wireframe)\n"
           f"bone-mask Dice {dice:.3f}; anterior view, patient left on the right", reference)
    p.subplot(0, 1)
    sa = abdomen_ct.spacing_mm
    _panel(p, abdomen, f"ct_abdomen_dicom ({sa[0]:.2f} x {sa[1]:.2f} x {sa[2]:.0f} mm, contrast): ours; anterior view")
    p.render()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    p.screenshot(str(args.out))
    p.close()
    print(f"wrote {args.out}: thorax Dice {dice:.3f}; abdomen bones {', '.join(abdomen)}")


if __name__ == "__main__":
    main()
