"""Patient-specific cutting guides: printable, watertight blocks that sit on the anterior bone
surface with a saw slot at the planned cut.

Construction (in the cut frame: z = cut normal, pointing into the removed bone; y = anterior;
x = y x z), all exact manifold booleans (manifold3d):

1. a block spanning the cut level in front of the anterior cortex, reaching ``depth_mm``
   into the bone;
2. minus the bone grown by ``clearance_mm`` (vertices moved along their normals), so the
   back face is the negative of the bone surface with a printing clearance;
3. minus a saw slot (``slot_mm`` thick, centred on the cut plane, open anteriorly, narrower
   than the block so the two halves stay joined at the sides);
4. minus two pin holes (``pin_diameter_mm``) along -y below the cut (in the kept bone).

The result is checked to be a closed 2-manifold before it is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import manifold3d as mf
import numpy as np
import pyvista as pv
from numpy.typing import NDArray
from orthonav.core.case import Case
from orthonav.core.errors import InputError
from orthonav.core.meshio import write_mesh
from orthonav.core.transforms import invert

from .meshops import frame_from_plane, to_manifold, to_polydata, transform
from .query import frames
from .schema import CutPlane, Plan, load_plan, require
from .tka.plan import load_knee_meshes


#: The cuts a guide is made for (distal femoral, proximal tibial).
GUIDE_CUTS = ("distal_femur", "proximal_tibia")


@dataclass(frozen=True)
class GuideSpec:
    """Guide dimensions (mm)."""

    width_mm: float = 44.0  # along x
    height_mm: float = 30.0  # along z, centred on the cut
    thickness_mm: float = 10.0  # in front of the most anterior bone point
    depth_mm: float = 12.0  # how far the block reaches back before the bone is subtracted
    slot_mm: float = 1.4  # blade 1.27 mm + clearance
    slot_width_mm: float = 36.0
    clearance_mm: float = 0.3
    pin_diameter_mm: float = 3.2


@dataclass(frozen=True)
class Guide:
    """A generated guide: the solid (CT LPS mm) and where its slot is."""

    bone: str
    solid: mf.Manifold
    ct_from_cut: NDArray[np.float64]
    spec: GuideSpec

    def mesh(self) -> pv.PolyData:
        return to_polydata(self.solid)


def _grown(bone: mf.Manifold, clearance_mm: float) -> mf.Manifold:
    """The bone surface moved outwards by ``clearance_mm`` along the vertex normals."""
    if clearance_mm <= 0:
        return bone
    # Short edges first, so vertex normals are those of the surface (not of long facets).
    pd = to_polydata(bone.refine_to_length(1.0)).compute_normals(point_normals=True, cell_normals=False, auto_orient_normals=True, consistent_normals=True, split_vertices=False)
    pts = np.asarray(pd.points) + clearance_mm * np.asarray(pd.point_data["Normals"])
    grown = pv.PolyData(pts, pd.faces)
    try:
        return to_manifold(grown, name="bone grown by the clearance")
    except InputError as e:
        raise InputError(None, f"cannot add a {clearance_mm} mm clearance to the bone surface ({e.problem}); smooth the mesh or reduce the clearance") from e


def make_cutting_guide(bone_mesh: pv.PolyData, cut: CutPlane, anterior_lps: NDArray[np.float64], *, spec: GuideSpec = GuideSpec(), bone_solid: mf.Manifold | None = None) -> Guide:
    """A cutting guide for ``cut`` on the anterior surface of ``bone_mesh``.

    Parameters
    ----------
    bone_mesh
        The closed bone surface (LPS mm).
    cut
        The planned cut (``normal_lps`` points into the removed bone).
    anterior_lps
        The bone's anterior direction (made perpendicular to the cut normal).
    """
    z = np.asarray(cut.normal_lps, dtype=float)
    a = np.asarray(anterior_lps, dtype=float)
    a = a - np.dot(a, z) * z
    if np.linalg.norm(a) < 1e-6:
        raise InputError(None, "the anterior direction is parallel to the cut normal")
    x_hint = np.cross(a, z)
    ct_from_cut = frame_from_plane(np.asarray(cut.point_lps_mm, dtype=float), z, x_hint)
    # frame_from_plane gives y = z x x = anterior
    solid = bone_solid if bone_solid is not None else to_manifold(bone_mesh, name=f"{cut.bone} mesh")
    bone_c = transform(solid, invert(ct_from_cut))
    w, h = spec.width_mm / 2.0, spec.height_mm / 2.0
    # Local bone: the region of interest only (keeps the booleans small and fast).
    roi = mf.Manifold.cube([2 * w + 20.0, 400.0, 2 * h + 20.0]).translate([-w - 10.0, -200.0, -h - 10.0])
    local = bone_c ^ roi
    if local.is_empty():
        raise InputError(None, f"the {cut.bone} cut plane does not meet the bone")
    v = np.asarray(local.to_mesh().vert_properties)[:, :3]
    front = v[(np.abs(v[:, 0]) < w) & (np.abs(v[:, 2]) < h)]
    if len(front) == 0:
        raise InputError(None, f"no {cut.bone} surface under the guide footprint")
    y_front = float(front[:, 1].max())
    block = mf.Manifold.cube([2 * w, spec.depth_mm + spec.thickness_mm, 2 * h]).translate([-w, y_front - spec.depth_mm, -h])
    guide = block - _grown(local, spec.clearance_mm)
    slot = mf.Manifold.cube([spec.slot_width_mm, spec.depth_mm + spec.thickness_mm + 10.0, spec.slot_mm]).translate(
        [-spec.slot_width_mm / 2.0, y_front - spec.depth_mm - 5.0, -spec.slot_mm / 2.0]
    )
    guide = guide - slot
    r = spec.pin_diameter_mm / 2.0
    for px in (-0.3 * spec.width_mm, 0.3 * spec.width_mm):
        pin = mf.Manifold.cylinder(spec.depth_mm + spec.thickness_mm + 10.0, r, r, 24)
        # cylinder along +z -> along -y (into the bone), placed in the kept half (z < 0)
        pin = pin.transform([[1.0, 0.0, 0.0, px], [0.0, 0.0, -1.0, y_front + spec.thickness_mm + 5.0], [0.0, 1.0, 0.0, -0.6 * h]])
        guide = guide - pin
    pieces = guide.decompose()
    if len(pieces) > 1:  # keep the guide body; drop slivers trapped by the bone's shape
        guide = max(pieces, key=lambda p: p.volume())
    if guide.status() != mf.Error.NoError or guide.is_empty():
        raise InputError(None, f"{cut.bone} guide could not be built ({guide.status().name})")
    return Guide(cut.bone, transform(guide, ct_from_cut), ct_from_cut, spec)


def write_guides(case_dir: str | Path, plan: Plan | None = None, *, spec: GuideSpec = GuideSpec()) -> dict[str, Path]:
    """Build and write ``CASE/guides/<bone>_guide.stl`` for the distal femoral and proximal
    tibial cuts of ``plan`` (default: ``CASE/plan.json``).

    Raises
    ------
    SchemaError
        The plan has no landmarks or neither of those cuts (e.g. a hip plan): nothing to write.
    InputError
        A cut's bone has no anterior direction in the plan (landmarks missing), or no mesh.
    """
    case = Case(case_dir)
    if plan is None:
        plan = load_plan(case.require(case.plan, "orthonav plan CASE --auto"))
    require(plan, case.plan, stage="cutting guides (knee plans only)", landmarks=True, cuts=GUIDE_CUTS)
    meshes = load_knee_meshes(case.root)
    fr = frames(plan)
    out: dict[str, Path] = {}
    for key, anterior in zip(GUIDE_CUTS, (fr.femur_anterior, fr.tibia_anterior)):
        if key not in plan.cuts:
            continue
        cut = plan.cuts[key]
        if anterior is None:
            raise InputError(case.plan, f"the plan's landmarks give no anterior direction of the {cut.bone}, which the "
                                        f"{key.replace('_', ' ')} guide needs; re-run `orthonav plan CASE --auto`")
        g = make_cutting_guide(meshes[cut.bone], cut, anterior, spec=spec)
        out[cut.bone] = write_mesh(g.mesh(), case.guides_dir / f"{cut.bone}_guide.stl")
    return out


__all__ = ["GUIDE_CUTS", "Guide", "GuideSpec", "make_cutting_guide", "write_guides"]
