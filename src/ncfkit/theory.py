"""What the theory predicts for training from small initialization δ·w0 (docs/theory.md §2; Theorems 4 and 10).

- Escape time from the origin (Theorem 4 for L_h = 2, Theorem 10 for L_h > 2):

  .. math::

      T_{esc}(δ) ≈ \\frac{\\ln(1/δ)}{2\\mathcal N(w_*)} \\;(L_h = 2), \\qquad
      T_{esc}(δ) ≈ \\frac{δ^{2-L_h}}{L_h(L_h-2)\\mathcal N(w_*)} \\;(L_h > 2).

  The second is the blow-up time of the NCF flow along w*, exact to leading order when
  w0 = w*. Plotted against the regressor x(δ) = ln(1/δ) (resp. δ^{2−L_h}) the escape
  times lie on a line of slope 1/(2𝒩) (resp. 1/(L_h(L_h−2)𝒩)).
- Distance to the reference path p(t) after escape (eq. 6, eq. 8): O(δ^a) with
  a = Δ/(Δ + 8𝒩) (L_h = 2) or a = Δ/(2L_h²𝒩 + Δ) (L_h > 2); the same exponent bounds
  ‖ψ_wz‖ after escape (eq. 12, eq. 14).
- Sparsity before escape (Theorem 18, eq. 11, eq. 13): ‖ψ_wz‖/‖ψ‖ = O(δ^b) with
  b = 2Δ/(Δ + 8𝒩) (L_h = 2) or b = L_hΔ/(Δ + 2L_h²𝒩) (L_h > 2).
- Example 1 (Sec. 3.1, Appendix E): the diagonal model H = w1²x1 + w2²x2 on X = I,
  y = (4, 1), square loss (sum). Every coordinate solves the logistic equation
  d(w_k²)/dt = −8 w_k² (w_k² − y_k), so ψ has a closed form; see :func:`example1_psi`.
- The escape time from an arbitrary w0 (:func:`ncf_flow_escape`): the NCF flow from w0
  (eq. 5, Definition 2) in polar form on the Runge–Kutta stepper of :mod:`ncfkit.rk`, until
  its direction converges to a KKT point or settles at a kink of ReLU (:func:`ncf_flow`).

Every function takes floats or numpy arrays and returns the same; ``ncf`` is 𝒩(w*),
``Delta`` the Δ of a Δ-second-order KKT point, ``L_h`` the order of homogeneity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "escape_time", "escape_regressor", "escape_slope", "escape_slope_gd", "path_distance_exponent",
    "sparsity_exponent", "LineFit", "fit_line", "fit_escape_times", "fit_power_law",
    "EXAMPLE1", "example1_psi", "example1_reference_path", "example1_loss",
    "example1_grad_norm", "diagonal_identity_flow", "NcfFlowEscape", "ncf_flow_escape", "ncf_flow",
]


def _check_order(L_h: float) -> float:
    L_h = float(L_h)
    if not L_h >= 2:
        raise ValueError(f"the escape theory needs L_h >= 2 (got {L_h})")
    return L_h


def escape_regressor(delta, L_h: float):
    """x(δ) against which escape times are linear: ln(1/δ) (L_h = 2) or δ^{2−L_h}.

    >>> escape_regressor(1e-2, 3)
    100.0
    """
    L_h = _check_order(L_h)
    delta = np.asarray(delta, dtype=float)
    x = np.log(1.0 / delta) if L_h == 2 else delta ** (2.0 - L_h)
    return float(x) if x.ndim == 0 else x


def escape_slope(ncf: float, L_h: float) -> float:
    """Predicted slope dT_esc/dx: 1/(2𝒩) (Theorem 4) or 1/(L_h(L_h−2)𝒩) (Theorem 10).

    ``inf`` for 𝒩 ≤ 0 (a zero or negative KKT point: no escape is predicted).

    >>> escape_slope(8.0, 2)
    0.0625
    """
    L_h = _check_order(L_h)
    if not ncf > 0:
        return math.inf
    return 1.0 / (2.0 * ncf) if L_h == 2 else 1.0 / (L_h * (L_h - 2.0) * ncf)


def escape_slope_gd(ncf: float, L_h: float, lr: float) -> float | None:
    """The slope gradient descent with step η should show (L_h = 2 only; None otherwise).

    Near the origin ∇𝓛(c w*) ≈ −2𝒩 c w*, so GD multiplies the component along w* by
    (1 + 2𝒩η) per step instead of e^{2𝒩η}: T_esc = η ln(1/δ) / ln(1 + 2𝒩η) + O(1), i.e.
    slope η / ln(1 + 2𝒩η) → 1/(2𝒩) as η → 0.

    >>> round(escape_slope_gd(8.0, 2, 1e-3), 6)
    0.062999
    """
    if L_h != 2 or not ncf > 0:
        return None
    return lr / math.log1p(2.0 * ncf * lr)


def escape_time(delta, ncf: float, L_h: float):
    """Leading-order escape time slope × x(δ) (Theorems 4 and 10); no O(1) constant.

    >>> round(escape_time(1e-3, 8.0, 2), 6)   # ln(1000)/16
    0.431735
    """
    return escape_slope(ncf, L_h) * escape_regressor(delta, L_h)


def path_distance_exponent(Delta: float, ncf: float, L_h: float) -> float:
    """a in ‖ψ(t + shift, δw0) − p(t)‖ = O(δ^a): Δ/(Δ+8𝒩) (eq. 6) or Δ/(2L_h²𝒩+Δ) (eq. 8).

    >>> round(path_distance_exponent(12.0, 8.0, 2), 6)   # Example 1: 12/76
    0.157895
    """
    L_h = _check_order(L_h)
    if L_h == 2:
        return Delta / (Delta + 8.0 * ncf)
    return Delta / (2.0 * L_h**2 * ncf + Delta)


def sparsity_exponent(Delta: float, ncf: float, L_h: float) -> float:
    """b in ‖ψ_wz‖/‖ψ‖ = O(δ^b) before escape (Theorem 18, eq. 11 and eq. 13):
    2Δ/(Δ+8𝒩) (L_h = 2) or L_hΔ/(Δ+2L_h²𝒩) (L_h > 2)."""
    L_h = _check_order(L_h)
    if L_h == 2:
        return 2.0 * Delta / (Delta + 8.0 * ncf)
    return L_h * Delta / (Delta + 2.0 * L_h**2 * ncf)


# --------------------------------------------------------------------------- fits


@dataclass(frozen=True)
class LineFit:
    """Least-squares line y ≈ slope·x + intercept over ``n`` points, with r²."""

    slope: float
    intercept: float
    r2: float
    n: int


def fit_line(x, y) -> LineFit:
    """Ordinary least squares of y on x (at least two distinct x).

    >>> round(fit_line([0, 1, 2], [1, 3, 5]).slope, 12)
    2.0
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("fit_line needs two 1-D arrays of equal length")
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("fit_line needs at least two distinct x values")
    A = np.column_stack([x, np.ones_like(x)])
    (slope, intercept), *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - (slope * x + intercept)
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss if ss > 0 else 1.0
    return LineFit(float(slope), float(intercept), r2, int(x.size))


