"""Crash safety of case files: journals survive kill -9, temporaries are never data and are
cleaned up, concurrent writers do not break each other, names read from files never become
paths outside the case."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from orthonav.core.atomic import JournalWriter, iter_json_lines, remove_stale_temporaries, write_json
from orthonav.core.case import Case, LabelTable, check_name, read_case_meshes, read_labels_table, write_labels_table
from orthonav.core.errors import InputError, SchemaError


def test_journal_keeps_every_line_written_before_kill_9(tmp_path):
    """A child appends numbered records as fast as it can, acknowledging each on stdout once
    ``write`` has returned, and is killed with SIGKILL at random moments: the journal holds
    0..n-1 with no gap (at most the line being written is cut) and every acknowledged record."""
    rng = np.random.default_rng(7)
    child = textwrap.dedent("""
        import sys
        from orthonav.core.atomic import JournalWriter
        w = JournalWriter(sys.argv[1])
        i = 0
        while True:
            w.write({"i": i, "pad": "x" * 200})
            sys.stdout.write(f"{i}\\n")
            sys.stdout.flush()
            i += 1
    """)
    for trial in range(20):
        path = tmp_path / f"j{trial}.jsonl"
        p = subprocess.Popen([sys.executable, "-c", child, str(path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "0"  # the first record is written
        try:
            time.sleep(float(rng.uniform(0.0, 0.05)))  # not a wait for a condition: picks a random moment to kill
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
        acked = [int(x) for x in p.stdout.read().split() if x.isdigit()]
        p.stdout.close()
        numbers = [json.loads(text)["i"] for _, text in iter_json_lines(path)]
        assert numbers == list(range(len(numbers)))
        assert len(numbers) >= (max(acked) if acked else 0) + 1, "a record acknowledged as written was lost"


def test_journal_refuses_to_overwrite_and_abort_leaves_nothing(tmp_path):
    path = tmp_path / "j.jsonl"
    with JournalWriter(path) as w:
        w.write({"a": 1})
    with pytest.raises(InputError, match="never overwrites"):
        JournalWriter(path)
    w2 = JournalWriter(tmp_path / "k.jsonl")
    w2.write({"b": 2})
    w2.abort()
    w2.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.jsonl"]


def test_cut_last_line_is_dropped_and_a_bad_complete_line_is_kept_for_the_caller(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3', encoding="utf-8")
    assert [json.loads(t)["a"] for _, t in iter_json_lines(path)] == [1, 2]


def test_stale_temporary_of_a_dead_writer_is_removed_and_a_live_one_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".plan-{dead_pid}-abcd.json"
    live = tmp_path / f".plan-{os.getppid()}-efgh.json"  # the test runner's parent: alive
    other = tmp_path / f".registration-{dead_pid}-abcd.json"  # another target: not ours to remove
    for p in (stale, live, other):
        p.write_text("{", encoding="utf-8")
    write_json(tmp_path / "plan.json", {"x": 1})
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path / "registration.json") == [other]


def test_hidden_files_in_meshes_are_never_bones(tmp_path):
    import pyvista as pv

    from orthonav.core.meshio import write_mesh

    case = Case(tmp_path / "case")
    write_mesh(pv.Sphere(radius=10.0), case.mesh("patella"))
    (case.meshes_dir / ".patella-12345-abcd.stl").write_bytes(b"")  # a killed writer's empty temporary
    assert list(case.mesh_paths()) == ["patella"]
    assert list(read_case_meshes(case.root)) == ["patella"]


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", ".hidden", "a/b", "a\\b", "", "x..y", "femur\n"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(InputError, match="cannot be used in a file name"):
        check_name(name, "bone name")


def test_labels_json_with_a_path_as_bone_name_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "labels.json"
    write_labels_table(path, LabelTable(labels={1: "femur", 2: "../../x"}))
    with pytest.raises(SchemaError) as e:
        read_labels_table(path)
    assert str(path) in str(e.value) and "../../x" in str(e.value)
    with pytest.raises(InputError):
        Case(tmp_path).mesh("../../x")


def _label_case(root: Path) -> Case:
    from orthonav.core.volume import Volume, write_volume

    vol = np.zeros((40, 40, 40), dtype=np.uint8)
    vol[5:18, 5:18, 5:18] = 1
    vol[22:35, 22:35, 22:35] = 2
    lps_from_ijk = np.diag([1.0, 1.0, 1.0, 1.0])
    case = Case(root)
    write_volume(Volume(vol, lps_from_ijk), case.labels)
    write_labels_table(case.labels_json, LabelTable(labels={1: "femur", 2: "tibia"}))
    return case


def test_two_concurrent_mesh_runs_both_succeed(tmp_path):
    """Two `mesh` runs on one case at the same time: both finish, the meshes are complete and
    no temporary is left (the stale-mesh cleanup of one never deletes the other's temporaries)."""
    case = _label_case(tmp_path / "case")
    code = "import sys; from orthonav.segmentation.pipeline import mesh_case; mesh_case(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(case.root)], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    meshes = read_case_meshes(case.root)
    assert sorted(meshes) == ["femur", "tibia"] and all(m.n_points > 0 for m in meshes.values())
    assert [p.name for p in case.meshes_dir.iterdir() if p.name.startswith(".")] == []


# --- navigation killed with SIGKILL at random moments ---------------------------------------


class PacedSource:
    """Hands out pre-recorded frames one per :meth:`latest`, ``period_s`` apart (frames carry the
    script's times, so the workflow sees the recorded session whatever the pace); sets
    :attr:`done` after the last one."""

    def __init__(self, frames, period_s: float) -> None:
        import threading

        self.frames = frames
        self.period_s = period_s
        self.i = 0
        self.done = threading.Event()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def latest(self):
        frame = self.frames[min(self.i, len(self.frames) - 1)]
        self.i += 1
        if self.i >= len(self.frames):
            self.done.set()
        return frame

    def wait_for_update(self, timeout_s: float) -> bool:
        if self.i < len(self.frames):
            self.done.wait(self.period_s)  # pacing (not a wait for a condition): spreads the session over time
            return True
        self.done.wait(timeout_s)
        return False

    def health(self):
        from orthonav.tracking.frame import SourceHealth

        return SourceHealth(connected=True)

    def ended(self) -> bool:
        return self.done.is_set()


def _navigate_child(case_dir: str, frames_path: str, toolset, conn) -> None:
    """Child process: navigate ``case_dir`` on the recorded frames, telling the parent over
    ``conn`` when the loop runs ("S"), when a registration exists ("R": by then the live run has
    written registration.json: its writer observes before any other) and when it ended ("E")."""
    from orthonav.navigation import navigate_case
    from orthonav.tracking.recording import read_recording

    source = PacedSource(list(read_recording(frames_path)), period_s=0.001)
    sent: set[str] = set()

    def tell(flag: str) -> None:
        if flag not in sent:
            sent.add(flag)
            conn.send(flag)

    def on_state(state, workflow) -> None:
        tell("S")
        if workflow.registration is not None:
            tell("R")

    navigate_case(case_dir, source, duration_s=None, stop=source.done, render=False, toolset=toolset, on_state=on_state)
    tell("E")


@pytest.fixture(scope="module")
def recorded_or(tmp_path_factory):
    """A toy case and a recorded scripted OR session (6 fiducials, then the saw)."""
    from orthonav.phantoms.scenario import knee_scenario, write_toy_case
    from orthonav.tracking.recording import RecordingWriter

    root = tmp_path_factory.mktemp("kill")
    geo = write_toy_case(root / "case", resolution=40)
    sc = knee_scenario(geo, seed=31, fle_mm=0.2, touch_targets=False, move_s=0.35, dwell_s=0.6, saw_hidden_s=0.3,
                       sweep_s=0.8, hold_s=0.4, saw_errors=((2.0, 0.0, 0.0),))
    frames_path = root / "or.jsonl"
    with RecordingWriter(frames_path) as w:
        for frame in sc.frames(40.0, tracker_noise_mm=0.05, rotation_noise_deg=0.02, seed=3):
            w.write(frame)
    return root / "case", frames_path, sc.toolset


def test_navigation_killed_at_random_moments_keeps_registration_and_a_replayable_session(recorded_or, tmp_path):
    """60 navigations killed with SIGKILL at random moments (``ORTHONAV_KILL_TRIALS`` for more; 60
    covered 32 kills before and 23 after registration, 5 runs finished): every JSON file is an old or a new
    one (never partial), a registration made before the kill is on disk (case and session), the
    session replays exactly up to the kill, and leftover temporaries are never read as data and
    are removed by the next write."""
    import multiprocessing as mp
    import shutil

    from orthonav.navigation import replay_session
    from orthonav.navigation.registration import load_registration
    from orthonav.navigation.session import read_session_info, session_closed
    from orthonav.planning.schema import load_plan

    case0, frames_path, toolset = recorded_or
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "orthonav.navigation", "orthonav.navigation.navigate", "orthonav.tracking.recording"])
    rng = np.random.default_rng(12)
    outcomes = {"before_start": 0, "before_registration": 0, "after_registration": 0, "finished": 0}
    plan_bytes = (case0 / "plan.json").read_bytes()
    for trial in range(int(os.environ.get("ORTHONAV_KILL_TRIALS", "60"))):
        case = tmp_path / f"case{trial}"
        shutil.copytree(case0, case)
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_navigate_child, args=(str(case), str(frames_path), toolset, child), daemon=True)
        p.start()
        child.close()
        flags: list[str] = []
        kill_at = time.monotonic() + float(rng.uniform(0.0, 0.6))
        if parent.poll(30.0):  # the loop runs (or the child died first)
            with contextlib.suppress(EOFError):
                flags.append(parent.recv())
            kill_at = time.monotonic() + float(rng.uniform(0.0, 0.6))  # a random moment of the session
        while time.monotonic() < kill_at and parent.poll(max(0.0, kill_at - time.monotonic())):
            try:
                flags.append(parent.recv())
            except EOFError:
                break
        with contextlib.suppress(ProcessLookupError):  # it may have finished first
            os.kill(p.pid, signal.SIGKILL)
        p.join(10.0)
        while parent.poll(0):
            try:
                flags.append(parent.recv())
            except EOFError:  # the killed child's end is closed
                break
        parent.close()

        # Old or new files only: the plan untouched, every JSON file complete.
        assert (case / "plan.json").read_bytes() == plan_bytes
        sessions = sorted((case / "sessions").glob("*")) if (case / "sessions").is_dir() else []
        assert len(sessions) <= 1
        if "R" in flags:
            reg = load_registration(case / "registration.json")  # written the moment registration succeeded
            assert np.array_equal(load_registration(sessions[0] / "registration.json").ct_from_reference_array(),
                                  reg.ct_from_reference_array())
        elif (case / "registration.json").exists():
            load_registration(case / "registration.json")
        if "E" in flags:
            outcomes["finished"] += 1
        elif "R" in flags:
            outcomes["after_registration"] += 1
        elif "S" in flags:
            outcomes["before_registration"] += 1
        else:
            outcomes["before_start"] += 1
        # Temporaries of the killed process are never data, and the next write of the same file removes them.
        hidden = [q for q in case.rglob(".*") if q.is_file()]
        for q in hidden:
            target = q.parent / (q.name[1:].split("-", 1)[0] + "".join(q.suffixes))
            remove_stale_temporaries(target)
            assert not q.exists(), q
        assert list(Case(case).mesh_paths()) == ["femur"]
        if not sessions:
            continue
        sdir = sessions[0]
        info = read_session_info(sdir)  # complete JSON
        assert info.plan_sha256
        if not (sdir / "frames.jsonl").exists():
            continue  # killed before the first frame was written
        r = replay_session(sdir, render=False)
        assert r.replay_mismatches == 0, (trial, flags, r.warnings)
        if "E" in flags:
            assert session_closed(sdir) and r.warnings == []
        elif not session_closed(sdir):
            assert any("did not end normally" in w for w in r.warnings)
        if "R" in flags:
            assert r.registered
            np.testing.assert_array_equal(
                load_registration(sdir / "registration.json").ct_from_reference_array(),
                load_registration(case / "registration.json").ct_from_reference_array())
        load_plan(case / "plan.json")
    # The random moments covered every phase of the run.
    assert outcomes["before_registration"] >= 5 and outcomes["after_registration"] >= 5, outcomes
