"""The stratum Newton polish of ncfkit before the round-off-robust kink bound (commit
96fa47f), kept as :func:`ncfkit.clarke.polish`'s second attempt.

The current solve (:mod:`ncfkit.clarke`: kinks vanishing relative to a bound of the data
and the weights, the multipliers as Newton unknowns, merged parallel neurons, the
matrix-free path) certifies Figure 8's MNIST point, which this one could not; on Figure 6's
3-layer net this one certifies the ascent's point (residual 1.7e-12 in 8 s) where the
current solve stalls at 4.4e-3. Until one solve does both, :func:`ncfkit.clarke.polish`
runs this one on a dense-sized stratum the current one leaves uncertified, and keeps the
certified result. Only :func:`polish` is used from here.

Original module docstring:
Clarke stationarity of the constrained NCF for piecewise-linear activations.

For σ(x) = max(x, αx) (p = 1, α ≠ 1: ``relu``, ``leaky:α``) the NCF 𝒩(u) = ỹᵀH(X; u)
(eq. 3) is not differentiable where a pre-activation z vanishes, so the smooth KKT
conditions of the constrained NCF (eq. 4; Section 2, "First- and second-order KKT
points") are replaced by their nonsmooth form. w is a **Clarke-KKT point** when

.. math::

    0 \\in P_{w^\\perp}\\,\\partial^C \\mathcal{N}(w), \\qquad P_{w^\\perp} = I - w w^\\top,

with ∂ᶜ𝒩 the Clarke generalized gradient (F. H. Clarke, *Optimization and Nonsmooth
Analysis*, Wiley 1983, §2.1: the convex hull of the limits of gradients at nearby points
of differentiability). Every element of ∂ᶜ𝒩 is a backward pass in which each vanishing
pre-activation z_{l,j,i} (layer l, neuron j, sample i) gets a multiplier
s ∈ [min(α, 1), max(α, 1)] in place of σ'(z) — [0, 1] for ReLU. Euler's identity
uᵀg = L_h 𝒩(u) holds for every such g (σ'(z)·z = σ(z) for any s at z = 0), so the radial
part is the same for all s, and the first-order residual

    min_s ‖P_{u⊥} g(s)‖ / ‖g(s)‖

is a bounded least-squares problem (:func:`scipy.optimize.lsq_linear`): g(s) is affine
in s whenever no sample has vanishing pre-activations in two layers.

- **Two-layer nets**: the set of these g is ∂ᶜ𝒩 itself when the samples x_i at the kinks
  of each neuron are linearly independent (generic data; otherwise it is an outer
  approximation), and the residual is its exact minimum.
- **Deeper nets**: the set is the *conservative field* of the backward pass with one
  multiplier per (sample, neuron) (J. Bolte and E. Pauwels, "Conservative set valued
  fields, automatic differentiation, stochastic gradient methods and deep learning",
  Math. Program. 188, 2021), which contains ∂ᶜ𝒩. When one sample has kinks in two
  layers g(s) is multilinear in s and the minimum is approached by repeated linearised
  least squares (``exact`` is then False: the residual is an upper bound of the minimum).

"Vanishing" is decided by a tolerance, never by float equality: |z_{l,j,i}| ≤ τ·‖W_l[j,:]‖
‖h_{l−1}(x_i)‖ (the Cauchy–Schwarz bound of z from the data and the weights), so the
residual is that of a Goldstein-type enlargement of ∂ᶜ𝒩 (A. A. Goldstein, "Optimization
of Lipschitz continuous functions", Math. Program. 13, 1977) and does not depend on which
side of a kink round-off lands.

Second order on the **smooth stratum**: fixing the sign pattern of the nonzero
pre-activations and keeping the vanishing ones at zero, 𝒩 agrees near w with the
polynomial 𝒩_D of the net whose activations are replaced by the fixed slopes D (the
multipliers s* at the kinks). The certificate reports Δ = L_h 𝒩 − λ_max(∇²𝒩_D restricted
to T), T = w⊥ ∩ {b : ∇z_k·b = 0 for every kink k} — the paper's Δ-second-order condition
(Section 2) for the problem restricted to the stratum. Directions that grow a zero neuron
leave the stratum (all its pre-activations vanish) and are not part of Δ.

:func:`clarke_certificate` computes all of this for one point; :func:`polish` turns an
approximate point of the ascent into a certified one by Newton's method on its stratum.
Everything here runs in float64 numpy on the host, whatever the kind of the inputs
(numpy arrays or tensors: :mod:`ncfkit.arrays`), so both kinds give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import to_numpy
from .errors import InputError

__all__ = ["applies", "check_certificate_defined", "ClarkeCertificate", "clarke_certificate", "default_kink_tol",
           "PolishResult", "polish", "KINK_TOL", "DENSE_MAX", "NEWTON_MAX"]

#: Relative tolerance τ below which a pre-activation counts as vanishing (certificate).
KINK_TOL = 1e-9
#: Above this many parameters the stratum's Hessian spectrum is computed matrix-free.
DENSE_MAX = 3000
#: Above this many unknowns (free weights + kinks) :func:`polish` does not attempt the
#: dense Newton solve (O(size³) per step: ~5 s at 1100 on a loaded 2-core host).
NEWTON_MAX = 1500

#: The most entries (kinks × weights) of a dense matrix of kink gradients (16 MiB): above
#: it the first-order residual is the one-sided bound and the stratum's Δ is not computed
#: (MNIST-sized data: thousands of samples at the kinks of a deep ReLU net).
MAX_KINK_ENTRIES = 1 << 21


def applies(arch) -> bool:
    """Whether ``arch`` is a feed-forward net with a piecewise-linear activation
    max(x, αx) (p = 1, α ≠ 1): the case this module certifies."""
    act = getattr(arch, "act", None)
    return (getattr(arch, "kind", None) == "mlp" and act is not None and act.homogeneous
            and act.p == 1 and act.alpha != 1)


def check_certificate_defined(arch_name: str, act: str | None) -> None:
    """Raise :class:`InputError` for an architecture/activation pair that has no KKT
    certificate: an activation given for the diagonal model (it has none), or a
    non-homogeneous activation (tanh, gelu: no NCF theory, Appendix F.2)."""
    from .activations import parse_activation

    if act is None:
        return
    from .models import ARCHITECTURES

    cls = ARCHITECTURES.get(arch_name)
    if cls is not None and "act" not in cls.options:
        what = cls.title.split(" H = ")[0].split(" (")[0]
        raise InputError(f"--act {act}: {what} (--arch {arch_name}) has no activation; "
                         "drop --act or use --arch mlp")
    a = parse_activation(act)
    if not a.homogeneous:
        raise InputError(f"--act {act}: not homogeneous, so the constrained NCF and its KKT "
                         "certificate are not defined (use it for training runs only)")


# --------------------------------------------------------------------------- the masked net


def _slope_bounds(alpha: float) -> tuple[float, float]:
    return min(alpha, 1.0), max(alpha, 1.0)


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


def _ranges(sizes):
    out, a = [], 0
    for s in sizes:
        out.append((a, a + s))
        a += s
    return out


def _lstsq(A, b):
    """Minimum-norm least-squares solution (LAPACK gelsy: QR with column pivoting)."""
    from scipy.linalg import lstsq

    return lstsq(A, b, lapack_driver="gelsy")[0]


def _project(u, g):
    return g - (u @ g) * u


# --------------------------------------------------------------------------- first order


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


@dataclass(frozen=True)
class ClarkeCertificate:
    """First- and second-order Clarke-KKT diagnostics of one unit point w (float64)."""

    w: np.ndarray
    ncf: float
    residual: float  # min_s ‖P_{w⊥} g(s)‖ / ‖g(s)‖
    field: str  # "clarke" (two-layer) or "conservative" (deeper)
    exact: bool  # the residual is the exact minimum over the field
    multipliers: int  # kinks (sample, neuron) whose multiplier enters g
    kinks: int  # vanishing pre-activations of nonzero neurons
    s: np.ndarray  # the minimising multipliers, one per kink
    delta: float  # Δ on the smooth stratum
    top_eigs: tuple[float, ...]
    eig_error: float  # Lemma 20 for 𝒩_D: ‖∇²𝒩_D w − L_h(L_h−1)𝒩 w‖ / |L_h(L_h−1)𝒩|
    stratum_dim: int  # dim T = dim(w⊥ ∩ kink tangents)
    hessian_method: str
    eig_residual: float = float("nan")  # achieved ‖Hv − λv‖/‖H‖ of the top pairs (ncfkit.spectra)


def _normal_rows(net: _Net, Ds, kinks, cs) -> tuple[np.ndarray | None, np.ndarray, int]:
    """(rows spanning {∇z_k} over the kinks but those of ``fixed``, the coordinates ``fixed``
    at 0 (bool, k), how many multipliers enter g: c_k∇z_k ≠ 0). Rows None: too many kinks
    to write out (:data:`MAX_KINK_ENTRIES`).

    The kinks of a neuron whose incoming row W_l[j,:] is exactly zero (every sample
    vanishes there) have ∇z_{l,j,i} = h_{l−1,i} on that row's weights and 0 elsewhere (the
    earlier layers reach z only through the zero row): their span is that row times
    span{h_{l−1,i}}. When the h_{l−1,i} span all of R^{k_{l−1}} (n ≥ the fan-in, generic
    data) the row's weights are simply fixed at 0; else an orthonormal basis of at most
    k_{l−1} rows stands for the n. MNIST-sized data at a sparse point need no n × k matrix."""
    k = net.u.shape[0]
    hs = net.forward(Ds)
    others, extra, count = [], [], 0
    fixed = np.zeros(k, dtype=bool)
    for l, (K, W) in enumerate(zip(kinks, net.Ws[:-1], strict=True)):
        zero_row = ~(np.abs(W).sum(axis=1) > 0)
        Z = K & zero_row[:, None]
        others.append(K & ~zero_row[:, None])
        a, fan_in = net.ranges[l][0], W.shape[1]
        for j in np.flatnonzero(Z.any(axis=1)):
            H = hs[l][:, Z[j]]  # (k_{l-1}, m_j): the gradients of this neuron's kinks
            count += int(np.count_nonzero((cs[l][j, Z[j]] != 0) & (np.abs(H).sum(axis=0) > 0)))
            if not H.size:
                continue
            U, sv, _ = np.linalg.svd(H, full_matrices=False)
            rank = int((sv > max(H.shape) * np.finfo(float).eps * sv[0]).sum()) if sv[0] > 0 else 0
            cols = slice(a + j * fan_in, a + (j + 1) * fan_in)
            if rank == fan_in:
                fixed[cols] = True
                continue
            rows = np.zeros((rank, k))
            rows[:, cols] = U[:, :rank].T
            extra.append(rows)
    c = np.concatenate([C[K] for C, K in zip(cs, others, strict=True)]) if others else np.zeros(0)
    if c.size * k > MAX_KINK_ENTRIES:  # too many to write out: no stratum (None), c_k ≠ 0 counted
        return None, fixed, count + int(np.count_nonzero(c))
    J = net.kink_gradients(Ds, others)
    count += int(np.count_nonzero((c != 0) & np.any(J != 0, axis=1)))  # columns c_k ∇z_k ≠ 0
    return (np.vstack([J, *extra]) if extra else J), fixed, count


def _stratum_basis_complement(u, J) -> np.ndarray:
    """Orthonormal basis Q (k, r) of span{u, rows of J} (the normal space of the stratum
    on the sphere); T is its orthogonal complement.

    Rows of J whose supports (first to last nonzero coordinate) do not overlap are
    orthogonal, so each group of overlapping rows — in layer 1 the kinks of one neuron,
    its d incoming weights — gets its own small SVD; u is orthogonalised against them."""
    k = u.shape[0]
    eps = np.finfo(float).eps
    blocks = []
    if J.size:
        nz = J != 0
        has = nz.any(axis=1)
        first = np.where(has, nz.argmax(axis=1), k)
        last = np.where(has, k - 1 - nz[:, ::-1].argmax(axis=1), -1)
        order = np.argsort(first[has], kind="stable")
        rows = np.flatnonzero(has)[order]
        group, lo, hi = [], -1, -1
        for r in rows:  # merge overlapping supports
            if group and first[r] > hi:
                blocks.append((lo, hi, group))
                group = []
            if not group:
                lo, hi = first[r], last[r]
            group.append(r)
            hi = max(hi, last[r])
        if group:
            blocks.append((lo, hi, group))
    cols = []
    for lo, hi, group in blocks:
        sub = J[group, lo:hi + 1]
        U, sv, _ = np.linalg.svd(sub.T, full_matrices=False)
        rank = int((sv > max(sub.shape) * eps * sv[0]).sum()) if sv.size and sv[0] > 0 else 0
        Q = np.zeros((k, rank))
        Q[lo:hi + 1] = U[:, :rank]
        cols.append(Q)
    Q = np.hstack(cols) if cols else np.zeros((k, 0))
    r = u - Q @ (Q.T @ u)
    rn = float(np.linalg.norm(r))
    if rn > 1e3 * eps * float(np.linalg.norm(u)):
        Q = np.hstack([Q, (r / rn)[:, None]])
    return Q


def _top_eigs_on_stratum(net: _Net, Ds, u, J, num: int = 3, dense_max: int = DENSE_MAX,
                         max_products: int | None = None, fixed: np.ndarray | None = None):
    """(largest eigenvalues of ∇²𝒩_D restricted to T = (span{u, ∇z_k})⊥ ∩ {v : v_fixed = 0},
    dim T, method, achieved residual): dense up to ``dense_max`` free weights, else Lanczos
    on the products (:func:`ncfkit.spectra.extreme_eigs`, at most about ``max_products``).
    The coordinates ``fixed`` (bool, k: the incoming weights of zero-row neurons) are left
    out of the operator altogether."""
    k = u.shape[0]
    Fi = np.arange(k) if fixed is None else np.flatnonzero(~fixed)
    f = Fi.size
    Q = _stratum_basis_complement(u[Fi], J[:, Fi] if J.shape[0] else np.zeros((0, f)))
    dim_t = f - Q.shape[1]
    if dim_t <= 0:
        return np.array([-np.inf]), dim_t, "dense", 0.0

    def proj(V):  # rows of V projected onto T (in the free coordinates)
        return V - (V @ Q) @ Q.T

    if f <= dense_max:
        # Coordinates whose unit vector lies in the normal space (the incoming weights of a
        # zero neuron: all its pre-activations vanish) carry no direction of T: drop them.
        F = np.flatnonzero(np.einsum("ij,ij->i", Q, Q) < 1 - 1e-9)
        QF, sv, _ = np.linalg.svd(Q[F], full_matrices=False)
        QF = QF[:, :int((sv > 1e-9).sum())]
        if F.size - QF.shape[1] != dim_t:  # not an exact split: keep every free coordinate
            F, QF = np.arange(f), Q
        H = net.hessian(Ds, Fi[F])
        # P H P − c·QQᵀ: the normal space sinks below the spectrum (no basis of T is built)
        c = 1.0 + 2.0 * float(np.abs(H).sum(axis=1).max())
        P = np.eye(F.size) - QF @ QF.T
        Hp = P @ H @ P - c * (QF @ QF.T)
        eigs = np.linalg.eigvalsh(0.5 * (Hp + Hp.T))[::-1][:min(num, dim_t)]
        return eigs, dim_t, "dense", float(np.finfo(float).eps)
    from .spectra import extreme_eigs

    value = abs(net.grad(Ds)[0])
    shift = 10 * value + 1.0

    def hvp_free(V):  # ∇²𝒩_D on the free coordinates
        full = np.zeros((V.shape[0], k))
        full[:, Fi] = V
        return net.hvp(Ds, full)[:, Fi]

    def matmat(V):  # P H P − shift·(I − P): the normal space sinks below the spectrum
        PV = proj(V)
        return proj(hvp_free(PV)) - shift * (V - PV)

    spec = extreme_eigs(matmat, f, num=min(num + 1, f - 1), which="LA", dense=0, tol=1e-10, vectors=True,
                        maxiter=20 * f, max_products=max_products)
    normal = np.linalg.norm(Q.T @ spec.vectors, axis=0) > 0.5
    return np.sort(spec.values[~normal])[::-1][:num], dim_t, spec.method, spec.residual


def _as_host(arch, X, ytilde, w):
    Xn = np.asarray(to_numpy(X), dtype=np.float64)  # no copy of float64 data
    yn = np.asarray(to_numpy(ytilde), dtype=np.float64)
    u = to_numpy(w).astype(np.float64).ravel()
    return Xn, yn, u / np.linalg.norm(u)


def default_kink_tol(*arrays) -> float:
    """:data:`KINK_TOL`, or 100 ulps of the coarsest float format among ``arrays`` when
    that is larger (a float32 point is only known to ~1e-7)."""
    eps = max(float(np.finfo(to_numpy(a).dtype).eps) for a in arrays)
    return max(KINK_TOL, 100 * eps)


def clarke_certificate(arch, X, ytilde, w, *, kink_tol: float | None = None,
                       dense_max: int = DENSE_MAX, max_products: int | None = None) -> ClarkeCertificate:
    """The Clarke-KKT certificate of the unit point along ``w`` (see the module doc):
    residual min_s ‖P_{w⊥}g(s)‖/‖g(s)‖ over the multipliers of the pre-activations with
    |z| ≤ ``kink_tol``·‖W_l[j,:]‖‖h_{l−1,i}‖ (default :func:`default_kink_tol`), and
    Δ = L_h 𝒩 − λ_max(∇²𝒩_{D(s*)}|T) on the smooth stratum. ``X``, ``ytilde``, ``w``:
    numpy arrays or tensors (read in float64).

    Raises:
        ValueError: ``arch`` is not a feed-forward net with activation max(x, αx), α ≠ 1.
    """
    if not applies(arch):
        raise ValueError(f"no Clarke certificate for {arch.describe()}")
    kink_tol = default_kink_tol(X, ytilde, w) if kink_tol is None else kink_tol
    Xn, yn, u = _as_host(arch, X, ytilde, w)
    L_h = float(arch.homogeneity)
    net = _Net(arch, Xn, yn, u)
    # every vanishing pre-activation, those of exactly-zero neurons included: their
    # multipliers do not enter g (zero columns), but they keep such neurons at zero in T
    kinks = net.kinks(kink_tol)
    s, g, exact = _best_multipliers(net, kinks)
    Ds = net.slopes(kinks, s)
    value, _, cs = net.grad(Ds)
    tiny = np.finfo(float).tiny
    residual = float(np.linalg.norm(_project(u, g))) / max(float(np.linalg.norm(g)), tiny)
    J, fixed, multipliers = _normal_rows(net, Ds, kinks, cs)
    if J is None:  # more kinks than MAX_KINK_ENTRIES allows: Δ unknown
        top, dim_t, method, eig_residual = np.array([np.nan]), -1, "none (too many kinks)", np.nan
    else:
        top, dim_t, method, eig_residual = _top_eigs_on_stratum(net, Ds, u, J, dense_max=dense_max,
                                                                max_products=max_products, fixed=fixed)
    target = L_h * (L_h - 1) * value
    hw = net.hvp(Ds, u[None, :])[0]
    eig_error = float(np.linalg.norm(hw - target * u)) / max(abs(target), tiny)
    field = "clarke" if len(net.Ws) == 2 else "conservative"
    n_live = int(sum(int(K.sum()) for K in _live_kinks(net, kink_tol)))
    return ClarkeCertificate(u, value, residual, field, exact, multipliers, n_live, s,
                             L_h * value - float(top[0]), tuple(float(t) for t in top), eig_error,
                             int(dim_t), method, eig_residual)


@dataclass(frozen=True)
class _FirstOrder:
    ncf: float
    residual: float
    kinks: int


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


# --------------------------------------------------------------------------- the stratum solve


@dataclass(frozen=True)
class PolishResult:
    """A point after :func:`polish`: ``certified`` when its Clarke residual is ≤ tol,
    else ``reason`` says why not."""

    u: np.ndarray
    ncf: float
    residual: float
    certified: bool
    reason: str | None
    iterations: int
    kinks: int
    direction: np.ndarray | None  # an ascent direction off the stratum (multipliers out of range)


def _zero_neurons(arch, u, active_tol):
    """u with the weights of its zero neurons (row and column below ``active_tol`` of
    the largest neuron: :func:`ncfkit.sparsity.neuron_activity`) set to exactly 0, and
    the mask of the remaining free coordinates."""
    from .sparsity import neuron_activity, zero_preserving_mask

    act = neuron_activity(arch, u, active_tol)
    mask = zero_preserving_mask(arch, act.zero, like=u)
    # lopsided neurons (row or column alone small) are kept: the Newton solve settles them
    u = np.where(mask, 0.0, u)
    return u / np.linalg.norm(u), ~mask


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


def _remove_vanishing_neurons(arch, u, new, rtol: float = 1e-6):
    """``new`` with the neurons that the step u → new shrinks by more than ``rtol``
    (relative to their norm in u) set to exactly zero, and the per-layer masks of them."""
    new = new.copy()
    Wo, Wn = arch.split(u), arch.split(new)
    dead = []
    for l in range(len(Wo) - 1):
        old = np.sqrt((Wo[l] ** 2).sum(1) + (Wo[l + 1] ** 2).sum(0))
        now = np.sqrt((Wn[l] ** 2).sum(1) + (Wn[l + 1] ** 2).sum(0))
        d = (now <= rtol * old) & (old > 0)
        Wn[l][d, :] = 0.0
        Wn[l + 1][:, d] = 0.0
        dead.append(d)
    return arch.join(Wn), dead


def _neuron_mask(arch, neurons: list[np.ndarray]) -> np.ndarray:
    """Flat mask of the rows and columns of the marked neurons (per hidden layer)."""
    flat = np.zeros(arch.num_params, dtype=bool)
    Ms = arch.split(flat)
    for l, d in enumerate(neurons):
        Ms[l][d, :] = True
        Ms[l + 1][:, d] = True
    return flat


def _stratum_zs(net: _Net, Ds) -> list[np.ndarray]:
    """Pre-activations z_l = W_l h_{l−1} of the net with slopes ``Ds`` (h = D ⊙ z)."""
    hs = net.forward(Ds)
    return [W @ h for W, h in zip(net.Ws[:-1], hs[:-1], strict=True)]


def _crossing(zs, tzs) -> list[np.ndarray]:
    """Per pre-activation, the fraction t at which z, moving linearly from ``zs`` to
    ``tzs``, vanishes (exact in layer 1 for an unnormalised step)."""
    return [np.where(z != tz, z / np.where(z != tz, z - tz, 1.0), np.inf) for z, tz in zip(zs, tzs, strict=True)]


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
