"""The demo end to end on the small knee phantom: the demo's own figures against physics.

One demo run (module fixture, small phantom, seed 3, about 50 s) is checked figure by figure.
Every tolerance below is derived from the errors the demo injects or from the phantom's
geometry; none is a round "< 1 mm".

What the demo injects (:mod:`orthonav.phantoms.scenario`, via ``run_demo``)
----------------------------------------------------------------------------
* FLE: a fixed offset per fiducial touch, isotropic Gaussian, RMS 0.25 mm (3D), i.e.
  ``s_inj^2 = 0.25^2 / 3`` per axis. The offsets are drawn from the seed, so the test rebuilds
  the same scenario (:func:`~orthonav.phantoms.scenario.knee_scenario`, same case, same seed)
  and knows them exactly, as well as the true ``ct_from_reference``.
* Tracker noise on every sample of every tool (``tracking.simulator.add_noise``): translation
  ``N(0, 0.1 mm)`` per axis and a rotation of ``N(0, 0.05 deg)`` about a uniformly random axis
  through the tool's origin, so the rotation vector has covariance ``theta^2 / 3 I``.
* Not injected, but present: the CT side of the FLE, i.e. the bead detector's error (plan
  fiducials vs the phantom's true beads; about 0.30 mm RMS on this 1.2 x 1.2 x 2.4 mm phantom,
  more than the injected 0.25 mm), measured here against the truth; and the capture's bias
  along the pointer's approach (below).

Figures and their bands
-----------------------
Segmentation (Dice). If a bone's boundary were off by ``delta`` all around on one side, a shell
of volume ``S * delta`` (S, V: area and volume of the true mesh) would be lost and
``Dice = 2 (V - S delta) / (2 V - S delta)``. With ``delta`` = half the in-plane voxel (the
boundary may sit anywhere in the voxel its surface crosses) that is the floor per bone, never
below the 0.95 this test asserted before. HD95 stays within one voxel diagonal.

Plan angles (segmented meshes). A joint line through two landmarks ``L`` mm apart, each off by
at most the bone's HD95 ``h`` across the line, tilts by ``atan(2 h / L)``; the mechanical axis
(``L_axis``, hip to knee or knee to ankle) by ``atan(2 h / L_axis)``. The bound per angle is
their sum, never above the 3 deg this test asserted before; lengths come from the truth.

Registration (FRE). The FLE seen by the registration has three known parts per fiducial:
the injected offset, the bead detector's error (plan fiducials vs true beads) and the capture
error (captured point vs the touched point, reference frame). With
``s^2 = s_inj^2 + <|det|^2>/3 + <|cap|^2>/3`` per axis, ``N FRE^2 / s^2`` is chi-square with
``3N - 6`` degrees of freedom (Fitzpatrick, West & Maurer 1998, eq. 10: ``<FRE^2> = (1 - 2/N)
<FLE^2>``); the demo's FRE must lie between its 0.1 % and 99.9 % quantiles (N = 8).
The capture error itself must be tracker noise averaged over the capture window: per sample,
the tip in the reference frame moves with variance ``2 * 3 * 0.1^2 + 2/3 theta^2 (|tip|^2 +
|r_ref|^2)`` mm^2 (translations of both tools; rotations of the pointer about its origin,
lever ``tip`` = 150 mm, and of the reference about its origin, lever ``r_ref`` = the fiducial
in reference coordinates), averaged over ``n = hold_s * states/s`` samples. Across the approach
direction ``sum_i |cap_i,perp|^2 / (var_i / 3)`` is chi-square(2N), tested at its 99.9 %
quantile. Along the approach the capture is also biased outwards: the scripted pointer arrives
at about 190 mm/s and a still window (RMS spread <= ``still_mm`` = 0.5 mm) admits its last
samples; ``k`` samples of a window of ``n`` can shift the mean by at most
``still_mm * sqrt(k / (n - k))``, with ``k`` the number of approach samples closer than
``still_mm * sqrt(n)`` (from the script). Measured: up to 0.10 mm outwards (seed 3).
Then, exactly (to 1e-9): a paired-point fit written here (SVD, Arun / Umeyama with the
reflection fix) of the captured points to the plan's CT fiducials gives the demo's FRE, and
that fit against the true ``ct_from_reference`` gives the demo's TRE at every target: the
demo's figures are what the injected errors make them.

TRE vs prediction. The TRE vector at target ``r`` is Gaussian with covariance
``s^2 / N I + s^2 [r]x A^-1 [r]x^T`` (Fitzpatrick & West 2001, ``A = sum(|x_i|^2 I - x_i x_i^T)``
about the fiducial centroid); ``|TRE|^2`` is a weighted sum of chi-square(1) whose 0.1 % and
99.9 % quantiles are taken from 400,000 seeded draws. Each target's TRE lies in that band both
for the physical ``s`` above and for the demo's own prediction (its FLE estimate
``FRE / sqrt(1 - 2/N)``); the demo's predicted RMS TRE equals the trace of that covariance
(eq. 46 of Fitzpatrick 1998) to 1e-9.

Saw guidance. Over the ``n`` compared states, each error is ``b_i + e_i``: ``b_i`` the bias
of the (fixed) registration error at the scripted saw pose, computed exactly here from the
true and estimated ``ct_from_reference``, and ``e_i`` fresh tracker noise (the recorded states
are distinct samples with independent noise). A rotation of ``N(0, theta)`` about a uniformly
random axis turns about any fixed axis by ``N(0, theta) * U(-1, 1)`` (variance ``theta^2 / 3``,
heavier tails than a Gaussian). Flexion and varus are blade rotations about the two in-plane
axes: the saw's and the reference's rotation noise, ``e = theta (g1 u1 + g2 u2)``. Distance is
measured at the blade's edge centre along the planned normal ``n``: both tools' translations
(``N(0, 0.1 mm)`` each) plus both rotations times their lever arms (``|tip x n|`` about the
saw's origin, ``|r_ref x n|`` about the reference's). The bands are the 0.1 % and 99.9 %
quantiles, over 2,000 seeded draws of this model at the demo's ``n`` and biases, of the RMS and
of the largest single error; the demo's RMS must lie within the first, its largest error below
the second.

One array per bone (the demo's two-array part, :mod:`orthonav.phantoms.demo_knee`): the same
FLE and tracker noise, frame by frame at 50 Hz through navigation's workflow, on the same case.

* Per bone, the FRE lies in the chi-square(3N - 6) band (N = the bone's fiducials) of the FLE
  its registration saw: injected offset, bead detection (plan vs true bead) and capture error
  (captured minus touched point, measured from the recorded registration and the scenario
  rebuilt from the seed); and an independent fit of the recorded points reproduces the demo's
  per-bone FRE and its TRE at that bone's targets against the TRUE ``ct_from_<bone>ref`` (1e-9).
* Kinematic hip centre. Its error is the registration's error at the hip centre (exact: the
  recorded femoral registration against the true one) plus the sphere fit's error. The fit is
  the linear least squares ``[R_i -I][c_f; c_p] = -t_i`` over the hip-circle poses, whose
  solution has covariance ``sigma^2 (A^T A)^-1`` with ``sigma^2 = rms^2 / 3`` per axis (the
  fit's own residual RMS, 3D); the fit part must lie within 4 standard deviations
  (``4 sqrt(trace)``, beyond the 99.9 % quantile of any 3D Gaussian), A built from the TRUE
  hip-circle poses. And within the issue's 2 mm.
* Live alignment and gaps: the errors are split into the tracking part (navigation's
  definitions at the TRUE knee pose) and the definitions' part (the plan's landmarks and cut
  faces from the segmented bones against the true ones at the true pose, computed here). The
  tracking part of each hold's mean must meet the issue's 0.5 deg / 0.5 mm; the error against
  the truth is at most the tracking part plus the definitions' part (triangle inequality).
* Range-of-motion tables: a row per 0/30/60/90 deg with frames, their measured flexion within
  the 5 deg bin, navigation against the truth within the per-frame error above; the gaps to
  the planned implant smaller than the resection gaps (the femoral component lies outside the
  cut faces it covers).

Determinism: the phantom (its noise), the injected FLE offsets and the per-sample noise draws
are fixed by the seed, and segmentation and planning use no randomness, so Dice, HD95 and the
plan angles are the same on every run of one version of the code. FRE, TRE and guidance
errors vary slightly from run to run, because which noisy samples fall inside a capture window
or reach a state depends on socket timing; hence the bands above.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from scipy import stats

pytestmark = pytest.mark.slow

SEED = 3
#: Both-sided band of every statistical check (each side 0.1 %).
LOW_Q, HIGH_Q = 0.001, 0.999


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from orthonav.phantoms.demo import run_demo

    steps: list[str] = []
    summary = run_demo(tmp_path_factory.mktemp("demo"), small=True, seed=SEED, progress=lambda step, f: steps.append(step))
    return summary, steps


# --- what was injected, rebuilt from the seed (independent of the navigation code) -------------


def _injected(summary):
    """The scenario the demo ran, its truth and the registration it recorded."""
    from orthonav.phantoms.scenario import knee_scenario

    inj = summary.injected
    sc = knee_scenario(summary.case_dir, seed=inj["seed"], fle_mm=inj["fle_mm"])
    reg = json.loads((summary.session_dir / "registration.json").read_text(encoding="utf-8"))
    truth = json.loads((summary.case_dir / "truth" / "truth.json").read_text(encoding="utf-8"))
    return sc, reg, truth


def _apply(t, p):
    p = np.asarray(p, dtype=np.float64)
    return p @ np.asarray(t)[:3, :3].T + np.asarray(t)[:3, 3]


def _inverse(t):
    t = np.asarray(t, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = t[:3, :3].T
    out[:3, 3] = -t[:3, :3].T @ t[:3, 3]
    return out


def _fit(moving, fixed):
    """Least-squares rigid ``fixed ~ R moving + t`` (Arun 1987 / Umeyama 1991, det = +1), as 4x4."""
    mc, fc = moving.mean(axis=0), fixed.mean(axis=0)
    u, _s, vt = np.linalg.svd((moving - mc).T @ (fixed - fc))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))])
    r = vt.T @ d @ u.T
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = r, fc - r @ mc
    return out


def _tre_covariance(fiducials, targets, s2):
    """(M, 3, 3) first-order TRE covariance for per-axis FLE variance ``s2`` (Fitzpatrick & West 2001)."""
    x = fiducials - fiducials.mean(axis=0)
    a = np.sum(x * x) * np.eye(3) - x.T @ x
    a_inv = np.linalg.inv(a)
    out = []
    for r in targets - fiducials.mean(axis=0):
        k = np.array([[0.0, -r[2], r[1]], [r[2], 0.0, -r[0]], [-r[1], r[0], 0.0]])
        out.append(s2 / len(fiducials) * np.eye(3) + s2 * k @ a_inv @ k.T)
    return np.array(out)


def _norm_quantiles(cov, qs, samples=400_000):
    """Quantiles of |x| for x ~ N(0, cov) (per covariance): seeded draws of the weighted chi-square."""
    lam = np.clip(np.linalg.eigvalsh(cov), 0.0, None)
    z2 = np.random.default_rng(12345).standard_normal((samples, 3)) ** 2
    return np.quantile(np.sqrt(z2 @ lam.T), qs, axis=0)  # (len(qs), M)


def _guidance_numbers(ct_from_saw, tip, blade_normal, point, n, anterior, medial):
    """Flexion, varus (deg) and distance (mm) of a blade (the definitions of navigation.guidance)."""
    edge = _apply(ct_from_saw, tip)
    m = ct_from_saw[:3, :3] @ blade_normal
    if m @ n < 0:
        m = -m
    return (math.degrees(math.atan2(-m @ anterior, m @ n)), math.degrees(math.atan2(m @ medial, m @ n)), float((edge - point) @ n))


# --- the tests -----------------------------------------------------------------------------


def test_demo_runs_every_step_and_records_what_it_injected(demo):
    summary, steps = demo
    assert [s for s in ("phantom", "segmentation", "plan", "navigation", "report") if s in steps] == [
        "phantom", "segmentation", "plan", "navigation", "report"]
    assert summary.injected == {"seed": SEED, "fle_mm": 0.25, "tracker_noise_mm": 0.1, "rotation_noise_deg": 0.05, "rate_hz": 200.0}
    assert summary.session_dir is not None and (summary.session_dir / "registration.json").is_file()
    # The loop keeps up with the stream within what one shared core allows; latency is reported.
    assert summary.loop_rate_hz >= 30.0
    assert 0.0 < summary.latency_p50_ms <= summary.latency_p99_ms


def test_demo_dice_against_a_half_voxel_shell(demo):
    import pyvista as pv

    from orthonav.core.volume import read_volume

    summary, _ = demo
    spacing = np.asarray(read_volume(summary.case_dir / "ct.nii.gz").spacing_mm, dtype=float)
    delta = 0.5 * min(spacing)  # half the in-plane voxel (mm)
    assert set(summary.dice) == {"femur", "tibia", "fibula", "patella"}
    for bone, dice in summary.dice.items():
        mesh = pv.read(summary.case_dir / "truth" / "meshes" / f"{bone}.stl")
        s, v = mesh.area, mesh.volume
        floor = max(0.95, 2.0 * (v - s * delta) / (2.0 * v - s * delta))
        assert dice >= floor, (bone, dice, floor)
        assert summary.hd95_mm[bone] <= float(np.linalg.norm(spacing)) + 1e-6, (bone, summary.hd95_mm[bone], spacing)


def test_demo_plan_angles_within_the_surface_error_over_their_lever_arms(demo):
    summary, _ = demo
    _sc, _reg, truth = _injected(summary)
    lm = {k: np.asarray(v, dtype=float) for k, v in truth["landmarks_lps_mm"].items()}

    def length(a, b):
        return float(np.linalg.norm(lm[a] - lm[b]))

    def tilt(h, lever):
        return math.degrees(math.atan(2.0 * h / lever))

    hf, ht = summary.hd95_mm["femur"], summary.hd95_mm["tibia"]
    femur_axis, tibia_axis = length("femoral_head_centre", "femoral_knee_centre"), length("tibial_knee_centre", "ankle_centre")
    bounds = {
        "hka": tilt(hf, femur_axis) + tilt(ht, tibia_axis),
        "ldfa": tilt(hf, length("distal_medial_condyle", "distal_lateral_condyle")) + tilt(hf, femur_axis),
        "mpta": tilt(ht, length("medial_plateau_centre", "lateral_plateau_centre")) + tilt(ht, tibia_axis),
        "femoral_rotation": tilt(hf, length("posterior_medial_condyle", "posterior_lateral_condyle")),
    }
    for key, bound in bounds.items():
        err = summary.angles_deg[key] - summary.true_angles_deg[key]
        assert abs(err) <= min(3.0, bound), (key, err, bound)


def _fle_parts(summary):
    """Per fiducial (plan order): the three parts of the FLE the registration saw, and the model
    of the capture error (see the module docstring)."""
    from orthonav.navigation import WorkflowConfig
    from orthonav.tracking.tools import default_toolset

    sc, reg, truth = _injected(summary)
    inj = summary.injected
    names = list(sc.geometry.fiducial_names)
    true_ct = np.array([truth["fiducials_lps_mm"][k] for k in names], dtype=float)
    plan_ct = np.array([reg["points_ct_mm"][k] for k in names], dtype=float)
    captured_ref = np.array([reg["points_reference_mm"][k] for k in names], dtype=float)
    touched_ct = true_ct + sc.fle_offsets_mm
    touched_ref = _apply(_inverse(sc.ct_from_reference), touched_ct)
    cap_ct = (captured_ref - touched_ref) @ np.asarray(sc.ct_from_reference)[:3, :3].T
    # Noise: per-sample variance of the tip in the reference frame, averaged over the window.
    theta = math.radians(inj["rotation_noise_deg"])
    tip = np.asarray(default_toolset().by_name()["Pointer"].tip_in_tool(), dtype=float)
    var_sample = 2 * 3 * inj["tracker_noise_mm"] ** 2 + 2.0 / 3.0 * theta**2 * (tip @ tip + np.sum(touched_ref**2, axis=1))
    config = WorkflowConfig()
    n_window = config.hold_s * min(inj["rate_hz"], summary.loop_rate_hz)
    # Approach: the last stream samples before each dwell, and the direction they come from.
    ct_from_tracker = _inverse(sc.tracker_from_ct)
    approach, bias_max = [], []
    for i, name in enumerate(names):
        t0 = next(ph.t0_s for ph in sc.phases if ph.name == "fiducial" and ph.label == name)
        before = np.array([_apply(ct_from_tracker @ sc.script(t0 - j / inj["rate_hz"])["Pointer"], tip) for j in range(1, 40)])
        d = np.linalg.norm(before - touched_ct[i], axis=1)
        approach.append((before[0] - touched_ct[i]) / d[0])
        k = int(np.sum(d <= config.still_mm * math.sqrt(n_window)))
        bias_max.append(config.still_mm * math.sqrt(k / (n_window - k)))
    return {
        "sc": sc, "reg": reg, "truth": truth, "names": names, "true_ct": true_ct, "plan_ct": plan_ct,
        "captured_ref": captured_ref, "touched_ref": touched_ref, "det": plan_ct - true_ct, "cap_ct": cap_ct,
        "var_cap": var_sample / n_window, "approach": np.array(approach), "bias_max": np.array(bias_max),
    }


def test_demo_fre_and_tre_are_what_the_injected_errors_make_them(demo):
    summary, _ = demo
    f = _fle_parts(summary)
    inj = summary.injected
    n = len(f["names"])
    assert n == 8 and len(f["truth"]["targets_lps_mm"]) == 6
    # README: the knee script lasts 22.7 s (also on the small phantom): 1 s lead-in, 14 touches
    # of 0.5 s move + 0.6 s dwell, 0.5 s park, 0.5 s hidden saw, 2 s sweep, 6 holds of 0.5 s, 0.3 s.
    assert f["sc"].duration_s == pytest.approx(22.7, abs=1e-9)

    # The capture error is tracker noise averaged over the capture window (across the approach
    # direction: chi-square with 2N degrees of freedom), plus, along the approach, at most the
    # bias of the approach's last samples that a still window (RMS spread <= still_mm) admits.
    cap, u = f["cap_ct"], f["approach"]
    along = np.sum(cap * u, axis=1)
    across2 = np.sum(cap**2, axis=1) - along**2
    stat = float(np.sum(across2 / (f["var_cap"] / 3.0)))
    assert stat <= stats.chi2.ppf(HIGH_Q, 2 * n), (stat, np.sqrt(across2), np.sqrt(f["var_cap"]))
    sigma_along = np.sqrt(f["var_cap"] / 3.0)
    assert np.all(along >= -4.0 * sigma_along), (along, sigma_along)
    assert np.all(along <= f["bias_max"] + 4.0 * sigma_along), (along, f["bias_max"], sigma_along)

    # FRE within the chi-square(3N - 6) band of the FLE the registration saw.
    s2 = inj["fle_mm"] ** 2 / 3.0 + np.mean(np.sum(f["det"] ** 2, axis=1)) / 3.0 + np.mean(np.sum(cap**2, axis=1)) / 3.0
    lo, hi = (math.sqrt(s2 * stats.chi2.ppf(q, 3 * n - 6) / n) for q in (LOW_Q, HIGH_Q))
    assert lo <= summary.fre_mm <= hi, (summary.fre_mm, lo, hi, math.sqrt(3 * s2))

    # Exactly: an independent fit of the captured points reproduces the demo's FRE and TRE.
    captured_ref, plan_ct, touched_ref = f["captured_ref"], f["plan_ct"], f["touched_ref"]
    ct_from_ref = _fit(captured_ref, plan_ct)
    fre = math.sqrt(np.mean(np.sum((_apply(ct_from_ref, captured_ref) - plan_ct) ** 2, axis=1)))
    assert summary.fre_mm == pytest.approx(fre, rel=1e-9, abs=1e-12)
    err = ct_from_ref @ _inverse(f["sc"].ct_from_reference)
    targets = {k: np.asarray(v, dtype=float) for k, v in f["truth"]["targets_lps_mm"].items()}
    assert set(summary.tre_mm) == set(targets)
    for k, p in targets.items():
        assert summary.tre_mm[k] == pytest.approx(float(np.linalg.norm(_apply(err, p) - p)), rel=1e-9, abs=1e-12), k
    # The capture errors move FRE by at most their RMS (triangle inequality).
    fre_no_noise = math.sqrt(np.mean(np.sum((_apply(_fit(touched_ref, plan_ct), touched_ref) - plan_ct) ** 2, axis=1)))
    assert abs(summary.fre_mm - fre_no_noise) <= math.sqrt(np.mean(np.sum(cap**2, axis=1))) + 1e-12


def test_demo_tre_within_the_band_of_its_prediction(demo):
    summary, _ = demo
    f = _fle_parts(summary)
    inj = summary.injected
    plan_ct = f["plan_ct"]
    n = len(plan_ct)
    keys = sorted(summary.tre_mm)
    targets = np.array([f["truth"]["targets_lps_mm"][k] for k in keys], dtype=float)
    tre = np.array([summary.tre_mm[k] for k in keys])

    # The demo's prediction: eq. 46 at its FLE estimate FRE / sqrt(1 - 2/N), to 1e-9.
    fle_estimate = summary.fre_mm / math.sqrt(1.0 - 2.0 / n)
    cov_pred = _tre_covariance(plan_ct, targets, fle_estimate**2 / 3.0)
    predicted = np.sqrt(np.trace(cov_pred, axis1=1, axis2=2))
    assert np.array([summary.predicted_tre_mm[k] for k in keys]) == pytest.approx(predicted, rel=1e-9)

    # Each TRE within the 0.1-99.9 % band of |TRE| for the demo's prediction and for the FLE
    # the registration saw (injected + bead detection + capture).
    s2 = inj["fle_mm"] ** 2 / 3.0 + (np.mean(np.sum(f["det"] ** 2, axis=1)) + np.mean(np.sum(f["cap_ct"] ** 2, axis=1))) / 3.0
    for label, cov in (("prediction", cov_pred), ("FLE seen", _tre_covariance(plan_ct, targets, s2))):
        lo, hi = _norm_quantiles(cov, [LOW_Q, HIGH_Q])
        assert np.all(tre >= lo) and np.all(tre <= hi), (label, dict(zip(keys, tre)), lo, hi)


def _guidance_bands(summary):
    """Per saw figure: (demo RMS, RMS band low, high, bias RMS, noise sigma per state, demo max,
    99.9 % quantile of the largest error), from seeded draws of the noise model."""
    from orthonav.tracking.tools import default_toolset

    sc, reg, _truth = _injected(summary)
    inj = summary.injected
    g = summary.guidance_error
    count = int(g["n"])
    saw = default_toolset().by_name()["Saw"]
    tip = np.asarray(saw.tip_in_tool(), dtype=float)
    blade_normal = np.asarray(saw.normal_in_tool(), dtype=float)
    geo = sc.geometry
    point, nrm, ant, med = (np.asarray(v, dtype=float) for v in (geo.cut_point_mm, geo.cut_normal, sc.anterior, geo.medial))
    # Bias: the registration's (fixed) error at every scripted saw pose, on a 200 Hz script grid.
    err = np.asarray(reg["ct_from_reference"], dtype=float) @ _inverse(sc.ct_from_reference)
    ct_from_tracker = _inverse(sc.tracker_from_ct)
    bias, edges = [], []
    for t in np.arange(0.0, sc.duration_s, 1.0 / inj["rate_hz"]):
        ph = sc.phase_at(t)
        if ph.name not in ("saw_sweep", "saw_hold") or not (ph.t0_s + 0.03 <= t < ph.t1_s - 0.03):
            continue
        ct_from_saw = ct_from_tracker @ sc.script(t)["Saw"]
        true = _guidance_numbers(ct_from_saw, tip, blade_normal, point, nrm, ant, med)
        seen = _guidance_numbers(err @ ct_from_saw, tip, blade_normal, point, nrm, ant, med)
        bias.append(np.subtract(seen, true))
        edges.append(_apply(ct_from_saw, tip))
    bias = np.array(bias)
    assert len(bias) > count / 2
    # Noise per state (see the module docstring): a rotation of N(0, theta) about a uniformly
    # random axis has a component N(0, theta) * U(-1, 1) about any fixed axis (heavier tails than
    # a Gaussian of the same variance), so the bands are drawn from the model itself.
    theta = math.radians(inj["rotation_noise_deg"])
    sigma_t = inj["tracker_noise_mm"]
    pick = np.linspace(0, len(bias) - 1, count).round().astype(int)  # the grid thinned to the states' count
    b = bias[pick]
    r_ref = np.array(edges)[pick] - np.asarray(sc.ct_from_reference)[:3, 3]  # reference origin -> edge (CT frame)
    lever_ref = np.linalg.norm(np.cross(r_ref, nrm), axis=1)  # (count,) mm
    lever_saw = float(np.linalg.norm(np.cross(tip, blade_normal)))  # saw origin -> edge x blade normal (saw frame)
    rng = np.random.default_rng(2024)
    trials = 2000

    def rot(lever):  # (trials, count): rotation noise component times its lever arm
        return theta * lever * rng.standard_normal((trials, count)) * rng.uniform(-1.0, 1.0, (trials, count))

    deg = math.degrees(1.0)
    noise = {
        "flexion_deg": deg * (rot(1.0) + rot(1.0)),
        "varus_deg": deg * (rot(1.0) + rot(1.0)),
        "distance_mm": sigma_t * rng.standard_normal((trials, count)) + sigma_t * rng.standard_normal((trials, count))
        + rot(lever_saw) + rot(lever_ref),
    }
    out = {}
    for i, key in enumerate(("flexion_deg", "varus_deg", "distance_mm")):
        err = b[:, i] + noise[key]
        rms = np.sqrt(np.mean(err**2, axis=1))
        lo, hi = np.quantile(rms, [LOW_Q, HIGH_Q])
        worst_limit = float(np.quantile(np.abs(err).max(axis=1), HIGH_Q))
        out[key] = (g[f"{key}_rms"], float(lo), float(hi), float(np.sqrt(np.mean(b[:, i] ** 2))), float(noise[key].std()),
                    g[f"{key}_max"], worst_limit)
    return out


def test_demo_guidance_error_is_registration_bias_plus_tracker_noise(demo):
    summary, _ = demo
    assert int(summary.guidance_error["n"]) >= 200, summary.guidance_error  # the sweep and the holds were compared
    for key, (rms, lo, hi, bias_rms, sigma, worst, worst_limit) in _guidance_bands(summary).items():
        assert lo <= rms <= hi, (key, rms, lo, hi, bias_rms, sigma)
        assert worst <= worst_limit, (key, worst, worst_limit)


def test_demo_report_has_non_blank_pictures(demo):
    from PIL import Image  # pillow comes with matplotlib

    summary, _ = demo
    html = summary.report.read_text(encoding="utf-8")
    pictures = re.findall(r"<img src='([^']+)'", html)
    assert len(pictures) >= 2
    for rel in pictures:
        png = summary.report.parent / rel
        pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert pixels.std() > 10.0, f"{png} looks blank"
        assert len(np.unique(pixels)) > 20, f"{png} has almost no detail"
    assert (summary.report.parent / "summary.json").is_file()
    assert summary.session_dir is not None and summary.session_dir.is_dir()


# --- one array per bone (the demo's two-array part) -------------------------------------------


def _knee_scenario(summary):
    """The two-array scenario the demo ran, rebuilt from the seed (independent of navigation)."""
    from orthonav.phantoms.scenario_two_array import knee_two_array_scenario

    inj = summary.knee.injected
    return knee_two_array_scenario(summary.case_dir, seed=inj["seed"], fle_mm=inj["fle_mm"])


def test_demo_two_array_per_bone_registration_is_what_the_injected_errors_make_it(demo):
    summary, steps = demo
    knee = summary.knee
    assert "two-array" in steps and knee is not None
    assert knee.injected == {"seed": SEED, "fle_mm": 0.25, "tracker_noise_mm": 0.1, "rotation_noise_deg": 0.05, "rate_hz": 50.0}
    sc = _knee_scenario(summary)
    rec = knee.registration
    assert rec is not None and set(rec.bones) == {"femur", "tibia"} == set(knee.fre_mm)
    for bone, brec in rec.bones.items():
        site = sc.geometry.site(bone)
        names = list(site.fiducial_names)
        assert brec.reference == knee.references[bone] and set(brec.points_ct_mm) == set(names)
        plan_ct = np.array([brec.points_ct_mm[k] for k in names])
        captured_ref = np.array([brec.points_reference_mm[k] for k in names])
        true_ct = np.asarray(site.fiducials_ct_mm, dtype=float)
        ct_from_ref = np.asarray(sc.ct_from_reference[bone])
        touched_ref = _apply(_inverse(ct_from_ref), true_ct + sc.fle_offsets_mm[bone])
        cap = (captured_ref - touched_ref) @ ct_from_ref[:3, :3].T
        n = len(names)
        s2 = (0.25**2 + np.mean(np.sum((plan_ct - true_ct) ** 2, axis=1)) + np.mean(np.sum(cap**2, axis=1))) / 3.0
        lo, hi = (math.sqrt(s2 * stats.chi2.ppf(q, 3 * n - 6) / n) for q in (LOW_Q, HIGH_Q))
        assert lo <= knee.fre_mm[bone] <= hi, (bone, knee.fre_mm[bone], lo, hi)
        fit = _fit(captured_ref, plan_ct)
        fre = math.sqrt(np.mean(np.sum((_apply(fit, captured_ref) - plan_ct) ** 2, axis=1)))
        assert knee.fre_mm[bone] == pytest.approx(fre, rel=1e-9)
        err = fit @ _inverse(ct_from_ref)
        assert set(knee.tre_mm[bone]) == set(site.targets_ct_mm) and len(site.targets_ct_mm) == 3
        for k, p in site.targets_ct_mm.items():
            p = np.asarray(p, dtype=float)
            assert knee.tre_mm[bone][k] == pytest.approx(float(np.linalg.norm(_apply(err, p) - p)), rel=1e-9, abs=1e-12), (bone, k)


def test_demo_kinematic_hip_centre_is_registration_error_plus_fit_noise(demo):
    summary, _ = demo
    knee = summary.knee
    sc = _knee_scenario(summary)
    fit = knee.hip_centre_fit
    assert fit["ok"] == 1.0 and fit["range_deg"] == pytest.approx(35.0, abs=1.0)  # the scripted 35 deg cone
    est = np.asarray(knee.registration.bones["femur"].ct_from_reference, dtype=float)
    true_ref = np.asarray(sc.ct_from_reference["femur"])
    c_true = np.asarray(sc.hip_centre_ct_mm, dtype=float)
    reg_part = float(np.linalg.norm(_apply(est @ _inverse(true_ref), c_true) - c_true))
    # The fit's covariance from the TRUE hip-circle poses of the femoral array (50 Hz).
    circle = sc.phase_spans("hip_circle")[0]
    rows = []
    for t in np.arange(circle.t0_s, circle.t1_s, 1.0 / knee.injected["rate_hz"]):
        r = sc.truth_at(float(t), gaps=False).tracker_from_reference[knee.references["femur"]][:3, :3]
        rows.append(np.hstack([r, -np.eye(3)]))
    a = np.vstack(rows)
    cov = fit["rms_mm"] ** 2 / 3.0 * np.linalg.inv(a.T @ a)[:3, :3]
    fit_bound = 4.0 * math.sqrt(float(np.trace(cov)))
    assert knee.hip_centre_error_mm <= reg_part + fit_bound, (knee.hip_centre_error_mm, reg_part, fit_bound)
    assert knee.hip_centre_error_mm < 2.0  # the acceptance
    c = np.asarray(knee.hip_centre_ct_mm, dtype=float)
    assert knee.hip_centre_error_mm == pytest.approx(float(np.linalg.norm(c - c_true)), rel=1e-9)


def _definition_offsets(summary):
    """Per hold (up to 95 deg): the definitions' part of the error at the TRUE pose, computed here:
    alignment from the plan's landmarks minus from the true ones (deg), and gaps of navigation's
    geometry of the segmented femur minus the brute-force truth (mm)."""
    from orthonav.core.case import read_case_meshes
    from orthonav.navigation.alignment import knee_alignment
    from orthonav.navigation.gaps import gap_geometry, knee_gaps
    from orthonav.planning.schema import load_plan

    sc = _knee_scenario(summary)
    plan = load_plan(summary.case_dir / "plan.json")
    plan_lm = {k: np.asarray(v.position_lps_mm, dtype=float) for k, v in plan.landmarks.items()}
    geo = gap_geometry(plan, read_case_meshes(summary.case_dir, bones=["femur"]))
    out = {"flexion_deg": 0.0, "varus_deg": 0.0, "medial_gap_mm": 0.0, "lateral_gap_mm": 0.0}
    for ph in sc.phase_spans("rom_hold") + sc.phase_spans("stress_hold"):
        tr = sc.truth_at(0.5 * (ph.t0_s + ph.t1_s))
        if tr.alignment.flexion_deg > 95.0:
            continue
        al = knee_alignment(tr.femur_ct_from_tibia_ct, plan_lm)
        g = knee_gaps(tr.femur_ct_from_tibia_ct, geo)
        for key, d in (("flexion_deg", al.flexion_deg - tr.alignment.flexion_deg), ("varus_deg", al.varus_valgus_deg - tr.alignment.varus_deg),
                       ("medial_gap_mm", g.medial_mm - tr.medial_gap_mm), ("lateral_gap_mm", g.lateral_mm - tr.lateral_gap_mm)):
            out[key] = max(out[key], abs(d))
    return out


def test_demo_live_alignment_and_gaps_are_tracking_error_plus_the_plans_definitions(demo):
    summary, _ = demo
    knee = summary.knee
    track, truth = knee.error_tracking, knee.error_vs_truth
    assert truth["n_holds"] == 8 and truth["n"] > 300  # 0, 30, 60, 90 deg; varus and valgus at 90 and 0 deg
    assert knee.error_vs_truth_all["n_holds"] == 9  # with the 120 deg hold
    # The acceptance on the tracking part: each hold's mean reading within 0.5 deg / 0.5 mm.
    for key, band in (("flexion_deg", 0.5), ("varus_deg", 0.5), ("medial_gap_mm", 0.5), ("lateral_gap_mm", 0.5)):
        assert track[f"{key}_hold_mean_max"] < band, (key, track)
    offsets = _definition_offsets(summary)
    for key, d in offsets.items():
        assert truth[f"{key}_hold_mean_max"] <= track[f"{key}_hold_mean_max"] + d + 1e-6, (key, truth, track, d)


def test_demo_range_of_motion_tables_and_figures(demo):
    from PIL import Image

    summary, _ = demo
    knee = summary.knee
    worst = knee.error_vs_truth_all
    assert [r["flexion_deg"] for r in knee.rom_before] == [0.0, 30.0, 60.0, 90.0] == [r["flexion_deg"] for r in knee.rom_after]
    for before, after in zip(knee.rom_before, knee.rom_after):
        assert before["n"] > 20 and abs(before["flexion_mean_deg"] - before["flexion_deg"]) <= 5.0, before
        assert abs(before["varus_valgus_deg"] - before["true_varus_valgus_deg"]) <= worst["varus_deg_max"], before
        for side in ("medial", "lateral"):
            assert abs(before[f"{side}_gap_mm"] - before[f"true_{side}_gap_mm"]) <= worst[f"{side}_gap_mm_max"], before
            # the femoral component lies outside the cut faces it covers: less space left than after the bone cuts alone
            assert 0.0 < after[f"{side}_gap_mm"] < before[f"{side}_gap_mm"], (before, after)
    html = summary.report.read_text(encoding="utf-8")
    data = json.loads((summary.report.parent / "summary.json").read_text())
    assert data["two_array"]["rom_before_cuts"][3]["flexion_deg"] == 90.0
    assert data["two_array"]["hip_centre_error_mm"] == pytest.approx(knee.hip_centre_error_mm)
    for png in knee.figures:
        assert png.parent == summary.report.parent and f"<img src='{png.name}'" in html
        pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert pixels.shape[1] >= 900 and pixels.std() > 10.0, png


def test_validate_a_two_array_session_per_bone(demo, tmp_path):
    """The accuracy protocol on a recorded two-array session: each bone's figures from its own
    registration; a touched target's error is the true error of ITS bone's registration there
    (plus the touch's noise: the script touches the true targets, no FLE)."""
    import shutil
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_nav_replay import ScriptedSource

    from orthonav.navigation import navigate_case
    from orthonav.phantoms.scenario_two_array import knee_two_array_scenario
    from orthonav.phantoms.validation_session import validate_session

    summary, _ = demo
    case = tmp_path / "case"
    shutil.copytree(summary.case_dir, case, ignore=shutil.ignore_patterns("sessions", "report", "dicom"))
    sc = knee_two_array_scenario(case, seed=4, fle_mm=0.25, hip_circle_s=2.0, rom_deg=(0.0,), stress_at_deg=(),
                                 saw_errors=((0.0, 0.0, 0.0),), sweep_s=0.5)
    source = ScriptedSource(list(sc.frames(50.0, tracker_noise_mm=0.1, rotation_noise_deg=0.05, seed=4)))
    nav = navigate_case(case, source, duration_s=None, stop=source.done, render=False, toolset=sc.toolset)
    assert nav.registered, nav.events
    result = validate_session(nav.session_dir)
    per_bone = result.parameters["per_bone"]
    assert set(per_bone) == {"femur", "tibia"} and result.parameters["replay_reproduces_registration"] is True
    assert all(p["fiducials"] == 4 and p["targets"] == 3 and p["targets_touched"] == 3 for p in per_bone.values()), per_bone
    from orthonav.navigation.registration import load_registration

    rec = load_registration(nav.session_dir / "registration.json")
    residuals = [v for b in rec.bones.values() for v in b.residuals_mm.values()]
    assert result.fre_mm[0] == pytest.approx(math.sqrt(np.mean(np.square(residuals))), rel=1e-9)
    assert len(result.target_names) == 6 and np.all(np.isfinite(result.tre_mm))
    for j, name in enumerate(result.target_names):
        bone = next(b for b in ("femur", "tibia") if name in sc.geometry.site(b).targets_ct_mm)
        p = result.targets_ct_mm[j]
        true_err = _apply(np.asarray(rec.bones[bone].ct_from_reference) @ _inverse(sc.ct_from_reference[bone]), p) - p
        # the touch's own error: tracker noise averaged over the capture window (~0.03 mm per axis)
        # plus the approach bias a still window admits (<= 0.1 mm, see the module docstring)
        assert np.linalg.norm(result.tre_vectors_mm[0, j] - true_err) < 0.3, (name, result.tre_vectors_mm[0, j], true_err)
    # Predicted TRE from each bone's own fiducials and FLE (eq. 46), per bone.
    from orthonav.navigation.registration import predict_tre

    for bone, b in rec.bones.items():
        names = [n for n in result.target_names if n in sc.geometry.site(bone).targets_ct_mm]
        idx = [result.target_names.index(n) for n in names]
        fid = np.array(list(b.points_ct_mm.values()))
        expected = predict_tre(fid, result.targets_ct_mm[idx], per_bone[bone]["fle_mm"])
        assert result.predicted_tre_mm[idx] == pytest.approx(np.asarray(expected), rel=1e-9), bone
    # The report's TRE map: each bone's vertices from ITS OWN fiducials and FLE, never from the
    # fiducials of both bones together (which would predict a TRE far too small).
    from orthonav.navigation.tre_map import tre_map
    from orthonav.phantoms.validation_report import tre_map_points

    pts, tre = tre_map_points(result, limit=10**9)
    femur_fid = np.array(list(rec.bones["femur"].points_ct_mm.values()))
    from orthonav.core.case import Case, read_case_meshes

    meshes = read_case_meshes(Case(case).truth_dir) or read_case_meshes(case)  # the report's order: truth first
    femur_pts = np.asarray(meshes["femur"].points, dtype=np.float64)
    own = tre_map(femur_fid, femur_pts, per_bone["femur"]["fle_mm"])
    np.testing.assert_allclose(tre[:len(femur_pts)], own, rtol=1e-12)
    pooled = tre_map(result.fiducials_ct_mm, femur_pts, result.fle_mm)
    assert np.median(own / pooled) > 1.2  # the pooled map would be optimistic on the femur
