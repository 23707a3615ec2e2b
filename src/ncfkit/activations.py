"""Activations σ(x) = max(x, αx)^p (docs/theory.md §1) and their grammar.

A homogeneous activation satisfies σ(cx) = c^p σ(x) for c > 0, which makes a feed-forward
net of depth L homogeneous of order L_h = 1 + p + … + p^{L-1} (eq. 9). ``tanh`` and
``gelu`` are allowed for training experiments only (Appendix F.2).

Grammar: ``linear`` | ``relu`` | ``leaky:α`` | ``square`` | ``sqrelu`` | ``poly:P`` |
``poly:P:α`` | ``tanh`` | ``gelu``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._lazy import torch
from .arrays import is_numpy, xp
from .errors import InputError

__all__ = ["Activation", "parse_activation", "PRESETS"]


@dataclass(frozen=True)
class Activation:
    """σ(x) = max(x, αx)^p, or a named non-homogeneous activation (``p is None``).

    >>> a = parse_activation("square"); float(a(torch.tensor(-3.0)))
    9.0
    """

    name: str
    p: float | None = None
    alpha: float | None = None

    @property
    def homogeneous(self) -> bool:
        return self.p is not None

    @property
    def even(self) -> bool:
        """σ(−x) = σ(x): flipping the sign of a neuron's incoming weights is a symmetry."""
        return self.homogeneous and self.alpha == -1.0

    @property
    def odd(self) -> bool:
        """σ(−x) = −σ(x): flipping a neuron's incoming and outgoing signs is a symmetry."""
        return (
            self.homogeneous
            and self.alpha == 1.0
            and float(self.p).is_integer()
            and int(self.p) % 2 == 1
        )

    def _base(self, x):
        return xp(x).maximum(x, self.alpha * x)

    def _slope(self, x):
        """1 where x > αx, else α, in x's dtype (a Python scalar in torch.where would
        become float32 and lose 8 digits of α = 0.1 in float64)."""
        up = x > self.alpha * x
        if is_numpy(x):
            return np.where(up, 1.0, self.alpha).astype(x.dtype, copy=False)
        return torch.where(up, x.new_tensor(1.0), x.new_tensor(self.alpha))

    def __call__(self, x):
        """σ(x) of a numpy array or a tensor."""
        if self.name == "tanh":
            return xp(x).tanh(x)
        if self.name == "gelu":
            return x * _normal_cdf(x) if is_numpy(x) else torch.nn.functional.gelu(x)
        if self.alpha == -1.0 and self.p == 2:  # square: the hottest path, kept lean
            return x * x
        if self.alpha == 1.0 and self.p == 1:
            return x
        if self.alpha == 0.0 and self.p == 1:
            return np.maximum(x, 0.0).astype(x.dtype, copy=False) if is_numpy(x) else torch.relu(x)
        m = self._base(x)
        return m if self.p == 1 else m**self.p

    def derivative(self, x):
        """σ'(x); at the kink x = 0 of ReLU-like σ the slope of the left branch (α), as
        torch's ``relu`` and ``leaky_relu`` do."""
        if self.name == "tanh":
            return 1 - xp(x).tanh(x) ** 2
        if self.name == "gelu":
            return _normal_cdf(x) + x * _normal_pdf(x)
        if self.alpha == -1.0 and self.p == 2:
            return 2 * x
        if self.alpha == 1.0 and self.p == 1:
            return xp(x).ones_like(x)
        if self.alpha == 0.0 and self.p == 1:
            return (x > 0).astype(x.dtype) if is_numpy(x) else (x > 0).to(x.dtype)
        slope = self._slope(x)
        if self.p == 1:
            return slope
        return self.p * self._base(x) ** (self.p - 1) * slope

    def second_derivative(self, x):
        """σ''(x) (for Hessians in closed form); 0 at the kink of ReLU-like σ with p = 1,
        as autograd of :meth:`derivative` gives."""
        if self.name == "tanh":
            t = xp(x).tanh(x)
            return -2 * t * (1 - t * t)
        if self.name == "gelu":
            return _normal_pdf(x) * (2 - x * x)
        if self.alpha == -1.0 and self.p == 2:
            return xp(x).full_like(x, 2.0)
        if self.p == 1:
            return xp(x).zeros_like(x)
        slope = self._slope(x)
        return self.p * (self.p - 1) * self._base(x) ** (self.p - 2) * slope * slope

    def describe(self) -> str:
        if not self.homogeneous:
            return self.name
        return f"{self.name} (max(x, {self.alpha:g}x)^{self.p:g})"


PRESETS: dict[str, Activation] = {
    "linear": Activation("linear", 1.0, 1.0),
    "relu": Activation("relu", 1.0, 0.0),
    "square": Activation("square", 2.0, -1.0),
    "sqrelu": Activation("sqrelu", 2.0, 0.0),
    "tanh": Activation("tanh"),
    "gelu": Activation("gelu"),
}

_GRAMMAR = "linear, relu, leaky:ALPHA, square, sqrelu, poly:P, poly:P:ALPHA, tanh, gelu"


def _normal_cdf(x):
    """Φ(x) (gelu's gate); numpy's has no erf, so scipy's."""
    if is_numpy(x):
        from scipy.special import ndtr

        return ndtr(x).astype(x.dtype, copy=False)
    return 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))


def _normal_pdf(x):
    return xp(x).exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _number(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"activation {spec!r}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"activation {spec!r}: {what} must be finite")
    return value


def parse_activation(spec: str) -> Activation:
    """Parse an activation name of the grammar above; raise :class:`InputError` otherwise."""
    text = spec.strip().lower()
    if text in PRESETS:
        return PRESETS[text]
    head, *args = text.split(":")
    if head == "leaky" and len(args) == 1:
        alpha = _number(args[0], "slope", spec)
        return Activation(f"leaky:{alpha:g}", 1.0, alpha)
    if head == "poly" and len(args) in (1, 2):
        p = _number(args[0], "power", spec)
        if p < 1:
            raise InputError(f"activation {spec!r}: the power P must be >= 1 (got {p:g})")
        alpha = _number(args[1], "slope", spec) if len(args) == 2 else 0.0
        if not p.is_integer() and alpha > 0:
            raise InputError(
                f"activation {spec!r}: a non-integer power needs slope <= 0 "
                "(max(x, αx) must stay >= 0)"
            )
        name = f"poly:{p:g}" + (f":{alpha:g}" if len(args) == 2 else "")
        return Activation(name, p, alpha)
    raise InputError(f"unknown activation {spec!r}; expected one of: {_GRAMMAR}")
