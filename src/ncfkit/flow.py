"""Adaptive integration of the gradient flow ẇ = −∇𝓛(w) (the object of Theorems 4-18).

``--method flow`` runs :class:`ncfkit.rk.SwitchingStepper`: the 5(4) pair of Dormand &
Prince (1980) (:data:`ncfkit.rk.DOPRI5`, first same as last, 4th-order dense output)
while the flow is not stiff — near the origin it is slow and nearly linear, and the steps
grow large — and the second-order Runge–Kutta–Chebyshev method
(:class:`ncfkit.rk.ChebyshevRK`) where it is: after escape, near a saddle or a minimum,
∇²𝓛 has eigenvalues far larger than the rate at which the trajectory moves, and dopri5's
steps would be held to 3.3/λ_max. It advances a batch of trajectories (several δ) with one
shared step size. The local error of each weight is held to
``rtol·max(|w_i|, RMS(w))`` after escape (the RMS over its row of the batch,
:func:`_error_floor`; before escape ``rtol·max(|w_i|, 10⁻³·RMS(w))``),
measured in the RMS norm of each trajectory; a step is accepted when the worst
trajectory's error is ≤ 1. :class:`DormandPrince` is dopri5 alone.

The state lives on the host in numpy (see :mod:`ncfkit.rk`). ∇𝓛 comes from the compiled
kernel, or from torch on the data's device with one transfer each way
(:func:`ncfkit.fastgd.value_and_grad_fn` with ``host=True``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .arrays import to_numpy
from .fastgd import value_and_grad_fn
from .rk import DOPRI5, RungeKutta, StepSizeUnderflow, SwitchingStepper

__all__ = ["DormandPrince", "StepSizeUnderflow", "gradient_flow", "ERROR_FLOOR"]

#: The absolute tolerance of a row, as a fraction of rtol × its RMS weight: before escape
#: (the plateau, where the escape time hangs on the growth of every entry: Figure 4's
#: 7·10⁷-long plateau ends 63 time units late with 1, 0.2 with 1e-3) and after it (where
#: entries near zero at kinks and saddles would otherwise set the step: M's ReLU net takes
#: 15× the steps with 1e-3).
ERROR_FLOOR = {"near origin": 1e-3, "escaped": 1.0}


class DormandPrince(RungeKutta):
    """:class:`ncfkit.rk.RungeKutta` with the Dormand–Prince 5(4) tableau, for ẏ = rhs(y)
    with y of shape (B, k); the arguments are :class:`~ncfkit.rk.RungeKutta`'s."""

    def __init__(
        self, rhs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], y0: np.ndarray,
        t0: float = 0.0, rtol: float = 1e-8, atol: float | np.ndarray = 0.0,
        h0: float | None = None, h_max: float = float("inf"),
    ) -> None:
        super().__init__(rhs, y0, t0, rtol, atol, h0, h_max, tableau=DOPRI5)


def gradient_flow(objective, w0, settings, tracker) -> None:
    """``--method flow``: integrate ẇ = −∇𝓛(w) for every row of ``w0`` (B, k) with
    :class:`ncfkit.rk.SwitchingStepper` at ``settings.rtol``, following the method contract of
    :mod:`ncfkit.dynamics` (``step`` counts accepted steps).

    A checkpoint follows every accepted step. When a row's loss crosses its escape level
    inside a step, the crossing time is located by bisection on the integrator's dense
    output (4th order from dopri5, 3rd from RKC) and an extra checkpoint is landed
    there. When a checkpoint reports more change than the record
    resolution, the next step is capped accordingly. A step size that underflows ends the
    rows still running with status ``failed`` and says at what time. ∇𝓛 comes from
    ``settings.engine`` (:func:`ncfkit.fastgd.value_and_grad_fn`); the state is numpy
    in the data's dtype.
    """
    value_and_grad = value_and_grad_fn(objective, settings.engine, host=True)

    def rhs(w):
        loss, grad = value_and_grad(w)
        return -grad, loss

    y0 = to_numpy(w0).copy()
    stepper = SwitchingStepper(rhs, y0, rtol=settings.rtol)
    tracker.start(stepper.y, stepper.aux, -stepper.f)
    step = 0
    while tracker.active.size and stepper.t < settings.max_time * (1 - 1e-12):
        stepper.h_max = settings.max_time - stepper.t
        stepper.atol = _error_floor(stepper.y, settings.rtol, np.isinf(tracker.escape_levels()))
        try:
            stepper.step()
        except StepSizeUnderflow as e:
            tracker.finish("failed", message=str(e))
            return
        step += 1
        losses = np.stack([stepper.aux_prev, stepper.aux]).astype(np.float64)
        times = (stepper.t_prev, stepper.t)
        cut = tracker.scan(step - 1, losses, lambda s, times=times, s0=step - 1: times[min(max(s - s0, 0), 1)])
        if cut is not None:
            t_c, w_c = _locate_crossing(value_and_grad, stepper, tracker.escape_levels())
            loss_c, grad_c = value_and_grad(w_c)
            verdict = tracker.checkpoint(step, t_c, w_c, loss_c, grad_c)
            stepper.drop_rows(verdict.keep)
            if not tracker.active.size:
                break
        verdict = tracker.checkpoint(step, stepper.t, stepper.y, stepper.aux, -stepper.f)
        stepper.drop_rows(verdict.keep)
        if verdict.change > 1.0:
            stepper.h = min(stepper.h, (stepper.t - stepper.t_prev) / verdict.change)
    if tracker.active.size:
        tracker.finish("max time")


def _locate_crossing(value_and_grad, stepper, levels, iters: int = 40):
    """First time in the last step at which some row's loss falls below its level:
    bisection on the integrator's dense output (the earliest crossing over the
    rows)."""
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        loss, _ = value_and_grad(stepper.dense(mid))
        if bool((loss < levels).any()):
            hi = mid
        else:
            lo = mid
    return stepper.t_prev + hi * (stepper.t - stepper.t_prev), stepper.dense(hi)


def _error_floor(y: np.ndarray, rtol: float, escaped: np.ndarray) -> np.ndarray:
    """The absolute tolerance of each row (B, 1): once the row has escaped, rtol × its RMS
    entry, so that every weight's local error is held to rtol × max(|w_i|, RMS(w)) — a
    purely entrywise relative test would hold the weights of neurons that stay near zero
    (Theorem 18's zero-preserving sets) to rtol of their own tiny size, and at a ReLU kink
    or near a stiff saddle those entries, not the trajectory, would set the step; before
    escape 10⁻³ of that (:data:`ERROR_FLOOR`)."""
    frac = np.where(escaped, ERROR_FLOOR["escaped"], ERROR_FLOOR["near origin"])[:, None]
    y2 = y.reshape(-1, y.shape[-1])
    return (frac * rtol * np.sqrt(np.mean(y2 * y2, axis=-1, keepdims=True)) + 1e-300).reshape(*y.shape[:-1], 1)

