"""Explicit embedded Runge–Kutta methods: one adaptive stepper, each method only its tableau.

A method is its Butcher tableau (:class:`ButcherTableau`: nodes ``c``, matrix ``a``, the
weights ``b`` of the solution that is kept and ``b_low`` of the embedded one, and where
it has one the continuous extension ``dense``), and :class:`RungeKutta` runs any of them
on ẏ = rhs(y) (autonomous), as torchdiffeq's ``rk_common`` runs its ``dopri5`` tables:

- stage i: y_i = y + h Σ_{j<i} a_ij k_j, k_i = rhs(y_i); the new point
  y + h Σ b_i k_i (for a first-same-as-last method it is the last stage's point, and its
  slope is the next step's k_0);
- the local error estimate h Σ (b_i − b̂_i) k_i, scaled entrywise by
  ``atol + rtol·max(|y|, |y_new|)`` and measured by ``norm`` (default: the RMS over the
  last axis, worst row of a batch), accepts the step when ≤ 1; the next step is
  h·clip(0.9·err^{−1/(q+1)}), q the lower of the pair's two orders (Hairer, Nørsett &
  Wanner, *Solving ODEs I*, II.4);
- dense output y(t_prev + θh) = y_prev + h Σ_i k_i (P θ⃗)_i with θ⃗ = (θ, θ², …), from the
  tableau's continuous extension, or the cubic Hermite interpolant of the step's end
  points and slopes where the tableau has none;
- a step size that falls to round-off raises :class:`StepSizeUnderflow` (a
  :class:`ncfkit.errors.RunError`).

The state lives on the host in numpy: a step is a few small matrix products, which cost
numpy a few µs each (eager torch ~10 µs each, more than the gradient of the paper's
networks). Textbook names: ``t``, ``y``, ``h``; ``rhs(y) -> (ẏ, aux)``, where ``aux``
(for example the loss) rides along so callers get it at every accepted point for free.

:data:`TABLEAUX` maps names to methods: ``dopri5`` (Dormand & Prince 1980, 5(4), FSAL,
4th-order dense output as in dopri5 and scipy's RK45), ``bosh3`` (Bogacki & Shampine
1989, 3(2), FSAL, 3rd-order dense output as in scipy's RK23) and ``heun_euler`` (2(1),
no FSAL, no dense output: the generic branches of the stepper).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import RunError

__all__ = ["ButcherTableau", "DOPRI5", "BOSH3", "HEUN_EULER", "TABLEAUX", "RungeKutta", "ChebyshevRK",
           "SwitchingStepper", "StepSizeUnderflow", "rms_norm", "hermite", "rkc_coefficients"]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit embedded Runge–Kutta pair.

    ``a[i]`` holds the i coefficients a_i0 … a_i,i−1 of stage i; ``b`` are the weights of
    the solution of order ``order`` that is kept, ``b_low`` those of the embedded solution
    of order ``order_low``; ``fsal``: the last stage is evaluated at the new point (its
    row of ``a`` equals ``b``); ``dense``: rows P_i (one per stage) of the continuous
    extension, or None.
    """

    name: str
    order: int
    order_low: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_low: tuple[float, ...]
    fsal: bool = False
    dense: tuple[tuple[float, ...], ...] | None = None

    @property
    def stages(self) -> int:
        return len(self.c)

    def matrix(self) -> np.ndarray:
        """a as a full (s, s) strictly lower-triangular matrix (float64)."""
        A = np.zeros((self.stages, self.stages))
        for i, row in enumerate(self.a):
            A[i, : len(row)] = row
        return A

    def error_weights(self) -> np.ndarray:
        """e = b − b̂ (s,): the local error estimate is h Σ e_i k_i."""
        return np.asarray([b - bl for b, bl in zip(self.b, self.b_low, strict=True)])


