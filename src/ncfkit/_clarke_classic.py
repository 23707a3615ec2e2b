"""The stratum Newton polish of ncfkit before the round-off-robust kink bound (commit
96fa47f), kept as :func:`ncfkit.clarke.polish`'s second attempt: its
functions that differ from :mod:`ncfkit.clarke`'s; the identical ones are imported from there.

The current solve (:mod:`ncfkit.clarke`: kinks vanishing relative to a bound of the data
and the weights, the multipliers as Newton unknowns, merged parallel neurons, the
matrix-free path) certifies Figure 8's MNIST point, which this one could not; on Figure 6's
3-layer net this one certifies the ascent's point (residual 1.7e-12 in 8 s) where the
current solve stalls at 4.4e-3. Until one solve does both, :func:`ncfkit.clarke.polish`
runs this one on a dense-sized stratum the current one leaves uncertified, and keeps the
certified result. Only :func:`polish` is used from here.

"""

from __future__ import annotations

import numpy as np

from .clarke import (  # noqa: F401 (shared with the current solve)
    KINK_TOL,
    MAX_KINK_ENTRIES,
    NEWTON_MAX,
    PolishResult,
    _as_host,
    _crossing,
    _FirstOrder,
    _lstsq,
    _neuron_mask,
    _project,
    _ranges,
    _remove_vanishing_neurons,
    _slope_bounds,
    _zero_neurons,
)
from .errors import InputError


