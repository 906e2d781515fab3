"""The low-dose lower-limb protocol: three CT stacks (hip, knee, ankle) of one study -> one case.

The phantom study (:mod:`orthonav.phantoms.study`) is cut from the small knee phantom of the
session: the knee stack is the phantom CT's own slices (oblique grid), the hip and ankle stacks
are axis-aligned with twice the slice spacing. Import resamples them onto one grid with a
coverage mask (:mod:`orthonav.segmentation.stacks`); these tests check the result against the
phantom (values, positions, coverage), the refusals, and segmentation + naming on it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import map_coordinates
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume, make_lps_from_ijk, read_volume, to_sitk, write_volume
from orthonav.phantoms.study import write_ct_series, write_lower_limb_study
from orthonav.segmentation.importer import check_series, import_ct, list_dicom_series, series_geometry
from orthonav.segmentation.stacks import UNSCANNED_HU, read_import_record, read_scanned


@pytest.fixture(scope="module")
def study(small_knee_phantom, tmp_path_factory):
    """The three-stack study of the small knee phantom, imported into its own folder."""
    root = tmp_path_factory.mktemp("lower_limb") / "study"
    written = write_lower_limb_study(root, seed=0, phantom=small_knee_phantom)
    summary = import_ct(written.dicom_dir, root)
    return written, summary


def _resample_like(vol: Volume, like: Volume, interpolator=sitk.sitkLinear, default: float = -1000.0) -> np.ndarray:
    """``vol`` sampled at the voxel centres of ``like`` (float64; ``default`` outside ``vol``)."""
    ref = to_sitk(like.with_array(np.zeros(like.array_zyx.shape, np.uint8)))
    out = sitk.Resample(sitk.Cast(to_sitk(vol), sitk.sitkFloat32), ref, sitk.Transform(), interpolator, default, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).astype(np.float64)


def _inside_centres(stack: Volume, points_lps: np.ndarray, pad: float) -> np.ndarray:
    """True where points lie within the stack's voxel-centre hull grown by ``pad`` voxels."""
    ijk = stack.to_ijk(points_lps)
    n = np.array(stack.shape_ijk, dtype=float)
    return np.all((ijk >= -pad) & (ijk <= n - 1 + pad), axis=1)


def test_phantom_writes_three_series_of_one_study(study, small_knee_phantom):
    written, _summary = study
    series = list_dicom_series(written.dicom_dir)
    assert sorted(s.description for s in series) == ["ankle", "hip", "knee"]
    assert all(s.modality == "CT" for s in series)
    assert {s.study_uid for s in series} == {written.study_uid} and {s.frame_uid for s in series} == {written.frame_uid}
    assert len({s.series_uid for s in series}) == 3
    by_name = {st.spec.name: st.volume for st in written.stacks}
    for info in series:  # the geometry read from the headers alone (how a folder's stacks are told apart)
        m, shape = series_geometry(check_series(info))
        assert shape == by_name[info.description].shape_ijk
        np.testing.assert_allclose(m, by_name[info.description].lps_from_ijk, atol=1e-4)
    # Different slice spacings and orientations: the knee stack is the phantom's own oblique grid.
    np.testing.assert_allclose(by_name["knee"].lps_from_ijk[:3, :3], small_knee_phantom.ct.lps_from_ijk[:3, :3], atol=1e-9)
    for name in ("hip", "ankle"):
        np.testing.assert_allclose(by_name[name].direction, np.eye(3), atol=1e-12)
        assert by_name[name].spacing_mm[2] == pytest.approx(2 * small_knee_phantom.ct.spacing_mm[2])
    # The hip stack holds the femoral head, the knee stack the joint, the ankle stack the malleoli.
    lm = small_knee_phantom.truth.landmarks_lps_mm
    for name, keys in {"hip": ["femoral_head_centre"], "knee": ["femoral_knee_centre", "tibial_knee_centre"],
                       "ankle": ["medial_malleolus", "lateral_malleolus"]}.items():
        assert _inside_centres(by_name[name], np.array([lm[k] for k in keys]), pad=0).all(), name
    # Truth of the whole limb in the shared frame.
    truth = json.loads((written.root / "truth" / "truth.json").read_text())
    np.testing.assert_allclose(truth["landmarks_lps_mm"]["femoral_head_centre"], lm["femoral_head_centre"])
    assert (written.root / "truth" / "labels.nii.gz").is_file() and (written.root / "truth" / "full_ct.nii.gz").is_file()


