"""Sawbones-like long bone: a single right femur scanned on its own, with beads and targets.

The femur is exactly the knee phantom's femur (:func:`orthonav.phantoms.knee.build_knee`,
same construction, same landmark definitions), built at a reduced size by default so that
the printable model fits a 250 mm print bed: ``scale`` 0.6 and a 190 mm head-to-knee
length give a ~240 mm bone, a "mini" sawbones femur. It lies in air on the scanner table
(``soft_tissue=True`` wraps it in a thigh-shaped soft-tissue envelope instead).

Frame: the limb frame of the knee phantom (x medial, y posterior, z superior; a right femur),
placed into LPS by ``ct_from_limb``. Truth: the femoral landmarks of docs/anatomy.md and the
two femur-only angles (``ldfa``, ``femoral_rotation``).

This module gives the long bone's parts (parameters, beads, envelope;
:data:`LONG_BONE_RECIPE`) to the shared phantom recipe (:mod:`orthonav.phantoms.recipe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from orthonav.core.errors import InputError

from . import sdf as S
from .angles import knee_angles
from .knee import KneeParameters, knee_geometry
from .probes import frame, surface_point, surface_points
from .recipe import AnatomyRecipe, AnatomyTruth, Intensity, PhantomGeometry, Pose, make_phantom
from .render import SyntheticPhantom

LABELS = {"femur": 1}
FEMORAL_LANDMARKS = (
    "femoral_head_centre",
    "medial_epicondyle",
    "lateral_epicondyle",
    "femoral_knee_centre",
    "distal_medial_condyle",
    "distal_lateral_condyle",
    "posterior_medial_condyle",
    "posterior_lateral_condyle",
)


@dataclass(frozen=True)
class LongBoneParameters:
    """Construction knobs (mm, degrees). ``small`` picks coarser voxels."""

    scale: float = 0.6
    femur_length_mm: float = 190.0
    ldfa_deg: float = 88.0
    femur_tilt_deg: float = 3.0
    posterior_condyle_offset_mm: float = 1.9
    soft_tissue: bool = False
    spacing_mm: tuple[float, float, float] = (0.6, 0.6, 1.0)
    mesh_step_mm: float = 0.8
    bead_radius_mm: float = 1.5
    bead_standoff_mm: float = 0.5
    noise_hu: float = 20.0
    psf_sigma_vox: float = 0.6
    pose_jitter_deg: float = 0.0


SMALL = {"spacing_mm": (0.9, 0.9, 1.6), "mesh_step_mm": 1.2, "bead_radius_mm": 2.0}


def _knee_prm(prm: LongBoneParameters) -> KneeParameters:
    return KneeParameters(
        femur_length_mm=prm.femur_length_mm,
        tibia_length_mm=370.0 * prm.scale,
        femur_tilt_deg=prm.femur_tilt_deg,
        ldfa_deg=prm.ldfa_deg,
        posterior_condyle_offset_mm=prm.posterior_condyle_offset_mm,
        scale=prm.scale,
        mesh_step_mm=prm.mesh_step_mm,
        bead_radius_mm=prm.bead_radius_mm,
        bead_standoff_mm=prm.bead_standoff_mm,
        spacing_mm=(0.0, 0.0, 0.0),
        noise_hu=0.0,
        psf_sigma_vox=0.0,
    )


@lru_cache(maxsize=4)
def long_bone_geometry(prm: LongBoneParameters) -> PhantomGeometry:
    """Everything that does not depend on the seed, the pose or the CT grid (cached; limb
    frame): the knee geometry's femur, with the long bone's own beads, targets, mount and
    envelope. ``anatomy`` is the knee's :class:`~orthonav.phantoms.knee.KneeAnatomy`;
    ``landmarks_limb`` holds all knee landmarks (the truth keeps the femoral ones)."""
    kg = knee_geometry(_knee_prm(prm))
    anat = kg.anatomy
    s = prm.scale
    L = kg.landmarks_limb
    Fz = frame(anat.femur_rot, anat.femur_origin)
    length = float(np.linalg.norm(L["femoral_head_centre"] - L["femoral_knee_centre"]))  # knee -> head (mm)

    def at(frac: float, x: float, y: float) -> NDArray[np.float64]:
        return Fz([x * s, y * s, frac * length])

    bead_starts = [
        ("femur", at(0.07, 40.0, -15.0)),
        ("femur", at(0.20, -40.0, -20.0)),
        ("femur", at(0.32, 5.0, -40.0)),
        ("femur", at(0.45, 35.0, 5.0)),
        ("femur", at(0.60, -35.0, 0.0)),
        ("femur", at(0.75, 8.0, -38.0)),
        ("femur", at(0.92, -80.0, 5.0)),
    ]
    target_starts = [
        ("target_medial_condyle_anterior", "femur", Fz([22.0 * s, -35.0 * s, -12.0 * s])),
        ("target_lateral_condyle_posterior", "femur", Fz([-22.0 * s, 40.0 * s, -10.0 * s])),
        ("target_femoral_notch", "femur", Fz([0.0, 15.0 * s, -10.0 * s])),
        ("target_mid_shaft_posterior", "femur", at(0.52, 0.0, 40.0)),
        ("target_femoral_head_anterior", "femur", L["femoral_head_centre"] + np.array([0.0, -30.0 * s, 20.0 * s])),
    ]
    anchors = surface_points({n: b.sdf for n, b in anat.bones.items()}, list(bead_starts) + [(b, p) for _n, b, p in target_starts])
    r = prm.bead_radius_mm + prm.bead_standoff_mm
    beads = [(bone, p + r * n) for (bone, _s), (p, n) in zip(bead_starts, anchors[: len(bead_starts)])]
    targets = [(name, bone, p) for (name, bone, _s), (p, _n) in zip(target_starts, anchors[len(bead_starts) :])]
    mount = surface_point(anat.bones["femur"].sdf, at(0.53, -10.0, -40.0))

    b = anat.bones["femur"].bounds_limb_mm
    if prm.soft_tissue:
        knee_c = L["femoral_knee_centre"]
        top = L["femoral_head_centre"] + np.array([-20.0 * s, 3.0 * s, 12.0 * s])
        envelope = S.round_cone(knee_c, top, 62.0 * s, 56.0 * s)
        lo = np.minimum(knee_c, top) - 64.0 * s
        hi = np.maximum(knee_c, top) + 64.0 * s
        grid_bounds = np.stack([np.minimum(lo, b[0]), np.maximum(hi, b[1])])
    else:
        def envelope(p: NDArray[np.float64]) -> NDArray[np.float64]:  # no body: the bone lies in air
            return np.full(len(p), 1.0e3)

        verts = np.asarray(kg.meshes_limb["femur"].points)
        grid_bounds = np.stack([verts.min(axis=0) - 8.0, verts.max(axis=0) + 8.0])
    femur = anat.bones["femur"]
    return PhantomGeometry(
        anatomy=anat,
        bones={"femur": femur},
        envelope=envelope,
        grid_bounds_limb_mm=grid_bounds,
        meshes_limb={"femur": kg.meshes_limb["femur"]},
        landmarks_limb=kg.landmarks_limb,
        beads=beads,
        targets=targets,
        mount=mount,
    )


def _check(prm: LongBoneParameters) -> None:
    if not 0.4 <= prm.scale <= 1.5:
        raise InputError(None, f"scale must be in [0.4, 1.5], got {prm.scale}")
    if not 150.0 <= prm.femur_length_mm / prm.scale <= 600.0:
        raise InputError(None, f"femur_length_mm / scale must be in [150, 600], got {prm.femur_length_mm / prm.scale:.0f}")


def _truth(geo: PhantomGeometry, ct_from_limb: NDArray[np.float64], landmarks_lps: dict[str, NDArray[np.float64]]) -> AnatomyTruth:
    a_all = knee_angles(landmarks_lps, side="right")  # the femoral angles need only femoral landmarks
    return AnatomyTruth(angles_deg={k: a_all[k] for k in ("ldfa", "femoral_rotation")}, landmark_names=FEMORAL_LANDMARKS)


#: The long bone's parts of the phantom recipe. Pose: the bone along the scanner axis, rolled
#: and tilted a few degrees.
LONG_BONE_RECIPE = AnatomyRecipe(
    kind="long_bone",
    knob_name="long-bone",
    labels=LABELS,
    side="right",
    table_side="right",
    parameters=LongBoneParameters,
    small=SMALL,
    check=_check,
    geometry=long_bone_geometry,
    pose=Pose(rz_deg=-25.0, rx_deg=4.0, ry_deg=-6.0, translation_mm=(-30.0, 45.0, -380.0), jitter_seed_offset=30_000),
    grid_margin_mm=2.0,
    intensity=Intensity(cortical_hu=1500.0, cortical_amplitude_hu=200.0, cortical_period_mm=60.0, marrow_hu=300.0, marrow_amplitude_hu=80.0),
    truth=_truth,
)


def make_long_bone_phantom(*, seed: int = 0, small: bool = False, **knobs: object) -> SyntheticPhantom:
    """Build the sawbones-like long bone phantom (one right femur, label ``femur``).

    Parameters
    ----------
    seed
        Noise and intensity variation (and the pose, when ``pose_jitter_deg`` > 0).
    small
        Coarser voxels (0.9 x 0.9 x 1.6 mm) and a coarser truth mesh: fast, for tests.
    **knobs
        Any :class:`LongBoneParameters` field, e.g. ``scale=1.0, femur_length_mm=430`` (a full
        size femur), ``soft_tissue=True``, ``noise_hu=40``, ``pose_jitter_deg=10``.

    Returns
    -------
    SyntheticPhantom
        ``truth.kind == 'long_bone'``; landmarks: the femoral keys of docs/anatomy.md; angles:
        ``ldfa`` and ``femoral_rotation``.
    """
    return make_phantom(LONG_BONE_RECIPE, seed=seed, small=small, knobs=knobs)


__all__ = ["FEMORAL_LANDMARKS", "LABELS", "LONG_BONE_RECIPE", "SMALL", "LongBoneParameters", "long_bone_geometry", "make_long_bone_phantom"]
