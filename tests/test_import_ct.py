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


def _header_text(f: Path, group: int, elem: int) -> str:
    """The value of one short explicit-VR element of a DICOM file, found in its bytes by the test
    itself (tag, 2-character VR, 2-byte length): no DICOM library involved."""
    import struct

    data = f.read_bytes()
    tag = struct.pack("<HH", group, elem)
    at, i = [], data.find(tag)
    while i >= 0:
        if data[i + 4 : i + 6].isalpha():
            at.append(i)
        i = data.find(tag, i + 1)
    assert len(at) == 1, (f, hex(group), hex(elem), at)
    (n,) = struct.unpack_from("<H", data, at[0] + 6)
    return data[at[0] + 8 : at[0] + 8 + n].decode("ascii").strip("\0 ")


def _position(f: Path) -> np.ndarray:
    """Image Position (Patient) (0020,0032) of a slice file, LPS mm, read from its bytes."""
    return np.array([float(x) for x in _header_text(f, 0x0020, 0x0032).split("\\")])


def test_real_dicom_geometry_and_hu(shared_data, tmp_path):
    """A real CT series (JPEG 2000 compressed): its geometry against the header values this test
    reads from the files' bytes, and its HU against physics (air, fat, soft tissue), not against
    the same library reading the same file. (The pixels are JPEG 2000: with no second decoder
    installed, exact values are checked on the hand-written series below instead.)"""
    series = list_dicom_series(_dicom(shared_data))
    assert len(series) == 1 and series[0].modality == "CT" and series[0].n_files == 20
    case = import_source(_dicom(shared_data), tmp_path / "case")
    ct = read_volume(case.ct)
    assert ct.array_zyx.dtype == np.int16 and ct.array_zyx.shape == (20, 512, 512)
    files = sorted(series[0].files, key=lambda f: _position(f)[2])
    first = files[0]
    o = np.array([float(x) for x in _header_text(first, 0x0020, 0x0037).split("\\")])
    row_mm, col_mm = (float(x) for x in _header_text(first, 0x0028, 0x0030).split("\\"))
    normal = np.cross(o[:3], o[3:])
    positions = np.array([_position(f) for f in files])
    steps = np.diff(positions @ normal)
    assert np.ptp(steps) < 1e-6  # evenly spaced
    want = np.eye(4)
    want[:3, 0], want[:3, 1], want[:3, 2], want[:3, 3] = col_mm * o[:3], row_mm * o[3:], steps[0] * normal, positions[0]
    np.testing.assert_allclose(ct.lps_from_ijk, want, atol=1e-4)
    assert (row_mm, col_mm, round(float(steps[0]), 6)) == (0.9765625, 0.9765625, 2.0)
    # HU = stored * slope + intercept (header: slope 1, intercept -1024). Physics, per tissue:
    assert (_header_text(first, 0x0028, 0x1052), _header_text(first, 0x0028, 0x1053)) == ("-1024", "1")
    a = ct.array_zyx
    assert -1030 <= np.median(a[0, :40, :40]) <= -950  # air outside the body
    assert a.max() > 1000  # bone

    def mode(lo: int, hi: int) -> float:
        h, e = np.histogram(a[(a > lo) & (a < hi)], bins=np.arange(lo, hi + 1, 10))
        return float(e[np.argmax(h)] + 5)

    assert -1050 <= mode(-1100, -900) <= -950  # air
    assert -120 <= mode(-300, -20) <= -60  # fat (measured -85)
    assert 20 <= mode(-20, 200) <= 120  # soft tissue, contrast-enhanced (measured 95)


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


# --- files written byte by byte: truth the test constructs, not another reader's output ---------
# (No second DICOM / NIfTI library is installed; these writers follow the standards: DICOM PS3.5
# explicit VR little endian, NIfTI-1 header layout, NRRD and MetaImage text headers.)


