"""``orthonav name CASE 3=femur_left 4+5=tibia_left``: name or merge bones by hand, and say what changed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from orthonav.segmentation.relabel import relabel_case


def name_bones_cli(case: str | Path, assignments: Sequence[str]) -> list[str]:
    """Apply ``assignments`` to the case (:func:`orthonav.segmentation.relabel.relabel_case`)
    and return the lines to print: one per change, the files written and removed, and the
    label table as it now stands."""
    done = relabel_case(case, list(assignments))
    lines = []
    for name, olds in done.changes.items():
        value = next(v for v, n in done.table.labels.items() if n == name)
        what = "renamed" if len(olds) == 1 else "merged"
        lines.append(f"{what} {' + '.join(olds)} -> {name} (label {value}, confidence 1.00, named by hand)")
        if done.filled.get(name):
            lines.append(f"  {done.filled[name]} voxel(s) of background enclosed by {name} (gaps between its pieces) are now {name}")
    lines.append(f"{len(done.files)} files written" + (f", {len(done.removed)} stale meshes removed" if done.removed else ""))
    # Label values are kept contiguous (1..n), so a merge can renumber bones it did not touch:
    # list the whole table, which later commands refer to.
    lines.append("labels now: " + ", ".join(f"{v}={n}" for v, n in sorted(done.table.labels.items())))
    return lines


__all__ = ["name_bones_cli"]