def test_import_resamples_the_stacks_onto_one_grid_matching_the_phantom(study, small_knee_phantom):
    written, summary = study
    case = summary.case
    ct = read_volume(case.ct)
    scanned = read_scanned(case.root, ct)
    assert ct.array_zyx.dtype == np.int16 and scanned is not None
    sc = scanned.array_zyx
    knee = next(st.volume for st in written.stacks if st.spec.name == "knee")
    # One isotropic grid along the knee stack's (oblique) axes, at its in-plane spacing (1.2 mm >= 1 mm).
    np.testing.assert_allclose(ct.spacing_mm, [1.2, 1.2, 1.2], atol=1e-5)
    np.testing.assert_allclose(ct.direction, knee.direction, atol=1e-6)
    # Not scanned: -1024 HU, and the gaps between the stacks are in the grid.
    assert np.all(ct.array_zyx[~sc] == UNSCANNED_HU)
    assert 0.15 < sc.mean() < 0.5

    # The knee stack's voxel centres on every other grid slice are grid points: the imported CT
    # there equals the phantom CT exactly (the knee stack is the phantom's own voxels).
    ni, nj, nk = knee.shape_ijk
    ii, jj, kk = np.meshgrid(np.arange(0, ni, 3), np.arange(0, nj, 3), np.arange(0, nk, 2), indexing="ij")
    ijk_knee = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(float)
    ijk_grid = ct.to_ijk(knee.to_lps(ijk_knee))
    assert np.abs(ijk_grid - np.rint(ijk_grid)).max() < 1e-3
    g = np.rint(ijk_grid).astype(int)
    k = ijk_knee.astype(int)
    np.testing.assert_array_equal(ct.array_zyx[g[:, 2], g[:, 1], g[:, 0]], knee.array_zyx[k[:, 2], k[:, 1], k[:, 0]])

    # Everywhere inside the knee stack's voxel-centre hull: the phantom CT interpolated linearly
    # at the grid point (the same interpolation of the same voxels), within rounding.
    full = small_knee_phantom.ct
    full_zyx = full.array_zyx.astype(np.float32)

    def phantom_at(kji_grid: np.ndarray) -> np.ndarray:
        """The phantom CT interpolated linearly at grid voxels (k, j, i) of the case CT."""
        ijk = full.to_ijk(ct.to_lps(kji_grid[:, ::-1].astype(float)))
        return map_coordinates(full_zyx, ijk[:, ::-1].T, order=1, cval=-1000.0).astype(np.float64)

    kji = np.argwhere(sc)[::7]
    pts = ct.to_lps(kji[:, ::-1].astype(float))
    in_knee = _inside_centres(knee, pts, pad=-1e-3)
    got = ct.array_zyx[tuple(kji[in_knee].T)].astype(float)
    assert in_knee.sum() > 10_000
    assert np.abs(got - phantom_at(kji[in_knee])).max() <= 1.0
    # The hip and ankle stacks were resampled twice (phantom -> 1.5 x 1.5 x 4.8 mm stack ->
    # 1.2 mm grid): the CT agrees with the phantom within that interpolation error.
    rest = ~_inside_centres(knee, pts, pad=0.5)
    diff = ct.array_zyx[tuple(kji[rest].T)].astype(float) - phantom_at(kji[rest])
    assert rest.sum() > 10_000
    assert np.median(np.abs(diff)) < 15.0 and np.percentile(np.abs(diff), 95) < 150.0
    # Truth landmarks keep their place: in the knee stack the HU around them (3 x 3 x 3 voxels)
    # are the phantom's; in the hip and ankle stacks the CT matches the phantom best unshifted
    # (a shift by one pixel across or one slice along makes the match worse on every axis).
    for key in ("femoral_knee_centre", "tibial_knee_centre"):
        p = np.array(small_knee_phantom.truth.landmarks_lps_mm[key])
        i, j, kq = np.rint(ct.to_ijk(p[None])[0]).astype(int)
        box = (slice(kq - 1, kq + 2), slice(j - 1, j + 2), slice(i - 1, i + 2))
        assert sc[box].all(), key
        kji_box = np.argwhere(np.ones((3, 3, 3), bool)) + np.array([kq - 1, j - 1, i - 1])
        assert np.abs(ct.array_zyx[box].ravel() - phantom_at(kji_box)).max() <= 1.0, key
    for st in written.stacks:
        if st.spec.name == "knee":
            continue
        kji_st = kji[_inside_centres(st.volume, ct.to_lps(kji[:, ::-1].astype(float)), pad=-0.5)]
        p_st = ct.to_lps(kji_st[:, ::-1].astype(float))
        got_st = ct.array_zyx[tuple(kji_st.T)].astype(float)

        def mismatch(shift_lps):
            ijk = full.to_ijk(p_st + shift_lps)
            return float(np.mean(np.abs(got_st - map_coordinates(full_zyx, ijk[:, ::-1].T, order=1, cval=-1000.0))))

        here = mismatch(np.zeros(3))
        assert here < 25.0, (st.spec.name, here)
        for axis, step in ((0, st.volume.spacing_mm[0]), (1, st.volume.spacing_mm[1]), (2, st.volume.spacing_mm[2])):
            for sign in (-1.0, 1.0):
                shift = np.zeros(3)
                shift[axis] = sign * step
                assert mismatch(shift) > here + 2.0, (st.spec.name, axis, sign, here, mismatch(shift))

    # The coverage mask is the union of the stacks' voxel slabs ([-0.5, n - 0.5] on every axis).
    sub = np.argwhere(np.ones(sc[::5, ::5, ::5].shape, bool)) * 5
    pts = ct.to_lps(sub[:, ::-1].astype(float))
    inside = np.zeros(len(pts), bool)
    near_face = np.zeros(len(pts), bool)
    for st in written.stacks:
        ijk = st.volume.to_ijk(pts)
        n = np.array(st.volume.shape_ijk, dtype=float)
        lo, hi = ijk + 0.5, n - 0.5 - ijk
        inside |= np.all((lo >= 0) & (hi >= 0), axis=1)
        near_face |= np.all((lo >= -1e-3) & (hi >= -1e-3), axis=1) & (np.minimum(lo, hi).min(axis=1) < 1e-3)
    ok = ~near_face
    np.testing.assert_array_equal(sc[tuple(sub[ok].T)], inside[ok])

    # import.json records the three stacks, their spacing and extent, and which voxels each gave.
    record = read_import_record(case.root)
    assert record.method == "resampled" and record.scanned_file == "scanned.nii.gz"
    assert sorted(s.description for s in record.stacks) == ["ankle", "hip", "knee"]
    assert sum(s.grid_voxels for s in record.stacks) == int(sc.sum())
    knee_rec = next(s for s in record.stacks if s.description == "knee")
    np.testing.assert_allclose(knee_rec.spacing_mm, knee.spacing_mm, atol=1e-5)
    assert knee_rec.shape_ijk == list(knee.shape_ijk)
    assert summary.n_stacks == 3 and any("3 stacks resampled" in n for n in summary.notes)


