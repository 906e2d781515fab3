"""What the demo measured (:class:`DemoSummary`), shared by the demo run and its report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class KneeDemo:
    """The demo's two-array part (:func:`orthonav.phantoms.demo_knee.run_knee_demo`): one
    reference array per bone, scored against the scripted truth. Distances mm, angles deg.

    Attributes
    ----------
    injected
        ``seed``, ``fle_mm``, ``tracker_noise_mm``, ``rotation_noise_deg``, ``rate_hz`` of the scenario.
    duration_s, references
        Script length (s); bone -> reference array (tool name).
    fre_mm, tre_mm, predicted_tre_mm
        Per bone: FRE of its registration; true and predicted RMS TRE at its targets.
    hip_centre_error_mm, hip_centre_fit
        Kinematic hip centre (hip circle, mapped to CT by the femoral registration) vs the true
        hip centre; the fit's ``rms_mm``, ``range_deg``, ``n_used``, ``ok``.
    ct_hip_centre_error_mm, hip_centre_kinematic_vs_ct_mm
        The CT hip centre (the plan's femoral head centre) vs the truth; kinematic vs CT.
    error_vs_truth, error_tracking
        :func:`~orthonav.phantoms.demo_knee.knee_errors` over the holds up to 90 deg of flexion
        (:data:`~orthonav.phantoms.demo_knee.GAP_MAX_FLEXION_DEG`) against the truth (plan
        definitions included) and against navigation's definitions at the true pose (tracking
        and registration only).
    error_vs_truth_all
        Against the truth over every hold (with the 120 deg one).
    guidance_error
        Cut -> saw guidance errors on that cut while the other bone moves.
    rom_before, rom_after
        Range-of-motion tables (:func:`~orthonav.phantoms.demo_knee.rom_tables`).
    figures
        ``knee_alignment.png``, ``knee_gaps.png``.
    hip_centre_ct_mm
        (3,) the kinematic hip centre in CT LPS mm, None without.
    series, registration
        The per-state :class:`~orthonav.phantoms.demo_knee.KneeSeries` and the run's per-bone
        registration record (schema 3) (neither written to JSON).
    """

    injected: dict[str, float] = field(default_factory=dict)
    duration_s: float = math.nan
    references: dict[str, str] = field(default_factory=dict)
    fre_mm: dict[str, float] = field(default_factory=dict)
    tre_mm: dict[str, dict[str, float]] = field(default_factory=dict)
    predicted_tre_mm: dict[str, dict[str, float]] = field(default_factory=dict)
    hip_centre_error_mm: float = math.nan
    hip_centre_fit: dict[str, float] = field(default_factory=dict)
    ct_hip_centre_error_mm: float = math.nan
    hip_centre_kinematic_vs_ct_mm: float = math.nan
    error_vs_truth: dict[str, float] = field(default_factory=dict)
    error_tracking: dict[str, float] = field(default_factory=dict)
    error_vs_truth_all: dict[str, float] = field(default_factory=dict)
    guidance_error: dict[str, dict[str, float]] = field(default_factory=dict)
    rom_before: list[dict[str, Any]] = field(default_factory=list)
    rom_after: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    hip_centre_ct_mm: tuple[float, float, float] | None = None
    series: Any = None
    registration: Any = None


@dataclass
class DemoSummary:
    """Everything the demo measured. Distances mm, angles deg, times s.

    Attributes
    ----------
    case_dir
        The demo's case folder (``OUT/case``).
    dice, hd95_mm
        Per bone: Dice and 95th-percentile Hausdorff distance (mm) of the segmentation vs truth.
    angles_deg, true_angles_deg
        The automatic plan's alignment angles and the phantom's construction truth (deg).
    fre_mm
        FRE of the navigation registration (mm).
    tre_mm, predicted_tre_mm
        Per target: true TRE and predicted RMS TRE (Fitzpatrick 1998) (mm).
    guidance_error
        Saw guidance vs the scripted truth (mm / deg, named by figure).
    loop_rate_hz, latency_p50_ms, latency_p99_ms
        Navigation loop rate and receive -> state latency percentiles.
    timings_s
        Seconds per demo step.
    screenshots
        Planning and navigation pictures copied into ``report/``.
    report
        ``report/index.html`` once written.
    session_dir
        The recorded navigation session.
    injected
        What the simulated OR injects (the demo is a simulation): ``seed``, ``fle_mm`` (RMS 3D
        fixed offset per fiducial touch), ``tracker_noise_mm`` (per axis, per sample),
        ``rotation_noise_deg`` (per sample) and the stream's ``rate_hz``.
    knee
        The two-array part (:class:`KneeDemo`), None when not run.
    """

    case_dir: Path
    dice: dict[str, float] = field(default_factory=dict)
    hd95_mm: dict[str, float] = field(default_factory=dict)
    angles_deg: dict[str, float] = field(default_factory=dict)
    true_angles_deg: dict[str, float] = field(default_factory=dict)
    fre_mm: float = math.nan
    tre_mm: dict[str, float] = field(default_factory=dict)
    predicted_tre_mm: dict[str, float] = field(default_factory=dict)
    guidance_error: dict[str, float] = field(default_factory=dict)
    loop_rate_hz: float = math.nan
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    timings_s: dict[str, float] = field(default_factory=dict)
    screenshots: list[Path] = field(default_factory=list)
    report: Path | None = None
    session_dir: Path | None = None
    injected: dict[str, float] = field(default_factory=dict)
    knee: KneeDemo | None = None


__all__ = ["DemoSummary", "KneeDemo"]
