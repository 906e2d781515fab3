"""The one phantom recipe: knobs -> geometry -> pose -> CT grid -> rendering -> truth.

Every synthetic phantom (knee, hip, long bone) is built by :func:`make_phantom` from an
:class:`AnatomyRecipe`, which supplies the per-anatomy parts:

* the parameters dataclass, its ``small`` overrides and range checks;
* ``geometry(prm)``: a cached :class:`PhantomGeometry` with everything that depends neither on
  the seed, the pose nor the CT grid (bone SDFs, soft-tissue envelope, truth meshes,
  landmarks, beads, targets, reference mount; all in the limb frame, mm);
* the default pose (:class:`Pose`, limb frame -> CT LPS) and the intensity model
  (:class:`Intensity`);
* ``truth(geometry, ct_from_limb, landmarks_lps)``: the anatomy's truth angles and extra
  truth fields (:class:`AnatomyTruth`).

The recipe does the rest the same way for all: the random generator (seeded once; its draws
are the intensity phases, then the renderer's streaks and noise), the CT grid (the limb's
rotation turned 12 deg about its axis: a non-identity direction matrix), rendering with
:func:`orthonav.phantoms.render.render_ct`, the truth meshes in LPS, the fiducial order
(decreasing LPS z) and the :class:`~orthonav.phantoms.truth.PhantomTruth`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyvista as pv
from numpy.typing import NDArray

from orthonav.core.case import LabelTable
from orthonav.core.errors import InputError
from orthonav.core.transforms import apply, apply_vector, make_rigid, rotation_about_axis
from orthonav.core.volume import Volume

from . import sdf as S
from .render import DEFAULT_HU, BoneSpec, GridSpec, SyntheticPhantom, fit_grid, render_ct, render_fractions
from .truth import PhantomTruth

X = np.array([1.0, 0.0, 0.0])
Y = np.array([0.0, 1.0, 0.0])
Z = np.array([0.0, 0.0, 1.0])

#: Rotation (deg) of the CT grid about the limb's z axis relative to the limb's rotation.
GRID_TWIST_DEG = 12.0


@dataclass(frozen=True)
class PhantomGeometry:
    """What a phantom's truth needs that depends neither on the seed, the pose nor the grid.

    All points are in the limb frame (mm).

    Attributes
    ----------
    anatomy
        The anatomy's own construction record (e.g. ``KneeAnatomy``).
    bones
        Rendered bone name -> :class:`BoneSpec`, in label order.
    envelope
        Soft-tissue envelope SDF (positive everywhere for a bone in air).
    grid_bounds_limb_mm
        (2, 3) box the CT grid must cover.
    meshes_limb
        Bone name -> truth surface (limb frame); these are the phantom's truth meshes.
    landmarks_limb
        Landmark name -> (3,) point: every landmark the angles need.
    beads
        (bone, (3,) bead centre) per radiopaque bead.
    targets
        (target name, bone, (3,) point on the bone surface).
    mount
        ((3,) reference-mount point on the bone surface, (3,) unit outward normal).
    gaps_mm
        Measured minimum surface gaps between bones (mm).
    extras
        Anatomy-specific vectors the truth step needs (e.g. the knee's plateau AP tangent).
    """

    anatomy: Any
    bones: dict[str, BoneSpec]
    envelope: S.SDF
    grid_bounds_limb_mm: NDArray[np.float64]
    meshes_limb: dict[str, pv.PolyData]
    landmarks_limb: dict[str, NDArray[np.float64]]
    beads: list[tuple[str, NDArray[np.float64]]]
    targets: list[tuple[str, str, NDArray[np.float64]]]
    mount: tuple[NDArray[np.float64], NDArray[np.float64]]
    gaps_mm: dict[str, float] = field(default_factory=dict)
    extras: dict[str, NDArray[np.float64]] = field(default_factory=dict)


@dataclass(frozen=True)
class Pose:
    """Default placement of the limb frame in the CT (LPS mm).

    ``R = Rz(rz_deg) Rx(rx_deg) Ry(ry_deg)`` (about the limb axes), translation
    ``translation_mm``. With ``pose_jitter_deg`` > 0 a random rotation of up to that angle
    about a random axis and up to 20 mm of shift are added, drawn from a generator seeded
    with ``jitter_seed_offset + seed`` (independent of the intensity generator).
    """

    rz_deg: float
    rx_deg: float
    ry_deg: float
    translation_mm: tuple[float, float, float]
    jitter_seed_offset: int

    def ct_from_limb(self, seed: int, jitter_deg: float) -> NDArray[np.float64]:
        """(4, 4) rigid ``ct_from_limb`` for ``seed`` and ``jitter_deg`` (degrees)."""
        r = rotation_about_axis(Z, np.radians(self.rz_deg)) @ rotation_about_axis(X, np.radians(self.rx_deg)) @ rotation_about_axis(Y, np.radians(self.ry_deg))
        t = np.array(self.translation_mm, dtype=np.float64)
        if jitter_deg > 0:
            rng = np.random.default_rng(self.jitter_seed_offset + seed)
            axis = rng.normal(size=3)
            r = rotation_about_axis(axis, np.radians(rng.uniform(-jitter_deg, jitter_deg))) @ r
            t = t + rng.uniform(-20.0, 20.0, size=3)
        return make_rigid(r, t)


@dataclass(frozen=True)
class Intensity:
    """Bone intensity model (HU), varied by two random phases drawn per seed.

    Cortical HU at limb point p: ``cortical_hu + cortical_amplitude_hu * sin(p_z /
    cortical_period_mm + phase_0)``; marrow HU of the i-th bone (label order):
    ``marrow_hu + marrow_amplitude_hu * sin(phase_1 + i)``.
    """

    cortical_hu: float
    cortical_amplitude_hu: float
    cortical_period_mm: float
    marrow_hu: float
    marrow_amplitude_hu: float


@dataclass(frozen=True)
class AnatomyTruth:
    """The anatomy-specific part of a phantom's truth.

    Attributes
    ----------
    angles_deg
        Truth angles (degrees).
    landmark_names
        Landmarks written into the truth (in this order); None = all of them.
    parameters
        Extra entries for ``PhantomTruth.parameters`` (after the knobs and ``small``).
    fields
        Extra :class:`PhantomTruth` fields (e.g. ``medial_plateau_ap_tangent_lps``).
    """

    angles_deg: dict[str, float]
    landmark_names: Sequence[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AnatomyRecipe:
    """The per-anatomy parts of :func:`make_phantom`.

    Attributes
    ----------
    kind
        ``PhantomTruth.kind`` ('knee', 'hip', 'long_bone').
    knob_name
        Name in error messages ('knee', 'hip', 'long-bone').
    labels
        Bone name -> label value (also the order of the marrow phases).
    side, table_side
        ``PhantomTruth.side`` and the label table's side.
    parameters
        The parameters dataclass (frozen, hashable; needs the fields ``noise_hu``,
        ``psf_sigma_vox``, ``pose_jitter_deg``, ``spacing_mm`` and ``bead_radius_mm``;
        ``metal_artefact_hu`` is used when present).
    small
        Knob overrides of the small test phantom.
    check
        Raises InputError for out-of-range parameters.
    geometry
        Parameters (with noise, blur, jitter and spacing zeroed) -> :class:`PhantomGeometry`
        (cached by the anatomy).
    pose
        Default placement in the CT.
    grid_margin_mm
        CT grid margin around ``grid_bounds_limb_mm``.
    intensity
        Bone intensity model.
    truth
        (geometry, ct_from_limb, landmarks in LPS) -> :class:`AnatomyTruth`.
    """

    kind: str
    knob_name: str
    labels: Mapping[str, int]
    side: str
    table_side: str | None
    parameters: type
    small: Mapping[str, object]
    check: Callable[[Any], None]
    geometry: Callable[[Any], PhantomGeometry]
    pose: Pose
    grid_margin_mm: float
    intensity: Intensity
    truth: Callable[[PhantomGeometry, NDArray[np.float64], dict[str, NDArray[np.float64]]], AnatomyTruth]


def recipe_parameters(recipe: AnatomyRecipe, small: bool, knobs: Mapping[str, object]) -> Any:
    """The recipe's parameters from ``knobs`` over the defaults (and the small overrides).

    Raises InputError naming unknown knobs and out-of-range values.
    """
    fields = set(recipe.parameters.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = sorted(set(knobs) - fields)
    if unknown:
        raise InputError(None, f"unknown {recipe.knob_name} phantom knob(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    base = dict(recipe.small) if small else {}
    base.update(knobs)
    prm = recipe.parameters(**base)
    recipe.check(prm)
    return prm


def _tup(v: NDArray[np.float64]) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def _placed(recipe: AnatomyRecipe, seed: int, small: bool, knobs: Mapping[str, object] | None) -> tuple[Any, PhantomGeometry, NDArray[np.float64], GridSpec]:
    """The recipe's parameters, geometry, pose (``ct_from_limb``) and CT grid for ``seed``."""
    prm = recipe_parameters(recipe, small, knobs or {})
    geo = recipe.geometry(replace(prm, noise_hu=0.0, psf_sigma_vox=0.0, pose_jitter_deg=0.0, spacing_mm=(0.0, 0.0, 0.0)))
    ct_from_limb = recipe.pose.ct_from_limb(seed, prm.pose_jitter_deg)
    direction = ct_from_limb[:3, :3] @ rotation_about_axis(Z, np.radians(GRID_TWIST_DEG))
    grid = fit_grid(geo.grid_bounds_limb_mm, ct_from_limb, direction, prm.spacing_mm, margin_mm=recipe.grid_margin_mm)
    return prm, geo, ct_from_limb, grid


def tissue_fractions(recipe: AnatomyRecipe, *, seed: int = 0, small: bool = False, knobs: Mapping[str, object] | None = None) -> dict[str, Volume]:
    """Each tissue's partial-volume fraction per voxel (:func:`~orthonav.phantoms.render.render_fractions`)
    on the grid of the phantom that :func:`make_phantom` builds with the same arguments."""
    prm, geo, ct_from_limb, grid = _placed(recipe, seed, small, knobs)
    return render_fractions(grid, ct_from_limb, list(geo.bones.values()), geo.envelope, np.array([b[1] for b in geo.beads]), prm.bead_radius_mm)


def make_phantom(recipe: AnatomyRecipe, *, seed: int = 0, small: bool = False, knobs: Mapping[str, object] | None = None) -> SyntheticPhantom:
    """Build one synthetic phantom from its anatomy recipe.

    Parameters
    ----------
    recipe
        The anatomy's parts (``KNEE_RECIPE``, ``HIP_RECIPE``, ``LONG_BONE_RECIPE``).
    seed
        Noise and intensity variation (and the pose, when ``pose_jitter_deg`` > 0).
    small
        Apply the recipe's small (fast, test) overrides before ``knobs``.
    knobs
        Fields of the recipe's parameters dataclass.

    Returns
    -------
    SyntheticPhantom
        CT and labels on the fitted grid, truth meshes in LPS mm, truth.
    """
    prm, geo, ct_from_limb, grid = _placed(recipe, seed, small, knobs)
    rng = np.random.default_rng(seed)
    bead_limb = np.array([b[1] for b in geo.beads])
    phase = rng.uniform(0, 2 * np.pi, size=2)
    model = recipe.intensity

    def cortical_hu(p: NDArray[np.float64]) -> NDArray[np.float64]:
        return model.cortical_hu + model.cortical_amplitude_hu * np.sin(p[:, 2] / model.cortical_period_mm + phase[0])

    marrow_by_bone = {name: model.marrow_hu + model.marrow_amplitude_hu * np.sin(phase[1] + i) for i, name in enumerate(recipe.labels)}
    ct, labels = render_ct(
        grid,
        ct_from_limb,
        list(geo.bones.values()),
        geo.envelope,
        bead_limb,
        prm.bead_radius_mm,
        rng,
        noise_hu=prm.noise_hu,
        psf_sigma_vox=prm.psf_sigma_vox,
        cortical_hu_fn=cortical_hu,
        marrow_hu_fn=lambda bone: marrow_by_bone[bone],
        metal_artefact_hu=float(getattr(prm, "metal_artefact_hu", 0.0)),
    )
    meshes = {}
    for name, m in geo.meshes_limb.items():
        m = m.copy()
        m.points = apply(ct_from_limb, np.asarray(m.points, dtype=np.float64))
        meshes[name] = m

    L_lps = {k: apply(ct_from_limb, v) for k, v in geo.landmarks_limb.items()}
    part = recipe.truth(geo, ct_from_limb, L_lps)
    names = list(L_lps) if part.landmark_names is None else list(part.landmark_names)

    bead_lps = apply(ct_from_limb, bead_limb)
    order = np.argsort(-bead_lps[:, 2], kind="stable")  # most superior first
    params: dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in prm.__dict__.items()}
    params["small"] = small
    params.update(part.parameters)
    mount_p, mount_n = geo.mount
    extra = dict(part.fields)
    if geo.gaps_mm:
        extra["gaps_mm"] = dict(geo.gaps_mm)
    truth = PhantomTruth(
        kind=recipe.kind,
        seed=seed,
        parameters=params,
        side=recipe.side,
        bones=dict(recipe.labels),
        fiducials_lps_mm={f"fiducial_{i + 1}": _tup(bead_lps[j]) for i, j in enumerate(order)},
        fiducial_bones={f"fiducial_{i + 1}": geo.beads[j][0] for i, j in enumerate(order)},
        targets_lps_mm={n: _tup(apply(ct_from_limb, p)) for n, _b, p in geo.targets},
        target_bones={n: b for n, b, _p in geo.targets},
        landmarks_lps_mm={k: _tup(L_lps[k]) for k in names},
        angles_deg=part.angles_deg,
        ct_from_limb=ct_from_limb.tolist(),
        reference_mount_lps_mm=_tup(apply(ct_from_limb, mount_p)),
        reference_mount_normal_lps=_tup(apply_vector(ct_from_limb, mount_n)),
        bead_radius_mm=prm.bead_radius_mm,
        bead_hu=DEFAULT_HU["bead"],
        hu=dict(DEFAULT_HU),
        **extra,
    )
    table = LabelTable(labels={v: k for k, v in recipe.labels.items()}, backend="phantom truth", side=recipe.table_side)
    return SyntheticPhantom(ct=ct, labels=labels, label_table=table, truth=truth, truth_meshes=meshes, bones=dict(geo.bones), print_mesh=None)


__all__ = [
    "GRID_TWIST_DEG",
    "AnatomyRecipe",
    "AnatomyTruth",
    "Intensity",
    "PhantomGeometry",
    "Pose",
    "make_phantom",
    "recipe_parameters",
    "tissue_fractions",
]
