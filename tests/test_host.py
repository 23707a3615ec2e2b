"""Runs on the host (numpy arrays and the compiled kernel, no torch): ``ncfkit escape``
never imports torch there, and every result equals the one computed on tensors.

References: the same computation on torch tensors (the closed forms, certificate,
ascent and sparsity tests are written once for both kinds, :mod:`ncfkit.arrays`), and
the CLI with ``--engine torch``, which keeps everything on tensors. Seeded, float64.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ncfkit.fastgd as fastgd
from ncfkit.cli.main import cli
from ncfkit.dynamics import Objective, Settings
from ncfkit.escape import governing_point, report_json, run_escape
from ncfkit.kkt import certify, normalized_ascent
from ncfkit.losses import make_loss
from ncfkit.models import Diagonal, make_architecture, random_direction
from ncfkit.sparsity import balance_error, neuron_activity, zero_preserving_mask
from utils import KERNEL_OPTIONAL

pytestmark = pytest.mark.skipif(not fastgd.compiled_available() and KERNEL_OPTIONAL,
                                reason="the compiled GD kernel was not built")

F64 = torch.float64


def _data(n=12, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, rng.standard_normal(n)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("host")
    X, y = _data()
    np.savez(root / "data.npz", X=X, y=y)
    rng = np.random.default_rng(1)
    np.savez(root / "w0.npz", W1=rng.standard_normal((5, 3)), W2=rng.standard_normal((1, 5)))
    return root


ESCAPE = ["--hidden", "5", "--act", "square", "--delta", "0.05", "--delta", "0.1",
          "--max-time", "60", "--lr", "0.01", "--json"]


@pytest.mark.parametrize("method", ["flow", "gd"])
@pytest.mark.parametrize("init", ["file", "random"])
def test_escape_on_the_host_never_imports_torch(files, tmp_path, method, init):
    """A fresh interpreter runs the whole command (KKT point, certificate, runs, saddle
    Hessians, run.h5) and torch is still not in sys.modules at the end — except that
    --init random draws its direction with torch's generator (seeds stay valid)."""
    init_arg = str(files / "w0.npz") if init == "file" else "random"
    args = ["escape", str(files / "data.npz"), *ESCAPE, "--method", method, "--init", init_arg,
            "--out", str(tmp_path / "run.h5")]
    code = textwrap.dedent(f"""
        import json, sys
        from ncfkit.cli.main import cli
        try:
            cli.main({args!r}, standalone_mode=False)
        finally:
            print(json.dumps({{"torch": "torch" in sys.modules}}), file=sys.stderr)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stderr.strip().splitlines()[-1]) == {"torch": init == "random"}
    out = json.loads(res.stdout)
    assert out["engine"] == "compiled" and out["status"] == "complete"
    assert all(r["escaped"] for r in out["runs"]) and out["kkt"]["second_order"]
    assert (tmp_path / "run.h5").exists()


@pytest.mark.parametrize(("method", "init", "dtype"), [("flow", "file", "float64"),
                                                     ("gd", "file", "float64"),
                                                     ("flow", "random", "float64"),
                                                     ("gd", "random", "float32")])
def test_escape_host_and_tensors_agree(files, method, init, dtype):
    """``--engine auto`` (host) against ``--engine torch`` (tensors and torch's closed
    forms throughout): the same start, KKT point, events and measurements."""
    init_arg = str(files / "w0.npz") if init == "file" else "random"
    base = ["escape", str(files / "data.npz"), *ESCAPE, "--method", method, "--init", init_arg,
            "--dtype", dtype]
    res = {}
    for engine in ("auto", "torch"):
        r = CliRunner().invoke(cli, [*base, "--engine", engine])
        assert r.exit_code == 0, r.output
        res[engine] = json.loads(r.stdout)
    a, b = res["auto"], res["torch"]
    assert (a["engine"], b["engine"]) == ("compiled", "torch")
    tight = 1e-10 if dtype == "float64" else 1e-4
    for key in ("ncf", "delta", "lam"):
        assert a["kkt"][key] == pytest.approx(b["kkt"][key], rel=tight)
    assert a["kkt"]["active_neurons"] == b["kkt"]["active_neurons"]
    for ra, rb in zip(a["runs"], b["runs"], strict=True):
        # (not the final state: "passed saddle" may be seen one adaptive step apart)
        for key in ("escape_time", "saddle_time", "saddle_loss", "predicted_escape_time",
                    "predicted_escape_time_w0"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-8 if dtype == "float64" else 1e-4), key
        for key in ("saddle_min_hessian_eig", "sparsity_ratio_escape", "path_distance"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5 if dtype == "float64" else 1e-2,
                                            abs=1e-12), key
        assert (ra["saddle_kind"], ra["status"]) == (rb["saddle_kind"], rb["status"])
        if method == "gd" and dtype == "float64":
            assert ra["steps"] == rb["steps"] and ra["final_loss"] == pytest.approx(rb["final_loss"], rel=1e-9)


def test_run_escape_on_arrays_equals_run_escape_on_tensors():
    """The library on numpy arrays and on CPU tensors, both with the compiled engine:
    the same kernel, so the same numbers to round-off."""
    X, y = _data(seed=3)
    arch, loss = make_architecture("mlp", 3, "4", "square"), make_loss("square", "sum")
    w0 = random_direction(arch.num_params, np.random.default_rng(4))
    reports = {}
    for kind, conv in (("numpy", np.asarray), ("torch", lambda a: torch.as_tensor(a, dtype=F64))):
        Xk, yk = conv(X), conv(y)
        point = governing_point(arch, Xk, loss.ytilde(yk), conv(w0), max_steps=5000)
        assert type(point.w_star) is type(Xk) and type(point.wz_mask) is type(Xk)
        obj = Objective(arch, Xk, yk, loss)
        rep = run_escape(obj, conv(w0), [0.05], Settings(max_time=60.0, lr=0.02, engine="compiled"),
                         method="flow", point=point)
        reports[kind] = report_json(rep)
    a, b = reports["numpy"], reports["torch"]
    assert a["kkt"]["ncf"] == pytest.approx(b["kkt"]["ncf"], rel=1e-12)
    assert a["kkt"]["delta"] == pytest.approx(b["kkt"]["delta"], rel=1e-9)
    ra, rb = a["runs"][0], b["runs"][0]
    assert ra["escaped"] and ra["escape_time"] == pytest.approx(rb["escape_time"], rel=1e-12)
    assert ra["saddle_min_hessian_eig"] == pytest.approx(rb["saddle_min_hessian_eig"], rel=1e-8)


@pytest.mark.parametrize("act", ["square", "relu", "poly:3", "linear"])
def test_certificate_ascent_and_sparsity_on_both_kinds(act):
    X, y = _data(n=10, d=4, seed=5)
    arch = make_architecture("mlp", 4, "6,3" if act == "linear" else "6", act)
    yt = make_loss("square", "sum").ytilde(y)
    u0 = random_direction(arch.num_params, np.random.default_rng(6), (3,))
    t = lambda a: torch.as_tensor(a, dtype=F64)  # noqa: E731
    # ReLU: the ascent converges to a kink, where which side round-off lands on decides the
    # derivative; compare the two kinds on a short ascent whose iterates stay off every kink
    # (checked below), so the test never depends on how numpy's and torch's BLAS round.
    steps = 20 if act == "relu" else 3000
    asc_n = normalized_ascent(arch, X, yt, u0, max_steps=steps)
    asc_t = normalized_ascent(arch, t(X), t(yt), t(u0), max_steps=steps)
    if act == "relu":
        pre = X @ arch.split(asc_n.u)[0].swapaxes(-1, -2)  # first-layer pre-activations
        assert np.abs(pre).min() > 1e-6, "an iterate reached a kink: pick other seeds"
    assert isinstance(asc_n.u, np.ndarray) and isinstance(asc_t.u, torch.Tensor)
    assert np.allclose(asc_n.u, asc_t.u.numpy(), rtol=0, atol=1e-12)
    assert np.array_equal(asc_n.steps, asc_t.steps.numpy())
    w = asc_n.u[0]
    cn, ct = certify(arch, X, yt, w), certify(arch, t(X), t(yt), t(w))
    for key in ("ncf", "lam", "residual", "delta", "eig_error", "balance_error"):
        assert getattr(cn, key) == pytest.approx(getattr(ct, key), rel=1e-9, abs=1e-13), key
    assert (cn.kind, cn.second_order, cn.active_neurons) == (ct.kind, ct.second_order, ct.active_neurons)
    assert isinstance(cn.w, np.ndarray)
    act_n, act_t = neuron_activity(arch, w), neuron_activity(arch, t(w))
    assert act_n == act_t
    mask_n = zero_preserving_mask(arch, act_n.zero, like=w)
    mask_t = zero_preserving_mask(arch, act_t.zero, like=t(w))
    assert mask_n.dtype == bool and np.array_equal(mask_n, mask_t.numpy())
    assert balance_error(arch, w) == pytest.approx(balance_error(arch, t(w)), rel=1e-12)


def test_diagonal_model_on_the_host(tmp_path):
    """Example 1 on the host: the diagonal model's certificate and run as on tensors."""
    arch = Diagonal(2, 2)
    X, y = np.eye(2), np.array([4.0, 1.0])
    yt = make_loss("square", "sum").ytilde(y)
    c = certify(arch, X, yt, np.array([1.0, 0.0]))
    assert c.ncf == pytest.approx(8.0, rel=1e-14) and c.delta == pytest.approx(12.0, rel=1e-12)
    ct = certify(arch, torch.as_tensor(X), torch.as_tensor(yt), torch.tensor([1.0, 0.0], dtype=F64))
    assert c.delta == pytest.approx(ct.delta, rel=1e-14)


def test_host_mode_is_chosen_only_where_the_kernel_runs(files, monkeypatch):
    """--engine torch and a missing kernel keep tensors (and give the same answer)."""
    from ncfkit.cli.options import build_problem

    args = (str(files / "data.npz"), "mlp", "5", 2, "square", "square", "sum", 0, "float64", "cpu")
    assert build_problem(*args, host_engine="auto").host
    assert build_problem(*args, host_engine="compiled").host
    assert not build_problem(*args, host_engine="torch").host
    assert not build_problem(*args).host  # kkt and sparsity: tensors
    p32 = build_problem(*args[:-2], "float32", "cpu", host_engine="auto")
    assert p32.host and p32.X.dtype == np.float32 and p32.array([1.0]).dtype == np.float32
    monkeypatch.setattr(fastgd, "_gdkernel", None)
    assert not build_problem(*args, host_engine="auto").host


@pytest.mark.parametrize("method", ["gd", "flow"])
def test_numpy_objective_with_the_torch_engine(method):
    """A library user's numpy objective with ``engine="torch"`` steps by the closed forms
    in numpy, and lands where the compiled kernel does."""
    from ncfkit.dynamics import simulate

    X, y = _data(seed=7)
    arch = make_architecture("mlp", 3, "4", "square")
    obj = Objective(arch, X, y, make_loss("square", "sum"))
    w0 = 0.05 * random_direction(arch.num_params, np.random.default_rng(8))[None]
    runs = {e: simulate(obj, w0, Settings(max_time=5.0, lr=0.01, engine=e), method=method)
            for e in ("torch", "compiled")}
    assert (runs["torch"].engine, runs["compiled"].engine) == ("torch", "compiled")
    a, b = (runs[e].runs[0].snapshots["final"] for e in ("torch", "compiled"))
    assert a.step == b.step
    np.testing.assert_allclose(a.w, b.w, rtol=1e-9, atol=1e-12)
