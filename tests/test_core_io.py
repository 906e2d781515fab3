"""Core file I/O: volumes keep their LPS geometry, writes are atomic, bad files give clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from orthonav.core.atomic import write_json, write_with
from orthonav.core.case import Case, LabelTable, read_labels_table, write_labels_table
from orthonav.core.errors import InputError, SchemaError
from orthonav.core.transforms import rotation_about_axis
from orthonav.core.volume import Volume, make_lps_from_ijk, read_volume, write_volume
from orthonav.planning.schema import CutPlane, Plan, load_plan, save_plan
from public_api import check_public_api


def _oblique_volume() -> Volume:
    direction = rotation_about_axis([1.0, 2.0, 3.0], np.radians(20.0))
    m = make_lps_from_ijk([0.8, 0.9, 2.5], [-120.5, 33.0, 710.25], direction)
    arr = (np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8) - 1000).astype(np.int16)
    return Volume(arr, m)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_volume_round_trip_keeps_lps_geometry(tmp_path, suffix):
    vol = _oblique_volume()
    path = write_volume(vol, tmp_path / f"ct{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(back.array_zyx, vol.array_zyx)
    np.testing.assert_allclose(back.lps_from_ijk, vol.lps_from_ijk, atol=1e-5)
    # Voxel (i, j, k) = (7, 0, 5) sits where ITK says it does, in LPS.
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(back.to_lps([[7, 0, 5]])[0], image.TransformIndexToPhysicalPoint((7, 0, 5)), atol=1e-4)
    np.testing.assert_allclose(back.to_ijk(back.to_lps([[1.5, 2.0, 3.25]])), [[1.5, 2.0, 3.25]], atol=1e-9)


def test_read_volume_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="not found") as e:
        read_volume(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(e.value)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    with pytest.raises(InputError, match="cannot be read") as e:
        read_volume(bad)
    assert "broken.nii.gz" in str(e.value)
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported file type"):
        read_volume(tmp_path / "x.png")
    flat = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(flat))
    with pytest.raises(InputError, match="3D"):
        read_volume(flat)
    rgb = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorUInt8, 3), str(rgb))
    with pytest.raises(InputError, match="scalar"):
        read_volume(rgb)


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "plan.json"
    write_json(target, {"a": 1})

    def failing_writer(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_with(target, failing_writer)
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]  # no temporary left behind


def test_plan_round_trip_and_bad_plans(tmp_path):
    plan = Plan(
        cuts={"distal_femur": CutPlane(bone="femur", point_lps_mm=(1, 2, 3), normal_lps=(0, 0, -2), resection_depth_mm=9.0)}
    )
    path = save_plan(tmp_path / "plan.json", plan)
    back = load_plan(path)
    assert back.cuts["distal_femur"].normal_lps == (0.0, 0.0, -1.0)  # normalised on validation
    assert back.schema_version == Plan.SCHEMA_VERSION

    newer = json.loads(path.read_text(encoding="utf-8"))
    newer["schema_version"] = Plan.SCHEMA_VERSION + 1
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(SchemaError, match="newer than this OrthoNav reads") as e:
        load_plan(tmp_path / "newer.json")
    assert "newer.json" in str(e.value)

    (tmp_path / "corrupt.json").write_text('{"schema_version": 1, "cuts": {')
    with pytest.raises(SchemaError, match="not valid JSON"):
        load_plan(tmp_path / "corrupt.json")

    wrong = json.loads(path.read_text(encoding="utf-8"))
    wrong["cuts"]["distal_femur"]["normal_lps"] = [0, 0, 0]
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(SchemaError, match="cuts.distal_femur.normal_lps"):
        load_plan(tmp_path / "wrong.json")

    with pytest.raises(InputError, match="not found"):
        load_plan(tmp_path / "missing.json")


def test_labels_table_round_trip_and_background(tmp_path):
    path = write_labels_table(tmp_path / "labels.json", LabelTable(labels={1: "femur", 2: "tibia"}, side="right"))
    table = read_labels_table(path)
    assert table.labels == {1: "femur", 2: "tibia"} and table.value_of("tibia") == 2
    (tmp_path / "bg.json").write_text(json.dumps({"schema_version": 1, "labels": {"0": "femur"}}))
    with pytest.raises(SchemaError, match="background"):
        read_labels_table(tmp_path / "bg.json")


def test_case_require_names_the_missing_step(tmp_path):
    case = Case(tmp_path)
    with pytest.raises(InputError, match="run 'orthonav segment'"):
        case.require(case.labels, "orthonav segment")


def test_json_lines_writer_appears_only_on_close_with_usual_mode(tmp_path):
    import os

    from orthonav.core.atomic import JsonLinesWriter

    w = JsonLinesWriter(tmp_path / "log.jsonl")
    w.write({"a": 1})
    w.write({"b": [1, 2]})
    assert not (tmp_path / "log.jsonl").exists()  # a reader never sees a partial file
    w.close()
    assert [json.loads(x) for x in (tmp_path / "log.jsonl").read_text(encoding="utf-8").splitlines()] == [{"a": 1}, {"b": [1, 2]}]
    umask = os.umask(0)  # read the process umask (setting it is the only way), then restore it
    os.umask(umask)
    assert oct(os.stat(tmp_path / "log.jsonl").st_mode & 0o777) == oct(0o666 & ~umask)  # as open() would make it, not mkstemp's 0o600
    with pytest.raises(RuntimeError):
        with JsonLinesWriter(tmp_path / "other.jsonl") as w2:
            w2.write({"c": 3})
            raise RuntimeError("stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]  # aborted: nothing left


def test_core_public_api_is_complete_and_cheap_to_import():
    """``from orthonav.core import Volume, Case, ...`` gives every public name; importing the
    package (which every other package does) pulls in no SimpleITK, VTK, pyvista, pydantic."""
    check_public_api("orthonav.core", ("SimpleITK", "vtk", "pyvista", "pydantic", "scipy"), extra={"lazy_exports"})
    from orthonav import core
    from orthonav.core import volume

    assert core.Volume is volume.Volume and core.read_volume is volume.read_volume
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        core.nope  # noqa: B018
