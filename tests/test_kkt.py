"""KKT points of the constrained NCF (eq. 4, Lemma 20) found and certified by
:mod:`ncfkit.kkt`, checked against the closed forms of docs/theory.md §3 (relative error ≤ 1e-6):

- Example 1 (diagonal model, D = 2, X = I, y = [4, 1]): w* = ±(1, 0), 𝒩 = 8, Δ = 12;
- L-layer linear nets: max 𝒩 = ‖Xᵀỹ‖·L^{−L/2}, end-to-end vector W_L⋯W_1 ∥ Xᵀỹ;
- 2-layer square nets: max 𝒩 = (2/(3√3))·max(λ_max(M), −λ_min(M)), M = Σ ỹ_i x_i x_iᵀ,
  one active neuron with ‖w_j‖² = 2/3, v_j² = 1/3, w_j along the extreme eigenvector.

Certificates are recomputed independently (residual, Δ from a dense ``torch.func``
Hessian on an orthonormal basis of w⊥, Lemma 20, Lemma 17 balance) and the Lanczos path
is checked against the dense one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import hessian

import ncfkit.kkt as kkt_module
from ncfkit.activations import parse_activation
from ncfkit.io import load_data
from ncfkit.kkt import certify, find_kkt_points, normalized_ascent
from ncfkit.losses import make_loss
from ncfkit.models import MLP, Diagonal, random_direction
from utils import (
    assert_close,
    orthonormal_complement,
    ref_mlp_forward,
    ref_sigma,
    rel_error,
    seeded,
)

DTYPE = torch.float64
CLOSED_FORM_RTOL = 1e-6  # the bar
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data"
SQ = 2 / (3 * math.sqrt(3))  # max 𝒩 of a 2-layer square net per unit |eigenvalue| of M


def _data(n=30, d=5, seed=0, labels="real"):
    g = seeded(seed)
    X = torch.randn(n, d, generator=g, dtype=DTYPE)
    y = torch.randn(n, generator=g, dtype=DTYPE)
    if labels == "sign":
        y = torch.sign(y)
    return X, y


def _ytilde(y, loss="square", reduction="sum"):
    return make_loss(loss, reduction).ytilde(y)


def _example1():
    ds = load_data(f"{EXAMPLES}/example1.npz")
    X, y = ds.tensors(DTYPE)
    return Diagonal(2, 2), X, _ytilde(y)


# --------------------------------------------------------------------------- independent reference


def _ref_ncf(arch, X, ytilde):
    """𝒩(w) = ỹᵀH(X; w) written without ncfkit (nn.Linear layout, layers cut by hand)."""
    if isinstance(arch, Diagonal):
        return lambda w: ytilde @ (X @ w**arch.depth)
    sigma = ref_sigma(arch.act.p, arch.act.alpha)
    return lambda w: ytilde @ ref_mlp_forward(X, w, [arch.d, *arch.hidden, 1], sigma)


def _ref_certificate(arch, X, ytilde, w, L_h):
    """(𝒩, residual, Δ, Lemma-20 error) of a unit w, from a dense autograd Hessian."""
    f = _ref_ncf(arch, X, ytilde)
    wr = w.clone().requires_grad_(True)
    value = f(wr)
    (grad,) = torch.autograd.grad(value, wr)
    value = float(value.detach())
    H = hessian(f)(w).numpy()
    Q = orthonormal_complement(w.numpy())
    top = np.linalg.eigvalsh(Q.T @ ((H + H.T) / 2) @ Q)[-1]
    residual = float((grad - L_h * value * w).norm() / grad.norm())
    target = L_h * (L_h - 1) * value
    eig_error = float(np.linalg.norm(H @ w.numpy() - target * w.numpy()) / abs(target))
    return value, residual, L_h * value - top, eig_error


def _ref_balance(arch, w):
    """Lemma 17: max_j |‖W_l[j,:]‖² − p‖W_{l+1}[:,j]‖²| over hidden neurons (‖w‖ = 1)."""
    widths, start, Ws = [arch.d, *arch.hidden, 1], 0, []
    for l in range(len(widths) - 1):
        rows, cols = widths[l + 1], widths[l]
        Ws.append(w[start : start + rows * cols].reshape(rows, cols))
        start += rows * cols
    return max(float(((Ws[l] ** 2).sum(1) - arch.act.p * (Ws[l + 1] ** 2).sum(0)).abs().max())
               for l in range(len(Ws) - 1))


# --------------------------------------------------------------------------- Example 1


def test_example1_data_file_is_the_papers():
    _, X, ytilde = _example1()
    assert_close(X, torch.eye(2, dtype=DTYPE), rtol=0, what="X")
    assert_close(ytilde, torch.tensor([8.0, 2.0], dtype=DTYPE), rtol=0, what="ỹ = 2y")


def test_example1_closed_form_and_merging():
    """w* = ±(1, 0), 𝒩 = 8, Δ = 12; ±w* (the symmetry w → −w of w²) merge into one point
    reached by every restart."""
    arch, X, ytilde = _example1()
    R = 16
    result = find_kkt_points(arch, X, ytilde, restarts=R, seed=3)
    assert result.converged == R and result.homogeneity == 2 and result.num_params == 2
    assert len(result.points) == 1
    p = result.points[0]
    c = p.cert
    assert rel_error(c.ncf, 8.0) <= CLOSED_FORM_RTOL
    assert rel_error(c.delta, 12.0) <= CLOSED_FORM_RTOL
    assert rel_error(c.lam, 8.0) <= CLOSED_FORM_RTOL  # λ* = L_h 𝒩 / 2
    assert_close(c.w.abs(), torch.tensor([1.0, 0.0], dtype=DTYPE), rtol=0, atol=1e-6, what="|w*|")
    assert (c.kind, c.second_order, c.hessian_method) == ("positive", True, "dense")
    assert (p.count, p.basin_fraction, p.restarts) == (R, 1.0, tuple(range(R)))
    # The merge is not trivial: both signs of w*_1 were reached.
    u0 = random_direction(2, seeded(3), (R,), dtype=DTYPE)
    signs = torch.sign(normalized_ascent(arch, X, ytilde, u0).u[:, 0])
    assert set(signs.tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize(
    ("ytilde", "w", "ncf", "delta", "kind", "second_order"),
    [
        # 𝒩 = 8w1² + 2w2², ∇²𝒩 = diag(16, 4): at (0, 1) Δ = 2·2 − 16 = −12 (a saddle).
        ([8.0, 2.0], [0.0, 1.0], 2.0, -12.0, "positive", False),
        # 𝒩 = −8w1² − 2w2²: the maximum (0, 1) has 𝒩 = −2, Δ = −4 + 16 = 12.
        ([-8.0, -2.0], [0.0, 1.0], -2.0, 12.0, "negative", True),
        # 𝒩 = 8w1²: at (0, 1) 𝒩 = 0, Δ = 0 − 16.
        ([8.0, 0.0], [0.0, 1.0], 0.0, -16.0, "zero", False),
    ],
    ids=["saddle", "negative-max", "zero"],
)
def test_certify_closed_form_points_of_example1(ytilde, w, ncf, delta, kind, second_order):
    arch, X = Diagonal(2, 2), torch.eye(2, dtype=DTYPE)
    c = certify(arch, X, torch.tensor(ytilde, dtype=DTYPE), torch.tensor(w, dtype=DTYPE))
    assert abs(c.ncf - ncf) <= CLOSED_FORM_RTOL * max(abs(ncf), 1)
    assert abs(c.delta - delta) <= CLOSED_FORM_RTOL * abs(delta)
    assert (c.kind, c.second_order) == (kind, second_order)
    assert c.residual <= 1e-12


def test_certify_reports_a_non_kkt_point():
    arch, X, ytilde = _example1()
    c = certify(arch, X, ytilde, torch.tensor([1.0, 1.0], dtype=DTYPE))  # normalised inside
    assert_close(c.w.norm(), 1.0, rtol=1e-15, what="‖w‖")
    assert rel_error(c.ncf, 5.0) <= 1e-12  # (8 + 2)/2
    assert c.residual > 0.1  # ∇𝒩 = (8√2, 2√2) is not parallel to w


# --------------------------------------------------------------------------- linear nets


@pytest.mark.parametrize(
    ("hidden", "loss", "reduction"),
    [((4,), "square", "sum"), ((4, 3), "square", "sum"), ((3, 3, 2), "square", "sum"),
     ((4,), "square", "mean"), ((4,), "logistic", "sum"), ((4, 3), "logistic", "sum")],
    ids=["L2", "L3", "L4", "L2-mean", "L2-logistic", "L3-logistic"],
)
def test_linear_net_closed_form(hidden, loss, reduction):
    X, y = _data(seed=1, labels="sign" if loss == "logistic" else "real")
    ytilde = _ytilde(y, loss, reduction)
    arch = MLP(5, hidden, parse_activation("linear"))
    L = arch.depth
    result = find_kkt_points(arch, X, ytilde, restarts=8, seed=0)
    assert result.converged == 8 and not result.stalled
    b = X.T @ ytilde
    top = result.points[0].cert
    assert rel_error(top.ncf, float(b.norm()) * L ** (-L / 2)) <= CLOSED_FORM_RTOL
    # End-to-end vector β = W_L⋯W_1 (1 × d) of the maximiser: L^{−L/2} b/‖b‖.
    Ws = arch.split(top.w)
    beta = Ws[0]
    for W in Ws[1:]:
        beta = W @ beta
    assert rel_error(beta[0], L ** (-L / 2) * b / b.norm()) <= CLOSED_FORM_RTOL
    assert top.second_order and top.kind == "positive"
    assert top.balance_error <= 1e-6 and top.eig_error <= 1e-6


# --------------------------------------------------------------------------- 2-layer square


def _check_square_point(arch, X, ytilde, cert):
    """The point is a one-neuron KKT point along an eigenvector of M with ‖w_j‖² = 2/3,
    v_j² = 1/3 and 𝒩 = (2/(3√3))|λ|; return the index of the eigenvalue λ (ascending)."""
    M = (X.T * ytilde) @ X
    lam, vecs = torch.linalg.eigh(M)
    assert cert.active_per_layer == (1,)
    (j,) = cert.active_neurons[0]
    W1, W2 = arch.split(cert.w)
    w_j, v_j = W1[j], float(W2[0, j])
    assert rel_error((w_j**2).sum(), 2 / 3) <= CLOSED_FORM_RTOL
    assert rel_error(v_j**2, 1 / 3) <= CLOSED_FORM_RTOL
    cos = (vecs.T @ w_j).abs() / w_j.norm()
    i = int(cos.argmax())
    assert float(cos[i]) >= 1 - 1e-9, "w_j is not along an eigenvector of M"
    assert math.copysign(1, v_j) == math.copysign(1, float(lam[i]))
    assert rel_error(cert.ncf, SQ * abs(float(lam[i]))) <= CLOSED_FORM_RTOL
    return i


@pytest.mark.parametrize(
    ("loss", "source"),
    [("square", "random"), ("logistic", "random"), ("logistic", "digits01")],
    ids=["square-random", "logistic-random", "logistic-digits01"],
)
def test_two_layer_square_closed_form(loss, source):
    if source == "digits01":
        X, y = load_data(f"{EXAMPLES}/digits01.npz").tensors(DTYPE)
        hidden = (3,)
    else:
        X, y = _data(seed=2, labels="sign" if loss == "logistic" else "real")
        hidden = (6,)
    ytilde = _ytilde(y, loss)
    arch = MLP(X.shape[1], hidden, parse_activation("square"))
    result = find_kkt_points(arch, X, ytilde, restarts=8, seed=0)
    assert result.converged == 8
    lam = torch.linalg.eigvalsh((X.T * ytilde) @ X)
    expected = SQ * max(float(lam[-1]), -float(lam[0]))
    top = result.points[0].cert
    assert rel_error(top.ncf, expected) <= CLOSED_FORM_RTOL
    assert _check_square_point(arch, X, ytilde, top) in (0, X.shape[1] - 1)  # extreme λ
    for p in result.points[1:]:  # local maxima elsewhere are one-neuron points too
        _check_square_point(arch, X, ytilde, p.cert)


def test_square_two_local_maxima_stay_apart_and_merge_permutations():
    """X = I, ỹ = (5, −4, 1, .5, −.2): M = diag(ỹ), local maxima on λ = 5 (v > 0) and
    λ = −4 (v < 0) with 𝒩 = (2/(3√3))·5 and ·4. Restarts that pick different hidden
    neurons (permutations) or signs of w_j merge; the two values stay two points."""
    X = torch.eye(5, dtype=DTYPE)
    ytilde = torch.tensor([5.0, -4.0, 1.0, 0.5, -0.2], dtype=DTYPE)
    arch = MLP(5, (3,), parse_activation("square"))
    R = 16
    result = find_kkt_points(arch, X, ytilde, restarts=R, seed=0)
    assert result.converged == R
    assert [round(p.cert.ncf / SQ, 9) for p in result.points] == [5.0, 4.0]
    for p in result.points:
        _check_square_point(arch, X, ytilde, p.cert)
        assert p.cert.second_order
    assert sum(p.count for p in result.points) == R
    assert sorted(r for p in result.points for r in p.restarts) == list(range(R))
    assert_close([p.basin_fraction for p in result.points], [p.count / R for p in result.points],
                 rtol=1e-15, what="basin_fraction")
    # Non-trivial merging: the top point's restarts used different neurons or signs.
    u0 = random_direction(arch.num_params, seeded(0), (R,), dtype=DTYPE)
    asc = normalized_ascent(arch, X, ytilde, u0)
    top = result.points[0].restarts
    patterns = {tuple(torch.sign(arch.split(asc.u[r])[0][:, 0]).round(decimals=0).tolist()) +
                (int(arch.split(asc.u[r])[1].abs().argmax()),) for r in top}
    assert len(patterns) > 1


# --------------------------------------------------------------------------- certificates


CERT_CASES = {
    "square-L2": ((6,), "square"),
    "square-L3": ((4, 3), "square"),
    "poly3-L2": ((4,), "poly:3"),
    "linear-L3": ((4, 3), "linear"),
}


@pytest.mark.parametrize("case", CERT_CASES.values(), ids=CERT_CASES.keys())
def test_certificates_match_an_independent_computation(case):
    """At every point found: 𝒩, the residual, Δ (dense Hessian on a basis of w⊥) and the
    Lemma-20 error agree with a from-scratch autograd computation, and Lemma 20 and
    Lemma 17 hold to 1e-6."""
    hidden, act = case
    X, y = _data(n=20, d=4, seed=4)
    ytilde = _ytilde(y)
    arch = MLP(4, hidden, parse_activation(act))
    result = find_kkt_points(arch, X, ytilde, restarts=6, seed=1)
    assert result.converged == 6
    for p in result.points:
        c = p.cert
        val, res, delta, eig_err = _ref_certificate(arch, X, ytilde, c.w, arch.homogeneity)
        scale = arch.homogeneity * abs(val)
        assert rel_error(c.ncf, val) <= 1e-12
        assert res <= 1e-8 and c.residual <= 1e-8
        assert abs(c.delta - delta) <= 1e-8 * scale, (c.delta, delta)
        assert eig_err <= 1e-6 and c.eig_error <= 1e-6
        assert abs(c.eig_error - eig_err) <= 1e-8
        assert _ref_balance(arch, c.w) <= 1e-6 and c.balance_error <= 1e-6
        assert c.second_order == (delta >= -1e-6 * scale)


CASES_LANCZOS = {
    "square-L2": ((6,), "square", "random"),
    "square-L3": ((4, 3), "square", "random"),
    "linear-L2": ((4,), "linear", "random"),
    "example1-negative": (None, None, "negative"),
}


@pytest.mark.parametrize("case", CASES_LANCZOS.values(), ids=CASES_LANCZOS.keys())
def test_delta_dense_equals_lanczos(case, monkeypatch):
    hidden, act, kind = case
    if kind == "negative":
        # Diagonal model with every ỹ_i < 0: the maximum e_5 has 𝒩 = −1 and a restricted
        # Hessian whose eigenvalues are all negative (Δ = 2·(−1) − 2·(−4) = 6).
        arch, X = Diagonal(5, 2), torch.eye(5, dtype=DTYPE)
        ytilde = torch.tensor([-8.0, -6.0, -5.0, -4.0, -1.0], dtype=DTYPE)
        points = [torch.tensor([0.0, 0, 0, 0, 1], dtype=DTYPE)]
    else:
        X, y = _data(n=20, d=4, seed=5)
        ytilde = _ytilde(y)
        arch = MLP(4, hidden, parse_activation(act))
        points = [p.cert.w for p in find_kkt_points(arch, X, ytilde, restarts=4, seed=2).points]
    for w in points:
        dense = certify(arch, X, ytilde, w)
        monkeypatch.setattr(kkt_module, "DENSE_MAX", 0)
        lanczos = certify(arch, X, ytilde, w)
        monkeypatch.setattr(kkt_module, "DENSE_MAX", 3000)
        assert (dense.hessian_method, lanczos.hessian_method) == ("dense", "lanczos")
        scale = arch.homogeneity * abs(dense.ncf)
        assert abs(dense.delta - lanczos.delta) <= 1e-6 * scale, (dense.delta, lanczos.delta)
        assert_close(lanczos.top_eigs, dense.top_eigs, rtol=1e-6, atol=1e-6 * scale,
                     what="top eigs")
        assert dense.second_order == lanczos.second_order
    if kind == "negative":
        assert rel_error(dense.delta, 6.0) <= CLOSED_FORM_RTOL and dense.kind == "negative"


# --------------------------------------------------------------------------- the ascent


def test_normalized_ascent_reaches_kkt_points_and_never_descends():
    X, y = _data(seed=6)
    ytilde = _ytilde(y)
    arch = MLP(5, (6,), parse_activation("square"))
    u0 = random_direction(arch.num_params, seeded(7), (5,), dtype=DTYPE)
    f = _ref_ncf(arch, X, ytilde)
    asc = normalized_ascent(arch, X, ytilde, 3.0 * u0, tol=1e-9)  # starts need not be unit
    assert bool(asc.converged.all()) and not bool(asc.stalled.any())
    assert_close(asc.u.norm(dim=-1), torch.ones(5, dtype=DTYPE), rtol=1e-13, what="‖u‖")
    for r in range(5):
        u = asc.u[r]
        ur = u.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(ur), ur)
        tangent = grad - (u @ grad) * u
        assert float(tangent.norm() / grad.norm()) <= 1e-9 * 1.0001
        assert rel_error(asc.ncf[r], f(u)) <= 1e-12
        assert float(asc.ncf[r]) >= float(f(u0[r]))
    short = normalized_ascent(arch, X, ytilde, u0, max_steps=2)
    assert not bool(short.converged.any()) and bool((short.steps == 2).all())


def test_find_kkt_points_is_seeded():
    X, y = _data(n=12, d=3, seed=8)
    arch = MLP(3, (4,), parse_activation("square"))
    a = find_kkt_points(arch, X, _ytilde(y), restarts=4, seed=5)
    b = find_kkt_points(arch, X, _ytilde(y), restarts=4, seed=5)
    assert [p.restarts for p in a.points] == [p.restarts for p in b.points]
    assert all(torch.equal(p.cert.w, q.cert.w) for p, q in zip(a.points, b.points, strict=True))


@pytest.mark.parametrize("hidden", [(1, 1), (1, 1, 1)])
def test_relu_starts_with_dead_nets_do_not_blow_up_the_others(hidden):
    """Most random starts of a narrow deep ReLU net are dead (every neuron off: 𝒩 = 0,
    ∇𝒩 = 0). The ascent's step scale is the median gradient norm over the live starts;
    over all starts it was 0 and the first step of a live start overflowed (a NaN
    point). Every start now ends at a finite certified point."""
    from ncfkit.data import teacher_dataset
    from ncfkit.models import make_architecture

    X, y = teacher_dataset(n=20, d=3, hidden="2", act="relu", seed=1)
    arch = make_architecture("mlp", 3, ",".join(map(str, hidden)), "relu")
    res = find_kkt_points(arch, torch.as_tensor(X), torch.as_tensor(y), restarts=6, seed=0, max_steps=4000)
    assert sum(p.count for p in res.points) == 6
    for p in res.points:
        assert p.converged and p.reason is None
        assert math.isfinite(p.cert.ncf) and p.cert.residual <= 1e-9
    assert max(p.cert.ncf for p in res.points) > 0.1  # a live point was found