def test_one_series_of_the_study_is_imported_on_its_own_grid(study, tmp_path):
    written, _summary = study
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    (case_dir / "scanned.nii.gz").write_bytes(b"stale")  # from an earlier stack import
    knee = next(st for st in written.stacks if st.spec.name == "knee")
    summary = import_ct(written.dicom_dir, case_dir, series=str(knee.series_number))
    ct = read_volume(summary.case.ct)
    np.testing.assert_array_equal(ct.array_zyx, knee.volume.array_zyx)
    np.testing.assert_allclose(ct.lps_from_ijk, knee.volume.lps_from_ijk, atol=1e-4)
    assert not (case_dir / "scanned.nii.gz").exists() and read_scanned(case_dir) is None
    record = read_import_record(case_dir)
    assert record.method == "native" and record.scanned_fraction == 1.0 and record.stacks[0].description == "knee"


def _series(folder: Path, vol: Volume, *, number: int, study: str = "2.25.1", frame: str = "2.25.2", name: str | None = None) -> None:
    write_ct_series(vol, folder, study_uid=study, series_uid=f"2.25.{100 + number}", frame_uid=frame,
                    series_number=number, description=name or f"stack {number}", prefix=f"s{number}")


def _block(z0: float, value: int, *, spacing=(2.0, 2.0, 4.0), direction=None, shape=(6, 10, 12)) -> Volume:
    a = np.full(shape, value, np.int16)
    a[:, :2, :] = -1000  # some air, so each stack looks like a CT
    return Volume(a, make_lps_from_ijk(spacing, [0.0, 0.0, z0], direction))


