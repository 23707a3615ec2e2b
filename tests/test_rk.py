"""The generic Runge–Kutta stepper (ncfkit.rk) and the NCF flow built on it
(theory.ncf_flow_escape): order conditions of every tableau, orders measured on closed
forms, adaptive control against closed forms in float64, and the flow from w0 against
the closed-form maxima of docs/theory.md §3."""

import math

import numpy as np
import pytest
import torch

from ncfkit import theory
from ncfkit.errors import RunError
from ncfkit.losses import make_loss
from ncfkit.models import Diagonal, make_architecture, random_direction
from ncfkit.rk import TABLEAUX, RungeKutta, StepSizeUnderflow

F64 = torch.float64
METHODS = sorted(TABLEAUX)


# --------------------------------------------------------------------------- closed forms


def linear(lam):
    """y' = λy: y(t) = y0·e^{λt}."""
    return (lambda y: (lam * y, None)), (lambda t, y0: y0 * math.exp(lam * t))


def logistic():
    """y' = y(1 − y): y(t) = 1/(1 + (1/y0 − 1)e^{−t})."""
    return (lambda y: (y * (1.0 - y), None)), (lambda t, y0: 1.0 / (1.0 + (1.0 / y0 - 1.0) * math.exp(-t)))


def spiral():
    """y' = Ay, A = [[−0.3, 2], [−2, −0.3]]: a decaying rotation, y(t) = e^{−0.3t}R(−2t)y0."""
    A = np.array([[-0.3, 2.0], [-2.0, -0.3]])

    def exact(t, y0):
        c, s = math.cos(2 * t), math.sin(2 * t)
        return math.exp(-0.3 * t) * np.array([[c, s], [-s, c]]) @ y0

    return (lambda y: (y @ A.T, None)), exact


def fixed_step_error(method, rhs, exact, y0, T, n):
    """Global error at T after n equal steps (tolerances so loose that none is rejected)."""
    h = T / n
    stepper = RungeKutta(rhs, np.array([[y0]], dtype=float), rtol=1e10, atol=1e10, h0=h, h_max=h, tableau=method)
    for _ in range(n):
        stepper.step()
    assert stepper.n_rejected == 0 and stepper.t == pytest.approx(T, rel=1e-12)
    return abs(float(stepper.y[0, 0]) - exact(T, y0))


# --------------------------------------------------------------------------- the tableaux