class _Net:
    """A feed-forward net of one point u (float64 numpy) with the activation's slopes
    replaced by given masks D_l (k_l, n): the polynomial 𝒩_D of the stratum. Its value,
    gradient (with the pre-mask backward signals c_l), Hessian-vector products and the
    gradients of chosen pre-activations are written out (no autograd)."""

    def __init__(self, arch, X: np.ndarray, ytilde: np.ndarray, u: np.ndarray):
        self.arch, self.X, self.yt, self.u = arch, X, ytilde, u
        self._forward = None  # (masks, hs) of the last forward pass
        self.Ws = arch.split(u)
        self.alpha = float(arch.act.alpha)
        self.ranges = [(a, b) for a, b in arch.layer_ranges] if hasattr(arch, "layer_ranges") else \
            _ranges([W.size for W in self.Ws])
        # the true forward pass: pre-activations z_l and the bound ‖W_l[j,:]‖‖h_{l−1,i}‖
        h = X.T
        self.zs, self.scales = [], []
        for W in self.Ws[:-1]:
            z = W @ h
            self.zs.append(z)
            self.scales.append(np.linalg.norm(W, axis=1)[:, None] * np.linalg.norm(h, axis=0)[None, :])
            h = np.maximum(z, self.alpha * z)

    def kinks(self, tau: float) -> list[np.ndarray]:
        """Boolean masks (k_l, n) of the vanishing pre-activations, |z| ≤ τ·bound."""
        return [np.abs(z) <= tau * s for z, s in zip(self.zs, self.scales, strict=True)]

    def slopes(self, kinks: list[np.ndarray], s: np.ndarray | None) -> list[np.ndarray]:
        """Masks D_l: σ'(z) off the kinks, the multipliers ``s`` (in the order of
        :func:`_kink_index`) on them (0 where ``s`` is None)."""
        lo, hi = _slope_bounds(self.alpha)
        Ds = [np.where(z > 0, hi, lo) for z in self.zs]
        for D, K in zip(Ds, kinks, strict=True):
            D[K] = 0.0
        if s is not None:
            pos = 0
            for D, K in zip(Ds, kinks, strict=True):
                m = int(K.sum())
                D[K] = s[pos:pos + m]
                pos += m
        return Ds

    def forward(self, Ds):
        cached = self._forward
        if cached is not None and cached[0] is Ds:  # the same masks (a Lanczos run's products)
            return cached[1]
        hs = self._forward_pass(Ds)
        self._forward = (Ds, hs)
        return hs

    def _forward_pass(self, Ds):
        hs = [self.X.T]
        for W, D in zip(self.Ws[:-1], Ds, strict=True):
            hs.append(D * (W @ hs[-1]))
        return hs

    def grad(self, Ds):
        """(𝒩_D, ∇𝒩_D, c) with c_l = W_{l+1}ᵀ b_{l+1} (k_l, n), the backward signal that
        reaches hidden layer l before its mask."""
        hs = self.forward(Ds)
        L = len(self.Ws)
        value = float((self.Ws[-1] @ hs[-1])[0] @ self.yt)
        b = self.yt[None, :]
        grads, cs = [None] * L, [None] * (L - 1)
        for l in range(L - 1, -1, -1):
            grads[l] = b @ hs[l].T
            if l:
                cs[l - 1] = self.Ws[l].T @ b
                b = cs[l - 1] * Ds[l - 1]
        return value, np.concatenate([G.ravel() for G in grads]), cs

    def hvp(self, Ds, V: np.ndarray) -> np.ndarray:
        """∇²𝒩_D V for the rows of V (m, k): forward-over-reverse written out."""
        hs = self.forward(Ds)
        L = len(self.Ws)
        Vs = [V[:, a:b].reshape(-1, *W.shape) for (a, b), W in zip(self.ranges, self.Ws, strict=True)]
        dhs = [None]  # the inputs do not move (no (m, d, n) block of zeros)
        for l in range(L - 1):
            dz = Vs[l] @ hs[l] if dhs[l] is None else Vs[l] @ hs[l] + self.Ws[l] @ dhs[l]
            dhs.append(Ds[l] * dz)
        b = self.yt[None, :]
        db = np.zeros((V.shape[0], 1, self.yt.shape[0]))
        out = []
        for l in range(L - 1, -1, -1):
            out.append(db @ hs[l].T if dhs[l] is None else db @ hs[l].T + b @ dhs[l].swapaxes(-1, -2))
            if l:
                db = (Vs[l].swapaxes(-1, -2) @ b + self.Ws[l].T @ db) * Ds[l - 1]
                b = (self.Ws[l].T @ b) * Ds[l - 1]
        return np.concatenate([G.reshape(V.shape[0], -1) for G in out[::-1]], axis=1)

    def hessian(self, Ds, free: np.ndarray, chunk: int = 256) -> np.ndarray:
        """Dense ∇²𝒩_D on the coordinates ``free`` (indices), shape (f, f)."""
        k = self.u.shape[0]
        rows = []
        for a in range(0, free.size, chunk):
            E = np.zeros((min(chunk, free.size - a), k))
            E[np.arange(E.shape[0]), free[a:a + chunk]] = 1.0
            rows.append(self.hvp(Ds, E)[:, free])
        H = np.concatenate(rows) if rows else np.zeros((0, 0))
        return 0.5 * (H + H.T)

    def kink_gradients(self, Ds, kinks) -> np.ndarray:
        """Rows ∇_u z_k (m, k) of every kink k = (l, j, i), in :func:`_kink_index` order.

        Raises:
            InputError: before allocating, when the dense m × k matrix (and its working
                copies) would not fit in the memory this process may use — e.g. many
                samples at the kinks of exactly-zero neurons on MNIST-sized data.
        """
        from ._runtime import available_memory

        hs = self.forward(Ds)
        k = self.u.shape[0]
        m_all = int(sum(int(K.sum()) for K in kinks))
        need, have = 4 * 8 * m_all * k, available_memory()  # the matrix, its scaled copy, lstsq work
        if need > have:
            raise InputError(f"the Clarke certificate at this ReLU point has {m_all} vanishing pre-activations "
                             f"x {k} weights: its dense stratum needs {need / 2**30:.1f} GiB, but only "
                             f"{have / 2**30:.1f} GiB are available; use fewer samples or a narrower --hidden, "
                             "or raise NCFKIT_MAX_MEMORY")
        out = np.zeros((m_all, k))  # filled in place, layer by layer (no concatenated copy)
        pos = 0
        for l, K in enumerate(kinks):  # hidden layer l + 1, weights Ws[l]
            js, is_ = np.nonzero(K)
            m = js.size
            if not m:
                continue
            R = out[pos:pos + m]
            pos += m
            B = np.zeros((m, K.shape[0]))
            B[np.arange(m), js] = 1.0
            for q in range(l, -1, -1):
                a, b = self.ranges[q]
                R[:, a:b] = (B[:, :, None] * hs[q][:, is_].T[:, None, :]).reshape(m, -1)
                if q:
                    B = (B @ self.Ws[q]) * Ds[q - 1][:, is_].T
        return out

    def columns(self, Ds, kinks, cs) -> np.ndarray:
        """∂g/∂s_k = c_k ∇z_k as columns (k, m)."""
        c = np.concatenate([C[K] for C, K in zip(cs, kinks, strict=True)]) if kinks else np.zeros(0)
        J = self.kink_gradients(Ds, kinks)
        J *= c[:, None]  # in place: one m × k matrix
        return J.T


