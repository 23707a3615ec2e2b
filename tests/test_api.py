"""The Python API (:mod:`ncfkit.api`, issue 12): problems from files and arrays, every
command through ``run_command`` equal to the CLI's ``--json``, results that save and load
back to the same summary, errors with the CLI's messages, and interruptions at every
phase that leave a valid file (issue 17)."""

from __future__ import annotations

import dataclasses
import json
import math

import h5py
import numpy as np
import pytest

import ncfkit
from ncfkit import _phases, api
from ncfkit.io import read_h5
from utils import run_cli

rng = np.random.default_rng(5)
X = rng.standard_normal((10, 3))
X /= np.linalg.norm(X, axis=1, keepdims=True)
Y = rng.standard_normal(10)

MODEL = {"hidden": "4", "act": "square"}
KKT = {**MODEL, "restarts": 4, "max_steps": 3000}
ESCAPE = {**MODEL, "deltas": (0.05, 0.1), "lr": 0.01, "max_time": 40.0, "max_steps": 3000}


def _flags(params: dict) -> list[str]:
    """CLI flags of run_command parameters (click names back to --flags)."""
    out = []
    for k, v in params.items():
        if k == "deltas":
            out += [a for d in v for a in ("--delta", str(d))]
        else:
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def _strict(obj):
    """What the CLI's JSON holds: NaN and ±Inf as null, tuples as lists."""
    def finite(o):
        if isinstance(o, float):
            return o if math.isfinite(o) else None
        if isinstance(o, dict):
            return {k: finite(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [finite(v) for v in o]
        return o
    return json.loads(json.dumps(finite(obj)))


def _without_wall_time(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_time", "timing")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    np.savez(root / "data.npz", X=X, y=Y)
    return root / "data.npz"


@pytest.fixture(scope="module")
def kkt_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("kkt") / "kkt.h5"
    result = api.run_command("kkt", str(data), out=str(out), **KKT)
    return result, out


@pytest.fixture(scope="module")
def escape_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("escape") / "run.h5"
    result = api.run_command("escape", str(data), out=str(out), **ESCAPE)
    return result, out


@pytest.fixture(autouse=True)
def _fresh_phases():
    _phases.reset()
    yield
    _phases.reset()


# --------------------------------------------------------------------------- the package


def test_public_names():
    for name in ncfkit.__all__:
        assert getattr(ncfkit, name) is not None, name
    assert issubclass(ncfkit.InputError, ncfkit.NcfkitError) and issubclass(ncfkit.RunError, ncfkit.NcfkitError)
    assert callable(ncfkit.escape) and callable(ncfkit.sparsity) and callable(ncfkit.plot)
    from ncfkit.escape import run_escape  # the modules behind them still import as before

    assert callable(run_escape)


def test_problem_from_arrays_equals_problem_from_file(data):
    a = ncfkit.find_kkt_points(ncfkit.Problem.load(data, hidden=4, act="square"), restarts=4, max_steps=3000)
    b = ncfkit.find_kkt_points(ncfkit.Problem.from_arrays(X, Y, hidden=[4], act="square"), restarts=4,
                               max_steps=3000)
    assert a.summary() == b.summary() and a.summary()["points"]


# --------------------------------------------------------------------------- run_command == CLI


def test_kkt_run_command_equals_cli_json(data, kkt_run):
    res = run_cli("kkt", data, *_flags(KKT), "--json")
    assert res.exit_code == 0, res.output
    assert _strict(kkt_run[0].summary()) == json.loads(res.stdout)


def test_escape_run_command_equals_cli_json(data, escape_run):
    res = run_cli("escape", data, *_flags(ESCAPE), "--json")
    assert res.exit_code == 0, res.output
    cli = _without_wall_time(json.loads(res.stdout))
    assert _strict(_without_wall_time(escape_run[0].summary())) == cli
    assert cli["status"] == "complete" and len(cli["runs"]) == 2


def test_sparsity_run_command_equals_cli_json(kkt_run):
    res = run_cli("sparsity", kkt_run[1], "--verify", "--steps", "200", "--json")
    assert res.exit_code == 0, res.output
    result = api.run_command("sparsity", str(kkt_run[1]), verify=True, steps=200)
    assert _strict(result.summary()) == json.loads(res.stdout)
    assert result.summary()["verify"]["steps"] == 200


def test_sparsity_of_an_in_memory_kkt_result_equals_its_file(kkt_run):
    from_memory = ncfkit.sparsity(kkt_run[0], point=0).summary()
    from_file = ncfkit.sparsity(str(kkt_run[1]), point=0).summary()
    from_memory.pop("source"), from_file.pop("source")
    assert from_memory == from_file


# --------------------------------------------------------------------------- save / load


def test_kkt_load_of_save_has_the_same_summary(kkt_run, tmp_path):
    result, out = kkt_run
    assert isinstance(ncfkit.load(out), ncfkit.KKTResult)
    assert ncfkit.load(out).summary() == result.summary()
    result.save(tmp_path / "again.h5")
    assert ncfkit.load(tmp_path / "again.h5").summary() == result.summary()


def test_escape_load_of_save_has_the_same_summary(escape_run):
    result, out = escape_run
    loaded = ncfkit.load(out)
    assert isinstance(loaded, ncfkit.EscapeResult) and loaded.summary()["wall_time"] is None
    # how long the run took is not stored (files of one seed are byte-identical)
    assert _without_wall_time(loaded.summary()) == _without_wall_time(result.summary())


def test_sparsity_load_of_save_has_the_same_summary(kkt_run, tmp_path):
    result = ncfkit.sparsity(str(kkt_run[1]), verify=True, steps=200)
    result.save(tmp_path / "sp.h5")
    loaded = ncfkit.load(tmp_path / "sp.h5")
    assert isinstance(loaded, ncfkit.SparsityResult) and loaded.summary() == result.summary()


def test_plot_of_a_result_and_of_its_file(escape_run, tmp_path):
    result, out = escape_run
    ncfkit.plot(result, tmp_path / "a.png")
    ncfkit.load(out).plot(tmp_path / "b.png")
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").exists()


def test_save_refuses_an_existing_file_without_force(kkt_run, tmp_path):
    result = kkt_run[0]
    result.save(tmp_path / "k.h5")
    with pytest.raises(ncfkit.InputError, match="exists; pass --force"):
        result.save(tmp_path / "k.h5")
    result.save(tmp_path / "k.h5", force=True)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("command", "params", "flags"), [
    ("kkt", {"restarts": 0}, ["--restarts", "0"]),
    ("kkt", {"act": "tanh"}, ["--act", "tanh"]),
    ("escape", {"deltas": (-1.0,)}, ["--delta", "-1"]),
    ("escape", {"deltas": (0.1,), "delta_ref": "x"}, ["--delta", "0.1", "--delta-ref", "x"]),
    ("escape", {"deltas": (0.1,), "init": "missing.npz"}, ["--delta", "0.1", "--init", "missing.npz"]),
], ids=["restarts", "not-homogeneous", "delta", "delta-ref", "init-file"])
def test_errors_carry_the_cli_message(data, command, params, flags):
    with pytest.raises(ncfkit.InputError) as info:
        api.run_command(command, str(data), **{**MODEL, **params})
    res = run_cli(command, data, *_flags(MODEL), *flags)
    assert res.exit_code == 2 and res.stderr.strip() == f"error: {info.value}"


def test_bad_files_and_names_are_input_errors(data, tmp_path):
    with pytest.raises(ncfkit.InputError, match="does not exist"):
        ncfkit.Problem.load(tmp_path / "nothing.npz")
    with pytest.raises(ncfkit.InputError, match="unknown parameter 'restart'"):
        api.run_command("kkt", str(data), restart=3)
    with pytest.raises(ncfkit.InputError, match="unknown command"):
        api.run_command("train", str(data))
    with pytest.raises(ncfkit.NcfkitError, match="--dtype"):
        ncfkit.Problem.from_arrays(X, Y, dtype="float16")
    with pytest.raises(ncfkit.InputError, match="not an ncfkit result file|not a readable HDF5"):
        ncfkit.load(data)
    assert set(api.COMMAND_PARAMS) == {"kkt", "escape", "sparsity"}


# --------------------------------------------------------------------------- interruptions


ESCAPE_FLAGS = [*_flags(MODEL), "--delta", "0.05", "--delta", "0.1", "--lr", "0.01", "--max-time", "40",
                "--max-steps", "3000"]


@pytest.mark.parametrize("phase", ["load", "governing", "train", "hessians", "write"])
def test_escape_interrupted_at_each_phase_leaves_a_valid_file(data, tmp_path, monkeypatch, phase):
    monkeypatch.setenv("NCFKIT_STOP_AT", phase)
    out = tmp_path / "run.h5"
    res = run_cli("escape", data, *ESCAPE_FLAGS, "--out", out)
    assert res.exit_code == 130, res.output
    tree = read_h5(out, ("escape",))
    assert tree["status"] == "interrupted" and tree["phase"] == phase
    assert "provenance" in tree
    if phase in ("hessians", "write"):  # training had finished: the runs are kept
        runs = tree["runs"]
        assert len(runs) == 2 and all(runs[k]["steps"] > 0 and runs[k]["escaped"] for k in runs)


def test_sigterm_at_a_phase_exits_143_with_the_file(data, tmp_path, monkeypatch):
    monkeypatch.setenv("NCFKIT_STOP_AT", "governing")
    monkeypatch.setenv("NCFKIT_STOP_SIGNAL", "TERM")
    out = tmp_path / "run.h5"
    res = run_cli("escape", data, *ESCAPE_FLAGS, "--out", out)
    assert res.exit_code == 143, res.output
    assert read_h5(out)["phase"] == "governing"


@pytest.mark.parametrize("phase", ["load", "search", "write"])
def test_kkt_interrupted_at_each_phase_leaves_a_valid_file(data, tmp_path, monkeypatch, phase):
    monkeypatch.setenv("NCFKIT_STOP_AT", phase)
    out = tmp_path / "kkt.h5"
    res = run_cli("kkt", data, *_flags(KKT), "--out", out)
    assert res.exit_code == 130, res.output
    tree = read_h5(out, ("kkt",))
    assert tree["status"] == "interrupted" and tree["phase"] == phase
    if phase == "write":
        assert len(tree["points"]) >= 1


def test_interrupted_library_call_carries_the_partial_result(data, monkeypatch):
    problem = ncfkit.Problem.load(data, **{k: v for k, v in MODEL.items()})
    monkeypatch.setenv("NCFKIT_STOP_AT", "hessians")
    with pytest.raises(KeyboardInterrupt) as info:
        ncfkit.escape(problem, [0.05], lr=0.01, max_time=40.0, max_steps=3000)
    partial = info.value.partial
    assert partial.status == "interrupted" and partial.phase == "hessians"
    assert partial.summary()["runs"][0]["escaped"]


def test_a_failed_reference_run_alone_keeps_exit_0(data, tmp_path, monkeypatch):
    """Issue 17 item 14: every requested δ finished, only the reference diverged."""
    import ncfkit.escape as escape_module

    original = escape_module.simulate

    def reference_diverges(*args, **kwargs):
        sim = original(*args, **kwargs)
        ref = dataclasses.replace(sim.runs[-1], status="diverged", message="diverged at t = 1 (test)")
        return dataclasses.replace(sim, runs=[*sim.runs[:-1], ref])

    monkeypatch.setattr(escape_module, "simulate", reference_diverges)
    out = tmp_path / "run.h5"
    res = run_cli("escape", data, *_flags(MODEL), "--delta", "0.05", "--lr", "0.01", "--max-time", "40",
                  "--max-steps", "3000", "--json", "--out", out)
    assert res.exit_code == 0, res.output
    assert "reference run" in res.stderr
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete" and summary["reference"]["status"] == "diverged"
    with h5py.File(out) as f:
        assert f.attrs["status"] == "complete" and "reference run" in f.attrs["message"]


def test_import_ncfkit_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, ncfkit; ncfkit.Problem, ncfkit.InputError, ncfkit.api.run_command; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_progress_hears_each_phase(data):
    events = []
    problem = ncfkit.Problem.load(data, **MODEL)
    ncfkit.escape(problem, [0.05], lr=0.01, max_time=40.0, max_steps=3000,
                  progress=lambda event, value: events.append(event))
    assert events[0] == "status" and "training" in events
    ncfkit.find_kkt_points(problem, restarts=2, max_steps=500, progress=lambda e, v: events.append(e))
    assert "ascent" in events


def test_notebook_accessors(kkt_run, escape_run):
    kkt, run = kkt_run[0], escape_run[0]
    w = kkt.weights(0)
    assert w.shape == (kkt.summary()["num_params"],) and abs(np.linalg.norm(w) - 1) < 1e-12
    assert run.runs == run.summary()["runs"]
    rec = run.records(1)
    assert rec["time"].shape == rec["loss"].shape and rec["time"].size > 2
    loaded = ncfkit.load(escape_run[1]).records(1)
    assert np.array_equal(loaded["loss"], rec["loss"])
    with pytest.raises(ncfkit.InputError, match="out of range"):
        run.records(5)


def test_run_command_converts_and_checks_values_as_click_does(data):
    with pytest.raises(ncfkit.InputError) as info:
        api.run_command("kkt", str(data), **{**KKT, "arch": "foo"})
    res = run_cli("kkt", data, "--arch", "foo")
    assert res.exit_code == 2 and res.stderr.startswith(f"error: {info.value}")
    with pytest.raises(ncfkit.InputError, match="'--restarts': 'x' is not a valid integer"):
        api.run_command("kkt", str(data), **{**KKT, "restarts": "x"})
    as_text = api.run_command("kkt", str(data), **{**KKT, "restarts": "4", "hidden": 4})
    assert as_text.summary() == api.run_command("kkt", str(data), **KKT).summary()


def test_kkt_default_tolerance_follows_the_dtype():
    """float32 cannot resolve the float64 default 1e-9: the default becomes 8 × eps and the
    points converge; an explicit --tol below eps is still refused."""
    from pathlib import Path

    import numpy as np

    data = Path(__file__).resolve().parents[1] / "examples" / "data" / "fig1_square.npz"
    problem = ncfkit.Problem.load(data, hidden=[4], act="square", dtype="float32")
    res = ncfkit.find_kkt_points(problem, restarts=2, max_steps=5000)
    tol = res.record["provenance"]["tol"]
    assert tol == pytest.approx(8 * float(np.finfo(np.float32).eps))
    assert res.points and all(p["residual"] <= 1e-5 for p in res.points)
    with pytest.raises(ncfkit.InputError, match="--tol 1e-09: finer than float32"):
        ncfkit.find_kkt_points(problem, restarts=1, tol=1e-9)