@pytest.mark.parametrize("name", METHODS)
def test_order_conditions(name):
    """Σb = Σb̂ = 1, c = A·1 (each stage at its node), and a first-same-as-last method's
    last row of A is b with c = 1; dense output rows sum to b at θ = 1."""
    tab = TABLEAUX[name]
    A = tab.matrix()
    assert len(tab.b) == len(tab.b_low) == len(tab.a) == tab.stages
    assert sum(tab.b) == pytest.approx(1.0, abs=1e-15)
    assert sum(tab.b_low) == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(A.sum(axis=1), tab.c, rtol=0, atol=1e-15)
    assert np.all(np.triu(A) == 0)
    # second order of the kept solution: Σ b_i c_i = 1/2
    assert float(np.dot(tab.b, tab.c)) == pytest.approx(0.5, abs=1e-15)
    if tab.fsal:
        np.testing.assert_allclose(A[-1], tab.b, rtol=0, atol=0)
        assert tab.c[-1] == 1.0
    if tab.dense is not None:
        np.testing.assert_allclose(np.asarray(tab.dense).sum(axis=1), tab.b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("problem", ["linear", "logistic"])
def test_measured_order(name, problem):
    """Halving the step divides the global error by about 2^p (p the tableau's order)."""
    tab = TABLEAUX[name]
    rhs, exact = linear(-1.0) if problem == "linear" else logistic()
    y0, T = (1.0, 1.0) if problem == "linear" else (0.2, 2.0)
    n = {5: 16, 3: 32, 2: 64}[tab.order]
    errors = [fixed_step_error(name, rhs, exact, y0, T, n * 2**j) for j in range(3)]
    orders = [math.log2(e0 / e1) for e0, e1 in zip(errors, errors[1:], strict=False)]
    assert all(abs(p - tab.order) < 0.3 for p in orders), (errors, orders)


@pytest.mark.parametrize("name", METHODS)
def test_error_estimate_has_the_embedded_order(name):
    """The local error estimate of one step from the exact point shrinks like h^{q+1}
    (q the embedded order)."""
    tab = TABLEAUX[name]
    rhs, _ = logistic()
    estimates = []
    for h in (0.025, 0.0125):
        stepper = RungeKutta(rhs, np.array([[0.2]]), rtol=1e10, atol=1e10, h0=h, h_max=h, tableau=name)
        stepper.step()
        estimates.append(abs(h * float(tab.error_weights() @ stepper.stages[:, 0, 0])))
    assert math.log2(estimates[0] / estimates[1]) == pytest.approx(tab.order_low + 1, abs=0.15)


@pytest.mark.parametrize("name", METHODS)
def test_dense_output_order(name):
    """Inside one step from the exact point the dense output errs by O(h^{p*+1}): 4th-order
    for dopri5, 3rd for bosh3 and for the cubic Hermite fallback."""
    rhs, exact = logistic()
    order = {"dopri5": 4, "bosh3": 3, "heun_euler": 2}[name]  # Hermite on a 2nd-order step: 2
    errors = []
    for h in (0.2, 0.1):
        stepper = RungeKutta(rhs, np.array([[0.2]]), rtol=1e10, atol=1e10, h0=h, h_max=h, tableau=name)
        stepper.step()
        errors.append(max(abs(float(stepper.dense(th)[0, 0]) - exact(th * h, 0.2)) for th in (0.3, 0.5, 0.8)))
        assert float(stepper.dense(0.0)[0, 0]) == 0.2
        assert float(stepper.dense(1.0)[0, 0]) == pytest.approx(float(stepper.y[0, 0]), rel=1e-14)
    assert math.log2(errors[0] / errors[1]) >= order + 1 - 0.4, errors


# --------------------------------------------------------------------------- adaptive control


#: (method, rtol): every method at 1e-6, the higher-order pairs also at 1e-9 (a 2nd-order
#: pair needs ~10^5 steps there).
SPIRAL_CASES = [(m, 1e-6) for m in METHODS] + [(m, 1e-9) for m in METHODS if m != "heun_euler"]


@pytest.mark.parametrize(("name", "rtol"), SPIRAL_CASES, ids=[f"{m}-rtol-{r:g}" for m, r in SPIRAL_CASES])
def test_adaptive_meets_rtol_on_a_spiral(name, rtol):
    """Every accepted point of the decaying rotation within 30·rtol (relative) of the
    closed form up to t = 4, with a batch of two rows of different sizes."""
    rhs, exact = spiral()
    y0 = np.array([[1.0, 0.5], [-3e-4, 2e-4]])
    stepper = RungeKutta(rhs, y0, rtol=rtol, tableau=name)
    worst = 0.0
    while stepper.t < 4.0:
        stepper.step()
        for b in range(2):
            ref = exact(stepper.t, y0[b])
            worst = max(worst, float(np.linalg.norm(stepper.y[b] - ref) / np.linalg.norm(ref)))
    assert worst <= 30 * rtol, f"relative error {worst:.2e} at rtol {rtol:g}"
    assert stepper.n_evals >= stepper.n_accepted * (TABLEAUX[name].stages - TABLEAUX[name].fsal)


@pytest.mark.parametrize("name", METHODS)
def test_adaptive_meets_rtol_on_the_logistic(name):
    rhs, exact = logistic()
    stepper = RungeKutta(rhs, np.array([[0.01]]), rtol=1e-7, tableau=name)
    worst = 0.0
    while stepper.t < 10.0:
        stepper.step()
        worst = max(worst, abs(float(stepper.y[0, 0]) / exact(stepper.t, 0.01) - 1))
    assert worst <= 3e-6


@pytest.mark.parametrize("name", METHODS)
def test_underflow_is_a_run_error(name):
    """y' = y² blows up at t = 1: the step size underflows before, a RunError."""
    stepper = RungeKutta(lambda y: (y * y, None), np.ones((1, 1)), rtol=1e-8, tableau=name)
    with pytest.raises(StepSizeUnderflow, match="underflowed at t = ") as info:
        for _ in range(10**6):
            stepper.step()
    assert isinstance(info.value, RunError) and 0.99 < stepper.t < 1.01


def test_bad_tolerance_and_unknown_method():
    with pytest.raises(ValueError, match="rtol"):
        RungeKutta(lambda y: (y, None), np.ones((1, 1)), rtol=0.0)
    with pytest.raises(ValueError, match="unknown Runge–Kutta method 'rk99'; one of dopri5"):
        RungeKutta(lambda y: (y, None), np.ones((1, 1)), tableau="rk99")


# --------------------------------------------------------------------------- the NCF flow from w0


def _example1(D=2):
    X = torch.eye(2, dtype=F64)
    y = torch.tensor([4.0, 1.0], dtype=F64)
    return Diagonal(2, D), X, make_loss("square", "sum").ytilde(y)


@pytest.mark.parametrize("w0", [(1.0, 1.0), (0.2, 1.0), (-1.0, 0.5)], ids=["diagonal", "tilted", "mixed-sign"])
def test_ncf_flow_of_example1_converges_to_w_star(w0):
    """𝒩(u) = 8u1² + 2u2² on the sphere: from any w0 with w0_1 ≠ 0 the flow converges to
    w* = (sign w0_1, 0), 𝒩 = 8, and ln A = ln|w0_1| (φ = (w0_1 e^{16t}, w0_2 e^{4t}))."""
    arch, X, yt = _example1()
    u0 = np.array(w0) / np.linalg.norm(w0)
    flow = theory.ncf_flow_escape(arch, X, yt, torch.tensor(w0, dtype=F64))
    assert flow.reason == "converged" and flow.converged and flow.settled
    np.testing.assert_allclose(flow.direction, [np.sign(u0[0]), 0.0], atol=1e-7)
    assert flow.ncf == pytest.approx(8.0, rel=1e-12)
    assert flow.log_amplitude == pytest.approx(math.log(abs(u0[0])), abs=1e-7)
    assert flow.residual <= 1e-7 and 0 < flow.steps < 200 and flow.evaluations < 1500


def test_ncf_flow_of_a_quadratic_form():
    """𝒩(u) = uᵀAu (L_h = 2): φ(t) = e^{2At}w0, so θ → ±e_max, 𝒩 → λ_max and
    r(t) ≈ |⟨w0, e_max⟩|·e^{2λ_max t}, i.e. ln A = ln|⟨w0, e_max⟩| for a unit w0."""
    rng = np.random.default_rng(7)
    B = rng.standard_normal((6, 6))
    A = (B + B.T) / 2
    lam, vecs = np.linalg.eigh(A)
    w0 = rng.standard_normal(6)
    w0 /= np.linalg.norm(w0)
    flow = theory.ncf_flow(lambda u: (u @ A @ u, 2 * A @ u), 2, w0)
    assert flow.reason == "converged"
    assert flow.ncf == pytest.approx(lam[-1], rel=1e-12)
    assert abs(float(flow.direction @ vecs[:, -1])) == pytest.approx(1.0, abs=1e-12)
    assert flow.log_amplitude == pytest.approx(math.log(abs(float(w0 @ vecs[:, -1]))), abs=1e-7)


def test_gradient_flow_stepper_is_the_generic_one_with_dopri5():
    """flow.DormandPrince is RungeKutta with the DOPRI5 tableau, step for step."""
    from ncfkit.flow import DormandPrince

    rhs, _ = spiral()
    a = DormandPrince(rhs, np.array([[1.0, 0.5]]), rtol=1e-9)
    b = RungeKutta(rhs, np.array([[1.0, 0.5]]), rtol=1e-9, tableau="dopri5")
    for _ in range(20):
        a.step()
        b.step()
        assert a.t == b.t and np.array_equal(a.y, b.y)


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_ncf_flow_methods_agree(method):
    """Any tableau gives the same prediction (the cubic model, blow-up time 1/(3ỹ_1u_1))."""
    arch, X, yt = _example1(3)
    flow = theory.ncf_flow_escape(arch, X, yt, torch.tensor([1.0, 1.0], dtype=F64), method=method)
    assert flow.converged
    assert flow.blowup_time == pytest.approx(math.sqrt(2) / 24, rel=1e-7)


def test_ncf_flow_of_a_two_layer_square_net_reaches_the_closed_form_maximum():
    """2-layer x² net: 𝒩 = Σ_j v_j w_jᵀMw_j with M = Σ_i ỹ_i x_i x_iᵀ positive definite
    (ỹ > 0) has the one maximum (2/(3√3))λ_max(M), at one neuron with w_j = ±√(2/3)·e_max
    and v_j = 1/√3 (docs/theory.md §3); the flow from a random w0 ends there."""
    g = torch.Generator().manual_seed(3)
    n, d, width = 12, 3, 4
    X = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.rand(n, generator=g, dtype=F64) + 0.5
    arch = make_architecture("mlp", d, str(width), "square")
    yt = make_loss("square", "sum").ytilde(y)
    M = (X.T * yt) @ X
    lam, vecs = np.linalg.eigh(M.numpy())
    w0 = random_direction(arch.num_params, g, dtype=F64)
    flow = theory.ncf_flow_escape(arch, X, yt, w0)
    assert flow.reason == "converged"
    assert flow.ncf == pytest.approx(2 / (3 * math.sqrt(3)) * lam[-1], rel=1e-10)
    W1, v = flow.direction[: width * d].reshape(width, d), flow.direction[width * d:]
    j = int(np.argmax(np.abs(v)))
    assert v[j] == pytest.approx(1 / math.sqrt(3), abs=1e-6)
    assert abs(float(W1[j] @ vecs[:, -1])) == pytest.approx(math.sqrt(2 / 3), abs=1e-6)
    others = np.delete(np.arange(width), j)
    assert np.abs(W1[others]).max() < 1e-3 and np.abs(v[others]).max() < 1e-3
    # L_h = 3: the blow-up time of the flow from w0 exceeds the one along w* (1/(3𝒩))
    assert flow.blowup_time > 1 / (3 * flow.ncf)


def _relu_case():
    """A 2-layer ReLU net whose NCF flow from w0 ends at a kink: the old fixed-step RK4
    ran to its 20,000-step cap here (it never met its residual tolerance)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 3, generator=g, dtype=F64)
    y = torch.randn(20, generator=g, dtype=F64)
    arch = make_architecture("mlp", 3, "5", "relu")
    w0 = random_direction(arch.num_params, g, dtype=F64)
    return arch, X, make_loss("square", "sum").ytilde(y), w0


def test_ncf_flow_settles_at_a_relu_kink_in_bounded_steps():
    """The residual cannot reach tol at the kink (it stays at the size of the gradient's
    jump), yet the flow stops: the direction settled, in a bounded number of steps."""
    arch, X, yt, w0 = _relu_case()
    flow = theory.ncf_flow_escape(arch, X, yt, w0, max_steps=20000)
    assert flow.reason == "settled" and flow.settled and not flow.converged
    assert flow.residual > 1e-3  # a kink, not a smooth KKT point
    assert flow.steps < 10000 and flow.evaluations < 80000  # the RK4 cap: 20,000 steps, 80,000 gradients
    assert flow.ncf > 0 and math.isfinite(flow.escape_time(1e-2))


def test_ncf_flow_reports_the_cap():
    arch, X, yt, w0 = _relu_case()
    flow = theory.ncf_flow_escape(arch, X, yt, w0, max_steps=30)
    assert flow.reason == "max steps" and not flow.settled and flow.steps <= 30
    assert flow.evaluations < 2 * 4 * 30  # the gradient budget, and the rejections of the last step