def test_stacks_of_different_studies_or_frames_are_refused(tmp_path):
    # Different studies, asked for explicitly or found together in one folder.
    d = tmp_path / "studies"
    _series(d, _block(0.0, 100), number=1, study="2.25.11")
    _series(d, _block(200.0, 100), number=2, study="2.25.12")
    with pytest.raises(InputError, match="2 different studies cannot be one case"):
        import_ct(d, tmp_path / "c1", series=["1", "2"])
    with pytest.raises(InputError, match="choose one with --series.*different studies"):
        import_ct(d, tmp_path / "c2")
    # Different frames of reference (one study).
    d = tmp_path / "frames"
    _series(d, _block(0.0, 100), number=1, frame="2.25.21")
    _series(d, _block(200.0, 100), number=2, frame="2.25.22")
    with pytest.raises(InputError, match="different frames of reference .0020,0052. cannot be combined without a registration"):
        import_ct(d, tmp_path / "c3", series=["1", "2"])
    # The same region twice (two reconstructions of one scan) is not a set of stacks.
    d = tmp_path / "recons"
    _series(d, _block(0.0, 100), number=1)
    _series(d, _block(4.0, 100, spacing=(1.0, 1.0, 2.0), shape=(12, 20, 24)), number=2)
    with pytest.raises(InputError, match="choose one with --series.*cover the same region"):
        import_ct(d, tmp_path / "c4")
    # Several stacks in separate folders: the same checks; DICOM and volume files do not mix.
    a, b = tmp_path / "fa", tmp_path / "fb"
    _series(a, _block(0.0, 100), number=1, study="2.25.31")
    _series(b, _block(200.0, 100), number=2, study="2.25.32")
    with pytest.raises(InputError, match="different studies"):
        import_ct([a, b], tmp_path / "c5")
    write_volume(_block(400.0, 100), tmp_path / "x.nii.gz")
    with pytest.raises(InputError, match="carries no Frame of Reference UID"):
        import_ct([a, tmp_path / "x.nii.gz"], tmp_path / "c6")
    for c in ("c1", "c2", "c3", "c4", "c5", "c6"):
        assert not (tmp_path / c / "ct.nii.gz").exists()


