"""Tibial landmarks and angles on a real tibia: the Visible Human Female's left leg.

``../shared/data/real_bone_surfaces/knee_vhf_left/`` (Andreassen et al., Sci Data 2022; CC BY
4.0): tibia, fibula, patella and the tibial cartilage, one frame. That frame is not LPS: the
patella lies at +y (anterior = +y), the femoral cartilage at +z (superior = +z), and the
fibula at -x of this LEFT tibia (lateral = patient left = -x), so x points to the patient's
right: RAS. LPS = diag(-1, -1, 1) @ RAS, done here, as the importer would for a CT.

Normal ranges (docs/anatomy.md, tibia section): MPTA 87 +- 3 deg (Paley 2002), medial
posterior slope 0-15 deg (7 +- 3 mean in Brazier 1996 / Genin 1993; individual values up to
about 15 deg).
"""

from __future__ import annotations

import numpy as np
import pytest
import pyvista as pv
from orthonav.core.errors import InputError
from orthonav.planning.tka.alignment import compute_angles, limb_frames
from orthonav.planning.tka.landmarks import find_tibial_landmarks
from scipy.spatial import cKDTree

LPS_FROM_VHF = np.diag([-1.0, -1.0, 1.0])


def _load(folder, name: str) -> pv.PolyData:
    m = pv.read(folder / f"VHF_Left_{name}_smooth.stl")
    m.points = np.asarray(m.points) @ LPS_FROM_VHF.T
    return m


@pytest.fixture(scope="module")
def vhf(shared_data):
    folder = shared_data / "real_bone_surfaces" / "knee_vhf_left"
    if not folder.is_dir():
        pytest.skip(f"VHF knee surfaces not found at {folder}")
    bones = {b: _load(folder, f"Bone_{b.capitalize()}") for b in ("tibia", "fibula", "patella")}
    cart = {s: _load(folder, f"Cartilage_Tibia{s.capitalize()}") for s in ("medial", "lateral")}
    return bones, cart


def _dist(mesh: pv.PolyData, p) -> float:
    return float(cKDTree(np.asarray(mesh.points)).query(np.asarray(p))[0])


def _pos(lms, k):
    return np.asarray(lms[k].position_lps_mm)


def test_vhf_tibia_is_whole_and_side_is_inferred_left(vhf):
    bones, _ = vhf
    z = np.asarray(bones["tibia"].points)[:, 2]
    assert 300.0 < np.ptp(z) < 420.0  # a whole adult tibia (335 mm here): the ankle is in the data
    report = {}
    lms = find_tibial_landmarks(bones, report=report)
    assert report["side"] == "left" and report["not_measured"] == {}
    fr = limb_frames(lms)
    # LPS: a left leg's lateral points to +x (patient left), anterior to -y, proximal to +z.
    assert fr.tibia_lateral[0] > 0.9 and fr.tibia_anterior[1] < -0.9 and fr.tibia_proximal[2] > 0.9
    with pytest.raises(InputError, match="left leg"):
        find_tibial_landmarks(bones, side="right")
    # The side is the bones' chirality, not the CT axes: left in the VHF (RAS) frame, a
    # rotation of LPS, it is still a left leg; mirrored (x -> -x) it is a right one.
    for flip, expected in (((-1.0, -1.0, 1.0), "left"), ((-1.0, 1.0, 1.0), "right")):
        moved = {b: m.copy() for b, m in bones.items()}
        for m in moved.values():
            m.points = np.asarray(m.points) * np.asarray(flip)
        report = {}
        find_tibial_landmarks(moved, report=report)
        assert report["side"] == expected, flip


def test_vhf_tibial_angles_in_normal_ranges(vhf):
    bones, _ = vhf
    angles = compute_angles(find_tibial_landmarks(bones, side="left"))
    assert 84.0 <= angles["mpta"] <= 90.0, angles  # normal MPTA 87 +- 3 deg (Paley 2002: mean 87, 85-90)
    assert 0.0 <= angles["slope"] <= 15.0, angles  # medial posterior slope, 7 +- 3 mean, up to ~15


def test_vhf_plateau_centres_on_their_plateaus_and_ankle_between_malleoli(vhf):
    bones, cart = vhf
    lms = find_tibial_landmarks(bones, side="left")
    tibia = bones["tibia"]
    fr = limb_frames(lms)
    tkc = _pos(lms, "tibial_knee_centre")
    for side in ("medial", "lateral"):
        p = _pos(lms, f"{side}_plateau_centre")
        assert _dist(tibia, p) < 1.0, side  # on the bone surface
        # under its own compartment's cartilage (a few mm: the cartilage sits on the plateau)
        assert _dist(cart[side], p) < 3.0 and _dist(cart["lateral" if side == "medial" else "medial"], p) > 20.0, side
        sign = 1.0 if side == "lateral" else -1.0
        assert sign * np.dot(p - tkc, fr.tibia_lateral) > 15.0, side  # on the correct side, half a plateau out
    mm, lm, ankle = (_pos(lms, k) for k in ("medial_malleolus", "lateral_malleolus", "ankle_centre"))
    assert _dist(tibia, mm) < 1.0 and _dist(bones["fibula"], lm) < 1.0
    # The ankle centre lies between the malleoli (the midpoint), 40-90 mm apart in an adult.
    assert 40.0 < np.linalg.norm(lm - mm) < 90.0
    np.testing.assert_allclose(ankle, 0.5 * (mm + lm), atol=1e-9)
    assert np.dot(lm - mm, fr.tibia_lateral) > 30.0
    # The tibial mechanical axis runs inside the tibia at mid-shaft.
    mid = 0.5 * (ankle + tkc)
    sec = tibia.slice(normal=fr.tibia_proximal, origin=mid)
    pts = np.asarray(sec.points)
    radial = np.linalg.norm((pts - mid) - np.outer((pts - mid) @ fr.tibia_proximal, fr.tibia_proximal), axis=1)
    assert radial.min() > 3.0  # the axis is not near the cortex: it passes through the medullary section


def test_vhf_tibia_cropped_to_a_knee_stack_states_the_missing_ankle(vhf):
    bones, _ = vhf
    lms = find_tibial_landmarks(bones, side="left")
    jl = _pos(lms, "tibial_knee_centre")[2]
    crop = {b: m.clip_closed_surface(normal=(0, 0, 1), origin=(0, 0, jl - 75.0)) for b, m in bones.items()}
    crop = {b: m for b, m in crop.items() if m.n_points}
    report = {}
    short = find_tibial_landmarks(crop, side="left", report=report)
    assert "ankle_centre" not in short and "medial_malleolus" not in short
    assert report["not_measured"]["ankle_centre"].startswith("not measured: the CT ends")
    assert "not extrapolated" in report["not_measured"]["ankle_centre"]
    assert "ASSUMED" in short["tibial_axis_reference"].method
    # What the data holds barely changes: the plateau centres, on shallow real plateaus
    # whose deepest place is weakly defined in the plateau plane, move 0.7 / 2.6 mm as the
    # long axis (and so the plateau frame) changes with the crop (measured; < 3 mm asserted).
    for k in ("medial_plateau_centre", "lateral_plateau_centre"):
        assert np.linalg.norm(_pos(short, k) - _pos(lms, k)) < 3.0, k
    # MPTA and slope need the ankle: not computed from the stand-in axis.
    assert not {"mpta", "slope"} & set(compute_angles({k: v for k, v in short.items() if k != "tibial_axis_reference"}))
