"""Import never silently corrupts (issue 13, item 4): truncated files, NaN voxels, a NIfTI
``pixdim`` of 0 and headers claiming huge images are refused (or resolved) from the header,
in well under a second, with an error naming the file."""

from __future__ import annotations

import gzip
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume, make_lps_from_ijk, read_volume, write_volume
from orthonav.segmentation.image_checks import MAX_IMAGE_ENV, check_image_file, memory_limit_bytes
from orthonav.segmentation.importer import import_ct, import_source

#: The issue's bound for a refusal (these files are small: measured 0.1-10 ms). At full size
#: (512 x 512 x 400, docs/import.md) a header is refused in milliseconds, but a gzip file must be
#: inflated to find a cut or a NaN: 0.27 s and 0.74-1.57 s there.
REFUSE_S = 1.0

PIXDIM = 76  # NIfTI-1 header offsets (nifti1.h)
SFORM_CODE = 254
DIM = 40


@pytest.fixture(autouse=True)
def _default_memory_limit(monkeypatch):
    monkeypatch.delenv(MAX_IMAGE_ENV, raising=False)


def _ct(dtype=np.int16) -> Volume:
    """A small CT: air, a soft-tissue block and a bone block; oblique 0.8 x 0.9 x 2 mm grid."""
    a = np.full((12, 20, 24), -1000, dtype)
    a[2:10, 3:17, 3:21] = 40
    a[4:8, 6:14, 8:16] = 900
    direction = np.array(sitk.VersorRigid3DTransform([0.05, 0.1, 0.02, 0.99]).GetMatrix()).reshape(3, 3)
    return Volume(a, make_lps_from_ijk([0.8, 0.9, 2.0], [-40.0, 12.5, 300.0], direction))


def _nii(tmp_path: Path, name: str = "ct.nii", vol: Volume | None = None) -> Path:
    p = tmp_path / name
    write_volume(vol if vol is not None else _ct(), p, compress=False)
    return p


def _patch(path: Path, offset: int, fmt: str, *values) -> None:
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))


def _refused(source: Path, tmp_path: Path, match: str) -> tuple[InputError, float]:
    """Import ``source``, expect an InputError matching ``match`` that names the file, fast,
    with nothing written. Returns the error and the time it took (s)."""
    case = tmp_path / f"case_{source.name}"
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=match) as e:
        import_source(source, case)
    dt = time.perf_counter() - t0
    assert e.value.path == source and str(source) in str(e.value)
    assert dt < REFUSE_S, f"refusal took {dt:.3f} s"
    assert not (case / "ct.nii.gz").exists()
    return e.value, dt


# --- 1. truncated files are refused, never zero-filled ----------------------------------------


@pytest.mark.parametrize("how", ["nii", "nii.gz recompressed", "nii.gz cut"])
def test_truncated_nifti_is_refused(tmp_path, how):
    full = _nii(tmp_path).read_bytes()
    if how == "nii":
        src = tmp_path / "cut.nii"
        src.write_bytes(full[: len(full) - 1000])
    elif how == "nii.gz recompressed":  # a valid gzip of a short file: its trailer says so
        src = tmp_path / "cut.nii.gz"
        src.write_bytes(gzip.compress(full[: len(full) - 1000]))
    else:  # the compressed stream itself is cut (no trailer); noise so that the data is not tiny
        vol = _ct()
        noisy = vol.with_array((vol.array_zyx + np.random.default_rng(1).integers(-30, 30, vol.array_zyx.shape)).astype(np.int16))
        write_volume(noisy, tmp_path / "noisy.nii.gz")
        gz = (tmp_path / "noisy.nii.gz").read_bytes()
        src = tmp_path / "cut.nii.gz"
        src.write_bytes(gz[: int(len(gz) * 0.7)])
    err, _ = _refused(src, tmp_path, "is truncated")
    if how != "nii.gz cut":
        n = 12 * 20 * 24 * 2
        assert f"promises {n} bytes" in err.problem and f"holds {n - 1000}" in err.problem


