"""Issue 13 at test size: the governing point's cost cap (a count of gradients, the same
on every machine), second order with a product cap, the Clarke certificate without an
n × k matrix at exactly-zero neurons, per-phase timing, and a progress line for every
phase of ``escape`` in a log (captured, off a terminal)."""

import math
import re

import numpy as np
import pytest
import torch

from ncfkit import clarke, theory
from ncfkit.escape import governing_budget
from ncfkit.losses import make_loss
from ncfkit.models import make_architecture, random_direction
from ncfkit.spectra import extreme_eigs
from utils import run_cli

F64 = torch.float64


def _relu_case(n=20, d=3, hidden="5", seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, generator=g, dtype=F64)
    arch = make_architecture("mlp", d, hidden, "relu")
    w0 = random_direction(arch.num_params, g, dtype=F64)
    return arch, X, make_loss("square", "sum").ytilde(y), w0


# --------------------------------------------------------------------------- the cost cap


def test_budget_is_a_count_that_shrinks_with_the_problem():
    small, big = make_architecture("mlp", 20, "50", "square"), make_architecture("mlp", 784, "200", "relu")
    b_small, b_big = governing_budget(small, 100), governing_budget(big, 2000)
    assert b_small == governing_budget(small, 100)  # deterministic: no clock
    assert b_small > 100 * b_big > 0
    assert governing_budget(big, 2000, seconds=None) is None and governing_budget(big, 2000, seconds=0) is None
    # 5% of a long run's gradients when that is more
    assert governing_budget(big, 2000, run_gradients=1e9) == int(0.05 * 1e9)


def test_flow_stops_at_its_budget_at_a_kink():
    """The ReLU case that ran to the 20,000-step RK4 cap before the adaptive flow: with a
    budget of 60 gradients it stops there, says so, and still predicts an escape time."""
    arch, X, yt, w0 = _relu_case()
    seen = []
    flow = theory.ncf_flow_escape(arch, X, yt, w0, max_steps=20000, max_evals=60,
                                  progress=lambda e, cap, r: seen.append((e, cap, r)))
    assert flow.reason == "budget" and not flow.settled
    assert flow.evaluations <= 2 * 60  # checked between steps: the last one's stages and rejections
    assert seen and all(cap == 60 for _, cap, _ in seen) and seen[-1][0] <= flow.evaluations
    assert math.isfinite(flow.escape_time(1e-2))
    free = theory.ncf_flow_escape(arch, X, yt, w0, max_steps=20000)
    assert free.reason == "settled" and free.evaluations > 60  # the cap, not the kink, stopped it


def test_escape_reports_the_capped_governing_point(tmp_path):
    arch, X, yt, w0 = _relu_case(n=30, d=4, hidden="6")
    np.savez(tmp_path / "d.npz", X=X.numpy(), y=np.sign(X[:, 0].numpy()))
    res = run_cli("escape", tmp_path / "d.npz", "--hidden", "6", "--act", "relu", "--delta", "0.01",
                  "--max-time", "5", "--lr", "0.01", "--until", "max-time", "--delta-ref", "none", "--json",
                  "--governing-budget", "1e-9")  # 500 gd steps: 5% is below the floor of 50 gradients
    assert res.exit_code == 0, res.output
    import json

    out = json.loads(res.stdout)
    flow = out["kkt"]["ncf_flow"]
    assert flow["stop"] == "budget" and flow["evaluations"] <= 2 * 50  # the floor: 50 gradients
    assert "cost cap" in res.stderr
    assert {"load", "governing", "governing: flow", "governing: ascent", "train"} <= set(out["timing"])
    free = json.loads(run_cli("escape", tmp_path / "d.npz", "--hidden", "6", "--act", "relu", "--delta", "0.01",
                              "--max-time", "5", "--until", "max-time", "--delta-ref", "none", "--json",
                              "--governing-budget", "0").stdout)
    assert free["kkt"]["ncf_flow"]["stop"] in ("settled", "converged")


@pytest.mark.parametrize("bad", ["-1", "nan", "inf"])
def test_bad_budget_is_refused(tmp_path, bad):
    arch, X, yt, w0 = _relu_case()
    np.savez(tmp_path / "d.npz", X=X.numpy(), y=yt.numpy())
    res = run_cli("escape", tmp_path / "d.npz", "--hidden", "5", "--act", "relu", "--delta", "0.01",
                  "--max-time", "1", "--governing-budget", bad)
    assert res.exit_code == 2 and "--governing-budget" in res.stderr and "Traceback" not in res.output


