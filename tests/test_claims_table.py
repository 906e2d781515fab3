"""docs/claims.md lists every quantitative claim of README.md with what produces it.

The table stays honest as the README changes: every phrase it quotes must occur in its file,
every number with a unit in README.md (prose and tables) must fall inside a quoted phrase, every
README table row with a figure must hold one, and every test or benchmark it names must exist.
Also here: the README's statements about ``benchmarks/run_all.py`` (the U-Net benchmark, which
trains, is not part of the run) and a few defaults the README quotes.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLAIMS = ROOT / "docs" / "claims.md"

#: Units that make a number a figure (``0.25 mm``, ``1,000 trials``, ``184 /s``, ``1 %``).
UNITS = (r"mm\^?2?|ms|s|min|minutes|deg|%|kHz|Hz|/s|fps|GB|MB|MiB|kB|bytes|HU|voxels|poses/s|states/s|poses|"
         r"samples|trials|steps|points|inliers|tools|slices|targets|beads|iterations|runs|messages|kinds")
NUMBER = r"[-+]?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?"
#: A number with a unit, or a range of them (``0.03 to 0.31 mm``, ``16.8-21.2 s``).
FIGURE = re.compile(rf"(?<![\w.]){NUMBER}(?:\s*(?:to|-)\s*{NUMBER})?\s?(?:{UNITS})(?![\w/])")
#: A figure in a table row: a decimal number, a number with a unit, or a power of ten (``1e-9``).
ROW_FIGURE = re.compile(rf"(?<![\w.])\d+\.\d+(?![.\d])|{FIGURE.pattern}|\d+e-\d+")


def blocks(markdown: str) -> list[str]:
    """The text a reader sees, as blocks: each table row, heading and paragraph on one line
    (whitespace collapsed), without fenced code, HTML comments or images; inline code kept."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text)
    out: list[str] = []
    para: list[str] = []
    for line in text.splitlines():
        if line.startswith(("|", "#")) or not line.strip():
            if para:
                out.append(" ".join(para))
                para = []
            if line.strip():
                out.append(line)
        else:
            para.append(line.strip())
    if para:
        out.append(" ".join(para))
    return [re.sub(r"\s+", " ", b).strip() for b in out]


def cells(row: str) -> list[str]:
    """The cells of a markdown table row (``\\|`` is a literal bar inside a cell)."""
    parts = re.split(r"(?<!\\)\|", row.strip().strip("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


def claims() -> list[dict[str, str]]:
    """Rows of docs/claims.md whose first cell is a quoted phrase."""
    rows = []
    for line in CLAIMS.read_text(encoding="utf-8").splitlines():
        if not line.startswith('| "'):
            continue
        c = cells(line)
        assert len(c) == 5, f"docs/claims.md row needs 5 cells: {line}"
        first = c[0]
        rows.append({"phrase": re.sub(r"\s+", " ", first[1:first.rindex('"')]).strip(), "file": c[1], "by": c[2],
                     "tolerance": c[3], "status": c[4], "line": line})
    return rows


def uncovered_figures(markdown: str, phrases: list[str]) -> list[str]:
    """Figures of ``markdown`` outside every phrase (inline code is not a figure)."""
    missing = []
    for block in blocks(markdown):
        if block.startswith("|---"):
            continue
        rest = block
        for p in sorted(phrases, key=len, reverse=True):
            rest = rest.replace(p, " \x00 ")
        rest = re.sub(r"`[^`]*`", " ", rest)
        missing += [f"{m.group()!r} in: {block[:160]}" for m in FIGURE.finditer(rest)]
        if block.startswith("|") and ROW_FIGURE.search(re.sub(r"`[^`]*`", " ", block)) and "\x00" not in rest:
            missing.append(f"table row without a quoted phrase: {block[:160]}")
    return missing


#: Statuses a row may have (docs/claims.md explains each); ``TODO-Hnn`` keeps a place for a
#: change still in progress.
STATUSES = {"asserted", "bounded", "measured", "definition", "literature", "unpinned"}
PENDING = re.compile(r"TODO-H\d+")


def test_claims_table_has_rows_with_known_status():
    """Every row has a known status and says what produces the figure: an asserted or bounded
    figure names the test; a measured one the benchmark or the command that prints it."""
    rows = claims()
    assert len(rows) > 50
    for r in rows:
        assert r["status"] in STATUSES or PENDING.fullmatch(r["status"]), r["line"]
        assert r["by"], r["line"]
        assert (ROOT / r["file"]).is_file(), r["line"]
        if r["status"] in ("asserted", "bounded"):
            assert re.search(r"tests/\w+\.py", r["by"]), f"an asserted / bounded figure names its test: {r['line']}"
        if r["status"] == "measured":
            assert re.search(r"benchmarks/\w+\.py|`orthonav [\w-]+", r["by"]), f"a measured figure names what prints it: {r['line']}"


def test_every_quoted_phrase_occurs_in_its_file():
    texts: dict[str, list[str]] = {}
    for r in claims():
        if r["file"] not in texts:
            texts[r["file"]] = blocks((ROOT / r["file"]).read_text(encoding="utf-8"))
        assert any(r["phrase"] in b for b in texts[r["file"]]), f"not in {r['file']}: {r['phrase']!r}"


@pytest.mark.parametrize("doc", ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")
                                                       if p.name != "claims.md")])
