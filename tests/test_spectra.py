"""ncfkit.spectra: extreme eigenvalues of a symmetric operator given by its products,
dense below the threshold and Lanczos above (with and without a deflated direction),
the residual they report, the memory guard before a dense matrix, and the call sites
(∇²𝓛's λ_min, the KKT certificate's Δ) on both paths. Seeded, CPU, small."""

from __future__ import annotations

import numpy as np
import pytest

from ncfkit.activations import parse_activation
from ncfkit.dynamics import Objective, min_hessian_eigenvalue
from ncfkit.errors import InputError
from ncfkit.kkt import _restricted_spectrum
from ncfkit.losses import make_loss
from ncfkit.models import MLP
from ncfkit.spectra import check_dense_fits, dense_max, extreme_eigs


def _sym(k: int, seed: int) -> np.ndarray:
    """A symmetric matrix with a well separated spectrum at both ends."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    lam = np.concatenate([[-9.0, -7.0], rng.uniform(-3, 3, k - 4), [8.0, 10.0]])
    return (Q * lam) @ Q.T


@pytest.mark.parametrize("which", ["LA", "SA", "BE"])
def test_dense_and_lanczos_agree(which):
    A = _sym(300, 1)
    exact = np.linalg.eigvalsh(A)
    want = {"LA": exact[::-1][:2], "SA": exact[:2], "BE": np.array([exact[-1], exact[0]])}[which]
    dense = extreme_eigs(lambda V: V @ A, 300, num=2, which=which, dense=1000)
    lanc = extreme_eigs(lambda V: V @ A, 300, num=2, which=which, dense=0, tol=1e-12)
    assert (dense.method, lanc.method) == ("dense", "lanczos")
    np.testing.assert_allclose(dense.values, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lanc.values, want, rtol=1e-9)
    assert dense.residual < 1e-12 and lanc.residual < 1e-8
    assert dense.products == 300 and lanc.products < 300


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_deflated_direction(which):
    """On q⊥: the spectrum of (I − qqᵀ)A(I − qqᵀ) without q's own eigenvalue 0, both ways
    (here every restricted eigenvalue is negative for LA / positive for SA, so q's 0
    would be the extreme one if it were not removed)."""
    k = 200
    rng = np.random.default_rng(4)
    A = _sym(k, 2)
    A = A - 20 * np.eye(k) if which == "LA" else A + 20 * np.eye(k)
    q = rng.standard_normal(k)
    q /= np.linalg.norm(q)
    basis = np.linalg.qr(np.column_stack([q, rng.standard_normal((k, k - 1))]))[0][:, 1:]
    exact = np.linalg.eigvalsh(basis.T @ A @ basis)
    want = exact[::-1][:3] if which == "LA" else exact[:3]
    for dense in (1000, 0):
        s = extreme_eigs(lambda V: V @ A, k, num=3, which=which, dense=dense, deflate=q, tol=1e-12)
        np.testing.assert_allclose(s.values, want, rtol=1e-8)
        assert s.residual < 1e-8


def test_no_dense_matrix_above_threshold():
    """k = 200,000 (a 320 GB dense matrix): Lanczos on a diagonal operator, quickly, and
    a forced dense path is refused before anything k × k is allocated."""
    k = 200_000
    d = np.linspace(0.0, 1.0, k)
    d[0], d[-1] = -1.0, 2.0  # separated ends: a few dozen products
    s = extreme_eigs(lambda V: V * d, k, num=2, which="BE", tol=1e-8)
    assert s.method == "lanczos"
    np.testing.assert_allclose(sorted(s.values), [-1.0, 2.0], rtol=1e-6)
    with pytest.raises(InputError, match="NCFKIT_DENSE_MAX"):
        extreme_eigs(lambda V: V * d, k, dense=10**9)
    with pytest.raises(InputError, match=r"200000 x 200000 Hessian needs"):
        check_dense_fits(k)


def test_dense_max_setting(monkeypatch):
    monkeypatch.setenv("NCFKIT_DENSE_MAX", "123")
    assert dense_max() == 123
    monkeypatch.setenv("NCFKIT_DENSE_MAX", "lots")
    with pytest.raises(InputError, match="NCFKIT_DENSE_MAX"):
        dense_max()
    monkeypatch.delenv("NCFKIT_DENSE_MAX")
    assert dense_max() == 3000


def _net(seed=0, act="square"):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((25, 5))
    y = rng.standard_normal(25)
    arch = MLP(5, (6, 4), parse_activation(act))
    return arch, X, y, rng.standard_normal(arch.num_params) * 0.5


def test_min_hessian_eigenvalue_paths_agree():
    arch, X, y, w = _net()
    obj = Objective(arch, X, y, make_loss("square", "sum"))
    dense = min_hessian_eigenvalue(obj, w)
    lanc = min_hessian_eigenvalue(obj, w, dense_max=0)
    assert (dense.method, lanc.method) == ("dense", "lanczos")
    assert lanc.min == pytest.approx(dense.min, rel=1e-7, abs=1e-9 * abs(dense.max))
    assert lanc.max == pytest.approx(dense.max, rel=1e-7)
    assert dense.residual < 1e-12 and lanc.residual < 1e-7
    exact = np.linalg.eigvalsh(_dense_hessian(obj, w))
    assert dense.min == pytest.approx(exact[0], rel=1e-9, abs=1e-12 * abs(exact[-1]))


def _dense_hessian(obj, w):
    from ncfkit.ncf import loss_hvp

    return loss_hvp(obj.arch, obj.X, obj.y, obj.loss, w, np.eye(w.size))


def test_restricted_spectrum_paths_agree(monkeypatch):
    import ncfkit.kkt as kkt

    arch, X, y, w = _net(3)
    w /= np.linalg.norm(w)
    dense = _restricted_spectrum(arch, X, y, w)
    monkeypatch.setattr(kkt, "DENSE_MAX", 0)
    lanc = _restricted_spectrum(arch, X, y, w)
    assert (dense.method, lanc.method) == ("dense", "lanczos")
    np.testing.assert_allclose(lanc.values, dense.values, rtol=1e-8, atol=1e-10 * abs(dense.values).max())
    assert lanc.residual < 1e-8