def _best_multipliers(net: _Net, kinks, s0=None, sweeps: int = 6):
    """min_s ‖P_{u⊥} g(s)‖ over the box: (s*, g(s*), exact). g is affine in s unless a
    sample has kinks in two layers; then the linearisation is re-solved until it settles.

    The kinks of a neuron whose outgoing weights are exactly zero never enter g (their
    backward signal c is 0): they are left out of the solve (their multipliers stay at
    the lower bound), so a zero neuron's n kinks cost nothing (MNIST-sized data)."""
    if not kinks:
        return _best_multipliers_on(net, kinks, s0, sweeps)
    enter = [K & (np.abs(net.Ws[l + 1]).sum(axis=0) > 0)[:, None] for l, K in enumerate(kinks)]
    if all(int(E.sum()) == int(K.sum()) for E, K in zip(enter, kinks, strict=True)):
        return _best_multipliers_on(net, kinks, s0, sweeps)
    lo, _ = _slope_bounds(net.alpha)
    pick = np.concatenate([E[K] for E, K in zip(enter, kinks, strict=True)])
    s_in, g, exact = _best_multipliers_on(net, enter, None if s0 is None else np.asarray(s0)[pick], sweeps)
    full = np.full(pick.size, lo)
    full[pick] = s_in
    return full, g, exact


def _best_multipliers_on(net: _Net, kinks, s0=None, sweeps: int = 6):
    """:func:`_best_multipliers` on the given kinks, all of them in the solve. Above
    :data:`MAX_KINK_ENTRIES` entries of the m × k field matrix no minimum is sought: the
    multipliers stay at the lower bound (the one-sided gradient, an upper bound of the
    residual) and ``exact`` is False."""
    from scipy.optimize import lsq_linear

    lo, hi = _slope_bounds(net.alpha)
    m = int(sum(int(K.sum()) for K in kinks))
    if m * net.u.shape[0] > MAX_KINK_ENTRIES:
        s = np.full(m, lo) if s0 is None else np.clip(s0, lo, hi)
        return s, net.grad(net.slopes(kinks, s))[1], False
    per_sample = np.sum([K.any(axis=0) for K in kinks], axis=0) if kinks else np.zeros(0)
    exact = not bool(np.any(per_sample > 1))
    s = np.full(m, lo) if s0 is None else np.clip(s0, lo, hi)
    u = net.u
    best = None
    for _ in range(1 if exact else sweeps):
        Ds = net.slopes(kinks, s)
        _, g, cs = net.grad(Ds)
        r = _project(u, g)
        if best is None or np.linalg.norm(r) < best[2]:
            best = (s.copy(), g, float(np.linalg.norm(r)))
        if m == 0:
            break
        PA = net.columns(Ds, kinks, cs)
        PA -= np.outer(u, u @ PA)  # in place: P_{u⊥} of every column
        live = np.linalg.norm(PA, axis=0) > 0
        if not live.any():
            break
        if not live.all():
            PA = PA[:, live]
        rhs = -(r - PA @ s[live])
        # ‖PA s − rhs‖² = ‖R s − Qᵀrhs‖² + const (PA = QR, k × m with m ≪ k): the bounded
        # problem is solved on the m × m triangle, from the R factor of [PA | rhs] (no Q)
        Ra = np.linalg.qr(np.column_stack([PA, rhs]), mode="r")
        del PA
        mm = int(live.sum())
        R, rhs = Ra[:mm, :mm], Ra[:mm, mm]
        x = _lstsq(R, rhs)
        if x.min() < lo or x.max() > hi:  # the unconstrained minimiser leaves the box
            x = lsq_linear(R, rhs, bounds=(lo, hi), method="bvls", tol=1e-14).x
        new = s.copy()
        new[live] = x
        Ds = net.slopes(kinks, new)
        _, g_new, _ = net.grad(Ds)
        r_new = float(np.linalg.norm(_project(u, g_new)))
        if r_new < best[2]:
            best = (new.copy(), g_new, r_new)
        if exact or np.allclose(new, s, rtol=0, atol=1e-12):
            break
        s = new
    return best[0], best[1], exact


