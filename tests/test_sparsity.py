"""Zero-preserving subsets (Def. 15, Lemma 16), the balance of a KKT point (Lemma 17),
and their verification by gradient descent (:mod:`ncfkit.sparsity`).

Oracles: hand-counted masks, the closed-form 2-layer square KKT point of docs/theory.md §3, and a
plain autograd gradient-descent loop.
"""

from __future__ import annotations

import math

import pytest
import torch

from ncfkit.activations import parse_activation
from ncfkit.errors import InputError
from ncfkit.losses import make_loss
from ncfkit.models import MLP
from ncfkit.sparsity import (
    analyse_sparsity,
    balance_error,
    neuron_activity,
    verify_zero_preserving,
    zero_preserving_mask,
)

DTYPE = torch.float64
HOMOGENEOUS = ["linear", "relu", "leaky:0.1", "square", "sqrelu", "poly:3"]
#: σ'(0) ≠ 0: a zero row receives a gradient through a nonzero column.
ROWS_LEAVE = {"linear": True, "leaky:0.1": True, "relu": False, "square": False,
              "sqrelu": False, "poly:3": False}
HIDDEN = {2: (5,), 3: (5, 4), 4: (5, 4, 3)}
#: Zero neurons per hidden layer: neighbours of zero neurons in the next layer included,
#: so w_z overlaps itself in the middle matrices.
ZERO = {2: ((1, 3),), 3: ((1, 3), (2,)), 4: ((1, 3), (2,), (0,))}


def _data(n=12, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DTYPE)
    X = X / X.norm(dim=1, keepdim=True)
    y = torch.randn(n, generator=g, dtype=DTYPE)
    return X, y


def _mlp(hidden, act="square", d=4):
    return MLP(d, tuple(hidden), parse_activation(act))


# --------------------------------------------------------------------------- masks


def test_mask_of_one_hidden_layer_counts_rows_and_columns():
    arch = _mlp((4,), d=3)
    zero = ((1, 3),)
    W1, W2 = arch.split(zero_preserving_mask(arch, zero))
    assert W1.sum() == 6 and W1[[1, 3]].all() and not W1[[0, 2]].any()
    assert W2.sum() == 2 and W2[0, [1, 3]].all()
    assert zero_preserving_mask(arch, zero, part="rows").sum() == 6
    assert zero_preserving_mask(arch, zero, part="columns").sum() == 2


def test_mask_overlap_in_a_middle_matrix_counts_once():
    # W1 row 0 (3) ∪ W2 column 0 (2) ∪ W2 row 1 (3) ∪ W3 column 1 (1); W2[1, 0] is shared.
    arch = _mlp((3, 2), d=3)
    mask = zero_preserving_mask(arch, ((0,), (1,)))
    W1, W2, W3 = arch.split(mask)
    assert (W1.sum(), W2.sum(), W3.sum()) == (3, 4, 1)
    assert int(mask.sum()) == 8
    assert W2[1, 0] and not W2[0, 1]


def test_mask_rejects_unknown_part():
    with pytest.raises(ValueError, match="part"):
        zero_preserving_mask(_mlp((2,)), ((0,),), part="diagonal")


# --------------------------------------------------------------------------- one point


def test_closed_form_square_kkt_point_has_one_active_neuron():
    """docs/theory.md §3: the 2-layer square maximiser is one neuron with ‖w_j‖² = 2/3, v_j² = 1/3
    along the top eigenvector of M = Σ ỹ_i x_i x_iᵀ; Lemma 17 holds with p = 2."""
    X, y = _data(n=30, d=5, seed=1)
    ytilde = make_loss("square").ytilde(y)
    M = (X.T * ytilde) @ X
    evals, evecs = torch.linalg.eigh(M)
    top = evecs[:, -1] if evals[-1] >= -evals[0] else evecs[:, 0]
    sign = 1.0 if evals[-1] >= -evals[0] else -1.0
    arch = _mlp((7,), d=5)
    W1 = torch.zeros(7, 5, dtype=DTYPE)
    W2 = torch.zeros(1, 7, dtype=DTYPE)
    W1[4] = math.sqrt(2 / 3) * top
    W2[0, 4] = sign * math.sqrt(1 / 3)
    w = arch.join([W1, W2])
    ncf = float(arch.forward(X, w) @ ytilde)
    lam = float(max(evals[-1], -evals[0]))
    assert ncf == pytest.approx(2 / (3 * math.sqrt(3)) * lam, rel=1e-12)

    r = analyse_sparsity(arch, w)
    assert r.activity.active == ((4,),)
    assert r.activity.zero == ((0, 1, 2, 3, 5, 6),)
    assert r.zero_preserving_size == 6 * (5 + 1)
    assert r.num_params == 7 * 5 + 7
    assert r.zero_preserving_fraction == pytest.approx(36 / 42)
    assert r.outside_per_matrix(arch) == [5, 1]
    assert r.balance_error == pytest.approx(0.0, abs=1e-15)
    assert r.lopsided == 0


