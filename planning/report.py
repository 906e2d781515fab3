"""``orthonav report CASE``: an HTML planning report (pictures from several views; tables of
landmarks, angles, implant sizes, resections and outcome metrics), printable to PDF from any
browser (print CSS: A4, tables kept whole, pictures scaled to the page).

Pictures are written beside the HTML (``CASE/report/plan_*.png``) and referenced by relative
path, so the folder can be zipped or opened offline. :func:`write_report_preview` draws a
PNG page preview of the same content (for docs and quick looks, no browser needed).
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

from orthonav.core.atomic import write_text
from orthonav.core.case import Case

from .schema import Plan, load_plan, require

NORMAL_RANGES = {"hka": "180 ± 3", "ldfa": "87 ± 3", "mpta": "87 ± 3", "slope": "7 ± 3 (native)", "femoral_rotation": "3 ± 2"}
ANGLE_NAMES = {
    "hka": "Hip-knee-ankle angle (varus < 180 < valgus)",
    "ldfa": "Lateral distal femoral angle",
    "mpta": "Medial proximal tibial angle",
    "slope": "Posterior tibial slope",
    "femoral_rotation": "Posterior condylar angle (TEA vs PCL)",
}
for _side in ("left", "right"):
    NORMAL_RANGES.update({
        f"acetabular_inclination_{_side}": "40 ± 10 (Lewinnek)", f"acetabular_anteversion_{_side}": "15 ± 10 (Lewinnek)",
        f"cup_inclination_{_side}": "40 ± 10 (Lewinnek)", f"cup_anteversion_{_side}": "15 ± 10 (Lewinnek)", f"neck_shaft_{_side}": "125-135",
    })
    ANGLE_NAMES.update({
        f"acetabular_inclination_{_side}": f"Native acetabular inclination, {_side} (radiographic, vs anterior pelvic plane)",
        f"acetabular_anteversion_{_side}": f"Native acetabular anteversion, {_side} (radiographic, vs anterior pelvic plane)",
        f"cup_inclination_{_side}": f"Planned cup inclination, {_side} (radiographic, vs anterior pelvic plane)",
        f"cup_anteversion_{_side}": f"Planned cup anteversion, {_side} (radiographic, vs anterior pelvic plane)",
        f"neck_shaft_{_side}": f"Native neck-shaft angle, {_side} (neck axis vs proximal shaft axis)",
        f"stem_neck_shaft_{_side}": f"Planned stem neck-shaft angle, {_side}",
    })

#: Words for abbreviations and terms inside snake_case figure keys (see :func:`metric_label`).
_WORDS = {
    "hka": "HKA", "ldfa": "LDFA", "mpta": "MPTA", "hu": "HU", "ml": "medio-lateral", "ap": "antero-posterior",
    "tre": "TRE", "fre": "FRE", "rms": "RMS", "p50": "p50", "p99": "p99", "tea": "TEA",
}
#: Unit suffixes of figure keys -> the unit shown (checked in this order).
_UNITS = (("_mm3", "mm³"), ("_mm2", "mm²"), ("_mm", "mm"), ("_deg", "deg"), ("_fraction", "%"), ("_hz", "Hz"),
          ("_ms", "ms"), ("_s", "s"))
#: Figure keys whose generic label would mislead: key -> (name, unit).
METRIC_NAMES: dict[str, tuple[str, str]] = {
    "hka": ("Hip-knee-ankle angle", "deg"),
    "predicted_hka_deg": ("Predicted HKA angle after the plan", "deg"),
    "tibial_mean_hu_under_tray": ("Mean bone density under the tibial tray", "HU"),
    "femoral_mean_hu_under_component": ("Mean bone density under the femoral component", "HU"),
    "insert_thickness_mm": ("Polyethylene insert thickness", "mm"),
    "femur_volume_mm3": ("Femur volume", "mm³"),
    "tibia_volume_mm3": ("Tibia volume", "mm³"),
    "femur_removed_volume_mm3": ("Femoral bone removed", "mm³"),
    "tibia_removed_volume_mm3": ("Tibial bone removed", "mm³"),
    "femoral_ap_needed_mm": ("Femoral AP size needed", "mm"),
    "femoral_bone_ml_mm": ("Femoral bone width (ML)", "mm"),
    "femoral_ml_overhang_mm": ("Femoral component ML overhang", "mm"),
    "tibial_section_ml_mm": ("Tibial cut width (ML)", "mm"),
    "tibial_section_ap_mm": ("Tibial cut depth (AP)", "mm"),
}


def metric_label(key: str) -> tuple[str, str]:
    """A plain name and unit for a snake_case figure key (``'cup_coverage_left_fraction'`` ->
    ``('Cup coverage, left', '%')``; ``'flexion_deg_rms'`` -> ``('Flexion RMS', 'deg')``).

    Known keys come from :data:`METRIC_NAMES` / :data:`ANGLE_NAMES`; others are read as words,
    a unit suffix (``_mm``, ``_deg``, ``_mm3``, ``_fraction`` ...), an optional ``_rms`` and a
    side (``_left`` / ``_right``). A ``%`` unit means the value is a fraction to show x 100.
    """
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    if key in ANGLE_NAMES:
        return ANGLE_NAMES[key], "deg"
    rest, extra = key, ""
    for stat, word in (("_rms", " RMS"), ("_max", " max"), ("_mean", " mean"), ("_p95", " p95"), ("_p50", " p50")):
        if rest.endswith(stat):
            rest, extra = rest[: -len(stat)], word
            break
    unit = ""
    for suffix, u in _UNITS:
        if rest.endswith(suffix):
            rest, unit = rest[: -len(suffix)], u
            break
    side = ""
    for sd in ("left", "right"):
        if rest.endswith(f"_{sd}") or f"_{sd}_" in rest:
            rest, side = rest.replace(f"_{sd}", ""), f", {sd}"
    words = [_WORDS.get(w, w) for w in rest.split("_") if w]
    name = " ".join(words)
    return (name[:1].upper() + name[1:] if name else key) + extra + side, unit


def _words(key: str) -> str:
    """A snake_case name in words, abbreviations in capitals (``tka_tibial_tray`` -> ``TKA tibial tray``)."""
    return " ".join({"tka": "TKA", "tha": "THA"}.get(w, _WORDS.get(w, w)) for w in key.split("_") if w)


def angle_short_name(key: str) -> str:
    """The short name of an alignment angle key (``hka`` -> ``HKA``, ``cup_inclination_left`` ->
    ``cup inclination left``)."""
    return _words(key)


def format_metric(key: str, value: float, *, digits: int = 1) -> str:
    """``value`` of figure ``key`` with its unit and a sensible precision ('not measured' for
    NaN; no '-0.0'; a fraction as a percentage; volumes in whole mm³)."""
    import math

    _name, unit = metric_label(key)
    if not math.isfinite(value):
        return "not measured"
    if unit == "%":
        return f"{100.0 * value:.0f} %"
    if unit in ("mm³", "mm²", "HU"):
        return f"{value:,.0f} {unit}"
    text = f"{value:.{digits}f}"
    if float(text) == 0.0:
        text = text.lstrip("-")
    return f"{text} {unit}".rstrip()


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { border-bottom: 2px solid #345; padding-bottom: .2em; font-size: 1.6em; }
h2 { color: #234; font-size: 1.2em; margin-top: 1.4em; }
.meta { color: #555; }
table { border-collapse: collapse; margin: .4em 0 1.2em; font-size: .92em; }
th, td { border: 1px solid #bbb; padding: .2em .55em; text-align: right; }
th { background: #eef2f8; } td:first-child, th:first-child, td.text { text-align: left; }
figure { margin: .5em 0; } figure img { width: 100%; border: 1px solid #ccc; }
figcaption { font-size: .85em; color: #555; }
.warn { color: #a00; font-weight: bold; }
ul.legend { list-style: none; padding: 0; columns: 2; } ul.legend li { margin: .15em 0; }
.swatch { display: inline-block; width: .9em; height: .9em; margin-right: .5em; border: 1px solid #555; vertical-align: middle; }
@page { size: A4; margin: 12mm; }
@media print {
  body { margin: 0; max-width: none; font-size: 10pt; }
  h2 { page-break-after: avoid; }
  table, figure { page-break-inside: avoid; }
  .noprint { display: none; }
}
"""


