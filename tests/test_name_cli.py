"""Naming and merging bones by hand: ``orthonav name CASE 3=femur_left 4+5=tibia_left``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from orthonav.core.case import Case, read_labels_table, write_labels_table
from orthonav.core.errors import InputError
from orthonav.core.meshio import write_mesh
from orthonav.core.volume import read_volume, write_volume
from orthonav.segmentation.meshing import label_meshes
from orthonav.segmentation.relabel import BY_HAND, relabel_case


@pytest.fixture
def seg_case(tmp_path, mini_knee_phantom) -> Path:
    """A segmented case: the mini knee's truth labels (femur 1, tibia 2, fibula 3, patella 4),
    labels.json (schema 2, confidences) and one STL per bone."""
    k = mini_knee_phantom
    case = Case(tmp_path / "case")
    case.root.mkdir()
    write_volume(k.labels, case.labels)
    table = k.table.model_copy(update={"confidence": {v: 0.9 for v in k.table.labels}, "why": {v: "a knee" for v in k.table.labels}})
    write_labels_table(case.labels_json, table)
    case.meshes_dir.mkdir()
    for name, mesh in label_meshes(k.labels, k.table).items():
        write_mesh(mesh, case.mesh(name, ".stl"))
    return case.root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rename_and_merge_update_labels_table_and_touched_meshes(seg_case):
    case = Case(seg_case)
    before = read_volume(case.labels).array_zyx.copy()
    patella_mesh = case.mesh("patella").read_bytes()
    done = relabel_case(seg_case, ["1=femur_right", "tibia+3=tibia_right"])
    table = read_labels_table(case.labels_json)
    assert table.schema_version == 2
    assert sorted(table.labels.values()) == ["femur_right", "patella", "tibia_right"]
    assert sorted(table.labels) == [1, 2, 3]  # contiguous
    after = read_volume(case.labels).array_zyx
    v_t = table.value_of("tibia_right")
    np.testing.assert_array_equal(after == v_t, (before == 2) | (before == 3))  # tibia + fibula merged
    np.testing.assert_array_equal(after == table.value_of("femur_right"), before == 1)
    np.testing.assert_array_equal(after == table.value_of("patella"), before == 4)
    for name in ("femur_right", "tibia_right"):
        v = table.value_of(name)
        assert table.confidence[v] == 1.0 and table.why[v] == BY_HAND
        assert case.mesh(name).exists()
    assert table.confidence[table.value_of("patella")] == 0.9  # untouched bone keeps its own
    for gone in ("femur", "tibia", "fibula"):
        assert not case.mesh(gone).exists()
    assert case.mesh("patella").read_bytes() == patella_mesh  # untouched mesh not rebuilt
    assert done.changes == {"femur_right": ["femur"], "tibia_right": ["tibia", "fibula"]}


@pytest.mark.parametrize(
    "specs, message",
    [
        (["9=femur_left"], "no label 9"),
        (["kneecap=femur_left"], "no bone named 'kneecap'"),
        (["1=tibia"], "already label"),
        (["1=../evil"], "cannot be used in a file name"),
        (["1=a", "1+2=b"], "in two assignments"),
        (["1=a", "2=a"], "given twice"),
        (["femur"], "SOURCES=NAME"),
    ],
)
def test_bad_input_is_refused_and_nothing_changes(seg_case, specs, message):
    before = _snapshot(seg_case)
    with pytest.raises(InputError, match=message):
        relabel_case(seg_case, specs)
    assert _snapshot(seg_case) == before


def test_swapping_two_names_in_one_command_is_allowed(seg_case):
    relabel_case(seg_case, ["1=tibia", "2=femur"])
    table = read_labels_table(Case(seg_case).labels_json)
    assert table.labels[1] == "tibia" and table.labels[2] == "femur"


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = "from orthonav.cli.main import main; main()"
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_cli_names_by_hand_and_refuses_bad_input_with_one_line(seg_case, tmp_path):
    ok = _run_cli("name", str(seg_case), "3+2=tibia_right", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "merged fibula + tibia -> tibia_right" in ok.stderr or "merged tibia + fibula -> tibia_right" in ok.stderr, ok.stderr
    bad = _run_cli("name", str(seg_case), "7=femur", cwd=tmp_path)
    assert bad.returncode == 2
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no label 7" in lines[0], bad.stderr


def test_label_values_missing_from_the_table_are_refused_not_dropped(seg_case):
    """A value in labels.nii.gz that labels.json does not name (e.g. a segment added by hand in
    Slicer) would become background if relabelled through the table: refused, nothing changed."""
    case = Case(seg_case)
    labels = read_volume(case.labels)
    arr = labels.array_zyx.copy()
    arr[0, 0, :3] = 7
    write_volume(type(labels)(arr, labels.lps_from_ijk), case.labels)
    before = _snapshot(seg_case)
    with pytest.raises(InputError, match=r"label value\(s\) 7 .* not in labels.json"):
        relabel_case(seg_case, ["1=femur_left"])
    assert _snapshot(seg_case) == before


def test_merged_pieces_enclose_no_gap_and_mesh_as_one_closed_body(tmp_path):
    """Two pieces of one bone left apart by the classical split, the joint space it peeled
    between them enclosed (a 1-voxel disc inside a ball): merged by hand they become one bone
    with the gap filled, meshed as one body without inner walls."""
    import trimesh
    from orthonav.core.case import LabelTable
    from orthonav.core.volume import Volume, make_lps_from_ijk

    n, r, r_gap = 40, 14, 10
    k, j, i = np.mgrid[:n, :n, :n] - n // 2
    ball = k**2 + j**2 + i**2 <= r**2
    gap = (k == 0) & (j**2 + i**2 <= r_gap**2)
    arr = np.where(ball & (k < 0), 1, 0) + np.where(ball & (k >= 0) & ~gap, 2, 0)
    arr = arr.astype(np.uint8)
    arr[30:36, 30:36, 30:36] = 3  # another bone, untouched
    labels = Volume(arr, make_lps_from_ijk((0.8, 0.8, 1.0), (0.0, 0.0, 0.0)))
    table = LabelTable(labels={1: "bone_1", 2: "bone_2", 3: "bone_3"}, backend="classical")
    case = Case(tmp_path / "case")
    case.root.mkdir()
    write_volume(labels, case.labels)
    write_labels_table(case.labels_json, table)
    done = relabel_case(case.root, ["bone_1+bone_2=femur_left"])
    after = read_volume(case.labels).array_zyx
    v = read_labels_table(case.labels_json).value_of("femur_left")
    assert done.filled == {"femur_left": int((gap & ball).sum())}
    np.testing.assert_array_equal(after == v, ball)  # the gap is bone now, nothing else moved
    np.testing.assert_array_equal(after == read_labels_table(case.labels_json).value_of("bone_3"), arr == 3)
    tm = trimesh.load(case.mesh("femur_left", ".stl"), force="mesh")
    assert tm.is_watertight and len(tm.split(only_watertight=False)) == 1
    assert abs(tm.volume / (ball.sum() * 0.8 * 0.8 * 1.0) - 1.0) < 0.03
    from orthonav.cli.name import name_bones_cli  # the line the CLI prints says so

    case2 = Case(tmp_path / "case2")
    case2.root.mkdir()
    write_volume(labels, case2.labels)
    write_labels_table(case2.labels_json, table)
    lines = name_bones_cli(case2.root, ["1+2=femur_left"])
    assert any(f"{int((gap & ball).sum())} voxel(s) of background enclosed by femur_left (gaps between its pieces) are now femur_left" in ln for ln in lines), lines


def test_a_merged_ring_the_scan_cuts_at_both_ends_keeps_its_lumen(tmp_path):
    """Two half-rings merged by hand (a vertebral body and its arch around the canal) that run
    through the whole scan: the lumen is open at both ends of the volume, not enclosed by the
    bone, so it stays background (a review found it filled when the scan's faces were lidded)."""
    from orthonav.core.case import LabelTable
    from orthonav.core.volume import Volume, make_lps_from_ijk

    n = 24
    _k, j, i = np.mgrid[:n, :n, :n] - n // 2
    r2 = j**2 + i**2
    ring = (r2 >= 6**2) & (r2 <= 10**2)
    lumen = r2 < 6**2
    arr = np.where(ring & (j < 0), 1, 0) + np.where(ring & (j >= 0), 2, 0)
    case = Case(tmp_path / "case")
    case.root.mkdir()
    write_volume(Volume(arr.astype(np.uint8), make_lps_from_ijk((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))), case.labels)
    write_labels_table(case.labels_json, LabelTable(labels={1: "bone_1", 2: "bone_2"}, backend="classical"))
    done = relabel_case(case.root, ["1+2=vertebrae_a"])
    after = read_volume(case.labels).array_zyx
    assert done.filled == {"vertebrae_a": 0}
    assert not (after[lumen] > 0).any() and np.array_equal(after > 0, ring)
