"""Theory predictions (docs/theory.md §2), Example 1's closed forms (docs/theory.md §3), event detection on
closed-form trajectories, and the bounded recorder."""

import math

import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar

from ncfkit import theory
from ncfkit.events import EventDetector, EventSettings, Phase, Recorder, detect_events
from ncfkit.theory import EXAMPLE1, example1_grad_norm, example1_loss, example1_psi
from utils import assert_close

# --------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("delta, ncf, L_h, expected", [
    (1e-3, 8.0, 2, math.log(1e3) / 16),           # Theorem 4: ln(1/δ)/(2𝒩)
    (1e-2, 0.5, 3, 1e2 / (3 * 1 * 0.5)),          # Theorem 10: δ^{-1}/(3·1·𝒩)
    (0.1, 2.0, 7, 0.1 ** -5 / (7 * 5 * 2.0)),     # 3-layer square net, L_h = 7
], ids=["Lh2", "Lh3", "Lh7"])
def test_escape_time_formula(delta, ncf, L_h, expected):
    assert theory.escape_time(delta, ncf, L_h) == pytest.approx(expected, rel=1e-14)
    x = theory.escape_regressor(delta, L_h)
    assert theory.escape_slope(ncf, L_h) * x == pytest.approx(expected, rel=1e-14)


def test_escape_slope_of_nonpositive_point_is_infinite():
    assert theory.escape_slope(0.0, 2) == math.inf
    assert theory.escape_slope(-1.0, 3) == math.inf


def test_escape_theory_needs_order_two():
    with pytest.raises(ValueError, match="L_h >= 2"):
        theory.escape_slope(1.0, 1)


def test_gd_slope_tends_to_flow_slope():
    """η/ln(1 + 2𝒩η) → 1/(2𝒩), from above, with an O(η) gap."""
    ncf = 8.0
    gaps = [theory.escape_slope_gd(ncf, 2, lr) - 1 / 16 for lr in (1e-2, 1e-3, 1e-4)]
    assert all(g > 0 for g in gaps)
    assert gaps[0] / gaps[1] == pytest.approx(10, rel=0.1)
    assert theory.escape_slope_gd(ncf, 3, 1e-3) is None


@pytest.mark.parametrize("Delta, ncf, L_h, a, b", [
    (12.0, 8.0, 2, 12 / 76, 24 / 76),                          # Example 1
    (1.0, 1.0, 3, 1 / (18 + 1), 3 / (1 + 18)),                 # eq. 8 / eq. 13
], ids=["example1", "Lh3"])
def test_exponents(Delta, ncf, L_h, a, b):
    assert theory.path_distance_exponent(Delta, ncf, L_h) == pytest.approx(a, rel=1e-14)
    assert theory.sparsity_exponent(Delta, ncf, L_h) == pytest.approx(b, rel=1e-14)


# --------------------------------------------------------------------------- fits


def test_fit_escape_times_recovers_slope_from_noisy_times():
    rng = np.random.default_rng(0)
    deltas = np.logspace(-2, -6, 5)
    times = 0.0625 * np.log(1 / deltas) + 0.3 + 1e-4 * rng.standard_normal(5)
    fit = theory.fit_escape_times(deltas, times, 2)
    assert fit.slope == pytest.approx(0.0625, rel=2e-3)
    assert fit.intercept == pytest.approx(0.3, abs=5e-3)
    assert fit.r2 > 0.9999 and fit.n == 5


def test_fit_escape_times_against_delta_power_for_Lh_gt_2():
    deltas = np.array([1e-2, 5e-3, 2e-3])
    times = 0.4 * deltas ** -1.0 - 7.0
    fit = theory.fit_escape_times(deltas, times, 3)
    assert fit.slope == pytest.approx(0.4, rel=1e-12)


def test_power_law_fit():
    deltas = np.logspace(-1, -5, 4)
    fit = theory.fit_power_law(deltas, 3.0 * deltas**0.25)
    assert fit.slope == pytest.approx(0.25, rel=1e-12)


def test_fit_needs_two_distinct_deltas():
    with pytest.raises(ValueError, match="two distinct"):
        theory.fit_escape_times([1e-3, 1e-3], [1.0, 1.1], 2)


# --------------------------------------------------------------------------- Example 1


