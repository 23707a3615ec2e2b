"""Large strata of :func:`ncfkit.clarke.polish` (above ``NEWTON_MAX`` unknowns), forced on
small 3-layer ReLU nets by a small ``newton_max``:

- neurons that act as one (parallel incoming rows) are merged, the small net is solved
  densely and the point embedded back W_l = E_l W̃_l E_{l−1}ᵀ. Oracle: a certified point of
  the net with one neuron per layer, split into parallel copies with random weights, is a
  point of the wide net with the same 𝒩 (computed here by a plain numpy forward pass);
  from it, perturbed, the large path returns a certified point with that 𝒩 and every
  neuron still active;
- the matrix-free Newton step (LSMR on Hessian-vector products) against the dense solve
  from the same perturbed points: both certified, the same 𝒩;
- kinks with ∇z = 0 (samples that no neuron of the layer below passes) are left out of
  the certificate's bounded least squares, so a cap on the dense kink matrix that they
  alone exceed no longer turns the residual into the one-sided bound.

No assertion depends on the side of a kink a float lands on: every check is a
certificate (residual ≤ tol, whichever multipliers) or a value of 𝒩 to 1e-10.
"""

from __future__ import annotations

import numpy as np
import pytest

from ncfkit import clarke
from ncfkit.activations import parse_activation
from ncfkit.data import teacher_dataset
from ncfkit.kkt import find_kkt_points
from ncfkit.losses import make_loss
from ncfkit.models import MLP

TOL = 1e-9
RELU = parse_activation("relu")


def _ncf(arch, X, yt, w) -> float:
    """𝒩(w) = ỹᵀ H(X; w) by a plain forward pass (no ncfkit)."""
    Ws = arch.split(np.asarray(w, dtype=float))
    h = X.T
    for W in Ws[:-1]:
        h = np.maximum(W @ h, 0.0)
    return float((Ws[-1] @ h)[0] @ yt)


@pytest.fixture(scope="module")
def data():
    X, y = teacher_dataset(n=20, d=3, hidden="2", act="relu", seed=1)
    yt = make_loss("square", "sum").ytilde(y)
    return np.asarray(X, dtype=float), np.asarray(yt, dtype=float)


@pytest.fixture(scope="module")
def narrow_top(data):
    """The best certified point of the 3-layer net with one neuron per layer."""
    X, yt = data
    arch = MLP(3, (1, 1), RELU)
    res = find_kkt_points(arch, X, yt, restarts=4, seed=0, max_steps=4000)
    top = max((p for p in res.points if p.cert.residual <= TOL), key=lambda p: p.cert.ncf)
    return arch, np.asarray(top.cert.w, dtype=float), float(top.cert.ncf)


def _split(narrow, u, widths, rng):
    """The narrow single-path point split into parallel copies with random positive
    weights a_l (unit norm per layer): W1 = a1 w1, W2 = c2 a2 a1ᵀ, W3 = c3 a2ᵀ."""
    W1, W2, W3 = narrow.split(u)
    a1 = rng.uniform(0.5, 1.5, widths[0])
    a2 = rng.uniform(0.5, 1.5, widths[1])
    a1, a2 = a1 / np.linalg.norm(a1), a2 / np.linalg.norm(a2)
    Ws = [a1[:, None] * W1, W2[0, 0] * a2[:, None] * a1[None, :], W3[0, 0] * a2[None, :]]
    return np.concatenate([W.ravel() for W in Ws])


def test_split_point_keeps_the_value_and_norm(data, narrow_top):
    X, yt = data
    narrow, u, value = narrow_top
    wide = MLP(3, (4, 3), RELU)
    uw = _split(narrow, u, (4, 3), np.random.default_rng(0))
    assert np.linalg.norm(uw) == pytest.approx(1.0, abs=1e-12)
    assert _ncf(wide, X, yt, uw) == pytest.approx(value, abs=1e-10)
    # merging recovers the single path, and embedding it back gives the split point
    r_arch, Es, ur = clarke._merge_parallel(wide, uw, clarke.MERGE_ANGLE)
    assert r_arch.hidden == (1, 1)
    assert _ncf(r_arch, X, yt, ur) == pytest.approx(value, abs=1e-10)
    assert np.linalg.norm(clarke._embed(wide, r_arch, Es, ur) - uw) < 1e-12


@pytest.mark.parametrize("noise", [1e-7, 1e-6])
def test_large_stratum_merges_parallel_neurons_and_certifies(data, narrow_top, noise):
    X, yt = data
    narrow, u, value = narrow_top
    wide = MLP(3, (4, 3), RELU)
    rng = np.random.default_rng(1)
    uw = _split(narrow, u, (4, 3), rng)
    start = uw + noise * rng.standard_normal(uw.size)
    res = clarke.polish(wide, X, yt, start, tol=TOL, newton_max=5)  # 27 free weights > 5: the large path
    assert res.certified and res.residual <= TOL, res.reason
    assert res.ncf == pytest.approx(value, abs=1e-10)
    assert _ncf(wide, X, yt, res.u) == pytest.approx(value, abs=1e-10)
    # on the continuum at the start's neuron weights: every neuron stays, near the start
    W1, W2, W3 = wide.split(res.u)
    assert np.all(np.linalg.norm(W1, axis=1) > 0.1) and np.all(np.abs(W3) > 0.1)
    assert np.linalg.norm(res.u - uw) < 100 * noise
    # the certificate of the full net says the same
    cert = clarke.clarke_certificate(wide, X, yt, res.u)
    assert cert.residual <= TOL