def test_complete_multi_member_gzip_is_read(tmp_path):
    """Several gzip members (as block-gzip tools write) are one file: counted, not refused."""
    full = _nii(tmp_path).read_bytes()
    src = tmp_path / "members.nii.gz"
    src.write_bytes(gzip.compress(full[:3000]) + gzip.compress(full[3000:]))
    assert check_image_file(src).size_ijk == (24, 20, 12)
    np.testing.assert_array_equal(read_volume(import_source(src, tmp_path / "case").ct).array_zyx, _ct().array_zyx)


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
@pytest.mark.parametrize("compress", [False, True])
def test_truncated_nrrd_and_metaimage_are_refused(tmp_path, ext, compress):
    vol = _ct()
    noisy = vol.with_array((vol.array_zyx + np.random.default_rng(2).integers(-30, 30, vol.array_zyx.shape)).astype(np.int16))
    full_path = tmp_path / f"full{ext}"
    write_volume(noisy, full_path, compress=compress)
    full = full_path.read_bytes()
    src = tmp_path / f"cut{ext}"
    src.write_bytes(full[: len(full) - 700])
    _refused(src, tmp_path, "is truncated")
    # The complete file still imports, voxels and geometry exact.
    got = read_volume(import_source(full_path, tmp_path / "ok").ct)
    np.testing.assert_array_equal(got.array_zyx, noisy.array_zyx)
    np.testing.assert_allclose(got.lps_from_ijk, vol.lps_from_ijk, atol=1e-5)


def test_detached_nrrd_with_short_data_file_is_refused(tmp_path):
    raw = _ct().array_zyx.astype("<i2").tobytes()
    (tmp_path / "ct.raw").write_bytes(raw[:-200])
    hdr = tmp_path / "ct.nhdr"
    hdr.write_text(
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 24 20 12\n"
        "space directions: (0.8,0,0) (0,0.9,0) (0,0,2)\nendian: little\nencoding: raw\n"
        "space origin: (0,0,0)\ndata file: ct.raw\n"
    )
    err, _ = _refused(hdr, tmp_path, r"is truncated \(data file ct.raw\)")
    assert "the file holds 11320" in err.problem


# --- 2. NaN / Inf voxels are refused, never turned into 0 HU ----------------------------------


@pytest.mark.parametrize("name", ["nan.nii", "nan.nii.gz", "nan.nrrd", "nan.mha"])
def test_non_finite_voxels_are_refused_and_counted(tmp_path, name):
    vol = _ct(np.float32)
    a = vol.array_zyx.copy()
    a[5, 10, 10] = np.nan
    a[6, 11, 12] = np.nan
    a[0, 0, 0] = np.inf
    a[11, 19, 23] = -np.inf
    src = tmp_path / name
    write_volume(vol.with_array(a), src)
    err, _ = _refused(src, tmp_path, "NaN or infinite")
    assert err.problem.startswith(f"4 of {a.size} voxels")


def test_float_nifti_without_non_finite_voxels_imports(tmp_path):
    vol = _ct(np.float32)
    src = tmp_path / "f.nii.gz"
    write_volume(vol.with_array(vol.array_zyx + np.float32(0.3)), src)
    assert check_image_file(src).non_finite == 0
    np.testing.assert_array_equal(read_volume(import_source(src, tmp_path / "case").ct).array_zyx, vol.array_zyx.astype(np.int16))


# --- 3. NIfTI pixdim 0: the sform gives the voxel size, or the file is refused ---------------


