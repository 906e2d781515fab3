"""Hip (pelvis) segmentation: separation at blurred joints and TotalSegmentator naming.

The pelvis phantom's truth labels are {1: hip_left, 2: hip_right, 3: sacrum, 4: femur_left,
5: femur_right}. Its hip joints (femoral head in the acetabulum) and sacro-iliac joints are
narrower than the blur can keep dark, so the classical marrow markers leak across them; the
tests check that the bones are separated again and named by side.

Bounds on the SMALL phantom (1.8 x 1.8 x 2.4 mm voxels) are lower than the issue's 0.97 / 1.5
mm (which the full phantom meets for Dice, see tests at the end): the iliac wing is ~13 mm
thick and tapers to a thin crest, so one 1.8 mm voxel layer of partial volume at its edges is
~5 % of the hip bone's volume. Measured on the small phantom: Dice hip 0.948-0.951, sacrum
0.954, femur 0.971; HD95 3.0 / 2.4 / 1.8 mm.
"""

from __future__ import annotations

import numpy as np
import pytest
from orthonav.segmentation.naming import RegionInfo, detect_anatomy, name_regions

HIP_NAMES = ["femur_left", "femur_right", "hip_left", "hip_right", "sacrum"]


# --- naming rules on synthetic region layouts (fast) ------------------------------------------


def _blob(index: int, centre, semi, volume_ml: float, seed: int = 0) -> RegionInfo:
    """RegionInfo of a solid ellipsoid (LPS mm) sampled by points."""
    rng = np.random.default_rng(seed + index)
    p = rng.uniform(-1.0, 1.0, size=(40000, 3))
    p = p[(p**2).sum(axis=1) <= 1.0] * np.asarray(semi, float) + np.asarray(centre, float)
    return RegionInfo.from_points(index, p, volume_mm3=volume_ml * 1000.0)


