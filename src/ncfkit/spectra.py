"""Extreme eigenvalues of a symmetric operator known by its products: ∇²𝓛 and ∇²𝒩
restricted to a sphere's tangent space, given by closed-form Hessian-vector products.

Below a size threshold (:data:`DENSE_MAX` parameters) the matrix is formed in chunks of
rows and diagonalised (LAPACK ``syevd``: every eigenvalue, exact to round-off); above it
nothing k × k is ever allocated: Lanczos (ARPACK through scipy's ``eigsh``) on the
products alone, which costs a few hundred products instead of k. Either way the result
says how accurate it is: the largest residual ‖A v − λ v‖ of the returned eigenpairs
relative to ‖A‖ (estimated by the largest |λ| seen), recomputed with one product per
pair after the solver stopped — what the solver achieved, not what it was asked.

A dense matrix that would not fit in memory is refused before it is allocated
(:func:`check_dense_fits`, an :class:`~ncfkit.errors.InputError` that names the setting
that helps).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = ["DENSE_MAX", "Spectrum", "dense_max", "check_dense_fits", "extreme_eigs"]

#: Operators of at most this size are formed densely (exact; every eigenvalue); larger
#: ones are handled matrix-free by Lanczos. ``NCFKIT_DENSE_MAX`` overrides it.
DENSE_MAX = 3000

#: A product: ``matmat(V)`` with V (m, k) float64 returns the m products A vᵢ as rows.
MatMat = Callable[[np.ndarray], np.ndarray]


def dense_max() -> int:
    """The dense/Lanczos threshold: ``NCFKIT_DENSE_MAX`` when set to an integer, else
    :data:`DENSE_MAX`."""
    text = os.environ.get("NCFKIT_DENSE_MAX", "").strip()
    if not text:
        return DENSE_MAX
    try:
        return max(int(text), 0)
    except ValueError:
        raise InputError(f"NCFKIT_DENSE_MAX={text!r}: expected an integer number of parameters") from None


def check_dense_fits(k: int, what: str = "Hessian", copies: int = 2) -> None:
    """Raise :class:`InputError` when ``copies`` dense k × k float64 matrices (the matrix
    and LAPACK's workspace) would not fit in the memory this process may use."""
    from ._runtime import available_memory

    need = copies * 8 * k * k
    have = available_memory()
    if need > have:
        raise InputError(f"a dense {k} x {k} {what} needs {need / 2**30:.1f} GiB but only "
                         f"{have / 2**30:.1f} GiB are available; lower NCFKIT_DENSE_MAX (now {dense_max()}) "
                         "so it is computed matrix-free, or raise NCFKIT_MAX_MEMORY")


@dataclass(frozen=True)
class Spectrum:
    """Extreme eigenpairs of a symmetric operator."""

    values: np.ndarray  # (m,) largest first (``which="LA"``) or smallest first (``"SA"``)
    vectors: np.ndarray | None  # (k, m) unit eigenvectors, or None
    method: str  # dense / lanczos
    #: max over the returned pairs of ‖A v − λ v‖ / ‖A‖ (‖A‖ ≈ the largest |λ| seen):
    #: the accuracy achieved (round-off for dense)
    residual: float
    products: int  # operator products spent (k for dense)


def _dense(matmat: MatMat, k: int, chunk: int, ranges=None) -> np.ndarray:
    """The symmetric (k, k) matrix from products with chunks of the identity (a chunk
    never straddles two of ``ranges``: products skip the blocks a chunk does not touch)."""
    check_dense_fits(k)
    ranges = ranges or ((0, k),)
    A = np.empty((k, k))
    for start, stop in ranges:
        for a in range(start, stop, chunk):
            b = min(a + chunk, stop)
            A[a:b] = matmat(np.eye(b - a, k, a))
    A += A.T
    A *= 0.5
    return A


def extreme_eigs(matmat: MatMat, k: int, *, num: int = 1, which: str = "LA", dense: int | None = None,
                 tol: float = 1e-10, chunk: int = 256, ranges=None, vectors: bool = False,
                 deflate: np.ndarray | None = None, dense_matrix: Callable[[], np.ndarray] | None = None,
                 maxiter: int | None = None, max_products: int | None = None) -> Spectrum:
    """The ``num`` largest (``which="LA"``), smallest (``"SA"``) or both-end (``"BE"``:
    ⌈num/2⌉ largest and ⌊num/2⌋ smallest, from one Krylov space) eigenvalues of the
    symmetric operator A of size ``k`` given by ``matmat``.

    Dense when k ≤ ``dense`` (default :func:`dense_max`): the matrix from ``dense_matrix()``
    when given, else from products with chunks of ``chunk`` rows of the identity (never
    straddling one of ``ranges``). Else Lanczos to relative tolerance ``tol``, with at
    most ``maxiter`` restarts (default max(1000, 20·num)) and about ``max_products``
    products (None: no cap); a Lanczos run stopped by that cap is finished by LOBPCG
    (scipy ``lobpcg``) on what is left of it, and the result's ``residual`` says how far
    from converged its pairs are (``method`` "lanczos, capped").

    ``deflate`` (k,) unit vector q: the operator is taken on q⊥, i.e. (I − qqᵀ)A(I − qqᵀ)
    with q's own eigenvalue (0 there) removed from the result; dense: exactly (the k − 1
    others); Lanczos: q is projected out of every product, so the Krylov space never
    contains it.
    """
    if which not in ("LA", "SA", "BE"):
        raise ValueError(f"which must be LA, SA or BE (got {which!r})")
    dense = dense_max() if dense is None else dense
    q = None if deflate is None else np.asarray(deflate, dtype=np.float64) / np.linalg.norm(deflate)
    size = k - (q is not None)
    num = max(1, min(num, size))

    def project(V):
        return V if q is None else V - np.outer(V @ q, q)

    def op(V):
        V = np.atleast_2d(np.asarray(V, dtype=np.float64))
        return project(np.asarray(matmat(project(V)), dtype=np.float64).reshape(V.shape))

    if size <= 0:
        return Spectrum(np.array([-np.inf if which == "LA" else np.inf]), None, "dense", 0.0, 0)
    if k <= dense:
        if dense_matrix is not None:
            check_dense_fits(k)
            A = np.array(dense_matrix(), dtype=np.float64)
            A += A.T
            A *= 0.5
        else:
            A = _dense(matmat, k, chunk, ranges)
        if q is not None:
            # P A P − c·q qᵀ in place (P = I − q qᵀ): q becomes an eigenvector with
            # eigenvalue −c below (or +c above) the whole spectrum, the other k − 1 are A's on q⊥
            Aq = A @ q
            qAq = float(q @ Aq)
            c = 1.0 + 2.0 * float(np.abs(A).sum(axis=1).max())
            c = -c if which == "SA" else c
            A -= np.outer(q, Aq)
            A -= np.outer(Aq, q)
            A += (qAq - c) * np.outer(q, q)
        w, V = np.linalg.eigh(A)
        if q is not None:  # drop q's eigenpair (at −c: first, or at +c: last)
            w, V = (w[1:], V[:, 1:]) if which != "SA" else (w[:-1], V[:, :-1])
        scale = max(float(np.abs(w).max()), 1e-300)
        vals, vecs = _pick(w, V, num, which)
        res = float(np.linalg.norm(A @ vecs - vecs * vals, axis=0).max()) / scale
        return Spectrum(vals, vecs if vectors else None, "dense", res, k)
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    count = [0]

    def mv(x):
        count[0] += 1
        return op(np.asarray(x).reshape(1, -1))[0]

    def mm(X):
        X = np.asarray(X)
        count[0] += X.shape[1]
        return op(X.T).T

    A = LinearOperator((k, k), matvec=mv, matmat=mm, dtype=np.float64)
    nev = min(num + (q is not None), k - 1)
    v0 = project(np.random.default_rng(0).standard_normal((1, k)))[0]  # seeded: reproducible
    maxiter = maxiter or max(1000, 20 * nev)
    ncv = min(k, max(2 * nev + 1, 24 if k <= 20_000 else 12))  # a wide net: fewer k-vectors in memory
    method = "lanczos"
    if max_products is not None:
        maxiter = max(1, min(maxiter, int(max_products) // ncv))
    try:
        w, V = eigsh(A, k=nev, which=which, tol=tol, v0=v0, maxiter=maxiter, ncv=ncv)
    except ArpackNoConvergence:
        if max_products is None:
            raise
        w, V = _lobpcg(A, k, nev, which, max(1, (int(max_products) - count[0]) // max(nev, 1)), v0)
        method = "lanczos, capped"
    if q is not None:  # q's own eigenvalue 0 (it is in the range only by round-off)
        keep = np.abs(q @ V) <= 0.5
        w, V = w[keep], V[:, keep]
    AV = op(V.T).T
    scale = max(float(np.abs(w).max()), 1e-300)
    res_each = np.linalg.norm(AV - V * w, axis=0) / scale
    vals, vecs = _pick(w, V, num, which)
    order = [int(np.nonzero(w == v)[0][0]) for v in vals]
    return Spectrum(vals, vecs if vectors else None, method, float(res_each[order].max()), count[0])


def _lobpcg(A, k: int, nev: int, which: str, iters: int, v0: np.ndarray):
    """``nev`` eigenpairs (``which`` LA or SA; BE: both ends) of A by ``iters`` LOBPCG
    iterations from a seeded block (converged or not)."""
    import warnings

    from scipy.sparse.linalg import lobpcg

    rng = np.random.default_rng(1)
    out_w, out_V = [], []
    ends = [("LA", nev)] if which == "LA" else [("SA", nev)] if which == "SA" else \
        [("LA", (nev + 1) // 2), ("SA", nev // 2)]
    for end, m in ends:
        if m <= 0:
            continue
        X0 = np.column_stack([v0, rng.standard_normal((k, m))])[:, :max(m, 1)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w, V = lobpcg(A, X0, largest=end == "LA", maxiter=iters, tol=1e-12)
        out_w.append(np.atleast_1d(w))
        out_V.append(V)
    w, V = np.concatenate(out_w), np.concatenate(out_V, axis=1)
    order = np.argsort(w)
    return w[order], V[:, order]


def _pick(w: np.ndarray, V: np.ndarray, num: int, which: str):
    """The ``num`` eigenpairs ``which`` asks for from ascending (w, V)."""
    idx = np.argsort(w)
    if which == "LA":
        sel = idx[::-1][:num]
    elif which == "SA":
        sel = idx[:num]
    else:
        hi = (num + 1) // 2
        sel = np.concatenate([idx[::-1][:hi], idx[:num - hi]])
    return w[sel], V[:, sel]
