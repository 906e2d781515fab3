"""Phantom cases: build a phantom by kind and write it into a case folder (what the CLI calls).

The dispatcher on top of the phantom modules: :func:`make_phantom_case` picks the anatomy
(:mod:`~orthonav.phantoms.knee`, :mod:`~orthonav.phantoms.hip`,
:mod:`~orthonav.phantoms.long_bone`, all built by :mod:`~orthonav.phantoms.recipe` on the
:mod:`~orthonav.phantoms.render` engine) and :func:`write_phantom_case` writes the CT, the
truth and the printable model (:mod:`~orthonav.phantoms.printable`; the CT of the printed
model: :mod:`~orthonav.phantoms.printed_ct`).
"""

from __future__ import annotations

from pathlib import Path

from orthonav.core.case import Case, write_labels_table
from orthonav.core.errors import InputError
from orthonav.core.meshio import write_mesh
from orthonav.core.schema import save_model
from orthonav.core.volume import write_volume

from .hip import make_hip_phantom
from .knee import make_knee_phantom
from .long_bone import make_long_bone_phantom
from .printable import make_printable
from .printed_ct import write_printed_case
from .render import SyntheticPhantom
from .truth import write_truth

#: Phantom kind (as the CLI spells it) -> factory.
PHANTOM_FACTORIES = {
    "knee": make_knee_phantom,
    "hip": make_hip_phantom,
    "long-bone": make_long_bone_phantom,
    "long_bone": make_long_bone_phantom,
}


def write_phantom_case(phantom: SyntheticPhantom, case_dir: str | Path, *, printable: bool = True) -> Case:
    """Write a phantom into a case folder (every write atomic).

    Writes ``ct.nii.gz`` (int16 HU), ``truth/labels.nii.gz``, ``truth/labels.json``,
    ``truth/meshes/<bone>.stl`` (LPS mm, outward normals), ``truth/truth.json`` and, with
    ``printable``, ``print/phantom_<kind>.stl`` + ``print/phantom_<kind>.json`` (the printable
    model in its print-bed frame; the JSON holds the divots and ``ct_from_phantom``).
    """
    case = Case(case_dir)
    case.root.mkdir(parents=True, exist_ok=True)
    write_volume(phantom.ct, case.ct)
    write_volume(phantom.labels, case.truth_dir / "labels.nii.gz")
    write_labels_table(case.truth_dir / "labels.json", phantom.label_table)
    for name, mesh in phantom.truth_meshes.items():
        write_mesh(mesh, case.truth_dir / "meshes" / f"{name}.stl")
    write_truth(case.root, phantom.truth)
    if printable:
        kind = phantom.truth.kind
        if kind in ("knee", "hip", "long_bone"):
            printed = make_printable(phantom)
            write_mesh(printed.mesh, case.print_dir / f"phantom_{kind}.stl")
            save_model(case.print_dir / f"phantom_{kind}.json", printed.spec)
        elif phantom.print_mesh is not None:
            write_mesh(phantom.print_mesh, case.print_dir / f"phantom_{kind}.stl")
    return case


def make_phantom_case(
    kind: str, case_dir: str | Path, *, seed: int = 0, small: bool = False, printed: bool = False, **knobs: object
) -> Case:
    """Build the phantom ``kind`` ('knee', 'hip', 'long-bone' or 'long_bone') and write it into
    ``case_dir`` (what the CLI calls).

    With ``printed``, the case's CT is the CT of the printable model (print material in air,
    :func:`orthonav.phantoms.printed_ct.write_printed_case`) instead of the synthetic patient CT.
    """
    factory = PHANTOM_FACTORIES.get(kind)
    if factory is None:
        raise InputError(None, f"unknown phantom kind {kind!r}; available: knee, hip, long-bone")
    phantom = factory(seed=seed, small=small, **knobs)
    if printed:
        return write_printed_case(phantom, case_dir, seed=seed)
    return write_phantom_case(phantom, case_dir)


__all__ = ["PHANTOM_FACTORIES", "make_phantom_case", "write_phantom_case"]
