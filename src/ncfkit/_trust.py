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

Each inner solve stops at the forcing term min(0.1, √res) (superlinear convergence), but
never below what the residual still needs (a model residual of tol/2). A point's
𝒩, ∇𝒩 and Hessian-vector products come from :func:`point_oracle`: for feed-forward nets
on host data the point's forward and backward passes are computed once and every
product reuses them (two GEMMs with the data per product on a two-layer net), and the
inner solves' products run in float32 while their forcing term is ≥ 1e-3 (relative
error ~1e-7 ≪ the forcing term; every accepted point, its 𝒩, ∇𝒩 and residual stay
float64, so the limit and its certificate are not affected).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["FinishResult", "point_oracle", "trust_region_finish"]


@dataclass(frozen=True)
class FinishResult:
    u: np.ndarray  # (k,) unit
    ncf: float
    grad: np.ndarray  # ∇𝒩(u)
    residual: float
    converged: bool  # residual <= tol
    iterations: int  # outer (Newton) steps tried
    products: int  # Hessian-vector products
    point: object = None  # the :func:`point_oracle` object at u (its products reuse the point's passes)


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


class _MLPPoint:
    """𝒩(u), ∇𝒩(u) and v ↦ ∇²𝒩(u)v of a feed-forward net at one point u, numpy float64.

    The forward and backward passes at u are kept, so a Hessian-vector product costs
    only its own tangent and adjoint passes (two GEMMs with the data on a two-layer net,
    where :meth:`MLP.hvp <ncfkit.models.mlp.MLP.hvp>` recomputes the point's passes with
    every product): the R-operator of that method with the loss term dropped (𝒩 = ỹᵀH:
    the output's adjoint ỹ does not depend on u)."""

    def __init__(self, arch, X: np.ndarray, XT: np.ndarray, ytilde: np.ndarray, u: np.ndarray, data32=None):
        self.arch, self.X, self._data32 = arch, X, data32
        act = arch.act
        Ws = arch.split(u)
        hs, zs = [XT], []
        for W in Ws[:-1]:
            z = W @ hs[-1]
            zs.append(z)
            hs.append(act(z))
        out = (Ws[-1] @ hs[-1])[0]
        self.value = float(out @ ytilde)
        s1 = [act.derivative(z) for z in zs]
        depth = len(Ws)
        bs, wtbs, grads = [None] * depth, [None] * depth, [None] * depth
        b = ytilde[None, :]  # adjoint of layer l's output pre-activation, (k_l, n)
        for l in range(depth - 1, 0, -1):
            bs[l] = b
            grads[l] = b @ hs[l].T
            wtbs[l] = _t_matmul(Ws[l], b)
            b = wtbs[l] * s1[l - 1]
        bs[0] = b
        grads[0] = b @ X
        self.grad = np.concatenate([G.ravel() for G in grads])
        self._Ws, self._hs, self._zs, self._s1, self._bs, self._wtbs = Ws, hs, zs, s1, bs, wtbs
        self._shared = {}  # dtype -> what every product reads (built on the first product)

    def _state(self, low: bool):
        """What every product at this point reads: (W, h, σ'(z), b) per layer, (Wᵀb)·σ''(z)
        per layer, the output layer's adjoint times σ' (a product's output-layer gradient
        is then one pass) and X; ``low``: in float32 (only the arrays a product reads)."""
        st = self._shared.get(low)
        if st is not None:
            return st
        if not low:
            act, Ws, zs, wtbs = self.arch.act, self._Ws, self._zs, self._wtbs
            curv = [None] + [wtbs[l] * act.second_derivative(zs[l - 1]) for l in range(1, len(Ws))]
            st = (Ws, self._hs, self._s1, self._bs, curv, self._bs[-1] * self._s1[-1], self.X)
        else:
            Ws, hs, s1, bs, curv, top, _ = self._state(False)
            depth = len(Ws)
            X32, XT32 = self._data32()

            def f32(arrays, a, b):
                return [None] * a + [x.astype(np.float32) for x in arrays[a:b]] + [None] * (len(arrays) - b)

            st = (f32(Ws, 0, depth), [XT32] + f32(hs, 1, depth - 1)[1:], f32(s1, 0, depth - 2),
                  f32(bs, 1, depth - 1), f32(curv, 1, depth), top.astype(np.float32), X32)
        self._shared[low] = st
        return st

    def hvp(self, v: np.ndarray, low: bool = False) -> np.ndarray:
        """∇²𝒩(u) v for v (k,) or (m, k), float64; ``low``: the products in float32 (half
        the memory traffic and twice BLAS's rate, relative error ~1e-6: for the inexact
        Newton steps of :func:`trust_region_finish`, never for a certificate)."""
        v = np.asarray(v, dtype=np.float64)
        if v.ndim == 2:
            return np.stack([self.hvp(row, low) for row in v]) if len(v) else np.zeros_like(v)
        depth = len(self._Ws)
        if depth == 1:  # linear in u: no curvature
            return np.zeros_like(v)
        Ws, hs, s1, bs, curv, top_adj, X = self._state(low and self._data32 is not None)
        Vs = self.arch.split(v.astype(X.dtype, copy=False))
        # tangents of the pre-activations z_l (and of h_l = σ(z_l) below the last hidden layer)
        dzs, dhs = [], [None]
        for l in range(depth - 1):
            dz = Vs[l] @ hs[l]
            if dhs[l] is not None:
                dz += Ws[l] @ dhs[l]
            dzs.append(dz)
            dhs.append(s1[l] * dz if l < depth - 2 else None)
        top = depth - 1
        grads = [None] * depth
        # output layer: b = ỹ is fixed, so its gradient is bᵀ(σ'·ż) and the adjoint's tangent
        # (Vᵀb)·σ' + (Wᵀb)·σ''·ż
        grads[top] = np.einsum("jn,jn->j", top_adj, dzs[-1])[None, :]
        db = curv[top] * dzs[-1]
        db += Vs[top][0][:, None] * top_adj
        for l in range(top - 1, 0, -1):
            grads[l] = db @ hs[l].T + bs[l] @ dhs[l].T
            db = (Vs[l].T @ bs[l] + Ws[l].T @ db) * s1[l - 1] + curv[l] * dzs[l - 1]
        grads[0] = db @ X
        return np.concatenate([G.ravel() for G in grads]).astype(np.float64, copy=False)


