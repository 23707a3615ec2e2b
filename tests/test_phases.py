"""Per-plateau analysis and the next-escape prediction (ncfkit.phases, docs/phases.md).

Oracles solvable by hand: Example 1 (Section 3.1) at its saddle (2, 0), where the
residual is r = 2(y − H) = (0, 2) and the zero coordinate grows as u(t) = u_p·e^{4t}; a
two-layer square net on X = I, y = (4, 1) at the saddle where one balanced neuron fits
the first coordinate, where the unit NCF is 2a·b₂² with maximum 4/(3√3) on the sphere
(the closed form for two-layer square nets in docs/theory.md, with M = diag(0, 2)); and
the leading-order expansion itself, checked against the loss of a three-layer net."""

import math

import numpy as np
import pytest
import torch

from ncfkit import phases
from ncfkit.dynamics import Objective, Settings, simulate
from ncfkit.events import detect_events
from ncfkit.losses import make_loss
from ncfkit.models import Diagonal, make_architecture
from ncfkit.theory import EXAMPLE1, example1_grad_norm, example1_loss, example1_psi

F64 = torch.float64
X2, Y2 = np.eye(2), np.array([4.0, 1.0])
SQUARE_SUM = make_loss("square", "sum")


def test_units_small_active_and_masks():
    arch = make_architecture("mlp", 2, "3", "square")
    W1 = np.array([[1.0, 0.0], [0.05, 0.0], [0.0, 0.5]])
    W2 = np.array([[1.0, 0.0, 0.5]])
    w = arch.join([W1, W2])
    assert phases.small_units(arch, w) == ((1,),)  # 0.05 < 10% of √2; 0.5·√2 is not
    assert phases.active_units(arch, w) == ((0, 2),)
    M1, M2 = arch.split(phases.units_mask(arch, ((1,),)))
    assert M1.tolist() == [[False, False], [True, True], [False, False]] and M2.tolist() == [[False, True, False]]
    assert phases.norm_ratio(phases.units_mask(arch, ((1,),)), w) == pytest.approx(0.05 / np.linalg.norm(w))
    diag = Diagonal(3, 2)
    assert phases.small_units(diag, np.array([2.0, 0.1, -1.0])) == ((1,),)
    assert phases.units_mask(diag, ((1,),)).tolist() == [False, True, False]
    assert phases.norm_ratio(np.zeros(3, bool), np.ones(3)) is None


def test_example1_residual_and_next_escape_closed_form():
    """At the saddle (2, u_p) of Example 1: r = (0, 2(1 − u_p²)), the unit NCF 2u², and
    u grows as u_p·e^{2ct}, c = 2(1 − u_p²): the prediction is ln(1/u_p)/(2c) exactly."""
    arch = Diagonal(2, 2)
    for u_p in (1e-2, 1e-4, 1e-8):
        w = np.array([2.0, u_p])
        r = phases.residual(arch, X2, Y2, SQUARE_SUM, w)
        assert r == pytest.approx([0.0, 2 * (1 - u_p**2)], abs=1e-12)
        pred = phases.predict_next(arch, X2, Y2, SQUARE_SUM, w, t_saddle=1.0)
        c = 2 * (1 - u_p**2)  # 𝒩(u) = c·u², growth rate 2c
        assert pred.degree == 2 and pred.ncf_max == [pytest.approx(c, rel=1e-12)]
        assert (pred.first.layer, pred.first.unit) == (0, 1)
        assert pred.first.time == pytest.approx(math.log(1 / u_p) / (2 * c), rel=1e-9)
        assert pred.time == pytest.approx(1.0 + math.log(1 / u_p) / (2 * c), rel=1e-9)


@pytest.mark.parametrize("delta", [1e-3, 1e-6])
def test_example1_prediction_beside_the_closed_form_run(delta):
    """On ψ(t, δw0): the plateau at (2, 0) is left (loss 1% below 1, i.e. ψ₂ = 0.0708)
    at t_p + ln(1/ψ₂(t_p))/4 + ln(0.0708)/4 — the prediction plus a constant, whatever δ."""
    t = np.linspace(0.0, 6.0, 12001)
    w = example1_psi(t, delta)
    det = detect_events(t, example1_loss(w), example1_grad_norm(w))
    sad = det.all_plateaus()[0]
    w_p = w[sad.saddle.step]
    pred = phases.predict_next(Diagonal(2, 2), X2, Y2, SQUARE_SUM, w_p, t_saddle=sad.saddle.time)
    level = math.sqrt(1 - math.sqrt(0.99 * sad.saddle.loss))  # ψ₂ where 𝓛 = 0.99·𝓛(saddle)
    assert sad.exit.time - pred.time == pytest.approx(math.log(level) / 4, abs=2e-3)


def _square_saddle(eps):
    """The two-layer square net on X = I, y = (4, 1) at the saddle where neuron 0 fits
    y₁ = 4 (v·c² = 4, balanced c² = 2v²) and neuron 1 is O(eps)."""
    arch = make_architecture("mlp", 2, "2", "square")
    v = 2 ** (1 / 3)
    W1 = np.array([[math.sqrt(2) * v, 0.0], [0.3 * eps, eps]])
    W2 = np.array([[v, -0.5 * eps]])
    return arch, arch.join([W1, W2])