def test_overlap_orientation_and_gap(tmp_path):
    """A fine oblique stack and a coarse axis-aligned one overlapping, a third across a gap:
    the finer stack wins the overlap, the gap is unscanned, values are kept within a stack."""
    rot = np.array(sitk.VersorRigid3DTransform([0.0, 0.0, np.sin(np.radians(10)), np.cos(np.radians(10))]).GetMatrix()).reshape(3, 3)
    fine = _block(0.0, 300, spacing=(1.0, 1.0, 1.0), direction=rot, shape=(30, 24, 24))
    coarse = _block(-10.0, 900, spacing=(2.0, 2.0, 5.0), shape=(12, 20, 20))  # z -12.5 .. 47.5 mm
    far = _block(150.0, 600, spacing=(2.0, 2.0, 5.0), shape=(4, 20, 20))
    d = tmp_path / "dicom"
    _series(d, fine, number=1)
    _series(d, coarse, number=2)
    _series(d, far, number=3)
    # Overlapping this much, the folder alone reads as two reconstructions of one region: the
    # stacks are asked for by name.
    with pytest.raises(InputError, match="cover the same region"):
        import_ct(d, tmp_path / "case")
    summary = import_ct(d, tmp_path / "case", series=["1", "2", "3"])
    ct = read_volume(summary.case.ct)
    sc = read_scanned(summary.case.root, ct).array_zyx
    np.testing.assert_allclose(ct.direction, rot, atol=1e-6)
    np.testing.assert_allclose(ct.spacing_mm, [1.0, 1.0, 1.0], atol=1e-6)
    pts = ct.to_lps(np.argwhere(np.ones(ct.array_zyx.shape, bool))[:, ::-1].astype(float))
    flat = ct.array_zyx.ravel()
    in_fine_tissue = _inside_centres(fine, pts, pad=-0.01) & (fine.to_ijk(pts)[:, 1] > 2.5)
    assert in_fine_tissue.sum() > 1000
    assert np.all(flat[in_fine_tissue] == 300)  # the finer stack wins where both are scanned
    in_coarse_only = _inside_centres(coarse, pts, pad=-0.01) & ~_inside_centres(fine, pts, pad=1.0) & (coarse.to_ijk(pts)[:, 1] > 2.5)
    assert in_coarse_only.sum() > 1000 and np.all(flat[in_coarse_only] == 900)
    in_far = _inside_centres(far, pts, pad=-0.01) & (far.to_ijk(pts)[:, 1] > 2.5)
    assert in_far.sum() > 100 and np.all(flat[in_far] == 600)
    gap = (pts[:, 2] > 60.0) & (pts[:, 2] < 135.0)
    assert gap.sum() > 1000 and not sc.ravel()[gap].any() and np.all(flat[gap] == UNSCANNED_HU)
    record = read_import_record(summary.case.root)
    assert [s.grid_voxels > 0 for s in record.stacks] == [True, True, True]


@pytest.fixture(scope="module")
def truth_on_grid(study, small_knee_phantom):
    """The imported study's CT, its coverage mask and the phantom's truth label map sampled onto
    the case grid (nearest neighbour; 0 where not scanned): ``(ct, scanned, truth)``."""
    _written, imported = study
    ct = read_volume(imported.case.ct)
    sc = read_scanned(imported.case.root, ct).array_zyx
    truth = np.rint(_resample_like(small_knee_phantom.labels, ct, sitk.sitkNearestNeighbor, 0)).astype(np.uint8) * sc
    return ct, sc, truth


def test_naming_joins_the_pieces_of_each_bone_of_the_study_given_its_bones(truth_on_grid, small_knee_phantom):
    """Naming on the study's own grid and gaps, given the bones (the truth label map as a
    segmentation would hand it over: one region per scanned piece, cut at the stack borders):
    the femoral head (hip stack) is the femur of the knee joint, the ankle pieces are its tibia
    and fibula, each piece with its bone's name (the caller merges equal names into one label)."""
    from orthonav.segmentation.naming import name_bones, regions_from_label_map

    ct, sc, truth = truth_on_grid
    regions, values = regions_from_label_map(truth, ct.lps_from_ijk, scanned_zyx=sc)
    bone_of = {v: b for b, v in small_knee_phantom.truth.bones.items()}
    res = name_bones(regions, anatomy="auto")
    got: dict[str, list[tuple[str, float]]] = {}
    for r, v in zip(regions, values):
        if r.volume_mm3 < 5_000.0:
            continue  # slivers of a bone at a stack border (not a piece of the protocol)
        got.setdefault(bone_of[v], []).append((res.names.get(r.index, ""), round(res.confidence.get(r.index, 0.0), 3)))
    # Femur: hip and knee stacks; tibia and fibula: knee and ankle stacks; patella: knee stack.
    assert {b: len(p) for b, p in got.items()} == {"femur": 2, "tibia": 2, "fibula": 2, "patella": 1}, got
    for bone, named in got.items():
        assert all(n == bone and c >= 0.9 for n, c in named), (bone, got)
    assert res.side == "right" and res.anatomy == "knee"