def test_balance_error_measures_lemma_17():
    # One neuron, ‖row‖² = 1, ‖col‖² = 1, p = 2: |1 − 2·1| / ‖w‖² = 1/2.
    arch = _mlp((1,), d=1)
    assert balance_error(arch, torch.tensor([1.0, 1.0], dtype=DTYPE)) == pytest.approx(0.5)
    relu = _mlp((1,), act="relu", d=1)
    assert balance_error(relu, torch.tensor([1.0, 1.0], dtype=DTYPE)) == pytest.approx(0.0)


def _graded_weights():
    """d = 2, four neurons: 0 has norm exactly 1 (row 0.6, column 0.8); 1 has row and
    column 1e-4; 2 has row 1e-2 and column 1e-4; 3 is exactly 0."""
    arch = _mlp((4,), d=2)
    W1 = torch.tensor([[0.6, 0.0], [1e-4, 0.0], [0.0, 1e-2], [0.0, 0.0]], dtype=DTYPE)
    W2 = torch.tensor([[0.8, 1e-4, 1e-4, 0.0]], dtype=DTYPE)
    return arch, arch.join([W1, W2])


@pytest.mark.parametrize(
    "tol, zero, lopsided",
    [(0.0, (3,), ()), (1e-5, (3,), ()), (1e-3, (1, 3), (2,)), (5e-2, (1, 2, 3), ())],
    ids=["exact", "1e-5", "1e-3", "5e-2"],
)
def test_threshold_is_relative_to_the_largest_neuron(tol, zero, lopsided):
    arch, w = _graded_weights()
    act = analyse_sparsity(arch, w, tol).activity
    assert act.threshold == pytest.approx(tol)
    assert act.zero == (zero,)
    assert act.lopsided == (lopsided,)
    assert act.active == (tuple(j for j in range(4) if j not in zero and j not in lopsided),)
    # Scaling the weights scales the threshold with them: the verdicts do not change.
    assert neuron_activity(arch, 1e6 * w, tol).zero == (zero,)


def test_lopsided_neurons_are_not_in_w_z():
    arch, w = _graded_weights()
    r = analyse_sparsity(arch, w, 1e-3)
    W1, W2 = arch.split(r.mask)
    assert not W1[2].any() and not W2[0, 2]
    assert r.lopsided == 1


@pytest.mark.parametrize("tol", [-1e-3, 1.0, float("nan")], ids=["negative", "one", "nan"])
def test_bad_threshold_is_an_input_error(tol):
    arch, w = _graded_weights()
    with pytest.raises(InputError, match="--tol"):
        analyse_sparsity(arch, w, tol)


