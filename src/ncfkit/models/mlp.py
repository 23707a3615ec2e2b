"""The feed-forward network without biases (eq. 9 of the paper).

H(x; w) = W_L σ(W_{L−1} … σ(W_1 x)), W_l ∈ R^{k_l × k_{l−1}}, k_0 = d, k_L = 1; with a
homogeneous activation of order p it is homogeneous of order L_h = 1 + p + … + p^{L−1}.
The W_l are views into the flat ``w`` in torch's ``nn.Linear`` layout, concatenated
row-major, layer 1 first. Each closed form — forward pass, gradient (``vjp``),
Hessian-vector product (``hvp``) — is written once for numpy arrays and tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._lazy import torch
from ..activations import Activation, parse_activation
from ..arrays import Array, is_numpy, to_numpy, xp, zeros
from ..errors import InputError
from . import KernelSpec

__all__ = ["MLP"]


def _widths_text(widths: tuple[int, ...]) -> str:
    return ",".join(str(k) for k in widths)


@dataclass(frozen=True)
class MLP:
    """Feed-forward net without biases; ``hidden`` = (k_1, …, k_{L-1}).

    >>> net = MLP(3, (4,), parse_activation("square")); net.weight_shapes, net.num_params
    (((4, 3), (1, 4)), 16)
    """

    d: int
    hidden: tuple[int, ...]
    act: Activation

    kind: ClassVar[str] = "mlp"
    title: ClassVar[str] = "feed-forward net without biases (--hidden, --act)"
    weight_file_arrays: ClassVar[str] = "W1 … WL"
    options: ClassVar[tuple[str, ...]] = ("hidden", "act")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_options(cls, d: int, *, hidden: str | int | tuple[int, ...] | list[int] = "50",
                     act: str | Activation = "relu", **_unused: Any) -> MLP:
        """From ``--hidden`` (e.g. ``"20,20"`` or widths) and ``--act``; ``--depth`` is unused."""
        from . import parse_hidden

        return cls(d, parse_hidden(hidden), parse_activation(act) if isinstance(act, str) else act)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> MLP:
        return cls(int(spec["d"]), tuple(int(k) for k in spec["hidden"]), parse_activation(spec["act"]))

    @classmethod
    def from_weight_arrays(cls, arrays: Mapping[str, np.ndarray], source: str, *,
                           act: str | Activation = "relu", **_unused: Any) -> MLP | None:
        """The net of a file with matrices ``W1`` … ``WL`` (the last may be (k_{L−1},));
        ``None`` without ``W1``. The activation is not stored in weight files: ``act``."""
        if "W1" not in arrays:
            return None
        L = 1
        while f"W{L + 1}" in arrays:
            L += 1
        shapes: list[tuple[int, int]] = []
        for l in range(1, L + 1):
            shape = tuple(np.shape(arrays[f"W{l}"]))
            if l == L and len(shape) == 1:
                shape = (1, shape[0])
            if len(shape) != 2:
                raise InputError(f"{source}: W{l} has shape {shape}; expected a matrix (k_l, k_l-1)")
            if shapes and shape[1] != shapes[-1][0]:
                raise InputError(f"{source}: W{l} has shape {shape} but W{l - 1} has {shapes[-1][0]} rows")
            shapes.append((int(shape[0]), int(shape[1])))
        if shapes[-1][0] != 1:
            raise InputError(f"{source}: the last layer W{L} has shape {np.shape(arrays[f'W{L}'])}; the output "
                             "must be scalar, (1, k) or (k,)")
        return cls(shapes[0][1], tuple(r for r, _ in shapes[:-1]),
                   parse_activation(act) if isinstance(act, str) else act)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": "mlp", "d": self.d, "hidden": list(self.hidden), "act": self.act.name}

    def describe(self) -> str:
        return f"mlp {_widths_text(self.widths)} act={self.act.name}"

    # ------------------------------------------------------------------ structure

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
    def weight_shapes(self) -> tuple[tuple[int, int], ...]:
        return tuple(self.shapes)

    @property
    def weight_names(self) -> tuple[str, ...]:
        return tuple(f"W{l}" for l in range(1, self.depth + 1))

    @property
    def neuron_layers(self) -> tuple[int, ...]:
        return tuple(self.hidden)

    @property
    def activation(self) -> Activation:
        return self.act

    @property
    def has_hidden_neurons(self) -> bool:
        return bool(self.hidden)

    @property
    def kernel_spec(self) -> KernelSpec:
        return KernelSpec("mlp", self.widths, self.act)

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

    # ------------------------------------------------------------------ maths
    def split(self, w: Array) -> list[Array]:
        """Views W_1, …, W_L of shape (..., k_l, k_{l-1}) (copies where w's layout needs)."""
        lead = tuple(w.shape[:-1])
        return [w[..., a:b].reshape(*lead, r, c) for a, b, r, c in self._blocks]

    def join(self, Ws: list[Array]) -> Array:
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

    def forward(self, X: Array, w: Array) -> Array:
        return self._forward_cache(X, w)[-1]

    def forward_and_vjp(self, X: Array, w: Array, g_of_out) -> tuple[Array, Array]:
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

    def vjp(self, X: Array, w: Array, g: Array) -> Array:
        return self.forward_and_vjp(X, w, lambda _out: g)[1]

    def hvp(self, X: Array, w: Array, V: Array, g_of_out, dg=None) -> Array:
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

    # ------------------------------------------------------------------ neurons
    def neuron_norms(self, w: Array) -> list[tuple[Array, Array]]:
        """Per hidden layer l: (‖W_l[j,:]‖, ‖W_{l+1}[:,j]‖) for every neuron j."""
        Ws = self.split(w)
        return [((Ws[l] ** 2).sum(-1) ** 0.5, (Ws[l + 1] ** 2).sum(-2) ** 0.5)
                for l in range(self.depth - 1)]

    def zero_preserving_subset(self, w: Array, tol: float = 1e-3) -> tuple[Array, tuple]:
        """The incoming and outgoing weights of the hidden neurons whose row and column
        norms are ≤ ``tol`` × the largest neuron norm (Theorem 18), and those neurons."""
        from ..sparsity import neuron_activity, zero_preserving_mask

        zero = neuron_activity(self, w, tol).zero
        return zero_preserving_mask(self, zero, like=w), zero

    # ------------------------------------------------------------------ weight files
    def weight_arrays(self, w: Array) -> dict[str, np.ndarray]:
        return dict(zip(self.weight_names, self.split(to_numpy(w)), strict=True))

    def weights_from_arrays(self, arrays: Mapping[str, np.ndarray], source: str) -> np.ndarray:
        """W1 … WL of the shapes of this net (the last may be stored as (k_{L−1},))."""
        parts, L = [], self.depth
        for l, shape in enumerate(self.shapes, start=1):
            key = f"W{l}"
            if key not in arrays:
                raise InputError(f"{source}: no array {key!r} (the network has {L} layers)")
            W = np.asarray(arrays[key], dtype=np.float64)
            if l == L and W.ndim == 1:
                W = W[None, :]
            if W.shape != tuple(shape):
                raise InputError(f"{source}: {key} has shape {W.shape}, the network needs {tuple(shape)}")
            parts.append(W.ravel())
        extra = sorted(set(arrays) - set(self.weight_names))
        if extra:
            raise InputError(f"{source}: unexpected arrays {extra} (the network has {L} layers)")
        return np.concatenate(parts)


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
