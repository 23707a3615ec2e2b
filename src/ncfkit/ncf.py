"""The neural correlation function 𝒩(u) = ỹᵀ H(X; u) (eq. 3) and its derivatives.

The gradient uses each architecture's closed-form backward pass (``Architecture.vjp``);
Hessian-vector products differentiate that gradient forward (``torch.func.jvp``), and the
dense Hessian stacks reverse-mode rows in chunks (:func:`dense_jacobian`), so its memory
stays bounded for thousands of parameters. All functions accept a batch of
parameter vectors ``u`` of shape (..., k).

For an L_h-homogeneous network Euler's identity holds: uᵀ∇𝒩(u) = L_h 𝒩(u).
"""

from __future__ import annotations

import torch
from torch.func import jvp

from .losses import Loss
from .models import Architecture

__all__ = ["ncf", "ncf_grad", "ncf_value_and_grad", "ncf_hvp", "ncf_hessian",
           "loss_value", "loss_value_and_grad", "loss_hvp", "loss_hessian"]


def ncf(arch: Architecture, X: torch.Tensor, ytilde: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """𝒩(u) = ỹᵀH(X; u), shape (...)."""
    return arch.forward(X, u) @ ytilde


def ncf_grad(arch: Architecture, X: torch.Tensor, ytilde: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """∇𝒩(u), shape (..., k)."""
    return arch.vjp(X, u, ytilde.expand(*u.shape[:-1], -1))


def ncf_value_and_grad(arch, X, ytilde, u):
    """(𝒩(u), ∇𝒩(u)) from one forward and one backward pass."""
    out, grad = arch.forward_and_vjp(X, u, lambda o: ytilde.expand_as(o))
    return out @ ytilde, grad


def ncf_hvp(arch, X, ytilde, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """∇²𝒩(u) v (forward-over-closed-form-reverse)."""
    return jvp(lambda x: ncf_grad(arch, X, ytilde, x), (u,), (v,))[1]


def dense_jacobian(f, w: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Jacobian J[i, j] = ∂f_i/∂w_j (k, k) of ``f: (..., k) -> (..., k)`` (batched over
    leading axes, as every ncfkit gradient is) at ``w``; for f = ∇g it is the Hessian of g.

    Rows are vector-Jacobian products e_iᵀJ by plain reverse-mode autograd, ``chunk`` rows
    per backward pass through a batch of copies of ``w``: bounded memory, and none of
    ``torch.func``'s machinery (which alone cost ~120 MB here).
    """
    k = w.numel()
    eye = torch.eye(k, dtype=w.dtype, device=w.device)
    rows = []
    with torch.enable_grad():
        for i in range(0, k, chunk):
            V = eye[i : i + chunk]
            W = w.detach().expand(V.shape[0], -1).clone().requires_grad_(True)
            rows.append(torch.autograd.grad((f(W) * V).sum(), W)[0])
    return torch.cat(rows)


def ncf_hessian(arch, X, ytilde, u: torch.Tensor) -> torch.Tensor:
    """Dense ∇²𝒩(u) of one point ``u`` (k,), shape (k, k)."""
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


def loss_hvp(arch, X, y, loss: Loss, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """∇²𝓛(w) v."""
    return jvp(lambda x: _loss_grad(arch, X, y, loss, x), (w,), (v,))[1]


def loss_hessian(arch, X, y, loss: Loss, w: torch.Tensor) -> torch.Tensor:
    """Dense ∇²𝓛(w) of one point (k,), shape (k, k)."""
    return dense_jacobian(lambda x: _loss_grad(arch, X, y, loss, x), w)
