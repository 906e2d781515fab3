"""Importing CT: real DICOM series (geometry, HU), volume files, and every rejection."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume, make_lps_from_ijk, read_volume, write_volume
from orthonav.segmentation.importer import import_source, list_dicom_series


def _dicom(shared_data: Path) -> Path:
    return shared_data / "ct_abdomen_dicom"


def _copy(shared_data: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "dicom"
    shutil.copytree(_dicom(shared_data), dst)
    return dst


def _edit(path: Path, old: bytes, new: bytes) -> None:
    """Same-length byte edit of one DICOM element value (keeps the file valid)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) == 1, (path, old)
    path.write_bytes(data.replace(old, new))


def test_real_dicom_geometry_and_hu(shared_data, tmp_path):
    series = list_dicom_series(_dicom(shared_data))
    assert len(series) == 1 and series[0].modality == "CT" and series[0].n_files == 20
    case = import_source(_dicom(shared_data), tmp_path / "case")
    ct = read_volume(case.ct)
    assert ct.array_zyx.dtype == np.int16 and ct.array_zyx.shape == (20, 512, 512)
    np.testing.assert_allclose(ct.spacing_mm, [0.9765625, 0.9765625, 2.0], atol=1e-6)
    np.testing.assert_allclose(ct.direction, np.eye(3), atol=1e-9)
    # First slice (most inferior) position from its own DICOM header, (0020,0032).
    first = min(series[0].files, key=lambda f: _position(f)[2])
    np.testing.assert_allclose(ct.origin_lps, _position(first), atol=1e-4)
    # HU = stored * slope + intercept (slope 1, intercept -1024): air outside the body is about -1000.
    r = sitk.ImageFileReader()
    r.SetFileName(str(first))
    raw = sitk.GetArrayFromImage(r.Execute())[0]
    stored = raw  # GDCM already applies the modality LUT per file
    np.testing.assert_array_equal(ct.array_zyx[0], stored.astype(np.int16))
    assert -1030 <= np.median(ct.array_zyx[0, :40, :40]) <= -950
    assert ct.array_zyx.max() > 1000  # bone


def _position(f: Path) -> np.ndarray:
    r = sitk.ImageFileReader()
    r.SetFileName(str(f))
    r.ReadImageInformation()
    return np.array([float(x) for x in r.GetMetaData("0020|0032").split("\\")])


