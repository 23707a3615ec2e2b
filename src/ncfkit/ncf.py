"""The neural correlation function 𝒩(u) = ỹᵀ H(X; u) (eq. 3) and its derivatives.

The gradient uses each architecture's closed-form backward pass (``Architecture.vjp``).
Hessian-vector products use its closed-form R-operator (``Architecture.hvp``: forward
over reverse written out) where the loss has ℓ'', else reverse-mode autograd of the
gradient (:func:`vjp`: the Hessian is symmetric, so vᵀ∇²f = ∇²f v); the dense Hessian
stacks such rows in chunks, so its memory stays bounded for thousands of parameters.
No ``torch.func``: its first transform of a process imports torch._dynamo, ~3 s of every
command's start-up. All functions accept a batch of parameter vectors ``u`` of shape
(..., k), as numpy arrays or tensors (:mod:`ncfkit.arrays`; autograd: tensors only).

For an L_h-homogeneous network Euler's identity holds: uᵀ∇𝒩(u) = L_h 𝒩(u).
"""

from __future__ import annotations

import numpy as np

from ._lazy import torch
from .arrays import is_numpy, xp
from .losses import Loss
from .models import Architecture

__all__ = ["ncf", "ncf_grad", "ncf_value_and_grad", "ncf_hvp", "ncf_hessian", "vjp", "dense_jacobian",
           "loss_value", "loss_value_and_grad", "loss_hvp", "loss_hessian"]


