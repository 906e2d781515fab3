"""Live knee alignment: varus/valgus, flexion and tibial rotation of the tracked knee pose.

The angles are those of a joint coordinate system (JCS; Grood & Suntay 1983, "A joint
coordinate system for the clinical description of three-dimensional motions: application to
the knee", J Biomech Eng 105:136-144):

* ``e1``, fixed in the femur: the flexion axis, the transepicondylar axis (medial -> lateral
  epicondyle) made perpendicular to the femoral mechanical axis;
* ``e3``, fixed in the tibia: the tibial mechanical axis (ankle centre -> tibial knee centre);
* ``e2 = e3 x e1``, the floating axis (antero-posterior).

Flexion is the turn about ``e1``, varus/valgus (ab/adduction) the angle between ``e1`` and
``e3`` (a turn about ``e2``), tibial rotation the turn about ``e3``. With the anatomical frames
``F`` (femur: x = ``e1``, z = femoral mechanical axis, y = z x x) and ``T`` (tibia: x = plateau
line medial -> lateral made perpendicular to ``e3``, z = ``e3``, y = z x x) the relative rotation
``M = F^T R T`` (``R`` the rotation of ``femur_ct_from_tibia_ct``) is exactly the Cardan
sequence ``Rx(a) Ry(b) Rz(c)`` (Grood & Suntay's JCS is the x-y'-z'' decomposition), so

    a = atan2(-M[1, 2], M[2, 2]),   b = asin(M[0, 2]),   c = atan2(-M[0, 1], M[0, 0]).

Because each angle is a turn about its own axis, a pure flexion about ``e1`` changes neither
varus/valgus nor rotation, a pure varus stress about the floating axis changes only
varus/valgus, and a pure rotation about ``e3`` only the rotation (tested to 1e-9 deg).

Signs (side-independent, fixed from the landmarks): varus positive (``b``: the tibial axis
leans laterally, the ankle lies medially), HKA = 180 - varus (docs/anatomy.md: varus < 180 <
valgus); flexion positive when the ankle moves posteriorly; rotation positive internal (the
tibial tubercle turns medially). For a right knee ``F`` has y anterior and flexion = -a,
rotation = +c; a left knee's ``F`` has y posterior and flexion = +a, rotation = -c.

At the identity pose (the knee as imaged) varus equals the plan's HKA deviation
(``180 - angles_deg['hka']``) up to the CT's own flexion: the plan projects both axes onto the
femoral coronal plane, ``tan(varus_plan) = tan(b) / cos(flexion)``; at the knee phantom's 0.34
deg of flexion in the CT the two differ by 6e-5 deg. Projections are not used here because they
leak flexion into varus (at 90 deg of flexion a coronal projection is meaningless).

Every point is CT LPS mm in the bone's own CT frame (the plan's). The pose
``femur_ct_from_tibia_ct`` maps tibia points in CT coordinates (as planned) to where they are
now in the femur's CT coordinates (the issue-16 contract); the identity is the knee as imaged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError
from orthonav.planning.landmarks import position
from orthonav.planning.tka.alignment import limb_frames

from .gaps import GapGeometry, KneeGaps, knee_gaps
from .vec3 import Vec3, dot, rows, vec3

Vec = NDArray[np.float64]

#: Landmarks the live alignment needs (``femoral_head_centre`` may be replaced by a
#: kinematic hip centre; ``femoral_knee_centre`` / ``tibial_knee_centre`` default to the
#: epicondyle / plateau-centre midpoints as in the plan).
REQUIRED_LANDMARKS = ("medial_epicondyle", "lateral_epicondyle", "medial_plateau_centre", "lateral_plateau_centre", "ankle_centre")


@dataclass(frozen=True)
class KneeAlignment:
    """The knee's JCS angles at one pose (degrees; see the module docstring).

    Attributes
    ----------
    varus_valgus_deg
        Varus (+) / valgus (-): angle between the flexion axis and the tibial mechanical axis
        (90 deg minus it); the coronal mechanical femorotibial angle.
    flexion_deg
        Flexion (+) / hyperextension (-) about the femoral transepicondylar axis.
    hka_deg
        Mechanical hip-knee-ankle angle, ``180 - varus_valgus_deg`` (varus < 180 < valgus).
    rotation_deg
        Tibial internal (+) / external (-) rotation about the tibial mechanical axis, relative
        to the plateau line (medial -> lateral plateau centre).
    """

    varus_valgus_deg: float
    flexion_deg: float
    hka_deg: float
    rotation_deg: float

    def to_dict(self) -> dict[str, float]:
        """The angles keyed with their unit (``varus_valgus_deg``, ...), for recording."""
        return {"varus_valgus_deg": self.varus_valgus_deg, "flexion_deg": self.flexion_deg, "hka_deg": self.hka_deg,
                "rotation_deg": self.rotation_deg}


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class KneeFrames:
    """The two bones' anatomical frames, precomputed once from the plan's landmarks.

    Pass it to :func:`knee_alignment` instead of the landmarks in a per-frame loop (it skips
    rebuilding the frames: ~4 us per call instead of ~0.2 ms).

    Attributes
    ----------
    femur_rows
        (3, 3) rows = the femoral frame's x (lateral, ``e1``), y (z x x), z (mechanical axis,
        knee -> hip) in femur CT LPS: ``F^T``.
    tibia_columns
        (3, 3) columns = the tibial frame's x (plateau line, lateral), y (z x x), z (mechanical
        axis, ankle -> knee, ``e3``) in tibia CT LPS: ``T``.
    side_sign
        +1 when the femoral frame's y points anteriorly (a right knee), -1 otherwise (a left
        knee): flexion = -side_sign * a, rotation = side_sign * c.
    hip_centre_ct_mm
        (3,) the hip centre the femoral mechanical axis runs to (femur CT LPS mm): the plan's
        femoral head centre or the kinematic override.
    """

    femur_rows: Vec
    tibia_columns: Vec
    side_sign: float
    hip_centre_ct_mm: Vec

    def __post_init__(self) -> None:
        # The same axes as float triples for the per-frame path (navigation/vec3.py).
        f, t = np.asarray(self.femur_rows, dtype=np.float64), np.asarray(self.tibia_columns, dtype=np.float64)
        for name, v in (("fx", f[0]), ("fy", f[1]), ("fz", f[2]), ("tx", t[:, 0]), ("ty", t[:, 1]), ("tz", t[:, 2])):
            object.__setattr__(self, name, vec3(v))

    fx: Vec3 = field(init=False, repr=False, compare=False)
    fy: Vec3 = field(init=False, repr=False, compare=False)
    fz: Vec3 = field(init=False, repr=False, compare=False)
    tx: Vec3 = field(init=False, repr=False, compare=False)
    ty: Vec3 = field(init=False, repr=False, compare=False)
    tz: Vec3 = field(init=False, repr=False, compare=False)


def knee_frames(landmarks: Mapping[str, object], *, hip_centre_ct_mm: ArrayLike | None = None) -> KneeFrames:
    """Build the femoral and tibial frames of :func:`knee_alignment` from the plan's landmarks.

    Parameters
    ----------
    landmarks
        name -> (3,) CT LPS mm position (or :class:`~orthonav.planning.schema.Landmark`): the
        knee plan's names (``femoral_head_centre``, ``medial_epicondyle``, ...,
        ``ankle_centre``); the frames are those of
        :func:`orthonav.planning.tka.alignment.limb_frames` (docs/anatomy.md).
    hip_centre_ct_mm
        (3,) hip centre (femur CT LPS mm) replacing ``femoral_head_centre`` (image-free mode:
        the kinematic hip centre mapped to CT with ``ct_from_femurref``). It changes only the
        femoral mechanical axis (and with it the TEA made perpendicular to it).

    Raises
    ------
    InputError
        A required landmark is missing (no hip centre at all, no ankle centre: a partial CT's
        stated planning axes are not used for live alignment) or the axes are degenerate.
    """
    lms: dict[str, object] = dict(landmarks)
    if hip_centre_ct_mm is not None:
        lms["femoral_head_centre"] = position(np.asarray(hip_centre_ct_mm, dtype=np.float64).reshape(-1))
    missing = [n for n in ("femoral_head_centre", *REQUIRED_LANDMARKS) if n not in lms]
    if missing:
        hint = " (no femoral head in the CT: fit the hip centre kinematically and pass hip_centre_ct_mm)" if "femoral_head_centre" in missing else ""
        raise InputError(None, f"live knee alignment needs the landmarks {', '.join(missing)}{hint}")
    fr = limb_frames(lms)
    if fr.femur_lateral is None or fr.femur_proximal is None or fr.femur_anterior is None or fr.tibia_lateral is None or fr.tibia_proximal is None:
        raise InputError(None, "live knee alignment: the femoral or tibial frame cannot be built from the landmarks")
    fx, fz = fr.femur_lateral, fr.femur_proximal
    fy = np.cross(fz, fx)
    tx, tz = fr.tibia_lateral, fr.tibia_proximal
    ty = np.cross(tz, tx)
    side = 1.0 if float(np.dot(fy, fr.femur_anterior)) > 0 else -1.0
    return KneeFrames(np.array([fx, fy, fz]), np.column_stack([tx, ty, tz]), side, position(lms["femoral_head_centre"]))


def knee_alignment(femur_ct_from_tibia_ct: ArrayLike, landmarks: Mapping[str, object] | KneeFrames, *,
                   hip_centre_ct_mm: ArrayLike | None = None) -> KneeAlignment:
    """Varus/valgus, flexion, HKA and tibial rotation of a knee pose (JCS, module docstring).

    Parameters
    ----------
    femur_ct_from_tibia_ct
        (4, 4) rigid pose: tibia CT LPS mm -> femur CT LPS mm (``ct_from_femurref @
        inv(tracker_from_femurref) @ tracker_from_tibiaref @ inv(ct_from_tibiaref)``); the
        identity is the knee as imaged. Only its rotation enters the angles.
    landmarks
        The plan's landmark positions (see :func:`knee_frames`), or the :class:`KneeFrames`
        built from them once (the fast path for a per-frame loop).
    hip_centre_ct_mm
        (3,) kinematic hip centre in femur CT LPS mm (image-free mode); only with landmarks,
        not with precomputed frames (build those with it instead).

    Returns
    -------
    KneeAlignment
        Angles in degrees; at the identity the knee's native alignment.

    Raises
    ------
    InputError
        The pose is not a finite 4x4, landmarks are missing, or a hip centre is passed with
        precomputed frames.
    """
    if isinstance(landmarks, KneeFrames):
        if hip_centre_ct_mm is not None:
            raise InputError(None, "pass hip_centre_ct_mm to knee_frames(), not with precomputed KneeFrames")
        frames = landmarks
    else:
        frames = knee_frames(landmarks, hip_centre_ct_mm=hip_centre_ct_mm)
    # Plain floats (navigation/vec3.py): numpy costs more in call overhead than this arithmetic.
    r0, r1, r2, _ = rows(femur_ct_from_tibia_ct)
    fx, fy, fz = frames.fx, frames.fy, frames.fz
    tx, ty, tz = frames.tx, frames.ty, frames.tz
    w = tuple(fx[0] * r0[j] + fx[1] * r1[j] + fx[2] * r2[j] for j in range(3))  # R^T fx: row 0 of F^T R
    rtz = (dot(r0, tz), dot(r1, tz), dot(r2, tz))  # R tz: column 2 of R T
    m00, m01, m02 = dot(w, tx), dot(w, ty), dot(w, tz)
    m12, m22 = dot(fy, rtz), dot(fz, rtz)
    a = math.atan2(-m12, m22)
    b = math.atan2(m02, math.hypot(m12, m22))
    c = math.atan2(-m01, m00)
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
        raise InputError(None, "femur_ct_from_tibia_ct is not finite")
    s = frames.side_sign
    varus = math.degrees(b)
    return KneeAlignment(varus_valgus_deg=varus, flexion_deg=math.degrees(-s * a), hka_deg=180.0 - varus, rotation_deg=math.degrees(s * c))


def hka_from_hip_centre(landmarks: Mapping[str, object], hip_centre_ct_mm: ArrayLike) -> float:
    """The native HKA (deg) with the femoral mechanical axis run to ``hip_centre_ct_mm``
    (e.g. the kinematic hip centre, beside the CT's): :func:`knee_alignment` at the identity."""
    return knee_alignment(np.eye(4), landmarks, hip_centre_ct_mm=hip_centre_ct_mm).hka_deg


@dataclass(frozen=True)
class KinematicSummary:
    """What the live loop records per frame about the knee (alignment, and gaps when known).

    Attributes
    ----------
    alignment
        The knee's :class:`KneeAlignment`.
    gaps
        Medial / lateral gaps (:class:`~orthonav.navigation.gaps.KneeGaps`), None without a
        gap geometry.
    hip_centre
        "ct" (the plan's femoral head centre) or "kinematic" (a fitted hip centre).
    """

    alignment: KneeAlignment
    gaps: KneeGaps | None = None
    hip_centre: str = "ct"

    def to_dict(self) -> dict[str, float | str | None]:
        """Flat record with units in the keys: ``varus_valgus_deg``, ``flexion_deg``,
        ``hka_deg``, ``rotation_deg``, ``medial_gap_mm``, ``lateral_gap_mm`` (None without
        gaps), ``hip_centre``."""
        out: dict[str, float | str | None] = dict(self.alignment.to_dict())
        out["medial_gap_mm"] = None if self.gaps is None else self.gaps.medial_mm
        out["lateral_gap_mm"] = None if self.gaps is None else self.gaps.lateral_mm
        out["hip_centre"] = self.hip_centre
        return out


def kinematic_summary(femur_ct_from_tibia_ct: ArrayLike, frames: KneeFrames, geometry: GapGeometry | None = None, *,
                      hip_centre: str = "ct") -> KinematicSummary:
    """:func:`knee_alignment` and (with a geometry) :func:`~orthonav.navigation.gaps.knee_gaps`
    of one pose, as a :class:`KinematicSummary` (``hip_centre``: "ct" or "kinematic", the
    source of the hip centre ``frames`` were built with)."""
    if hip_centre not in ("ct", "kinematic"):
        raise InputError(None, f"hip_centre must be 'ct' or 'kinematic', got {hip_centre!r}")
    gaps = None if geometry is None else knee_gaps(femur_ct_from_tibia_ct, geometry)
    return KinematicSummary(knee_alignment(femur_ct_from_tibia_ct, frames), gaps, hip_centre)


def rom_table(flexion_deg: ArrayLike, varus_valgus_deg: ArrayLike, *, bins: Sequence[float] = (0, 30, 60, 90),
              half_width_deg: float = 5, medial_gap_mm: ArrayLike | None = None,
              lateral_gap_mm: ArrayLike | None = None) -> list[dict[str, float | int | None]]:
    """Range-of-motion table: the alignment (and gaps) at given flexion angles.

    Parameters
    ----------
    flexion_deg, varus_valgus_deg
        (n,) per-frame flexion and varus/valgus (deg), e.g. recorded :class:`KneeAlignment`
        values; non-finite samples are ignored.
    bins
        Flexion angles of the rows (deg).
    half_width_deg
        A sample belongs to a row when its flexion is within this of the row's angle (deg).
    medial_gap_mm, lateral_gap_mm
        Optional (n,) per-frame gaps (mm; None entries / NaN ignored): adds their mean per row.

    Returns
    -------
    list of dict
        One per bin, in order: ``flexion_target_deg``, ``n`` (samples in the bin),
        ``flexion_mean_deg``, ``varus_valgus_mean_deg``, ``varus_valgus_min_deg``,
        ``varus_valgus_max_deg`` (and ``medial_gap_mean_mm`` / ``lateral_gap_mean_mm`` when
        gaps are given); the statistics are None for an empty bin.

    Raises
    ------
    InputError
        Arrays of different lengths, or a negative half width.
    """
    flex = np.asarray(flexion_deg, dtype=np.float64).reshape(-1)
    vv = np.asarray(varus_valgus_deg, dtype=np.float64).reshape(-1)
    gaps = {k: None if g is None else np.array([np.nan if x is None else x for x in np.asarray(g, dtype=object).reshape(-1)], dtype=np.float64)
            for k, g in (("medial_gap_mean_mm", medial_gap_mm), ("lateral_gap_mean_mm", lateral_gap_mm))}
    if len(vv) != len(flex) or any(g is not None and len(g) != len(flex) for g in gaps.values()):
        raise InputError(None, "rom_table: flexion, varus/valgus and gap arrays must have the same length")
    if not half_width_deg >= 0:
        raise InputError(None, f"rom_table: half_width_deg must be >= 0, got {half_width_deg}")
    ok = np.isfinite(flex) & np.isfinite(vv)
    rows: list[dict[str, float | int | None]] = []
    for b in bins:
        sel = ok & (np.abs(flex - float(b)) <= half_width_deg)
        n = int(sel.sum())
        row: dict[str, float | int | None] = {"flexion_target_deg": float(b), "n": n}
        row["flexion_mean_deg"] = float(flex[sel].mean()) if n else None
        row["varus_valgus_mean_deg"] = float(vv[sel].mean()) if n else None
        row["varus_valgus_min_deg"] = float(vv[sel].min()) if n else None
        row["varus_valgus_max_deg"] = float(vv[sel].max()) if n else None
        for key, g in gaps.items():
            if g is not None:
                gs = g[sel & np.isfinite(g)]
                row[key] = float(gs.mean()) if len(gs) else None
        rows.append(row)
    return rows


__all__ = ["REQUIRED_LANDMARKS", "KinematicSummary", "KneeAlignment", "KneeFrames", "hka_from_hip_centre", "kinematic_summary",
           "knee_alignment", "knee_frames", "rom_table"]