def _table(header: list[str], rows: list[list[object]], text_cols: tuple[int, ...] = (0,)) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            s = f"{v:.2f}" if isinstance(v, float) else str(v)
            cls = ' class="text"' if i in text_cols else ""
            cells.append(f"<td{cls}>{html.escape(s)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _with_unit(text: str, unit: str) -> str:
    """``text`` (e.g. a normal range '87 ± 3' or '40 ± 10 (Lewinnek)') with ``unit`` after its
    numbers; empty stays empty."""
    if not text:
        return text
    head, sep, tail = text.partition(" (")
    return f"{head} {unit}{sep}{tail}"


def alignment_words(plan: Plan) -> str:
    """The knee plan's alignment in words, saying when the CT could not support it."""
    if "cut_orientation" in plan.assumptions:  # a partial CT (docs/anatomy.md)
        return f"{plan.alignment} alignment requested; without the hip and ankle centres the cuts follow the joint lines"
    return f"{plan.alignment} alignment"


def legend_html(entries: list[tuple[str, str]]) -> str:
    """The key to the plan pictures as HTML: a colour swatch and its meaning per marker colour."""
    items = "".join(f"<li><span class='swatch' style='background:{html.escape(c)}'></span>{html.escape(label)}</li>" for label, c in entries)
    return f"<ul class='legend'>{items}</ul>"


def report_tables(plan: Plan) -> dict[str, tuple[list[str], list[list[object]]]]:
    """The report's tables (title -> header, rows), shared by the HTML and the preview."""
    t: dict[str, tuple[list[str], list[list[object]]]] = {}
    t["Alignment angles (degrees)"] = (
        ["angle", "value", "normal", "definition"],
        [[angle_short_name(k), format_metric(f"{k}_deg", float(v)), _with_unit(NORMAL_RANGES.get(k, ""), "deg"), ANGLE_NAMES.get(k, "")]
         for k, v in plan.angles_deg.items()],
    )
    t["Implants"] = (["component", "size (catalogue label)", "bone"], [[_words(i.family), i.size, i.bone] for i in plan.implants])
    rows = []
    for k, c in plan.cuts.items():
        if c.depths_mm:
            for ref, d in c.depths_mm.items():
                rows.append([_words(k), _words(ref), f"{d:.2f} mm"])
        else:
            given = bool(c.reference) or c.resection_depth_mm != 0.0  # a box cut carries no depth of its own
            rows.append([_words(k), _words(c.reference) or "-", f"{c.resection_depth_mm:.2f} mm" if given else "set by the component"])
    t["Resections (mm, from each reference landmark)"] = (["cut", "reference", "depth"], rows)
    t["Outcome metrics"] = (["metric", "value"], [[metric_label(k)[0], format_metric(k, float(v))]
                                                  for k, v in plan.metrics.items() if not k.startswith("resection_")])
    if plan.not_measured or plan.assumptions:
        t["Not measured, and assumptions (what the CT could not support)"] = (
            ["measure", "status", "why"],
            [[_words(k.removesuffix("_mm")), "not measured", v.removeprefix("not measured: ")] for k, v in plan.not_measured.items()]
            + [[_words(k), "assumed", v] for k, v in plan.assumptions.items()],
        )
    t["Landmarks (LPS mm, CT frame)"] = (
        ["landmark", "bone", "L (x) mm", "P (y) mm", "S (z) mm", "method"],
        [[k, lm.bone, *[float(x) for x in lm.position_lps_mm], lm.method] for k, lm in plan.landmarks.items()],
    )
    return t


def write_plan_report(case_dir: str | Path, *, views: tuple[str, ...] = ("anterior", "lateral"), extra_views: tuple[str, ...] = ("medial", "posterior")) -> Path:
    """Write ``CASE/report/plan.html`` (and its pictures) from ``CASE/plan.json``.

    Returns
    -------
    Path
        The HTML file.
    """
    from .scene import plan_legend, render_plan

    case = Case(case_dir)
    plan = load_plan(case.require(case.plan, "orthonav plan CASE --auto"))
    require(plan, case.plan, stage="the planning report", landmarks=True, bones=True)
    rep = case.report_dir
    rep.mkdir(parents=True, exist_ok=True)
    joint = "the pelvis, then close-ups of the operated hip" if plan.procedure == "tha" else "the whole limb, then close-ups of the knee"
    key = "The key under the views names every colour and gives the angles in degrees."
    figs = [
        (render_plan(case.root, rep / "plan_views.png", views=views, size=(1400, 900)),
         f"The plan seen from the {' and '.join(views)} sides: {joint}. {key}"),
        (render_plan(case.root, rep / "plan_views2.png", views=extra_views, size=(1400, 900)),
         f"The same plan seen from the {' and '.join(extra_views)} sides: {joint}."),
    ]
    guide_note = ""
    if case.guides_dir.is_dir():
        g = sorted(p.name for p in case.guides_dir.glob("*_guide.stl"))
        if g:
            guide_note = f"<p>Patient-specific cutting guides: {', '.join(html.escape(x) for x in g)} (in <code>guides/</code>).</p>"
    sides = "side unknown" if plan.side is None else f"{plan.side} side{'s' if plan.side == 'both' else ''}"
    how = "cup orientation relative to the anterior pelvic plane" if plan.procedure == "tha" else alignment_words(plan)
    meta = (
        f"<p class='meta'>Procedure {html.escape(plan.procedure.upper())}, {html.escape(sides)}, {html.escape(how)}. "
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. All positions are LPS millimetres in the CT frame.</p>"
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>OrthoNav plan - {html.escape(case.root.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Surgical plan: {html.escape(case.root.name)}</h1>",
        meta,
    ]
    if plan.notes:
        parts.append(f"<p class='meta'>{html.escape(plan.notes)}</p>")
    for path, cap in figs:
        parts.append(f"<figure><img src='{html.escape(Path(path).name)}' alt='{html.escape(cap)}'><figcaption>{html.escape(cap)}</figcaption></figure>")
    parts.append("<h2>Key to the pictures</h2>")
    parts.append(legend_html(plan_legend(case.root)))
    for title, (header, rows) in report_tables(plan).items():
        parts.append(f"<h2>{html.escape(title)}</h2>")
        text_cols = (0, 1, 5) if title.startswith("Landmarks") else (0, 1, 2, 3) if title.startswith("Alignment") else (0, 1, 2) if title.startswith("Not measured") else (0, 1)
        empty = f"<p>No {html.escape(title.split(' (')[0].lower())} in this plan.</p>"
        parts.append(_table(header, rows, text_cols=text_cols) if rows else empty)
    parts.append(guide_note)
    parts.append("<p class='meta noprint'>Print this page (Ctrl+P) to save it as PDF.</p></body></html>")
    return write_text(rep / "plan.html", "\n".join(parts))


def write_report_preview(case_dir: str | Path, png_path: str | Path) -> Path:
    """A PNG page preview of the report (scene picture + main tables), via matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt
    from orthonav.core.atomic import write_with

    case = Case(case_dir)
    plan = require(load_plan(case.require(case.plan, "orthonav plan CASE --auto")), case.plan, stage="the report preview",
                   landmarks=True, bones=True)
    from .scene import render_plan

    # Its own picture at about the size it is printed, so the labels and angles stay legible.
    img_path = render_plan(case.root, case.report_dir / "plan_preview.png", size=(1000, 640))
    tables = report_tables(plan)
    fig = plt.figure(figsize=(8.27, 11.69), dpi=110)
    fig.text(0.05, 0.97, f"Surgical plan: {case.root.name}", fontsize=15, weight="bold", va="top")
    how = "cup vs anterior pelvic plane" if plan.procedure == "tha" else alignment_words(plan)
    sides = "side unknown" if plan.side is None else f"{plan.side} side{'s' if plan.side == 'both' else ''}"
    fig.text(0.05, 0.945, f"{plan.procedure.upper()}, {sides}, {how}; LPS mm, CT frame", fontsize=9, color="#555", va="top")
    ax = fig.add_axes([0.02, 0.50, 0.96, 0.425])
    ax.imshow(mpimg.imread(img_path))
    ax.axis("off")
    y = 0.49
    for title in ("Alignment angles (degrees)", "Implants", "Resections (mm, from each reference landmark)"):
        header, rows = tables[title]
        rows = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in r] for r in rows][:12]
        if title.startswith("Alignment"):
            header, rows = header[:3], [r[:3] for r in rows]
        h = 0.018 * (len(rows) + 1)
        fig.text(0.05, y, title, fontsize=10, weight="bold", va="top")
        tax = fig.add_axes([0.05, y - 0.01 - h, 0.9, h])
        tax.axis("off")
        if rows:
            tb = tax.table(cellText=rows, colLabels=header, loc="upper left", cellLoc="left")
            tb.auto_set_font_size(False)
            tb.set_fontsize(8)
        y -= h + 0.035
    out = write_with(png_path, lambda tmp: fig.savefig(str(tmp)))
    plt.close(fig)
    return Path(out)


__all__ = ["report_tables", "write_plan_report", "write_report_preview"]