def test_example1_psi_is_the_closed_form_of_spec():
    t, d = np.linspace(0, 2, 11), 1e-3
    expected = np.stack([2 * d / np.sqrt(d**2 + (8 - d**2) * np.exp(-32 * t)),
                         d / np.sqrt(d**2 + (2 - d**2) * np.exp(-8 * t))], axis=-1)
    assert_close(example1_psi(t, d), expected, rtol=1e-14, what="ψ(t, δw0)")


def test_example1_psi_solves_the_gradient_flow():
    """dψ/dt (central differences) = −∇𝓛(ψ) with ∂𝓛/∂w_k = 4w_k(w_k² − y_k)."""
    t, h = np.linspace(0.1, 1.5, 15), 1e-5
    for w0 in (EXAMPLE1["w0"], np.array([0.6, -0.8])):
        dpsi = (example1_psi(t + h, 1e-2, w0) - example1_psi(t - h, 1e-2, w0)) / (2 * h)
        w = example1_psi(t, 1e-2, w0)
        assert_close(dpsi, -4 * w * (w**2 - EXAMPLE1["y"]), rtol=1e-6, atol=1e-8, what="dψ/dt")


def test_reference_path_is_the_limit_along_w_star():
    """ψ(t + ln(1/δ)/16, δw*) → p(t) as δ → 0, at rate O(δ²) (Appendix E)."""
    t = np.linspace(-0.5, 1.0, 31)
    errs = []
    for d in (1e-2, 1e-3):
        psi = theory.diagonal_identity_flow(t + math.log(1 / d) / 16, EXAMPLE1["y"], d * EXAMPLE1["w_star"])
        errs.append(np.abs(psi - theory.example1_reference_path(t)).max())
    assert errs[1] < 2e-6 and errs[0] / errs[1] == pytest.approx(100, rel=0.05)
    assert_close(theory.example1_reference_path(40.0), EXAMPLE1["saddle"], atol=1e-12, what="p(∞)")


def _closed_form_samples(delta, t_end=4.0, n=40001):
    t = np.linspace(0, t_end, n)
    w = example1_psi(t, delta)
    return t, example1_loss(w), example1_grad_norm(w)


@pytest.mark.parametrize("delta", [1e-2, 1e-4, 1e-6], ids=lambda d: f"delta={d:g}")
def test_events_on_closed_form_trajectory(delta):
    """Escape: the exact crossing time of 𝓛(ψ(t)) = 0.99·17 (root of the closed form);
    saddle: the minimiser of ‖∇𝓛(ψ(t))‖ after the escape drop, at 𝓛 ≈ 1."""
    t, loss, gn = _closed_form_samples(delta)
    det = detect_events(t, loss, gn)

    def loss_at(s):
        return example1_loss(example1_psi(s, delta))

    t_esc = brentq(lambda s: loss_at(s) - 0.99 * loss[0], 0.0, 4.0, xtol=1e-14)
    assert det.escape.time == pytest.approx(t_esc, abs=1e-7)  # linear interpolation, h = 1e-4
    t_second_drop = brentq(lambda s: loss_at(s) - 0.5, t_esc, 4.0)  # half-way from 1 to 0
    t_min = minimize_scalar(lambda s: example1_grad_norm(example1_psi(s, delta)),
                            bounds=(t_esc + 0.05, t_second_drop), method="bounded",
                            options={"xatol": 1e-10}).x
    assert det.saddle.time == pytest.approx(t_min, abs=2e-4)  # the sampling step
    assert det.saddle.loss == pytest.approx(1.0, abs=0.01 if delta == 1e-2 else 1e-4)
    assert det.phase == Phase.PAST_SADDLE


def test_reference_path_converges_to_the_saddle_and_never_leaves():
    """p(t) → (2, 0): the saddle candidate is found, never passed; the run is stationary
    (‖∇𝓛‖ falls to round-off, where the candidate settles)."""
    t = np.linspace(-1.0, 3.0, 4001)
    p = theory.example1_reference_path(t)
    det = detect_events(t, example1_loss(p), example1_grad_norm(p), loss0=17.0)
    assert det.escape is not None and det.phase == Phase.AT_SADDLE
    assert det.saddle.loss == pytest.approx(1.0, abs=1e-12)
    assert det.saddle.grad_norm < 1e-12
    assert det.stationary


def test_no_plateau_means_no_saddle():
    """A loss that drops with ‖∇𝓛‖ falling by less than 10× from its peak has no plateau."""
    t = np.linspace(0, 10, 1001)
    loss = 10 - 9 / (1 + np.exp(-(t - 5)))
    gn = 1 + np.exp(-((t - 5) ** 2))  # peak 2, never below 1
    det = detect_events(t, loss, gn)
    assert det.escape is not None and det.saddle is None and det.phase == Phase.ESCAPING