def test_volume_files_keep_geometry_exactly(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.integers(-1024, 2000, size=(6, 7, 8)).astype(np.int16)
    d = sitk.VersorRigid3DTransform([0.1, 0.2, 0.3, 0.9]).GetMatrix()
    m = make_lps_from_ijk([0.7, 0.8, 1.9], [-12.5, 33.0, 801.25], np.array(d).reshape(3, 3))
    for ext in (".nii.gz", ".nrrd", ".mha"):
        src = tmp_path / f"ct{ext}"
        write_volume(Volume(a, m), src)
        case = import_source(src, tmp_path / f"case{ext}")
        ct = read_volume(case.ct)
        np.testing.assert_array_equal(ct.array_zyx, a)
        np.testing.assert_allclose(ct.lps_from_ijk, m, atol=1e-5)
    # Float HU are rounded to int16.
    src = tmp_path / "float.nrrd"
    write_volume(Volume(a.astype(np.float32) + 0.4, m), src)
    np.testing.assert_array_equal(read_volume(import_source(src, tmp_path / "cf").ct).array_zyx, a)


def test_non_ct_modality_is_rejected_naming_the_series(shared_data, tmp_path):
    d = _copy(shared_data, tmp_path)
    for f in sorted(d.iterdir()):
        _edit(f, b"\x08\x00\x60\x00CS\x02\x00CT", b"\x08\x00\x60\x00CS\x02\x00MR")
    with pytest.raises(InputError, match="modality MR, not CT"):
        import_source(d, tmp_path / "case")
    assert not (tmp_path / "case" / "ct.nii.gz").exists()


def test_gantry_tilt_is_rejected_naming_the_file(shared_data, tmp_path):
    d = _copy(shared_data, tmp_path)
    f = sorted(d.iterdir())[5]
    _edit(f, b"\x18\x00\x20\x11DS\x02\x000 ", b"\x18\x00\x20\x11DS\x02\x009 ")
    with pytest.raises(InputError, match=r"gantry tilt 9 deg") as e:
        import_source(d, tmp_path / "case")
    assert f.name in str(e.value)


def test_missing_slice_is_rejected_naming_the_neighbours(shared_data, tmp_path):
    d = _copy(shared_data, tmp_path)
    files = sorted(d.iterdir(), key=lambda f: _position(f)[2])
    files[7].unlink()
    with pytest.raises(InputError, match="1 missing slice") as e:
        import_source(d, tmp_path / "case")
    assert files[6].name in str(e.value) and files[8].name in str(e.value)


def test_inconsistent_spacing_is_rejected(shared_data, tmp_path):
    d = _copy(shared_data, tmp_path)
    files = sorted(d.iterdir(), key=lambda f: _position(f)[2])
    z = _position(files[10])[2]
    old = f"{z:.1f}".encode()
    new = f"{z - 0.7:.1f}".encode()
    assert len(old) == len(new)
    _edit(files[10], b"\\" + old, b"\\" + new)
    with pytest.raises(InputError, match="inconsistent slice spacing"):
        import_source(d, tmp_path / "case")


def _write_series(folder: Path, uid: str, modality: str, number: int, volume: Volume) -> None:
    """Write ``volume`` as a DICOM series (one file per slice) with SimpleITK, LPS geometry kept."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(volume.array_zyx)
    image.SetSpacing([float(x) for x in volume.spacing_mm])
    image.SetDirection([float(x) for x in volume.direction.ravel()])
    image.SetOrigin([float(x) for x in volume.origin_lps])
    d = volume.direction
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        tags = {
            "0008|0060": modality,
            "0020|000e": uid,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|0011": str(number),
            "0008|103e": f"{modality} test {number}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{x:.6f}" for x in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{x:.9f}" for x in (*d[:, 0], *d[:, 1])),
            "0028|1052": "0",
            "0028|1053": "1",
            "0008|0018": f"{uid}.{k + 1}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        w.SetFileName(str(folder / f"{number}_{k:03d}.dcm"))
        w.Execute(sl)


def test_several_series_must_be_chosen_and_oblique_geometry_is_kept(tmp_path):
    rng = np.random.default_rng(5)
    direction = np.array(sitk.VersorRigid3DTransform([0.05, 0.1, 0.02, 0.99]).GetMatrix()).reshape(3, 3)
    ct = Volume(
        rng.integers(-1000, 1500, size=(6, 12, 10)).astype(np.int16),
        make_lps_from_ijk([0.8, 0.7, 2.5], [-100.0, 50.0, 700.0], direction),
    )
    d = tmp_path / "two"
    _write_series(d, "1.2.826.0.1.3680043.2.1125.7", "CT", 3, ct)
    _write_series(d, "1.2.826.0.1.3680043.2.1125.8", "CT", 4, ct)
    series = list_dicom_series(d)
    assert len(series) == 2
    with pytest.raises(InputError, match="choose one with --series") as e:
        import_source(d, tmp_path / "case")
    assert "1.2.826.0.1.3680043.2.1125.7" in str(e.value) and "1.2.826.0.1.3680043.2.1125.8" in str(e.value)
    case = import_source(d, tmp_path / "case", series="4")  # by series number
    got = read_volume(case.ct)
    np.testing.assert_array_equal(got.array_zyx, ct.array_zyx)
    np.testing.assert_allclose(got.lps_from_ijk, ct.lps_from_ijk, atol=1e-4)
    with pytest.raises(InputError, match="no series 'nope'"):
        import_source(d, tmp_path / "case3", series="nope")
    # A third, non-CT series is listed but not picked by default... and refused when asked for.
    _write_series(d, "1.2.826.0.1.3680043.2.1125.9", "MR", 5, ct)
    with pytest.raises(InputError, match="not CT"):
        import_source(d, tmp_path / "case4", series="5")


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="not found"):
        import_source(tmp_path / "missing.nii.gz", tmp_path / "case")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported file type"):
        import_source(tmp_path / "notes.txt", tmp_path / "case")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM image series"):
        import_source(tmp_path / "empty", tmp_path / "case")
    mr = np.random.default_rng(0).integers(0, 1200, size=(8, 16, 16)).astype(np.int16)
    write_volume(Volume(mr, np.eye(4)), tmp_path / "mr.nii.gz")
    with pytest.raises(InputError, match="does not look like a CT"):
        import_source(tmp_path / "mr.nii.gz", tmp_path / "case")
    (tmp_path / "corrupt.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="cannot be read"):
        import_source(tmp_path / "corrupt.nii.gz", tmp_path / "case")
    assert not (tmp_path / "case" / "ct.nii.gz").exists()
