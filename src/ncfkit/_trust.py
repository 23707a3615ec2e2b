"""A second-order finish for the constrained NCF ascent: Riemannian trust-region Newton
steps on the unit sphere (truncated conjugate gradients, Steihaug–Toint; Absil, Mahony &
Sepulchre, *Optimization Algorithms on Matrix Manifolds*, ch. 7) with the closed-form
Hessian-vector products of :mod:`ncfkit.models`.

For max 𝒩(u) on ‖u‖ = 1 the Riemannian gradient is g = P∇𝒩 (P = I − uuᵀ) and the
Riemannian Hessian of −𝒩 is A ξ = (uᵀ∇𝒩) ξ − P∇²𝒩 ξ on u⊥ (uᵀ∇𝒩 = L_h𝒩 by Euler's
identity). At a Δ-second-order KKT point A ⪰ Δ·I, so Newton's step A ξ = g converges
quadratically once the ascent is close; the trust region keeps each step safe where A
is indefinite (negative curvature is followed to the boundary, which increases 𝒩), and
a step is kept only when 𝒩 rises by more than round-off or, once changes of 𝒩 drown in
round-off, the residual falls. The residual is the ascent's: ‖g‖ / max(‖∇𝒩‖, g0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["FinishResult", "trust_region_finish"]


@dataclass(frozen=True)
class FinishResult:
    u: np.ndarray  # (k,) unit
    ncf: float
    grad: np.ndarray  # ∇𝒩(u)
    residual: float
    converged: bool  # residual <= tol
    iterations: int  # outer (Newton) steps tried
    products: int  # Hessian-vector products


def _steihaug(apply_A: Callable[[np.ndarray], np.ndarray], g: np.ndarray, radius: float, rtol: float,
              max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Approximate minimiser ξ of −gᵀξ + ½ξᵀAξ with ‖ξ‖ ≤ radius (truncated CG from 0);
    returns (ξ, Aξ, products)."""
    x = np.zeros_like(g)
    Ax = np.zeros_like(g)
    r = g.copy()
    p = r.copy()
    rr = float(r @ r)
    stop = rtol * np.sqrt(rr)
    used = 0
    for _ in range(max_iter):
        Ap = apply_A(p)
        used += 1
        pAp = float(p @ Ap)
        if pAp <= 0:  # negative curvature: to the boundary along p
            tau = _to_boundary(x, p, radius)
            return x + tau * p, Ax + tau * Ap, used
        alpha = rr / pAp
        x_new = x + alpha * p
        if np.linalg.norm(x_new) >= radius:
            tau = _to_boundary(x, p, radius)
            return x + tau * p, Ax + tau * Ap, used
        x, Ax = x_new, Ax + alpha * Ap
        r = r - alpha * Ap
        rr_new = float(r @ r)
        if np.sqrt(rr_new) <= stop:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, Ax, used


def _to_boundary(x: np.ndarray, p: np.ndarray, radius: float) -> float:
    """τ ≥ 0 with ‖x + τp‖ = radius."""
    a, b, c = float(p @ p), 2 * float(x @ p), float(x @ x) - radius**2
    return (-b + np.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)


def trust_region_finish(value_and_grad: Callable, hvp: Callable[[np.ndarray, np.ndarray], np.ndarray],
                        u: np.ndarray, *, g0: float, tol: float, eps: float = np.finfo(float).eps,
                        max_iter: int = 50, cg_iter: int = 200, radius: float = 0.1) -> FinishResult:
    """Trust-region Newton on the sphere from ``u`` (k,) until the ascent's residual is
    ≤ ``tol`` (or ``max_iter`` steps). ``value_and_grad(u) -> (𝒩, ∇𝒩)`` and
    ``hvp(u, v) -> ∇²𝒩(u) v`` take and return float64 numpy vectors."""
    u = np.asarray(u, dtype=np.float64)
    u = u / np.linalg.norm(u)
    val, grad = (np.asarray(a, dtype=np.float64) for a in value_and_grad(u))
    val = float(val)
    products = 0

    def state(u, grad):
        radial = float(u @ grad)
        g = grad - radial * u
        return radial, g, float(np.linalg.norm(g)) / max(float(np.linalg.norm(grad)), g0)

    radial, g, res = state(u, grad)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - it is reported
        if res <= tol:
            it -= 1
            break

        def apply_A(xi, u=u, radial=radial):
            xi = xi - (u @ xi) * u
            hx = np.asarray(hvp(u, xi), dtype=np.float64)
            out = radial * xi - hx
            return out - (u @ out) * u

        xi, Axi, used = _steihaug(apply_A, g, radius, min(0.1, np.sqrt(res)), cg_iter)
        products += used
        predicted = float(g @ xi) - 0.5 * float(xi @ Axi)  # model increase of 𝒩
        trial = u + xi
        trial /= np.linalg.norm(trial)
        t_val, t_grad = (np.asarray(a, dtype=np.float64) for a in value_and_grad(trial))
        t_val = float(t_val)
        t_radial, t_g, t_res = state(trial, t_grad)
        noise = 64 * eps * (abs(val) + g0)
        actual = t_val - val
        rho = actual / predicted if predicted > noise else (1.0 if actual >= -noise else -1.0)
        step = float(np.linalg.norm(xi))
        if rho < 0.25:
            radius = 0.25 * step
        elif rho > 0.75 and step >= 0.99 * radius:
            radius = min(2 * radius, np.pi / 2)
        if actual > noise or (actual >= -noise and t_res < res):
            u, val, grad, radial, g, res = trial, t_val, t_grad, t_radial, t_g, t_res
        elif radius < 1e-16:
            break
    return FinishResult(u, val, grad, res, res <= tol, it, products)
