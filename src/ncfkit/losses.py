"""Losses 𝓛(w) = Σ_i ℓ(H(x_i; w), y_i) (eq. 1) and ỹ = −ℓ'(0, y) (eq. 3).

- ``square``: ℓ(p, y) = (p − y)², ỹ = 2y; with reduction ``mean`` the loss is divided by
  n (torch's ``MSELoss``), so ỹ = 2y/n.
- ``logistic``: ℓ(p, y) = log(1 + exp(−p·y)), y ∈ {−1, +1}, ỹ = y/2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._lazy import torch
from .arrays import is_numpy, xp
from .errors import InputError

__all__ = ["Loss", "make_loss", "LOSSES", "REDUCTIONS"]

REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class Loss:
    """A per-sample loss ℓ(p, y), its derivative ∂ℓ/∂p, and a reduction."""

    name: str
    reduction: str
    _ell: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    _dell: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    #: ∂²ℓ/∂p² (None: unknown, Hessians then fall back to autograd)
    _d2ell: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def _scale(self, n: int) -> float:
        return 1.0 / n if self.reduction == "mean" else 1.0

    def value(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """𝓛 from predictions of shape (..., n); sums over the last axis."""
        return self._ell(pred, y).sum(-1) * self._scale(y.shape[-1])

    def dvalue(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """∂𝓛/∂pred, shape (..., n)."""
        d = self._dell(pred, y)
        return d if self.reduction == "sum" else d * self._scale(y.shape[-1])

    def d2value(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """∂²𝓛/∂pred² (diagonal: the samples are independent), shape (..., n)."""
        d = self._d2ell(pred, y)
        return d if self.reduction == "sum" else d * self._scale(y.shape[-1])

    def ytilde(self, y: torch.Tensor) -> torch.Tensor:
        """ỹ = −∂𝓛/∂pred at pred = 0 (the reduction included)."""
        return -self.dvalue(y * 0, y)

    def check_labels(self, y: torch.Tensor) -> None:
        """Raise :class:`InputError` if ``y`` is not valid for this loss."""
        if self.name == "logistic" and not bool(((y == 1) | (y == -1)).all()):
            bad = y[(y != 1) & (y != -1)][0].item()
            raise InputError(f"logistic loss needs labels in {{-1, +1}}; found {bad:g}")


def _square(reduction: str) -> Loss:
    return Loss("square", reduction, lambda p, y: (p - y) ** 2, lambda p, y: 2 * (p - y),
                lambda p, y: xp(p).full_like(p, 2.0))


def _softplus(x):
    """ln(1 + eˣ), and x itself above 20, as torch's softplus (and the compiled kernel)."""
    if is_numpy(x):
        return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))).astype(x.dtype, copy=False)
    return torch.nn.functional.softplus(x)


def _sigmoid(x):
    """1/(1 + e⁻ˣ), overflow-free (torch's, or scipy's expit)."""
    if is_numpy(x):
        from scipy.special import expit

        return expit(x)
    return torch.sigmoid(x)


def _logistic(reduction: str) -> Loss:
    return Loss(
        "logistic",
        reduction,
        lambda p, y: _softplus(-p * y),
        lambda p, y: -y * _sigmoid(-p * y),
        lambda p, y: y * y * _sigmoid(-p * y) * _sigmoid(p * y),
    )


LOSSES: dict[str, Callable[[str], Loss]] = {"square": _square, "logistic": _logistic}


def make_loss(name: str, reduction: str = "sum") -> Loss:
    """Look a loss up by name; raise :class:`InputError` for an unknown one."""
    if name not in LOSSES:
        raise InputError(f"unknown loss {name!r}; expected one of: {', '.join(LOSSES)}")
    if reduction not in REDUCTIONS:
        raise InputError(f"unknown reduction {reduction!r}; expected sum or mean")
    return LOSSES[name](reduction)