def test_escape_threshold_is_eps():
    det = EventDetector(100.0, EventSettings(eps=0.05))
    assert det.update(1.0, 1, 95.5, 1.0) == ()
    assert det.update(2.0, 2, 94.5, 1.0) == ("escape",)
    assert det.escape.time == pytest.approx(1.5)  # interpolated crossing of 95


@pytest.mark.parametrize("bad", [dict(eps=0.0), dict(eps=1.0), dict(saddle_dip=1.5), dict(explode=0.5)])
def test_event_settings_validate(bad):
    with pytest.raises(ValueError):
        EventSettings(**bad)


# --------------------------------------------------------------------------- recorder


def test_recorder_memory_is_bounded_and_keeps_what_matters():
    rec = Recorder(("step", "time", "loss", "grad_norm", "w_norm"), capacity=64, scale=1.0)
    nbytes = rec.nbytes
    n = 200_000
    forced_times = {12_345.0, 150_000.0}
    for i in range(n):
        t = float(i)
        v = {"step": i, "time": t, "loss": 1.0 / (1 + t), "grad_norm": math.exp(-t / 3e4),
             "w_norm": 1.0}
        rec.offer(v, force=t in forced_times or i == n - 1)
        assert len(rec) <= 64
    a = rec.arrays()
    assert rec.nbytes == nbytes and rec.thinned > 0
    assert np.all(np.diff(a["time"]) > 0)
    assert a["time"][0] == 0.0 and a["time"][-1] == n - 1
    assert forced_times <= set(a["time"].tolist())
    # early samples survive: the record is log-spaced, not uniform
    assert (a["time"] < 100).sum() >= 3


def test_recorder_states_follow_their_rows():
    rec = Recorder(("time", "loss"), capacity=8, log_time=0.0, loss_step=0.0, state_dim=2)
    for i in range(1, 50):
        rec.offer({"time": float(i), "loss": 1.0 / i}, state=lambda i=i: [i, -i])
    a, S = rec.arrays(), rec.states()
    assert len(rec) <= 8 and S.shape == (len(rec), 2)
    assert_close(S[:, 0], a["time"], what="state rows")


# --------------------------------------------------------------------------- NCF flow from w0


def _diag(D):
    import torch

    from ncfkit.losses import make_loss
    from ncfkit.models import Diagonal

    X = torch.eye(2, dtype=torch.float64)
    y = torch.tensor([4.0, 1.0], dtype=torch.float64)
    return Diagonal(2, D), X, make_loss("square", "sum").ytilde(y)


def test_ncf_flow_log_amplitude_of_example1():
    """φ(t, w0) = (e^{16t}, e^{4t})/√2 (Appendix E): r(t) ≈ e^{16t}/√2, so ln A = −ln √2."""
    import torch

    arch, X, yt = _diag(2)
    flow = theory.ncf_flow_escape(arch, X, yt, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert flow.converged and flow.ncf == pytest.approx(8.0, rel=1e-9)
    assert flow.log_amplitude == pytest.approx(-0.5 * math.log(2), abs=1e-6)
    assert flow.escape_time(1e-3) == pytest.approx((math.log(1e3) + 0.5 * math.log(2)) / 16, rel=1e-6)
    along = theory.ncf_flow_escape(arch, X, yt, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert along.escape_time(1e-3) == pytest.approx(theory.escape_time(1e-3, 8.0, 2), rel=1e-12)


@pytest.mark.parametrize("w0", [(1.0, 1.0), (0.2, 1.0), (-1.0, 0.5)], ids=["diagonal", "tilted", "mixed-sign"])
def test_ncf_flow_blowup_of_cubic_diagonal_model(w0):
    """D = 3: u̇_k = 3ỹ_k u_k² blows up at 1/(3ỹ_k u_k(0)); the flow blows up at the least."""
    import torch

    arch, X, yt = _diag(3)
    w0 = np.array(w0) / np.linalg.norm(w0)
    expected = min(1 / (3 * a * b) for a, b in zip(yt.tolist(), w0, strict=False) if a * b > 0)
    flow = theory.ncf_flow_escape(arch, X, yt, torch.tensor(w0, dtype=torch.float64))
    assert flow.blowup_time == pytest.approx(expected, rel=1e-6)
    assert flow.escape_time(0.1) == pytest.approx(10 * expected, rel=1e-6)
