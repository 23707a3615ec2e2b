"""Networks on one flat parameter vector (:mod:`ncfkit.models`) and the activation grammar
(:mod:`ncfkit.activations`).

References, all independent of the code under test:
- forward: a plain ``F.linear`` loop over weight matrices cut from ``w`` by hand, with
  σ(x) = max(x, αx)^p written as (((1+α)x + |1−α||x|)/2)^p from a hand-written (p, α)
  table;
- backward (``vjp``, ``forward_and_vjp``): ``torch.autograd`` through that loop, and
  central finite differences of the forward;
- homogeneity: H(cw) = c^{L_h} H(w) with L_h = 1 + p + … + p^{L−1} from the same table.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ncfkit.activations import PRESETS, parse_activation
from ncfkit.errors import InputError
from ncfkit.models import (
    MLP,
    Diagonal,
    architecture_from_dict,
    make_architecture,
    parse_hidden,
    random_direction,
)
from utils import assert_close, fd_grad, ref_mlp_forward, seeded
from utils import ref_sigma as poly_sigma

DTYPE = torch.float64

#: (p, α) of every homogeneous activation under test, written out by hand.
P_ALPHA = {
    "linear": (1, 1.0), "relu": (1, 0.0), "leaky:0.1": (1, 0.1), "square": (2, -1.0),
    "sqrelu": (2, 0.0), "poly:3": (3, 0.0), "poly:2:0.5": (2, 0.5),
    "poly:2.5": (2.5, 0.0), "poly:1.5:-0.5": (1.5, -0.5),
}
#: The presets of the issue: every one must be homogeneous of the predicted order.
HOMOGENEOUS = ["linear", "relu", "leaky:0.1", "square", "sqrelu", "poly:3", "poly:2:0.5"]
ALL_ACTS = [*P_ALPHA, "tanh", "gelu"]
HIDDEN = {"L2": (5,), "L3": (4, 3), "L4": (3, 4, 2)}


def ref_sigma(name: str):
    if name == "tanh":
        return torch.tanh
    if name == "gelu":
        return F.gelu
    return poly_sigma(*P_ALPHA[name])


def ref_shapes(d, hidden):
    widths = [d, *hidden, 1]
    return [(widths[l + 1], widths[l]) for l in range(len(widths) - 1)]


def ref_forward(X, w, d, hidden, act):
    """H(X; w) for one w (k,) by the independent reference loop of tests/utils.py."""
    return ref_mlp_forward(X, w, [d, *hidden, 1], ref_sigma(act))


def _problem(d=4, hidden=(5,), n=9, seed=0, batch=()):
    g = seeded(seed)
    k = sum(a * b for a, b in ref_shapes(d, hidden))
    X = torch.randn(n, d, generator=g, dtype=DTYPE)
    w = torch.randn(*batch, k, generator=g, dtype=DTYPE) / math.sqrt(max(hidden))
    return X, w


def _expected_order(act, depth):
    p = P_ALPHA[act][0]
    return sum(p**l for l in range(depth))


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("hidden", HIDDEN.values(), ids=HIDDEN.keys())
@pytest.mark.parametrize("act", ALL_ACTS)
def test_forward_matches_plain_linear_loop(act, hidden):
    X, w = _problem(hidden=hidden, batch=(3,))
    arch = MLP(4, hidden, parse_activation(act))
    out = arch.forward(X, w)
    expected = torch.stack([ref_forward(X, wr, 4, hidden, act) for wr in w])
    assert_close(out, expected, rtol=1e-12, atol=1e-14, what=f"H(X; w) {act} {hidden}")


def test_forward_matches_torch_nn_sequential():
    # The layout convention itself: W_l are nn.Linear weights, concatenated in order.
    X, w = _problem(hidden=(4, 3))
    arch = MLP(4, (4, 3), parse_activation("relu"))
    layers = [torch.nn.Linear(a, b, bias=False, dtype=DTYPE) for b, a in ref_shapes(4, (4, 3))]
    start = 0
    with torch.no_grad():
        for lin in layers:
            lin.weight.copy_(w[start : start + lin.weight.numel()].view_as(lin.weight))
            start += lin.weight.numel()
    net = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2])
    with torch.no_grad():
        assert_close(arch.forward(X, w), net(X)[:, 0], rtol=1e-12, what="H vs nn.Sequential")


@pytest.mark.parametrize("act", [a for a in P_ALPHA if a != "linear"] + ["tanh", "gelu"])
def test_activation_derivative_matches_autograd(act):
    x = torch.linspace(-2.1, 2.3, 23, dtype=DTYPE)  # no point at the kink x = 0
    x.requires_grad_(True)
    (expected,) = torch.autograd.grad(ref_sigma(act)(x).sum(), x)
    sigma = parse_activation(act)
    assert_close(sigma(x.detach()), ref_sigma(act)(x.detach()), rtol=1e-13, what=f"σ {act}")
    assert_close(sigma.derivative(x.detach()), expected, rtol=1e-12, atol=1e-14, what=f"σ' {act}")


# --------------------------------------------------------------------------- backward


@pytest.mark.parametrize("hidden", HIDDEN.values(), ids=HIDDEN.keys())
@pytest.mark.parametrize("act", ALL_ACTS)
def test_vjp_matches_autograd(act, hidden):
    X, w = _problem(hidden=hidden, batch=(3,), seed=1)
    g = torch.randn(3, X.shape[0], generator=seeded(2), dtype=DTYPE)
    arch = MLP(4, hidden, parse_activation(act))
    wr = w.clone().requires_grad_(True)
    total = sum(g[r] @ ref_forward(X, wr[r], 4, hidden, act) for r in range(3))
    (expected,) = torch.autograd.grad(total, wr)
    assert_close(arch.vjp(X, w, g), expected, rtol=1e-10, atol=1e-13, what=f"vjp {act} {hidden}")


@pytest.mark.parametrize("hidden", HIDDEN.values(), ids=HIDDEN.keys())
@pytest.mark.parametrize("act", ["linear", "relu", "square", "poly:3", "poly:1.5:-0.5", "gelu"])
def test_vjp_matches_finite_differences(act, hidden):
    X, w = _problem(hidden=hidden, seed=3)
    g = torch.randn(X.shape[0], generator=seeded(4), dtype=DTYPE)
    arch = MLP(4, hidden, parse_activation(act))
    expected = fd_grad(lambda v: g @ arch.forward(X, v), w)
    scale = float(expected.abs().max())
    assert_close(arch.vjp(X, w, g), expected, rtol=1e-6, atol=1e-8 * scale, what=f"vjp vs FD {act}")


@pytest.mark.parametrize("act", ["relu", "square", "poly:2:0.5"])
def test_forward_and_vjp_passes_the_output_to_g(act):
    # g = H itself: the vjp is ∇ ½‖H‖², which needs g_of_out to receive the forward output.
    X, w = _problem(hidden=(4, 3), seed=5)
    arch = MLP(4, (4, 3), parse_activation(act))
    out, grad = arch.forward_and_vjp(X, w, lambda o: o)
    wr = w.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(0.5 * (ref_forward(X, wr, 4, (4, 3), act) ** 2).sum(), wr)
    assert_close(out, ref_forward(X, w, 4, (4, 3), act), rtol=1e-12, what="forward output")
    assert_close(grad, expected, rtol=1e-10, atol=1e-13, what="∇½‖H‖²")


# --------------------------------------------------------------------------- homogeneity


@pytest.mark.parametrize("depth", [2, 3, 4], ids=lambda L: f"L{L}")
@pytest.mark.parametrize("act", HOMOGENEOUS)
def test_homogeneity_order(act, depth):
    hidden = {2: (6,), 3: (6, 5), 4: (6, 5, 4)}[depth]
    arch = MLP(4, hidden, parse_activation(act))
    L_h = _expected_order(act, depth)
    assert arch.homogeneity == pytest.approx(L_h, abs=0)
    X, w = _problem(hidden=hidden, n=12, seed=6)
    base = arch.forward(X, w)
    # Zero outputs (dead ReLUs) would make the test vacuous.
    assert int((base != 0).sum()) >= 6
    for c in (0.5, 1.7):
        assert_close(arch.forward(X, c * w), c**L_h * base, rtol=1e-10, what=f"H({c}w), L_h={L_h}")


@pytest.mark.parametrize("act", ["tanh", "gelu"])
def test_non_homogeneous_activation_has_no_order(act):
    arch = MLP(3, (4,), parse_activation(act))
    assert arch.homogeneity is None
    X, w = _problem(d=3, hidden=(4,), seed=7)
    ratio = arch.forward(X, 2 * w) / arch.forward(X, w)
    assert not torch.allclose(ratio, torch.full_like(ratio, float(ratio[0])), rtol=1e-3)


@pytest.mark.parametrize("D", [1, 2, 3, 4], ids=lambda D: f"D{D}")
def test_diagonal_model(D):
    X, w = _problem(d=5, hidden=(1,), seed=8)  # hidden unused; only X
    w = torch.randn(2, 5, generator=seeded(9), dtype=DTYPE)
    arch = Diagonal(5, D)
    assert arch.num_params == 5 and arch.homogeneity == D
    expected = torch.stack([sum(wr[k] ** D * X[:, k] for k in range(5)) for wr in w])
    assert_close(arch.forward(X, w), expected, rtol=1e-12, what="Σ w_k^D x_k")
    assert_close(arch.forward(X, 1.3 * w), 1.3**D * expected, rtol=1e-12, what="H(cw)")
    g = torch.randn(2, X.shape[0], generator=seeded(10), dtype=DTYPE)
    wr = w.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        sum(g[r] @ sum(wr[r, k] ** D * X[:, k] for k in range(5)) for r in range(2)), wr)
    assert_close(arch.vjp(X, w, g), grad, rtol=1e-12, atol=1e-14, what="diag vjp")


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("hidden", HIDDEN.values(), ids=HIDDEN.keys())
def test_split_join_round_trip(hidden):
    arch = MLP(4, hidden, PRESETS["relu"])
    shapes = ref_shapes(4, hidden)
    assert arch.shapes == shapes
    assert arch.num_params == sum(a * b for a, b in shapes)
    w = torch.arange(2 * 3 * arch.num_params, dtype=DTYPE).reshape(2, 3, -1)
    Ws = arch.split(w)
    start = 0
    for W, (rows, cols) in zip(Ws, shapes, strict=True):
        assert W.shape == (2, 3, rows, cols)
        assert torch.equal(W, w[..., start : start + rows * cols].reshape(2, 3, rows, cols))
        start += rows * cols
    assert torch.equal(arch.join(Ws), w)
    Ws[0][..., 0, 0] = -1.0  # views: writing through W_1 writes w
    assert float(w[0, 0, 0]) == -1.0


def test_to_dict_round_trip():
    for arch in (MLP(4, (3, 2), parse_activation("poly:2:0.5")), Diagonal(3, 4)):
        assert architecture_from_dict(arch.to_dict()) == arch
    with pytest.raises(InputError, match="unknown architecture record"):
        architecture_from_dict({"arch": "cnn"})


def test_random_direction_is_unit_and_seeded():
    u = random_direction(7, seeded(0), (5,), dtype=DTYPE)
    assert u.shape == (5, 7)
    assert_close(u.norm(dim=-1), torch.ones(5, dtype=DTYPE), rtol=1e-14, what="‖u‖")
    assert torch.equal(u, random_direction(7, seeded(0), (5,), dtype=DTYPE))


# --------------------------------------------------------------------------- grammar


@pytest.mark.parametrize("spec", list(P_ALPHA))
def test_parse_activation_grammar(spec):
    a = parse_activation(spec)
    assert (a.p, a.alpha) == P_ALPHA[spec]
    assert a.homogeneous


def test_parse_activation_normalises_case_and_space():
    assert parse_activation("  Square ") == PRESETS["square"]
    assert parse_activation("LEAKY:0.10").alpha == 0.1
    assert parse_activation("poly:3").alpha == 0.0  # P alone means max(x, 0)^P


@pytest.mark.parametrize("spec", list(P_ALPHA))
def test_symmetry_flags_match_the_function(spec):
    # even/odd are symmetries of homogeneous activations used for merging KKT points.
    a = parse_activation(spec)
    x = torch.linspace(0.1, 2.0, 7, dtype=DTYPE)
    assert a.even == bool(torch.allclose(a(-x), a(x)))
    assert a.odd == bool(torch.allclose(a(-x), -a(x)))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("swish", r"unknown activation 'swish'.*expected one of"),
        ("leaky", "unknown activation"),
        ("poly:1:2:3", "unknown activation"),
        ("leaky:abc", r"slope 'abc' is not a number"),
        ("leaky:inf", "must be finite"),
        ("poly:0", r"power P must be >= 1 \(got 0\)"),
        ("poly:x", r"power 'x' is not a number"),
        ("poly:1.5:0.5", "non-integer power needs slope <= 0"),
    ],
    ids=["unknown", "leaky-no-slope", "poly-too-many", "leaky-abc", "leaky-inf", "poly-0",
         "poly-x", "poly-frac-positive-slope"],
)
def test_parse_activation_errors(spec, match):
    with pytest.raises(InputError, match=match):
        parse_activation(spec)


# --------------------------------------------------------------------------- --hidden


@pytest.mark.parametrize(("text", "widths"),
                         [("50", (50,)), ("20,30", (20, 30)), (" 3 , 4 ,5", (3, 4, 5))])
def test_parse_hidden(text, widths):
    assert parse_hidden(text) == widths


@pytest.mark.parametrize(
    ("text", "match"),
    [("20,,5", "empty width"), ("20,", "empty width"), ("", "empty width"),
     ("abc", "'abc' is not an integer"), ("2.5", "'2.5' is not an integer"),
     ("0", r"widths must be >= 1 \(got 0\)"), ("5,-3", r"widths must be >= 1 \(got -3\)")],
    ids=["double-comma", "trailing-comma", "empty", "abc", "float", "zero", "negative"],
)
def test_parse_hidden_errors(text, match):
    with pytest.raises(InputError, match=match):
        parse_hidden(text)


@pytest.mark.parametrize(
    ("args", "match"),
    [(("cnn", 3), "unknown architecture 'cnn'"), (("mlp", 0), "d = 0 features"),
     (("diag", 3, "50", "relu", 0), "--depth must be >= 1"),
     (("mlp", 3, "4", "tanhh"), "unknown activation")],
    ids=["arch", "d0", "depth0", "act"],
)
def test_make_architecture_errors(args, match):
    with pytest.raises(InputError, match=match):
        make_architecture(*args)


def test_make_architecture_builds_by_name():
    assert make_architecture("mlp", 3, "4,2", "square") == MLP(3, (4, 2), PRESETS["square"])
    assert make_architecture("diag", 3, depth=3) == Diagonal(3, 3)


def test_widths_already_split_are_checked():
    """Problem.load(hidden=[20, 20]) and MLP(…, hidden=()) pass widths, not text."""
    assert parse_hidden([20, 20]) == (20, 20) and parse_hidden(()) == ()
    assert make_architecture("mlp", 3, (), "linear").depth == 1
    with pytest.raises(InputError, match="widths must be >= 1"):
        parse_hidden([4, 0])


def test_registry_help_and_kernel_specs():
    from ncfkit.models import ARCHITECTURES, KernelSpec, architectures_help

    text = architectures_help()
    assert all(f"{name}: {cls.title}" in text for name, cls in ARCHITECTURES.items())
    assert MLP(3, (4,), PRESETS["relu"]).kernel_spec == KernelSpec("mlp", (3, 4, 1), PRESETS["relu"])
    assert Diagonal(3, 4).kernel_spec == KernelSpec("diag", (3, 4))
