"""Dynamics (ncfkit.dynamics) and the escape analysis (ncfkit.escape), float64 and seeded:
GD against a plain autograd loop, Example 1 against its closed form (docs/theory.md §3), the
escape-time fit, bounded records, divergence and interruption."""

import math

import numpy as np
import pytest
import torch

from ncfkit import theory
from ncfkit.dynamics import (
    METHODS,
    Objective,
    Settings,
    Tracker,
    hermite_interpolate,
    min_hessian_eigenvalue,
    simulate,
)
from ncfkit.escape import governing_point, run_escape, zero_preserving_subset
from ncfkit.events import EventSettings
from ncfkit.losses import make_loss
from ncfkit.models import Diagonal, make_architecture
from ncfkit.theory import EXAMPLE1, example1_psi
from utils import assert_close

F64 = torch.float64


@pytest.fixture(scope="module")
def example1():
    X = torch.eye(2, dtype=F64)
    y = torch.tensor([4.0, 1.0], dtype=F64)
    return Objective(Diagonal(2, 2), X, y, make_loss("square", "sum"))


def _plain_gd(X, y, shapes, w, lr, steps):
    """The usual loop: torch autograd on explicit matrices, loss.item() every step."""
    w = w.clone().requires_grad_(True)
    losses, iterates = [], []
    for _ in range(steps + 1):
        W1 = w[: shapes[0][0] * shapes[0][1]].reshape(shapes[0])
        W2 = w[shapes[0][0] * shapes[0][1]:].reshape(shapes[1])
        loss = ((W2 @ (W1 @ X.T) ** 2).squeeze(0) - y).pow(2).sum()
        (g,) = torch.autograd.grad(loss, w)
        losses.append(loss.item())
        iterates.append(w.detach().clone())
        with torch.no_grad():
            w -= lr * g
    return np.array(losses), iterates


def test_gd_matches_plain_autograd_loop(tiny_square_net):
    """Same iterates to 1e-12, and the escape snapshot is the first iterate below 0.99·𝓛(0)."""
    obj, w0 = tiny_square_net
    lr, steps = 0.002, 700
    sim = simulate(obj, (0.1 * w0)[None], Settings(max_time=steps * lr, lr=lr, until="max-time"))
    run = sim.runs[0]
    losses, iterates = _plain_gd(obj.X, obj.y, obj.arch.shapes, 0.1 * w0, lr, steps)
    k_esc = int(np.argmax(losses < 0.99 * losses[0]))
    assert run.escape.step == k_esc
    assert run.snapshots["escape"].step == k_esc
    assert_close(run.snapshots["escape"].w, iterates[k_esc], rtol=1e-12, atol=1e-14, what="w at escape")
    assert run.snapshots["final"].step == steps
    assert_close(run.snapshots["final"].w, iterates[steps], rtol=1e-12, atol=1e-14, what="final w")
    rec = run.records
    assert_close(rec["loss"], losses[rec["step"]], rtol=1e-12, what="recorded losses")
    # the crossing time lies between the two iterates around it
    assert (k_esc - 1) * lr < run.escape.time <= k_esc * lr


def test_batched_rows_equal_separate_runs(tiny_square_net):
    """Rows of a batch are the iterates of separate runs (checkpoint times, hence the
    saddle candidate's step, may differ: they follow the fastest-changing row)."""
    obj, w0 = tiny_square_net
    lr = 0.002
    batch = simulate(obj, torch.stack([0.1 * w0, 0.05 * w0]), Settings(max_time=3.0, lr=lr))
    for d, run in zip((0.1, 0.05), batch.runs, strict=False):
        assert run.status == "passed saddle"
        final = run.snapshots["final"]
        alone = simulate(obj, (d * w0)[None], Settings(max_time=final.step * lr, lr=lr,
                                                        until="max-time")).runs[0]
        assert run.escape == alone.escape
        assert alone.snapshots["final"].step == final.step
        assert_close(final.w, alone.snapshots["final"].w, rtol=1e-13, what="final w")
        assert run.saddle.loss == pytest.approx(alone.saddle.loss, rel=1e-3)


def test_methods_registry_and_bad_settings(example1):
    assert "gd" in METHODS
    with pytest.raises(KeyError, match="unknown dynamics method"):
        simulate(example1, torch.ones(1, 2, dtype=F64), Settings(max_time=1.0), method="nope")
    for bad in (dict(max_time=-1.0), dict(max_time=1.0, lr=0.0), dict(max_time=1.0, lr=float("nan")),
                dict(max_time=1.0, until="forever")):
        with pytest.raises(ValueError):
            Settings(**bad)


# --------------------------------------------------------------------------- Example 1


