"""A real knee completed with a fitted phantom femur (:mod:`orthonav.phantoms.real_knee`).

Data: ``../shared/data/real_bone_surfaces/knee_vhf_left`` (the VHF left knee's tibia, fibula,
patella and distal-femoral cartilage); the known-pose test needs none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvista as pv
from orthonav.core.errors import InputError
from orthonav.core.transforms import rotation_about_axis
from orthonav.phantoms import real_knee as K
from orthonav.phantoms import real_shapes as R


@pytest.fixture(scope="module")
def phantom_femur(small_knee_phantom):
    return small_knee_phantom.truth_meshes["femur"].copy()


def test_a_femur_is_put_back_where_its_own_condyles_were(phantom_femur):
    """Cartilage made from the femur's own distal surface, moved by a known pose (20 deg about
    the superior axis, scale 0.9, a translation): the fit finds that pose back, and leaves a
    tibia below it alone."""
    p = np.asarray(phantom_femur.points, np.float64)
    distal = p[p[:, 2] < p[:, 2].min() + 25.0]
    rot = rotation_about_axis([0.0, 0.0, 1.0], np.radians(20.0))
    shift = np.array([35.0, -20.0, 300.0])
    centre = p[p[:, 2] < p[:, 2].min() + 60.0].mean(axis=0)
    cartilage = (distal - centre) @ rot.T * 0.9 + centre + shift
    tibia = np.array([cartilage.mean(axis=0) - [0.0, 0.0, 80.0]])  # far below
    fitted, fit = K.fit_femur(phantom_femur, cartilage, tibia)
    assert fit.rotation_deg == 20.0 and fit.scale == 0.9
    assert fit.cartilage_median_mm < 0.05 and fit.lift_mm == 0.0
    expected = (p - centre) @ rot.T * 0.9 + centre + shift
    np.testing.assert_allclose(np.asarray(fitted.points), expected, atol=0.05)
    # A tibia in the way: the femur is lifted until it is JOINT_SPACE_MM clear of it.
    tibia = np.array([cartilage[np.argmin(cartilage[:, 2])] + [0.0, 0.0, 1.0]])
    lifted, fit = K.fit_femur(phantom_femur, cartilage, tibia)
    assert fit.lift_mm > 0.0 and K.JOINT_SPACE_MM <= fit.joint_space_mm < K.JOINT_SPACE_MM + 0.6
    np.testing.assert_allclose(np.asarray(lifted.points) - np.asarray(fitted.points), np.tile([0.0, 0.0, fit.lift_mm], (fitted.n_points, 1)), atol=1e-9)


def test_missing_cartilage_or_a_set_that_is_no_knee_is_a_clear_error(tmp_path: Path):
    with pytest.raises(InputError, match="missing") as err:
        K.read_femoral_cartilage(tmp_path)
    assert K.FEMORAL_CARTILAGE in str(err.value)
    hip = R.ShapeSet("femur_libhip_m4", "hip", "both", {"femur_left": pv.Sphere()})
    with pytest.raises(InputError, match="only to a knee set"):
        K.knee_with_phantom_femur(hip, tmp_path)


def test_the_vhf_knee_gets_a_femur_on_its_cartilage_clear_of_its_tibia(shared_data):
    folder = shared_data / "real_bone_surfaces" / "knee_vhf_left"
    if not folder.is_dir():
        pytest.skip(f"VHF knee surfaces not found at {folder}")
    (knee,) = R.find_shape_sets(folder)
    comp, fit = K.knee_with_phantom_femur(knee, folder)
    assert sorted(comp.meshes) == ["femur", "fibula", "patella", "tibia"] and comp.side == "left"
    # Measured 2026-12-07: rotation 0 deg, scale 1.05, cartilage 3.1 mm median (9.5 mm p90) from
    # the phantom's condyles, lifted 4.0 mm to a 4.2 mm joint space.
    assert fit.cartilage_median_mm < 4.0 and fit.cartilage_p90_mm < 11.0, fit
    assert fit.joint_space_mm >= K.JOINT_SPACE_MM and fit.lift_mm <= 10.0, fit
    femur = comp.meshes["femur"]
    assert femur.n_open_edges == 0
    tibia = comp.meshes["tibia"]
    assert femur.bounds[4] > tibia.bounds[4] + 100.0  # above the tibia, the distal end at the joint
    assert femur.bounds[4] < tibia.bounds[5]
    # Mirrored to the left and its faces turned back: the normals point out of the bone.
    n = femur.compute_normals(cell_normals=True, point_normals=False, auto_orient_normals=False)
    c = np.asarray(n.cell_centers().points)
    assert float(np.mean(np.sum((c - c.mean(axis=0)) * np.asarray(n.cell_data["Normals"]), axis=1))) > 0.0
    for bone in ("patella", "tibia", "fibula"):  # no point of another bone inside the femur
        d = pv.PolyData(np.asarray(knee.meshes[bone].points)).compute_implicit_distance(femur)["implicit_distance"]
        assert float(np.min(d)) > 2.0, (bone, float(np.min(d)))  # measured: patella 2.8 mm, tibia 4.2 mm
