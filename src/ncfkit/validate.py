"""Checks of settings and numbers that know the floating-point type, shared by the
commands and the library: every failure is an :class:`~ncfkit.errors.InputError` (exit
2, one line naming the flag or file).

- :func:`check_tolerance` -- a relative tolerance must be finite, > 0 and no finer than
  the dtype's machine epsilon (``--rtol 1e-300`` hung at t = 0; ``--tol inf`` called
  every random start converged);
- :func:`check_seed` -- seeds numpy and torch both accept (0 <= seed < 2**63);
- :func:`check_scale` -- an initialization scale δ whose weights, outputs and gradients
  stay normal numbers of the dtype;
- :func:`check_step` -- a step size that makes at least one step before ``--max-time``;
- :func:`check_numeric_range` -- data and network whose outputs, losses and squared norms
  neither overflow nor underflow the dtype (X ~ 1e200, ``--act leaky:1e308``,
  ``poly:1e9``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["finfo", "check_tolerance", "check_seed", "check_scale", "check_step", "check_data_range",
           "check_numeric_range", "output_scale", "SEED_LIMIT"]

#: Seeds must be below this: numpy's and torch's generators both take them.
SEED_LIMIT = 2**63


def finfo(dtype: Any) -> np.finfo:
    """np.finfo of "float64"/"float32", a numpy dtype or a torch dtype."""
    name = str(dtype).removeprefix("torch.")
    try:
        return np.finfo(np.dtype(name))
    except TypeError:
        return np.finfo(np.float64)


def _dtype_name(dtype: Any) -> str:
    return str(np.dtype(finfo(dtype).dtype))


def check_tolerance(name: str, value: float, dtype: Any = "float64", *, below_one: bool = True) -> float:
    """A relative tolerance: finite, > 0, >= the dtype's machine epsilon (and < 1 when
    ``below_one``)."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} {value:g}: must be finite and > 0")
    if below_one and value >= 1:
        raise InputError(f"{name} {value:g}: a relative tolerance must be < 1")
    eps = float(finfo(dtype).eps)
    if value < eps:
        raise InputError(f"{name} {value:g}: finer than {_dtype_name(dtype)} can resolve (machine epsilon "
                         f"{eps:.3g}); use {name} >= {eps:.3g}")
    return value


def default_tolerance(dtype: Any = "float64", finest: float = 1e-9) -> float:
    """The default relative tolerance of an iterative solve: ``finest`` where the dtype
    resolves it, else 8 × the machine epsilon (float32: about 9.5e-7)."""
    return max(float(finest), 8.0 * float(finfo(dtype).eps))


def check_seed(seed: int, name: str = "--seed") -> int:
    if not 0 <= int(seed) < SEED_LIMIT:
        raise InputError(f"{name} {seed}: must be an integer in [0, 2^63)")
    return int(seed)


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 else -math.inf


def check_scale(name: str, value: float, order: float | None, dtype: Any = "float64",
                output_scale: float = 1.0) -> float:
    """An initialization scale δ (weights δ·w0 with ‖w0‖ = 1): finite, > 0, a normal
    number of the dtype, and such that the outputs δ^L_h·H (``output_scale`` = max |H|
    at unit-norm weights) do not overflow and the gradients δ^(L_h−1)·H do not underflow
    (a run that could never move)."""
    value = float(value)
    fi = finfo(dtype)
    kind = _dtype_name(dtype)
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} {value:g}: must be finite and > 0")
    if value < fi.tiny:
        raise InputError(f"{name} {value:g}: below the smallest normal {kind} ({fi.tiny:.3g})")
    if order is None or not math.isfinite(order):
        return value
    log_out = order * _log10(value) + _log10(output_scale)
    if log_out > _log10(fi.max) / 2:
        raise InputError(f"{name} {value:g}: the outputs δ^L_h·H (L_h = {order:g}) reach ~1e{log_out:.0f}, "
                         f"whose squares overflow {kind} (largest {fi.max:.3g})")
    log_grad = (order - 1) * _log10(value) + _log10(output_scale)
    if order > 1 and log_grad < _log10(fi.tiny):
        raise InputError(f"{name} {value:g}: the gradients δ^(L_h-1)·H (L_h = {order:g}) are ~1e{log_grad:.0f}, "
                         f"below the smallest normal {kind} ({fi.tiny:.3g}); no step could move")
    return value