def _example1_run(obj, delta, lr, until="saddle", max_time=4.0, events=None, **kw):
    w0 = torch.tensor(EXAMPLE1["w0"], dtype=F64)
    extra = {} if events is None else {"events": events}
    return simulate(obj, (delta * w0)[None], Settings(max_time=max_time, lr=lr, until=until,
                                                      **extra, **kw),
                    w_star=torch.tensor([1.0, 0.0], dtype=F64),
                    wz_mask=torch.tensor([False, True])).runs[0]


def test_example1_trajectory_matches_closed_form_to_first_order_in_eta(example1):
    """GD tracks ψ(t, δw0) with an O(η) error: halving η halves the worst error."""
    errs = []
    for lr in (4e-3, 2e-3, 1e-3):
        run = _example1_run(example1, 1e-3, lr, until="max-time", max_time=1.2)
        tr = run.trajectory
        assert len(tr["time"]) > 20
        errs.append(np.abs(tr["w"] - example1_psi(tr["time"], 1e-3)).max())
    assert errs[0] / errs[1] == pytest.approx(2, rel=0.1)
    assert errs[1] / errs[2] == pytest.approx(2, rel=0.1)
    assert errs[2] < 0.05


def test_example1_events_saddle_and_minimum(example1):
    obj, lr = example1, 1e-3
    run = _example1_run(obj, 1e-4, lr, until="max-time", max_time=3.5)
    # escape: close to the closed form's crossing (GD's rate 2ln(1+16η)/η vs 32: O(η·t))
    from scipy.optimize import brentq

    level = 0.99 * run.loss0
    t_esc = brentq(lambda s: theory.example1_loss(example1_psi(s, 1e-4)) - level, 0, 2)
    assert run.escape.time == pytest.approx(t_esc, rel=1e-2)
    assert run.escape.time * math.log1p(16 * lr) / lr == pytest.approx(t_esc * 16, rel=2e-3)
    # the first saddle: near (2, 0) with loss 1, a strict saddle (λ_min = −4 at (2, 0))
    sad = run.snapshots["saddle"]
    assert_close(sad.w, EXAMPLE1["saddle"], atol=5e-3, what="saddle point")
    assert sad.loss == pytest.approx(1.0, abs=1e-4)
    h = min_hessian_eigenvalue(obj, torch.as_tensor(sad.w))
    assert h.method == "dense" and h.min == pytest.approx(-4.0, abs=1e-2) and h.kind == "strict saddle"
    assert run.saddle_left
    # ... and it ends at the global minimum (2, 1)
    assert_close(run.snapshots["final"].w, EXAMPLE1["minimum"], atol=1e-3, what="end point")


def test_example1_slope_fit_within_2_percent(example1):
    """Escape times for δ = 1e-2 … 1e-6 against ln(1/δ): slope 1/16 within 2%, and GD's
    own prediction η/ln(1 + 16η) within 0.1%."""
    deltas = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    w0 = torch.tensor(EXAMPLE1["w0"], dtype=F64)
    pt = governing_point(example1.arch, example1.X, example1.loss.ytilde(example1.y), w0)
    assert pt.cert.ncf == pytest.approx(8.0, rel=1e-9) and pt.cert.delta == pytest.approx(12.0, rel=1e-6)
    rep = run_escape(example1, w0, deltas, Settings(max_time=5.0, lr=1e-3), point=pt)
    fit = rep.fits
    assert fit.escape.n == 5 and fit.predicted_slope == 1 / 16
    assert abs(fit.escape.slope * 16 - 1) < 0.02
    assert fit.escape.slope == pytest.approx(fit.predicted_slope_gd, rel=1e-3)
    for r in rep.runs:
        assert r.saddle_kind == "strict saddle" and r.saddle_loss == pytest.approx(1, abs=0.01)
    # the reference path ends at p* = (2, 0); runs come closer to it as δ shrinks
    ref = rep.reference
    assert ref.p_star_loss == pytest.approx(1.0, abs=1e-9)
    assert ref.p_star_min_hessian_eig == pytest.approx(-4.0, abs=1e-6)
    dist = [r.path_distance for r in rep.runs]
    assert all(a > b for a, b in zip(dist, dist[1:], strict=False))
    assert fit.path.slope > fit.path_exponent_theory  # the theorem's rate is a bound


def test_reference_run_aligned_at_escape_is_the_closed_form_p(example1):
    """The reference run from δ_ref·w*, shifted so its escape is at 0, against the closed
    form p(t) shifted the same way."""
    w_star = torch.tensor([1.0, 0.0], dtype=F64)
    run = simulate(example1, (1e-6 * w_star)[None], Settings(max_time=2.5, lr=5e-4)).runs[0]
    assert run.status == "stationary"
    from scipy.optimize import brentq

    s_p = brentq(lambda s: theory.example1_loss(theory.example1_reference_path(s)) - 0.99 * 17, -2, 2)
    tr = run.trajectory
    s = tr["time"] - run.escape.time
    sel = (s > -0.3) & (s < 0.5)
    assert_close(tr["w"][sel], theory.example1_reference_path(s[sel] + s_p), atol=1e-2,
                 what="reference run vs p(t)")  # GD's O(η) error