def test_two_layer_square_unit_ncf_is_the_closed_form():
    arch, w = _square_saddle(1e-3)
    r = phases.residual(arch, X2, Y2, SQUARE_SUM, w)
    assert r == pytest.approx([0.0, 2.0], abs=1e-5)
    (prob,) = phases.unit_problems(arch, X2, r, w)
    assert prob.degree == 3 and prob.G.shape == (2, 1) and np.allclose(prob.F, X2)
    best, u = phases.unit_kkt_points(prob, restarts=8)[0]
    M = (r[:, None, None] * X2[:, :, None] * X2[:, None, :]).sum(0)  # Σ r_i x_i x_iᵀ
    lam = np.linalg.eigvalsh(M)
    assert best == pytest.approx(2 / (3 * math.sqrt(3)) * max(lam[-1], -lam[0]), rel=1e-7)
    a, b = prob.split(u)
    assert a[0] ** 2 == pytest.approx(1 / 3, abs=1e-6) and b[1] ** 2 == pytest.approx(2 / 3, abs=1e-6)
    # KKT (Lemma 20): ∇𝒩(u) = L_u 𝒩(u) u
    _, g = prob.value_and_grad(u)
    assert np.abs(g - 3 * best * u).max() < 1e-6


@pytest.mark.parametrize("eps", [1e-2, 3e-3])
def test_two_layer_square_next_neuron_and_time_beside_the_run(eps):
    """Neuron 1 (the small one) is predicted to grow, at the blow-up time of its own
    unit NCF flow (∝ 1/eps, L_u = 3); the gradient flow from the saddle leaves it (loss 1%
    below) within O(1) of that time, and neuron 1 is then active."""
    arch, w = _square_saddle(eps)
    pred = phases.predict_next(arch, X2, Y2, SQUARE_SUM, w)
    assert (pred.first.layer, pred.first.unit) == (1, 1) and [u.unit for u in pred.units] == [1]
    assert pred.first.ncf_limit == pytest.approx(4 / (3 * math.sqrt(3)), rel=1e-4)  # r = (0, 2) + O(eps³)
    obj = Objective(arch, X2, Y2, SQUARE_SUM)
    run = simulate(obj, w[None], Settings(max_time=2 * pred.time, until="max-time"), method="flow").runs[0]
    assert abs(run.escape.time - pred.time) < 3.0 and pred.time > 100
    assert phases.active_units(arch, run.snapshots["final"].w) == ((0, 1),)


def test_leading_order_expansion_of_a_three_layer_net():
    """𝓛(p + s·u_j) − 𝓛(p) = −s³𝒩_l(u_j) + O(s⁶) for a neuron j that is zero at p, in
    either hidden layer of a three-layer square net (the statement for deeper nets)."""
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((12, 4)), rng.standard_normal(12)
    arch = make_architecture("mlp", 4, "3,3", "square")
    loss = make_loss("square", "mean")
    w = rng.standard_normal(arch.num_params) * 0.7
    Ws = arch.split(w)
    for layer in (1, 2):
        j = 1
        Ws_p = [W.copy() for W in Ws]
        Ws_p[layer - 1][j, :] = 0.0
        Ws_p[layer][:, j] = 0.0
        p = arch.join(Ws_p)
        r = phases.residual(arch, X, y, loss, p)
        prob = phases.unit_problems(arch, X, r, p)[layer - 1]
        u = rng.standard_normal(prob.dim)
        a, b = prob.split(u)
        d = [np.zeros_like(W) for W in Ws]
        d[layer][:, j] = a
        d[layer - 1][j, :] = b
        du = arch.join(d)
        Lp = float(loss.value(arch.forward(X, p), y))
        val = float(prob.value_and_grad(u)[0])
        for s in (1e-2, 1e-3):
            change = float(loss.value(arch.forward(X, p + s * du), y)) - Lp
            assert change / (-(s**3) * val) == pytest.approx(1.0, abs=50 * s**3 + 1e-6)


def test_analyse_plateaus_of_example1_until_converged():
    """Example 1 by GD until converged: plateau 1 is the strict saddle (2, 0) (λ_min =
    −4) with coordinate 2 small and predicted to grow next; plateau 2 is the minimum
    (2, 1), where coordinate 2 (the zero set of plateau 1) has grown."""
    obj = Objective(Diagonal(2, 2), torch.eye(2, dtype=F64), torch.tensor([4.0, 1.0], dtype=F64), SQUARE_SUM)
    w0 = torch.tensor(EXAMPLE1["w0"], dtype=F64)
    run = simulate(obj, (1e-3 * w0)[None], Settings(max_time=8.0, lr=1e-3, until="converged")).runs[0]
    sad, minimum = phases.analyse_plateaus(obj, run, wz_mask=np.array([False, True]))
    assert sad.kind == "strict saddle" and sad.min_hessian_eig == pytest.approx(-4.0, abs=0.05)
    assert sad.active == ((0,),) and sad.small == ((1,),) and sad.wz_ratio < 0.01
    assert sad.prev_zero_ratio is None and sad.next is not None
    assert (sad.next.first.layer, sad.next.first.unit) == (0, 1)
    assert abs(sad.next.time - sad.exit_time) < 1.0  # + O(1), as the escape from the origin
    assert minimum.kind == "minimum" and minimum.stationary and minimum.next is None
    assert minimum.prev_zero_grown == ((1,),) and minimum.active == ((0, 1),)
    assert minimum.prev_zero_ratio == pytest.approx(1 / math.sqrt(5), abs=1e-6)
    assert minimum.prev_zero_max_ratio == pytest.approx(1 / math.sqrt(5), abs=1e-3)
    assert minimum.prev_zero_stayed_ratio is None  # the whole zero set grew
    d = phases.plateaus_json([sad, minimum])
    assert d[0]["next"]["first"]["unit"] == 1 and d[1]["kind"] == "minimum"
