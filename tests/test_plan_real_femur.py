"""The proximal femur's landmarks on REAL femurs against published values (issue 14 items 1-2).

Data: ``../shared/data/real_bone_surfaces/femur_libhip_m4/``: left and right proximal femurs of
one subject segmented from a clinical CT (diku-dk/libhip, MIT) and that project's published
morphology (``m4_bone_ant.csv``): hip-joint centres (least-squares sphere fit to the head),
simplified head radii (that sphere's radius), neck-shaft angles (126 / 120 deg, libhip: the
angle between least-squares lines fitted to the neck and shaft parts of the VMTK centreline).

Measured (orthonav.planning.tha.analyse_proximal_femur, docs/anatomy.md "Proximal femur"):
head centre 0.38 / 0.27 mm from the published centre (left / right); head radius 24.57 /
25.02 mm vs the published 25.51 / 26.21 mm sphere radius (mean actual radius 25.0 / 25.0 mm);
neck-shaft angle 119.9 / 117.7 deg vs 126 / 120 deg: 6.1 / 2.3 deg BELOW the published
values, the left outside the issue's 3 deg target (kept as a strict xfail below, so a change
that reaches it is noticed). The neck axis is the least-squares line through the neck's
cross-section centroids from the head centre to its narrowest section (the head-neck part of
the centreline); the earlier definitions (head centre -> junction ring 116.1 / 114.2, head
centre -> narrowest section 117.6 / 115.4, normal of the minimum-area neck section, a line
through the head centre best fitting the neck sections) gave 114-119 deg. libhip's own split
of its VMTK centreline into neck and shaft parts is not published (its stored notebook
writes no neck-shaft angle): a medial centreline traced here (minimal path with cost 1/R or
1/R^2 through the distance transform, from the head centre or a head-surface point) split by
a least-squares broken line gives 119-138 deg depending on those choices, and moves up to
2.3-3.8 deg under the perturbations of test_plan_stability_femur.py. The published
difference left - right (6 deg) is seen by none of the stable definitions (0-2 deg).

Which axis reads low: neither shows a bias. On a femur built with known axes (the hip
phantom's shapes, the neck symmetric about its axis) both are exact (<= 0.01 deg); on the hip
phantom the shaft is exact and the neck turns 2.9 deg proximally in the neck-shaft plane
because the phantom's shaft top is blended into its superior neck (the test below). On m4 the
shaft sections from 20 mm below the lesser trochanter lie within 0.4 / 0.2 mm of the shaft
line in the neck-shaft plane; only sections nearer the lesser trochanter (its base, which the
definition excludes) raise the angle (120.5-124.6 / 118.0-123.2 deg). docs/anatomy.md "Which
axis reads low" has the figures.

Short femurs (issue 14 item 2): cropped 80 mm below the head the femur keeps its head centre
and says why it has no shaft axis / neck-shaft angle; with 60 mm of shaft below the lesser
trochanter it measures the angle within 1.5 deg of the whole mesh's; a THA plan on a hip
whose femurs stop 80 mm below the head still plans cup and stem and names what it could not
measure.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

pytestmark = pytest.mark.slow

HEAD_TOL_MM = 1.5
RADIUS_TOL_MM = 1.5  # published sphere radius; measured 0.94 / 1.19 mm smaller
NSA_TOL_DEG = 3.0
SIDES = {"l": "Left", "r": "Right"}


def _published(path) -> dict[str, dict[str, object]]:
    """Per side ('l' / 'r'): hip-joint centre (LPS mm), simplified radius, neck-shaft angle."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        _i, name, value = line.split(",", 2)
        rows[name] = value
    out = {}
    for s, word in SIDES.items():
        hjc = next(v for k, v in rows.items() if k.startswith(f"The {word} Hip Joint Center"))
        out[s] = {
            "hjc": np.array([float(x) for x in re.findall(r"-?\d+\.?\d*", hjc)]),
            "radius": float(next(v for k, v in rows.items() if k.startswith(f"The {word} Simplified Radius"))),
            "nsa": float(next(v for k, v in rows.items() if k.startswith(f"The {word} neck-shaft angle"))),
        }
    return out


@pytest.fixture(scope="module")
def m4(shared_data):
    import pyvista as pv
    from orthonav.planning.landmarks import surface_samples
    from orthonav.planning.tha import analyse_proximal_femur

    folder = shared_data / "real_bone_surfaces" / "femur_libhip_m4"
    if not folder.is_dir():
        pytest.skip(f"real femurs not found at {folder}")
    pub = _published(folder / "m4_bone_ant.csv")
    out = {}
    for s in SIDES:
        mesh = pv.read(folder / f"m4_{s}femur_mm.stl")
        out[s] = (mesh, analyse_proximal_femur(mesh, surface_samples(mesh), name=f"m4_{s}femur"), pub[s])
    return out


