"""The two-array demo's figures (matplotlib, off-screen): live alignment and gaps, navigation vs truth.

* ``knee_alignment.png``: knee flexion and varus/valgus (deg) over the range of motion and the
  stress tests, navigation against the truth, then the errors (navigation - truth, and
  navigation - its own definitions at the true knee pose) with the issue's 0.5 deg band; holds
  shaded.
* ``knee_gaps.png``: medial and lateral resection gaps (mm) against knee flexion over the range
  of motion, navigation against the truth, the varus/valgus stress holds marked; then the gap
  errors with the 0.5 mm band.

Input: a :class:`~orthonav.phantoms.demo_knee.KneeSeries`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ALIGNMENT_PNG, GAPS_PNG = "knee_alignment.png", "knee_gaps.png"
#: The issue's acceptance bands drawn on the error panels (deg, mm).
ALIGNMENT_BAND_DEG, GAP_BAND_MM = 0.5, 0.5
MEDIAL, LATERAL = "#1f77b4", "#d62728"


def _shade_holds(ax: Any, series: Any, t0: float) -> None:
    for (phase, _label), idx in series.holds().items():
        colour = "#2ca02c" if phase == "rom_hold" else "#ff7f0e"
        ax.axvspan(series.t_s[idx[0]] - t0, series.t_s[idx[-1]] - t0, color=colour, alpha=0.12, lw=0)


def _alignment_figure(series: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    m = series.mask(("rom_move", "rom_hold", "stress_move", "stress_hold", "leg_move"))
    first_rom = int(np.argmax(series.mask(("rom_move", "rom_hold"))))
    m[:first_rom] = False  # from the range of motion on (not the hip circle before it)
    last = max(i for i, p in enumerate(series.phase) if p.startswith("stress"))
    m[last + 1:] = False  # up to the end of the stress tests (not the cuts)
    t0 = float(series.t_s[m][0])
    t = series.t_s[m] - t0
    fig, axes = plt.subplots(3, 1, figsize=(9.0, 7.5), sharex=True, constrained_layout=True)
    for ax, nav, true, name in ((axes[0], series.nav_flexion, series.true_flexion, "flexion"),
                                (axes[1], series.nav_varus, series.true_varus, "varus (+) / valgus (-)")):
        _shade_holds(ax, series, t0)
        ax.plot(t, true[m], color="black", lw=2.5, alpha=0.35, label="truth")
        ax.plot(t, nav[m], color=MEDIAL, lw=0.8, label="navigation")
        ax.set_ylabel(f"{name} (deg)")
        ax.grid(alpha=0.3)
    axes[0].legend(handles=[*axes[0].get_legend_handles_labels()[0], Patch(color="#2ca02c", alpha=0.25, label="range-of-motion hold"),
                            Patch(color="#ff7f0e", alpha=0.25, label="varus/valgus stress hold")], loc="upper left", fontsize=8)
    ax = axes[2]
    _shade_holds(ax, series, t0)
    ax.plot(t, (series.nav_varus - series.true_varus)[m], color=MEDIAL, lw=0.8, label="varus/valgus - truth")
    ax.plot(t, (series.nav_flexion - series.true_flexion)[m], color="#9467bd", lw=0.8, label="flexion - truth")
    ax.plot(t, (series.nav_varus - series.pose_varus)[m], color=MEDIAL, lw=0.8, ls=":",
            label="varus/valgus - plan landmarks at the true pose (tracking only)")
    for s in (-ALIGNMENT_BAND_DEG, ALIGNMENT_BAND_DEG):
        ax.axhline(s, color="grey", ls="--", lw=0.8)
    ax.set_ylabel("navigation error (deg)")
    ax.set_xlabel("time from the start of the range of motion (s)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle("Live knee alignment, two arrays: range of motion 0-120 deg, then varus/valgus stress at 90 and 0 deg\n"
                 "(dashed: the 0.5 deg acceptance band)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _gaps_figure(series: Any, path: Path, stress_deg: float) -> Path:
    import matplotlib.pyplot as plt

    m = series.mask(("rom_move", "rom_hold"))
    order = np.argsort(series.nav_flexion[m])
    flex = series.nav_flexion[m][order]
    fig, axes = plt.subplots(2, 1, figsize=(9.0, 7.0), sharex=True, constrained_layout=True, height_ratios=(2.2, 1.0))
    ax = axes[0]
    for nav, true, colour, name in ((series.nav_medial, series.true_medial, MEDIAL, "medial"),
                                    (series.nav_lateral, series.true_lateral, LATERAL, "lateral")):
        ax.plot(series.true_flexion[m][np.argsort(series.true_flexion[m])], true[m][np.argsort(series.true_flexion[m])], color=colour,
                lw=3.0, alpha=0.3, label=f"{name}: truth")
        ax.plot(flex, nav[m][order], ".", color=colour, ms=2.5, label=f"{name}: navigation")
    for (phase, label), idx in series.holds(("stress_hold",)).items():
        marker = "^" if label.startswith("varus") else "v"
        for nav, true, colour in ((series.nav_medial, series.true_medial, MEDIAL), (series.nav_lateral, series.true_lateral, LATERAL)):
            ax.plot(series.nav_flexion[idx].mean(), nav[idx].mean(), marker, color=colour, ms=9)
            ax.plot(series.true_flexion[idx].mean(), true[idx].mean(), marker, mfc="none", mec="black", ms=12)
    ax.plot([], [], "^", color="grey", ms=9, label=f"varus stress {stress_deg:g} deg (navigation; hollow: truth)")
    ax.plot([], [], "v", color="grey", ms=9, label=f"valgus stress {stress_deg:g} deg (navigation; hollow: truth)")
    ax.set_ylabel("gap (mm)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="best")
    ax = axes[1]
    ax.plot(flex, (series.nav_medial - series.true_medial)[m][order], ".", color=MEDIAL, ms=2.5, label="medial - truth")
    ax.plot(flex, (series.nav_lateral - series.true_lateral)[m][order], ".", color=LATERAL, ms=2.5, label="lateral - truth")
    for s in (-GAP_BAND_MM, GAP_BAND_MM):
        ax.axhline(s, color="grey", ls="--", lw=0.8)
    ax.set_ylabel("navigation error (mm)")
    ax.set_xlabel("knee flexion (deg)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.suptitle("Medial and lateral gaps over the range of motion, two arrays: planned femoral cut faces to the planned tibial cut\n"
                 "(truth: brute force on the true femur; dashed: the 0.5 mm acceptance band)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_knee_figures(series: Any, out_dir: str | Path, *, stress_deg: float) -> list[Path]:
    """Write ``knee_alignment.png`` and ``knee_gaps.png`` into ``out_dir``; return their paths.
    ``stress_deg``: the scripted varus/valgus stress (deg), for the legend."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    return [_alignment_figure(series, out / ALIGNMENT_PNG), _gaps_figure(series, out / GAPS_PNG, stress_deg)]


__all__ = ["ALIGNMENT_PNG", "GAPS_PNG", "write_knee_figures"]