def test_matrix_free_newton_agrees_with_the_dense_solve(data, narrow_top, monkeypatch):
    """Merging switched off: the matrix-free Levenberg–Marquardt step (newton_max=0) and
    the dense least-squares step reach certified points with the same 𝒩 — the narrow
    net's, which every wide maximum found here attains (its continuum)."""
    X, yt = data
    _, _, value = narrow_top
    wide = MLP(3, (4, 3), RELU)
    res = find_kkt_points(wide, X, yt, restarts=4, seed=0, max_steps=4000)
    points = [p for p in res.points if p.cert.residual <= TOL]
    assert points
    rng = np.random.default_rng(2)
    monkeypatch.setattr(clarke, "MERGE_ANGLE", 0.0)
    for p in points:
        w = np.asarray(p.cert.w, dtype=float)
        for noise in (1e-6, 1e-5):
            start = w + noise * rng.standard_normal(w.size)
            dense = clarke.polish(wide, X, yt, start, tol=TOL)
            free = clarke.polish(wide, X, yt, start, tol=TOL, newton_max=0)
            assert dense.certified and free.certified, (dense.reason, free.reason)
            assert free.residual <= TOL
            assert free.ncf == pytest.approx(dense.ncf, abs=1e-10)
            assert free.ncf == pytest.approx(p.cert.ncf, abs=1e-10)
    assert max(p.cert.ncf for p in points) == pytest.approx(value, abs=1e-10)


def test_too_large_a_stratum_gives_its_reason(data, narrow_top, monkeypatch):
    X, yt = data
    narrow, u, _ = narrow_top
    wide = MLP(3, (4, 3), RELU)
    rng = np.random.default_rng(3)
    start = _split(narrow, u, (4, 3), rng) + 1e-6 * rng.standard_normal(27)
    monkeypatch.setattr(clarke, "MERGE_ANGLE", 0.0)
    res = clarke.polish(wide, X, yt, start, tol=TOL, newton_max=0, matrix_free_max=10)
    assert not res.certified
    assert "stratum too large for the Newton solve" in res.reason and "> 10" in res.reason


def test_vacuous_kinks_do_not_cap_the_certificate(data, monkeypatch):
    """Ten all-zero samples give 70 vanishing pre-activations with ∇z = 0 at every point:
    with a cap on the kink matrix that only they exceed, the residual and Δ are the
    uncapped ones (before, the one-sided bound and no Δ)."""
    X, yt = data
    arch = MLP(3, (4, 3), RELU)
    res = find_kkt_points(arch, X, yt, restarts=2, seed=0, max_steps=4000)
    w = np.asarray(res.points[0].cert.w, dtype=float)
    Xz = np.vstack([X, np.zeros((10, 3))])
    yz = np.concatenate([yt, np.linspace(-1.0, 1.0, 10)])
    full = clarke.clarke_certificate(arch, Xz, yz, w)
    net = clarke._Net(arch, Xz, yz, w / np.linalg.norm(w))
    kinks = net.kinks(clarke.default_kink_tol(Xz, yz, w))
    live = int(sum(int(K[:, :20].sum()) for K in kinks))  # the kinks of the 20 real samples
    m = int(sum(int(K.sum()) for K in kinks))
    assert m - live >= 70
    monkeypatch.setattr(clarke, "MAX_KINK_ENTRIES", (live + 1) * arch.num_params)
    capped = clarke.clarke_certificate(arch, Xz, yz, w)
    # the zero samples' kinks in two layers made the full field multilinear (exact False);
    # without them g is affine in the multipliers and the minimum is exact
    assert capped.exact
    assert capped.residual == pytest.approx(full.residual, abs=1e-14)
    assert capped.delta == pytest.approx(full.delta, rel=1e-9, abs=1e-12)
    assert np.isfinite(capped.delta)


@pytest.mark.parametrize("hidden", [(1, 1), (1, 1, 1)])
@pytest.mark.parametrize("eps", [0.0, 1e-17, -1e-17, 3e-18, -3e-18])
def test_kinks_in_several_layers_certify_whatever_the_side(hidden, eps):
    """One path b → w_2 → … with 𝒩 = w_2⋯w_L · Σ ỹ_i relu(b·x_i) on x = e1, e2, −e2, e1+e2,
    ỹ = 1, −2, −1, ½: at b = (β, ε) with ε = 0 it peaks (slopes −3/2 and +3/2 in b_2), a
    Clarke-KKT point with multipliers s_2 − s_3/2 = ¼ at the kinks of e2 and −e2, and
    𝒩 = 3/2·L^{−L/2} (balanced layers). Round-off ε ≠ 0 puts one of the two samples
    below its kink: h_1 = 0 there and its later pre-activations vanish too, a kink in
    every layer. The certificate must not depend on that side (before, the sample with
    h_1 = 0 had its multiplier stuck at 0 and ε < 0 gave the residual 0.19)."""
    arch = MLP(2, hidden, RELU)
    L = len(hidden) + 1
    c = 1.0 / np.sqrt(L)
    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 1.0]])
    yt = np.array([1.0, -2.0, -1.0, 0.5])
    w = np.array([c, eps] + [c] * (L - 1))
    cert = clarke.clarke_certificate(arch, X, yt, w)
    assert cert.residual <= 1e-12
    assert cert.ncf == pytest.approx(1.5 * c ** L, rel=1e-12)
    res = clarke.polish(arch, X, yt, w, tol=TOL)
    assert res.certified and res.ncf == pytest.approx(1.5 * c ** L, rel=1e-12)