def _first_order(arch, X, ytilde, u, kink_tol) -> _FirstOrder:
    """The first-order part of :func:`clarke_certificate` (no Hessian)."""
    net = _Net(arch, X, ytilde, u)
    kinks = net.kinks(kink_tol)
    s, g, _ = _best_multipliers(net, kinks)
    value = net.grad(net.slopes(kinks, s))[0]
    residual = float(np.linalg.norm(_project(u, g))) / max(float(np.linalg.norm(g)), np.finfo(float).tiny)
    return _FirstOrder(value, residual, int(sum(int(K.sum()) for K in _live_kinks(net, kink_tol))))


def _live_kinks(net: _Net, tau: float) -> list[np.ndarray]:
    """Kink masks of the neurons that are not exactly zero (a zero neuron has every
    pre-activation zero; it is absent from the stratum rather than a set of kinks)."""
    return [K & a[:, None] for K, a in zip(net.kinks(tau), _alive(net), strict=True)]


def polish(arch, X, ytilde, w, *, tol: float = 1e-9, detect_tol: float = 1e-5, kink_tol: float = KINK_TOL,
           active_tol: float = 1e-3, max_iter: int = 25, newton_max: int = NEWTON_MAX) -> PolishResult:
    """Newton's method on the smooth stratum of ``w`` (an active-set method), then the
    Clarke certificate.

    The zero neurons of ``w`` are set to exactly 0 (Theorem 18's zero-preserving set);
    the pre-activations with |z| ≤ ``detect_tol``·bound are the stratum's kinks. The
    unknowns (a step Δu ⊥ u on the free coordinates, the multipliers s) solve, in the
    least-squares sense (rank-deficient systems: ties between neurons, continua of KKT
    points), the linearisation of

        P_{u⊥} g(u, s) = 0,   z_k(u) = 0 for every kink k

    (∂g/∂u = ∇²𝒩_D, ∂g/∂s_k = c_k ∇z_k). A neuron the step sends to zero is removed
    (set to exactly 0); a step that would flip the signs of pre-activations off the kinks
    adds the ones it crosses within its first percent to the kinks at once (the ascent
    zigzagged across them) and is solved again, or else stops where the first one vanishes
    and adds that one; any other step is halved
    until the system's residual decreases. The result is certified when the Clarke
    residual (bounded multipliers, ``kink_tol``) is ≤ ``tol``; otherwise ``reason`` says
    what failed, and ``direction`` is the element of P_{u⊥}∂𝒩 of minimal norm: when the
    stratum's multipliers leave their bounds, 𝒩 increases along it off the stratum.
    """
    Xn, yn, u = _as_host(arch, X, ytilde, w)
    u, free = _zero_neurons(arch, u, active_tol)
    tiny = np.finfo(float).tiny
    reason = None
    kinks = None
    iterations, too_large = 0, False
    best = (np.inf, u)  # (system residual, point): Newton steps computed from round-off can jump away
    for iteration in range(1, max_iter + 1):
        iterations = iteration
        net = _Net(arch, Xn, yn, u)
        alive = _alive(net)
        kinks = _live_kinks(net, detect_tol) if kinks is None else \
            [K & a[:, None] for K, a in zip(kinks, alive, strict=True)]
        fidx = np.flatnonzero(free)
        m = int(sum(int(K.sum()) for K in kinks))
        # before any m × k matrix is built: only what no dropping of vacuous kinks can save
        if fidx.size > newton_max or m * u.shape[0] > MAX_KINK_ENTRIES:
            reason = (f"stratum too large for the dense Newton solve ({fidx.size} free weights + {m} kinks "
                      f"> {newton_max})")
            too_large = True
            break
        kinks = _effective(net, kinks)
        m = int(sum(int(K.sum()) for K in kinks))
        if fidx.size + m > newton_max:
            reason = (f"stratum too large for the dense Newton solve ({fidx.size} free weights + {m} kinks "
                      f"> {newton_max})")
            too_large = True
            break
        s, g, _ = _best_multipliers(net, kinks)
        Ds = net.slopes(kinks, s)
        F = _system(net, Ds, kinks, u, g)
        fnorm = float(np.linalg.norm(F))
        gnorm = max(float(np.linalg.norm(g)), tiny)
        if fnorm / gnorm < best[0]:
            best = (fnorm / gnorm, u)
        if fnorm <= 1e-3 * tol * gnorm:
            break
        step = _newton_step(net, Ds, kinks, u, g, fidx)
        full, dead = _remove_vanishing_neurons(arch, u, u + step)
        tnet = _Net(arch, Xn, yn, full)  # not normalised: z is linear in the step in layer 1
        # pre-activations of the stratum's polynomial (kinks' outputs at exactly 0): a sample
        # whose inputs to a layer all sit at kinks gives that layer exact zeros, not round-off
        D0 = net.slopes(kinks, None)
        z_now, z_trial = _stratum_zs(net, D0), _stratum_zs(tnet, D0)
        flips = _flips(z_now, z_trial, net.scales, kinks, dead, detect_tol)
        if flips is not None:
            # The step crosses kinks on the way to the stratum's solution. Those it crosses
            # within its first percent (where the ascent zigzagged) become constraints at
            # once and the step is solved again from u; otherwise the step stops where the
            # first pre-activation vanishes, which becomes a constraint.
            t_hit = [np.where(f, r, np.inf) for f, r in zip(flips, _crossing(z_now, z_trial), strict=True)]
            t_min = float(min(float(T.min()) for T in t_hit if T.size))
            if t_min <= 1e-2:
                kinks = [K | (T <= 1e-2) for K, T in zip(kinks, t_hit, strict=True)]
            else:
                trial = u + t_min * step
                u = trial / np.linalg.norm(trial)
                kinks = [K | (T <= t_min * (1 + 1e-6)) for K, T in zip(kinks, t_hit, strict=True)]
            continue
        t, accepted, trial = 1.0, False, full
        for _ in range(12):
            trial = trial / np.linalg.norm(trial)
            tnet = _Net(arch, Xn, yn, trial)
            ts, tg, _ = _best_multipliers(tnet, kinks, s, sweeps=1)
            tF = _system(tnet, tnet.slopes(kinks, ts), kinks, trial, tg)
            if np.linalg.norm(tF) < fnorm:
                accepted = True
                break
            t *= 0.5
            trial = u + t * step
        if not accepted:
            reason = f"Newton on the stratum stalled (system residual {fnorm / gnorm:.1e})"
            break
        u = trial
        if t == 1.0:
            free &= ~_neuron_mask(arch, dead)
    else:
        reason = f"Newton on the stratum did not converge in {max_iter} iterations"
    cert = _first_order(arch, Xn, yn, u, kink_tol)
    if best[1] is not u:
        alt = _first_order(arch, Xn, yn, best[1], kink_tol)
        if alt.residual < cert.residual:
            u, cert = best[1], alt
    certified = cert.residual <= tol
    direction = None
    if not certified and too_large:
        reason += f"; Clarke residual {cert.residual:.1e} > tol {tol:g}"
    elif not certified:
        net = _Net(arch, Xn, yn, u)
        ks = net.kinks(kink_tol)
        s, g, _ = _best_multipliers(net, ks)
        if not too_large:  # a larger stratum further on would be too large as well
            direction = _project(u, g)
            direction = direction / max(float(np.linalg.norm(direction)), tiny)
        lo, hi = _slope_bounds(net.alpha)
        Ds = net.slopes(ks, s)
        live = np.any(net.columns(Ds, ks, net.grad(Ds)[2]) != 0, axis=0)  # multipliers that enter g
        at_bound = int(np.sum(live & ((np.abs(s - lo) < 1e-12) | (np.abs(s - hi) < 1e-12))))
        if reason is None:
            reason = (f"Clarke residual {cert.residual:.1e} > tol {tol:g}: the stratum's KKT point needs "
                      f"multipliers outside [{lo:g}, {hi:g}] ({at_bound} of {int(live.sum())} at a bound); "
                      "𝒩 increases off the stratum")
        else:
            reason += f"; Clarke residual {cert.residual:.1e} > tol {tol:g}"
    return PolishResult(u, cert.ncf, cert.residual, bool(certified), None if certified else reason, iterations,
                        cert.kinks, direction)