@pytest.mark.parametrize("name", ["pix0.nii", "pix0.nii.gz"])
def test_pixdim_zero_with_sform_imports_at_the_sform_spacing(tmp_path, name):
    vol = _ct()
    src = _nii(tmp_path, "pix0.nii", vol)
    assert struct.unpack_from("<h", src.read_bytes(), SFORM_CODE)[0] > 0  # ITK writes an sform
    _patch(src, PIXDIM + 12, "<f", 0.0)  # pixdim[3] = 0; the sform still says 2 mm
    if name.endswith(".gz"):
        gz = tmp_path / name
        gz.write_bytes(gzip.compress(src.read_bytes()))
        src = gz
    t0 = time.perf_counter()
    summary = import_ct(src, tmp_path / "case")
    assert time.perf_counter() - t0 < REFUSE_S
    ct = read_volume(summary.case.ct)
    np.testing.assert_allclose(ct.spacing_mm, [0.8, 0.9, 2.0], atol=1e-5)
    np.testing.assert_allclose(ct.lps_from_ijk, vol.lps_from_ijk, atol=1e-4)
    np.testing.assert_array_equal(ct.array_zyx, vol.array_zyx)
    assert len(summary.notes) == 1 and "pixdim[3] = 0" in summary.notes[0] and "sform" in summary.notes[0]


def test_pixdim_zero_without_sform_is_refused(tmp_path):
    src = _nii(tmp_path, "nosform.nii")
    _patch(src, PIXDIM + 12, "<f", 0.0)
    _patch(src, SFORM_CODE, "<h", 0)
    _refused(src, tmp_path, r"pixdim\[3\] = 0 is not a voxel size, and the header has no usable sform")
    src = _nii(tmp_path, "nanpix.nii")
    _patch(src, PIXDIM + 4, "<f", float("nan"))
    _patch(src, SFORM_CODE, "<h", 0)
    _refused(src, tmp_path, r"pixdim\[1\] = nan is not a voxel size")


def test_pixdim_contradicting_the_sform_is_refused(tmp_path):
    src = _nii(tmp_path, "contra.nii")
    _patch(src, PIXDIM + 12, "<f", 1.0)  # pixdim says 1 mm, the sform 2 mm: ITK would pick 1 mm
    err, _ = _refused(src, tmp_path, "header contradicts itself")
    assert "0.8 x 0.9 x 1 mm" in err.problem and "0.8 x 0.9 x 2 mm" in err.problem


# --- 4. huge headers are refused before anything is allocated --------------------------------


def _huge_nifti(path: Path, n: int) -> None:
    """A NIfTI-1 header claiming n^3 int16 voxels, followed by a few bytes of data."""
    src = _nii(path.parent, "small_for_header.nii")
    raw = bytearray(src.read_bytes()[:352] + b"\0" * 64)
    struct.pack_into("<8h", raw, DIM, 3, n, n, n, 1, 1, 1, 1)
    data = bytes(raw)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_huge_nifti_header_is_refused_in_well_under_a_second(tmp_path, name):
    src = tmp_path / name
    _huge_nifti(src, 1500)
    err, dt = _refused(src, tmp_path, "above the import memory limit")
    assert "1500 x 1500 x 1500 voxels of int16 = 6.29 GiB" in err.problem
    assert dt < 1.0, f"{dt:.3f} s"


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_huge_nrrd_and_metaimage_headers_are_refused(tmp_path, ext):
    src = tmp_path / f"huge{ext}"
    if ext == ".nrrd":
        src.write_bytes(
            b"NRRD0004\ntype: short\ndimension: 3\nsizes: 1500 1500 1500\n"
            b"space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\nencoding: raw\n\n" + b"\0" * 64
        )
    else:
        src.write_bytes(
            b"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            b"ElementSpacing = 1 1 1\nDimSize = 1500 1500 1500\nElementType = MET_SHORT\nElementDataFile = LOCAL\n" + b"\0" * 64
        )
    _refused(src, tmp_path, "1500 x 1500 x 1500 voxels of int16 = 6.29 GiB, above the import memory limit")


def test_memory_limit_is_documented_and_adjustable(tmp_path, monkeypatch):
    assert memory_limit_bytes() <= 4 * 2**30
    assert memory_limit_bytes(123) == 123
    monkeypatch.setenv(MAX_IMAGE_ENV, "0.5")
    assert memory_limit_bytes() == 2**29
    src = _nii(tmp_path)  # 11520 bytes of voxels
    with pytest.raises(InputError, match="above the import memory limit"):
        import_source(src, tmp_path / "case", max_image_bytes=10_000)
    import_source(src, tmp_path / "case", max_image_bytes=20_000)