def test_every_figure_has_a_row(doc):
    phrases = [r["phrase"] for r in claims() if r["file"] == doc]
    missing = uncovered_figures((ROOT / doc).read_text(encoding="utf-8"), phrases)
    assert not missing, f"{doc}: figures without a row in docs/claims.md:\n" + "\n".join(missing)


def test_the_coverage_check_catches_a_new_figure():
    """The check above can fail: a figure added to a paragraph or a table is reported."""
    text = "Intro.\n\nThe loop runs at 250 Hz here.\n\n| a | b |\n|---|---|\n| x | 0.42 |\n"
    assert len(uncovered_figures(text, [])) == 2
    assert uncovered_figures(text, ["runs at 250 Hz", "| x | 0.42"]) == []
    assert uncovered_figures("Run `bench --minutes 5` alone.", []) == []  # inline code is not a figure


def test_named_tests_and_benchmarks_exist():
    """Every ``tests/x.py::name`` and ``benchmarks/x.py`` named exists (except files another
    change is still writing, in rows marked ``TODO-Hnn``)."""
    for r in claims():
        pending = bool(PENDING.search(r["status"]) or PENDING.search(r["tolerance"]))
        for path, names in re.findall(r"((?:tests|benchmarks)/[\w/]+\.py)((?:::\w+)*)", r["by"]):
            file = ROOT / path
            if pending and not file.is_file():
                continue
            assert file.is_file(), (path, r["line"])
            source = file.read_text(encoding="utf-8")
            for name in filter(None, names.split("::")):
                assert re.search(rf"^(?:async )?def {name}\b", source, re.M), (path, name)
        for name in re.findall(r"`::(\w+)`", r["by"]):  # ``::test_x`` after a named file
            assert any(re.search(rf"^def {name}\b", (ROOT / p).read_text(encoding="utf-8"), re.M)
                       for p in re.findall(r"tests/\w+\.py", r["by"]) if (ROOT / p).is_file()), (name, r["line"])


def test_run_all_excludes_training_benchmarks():
    """README: the U-Net benchmark is not part of ``run_all.py``; nothing that trains is."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--list"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    runs = re.findall(r"^run\s+(\S+)", out, re.M)
    excluded = re.findall(r"^excluded\s+(\S+):", out, re.M)
    assert "bench_unet.py" in excluded and "bench_unet.py" not in runs
    assert sorted(runs + excluded) == sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py"))
    for name in runs:
        source = (ROOT / "benchmarks" / name).read_text(encoding="utf-8")
        assert not re.search(r"train_from_folder|\btrain\(|--minutes", source), f"{name} trains but run_all.py runs it"
    # Named explicitly, it is still not run.
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--list", "unet"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert re.findall(r"^run\s", out, re.M) == [] and "excluded bench_unet.py" in out


def test_defaults_quoted_in_the_readme():
    """README: a check counts within 3 x the predicted TRE + 3 mm (15 mm at most); registration
    is refused above a predicted TRE of 2 mm by default; the demo injects FLE 0.25 mm, noise
    0.1 mm and 0.05 deg at 200 Hz."""
    from orthonav.cli import main as cli_main
    from orthonav.navigation import WorkflowConfig
    from orthonav.phantoms import demo

    cfg = WorkflowConfig()
    assert (cfg.verify_tre_factor, cfg.verify_margin_mm, cfg.verify_radius_mm) == (3.0, 3.0, 15.0)
    assert cfg.max_predicted_tre_mm == 2.0
    default = inspect.signature(cli_main.navigate).parameters["max_predicted_tre"].default
    assert getattr(default, "default", default) == 2.0
    assert (demo.FLE_MM, demo.TRACKER_NOISE_MM, demo.ROTATION_NOISE_DEG, demo.RATE_HZ) == (0.25, 0.1, 0.05, 200.0)
