"""Naming rules on real bone shapes (``../shared/data/real_bone_surfaces``).

The naming's joint rules were found on phantom bones; these check them on real ones, voxelised
as a CT would sample them (interior points on a 1.5 or 3 mm grid):

- a femoral head sits in its socket as a ball in a cup (``naming.ball_in_cup``): the two real
  proximal femurs of libhip m4 (their heads are not perfect spheres) in a socket modelled around
  the published hip-joint centre; a real tibial plateau under a femur's condyles is not;
- a fibula lies apart from its tibia but at its ends: the real left leg of the Visible Human
  Female (tibia, fibula, patella, with a femur modelled above) is named as a knee with its
  fibula; a sliver split off the real tibia along its length is not a fibula.
"""

from __future__ import annotations

import numpy as np
import pytest
import pyvista as pv
from femur_perturb import voxelise
from orthonav.segmentation.naming import RegionInfo, ball_in_cup, name_bones
from scipy.spatial import cKDTree

LPS_FROM_VHF = np.diag([-1.0, -1.0, 1.0])  # the VHF surfaces are in RAS


def _interior(mesh: pv.PolyData, step_mm: float) -> np.ndarray:
    """(n, 3) centres of the grid voxels (``step_mm``) inside a closed surface, in its frame."""
    mask_zyx, lps_from_ijk = voxelise(mesh, step_mm)
    return np.argwhere(mask_zyx)[:, ::-1] * step_mm + lps_from_ijk[:3, 3]


def _ellipsoid(centre, semi, step_mm: float) -> np.ndarray:
    c, s = np.asarray(centre, float), np.asarray(semi, float)
    g = np.mgrid[tuple(slice(-a, a + 1e-9, step_mm) for a in s)].reshape(3, -1).T
    return g[((g / s) ** 2).sum(axis=1) <= 1.0] + c


def _info(index: int, pts: np.ndarray, step_mm: float) -> RegionInfo:
    return RegionInfo.from_points(index, pts, volume_mm3=len(pts) * step_mm**3)


def _published_hjc(csv) -> dict[str, tuple[np.ndarray, float]]:
    rows = {line.split(",", 2)[1]: line.split(",", 2)[2].strip() for line in csv.read_text().splitlines()[1:]}
    out = {}
    for side, key in (("l", "Left"), ("r", "Right")):
        centre = next(v for k, v in rows.items() if k.startswith(f"The {key} Hip Joint Center"))
        radius = next(v for k, v in rows.items() if k.startswith(f"The {key} Simplified Radius"))
        out[side] = (np.array([float(x) for x in centre.strip("[]").split()]), float(radius))
    return out


@pytest.fixture(scope="module")
def real(shared_data):
    base = shared_data / "real_bone_surfaces"
    femurs = {s: pv.read(base / "femur_libhip_m4" / f"m4_{s}femur_mm.stl") for s in ("l", "r")}
    hjc = _published_hjc(base / "femur_libhip_m4" / "m4_bone_ant.csv")
    leg = {}
    for b in ("Tibia", "Fibula", "Patella"):
        m = pv.read(base / "knee_vhf_left" / f"VHF_Left_Bone_{b}_smooth.stl")
        m.points = np.asarray(m.points) @ LPS_FROM_VHF.T
        leg[b.lower()] = m
    return femurs, hjc, leg


def _socket(femur_pts: np.ndarray, centre: np.ndarray, radius: float, lateral: float, step_mm: float) -> np.ndarray:
    """An acetabulum modelled around a femoral head: a 12 mm thick shell from 3 mm outside the
    head's sphere (cartilage and joint space), over the cap within 80 deg of the acetabular pole
    (45 deg superomedial: the socket opens inferolaterally, the neck leaves through it), kept
    3 mm from the femur."""
    g = _ellipsoid(centre, (radius + 15.0,) * 3, step_mm)
    r = np.linalg.norm(g - centre, axis=1)
    pole = np.array([-lateral * np.sin(np.radians(45.0)), 0.0, np.cos(np.radians(45.0))])
    cap = ((g - centre) @ pole) >= np.cos(np.radians(80.0)) * r
    g = g[(r >= radius + 3.0) & cap]
    return g[cKDTree(femur_pts).query(g)[0] >= 3.0]


@pytest.mark.parametrize("step_mm", [1.5, 3.0])
def test_a_real_femoral_head_in_its_socket_is_a_ball_in_a_cup(real, step_mm):
    femurs, hjc, _leg = real
    for side, lateral in (("l", 1.0), ("r", -1.0)):
        fem = _interior(femurs[side], step_mm)
        centre, radius = hjc[side]
        cup = _socket(fem, centre, radius, lateral, step_mm)
        ok, why = ball_in_cup(cup, fem)
        assert ok, (side, step_mm, why)
        # Out of its socket by 20 mm (a femur beside a bone, not in it): no ball in a cup.
        ok, why = ball_in_cup(cup + np.array([0.0, 0.0, 20.0]) + np.array([lateral * 12.0, 0.0, 0.0]), fem)
        assert not ok, (side, step_mm, why)


