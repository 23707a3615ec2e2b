"""numpy arrays or torch tensors: the handful of operations ncfkit's maths needs on both.

The closed forms of :mod:`ncfkit.models`, :mod:`ncfkit.activations`, :mod:`ncfkit.losses`
and :mod:`ncfkit.ncf`, the certificate of :mod:`ncfkit.kkt` and the sparsity tests of
:mod:`ncfkit.sparsity` take either kind and return the kind they were given. numpy
arrays (float32/float64, on the host) are what a CPU run with the compiled kernel works
on, so such a run never imports torch (:mod:`ncfkit._lazy`); tensors are for any device
and for autograd. Written with operators and the functions both libraries share
(``xp.maximum``, ``xp.where``, ``xp.concatenate`` …), so each formula exists once.
"""

from __future__ import annotations

from typing import TypeAlias, Union

import numpy as np

from ._lazy import torch

__all__ = ["Array", "is_numpy", "xp", "to_numpy", "norm", "finfo", "asarray_like", "zeros", "zeros_like_bool",
           "nonzero"]


#: A numpy array or a torch tensor: what the closed forms take and return (the same kind
#: they were given). Written with ``Union`` and a string so torch is not imported.
Array: TypeAlias = Union[np.ndarray, "torch.Tensor"]  # noqa: UP007 - "X | Y" cannot take a forward reference


def is_numpy(x) -> bool:
    """A numpy array or scalar (not a tensor)."""
    return isinstance(x, (np.ndarray, np.generic))


def xp(x):
    """The array library of ``x``: numpy, or torch."""
    return np if is_numpy(x) else torch


def to_numpy(x) -> np.ndarray:
    """``x`` as a numpy array on the host (a view of a CPU tensor, no copy)."""
    if is_numpy(x):
        return np.asarray(x)
    return x.detach().cpu().numpy()


def norm(x, keepdims: bool = False):
    """Euclidean norm over the last axis."""
    s = (x * x).sum(-1, keepdims=True) if keepdims else (x * x).sum(-1)
    return s**0.5


def finfo(x):
    """Machine limits of ``x``'s floating dtype (``.eps``, ``.tiny``)."""
    return np.finfo(x.dtype) if is_numpy(x) else torch.finfo(x.dtype)


def asarray_like(a, like):
    """``a`` (an array or a tensor) in the kind, dtype and device of ``like``."""
    if is_numpy(like):
        return np.asarray(to_numpy(a) if not is_numpy(a) else a, dtype=like.dtype)
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)


def zeros(shape, like):
    """Zeros of ``shape`` in ``like``'s kind, dtype and device."""
    if is_numpy(like):
        return np.zeros(shape, dtype=like.dtype)
    return torch.zeros(shape, dtype=like.dtype, device=like.device)


def zeros_like_bool(n: int, like):
    """A boolean zero vector (n,) of ``like``'s kind (and device)."""
    if is_numpy(like):
        return np.zeros(n, dtype=bool)
    return torch.zeros(n, dtype=torch.bool, device=like.device)


def nonzero(mask) -> list[int]:
    """Indices of the true entries of a 1-D boolean mask."""
    return np.flatnonzero(to_numpy(mask)).tolist()