def _segment_study(study, truth_on_grid, phantom, tmp_path_factory, backend: str):
    """``segment_case`` (``backend``, no meshes) on a copy of the imported study, with the truth
    label map sampled onto the case grid (0 where not scanned) and the truth bone of each
    scanned piece: ``(summary, ct, scanned, labels, table, pieces)``; ``pieces`` maps a bone to
    the label covering most of each of its scanned pieces (hip / knee / ankle stack)."""
    import shutil

    from orthonav.core.case import read_labels_table
    from orthonav.segmentation.pipeline import segment_case

    _written, imported = study
    root = tmp_path_factory.mktemp(f"lower_limb_seg_{backend}") / "case"
    shutil.copytree(imported.case.root, root, ignore=shutil.ignore_patterns("dicom"))
    summary = segment_case(root, mesh_formats=(), backend=backend)
    ct, sc, truth = truth_on_grid
    labels = read_volume(root / "labels.nii.gz").array_zyx
    table = read_labels_table(root / "labels.json").labels
    lm = phantom.truth.landmarks_lps_mm
    z_mid_thigh = 0.5 * (lm["femoral_head_centre"][2] + lm["femoral_knee_centre"][2])
    z_mid_shank = 0.5 * (lm["tibial_knee_centre"][2] + lm["ankle_centre"][2])
    kji = np.argwhere(truth > 0)
    z = ct.to_lps(kji[:, ::-1].astype(float))[:, 2]
    stack_of = {"hip": z > z_mid_thigh, "knee": (z < z_mid_thigh) & (z > z_mid_shank), "ankle": z < z_mid_shank}
    pieces: dict[str, dict[str, tuple[int, float]]] = {}
    for bone, value in phantom.truth.bones.items():
        for stack, sel in stack_of.items():
            sel = sel & (truth[tuple(kji.T)] == value)
            if sel.sum() < 200:
                continue  # this bone is not in this stack (e.g. no femur at the ankle)
            got = labels[tuple(kji[sel].T)]
            main = int(np.bincount(got[got > 0]).argmax()) if (got > 0).any() else 0
            pieces.setdefault(bone, {})[stack] = (main, float((got > 0).mean()))
    return summary, ct, sc, labels, table, pieces


@pytest.fixture(scope="module")
def segmented(study, truth_on_grid, small_knee_phantom, tmp_path_factory):
    """The study segmented by the classical backend (:func:`_segment_study`)."""
    return _segment_study(study, truth_on_grid, small_knee_phantom, tmp_path_factory, "classical")


@pytest.fixture(scope="module")
def segmented_unet(study, truth_on_grid, small_knee_phantom, tmp_path_factory):
    """The study segmented by the shipped U-Net (:func:`_segment_study`)."""
    return _segment_study(study, truth_on_grid, small_knee_phantom, tmp_path_factory, "unet")


def _assert_every_scanned_piece_found(segmented) -> None:
    summary, _ct, sc, labels, _table, pieces = segmented
    assert not labels[~sc].any()  # no bone where nothing was scanned (nor at the stack borders beyond it)
    # Every scanned piece of every bone is segmented: the femur in the hip and knee stacks, the
    # tibia and fibula in the knee and ankle stacks, the patella in the knee stack.
    assert {b: sorted(p) for b, p in pieces.items()} == {
        "femur": ["hip", "knee"], "tibia": ["ankle", "knee"], "fibula": ["ankle", "knee"], "patella": ["knee"]
    }
    for bone, per_stack in pieces.items():
        for stack, (value, covered) in per_stack.items():
            assert value > 0 and covered > 0.9, (bone, stack, covered, summary.notes)
    # Different bones never share a label.
    owner = {}
    for bone, per_stack in pieces.items():
        for value, _c in per_stack.values():
            assert owner.setdefault(value, bone) == bone, (value, owner[value], bone)


def _assert_pieces_named_as_one_bone(segmented, truth_on_grid, phantom, withheld: dict[str, set[str]] | None = None) -> None:
    """The femoral head (hip stack) and the distal femur (knee stack) are one ``femur_right``;
    likewise the tibia and the fibula (knee and ankle stacks); the patella is named; and each
    label holds one bone (a label whose bone voxels are mostly another bone's is a misname).
    ``withheld``: bone -> stacks whose piece of it may be left unnamed (``bone_<n>``)."""
    summary, _ct, _sc, labels, table, pieces = segmented
    _ct2, _sc2, truth = truth_on_grid
    names = {bone: {stack: table.get(v, "") for stack, (v, _c) in per_stack.items()} for bone, per_stack in pieces.items()}
    bone_of = {v: b for b, v in phantom.truth.bones.items()}
    for value, name in table.items():
        got = truth[labels == value]
        counts = np.bincount(got[got > 0], minlength=max(bone_of) + 1)
        main = int(counts.argmax())
        assert counts[main] >= 0.9 * counts.sum(), (name, {bone_of[v]: int(c) for v, c in enumerate(counts) if c}, summary.notes)
    for bone, per_stack in pieces.items():
        values = {v for stack, (v, _c) in per_stack.items() if stack not in (withheld or {}).get(bone, set())}
        assert len(values) == 1, (bone, names, summary.notes)  # one label for the pieces across the gap
        assert table[values.pop()] in (bone, f"{bone}_right"), (bone, names, summary.notes)