# --------------------------------------------------------------------------- second order, capped


def test_lanczos_with_a_product_cap_reports_its_accuracy():
    rng = np.random.default_rng(0)
    k = 400
    Q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    lam = np.concatenate([[-5.0, 4.0], np.linspace(-1, 1, k - 2)])
    A = (Q * lam) @ Q.T
    full = extreme_eigs(lambda V: V @ A, k, num=2, which="BE", dense=0, tol=1e-10)
    assert full.method == "lanczos" and full.residual < 1e-8
    assert sorted(full.values) == pytest.approx([-5.0, 4.0], abs=1e-8)
    capped = extreme_eigs(lambda V: V @ A, k, num=2, which="BE", dense=0, tol=1e-14, max_products=60)
    assert capped.products <= 60 + 2 * 40  # the cap, ARPACK's first pass, LOBPCG's blocks
    assert capped.method in ("lanczos", "lanczos, capped")
    assert math.isfinite(capped.residual)
    assert min(capped.values) == pytest.approx(-5.0, abs=5e-2)  # the gap makes even a short run close


# --------------------------------------------------------------------------- Clarke at zero neurons


def test_normal_space_of_a_zero_neuron_is_its_row_times_the_data_span():
    """The stratum's normal space from the compact rows (a basis of span{h_i} on the zero
    neuron's row) equals the one from every kink's gradient written out (n rows)."""
    arch, X, yt, _ = _relu_case(n=40, d=3, hidden="4,3", seed=3)
    g = torch.Generator().manual_seed(5)
    u = random_direction(arch.num_params, g, dtype=F64).numpy()
    W1, W2, v = arch.split(u)
    W2[1] = 0.0  # neuron 1 of layer 2: zero incoming row (every sample at its kink) ...
    v[0, 1] = 0.0  # ... and zero outgoing weight
    u = np.concatenate([W1.ravel(), W2.ravel(), v.ravel()])
    u /= np.linalg.norm(u)
    net = clarke._Net(arch, X.numpy(), yt.numpy(), u)
    kinks = net.kinks(1e-9)
    assert int(kinks[1][1].sum()) == 40  # all n samples
    Ds = net.slopes(kinks, None)
    cs = net.grad(Ds)[2]
    J_full = net.kink_gradients(Ds, kinks)
    J_compact, fixed, count = clarke._normal_rows(net, Ds, kinks, cs)
    assert fixed.sum() == 4  # the zero row's 4 incoming weights (40 samples span R^4): fixed at 0
    J_compact = np.vstack([J_compact, np.eye(u.size)[fixed]])
    assert J_compact.shape[0] < J_full.shape[0]
    P_full = clarke._stratum_basis_complement(u, J_full)
    P_compact = clarke._stratum_basis_complement(u, J_compact)
    assert P_full.shape == P_compact.shape
    assert np.linalg.norm(P_full @ (P_full.T @ P_compact) - P_compact) < 1e-10  # the same space
    c = np.concatenate([C[K] for C, K in zip(cs, kinks, strict=True)])
    assert count == int(np.count_nonzero((c != 0) & np.any(J_full != 0, axis=1)))
    # Δ's eigenvalues on T: the same with the n rows written out, and with the fixed
    # coordinates left out of the operator (dense and Lanczos)
    J_rows, fixed, _ = clarke._normal_rows(net, Ds, kinks, cs)
    full = clarke._top_eigs_on_stratum(net, Ds, u, J_full, num=2)
    for dense_max in (10_000, 0):
        left_out = clarke._top_eigs_on_stratum(net, Ds, u, J_rows, num=2, fixed=fixed, dense_max=dense_max)
        assert left_out[1] == full[1]  # dim T
        assert np.allclose(left_out[0], full[0], rtol=1e-8, atol=1e-10)