def _deg(a, b) -> float:
    """Angle (deg) between two unit vectors."""
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))))


def _crop_below(mesh, z_lps_mm: float):
    """The part of a closed femur surface above the axial plane z = ``z_lps_mm`` (closed)."""
    return mesh.clip_closed_surface(normal=(0.0, 0.0, 1.0), origin=(0.0, 0.0, z_lps_mm)).triangulate().clean()


def test_head_centre_and_radius_match_the_published_sphere_fit(m4):
    for s, (_mesh, f, pub) in m4.items():
        err = float(np.linalg.norm(f.head_centre_lps_mm - pub["hjc"]))
        assert err <= HEAD_TOL_MM, (s, err)
        assert abs(f.head_radius_mm - pub["radius"]) <= RADIUS_TOL_MM, (s, f.head_radius_mm, pub["radius"])
        assert f.head_rms_mm < 1.0 and f.head_points > 1000, (s, f.head_rms_mm, f.head_points)


def test_every_proximal_measure_is_made_on_the_whole_meshes(m4):
    """The m4 meshes end 140-150 mm below the head: enough shaft below the lesser trochanter."""
    from orthonav.planning.tha import MIN_SHAFT_MM

    for s, (_mesh, f, _pub) in m4.items():
        assert f.missing == (), f.missing
        assert f.shaft is not None and f.shaft_below_lt_mm >= MIN_SHAFT_MM
        assert f.lesser_trochanter_lps_mm is not None
        # the lesser trochanter lies below the head and medial of the shaft axis, posteriorly (LPS +y)
        u = np.asarray(f.shaft.direction_lps)
        assert 1.5 * f.head_radius_mm < (f.head_centre_lps_mm - f.lesser_trochanter_lps_mm) @ u < 4.0 * f.head_radius_mm
        assert f.lesser_trochanter_lps_mm[1] > np.asarray(f.shaft.origin_lps_mm)[1]
        # a proximal shaft axis runs within 25 deg of the CT's superior axis; the neck leaves the
        # head distally, towards the shaft
        assert u[2] > np.cos(np.radians(25.0))
        assert 90.0 < f.neck_shaft_deg < 150.0
        assert 30.0 < f.femoral_offset_mm < 70.0
        assert f.stem_axis is f.shaft


@pytest.mark.parametrize(
    "side",
    [
        pytest.param("l", marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason="issue 14 target not met on the left femur: neck-shaft angle 119.9 / 117.7 deg vs published 126 / 120 (6.1 / 2.3 deg low). Neither axis is biased on a femur with known axes (test_neck_and_shaft_axes_on_a_femur_whose_axes_are_known) and the m4 shafts are straight below the lesser trochanter; the gap is libhip's unpublished split of its VMTK centreline into neck and shaft parts; see the module docstring")),
        "r",
    ],
)
def test_neck_shaft_angle_within_3_deg_of_published(m4, side):
    _mesh, f, pub = m4[side]
    assert abs(f.neck_shaft_deg - pub["nsa"]) <= NSA_TOL_DEG, (side, f.neck_shaft_deg, pub["nsa"])


