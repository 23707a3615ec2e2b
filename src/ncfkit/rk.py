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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import RunError

__all__ = ["ButcherTableau", "DOPRI5", "BOSH3", "HEUN_EULER", "TABLEAUX", "RungeKutta", "StepSizeUnderflow",
           "rms_norm"]


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
            h00, h10 = (1 + 2 * theta) * (1 - theta) ** 2, theta * (1 - theta) ** 2
            h01, h11 = theta * theta * (3 - 2 * theta), theta * theta * (theta - 1)
            return h00 * self.y_prev + h01 * self.y + h * (h10 * self.f_prev + h11 * self.f)
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
            for i in range(1, s):
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
