"""KKT points of the constrained NCF  max 𝒩(u) s.t. ‖u‖₂ = 1  (eq. 4, Lemma 20).

A first-order KKT point w* satisfies ∇𝒩(w*) = L_h 𝒩(w*) w* (λ* = L_h 𝒩(w*)/2). It is a
Δ-second-order KKT point when L_h 𝒩(w*) − bᵀ∇²𝒩(w*) b ≥ Δ for every unit b ⟂ w*, so
Δ = L_h 𝒩(w*) − λ_max(∇²𝒩(w*) restricted to w*⊥). Lemma 20: w* is an eigenvector of
∇²𝒩(w*) with eigenvalue L_h(L_h − 1)𝒩(w*).

:func:`normalized_ascent` runs projected (Riemannian) gradient ascent on the sphere from
a batch of starts at once, each with its own adaptive step; it is the practical proxy
for the NCF flow u̇ = ∇𝒩(u) whose limit direction defines the stable set (Def. 2).
:func:`certify` computes every diagnostic of one point; :func:`find_kkt_points` runs
many restarts, certifies, and merges points equal up to the network's symmetries.

For the kinks of relu / leaky:α nets (p = 1) the conditions are read in Clarke's sense
(:mod:`ncfkit.clarke`): :func:`certify` reports the Clarke residual and Δ on the smooth
stratum, and :func:`clarke_ascent` polishes each start on its stratum (Newton) until it
is certified or says why not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cmp_to_key

import numpy as np

from . import clarke
from ._lazy import torch
from .arrays import asarray_like, finfo, is_numpy, nonzero, norm, to_numpy
from .fastgd import _choose, ncf_value_and_grad_fn
from .models import Architecture
from .ncf import ncf, ncf_hessian, ncf_hvp, ncf_value_and_grad
from .sparsity import balance_error, neuron_activity

__all__ = ["AscentResult", "Certificate", "KKTPoint", "KKTResult", "normalized_ascent", "clarke_ascent",
           "kkt_residual", "certify", "find_kkt_points", "DENSE_MAX"]

#: Above this many parameters the restricted Hessian spectrum is computed matrix-free
#: (Lanczos: a few dozen Hessian-vector products for the top eigenvalues, where the dense
#: matrix costs k products and an O(k³) diagonalisation; on Figure 1, k = 1,050: ~3 ms
#: against ~230 ms).
DENSE_MAX = 400

#: The residual below which :func:`find_kkt_points` finishes a start by trust-region
#: Newton steps (:mod:`ncfkit._trust`). From 0.1 every start still ends at the point the
#: plain ascent reaches (64 starts on Figure 1 and on a k = 5,100 net); from the random
#: start itself, 1 and 4 of those 64 moved to another basin.
_KKT_FINISH = 0.1


@dataclass(frozen=True)
class AscentResult:
    """Final iterates of :func:`normalized_ascent`, one row per start."""

    # arrays of the kind of the starts u0 (numpy or torch)
    u: torch.Tensor  # (R, k), unit norm
    ncf: torch.Tensor  # (R,)
    residual: torch.Tensor  # (R,) relative first-order residual
    converged: torch.Tensor  # (R,) bool: residual <= tol
    steps: torch.Tensor  # (R,) steps taken
    stalled: torch.Tensor  # (R,) bool: stopped because 𝒩 stopped improving (kinks of ReLU)
    #: per start, why it is not converged (None: converged); set by :func:`clarke_ascent`
    reason: tuple[str | None, ...] | None = None


def kkt_residual(u: torch.Tensor, value: torch.Tensor, grad: torch.Tensor, L_h: float,
                 scale: torch.Tensor | float) -> torch.Tensor:
    """Relative first-order residual ‖∇𝒩(u) − L_h 𝒩(u) u‖ / scale."""
    return norm(grad - L_h * value[..., None] * u) / scale


def normalized_ascent(
    arch: Architecture, X: torch.Tensor, ytilde: torch.Tensor, u0: torch.Tensor,
    max_steps: int = 20000, tol: float = 1e-9, patience: int = 300,
    progress: Callable[[int, int], None] | None = None, engine: str = "auto", finish: float | None = 1e-2,
) -> AscentResult:
    """Projected gradient ascent of 𝒩 on the unit sphere from every row of ``u0``.

    Each start has its own step size η: a step u ← (u + η r)/‖u + η r‖ along the tangent
    gradient r = ∇𝒩 − (uᵀ∇𝒩)u is accepted when 𝒩 does not decrease (η then grows by 1.5),
    and is rejected otherwise (η halves). A start stops when its residual
    ‖r‖ / s ≤ ``tol``, where s = max(‖∇𝒩(u)‖, median ‖∇𝒩‖ ≠ 0 over the starts at step 0)
    keeps the test meaningful at points where 𝒩 and its gradient vanish. Converged starts
    are dropped from the batch, so the cost follows the slowest start, not R times it.

    For non-differentiable activations (ReLU, leaky ReLU) the residual can stall at a
    kink, where the one-sided gradient is no ascent direction; a start whose 𝒩 has not
    grown by more than round-off for ``patience`` steps stops as *stalled*.

    Where the activation is smooth (not max(x, αx)), a start whose residual is ≤ ``finish``
    (None: never) finishes by Riemannian trust-region Newton steps on the sphere
    (:func:`ncfkit._trust.trust_region_finish`, closed-form Hessian-vector products):
    quadratic convergence where the gradient steps converge linearly; a start it cannot
    finish continues the ascent.

    𝒩 and ∇𝒩 come from :func:`ncfkit.fastgd.ncf_value_and_grad_fn` (``engine``: the
    compiled kernel or numpy/BLAS on the CPU, by cost, else torch; the numpy engine one
    row at a time); the iterates are float64 on the host, and the result has the kind
    (numpy or torch), dtype and device of ``u0``. :func:`find_kkt_points` finishes from
    a residual of 0.1, :mod:`ncfkit.escape`'s governing point from the default 1e-2.
    """
    L_h = float(arch.homogeneity)
    # The iteration runs on the host in numpy (its ~20 vector operations per step cost
    # numpy a few µs each); 𝒩 and ∇𝒩 come from the kernel, or torch on X's device.
    u = to_numpy(u0).astype(np.float64)
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    R = u.shape[0]
    value_and_grad = ncf_value_and_grad_fn(arch, X, ytilde, engine, host=True, batch=R)
    if R > 1 and _choose(engine, arch, X, "correlation", R) == "numpy":
        # numpy's products are BLAS-bound row by row; a batch of rows only adds memory
        # traffic to its element-wise passes (3x slower at 8 rows of k = 5,100, measured)
        value_and_grad = _row_by_row(value_and_grad)
    eps = float(finfo(u0).eps)
    val, grad = (np.asarray(a, dtype=np.float64) for a in value_and_grad(u))
    gnorms = np.linalg.norm(grad, axis=-1)
    # the median over the starts whose gradient is not 0: ReLU starts with every neuron
    # dead have ∇𝒩 = 0, and a median of 0 made the first step η = 1/(L_h·tiny) overflow
    live = gnorms[gnorms > 0]
    g0 = max(float(np.median(live)) if live.size else 0.0, float(finfo(u0).tiny))
    eta = np.full(R, 1.0 / (L_h * g0))
    eta_max = 1e6 / (L_h * g0)

    out_u, out_val = u.copy(), val.copy()
    out_res = np.full(R, np.inf)
    steps = np.zeros(R, dtype=np.int64)
    done = np.zeros(R, dtype=bool)
    stalled = np.zeros(R, dtype=bool)
    best = val.copy()
    since = np.zeros(R, dtype=np.int64)
    idx = np.arange(R)  # rows of the full batch still running
    tried = np.zeros(R, dtype=bool)  # the trust-region finish was tried (once per start)
    finish_row = None if finish is None or clarke.applies(arch) else _finisher(arch, X, ytilde, value_and_grad,
                                                                               g0, tol, eps)

    for step in range(max_steps + 1):
        radial = (u * grad).sum(-1, keepdims=True)
        tangent = grad - radial * u
        tan_norm = np.linalg.norm(tangent, axis=-1)
        res = tan_norm / np.maximum(np.linalg.norm(grad, axis=-1), g0)
        if finish_row is not None:
            for j in np.flatnonzero((res <= finish) & (res > tol) & ~tried[idx]):
                tried[idx[j]] = True
                fr = finish_row(u[j])
                if fr.converged:
                    u[j], val[j], grad[j], res[j] = fr.u, fr.ncf, fr.grad, fr.residual
        stall = since >= patience
        fin = (res <= tol) | stall
        if step == max_steps:
            fin = np.ones_like(fin)
        if fin.any():
            rows = idx[fin]
            out_u[rows], out_val[rows], out_res[rows] = u[fin], val[fin], res[fin]
            done[rows] = res[fin] <= tol
            stalled[rows] = stall[fin] & (res[fin] > tol)
            steps[rows] = step
            keep = ~fin
            idx, u, val, grad, tangent, eta = idx[keep], u[keep], val[keep], grad[keep], tangent[keep], eta[keep]
            tan_norm, best, since = tan_norm[keep], best[keep], since[keep]
            if idx.size == 0:
                break
        trial = u + eta[:, None] * tangent
        trial /= np.linalg.norm(trial, axis=-1, keepdims=True)
        t_val, t_grad = (np.asarray(a, dtype=np.float64) for a in value_and_grad(trial))
        # Accept a clear increase of 𝒩; once changes of 𝒩 drown in round-off (they are
        # O(residual²)), accept a step that keeps 𝒩 within round-off and does not
        # increase the tangent gradient.
        noise = 64 * eps * (np.abs(val) + g0)
        t_tan = t_grad - (trial * t_grad).sum(-1, keepdims=True) * trial
        ok = (t_val > val + noise) | ((t_val >= val - noise) & (np.linalg.norm(t_tan, axis=-1) <= tan_norm))
        u = np.where(ok[:, None], trial, u)
        val = np.where(ok, t_val, val)
        grad = np.where(ok[:, None], t_grad, grad)
        # capped: where 𝒩 is flat (a dead net, ∇𝒩 = 0) every step is accepted, and an
        # unbounded η overflows u + η·r into inf/NaN (or a zero vector) after ~1,700 steps
        eta = np.where(ok, np.minimum(eta * 1.5, eta_max), eta * 0.5)
        improved = val > best + noise
        best = np.maximum(best, val)
        since = np.where(improved, 0, since + 1)
        if progress is not None and step % 100 == 0:
            progress(step, int(idx.size))
    back = (lambda a: a) if is_numpy(u0) else (lambda a: torch.as_tensor(a, device=u0.device))
    return AscentResult(asarray_like(out_u, u0), asarray_like(out_val, u0), asarray_like(out_res, u0),
                        back(done), back(steps), back(stalled))


def _row_by_row(value_and_grad):
    """``value_and_grad`` applied to each row of a batch in turn."""
    def f(u):
        if u.ndim == 1:
            return value_and_grad(u)
        rows = [value_and_grad(r) for r in u]
        return (np.array([float(v) for v, _ in rows]), np.stack([np.asarray(g, dtype=np.float64) for _, g in rows]))
    return f


def _finisher(arch, X, ytilde, value_and_grad, g0: float, tol: float, eps: float):
    """The trust-region finish of one start u (k,) (numpy float64)."""
    from ._trust import point_oracle, trust_region_finish

    def hvp(u, v):
        return to_numpy(ncf_hvp(arch, X, ytilde, asarray_like(u, X), asarray_like(v, X))).astype(np.float64)

    at = point_oracle(arch, X, ytilde, value_and_grad, hvp)
    return lambda u: trust_region_finish(at, u, g0=g0, tol=tol, eps=eps)


def clarke_ascent(
    arch: Architecture, X: torch.Tensor, ytilde: torch.Tensor, u0: torch.Tensor,
    max_steps: int = 20000, tol: float = 1e-9, patience: int = 200, rounds: int = 4,
    active_tol: float = 1e-3, progress: Callable[[int, int], None] | None = None, engine: str = "auto",
) -> AscentResult:
    """An ascent that converges at the kinks of a piecewise-linear activation max(x, αx).

    Each round runs :func:`normalized_ascent` on the starts still open until 𝒩 stops
    improving (``patience`` steps: where the iterates zigzag across a kink, their sign
    pattern has settled), then :func:`ncfkit.clarke.polish` solves the KKT system on the
    smooth stratum of each (Newton's method, the vanishing pre-activations as
    constraints) and certifies it with the Clarke residual. A start whose stratum's
    multipliers leave their bounds moves off the stratum along the element of minimal
    norm of P_{u⊥}∂𝒩 (a step that increases 𝒩) and takes part in the next round. A start
    is converged when its Clarke residual is ≤ ``tol``; otherwise ``reason`` says why
    (never a bare "stalled"): ``stalled`` is all False.
    """
    u = to_numpy(u0).astype(np.float64)
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    R = u.shape[0]
    val = np.zeros(R)
    res = np.full(R, np.inf)
    used = np.zeros(R, dtype=np.int64)
    done = np.zeros(R, dtype=bool)
    reason: list[str | None] = [None] * R
    pending = np.arange(R)
    Xn, yn = np.asarray(to_numpy(X), dtype=np.float64), np.asarray(to_numpy(ytilde), dtype=np.float64)
    for rnd in range(rounds):
        budget = max_steps - int(used[pending].max())
        if budget <= 0:
            for i in pending:
                reason[i] = f"max_steps ({max_steps}) reached before a certified point; last: {reason[i]}"
            break
        asc = normalized_ascent(arch, X, ytilde, asarray_like(u[pending], X), max_steps=budget, tol=tol,
                                patience=patience, progress=progress, engine=engine)
        a_u, a_steps = to_numpy(asc.u).astype(np.float64), to_numpy(asc.steps)
        again = []
        for row, i in enumerate(pending):
            used[i] += int(a_steps[row])
            pol = clarke.polish(arch, Xn, yn, a_u[row], tol=tol, active_tol=active_tol)
            u[i], val[i], res[i], done[i], reason[i] = pol.u, pol.ncf, pol.residual, pol.certified, pol.reason
            if pol.certified or pol.direction is None or rnd == rounds - 1:
                continue
            moved = _step_off(arch, Xn, yn, pol.u, pol.direction, pol.ncf)
            if moved is None:
                reason[i] = f"{pol.reason}; no step along the minimal-norm direction increases 𝒩"
                continue
            u[i] = moved
            again.append(i)
        pending = np.array(again, dtype=np.int64)
        if pending.size == 0:
            break
    back = (lambda a: a) if is_numpy(u0) else (lambda a: torch.as_tensor(a, device=u0.device))
    return AscentResult(asarray_like(u, u0), asarray_like(val, u0), asarray_like(res, u0), back(done),
                        back(used), back(np.zeros(R, dtype=bool)), tuple(reason))


def _step_off(arch, X, ytilde, u, direction, value):
    """The unit point u + ηd (d: the minimal-norm direction off a stratum) with the
    largest η in 10^-1 … 10^-8 that increases 𝒩 beyond round-off, or None."""
    noise = 64 * np.finfo(float).eps * (abs(value) + 1.0)
    for eta in 10.0 ** -np.arange(1, 9):
        trial = u + eta * direction
        trial /= np.linalg.norm(trial)
        if float(ncf(arch, X, ytilde, trial)) > value + noise:
            return trial
    return None


@dataclass(frozen=True)
class Certificate:
    """Every diagnostic of one candidate KKT point w* (unit norm)."""

    w: torch.Tensor
    ncf: float
    lam: float  # λ* = L_h 𝒩(w*)/2
    residual: float  # ‖∇𝒩 − L_h 𝒩 w*‖ / max(‖∇𝒩‖, tiny)
    delta: float  # Δ = L_h 𝒩 − λ_max(∇²𝒩 | w*⊥)
    top_eigs: tuple[float, ...]  # largest eigenvalues of ∇²𝒩 restricted to w*⊥
    eig_error: float  # Lemma 20: ‖∇²𝒩 w* − L_h(L_h−1)𝒩 w*‖ / max(|L_h(L_h−1)𝒩|, tiny)
    balance_error: float | None  # Lemma 17 (mlp only)
    kind: str  # positive / zero / negative
    second_order: bool
    hessian_method: str  # dense / lanczos
    active_per_layer: tuple[int, ...] | None = None
    active_neurons: tuple[tuple[int, ...], ...] | None = None
    #: "smooth" (∇𝒩 exists), "clarke" (two-layer max(x, αx) net: Clarke generalized
    #: gradient) or "conservative" (deeper such net: the backward pass's conservative field)
    field: str = "smooth"
    multipliers: int | None = None  # kinks whose multiplier s ∈ [min(α,1), max(α,1)] enters g
    kinks: int | None = None  # vanishing pre-activations of nonzero neurons
    exact: bool | None = None  # the Clarke residual is the exact minimum over the multipliers
    stratum_dim: int | None = None  # dim of the smooth stratum's tangent space ∩ w⊥ (Δ is on it)
    reason: str | None = None  # why the point is not certified (None: certified or not asked)
    eig_residual: float | None = None  # achieved ‖Hv − λv‖/‖H‖ of the top eigenpairs (ncfkit.spectra)


def _restricted_spectrum(arch, X, ytilde, w, num: int = 3, max_products: int | None = None):
    """Largest eigenvalues of ∇²𝒩(w) restricted to w⊥ (:func:`ncfkit.spectra.extreme_eigs`
    with w deflated): dense for k ≤ :data:`DENSE_MAX`, else Lanczos on closed-form HVPs
    (no k × k matrix); its ``residual`` is the accuracy achieved."""
    from ._trust import point_oracle
    from .spectra import extreme_eigs

    wt = w if is_numpy(w) else w.detach()
    wn = to_numpy(wt).astype(np.float64)

    at = point_oracle(arch, X, ytilde)
    if at is not None:  # the point's passes once, not with every product
        matmat = at(wn).hvp
    else:
        def matmat(V):
            return to_numpy(ncf_hvp(arch, X, ytilde, wt, asarray_like(V, wt))).astype(np.float64)

    return extreme_eigs(matmat, w.shape[-1], num=num, which="LA", dense=DENSE_MAX, tol=1e-10, deflate=wn,
                        dense_matrix=lambda: to_numpy(ncf_hessian(arch, X, ytilde, wt)), max_products=max_products)


def _restricted_top_eigs(arch, X, ytilde, w: torch.Tensor, num: int = 3) -> tuple[np.ndarray, str]:
    """(largest eigenvalues of ∇²𝒩(w) restricted to w⊥, dense / lanczos): see
    :func:`_restricted_spectrum`."""
    spec = _restricted_spectrum(arch, X, ytilde, w, num)
    return spec.values, spec.method


def certify(arch: Architecture, X: torch.Tensor, ytilde: torch.Tensor, w: torch.Tensor,
            *, zero_tol: float = 1e-8, active_tol: float = 1e-3, second_order_tol: float = 1e-6,
            kink_tol: float | None = None, max_products: int | None = None) -> Certificate:
    """Certify one point w (normalised to unit norm first); ``X``, ``ytilde`` and ``w``
    are numpy arrays or tensors (:mod:`ncfkit.arrays`), and ``Certificate.w`` is of w's kind.

    ``zero_tol`` (relative to ‖∇𝒩‖-scale) decides the kind "zero"; ``active_tol`` is the
    relative neuron norm below which a hidden neuron is zero; ``second_order_tol``
    (relative to L_h|𝒩|) is the slack allowed in Δ ≥ 0 for the second-order verdict.

    Feed-forward nets with a piecewise-linear activation max(x, αx) (relu, leaky:α) get
    the Clarke certificate of :mod:`ncfkit.clarke` (``field`` "clarke" or
    "conservative"): the residual minimises over the multipliers of the pre-activations
    within ``kink_tol`` of zero (default :func:`ncfkit.clarke.default_kink_tol`), and Δ,
    the top eigenvalues and the Lemma-20 error are those of the smooth stratum. It is
    computed in float64 on the host from either kind of input, so numpy arrays and
    tensors give the same certificate.
    """
    w = w / norm(w)
    w = w if is_numpy(w) else w.detach()
    L_h = float(arch.homogeneity)
    tiny = float(finfo(w).tiny)
    extra = {}
    if clarke.applies(arch):
        cc = clarke.clarke_certificate(arch, X, ytilde, w, kink_tol=kink_tol, dense_max=DENSE_MAX,
                                       max_products=max_products)
        val, residual, delta, top, method, eig_error = (cc.ncf, cc.residual, cc.delta, cc.top_eigs,
                                                        cc.hessian_method, cc.eig_error)
        extra = {"field": cc.field, "multipliers": cc.multipliers, "kinks": cc.kinks, "exact": cc.exact,
                 "stratum_dim": cc.stratum_dim, "eig_residual": cc.eig_residual}
    else:
        val_t, grad = ncf_value_and_grad(arch, X, ytilde, w)
        val = float(val_t)
        gscale = max(float(norm(grad)), tiny)
        residual = float(norm(grad - L_h * val * w)) / gscale
        spec = _restricted_spectrum(arch, X, ytilde, w, max_products=max_products)
        top, method, extra["eig_residual"] = spec.values, spec.method, spec.residual
        delta = L_h * val - float(top[0])
        hw = ncf_hvp(arch, X, ytilde, w, w)
        target = L_h * (L_h - 1) * val
        eig_error = float(norm(hw - target * w)) / max(abs(target), tiny)
    ytscale = float(abs(ytilde).sum()) * float(norm(X).max()) ** L_h
    kind = "zero" if abs(val) <= zero_tol * max(ytscale, 1e-300) else ("positive" if val > 0 else "negative")
    second = delta >= -second_order_tol * max(L_h * abs(val), 1e-300)
    bal = act_layers = act_neurons = None
    if arch.neuron_layers is not None:
        bal = balance_error(arch, w)
        activity = neuron_activity(arch, w, active_tol)
        act_layers, act_neurons = tuple(activity.active_per_layer), activity.active
    return Certificate(w, val, L_h * val / 2, residual, delta, tuple(float(t) for t in top),
                       eig_error, bal, kind, bool(second), method, act_layers, act_neurons, **extra)


@dataclass(frozen=True)
class KKTPoint:
    """A distinct KKT point, its certificate, and how many restarts reached it."""

    cert: Certificate
    count: int
    basin_fraction: float
    restarts: tuple[int, ...]
    converged: bool = True  # False: not certified (smooth: stalled above --tol; max(x, αx): see reason)
    reason: str | None = None  # why the first start of the point is not converged


@dataclass(frozen=True)
class KKTResult:
    points: list[KKTPoint]  # sorted by 𝒩 descending
    homogeneity: float
    num_params: int
    restarts: int
    converged: int
    max_steps_taken: int
    unconverged: tuple[int, ...] = field(default=())  # starts that hit max_steps
    stalled: tuple[int, ...] = field(default=())  # starts that stalled above tol
    #: (start, reason) of every start left uncertified by :func:`clarke_ascent` (relu, leaky)
    reasons: tuple[tuple[int, str], ...] = field(default=())


def _signature(arch, X, ytilde, w, active_tol: float):
    """(𝒩, active neurons per layer, H(X; w)) of the unit vector along ``w``: what merging
    compares. All three are invariant under permutations and sign flips of hidden neurons
    and the rescalings of Lemma 17."""
    w = w / norm(w)
    out = arch.forward(X, w)
    active = tuple(neuron_activity(arch, w, active_tol).active_per_layer) if arch.neuron_layers is not None else None
    return float(out @ ytilde), active, out


def _same_point(a, b, rtol: float) -> bool:
    """Equal up to symmetry: same 𝒩, same active-neuron counts, same outputs on the data."""
    (ncf_a, act_a, out_a), (ncf_b, act_b, out_b) = a, b
    if abs(ncf_a - ncf_b) > rtol * max(abs(ncf_a), abs(ncf_b), 1e-300) or act_a != act_b:
        return False
    oscale = max(float(norm(out_a)), float(norm(out_b)), 1e-300)
    return float(norm(out_a - out_b)) <= 1e3 * rtol * oscale


def _point_order(a: KKTPoint, b: KKTPoint) -> int:
    """𝒩 descending; points whose 𝒩 ties to 1e-9 (relative: round-off must not decide
    the order) come sparsest first, then by their first restart."""
    fa, fb = a.cert.ncf, b.cert.ncf
    if abs(fa - fb) > 1e-9 * max(abs(fa), abs(fb), 1e-300):
        return -1 if fa > fb else 1
    key = lambda p: (sum(p.cert.active_per_layer or ()), min(p.restarts))  # noqa: E731
    return (key(a) > key(b)) - (key(a) < key(b))


def _smooth_ascent(arch, X, ytilde, u0, max_steps: int, tol: float, progress) -> AscentResult:
    """:func:`find_kkt_points`' ascent for a smooth activation: float64 data (the usual
    case) first ascend in float32 to the residual ``_KKT_FINISH`` (the same path up to
    float32 round-off, at half the cost of a step: on 64 starts each of Figure 1 and a
    k = 5,100 net, the same steps and every start at the same point), then every start
    is finished in float64 (trust-region Newton). A start whose float32 ascent overflows
    starts over in float64."""
    if str(X.dtype).removeprefix("torch.") != "float64":
        return normalized_ascent(arch, X, ytilde, u0, max_steps=max_steps, tol=tol, progress=progress,
                                 finish=_KKT_FINISH)
    low = (lambda a: a.astype(np.float32)) if is_numpy(X) else (lambda a: a.to(torch.float32))
    first = normalized_ascent(arch, low(X), low(ytilde), low(u0), max_steps=max_steps, tol=_KKT_FINISH,
                              progress=progress, finish=None)
    u1 = to_numpy(first.u).astype(np.float64)
    bad = ~(np.isfinite(u1).all(-1) & np.isfinite(to_numpy(first.ncf)))
    u1[bad] = to_numpy(u0)[bad]
    steps1 = to_numpy(first.steps)
    second = normalized_ascent(arch, X, ytilde, asarray_like(u1, u0), max_steps=max(max_steps - int(steps1.max()), 0),
                               tol=tol, progress=progress, finish=_KKT_FINISH)
    steps = to_numpy(second.steps) + steps1
    return replace(second, steps=steps if is_numpy(u0) else torch.as_tensor(steps, device=u0.device))


def find_kkt_points(
    arch: Architecture, X: torch.Tensor, ytilde: torch.Tensor, restarts: int = 32,
    seed: int = 0, max_steps: int = 20000, tol: float = 1e-9, merge_rtol: float = 1e-5,
    active_tol: float = 1e-3, progress: Callable[[int, int], None] | None = None,
) -> KKTResult:
    """Batched ascent from ``restarts`` random unit starts (seeded), certification of every
    converged start, and merging of points equal up to the network's symmetries.

    Smooth activations: the ascent runs to a residual of 0.1 (in float32 for float64
    data), then each start finishes by trust-region Newton steps in float64
    (:mod:`ncfkit._trust`); every start ends at the point the plain float64 ascent
    reaches from it (``tests/test_trust.py``), so ``KKTPoint.basin_fraction`` is the
    ascent's basin.

    Piecewise-linear activations (relu, leaky:α) use :func:`clarke_ascent`: every start is
    certified (Clarke residual ≤ ``tol``) or carries a reason, every start belongs to a
    point, and ``KKTResult.reasons`` lists the uncertified ones (``stalled`` and
    ``unconverged`` stay empty). Points whose 𝒩 ties to 1e-9 are ordered sparsest first."""
    from .models import random_direction

    gen = torch.Generator(device="cpu").manual_seed(seed)
    # drawn by torch's generator in X's dtype (numpy arrays or tensors): the same starts
    # for a seed whatever the kind of X, and as in every earlier ncfkit version
    dtype = getattr(torch, np.dtype(X.dtype).name) if is_numpy(X) else X.dtype
    u0 = asarray_like(random_direction(arch.num_params, gen, (restarts,), dtype=dtype), X)
    piecewise_linear = clarke.applies(arch)
    if piecewise_linear:  # every start ends certified or with a reason: all of them are points
        asc = clarke_ascent(arch, X, ytilde, u0, max_steps=max_steps, tol=tol, active_tol=active_tol,
                            progress=progress)
        conv = nonzero(asc.converged)
        stalled = [i for i in range(restarts) if not bool(asc.converged[i])]
    else:
        asc = _smooth_ascent(arch, X, ytilde, u0, max_steps, tol, progress)
        conv = nonzero(asc.converged)
        stalled = nonzero(asc.stalled)
    groups: list[tuple[tuple, list[int]]] = []  # (signature of the first member, members)
    # Converged starts first, so a stalled start joins a converged point when it matches.
    # Smooth activations: the best start of a group is its representative. Certified
    # relu/leaky points of one group tie in 𝒩 up to round-off, so they go in start order:
    # round-off must not pick the representative (or the group) of a start.
    key = (lambda i: i) if piecewise_linear else (lambda i: -float(asc.ncf[i]))
    for r in sorted(conv, key=key) + sorted(stalled, key=key):
        sig = _signature(arch, X, ytilde, asc.u[r], active_tol)
        for ref, members in groups:
            if _same_point(ref, sig, merge_rtol):
                members.append(r)
                break
        else:
            groups.append((sig, [r]))
    reasons = asc.reason or (None,) * restarts
    points = []
    for _, m in groups:
        cert = certify(arch, X, ytilde, asc.u[m[0]], active_tol=active_tol)
        if reasons[m[0]] is not None:
            cert = replace(cert, reason=reasons[m[0]])
        points.append(KKTPoint(cert, len(m), len(m) / restarts, tuple(m), bool(asc.converged[m[0]]),
                               reasons[m[0]]))
    points.sort(key=cmp_to_key(_point_order))
    unconverged = tuple(i for i in range(restarts) if not bool(asc.converged[i] | asc.stalled[i]))
    if piecewise_linear:
        return KKTResult(points, float(arch.homogeneity), arch.num_params, restarts, len(conv),
                         int(asc.steps.max()), (), (),
                         tuple((i, reasons[i]) for i in range(restarts) if reasons[i] is not None))
    return KKTResult(points, float(arch.homogeneity), arch.num_params, restarts, len(conv),
                     int(asc.steps.max()), unconverged, tuple(stalled))