def _t_matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Aᵀ B; a one-row A (the output layer) as an outer product, which BLAS's GEMM with
    an inner dimension of 1 does several times slower."""
    return np.multiply.outer(A[0], B[0]) if A.shape[0] == 1 else A.T @ B


class _GenericPoint:
    """The same interface from a ``value_and_grad`` function and ``hvp(u, v)``."""

    def __init__(self, value_and_grad, hvp, u):
        val, grad = value_and_grad(u)
        self.value, self.grad = float(val), np.asarray(grad, dtype=np.float64)
        self._u, self._hvp = u, hvp

    def hvp(self, v, low: bool = False):
        return np.asarray(self._hvp(self._u, v), dtype=np.float64)


def point_oracle(arch, X, ytilde, value_and_grad: Callable | None = None,
                 hvp: Callable | None = None) -> Callable[[np.ndarray], object] | None:
    """``at(u)`` → an object with ``value`` (𝒩(u)), ``grad`` (∇𝒩(u)) and ``hvp(v)``
    (∇²𝒩(u)v) for numpy float64 u (k,). Feed-forward nets on host data get
    :class:`_MLPPoint` (the point's passes computed once for all its products); other
    architectures, or data on an accelerator, ``value_and_grad(u)`` and ``hvp(u, v)``
    (None when they are not given)."""
    from .arrays import is_numpy, to_numpy
    from .models.mlp import MLP

    host = is_numpy(X) or getattr(getattr(X, "device", None), "type", "cpu") == "cpu"
    if isinstance(arch, MLP) and host:
        Xn = np.ascontiguousarray(to_numpy(X), dtype=np.float64)
        XT = np.ascontiguousarray(Xn.T)
        yn = np.ascontiguousarray(to_numpy(ytilde), dtype=np.float64)
        low: list = []

        def data32():  # X and Xᵀ in float32, made once for all points
            if not low:
                low.extend((Xn.astype(np.float32), XT.astype(np.float32)))
            return low

        return lambda u: _MLPPoint(arch, Xn, XT, yn, np.asarray(u, dtype=np.float64), data32)
    if value_and_grad is None or hvp is None:
        return None
    return lambda u: _GenericPoint(value_and_grad, hvp, u)


def trust_region_finish(at: Callable[[np.ndarray], object], u: np.ndarray, *, g0: float, tol: float,
                        eps: float = np.finfo(float).eps, max_iter: int = 50, cg_iter: int = 200,
                        radius: float = 0.1, low_precision: bool = True) -> FinishResult:
    """Trust-region Newton on the sphere from ``u`` (k,) until the ascent's residual is
    ≤ ``tol`` (or ``max_iter`` steps). ``at(u)`` is a :func:`point_oracle`: 𝒩, ∇𝒩 and the
    Hessian-vector products at u, float64 numpy vectors. ``low_precision``: the inner
    solves' products in float32 while their forcing term is ≥ 1e-3 (where the oracle
    has such products)."""
    u = np.asarray(u, dtype=np.float64)
    u = u / np.linalg.norm(u)
    pt = at(u)
    val, grad = pt.value, pt.grad
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

        # forcing term √res (superlinear), but never solving for more than the residual
        # needs: a model residual of tol/2 ends the finish in this step
        rtol = min(0.1, max(np.sqrt(res), 0.5 * tol / res))
        low = low_precision and rtol >= 1e-3  # float32 products: errors ~1e-6 ≪ rtol

        def apply_A(xi, u=u, radial=radial, pt=pt, low=low):
            xi = xi - (u @ xi) * u
            out = radial * xi - pt.hvp(xi, low)
            return out - (u @ out) * u

        xi, Axi, used = _steihaug(apply_A, g, radius, rtol, cg_iter)
        products += used
        predicted = float(g @ xi) - 0.5 * float(xi @ Axi)  # model increase of 𝒩
        trial = u + xi
        trial /= np.linalg.norm(trial)
        t_pt = at(trial)
        t_val, t_grad = t_pt.value, t_pt.grad
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
            u, pt, val, grad, radial, g, res = trial, t_pt, t_val, t_grad, t_radial, t_g, t_res
        elif radius < 1e-16:
            break
    return FinishResult(u, val, grad, res, res <= tol, it, products, pt)
