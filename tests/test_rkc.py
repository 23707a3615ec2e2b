"""The Runge–Kutta–Chebyshev stepper (ncfkit.rk.ChebyshevRK) and the stiffness-switching
stepper that ``--method flow`` runs (ncfkit.rk.SwitchingStepper): the method's stability
polynomial against the Chebyshev construction (order 2, |R| ≤ 1 on [−β(s), 0]), its
measured order, and both steppers against closed forms of stiff linear and nonlinear
flows, in float64."""

import math

import numpy as np
import pytest
import scipy.linalg as sl

from ncfkit.rk import ChebyshevRK, RungeKutta, SwitchingStepper, rkc_coefficients


def stability_polynomial(s: int, z: np.ndarray) -> np.ndarray:
    """R(z) of the s-stage method: one step of y' = λy with hλ = z from y = 1, through the
    method's own recurrence (ChebyshevRK.step with a fixed stage count)."""
    mu, nu, mut, gamt, _ = rkc_coefficients(s)
    y0 = np.ones_like(z)
    y_jm2, y_jm1 = y0, y0 + mut[1] * z * y0
    for j in range(2, s + 1):
        y_j = (1 - mu[j] - nu[j]) * y0 + mu[j] * y_jm1 + nu[j] * y_jm2 + mut[j] * z * y_jm1 + gamt[j] * z * y0
        y_jm2, y_jm1 = y_jm1, y_j
    return y_jm1


@pytest.mark.parametrize("s", [2, 3, 5, 10, 40, 150])
def test_stability_polynomial_is_second_order_and_bounded_on_the_stability_interval(s):
    _, _, _, _, beta = rkc_coefficients(s)
    # β(s) ≈ (2/3)(s² − 1)(1 − (2/15)ε) for damping ε = 2/13 (Sommeijer, Shampine & Verwer 1998)
    assert beta == pytest.approx(2 / 3 * (s * s - 1) * (1 - 2 / 15 * 2 / 13), rel=0.02)
    z = -np.linspace(0.0, beta, 20001)
    assert np.abs(stability_polynomial(s, z)).max() <= 1.0 + 1e-9
    # second order: R(z) − (1 + z + z²/2) = O(z³)
    for zz in (1e-2, 1e-3):
        r = float(stability_polynomial(s, np.array([-zz]))[0])
        assert abs(r - (1 - zz + zz * zz / 2)) <= 2 * s ** 4 * zz**3


def fixed_step_error(stages_rho: float, h: float) -> float:
    """Global error at t = 2 of the logistic y' = y(1 − y), y(0) = 0.1, in fixed steps h,
    with the stage count that a spectral radius ``stages_rho`` asks for."""
    stepper = ChebyshevRK(lambda y: (y * (1 - y), None), np.full((1, 1), 0.1), rtol=1e10, atol=1e10, h0=h)
    stepper.rho, stepper.rho_every = stages_rho, 10**9
    while stepper.t < 2 - 1e-12:
        stepper.h = min(h, 2 - stepper.t)
        stepper.step()
    return abs(float(stepper.y[0, 0]) - 1 / (1 + 9 * math.exp(-2)))


@pytest.mark.parametrize("rho", [1.0, 1e3])  # 2 stages, and 7-13
def test_measured_order_is_two(rho):
    errors = [fixed_step_error(rho, h) for h in (0.1, 0.05, 0.025)]
    orders = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:], strict=True)]
    assert all(1.8 < p < 2.3 for p in orders), orders