def fit_escape_times(deltas, times, L_h: float) -> LineFit:
    """Fit observed escape times against x(δ) (:func:`escape_regressor`); compare the
    slope with :func:`escape_slope`."""
    return fit_line(escape_regressor(np.asarray(deltas, dtype=float), L_h), times)


def fit_power_law(deltas, values) -> LineFit:
    """Empirical exponent e in value ≈ C·δ^e: a line fit of ln(value) on ln(δ)."""
    return fit_line(np.log(np.asarray(deltas, dtype=float)), np.log(np.asarray(values, dtype=float)))


# --------------------------------------------------------------------------- Example 1


def diagonal_identity_flow(t, y, w0):
    """Gradient flow of 𝓛(w) = Σ_k (w_k² − y_k)² (diagonal model D = 2 on X = I, square
    loss, sum) from ``w0``: each u_k = w_k² solves u̇ = −8u(u − y_k), so

    .. math::  w_k(t)^2 = \\frac{y_k u_k}{u_k + (y_k − u_k) e^{−8 y_k t}}, \\quad u_k = w_k(0)^2.

    ``t`` of shape (m,) (or a scalar); returns shape (m, d) (or (d,)).

    >>> diagonal_identity_flow(0.0, [4.0, 1.0], [0.5, 0.5]).tolist()
    [0.5, 0.5]
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    w0 = np.asarray(w0, dtype=float)
    u0 = w0**2
    tt = t[..., None]
    with np.errstate(over="ignore"):
        u = y * u0 / (u0 + (y - u0) * np.exp(-8.0 * y * tt))
    return np.sign(w0) * np.sqrt(u)


#: Example 1 of the paper (Sec. 3.1; docs/theory.md §3): data, NCF value, Δ, w*, the saddle and the minimum.
EXAMPLE1 = {
    "X": np.eye(2),
    "y": np.array([4.0, 1.0]),
    "ncf": 8.0,
    "Delta": 12.0,
    "w_star": np.array([1.0, 0.0]),
    "w0": np.array([1.0, 1.0]) / math.sqrt(2.0),
    "saddle": np.array([2.0, 0.0]),
    "minimum": np.array([2.0, 1.0]),
    "loss0": 17.0,
    "saddle_loss": 1.0,
}


def example1_psi(t, delta: float, w0=None):
    """ψ(t, δw0) of Example 1; with the default w0 = (1/√2, 1/√2) this is
    (2δ/√(δ² + (8−δ²)e^{−32t}), δ/√(δ² + (2−δ²)e^{−8t})) (Appendix E)."""
    w0 = EXAMPLE1["w0"] if w0 is None else np.asarray(w0, dtype=float)
    return diagonal_identity_flow(t, EXAMPLE1["y"], delta * w0)


def example1_reference_path(t):
    """p(t) = (2/√(1 + 4e^{−32t}), 0) = lim_{δ→0} ψ(t + ln(1/δ)/16, δw*) (Appendix E)."""
    t = np.asarray(t, dtype=float)
    p1 = 2.0 / np.sqrt(1.0 + 4.0 * np.exp(-32.0 * t))
    return np.stack([p1, np.zeros_like(p1)], axis=-1)


def example1_loss(w):
    """𝓛(w) = (w1² − 4)² + (w2² − 1)² (eq. 7), over the last axis."""
    w = np.asarray(w, dtype=float)
    return ((w**2 - EXAMPLE1["y"]) ** 2).sum(-1)


def example1_grad_norm(w):
    """‖∇𝓛(w)‖ with ∂𝓛/∂w_k = 4w_k(w_k² − y_k)."""
    w = np.asarray(w, dtype=float)
    return np.linalg.norm(4.0 * w * (w**2 - EXAMPLE1["y"]), axis=-1)


# --------------------------------------------------------------------------- NCF flow from w0


@dataclass(frozen=True)
class NcfFlowEscape:
    """Leading-order escape time of ψ(·, δw0) from the NCF flow u̇ = ∇𝒩(u) (eq. 5) started
    at w0 itself, not at w* (:func:`ncf_flow_escape`).

    Near the origin ψ(t, δw0) ≈ φ(t, δw0). Write φ = r·θ with ‖θ‖ = 1 and a new clock
    ds = r^{L_h−2} dt: then θ' = ∇𝒩(θ) − L_h𝒩(θ)θ (the projected flow of Definition 2,
    independent of r) and (ln r)' = L_h𝒩(θ). For L_h > 2 the flow from w0 blows up at
    ``blowup_time`` T_b = ∫ r^{2−L_h} ds, so T_esc(δ) ≈ δ^{2−L_h}·T_b; for L_h = 2,
    r(t) ≈ A e^{2𝒩(w*)t} with ``log_amplitude`` ln A, so T_esc(δ) ≈ (ln(1/δ) − ln A)/(2𝒩(w*)).
    For w0 = w* both reduce to :func:`escape_time` (T_b = 1/(L_h(L_h−2)𝒩), A = 1).

    ``reason`` says why the integration stopped: ``converged`` (the KKT residual
    ‖θ'‖ ≤ tol·L_h|𝒩|; then ``converged`` is True), ``settled`` (the direction stopped
    moving although the residual cannot reach tol, as at a kink of ReLU), ``max steps``,
    ``budget`` (the gradient cap ``max_evals``) or ``step underflow``. ``residual`` is
    ‖θ'‖/(L_h|𝒩|) at ``direction``, ``steps`` the accepted steps and ``evaluations`` the
    gradients of 𝒩 computed.
    """

    L_h: float
    ncf: float  # 𝒩 at the limit direction θ(∞)
    blowup_time: float | None  # L_h > 2
    log_amplitude: float | None  # L_h = 2
    converged: bool
    steps: int
    direction: np.ndarray | None = field(default=None, repr=False)  # θ at the end (k,)
    reason: str = "converged"
    residual: float = math.nan
    evaluations: int = 0

    @property
    def settled(self) -> bool:
        """The direction has stopped moving: converged, or settled at a kink."""
        return self.reason in ("converged", "settled")

    def escape_time(self, delta):
        if not self.ncf > 0:
            return math.inf
        if self.L_h == 2:
            return (np.log(1.0 / np.asarray(delta, dtype=float)) - self.log_amplitude) / (2 * self.ncf)
        return np.asarray(delta, dtype=float) ** (2.0 - self.L_h) * self.blowup_time


def ncf_flow_escape(arch, X, ytilde, w0, *, tol: float = 1e-7, max_steps: int = 200_000,
                    rtol: float | None = None, settle_tol: float = 1e-4, window: float = 1.0,
                    method: str = "dopri5", engine: str = "auto", max_evals: int | None = None,
                    progress=None) -> NcfFlowEscape:
    """:func:`ncf_flow` for the NCF 𝒩(u) = ỹᵀH(X; u) of a network: integrate the NCF flow
    from the direction ``w0`` until θ stops moving, then add the analytic tail along θ(∞).

    Args:
        arch, X, ytilde: the network, data and ỹ.
        w0: the initial direction (k,), any norm (numpy array or tensor).
        rtol: the integrator's tolerance: by default 1e-8, and 1e-5 for an activation
            with a kink (ReLU, leaky ReLU): where θ crosses a kink ∇𝒩 jumps, the local
            error is first order in the step, and the steps shrink in proportion to the
            tolerance.
        engine: ∇𝒩's engine (:func:`ncfkit.fastgd.ncf_value_and_grad_fn`), on the host in
            numpy (the state is one vector; torch's per-operation overhead would dominate).
        tol, max_steps, settle_tol, window, method, max_evals, progress: as in :func:`ncf_flow`.

    Returns:
        :class:`NcfFlowEscape`; its ``direction`` is a float64 numpy array.
    """
    from .arrays import to_numpy
    from .fastgd import ncf_value_and_grad_fn

    if rtol is None:
        rtol = 1e-5 if _has_kink(arch) else 1e-8
    value_and_grad = ncf_value_and_grad_fn(arch, X, ytilde, engine, host=True)
    return ncf_flow(value_and_grad, arch.homogeneity, to_numpy(w0), tol=tol, max_steps=max_steps, rtol=rtol,
                    settle_tol=settle_tol, window=window, method=method, max_evals=max_evals, progress=progress)


def ncf_flow(value_and_grad, L_h: float, w0, *, tol: float = 1e-7, max_steps: int = 200_000,
             rtol: float = 1e-8, settle_tol: float = 1e-4, window: float = 1.0,
             method: str = "dopri5", max_evals: int | None = None, progress=None) -> NcfFlowEscape:
    """Integrate the NCF flow u̇ = ∇𝒩(u) of a 𝒩 homogeneous of order ``L_h`` (given by
    ``value_and_grad(u) -> (𝒩(u), ∇𝒩(u))``) from the direction ``w0`` until its direction
    θ stops moving, then add the analytic tail along θ(∞) (:class:`NcfFlowEscape`).

    The state (θ, ρ = ln r, t) evolves in the clock s (see :class:`NcfFlowEscape`) under
    the adaptive Runge–Kutta stepper of :mod:`ncfkit.rk` (``method``, a name in
    :data:`ncfkit.rk.TABLEAUX`); θ is put back on the sphere after each step (the flow
    leaves ‖θ‖ unchanged). The local error of θ is held to ``rtol`` in the Euclidean norm
    (θ is a unit vector), those of ρ and t to ``rtol`` of their size. It stops at the
    first of:

    - **converged**: the relative KKT residual ε = ‖θ'‖/(L_h|𝒩|) ≤ ``tol`` (Lemma 20), at
      an accepted point or at the midpoint of the last two (an explicit method at its
      stability bound oscillates about the limit from step to step);
    - **settled**: at the end of a window of at least ``window`` time units 1/(L_h|𝒩|)
      and 8 steps, the direction (the midpoint of the last two accepted points, which
      cancels that oscillation) has moved m ≤ ``settle_tol`` while ε at the midpoint is
      still ≥ 10m: near a smooth maximum ε is about (Δ/L_h𝒩)·distance and the move
      about min(ε, distance), so this is θ chattering across a kink of ReLU, where ε
      cannot reach ``tol``; or the direction contracts geometrically to a limit at most
      ``tol`` away (estimated from the last two windows' displacements m₁, m₂ as
      m₂q/(1 − q), q = m₂/m₁ < 1);
    - **max steps** accepted steps or 4·``max_steps`` gradients (what ``max_steps``
      classical RK4 steps cost), or a **step underflow** of the integrator;
    - **budget**: ``max_evals`` gradients computed (a cost cap that does not depend on the
      machine's speed, so the result is the same everywhere: :func:`ncfkit.escape.governing_budget`).

    Args:
        value_and_grad: 𝒩 and its gradient at a unit vector (numpy in, numpy out).
        L_h: the order of homogeneity of 𝒩.
        w0: the initial direction (k,), any norm (a numpy array).
        tol: the relative KKT residual of convergence.
        max_steps: the most accepted steps (and a quarter of the most gradients).
        rtol: the integrator's tolerance.
        settle_tol, window: the settling rule (above).
        method: the Runge–Kutta tableau.
        max_evals: the most gradients (None: no cap beyond ``max_steps``).
        progress: called as ``progress(evaluations, cap, residual)`` after each accepted step.

    Returns:
        :class:`NcfFlowEscape`; its ``direction`` is a float64 numpy array.
    """
    from .rk import RungeKutta, StepSizeUnderflow

    L_h = float(L_h)
    theta0 = np.asarray(w0, dtype=np.float64).ravel()
    k = theta0.size

    def ncf_and_residual(th):  # in the data's dtype inside value_and_grad, float64 here
        val, grad = value_and_grad(th)
        val, grad = float(val), np.asarray(grad, dtype=float)
        tangent = grad - (th @ grad) * th  # θ' = ∇𝒩 − L_h𝒩θ by Euler's identity
        return val, tangent, float(np.linalg.norm(tangent)) / max(L_h * abs(val), 1e-300)

    def rhs(y):  # y = (θ, ρ, t); θ' depends on θ/‖θ‖ only
        val, tangent, _ = ncf_and_residual(y[:k] / np.linalg.norm(y[:k]))
        dy = np.empty_like(y)
        dy[:k] = tangent
        dy[k] = L_h * val
        dy[k + 1] = math.exp(min((2.0 - L_h) * y[k], 700.0))  # dt/ds = r^{2−L_h} (capped: 𝒩 < 0 shrinks r)
        return dy, val

    def norm(e):  # e = error / (rtol·(1 + |y|)) entrywise: θ in the Euclidean norm
        return float(max(np.linalg.norm(e[:k]), abs(e[k]), abs(e[k + 1])))

    y0 = np.concatenate([theta0 / np.linalg.norm(theta0), [0.0, 0.0]])
    stepper = RungeKutta(rhs, y0, rtol=rtol, atol=rtol, tableau=method, norm=norm, hold_after_reject=True)
    watch = _SettleWatch(y0[:k], window, settle_tol, tol)
    theta, ncf, n_extra = y0[:k], float(stepper.aux), 0
    res = float(np.linalg.norm(stepper.f[:k])) / max(L_h * abs(ncf), 1e-300)
    reason = "converged" if res <= tol else "max steps"
    cap = 4 * max_steps if max_evals is None else min(4 * max_steps, max(int(max_evals), 1))
    while reason == "max steps" and stepper.n_accepted < max_steps and stepper.n_evals < cap:
        try:
            stepper.step()
        except StepSizeUnderflow:
            reason = "step underflow"
            break
        stepper.y[:k] /= np.linalg.norm(stepper.y[:k])
        theta, ncf = stepper.y[:k], float(stepper.aux)
        speed = float(np.linalg.norm(stepper.f[:k]))
        res = speed / max(L_h * abs(ncf), 1e-300)
        if progress is not None:
            progress(stepper.n_evals + n_extra, cap, res)
        if res <= tol:
            reason = "converged"
            break
        h = stepper.t - stepper.t_prev
        if watch.update(h * max(L_h * abs(ncf), speed)):
            mid = stepper.y_prev[:k] + theta
            mid /= np.linalg.norm(mid)
            ncf_m, _, res_m = ncf_and_residual(mid)
            n_extra += 1
            if res_m <= tol or watch.settled(mid, res_m):
                theta, ncf, res, reason = mid, ncf_m, res_m, "converged" if res_m <= tol else "settled"
    if reason == "max steps" and max_evals is not None and cap < 4 * max_steps and stepper.n_evals >= cap:
        reason = "budget"
    rho, t = float(stepper.y[k]), float(stepper.y[k + 1])
    steps, evals = stepper.n_accepted, stepper.n_evals + n_extra
    theta, converged = np.array(theta), reason == "converged"
    if L_h == 2:
        log_amp = rho - 2.0 * ncf * t if ncf > 0 else None
        return NcfFlowEscape(L_h, ncf, None, log_amp, converged, steps, theta, reason, res, evals)
    tail = math.exp((2.0 - L_h) * rho) / ((L_h - 2.0) * L_h * ncf) if ncf > 0 else math.inf
    return NcfFlowEscape(L_h, ncf, t + tail, None, converged, steps, theta, reason, res, evals)


def _has_kink(arch) -> bool:
    """Whether ∇𝒩 jumps somewhere: a piecewise-linear activation other than the identity."""
    act = getattr(arch, "act", None)
    return act is not None and getattr(act, "p", None) == 1 and getattr(act, "alpha", 1.0) != 1.0


class _SettleWatch:
    """The settling rule of :func:`ncf_flow`: the direction's displacement over
    windows of at least ``window`` natural time units and 8 accepted steps."""

    def __init__(self, theta: np.ndarray, window: float, settle_tol: float, tol: float) -> None:
        self.window, self.settle_tol, self.tol = window, settle_tol, tol
        self.anchor, self.elapsed, self.steps = theta.copy(), 0.0, 0
        self.last_m = math.inf  # the previous window's displacement

    def update(self, dtau: float) -> bool:
        """Account for one accepted step of natural time ``dtau``; True at the end of a
        window (then call :meth:`settled`)."""
        self.elapsed += dtau
        self.steps += 1
        return self.elapsed >= self.window and self.steps >= 8

    def settled(self, theta: np.ndarray, res: float) -> bool:
        """Close the window at direction ``theta`` with relative residual ``res``."""
        m = float(np.linalg.norm(theta - self.anchor))
        q = m / self.last_m if 0 < self.last_m < math.inf else math.inf
        left = m * q / (1.0 - q) if q < 1.0 else math.inf
        self.anchor, self.elapsed, self.steps, self.last_m = theta.copy(), 0.0, 0, m
        return (m <= self.settle_tol and res >= 10.0 * m) or left <= self.tol