# --------------------------------------------------------------------------- records, stop


def test_records_stay_bounded_on_a_long_run(example1):
    run = _example1_run(example1, 1e-3, 1e-3, until="max-time", max_time=6.0, capacity=32,
                        state_capacity=16, state_memory=10 * 16 * 2,  # 10 states of (w, ∇𝓛)
                        events=EventSettings(stationary_rtol=0.0))
    assert run.steps == 6000
    assert len(run.records["time"]) <= 32 and len(run.trajectory["time"]) <= 10
    assert run.records["time"][-1] == pytest.approx(6.0)
    assert np.all(np.diff(run.records["time"]) > 0)
    assert run.escape is not None and run.saddle is not None  # events are not thinned away


def test_divergence_stops_with_time_and_keeps_last_finite_state(example1):
    run = _example1_run(example1, 0.1, 0.3, until="max-time", max_time=50.0)
    assert run.status == "diverged"
    assert run.divergence_time is not None and run.divergence_time <= run.final_time + 0.3 * 64
    assert "diverged at t =" in run.message
    final = run.snapshots["final"]
    assert np.isfinite(final.w).all() and math.isfinite(final.loss)
    assert np.isfinite(run.records["loss"]).all()


def test_interrupt_returns_partial_results(example1, monkeypatch):
    calls = {"n": 0}
    original = Tracker.checkpoint

    def interrupting(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt
        return original(self, *a, **kw)

    monkeypatch.setattr(Tracker, "checkpoint", interrupting)
    w0 = torch.tensor(EXAMPLE1["w0"], dtype=F64)
    sim = simulate(example1, torch.stack([1e-3 * w0, 1e-6 * w0]), Settings(max_time=4.0, lr=1e-4))
    assert isinstance(sim.interrupted, KeyboardInterrupt) and sim.status == "interrupted"
    for run in sim.runs:
        assert run.status == "interrupted" and "interrupted at t =" in run.message
        assert run.snapshots["final"].step == run.records["step"][-1] > 0


# --------------------------------------------------------------------------- helpers


def test_hermite_interpolation_is_exact_for_cubics():
    t = np.array([0.0, 0.3, 1.0, 1.7])
    f = np.stack([t**3 - 2 * t, 0.5 * t**2 + 1], axis=1)
    df = np.stack([3 * t**2 - 2, t], axis=1)
    q = np.linspace(0, 1.7, 23)
    assert_close(hermite_interpolate(q, t, f, df), np.stack([q**3 - 2 * q, 0.5 * q**2 + 1], 1),
                 rtol=1e-12, atol=1e-12, what="Hermite")
    assert np.isnan(hermite_interpolate([2.0], t, f, df)).all()


def test_min_hessian_eigenvalue_lanczos_matches_dense(tiny_square_net):
    obj, w0 = tiny_square_net
    w = 0.7 * w0
    dense = min_hessian_eigenvalue(obj, w)
    lanczos = min_hessian_eigenvalue(obj, w, dense_max=0)
    assert (dense.method, lanczos.method) == ("dense", "lanczos")
    assert lanczos.min == pytest.approx(dense.min, rel=1e-7, abs=1e-9)
    assert lanczos.max == pytest.approx(dense.max, rel=1e-7)


def test_zero_preserving_subset_of_diagonal_and_mlp():
    mask, zero = zero_preserving_subset(Diagonal(3, 2), torch.tensor([0.0, 1.0, 1e-9], dtype=F64))
    assert mask.tolist() == [True, False, True] and zero is None
    arch = make_architecture("mlp", 2, "3", "square")
    W1 = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=F64)
    W2 = torch.tensor([[0.5, 0.0, 0.0]], dtype=F64)
    mask, zero = zero_preserving_subset(arch, arch.join([W1, W2]))
    assert zero == ((1, 2),)
    M1, M2 = arch.split(mask)
    assert M1.tolist() == [[False, False], [True, True], [True, True]]
    assert M2.tolist() == [[False, True, True]]


