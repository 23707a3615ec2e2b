"""Clarke-KKT points of the constrained NCF for piecewise-linear activations
(:mod:`ncfkit.clarke`, :func:`ncfkit.kkt.find_kkt_points` with relu / leaky:α).

Oracles (float64, seeded):

- two-layer ReLU, square loss, d = 2: 𝒩* = ½·max over unit ŵ of |Σ_i ỹ_i relu(ŵᵀx_i)|
  (one active neuron with ‖w‖² = v² = ½). Between consecutive breakpoints (ŵ ⟂ some x_i)
  the function of the angle θ is a·cos θ + b·sin θ, so the maximum is found exactly by
  enumerating the pieces (:func:`_relu_oracle_d2`, written without ncfkit);
- Lemma 17 at every active neuron of a two-layer Clarke-KKT point: w_j = v_j Σ_i ỹ_i s_ij x_i
  / (2𝒩) with s_ij = σ'(z_ij) off the kinks and s_ij ∈ [0, 1] on them (an independent
  bounded least squares per neuron), and |v_j| = ‖w_j‖;
- leaky ReLU with α → 1 tends to the linear net's max 𝒩 = ‖Xᵀỹ‖/2, within
  (1 − α)/2 · Σ_i |ỹ_i|‖x_i‖;
- a hand-made kink: f(w) = w₁ − a·relu(w₂) − b·relu(−w₂) peaks at w₂ = 0, where the
  Clarke residual is 0 (s₂ = b s₃ / a) and Δ on the stratum is 2 in closed form.

No test depends on which side of a kink a float lands: points are perturbed by
round-off-sized amounts (1e-15 relative) and must keep the same certificate, on numpy
arrays and on tensors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear

from ncfkit import clarke
from ncfkit.activations import parse_activation
from ncfkit.data import teacher_dataset
from ncfkit.errors import InputError
from ncfkit.kkt import certify, find_kkt_points
from ncfkit.losses import make_loss
from ncfkit.models import MLP
from utils import rel_error

TOL = 1e-9  # find_kkt_points' default: certified means Clarke residual ≤ TOL
ORACLE_RTOL = 1e-8  # the bar


def _relu_oracle_d2(X: np.ndarray, ytilde: np.ndarray) -> float:
    """max over unit ŵ ∈ R² of |Σ_i ỹ_i relu(ŵᵀx_i)|, by enumerating the angle pieces."""
    ang = np.arctan2(X[:, 1], X[:, 0])
    breaks = np.sort(np.mod(np.concatenate([ang + np.pi / 2, ang - np.pi / 2]), 2 * np.pi))
    breaks = np.append(breaks, breaks[0] + 2 * np.pi)
    best = 0.0
    for a0, a1 in zip(breaks[:-1], breaks[1:], strict=True):
        if a1 <= a0:
            continue
        mid = 0.5 * (a0 + a1)
        on = X @ np.array([math.cos(mid), math.sin(mid)]) > 0
        a, b = (ytilde[on, None] * X[on]).sum(axis=0)
        thetas = [a0, a1]
        for peak in (math.atan2(b, a), math.atan2(b, a) + math.pi):  # extremes of a cos θ + b sin θ
            t = a0 + np.mod(peak - a0, 2 * np.pi)
            if t <= a1:
                thetas.append(t)
        best = max(best, max(abs(a * math.cos(t) + b * math.sin(t)) for t in thetas))
    return best


def _d2_data(seed: int, n: int):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2))
    return X, make_loss("square", "sum").ytilde(rng.standard_normal(n))


def _check_all_certified_or_explained(result):
    for p in result.points:
        if p.converged:
            assert p.cert.residual <= TOL and p.reason is None and p.cert.reason is None
        else:
            assert p.reason and p.cert.reason == p.reason and "stalled" not in p.reason
    assert not result.stalled and not result.unconverged


D2_CASES = {"seed0-n20": (0, 20), "seed1-n40": (1, 40), "seed2-n60": (2, 60), "seed3-n30": (3, 30),
            "seed4-n50": (4, 50)}


@pytest.fixture(scope="module")
def d2_runs():
    arch = MLP(2, (6,), parse_activation("relu"))
    out = {}
    for name, (seed, n) in D2_CASES.items():
        X, yt = _d2_data(seed, n)
        out[name] = (arch, X, yt, find_kkt_points(arch, X, yt, restarts=6, seed=seed))
    return out


@pytest.mark.parametrize("case", D2_CASES.keys())
def test_two_layer_relu_d2_matches_the_angle_oracle(d2_runs, case):
    arch, X, yt, result = d2_runs[case]
    _check_all_certified_or_explained(result)
    top = result.points[0]
    assert top.converged and top.cert.field == "clarke" and top.cert.exact
    expected = 0.5 * _relu_oracle_d2(X, yt)
    assert rel_error(top.cert.ncf, expected) <= ORACLE_RTOL, (top.cert.ncf, expected)
    assert top.cert.kind == "positive"


@pytest.mark.parametrize("case", D2_CASES.keys())
def test_lemma17_at_every_active_neuron(d2_runs, case):
    """w_j = v_j Σ_i ỹ_i s_ij x_i / (2𝒩) with s_ij = 1{z_ij > 0} off the kinks and some
    s_ij ∈ [0, 1] on them (found here by a bounded least squares per neuron, not by
    ncfkit), and |v_j| = ‖w_j‖."""
    arch, X, yt, result = d2_runs[case]
    for p in result.points:
        if not p.converged:
            continue
        c = p.cert
        W, V = arch.split(np.asarray(c.w))
        for j in c.active_neurons[0]:
            w_j, v_j = W[j], float(V[0, j])
            assert abs(abs(v_j) - np.linalg.norm(w_j)) <= 1e-8
            z = X @ w_j
            kink = np.abs(z) <= 1e-9 * np.linalg.norm(X, axis=1) * np.linalg.norm(w_j)
            target = 2 * c.ncf * w_j / v_j - (yt[~kink & (z > 0), None] * X[~kink & (z > 0)]).sum(axis=0)
            if kink.any():
                A = (yt[kink, None] * X[kink]).T
                sol = lsq_linear(A, target, bounds=(0.0, 1.0))
                miss = np.linalg.norm(A @ sol.x - target)
            else:
                miss = np.linalg.norm(target)
            assert miss <= 1e-8 * np.linalg.norm(2 * c.ncf * w_j / v_j), (j, miss)


def test_d2_points_with_kinks_are_exercised(d2_runs):
    """The oracle cases include maxima that sit on a kink (multipliers in play)."""
    assert any(p.cert.multipliers for _, _, _, r in d2_runs.values() for p in r.points if p.converged)


@pytest.mark.parametrize("alpha", [0.9, 0.99, 0.999])
def test_leaky_relu_tends_to_the_linear_closed_form(alpha):
    X, yt = _d2_data(7, 30)
    X = np.hstack([X, np.random.default_rng(8).standard_normal((30, 1))])
    arch = MLP(3, (4,), parse_activation(f"leaky:{alpha}"))
    result = find_kkt_points(arch, X, yt, restarts=4, seed=0)
    _check_all_certified_or_explained(result)
    top = result.points[0]
    assert top.converged
    linear = np.linalg.norm(X.T @ yt) / 2
    bound = (1 - alpha) / 2 * float(np.sum(np.abs(yt) * np.linalg.norm(X, axis=1)))
    assert abs(top.cert.ncf - linear) <= bound + 1e-12, (top.cert.ncf, linear, bound)


def test_teacher_data_points_are_certified_or_explained():
    X, y = teacher_dataset(n=40, d=4, hidden="2", act="relu", seed=0)
    yt = make_loss("square", "sum").ytilde(y)
    arch = MLP(4, (8,), parse_activation("relu"))
    result = find_kkt_points(arch, X, yt, restarts=6, seed=0)
    _check_all_certified_or_explained(result)
    assert result.points[0].converged
    assert result.converged >= 1


# --------------------------------------------------------------------------- a kink by hand

A, B = 2.0, 0.5


def _hand_kink(act="relu"):
    """One hidden neuron on X = [e1, e2, −e2], ỹ = (1, −a, −b): 𝒩 = v·(w₁ − a relu(w₂) −
    b relu(−w₂)) for relu, maximal at w = (1, 0)/√2, v = 1/√2 (𝒩 = ½), on the kink of
    samples 2 and 3."""
    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    yt = np.array([1.0, -A, -B])
    arch = MLP(2, (1,), parse_activation(act))
    u = np.array([1.0, 0.0, 1.0]) / math.sqrt(2)
    return arch, X, yt, u


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("side", [0.0, 1e-17, -1e-17, 3e-16, -3e-16], ids=["exact", "+", "-", "++", "--"])
def test_hand_kink_certificate_whatever_the_side(kind, side):
    """The point and its round-off neighbours on either side of the kink get the same
    certificate: residual 0 (s₂ = b s₃/a), 𝒩 = ½, Δ = 2 on the one-dimensional stratum
    T = {(δw₁, δv) ⟂ (1, 1)} (bᵀ∇²𝒩 b = −1 there), 2 kinks, both multipliers in play."""
    arch, X, yt, u = _hand_kink()
    u = u + np.array([0.0, side, 0.0])
    if kind == "torch":
        X, yt, u = (torch.as_tensor(a, dtype=torch.float64) for a in (X, yt, u))
    c = certify(arch, X, yt, u)
    assert c.residual <= 1e-14
    assert c.ncf == pytest.approx(0.5, rel=1e-14)
    assert c.delta == pytest.approx(2.0, rel=1e-12)
    assert (c.field, c.exact, c.kinks, c.multipliers, c.stratum_dim) == ("clarke", True, 2, 2, 1)
    assert c.second_order and c.kind == "positive"
    assert isinstance(c.w, np.ndarray if kind == "numpy" else torch.Tensor)


def test_hand_kink_leaky_one_sided_slope_is_not_stationary_but_clarke_is():
    """leaky:0.2: the one-sided derivative (s = α on both kinks) leaves a tangent gradient
    (−aα + bα ≠ 0), the Clarke residual is 0 (s₂ = b s₃ / a with s₃ ∈ [α, 1] chosen so)."""
    arch, X, yt, u = _hand_kink("leaky:0.2")
    alpha = 0.2
    v, w1 = u[2], u[0]
    g = np.array([v, v * (-A * alpha + B * alpha), w1])  # ∇𝒩 with s = α on both kinks
    g_t = g - (u @ g) * u
    assert np.linalg.norm(g_t) / np.linalg.norm(g) > 0.1
    c = certify(arch, X, yt, u)
    assert c.residual <= 1e-14 and c.multipliers == 2


def test_clarke_residual_equals_the_closed_form_off_stationarity():
    """relu at w = (1, 0)/√2 but v tilted: the best multipliers cannot fix the radial
    mismatch between the w and v blocks; the residual equals that of the smooth net with
    the kink term removed (s₂ = b s₃/a makes the w₂ component 0)."""
    arch, X, yt, _ = _hand_kink()
    u = np.array([1.0, 0.0, 2.0]) / math.sqrt(5)
    c = certify(arch, X, yt, u)
    # g(s*) = (v, 0, w₁) with w₁ = 1/√5, v = 2/√5: P g / ‖g‖ with u = (1, 0, 2)/√5
    g = np.array([u[2], 0.0, u[0]])
    expected = np.linalg.norm(g - (u @ g) * u) / np.linalg.norm(g)
    assert c.residual == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- the same answer everywhere


def _perturbed(a: np.ndarray, rng, rel=1e-15):
    return a * (1 + rel * rng.choice([-1.0, 1.0], size=a.shape))


@pytest.fixture(scope="module")
def kink_point(d2_runs):
    """A certified two-layer ReLU point with multipliers in play (a maximum on a kink)."""
    for arch, X, yt, result in d2_runs.values():
        for p in result.points:
            if p.converged and p.cert.multipliers:
                return arch, X, yt, p.cert
    pytest.fail("no kink point among the oracle cases")


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_round_off_perturbations_keep_the_certificate(kink_point, kind):
    """X, ỹ and w perturbed by ±1e-15 relative (either side of every kink), on numpy
    arrays and on tensors: the same residual (≤ tol), 𝒩, Δ, kinks, multipliers, stratum
    and active neurons."""
    arch, X, yt, ref = kink_point
    rng = np.random.default_rng(11)
    for _ in range(6):
        Xp, ytp, wp = _perturbed(X, rng), _perturbed(yt, rng), _perturbed(np.asarray(ref.w), rng)
        if kind == "torch":
            Xp, ytp, wp = (torch.as_tensor(a, dtype=torch.float64) for a in (Xp, ytp, wp))
        c = certify(arch, Xp, ytp, wp)
        assert c.residual <= TOL
        assert c.ncf == pytest.approx(ref.ncf, rel=1e-13)
        assert c.delta == pytest.approx(ref.delta, rel=1e-8, abs=1e-10 * abs(ref.ncf))
        assert (c.kinks, c.multipliers, c.stratum_dim, c.active_neurons) == \
            (ref.kinks, ref.multipliers, ref.stratum_dim, ref.active_neurons)


def test_find_kkt_points_numpy_torch_and_perturbed_data_agree(d2_runs):
    """The whole search on numpy arrays, on tensors and on data perturbed by 1e-15: the same
    points from the same starts, each with the same certificate (𝒩, Δ, kinks, active
    neurons) and the same network function H(X; w). (A point where several neurons share one
    direction lies on a continuum of KKT points — the split of their norms is free — and
    round-off may move w along it; H(X; w) and the certificate do not move.)"""
    arch, X, yt, ref = d2_runs["seed2-n60"]
    rng = np.random.default_rng(3)
    runs = [find_kkt_points(arch, torch.as_tensor(X), torch.as_tensor(yt), restarts=6, seed=2),
            find_kkt_points(arch, _perturbed(X, rng), _perturbed(yt, rng), restarts=6, seed=2)]
    assert any(len(p.cert.active_neurons[0]) > 1 for p in ref.points)  # a continuum is exercised
    for result in runs:
        _check_all_certified_or_explained(result)
        assert [p.restarts for p in result.points] == [p.restarts for p in ref.points]
        for p, q in zip(ref.points, result.points, strict=True):
            a, b = p.cert, q.cert
            assert q.converged == p.converged and b.residual <= TOL
            assert b.ncf == pytest.approx(a.ncf, rel=1e-12)
            assert b.delta == pytest.approx(a.delta, rel=1e-8, abs=1e-9 * a.ncf)
            assert (b.kinks, b.multipliers, b.active_neurons) == (a.kinks, a.multipliers, a.active_neurons)
            out_a, out_b = arch.forward(X, np.asarray(a.w)), arch.forward(X, np.asarray(b.w, dtype=np.float64))
            assert np.abs(out_a - out_b).max() <= 1e-12 * np.abs(out_a).max()


# --------------------------------------------------------------------------- deeper nets, bad input


def test_three_layer_relu_points_are_certified_or_explained():
    """Deeper nets: the conservative field (one multiplier per sample and neuron); every
    point is certified or says why not, and says which field it used."""
    X, y = teacher_dataset(n=20, d=3, hidden="2", act="relu", seed=1)
    yt = make_loss("square", "sum").ytilde(y)
    arch = MLP(3, (4, 3), parse_activation("relu"))
    result = find_kkt_points(arch, X, yt, restarts=3, seed=0, max_steps=4000)
    _check_all_certified_or_explained(result)
    assert all(p.cert.field == "conservative" for p in result.points)


def test_clarke_applies_only_to_piecewise_linear_feed_forward_nets():
    assert clarke.applies(MLP(2, (3,), parse_activation("relu")))
    assert clarke.applies(MLP(2, (3,), parse_activation("leaky:0.1")))
    assert clarke.applies(MLP(2, (3,), parse_activation("leaky:-1")))  # |x|
    for act in ("linear", "square", "sqrelu", "poly:3"):
        assert not clarke.applies(MLP(2, (3,), parse_activation(act)))
    with pytest.raises(ValueError, match="no Clarke certificate"):
        clarke.clarke_certificate(MLP(2, (3,), parse_activation("square")), np.eye(2), np.ones(2), np.ones(9))


@pytest.mark.parametrize(
    ("arch", "act", "match"),
    [("diag", "relu", r"--act relu: the diagonal model"), ("diag", "square", "--arch diag"),
     ("mlp", "tanh", r"--act tanh: not homogeneous"), ("mlp", "gelu", "not homogeneous")],
    ids=["diag-relu", "diag-square", "mlp-tanh", "mlp-gelu"],
)
def test_combinations_without_a_certificate_are_input_errors(arch, act, match):
    with pytest.raises(InputError, match=match):
        clarke.check_certificate_defined(arch, act)
    clarke.check_certificate_defined("mlp", "relu")
    clarke.check_certificate_defined("diag", None)


def test_stratum_delta_dense_equals_lanczos(kink_point, monkeypatch):
    """Δ and the top eigenvalues on the stratum: the dense matrix (zero neurons' incoming
    coordinates dropped) and Lanczos on matrix-free products agree."""
    import ncfkit.kkt as kkt_module

    arch, X, yt, ref = kink_point
    dense = certify(arch, X, yt, ref.w)
    monkeypatch.setattr(kkt_module, "DENSE_MAX", 0)
    lanczos = certify(arch, X, yt, ref.w)
    assert (dense.hessian_method, lanczos.hessian_method) == ("dense", "lanczos")
    assert lanczos.delta == pytest.approx(dense.delta, rel=1e-8, abs=1e-9 * abs(dense.ncf))
    assert lanczos.top_eigs[0] == pytest.approx(dense.top_eigs[0], rel=1e-8, abs=1e-9 * abs(dense.ncf))
    assert lanczos.stratum_dim == dense.stratum_dim


def test_kkt_command_on_relu_data_against_the_oracle(tmp_path):
    """``ncfkit kkt --act relu --json``: the top point is certified (residual ≤ 1e-8) at the
    d = 2 oracle's 𝒩*, and no point is left unconverged without being listed as such."""
    import json

    from utils import run_cli

    X, yt = _d2_data(4, 60)
    np.savez(tmp_path / "d2.npz", X=X, y=yt / 2)  # square loss: ỹ = 2y
    res = run_cli("kkt", tmp_path / "d2.npz", "--hidden", 6, "--act", "relu", "--restarts", 6, "--seed", 4,
                  "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    top = doc["points"][0]
    assert top["converged"] and top["residual"] <= 1e-8
    assert (top["field"], top["exact"]) == ("clarke", True) and "reason" not in top
    assert rel_error(top["ncf"], 0.5 * _relu_oracle_d2(X, yt)) <= ORACLE_RTOL
    assert "stalled" not in res.stderr



@pytest.mark.parametrize(("hidden", "act"), [((5,), "relu"), ((4, 3), "relu"), ((4, 3), "leaky:0.2"),
                                             ((3, 3, 2), "leaky:-0.5")],
                         ids=["relu-L2", "relu-L3", "leaky-L3", "leaky-neg-L4"])
def test_off_every_kink_the_clarke_certificate_is_the_smooth_one(hidden, act):
    """At a random point with no vanishing pre-activation (checked) the field is the
    gradient: the Clarke residual, Δ (on T = w⊥: no kink constraints) and the Lemma-20 error
    equal those from an independent autograd gradient and ``torch.func`` Hessian."""
    from torch.func import hessian

    from utils import orthonormal_complement, ref_mlp_forward, ref_sigma

    rng = np.random.default_rng(14)  # a seed whose samples all reach every layer (no h = 0)
    X, yt = rng.standard_normal((12, 3)), rng.standard_normal(12)
    arch = MLP(3, hidden, parse_activation(act))
    w = rng.standard_normal(arch.num_params)
    w /= np.linalg.norm(w)
    c = certify(arch, X, yt, w)
    assert (c.kinks, c.multipliers, c.stratum_dim) == (0, 0, arch.num_params - 1)
    sigma = ref_sigma(1.0, arch.act.alpha)
    Xt, yt_t, wt = (torch.as_tensor(a) for a in (X, yt, w))
    f = lambda v: yt_t @ ref_mlp_forward(Xt, v, [3, *hidden, 1], sigma)  # noqa: E731
    wr = wt.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(wr), wr)
    g = g.numpy()
    L_h = arch.homogeneity
    value = float(f(wt))
    assert c.ncf == pytest.approx(value, rel=1e-12)
    assert c.residual == pytest.approx(np.linalg.norm(g - (w @ g) * w) / np.linalg.norm(g), rel=1e-10)
    H = hessian(f)(wt).numpy()
    Q = orthonormal_complement(w)
    top = np.linalg.eigvalsh(Q.T @ ((H + H.T) / 2) @ Q)[-1]
    assert c.delta == pytest.approx(L_h * value - top, rel=1e-9, abs=1e-12)
    assert c.field == ("clarke" if len(hidden) == 1 else "conservative")



def test_a_stratum_too_large_for_memory_is_refused_before_allocating(monkeypatch):
    """Many vanishing pre-activations x many weights: one InputError naming the setting,
    before the matrix is allocated, never an out-of-memory kill (issue 13, bad input)."""
    import ncfkit._runtime as runtime
    from ncfkit.clarke import clarke_certificate
    from ncfkit.errors import InputError
    from ncfkit.models import make_architecture

    rng = np.random.default_rng(0)
    X, yt = rng.standard_normal((30, 3)), rng.standard_normal(30)
    arch = make_architecture("mlp", 3, "4", "relu")
    W1, v = rng.standard_normal((4, 3)), rng.standard_normal((1, 4))
    W1[0] = 0.0  # neuron 0: every sample sits at its kink (30 vanishing pre-activations)
    w = np.concatenate([W1.ravel(), v.ravel()])
    w /= np.linalg.norm(w)
    clarke_certificate(arch, X, yt, w)  # fits: computed
    monkeypatch.setattr(runtime, "available_memory", lambda: 1024)
    with pytest.raises(InputError, match=r"30 vanishing pre-activations x 16 weights.*NCFKIT_MAX_MEMORY"):
        clarke_certificate(arch, X, yt, w)