def test_too_many_kinks_give_the_one_sided_bound(monkeypatch):
    arch, X, yt, w0 = _relu_case(n=30, d=3, hidden="4")
    u = w0.numpy() / np.linalg.norm(w0.numpy())
    W1, v = arch.split(u)
    W1[2] = 0.0  # a zero incoming row with a live outgoing weight: 30 kinks that enter g
    u = np.concatenate([W1.ravel(), v.ravel()])
    exact = clarke.clarke_certificate(arch, X, yt, u)
    monkeypatch.setattr(clarke, "MAX_KINK_ENTRIES", 10)
    bound = clarke.clarke_certificate(arch, X, yt, u)
    assert not bound.exact and bound.residual >= exact.residual - 1e-12
    # the zero row's kinks enter the stratum as a basis of the data's span, never as n rows
    assert (bound.stratum_dim, bound.hessian_method) == (exact.stratum_dim, exact.hessian_method)
    assert bound.delta == pytest.approx(exact.delta, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- never silent


def test_every_escape_phase_shows_a_line_in_a_log(tmp_path, monkeypatch):
    """Off a terminal (CliRunner), each phase prints its name as it starts and its progress
    (NCFKIT_PROGRESS_SECONDS=0: every update): loading, the NCF flow, the ascent, the
    certificate, training (with its rate), the Hessian at the saddle, writing."""
    monkeypatch.setenv("NCFKIT_PROGRESS_SECONDS", "0")
    X = np.random.default_rng(0).standard_normal((40, 5))
    y = np.maximum(X @ np.array([1.0, -0.5, 0.3, 0.0, 0.2]), 0) + 0.1
    np.savez(tmp_path / "d.npz", X=X, y=y)
    res = run_cli("escape", tmp_path / "d.npz", "--hidden", "8", "--act", "square", "--delta", "0.01",
                  "--lr", "0.01", "--delta-ref", "none", "--out", tmp_path / "r.h5")
    assert res.exit_code == 0, res.output
    err = res.stderr
    for pattern in (r"^loading .*d\.npz…$", r"^writing .*r\.h5…$", r"^NCF flow from w0 \(Definition 2\)…$",
                    r"^NCF flow from w0 \(Definition 2\): step = \d+",
                    r"^NCF ascent to the governing point…$", r"^certifying the governing point",
                    r"^escape: t = .* s \([0-9.e+-]+ t/s\)$",
                    r"^smallest Hessian eigenvalue at the saddle of δ = 0.01…$"):
        assert re.search(pattern, err, re.MULTILINE), (pattern, err[:3000])
    assert "\x1b[" not in err


@pytest.mark.parametrize("where", ["group", "command", "env"])
def test_quiet_silences_the_progress_but_keeps_the_results(tmp_path, monkeypatch, where):
    """``ncfkit -q escape …``, ``escape … --quiet`` and NCFKIT_QUIET=1: no phase line, no
    progress line; the results table and the JSON on stdout are the same as without."""
    monkeypatch.setenv("NCFKIT_PROGRESS_SECONDS", "0")
    X = np.random.default_rng(0).standard_normal((40, 5))
    y = np.maximum(X @ np.array([1.0, -0.5, 0.3, 0.0, 0.2]), 0) + 0.1
    np.savez(tmp_path / "d.npz", X=X, y=y)
    args = ["escape", tmp_path / "d.npz", "--hidden", "8", "--act", "square", "--delta", "0.01", "--lr", "0.01",
            "--delta-ref", "none", "--json"]
    loud = run_cli(*args)
    if where == "group":
        quiet = run_cli("-q", *args)
    elif where == "command":
        quiet = run_cli(*args, "--quiet")
    else:
        monkeypatch.setenv("NCFKIT_QUIET", "1")
        quiet = run_cli(*args)
    assert loud.exit_code == 0 and quiet.exit_code == 0, quiet.output
    assert re.search(r"^escape: t = ", loud.stderr, re.MULTILINE)
    for pattern in (r"^loading ", r"^NCF flow from w0", r"^escape: t = ", r"^certifying", r"…$"):
        assert not re.search(pattern, quiet.stderr, re.MULTILINE), (pattern, quiet.stderr[:2000])
    assert "T_esc" in quiet.stderr  # the results table stays
    strip = re.compile(r'"(timing|wall_time)": \{[^}]*\}|"wall_time": [0-9.e+-]+')
    assert strip.sub("", quiet.stdout) == strip.sub("", loud.stdout)