def test_segmentation_of_the_study_finds_every_scanned_piece_and_nothing_unscanned(segmented):
    _assert_every_scanned_piece_found(segmented)


def test_segmentation_names_the_pieces_of_each_bone_as_one_bone(segmented, truth_on_grid, small_knee_phantom):
    """The classical backend (:func:`_assert_pieces_named_as_one_bone`).

    An xfail until 2026-12-05: the study's cortex reads 838 HU (levels 'not resolved': seed 440,
    growth 162 HU) and the separation's marker watershed let the knee-stack fibula's marker flood
    the connected partial-volume halo: one region of 112 mL held the fibula (11 %), a shell of
    the femur and tibia (47 %) and halo (42 %), and took the femur's top slab at the stack border,
    so no knee joint was found. Each voxel now floods at its brightest 26-neighbour's level
    (``marker_watershed(..., lift=True)``). That was tried before and reverted because a 3 mm
    knee draw then read as a hip; the hip rule now needs a ball in a socket (``ball_in_cup``)."""
    _assert_pieces_named_as_one_bone(segmented, truth_on_grid, small_knee_phantom)


def test_unet_segmentation_finds_and_names_every_piece_of_each_bone_as_one_bone(segmented_unet, truth_on_grid, small_knee_phantom):
    """The shipped U-Net (``segment --backend unet``) on the same study: every scanned piece found,
    nothing where nothing was scanned, and the femoral head, the knee bones and the ankle pieces
    named, each bone's pieces under one label holding that bone only. The network names pieces
    by what it sees in each (a femoral head, a distal tibia), so it needs no joint between them.

    Since 2026-12-08 the shipped weights name the distal tibia alone in the ankle stack 'femur'
    (the femur label's mean confidence 0.77: warned; the weights before named it right). The
    anatomy check sees the stacks' unscanned gaps since then (``segment_unet(scanned=...)``; before,
    it named no piece of this study, 0.16-0.18) and names that piece tibia (0.93), so the
    network's name is withheld with both names. An ankle-stack piece may be so withheld, and
    only with the anatomy's right name in its reason; the femur's two pieces, the knee's bones
    and the fibula's pieces stay named as one bone each."""
    _assert_every_scanned_piece_found(segmented_unet)
    summary, _ct, _sc, _labels, table, pieces = segmented_unet
    withheld: dict[str, set[str]] = {}
    for bone, per_stack in pieces.items():
        for stack, (value, _c) in per_stack.items():
            name = table.get(value, "")
            if name.startswith("bone_"):
                assert stack == "ankle", (bone, stack, name, summary.notes)
                says = re.compile(rf"says {bone}[ _]")  # the anatomy's name, with or without a side
                assert any(n.startswith(f"{name} ") and says.search(n) for n in summary.notes), (bone, name, summary.notes)
                withheld.setdefault(bone, set()).add(stack)
    assert "fibula" not in withheld, (withheld, summary.notes)  # its ankle piece stays named
    _assert_pieces_named_as_one_bone(segmented_unet, truth_on_grid, small_knee_phantom, withheld)


