"""Homogeneous networks H(x; w) on one flat parameter vector, and their registry.

Each architecture is one class in its own module (:mod:`.mlp`, :mod:`.diagonal`) that
satisfies :class:`Architecture`, plus one entry in :data:`ARCHITECTURES`. Every other
module asks the architecture (its properties and methods below) and never tests its
class, so adding an architecture is one module and one line here (README, "Adding an
architecture"); ``tests/test_architectures.py`` runs every registered one through the
protocol checks and every command.

Every method takes ``w`` of shape (..., k): leading axes are a batch (restarts, several
δ), so one call serves many parameter vectors. Data and weights are numpy arrays or torch
tensors (:data:`ncfkit.arrays.Array`); each closed form returns the kind it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .._lazy import torch
from ..activations import Activation
from ..arrays import Array
from ..errors import InputError

__all__ = ["Architecture", "KernelSpec", "ARCHITECTURES", "ARCHS", "MLP", "Diagonal",
           "make_architecture", "architecture_from_dict", "architectures_help", "architecture_of_weight_arrays",
           "parse_hidden", "random_direction", "unit"]


@dataclass(frozen=True)
class KernelSpec:
    """How the compiled GD kernel (:mod:`ncfkit.fastgd`) computes a network: one of the
    network families the C code implements, with its sizes.

    - ``family="mlp"``: a feed-forward net without biases of widths (k_0, …, k_L), k_L = 1,
      and activation ``act`` (the layout of :class:`MLP`);
    - ``family="diag"``: H(x; w) = Σ_k w_k^D x_k with ``widths = (d, D)``.
    """

    family: str
    widths: tuple[int, ...]
    act: Activation | None = None


@runtime_checkable
class Architecture(Protocol):
    """Everything the rest of ncfkit asks of a network (the complete list: no module tests
    an architecture's class). A class satisfies it by defining every member below; it is
    a frozen dataclass so that equal architectures compare equal and hash alike."""

    #: The registry name (:data:`ARCHITECTURES`), the CLI's ``--arch`` value and the
    #: ``"arch"`` key of :meth:`to_dict`.
    kind: ClassVar[str]
    #: One line for the CLI's ``--arch`` help, e.g. "feed-forward net without biases".
    title: ClassVar[str]
    #: The arrays of this architecture's weight files, for messages (``"W1 … WL"``).
    weight_file_arrays: ClassVar[str]
    #: The CLI's architecture options (``--hidden``, ``--act``, ``--depth``) that
    #: :meth:`from_options` reads; the others do not apply to this architecture.
    options: ClassVar[tuple[str, ...]]
    #: Input dimension (features of the data).
    d: int

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_options(cls, d: int, **options: Any) -> Architecture:
        """Build from the CLI's architecture options (``hidden``, ``act``, ``depth`` as
        strings or values; options this architecture does not use are ignored). Raise
        :class:`InputError` naming the flag for a bad value."""

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Architecture:
        """Inverse of :meth:`to_dict` (a record read back from a result file). Raise
        ``KeyError``/``ValueError``/``TypeError`` for a malformed record."""

    @classmethod
    def from_weight_arrays(cls, arrays: Mapping[str, np.ndarray], source: str,
                           **options: Any) -> Architecture | None:
        """The architecture a weight file's arrays (name -> array) imply, or ``None`` when
        they are not this architecture's file. Raise :class:`InputError` (mentioning
        ``source``) when they are, but inconsistent."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record with ``"arch": kind`` (stored in result files)."""

    def describe(self) -> str:
        """One line for humans, e.g. ``mlp 3,50,1 act=relu``."""

    # ------------------------------------------------------------------ structure
    @property
    def num_params(self) -> int:
        """k, the length of the flat parameter vector w."""

    @property
    def homogeneity(self) -> float | None:
        """L_h with H(x; cw) = c^{L_h} H(x; w) for c > 0; ``None``: not homogeneous (no
        NCF, no KKT points)."""

    @property
    def weight_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of the blocks of w, in flat order (what :meth:`split` returns without
        batch axes): the MLP's matrices (k_l, k_{l−1}), the diagonal model's ``(d,)``.
        Blocks of two axes are drawn as heat maps by :mod:`ncfkit.plot`."""

    @property
    def weight_names(self) -> tuple[str, ...]:
        """The array name of each block in weight files and result files (``W1`` …)."""

    @property
    def layer_ranges(self) -> tuple[tuple[int, int], ...]:
        """(start, stop) of each block in the flat vector."""

    @property
    def neuron_layers(self) -> tuple[int, ...] | None:
        """Widths (k_1, …, k_{L−1}) of the hidden layers of neurons; ``None`` when the
        network has no neuron structure at all. Neuron j of hidden layer l (1-based) owns
        row j of block l−1 (its incoming weights) and column j of block l (its outgoing
        weights) of :meth:`split` — the layout the sparsity analysis (Definition 15,
        Lemma 16, Theorem 18) reads."""

    @property
    def activation(self) -> Activation | None:
        """σ of the hidden neurons; ``None`` when the network has none (no ``--act``)."""

    @property
    def has_hidden_neurons(self) -> bool:
        """Whether there is at least one hidden neuron (``bool(neuron_layers)``): the
        condition for ``ncfkit sparsity``."""

    @property
    def kernel_spec(self) -> KernelSpec | None:
        """How the compiled kernel computes this network; ``None``: it cannot (the torch
        engine is used)."""

    # ------------------------------------------------------------------ maths
    def forward(self, X: Array, w: Array) -> Array:
        """H(X; w): ``X`` (n, d), ``w`` (..., k) -> (..., n)."""

    def vjp(self, X: Array, w: Array, g: Array) -> Array:
        """∇_w [gᵀ H(X; w)] in closed form: ``g`` (..., n) -> (..., k)."""

    def forward_and_vjp(self, X: Array, w: Array, g_of_out: Callable[[Array], Array]) -> tuple[Array, Array]:
        """(H(X; w), ∇_w[gᵀH]) with ``g = g_of_out(H)``: one forward and one backward pass."""

    def hvp(self, X: Array, w: Array, V: Array, g_of_out: Callable[[Array], Array],
            dg: Callable[[Array, Array], Array] | None = None) -> Array:
        """Derivative of the gradient J(w)ᵀg along each row of ``V`` (..., k): with
        g = ∂F/∂H for F(w) = f(H(X; w)) it is ∇²F(w)·v. ``g_of_out(H)`` gives g,
        ``dg(H, Ḣ)`` its derivative along Ḣ = J v (``None``: g does not depend on w)."""

    def split(self, w: Array) -> list[Array]:
        """The blocks of ``w`` (..., k), shapes (..., *weight_shapes[i]) (views where the
        layout allows)."""

    def join(self, blocks: list[Array]) -> Array:
        """Inverse of :meth:`split`."""

    def neuron_norms(self, w: Array) -> list[tuple[Array, Array]]:
        """Per hidden layer: (‖incoming weights‖, ‖outgoing weights‖) of every neuron; an
        empty list without hidden neurons."""

    def zero_preserving_subset(self, w: Array, tol: float = 1e-3) -> tuple[Array, tuple | None]:
        """(mask (k,) bool, zero neurons per hidden layer or ``None``) of the subset w_z of
        ``w`` that gradient dynamics keep at 0 (Definition 15, Theorem 18), entries
        counting as zero at ``tol`` times the largest."""

    # ------------------------------------------------------------------ weight files
    def weight_arrays(self, w: Array) -> dict[str, np.ndarray]:
        """The named numpy arrays of one weight vector ``w`` (k,) as weight files and
        result files store them (:attr:`weight_names`)."""

    def weights_from_arrays(self, arrays: Mapping[str, np.ndarray], source: str) -> np.ndarray:
        """The flat float64 vector (k,) of a weight file's arrays; raise
        :class:`InputError` (mentioning ``source``) for a missing, extra or misshapen one."""


from .diagonal import Diagonal  # noqa: E402 - the classes need KernelSpec above
from .mlp import MLP  # noqa: E402

#: Every architecture, by its CLI name. Adding one: its module, and one line here.
ARCHITECTURES: dict[str, type[Architecture]] = {"mlp": MLP, "diag": Diagonal}
ARCHS = tuple(ARCHITECTURES)


def architectures_help() -> str:
    """The CLI's ``--arch`` help: every registered architecture with its title."""
    return "; ".join(f"{name}: {cls.title}" for name, cls in ARCHITECTURES.items()) + "."


