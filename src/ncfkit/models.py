"""Homogeneous networks H(x; w) on one flat parameter vector (SPEC §1).

- :class:`MLP`: feed-forward, no biases (eq. 9): H(x) = W_L σ(W_{L-1} … σ(W_1 x)),
  W_l ∈ R^{k_l × k_{l-1}}, k_0 = d, k_L = 1. Order L_h = 1 + p + … + p^{L-1}.
- :class:`Diagonal`: the diagonal model of Example 1, H(x; w) = Σ_k w_k^D x_k, order D.

Every function takes ``w`` of shape (..., k): leading axes are a batch (restarts, several
δ), so one call serves many parameter vectors. ``W_l`` are views into ``w`` in torch's
``nn.Linear`` layout, concatenated row-major, layer 1 first. Data and weights are numpy
arrays or torch tensors (:mod:`ncfkit.arrays`); each closed form — forward pass,
gradient (``vjp``), Hessian-vector product (``hvp``) — is written once for both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ._lazy import torch
from .activations import Activation, parse_activation
from .arrays import is_numpy, xp, zeros
from .errors import InputError

__all__ = ["Architecture", "MLP", "Diagonal", "parse_hidden", "make_architecture", "ARCHS"]


class Architecture(Protocol):
    """What the rest of ncfkit needs from a network."""

    d: int

    @property
    def num_params(self) -> int: ...

    @property
    def homogeneity(self) -> float | None: ...

    def forward(self, X: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """H(X; w): ``X`` (n, d), ``w`` (..., k) -> (..., n)."""

    def vjp(self, X: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """∇_w [gᵀ H(X; w)] in closed form: ``g`` (..., n) -> (..., k)."""

    def to_dict(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...


def _widths_text(widths: tuple[int, ...]) -> str:
    return ",".join(str(k) for k in widths)


@dataclass(frozen=True)
class MLP:
    """Feed-forward net without biases; ``hidden`` = (k_1, …, k_{L-1})."""

    d: int
    hidden: tuple[int, ...]
    act: Activation

    kind = "mlp"

    @property
    def widths(self) -> tuple[int, ...]:
        """(k_0, k_1, …, k_L) with k_0 = d and k_L = 1."""
        return (self.d, *self.hidden, 1)

    @property
    def depth(self) -> int:
        return len(self.hidden) + 1

    @property
    def shapes(self) -> list[tuple[int, int]]:
        k = self.widths
        return [(k[l + 1], k[l]) for l in range(self.depth)]

    @property
    def num_params(self) -> int:
        return sum(a * b for a, b in self.shapes)

    @property
    def homogeneity(self) -> float | None:
        """L_h = 1 + p + … + p^{L-1}; ``None`` for a non-homogeneous activation."""
        if not self.act.homogeneous:
            return None
        return float(sum(self.act.p**l for l in range(self.depth)))

    @functools.cached_property
    def _blocks(self) -> tuple[tuple[int, int, int, int], ...]:
        """(start, stop, rows, cols) of each W_l in the flat vector (computed once)."""
        out, start = [], 0
        for rows, cols in self.shapes:
            out.append((start, start + rows * cols, rows, cols))
            start += rows * cols
        return tuple(out)

    @property
    def layer_ranges(self) -> tuple[tuple[int, int], ...]:
        """(start, stop) of each W_l in the flat vector."""
        return tuple((a, b) for a, b, _, _ in self._blocks)

    def split(self, w):
        """Views W_1, …, W_L of shape (..., k_l, k_{l-1}) (copies where w's layout needs)."""
        lead = tuple(w.shape[:-1])
        return [w[..., a:b].reshape(*lead, r, c) for a, b, r, c in self._blocks]

    def join(self, Ws: list):
        """Inverse of :meth:`split`."""
        return _flat_concat(Ws)

    def _forward_cache(self, X, w):
        Ws = self.split(w)
        XT = X.T
        hs, zs = [XT], []
        act = self.act
        for l, W in enumerate(Ws[:-1]):
            # Layer 1 shares X across the batch: one (…·k_1, d) @ (d, n) GEMM, not a bmm.
            z = (W.reshape(-1, self.d) @ XT).reshape(*W.shape[:-1], -1) if l == 0 else W @ hs[-1]
            zs.append(z)
            hs.append(act(z))
        out = (Ws[-1] @ hs[-1]).squeeze(-2)
        return Ws, hs, zs, out

    def forward(self, X, w):
        return self._forward_cache(X, w)[-1]

    def forward_and_vjp(self, X, w, g_of_out):
        """(H(X; w), ∇_w[gᵀH]) with ``g = g_of_out(H)``; one forward, one backward pass."""
        Ws, hs, zs, out = self._forward_cache(X, w)
        g = g_of_out(out)
        depth = len(Ws)
        grads = [None] * depth
        back = g[..., None, :]  # (..., 1, n): ∂/∂ of the layer-L pre-activation
        for l in range(depth - 1, 0, -1):
            grads[l] = back @ hs[l].swapaxes(-1, -2)
            back = (Ws[l].swapaxes(-1, -2) @ back) * self.act.derivative(zs[l - 1])
        grads[0] = (back.reshape(-1, back.shape[-1]) @ X).reshape(*back.shape[:-1], self.d)
        return out, _flat_concat(grads)

    def vjp(self, X, w, g):
        return self.forward_and_vjp(X, w, lambda _out: g)[1]

    def hvp(self, X, w, V, g_of_out, dg=None):
        """Directional derivative of the closed-form gradient J(w)ᵀg along each row of
        ``V`` (..., k): forward-over-reverse written out (Pearlmutter's R-operator), no
        autograd. With g = ∂F/∂H for F(w) = f(H(X; w)) it is ∇²F(w)·v; ``g_of_out(H)``
        gives g, ``dg(H, Ḣ)`` its derivative along Ḣ = J v (None: g does not depend on w,
        as for 𝒩 = ỹᵀH). The forward pass at w is shared by all rows of ``V``."""
        Ws, hs, zs, out = self._forward_cache(X, w)
        # A layer whose block of V is zero in every row (a dense Hessian's chunk of the
        # identity mostly is) contributes nothing: its terms are skipped, not computed as
        # zeros (None stands for an exact zero below).
        Vs = [Vb if bool(Vb.any()) else None for Vb in self.split(V)]
        act, depth = self.act, len(Ws)
        s1 = [act.derivative(z) for z in zs]
        dzs, dhs = [], [None]  # tangents of z_l and h_l (h_0 = X is fixed)
        for l in range(depth - 1):
            dz = None
            if Vs[l] is not None:
                dz = Vs[l] @ hs[l] if l else \
                    (Vs[0].reshape(-1, self.d) @ hs[0]).reshape(*Vs[0].shape[:-1], -1)
            if dhs[l] is not None:
                dz = _plus(dz, Ws[l] @ dhs[l])
            dzs.append(dz)
            dhs.append(None if dz is None else s1[l] * dz)
        dout = None if Vs[-1] is None else Vs[-1] @ hs[-1]
        if dhs[-1] is not None:
            dout = _plus(dout, Ws[-1] @ dhs[-1])
        b = g_of_out(out)[..., None, :]  # ∂F/∂z of the layer-L pre-activation, (…, 1, n)
        db = None if dg is None or dout is None else dg(out, dout[..., 0, :])[..., None, :]
        grads = [None] * depth
        for l in range(depth - 1, -1, -1):
            G = None if db is None else (db @ hs[l].swapaxes(-1, -2) if l else
                                         (db.reshape(-1, db.shape[-1]) @ X).reshape(*db.shape[:-1], self.d))
            if dhs[l] is not None:
                G = _plus(G, b @ dhs[l].swapaxes(-1, -2))
            grads[l] = G
            if l:
                WTb = Ws[l].swapaxes(-1, -2) @ b
                new_db = None
                if Vs[l] is not None:
                    new_db = (Vs[l].swapaxes(-1, -2) @ b) * s1[l - 1]
                if dzs[l - 1] is not None:
                    new_db = _plus(new_db, WTb * act.second_derivative(zs[l - 1]) * dzs[l - 1])
                if db is not None:
                    new_db = _plus(new_db, (Ws[l].swapaxes(-1, -2) @ db) * s1[l - 1])
                b, db = WTb * s1[l - 1], new_db
        lead = np.broadcast_shapes(tuple(w.shape), tuple(V.shape))[:-1]
        return _flat_concat([zeros((*lead, r, c), like=V) if G is None
                             else xp(V).broadcast_to(G, (*lead, r, c))
                             for G, (r, c) in zip(grads, self.shapes, strict=True)], lead)

    def neuron_norms(self, w) -> list[tuple]:
        """Per hidden layer l: (‖W_l[j,:]‖, ‖W_{l+1}[:,j]‖) for every neuron j."""
        Ws = self.split(w)
        return [((Ws[l] ** 2).sum(-1) ** 0.5, (Ws[l + 1] ** 2).sum(-2) ** 0.5)
                for l in range(self.depth - 1)]

    def to_dict(self) -> dict[str, Any]:
        return {"arch": "mlp", "d": self.d, "hidden": list(self.hidden), "act": self.act.name}

    def describe(self) -> str:
        return f"mlp {_widths_text(self.widths)} act={self.act.name}"


@dataclass(frozen=True)
class Diagonal:
    """Example 1's diagonal model H(x; w) = Σ_k w_k^D x_k (homogeneous of order D)."""

    d: int
    depth: int = 2

    kind = "diag"

    @property
    def num_params(self) -> int:
        return self.d

    @property
    def homogeneity(self) -> float:
        return float(self.depth)

    def forward(self, X, w):
        return w**self.depth @ X.T

    def forward_and_vjp(self, X, w, g_of_out):
        out = self.forward(X, w)
        g = g_of_out(out)
        return out, self.depth * w ** (self.depth - 1) * (g @ X)

    def vjp(self, X, w, g):
        return self.forward_and_vjp(X, w, lambda _out: g)[1]

    def hvp(self, X, w, V, g_of_out, dg=None):
        """As :meth:`MLP.hvp`: ∇ = D w^{D−1} ⊙ (gX), so its derivative along v is
        D(D−1) w^{D−2} ⊙ v ⊙ (gX) + D w^{D−1} ⊙ (ġX) with ġ = dg(H, (D w^{D−1} ⊙ v) Xᵀ)."""
        D = self.depth
        out = self.forward(X, w)
        gX = g_of_out(out) @ X
        first = D * w ** (D - 1)
        res = D * (D - 1) * w ** (D - 2) * V * gX if D > 1 else V * gX * 0
        if dg is not None:
            res = res + first * (dg(out, (first * V) @ X.T) @ X)
        return res

    def to_dict(self) -> dict[str, Any]:
        return {"arch": "diag", "d": self.d, "depth": self.depth}

    def describe(self) -> str:
        return f"diag d={self.d} D={self.depth}"


def _plus(a, b):
    """a + b, where None stands for an exact zero."""
    return b if a is None else (a if b is None else a + b)


def _flat_concat(Ws: list, lead=None):
    """W_1 … W_L (..., r, c) flattened and concatenated along the last axis (the flat
    ncfkit layout), for numpy arrays or tensors alike."""
    if lead is None:
        lead = tuple(Ws[0].shape[:-2])
    flat = [W.reshape(*lead, -1) for W in Ws]
    return np.concatenate(flat, axis=-1) if is_numpy(flat[0]) else torch.cat(flat, dim=-1)


ARCHS = ("mlp", "diag")


def parse_hidden(text: str) -> tuple[int, ...]:
    """Parse ``"50"`` or ``"20,30"`` into positive widths; raise :class:`InputError`."""
    parts = [p.strip() for p in str(text).split(",")]
    widths = []
    for part in parts:
        if not part:
            raise InputError(f"--hidden {text!r}: empty width (use e.g. 50 or 20,20)")
        try:
            k = int(part)
        except ValueError:
            raise InputError(f"--hidden {text!r}: {part!r} is not an integer") from None
        if k < 1:
            raise InputError(f"--hidden {text!r}: widths must be >= 1 (got {k})")
        widths.append(k)
    return tuple(widths)


def make_architecture(
    arch: str, d: int, hidden: str | tuple[int, ...] = "50", act: str = "relu", depth: int = 2
) -> MLP | Diagonal:
    """Build an architecture by name (``mlp`` or ``diag``) for inputs of dimension ``d``."""
    if d < 1:
        raise InputError(f"data has d = {d} features; need at least 1")
    if arch == "mlp":
        widths = hidden if isinstance(hidden, tuple) else parse_hidden(hidden)
        return MLP(d, widths, parse_activation(act) if isinstance(act, str) else act)
    if arch == "diag":
        if depth < 1:
            raise InputError(f"--depth must be >= 1 (got {depth})")
        return Diagonal(d, depth)
    raise InputError(f"unknown architecture {arch!r}; expected one of: {', '.join(ARCHS)}")


def architecture_from_dict(spec: dict[str, Any]) -> MLP | Diagonal:
    """Rebuild an architecture from :meth:`to_dict` output (as stored in result files)."""
    if spec.get("arch") == "mlp":
        return MLP(int(spec["d"]), tuple(int(k) for k in spec["hidden"]), parse_activation(spec["act"]))
    if spec.get("arch") == "diag":
        return Diagonal(int(spec["d"]), int(spec["depth"]))
    raise InputError(f"unknown architecture record {spec!r}")


def random_direction(num_params: int, generator, batch: tuple[int, ...] = (), **kw):
    """Unit-norm directions drawn uniformly on the sphere S^{k-1}, shape (*batch, k): a
    tensor from a ``torch.Generator`` (``kw``: dtype, device), or a float64 numpy array
    from a ``numpy.random.Generator``."""
    if isinstance(generator, np.random.Generator):
        u = generator.standard_normal((*batch, num_params))
    else:
        u = torch.randn(*batch, num_params, generator=generator, **kw)
    return unit(u)


def unit(w):
    """w / ‖w‖ along the last axis."""
    return w / ((w * w).sum(-1, keepdims=True) ** 0.5)


