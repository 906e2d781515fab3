"""A tiny synthetic right knee (four capsule/ellipsoid bones) for fast segmentation tests.

Built with the phantom engine's own renderer (``orthonav.phantoms.synthetic.render_ct``:
partial volume, PSF blur, noise, beads) so the tests see the same image physics as the full
knee phantom, on a grid small enough for unit tests (~0.4 M voxels), anisotropic and with a
non-identity direction matrix. Joint gaps: femur-tibia 5 mm, patella-femur 3.5 mm,
tibia-fibula 1.8 mm.

A plain helper module (no tests): ``test_seg_synth.py`` checks what it builds, and the
session fixtures ``mini_knee_phantom`` / ``mini_knee_seg`` in ``conftest.py`` share the
default build between the ``test_seg*`` / ``test_mesh*`` files. Tests needing another grid
call :func:`mini_knee` with their own arguments (cached per argument set).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from orthonav.core.case import LabelTable
from orthonav.core.transforms import apply, invert, make_rigid, rotation_about_axis
from orthonav.core.volume import Volume
from orthonav.phantoms import sdf as S
from orthonav.phantoms.render import BoneSpec, fit_grid, render_ct

# Limb frame of a right leg: x medial (LPS +x, patient left), y posterior, z superior.
_FEMUR = S.capsule([0.0, 0.0, 12.5], [0.0, 0.0, 60.0], 11.0)  # lowest point z = 1.5
_TIBIA = S.capsule([0.0, 0.0, -60.0], [0.0, 0.0, -14.5], 11.0)  # highest point z = -3.5 -> gap 5.0
_FIBULA = S.capsule([-18.8, 0.0, -55.0], [-18.8, 0.0, -20.0], 6.0)  # gap to tibia 18.8 - 17 = 1.8
_PATELLA = S.ellipsoid([0.0, -22.5, 14.0], [7.0, 4.0, 8.0])  # front of femur at y=-11 -> gap 3.5

#: bone name -> (truth label value, signed distance function of limb-frame points in mm).
BONES = {"femur": (1, _FEMUR), "tibia": (2, _TIBIA), "fibula": (3, _FIBULA), "patella": (4, _PATELLA)}
#: bone name -> limb-frame box (mm, [[min], [max]]) holding the bone, for rendering.
BOUNDS = {
    "femur": np.array([[-12, -12, 0], [12, 12, 72]], float),
    "tibia": np.array([[-12, -12, -72], [12, 12, -2]], float),
    "fibula": np.array([[-26, -7, -62], [-12, 7, -13]], float),
    "patella": np.array([[-8, -27, 5], [8, -18, 23]], float),
}
#: centres (limb frame, mm) of the two fiducial beads, on the femur and tibia surfaces.
BEADS_LIMB = np.array([[0.0, 11.0 + 1.0, 40.0], [11.0 + 1.0, 0.0, -40.0]])  # on femur and tibia surfaces


@dataclass(frozen=True)
class MiniKnee:
    """The mini knee's CT (HU), truth label map (values of :data:`BONES`), label table and pose.

    ``ct_from_limb`` maps limb-frame mm (x medial, y posterior, z superior) to CT LPS mm.
    Shared between tests: read it, never write into its arrays.
    """

    ct: Volume
    labels: Volume
    table: LabelTable
    ct_from_limb: np.ndarray

    def signed_distance_mm(self, bone: str, points_lps: np.ndarray) -> np.ndarray:
        """Signed distance (mm, negative inside) of LPS points to the true surface of ``bone``."""
        p_limb = apply(invert(self.ct_from_limb), np.asarray(points_lps, float).reshape(-1, 3))
        return S.normalized(BONES[bone][1], p_limb)


def scene(spacing: tuple[float, float, float] = (0.7, 0.8, 1.1), beads: bool = True) -> tuple:
    """The mini knee's rendering inputs: (grid, ct_from_limb, bone specs, envelope SDF, bead
    centres (limb mm), bead radius mm). Direction: a 20 degree oblique grid; limb rotated 7 degrees."""
    ct_from_limb = make_rigid(rotation_about_axis([0.3, 1.0, 0.2], np.radians(7.0)), [12.0, -30.0, 850.0])
    direction = rotation_about_axis([1.0, 0.5, 0.3], np.radians(20.0))
    box = np.array([[-34.0, -34.0, -70.0], [28.0, 26.0, 70.0]])
    grid = fit_grid(box, ct_from_limb, direction, spacing, margin_mm=4.0)
    specs = [
        BoneSpec(name, label, f, BOUNDS[name], lambda p: np.full(len(p), 1.6))
        for name, (label, f) in BONES.items()
    ]
    envelope = S.capsule([-4.0, -4.0, -80.0], [-4.0, -4.0, 80.0], 29.0)
    return grid, ct_from_limb, specs, envelope, (BEADS_LIMB if beads else np.zeros((0, 3))), 1.0


@lru_cache(maxsize=4)
def mini_knee(seed: int = 0, spacing: tuple[float, float, float] = (0.7, 0.8, 1.1), beads: bool = True) -> MiniKnee:
    """Build (and cache) the mini knee (:func:`scene`, rendered with the default HUs, blur and noise)."""
    grid, ct_from_limb, specs, envelope, bead_centres, bead_radius = scene(spacing, beads)
    ct, labels = render_ct(grid, ct_from_limb, specs, envelope, bead_centres, bead_radius, np.random.default_rng(seed))
    table = LabelTable(labels={v: n for n, (v, _f) in BONES.items()}, backend="truth", side="right")
    return MiniKnee(ct, labels, table, ct_from_limb)