# --- other header checks --------------------------------------------------------------------


def test_headers_without_spacing_or_with_unsupported_types_are_refused(tmp_path):
    nrrd = tmp_path / "nospace.nrrd"
    nrrd.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nendian: little\nencoding: raw\n\n" + b"\0" * 128)
    _refused(nrrd, tmp_path, "no voxel spacing")
    mha = tmp_path / "nospace.mha"
    mha.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n" + b"\0" * 128)
    _refused(mha, tmp_path, "no voxel spacing")
    rgb = _nii(tmp_path, "rgb.nii")
    _patch(rgb, 70, "<hh", 128, 24)  # datatype RGB24
    _refused(rgb, tmp_path, "voxel data type RGB24 is not supported")
    four_d = _nii(tmp_path, "4d.nii")
    _patch(four_d, DIM, "<5h", 4, 24, 20, 6, 2)
    _refused(four_d, tmp_path, r"is not a 3D volume \(size 24 x 20 x 6 x 2\)")


# --- DICOM: missing spacing, corrupt slice ---------------------------------------------------


def _dicom_copy(shared_data: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "dicom"
    shutil.copytree(shared_data / "ct_abdomen_dicom", dst)
    return dst


def test_dicom_without_pixel_spacing_is_refused_naming_the_file(shared_data, tmp_path):
    d = _dicom_copy(shared_data, tmp_path)
    f = sorted(d.iterdir())[4]
    raw = f.read_bytes()
    tag = b"\x28\x00\x30\x00DS"
    assert raw.count(tag) == 1
    f.write_bytes(raw.replace(tag, b"\x28\x00\x31\x00DS"))  # (0028,0030) becomes a private-range tag
    with pytest.raises(InputError, match=r"no Pixel Spacing \(0028,0030\)") as e:
        import_source(d, tmp_path / "case")
    assert e.value.path == f
    assert not (tmp_path / "case" / "ct.nii.gz").exists()


def test_dicom_series_above_the_memory_limit_is_refused_before_reading_pixels(shared_data, tmp_path):
    with pytest.raises(InputError, match=r"512 x 512 x 20 voxels = 0.02 GiB, above the import memory limit") as e:
        import_source(shared_data / "ct_abdomen_dicom", tmp_path / "case", max_image_bytes=2**20)
    assert e.value.path == shared_data / "ct_abdomen_dicom"
    assert not (tmp_path / "case" / "ct.nii.gz").exists()


def test_truncated_dicom_slice_is_named(shared_data, tmp_path):
    d = _dicom_copy(shared_data, tmp_path)
    f = sorted(d.iterdir())[7]
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as e:
        import_source(d, tmp_path / "case")
    assert f.name in str(e.value) and ("truncated" in str(e.value) or "corrupt" in str(e.value))
    assert not (tmp_path / "case" / "ct.nii.gz").exists()


# --- a real NIfTI (TotalSegmentator's example CT, written by nibabel) ---------------------------


def test_real_nifti_passes_the_checks_and_its_damaged_copies_do_not(shared_data, tmp_path):
    real = shared_data / "ct_thorax_small" / "example_ct_sm.nii.gz"
    header = check_image_file(real)
    assert header.size_ijk == (122, 101, 30) and header.dtype == np.int16 and header.notes == ()
    summary = import_ct(real, tmp_path / "case")
    plain = read_volume(real)  # ITK alone: the checks change nothing on a sound file
    got = read_volume(summary.case.ct)
    assert summary.notes == ()
    np.testing.assert_array_equal(got.array_zyx, plain.array_zyx)
    np.testing.assert_allclose(got.lps_from_ijk, plain.lps_from_ijk, atol=1e-5)
    raw = gzip.decompress(real.read_bytes())
    # Truncated by one slice's worth of bytes: refused, not zero-filled.
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(raw[: len(raw) - 122 * 101 * 2]))
    _refused(cut, tmp_path, "is truncated")
    # pixdim[3] = 0: the sform (3 mm) gives the geometry, the same as the sound file's.
    pix0 = bytearray(raw)
    struct.pack_into("<f", pix0, PIXDIM + 12, 0.0)
    src = tmp_path / "pix0.nii.gz"
    src.write_bytes(gzip.compress(bytes(pix0)))
    summary = import_ct(src, tmp_path / "case0")
    np.testing.assert_allclose(read_volume(summary.case.ct).lps_from_ijk, plain.lps_from_ijk, atol=1e-4)
    assert "sform" in summary.notes[0]


