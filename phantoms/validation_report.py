"""The accuracy protocol's report: one folder per run in ``CASE/validation/`` with HTML, plots
(matplotlib), CSV and JSON.

Every run writes a new folder (:func:`new_validation_dir`), so no run overwrites another:
``validation/<session timestamp>/`` for a recorded session (the name of its
``sessions/<timestamp>/`` folder) and ``validation/simulated-<UTC time>/`` for a Monte Carlo
simulation; a name already taken gets ``-2``, ``-3``, ... appended. Files of a run (every
write atomic)::

    <run>/report.html            the report (tables, verdicts, the plots below)
    <run>/result.json            settings, limits, checks, summary and all raw numbers
    <run>/trials.csv             one row per trial: FRE and TRE at every target (mm)
    <run>/targets.csv            per target: predicted and measured RMS TRE, mean, p50, p95, max
    <run>/fiducials.csv          per fiducial: CT position, RMS residual after registration
    <run>/validation_tre.png             TRE per target (distribution over trials) with the prediction
    <run>/validation_tre_vs_predicted.png measured vs predicted RMS TRE, +-10 % band
    <run>/validation_fre.png             FRE distribution with Fitzpatrick's chi-square law
    <run>/validation_vectors.png         error vectors at the targets on the phantom picture
    <run>/validation_pivot.png           pivot calibration residuals (when poses are known)
    <run>/validation_tre_map.png         predicted TRE at every bone-surface vertex (colour map, mm)
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orthonav.core.atomic import write_json, write_text, write_with
from orthonav.core.case import Case, read_case_meshes

from .html_report import Section, write_report
from .validation_result import ValidationResult

PLOT_NAMES = ("validation_tre.png", "validation_tre_vs_predicted.png", "validation_fre.png", "validation_vectors.png",
              "validation_pivot.png", "validation_tre_map.png")


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _short(name: str) -> str:
    return name.removeprefix("target_").replace("_", " ")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"))
    _plt().close(fig)
    return path


# --- plots ---------------------------------------------------------------------------------------


def plot_tre(result: ValidationResult, path: Path) -> Path:
    """TRE per target: box plots over trials (simulation) or bars (session), predicted RMS beside."""
    plt = _plt()
    m = len(result.target_names)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * m + 2), 4.2))
    x = np.arange(m)
    measured = result.measured_rms_tre_mm()
    if result.trials > 1:
        data = [result.tre_mm[np.isfinite(result.tre_mm[:, j]), j] for j in range(m)]
        ax.boxplot(data, positions=x, widths=0.5, whis=(5, 95), showfliers=False, patch_artist=True,
                   boxprops={"facecolor": "#cfe0f5"}, medianprops={"color": "#345"})
        ax.plot(x, measured, "o", color="#1f5fa8", label="measured RMS")
    else:
        ax.bar(x - 0.18, np.nan_to_num(result.tre_mm[0]), width=0.36, color="#1f5fa8", label="measured (touch)")
        for j in np.flatnonzero(~np.isfinite(result.tre_mm[0])):
            ax.text(x[j] - 0.18, 0.0, "not\ntouched", ha="center", va="bottom", fontsize=7, color="#a00")
    ax.plot(x + (0.18 if result.trials == 1 else 0.0), result.predicted_tre_mm, "D", color="#c0392b", mfc="none", ms=9,
            label=f"predicted RMS (Fitzpatrick, FLE {result.fle_mm:.2f} mm)")
    ax.plot(x + (0.18 if result.trials == 1 else 0.0), result.predicted_tre_p95_mm(), "_", color="#c0392b", ms=22, mew=2,
            label="predicted p95 (Fitzpatrick & West 2001)")
    limit = result.config.max_tre_p95_mm
    top = float(np.nanmax(np.r_[np.nanpercentile(result.tre_mm, 95, axis=0) if result.trials > 1 else result.tre_mm[0],
                                result.predicted_tre_p95_mm(), 1e-3]))
    if limit is not None and limit <= 3.0 * top:
        ax.axhline(limit, color="#a00", ls="--", lw=1, label=f"TRE p95 limit {limit:g} mm")
        top = max(top, limit)
    elif limit is not None:  # keep the data readable; say where the limit is
        ax.text(0.99, 0.97, f"TRE p95 limit {limit:g} mm (off scale)", transform=ax.transAxes, ha="right", va="top", fontsize=8,
                color="#a00")
    ax.set_ylim(0.0, 1.45 * top)  # room for the legend above the data
    ax.set_xticks(x, [_short(n) for n in result.target_names], rotation=25, ha="right")
    ax.set_ylabel("TRE (mm)")
    what = f"{result.trials} simulated trials (box 25-75 %, whiskers 5-95 %)" if result.trials > 1 else "recorded session"
    ax.set_title(f"Target registration error per target: {what}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_tre_vs_predicted(result: ValidationResult, path: Path) -> Path:
    """Measured vs predicted RMS TRE per target with the identity line and a +-10 % band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 4.6))
    pred = result.predicted_tre_mm
    meas = result.measured_rms_tre_mm()
    ok = np.isfinite(pred) & np.isfinite(meas)
    hi = float(np.nanmax(np.r_[pred[ok], meas[ok], 1e-3])) * 1.25 if ok.any() else 1.0
    xs = np.array([0.0, hi])
    ax.fill_between(xs, 0.9 * xs, 1.1 * xs, color="#2a8", alpha=0.15, label="+-10 % of prediction")
    ax.plot(xs, xs, color="#2a8", lw=1)
    ax.plot(pred[ok], meas[ok], "o", color="#1f5fa8", label="target")
    idx = np.flatnonzero(ok)
    for rank, j in enumerate(idx[np.argsort(pred[idx])]):  # labels staggered: targets often have near-equal TRE
        ax.annotate(_short(result.target_names[j]), (pred[j], meas[j]), fontsize=7, xytext=(8, 10 * (rank % 4) - 16),
                    textcoords="offset points", arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.5})
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("predicted RMS TRE (mm), Fitzpatrick 1998 eq. 46")
    ax.set_ylabel("measured RMS TRE (mm)" if result.trials > 1 else "measured TRE, one touch (mm)")
    ax.set_title(f"Measured vs predicted TRE ({result.mode}, FLE {result.fle_mm:.2f} mm)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _chi2_pdf(x: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    """Chi-square probability density with ``k`` degrees of freedom (x >= 0)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log = (k / 2.0 - 1.0) * np.log(x) - x / 2.0 - (k / 2.0) * math.log(2.0) - math.lgamma(k / 2.0)
    return np.where(x > 0, np.exp(log), 0.0)


def plot_fre(result: ValidationResult, path: Path) -> Path:
    """FRE: histogram over trials with the law of Fitzpatrick's model, or per-fiducial residuals."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    n = len(result.fiducial_names)
    if result.trials > 1:
        ax.hist(result.fre_mm, bins=40, density=True, color="#cfe0f5", edgecolor="#7a9cc6", label=f"{result.trials} trials")
        sigma2 = result.fle_mm**2 / 3.0  # per-axis FLE variance
        if sigma2 > 0 and n > 2:
            # N FRE^2 / sigma^2 ~ chi^2 with 3N - 6 degrees of freedom (isotropic Gaussian FLE)
            x = np.linspace(0.0, float(result.fre_mm.max()) * 1.1, 300)
            pdf = _chi2_pdf(n * x**2 / sigma2, 3 * n - 6) * 2.0 * n * x / sigma2  # change of variable to FRE
            ax.plot(x, pdf, color="#c0392b", lw=1.5, label=f"model: N FRE^2/sigma^2 ~ chi2({3 * n - 6})")
        ax.axvline(math.sqrt(np.mean(result.fre_mm**2)), color="#1f5fa8", lw=1.5, label="measured RMS")
        ax.axvline(result.predicted_fre_mm, color="#c0392b", ls="--", lw=1.5, label="predicted RMS sqrt(1-2/N) FLE")
        ax.set_xlabel("FRE (mm)")
        ax.set_ylabel("density")
        ax.set_title("Fiducial registration error over trials", fontsize=10)
    else:
        res = result.fiducial_residuals_mm[0]
        ax.bar(np.arange(n), np.nan_to_num(res), color="#1f5fa8", label="residual after registration")
        ax.axhline(result.fre_mm[0], color="#345", lw=1.5, label=f"FRE (RMS) {result.fre_mm[0]:.3f} mm")
        ax.set_xticks(np.arange(n), [s.removeprefix("fiducial_") for s in result.fiducial_names])
        ax.set_xlabel("fiducial")
        ax.set_ylabel("residual (mm)")
        ax.set_title("Fiducial residuals of the session's registration", fontsize=10)
    limit = result.config.max_fre_mm
    if limit is not None and limit < 3 * float(np.nanmax(result.fre_mm)):  # only when it fits the scale
        line = ax.axvline if result.trials > 1 else ax.axhline
        line(limit, color="#a00", ls=":", lw=1, label=f"FRE limit {limit:g} mm")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _phantom_bone_points(case_dir: Path) -> dict[str, NDArray[np.float64]]:
    """Surface points of each of the case's bones (truth meshes first, else segmented meshes),
    bone -> (V, 3) LPS mm; empty without meshes."""
    case = Case(case_dir)
    for folder in (case.truth_dir, case.root):  # truth/meshes/ is laid out as a case's meshes/
        meshes = read_case_meshes(folder)
        if meshes:
            return {bone: np.asarray(m.points, dtype=np.float64) for bone, m in meshes.items()}
    return {}


def _subsample(pts: NDArray[np.float64], limit: int) -> NDArray[np.float64]:
    return pts[np.random.default_rng(0).choice(len(pts), limit, replace=False)] if len(pts) > limit else pts


def _phantom_points(case_dir: Path, limit: int = 12000) -> NDArray[np.float64] | None:
    """Surface points of the case's bones (truth meshes first, else segmented meshes), LPS mm."""
    bones = _phantom_bone_points(case_dir)
    return _subsample(np.vstack(list(bones.values())), limit) if bones else None


def plot_vectors(result: ValidationResult, path: Path) -> Path:
    """Error vectors at the targets (magnified) on the phantom: overview, anterior and lateral zooms."""
    plt = _plt()
    if result.trials > 1:
        # The trial with the median FRE is shown: a typical registration.
        trial = int(np.argsort(result.fre_mm)[len(result.fre_mm) // 2])
        which = f"trial {trial} (median FRE {result.fre_mm[trial]:.3f} mm)"
    else:
        trial, which = 0, "recorded session"
    vec = result.tre_vectors_mm[trial]
    t = result.targets_ct_mm
    f = result.fiducials_ct_mm
    finite = np.isfinite(vec).all(axis=1)
    longest = float(np.max(np.linalg.norm(vec[finite], axis=1))) if finite.any() else 0.0
    lo_t, hi_t = t.min(axis=0) - 15.0, t.max(axis=0) + 15.0
    zoom = float(np.max(hi_t - lo_t))
    scale = 10.0 ** math.floor(math.log10(0.3 * zoom / longest)) if longest > 0 else 1.0
    pts = _phantom_points(result.case_dir)
    both = np.vstack([t, f])
    lo_a, hi_a = both.min(axis=0) - 25.0, both.max(axis=0) + 25.0
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 6.0), gridspec_kw={"width_ratios": [0.6, 1.0, 1.0]})
    # Views: anterior = LPS x (patient right -> left) against z; lateral = LPS y (anterior -> posterior) against z.
    panels = ((axes[0], 0, lo_a, hi_a, False, "overview (anterior)"), (axes[1], 0, lo_t, hi_t, True, "anterior view, targets"),
              (axes[2], 1, lo_t, hi_t, True, "lateral view, targets"))
    for ax, h, lo, hi, arrows, title in panels:
        if pts is not None:
            ax.scatter(pts[:, h], pts[:, 2], s=0.3 if not arrows else 0.8, c="#bbbbbb", alpha=0.4, linewidths=0, rasterized=True)
        ax.scatter(f[:, h], f[:, 2], s=30, marker="o", facecolors="none", edgecolors="#e67e22", label="fiducials")
        ax.scatter(t[:, h], t[:, 2], s=18, c="#1f5fa8", label="targets", zorder=3)
        if not arrows:
            ax.add_patch(plt.Rectangle((lo_t[h], lo_t[2]), hi_t[h] - lo_t[h], hi_t[2] - lo_t[2], fill=False, ec="#345", ls="--"))
        else:
            for j in np.flatnonzero(finite):
                ax.annotate("", xy=(t[j, h] + scale * vec[j, h], t[j, 2] + scale * vec[j, 2]), xytext=(t[j, h], t[j, 2]),
                            arrowprops={"arrowstyle": "->", "color": "#c0392b", "lw": 1.8}, zorder=4)
            for j in np.flatnonzero(~finite):
                ax.scatter(t[j, h], t[j, 2], s=70, marker="x", c="#a00", zorder=4)
            for j, name in enumerate(result.target_names):
                ax.annotate(_short(name), (t[j, h], t[j, 2]), fontsize=7, xytext=(3, 3), textcoords="offset points", color="#345")
        ax.set_xlim(lo[h], hi[h])
        ax.set_ylim(lo[2], hi[2])
        ax.set_aspect("equal")
        ax.set_xlabel("x: patient right -> left (mm)" if h == 0 else "y: anterior -> posterior (mm)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.2)
    axes[0].set_ylabel("z: inferior -> superior (mm)")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"TRE vectors (red, magnified x{scale:g}) at the targets, {which}; CT LPS frame"
                 + ("; x = target not touched" if not finite.all() else ""), fontsize=10)
    return _save(fig, path)


def tre_map_points(result: ValidationResult, limit: int = 60000) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """Bone-surface vertices of the case (truth meshes first, else segmented; at most ``limit``,
    drawn at random) and the TRE predicted at each (Fitzpatrick 1998 eq. 46 with the run's
    fiducials and FLE, :func:`orthonav.navigation.tre_map.tre_map`): ((V, 3) LPS mm, (V,) mm),
    or None without meshes or without a finite FLE."""
    from orthonav.navigation.tre_map import tre_map

    per_bone = result.parameters.get("per_bone")
    if per_bone:
        return _per_bone_tre_map_points(result, per_bone, limit)
    pts = _phantom_points(result.case_dir, limit=limit)
    if pts is None or not math.isfinite(result.fle_mm):
        return None
    return pts, tre_map(result.fiducials_ct_mm, pts, result.fle_mm)


def _per_bone_tre_map_points(result: ValidationResult, per_bone: dict, limit: int) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """One reference array per bone: each registered bone's map from ITS OWN fiducials and FLE
    (one rigid fit per bone; the fiducials of all bones together would predict a TRE far too
    small). The result's fiducials are the bones' fiducials bone by bone, in ``per_bone`` order.
    Bones without a registration of their own (e.g. the fibula, the patella) are not mapped."""
    from orthonav.navigation.tre_map import tre_map

    bones = _phantom_bone_points(result.case_dir)
    start, pts, tre = 0, [], []
    for bone, figures in per_bone.items():
        n = int(figures["fiducials"])
        fid = result.fiducials_ct_mm[start:start + n]
        start += n
        fle = float(figures.get("fle_mm", math.nan))
        if bone not in bones or not math.isfinite(fle):
            continue
        p = bones[bone]
        pts.append(p)
        tre.append(tre_map(fid, p, fle))
    if not pts:
        return None
    all_pts, all_tre = np.vstack(pts), np.concatenate(tre)
    if len(all_pts) > limit:
        keep = np.random.default_rng(0).choice(len(all_pts), limit, replace=False)
        all_pts, all_tre = all_pts[keep], all_tre[keep]
    return all_pts, all_tre


def plot_tre_map(result: ValidationResult, path: Path) -> Path | None:
    """The predicted TRE at every vertex of the bone surfaces (anterior and lateral views), with
    the fiducials and targets, coloured on the navigation overlay's scale; None (no file) when
    :func:`tre_map_points` has nothing to show."""
    from orthonav.navigation.tre_map import tre_colour_range

    mapped = tre_map_points(result)
    if mapped is None:
        return None
    pts, tre = mapped
    lo, hi = tre_colour_range({"bones": tre})
    plt = _plt()
    order = np.argsort(-pts[:, 1])  # anterior view: draw posterior points first, so the front stays on top
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 8.0))
    f, t = result.fiducials_ct_mm, result.targets_ct_mm
    for ax, h, title, depth in ((axes[0], 0, "anterior view", order), (axes[1], 1, "lateral view", np.argsort(pts[:, 0]))):
        sc = ax.scatter(pts[depth, h], pts[depth, 2], c=tre[depth], cmap="viridis", vmin=lo, vmax=hi, s=1.2, linewidths=0, rasterized=True)
        ax.scatter(f[:, h], f[:, 2], s=36, marker="o", facecolors="none", edgecolors="#e67e22", linewidths=1.5, label="fiducials")
        ax.scatter(t[:, h], t[:, 2], s=22, marker="x", c="#c0392b", label="targets")
        ax.set_aspect("equal")
        ax.set_xlabel("x: patient right -> left (mm)" if h == 0 else "y: anterior -> posterior (mm)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.2)
    axes[0].set_ylabel("z: inferior -> superior (mm)")
    axes[0].legend(fontsize=8, loc="lower left")
    bar = fig.colorbar(sc, ax=list(axes), shrink=0.8, extend="max")
    bar.set_label("predicted TRE (mm)")
    source = (f"each bone from its own registration's fiducials and FLE ({', '.join(result.parameters['per_bone'])})"
              if result.parameters.get("per_bone") else f"{len(f)} fiducials, FLE {result.fle_mm:.3f} mm")
    fig.suptitle(f"Predicted TRE at every bone-surface vertex (Fitzpatrick 1998 eq. 46; {source}; "
                 f"min {tre.min():.2f} mm, max {tre.max():.2f} mm); CT LPS frame", fontsize=10)
    return _save(fig, path)


def plot_pivot(result: ValidationResult, path: Path) -> Path | None:
    """Pivot calibration residuals per pose (None when no per-pose residuals are known)."""
    if result.pivot is None or result.pivot.residuals_mm.size == 0:
        return None
    plt = _plt()
    r = result.pivot.residuals_mm
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6))
    axes[0].plot(np.arange(len(r)), r, ".", ms=3, color="#1f5fa8")
    axes[0].axhline(result.pivot.rms_mm, color="#345", lw=1.5, label=f"RMS {result.pivot.rms_mm:.3f} mm")
    if result.config.max_pivot_rms_mm is not None:
        axes[0].axhline(result.config.max_pivot_rms_mm, color="#a00", ls="--", lw=1, label=f"limit {result.config.max_pivot_rms_mm:g} mm")
    axes[0].set_xlabel("pose")
    axes[0].set_ylabel("tip residual (mm)")
    axes[0].legend(fontsize=8)
    axes[1].hist(r, bins=30, color="#cfe0f5", edgecolor="#7a9cc6")
    axes[1].set_xlabel("tip residual (mm)")
    axes[1].set_ylabel("poses")
    what = "tip error" if result.mode == "simulation" else "tip vs tool file"
    tip = "" if not math.isfinite(result.pivot.tip_error_mm) else f", {what} {result.pivot.tip_error_mm:.3f} mm"
    fig.suptitle(f"Pivot calibration residuals ({result.pivot.n_poses} poses{tip})", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


# --- raw numbers ---------------------------------------------------------------------------------


def _csv(header: list[str], rows: list[list[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if isinstance(v, float) and not math.isfinite(v) else (f"{v:.6g}" if isinstance(v, float) else v) for v in row])
    return buf.getvalue()


def result_json(result: ValidationResult) -> dict[str, Any]:
    """Settings, limits, checks, per-target summary and every raw number (NaN -> null)."""

    def arr(a: NDArray[np.float64]) -> Any:
        return np.where(np.isfinite(a), a, np.nan).tolist() if a.size else []

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return _num(v)
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    pivot = None
    if result.pivot is not None:
        pivot = {"rms_mm": _num(result.pivot.rms_mm), "tip_error_mm": _num(result.pivot.tip_error_mm), "n_poses": result.pivot.n_poses,
                 "source": result.pivot.source, "residuals_mm": clean(arr(result.pivot.residuals_mm))}
    return {
        "format": "orthonav.validation",
        "version": 1,
        "mode": result.mode,
        "source": result.source,
        "case_dir": str(result.case_dir),
        "passed": result.passed,
        "parameters": result.parameters,
        "config": result.config.model_dump(),
        "checks": [{"name": c.name, "value": _num(c.value), "limit": c.limit, "verdict": c.verdict, "detail": c.detail} for c in result.checks],
        "fle_mm": _num(result.fle_mm),
        "fle_observed_mm": _num(result.fle_observed_mm),
        "predicted_fre_mm": _num(result.predicted_fre_mm),
        "fre_rms_mm": _num(float(np.sqrt(np.mean(result.fre_mm**2)))),
        "targets": [{k: (_num(v) if isinstance(v, float) else v) for k, v in row.items()} for row in result.target_table()],
        "fiducials_ct_mm": dict(zip(result.fiducial_names, result.fiducials_ct_mm.tolist())),
        "targets_ct_mm": dict(zip(result.target_names, result.targets_ct_mm.tolist())),
        "pivot": pivot,
        "raw": {
            "fre_mm": clean(arr(result.fre_mm)),
            "tre_mm": clean(arr(result.tre_mm)),
            "fiducial_residuals_mm": clean(arr(result.fiducial_residuals_mm)),
            "tre_vectors_mm": clean(arr(result.tre_vectors_mm)) if result.trials == 1 else "see trials.csv (norms); vectors omitted",
        },
    }


def write_raw(result: ValidationResult, out_dir: Path) -> list[Path]:
    """``result.json``, ``trials.csv``, ``targets.csv`` and ``fiducials.csv`` in ``out_dir``."""
    out = [write_json(out_dir / "result.json", result_json(result))]
    header = ["trial", "fre_mm"] + [f"tre_{n}_mm" for n in result.target_names]
    rows = [[i, float(result.fre_mm[i])] + [float(v) for v in result.tre_mm[i]] for i in range(result.trials)]
    out.append(write_text(out_dir / "trials.csv", _csv(header, rows)))
    t_rows = [list(r.values()) for r in result.target_table()]
    for row, p in zip(t_rows, result.targets_ct_mm):
        row += [float(x) for x in p]
    out.append(write_text(out_dir / "targets.csv", _csv(list(result.target_table()[0]) + ["x_lps_mm", "y_lps_mm", "z_lps_mm"], t_rows)))
    res_rms = np.sqrt(np.nanmean(result.fiducial_residuals_mm**2, axis=0))
    f_rows = [[n, *[float(x) for x in p], float(r)] for n, p, r in zip(result.fiducial_names, result.fiducials_ct_mm, res_rms)]
    out.append(write_text(out_dir / "fiducials.csv", _csv(["fiducial", "x_lps_mm", "y_lps_mm", "z_lps_mm", "rms_residual_mm"], f_rows)))
    return out


# --- the report ----------------------------------------------------------------------------------


def write_plots(result: ValidationResult, out_dir: Path) -> list[Path]:
    """Every plot of the report into ``out_dir`` (names in :data:`PLOT_NAMES`)."""
    out = [
        plot_tre(result, out_dir / "validation_tre.png"),
        plot_tre_vs_predicted(result, out_dir / "validation_tre_vs_predicted.png"),
        plot_fre(result, out_dir / "validation_fre.png"),
        plot_vectors(result, out_dir / "validation_vectors.png"),
    ]
    for name, plot in (("validation_pivot.png", plot_pivot), ("validation_tre_map.png", plot_tre_map)):
        made = plot(result, out_dir / name)
        if made is not None:
            out.append(made)
        else:
            (out_dir / name).unlink(missing_ok=True)  # never leave a stale plot of an earlier run
    return out


def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"OrthoNav {version('orthonav')}"
    except PackageNotFoundError:
        return "OrthoNav (version unknown)"


def run_name(result: ValidationResult, *, now: datetime | None = None) -> str:
    """The folder name of a validation run: the session's timestamp, or ``simulated-<UTC time>``.

    Parameters
    ----------
    result
        The run: ``mode == "session"`` names it after its session folder (``sessions/<timestamp>``).
    now
        The time of a simulation run (default: now, UTC), written ``%Y%m%dT%H%M%SZ``.
    """
    if result.mode == "session":
        return Path(result.source).resolve().name or "session"
    return "simulated-" + (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def new_validation_dir(result: ValidationResult, case_dir: str | Path) -> Path:
    """Create and return a new, empty folder ``CASE/validation/<run>/`` for this run.

    ``<run>`` is :func:`run_name`; when a folder of that name exists already (the same session
    validated again, two simulations in one second), ``-2``, ``-3``, ... is appended. The folder
    is claimed by ``mkdir`` itself, so two processes never share one.
    """
    parent = Case(case_dir).validation_dir
    parent.mkdir(parents=True, exist_ok=True)
    base = run_name(result)
    for i in itertools.count(1):
        path = parent / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")  # pragma: no cover


def write_validation_report(result: ValidationResult, case_dir: str | Path, *, out_dir: str | Path | None = None) -> Path:
    """Write one validation run (see the module docstring); returns the path of its ``report.html``.

    Parameters
    ----------
    result
        The figures of the run.
    case_dir
        The case; the run goes to a new folder of ``CASE/validation/`` (:func:`new_validation_dir`).
    out_dir
        Write into this folder instead (created if needed; files of the same names are replaced).
    """
    if out_dir is None:
        out_dir = new_validation_dir(result, case_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_raw(result, out_dir)
    plots = {p.name: p for p in write_plots(result, out_dir)}
    p = result.parameters
    fre = result.fre_mm
    verdict = "PASS" if result.passed else "FAIL"
    checks = Section(
        f"Verdict: {verdict}",
        text="Each figure against the limit of the validation configuration (N/A: not measured).",
        tables=[("Acceptance checks", ["check", "value", "limit", "verdict", "detail"],
                 [[c.name, c.value, c.limit, c.verdict, c.detail] for c in result.checks])],
    )
    if result.mode == "simulation":
        method = (
            f"Monte Carlo simulation on the phantom's ground truth: {p['trials']} independent registrations (seed {p['seed']}), "
            f"each with a random reference-marker and camera pose. Every fiducial touch has an isotropic Gaussian localisation "
            f"error of RMS {p['fle_mm']:g} mm; the tracker adds Gaussian noise of {p['tracker_noise_mm']:g} mm per axis to every "
            f"sample of pointer and reference, averaged over {p['samples_per_touch']} samples per touch (effective FLE "
            f"{result.fle_mm:.3f} mm; observed {result.fle_observed_mm:.3f} mm). Paired-point registration (Arun 1987 / Umeyama 1991) "
            "of the digitised fiducials to their CT positions; TRE is the true registration error at each target. Predicted TRE: "
            "Fitzpatrick, West & Maurer 1998, eq. 46; expected FRE: eq. 10."
        )
        fre_rows = [["RMS FRE (mm)", float(np.sqrt(np.mean(fre**2)))], ["predicted RMS FRE, sqrt(1-2/N) FLE (mm)", result.predicted_fre_mm],
                    ["mean FRE (mm)", float(fre.mean())], ["p95 FRE (mm)", float(np.percentile(fre, 95))], ["max FRE (mm)", float(fre.max())]]
    else:
        method = (
            f"Recorded navigation session {result.source}. FRE from the session's registration ({p['registration_method']}, "
            f"{p['fiducials']} fiducials). TRE from the pointer dwells after registration (the live workflow's dwell detector), "
            f"each paired with the nearest target ({p['targets_from']}); a touched TRE also holds the target's own localisation "
            f"error. Predicted TRE: Fitzpatrick 1998 eq. 46 with FLE {result.fle_mm:.3f} mm ({p['fle_from']}); a single "
            "registration gives only a rough FLE estimate."
        )
        fre_rows = [["FRE (mm)", float(fre[0])], ["FLE estimate (mm)", result.fle_mm]] + [
            [f"residual {n} (mm)", float(r)] for n, r in zip(result.fiducial_names, result.fiducial_residuals_mm[0])]
    targets = Section(
        "Target registration error",
        text="Measured against predicted RMS TRE (Fitzpatrick, West & Maurer 1998, eq. 46) and predicted 95th percentile "
             "(Gaussian TRE vector of the first-order model, Fitzpatrick & West 2001) at every target (mm). corr(FRE, TRE): correlation over the trials; FRE and TRE are "
             "uncorrelated under Fitzpatrick's model (Fitzpatrick 2009), so a low FRE is no evidence of a low TRE in one registration.",
        tables=[("Per target (mm)", ["target", "predicted RMS", "measured RMS", "measured / predicted", "mean", "p50", "predicted p95",
                                     "p95", "max", "n", "corr(FRE, TRE)"],
                 [list(r.values()) for r in result.target_table()])],
        figures=[(plots[k], c) for k, c in (("validation_tre.png", "TRE per target"),
                                            ("validation_tre_vs_predicted.png", "measured vs predicted RMS TRE"),
                                            ("validation_vectors.png", "error vectors on the phantom"),
                                            ("validation_tre_map.png", "predicted TRE at every bone-surface vertex: where the "
                                                                       "registration can be trusted")) if k in plots],
    )
    fre_sec = Section("Fiducial registration error", tables=[("FRE", ["figure", "value"], fre_rows)],
                      figures=[(plots["validation_fre.png"], "FRE")])
    piv = result.pivot
    if piv is None:
        pivot_sec = Section("Pointer calibration", text="No pivot calibration data in this session (no pivot.jsonl, no calibration "
                                                        "RMS in the tool file).")
    else:
        pivot_sec = Section("Pointer calibration (pivot)", text=piv.source,
                            tables=[("Pivot calibration", ["figure", "value"],
                                     [["RMS residual (mm)", piv.rms_mm],
                                      ["tip error vs truth (mm)" if result.mode == "simulation"
                                       else "tip difference vs the session's tool file (mm)", piv.tip_error_mm],
                                      ["poses", piv.n_poses]])],
                            figures=[(plots[k], "pivot residuals") for k in ("validation_pivot.png",) if k in plots])
    files = Section("Raw numbers", text="result.json (everything), trials.csv (per trial), targets.csv, fiducials.csv; "
                                        "coordinates in the CT's LPS frame, millimetres.")
    meta = {"case": str(result.case_dir), "mode": result.mode, "verdict": verdict, "software": _software_version()}
    return write_report(out_dir / "report.html", "OrthoNav accuracy protocol", [checks, Section("Method", text=method), targets, fre_sec,
                                                                                  pivot_sec, files], meta=meta)


__all__ = ["PLOT_NAMES", "new_validation_dir", "run_name", "write_validation_report", "write_plots", "write_raw", "result_json", "plot_tre", "plot_tre_vs_predicted",
           "plot_fre", "plot_vectors", "plot_pivot", "plot_tre_map", "tre_map_points"]