def _oblique_geometry():
    """(row cosine, column cosine, slice normal, spacing (di, dj, dk) mm, origin LPS mm) of an
    oblique, anisotropic grid, built from two rotations in closed form."""
    a, b = np.radians(20.0), np.radians(-12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    r = rz @ rx
    return r[:, 0], r[:, 1], r[:, 2], np.array([0.75, 0.625, 2.5]), np.array([-120.25, 84.5, 701.0])


def _element(group: int, elem: int, vr: str, value: bytes) -> bytes:
    """One explicit-VR little-endian data element (PS3.5 7.1.2), value padded to even length."""
    import struct

    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH", group, elem) + vr.encode()
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _write_dicom_slice(path: Path, stored_ji: np.ndarray, *, k: int, position, row, col, spacing_ji, slope, intercept,
                       series_uid: str) -> None:
    """A CT slice file written byte by byte (Part 10: preamble, DICM, meta group, dataset)."""
    import struct

    def ds(v) -> bytes:
        return "\\".join(f"{x:.10g}" for x in np.atleast_1d(v)).encode()

    ct_storage = b"1.2.840.10008.5.1.4.1.1.2"
    sop = f"{series_uid}.{k + 1}".encode()
    meta = b"".join([
        _element(0x0002, 0x0001, "OB", b"\0\1"),
        _element(0x0002, 0x0002, "UI", ct_storage),
        _element(0x0002, 0x0003, "UI", sop),
        _element(0x0002, 0x0010, "UI", b"1.2.840.10008.1.2.1"),  # explicit VR little endian
        _element(0x0002, 0x0012, "UI", b"1.2.826.0.1.3680043.2.1125.99"),
    ])
    us = lambda v: struct.pack("<H", v)  # noqa: E731
    rows_n, cols_n = stored_ji.shape
    data = b"".join([
        _element(0x0008, 0x0016, "UI", ct_storage),
        _element(0x0008, 0x0018, "UI", sop),
        _element(0x0008, 0x0060, "CS", b"CT"),
        _element(0x0008, 0x103E, "LO", b"hand written"),
        _element(0x0010, 0x0010, "PN", b"Phantom^Hand"),
        _element(0x0010, 0x0020, "LO", b"H15"),
        _element(0x0018, 0x0050, "DS", ds(2.5)),
        _element(0x0020, 0x000D, "UI", b"1.2.826.0.1.3680043.2.1125.98"),
        _element(0x0020, 0x000E, "UI", series_uid.encode()),
        _element(0x0020, 0x0011, "IS", b"7"),
        _element(0x0020, 0x0013, "IS", str(k + 1).encode()),
        _element(0x0020, 0x0032, "DS", ds(position)),
        _element(0x0020, 0x0037, "DS", ds(np.r_[row, col])),
        _element(0x0028, 0x0002, "US", us(1)),
        _element(0x0028, 0x0004, "CS", b"MONOCHROME2"),
        _element(0x0028, 0x0010, "US", us(rows_n)),
        _element(0x0028, 0x0011, "US", us(cols_n)),
        _element(0x0028, 0x0030, "DS", ds(spacing_ji)),  # row spacing (along j) \ column spacing (along i)
        _element(0x0028, 0x0100, "US", us(16)),
        _element(0x0028, 0x0101, "US", us(16)),
        _element(0x0028, 0x0102, "US", us(15)),
        _element(0x0028, 0x0103, "US", us(1)),  # signed
        _element(0x0028, 0x1052, "DS", ds(intercept)),
        _element(0x0028, 0x1053, "DS", ds(slope)),
        _element(0x7FE0, 0x0010, "OW", stored_ji.astype("<i2").tobytes()),
    ])
    group_len = _element(0x0002, 0x0000, "UL", struct.pack("<I", len(meta)))
    path.write_bytes(b"\0" * 128 + b"DICM" + group_len + meta + data)


def test_hand_written_dicom_series_geometry_and_hu(tmp_path):
    """A CT series written byte by byte from a known array and geometry (oblique, anisotropic,
    Rescale Slope 2 / Intercept -1024, file names in random order): the importer's lps_from_ijk
    and HU equal the numbers this test built."""
    row, col, normal, (di, dj, dk), origin = _oblique_geometry()
    rng = np.random.default_rng(11)
    nk, nj, ni = 5, 9, 7
    stored = rng.integers(0, 1600, size=(nk, nj, ni)).astype(np.int16)
    folder = tmp_path / "series"
    folder.mkdir()
    uid = "1.2.826.0.1.3680043.2.1125.97"
    for k in rng.permutation(nk):  # names say nothing about the order
        _write_dicom_slice(folder / f"IM{rng.integers(10**6):06d}_{k}", stored[k], k=int(k), position=origin + k * dk * normal,
                           row=row, col=col, spacing_ji=(dj, di), slope=2.0, intercept=-1024.0, series_uid=uid)
    case = import_source(folder, tmp_path / "case")
    ct = read_volume(case.ct)
    want = np.eye(4)
    want[:3, 0], want[:3, 1], want[:3, 2], want[:3, 3] = di * row, dj * col, dk * normal, origin
    np.testing.assert_allclose(ct.lps_from_ijk, want, atol=1e-6)
    assert ct.array_zyx.dtype == np.int16
    np.testing.assert_array_equal(ct.array_zyx, stored.astype(np.int32) * 2 - 1024)  # HU = slope * stored + intercept


def _nifti_header(shape_xyz, ras_from_ijk, slope: float, inter: float) -> bytes:
    """A NIfTI-1 header (348 bytes + 4-byte extension flag), int16 data, sform only (RAS)."""
    import struct

    h = bytearray(352)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, *shape_xyz, 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, 4, 16)  # datatype NIFTI_TYPE_INT16, bitpix
    spacing = np.linalg.norm(ras_from_ijk[:3, :3], axis=0)
    struct.pack_into("<8f", h, 76, 1.0, *spacing, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", h, 108, 352.0)  # vox_offset
    struct.pack_into("<ff", h, 112, slope, inter)
    struct.pack_into("<B", h, 123, 2)  # xyzt_units: mm
    struct.pack_into("<hh", h, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    for r in range(3):
        struct.pack_into("<4f", h, 280 + 16 * r, *ras_from_ijk[r])
    h[344:348] = b"n+1\0"
    return bytes(h)


def test_hand_written_volume_files_geometry_and_hu(tmp_path):
    """NIfTI (RAS sform, scl_slope 2 / scl_inter -1024), NRRD (LPS 'space directions') and MetaImage
    (LPS TransformMatrix) files written byte by byte: the importer returns the LPS geometry and HU
    this test computed (NIfTI's RAS x and y negated into LPS here, by hand)."""
    import gzip

    row, col, normal, (di, dj, dk), origin = _oblique_geometry()
    want = np.eye(4)
    want[:3, 0], want[:3, 1], want[:3, 2], want[:3, 3] = di * row, dj * col, dk * normal, origin
    rng = np.random.default_rng(12)
    nk, nj, ni = 4, 6, 5
    stored = rng.integers(-1024, 2000, size=(nk, nj, ni)).astype("<i2")
    raw = stored.tobytes()  # x (i) fastest, as every one of these formats stores voxels
    # NIfTI: RAS = diag(-1, -1, 1) LPS; float32 in the header, so compare at float32 precision.
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ want
    nii = tmp_path / "hand.nii.gz"
    nii.write_bytes(gzip.compress(_nifti_header((ni, nj, nk), ras[:3].astype(np.float32), 2.0, -1024.0) + raw))
    vec = lambda v: "(" + ",".join(f"{x:.17g}" for x in v) + ")"  # noqa: E731
    nrrd = tmp_path / "hand.nrrd"
    nrrd.write_bytes(("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
                      f"sizes: {ni} {nj} {nk}\nspace directions: {vec(want[:3, 0])} {vec(want[:3, 1])} {vec(want[:3, 2])}\n"
                      f"space origin: {vec(origin)}\nencoding: raw\nendian: little\n\n").encode() + raw)
    mha = tmp_path / "hand.mha"
    direction = np.c_[row, col, normal]
    mha.write_bytes(("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                     f"TransformMatrix = {' '.join(f'{x:.17g}' for x in direction.T.ravel())}\n"
                     f"Offset = {' '.join(f'{x:.17g}' for x in origin)}\nElementSpacing = {di:g} {dj:g} {dk:g}\n"
                     f"DimSize = {ni} {nj} {nk}\nElementType = MET_SHORT\nElementDataFile = LOCAL\n").encode() + raw)
    for src, hu, tol in ((nii, stored.astype(np.int32) * 2 - 1024, 2e-4), (nrrd, stored, 1e-9), (mha, stored, 1e-9)):
        ct = read_volume(import_source(src, tmp_path / f"case_{src.name}").ct)
        np.testing.assert_allclose(ct.lps_from_ijk, want, atol=tol, err_msg=src.name)
        np.testing.assert_array_equal(ct.array_zyx, hu, err_msg=src.name)