# --- NIfTI-2 headers (nifti2.h layout) are checked the same way --------------------------------


def _nifti2_from_nifti1(n1: bytes) -> bytes:
    """The same image with a NIfTI-2 header (nifti2.h layout), data after a 544-byte offset."""
    dim = struct.unpack_from("<8h", n1, 40)
    datatype, bitpix = struct.unpack_from("<hh", n1, 70)
    pixdim = struct.unpack_from("<8f", n1, 76)
    vox_offset = int(struct.unpack_from("<f", n1, 108)[0])
    slope, inter = struct.unpack_from("<ff", n1, 112)
    qcode, scode = struct.unpack_from("<hh", n1, 252)
    quat = struct.unpack_from("<6f", n1, 256)
    srow = struct.unpack_from("<12f", n1, 280)
    h = bytearray(544)
    struct.pack_into("<i", h, 0, 540)
    h[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<hh", h, 12, datatype, bitpix)
    struct.pack_into("<8q", h, 16, *dim)
    struct.pack_into("<8d", h, 104, *pixdim)
    struct.pack_into("<q", h, 168, 544)
    struct.pack_into("<dd", h, 176, slope, inter)
    struct.pack_into("<ii", h, 344, qcode, scode)
    struct.pack_into("<6d", h, 352, *quat)
    struct.pack_into("<12d", h, 400, *srow)
    struct.pack_into("<i", h, 500, n1[123])
    return bytes(h) + n1[vox_offset:]


def test_nifti2_header_is_checked(tmp_path):
    n1 = _nii(tmp_path).read_bytes()
    src = tmp_path / "n2.nii"
    src.write_bytes(_nifti2_from_nifti1(n1))
    header = check_image_file(src)
    assert header.size_ijk == (24, 20, 12) and header.dtype == np.int16
    np.testing.assert_allclose(header.spacing_mm, [0.8, 0.9, 2.0], rtol=1e-6)
    cut = tmp_path / "n2cut.nii"
    cut.write_bytes(src.read_bytes()[:-500])
    with pytest.raises(InputError, match="is truncated: the header promises 11520 bytes of voxels, the file holds 11020"):
        check_image_file(cut)


def test_pieces_read_ahead_come_in_order_with_errors_where_they_occur_and_stop_early():
    """The decompressed pieces a NaN scan reads are made on a worker thread one or two ahead
    (image_checks._ahead): the same pieces in the same order, an error of the producer raised
    at the piece where it occurred, and a consumer that stops early stops the producer."""
    import threading

    from orthonav.segmentation.image_checks import AHEAD_THREAD, _ahead

    def gen(n: int, fail_at: int | None = None):
        for i in range(n):
            if i == fail_at:
                raise ValueError("boom")
            yield bytes([i % 256])

    assert list(_ahead(gen(300))) == [bytes([i % 256]) for i in range(300)]
    it = _ahead(gen(10, fail_at=3))
    assert [next(it) for _ in range(3)] == [b"\x00", b"\x01", b"\x02"]
    with pytest.raises(ValueError, match="boom"):
        next(it)
    it = _ahead(gen(10**9))
    next(it)
    it.close()  # stops after one piece of a billion
    assert not [t for t in threading.enumerate() if t.name == AHEAD_THREAD]


def test_streams_are_inflated_by_isa_l():
    """isal is a dependency: a silent fall-back to zlib would pass every other test, slower."""
    from isal import isal_zlib

    from orthonav.segmentation import image_checks

    assert image_checks._inflater is isal_zlib
