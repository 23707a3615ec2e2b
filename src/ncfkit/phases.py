"""Saddle-to-saddle phases of a run: every plateau, its sparsity, and which neurons grow next.

The paper's theory stops at the first saddle after escape; its Appendix G shows by eye
(Figures 14–17) that the sparsity of the zero-preserving subset is kept after that saddle
too, until the next one. This module measures it and predicts the next escape, on plain
arrays (numpy; torch only through :func:`ncfkit.dynamics.min_hessian_eigenvalue`). The
derivation is in ``docs/phases.md``.

Per plateau (:func:`analyse_plateaus`, plateaus from :mod:`ncfkit.events`): time, loss,
‖∇𝓛‖, λ_min(∇²𝓛) and the kind of stationary point, the active units per layer (a hidden
neuron is *small* when the norm of its row and column together is under
:data:`SMALL_REL` = 10% of the largest in its layer; a coordinate of the diagonal model
when |w_k| is under 10% of max|w|), ‖ψ_wz‖/‖ψ‖ for the governing point's w_z, and for the
zero set Z of the previous plateau (what stays zero until this saddle): all of Z, and Z
less the units active here (those the escape between the two saddles recruited).

Which units grow next (:func:`predict_next`). At a saddle p whose units Z are (nearly)
zero, write the weights of those units u_Z. For a feed-forward net, to leading order in
u_Z (docs/phases.md),

    𝓛(p + u_Z) = 𝓛(p) − Σ_{j∈Z} 𝒩_l(a_j, b_j) + O(‖u_Z‖^{2(1+p)}),
    𝒩_l(a, b) = Σ_i (G_i·a) σ(b·F_i),  F_i = h_{l−1}(x_i; p),  G_i = r_i ∂H(x_i; p)/∂z_{l+1},

where neuron j of hidden layer l has incoming weights b_j = W_l[j, :] and outgoing
a_j = W_{l+1}[:, j], r = −∂𝓛/∂H at p is the residual, and z_{l+1} the pre-activations of
the next layer (for the last hidden layer G_i = r_i and a_j = v_j: the NCF of a two-layer
net with ỹ replaced by r(p)). Each term is homogeneous of degree L_u = 1 + p (2 for ReLU,
3 for x²) and the terms of different neurons do not share weights, so each small neuron
follows its own NCF flow u̇_j = ∇𝒩_l(u_j) from its weights at p, as the whole net does
from δw0 near the origin (Theorems 4 and 10): it grows after a time T_j = its blow-up time
(L_u > 2) or (ln(1/‖u_j‖) − ln A_j)/(2𝒩_l(θ_j^∞)) (L_u = 2). The unit of least T_j is
predicted to grow first, and the next escape at t_p + min T_j (+ O(1), as for the
escape from the origin). For the diagonal model the unit is one coordinate k with
𝒩_k(u) = (rᵀX[:, k]) u^D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .arrays import asarray_like, to_numpy

__all__ = ["SMALL_REL", "unit_norms", "small_units", "active_units", "units_mask", "norm_ratio", "residual",
           "unit_problems", "UnitProblem", "unit_kkt_points", "UnitFlow", "unit_flow", "unit_flows", "UnitForecast",
           "NextPrediction", "predict_next", "PlateauReport", "analyse_plateaus", "plateaus_json"]

#: A unit is small when its norm is under this fraction of the largest in its layer.
SMALL_REL = 0.1


# --------------------------------------------------------------------------- units


def unit_norms(arch, w) -> list[np.ndarray]:
    """Per layer of units: the norm of each unit's weights — sqrt(‖W_l[j,:]‖² +
    ‖W_{l+1}[:,j]‖²) for every neuron j of every hidden layer (feed-forward), or |w_k| for
    the coordinates of a model without neurons (one "layer")."""
    w = np.asarray(to_numpy(w), dtype=np.float64)
    if arch.neuron_layers is None:
        return [np.abs(w)]
    return [np.sqrt(np.asarray(to_numpy(r)) ** 2 + np.asarray(to_numpy(c)) ** 2) for r, c in arch.neuron_norms(w)]


def small_units(arch, w, rel: float = SMALL_REL) -> tuple[tuple[int, ...], ...]:
    """Per layer: the units whose norm is under ``rel`` × the largest in their layer (a
    layer that is all zero is all small)."""
    out = []
    for n in unit_norms(arch, w):
        top = float(n.max()) if n.size else 0.0
        out.append(tuple(int(j) for j in np.flatnonzero(n < rel * top)) if top > 0 else tuple(range(n.size)))
    return tuple(out)


def active_units(arch, w, rel: float = SMALL_REL) -> tuple[tuple[int, ...], ...]:
    """Per layer: the units that are not small (:func:`small_units`)."""
    small = small_units(arch, w, rel)
    return tuple(tuple(j for j in range(n.size) if j not in set(s))
                 for n, s in zip(unit_norms(arch, w), small, strict=True))


def units_mask(arch, units) -> np.ndarray:
    """Boolean (k,) mask of the weights of ``units`` (per layer, as :func:`small_units`):
    a neuron's incoming and outgoing weights (a zero-preserving subset when they are
    zero, Definition 15), or the coordinates themselves."""
    mask = np.zeros(arch.num_params, dtype=bool)
    if arch.neuron_layers is None:
        mask[list(units[0])] = True
        return mask
    Ms = arch.split(mask)
    for l, idx in enumerate(units):
        idx = list(idx)
        Ms[l][idx, :] = True
        Ms[l + 1][:, idx] = True
    return arch.join(Ms)


def norm_ratio(mask, w) -> float | None:
    """‖w[mask]‖/‖w‖ (None for an empty mask or w = 0)."""
    if mask is None:
        return None
    mask = np.asarray(to_numpy(mask), dtype=bool)
    if not mask.any():
        return None
    w = np.asarray(to_numpy(w), dtype=np.float64)
    n = float(np.linalg.norm(w))
    return float(np.linalg.norm(w[mask])) / n if n > 0 else None


def residual(arch, X, y, loss, w) -> np.ndarray:
    """r(w) = −∂𝓛/∂H at H(X; w) (n,), the reduction included: the ỹ of the NCF that
    governs the units that are zero at w (ỹ = r(0))."""
    X, y, w = (np.asarray(to_numpy(a), dtype=np.float64) for a in (X, y, w))
    return -np.asarray(loss.dvalue(arch.forward(X, w), y), dtype=np.float64)


# --------------------------------------------------------------------------- the unit NCF


@dataclass(frozen=True)
class UnitProblem:
    """𝒩(a, b) = Σ_i (G_i·a) σ(b·F_i) for one layer's units (a: outgoing (m,), b:
    incoming (d',)), or 𝒩(u) = c·u^D for a coordinate of the diagonal model (``F`` None)."""

    layer: int  # 1-based hidden layer (0: coordinates)
    act: object | None  # Activation (None for coordinates)
    F: np.ndarray | None  # (n, d')
    G: np.ndarray | None  # (n, m)
    degree: float
    c: np.ndarray | None = None  # (d,) coordinates: rᵀX[:, k]

    @property
    def dim(self) -> int:
        return 1 if self.F is None else self.G.shape[1] + self.F.shape[1]

    def split(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = self.G.shape[1]
        return u[..., :m], u[..., m:]

    def value_and_grad(self, u: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """𝒩 and ∇𝒩 of rows u (..., dim); ``k`` the coordinate (diagonal model)."""
        if self.F is None:
            D, c = self.degree, float(self.c[k])
            return c * u[..., 0] ** D, (D * c * u ** (D - 1))
        a, b = self.split(u)
        z = b @ self.F.T  # (..., n)
        s = self.act(z)
        ga = a @ self.G.T  # (..., n)
        val = (ga * s).sum(-1)
        grad_a = s @ self.G
        grad_b = (ga * self.act.derivative(z)) @ self.F
        return val, np.concatenate([grad_a, grad_b], axis=-1)

    def unit_weights(self, arch, w: np.ndarray, j: int) -> np.ndarray:
        """u_j = (a_j, b_j) of unit j at w."""
        if self.F is None:
            return np.array([w[j]])
        Ws = arch.split(w)
        return np.concatenate([Ws[self.layer][:, j], Ws[self.layer - 1][j, :]])


def unit_problems(arch, X, r, w) -> list[UnitProblem]:
    """One :class:`UnitProblem` per layer of units at the point w, for residual r."""
    X = np.asarray(to_numpy(X), dtype=np.float64)
    w = np.asarray(to_numpy(w), dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    if arch.neuron_layers is None:
        return [UnitProblem(0, None, None, None, float(arch.homogeneity), c=r @ X)]
    act = arch.act
    if not act.homogeneous:
        return []
    Ws = arch.split(w)
    L = len(Ws)
    hs, zs = [X], []
    for W in Ws[:-1]:
        zs.append(hs[-1] @ W.T)
        hs.append(act(zs[-1]))
    # D[l] = ∂H/∂z_l (n, k_l) for l = 1 … L (z_L the output)
    D = {L: np.ones((X.shape[0], 1))}
    for l in range(L - 1, 0, -1):
        D[l] = (D[l + 1] @ Ws[l]) * act.derivative(zs[l - 1])
    return [UnitProblem(l, act, hs[l - 1], r[:, None] * D[l + 1], 1.0 + float(act.p)) for l in range(1, L)]


def unit_kkt_points(prob: UnitProblem, *, restarts: int = 16, seed: int = 0, starts=None,
                    max_steps: int = 2000, tol: float = 1e-9, patience: int = 50,
                    stall_tol: float = 1e-6) -> list[tuple[float, np.ndarray]]:
    """KKT points of max 𝒩(u) s.t. ‖u‖ = 1 for one neuron of a layer, by projected
    gradient ascent (adaptive step, as :func:`ncfkit.kkt.normalized_ascent`) from
    ``restarts`` random unit starts and the rows of ``starts``; distinct values, largest
    first, each with a direction. A start stops at residual ≤ ``tol``, or at ≤
    ``stall_tol`` once 𝒩 has not grown beyond round-off for ``patience`` steps (on large
    data the residual's round-off floor can lie above ``tol``; 𝒩, quadratic in the
    residual, is then exact to round-off); finished starts leave the batch."""
    if prob.F is None:
        raise ValueError("the coordinates of the diagonal model have the KKT points ±1")
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((restarts, prob.dim))
    if starts is not None:
        U = np.concatenate([U, np.atleast_2d(np.asarray(starts, dtype=np.float64))])
    U /= np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-300)
    val, grad = prob.value_and_grad(U)
    eta0 = 1.0 / (prob.degree * max(float(np.median(np.linalg.norm(grad, axis=1))), 1e-300))
    eta = np.full(U.shape[0], eta0)
    out_u, out_val = U.copy(), val.copy()
    idx = np.arange(U.shape[0])  # rows still running
    best, since = val.copy(), np.zeros(U.shape[0], dtype=np.int64)
    for step in range(max_steps + 1):
        tan = grad - (U * grad).sum(1, keepdims=True) * U
        res = np.linalg.norm(tan, axis=1) / np.maximum(np.linalg.norm(grad, axis=1), 1e-300)
        fin = (res <= tol) | ((res <= stall_tol) & (since >= patience))
        if step == max_steps:
            fin[:] = True
        if fin.any():
            out_u[idx[fin]], out_val[idx[fin]] = U[fin], val[fin]
            keep = ~fin
            idx, U, val, grad, tan, eta, best, since = (a[keep] for a in (idx, U, val, grad, tan, eta, best, since))
            if idx.size == 0:
                break
        trial = U + eta[:, None] * tan
        trial /= np.linalg.norm(trial, axis=1, keepdims=True)
        t_val, t_grad = prob.value_and_grad(trial)
        ok = (t_val >= val - 1e-15 * np.abs(val)) & np.isfinite(t_val)
        U = np.where(ok[:, None], trial, U)
        val, grad = np.where(ok, t_val, val), np.where(ok[:, None], t_grad, grad)
        eta = np.where(ok, np.minimum(1.5 * eta, 1e6 * eta0), 0.5 * eta)  # capped: at a kink tan → 0
        improved = val > best + 1e-14 * np.abs(best)
        best = np.maximum(best, val)
        since = np.where(improved, 0, since + 1)
    order = np.argsort(-out_val)
    out: list[tuple[float, np.ndarray]] = []
    for i in order:
        if all(abs(out_val[i] - v) > 1e-6 * max(abs(v), 1e-12) for v, _ in out):
            out.append((float(out_val[i]), out_u[i].copy()))
    return out


@dataclass(frozen=True)
class UnitFlow:
    """The NCF flow u̇ = ∇𝒩(u) of one unit from its weights at the saddle."""

    scale: float  # ‖u(0)‖
    ncf_start: float  # 𝒩(θ(0)), θ = u/‖u‖
    ncf_limit: float  # 𝒩(θ(∞)) (the KKT value it converges to)
    time: float  # predicted time until it grows (inf: it does not)
    converged: bool
    direction: np.ndarray = field(repr=False)


def unit_flow(prob: UnitProblem, u0: np.ndarray, k: int | None = None, **kw) -> UnitFlow:
    """:func:`unit_flows` of one unit (``k``: its coordinate, diagonal model)."""
    return unit_flows(prob, np.atleast_2d(u0), None if k is None else [k], **kw)[0]


def unit_flows(prob: UnitProblem, U0: np.ndarray, coords=None, *, tol: float = 1e-6,
               max_steps: int = 20000) -> list[UnitFlow]:
    """Integrate each unit's NCF flow from its row of ``U0`` (its weights at the saddle)
    and predict when it grows: with u = ρθ, ‖θ‖ = 1 and the clock ds = ρ^{L_u−2}dt,
    θ' = ∇𝒩(θ) − L_u𝒩(θ)θ and (ln ρ)' = L_u𝒩(θ) (as :func:`ncfkit.theory.ncf_flow_escape`).
    The time is the blow-up time (L_u > 2) or the time at which ‖u‖ reaches 1,
    (ln(1/‖u0‖) − ln A)/(2𝒩(θ∞)) with ln A the log-amplitude gained while θ turned
    (L_u = 2), as Theorems 4 and 10 give the escape time from the scale δ. All units of a
    layer advance together, each with its own adaptive Heun step (relative accuracy ~1e-4
    in the time is plenty beside the O(1) of the theorems), until its direction settles
    (the rest is along θ∞ in closed form), ‖u‖ reaches 1, or a thousand time constants
    pass without growth. A coordinate of the diagonal model (``coords``: which) has the
    closed form u(t) = u0·e^{2ct} (D = 2) or its blow-up time |u0|^{2−D}/(D(D−2)c') with
    c' = c·sign(u0)^D."""
    U0 = np.asarray(U0, dtype=np.float64)
    L = float(prob.degree)
    if prob.F is None:
        out = []
        for u, k in zip(U0[:, 0], coords, strict=True):
            c = float(prob.c[k]) * (np.sign(u) ** L if u != 0 else 1.0)
            r0 = abs(float(u))
            if not (r0 > 0 and c > 0):
                out.append(UnitFlow(r0, c, c, math.inf, True, np.array([np.sign(u)])))
                continue
            T = math.log(1 / r0) / (2 * c) if L == 2 else r0 ** (2 - L) / (L * (L - 2) * c)
            out.append(UnitFlow(r0, c, c, T, True, np.array([np.sign(u)])))
        return out
    B = U0.shape[0]
    rho0 = np.linalg.norm(U0, axis=1)
    th = U0 / np.where(rho0 > 0, rho0, 1.0)[:, None]

    def rhs(th_):
        v, g = prob.value_and_grad(th_)
        return g - L * v[:, None] * th_, v, g

    d, v, g = rhs(th)
    v0 = v.copy()
    scale = np.maximum(np.linalg.norm(g, axis=1), 1e-300)
    h = 0.05 / (L * scale)
    s, t = np.zeros(B), np.zeros(B)
    lnr = np.log(np.where(rho0 > 0, rho0, 1.0))
    done = ~(rho0 > 0)
    converged = np.zeros(B, dtype=bool)
    for _ in range(max_steps):
        conv = (np.linalg.norm(d, axis=1) <= tol * L * np.maximum(np.abs(v), 1e-300)) & (v > 0)
        converged |= conv & ~done
        done |= conv
        if done.all():
            break
        a = ~done
        th_a, d_a, v_a, h_a = th[a], d[a], v[a], h[a]
        th1 = th_a + h_a[:, None] * d_a
        th1 /= np.linalg.norm(th1, axis=1, keepdims=True)
        d1, v1, _ = rhs(th1)
        th2 = th_a + 0.5 * h_a[:, None] * (d_a + d1)
        th2 /= np.linalg.norm(th2, axis=1, keepdims=True)
        err = np.linalg.norm(th2 - th1, axis=1)
        ok = (err <= 1e-4) | (h_a <= 1e-12 / scale[a])
        idx = np.flatnonzero(a)
        rej = idx[~ok]
        h[rej] *= 0.5
        acc = idx[ok]
        if acc.size:
            ha = h_a[ok]
            dl = 0.5 * ha * L * (v_a[ok] + v1[ok])  # Δ ln ρ
            if L == 2:
                t[acc] += ha
            else:  # dt = ρ^{2−L} ds, ρ varying inside the step: exact for ln ρ linear in s
                b = (2 - L) * dl
                growth = np.where(np.abs(b) > 1e-12, np.expm1(b) / np.where(b != 0, b, 1.0), 1.0)
                t[acc] += ha * np.exp((2 - L) * lnr[acc]) * growth
            lnr[acc] += dl
            s[acc] += ha
            th[acc] = th2[ok]
            d_new, v_new, _ = rhs(th[acc])
            d[acc], v[acc] = d_new, v_new
            h[acc] = np.where(err[ok] < 2e-5, 1.5 * ha, ha)
            # ‖u‖ = 1: grown (L_u = 2: T = t; L_u > 2: the tail below is O(1)); or a
            # thousand time constants without growing: it does not
            done[acc] |= (lnr[acc] >= 0) | (s[acc] * L * scale[acc] > 1e3)
    out = []
    for i in range(B):
        if not rho0[i] > 0 or not v[i] > 0:
            out.append(UnitFlow(float(rho0[i]), float(v0[i]), float(v[i]), math.inf, bool(converged[i]), th[i]))
            continue
        if L == 2:  # ρ(t') ≈ ρ(t)e^{2𝒩(t'−t)} from here on: reaches 1 at t − ln ρ/(2𝒩)
            T = t[i] - min(lnr[i], 0.0) / (2 * v[i])
        else:  # the tail along θ∞: ∫ ρ^{2−L} dt = ρ^{2−L}/((L−2)L𝒩)
            T = t[i] + math.exp((2 - L) * lnr[i]) / ((L - 2) * L * v[i])
        out.append(UnitFlow(float(rho0[i]), float(v0[i]), float(v[i]), float(T), bool(converged[i]), th[i]))
    return out


@dataclass(frozen=True)
class UnitForecast:
    layer: int  # 1-based hidden layer; 0: a coordinate of the diagonal model
    unit: int
    scale: float
    ncf_start: float
    ncf_limit: float
    time: float  # from the saddle

    def to_dict(self) -> dict:
        return {"layer": self.layer, "unit": self.unit, "scale": self.scale, "ncf_start": self.ncf_start,
                "ncf_limit": self.ncf_limit, "time": _fin(self.time)}


@dataclass(frozen=True)
class NextPrediction:
    """What the leading-order NCF of the small units at a saddle predicts."""

    saddle_time: float
    degree: float  # L_u
    residual_norm: float  # ‖r(p)‖
    ncf_max: list[float]  # per layer: the largest KKT value of the unit problem
    units: list[UnitForecast]  # every small unit, soonest first
    first: UnitForecast | None  # the unit predicted to grow first
    time: float  # the predicted next escape: saddle_time + first.time (inf: none)

    def to_dict(self) -> dict:
        return {"saddle_time": self.saddle_time, "degree": self.degree, "residual_norm": self.residual_norm,
                "ncf_max": self.ncf_max, "first": None if self.first is None else self.first.to_dict(),
                "time": _fin(self.time), "units": [u.to_dict() for u in self.units[:10]]}


def predict_next(arch, X, y, loss, w, small=None, *, t_saddle: float = 0.0, rel: float = SMALL_REL,
                 restarts: int = 16, seed: int = 0) -> NextPrediction | None:
    """Which small units of the saddle ``w`` grow next, and when (module doc). ``small``
    defaults to :func:`small_units` (w, rel). None for a non-homogeneous activation."""
    w = np.asarray(to_numpy(w), dtype=np.float64)
    r = residual(arch, X, y, loss, w)
    probs = unit_problems(arch, X, r, w)
    if not probs:
        return None
    small = small_units(arch, w, rel) if small is None else small
    forecasts, ncf_max = [], []
    for prob, units in zip(probs, small, strict=False):
        if prob.F is None:  # 𝒩_k(±1) = c_k(±1)^D
            c = prob.c[list(units)]
            ncf_max.append(float((np.abs(c) if prob.degree % 2 else c).max()) if c.size else math.nan)
        else:
            starts = [prob.unit_weights(arch, w, j) for j in units]
            starts = [u / np.linalg.norm(u) for u in starts if np.linalg.norm(u) > 0]
            kkt = unit_kkt_points(prob, restarts=restarts, seed=seed, starts=starts or None)
            ncf_max.append(kkt[0][0] if kkt else math.nan)
        if not units:
            continue
        U0 = np.stack([prob.unit_weights(arch, w, j) for j in units])
        for j, fl in zip(units, unit_flows(prob, U0, list(units)), strict=True):
            forecasts.append(UnitForecast(prob.layer, int(j), fl.scale, fl.ncf_start, fl.ncf_limit, fl.time))
    forecasts.sort(key=lambda f: f.time)
    first = forecasts[0] if forecasts and math.isfinite(forecasts[0].time) else None
    return NextPrediction(float(t_saddle), probs[0].degree, float(np.linalg.norm(r)), ncf_max, forecasts, first,
                          math.inf if first is None else float(t_saddle) + first.time)


# --------------------------------------------------------------------------- per plateau


@dataclass(frozen=True)
class PlateauReport:
    """One plateau of a run, measured (see the module doc)."""

    index: int
    time: float
    loss: float
    grad_norm: float
    enter_time: float
    exit_time: float | None  # the loss fell 1% below the saddle's (None: the run ended there)
    confirmed: bool
    stationary: bool
    min_hessian_eig: float | None
    kind: str | None  # strict saddle / minimum / degenerate
    active: tuple[tuple[int, ...], ...]  # per layer (10% rule)
    small: tuple[tuple[int, ...], ...]
    wz_ratio: float | None  # ‖ψ_wz‖/‖ψ‖, w_z of the governing point
    prev_zero_ratio: float | None  # ‖ψ_Z‖/‖ψ‖ here, Z the small units of the previous plateau
    prev_zero_max_ratio: float | None  # ... its largest value between the two saddles (trajectory)
    prev_zero_grown: tuple[tuple[int, ...], ...] | None  # units of Z active here
    next: NextPrediction | None = None
    prev_zero_stayed_ratio: float | None = None  # ‖ψ_Z'‖/‖ψ‖ here, Z' = Z less the grown units
    prev_zero_stayed_max_ratio: float | None = None  # ... its largest value between the saddles

    @property
    def active_per_layer(self) -> list[int]:
        return [len(a) for a in self.active]

    def to_dict(self) -> dict:
        return {"index": self.index, "time": self.time, "loss": self.loss, "grad_norm": self.grad_norm,
                "enter_time": self.enter_time, "exit_time": self.exit_time, "confirmed": self.confirmed,
                "stationary": self.stationary, "min_hessian_eig": self.min_hessian_eig, "kind": self.kind,
                "active_per_layer": self.active_per_layer, "active_units": [list(a) for a in self.active],
                "wz_ratio": self.wz_ratio, "prev_zero_ratio": self.prev_zero_ratio,
                "prev_zero_max_ratio": self.prev_zero_max_ratio,
                "prev_zero_grown": None if self.prev_zero_grown is None else [list(g) for g in self.prev_zero_grown],
                "prev_zero_stayed_ratio": self.prev_zero_stayed_ratio,
                "prev_zero_stayed_max_ratio": self.prev_zero_stayed_max_ratio,
                "next": None if self.next is None else self.next.to_dict()}


def _fin(x):
    return x if x is None or math.isfinite(x) else None


def _max_ratio_between(run, mask: np.ndarray, t0: float, t1: float) -> float | None:
    tr = run.trajectory
    if tr is None or mask is None or not mask.any():
        return None
    sel = (tr["time"] >= t0) & (tr["time"] <= t1)
    if not sel.any():
        return None
    W = tr["w"][sel]
    n = np.linalg.norm(W, axis=1)
    ok = n > 0
    return float((np.linalg.norm(W[ok][:, mask], axis=1) / n[ok]).max()) if ok.any() else None


def analyse_plateaus(objective, run, *, wz_mask=None, rel: float = SMALL_REL, predict: bool = True,
                     hessian: bool = True, restarts: int = 16, seed: int = 0,
                     known_hessians: dict | None = None) -> list[PlateauReport]:
    """Measure every plateau of ``run`` (a :class:`ncfkit.dynamics.RunResult`) of the
    loss ``objective``; ``wz_mask``: the governing point's w_z (k,) or None. Each report's
    ``next`` is the prediction made at that saddle for the escape from it (``predict``);
    λ_min comes from :func:`ncfkit.dynamics.min_hessian_eigenvalue` (``hessian``), or from
    ``known_hessians`` {snapshot time: (λ_min, kind)} where the caller has it already."""
    from .dynamics import min_hessian_eigenvalue, snapshot_name

    arch = objective.arch
    wz = None if wz_mask is None else np.asarray(to_numpy(wz_mask), dtype=bool)
    out: list[PlateauReport] = []
    prev_small, prev_time = None, None
    for p in run.plateaus:
        snap = run.snapshots.get(snapshot_name(p.index))
        if snap is None:
            continue
        w = np.asarray(snap.w, dtype=np.float64)
        lam = kind = None
        if hessian and known_hessians and snap.time in known_hessians:
            lam, kind = known_hessians[snap.time]
        elif hessian:
            h = min_hessian_eigenvalue(objective, asarray_like(w, objective.X))
            lam, kind = h.min, h.kind
        small = small_units(arch, w, rel)
        active = active_units(arch, w, rel)
        pz = pz_max = grown = st = st_max = None
        if prev_small is not None:
            m = units_mask(arch, prev_small)
            pz = norm_ratio(m, w)
            pz_max = _max_ratio_between(run, m, prev_time, snap.time)
            grown = tuple(tuple(j for j in z if j in set(a)) for z, a in zip(prev_small, active, strict=True))
            stayed = tuple(tuple(j for j in z if j not in set(g)) for z, g in zip(prev_small, grown, strict=True))
            ms = units_mask(arch, stayed)
            st, st_max = norm_ratio(ms, w), _max_ratio_between(run, ms, prev_time, snap.time)
        nxt = None
        if predict and not p.stationary and any(small):
            nxt = predict_next(arch, objective.X, objective.y, objective.loss, w, small, t_saddle=snap.time,
                               rel=rel, restarts=restarts, seed=seed)
        out.append(PlateauReport(p.index, snap.time, snap.loss, snap.grad_norm, p.enter_time,
                                 None if p.exit is None else p.exit.time, p.confirmed, p.stationary, lam, kind,
                                 active, small, norm_ratio(wz, w), pz, pz_max, grown, nxt, st, st_max))
        prev_small, prev_time = small, snap.time
    return out


def plateaus_json(reports: list[PlateauReport]) -> list[dict]:
    """The ``plateaus`` list of a run's JSON object."""
    return [r.to_dict() for r in reports]
