"""Real bone surfaces as phantoms of the synthetic training CTs (:mod:`orthonav.phantoms.real_shapes`).

Data: ``../shared/data/real_bone_surfaces/`` (the VHF left knee's tibia, fibula and patella;
libhip's m4 proximal femurs); the distance-field and thickness tests need none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvista as pv
from orthonav.core.errors import InputError
from orthonav.phantoms import real_shapes as R


def test_the_distance_field_of_a_sphere_is_its_distance_to_within_half_a_step():
    """``mesh_sdf`` of a finely tessellated sphere (r = 20 mm) against |p - c| - r: within half
    the 0.8 mm step within 6 mm of the surface (where the renderer reads it; measured 0.40 mm
    at most, mean within 0.05 mm at the surface), the right sign, positive and growing beyond
    the grid's box."""
    c, r, step = np.array([3.0, -7.0, 11.0]), 20.0, 0.8
    f = R.mesh_sdf(pv.Sphere(radius=r, center=c, theta_resolution=180, phi_resolution=180), step_mm=step)
    rng = np.random.default_rng(0)
    d = rng.normal(size=(4000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    rad = rng.uniform(r - 6.0, r + 6.0, 4000)
    p = c + d * rad[:, None]
    err = f(p) - (rad - r)
    assert np.abs(err).max() < 0.5 * step + 0.02  # the tessellation's own error is ~0.01 mm
    assert abs(err[np.abs(rad - r) < 0.5].mean()) < 0.08
    assert np.all(np.sign(f(p)[np.abs(rad - r) > 0.5 * step]) == np.sign(rad - r)[np.abs(rad - r) > 0.5 * step])
    far = c + d[:10] * 80.0  # beyond the grid (its margin is 8 mm)
    np.testing.assert_array_less(50.0, f(far))
    assert np.all(f(c[None]) < -r + 1.0)


def test_the_cortex_is_thick_in_a_shaft_and_thin_at_a_wide_end():
    """The thickness model: a third of the local radius in a shaft (a 9 mm cylinder: 3 mm),
    1 mm in a 30 mm ball (an end), capped at 4 mm, 1.2 mm on a patella."""
    shaft = R.mesh_sdf(pv.Cylinder(radius=9.0, height=120.0, resolution=120).triangulate(), step_mm=0.7)
    t = R.cortical_thickness(shaft, "tibia")(np.array([[0.0, 0.0, 0.0], [0.0, 8.0, 0.0]]))
    np.testing.assert_allclose(t, 3.0, atol=0.35)  # the field's depth is within a step of 9 mm (8.6-9.0 here)
    end = R.mesh_sdf(pv.Sphere(radius=30.0, theta_resolution=90, phi_resolution=90), step_mm=1.0)
    np.testing.assert_allclose(R.cortical_thickness(end, "femur_left")(np.array([[29.0, 0.0, 0.0]])), 1.0, atol=1e-6)
    np.testing.assert_allclose(R.cortical_thickness(end, "patella")(np.zeros((3, 3))), 1.2)
    # between: a 16 mm shaft blends a quarter of the way to the end's 1 mm (4 mm capped: 3.25);
    # the field reads its axis up to a step shallower (15.4 mm here: 3.48)
    wide = R.mesh_sdf(pv.Cylinder(radius=16.0, height=120.0, resolution=120).triangulate(), step_mm=0.7)
    assert 3.2 < R.cortical_thickness(wide, "femur")(np.zeros((1, 3)))[0] < 3.55


def test_a_folder_without_known_sets_or_with_an_open_surface_is_a_clear_error(tmp_path: Path):
    with pytest.raises(InputError, match="not a folder"):
        R.find_shape_sets(tmp_path / "missing")
    with pytest.raises(InputError, match="none of the known"):
        R.find_shape_sets(tmp_path)
    folder = tmp_path / "femur_libhip_m4"
    folder.mkdir()
    pv.Sphere(radius=20.0).save(folder / "m4_lfemur_mm.stl")
    with pytest.raises(InputError, match="m4_rfemur_mm.stl"):  # the set is incomplete
        R.find_shape_sets(tmp_path)
    cup = pv.Sphere(radius=20.0).clip(normal="z")  # open
    cup.save(folder / "m4_rfemur_mm.stl")
    with pytest.raises(InputError, match="not a closed surface") as err:
        R.find_shape_sets(tmp_path)
    assert "m4_rfemur_mm.stl" in str(err.value)
    # A closed surface too thin for the distance field's grid: the error names its file.
    pv.Sphere(radius=20.0).save(folder / "m4_rfemur_mm.stl")
    pv.Sphere(radius=0.1, center=(0.3, 0.3, 0.3)).save(folder / "m4_lfemur_mm.stl")
    (shapes,) = R.find_shape_sets(tmp_path)
    with pytest.raises(InputError, match="encloses no voxel centre") as err:
        R.shape_phantom(shapes, sdf_step_mm=2.0)
    assert "m4_lfemur_mm.stl" in str(err.value)


@pytest.fixture(scope="module")
def knee_set(shared_data):
    root = shared_data / "real_bone_surfaces"
    if not (root / "knee_vhf_left").is_dir():
        pytest.skip(f"real bone surfaces not found at {root}")
    (shapes,) = R.find_shape_sets(root / "knee_vhf_left")
    return shapes, R.shape_phantom(shapes, spacing_mm=(1.5, 1.5, 2.0), sdf_step_mm=0.8)


def test_the_real_knee_is_rendered_with_its_volumes_and_drawn_as_a_training_ct(knee_set):
    """The VHF knee (turned from RAS to LPS: the left fibula lateral, +x): each bone's label
    volume within 2 % of its surface's, the rendered bone fractions too, cortex a part of it; a
    synthetic draw of the ``real`` family holds those classes, labelled where the CT is bone."""
    from orthonav.phantoms.synth_ct import CLASSES, synth_draw

    shapes, sp = knee_set
    assert sp.phantom.truth.kind == "knee" and sp.phantom.label_table.side == "left"
    tib_c = shapes.meshes["tibia"].center
    assert shapes.meshes["fibula"].center[0] > tib_c[0]  # a left leg's fibula lies to the patient's left (+x in LPS)
    assert shapes.meshes["patella"].center[1] < tib_c[1]  # the patella in front (-y)
    lab = sp.phantom.labels
    vox = float(np.prod(lab.spacing_mm))
    for v, name in sp.phantom.label_table.labels.items():
        vol = float((lab.array_zyx == v).sum()) * vox
        assert abs(vol / shapes.meshes[name].volume - 1.0) < 0.02, name
    total = sum(m.volume for m in shapes.meshes.values())
    bone = float((sp.fractions["cortical"].array_zyx + sp.fractions["marrow"].array_zyx).sum()) * vox
    cortex = float(sp.fractions["cortical"].array_zyx.sum()) * vox
    assert abs(bone / total - 1.0) < 0.02 and 0.2 < cortex / bone < 0.7
    rng = np.random.default_rng(3)  # both legs at 2 mm: a 4 s draw (a 0.7 mm draw takes a minute)
    d = synth_draw(rng, families=(), shapes=[sp])  # the real family only
    assert {"tibia_left", "tibia_right"} <= set(d.names)  # the mirrored copy is the other side
    # Both legs of a left source: each leg on its own side of the body (LPS: left at +x), each
    # fibula lateral to its tibia (found by a second review: the copies were swapped).
    from dataclasses import replace

    from orthonav.phantoms.fov import apply_fov, random_fov

    for mirror in (False, True):
        spec = replace(random_fov(np.random.default_rng(0), "knee", spacing_mm=(2.5, 2.5)), both_legs=True, mirror=mirror, table=False, metal=False,
                       patient_rotation=np.eye(3), grid_direction=np.eye(3), window_mm=None)
        case = apply_fov(sp.phantom, spec)
        x = {n: float(case.labels.to_lps(np.argwhere(case.labels.array_zyx == v)[:, ::-1].astype(float))[:, 0].mean()) for v, n in case.names.items()}
        assert x["tibia_left"] > 0 > x["tibia_right"], x
        assert x["fibula_left"] > x["tibia_left"] and x["fibula_right"] < x["tibia_right"], x
    assert d.family == "real:knee_vhf_left"
    classes = {CLASSES[int(c)] for c in np.unique(d.labels.array_zyx) if c}
    assert classes <= {"tibia", "fibula", "patella"} and "tibia" in classes
    assert all(n.endswith(("_left", "_right")) for n in d.names)
    ct, labels = d.ct.array_zyx.astype(np.float32), d.labels.array_zyx
    from scipy import ndimage as ndi

    shell = ndi.binary_dilation(labels > 0, iterations=3) & ~ndi.binary_dilation(labels > 0)
    assert np.median(ct[labels > 0]) > np.median(ct[shell]) + 150.0


def test_shapes_without_synthetic_is_refused_before_any_work(tmp_path: Path):
    """``train-seg DATA WEIGHTS --shapes DIR`` (no --synthetic): one clear error naming DIR,
    exit code 2, nothing written."""
    import os
    import subprocess
    import sys

    code = "from orthonav.cli.main import main; main()"
    res = subprocess.run([sys.executable, "-c", code, "train-seg", str(tmp_path), str(tmp_path / "w.pt"), "--shapes", str(tmp_path / "surfaces")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 2 and "--shapes" in res.stderr and "surfaces" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "w.pt").exists()