def parse_hidden(text: str | int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Parse ``"50"`` or ``"20,30"`` into positive widths; widths already split (a tuple
    or list, empty for a net without hidden layer) are checked. Raise :class:`InputError`."""
    if isinstance(text, (tuple, list)):
        return tuple(parse_hidden(k)[0] for k in text)
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


def make_architecture(arch: str, d: int, hidden: str | tuple[int, ...] = "50", act: str | Activation = "relu",
                      depth: int = 2, **options: Any) -> Architecture:
    """Build the architecture registered as ``arch`` for inputs of dimension ``d`` from the
    CLI's options (each architecture reads the ones it uses)."""
    if d < 1:
        raise InputError(f"data has d = {d} features; need at least 1")
    cls = ARCHITECTURES.get(arch)
    if cls is None:
        raise InputError(f"unknown architecture {arch!r}; expected one of: {', '.join(ARCHS)}")
    return cls.from_options(d, hidden=hidden, act=act, depth=depth, **options)


def architecture_from_dict(spec: Mapping[str, Any]) -> Architecture:
    """Rebuild an architecture from :meth:`Architecture.to_dict` output (as stored in result
    files). Raise :class:`InputError` for an unknown ``arch`` and ``KeyError``/
    ``ValueError``/``TypeError`` for a malformed record."""
    cls = ARCHITECTURES.get(spec.get("arch"))
    if cls is None:
        raise InputError(f"unknown architecture record {spec!r}")
    return cls.from_dict(spec)


def architecture_of_weight_arrays(arrays: Mapping[str, np.ndarray], source: str, **options: Any) -> Architecture:
    """The architecture whose weight files hold ``arrays`` (asked of every registered
    architecture in turn); raise :class:`InputError` when none claims them."""
    for cls in ARCHITECTURES.values():
        arch = cls.from_weight_arrays(arrays, source, **options)
        if arch is not None:
            return arch
    found = ", ".join(sorted(arrays)) or "none"
    wanted = " or ".join(cls.weight_file_arrays for cls in ARCHITECTURES.values())
    raise InputError(f"{source}: not a weight snapshot (needs arrays {wanted}; found: {found})")


def random_direction(num_params: int, generator, batch: tuple[int, ...] = (), **kw) -> Array:
    """Unit-norm directions drawn uniformly on the sphere S^{k-1}, shape (*batch, k): a
    tensor from a ``torch.Generator`` (``kw``: dtype, device), or a float64 numpy array
    from a ``numpy.random.Generator``."""
    if isinstance(generator, np.random.Generator):
        u = generator.standard_normal((*batch, num_params))
    else:
        u = torch.randn(*batch, num_params, generator=generator, **kw)
    return unit(u)


def unit(w: Array) -> Array:
    """w / ‖w‖ along the last axis."""
    return w / ((w * w).sum(-1, keepdims=True) ** 0.5)
