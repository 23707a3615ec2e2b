"""The NCF 𝒩(u) = ỹᵀH(X; u) (eq. 3), its gradient and Hessian-vector products
(:mod:`ncfkit.ncf`), and the losses' ỹ = −ℓ'(0, y) (:mod:`ncfkit.losses`, docs/theory.md §1).

References: an independent autograd implementation of 𝒩 (a plain ``F.linear`` loop,
differentiated by ``torch.autograd`` and ``torch.func.hessian``), central finite
differences, Euler's identity for homogeneous functions, and the loss formulas of docs/theory.md §1
written out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import hessian

from ncfkit.activations import parse_activation
from ncfkit.errors import InputError
from ncfkit.losses import make_loss
from ncfkit.models import MLP, Diagonal
from ncfkit.ncf import (
    loss_hessian,
    loss_hvp,
    loss_value,
    loss_value_and_grad,
    ncf,
    ncf_grad,
    ncf_hessian,
    ncf_hvp,
    ncf_value_and_grad,
)
from utils import assert_close, fd_grad, fd_hvp, ref_mlp_forward, ref_sigma, seeded

DTYPE = torch.float64
P_ALPHA = {"linear": (1, 1.0), "relu": (1, 0.0), "leaky:0.1": (1, 0.1), "square": (2, -1.0),
           "sqrelu": (2, 0.0), "poly:3": (3, 0.0), "poly:2:0.5": (2, 0.5)}
HIDDEN = {"L2": (5,), "L3": (4, 3), "L4": (3, 4, 2)}
#: Smooth enough for second derivatives everywhere (relu/leaky have a zero Hessian a.e.
#: and kinks where finite differences are meaningless; they are covered by first order).
SMOOTH = ["linear", "square", "sqrelu", "poly:3", "poly:2:0.5"]
D, N = 4, 10


def ref_forward(X, w, hidden, act):
    """H(X; w) for one w (k,), layers cut from w by hand (nn.Linear layout)."""
    return ref_mlp_forward(X, w, [X.shape[1], *hidden, 1], ref_sigma(*P_ALPHA[act]))


def _setup(act, hidden, seed=0):
    g = seeded(seed)
    arch = MLP(D, hidden, parse_activation(act))
    X = torch.randn(N, D, generator=g, dtype=DTYPE)
    ytilde = torch.randn(N, generator=g, dtype=DTYPE)
    u = torch.randn(arch.num_params, generator=g, dtype=DTYPE)
    return arch, X, ytilde, u / u.norm()


def _ref_ncf(X, ytilde, hidden, act):
    return lambda w: ytilde @ ref_forward(X, w, hidden, act)


# --------------------------------------------------------------------------- 𝒩 and ∇𝒩


@pytest.mark.parametrize("hidden", HIDDEN.values(), ids=HIDDEN.keys())
@pytest.mark.parametrize("act", list(P_ALPHA))
def test_ncf_and_gradient_match_autograd_and_fd(act, hidden):
    arch, X, ytilde, u = _setup(act, hidden)
    f = _ref_ncf(X, ytilde, hidden, act)
    ur = u.clone().requires_grad_(True)
    value = f(ur)
    (expected,) = torch.autograd.grad(value, ur)
    assert_close(ncf(arch, X, ytilde, u), value.detach(), rtol=1e-12, what="𝒩(u)")
    assert_close(ncf_grad(arch, X, ytilde, u), expected, rtol=1e-10, atol=1e-13,
                 what="∇𝒩 vs autograd")
    fd = fd_grad(f, u)
    scale = float(fd.abs().max())
    assert_close(ncf_grad(arch, X, ytilde, u), fd, rtol=1e-6, atol=1e-8 * scale, what="∇𝒩 vs FD")
    v2, g2 = ncf_value_and_grad(arch, X, ytilde, u)
    assert_close(v2, value.detach(), rtol=1e-12, what="𝒩 from value_and_grad")
    assert_close(g2, expected, rtol=1e-10, atol=1e-13, what="∇𝒩 from value_and_grad")


def test_ncf_gradient_is_batched():
    arch, X, ytilde, _ = _setup("square", (4, 3))
    U = torch.randn(3, 2, arch.num_params, generator=seeded(1), dtype=DTYPE)
    val, grad = ncf_value_and_grad(arch, X, ytilde, U)
    assert val.shape == (3, 2) and grad.shape == U.shape
    for i in range(3):
        for j in range(2):
            assert_close(val[i, j], ncf(arch, X, ytilde, U[i, j]), rtol=1e-12, what="batched 𝒩")
            assert_close(grad[i, j], ncf_grad(arch, X, ytilde, U[i, j]), rtol=1e-12, atol=1e-14,
                         what="batched ∇𝒩")


# --------------------------------------------------------------------------- ∇²𝒩


@pytest.mark.parametrize("hidden", HIDDEN.values(), ids=HIDDEN.keys())
@pytest.mark.parametrize("act", SMOOTH)
def test_hvp_and_hessian_match_torch_func_hessian(act, hidden):
    arch, X, ytilde, u = _setup(act, hidden, seed=2)
    H_ref = hessian(_ref_ncf(X, ytilde, hidden, act))(u)
    scale = float(H_ref.abs().max())
    assert scale > 0
    H = ncf_hessian(arch, X, ytilde, u)
    assert_close(H, H_ref, rtol=1e-9, atol=1e-12 * scale, what=f"∇²𝒩 {act} {hidden}")
    v = torch.randn(arch.num_params, generator=seeded(3), dtype=DTYPE)
    assert_close(ncf_hvp(arch, X, ytilde, u, v), H_ref @ v, rtol=1e-9,
                 atol=1e-12 * scale * v.norm(), what="∇²𝒩 v vs dense")


@pytest.mark.parametrize("act", SMOOTH)
def test_hvp_matches_finite_differences_of_the_gradient(act):
    arch, X, ytilde, u = _setup(act, (4, 3), seed=4)
    v = torch.randn(arch.num_params, generator=seeded(5), dtype=DTYPE)
    fd = fd_hvp(lambda x: ncf_grad(arch, X, ytilde, x), u, v)
    scale = float(fd.abs().max())
    assert_close(ncf_hvp(arch, X, ytilde, u, v), fd, rtol=1e-6, atol=1e-8 * scale, what="HVP vs FD")


def test_hvp_is_batched():
    arch, X, ytilde, _ = _setup("square", (5,))
    U = torch.randn(3, arch.num_params, generator=seeded(6), dtype=DTYPE)
    V = torch.randn(3, arch.num_params, generator=seeded(7), dtype=DTYPE)
    out = ncf_hvp(arch, X, ytilde, U, V)
    for r in range(3):
        assert_close(out[r], ncf_hessian(arch, X, ytilde, U[r]) @ V[r], rtol=1e-10, atol=1e-12,
                     what=f"batched HVP row {r}")


# --------------------------------------------------------------------------- Euler


@pytest.mark.parametrize("depth", [2, 3, 4], ids=lambda L: f"L{L}")
@pytest.mark.parametrize("act", list(P_ALPHA))
def test_euler_identity(act, depth):
    """uᵀ∇𝒩(u) = L_h 𝒩(u); for smooth σ also ∇²𝒩(u) u = (L_h − 1)∇𝒩(u) (the Lemma 20
    eigenvector relation at a KKT point)."""
    hidden = {2: (5,), 3: (4, 3), 4: (3, 4, 2)}[depth]
    arch, X, ytilde, u = _setup(act, hidden, seed=8)
    p = P_ALPHA[act][0]
    L_h = sum(p**l for l in range(depth))
    val, grad = ncf_value_and_grad(arch, X, ytilde, u)
    assert abs(float(val)) > 1e-8
    assert_close(u @ grad, L_h * val, rtol=1e-10, what=f"uᵀ∇𝒩 = {L_h}𝒩")
    if act in SMOOTH:
        assert_close(ncf_hvp(arch, X, ytilde, u, u), (L_h - 1) * grad, rtol=1e-9,
                     atol=1e-11 * float(grad.abs().max()), what="∇²𝒩 u = (L_h−1)∇𝒩")


@pytest.mark.parametrize("D_", [2, 3], ids=lambda D_: f"D{D_}")
def test_diagonal_model_ncf_derivatives(D_):
    arch = Diagonal(3, D_)
    g = seeded(9)
    X = torch.randn(N, 3, generator=g, dtype=DTYPE)
    ytilde = torch.randn(N, generator=g, dtype=DTYPE)
    u = torch.randn(3, generator=g, dtype=DTYPE)
    b = ytilde @ X  # 𝒩(u) = Σ_k b_k u_k^D
    assert_close(ncf(arch, X, ytilde, u), (b * u**D_).sum(), rtol=1e-12, what="𝒩 diag")
    assert_close(ncf_grad(arch, X, ytilde, u), D_ * b * u ** (D_ - 1), rtol=1e-12, what="∇𝒩 diag")
    assert_close(ncf_hessian(arch, X, ytilde, u), torch.diag(D_ * (D_ - 1) * b * u ** (D_ - 2)),
                 rtol=1e-12, atol=1e-14, what="∇²𝒩 diag")
    assert_close(u @ ncf_grad(arch, X, ytilde, u), D_ * ncf(arch, X, ytilde, u), rtol=1e-12,
                 what="Euler")


# --------------------------------------------------------------------------- losses


def _ytilde_by_autograd(ell, y, scale=1.0):
    """−∂/∂p Σ_i ℓ(p_i, y_i) at p = 0, from the formula ``ell`` written by hand."""
    p = torch.zeros_like(y, requires_grad=True)
    (g,) = torch.autograd.grad(scale * ell(p, y).sum(), p)
    return -g


LOSS_FORMULAS = {
    "square": lambda p, y: (p - y) ** 2,
    "logistic": lambda p, y: torch.log(1 + torch.exp(-p * y)),
}


@pytest.mark.parametrize(
    ("name", "reduction", "closed_form"),
    [("square", "sum", lambda y: 2 * y), ("square", "mean", lambda y: 2 * y / y.numel()),
     ("logistic", "sum", lambda y: y / 2), ("logistic", "mean", lambda y: y / (2 * y.numel()))],
    ids=["square-sum", "square-mean", "logistic-sum", "logistic-mean"],
)
def test_ytilde(name, reduction, closed_form):
    y = (torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0], dtype=DTYPE) if name == "logistic"
         else torch.tensor([0.5, -2.0, 3.25, 0.0, 1.0], dtype=DTYPE))
    loss = make_loss(name, reduction)
    scale = 1 / y.numel() if reduction == "mean" else 1.0
    assert_close(loss.ytilde(y), closed_form(y), rtol=1e-15, what=f"ỹ {name}/{reduction}")
    assert_close(loss.ytilde(y), _ytilde_by_autograd(LOSS_FORMULAS[name], y, scale), rtol=1e-14,
                 what="ỹ vs autograd")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("name", ["square", "logistic"])
def test_loss_value_and_derivative(name, reduction):
    g = seeded(10)
    y = torch.randn(2, 7, generator=g, dtype=DTYPE)
    if name == "logistic":
        y = torch.sign(y)
    pred = 3 * torch.randn(2, 7, generator=g, dtype=DTYPE)
    loss = make_loss(name, reduction)
    scale = 1 / 7 if reduction == "mean" else 1.0
    pr = pred.clone().requires_grad_(True)
    value = scale * LOSS_FORMULAS[name](pr, y).sum(-1)
    (grad,) = torch.autograd.grad(value.sum(), pr)
    assert_close(loss.value(pred, y), value.detach(), rtol=1e-13, what="𝓛")
    assert_close(loss.dvalue(pred, y), grad, rtol=1e-12, atol=1e-15, what="∂𝓛/∂pred")


@pytest.mark.parametrize("name", ["square", "logistic"])
def test_training_loss_gradient_and_hessian(name):
    hidden, act = (4, 3), "square"
    arch, X, _, w = _setup(act, hidden, seed=11)
    y = torch.randn(N, generator=seeded(12), dtype=DTYPE)
    if name == "logistic":
        y = torch.sign(y)
    loss = make_loss(name, "mean")

    def ref(wv):
        return LOSS_FORMULAS[name](ref_forward(X, wv, hidden, act), y).sum() / N

    wr = w.clone().requires_grad_(True)
    value = ref(wr)
    (grad,) = torch.autograd.grad(value, wr)
    v, gv = loss_value_and_grad(arch, X, y, loss, w)
    assert_close(loss_value(arch, X, y, loss, w), value.detach(), rtol=1e-12, what="𝓛(w)")
    assert_close(v, value.detach(), rtol=1e-12, what="𝓛(w) from value_and_grad")
    assert_close(gv, grad, rtol=1e-10, atol=1e-13, what="∇𝓛")
    H = hessian(ref)(w)
    scale = float(H.abs().max())
    assert_close(loss_hessian(arch, X, y, loss, w), H, rtol=1e-9, atol=1e-12 * scale, what="∇²𝓛")
    b = torch.randn(arch.num_params, generator=seeded(13), dtype=DTYPE)
    assert_close(loss_hvp(arch, X, y, loss, w, b), H @ b, rtol=1e-9, atol=1e-12 * scale * b.norm(),
                 what="∇²𝓛 b")


def test_ncf_is_the_first_order_loss_at_the_origin():
    """𝓛(εu) = 𝓛(0) − ε^{L_h}𝒩(u) + O(ε^{2L_h}) (eq. 3): the NCF is what the loss sees
    near the origin, with ỹ from the loss."""
    hidden, act = (5,), "square"
    arch, X, _, u = _setup(act, hidden, seed=14)
    y = torch.randn(N, generator=seeded(15), dtype=DTYPE)
    loss = make_loss("square", "sum")
    eps = 1e-3
    L_h = 3
    drop = loss_value(arch, X, y, loss, torch.zeros_like(u)) - loss_value(arch, X, y, loss, eps * u)
    expected = eps**L_h * ncf(arch, X, loss.ytilde(y), u)
    assert_close(drop, expected, rtol=1e-5, what="𝓛(0) − 𝓛(εu) vs ε^{L_h}𝒩(u)")
    assert math.isfinite(float(drop))


@pytest.mark.parametrize(
    ("args", "match"),
    [(("hinge",), "unknown loss 'hinge'"), (("square", "max"), "unknown reduction 'max'")],
    ids=["loss", "reduction"],
)
def test_make_loss_errors(args, match):
    with pytest.raises(InputError, match=match):
        make_loss(*args)


def test_logistic_rejects_labels_other_than_plus_minus_one():
    loss = make_loss("logistic")
    loss.check_labels(torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(InputError, match=r"labels in \{-1, \+1\}; found 0"):
        loss.check_labels(torch.tensor([1.0, 0.0, -1.0]))
    make_loss("square").check_labels(torch.tensor([0.3, 7.0]))  # any real label


# --------------------------------------------------------------------------- closed-form R-operator


ALL_ACTS = ["linear", "relu", "leaky:0.1", "square", "sqrelu", "poly:3", "poly:3:0.2",
            "poly:2.5", "tanh", "gelu"]


@pytest.mark.parametrize("hidden", HIDDEN.values(), ids=HIDDEN.keys())
@pytest.mark.parametrize("act", ALL_ACTS)
def test_closed_form_hessians_match_autograd_of_the_gradient(act, hidden):
    """``arch.hvp`` (forward-over-reverse written out) against reverse-mode autograd of the
    closed-form gradient, for 𝒩 and both losses, away from kinks (random points)."""
    from ncfkit.ncf import _loss_grad, dense_jacobian

    arch, X, ytilde, u = _setup(act, hidden, seed=21)
    H = ncf_hessian(arch, X, ytilde, u)
    ref = dense_jacobian(lambda x: ncf_grad(arch, X, ytilde, x), u)
    assert_close(H, ref, rtol=1e-11, atol=1e-13 * max(float(ref.abs().max()), 1.0), what="∇²𝒩")
    y = torch.randn(N, generator=seeded(22), dtype=DTYPE)
    for name, labels in (("square", y), ("logistic", torch.sign(y))):
        for reduction in ("sum", "mean"):
            loss = make_loss(name, reduction)
            H = loss_hessian(arch, X, labels, loss, u)
            ref = dense_jacobian(lambda x, labels=labels, loss=loss: _loss_grad(arch, X, labels, loss, x), u)
            assert_close(H, ref, rtol=1e-11, atol=1e-13 * max(float(ref.abs().max()), 1.0),
                         what=f"∇²𝓛 {name} {reduction}")


@pytest.mark.parametrize("D_", [1, 2, 3, 4])
def test_closed_form_hessians_of_the_diagonal_model(D_):
    from ncfkit.ncf import _loss_grad, dense_jacobian

    g = seeded(23)
    arch = Diagonal(D, D_)
    X = torch.randn(N, D, generator=g, dtype=DTYPE)
    y = torch.randn(N, generator=g, dtype=DTYPE)
    w = torch.randn(D, generator=g, dtype=DTYPE)
    ref = dense_jacobian(lambda x: ncf_grad(arch, X, y, x), w)
    assert_close(ncf_hessian(arch, X, y, w), ref, rtol=1e-12, atol=1e-14, what="∇²𝒩 diag")
    loss = make_loss("square", "mean")
    ref = dense_jacobian(lambda x: _loss_grad(arch, X, y, loss, x), w)
    assert_close(loss_hessian(arch, X, y, loss, w), ref, rtol=1e-12, atol=1e-14, what="∇²𝓛 diag")
