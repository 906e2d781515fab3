"""The scripted leg's kinematics: hip motion of the femur and a knee model for the tibia (CT LPS mm).

The simulator (:mod:`orthonav.phantoms.scenario_two_array`) moves the femur and the tibia of a
phantom case independently. Every pose here is a rigid 4x4 of the bones' CT frames:

* ``world_from_femur_ct = hip_pose(...)``: the femur turned about the TRUE hip centre (hip
  flexion about the femoral medio-lateral axis, then a tilt of the mechanical axis towards a
  given azimuth: a leg circled through a cone). ``world`` is the CT as imaged (the leg still).
* ``femur_ct_from_tibia_ct = knee_pose(flexion, varus, rotation)``: the tibia relative to the
  femur, built as a joint coordinate system (Grood & Suntay 1983, J Biomech Eng 105:136-144):
  a rotation about the femoral medio-lateral axis ``e1`` (flexion), then about the floating
  antero-posterior axis ``e2`` (varus / valgus), then about the tibial mechanical axis ``e3``
  (internal / external rotation), all through the femoral knee centre (midpoint of the true
  epicondyles). The flexion axis is FIXED in the femur (the transepicondylar axis made
  perpendicular to the femoral mechanical axis): no roll-back, no screw-home; a knee model, not
  a knee. Because the second rotation is about the floating axis of the first and the third is
  about the tibial axis itself, the three knobs add exactly to the native angles read out by
  :meth:`KneeJoint.angles` (tested): flexion + knob, varus + knob, rotation + knob.

Sign conventions (docs/anatomy.md, the issue-16 contract): flexion positive when the ankle moves
posteriorly; varus positive when the ankle moves medially (HKA = 180 - varus); tibial rotation
positive internal (the tibial tubercle turns medially). Signs are fixed numerically from the
landmarks, so a left and a right leg both follow them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError
from orthonav.core.transforms import make_rigid
from orthonav.core.vectors import perpendicular, unit

Vec = NDArray[np.float64]

#: Landmarks (CT LPS mm) the knee model needs.
REQUIRED_LANDMARKS = ("femoral_head_centre", "medial_epicondyle", "lateral_epicondyle", "tibial_knee_centre", "ankle_centre")


def _cross(a: Vec, b: Vec) -> Vec:
    """Cross product of two (3,) vectors in plain floats (np.cross costs ~50 us a call; the truth
    is asked at every tracking frame when a run is scored)."""
    ax, ay, az = a.tolist()
    bx, by, bz = b.tolist()
    return np.array([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx])


def _rotation(axis: Vec, angle_deg: float) -> Vec:
    """Rotation (3x3) by ``angle_deg`` about the UNIT ``axis`` (right hand; Rodrigues), in plain
    floats: the same matrix as :func:`orthonav.core.transforms.rotation_about_axis` at a tenth of its cost."""
    x, y, z = axis.tolist()
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    k = 1.0 - c
    return np.array([[c + k * x * x, k * x * y - s * z, k * x * z + s * y],
                     [k * x * y + s * z, c + k * y * y, k * y * z - s * x],
                     [k * x * z - s * y, k * y * z + s * x, c + k * z * z]])


def _about(centre: Vec, rotation: Vec) -> Vec:
    """The rigid motion turning by ``rotation`` (3x3) about the point ``centre``."""
    return make_rigid(rotation, centre - rotation @ centre)


def signed_angle_deg(a: ArrayLike, b: ArrayLike, axis: ArrayLike) -> float:
    """Angle (deg) turning ``a`` onto ``b`` about the unit ``axis`` (right hand), both projected
    perpendicular to it."""
    n = np.asarray(axis, dtype=np.float64)
    pa, pb = perpendicular(a, n), perpendicular(b, n)
    return math.degrees(math.atan2(float(np.dot(_cross(pa, pb), n)), float(np.dot(pa, pb))))


@dataclass(frozen=True)
class KneeAngles:
    """Joint-coordinate-system angles of a knee pose (deg): ``flexion_deg`` (+ flexion),
    ``varus_deg`` (+ varus; HKA = 180 - varus), ``rotation_deg`` (+ internal tibial rotation)."""

    flexion_deg: float
    varus_deg: float
    rotation_deg: float

    @property
    def hka_deg(self) -> float:
        return 180.0 - self.varus_deg


@dataclass(frozen=True)
class KneeJoint:
    """The scripted leg's axes, from TRUE landmarks (CT LPS mm, as imaged).

    Attributes
    ----------
    hip_centre_mm, knee_centre_mm, tibial_knee_centre_mm, ankle_centre_mm
        (3,) femoral head centre, femoral knee centre (midpoint of the epicondyles: every knee
        rotation turns about it), tibial knee centre, ankle centre.
    femur_proximal, femur_lateral, femur_anterior
        Unit femoral frame: mechanical axis (knee -> hip), the transepicondylar axis made
        perpendicular to it (medial -> lateral), and their cross product pointing anteriorly.
    tibia_axis
        Unit tibial mechanical axis, ankle -> tibial knee centre (``e3``, fixed in the tibia).
    tibia_anterior
        Unit tibial anterior reference, perpendicular to ``tibia_axis`` and to the plateau line
        (medial -> lateral plateau centre) when the landmarks have it (else the femoral anterior
        axis made perpendicular): the rotation read-out's zero in the tibia.
    floating0
        Unit floating axis ``e2`` of the pose as imaged (perpendicular to ``femur_lateral`` and
        ``tibia_axis``, pointing anteriorly).
    signs
        (flexion, varus, rotation) factors (+-1) mapping the conventions onto right-hand turns
        about ``femur_lateral``, ``floating0`` and ``tibia_axis``.
    """

    hip_centre_mm: Vec
    knee_centre_mm: Vec
    tibial_knee_centre_mm: Vec
    ankle_centre_mm: Vec
    femur_proximal: Vec
    femur_lateral: Vec
    femur_anterior: Vec
    tibia_axis: Vec
    tibia_anterior: Vec
    floating0: Vec
    signs: tuple[float, float, float]

    # --- poses ----------------------------------------------------------------------------

    def knee_pose(self, flexion_deg: float = 0.0, varus_deg: float = 0.0, rotation_deg: float = 0.0) -> Vec:
        """``femur_ct_from_tibia_ct`` (4x4) for knob angles added to the knee as imaged (deg).

        Identity at (0, 0, 0). See the module docstring for the construction."""
        sf, sv, sr = self.signs
        r = (_rotation(self.femur_lateral, sf * flexion_deg) @ _rotation(self.floating0, sv * varus_deg)
             @ _rotation(self.tibia_axis, sr * rotation_deg))
        return _about(self.knee_centre_mm, r)

    def hip_pose(self, flexion_deg: float = 0.0, tilt_deg: float = 0.0, azimuth_deg: float = 0.0) -> Vec:
        """``world_from_femur_ct`` (4x4): the femur turned about the hip centre.

        First hip flexion ``flexion_deg`` about the femoral medio-lateral axis (+ lifts the knee
        anteriorly), then a turn by ``tilt_deg`` about the axis ``cos(azimuth) * anterior +
        sin(azimuth) * lateral`` through the hip centre (azimuth 0 swings the knee medio-laterally,
        90 antero-posteriorly): sweeping the azimuth through 360 deg at a fixed tilt circles the
        knee through a cone of full angle ``2 * tilt_deg``.
        """
        sf = self.signs[0]
        r_flex = _rotation(self.femur_lateral, -sf * flexion_deg)
        az = math.radians(azimuth_deg)
        tilt_axis = math.cos(az) * self.femur_anterior + math.sin(az) * self.femur_lateral  # unit: the two are orthonormal
        r = _rotation(tilt_axis, tilt_deg) @ r_flex
        return _about(self.hip_centre_mm, r)

    # --- read-out (an independent inverse of knee_pose) --------------------------------------

    def angles(self, femur_ct_from_tibia_ct: ArrayLike) -> KneeAngles:
        """Joint-coordinate-system angles (deg) of a knee pose, native included.

        Computed from the matrix alone: the tibial axis now, ``tc = R e3``; the floating axis
        ``f = e3' x e1`` (oriented anteriorly); flexion = the turn of the femoral anterior axis
        onto ``f`` about ``e1``; varus = ``asin(tc . e1)`` (the tibial axis leaning laterally
        = ankle medial); rotation = the turn of ``f`` onto the tibia's anterior reference about
        ``tc``. At the identity these are the native angles of the imaged knee.
        """
        r = np.asarray(femur_ct_from_tibia_ct, dtype=np.float64)[:3, :3]
        sf, _sv, sr = self.signs
        e1 = self.femur_lateral
        tc = r @ self.tibia_axis
        f = unit(_cross(tc, e1), "floating axis (tibial axis parallel to the flexion axis)")
        if np.dot(self.floating0, _cross(self.tibia_axis, e1)) < 0:
            f = -f
        flexion = sf * signed_angle_deg(self.femur_anterior, f, e1)
        varus = math.degrees(math.asin(max(-1.0, min(1.0, float(np.dot(tc, e1))))))
        rotation = sr * signed_angle_deg(f, r @ self.tibia_anterior, tc)
        return KneeAngles(flexion, varus, rotation)

    def native(self) -> KneeAngles:
        """The angles of the knee as imaged (the identity pose)."""
        return self.angles(np.eye(4))


def knee_joint(landmarks_ct_mm: Mapping[str, ArrayLike]) -> KneeJoint:
    """Build the :class:`KneeJoint` of TRUE landmarks (name -> (3,) CT LPS mm; truth.json keys).

    Raises
    ------
    InputError
        A landmark of :data:`REQUIRED_LANDMARKS` is missing or the axes are degenerate.
    """
    missing = [n for n in REQUIRED_LANDMARKS if n not in landmarks_ct_mm]
    if missing:
        raise InputError(None, f"the knee model needs landmarks {', '.join(missing)}")
    p = {k: np.asarray(v, dtype=np.float64).reshape(3) for k, v in landmarks_ct_mm.items()}
    knee = 0.5 * (p["medial_epicondyle"] + p["lateral_epicondyle"])
    prox = unit(p["femoral_head_centre"] - knee, "femoral mechanical axis")
    lat = unit(perpendicular(p["lateral_epicondyle"] - p["medial_epicondyle"], prox), "transepicondylar axis")
    ant = unit(np.cross(prox, lat), "femoral anterior axis")
    if "posterior_medial_condyle" in p and "posterior_lateral_condyle" in p:
        hint = knee - 0.5 * (p["posterior_medial_condyle"] + p["posterior_lateral_condyle"])
    else:
        hint = np.array([0.0, -1.0, 0.0])  # LPS anterior
    if np.dot(ant, hint) < 0:
        ant = -ant
    t = unit(p["tibial_knee_centre"] - p["ankle_centre"], "tibial mechanical axis")
    f0 = unit(np.cross(t, lat), "floating axis (tibial axis parallel to the transepicondylar axis)")
    if np.dot(f0, ant) < 0:
        f0 = -f0
    if "medial_plateau_centre" in p and "lateral_plateau_centre" in p:  # the tibia's own reference: the plateau line
        t_lat = unit(perpendicular(p["lateral_plateau_centre"] - p["medial_plateau_centre"], t), "plateau line")
        t_ant = unit(np.cross(t, t_lat), "tibial anterior axis")
        t_ant = t_ant if np.dot(t_ant, ant) > 0 else -t_ant
    else:
        t_ant = unit(perpendicular(ant, t), "tibial anterior axis")
    probe = KneeJoint(p["femoral_head_centre"], knee, p["tibial_knee_centre"], p["ankle_centre"], prox, lat, ant, t, t_ant, f0,
                      (1.0, 1.0, 1.0))

    def moved(pose: Vec, point: Vec) -> Vec:
        return pose[:3, :3] @ point + pose[:3, 3]

    ankle, tubercle = p["ankle_centre"], p["tibial_knee_centre"] + 30.0 * t_ant
    medial = -lat
    # + flexion: the ankle moves posteriorly; + varus: the ankle moves medially; + rotation: the
    # tubercle (anterior of the tibial knee centre) turns medially (internal rotation).
    sf = 1.0 if np.dot(moved(probe.knee_pose(1.0), ankle) - ankle, -ant) > 0 else -1.0
    sv = 1.0 if np.dot(moved(probe.knee_pose(0.0, 1.0), ankle) - ankle, medial) > 0 else -1.0
    sr = 1.0 if np.dot(moved(probe.knee_pose(0.0, 0.0, 1.0), tubercle) - tubercle, medial) > 0 else -1.0
    return KneeJoint(p["femoral_head_centre"], knee, p["tibial_knee_centre"], p["ankle_centre"], prox, lat, ant, t, t_ant, f0,
                     (sf, sv, sr))


__all__ = ["REQUIRED_LANDMARKS", "KneeAngles", "KneeJoint", "knee_joint", "signed_angle_deg"]