def stiff_linear(n: int = 20, lam_max: float = 1e3, seed: int = 0):
    """y' = −A(y − y*), A symmetric with eigenvalues 0.3 … lam_max (a gradient flow of a
    quadratic): y(t) = y* + e^{−At}(y0 − y*)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = Q @ np.diag(np.geomspace(0.3, lam_max, n)) @ Q.T
    y_star = rng.standard_normal(n)
    return (lambda y: (-(y - y_star) @ A, None)), (lambda t, y0: y_star + sl.expm(-A * t) @ (y0 - y_star)), A


def integrate(stepper, T: float):
    while stepper.t < T - 1e-12:
        stepper.h_max = T - stepper.t
        stepper.step()
    return stepper


@pytest.mark.parametrize("rtol", [1e-5, 1e-7])
def test_rkc_meets_its_tolerance_on_a_stiff_flow_with_far_fewer_gradients(rtol):
    rhs, exact, A = stiff_linear(lam_max=1e4)
    y0 = np.ones((1, A.shape[0]))
    rkc = integrate(ChebyshevRK(rhs, y0, rtol=rtol), 5.0)
    dp = integrate(RungeKutta(rhs, y0, rtol=rtol), 5.0)
    ref = exact(5.0, y0[0])
    assert np.abs(rkc.y[0] - ref).max() <= 50 * rtol * np.abs(ref).max()
    # the spectral radius estimate: λ_max within the power method's 1 % (×1.2 safety)
    assert rkc.rho == pytest.approx(1.2 * np.linalg.eigvalsh(A).max(), rel=0.02)
    assert rkc.n_evals * 2 < dp.n_evals


def test_switching_stepper_goes_to_rkc_when_stiff_and_back_when_not():
    """y' = −k(c)(y − 1), c' = 1, k(c) = 10⁴e^{−10c}, beside an oscillator u' = v, v' = −u:
    stiff at first, then only the oscillator is left, which a second-order method with
    real stability needs short steps for. y(t) = 1 + (y0 − 1)·exp(−1000(1 − e^{−10t})),
    u = cos t. A batch of two starts."""
    def rhs(y):
        k = 1e4 * np.exp(-10 * y[:, 1:2])
        return np.concatenate([-k * (y[:, :1] - 1.0), np.ones_like(y[:, 1:2]), y[:, 3:4], -y[:, 2:3]], axis=1), None

    y0 = np.array([[0.0, 0.0, 1.0, 0.0], [3.0, 0.0, 1.0, 0.0]])
    T = 20.0
    stepper = integrate(SwitchingStepper(rhs, y0, rtol=1e-7, atol=1e-9), T)
    exact = 1 + (y0[:, 0] - 1) * math.exp(-1000 * (1 - math.exp(-10 * T)))
    assert np.allclose(stepper.y[:, 0], exact, rtol=0, atol=1e-6)
    assert stepper.y[0, 1] == pytest.approx(T, rel=1e-12)
    assert np.allclose(stepper.y[:, 2], math.cos(T), rtol=0, atol=1e-5)
    methods = [m for _, m in stepper.switches]
    assert methods[:2] == ["rkc", "dopri5"], stepper.switches
    dp = integrate(RungeKutta(rhs, y0, rtol=1e-7, atol=1e-9), T)
    assert stepper.n_evals < dp.n_evals
    assert stepper.n_accepted > 0 and stepper.n_evals >= stepper.n_accepted


def test_switching_stepper_keeps_dense_output_and_drops_rows():
    rhs, exact, A = stiff_linear(n=8, lam_max=200.0)
    y0 = np.stack([np.ones(8), -np.ones(8), np.linspace(-1, 1, 8)])
    stepper = SwitchingStepper(rhs, y0, rtol=1e-8)
    while stepper.method == "dopri5":
        stepper.step()
    stepper.step()  # an RKC step: dense output is the cubic Hermite interpolant
    mid = stepper.dense(0.5)
    t_mid = 0.5 * (stepper.t_prev + stepper.t)
    for b in range(3):
        assert np.abs(mid[b] - exact(t_mid, y0[b])).max() <= 1e-5 * np.abs(y0[b]).max()
    stepper.drop_rows(np.array([True, False, True]))
    assert stepper.y.shape == (2, 8) and stepper.f.shape == (2, 8)
    integrate(stepper, stepper.t + 1.0)
    ref = exact(stepper.t, y0[2])
    assert np.abs(stepper.y[1] - ref).max() <= 1e-6 * np.abs(ref).max()
