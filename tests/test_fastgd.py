"""GD engines (ncfkit.fastgd): the compiled C kernel against the torch engine (every
activation, depth, loss, reduction and the diagonal model; float64 to ~1e-12 and float32
to ~1e-5), both against a plain autograd GD loop on tests/utils.py's reference network,
engine resolution, ``simulate`` and ``ncfkit escape --engine`` with either engine, and
the kernel's own argument checks (a ValueError, never a crash); the numpy (BLAS) engine
against both over a few hundred steps, and ``auto``'s cost model. Seeded, CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import ncfkit.fastgd as fastgd
from ncfkit.activations import Activation, parse_activation
from ncfkit.dynamics import Objective, Settings, simulate
from ncfkit.losses import Loss, make_loss
from ncfkit.models import MLP, Diagonal, make_architecture, random_direction
from ncfkit.theory import EXAMPLE1
from utils import KERNEL_OPTIONAL, as_numpy, assert_close, ref_mlp_forward, ref_sigma, run_cli, seeded

F64, F32 = torch.float64, torch.float32

needs_kernel = pytest.mark.skipif(not fastgd.compiled_available() and KERNEL_OPTIONAL,
                                  reason="the compiled GD kernel was not built")
pytestmark = needs_kernel  # (the no-kernel paths are tested by monkeypatching it away)

ACTS = ["square", "linear", "relu", "leaky:0.1", "sqrelu", "poly:3", "poly:1.5:-0.5", "poly:3:0.2",
        "tanh", "gelu"]
HIDDEN = {1: (), 2: (5,), 3: (5, 4), 4: (6, 5, 4)}  # depth -> hidden widths (d = 6)
N, D_IN = 30, 6


# --------------------------------------------------------------------------- helpers


def _data(seed: int, loss: str, n: int = N, d: int = D_IN):
    g = seeded(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, generator=g, dtype=F64)
    if loss == "logistic":
        y = torch.where(y >= 0, 1.0, -1.0).to(F64)
    return X, y


def _weights(arch, X, B: int, seed: int) -> torch.Tensor:
    """B rows of float64 weights with outputs of rms ~1 (homogeneous nets: w scaled by
    rms^(−1/L_h), so deep poly:3 nets neither vanish nor blow up)."""
    w = 0.6 * torch.randn(B, arch.num_params, generator=seeded(seed), dtype=F64)
    if arch.homogeneity is not None:
        rms = arch.forward(X, w).pow(2).mean(-1).sqrt()
        w = w * (1.0 / rms[:, None]) ** (1.0 / arch.homogeneity)
    return w


def _problem(arch, loss: str, reduction: str, B: int, seed: int, dtype=F64):
    """(objective in ``dtype``, w, L, g, lr): lr moves w by ~1% of ‖w‖ per step."""
    X, y = _data(seed, loss, d=arch.d)
    w = _weights(arch, X, B, seed + 1)
    obj64 = Objective(arch, X, y, make_loss(loss, reduction))
    _, g64 = obj64.value_and_grad(w)
    lr = float(0.01 * w.norm() / g64.norm().clamp_min(1e-300))
    obj = Objective(arch, X.to(dtype), y.to(dtype), obj64.loss)
    w = w.to(dtype)
    L, g = obj.value_and_grad(w)
    return obj, w, L, g, lr


def _scaled_close(actual, expected, tol: float, what: str) -> None:
    """Entrywise |a − e| ≤ tol·(|e| + max|e|): relative, with entries far below the
    largest (a gradient's near-cancelled coordinates) held to the largest's scale."""
    e = as_numpy(expected)
    scale = float(np.abs(e).max()) if e.size else 0.0
    assert_close(actual, expected, rtol=tol, atol=tol * scale, what=what)


def _compare_engines(obj, w, L, g, lr, K, tol, tol_grad=None):
    """Run both steppers for K steps from (w, L, g); check finite and agreeing results,
    the contract's shapes, that the inputs are left alone, and (K, B) losses."""
    tol_grad = tol if tol_grad is None else tol_grad
    w_in, L_in, g_in = w.clone(), L.clone(), g.clone()
    comp = fastgd.make_stepper(obj, lr, "compiled")(w, L, g, K)
    assert_close(w, w_in, rtol=0, what="w untouched")  # neither engine writes its inputs
    ref = fastgd.make_stepper(obj, lr, "torch")(w, L, g, K)
    assert_close(w, w_in, rtol=0, what="w untouched")
    assert_close(L, L_in, rtol=0, what="L untouched")
    assert_close(g, g_in, rtol=0, what="g untouched")
    B, k = w.shape
    for res in (comp, ref):
        wK, LK, gK, losses = res
        assert wK.shape == (B, k) and gK.shape == (B, k) and LK.shape == (B,)
        assert wK.dtype == w.dtype and gK.dtype == w.dtype and LK.dtype == w.dtype
        assert isinstance(losses, np.ndarray) and losses.dtype == np.float64
        assert losses.shape == (K, B)
        assert np.isfinite(losses).all() and torch.isfinite(LK).all() and torch.isfinite(gK).all()
    for i, name in enumerate(("w_K", "L_K", "g_K", "losses")):
        t = tol_grad if name == "g_K" else tol
        _scaled_close(comp[i], ref[i], t, f"compiled vs torch {name}")
    if K > 0:
        assert_close(comp[3][0], L_in, rtol=tol, what="losses[0] = 𝓛(w_0)")
        assert float((comp[0] - w).norm()) > 1e-3 * float(w.norm())  # the steps went somewhere
    else:
        assert_close(comp[0], w, rtol=0, what="K = 0 leaves w")
    # g_K is ∇𝓛 at the compiled engine's own w_K (no trajectory drift in this one)
    L_at, g_at = obj.value_and_grad(comp[0])
    _scaled_close(comp[1], L_at, tol, "compiled L_K vs 𝓛(w_K)")
    _scaled_close(comp[2], g_at, tol_grad, "compiled g_K vs ∇𝓛(w_K)")


# --------------------------------------------------------------------------- 1. engines agree

# float64: ~1e-14 observed (max-entry scaled); float32: w and losses ~5e-7, a gradient
# with cancellation ~1e-5 (normwise), so 1e-5 and 5e-5.
TOL64, TOL32, TOL32_GRAD = 1e-12, 1e-5, 5e-5


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("loss", ["square", "logistic"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("act", ACTS)
def test_compiled_matches_torch_mlp_float64(act, depth, loss, reduction, B):
    seed = 1000 + 97 * ACTS.index(act) + 11 * depth + 3 * (loss == "logistic")
    seed += reduction == "mean"
    arch = make_architecture("mlp", D_IN, HIDDEN[depth], act)
    obj, w, L, g, lr = _problem(arch, loss, reduction, B, seed)
    assert fastgd.resolve_engine(obj, "auto") == "compiled"
    for K in (0, 1, 20):
        _compare_engines(obj, w, L, g, lr, K, TOL64)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("loss", ["square", "logistic"])
@pytest.mark.parametrize("D", [1, 2, 3])
def test_compiled_matches_torch_diagonal_float64(D, loss, reduction, B):
    arch = make_architecture("diag", D_IN, depth=D)
    assert isinstance(arch, Diagonal)
    obj, w, L, g, lr = _problem(arch, loss, reduction, B, 500 + 7 * D + 2 * (loss == "logistic"))
    assert fastgd.resolve_engine(obj) == "compiled"
    for K in (0, 1, 20):
        _compare_engines(obj, w, L, g, lr, K, TOL64)


@pytest.mark.parametrize("loss", ["square", "logistic"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("act", ACTS)
def test_compiled_matches_torch_mlp_float32(act, depth, loss):
    arch = make_architecture("mlp", D_IN, HIDDEN[depth], act)
    seed = 2000 + 31 * ACTS.index(act) + depth
    obj, w, L, g, lr = _problem(arch, loss, "mean", 3, seed, dtype=F32)
    assert obj.X.dtype == F32 and w.dtype == F32
    assert fastgd.resolve_engine(obj) == "compiled"
    for K in (0, 10):
        _compare_engines(obj, w, L, g, lr, K, TOL32, TOL32_GRAD)


@pytest.mark.parametrize("D", [2, 3])
def test_compiled_matches_torch_diagonal_float32(D):
    arch = make_architecture("diag", D_IN, depth=D)
    obj, w, L, g, lr = _problem(arch, "square", "sum", 3, 700 + D, dtype=F32)
    for K in (0, 10):
        _compare_engines(obj, w, L, g, lr, K, TOL32, TOL32_GRAD)


@pytest.mark.parametrize("act", ["relu", "square"])
def test_logistic_far_from_the_margin(act):
    """Outputs of size ~50: the softplus branch t = −p·y > 20 (loss = t) and exp(−p·y)
    underflowing towards 0 on the correctly classified side."""
    arch = make_architecture("mlp", D_IN, (5,), act)
    X, y = _data(42, "logistic")
    w = _weights(arch, X, 2, 43) * 50.0 ** (1.0 / arch.homogeneity)
    obj = Objective(arch, X, y, make_loss("logistic", "sum"))
    out = arch.forward(X, w) * y
    assert bool((out < -20).any()) and bool((out > 20).any())
    L, g = obj.value_and_grad(w)
    lr = float(1e-3 * w.norm() / g.norm())
    for K in (0, 10):
        _compare_engines(obj, w, L, g, lr, K, TOL64)


def test_blocks_chain_and_noncontiguous_input():
    """Two blocks of 7 and 13 steps give the iterates of one block of 20, bit for bit;
    a non-contiguous w is read as its values."""
    arch = make_architecture("mlp", D_IN, (5, 4), "sqrelu")
    obj, w, L, g, lr = _problem(arch, "square", "sum", 3, 77)
    step = fastgd.make_stepper(obj, lr, "compiled")
    w1, L1, g1, l1 = step(w, L, g, 7)
    w2, L2, g2, l2 = step(w1, L1, g1, 13)
    wa, La, ga, la = step(w, L, g, 20)
    assert_close(w2, wa, rtol=0, what="7 + 13 steps vs 20")  # same arithmetic: bit-equal
    assert_close(np.concatenate([l1, l2]), la, rtol=0, what="losses of 7 + 13 vs 20")
    big = torch.zeros(3, 2 * w.shape[1], dtype=F64)
    big[:, ::2] = w
    wnc = big[:, ::2]
    assert not wnc.is_contiguous()
    assert_close(step(wnc, L, g, 20)[0], wa, rtol=0, what="non-contiguous w")


# --------------------------------------------------------------------------- 2. vs autograd


def _autograd_gd(X, y, widths, sigma, loss, reduction, w, lr, steps, every):
    """Plain GD with torch autograd on ref_mlp_forward (no ncfkit code): the losses of
    iterates 0 … steps−1 and the iterates at 0, every, 2·every, …, steps."""
    n = y.shape[0]
    w = w.clone()
    losses, iterates = [], [w.clone()]
    for s in range(steps):
        wr = w.detach().requires_grad_(True)
        out = ref_mlp_forward(X, wr, widths, sigma)
        per = (out - y) ** 2 if loss == "square" else torch.log1p(torch.exp(-out * y))
        value = per.sum() / (n if reduction == "mean" else 1)
        (grad,) = torch.autograd.grad(value, wr)
        losses.append(value.item())
        w = w - lr * grad
        if (s + 1) % every == 0:
            iterates.append(w.clone())
    return np.array(losses), iterates


AUTOGRAD_CASES = [  # act, hidden, loss, reduction, lr
    ("square", (5,), "square", "sum", 1e-3),
    ("relu", (6, 4), "square", "mean", 1e-2),
    ("leaky:0.1", (5, 4), "logistic", "mean", 3e-2),
    ("poly:3:0.2", (4, 3), "square", "mean", 1e-2),
    ("poly:1.5:-0.5", (5,), "logistic", "sum", 3e-3),
    ("linear", (), "square", "sum", 3e-3),
]


@pytest.mark.parametrize("case", AUTOGRAD_CASES,
                         ids=lambda c: f"{c[0]}-{len(c[1]) + 1}-{c[2]}-{c[3]}")
def test_compiled_gd_equals_plain_autograd_loop(case):
    act_name, hidden, loss, reduction, lr = case
    act = parse_activation(act_name)
    arch = make_architecture("mlp", D_IN, hidden, act_name)
    X, y = _data(9, loss)
    w0 = _weights(arch, X, 2, 10)
    obj = Objective(arch, X, y, make_loss(loss, reduction))
    steps, every = 500, 100
    step = fastgd.make_stepper(obj, lr, "compiled")
    w, (L, g) = w0, obj.value_and_grad(w0)
    iterates, losses = [w0], []
    for _ in range(steps // every):
        w, L, g, block = step(w, L, g, every)
        iterates.append(w)
        losses.append(block)
    losses = np.concatenate(losses)
    sigma = ref_sigma(act.p, act.alpha)
    for b in range(w0.shape[0]):
        ref_losses, ref_iterates = _autograd_gd(X, y, list(arch.widths), sigma, loss, reduction,
                                                w0[b], lr, steps, every)
        assert np.isfinite(ref_losses).all()
        assert ref_losses[-1] < 0.9 * ref_losses[0]  # it trained, not sat still
        assert_close(losses[:, b], ref_losses, rtol=1e-10, what=f"row {b} losses")
        for j, (a, e) in enumerate(zip(iterates, ref_iterates, strict=True)):
            _scaled_close(a[b], e, 1e-10, f"row {b} w at step {j * every}")


def test_compiled_diagonal_gd_equals_plain_autograd_loop():
    """Example 1's model H = Σ w_c^D x_c, D = 3, written out by hand."""
    X, y = _data(3, "square")
    w = 0.5 * torch.randn(D_IN, generator=seeded(4), dtype=F64)
    obj = Objective(Diagonal(D_IN, 3), X, y, make_loss("square", "sum"))
    lr, steps = 2e-3, 500
    L, g = obj.value_and_grad(w[None])
    wK, _, _, losses = fastgd.make_stepper(obj, lr, "compiled")(w[None], L, g, steps)
    ref, ref_losses = w.clone(), []
    for _ in range(steps):
        wr = ref.detach().requires_grad_(True)
        value = ((X @ wr**3 - y) ** 2).sum()
        (grad,) = torch.autograd.grad(value, wr)
        ref_losses.append(value.item())
        ref = ref - lr * grad
    assert ref_losses[-1] < 0.9 * ref_losses[0]
    assert_close(losses[:, 0], np.array(ref_losses), rtol=1e-10, what="diag losses")
    _scaled_close(wK[0], ref, 1e-10, "diag w after 500 steps")


# --------------------------------------------------------------------------- 3. resolve_engine


@pytest.fixture()
def small_objective():
    X, y = _data(5, "square", n=8, d=3)
    return Objective(make_architecture("mlp", 3, (4,), "square"), X, y, make_loss("square", "sum"))


def _with(obj, **kw):
    fields = dict(arch=obj.arch, X=obj.X, y=obj.y, loss=obj.loss)
    fields.update(kw)
    return Objective(**fields)


def test_resolve_engine_cpu_float64(small_objective):
    obj = small_objective
    assert fastgd.compiled_available() and fastgd.compiled_unsupported(obj) is None
    assert fastgd.resolve_engine(obj) == "compiled"
    assert fastgd.resolve_engine(obj, "auto") == "compiled"
    assert fastgd.resolve_engine(obj, "compiled") == "compiled"
    assert fastgd.resolve_engine(obj, "torch") == "torch"
    assert fastgd.resolve_engine(_with(obj, X=obj.X.float(), y=obj.y.float())) == "compiled"
    with pytest.raises(ValueError, match="unknown GD engine 'cuda'"):
        fastgd.resolve_engine(obj, "cuda")
    with pytest.raises(ValueError, match="unknown GD engine"):
        fastgd.make_stepper(obj, 1e-3, "fast")


class _OtherArch:
    d = 3
    num_params = 4


UNSUPPORTED = {
    "float16": (lambda o: _with(o, X=o.X.half(), y=o.y.half()), "float32 or float64"),
    "meta device": (lambda o: _with(o, X=o.X.to("meta"), y=o.y.to("meta")), "CPU only"),
    "hinge loss": (lambda o: _with(o, loss=Loss("hinge", "sum", lambda p, y: p, lambda p, y: p)),
                   "no 'hinge' loss"),
    "architecture": (lambda o: _with(o, arch=_OtherArch()), "no _OtherArch architecture"),
    "softsign": (lambda o: _with(o, arch=MLP(3, (4,), Activation("softsign"))),
                 "no 'softsign' activation"),
    "63 layers": (lambda o: _with(o, arch=MLP(3, (1,) * 62, parse_activation("relu"))),
                  "at most 62"),
}


#: what ``auto`` takes where the kernel cannot run: the numpy engine where it can (any
#: architecture with closed forms, on the CPU, float32/float64), else torch
AUTO_WITHOUT_KERNEL = {"float16": "torch", "meta device": "torch", "hinge loss": "numpy",
                       "architecture": "torch", "softsign": "numpy", "63 layers": "numpy"}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_resolve_engine_unsupported(small_objective, case):
    make, why = UNSUPPORTED[case]
    obj = make(small_objective)
    assert why in fastgd.compiled_unsupported(obj)
    assert fastgd.resolve_engine(obj, "auto") == AUTO_WITHOUT_KERNEL[case]
    assert fastgd.resolve_engine(obj, "torch") == "torch"
    with pytest.raises(ValueError, match="the compiled GD engine cannot run this") as exc:
        fastgd.resolve_engine(obj, "compiled")
    assert why in str(exc.value)
    with pytest.raises(ValueError, match="cannot run this"):
        fastgd.make_stepper(obj, 1e-3, "compiled")


def test_62_layers_still_compiled():
    """The depth limit's edge: 62 layers run compiled and agree with torch."""
    arch = MLP(2, (2,) * 61, parse_activation("leaky:0.5"))
    assert arch.depth == 62
    X, y = _data(8, "square", n=5, d=2)
    obj = Objective(arch, X, y, make_loss("square", "mean"))
    assert fastgd.resolve_engine(obj) == "compiled"
    blocks = [torch.eye(2, dtype=F64).flatten()] * 61 + [torch.tensor([1.0, 0.5], dtype=F64)]
    w = torch.cat(blocks)[None]  # near-identity layers: the output neither vanishes nor explodes
    w = w + 0.01 * torch.randn(w.shape, generator=seeded(8), dtype=F64)
    assert 1e-3 < float(arch.forward(X, w).abs().max()) < 1e3
    L, g = obj.value_and_grad(w)
    _compare_engines(obj, w, L, g, float(1e-3 * w.norm() / g.norm()), 5, 1e-11)


def test_kernel_not_built(monkeypatch, small_objective):
    monkeypatch.setattr(fastgd, "_gdkernel", None)
    obj = small_objective
    assert not fastgd.compiled_available()
    assert "not built" in fastgd.compiled_unsupported(obj)
    assert fastgd.resolve_engine(obj, "auto") == "numpy"  # the closed forms on BLAS
    with pytest.raises(ValueError, match="kernel was not built"):
        fastgd.resolve_engine(obj, "compiled")
    # auto still runs (numpy), and simulate refuses "compiled" up front
    w0 = 0.1 * random_direction(obj.arch.num_params, seeded(6), dtype=F64)[None]
    sim = simulate(obj, w0, Settings(max_time=0.02, lr=1e-3, until="max-time"))
    assert sim.engine == "numpy" and sim.runs[0].steps == 20
    with pytest.raises(ValueError, match="kernel was not built"):
        simulate(obj, w0, Settings(max_time=0.02, lr=1e-3, engine="compiled"))


# --------------------------------------------------------------------------- 4. simulate


def _same_runs(a, b, rtol):
    assert a.engine == "compiled" and b.engine == "torch"
    assert len(a.runs) == len(b.runs)
    for ra, rb in zip(a.runs, b.runs, strict=True):
        assert ra.status == rb.status
        assert ra.escape is not None and rb.escape is not None
        assert ra.escape.step == rb.escape.step
        assert ra.escape.time == pytest.approx(rb.escape.time, rel=1e-9)
        assert ra.snapshots["escape"].step == rb.snapshots["escape"].step
        _scaled_close(ra.snapshots["escape"].w, rb.snapshots["escape"].w, rtol, "w at escape")
        assert ra.steps == rb.steps
        assert ra.snapshots["final"].step == rb.snapshots["final"].step
        _scaled_close(ra.snapshots["final"].w, rb.snapshots["final"].w, rtol, "final w")
        assert_close(ra.records["step"], rb.records["step"], rtol=0, what="record steps")
        assert_close(ra.records["loss"], rb.records["loss"], rtol=rtol, what="recorded losses")
        assert (ra.saddle is None) == (rb.saddle is None)
        if ra.saddle is not None:
            assert ra.saddle.step == rb.saddle.step


def test_simulate_gd_engines_agree_square_net(tiny_square_net):
    """Two δ in one batch (rows stop at different checkpoints, so the compiled engine
    also sees a shrinking batch): same escape steps, iterates to 1e-10."""
    obj, w0 = tiny_square_net
    w = torch.stack([0.1 * w0, 0.05 * w0])
    runs = {e: simulate(obj, w, Settings(max_time=3.0, lr=0.002, engine=e))
            for e in ("compiled", "torch")}
    assert all(r.status == "passed saddle" for r in runs["torch"].runs)
    assert runs["torch"].runs[0].steps != runs["torch"].runs[1].steps
    _same_runs(runs["compiled"], runs["torch"], 1e-10)
    assert simulate(obj, w[:1], Settings(max_time=0.01, lr=0.002)).engine == "compiled"  # auto


def test_simulate_gd_engines_agree_example1():
    X, y = torch.as_tensor(EXAMPLE1["X"], dtype=F64), torch.as_tensor(EXAMPLE1["y"], dtype=F64)
    obj = Objective(Diagonal(2, 2), X, y, make_loss("square", "sum"))
    w0 = torch.as_tensor(EXAMPLE1["w0"], dtype=F64)
    w = torch.stack([1e-2 * w0, 1e-3 * w0])
    runs = {e: simulate(obj, w, Settings(max_time=4.0, lr=2e-3, engine=e))
            for e in ("compiled", "torch")}
    _same_runs(runs["compiled"], runs["torch"], 1e-10)
    for r in runs["compiled"].runs:
        assert r.status == "passed saddle"
        assert r.saddle.loss == pytest.approx(EXAMPLE1["saddle_loss"], abs=0.01)


def test_simulate_engine_field_and_settings(tiny_square_net):
    obj, w0 = tiny_square_net
    with pytest.raises(ValueError, match="engine must be one of"):
        Settings(max_time=1.0, engine="numba")
    assert Settings(max_time=1.0).engine == "auto"
    # the engine a float32 run reports
    obj32 = _with(obj, X=obj.X.float(), y=obj.y.float())
    sim = simulate(obj32, (0.1 * w0).float()[None],
                   Settings(max_time=0.02, lr=0.002, until="max-time"))
    assert sim.engine == "compiled" and sim.runs[0].steps == 10
    # a meta-device objective cannot run compiled: simulate says why before any step
    obj_meta = _with(obj, X=obj.X.to("meta"), y=obj.y.to("meta"))
    with pytest.raises(ValueError, match="CPU only"):
        simulate(obj_meta, (0.1 * w0).to("meta")[None], Settings(max_time=0.02, engine="compiled"))


# --------------------------------------------------------------------------- 5. CLI


def _escape_args(root, engine, *extra):
    return ("escape", root / "ex1.npz", "--arch", "diag", "--lr", "2e-3", "--init", root / "w0.npz",
            "--delta", "1e-2", "--delta-ref", "none", "--json", "--engine", engine, *extra)


def test_cli_engines(ex1_files):
    out = {}
    for engine in ("torch", "compiled", "auto"):
        res = run_cli(*_escape_args(ex1_files, engine))
        assert res.exit_code == 0, res.output
        obj = json.loads(res.stdout)
        out[engine] = obj
        assert obj["engine"] == ("compiled" if engine == "auto" else engine)
        assert obj["status"] == "complete" and obj["runs"][0]["escaped"]
    a, b = out["compiled"]["runs"][0], out["torch"]["runs"][0]
    assert a["escape_time"] == pytest.approx(b["escape_time"], rel=1e-9)
    assert a["saddle_loss"] == pytest.approx(b["saddle_loss"], rel=1e-9)
    assert a["steps"] == b["steps"]


def test_cli_float32_compiled(ex1_files):
    res = run_cli(*_escape_args(ex1_files, "compiled", "--dtype", "float32"))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["engine"] == "compiled"


def test_cli_compiled_without_kernel_exits_2(ex1_files, monkeypatch):
    """No unsupported combination is reachable from the CLI's choices (cpu/cuda,
    float32/float64, mlp/diag, square/logistic; --device cuda without CUDA fails
    earlier), so the kernel is taken away."""
    monkeypatch.setattr(fastgd, "_gdkernel", None)
    res = run_cli(*_escape_args(ex1_files, "compiled"))
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: --engine compiled:") and "not built" in lines[0]
    assert "--engine auto or torch" in lines[0]
    assert "Traceback" not in res.output and res.stdout == ""
    # auto falls back to the numpy engine and says so
    res = run_cli(*_escape_args(ex1_files, "auto"))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["engine"] == "numpy"


def test_cli_rejects_unknown_engine(ex1_files):
    res = run_cli(*_escape_args(ex1_files, "fast"))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "--engine" in res.stderr


# --------------------------------------------------------------------------- 6. the kernel


def _kernel_args(K: int = 3, B: int = 2):
    """Valid gd_block arguments for a (d=3, 4, 1) square net, n = 5, float64."""
    g = np.random.default_rng(0)
    d, n, k = 3, 5, 3 * 4 + 4
    return dict(XT=np.ascontiguousarray(g.standard_normal((d, n))), y=g.standard_normal(n),
                w=0.3 * g.standard_normal((B, k)), g=np.empty((B, k)), losses=np.empty((K + 1, B)),
                widths=np.array([d, 4, 1], dtype=np.int64), B=B, K=K, lr=1e-3, arch=0, act=0,
                p=2.0, alpha=-1.0, loss=0, scale=1.0)


def _call(a):
    return fastgd._gdkernel.gd_block(*a.values())


def test_kernel_valid_call_matches_torch():
    a = _kernel_args()
    w0 = a["w"].copy()
    assert _call(a) == 3
    arch = MLP(3, (4,), parse_activation("square"))
    obj = Objective(arch, torch.as_tensor(a["XT"].T.copy()), torch.as_tensor(a["y"]),
                    make_loss("square", "sum"))
    L, g = obj.value_and_grad(torch.as_tensor(w0))
    wK, LK, gK, losses = fastgd.make_stepper(obj, 1e-3, "torch")(torch.as_tensor(w0), L, g, 3)
    _scaled_close(a["w"], wK, 1e-12, "gd_block w")
    _scaled_close(a["g"], gK, 1e-12, "gd_block g")
    _scaled_close(a["losses"], np.vstack([losses, LK.numpy()[None]]), 1e-12, "gd_block losses")


def _bad(**changes):
    a = _kernel_args()
    a.update(changes)
    return a


BAD_CALLS = {
    "w too short": (lambda: _bad(w=np.zeros((2, 15))), "buffer sizes"),
    "w too long": (lambda: _bad(w=np.zeros((2, 17))), "buffer sizes"),
    "B larger than w": (lambda: _bad(B=3), "buffer sizes"),
    "g wrong size": (lambda: _bad(g=np.empty((2, 15))), "buffer sizes"),
    "losses too small": (lambda: _bad(losses=np.empty((3, 2))), "buffer sizes"),
    "XT wrong size": (lambda: _bad(XT=np.zeros((2, 5))), "buffer sizes"),
    "w float32": (lambda: _bad(w=np.zeros((2, 16), dtype=np.float32)), "share one float dtype"),
    "widths int32": (lambda: _bad(widths=np.array([3, 4, 1], dtype=np.int32)), "int64"),
    "one width": (lambda: _bad(widths=np.array([3], dtype=np.int64)), "bad sizes"),
    "last width not 1": (lambda: _bad(widths=np.array([3, 4, 2], dtype=np.int64)), "last width"),
    "B = 0": (lambda: _bad(B=0), "bad sizes"),
    "K < 0": (lambda: _bad(K=-1), "bad sizes"),
    "w read-only": (lambda: _bad(w=_readonly(_kernel_args()["w"])), "writable"),
    "w not contiguous": (lambda: _bad(w=np.zeros((2, 32))[:, ::2]), "C-contiguous"),
    "w not a buffer": (lambda: _bad(w=[0.0] * 32), "C-contiguous"),
}


def _readonly(x):
    x = x.copy()
    x.flags.writeable = False
    return x


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_kernel_rejects_bad_buffers(case):
    make, match = BAD_CALLS[case]
    a = make()
    w_before = None if isinstance(a["w"], list) else np.array(a["w"], dtype=np.float64)
    with pytest.raises(ValueError, match=match):
        _call(a)
    if w_before is not None:
        assert_close(np.asarray(a["w"], dtype=np.float64), w_before, rtol=0, what="w left alone")


def test_kernel_wrong_arity_is_type_error():
    with pytest.raises(TypeError):
        fastgd._gdkernel.gd_block(1, 2, 3)


# Bugs the kernel once had (found by these tests, now fixed). The memory-safety ones run
# in a child process: a regression would corrupt the heap.


def test_kernel_rejects_integer_buffers():
    a = _bad(**{k: v.astype(np.int64) for k, v in _kernel_args().items()
                if k in ("XT", "y", "w", "g", "losses")})
    with pytest.raises(ValueError, match="float"):
        _call(a)


def test_kernel_rejects_too_many_layers():
    widths = np.ones(66, dtype=np.int64)
    widths[0] = 3
    a = _bad(widths=widths, w=np.zeros((2, 67)), g=np.zeros((2, 67)))
    with pytest.raises(ValueError):
        _call(a)


_CHILD = textwrap.dedent("""
    import importlib.util, sys
    import numpy as np
    spec = importlib.util.spec_from_file_location("_gdkernel", sys.argv[1])
    kernel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel)
    case = sys.argv[2]
    rng = np.random.default_rng(0)
    if case == "arch":  # arch 2: sized as diag (k = d = 3), computed as an MLP (k = 16)
        widths, arch, d, k = [3, 4, 1], 2, 3, 3
    else:  # negative hidden widths whose products still sum to k = 16
        widths, arch, d, k = [1, 1, -5, 2, 10, 1], 0, 1, 16
    n, B, K = 4, 2, 3
    args = (np.ascontiguousarray(rng.standard_normal((d, n))), rng.standard_normal(n),
            np.ones((B, k)), np.ones((B, k)), np.empty((K + 1, B)),
            np.array(widths, dtype=np.int64), B, K, 1e-3, arch, 0, 2.0, -1.0, 0, 1.0)
    try:
        kernel.gd_block(*args)
        print("returned")
    except ValueError as e:
        print("ValueError", e)
""")


def test_kernel_rejects_unknown_arch_code_in_child():
    _assert_child_value_error("arch")


def test_kernel_rejects_negative_widths_in_child():
    _assert_child_value_error("negative")


def _assert_child_value_error(case: str) -> None:
    env = {"MALLOC_CHECK_": "3", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", _CHILD, fastgd._gdkernel.__file__, case],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0 and res.stdout.startswith("ValueError"), (
        f"rc {res.returncode}; stdout {res.stdout!r}; stderr {res.stderr[-300:]!r}")



def test_cli_flow_reports_its_engine_and_both_agree(ex1_files):
    """--method flow takes ∇𝓛 from --engine too; both engines give the same events."""
    out = {}
    for engine in ("torch", "compiled"):
        res = run_cli(*_escape_args(ex1_files, engine, "--method", "flow"))
        assert res.exit_code == 0, res.output
        out[engine] = json.loads(res.stdout)
        assert out[engine]["engine"] == engine and out[engine]["method"] == "flow"
    a, b = out["compiled"]["runs"][0], out["torch"]["runs"][0]
    assert a["escape_time"] == pytest.approx(b["escape_time"], rel=1e-9)
    assert a["saddle_time"] == pytest.approx(b["saddle_time"], rel=1e-9)


# --------------------------------------------------------------------------- 6. numpy engine


def _pre_activations(arch, X, w):
    """Every hidden pre-activation of every row of w (for checking a trajectory stays off
    the kinks of relu/leaky, where round-off could pick either one-sided derivative)."""
    if not arch.hidden:
        return np.array([np.inf])
    Ws = arch.split(as_numpy(w))
    h, out = as_numpy(X).T, []
    for W in Ws[:-1]:
        z = W @ h
        out.append(np.abs(z).ravel())
        h = arch.act(z)
    return np.concatenate(out)


def _run_engine(obj, engine, w, lr, K, block=50):
    """K gd steps by ``engine`` in blocks (as gradient_descent runs them), as numpy."""
    step = fastgd.make_stepper(obj, lr, engine)
    vg = fastgd.value_and_grad_fn(obj, engine)
    L, g = vg(w)
    losses, traj = [], []
    for _ in range(K // block):
        w, L, g, ls = step(w, L, g, block)
        losses.append(ls)
        traj.append(as_numpy(w).copy())
    return as_numpy(w), as_numpy(L), as_numpy(g), np.concatenate(losses), traj


@pytest.mark.parametrize("loss", ["square", "logistic"])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("act", ACTS)
def test_numpy_engine_matches_compiled_and_torch(act, depth, loss):
    """300 steps, float64: numpy (BLAS), compiled and torch give the same iterates,
    losses and gradients to 1e-12 (max-entry scaled). The trajectory is checked to stay
    off relu's kinks (every nonzero |pre-activation| > 1e-9 at every checkpoint), so the test does not
    depend on which side round-off lands."""
    seed = 5000 + 97 * ACTS.index(act) + 11 * depth + 3 * (loss == "logistic")
    arch = make_architecture("mlp", D_IN, HIDDEN[depth], act)
    obj, w, L, g, lr = _problem(arch, loss, "mean", 2, seed)
    lr *= 0.2  # 300 steps of ~0.2% of ‖w‖ each
    runs = {e: _run_engine(obj, e, w, lr, 300) for e in ("numpy", "compiled", "torch")}
    for traj_w in runs["torch"][4]:  # (an exact 0: a unit whose inputs are all 0, the same everywhere)
        z = _pre_activations(arch, obj.X, traj_w)
        assert z[z != 0].min() > 1e-9
    assert float(np.linalg.norm(runs["numpy"][0] - as_numpy(w))) > 1e-2 * float(w.norm())
    for other in ("compiled", "torch"):
        for i, name in enumerate(("w", "L", "g", "losses")):
            _scaled_close(runs["numpy"][i], runs[other][i], TOL64, f"numpy vs {other} {name}")


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("act", ["square", "relu", "poly:3", "leaky:0.1"])
def test_numpy_ncf_gradient_matches(act, depth):
    """∇𝒩 (the correlation objective of the KKT ascent and the NCF flow) by every engine."""
    arch = make_architecture("mlp", D_IN, HIDDEN[depth], act)
    X, y = _data(77 + depth, "square")
    u = random_direction(arch.num_params, seeded(3), (4,), dtype=F64)
    ref = fastgd.ncf_value_and_grad_fn(arch, X, y, "torch")(u)
    for engine in ("numpy", "compiled"):
        for host in (False, True):
            f = fastgd.ncf_value_and_grad_fn(arch, X, y, engine, host=host)
            val, grad = f(u.numpy() if host else u)
            assert isinstance(val, np.ndarray) == host or engine == "numpy" and not host
            _scaled_close(val, ref[0], TOL64, f"{engine} 𝒩")
            _scaled_close(grad, ref[1], TOL64, f"{engine} ∇𝒩")
            v1, g1 = f(u[0].numpy() if host else u[0])  # one point (k,)
            _scaled_close(g1, ref[1][0], TOL64, f"{engine} ∇𝒩 of one point")


def test_numpy_engine_on_numpy_arrays_and_float32(small_objective):
    """Numpy data in, numpy out (the host path of `escape`); float32 to 1e-5."""
    obj = small_objective
    objn = _with(obj, X=obj.X.numpy(), y=obj.y.numpy())
    w = 0.3 * random_direction(obj.arch.num_params, seeded(9), (2,), dtype=F64)
    L, g = obj.value_and_grad(w)
    a = fastgd.make_stepper(objn, 1e-2, "numpy")(w.numpy(), L.numpy(), g.numpy(), 5)
    b = fastgd.make_stepper(obj, 1e-2, "torch")(w, L, g, 5)
    assert all(isinstance(x, np.ndarray) for x in a)
    for i in range(4):
        _scaled_close(a[i], b[i], TOL64, "numpy arrays vs torch")
    obj32 = _with(objn, X=objn.X.astype(np.float32), y=objn.y.astype(np.float32))
    w32 = w.numpy().astype(np.float32)
    L32, g32 = fastgd.value_and_grad_fn(obj32, "numpy")(w32)
    assert L32.dtype == np.float32 and g32.dtype == np.float32
    _scaled_close(g32, g, TOL32_GRAD, "float32 numpy gradient")


def test_numpy_engine_unsupported(small_objective):
    obj = small_objective
    with pytest.raises(ValueError, match="the numpy GD engine cannot run this.*CPU only"):
        fastgd.resolve_engine(_with(obj, X=obj.X.to("meta"), y=obj.y.to("meta")), "numpy")
    with pytest.raises(ValueError, match="float32 or float64"):
        fastgd.make_stepper(_with(obj, X=obj.X.half(), y=obj.y.half()), 1e-3, "numpy")
    assert fastgd.resolve_engine(obj, "numpy") == "numpy"


@pytest.mark.parametrize(("n", "d", "hidden", "expected"), [
    (100, 20, (50,), "compiled"),  # Figure 1: per-call overhead dominates
    (30, 6, (5, 4), "compiled"),
    (12665, 196, (20, 20, 20), "numpy"),  # issue 13's M: arithmetic dominates
    (2000, 784, (200,), "numpy"),  # L
])
def test_auto_engine_by_cost(n, d, hidden, expected):
    """``auto`` takes the kernel where n·width is small and BLAS where arithmetic
    dominates (one thread: the choice does not rest on the machine's core count)."""
    arch = make_architecture("mlp", d, hidden, "relu")
    costs = fastgd.predicted_costs(arch, n, threads=1)
    assert min(costs, key=costs.get) == expected
    assert fastgd.choose_host_engine(arch, n, "square") == expected or expected == "compiled"
    X = np.zeros((n, d))
    assert fastgd.ncf_value_and_grad_fn.__name__  # (resolution below needs no gradient)
    assert fastgd._choose("auto", arch, X, "correlation") in ("compiled", "numpy")
    assert fastgd._choose("auto", arch, torch.zeros(n, d, device="meta"), "square") == "torch"


def test_cli_numpy_engine(ex1_files):
    """``escape --engine numpy`` runs, says so, and agrees with the kernel."""
    out = {}
    for engine in ("numpy", "compiled"):
        res = run_cli(*_escape_args(ex1_files, engine))
        assert res.exit_code == 0, res.output
        out[engine] = json.loads(res.stdout)
        assert out[engine]["engine"] == engine
    a, b = out["numpy"]["runs"][0], out["compiled"]["runs"][0]
    assert a["escape_time"] == pytest.approx(b["escape_time"], rel=1e-9)
    assert a["saddle_loss"] == pytest.approx(b["saddle_loss"], rel=1e-9)
    assert a["steps"] == b["steps"]