def _effective(net: _Net, kinks) -> list[np.ndarray]:
    """The kinks whose pre-activation has a nonzero gradient: in a deeper net a sample that
    no neuron of layer l − 1 passes (h_{l−1}(x_i) = 0 for ReLU) has z_{l,j,i} = 0 for every
    j with ∇z = 0 — no constraint, no column of the field — so the solve leaves it out."""
    if len(kinks) < 2 or not any(K.any() for K in kinks[1:]):
        return kinks
    rows = np.any(net.kink_gradients(net.slopes(kinks, None), kinks) != 0, axis=1)
    out, pos = [], 0
    for K in kinks:
        m = int(K.sum())
        E = np.zeros_like(K)
        E[K] = rows[pos:pos + m]
        out.append(E)
        pos += m
    return out


def _alive(net: _Net) -> list[np.ndarray]:
    """Per hidden layer: the neurons whose row and column are not exactly zero."""
    return [(np.abs(net.Ws[l]).sum(axis=1) > 0) & (np.abs(net.Ws[l + 1]).sum(axis=0) > 0)
            for l in range(len(net.Ws) - 1)]


def _stratum_zs(net: _Net, Ds) -> list[np.ndarray]:
    """Pre-activations z_l = W_l h_{l−1} of the net with slopes ``Ds`` (h = D ⊙ z)."""
    hs = net.forward(Ds)
    return [W @ h for W, h in zip(net.Ws[:-1], hs[:-1], strict=True)]


