"""Adaptive integration of the gradient flow ẇ = −∇𝓛(w) (the object of Theorems 4-18).

:class:`DormandPrince` is the embedded Runge–Kutta 5(4) pair of Dormand & Prince (1980)
with first-same-as-last reuse. It advances a batch of trajectories (several δ) with one
shared step size. The local error estimate of each trajectory is measured in its own RMS
norm, scaled by ``atol + rtol·|w|``, and the step is accepted when the worst
trajectory's error is ≤ 1. Near the origin the flow is slow and nearly linear, so the
steps grow large; at escape they shrink.

The state lives on the host in numpy: a step is ~30 small vector operations, which cost
numpy a few µs each and eager torch ~10 µs each, more than the gradient itself for the
networks of the paper. ∇𝓛 comes from the compiled kernel, or from torch on the data's
device with one transfer each way (:func:`ncfkit.fastgd.value_and_grad_fn` with
``host=True``).

Textbook names: ``t``, ``y``, ``h``; ``rhs(y) -> (ẏ, aux)`` where ``aux`` (for example
the loss) is carried along so callers get it at every accepted point for free.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .arrays import to_numpy
from .errors import RunError
from .fastgd import value_and_grad_fn

__all__ = ["DormandPrince", "StepSizeUnderflow", "gradient_flow"]

_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = _A[6] + (0.0,)  # 5th order (the solution that is kept)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b - b4 for b, b4 in zip(_B, _B4, strict=True))
#: The 4th-order continuous extension (dense output) of Dormand–Prince, as in Hairer,
#: Nørsett & Wanner's dopri5 and scipy's RK45: y(t_prev + θh) = y_prev + h·Σ_i k_i·(P θ⃗)_i
#: with θ⃗ = (θ, θ², θ³, θ⁴).
_P = (
    (1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
    (0.0, 0.0, 0.0, 0.0),
    (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799),
    (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
    (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632),
    (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
    (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423),
)


class StepSizeUnderflow(RunError):
    """The integrator could not meet its tolerance: the step fell below round-off."""


class DormandPrince:
    """Stepper for ẏ = rhs(y) (autonomous) with y of shape (B, k).

    After each :meth:`step`, ``t``, ``y``, ``f`` (= ẏ at y) and ``aux`` describe the new
    accepted point, ``t_prev``, ``y_prev``, ``aux_prev`` the previous one, and
    :meth:`dense` any point in between.
    """

    def __init__(
        self, rhs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], y0: np.ndarray,
        t0: float = 0.0, rtol: float = 1e-8, atol: float | np.ndarray = 0.0,
        h0: float | None = None, h_max: float = float("inf"),
    ) -> None:
        if not rtol > 0:
            raise ValueError("rtol must be > 0")
        self.rhs, self.rtol, self.h_max = rhs, rtol, h_max
        y0 = np.asarray(y0)
        self.y = y0
        # the Butcher matrix (7, 7) and error weights (7,), in y's dtype
        self._A = np.zeros((7, 7), dtype=y0.dtype)
        for i, row in enumerate(_A):
            self._A[i, : len(row)] = row
        self._E = np.asarray(_E, dtype=y0.dtype)
        self._eps = float(np.finfo(y0.dtype).eps)
        # atol per trajectory: default a tiny fraction of each initial size, so the error
        # control stays relative even for δ = 1e-6.
        if isinstance(atol, np.ndarray):
            self.atol = atol.reshape(-1, 1) if atol.ndim else atol
        elif atol > 0:
            self.atol = atol
        else:
            norm = np.linalg.norm(y0, axis=-1, keepdims=True)
            self.atol = np.maximum(rtol * 1e-3 * norm / y0.shape[-1] ** 0.5, 1e-300)
        self.t = float(t0)
        self.f, self.aux = rhs(y0)
        self.t_prev, self.y_prev, self.f_prev, self.aux_prev = self.t, self.y, self.f, self.aux
        self.h = h0 if h0 is not None else self._initial_step()
        self.n_accepted = self.n_rejected = self.n_evals = 0
        self.stages: np.ndarray | None = None  # (7, *y.shape) of the last accepted step

    def _initial_step(self) -> float:
        """Hairer–Wanner's starting-step heuristic (Solving ODEs I, II.4)."""
        scale = self.atol + self.rtol * np.abs(self.y)
        d0 = float(self._rms(self.y / scale).max())
        d1 = float(self._rms(self.f / scale).max())
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1, _ = self.rhs(self.y + h0 * self.f)
        d2 = float(self._rms((f1 - self.f) / scale).max()) / h0
        h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
        return min(100 * h0, h1, self.h_max)

    @staticmethod
    def _rms(x: np.ndarray) -> np.ndarray:
        return np.sqrt(np.mean(x * x, axis=-1))

    def dense(self, theta: float) -> np.ndarray:
        """y at t_prev + θ·(t − t_prev) inside the last accepted step, 0 ≤ θ ≤ 1: the
        pair's 4th-order continuous extension (:data:`_P`), from the step's stages."""
        h = self.t - self.t_prev
        return self.y_prev + h * np.tensordot(_dense_weights(theta), self.stages, axes=1)

    def step(self) -> None:
        """Advance by one accepted step (rejecting and shrinking as often as needed)."""
        y, f = self.y, self.f
        while True:
            h = min(self.h, self.h_max)
            if h <= 16 * self._eps * max(abs(self.t), 1.0):
                raise StepSizeUnderflow(
                    f"the integrator cannot meet rtol={self.rtol:g}: the step size underflowed "
                    f"at t = {self.t:.6g}")
            # the stages k_0 … k_6 as one (7, B·k) matrix: every stage combination and the
            # error estimate is a single matrix product, not a Python sum of tensors
            ks = np.empty((7, y.size), dtype=y.dtype)
            ks[0] = f.reshape(-1)
            A, E = self._A, self._E
            for i in range(1, 7):
                yi = y + h * (A[i, :i] @ ks[:i]).reshape(y.shape)
                k, aux = self.rhs(yi)
                ks[i] = k.reshape(-1)
            y_new = yi  # the 7th stage point is the 5th-order solution (FSAL)
            self.n_evals += 6
            err_vec = (h * (E @ ks)).reshape(y.shape)
            scale = self.atol + self.rtol * np.maximum(np.abs(y), np.abs(y_new))
            err = float(self._rms(err_vec / scale).max())
            if err != err:  # NaN: the step blew up; shrink hard
                self.h = h * 0.1
                self.n_rejected += 1
                continue
            factor = 0.9 * err ** -0.2 if err > 0 else 5.0
            if err <= 1.0:
                self.t_prev, self.y_prev, self.f_prev, self.aux_prev = self.t, y, f, self.aux
                self.stages = ks.reshape(7, *y.shape)
                self.t += h
                self.y, self.f, self.aux = y_new, ks[6].reshape(y.shape), aux
                self.h = h * min(5.0, max(0.2, factor))
                self.n_accepted += 1
                return
            self.h = h * min(1.0, max(0.2, factor))
            self.n_rejected += 1