def test_the_unet_anatomy_check_sees_the_stacks_gaps(truth_on_grid, small_knee_phantom):
    """The U-Net's anatomy check (``withhold_against_anatomy``) on the study's own grid, given the
    true bones with the ankle stack's tibia labelled 'femur' (as the weights shipped since
    2026-12-08 label it). Without the coverage mask the anatomy cannot tell a piece cut by an
    unscanned gap from a whole bone and names no piece of this study, so nothing is withheld;
    with it the ankle piece is a tibia on the line of the knee's tibia and the network's
    'femur' is withheld (``segment_unet(scanned=...)``, passed by ``segment_case``)."""
    from orthonav.segmentation.unet_grid import canonical_grid
    from orthonav.segmentation.unet_labels import withhold_against_anatomy

    ct, sc, truth = truth_on_grid
    classes = {1: "femur", 2: "tibia", 3: "fibula", 4: "patella", 5: "hip", 6: "sacrum"}
    value = {n: v for v, n in classes.items()}
    lab = np.zeros(truth.shape, np.uint8)
    for bone, v in small_knee_phantom.truth.bones.items():
        lab[truth == v] = value[bone]
    lm = small_knee_phantom.truth.landmarks_lps_mm
    kji = np.argwhere(lab == value["tibia"])
    below = ct.to_lps(kji[:, ::-1].astype(float))[:, 2] < 0.5 * (lm["tibial_knee_centre"][2] + lm["ankle_centre"][2])
    ankle = np.zeros(lab.shape, bool)
    ankle[tuple(kji[below].T)] = True
    assert ankle.sum() > 1000
    lab[ankle] = value["femur"]
    grid = canonical_grid(ct, 4.0)
    ni, nj, nk = grid.size_ijk
    prob = np.full((7, nk, nj, ni), 0.15, np.float32)
    prob[0] = 0.1
    for mask, withheld in ((None, False), (ct.with_array(sc.astype(np.uint8)), True)):
        labels, abstained = lab.copy(), {}
        withhold_against_anatomy(labels, ct, classes, abstained, np.zeros(lab.shape, np.float32), grid, prob, scanned=mask)
        assert (labels[ankle] >= 7).all() == withheld and len(abstained) == int(withheld), (withheld, abstained)
        if withheld:
            assert "says tibia" in abstained[7].why, abstained
        assert np.array_equal(labels[~ankle], lab[~ankle])  # every other piece as the network named it


def test_cli_imports_several_sources_and_refuses_mixed_studies_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess:
        code = "from orthonav.cli.main import main; main()"
        env = {**os.environ, "COLUMNS": "200"}
        return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)

    write_volume(_block(0.0, 300, spacing=(1.0, 1.0, 2.0)), tmp_path / "knee.nii.gz")
    write_volume(_block(300.0, 500), tmp_path / "hip.nii.gz")
    out = run("import", "knee.nii.gz", "hip.nii.gz", "case", "--spacing", "2")
    assert out.returncode == 0, out.stderr
    assert "(2 stacks)" in out.stderr and "assumed to share one patient frame" in out.stderr
    record = read_import_record(tmp_path / "case")
    assert record.method == "resampled" and record.grid_spacing_mm == pytest.approx([2.0, 2.0, 2.0])
    _series(tmp_path / "a", _block(0.0, 100), number=1, study="2.25.41")
    _series(tmp_path / "b", _block(200.0, 100), number=2, study="2.25.42")
    out = run("import", "a", "b", "case2")
    assert out.returncode == 2 and "different studies" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = run("phantom", "hip", "study", "--three-stack")
    assert out.returncode == 2 and "--three-stack writes a knee phantom study" in out.stderr


def test_grid_spacing_grows_beyond_the_voxel_limit_and_memory_is_checked_first():
    from orthonav.segmentation.stacks import Stack, StackSource, combine_stacks, combined_grid

    a = Stack(_block(0.0, 300, spacing=(0.5, 0.5, 1.0), shape=(40, 60, 60)), StackSource(Path("a.nii.gz")))
    b = Stack(_block(300.0, 300), StackSource(Path("b.nii.gz")))
    grid, notes = combined_grid([a, b])
    np.testing.assert_allclose(grid.spacing_mm, [1.0, 1.0, 1.0])  # 0.5 mm in-plane is clamped to 1 mm
    assert grid.n_voxels > 100_000 and not notes
    small, notes = combined_grid([a, b], max_voxels=20_000)
    assert small.n_voxels <= 20_000 and small.spacing_mm[0] > 1.5 and "resampled at" in notes[0]
    with pytest.raises(InputError, match="above the import memory limit"):
        combine_stacks([a, b], max_bytes=3 * grid.n_voxels - 1)