def _flips(zs, tzs, scales, kinks, dead, tau: float):
    """Masks of the pre-activations off the kinks (of neurons that stay, and not themselves
    within ``tau`` of zero: those are kinks, or vacuous ones left out by :func:`_effective`)
    whose sign the step flips (``zs`` → ``tzs``), or None when there is none."""
    out, anyf = [], False
    for z, tz, K, d, sc in zip(zs, tzs, kinks, dead, scales, strict=True):
        f = (np.sign(tz) != np.sign(z)) & (np.abs(z) > tau * sc) & ~K & ~d[:, None]
        anyf |= bool(f.any())
        out.append(f)
    return out if anyf else None


def _system(net: _Net, Ds, kinks, u, g) -> np.ndarray:
    """The stratum's KKT system [P_{u⊥} g; ‖g‖·z_K] (the kinks' pre-activations scaled by
    ‖g‖, so that both parts scale alike with ỹ)."""
    r = _project(u, g)
    z = np.concatenate([z[K] for z, K in zip(net.zs, kinks, strict=True)]) if kinks else np.zeros(0)
    return np.concatenate([r, z * max(float(np.linalg.norm(g)), 1e-300)])


def _newton_step(net: _Net, Ds, kinks, u, g, fidx) -> np.ndarray:
    """Least-squares Newton step Δu (k,) on the free coordinates for the system of
    :func:`_system`, with the multipliers as extra unknowns and uᵀΔu = 0."""
    k = u.shape[0]
    gn = max(float(np.linalg.norm(g)), 1e-300)
    H = net.hessian(Ds, fidx)  # (f, f)
    uf, gf = u[fidx], g[fidx]
    ug = float(u @ g)
    # d(P g)/du Δu = HΔu − (uᵀHΔu + gᵀΔu) u − (uᵀg) Δu, columns over the free coordinates
    Hfull = np.zeros((k, fidx.size))
    Hfull[fidx] = H
    Hu = net.hvp(Ds, u[None, :])[0]  # ∇²𝒩_D u (symmetric H): uᵀH = (Hu)ᵀ
    dR = Hfull - np.outer(u, Hu[fidx] + gf)
    dR[fidx, np.arange(fidx.size)] -= ug
    _, _, cs = net.grad(Ds)
    A = net.columns(Ds, kinks, cs)
    PA = A - np.outer(u, u @ A)
    J = net.kink_gradients(Ds, kinks)[:, fidx] * gn
    m = J.shape[0]
    top = np.hstack([dR, PA])
    mid = np.hstack([J, np.zeros((m, PA.shape[1]))])
    bot = np.hstack([uf[None, :], np.zeros((1, PA.shape[1]))]) * gn
    # rows of the zero neurons' coordinates vanish (their gradient is 0 near u): dropped
    rows = np.concatenate([fidx, np.arange(k, k + m)])
    M = np.vstack([top, mid])[rows]
    M = np.vstack([M, bot])
    rhs = -np.concatenate([_system(net, Ds, kinks, u, g)[rows], [0.0]])
    sol = _lstsq(M, rhs)
    step = np.zeros(k)
    step[fidx] = sol[:fidx.size]
    return step