def _femur_with_known_axes(nsa_deg: float, *, shaft_cap_mm: float):
    """A proximal femur built like the hip phantom's (phantoms/hip.py): head sphere r 23 mm, a
    48 mm neck cone (13.3 -> 16 mm) at ``nsa_deg`` to the shaft and 12 deg anteverted, a 120 mm
    shaft cone (17 -> 13.5 mm) with a 7 deg medial tilt, greater and lesser trochanters, smooth
    union (6 mm). The shaft cone starts ``shaft_cap_mm`` proximal of the neck base (the phantom:
    20 mm, so its rounded top fills the superior neck). Returns (mesh LPS mm, unit neck axis
    head -> base, unit shaft axis pointing proximally)."""
    from orthonav.core.transforms import rotation_about_axis
    from orthonav.phantoms import sdf as S
    from orthonav.phantoms.render import BoneSpec, closed_limb_meshes

    x, y = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    head = np.zeros(3)
    u_d = np.array([-np.sin(np.radians(7.0)), 0.0, -np.cos(np.radians(7.0))])  # distal
    lat = x - (x @ u_d) * u_d
    lat /= np.linalg.norm(lat)
    post = y - (y @ u_d) * u_d
    post /= np.linalg.norm(post)
    a = np.radians(180.0 - nsa_deg)
    d = rotation_about_axis(u_d, np.radians(12.0)) @ (np.cos(a) * u_d + np.sin(a) * lat)
    if d[1] < 0:  # head -> base runs posteriorly: an anteverted neck
        d = rotation_about_axis(u_d, -np.radians(12.0)) @ (np.cos(a) * u_d + np.sin(a) * lat)
    b = head + 48.0 * d
    parts = [
        S.round_cone(b - shaft_cap_mm * u_d, b + 120.0 * u_d, 17.0, 13.5),
        S.sphere(head, 23.0),
        S.round_cone(head, b, 0.58 * 23.0, 16.0),
        S.ellipsoid(b + 16.0 * lat - 14.0 * u_d + 6.0 * post, [12.0, 14.0, 20.0]),
        S.sphere(b + 32.0 * u_d - 11.0 * lat + 9.0 * post, 8.0),
    ]
    corners = np.array([head, b + 120.0 * u_d, b + 30.0 * lat, b - 34.0 * u_d + 16.0 * lat])
    bounds = np.stack([corners.min(axis=0) - 30.0, corners.max(axis=0) + 30.0])
    spec = BoneSpec("femur", 1, S.union(parts, k=6.0), bounds, lambda p: np.full(len(p), 2.0))
    return closed_limb_meshes({"femur": spec}, 1.5)["femur"], d, -u_d


def test_neck_and_shaft_axes_on_a_femur_whose_axes_are_known():
    """The control for the real femurs: per axis, against a femur built with known axes.

    With a neck symmetric about its construction axis both axes are exact (0.00-0.01 deg
    measured) at 120 and 140 deg. Built as the hip phantom is (its shaft cone's rounded top 20 mm
    above the neck base, blended into the superior neck) the shaft axis stays exact but the
    neck's cross-sections from ~14 mm beyond the head centre are pulled towards the
    superior neck (0.9 mm at its narrowest section), so the neck axis turns proximally IN the
    neck-shaft plane: 2.9 deg at 130 deg (the small and full-size hip phantoms read 127.1).
    That is the phantom's neck centreline, not an error of either axis."""
    from orthonav.planning.landmarks import surface_samples
    from orthonav.planning.tha import analyse_proximal_femur

    def axes(nsa_deg, cap_mm):
        mesh, d, u = _femur_with_known_axes(nsa_deg, shaft_cap_mm=cap_mm)
        f = analyse_proximal_femur(mesh, surface_samples(mesh), name="femur")
        assert f.missing == () and np.linalg.norm(f.head_centre_lps_mm) < 0.3
        return f, d, u

    for nsa in (120.0, 140.0):
        f, d, u = axes(nsa, 0.0)
        assert _deg(f.shaft.direction_lps, u) < 0.1, nsa
        assert _deg(f.neck.direction_lps, d) < 0.1, nsa
        assert f.neck_shaft_deg == pytest.approx(nsa, abs=0.1)
    f, d, u = axes(130.0, 20.0)
    assert _deg(f.shaft.direction_lps, u) < 0.1
    n = np.cross(d, u) / np.linalg.norm(np.cross(d, u))  # normal of the true neck-shaft plane
    neck = np.asarray(f.neck.direction_lps)
    assert abs(np.degrees(np.arcsin(neck @ n))) < 0.1  # the neck stays in the neck-shaft plane
    assert neck @ u > d @ u  # ... and turns proximally (a smaller neck-shaft angle)
    assert 2.0 < _deg(neck, d) < 4.0
    assert f.neck_shaft_deg == pytest.approx(130.0 - _deg(neck, d), abs=0.05)


