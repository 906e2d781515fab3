"""What the demo measured (:class:`DemoSummary`), shared by the demo run and its report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


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


__all__ = ["DemoSummary"]