def check_step(lr: float, max_time: float | None = None, name: str = "--lr") -> float:
    """A step size: finite, > 0, and (with a time limit t = steps × lr) at most
    ``max_time``, else not a single step would run."""
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"{name} {lr:g}: the step size must be finite and > 0")
    if max_time is not None and math.isfinite(max_time) and lr > max_time:
        raise InputError(f"{name} {lr:g}: one step is longer than --max-time {max_time:g} "
                         "(t = steps × lr); not a single step would run")
    return lr


#: Rows of X :func:`output_scale` evaluates at most twice this many: the largest and an even spread.
PROBE_ROWS = 1024


def output_scale(network: Any, X: np.ndarray, probes: int = 4) -> float:
    """max |H(X; w)| over a few unit-norm weight vectors w (a fixed seed), computed in
    float64 with floating-point warnings off; inf when it overflows. On at most
    2 × :data:`PROBE_ROWS` rows of X (the largest ones and an even spread)."""
    X64 = np.asarray(X, dtype=np.float64)
    if X64.shape[0] > 2 * PROBE_ROWS:  # the largest rows and an even spread: a bounded cost
        norms = np.einsum("ij,ij->i", X64, X64)
        rows = np.union1d(np.argpartition(norms, -PROBE_ROWS)[-PROBE_ROWS:],
                          np.linspace(0, X64.shape[0] - 1, PROBE_ROWS).astype(np.int64))
        X64 = X64[rows]
    rng = np.random.default_rng(0)
    scale = 0.0
    with np.errstate(all="ignore"):
        for _ in range(probes):
            w = rng.standard_normal(int(network.num_params))
            w /= np.linalg.norm(w)
            try:
                H = np.asarray(network.forward(X64, w), dtype=np.float64)
            except (OverflowError, FloatingPointError):
                return math.inf
            if not np.isfinite(H).all():
                return math.inf
            scale = max(scale, float(np.max(np.abs(H), initial=0.0)))
    return scale


def check_data_range(X: np.ndarray, y: np.ndarray, dtype: Any = "float64", source: str = "the data",
                     hint: str = "rescale the data") -> dict:
    """Refuse X or y whose squares overflow ``dtype``; return {"X": max |X|, "y": max |y|}."""
    fi = finfo(dtype)
    high = _log10(float(fi.max)) / 2 - 1
    largest = {}
    for name, arr in (("X", X), ("y", y)):
        a = np.asarray(arr)
        m = largest[name] = float(max(a.max(initial=0.0), -a.min(initial=0.0))) if a.size else 0.0
        if _log10(m) > high:
            raise InputError(f"{source}: |{name}| reaches {m:.3g}; its squares overflow {_dtype_name(dtype)} "
                             f"(largest {fi.max:.3g}); {hint}")
    return largest


def check_numeric_range(network: Any, X: np.ndarray, y: np.ndarray, dtype: Any = "float64",
                        source: str = "the data", act: str | None = None) -> float:
    """Refuse data and a network that cannot be computed with in ``dtype``: |X| or |y|
    whose squares overflow, or outputs H(X; w) at unit-norm weights whose squares (the
    loss, ‖∇𝒩‖²) overflow or that underflow to nothing. Return max |H| (see
    :func:`output_scale`), which :func:`check_scale` takes for δ."""
    fi = finfo(dtype)
    kind = _dtype_name(dtype)
    high = _log10(float(fi.max)) / 2 - 1  # squares (losses, squared norms) overflow above
    low = _log10(float(fi.tiny)) / 2  # squares underflow below
    largest = check_data_range(X, y, dtype, source)
    what = f"--act {act}" if act else getattr(network, "describe", lambda: "the network")()
    scale = output_scale(network, X)
    if _log10(scale) > high:
        raise InputError(f"{source} with {what}: the network's outputs at unit-norm weights reach "
                         f"{'inf' if math.isinf(scale) else f'{scale:.3g}'}; their squares overflow {kind}")
    xmax = largest["X"]
    if xmax > 0 and (scale == 0 and _act_power(network) > 1 or 0 < scale and _log10(scale) < low):
        raise InputError(f"{source} with {what}: the network's outputs at unit-norm weights are "
                         f"~{scale:.3g}, below what {kind} can compute with (gradients underflow)")
    return scale


def _act_power(network: Any) -> float:
    """The power of the weights in the output: the activation's p, or for a network
    without one (the diagonal model) its homogeneity order."""
    p = getattr(getattr(network, "activation", None), "p", None)
    if p is None:
        return float(getattr(network, "homogeneity", None) or 1.0)
    return float(p)