def _dense_weights(theta: float) -> np.ndarray:
    """(7,) weights of the stages in the dense output at θ ∈ [0, 1]."""
    return np.asarray(_P) @ np.array([theta, theta**2, theta**3, theta**4])


def gradient_flow(objective, w0, settings, tracker) -> None:
    """``--method flow``: integrate ẇ = −∇𝓛(w) for every row of ``w0`` (B, k) with
    :class:`DormandPrince` at ``settings.rtol``, following the method contract of
    :mod:`ncfkit.dynamics` (``step`` counts accepted steps).

    A checkpoint follows every accepted step. When a row's loss crosses its escape level
    inside a step, the crossing time is located by bisection on the integrator's dense
    output (4th order, :meth:`DormandPrince.dense`) and an extra checkpoint is landed
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
    stepper = DormandPrince(rhs, y0, rtol=settings.rtol)
    tracker.start(stepper.y, stepper.aux, -stepper.f)
    step = 0
    while tracker.active.size and stepper.t < settings.max_time * (1 - 1e-12):
        stepper.h_max = settings.max_time - stepper.t
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
            _drop_rows(stepper, verdict.keep)
            if not tracker.active.size:
                break
        verdict = tracker.checkpoint(step, stepper.t, stepper.y, stepper.aux, -stepper.f)
        _drop_rows(stepper, verdict.keep)
        if verdict.change > 1.0:
            stepper.h = min(stepper.h, (stepper.t - stepper.t_prev) / verdict.change)
    if tracker.active.size:
        tracker.finish("max time")


def _locate_crossing(value_and_grad, stepper: DormandPrince, levels, iters: int = 40):
    """First time in the last step at which some row's loss falls below its level:
    bisection on the integrator's 4th-order dense output (the earliest crossing over the
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


def _drop_rows(stepper: DormandPrince, keep: np.ndarray) -> None:
    if bool(keep.all()):
        return
    for name in ("y", "f", "aux", "y_prev", "f_prev", "aux_prev"):
        setattr(stepper, name, getattr(stepper, name)[keep])
    stepper.stages = stepper.stages[:, keep]
    if isinstance(stepper.atol, np.ndarray) and stepper.atol.ndim and stepper.atol.shape[0] == keep.shape[0]:
        stepper.atol = stepper.atol[keep]