DOPRI5 = ButcherTableau(
    name="dopri5", order=5, order_low=4, fsal=True,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    b_low=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    # the 4th-order continuous extension of Hairer, Nørsett & Wanner's dopri5 (scipy's RK45.P)
    dense=(
        (1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
        (0.0, 0.0, 0.0, 0.0),
        (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799),
        (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
        (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632),
        (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
        (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423),
    ),
)

BOSH3 = ButcherTableau(
    name="bosh3", order=3, order_low=2, fsal=True,
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_low=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    # the cubic Hermite interpolant written on the stages (scipy's RK23.P)
    dense=((1.0, -4 / 3, 5 / 9), (0.0, 1.0, -2 / 3), (0.0, 4 / 3, -8 / 9), (0.0, -1.0, 1.0)),
)

HEUN_EULER = ButcherTableau(
    name="heun_euler", order=2, order_low=1,
    c=(0.0, 1.0), a=((), (1.0,)), b=(1 / 2, 1 / 2), b_low=(1.0, 0.0),
)

#: The methods by name.
TABLEAUX: dict[str, ButcherTableau] = {t.name: t for t in (DOPRI5, BOSH3, HEUN_EULER)}


class StepSizeUnderflow(RunError):
    """The integrator could not meet its tolerance: the step fell below round-off."""


def rms_norm(scaled_error: np.ndarray) -> float:
    """The default error norm: RMS over the last axis, the worst row of a batch."""
    return float(np.sqrt(np.mean(scaled_error * scaled_error, axis=-1)).max())


def hermite(theta: float, h: float, y0: np.ndarray, f0: np.ndarray, y1: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """The cubic Hermite interpolant of the end points ``y0``, ``y1`` and slopes ``f0``, ``f1``
    of a step of length h, at the fraction θ of the step (3rd order)."""
    h00, h10 = (1 + 2 * theta) * (1 - theta) ** 2, theta * (1 - theta) ** 2
    h01, h11 = theta * theta * (3 - 2 * theta), theta * theta * (theta - 1)
    return h00 * y0 + h01 * y1 + h * (h10 * f0 + h11 * f1)


def _row_norms(a: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, a.shape[-1])
    return np.sqrt((a * a).sum(-1))


class RungeKutta:
    """Adaptive stepper for ẏ = rhs(y), y of shape (B, k) (a batch of B trajectories
    advanced with one shared step size) or (k,), by the method ``tableau``.

    Args:
        rhs: ``rhs(y) -> (ẏ, aux)``.
        y0: the initial state.
        t0: the initial time.
        rtol, atol: the error tolerances. ``atol``: a scalar, a (B,) array (one per row),
            an array that broadcasts against y (e.g. (1, k), one per component), or 0: a
            tiny fraction of each row's initial size, so the control stays relative
            even for a start of norm 1e-6.
        h0: the first step (default: Hairer–Wanner's heuristic); ``h_max``: the longest.
        tableau: a :class:`ButcherTableau` or a name in :data:`TABLEAUX`.
        norm: the error norm of the scaled error estimate (default :func:`rms_norm`).
        hold_after_reject: a step accepted after a rejection does not let the next one
            grow (Hairer–Wanner's dopri5 and scipy do this; it saves retries where the
            right-hand side has a kink).

    After each :meth:`step`, ``t``, ``y``, ``f`` (= ẏ at y) and ``aux`` describe the new
    accepted point, ``t_prev``, ``y_prev``, ``f_prev``, ``aux_prev`` the previous one,
    ``stages`` (s, *y.shape) the step's slopes, and :meth:`dense` any point in between.
    ``n_accepted``, ``n_rejected`` and ``n_evals`` (calls of rhs) count the work.

    Raises:
        ValueError: rtol is not > 0, or the method has no tableau.
        StepSizeUnderflow: from :meth:`step`, when the step size falls to round-off.

    y' = −y from y(0) = 1 to t = 1 (e^{−1} = 0.367879441…):

    >>> stepper = RungeKutta(lambda y: (-y, None), np.ones((1, 1)), rtol=1e-10)
    >>> while stepper.t < 1.0 - 1e-12:
    ...     stepper.h_max = 1.0 - stepper.t
    ...     stepper.step()
    >>> round(float(stepper.y[0, 0]), 9)
    0.367879441
    """

    def __init__(
        self, rhs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], y0: np.ndarray,
        t0: float = 0.0, rtol: float = 1e-8, atol: float | np.ndarray = 0.0,
        h0: float | None = None, h_max: float = float("inf"), *,
        tableau: ButcherTableau | str = DOPRI5, norm: Callable[[np.ndarray], float] = rms_norm,
        hold_after_reject: bool = False,
    ) -> None:
        if not rtol > 0:
            raise ValueError("rtol must be > 0")
        if isinstance(tableau, str) and tableau not in TABLEAUX:
            raise ValueError(f"unknown Runge–Kutta method {tableau!r}; one of {', '.join(TABLEAUX)}")
        self.tableau = TABLEAUX[tableau] if isinstance(tableau, str) else tableau
        self.rhs, self.rtol, self.h_max, self.norm = rhs, rtol, h_max, norm
        self.hold_after_reject = hold_after_reject
        y0 = np.asarray(y0)
        self.y = y0
        tab = self.tableau
        self._A = tab.matrix().astype(y0.dtype)
        self._b = np.asarray(tab.b, dtype=y0.dtype)
        self._E = tab.error_weights().astype(y0.dtype)
        self._P = None if tab.dense is None else np.asarray(tab.dense)
        self._exponent = -1.0 / (min(tab.order, tab.order_low) + 1)
        self._eps = float(np.finfo(y0.dtype).eps)
        if isinstance(atol, np.ndarray) and atol.ndim == 1 and y0.ndim == 2:
            self.atol = atol.reshape(-1, 1)  # one per row
        elif isinstance(atol, np.ndarray) or atol > 0:
            self.atol = atol
        else:
            norm0 = np.linalg.norm(y0, axis=-1, keepdims=True)
            self.atol = np.maximum(rtol * 1e-3 * norm0 / y0.shape[-1] ** 0.5, 1e-300)
        self.t = float(t0)
        self.f, self.aux = rhs(y0)
        self.t_prev, self.y_prev, self.f_prev, self.aux_prev = self.t, self.y, self.f, self.aux
        self.n_accepted = self.n_rejected = 0
        self.n_evals = 1
        self.h = h0 if h0 is not None else self._initial_step()
        self.stages: np.ndarray | None = None  # (s, *y.shape) of the last accepted step
        self.rho_hat = 0.0  # spectral-radius estimate of the last accepted step (FSAL methods)

    def _initial_step(self) -> float:
        """Hairer–Wanner's starting-step heuristic (Solving ODEs I, II.4)."""
        scale = self.atol + self.rtol * np.abs(self.y)
        d0 = self.norm(self.y / scale)
        d1 = self.norm(self.f / scale)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1, _ = self.rhs(self.y + h0 * self.f)
        self.n_evals += 1
        d2 = self.norm((f1 - self.f) / scale) / h0
        h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (-self._exponent)
        return min(100 * h0, h1, self.h_max)

    def dense(self, theta: float) -> np.ndarray:
        """y at t_prev + θ·(t − t_prev) inside the last accepted step, 0 ≤ θ ≤ 1: the
        tableau's continuous extension, or the cubic Hermite interpolant of
        (y_prev, f_prev, y, f) where it has none."""
        h = self.t - self.t_prev
        if self._P is None:
            return hermite(theta, h, self.y_prev, self.f_prev, self.y, self.f)
        weights = self._P @ np.array([theta ** (j + 1) for j in range(self._P.shape[1])])
        return self.y_prev + h * np.tensordot(weights, self.stages, axes=1)

    def step(self) -> None:
        """Advance by one accepted step (rejecting and shrinking as often as needed)."""
        y, f = self.y, self.f
        A, b, E, s = self._A, self._b, self._E, self.tableau.stages
        grow = 5.0
        while True:
            h = min(self.h, self.h_max)
            if h <= 16 * self._eps * max(abs(self.t), 1.0):
                raise StepSizeUnderflow(
                    f"the integrator cannot meet rtol={self.rtol:g}: the step size underflowed "
                    f"at t = {self.t:.6g}")
            # the stages as one (s, y.size) matrix: every stage combination and the
            # error estimate is a single matrix product, not a Python sum of arrays
            ks = np.empty((s, y.size), dtype=y.dtype)
            ks[0] = f.reshape(-1)
            yi = y_prev_stage = y
            for i in range(1, s):
                y_prev_stage = yi
                yi = y + h * (A[i, :i] @ ks[:i]).reshape(y.shape)
                k, aux = self.rhs(yi)
                ks[i] = k.reshape(-1)
            self.n_evals += s - 1
            if self.tableau.fsal:
                y_new, f_new = yi, ks[s - 1].reshape(y.shape)  # the last stage point is the solution
            else:
                y_new = y + h * (b @ ks).reshape(y.shape)
                f_new, aux = self.rhs(y_new)
                self.n_evals += 1
            err_vec = (h * (E @ ks)).reshape(y.shape)
            scale = self.atol + self.rtol * np.maximum(np.abs(y), np.abs(y_new))
            err = self.norm(err_vec / scale)
            if err != err:  # NaN: the step blew up; shrink hard
                self.h = h * 0.1
                self.n_rejected += 1
                continue
            factor = 0.9 * err**self._exponent if err > 0 else 5.0
            if err <= 1.0:
                if self.tableau.fsal:
                    # Hairer's stiffness estimate (Solving ODEs II, IV.2): the last two stages
                    # sit at nearby points, so |Δk|/|Δy| bounds the Jacobian's spectral radius
                    # from below; h·ρ̂ near the method's stability bound means the step is
                    # limited by stability, not accuracy
                    dy = (y_prev_stage - y_new).reshape(-1, y.shape[-1])
                    dk = (ks[s - 2] - ks[s - 1]).reshape(dy.shape)
                    den = np.sqrt((dy * dy).sum(-1))
                    self.rho_hat = float(np.max(np.sqrt((dk * dk).sum(-1)) / np.maximum(den, 1e-300)))
                self.t_prev, self.y_prev, self.f_prev, self.aux_prev = self.t, y, f, self.aux
                self.stages = ks.reshape(s, *y.shape)
                self.t += h
                self.y, self.f, self.aux = y_new, f_new, aux
                self.h = h * min(grow, max(0.2, factor))
                self.n_accepted += 1
                return
            self.h = h * min(1.0, max(0.2, factor))
            self.n_rejected += 1
            if self.hold_after_reject:
                grow = 1.0

    def drop_rows(self, keep: np.ndarray) -> None:
        """Keep only the rows ``keep`` (a boolean (B,) mask) of a batch, in every state."""
        _drop_rows(self, keep)


_ROW_STATE = ("y", "f", "aux", "y_prev", "f_prev", "aux_prev")


def _drop_rows(stepper, keep: np.ndarray) -> None:
    if bool(keep.all()):
        return
    n = keep.shape[0]
    for name in _ROW_STATE:
        value = getattr(stepper, name)
        if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == n:
            setattr(stepper, name, value[keep])
    if getattr(stepper, "stages", None) is not None:
        stepper.stages = stepper.stages[:, keep]
    if isinstance(stepper.atol, np.ndarray) and stepper.atol.ndim and stepper.atol.shape[0] == n:
        stepper.atol = stepper.atol[keep]


def rkc_coefficients(s: int, eps: float = 2 / 13) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """The recurrence coefficients μ_j, ν_j, μ̃_j, γ̃_j (j = 0 … s; entries 0 and, but for
    μ̃_1, 1 unused) of the s-stage second-order Runge–Kutta–Chebyshev method with damping
    ε (Sommeijer, Shampine & Verwer 1998, "RKC: an explicit solver for parabolic PDEs",
    §2; Verwer, Hundsdorfer & Sommeijer 1990), and its real stability bound β(s) ≈ 0.653 s²
    for ε = 2/13: w₀ = 1 + ε/s², w₁ = T_s'(w₀)/T_s''(w₀), b_j = T_j''(w₀)/T_j'(w₀)² (j ≥ 2,
    b₀ = b₁ = b₂), a_j = 1 − b_j T_j(w₀), μ̃₁ = b₁w₁, μ_j = 2b_jw₀/b_{j−1},
    ν_j = −b_j/b_{j−2}, μ̃_j = 2b_jw₁/b_{j−1}, γ̃_j = −a_{j−1}μ̃_j."""
    if s < 2:
        raise ValueError("RKC needs at least 2 stages")
    w0 = 1.0 + eps / (s * s)
    T, dT, ddT = np.zeros(s + 1), np.zeros(s + 1), np.zeros(s + 1)
    T[0], T[1], dT[1] = 1.0, w0, 1.0
    for j in range(2, s + 1):
        T[j] = 2 * w0 * T[j - 1] - T[j - 2]
        dT[j] = 2 * T[j - 1] + 2 * w0 * dT[j - 1] - dT[j - 2]
        ddT[j] = 4 * dT[j - 1] + 2 * w0 * ddT[j - 1] - ddT[j - 2]
    w1 = dT[s] / ddT[s]
    b = np.empty(s + 1)
    b[2:] = ddT[2:] / dT[2:] ** 2
    b[0] = b[1] = b[2]
    a = 1.0 - b * T
    mu, nu, mut, gamt = np.zeros(s + 1), np.zeros(s + 1), np.zeros(s + 1), np.zeros(s + 1)
    mut[1] = b[1] * w1
    for j in range(2, s + 1):
        mu[j] = 2 * b[j] * w0 / b[j - 1]
        nu[j] = -b[j] / b[j - 2]
        mut[j] = 2 * b[j] * w1 / b[j - 1]
        gamt[j] = -a[j - 1] * mut[j]
    beta = (w0 + 1.0) * ddT[s] / dT[s]
    return mu, nu, mut, gamt, float(beta)


class ChebyshevRK:
    """Second-order Runge–Kutta–Chebyshev (RKC) stepper for stiff ẏ = rhs(y) whose
    Jacobian has its eigenvalues near the negative real axis — the gradient flow
    ẇ = −∇𝓛(w), whose Jacobian −∇²𝓛 is symmetric, is the textbook case.

    An s-stage RKC step is stable for h·ρ ≤ β(s) ≈ 0.653 s² (ρ: the Jacobian's spectral
    radius), so a stiff stretch that an explicit method of fixed stages crosses in steps of
    ~3/ρ is crossed in steps limited by accuracy alone, at a cost of s ∝ √(hρ) gradients
    each. The method, its error estimate (1/15)[12(yₙ − yₙ₊₁) + 6h(fₙ + fₙ₊₁)], the choice
    s = 1 + ⌊√(1 + 1.54 hρ)⌋ and the spectral radius by a nonlinear power method on
    differences of rhs (recomputed every ``rho_every`` accepted steps, after a rejection and
    when the step has grown 4× since)
    follow Sommeijer, Shampine & Verwer's ``rkc.f`` (1998); the step control is the
    elementary one (0.8·err^{−1/3}, clipped to [0.1, 10]; no growth right after a
    rejection). Dense output: the cubic Hermite interpolant (:func:`hermite`).

    The state and attributes are :class:`RungeKutta`'s (``t``, ``y``, ``f``, ``aux``, their
    ``_prev``, ``h``, ``h_max``, ``n_evals``, ``n_accepted``, ``n_rejected``, :meth:`dense`,
    :meth:`step`, :meth:`drop_rows`); ``rho`` is the last spectral radius estimate (×1.2,
    as rkc.f) and ``s`` the stages of the last step. ``f0``/``aux0``: rhs at y0 when the
    caller has it (a switch from another stepper), saving one evaluation.

    y' = −diag(1, 10⁴)·y from y(0) = (1, 1) to t = 1: y₁ = e^{−1}, y₂ ≈ 0; an explicit
    method of fixed stages would need > 3,000 steps, RKC a few dozen:

    >>> stepper = ChebyshevRK(lambda y: (-np.array([1.0, 1e4]) * y, None), np.ones((1, 2)), rtol=1e-6)
    >>> while stepper.t < 1.0 - 1e-12:
    ...     stepper.h_max = 1.0 - stepper.t
    ...     stepper.step()
    >>> round(float(stepper.y[0, 0]), 5), abs(float(stepper.y[0, 1])) < 1e-6, stepper.n_accepted < 100
    (0.36788, True, True)
    """

    def __init__(
        self, rhs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], y0: np.ndarray,
        t0: float = 0.0, rtol: float = 1e-8, atol: float | np.ndarray = 0.0,
        h0: float | None = None, h_max: float = float("inf"), *, norm: Callable[[np.ndarray], float] = rms_norm,
        f0: np.ndarray | None = None, aux0=None, max_stages: int = 200, rho_every: int = 25,
    ) -> None:
        if not rtol > 0:
            raise ValueError("rtol must be > 0")
        self.rhs, self.rtol, self.h_max, self.norm = rhs, rtol, h_max, norm
        self.max_stages, self.rho_every = max_stages, rho_every
        y0 = np.asarray(y0)
        self.y = y0
        self._eps = float(np.finfo(y0.dtype).eps)
        if isinstance(atol, np.ndarray) and atol.ndim == 1 and y0.ndim == 2:
            self.atol = atol.reshape(-1, 1)
        elif isinstance(atol, np.ndarray) or atol > 0:
            self.atol = atol
        else:
            self.atol = np.maximum(rtol * 1e-3 * _row_norms(y0).reshape(*y0.shape[:-1], 1) / y0.shape[-1] ** 0.5,
                                   1e-300)
        self.t = float(t0)
        self.n_evals = 0
        if f0 is None:
            f0, aux0 = rhs(y0)
            self.n_evals = 1
        self.f, self.aux = f0, aux0
        self.t_prev, self.y_prev, self.f_prev, self.aux_prev = self.t, self.y, self.f, self.aux
        self.n_accepted = self.n_rejected = 0
        self.stages = None
        self._v = None  # the power method's last vector
        self.rho = self._spectral_radius()
        self._since_rho = 0
        self.h = h0 if h0 is not None else min(1.0 / max(self.rho, 1e-300), h_max)
        self._h_rho = self.h  # the step when ρ was last estimated
        self.s = 2
        self._coef: dict[int, tuple] = {}

    def _spectral_radius(self, iters: int = 50, tol: float = 0.01) -> float:
        """ρ(∂rhs/∂y) at y by the nonlinear power method of rkc.f (``rkcrho``): differences
        rhs(y + εv) − rhs(y) with ‖εv‖ = √eps·‖y‖, per row of a batch, the largest row; ×1.2."""
        y, f = self.y, self.f
        shape = y.shape
        y2, f2 = y.reshape(-1, shape[-1]), f.reshape(-1, shape[-1])
        ynorm = _row_norms(y2)
        dyn = np.sqrt(self._eps) * np.maximum(ynorm, np.sqrt(self._eps))[:, None]
        v = self._v if self._v is not None and self._v.shape == y2.shape else f2.copy()
        bad = _row_norms(v) == 0
        if bad.any():
            v[bad] = np.random.default_rng(0).standard_normal((int(bad.sum()), shape[-1]))
        rho = np.zeros(y2.shape[0])
        for _ in range(iters):
            v = v / np.maximum(_row_norms(v), 1e-300)[:, None] * dyn
            fv, _ = self.rhs((y2 + v).reshape(shape))
            self.n_evals += 1
            dv = fv.reshape(y2.shape) - f2
            new = _row_norms(dv) / dyn[:, 0]
            done = bool(np.all(np.abs(new - rho) <= tol * np.maximum(new, 1e-300)))
            rho, v = new, dv
            zero = _row_norms(v) == 0
            if zero.any():
                v[zero] = np.random.default_rng(1).standard_normal((int(zero.sum()), shape[-1]))
            if done:
                break
        self._v = v
        return 1.2 * float(rho.max())

    def _coefficients(self, s: int) -> tuple:
        if s not in self._coef:
            self._coef[s] = rkc_coefficients(s)
        return self._coef[s]

    def dense(self, theta: float) -> np.ndarray:
        """y at t_prev + θ·(t − t_prev): the cubic Hermite interpolant of the last step."""
        return hermite(theta, self.t - self.t_prev, self.y_prev, self.f_prev, self.y, self.f)

    def step(self) -> None:
        """Advance by one accepted step (rejecting and shrinking as often as needed)."""
        y, f = self.y, self.f
        grow = 10.0
        while True:
            h = min(self.h, self.h_max)
            if self._since_rho >= self.rho_every or (self._since_rho and h > 4 * self._h_rho):
                # every rho_every steps, after a rejection, and when the step has grown 4×
                # since the last estimate (a stale ρ of a stiffer past would buy stages for nothing)
                self.rho = self._spectral_radius()
                self._since_rho, self._h_rho = 0, h
            if h <= 16 * self._eps * max(abs(self.t), 1.0):
                raise StepSizeUnderflow(
                    f"the integrator cannot meet rtol={self.rtol:g}: the step size underflowed "
                    f"at t = {self.t:.6g}")
            s = 1 + int(math.sqrt(1.0 + 1.54 * h * self.rho))
            if s > self.max_stages:
                s = self.max_stages
                h = (s * s - 1) / (1.54 * self.rho)
            s = max(s, 2)
            mu, nu, mut, gamt, _ = self._coefficients(s)
            hf0 = h * f
            y_jm2, y_jm1 = y, y + mut[1] * hf0
            for j in range(2, s + 1):
                fj, _ = self.rhs(y_jm1)
                y_j = (1.0 - mu[j] - nu[j]) * y + mu[j] * y_jm1 + nu[j] * y_jm2 + mut[j] * h * fj + gamt[j] * hf0
                y_jm2, y_jm1 = y_jm1, y_j
            y_new = y_jm1
            f_new, aux = self.rhs(y_new)
            self.n_evals += s
            err_vec = (12.0 * (y - y_new) + 6.0 * (hf0 + h * f_new)) / 15.0
            scale = self.atol + self.rtol * np.maximum(np.abs(y), np.abs(y_new))
            err = self.norm(err_vec / scale)
            if err != err:
                self.h = h * 0.1
                self.n_rejected += 1
                self._since_rho = self.rho_every  # a blow-up: the spectral radius may have grown
                grow = 1.0
                continue
            factor = 0.8 * err ** (-1.0 / 3.0) if err > 0 else 10.0
            if err <= 1.0:
                self.t_prev, self.y_prev, self.f_prev, self.aux_prev = self.t, y, f, self.aux
                self.t += h
                self.y, self.f, self.aux = y_new, f_new, aux
                self.h = h * min(grow, max(0.1, factor))
                self.s = s
                self.n_accepted += 1
                self._since_rho += 1
                return
            self.h = h * min(1.0, max(0.1, factor))
            self.n_rejected += 1
            self._since_rho = self.rho_every
            grow = 1.0

    def drop_rows(self, keep: np.ndarray) -> None:
        """Keep only the rows ``keep`` (a boolean (B,) mask) of a batch, in every state."""
        if not bool(keep.all()) and self._v is not None and self._v.shape[0] == keep.shape[0]:
            self._v = self._v[keep]
        _drop_rows(self, keep)


class SwitchingStepper:
    """Dormand–Prince 5(4) where the problem is not stiff, :class:`ChebyshevRK` where it is.

    The gradient flow of a network from small initialization is slow and smooth near the
    origin (dopri5's steps, set by accuracy, are long) and stiff after escape: near a saddle
    or a minimum ∇²𝓛 has eigenvalues up to λ_max while the trajectory moves on a far slower
    scale, and every explicit method of fixed stages is held to steps of a few 1/λ_max
    (dopri5: 3.3/λ_max for 6 gradients, worse than gradient descent at η = 1/λ_max).
    This stepper runs dopri5, watches Hairer's stiffness estimate h·ρ̂ of each accepted step
    (:attr:`RungeKutta.rho_hat`) and, once ``stiff_after`` steps have been at the stability
    bound (h·ρ̂ ≥ 3, just under dopri5's 3.3, where its step control settles; a non-stiff
    run of 6 resets the count, as in Hairer's dopri5), goes on
    with RKC from the same state; RKC hands back to dopri5 when its steps stop paying for
    their stages (s/h > 1.82ρ, dopri5's cost per unit time at its stability bound, over
    ``stiff_after`` steps running). Both steppers control the same error (same rtol, atol
    and norm), so switching changes the cost, not the tolerance.

    Attributes are the active stepper's (``t``, ``y``, ``f``, ``aux``, ``*_prev``, ``h``,
    ``h_max``, :meth:`dense`, …); ``n_evals``/``n_accepted``/``n_rejected`` count over both;
    ``switches`` lists (t, name) of every change of method.
    """

    _FORWARD = ("t", "y", "f", "aux", "t_prev", "y_prev", "f_prev", "aux_prev", "h", "h_max", "stages", "atol")

    def __init__(self, rhs, y0: np.ndarray, t0: float = 0.0, rtol: float = 1e-8, atol: float | np.ndarray = 0.0,
                 h0: float | None = None, h_max: float = float("inf"), *, stiff_after: int = 15,
                 norm: Callable[[np.ndarray], float] = rms_norm) -> None:
        self.rhs, self.rtol, self.norm, self.stiff_after = rhs, rtol, norm, stiff_after
        self.inner: RungeKutta | ChebyshevRK = RungeKutta(rhs, y0, t0, rtol, atol, h0, h_max, tableau=DOPRI5,
                                                          norm=norm)
        self._done = (0, 0, 0)  # evaluations, accepted, rejected of the steppers before the active one
        self._stiff = self._calm = 0
        self._maker = self.inner  # the stepper that took the last step (dense output)
        self.switches: list[tuple[float, str]] = []

    def __getattr__(self, name):
        if name in SwitchingStepper._FORWARD:
            return getattr(self.__dict__["inner"], name)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name in SwitchingStepper._FORWARD:
            setattr(self.inner, name, value)
        else:
            object.__setattr__(self, name, value)

    @property
    def method(self) -> str:
        return "rkc" if isinstance(self.inner, ChebyshevRK) else "dopri5"

    @property
    def n_evals(self) -> int:
        return self._done[0] + self.inner.n_evals

    @property
    def n_accepted(self) -> int:
        return self._done[1] + self.inner.n_accepted

    @property
    def n_rejected(self) -> int:
        return self._done[2] + self.inner.n_rejected

    def dense(self, theta: float) -> np.ndarray:
        """Inside the last accepted step: the dense output of the method that took it."""
        return self._maker.dense(theta)

    def drop_rows(self, keep: np.ndarray) -> None:
        self.inner.drop_rows(keep)
        if self._maker is not self.inner:
            self._maker.drop_rows(keep)

    def step(self) -> None:
        inner = self.inner
        inner.step()
        object.__setattr__(self, "_maker", inner)
        h = inner.t - inner.t_prev
        if isinstance(inner, RungeKutta):
            if h * inner.rho_hat >= 3.0:
                self._stiff, self._calm = self._stiff + 1, 0
            else:
                self._calm += 1
                if self._calm >= 6:
                    self._stiff = 0
            if self._stiff >= self.stiff_after:
                self._switch(ChebyshevRK(self.rhs, inner.y, inner.t, self.rtol, inner.atol, h0=4 * h,
                                         h_max=inner.h_max, norm=self.norm, f0=inner.f, aux0=inner.aux))
        else:
            if inner.s / h > 1.82 * inner.rho / 1.2:
                self._calm += 1
            else:
                self._calm = 0
            if self._calm >= self.stiff_after:
                self._switch(RungeKutta(self.rhs, inner.y, inner.t, self.rtol, inner.atol, h, inner.h_max,
                                        tableau=DOPRI5, norm=self.norm))

    def _switch(self, new) -> None:
        old = self.inner
        self._done = (self._done[0] + old.n_evals, self._done[1] + old.n_accepted, self._done[2] + old.n_rejected)
        # the new stepper's point is the old one's last accepted point: its previous step is the old one's
        new.t_prev, new.y_prev, new.f_prev, new.aux_prev = old.t_prev, old.y_prev, old.f_prev, old.aux_prev
        object.__setattr__(self, "inner", new)
        self._stiff = self._calm = 0
        self.switches.append((new.t, self.method))