def test_femur_ending_80_mm_below_the_head_keeps_its_head_and_says_what_it_lacks(m4):
    from orthonav.planning.landmarks import surface_samples
    from orthonav.planning.tha import MIN_SHAFT_MM, analyse_proximal_femur

    for s, (_mesh, full, pub) in m4.items():
        short = _crop_below(m4[s][0], float(pub["hjc"][2]) - 80.0)
        f = analyse_proximal_femur(short, surface_samples(short), name=f"m4_{s}femur")
        assert np.linalg.norm(f.head_centre_lps_mm - pub["hjc"]) <= HEAD_TOL_MM
        assert np.linalg.norm(f.head_centre_lps_mm - full.head_centre_lps_mm) < 0.1
        assert f.shaft is None and f.neck_shaft_deg is None and f.femoral_offset_mm is None
        (msg,) = f.missing
        assert "neck-shaft angle" in msg and "not measurable" in msg, msg
        if "lesser trochanter not found" not in msg:
            assert f"need {MIN_SHAFT_MM:.0f} mm of shaft" in msg and "the mesh has" in msg, msg
        assert "ends 80 mm below the head centre" in msg, msg
        assert f.stem_axis.definition.startswith("PROVISIONAL")
        # the neck is still measured, the same as on the whole femur
        assert np.degrees(np.arccos(np.clip(np.dot(f.neck.direction_lps, full.neck.direction_lps), -1, 1))) < 1.0


def test_femur_with_60_mm_of_shaft_below_the_lesser_trochanter_measures_the_angle(m4):
    from orthonav.planning.landmarks import surface_samples
    from orthonav.planning.tha import analyse_proximal_femur

    for s, (mesh, full, _pub) in m4.items():
        short = _crop_below(mesh, float(full.lesser_trochanter_lps_mm[2]) - 60.0)
        f = analyse_proximal_femur(short, surface_samples(short), name=f"m4_{s}femur")
        assert f.missing == (), f.missing
        assert abs(f.neck_shaft_deg - full.neck_shaft_deg) <= 1.5, (s, f.neck_shaft_deg, full.neck_shaft_deg)
        assert np.linalg.norm(f.head_centre_lps_mm - full.head_centre_lps_mm) < 0.1


def test_tha_plan_on_a_hip_ct_that_stops_80_mm_below_the_head(small_hip_phantom):
    """Cup from the acetabulum, stem from the head centre on a PROVISIONAL axis; the plan names
    the femoral measures it could not make and computes none of them."""
    from orthonav.planning.tha import build_tha_plan

    ph = small_hip_phantom
    meshes = dict(ph.truth_meshes)
    for sd in ("left", "right"):
        z = float(ph.truth.landmarks_lps_mm[f"femoral_head_centre_{sd}"][2]) - 80.0
        meshes[f"femur_{sd}"] = _crop_below(meshes[f"femur_{sd}"], z)
    plan = build_tha_plan(meshes)
    assert sorted((i.family, i.bone) for i in plan.implants) == [
        ("tha_cup", "hip_left"), ("tha_cup", "hip_right"), ("tha_stem", "femur_left"), ("tha_stem", "femur_right"),
    ]
    for sd in ("left", "right"):
        head = np.asarray(ph.truth.landmarks_lps_mm[f"femoral_head_centre_{sd}"])
        assert np.linalg.norm(np.asarray(plan.landmarks[f"femoral_head_centre_{sd}"].position_lps_mm) - head) < HEAD_TOL_MM
        stem = next(i for i in plan.implants if i.family == "tha_stem" and i.bone == f"femur_{sd}")
        assert np.linalg.norm(np.asarray(stem.ct_from_implant)[:3, 3] - head) < HEAD_TOL_MM
        assert abs(plan.angles_deg[f"cup_inclination_{sd}"] - 40.0) < 1e-6
        assert f"femoral_shaft_{sd}" not in plan.axes and f"femoral_neck_{sd}" in plan.axes
        assert plan.axes[f"femoral_stem_axis_{sd}"].definition.startswith("PROVISIONAL")
        for key in (f"neck_shaft_{sd}", f"stem_neck_shaft_{sd}"):
            assert key not in plan.angles_deg
        for key in (f"femoral_offset_{sd}_mm", f"femoral_offset_change_{sd}_mm", f"stem_cortex_clearance_{sd}_mm"):
            assert key not in plan.metrics
        assert plan.metrics[f"leg_length_change_{sd}_mm"] == pytest.approx(0.0, abs=1e-6)  # needs no shaft
        for key in (f"neck_shaft_{sd}", f"femoral_shaft_{sd}", f"femoral_offset_{sd}_mm", f"stem_cortex_clearance_{sd}_mm"):
            assert plan.not_measured[key].startswith(f"femur_{sd}: ") and "not measurable" in plan.not_measured[key], key
        assert plan.assumptions[f"femoral_stem_axis_{sd}"].startswith("PROVISIONAL")
        assert f"NOT MEASURED femur_{sd}: " in plan.notes
        assert f"{sd}: PROVISIONAL stem axis and size" in plan.notes
    assert "neck-shaft angle and femoral offset not measurable" in plan.notes