def test_square_net_along_w_star_escapes_on_the_theorem_10_line(tiny_square_net):
    """L_h = 3 from δ·w*: escape times against δ^{-1} have slope 1/(3𝒩(w*)) (Theorem 10)."""
    obj, _ = tiny_square_net
    from ncfkit.escape import certified_point
    from ncfkit.kkt import find_kkt_points

    yt = obj.loss.ytilde(obj.y)
    best = find_kkt_points(obj.arch, obj.X, yt, restarts=8, seed=0).points[0]
    pt = certified_point(obj.arch, obj.X, yt, best.cert.w, "test")
    deltas = [1e-2, 5e-3]
    rep = run_escape(obj, pt.w_star, deltas, Settings(max_time=8.0, lr=2e-3, until="max-time"),
                     point=pt, delta_ref=None)
    assert all(r.escaped for r in rep.runs)
    assert rep.fits.escape.slope == pytest.approx(1 / (3 * pt.cert.ncf), rel=0.01)
    for r in rep.runs:  # the prediction along w* is the NCF flow's from w0 = w*
        assert r.predicted_escape_time_w0 == pytest.approx(r.predicted_escape_time, rel=1e-9)
        assert 0.9 < r.escape_time / r.predicted_escape_time < 1
        assert r.sparsity_ratio_escape < 1e-8  # w_z starts at (numerically) 0 and stays there


def test_random_start_escapes_on_the_ncf_flow_line(tiny_square_net):
    """L_h = 3 from δ·w0, w0 random: the escape times follow δ^{-1}·T_b(w0), T_b the
    blow-up time of the NCF flow from w0 (theory.ncf_flow_escape), not 1/(3𝒩(w*))."""
    obj, w0 = tiny_square_net
    yt = obj.loss.ytilde(obj.y)
    pt = governing_point(obj.arch, obj.X, yt, w0)
    deltas = [0.04, 0.02]
    T = max(pt.flow.escape_time(d) for d in deltas)
    rep = run_escape(obj, w0, deltas, Settings(max_time=1.05 * T, lr=2e-3, until="max-time"),
                     point=pt, delta_ref=None)
    fit = rep.fits
    assert fit.predicted_slope_w0 == pytest.approx(pt.flow.blowup_time)
    assert fit.predicted_slope_w0 > 1.5 * fit.predicted_slope  # w0 is far from w*
    assert fit.escape.slope == pytest.approx(fit.predicted_slope_w0, rel=0.01)
    # T_esc = δ^{-1}·T_b + O(1): the same offset for both δ (the 1% drop precedes blow-up)
    offsets = [r.escape_time - r.predicted_escape_time_w0 for r in rep.runs]
    assert offsets[0] == pytest.approx(offsets[1], abs=0.02) and abs(offsets[0]) < 0.1 * rep.runs[1].escape_time


# --------------------------------------------------------------------------- plateaus


@pytest.mark.parametrize("until", ["converged", "saddles:2", "saddles:3"])
def test_example1_until_converged_reports_saddle_then_minimum(example1, until):
    """GD from δ·w0 with until converged (or more saddles than there are): the saddle
    (2, 0) at loss 1, left, then the minimum (2, 1) where the run becomes stationary —
    nothing in between; their snapshots are ``saddle`` and ``saddle_2``."""
    run = _example1_run(example1, 1e-3, 1e-3, until=until, max_time=8.0)
    assert run.status == "stationary" and "stationary point" in run.message
    sad, minimum = run.plateaus
    assert sad.left and sad.confirmed and sad.saddle.loss == pytest.approx(1.0, abs=1e-3)
    assert_close(run.snapshots["saddle"].w, EXAMPLE1["saddle"], atol=0.05, what="first saddle")
    assert minimum.stationary and not minimum.left and minimum.saddle.loss < 1e-12
    assert_close(run.snapshots["saddle_2"].w, EXAMPLE1["minimum"], atol=1e-6, what="minimum")
    assert run.snapshots["saddle_2"].step == minimum.saddle.step == run.steps
    assert run.saddle == sad.saddle and run.saddle_left


def test_until_saddle_is_saddles_1_and_max_time_says_how_far(example1):
    one = _example1_run(example1, 1e-3, 1e-3, until="saddle")
    same = _example1_run(example1, 1e-3, 1e-3, until="saddles:1")
    assert one.status == same.status == "passed saddle" and one.message == "passed the first saddle at " \
        f"t = {one.final_time:.6g}"
    assert len(one.plateaus) == 1 and one.plateaus[0].left and one.steps == same.steps
    assert set(one.snapshots) == {"init", "escape", "saddle", "final"}
    short = _example1_run(example1, 1e-3, 1e-3, until="saddles:2", max_time=2.0)
    assert short.status == "max time" and "after 1 of 2 saddle(s)" in short.message
    conv = _example1_run(example1, 1e-3, 1e-3, until="converged", max_time=2.0)
    assert conv.status == "max time" and "before converging" in conv.message


def test_example1_large_delta_keeps_its_first_slow_down_as_saddle(example1):
    run = _example1_run(example1, 0.1, 1e-3, until="max-time", max_time=3.0)
    assert run.plateaus == () and run.transient is not None
    assert run.saddle == run.transient.saddle and run.saddle_left
    assert run.snapshots["saddle"].step == run.saddle.step and run.saddle.loss == pytest.approx(0.853, abs=0.01)