def _cloud(centre, semi, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n', 3) uniform points in a solid ellipsoid (LPS mm)."""
    p = rng.uniform(-1.0, 1.0, size=(n, 3))
    return p[(p**2).sum(axis=1) <= 1.0] * np.asarray(semi, float) + np.asarray(centre, float)


def _hip_joint(i_hip: int, i_femur: int, m: float, rng: np.random.Generator) -> list[RegionInfo]:
    """A hip bone with a socket and a femur whose 24 mm head sits in it (3 mm joint space), on the
    side ``m`` (+1: patient left, +x in LPS). Volumes as measured on the pelvis phantom."""
    head = np.array([m * 110.0, -20.0, -190.0])
    hip = _cloud((m * 80, -20, -130), (45, 60, 95), 60000, rng)
    ball = _cloud(head, (24, 24, 24), 8000, rng)
    shaft = _cloud((m * 135, -20, -290), (18, 20, 90), 20000, rng)
    disc = _cloud((0, 0, 0), (13, 13, 13), 6000, rng)
    neck = head + rng.uniform(0.0, 1.0, (len(disc), 1)) * (np.array([m * 135.0, -20.0, -215.0]) - head) + disc
    femur = np.concatenate([ball, neck, shaft])
    from scipy.spatial import cKDTree

    # The socket: the hip bone keeps out of the head's 27 mm ball and away from the neck and shaft.
    hip = hip[(np.linalg.norm(hip - head, axis=1) > 27.0) & (cKDTree(np.concatenate([neck, shaft])).query(hip)[0] > 6.0)]
    return [RegionInfo.from_points(i_hip, hip, volume_mm3=240e3), RegionInfo.from_points(i_femur, femur, volume_mm3=190e3)]


def _pelvis(mirror: float = 1.0, with_right: bool = True) -> list[RegionInfo]:
    """Bilateral pelvis layout (LPS: +x patient left): each femoral head in the socket of its hip
    bone. ``mirror=-1`` swaps the sides."""
    m = mirror
    rng = np.random.default_rng(0)
    regions = _hip_joint(0, 1, m, rng) + [_blob(2, (m * 15, 25, -105), (30, 25, 55), 145)]  # hip_left, femur_left, sacrum
    if with_right:
        regions += _hip_joint(3, 4, -m, rng)  # hip_right, femur_right
    return regions


def test_bilateral_pelvis_named_by_side():
    regions = _pelvis()
    assert detect_anatomy(regions) == "hip"
    names, side = name_regions(regions, anatomy="auto")
    assert names == {0: "hip_left", 1: "femur_left", 2: "sacrum", 3: "hip_right", 4: "femur_right"}
    assert side is None


def test_mirrored_pelvis_swaps_left_and_right():
    """A left/right flip of the geometry (an LPS/RAS mix-up) must swap the names."""
    names, _side = name_regions(_pelvis(mirror=-1.0), anatomy="hip")
    assert names[0] == "hip_right" and names[1] == "femur_right"
    assert names[3] == "hip_left" and names[4] == "femur_left"
    assert names[2] == "sacrum"


def test_single_hip_side_from_femur_lateral_of_its_hip_bone():
    names, side = name_regions(_pelvis(with_right=False), anatomy="hip")
    assert names[0] == "hip_left" and names[1] == "femur_left" and side == "left"
    names, side = name_regions(_pelvis(mirror=-1.0, with_right=False), anatomy="hip")
    assert names[0] == "hip_right" and names[1] == "femur_right" and side == "right"


def test_the_sacrum_spans_the_midline_above_and_behind_the_femoral_heads():
    """Found 2026-12-05 on a hip field of view the split cut into pieces: the largest piece near
    the midline behind the hip bones was taken for the sacrum, and a posterior piece of the
    left ilium (to one side of the midline) was named ``sacrum`` at 0.94, the true sacrum
    ``vertebrae_a``. A piece of the pubis (at the midline, in front of and below the femoral
    heads) would have been taken too. Neither is the sacrum now; the sacrum still is."""
    regions = _pelvis() + [
        _blob(5, (60, 30, -90), (25, 20, 30), 160),  # posterior ilium, left of the midline, larger than the sacrum
        _blob(6, (15, -45, -200), (25, 15, 20), 170),  # pubis at the midline, in front of and below the heads
    ]
    names, _side = name_regions(regions, anatomy="auto")
    assert names[2] == "sacrum", names
    assert names[5] != "sacrum" and names[6] != "sacrum", names
    assert [names[i] for i in (0, 1, 3, 4)] == ["hip_left", "femur_left", "hip_right", "femur_right"]


def test_knee_layout_is_not_a_hip():
    femur = _blob(0, (0, 0, -200), (25, 25, 110), 300)
    tibia = _blob(1, (0, 0, -430), (25, 25, 110), 250)
    patella = _blob(2, (0, -40, -310), (20, 10, 20), 15)
    assert detect_anatomy([femur, tibia, patella]) == "knee"


def test_vertebra_above_the_sacrum_is_named_vertebrae():
    regions = _pelvis() + [_blob(5, (15, 20, -20), (25, 20, 15), 40)]
    names, _side = name_regions(regions, anatomy="hip")
    assert names[5] == "vertebrae_a" and names[2] == "sacrum"


def test_a_piece_of_a_hip_bone_touching_it_only_through_another_piece_joins_it():
    """The joint split cuts a hip bone with several marrow seeds into pieces, which the naming
    gives back to their bone as fragments; a piece that touches its bone only through another
    piece was left ``bone_1`` until 2026-12-07 (the small phantom of seed 31, below). Here a
    30 mL piece touches the right hip bone (hip_right), 4 mm below it, and a 20 mL piece touches
    only that piece (2 mm from it, 26 mm from the hip bone): both are fragments of it, the near
    one merged first."""
    from orthonav.segmentation.naming import name_bones

    regions = _pelvis()
    names, _side = name_regions(regions, anatomy="hip")
    right = next(i for i, n in names.items() if n == "hip_right")
    rng = np.random.default_rng(5)
    hip_pts = regions[right].points_lps
    lowest = hip_pts[np.argmin(hip_pts[:, 2])]  # the bone's inferior end (the ischium)
    near = lowest + np.array([0.0, 0.0, -4.0 - 10.0])  # a 10 mm piece just below it
    far = near + np.array([0.0, 0.0, -22.0])  # and one below that, touching the first only
    regions += [
        RegionInfo.from_points(5, _cloud(near, (10, 10, 10), 4000, rng), volume_mm3=30e3),
        RegionInfo.from_points(6, _cloud(far, (10, 10, 10), 4000, rng), volume_mm3=20e3),
    ]
    res = name_bones(regions, anatomy="hip")
    assert res.names[right] == "hip_right"
    assert list(res.fragments) == [5, 6], (res.fragments, res.why.get(5), res.why.get(6))
    assert res.why[6] == "a fragment touching hip_right through another fragment", res.why[6]
    assert 5 not in res.names and 6 not in res.names


@pytest.mark.slow
def test_no_piece_of_a_hip_bone_is_left_unnamed_on_the_small_phantom_of_seed_31():
    """The small phantom of seed 31 (scale 0.95, 4 deg pose jitter: the model card's unseen
    case): the joint split left 17 mL of the right hip bone as ``bone_1`` ("fits no hip bone in
    view"), touching hip_right only through a fragment merged into it: hip_right Dice 0.913
    until 2026-12-07, 0.955 with the fragments reached through fragments."""
    from orthonav.phantoms.hip import make_hip_phantom
    from orthonav.segmentation.classical import segment_classical
    from orthonav.segmentation.evaluate import evaluate_segmentation

    ph = make_hip_phantom(seed=31, small=True, scale=0.95, pose_jitter_deg=4.0)
    seg = segment_classical(ph.ct, anatomy="auto")
    assert sorted(seg.table.labels.values()) == HIP_NAMES, seg.table.labels
    scores = evaluate_segmentation(seg.labels, seg.table, ph.labels, ph.label_table)
    assert scores["hip_right"].dice >= 0.95, scores["hip_right"]


@pytest.mark.slow
def test_a_piece_of_the_ischium_beside_the_cup_does_not_take_the_femurs_place():
    """The small phantom of seed 51 (scale 1.09, 4 deg pose jitter): the joint split cut a 60 mL
    piece of the left ischium off beside the cup. It fits the cup as a ball to 2.6 mm RMS (the
    femurs of 14 such phantoms: 0.9-1.3 mm) but scored higher than the left femur on the other
    evidence (a hip bone larger than its femur), so until 2026-12-07 it was read as the femur and
    the left hip bone, the left femur and the sacrum stayed ``bone_<n>``. The better-fitting
    ball is the femoral head (``naming.CUP_BETTER_FIT``)."""
    from orthonav.phantoms.hip import make_hip_phantom
    from orthonav.segmentation.classical import segment_classical
    from orthonav.segmentation.evaluate import evaluate_segmentation

    scale = float(np.random.default_rng(51).uniform(0.9, 1.1))
    ph = make_hip_phantom(seed=51, small=True, scale=scale, pose_jitter_deg=4.0)
    seg = segment_classical(ph.ct, anatomy="auto")
    assert sorted(seg.table.labels.values()) == HIP_NAMES, seg.table.labels
    scores = evaluate_segmentation(seg.labels, seg.table, ph.labels, ph.label_table)
    assert min(s.dice for s in scores.values()) >= 0.95, scores


# --- the small pelvis phantom end to end (classical backend) ----------------------------------


@pytest.fixture(scope="module")
def small_hip(small_hip_phantom):
    """The session's small pelvis phantom (conftest: seed 0, ``small=True``); read-only."""
    return small_hip_phantom


@pytest.fixture(scope="module")
def small_hip_seg(small_hip):
    from orthonav.segmentation.classical import segment_classical

    return segment_classical(small_hip.ct, anatomy="auto")


@pytest.mark.slow
def test_small_phantom_auto_detects_hip_and_names_every_bone(small_hip_seg):
    seg = small_hip_seg
    assert sorted(seg.table.labels.values()) == HIP_NAMES
    assert sorted(seg.table.labels) == [1, 2, 3, 4, 5]  # contiguous label values
    assert any(n.startswith("split") for n in seg.notes), seg.notes


@pytest.mark.slow
def test_small_phantom_dice_hd95_against_truth(small_hip, small_hip_seg):
    from orthonav.segmentation.evaluate import evaluate_segmentation

    scores = evaluate_segmentation(small_hip_seg.labels, small_hip_seg.table, small_hip.labels, small_hip.label_table)
    assert sorted(scores) == HIP_NAMES  # no extra, no missing bone
    bounds = {"hip": (0.93, 3.6), "sacrum": (0.94, 3.6), "femur": (0.96, 2.4)}  # see module docstring
    for name, s in scores.items():
        dice_min, hd95_max = bounds[name.split("_")[0]]
        assert s.dice >= dice_min, (name, s)
        assert s.hd95_mm <= hd95_max, (name, s)


@pytest.mark.slow
def test_small_phantom_anatomy_hip_gives_the_same_labels(small_hip, small_hip_seg):
    from orthonav.segmentation.classical import segment_classical

    seg = segment_classical(small_hip.ct, anatomy="hip")
    assert seg.table.labels == small_hip_seg.table.labels
    assert np.array_equal(seg.labels.array_zyx, small_hip_seg.labels.array_zyx)


@pytest.mark.slow
def test_a_bone_put_together_from_pieces_encloses_no_gap():
    """The hip split peels the joint space between its pieces; naming then merges a bone's
    pieces back into one label, and the peeled gaps between them stayed inside it. On the small
    pelvis phantom of seed 1, hip_right held 728 voxels (5.7 mL) of enclosed gaps in 23 pieces
    until 2026-12-07: Dice 0.945, and its surface had inner walls, 5 % of its vertices 3.85 mm
    or more inside the bone (mean signed distance -0.30 mm). Now filled: Dice 0.957, mean +0.58 mm."""
    from scipy import ndimage as ndi

    from orthonav.phantoms.hip import make_hip_phantom
    from orthonav.segmentation.classical import segment_classical
    from orthonav.segmentation.evaluate import evaluate_segmentation
    from orthonav.segmentation.meshing import label_meshes

    ph = make_hip_phantom(seed=1, small=True)
    seg = segment_classical(ph.ct, anatomy="auto")
    labels = seg.labels.array_zyx
    for value, name in seg.table.labels.items():
        box = ndi.find_objects((labels == value).view(np.uint8))[0]
        m = labels[box] == value
        assert not (ndi.binary_fill_holes(m) & ~m).any(), name
    scores = evaluate_segmentation(seg.labels, seg.table, ph.labels, ph.label_table)
    assert scores["hip_right"].dice >= 0.955, scores["hip_right"]
    mesh = label_meshes(seg.labels, seg.table)["hip_right"]
    d = ph.signed_distance_mm("hip_right", np.asarray(mesh.points))
    assert d.mean() > 0.3 and np.percentile(d, 1) > -1.0, (float(d.mean()), float(np.percentile(d, 1)))


# --- the full pelvis phantom (the acceptance; slow: ~25 s to build, ~20 s to segment) ---


def _segment_fov(phantom, spec):
    """The classical segmentation (``anatomy="auto"``) of a field of view of ``phantom``: the
    segmentation, the truth labels on its grid and the truth's label of each name."""
    from orthonav.phantoms.fov import apply_fov
    from orthonav.segmentation.classical import segment_classical

    case = apply_fov(phantom, spec, with_ct=True)
    return segment_classical(case.ct, anatomy="auto"), case.labels.array_zyx, {n: v for v, n in case.names.items()}


def _bone_share(seg, truth, value: int, truth_value: int) -> float:
    """Share of the truth bone voxels under label ``value`` that are the bone ``truth_value``."""
    under = truth[seg.labels.array_zyx == value]
    under = under[under > 0]
    return float(np.mean(under == truth_value)) if under.size else 0.0


@pytest.fixture(scope="module")
def full_hip():
    from orthonav.phantoms.hip import make_hip_phantom

    return make_hip_phantom(seed=0)


@pytest.mark.slow
def test_full_phantom_dice_hd95_against_truth(full_hip):
    """Issue 3 acceptance on the full phantom (1.2 x 1.2 x 2.0 mm): Dice >= 0.97 per bone (met:
    0.987-0.994) and HD95 <= 1.5 mm (met: 1.20 mm for every bone since the edge level follows
    the cortex's thinning, 2026-12-06; at the half maximum hip_right measured 1.70 mm, one
    diagonal voxel, from partial volume at the iliac crest, the ASIS and the sacro-iliac joint)."""
    from orthonav.segmentation.classical import segment_classical
    from orthonav.segmentation.evaluate import evaluate_segmentation

    ph = full_hip
    seg = segment_classical(ph.ct, anatomy="auto")
    scores = evaluate_segmentation(seg.labels, seg.table, ph.labels, ph.label_table)
    assert sorted(scores) == HIP_NAMES
    for name, s in scores.items():
        assert s.dice >= 0.97, (name, s)
        assert s.hd95_mm <= 1.5, (name, s)


@pytest.mark.slow
def test_hip_fields_of_view_of_the_full_phantom_are_named_whole(full_hip):
    """Cropped, tilted hip fields of view (:func:`~orthonav.phantoms.fov.random_fov`: windows of
    12-25 cm, grids oblique up to 20 deg, patient tilt up to 25 deg, scale 0.8-1.2, prone or
    supine, head- or feet-first, a table and a bead half the time each) of the full-size pelvis
    phantom, resampled to 2-3 mm: the classical backend names all five bones in each, each label
    mostly (>= 80 %) the bone it is named after, and no name is wrong. Measured with
    ``bench_naming_e2e.py --full --scenario hip`` (seed 3): 12 of 12 draws whole at 2-3 mm, and
    at 0.7-1.0 mm (2026-12-06). The small phantom's hip draws (1.8 x 1.8 x 2.4 mm, thin cortices
    blurred below the split's cortex level) are named far less often: see the README."""
    from orthonav.phantoms.fov import random_fov

    rng = np.random.default_rng(3)
    for d in range(4):
        spec = random_fov(rng, "hip", spacing_mm=(2.0, 3.0))
        seg, truth, inv = _segment_fov(full_hip, spec)
        by_name = {n: v for v, n in seg.table.labels.items()}
        assert set(HIP_NAMES) <= set(by_name), (d, spec.label, seg.table.labels)
        for name in HIP_NAMES:
            under = truth[seg.labels.array_zyx == by_name[name]]
            share = float(np.mean(under == inv[name]))  # the halo (truth 0) counts against it here
            assert share >= 0.8, (d, spec.label, name, share)


def test_open_fractions_measure_how_much_of_a_marker_lies_against_the_outside():
    """:func:`open_fractions`: the share of the voxels within two face steps of a marker that lie
    outside the bones. A marker walled in by bone has none; a one-voxel marker on a flat face of
    the bones has 6 of its 24 (one side of the diamond), more than a marrow cavity ever shows
    and less than the pockets of blurred joint spaces measured (0.28-0.42)."""
    from orthonav.segmentation.classical import JOINT_OPEN_MAX, open_fractions

    mask = np.zeros((30, 30, 40), bool)
    mask[2:28, 2:28, 2:28] = True  # a bone whose marrow (marker 1) is walled by 3 voxels
    mask[:, :, 30:] = True  # a half-space of bone: marker 2 sits on its face
    markers = np.zeros(mask.shape, np.int32)
    markers[5:25, 5:25, 5:25] = 1
    markers[15, 15, 30] = 2
    frac = open_fractions(markers, mask, np.array([False, True, True]))
    assert frac[0] == 0.0 and frac[1] == 0.0
    assert frac[2] == pytest.approx(6 / 24)
    assert frac[2] <= JOINT_OPEN_MAX < 0.28
    assert open_fractions(markers, mask, np.array([False, False, True]))[1] == 0.0  # only those asked


@pytest.mark.slow
def test_a_blurred_hip_on_a_fine_grid_is_split_and_named(small_hip_phantom):
    """A tilted, cropped field of view of the small hip phantom (1.8 x 1.8 x 2.4 mm, thin cortices
    blurred to 540-690 HU, its marrow and joint spaces both at 200-250 HU) resampled to 0.88 mm
    (``random_fov`` seed 3, first hip draw). No bone was named (2026-12-06): a pocket of a blurred
    sacro-iliac joint was taken for marrow, markers grew along the blurred shell around the
    bones, and ITK's watershed started each marker at its own level, so one hip-bone marker
    flooded both hip bones and the sacrum. With pockets open to the outside dropped
    (:func:`open_fractions`), growth a voxel clear of the cortex and the outside
    (:func:`joint_moat_mm`) and the markers imposed as minima, all five bones are named, each
    label holding its bone and no other (measured: Dice 0.81-0.91, the surface of this blur a
    voxel outside the truth, as on the small phantom's other draws)."""
    from orthonav.phantoms.fov import random_fov

    seg, truth, inv = _segment_fov(small_hip_phantom, random_fov(np.random.default_rng(3), "hip", spacing_mm=(0.7, 1.0)))
    by_name = {n: v for v, n in seg.table.labels.items()}
    assert set(HIP_NAMES) <= set(by_name), (seg.table.labels, seg.notes)
    for name in HIP_NAMES:
        assert seg.table.confidence[by_name[name]] >= 0.8, (name, seg.table.confidence)
        assert _bone_share(seg, truth, by_name[name], inv[name]) >= 0.95, name


@pytest.mark.slow
def test_no_knee_is_read_beside_a_hip_joint(small_hip_phantom):
    """The fourth hip draw of ``random_fov`` seed 11 (1.5-3 mm): once its pelvis was split into many
    pieces, a piece of the left hip bone, the left femur and a piece of the joint read as a knee
    ("two large bones meeting end to end, a patella in front of the joint") and were named
    femur_left, tibia_left and patella_left. A knee lies a femur's length below every hip joint
    (:data:`~orthonav.segmentation.naming.MIN_HIP_TO_KNEE_MM`): no confident name is wrong, and
    the hips are found again among the released pieces."""
    from orthonav.phantoms.fov import random_fov

    rng = np.random.default_rng(11)
    for _ in range(4):
        spec = random_fov(rng, "hip", spacing_mm=(1.5, 3.0))
    seg, truth, inv = _segment_fov(small_hip_phantom, spec)
    assert {"femur_left", "hip_left", "femur_right", "hip_right"} <= set(seg.table.labels.values()), seg.table.labels
    for v, name in seg.table.labels.items():
        if name.startswith("bone_"):
            continue
        assert name in inv, (name, seg.table.labels)  # no knee bone in a pelvis
        assert _bone_share(seg, truth, v, inv[name]) >= 0.9, name


def test_a_knee_whose_bones_sit_as_a_head_in_a_cup_is_a_hip(small_hip_phantom):
    """The third hip draw of ``random_fov`` seed 41 (1.5-3 mm; 2.8 mm voxels, prone, feet
    first): its pelvis split into pieces, and the only "knee" was a piece of the left hip bone
    over the left femur (end to end, 0.94) with a pelvis piece for a patella. No hip joint was left
    beside it, so the check by distance (``MIN_HIP_TO_KNEE_MM``) could not release it; the
    automatic anatomy then fell back to the unsplit pelvis and named nothing. The knee's own two
    bones sit as a femoral head in a cup (:func:`~orthonav.segmentation.naming._hip_pairs`), which
    a femur over a tibia never does: such a knee is released, and the left hip joint is named."""
    from orthonav.phantoms.fov import random_fov

    rng = np.random.default_rng(41)
    for _ in range(3):
        spec = random_fov(rng, "hip", spacing_mm=(1.5, 3.0))
    seg, truth, inv = _segment_fov(small_hip_phantom, spec)
    names = set(seg.table.labels.values())
    assert {"femur_left", "hip_left"} <= names, seg.table.labels
    for v, name in seg.table.labels.items():
        if name.startswith("bone_"):
            continue
        assert name in inv, (name, seg.table.labels)  # no knee bone in a pelvis
        assert _bone_share(seg, truth, v, inv[name]) >= 0.9, name
