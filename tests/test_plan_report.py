"""The planning report is readable (issue 14, item 6): a unit on every number, a legend entry
for every marker colour the plan picture uses (in the HTML and drawn in the picture's key
strip), and the angles printed with their units.

The small knee phantom's case (session fixture) gets its TRUE meshes as ``meshes/`` and an
automatic plan; a second copy is cropped to a 15 cm knee stack (a plan with "not measured"
entries and assumed planning axes, drawn with their own colours).
"""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import pyvista as pv
from orthonav.planning.auto import auto_plan, load_case_meshes
from orthonav.planning.implants import implant_meshes_for
from orthonav.planning.report import write_plan_report
from orthonav.planning.scene import angle_text, key_strip_height_px, legend_entries, scene_items
from orthonav.planning.schema import load_plan

pytestmark = pytest.mark.slow

UNITS = ("mm", "mm²", "mm³", "deg", "HU", "%", "s", "ms", "Hz")
#: Columns whose cells are words (names, methods, reasons) or catalogue labels, not measures.
PROSE_COLUMNS = ("angle", "definition", "component", "size (catalogue label)", "bone", "cut", "reference", "metric",
                 "landmark", "method", "measure", "status", "why")


class _Tables(HTMLParser):
    """Tables of an HTML page as (header, rows) and the legend's (colour, label) items."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[list[str], list[list[str]]]] = []
        self.legend: list[tuple[str, str]] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._swatch: str | None = None
        self._li: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append(([], []))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "li":
            self._li = []
        elif tag == "span" and "swatch" in (a.get("class") or ""):
            self._swatch = re.search(r"background:\s*([^;]+)", a.get("style", "")).group(1).strip()

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._li is not None:
            self._li.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            header, rows = self.tables[-1]
            if not header:
                header.extend(self._row)
            else:
                rows.append(self._row)
            self._row = None
        elif tag == "li" and self._li is not None:
            self.legend.append((self._swatch or "", "".join(self._li).strip()))
            self._li, self._swatch = None, None


def numbers_without_units(tables: list[tuple[list[str], list[list[str]]]]) -> list[str]:
    """'header: cell' for each cell holding a number with no unit in the cell or its header."""
    bad = []
    for header, rows in tables:
        for row in rows:
            for h, cell in zip(header, row):
                if h in PROSE_COLUMNS or not re.search(r"\d", cell):
                    continue
                unit_in = lambda text: any(re.search(rf"(?<![A-Za-z]){re.escape(u)}(?![A-Za-z])", text) for u in UNITS)  # noqa: E731
                if not (unit_in(cell) or unit_in(h)):
                    bad.append(f"{h}: {cell}")
    return bad


def test_unit_checker_catches_a_bare_number():
    """The checker below can fail: a bare number, a unit in the header, a unit in the cell."""
    assert numbers_without_units([(["value"], [["3.1"]])]) == ["value: 3.1"]
    assert numbers_without_units([(["depth mm"], [["3.1"]]), (["value"], [["3.1 deg"], ["40 ± 10 deg (Lewinnek)"]])]) == []
    assert numbers_without_units([(["definition"], [["20-70 %"]])]) == []


def _case_with_plan(src: Path, dst: Path, crop_mm: float | None = None) -> Path:
    shutil.copytree(src, dst)
    (dst / "meshes").mkdir()
    meshes = {b: pv.read(dst / "truth" / "meshes" / f"{b}.stl") for b in ("femur", "tibia", "fibula", "patella")}
    if crop_mm is not None:  # a knee stack: crop_mm each side of the joint line (LPS z)
        jl = auto_plan(_write(dst, meshes)).landmarks["tibial_knee_centre"].position_lps_mm[2]
        for b, m in meshes.items():
            m = m.clip_closed_surface(normal=(0, 0, 1), origin=(0, 0, jl - crop_mm))
            meshes[b] = m.clip_closed_surface(normal=(0, 0, -1), origin=(0, 0, jl + crop_mm))
        (dst / "plan.json").unlink()
    auto_plan(_write(dst, meshes))
    return dst


def _write(case: Path, meshes: dict[str, pv.PolyData]) -> Path:
    for b, m in meshes.items():
        if m.n_points:
            m.save(case / "meshes" / f"{b}.stl")
    return case


@pytest.fixture(scope="module", params=["whole limb", "15 cm knee stack"])
def report(request, small_knee_case, tmp_path_factory):
    dst = tmp_path_factory.mktemp("report") / "case"
    case = _case_with_plan(Path(small_knee_case.root), dst, None if request.param == "whole limb" else 75.0)
    html_path = write_plan_report(case)
    parsed = _Tables()
    parsed.feed(html_path.read_text(encoding="utf-8"))
    return case, html_path, parsed


def test_every_number_in_the_report_has_a_unit(report):
    _, _, parsed = report
    assert parsed.tables, "no tables in the report"
    assert not numbers_without_units(parsed.tables)


def test_every_marker_colour_has_a_legend_entry_in_the_html_and_the_picture(report):
    case, html_path, parsed = report
    plan = load_plan(case / "plan.json")
    meshes = load_case_meshes(case)
    items = scene_items(plan, meshes, implant_meshes=implant_meshes_for(plan, case))
    markers = {it.colour.lower() for it in items if it.kind != "bone"}
    legend = {c.lower() for c, label in parsed.legend if label}
    assert markers <= legend, f"marker colours without a legend entry: {markers - legend}"
    assert {c.lower() for _, c in legend_entries(items)} == legend
    # The picture's key strip draws a swatch of each legend colour (flat 2D squares).
    png = mpimg.imread(html_path.parent / "plan_views.png")[..., :3]
    strip = png[-key_strip_height_px(legend_entries(items), plan, png.shape[1]):].reshape(-1, 3)
    for label, colour in legend_entries(items):
        rgb = np.asarray(pv.Color(colour).float_rgb)
        assert (np.abs(strip - rgb).max(axis=1) < 0.02).sum() >= 100, f"no swatch for {label} ({colour}) in the key strip"
    if "femoral_axis_reference" in plan.landmarks:  # the assumed axes are drawn and named
        assert any("planning axis (assumed)" in label for _, label in parsed.legend)


def test_angles_in_the_picture_carry_units_and_missing_ones_are_named(report):
    case, _, parsed = report
    plan = load_plan(case / "plan.json")
    text = angle_text(plan)
    assert re.findall(r"\d+\.\d", text), text
    assert all(m.group(0).endswith(" deg") for m in re.finditer(r"\d+\.\d( deg)?", text)), text
    if plan.not_measured.get("hka"):
        assert "not measured: HKA" in text
        assert any(t[0][:1] == ["measure"] for t in parsed.tables)
