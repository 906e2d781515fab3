"""A small, dependency-free HTML report writer (tables and pictures), printable to PDF.

Used by the demo report and the accuracy-protocol report; images are referenced by relative
path so the folder can be zipped or opened offline.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from orthonav.core.atomic import write_text

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #345; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: .25em .6em; text-align: right; }
th { background: #eef; } td:first-child, th:first-child { text-align: left; }
.pass { color: #060; font-weight: bold; } .fail { color: #a00; font-weight: bold; }
figure { display: inline-block; margin: .5em; } figure img { max-width: 520px; border: 1px solid #ccc; }
figcaption { font-size: .9em; color: #555; }
@media print { figure img { max-width: 45%; } body { margin: 0; } }
"""


@dataclass
class Section:
    """A titled block: optional paragraph, tables (title -> rows), figures (path, caption)."""

    title: str
    text: str = ""
    tables: list[tuple[str, Sequence[str], Sequence[Sequence[object]]]] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, bool):
        return '<span class="pass">PASS</span>' if v else '<span class="fail">FAIL</span>'
    return html.escape(str(v))


def render_html(title: str, sections: Sequence[Section], *, base_dir: Path, meta: Mapping[str, str] | None = None) -> str:
    """Return the report's HTML; figure paths are written relative to ``base_dir``."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    out.append(f"<h1>{html.escape(title)}</h1>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = {"generated": stamp, **(meta or {})}
    out.append("<p>" + " &middot; ".join(f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in info.items()) + "</p>")
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            out.append(f"<p>{html.escape(s.text)}</p>")
        for caption, header, rows in s.tables:
            out.append(f"<h3>{html.escape(caption)}</h3><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            for row in rows:
                out.append("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
            out.append("</table>")
        for path, caption in s.figures:
            rel = Path(path).resolve().relative_to(base_dir.resolve()) if Path(path).resolve().is_relative_to(base_dir.resolve()) else Path(path)
            out.append(f"<figure><img src='{html.escape(rel.as_posix())}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(path: Path, title: str, sections: Sequence[Section], *, meta: Mapping[str, str] | None = None) -> Path:
    """Atomically write an HTML report to ``path``."""
    path = Path(path)
    return write_text(path, render_html(title, sections, base_dir=path.parent, meta=meta))
