"""The diagonal model of Example 1: H(x; w) = Σ_k w_k^D x_k, homogeneous of order D.

Its weights are one vector ``w`` (d,): no hidden neurons, so no neuron sparsity; its
zero-preserving subset is the set of coordinates at 0 (the gradient D w_k^{D−1} (g X)_k
vanishes with w_k for D ≥ 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..arrays import Array, to_numpy
from ..errors import InputError
from . import KernelSpec

__all__ = ["Diagonal"]


@dataclass(frozen=True)
class Diagonal:
    """Example 1's diagonal model H(x; w) = Σ_k w_k^D x_k (homogeneous of order D).

    >>> import numpy as np
    >>> Diagonal(2, 2).forward(np.array([[1.0, 2.0]]), np.array([3.0, 1.0]))
    array([11.])
    """

    d: int
    depth: int = 2

    kind: ClassVar[str] = "diag"
    title: ClassVar[str] = "the diagonal model H = Σ w_k^D x_k of Example 1 (--depth)"
    weight_file_arrays: ClassVar[str] = "w"
    options: ClassVar[tuple[str, ...]] = ("depth",)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_options(cls, d: int, *, depth: int = 2, **_unused: Any) -> Diagonal:
        """From ``--depth`` (the order D); ``--hidden`` and ``--act`` are unused."""
        depth = int(depth)
        if depth < 1:
            raise InputError(f"--depth must be >= 1 (got {depth})")
        return cls(d, depth)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Diagonal:
        return cls(int(spec["d"]), int(spec["depth"]))

    @classmethod
    def from_weight_arrays(cls, arrays: Mapping[str, np.ndarray], source: str, *, depth: int = 2,
                           **_unused: Any) -> Diagonal | None:
        """The model of a file with one array ``w`` (d,); ``None`` without ``w``. The
        order D is not stored in weight files: ``depth``."""
        if "w" not in arrays:
            return None
        return cls.from_options(int(np.size(arrays["w"])), depth=depth)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": "diag", "d": self.d, "depth": self.depth}

    def describe(self) -> str:
        return f"diag d={self.d} D={self.depth}"

    # ------------------------------------------------------------------ structure
    @property
    def num_params(self) -> int:
        return self.d

    @property
    def homogeneity(self) -> float:
        return float(self.depth)

    @property
    def weight_shapes(self) -> tuple[tuple[int], ...]:
        return ((self.d,),)

    @property
    def weight_names(self) -> tuple[str, ...]:
        return ("w",)

    @property
    def layer_ranges(self) -> tuple[tuple[int, int], ...]:
        return ((0, self.d),)

    @property
    def neuron_layers(self) -> None:
        return None

    @property
    def activation(self) -> None:
        return None

    @property
    def has_hidden_neurons(self) -> bool:
        return False

    @property
    def kernel_spec(self) -> KernelSpec:
        return KernelSpec("diag", (self.d, self.depth))

    # ------------------------------------------------------------------ maths
    def split(self, w: Array) -> list[Array]:
        return [w]

    def join(self, blocks: list[Array]) -> Array:
        (w,) = blocks
        return w

    def forward(self, X: Array, w: Array) -> Array:
        return w**self.depth @ X.T

    def forward_and_vjp(self, X: Array, w: Array, g_of_out) -> tuple[Array, Array]:
        out = self.forward(X, w)
        g = g_of_out(out)
        return out, self.depth * w ** (self.depth - 1) * (g @ X)

    def vjp(self, X: Array, w: Array, g: Array) -> Array:
        return self.forward_and_vjp(X, w, lambda _out: g)[1]

    def hvp(self, X: Array, w: Array, V: Array, g_of_out, dg=None) -> Array:
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

    # ------------------------------------------------------------------ neurons
    def neuron_norms(self, w: Array) -> list:
        return []

    def zero_preserving_subset(self, w: Array, tol: float = 1e-3) -> tuple[Array, None]:
        """The coordinates with |w_k| ≤ tol·max|w|; no neurons."""
        a = abs(w)
        return a <= tol * a.max(), None

    # ------------------------------------------------------------------ weight files
    def weight_arrays(self, w: Array) -> dict[str, np.ndarray]:
        return {"w": to_numpy(w)}

    def weights_from_arrays(self, arrays: Mapping[str, np.ndarray], source: str) -> np.ndarray:
        if "w" not in arrays:
            raise InputError(f"{source}: a diagonal-model weight file needs an array 'w'")
        w = np.asarray(arrays["w"], dtype=np.float64).ravel()
        if w.size != self.d:
            raise InputError(f"{source}: 'w' has {w.size} entries, the model has {self.d}")
        return w