@pytest.mark.parametrize("step_mm", [1.5, 3.0])
def test_a_real_tibial_plateau_under_the_condyles_is_no_ball_in_a_cup(real, step_mm):
    """The misreading found on blurred knees: a femur piece taken for a hip bone over the tibia's
    top, taken for a femoral head in its cup."""
    _femurs, _hjc, leg = real
    tib = _interior(leg["tibia"], step_mm)
    top = tib[:, 2].max()
    cx, cy = tib[tib[:, 2] > top - 20.0][:, :2].mean(axis=0)
    # Two condyles resting on the plateau, 3 mm from it everywhere they meet it (as congruent as
    # a blurred segmentation may leave them), joined by a shaft: they fit concentric spheres of
    # 34-42 mm at ~3 mm RMS, but no femoral head is that large.
    condyles = np.concatenate([_ellipsoid((cx + dx, cy, top + 10.0), (18.0, 28.0, 25.0), step_mm) for dx in (-22.0, 22.0)])
    shaft = _ellipsoid((cx, cy, top + 120.0), (16.0, 16.0, 90.0), step_mm)
    femur = np.concatenate([condyles, shaft])
    femur = femur[cKDTree(tib).query(femur)[0] >= 3.0]
    ok, why = ball_in_cup(femur, tib)
    assert not ok, (step_mm, why)


def _knee_regions(leg, step_mm: float, *, sliver: bool) -> tuple[list[RegionInfo], dict[int, str]]:
    """The real left leg (LPS; tibia, fibula, patella) with a femur modelled on its plateau. With
    ``sliver``, the fibula is left out and a 12 mm sliver of the tibia's medial cortex is cut off
    along 150 mm of its shaft, as a blurred segmentation may leave it."""
    tib = _interior(leg["tibia"], step_mm)
    fib = _interior(leg["fibula"], step_mm)
    pat = _interior(leg["patella"], step_mm)
    top = tib[:, 2].max()
    cx, cy = tib[tib[:, 2] > top - 20.0][:, :2].mean(axis=0)
    femur = np.concatenate([_ellipsoid((cx + dx, cy, top + 25.0), (18.0, 28.0, 25.0), step_mm) for dx in (-22.0, 22.0)])
    femur = np.concatenate([femur, _ellipsoid((cx, cy, top + 150.0), (16.0, 16.0, 120.0), step_mm)])
    femur = femur[(cKDTree(tib).query(femur)[0] >= 3.0) & (cKDTree(pat).query(femur)[0] >= 3.0)]
    truth = {0: "femur", 1: "tibia", 2: "patella"}
    if not sliver:
        return [_info(0, femur, step_mm), _info(1, tib, step_mm), _info(2, pat, step_mm), _info(3, fib, step_mm)], truth | {3: "fibula"}
    z = tib[:, 2]
    mid = (z > top - 250.0) & (z < top - 100.0)
    x_med = np.full(len(tib), np.nan)
    # The medial side of a left leg is -x (LPS); the sliver: the outer 12 mm on that side.
    for k in np.unique(np.round(z[mid] / step_mm)):
        sl = mid & (np.round(z / step_mm) == k)
        x_med[sl] = tib[sl, 0].min()
    cut = mid & (tib[:, 0] < x_med + 12.0)
    return [_info(0, femur, step_mm), _info(1, tib[~cut], step_mm), _info(2, pat, step_mm), _info(3, tib[cut], step_mm)], truth


@pytest.mark.parametrize("step_mm", [1.5, 3.0])
def test_the_real_fibula_is_named_and_a_sliver_of_the_tibia_is_not(real, step_mm):
    _femurs, _hjc, leg = real
    regions, truth = _knee_regions(leg, step_mm, sliver=False)
    res = name_bones(regions, anatomy="auto")
    assert res.anatomy == "knee", res.why
    assert {i: res.names[i] for i in truth} == {i: f"{n}_left" if res.side is None else n for i, n in truth.items()} or {
        i: res.names[i] for i in truth
    } == truth, (res.names, res.side, res.why)
    assert res.side == "left", res.why
    regions, _truth = _knee_regions(leg, step_mm, sliver=True)
    res = name_bones(regions, anatomy="auto")
    assert not res.names[3].startswith("fibula"), (res.names, res.why)
    assert res.names[0].startswith("femur") and res.names[1].startswith("tibia"), (res.names, res.why)