def test_all_zero_or_nonfinite_weights_are_input_errors():
    arch, w = _graded_weights()
    with pytest.raises(InputError, match="all zero"):
        analyse_sparsity(arch, torch.zeros_like(w))
    w[0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        analyse_sparsity(arch, w)


# --------------------------------------------------------------------------- Lemma 16


@pytest.mark.parametrize("depth", [2, 3, 4], ids=lambda L: f"L{L}")
@pytest.mark.parametrize("act", HOMOGENEOUS)
def test_w_z_stays_exactly_zero(act, depth):
    X, y = _data()
    arch = _mlp(HIDDEN[depth], act)
    res = verify_zero_preserving(arch, X, y, make_loss("square"), ZERO[depth], steps=400,
                                 init_scale=0.5)
    mask = zero_preserving_mask(arch, ZERO[depth])
    assert torch.equal(res.w_end[0][mask], torch.zeros(int(mask.sum()), dtype=DTYPE))
    assert res.wz_max_abs == 0.0 and res.preserved
    assert res.others_moved, res.relative_change
    # Negative controls: the outgoing weights alone always leave 0; the incoming weights
    # alone leave 0 exactly when σ'(0) ≠ 0.
    rows, cols = res.controls
    assert (rows.part, cols.part) == ("rows", "columns")
    assert cols.left_zero and cols.max_abs > 0
    assert rows.left_zero is ROWS_LEAVE[act] and rows.expected_to_leave is ROWS_LEAVE[act]
    assert res.verified and res.reason == ""


def test_start_is_random_small_with_each_subset_zeroed():
    X, y = _data()
    arch = _mlp(HIDDEN[3], "leaky:0.1")
    res = verify_zero_preserving(arch, X, y, make_loss("square"), ZERO[3], steps=5, seed=3,
                                 init_scale=0.25)
    assert torch.allclose(res.w_start.norm(dim=-1), torch.full((3,), 0.25, dtype=DTYPE))
    for row, part in zip(res.w_start, ("both", "rows", "columns"), strict=True):
        zeroed = zero_preserving_mask(arch, ZERO[3], part=part)
        assert (row[zeroed] == 0).all() and (row[~zeroed] != 0).all()
    again = verify_zero_preserving(arch, X, y, make_loss("square"), ZERO[3], steps=5, seed=3,
                                   init_scale=0.25)
    assert torch.equal(again.w_end, res.w_end)


def test_descent_matches_a_plain_autograd_loop():
    X, y = _data()
    arch = _mlp(HIDDEN[3], "sqrelu")
    loss = make_loss("square", "mean")
    res = verify_zero_preserving(arch, X, y, loss, ZERO[3], steps=50, lr=0.05, init_scale=0.8)
    w = res.w_start.clone().requires_grad_(True)
    for _ in range(50):
        (g,) = torch.autograd.grad(((arch.forward(X, w) - y) ** 2).mean(-1).sum(), w)
        w = (w - 0.05 * g).detach().requires_grad_(True)
    torch.testing.assert_close(res.w_end, w.detach(), rtol=1e-12, atol=1e-14)
    assert res.lr == 0.05 and res.attempts == 1


def test_a_non_zero_preserving_start_is_detected_with_logistic_loss():
    """The columns-only start is the same gradient descent; its zeroed entries must leave
    0 (else the exactness check could not fail)."""
    X, y = _data()
    y = torch.where(y > 0, 1.0, -1.0).to(DTYPE)
    arch = _mlp(HIDDEN[2], "linear")
    res = verify_zero_preserving(arch, X, y, make_loss("logistic"), ZERO[2], steps=200)
    mask_cols = zero_preserving_mask(arch, ZERO[2], part="columns")
    assert (res.w_end[2][mask_cols] != 0).all()
    assert res.verified


def test_empty_w_z_is_not_verified():
    X, y = _data()
    arch = _mlp((5,), "square")
    res = verify_zero_preserving(arch, X, y, make_loss("square"), ((),), steps=20)
    assert res.zero_preserving_size == 0 and not res.verified
    assert "empty" in res.reason


def test_weights_that_do_not_move_are_not_verified():
    X, y = _data()
    arch = _mlp((5,), "square")
    res = verify_zero_preserving(arch, X, y, make_loss("square"), ZERO[2], steps=20, lr=1e-30)
    assert res.preserved and not res.others_moved and not res.verified
    assert "barely moved" in res.reason


def test_divergence_shrinks_the_automatic_step():
    X, y = _data()
    arch = _mlp(HIDDEN[4], "square")  # L_h = 15: the first step size blows up by step 1000
    res = verify_zero_preserving(arch, X, y, make_loss("square"), ZERO[4], steps=1000)
    assert res.attempts > 1 and torch.isfinite(res.w_end).all()
    assert res.verified


def test_divergence_at_a_fixed_step_is_a_run_error():
    from ncfkit.errors import RunError

    X, y = _data()
    arch = _mlp(HIDDEN[3], "square")
    with pytest.raises(RunError, match="diverged"):
        verify_zero_preserving(arch, X, y, make_loss("square"), ZERO[3], steps=300, lr=10.0,
                               init_scale=3.0)