def ncf(arch: Architecture, X: torch.Tensor, ytilde: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """𝒩(u) = ỹᵀH(X; u), shape (...)."""
    return arch.forward(X, u) @ ytilde


def ncf_grad(arch: Architecture, X: torch.Tensor, ytilde: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """∇𝒩(u), shape (..., k)."""
    return arch.vjp(X, u, xp(u).broadcast_to(ytilde, (*u.shape[:-1], ytilde.shape[-1])))


def ncf_value_and_grad(arch, X, ytilde, u):
    """(𝒩(u), ∇𝒩(u)) from one forward and one backward pass."""
    out, grad = arch.forward_and_vjp(X, u, lambda o: xp(o).broadcast_to(ytilde, o.shape))
    return out @ ytilde, grad


def vjp(f, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """vᵀ J_f(w) for ``f: (..., k) -> (..., k)`` (batched over leading axes, as every
    ncfkit gradient is), batched over the leading axes of ``v`` (``w`` is broadcast to
    them), by plain reverse-mode autograd. For f = ∇g it is the Hessian-vector product
    ∇²g(w) v (the Hessian is symmetric). An f that does not depend on w gives zeros."""
    # numpy's rule, not torch.broadcast_shapes: that one imports sympy (~0.7 s) on first use
    lead = torch.Size(np.broadcast_shapes(tuple(w.shape), tuple(v.shape)))
    with torch.enable_grad():
        W = w.detach().expand(lead).clone().requires_grad_(True)
        out = f(W)
        if not out.requires_grad:  # f constant in w (e.g. the NCF gradient of a linear net)
            return torch.zeros(lead, dtype=w.dtype, device=w.device)
        (g,) = torch.autograd.grad((out * v).sum(), W, allow_unused=True)
    return torch.zeros(lead, dtype=w.dtype, device=w.device) if g is None else g


def ncf_hvp(arch, X, ytilde, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """∇²𝒩(u) v: the architecture's closed-form R-operator (``arch.hvp``) where it has
    one, else reverse-mode autograd of ∇𝒩 (:func:`vjp`)."""
    if hasattr(arch, "hvp"):
        return arch.hvp(X, u, v, lambda o: xp(o).broadcast_to(ytilde, o.shape))
    return vjp(lambda x: ncf_grad(arch, X, ytilde, x), u, v)


def dense_jacobian(f, w: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Jacobian J[i, j] = ∂f_i/∂w_j (k, k) of ``f: (..., k) -> (..., k)`` (batched over
    leading axes, as every ncfkit gradient is) at ``w``; for f = ∇g it is the Hessian of g.

    Rows are vector-Jacobian products e_iᵀJ (:func:`vjp`), ``chunk`` rows per backward
    pass through a batch of copies of ``w``: bounded memory, and none of ``torch.func``'s
    machinery (which alone cost ~120 MB here).
    """
    return _stack_rows(lambda V: vjp(f, w, V), w, chunk)


def _stack_rows(hvp, w, chunk: int, ranges=None):
    """The dense (k, k) matrix whose rows are ``hvp(E)`` for chunks E of the identity;
    a chunk never straddles two of ``ranges`` (the layers: see ``MLP.hvp``, which skips
    the layers a chunk does not touch)."""
    k = w.shape[-1]
    ranges = ranges or ((0, k),)
    starts = [(i, min(i + chunk, stop)) for start, stop in ranges for i in range(start, stop, chunk)]
    if is_numpy(w):
        return np.concatenate([hvp(np.eye(b - a, k, a, dtype=w.dtype)) for a, b in starts])
    eye = torch.eye(k, dtype=w.dtype, device=w.device)
    return torch.cat([hvp(eye[a:b]) for a, b in starts])


#: Rows of a dense Hessian per closed-form R-operator pass: ~chunk × (widths × n) floats
#: of tangents at once (256 × 50 × 100 × 8 B = 10 MB for the paper's Figure-1 net).
HVP_CHUNK = 256


def ncf_hessian(arch, X, ytilde, u: torch.Tensor) -> torch.Tensor:
    """Dense ∇²𝒩(u) of one point ``u`` (k,), shape (k, k)."""
    if hasattr(arch, "hvp"):
        return _stack_rows(lambda V: ncf_hvp(arch, X, ytilde, u, V), u, HVP_CHUNK,
                           getattr(arch, "layer_ranges", None))
    return dense_jacobian(lambda x: ncf_grad(arch, X, ytilde, x), u)


def loss_value(arch, X, y, loss: Loss, w: torch.Tensor) -> torch.Tensor:
    """Training loss 𝓛(w) (eq. 1), shape (...)."""
    return loss.value(arch.forward(X, w), y)


def loss_value_and_grad(arch, X, y, loss: Loss, w: torch.Tensor):
    """(𝓛(w), ∇𝓛(w)) from one forward and one backward pass, batched over w's leading axes."""
    out, grad = arch.forward_and_vjp(X, w, lambda o: loss.dvalue(o, y))
    return loss.value(out, y), grad


def _loss_grad(arch, X, y, loss, w):
    return loss_value_and_grad(arch, X, y, loss, w)[1]


def _closed_form_hvp(arch, loss: Loss) -> bool:
    return hasattr(arch, "hvp") and loss._d2ell is not None


def loss_hvp(arch, X, y, loss: Loss, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """∇²𝓛(w) v = Jᵀ(ℓ''⊙Jv) + (∂J/∂v)ᵀℓ': the architecture's closed-form R-operator
    where it and the loss's ℓ'' exist, else reverse-mode autograd of ∇𝓛 (:func:`vjp`)."""
    if _closed_form_hvp(arch, loss):
        return arch.hvp(X, w, v, lambda o: loss.dvalue(o, y), lambda o, do: loss.d2value(o, y) * do)
    return vjp(lambda x: _loss_grad(arch, X, y, loss, x), w, v)


def loss_hessian(arch, X, y, loss: Loss, w: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Dense ∇²𝓛(w) of one point (k,), shape (k, k); ``chunk`` rows per pass (default
    :data:`HVP_CHUNK` in closed form, 64 by autograd)."""
    if _closed_form_hvp(arch, loss):
        return _stack_rows(lambda V: loss_hvp(arch, X, y, loss, w, V), w, chunk or HVP_CHUNK,
                           getattr(arch, "layer_ranges", None))
    return dense_jacobian(lambda x: _loss_grad(arch, X, y, loss, x), w, chunk or 64)
