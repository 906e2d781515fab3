"""Sawbones-like long bone: a single right femur scanned on its own, with beads and targets.

The femur is exactly the knee phantom's femur (:func:`orthonav.phantoms.knee.build_knee`,
same construction, same landmark definitions), built at a reduced size by default so that
the printable model fits a 250 mm print bed: ``scale`` 0.6 and a 190 mm head-to-knee
length give a ~240 mm bone, a "mini" sawbones femur. It lies in air on the scanner table
(``soft_tissue=True`` wraps it in a thigh-shaped soft-tissue envelope instead).

Frame: the limb frame of the knee phantom (x medial, y posterior, z superior; a right femur),
placed into LPS by ``ct_from_limb``. Truth: the femoral landmarks of docs/anatomy.md and the
two femur-only angles (``ldfa``, ``femoral_rotation``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from orthonav.core.case import LabelTable
from orthonav.core.errors import InputError
from orthonav.core.transforms import (
    apply,
    apply_vector,
    make_rigid,
    rotation_about_axis,
)

from . import sdf as S
from .angles import knee_angles
from .knee import (
    KneeParameters,
    _frame,
    _knee_geometry,
    _surface_point,
    _surface_points,
)
from .synthetic import DEFAULT_HU, SyntheticPhantom, fit_grid, render_ct
from .truth import PhantomTruth

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


@dataclass(frozen=True)
class _LongBoneGeometry:
    knee: object
    beads: list
    targets: list
    mount: tuple
    envelope: S.SDF
    grid_bounds: NDArray[np.float64]


@lru_cache(maxsize=4)
def _long_bone_geometry(prm: LongBoneParameters) -> _LongBoneGeometry:
    kg = _knee_geometry(_knee_prm(prm))
    anat = kg.anatomy
    s = prm.scale
    L = kg.landmarks
    Fz = _frame(anat.femur_rot, anat.femur_origin)
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
    anchors = _surface_points(anat, list(bead_starts) + [(b, p) for _n, b, p in target_starts])
    r = prm.bead_radius_mm + prm.bead_standoff_mm
    beads = [(bone, p + r * n) for (bone, _s), (p, n) in zip(bead_starts, anchors[: len(bead_starts)])]
    targets = [(name, bone, p) for (name, bone, _s), (p, _n) in zip(target_starts, anchors[len(bead_starts) :])]
    mount = _surface_point(anat.bones["femur"].sdf, at(0.53, -10.0, -40.0))

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
    return _LongBoneGeometry(kg, beads, targets, mount, envelope, grid_bounds)


def _default_ct_from_limb(seed: int, jitter_deg: float) -> NDArray[np.float64]:
    """Limb -> CT LPS: the bone along the scanner axis, rolled and tilted a few degrees."""
    r = rotation_about_axis([0.0, 0.0, 1.0], np.radians(-25.0)) @ rotation_about_axis([1.0, 0.0, 0.0], np.radians(4.0)) @ rotation_about_axis([0.0, 1.0, 0.0], np.radians(-6.0))
    t = np.array([-30.0, 45.0, -380.0])
    if jitter_deg > 0:
        rng = np.random.default_rng(30_000 + seed)
        axis = rng.normal(size=3)
        r = rotation_about_axis(axis, np.radians(rng.uniform(-jitter_deg, jitter_deg))) @ r
        t = t + rng.uniform(-20.0, 20.0, size=3)
    return make_rigid(r, t)


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
    fields = set(LongBoneParameters.__dataclass_fields__)
    unknown = sorted(set(knobs) - fields)
    if unknown:
        raise InputError(None, f"unknown long-bone phantom knob(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    base = dict(SMALL) if small else {}
    base.update(knobs)
    prm = LongBoneParameters(**base)  # type: ignore[arg-type]
    if not 0.4 <= prm.scale <= 1.5:
        raise InputError(None, f"scale must be in [0.4, 1.5], got {prm.scale}")
    if not 150.0 <= prm.femur_length_mm / prm.scale <= 600.0:
        raise InputError(None, f"femur_length_mm / scale must be in [150, 600], got {prm.femur_length_mm / prm.scale:.0f}")
    rng = np.random.default_rng(seed)
    geo = _long_bone_geometry(replace(prm, noise_hu=0.0, psf_sigma_vox=0.0, pose_jitter_deg=0.0, spacing_mm=(0.0, 0.0, 0.0)))
    kg = geo.knee
    anat = kg.anatomy
    femur = anat.bones["femur"]
    ct_from_limb = _default_ct_from_limb(seed, prm.pose_jitter_deg)
    direction = ct_from_limb[:3, :3] @ rotation_about_axis([0.0, 0.0, 1.0], np.radians(12.0))
    grid = fit_grid(geo.grid_bounds, ct_from_limb, direction, prm.spacing_mm, margin_mm=2.0)
    bead_limb = np.array([b[1] for b in geo.beads])
    phase = rng.uniform(0, 2 * np.pi, size=2)

    def cortical_hu(p: NDArray[np.float64]) -> NDArray[np.float64]:
        return 1500.0 + 200.0 * np.sin(p[:, 2] / 60.0 + phase[0])

    marrow = 300.0 + 80.0 * np.sin(phase[1])
    ct, labels = render_ct(
        grid,
        ct_from_limb,
        [femur],
        geo.envelope,
        bead_limb,
        prm.bead_radius_mm,
        rng,
        noise_hu=prm.noise_hu,
        psf_sigma_vox=prm.psf_sigma_vox,
        cortical_hu_fn=cortical_hu,
        marrow_hu_fn=lambda _bone: marrow,
    )
    mesh = kg.meshes_limb["femur"].copy()
    mesh.points = apply(ct_from_limb, np.asarray(mesh.points, dtype=np.float64))

    def tup(v: NDArray[np.float64]) -> tuple[float, float, float]:
        return (float(v[0]), float(v[1]), float(v[2]))

    L_all = {k: apply(ct_from_limb, v) for k, v in kg.landmarks.items()}
    a_all = knee_angles(L_all, side="right")  # the femoral angles need only femoral landmarks
    angles = {k: a_all[k] for k in ("ldfa", "femoral_rotation")}
    bead_lps = apply(ct_from_limb, bead_limb)
    order = np.argsort(-bead_lps[:, 2], kind="stable")
    params: dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in prm.__dict__.items()}
    params["small"] = small
    mount_p, mount_n = geo.mount
    truth = PhantomTruth(
        kind="long_bone",
        seed=seed,
        parameters=params,
        side="right",
        bones=dict(LABELS),
        fiducials_lps_mm={f"fiducial_{i + 1}": tup(bead_lps[j]) for i, j in enumerate(order)},
        fiducial_bones={f"fiducial_{i + 1}": geo.beads[j][0] for i, j in enumerate(order)},
        targets_lps_mm={n: tup(apply(ct_from_limb, p)) for n, _b, p in geo.targets},
        target_bones={n: b for n, b, _p in geo.targets},
        landmarks_lps_mm={k: tup(L_all[k]) for k in FEMORAL_LANDMARKS},
        angles_deg=angles,
        ct_from_limb=ct_from_limb.tolist(),
        reference_mount_lps_mm=tup(apply(ct_from_limb, mount_p)),
        reference_mount_normal_lps=tup(apply_vector(ct_from_limb, mount_n)),
        bead_radius_mm=prm.bead_radius_mm,
        bead_hu=DEFAULT_HU["bead"],
        hu=dict(DEFAULT_HU),
    )
    table = LabelTable(labels={1: "femur"}, backend="phantom truth", side="right")
    return SyntheticPhantom(ct=ct, labels=labels, label_table=table, truth=truth, truth_meshes={"femur": mesh}, bones={"femur": femur}, print_mesh=None)


__all__ = ["LABELS", "LongBoneParameters", "make_long_bone_phantom"]
