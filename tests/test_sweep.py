"""``ncfkit sweep``: grid parsing and file names, bad input (exit 2, one line, nothing run),
the embedded local cluster, a real Dask scheduler with a worker SIGKILLed mid-point,
resume after Ctrl-C, and the per-point locks."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ncfkit import sweep as sw
from ncfkit.errors import InputError
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]
EX1 = ROOT / "examples" / "data" / "example1.npz"
EX1_W0 = ROOT / "examples" / "data" / "example1_w0.npz"
FIG1 = ROOT / "examples" / "data" / "fig1_square.npz"
#: Example 1 on the host (diagonal model, start read from a file: torch is never needed).
EX1_ARGS = [str(EX1), "--arch", "diag", "--init", str(EX1_W0)]

needs_dask = pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                                reason="Dask not installed (pip install \"ncfkit[cluster]\")")


def _env():
    env = dict(os.environ, NCFKIT_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def _ncfkit(*args, timeout=240, **kw):
    return subprocess.run([sys.executable, "-m", "ncfkit", *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=timeout, **kw)


def _run_rows(path):
    """The numbers of an escape file (collect's columns, the file name left out)."""
    from ncfkit.sweep import escape_rows

    return [{k: v for k, v in r.items() if k != "file"} for r in escape_rows(path)[1]]


def assert_same_numbers(actual, expected, what):
    """Run rows equal: every non-float exactly, floats to 1e-9 relative (the BLAS's
    summation order may differ between a worker and this process)."""
    assert len(actual) == len(expected), what
    for a, e in zip(actual, expected, strict=True):
        assert a.keys() == e.keys(), what
        for k in a:
            if isinstance(e[k], float) and isinstance(a[k], float):
                assert a[k] == pytest.approx(e[k], rel=1e-9, abs=1e-12), f"{what}: {k}"
            else:
                assert a[k] == e[k], f"{what}: {k}"


@pytest.fixture
def square5(tmp_path):
    """A 5-neuron square net on the Figure-1 data, started from a fixed weight file, GD
    without the reference run: each point ~0.5 s on the host."""
    rng = np.random.default_rng(3)
    w0 = tmp_path / "w5.npz"
    np.savez(w0, W1=rng.standard_normal((5, 20)), W2=rng.standard_normal((1, 5)))
    return [str(FIG1), "--hidden", "5", "--act", "square", "--reduction", "mean", "--init", str(w0),
            "--method", "gd", "--lr", "0.02", "--delta-ref", "none"]


# --------------------------------------------------------------------------- grid parsing and names


def test_grid_axes_and_names(tmp_path):
    cmd = sw.command_object("escape")
    a = sw.parse_axis(cmd, "delta", "1e-2,0.001")
    assert a.name == "deltas" and a.values == ((0.01,), (0.001,)) and a.labels == ("0.01", "0.001")
    assert sw.parse_axis(cmd, "seed", "0:16").values == tuple(range(16))
    assert sw.parse_axis(cmd, "seed", "2:11:3").values == (2, 5, 8)
    assert sw.parse_axis(cmd, "max-steps", "10,20").name == sw.parse_axis(cmd, "max_steps", [10, 20]).name
    assert sw.parse_axis(cmd, "hidden", "20,20;50,50").values == ("20,20", "50,50")
    assert sw.parse_axis(cmd, "act", "poly:2,square").labels == ("poly-2", "square")  # poly:2 is no range
    d = sw.parse_axis(cmd, "data", f"{EX1},{FIG1}")
    assert d.name == "data" and d.labels == ("example1", "fig1-square")

    s = sw.plan("escape", EX1_ARGS, [("delta", "1e-2,1e-3"), ("seed", "0:3")], tmp_path / "out")
    assert [p.name for p in s.points][:4] == ["delta=0.01_seed=0", "delta=0.01_seed=1", "delta=0.01_seed=2",
                                              "delta=0.001_seed=0"]
    p = s.points[4]
    assert p.params["deltas"] == (0.001,) and p.params["seed"] == 1 and p.params["arch"] == "diag"
    assert p.params["init"] == str(EX1_W0) and p.data == str(EX1)  # absolute paths: workers run elsewhere
    argv = sw.command_line("escape", p)
    assert argv[:3] == ["ncfkit", "escape", str(EX1)] and "--delta" in argv and "--seed" in argv
    # the same settings give the same names; a spec file gives the same sweep
    spec = tmp_path / "sweep.toml"
    spec.write_text(f'command = "escape"\ndata = "{EX1}"\n[flags]\narch = "diag"\ninit = "{EX1_W0}"\n'
                    '[grid]\ndelta = [0.01, 0.001]\nseed = "0:3"\n')
    command, args, grid, _, _, _ = sw.resolve_inputs((), (), str(spec), str(tmp_path / "out"), None, None)
    s2 = sw.plan(command, args, grid, tmp_path / "out")
    assert [q.name for q in s2.points] == [q.name for q in s.points]
    assert [q.params for q in s2.points] == [q.params for q in s.points]


def test_dry_run_lists_points_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    r = run_cli("sweep", "escape", *EX1_ARGS, "--grid", "delta=1e-2,1e-3", "--grid", "seed=0:2", "--outdir", out,
                "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    points = json.loads(r.stdout)["points"]
    assert [p["file"] for p in points] == ["delta=0.01_seed=0.h5", "delta=0.01_seed=1.h5", "delta=0.001_seed=0.h5",
                                           "delta=0.001_seed=1.h5"]
    assert all(p["state"] == "missing" and p["command_line"].startswith("ncfkit escape ") for p in points)
    assert not out.exists()


@pytest.fixture
def no_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(sw, "_call_command", lambda *a, **k: calls.append(a))
    return calls


@pytest.mark.parametrize("args, says", [
    (["--grid", "bogus=1,2"], "bogus"),
    (["--grid", "seed=a,b"], "seed"),
    (["--grid", "delta=0.1,-1"], "delta"),
    (["--grid", "method=gd,newton"], "newton"),
    (["--grid", "delta="], "empty"),
    (["--grid", "delta=0.1,0.1"], "twice"),
    ([], "empty grid"),
    (["--grid", "seed=0:2", "--delta", "0.1", "--out", "x.h5"], "--out"),
    (["--grid", "delta=0.1,0.2", "--delta", "0.1"], "once"),
    (["--grid", "seed=0:2", "--delta", "0.1", "--lr", "-1"], "--lr"),
    (["--grid", f"data={EX1},nothere.npz", "--delta", "0.1"], "nothere.npz"),
    (["--grid", f"data={EX1}", "--delta", "0.1", str(EX1)], "DATA"),
    (["--grid", "delta=0.1", "--resources", "GPU=1"], "--scheduler"),
    (["--grid", "delta=0.1", "--resources", "GPU"], "NAME=AMOUNT"),
])
def test_bad_input_one_line_exit_2_nothing_run(tmp_path, no_runs, args, says):
    out = tmp_path / "out"
    base = EX1_ARGS[1:] if any(a.startswith("data=") for a in args) else EX1_ARGS
    r = run_cli("sweep", "escape", *base, *args, "--outdir", out, "--scheduler", "in-process")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], r.stderr
    assert no_runs == [] and not out.exists()


@needs_dask
def test_bad_outdir_and_scheduler(tmp_path, no_runs):
    out = tmp_path / "out"
    base = ["sweep", "escape", *EX1_ARGS, "--grid", "delta=1e-2,1e-3", "--outdir", out]
    assert run_cli(*base, "--scheduler", "in-process").exit_code == 0 and len(no_runs) == 2
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    for extra in (["--lr", "0.01"], ["--grid", "seed=0,1"]):
        r = run_cli(*base, *extra, "--scheduler", "in-process")
        assert r.exit_code == 2 and "another sweep" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # an unreachable scheduler: one line, before anything runs or is written
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli(*base, "--scheduler", f"tcp://127.0.0.1:{port}")
    assert r.exit_code == 2 and "cannot reach" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert len(no_runs) == 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # a folder holding a result file of the same name that no sweep made
    other = tmp_path / "other"
    other.mkdir()
    (other / "delta=0.01.h5").write_bytes(b"not mine")
    r = run_cli("sweep", "escape", *EX1_ARGS, "--grid", "delta=1e-2,1e-3", "--outdir", other,
                "--scheduler", "in-process")
    assert r.exit_code == 2 and "--force" in r.stderr and (other / "delta=0.01.h5").read_bytes() == b"not mine"
    r = run_cli("sweep", "escape", *EX1_ARGS, "--grid", "delta=1e-2,1e-3", "--outdir", other,
                "--scheduler", "in-process", "--force")
    assert r.exit_code == 0 and len(no_runs) == 4  # --force: every point runs (and may overwrite)


# --------------------------------------------------------------------------- locks


def test_point_lock_busy_and_stale(tmp_path, no_runs):
    s = sw.plan("escape", EX1_ARGS, [("delta", "1e-2")], tmp_path)
    p = s.points[0]
    task = {"command": "escape", "outdir": str(tmp_path), "point": p, "sweep_id": "t", "argv": ["ncfkit"],
            "in_process": True}
    held = sw.PointLock(tmp_path, p.name, {"pid": os.getpid(), "host": socket.gethostname(), "sweep": "x",
                                           "token": "x"})
    assert held.acquire()[0]
    rec = sw.run_point(task)
    assert rec["status"] == "busy" and no_runs == []  # never the same point twice at the same time
    held.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / sw.STATE / "locks" / f"{p.name}.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "sweep": "old"}))
    (tmp_path / f".{p.name}.h5.abc.tmp").write_bytes(b"half")  # what a killed writer leaves
    assert sw.run_point(task)["status"] == "done" and len(no_runs) == 1
    assert not lock.exists() and not list(tmp_path.glob(".*.tmp"))
    # another host's lock: live while its heartbeat is fresh, stale after STALE_AFTER seconds
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "sweep": "other"}))
    assert sw.run_point(task)["status"] == "busy" and len(no_runs) == 1
    old = time.time() - sw.STALE_AFTER - 5
    os.utime(lock, (old, old))
    assert sw.run_point(task)["status"] == "done" and len(no_runs) == 2


# --------------------------------------------------------------------------- resume


def _fake_runner(calls, stop_at=None):
    """Writes a minimal complete escape file with the point's provenance; Ctrl-C at call ``stop_at``."""
    from ncfkit.io import provenance, write_h5

    def run(command, data, out, force, params):
        calls.append(Path(out).name)
        if stop_at is not None and len(calls) == stop_at:
            raise KeyboardInterrupt
        prov = provenance(None, deltas=list(params["deltas"]), seed=params["seed"], lr=params["lr"])
        tree = {"status": "complete", "provenance": prov, "runs": {"0": {"delta": params["deltas"][0]}}}
        write_h5(out, "escape", tree, force=force)
        return {"ok": True}

    return run


def test_resume_runs_only_missing_points(tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["sweep", "escape", *EX1_ARGS, "--grid", "delta=1e-2,1e-3,1e-4", "--grid", "seed=0:4", "--outdir", out,
            "--scheduler", "in-process"]
    calls: list[str] = []
    monkeypatch.setattr(sw, "_call_command", _fake_runner(calls, stop_at=5))
    r = run_cli(*args)
    assert r.exit_code == 130 and "interrupted" in r.stderr and "4 points finished" in r.stderr
    assert len(list(out.glob("*.h5"))) == 4 and not list((out / sw.STATE / "locks").iterdir())
    # a damaged file and an interrupted one are rerun; complete ones are not
    (out / "delta=0.01_seed=0.h5").write_bytes(b"\x89HDF truncated")
    from ncfkit.io import write_h5

    write_h5(out / "delta=0.01_seed=1.h5", "escape", {"status": "interrupted"}, force=True)
    calls.clear()
    monkeypatch.setattr(sw, "_call_command", _fake_runner(calls))
    r = run_cli(*args, "--json")
    assert r.exit_code == 0, r.output
    assert len(calls) == 12 - 2 and "delta=0.01_seed=0.h5" in calls and "delta=0.01_seed=1.h5" in calls
    summary = json.loads(r.stdout)
    assert summary["ran"] == 10 and summary["skipped"] == 2 and summary["failed"] == []
    calls.clear()
    assert run_cli(*args).exit_code == 0 and calls == []  # all complete: nothing runs
    m = json.loads((out / "sweep.json").read_text())
    assert [x["status"] for x in m["runs"]] == ["interrupted", "complete", "complete"]
    assert m["grid"] == {"delta": [0.01, 0.001, 0.0001], "seed": [0, 1, 2, 3]} and len(m["table"]["rows"]) == 12
    assert m["versions"]["ncfkit"] and m["start_time"] and m["end_time"]


def test_failed_point_exit_1_table(tmp_path, monkeypatch):
    from ncfkit.errors import RunError

    calls: list[str] = []
    good = _fake_runner(calls)

    def run(command, data, out, force, params):
        if params["seed"] == 1:
            raise RunError("the run diverged at step 12; try a smaller --lr")
        return good(command, data, out, force, params)

    monkeypatch.setattr(sw, "_call_command", run)
    r = run_cli("sweep", "escape", *EX1_ARGS, "--grid", "delta=1e-2", "--grid", "seed=0:3", "--outdir", tmp_path / "o",
                "--scheduler", "in-process")
    assert r.exit_code == 1 and "1 failed points" in r.stderr and "diverged at step 12" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: 1 of 3 points failed")


def test_ctrl_c_real_sweep_then_resume(tmp_path, square5):
    """SIGINT a real sweep (in this process's scheduler, so the running point is the one
    interrupted: its file is kept marked interrupted), rerun: only the missing and the
    interrupted points run, and every file is complete."""
    out = tmp_path / "out"
    args = ["sweep", "escape", *square5, "--grid", "delta=0.1,0.07,0.05",
            "--grid", "seed=0,1", "--outdir", out, "--scheduler", "in-process"]
    # The sweep sends itself SIGINT as the third point starts training (ncfkit._phases counts
    # the phase entries of the whole process): two points done, one interrupted, no timing.
    env = dict(_env(), NCFKIT_STOP_AT="train#3", NCFKIT_STOP_SIGNAL="INT")
    proc = subprocess.Popen([sys.executable, "-m", "ncfkit", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and not list(out.glob(".*.tmp"))
    # Count what the files say (what a rerun checks), not sweep.json's bookkeeping: a point
    # whose file landed just as the signal did may not be listed there yet (thread timing).
    import h5py

    def status(f):
        with h5py.File(f, "r", locking=False) as h:
            return str(h.attrs.get("status", "complete"))

    complete = sum(status(f) == "complete" for f in out.glob("*.h5"))
    assert 2 <= complete < 6
    r = _ncfkit(*args, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["ran"] == 6 - complete and summary["skipped"] == complete
    assert len(summary["table"]["rows"]) == 6 and len(list(out.glob("*.h5"))) == 6


def test_spec_file_and_kkt_sparsity_sweeps(tmp_path):
    """A --spec file drives a real kkt sweep; a sparsity sweep reads one of its files."""
    spec = tmp_path / "kkt.toml"
    spec.write_text(f'command = "kkt"\ndata = "{FIG1}"\noutdir = "{tmp_path / "kkt"}"\n'
                    '[flags]\nhidden = 5\nact = "square"\nmax-steps = 2000\n[grid]\nrestarts = [2, 4]\n')
    r = run_cli("sweep", "--spec", spec, "--scheduler", "in-process", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["table"]["rows"]
    assert [x["restarts"] for x in rows] == [2, 4] and all(x["point0_ncf"] > 0 for x in rows)
    r = run_cli("sweep", "sparsity", tmp_path / "kkt" / "restarts=4.h5", "--grid", "tol=1e-3,1e-2",
                "--outdir", tmp_path / "sp", "--scheduler", "in-process", "--json")
    assert r.exit_code == 0, r.output
    assert [x["tol"] for x in json.loads(r.stdout)["table"]["rows"]] == [1e-3, 1e-2]
    assert run_cli("info", tmp_path / "sp" / "tol=0.01.h5").exit_code == 0


# --------------------------------------------------------------------------- on Dask clusters


@needs_dask
def test_local_cluster_sweep_ctrl_c_and_resume(tmp_path, square5):
    """The embedded LocalCluster (2 workers): Ctrl-C in a terminal (SIGINT to the whole
    process group) stops it cleanly (exit 130, no traceback, no temporary file, no lock);
    the rerun runs only the missing points; a point equals the same point run alone.

    A real signal to real worker processes lands wherever they are; a failure is retried
    once in a fresh folder and reported with the first attempt's message (a real defect
    fails both)."""
    first = None
    for attempt in (1, 2):
        try:
            _ctrl_c_and_resume(tmp_path / f"attempt{attempt}", square5)
            return
        except AssertionError as e:
            if first is not None:
                raise AssertionError(f"both attempts failed; the first: {first}") from e
            first = e


def _ctrl_c_and_resume(tmp_path, square5):
    tmp_path.mkdir()
    out = tmp_path / "out"
    # each point to t = 10000 (500,000 GD steps, ~1 s): a sweep of points that end at
    # their first saddle (~0.05 s each on a fast host) could finish before the signal lands
    args = ["sweep", "escape", *square5, "--until", "max-time", "--max-time", "10000",
            "--grid", "delta=0.1,0.07,0.05,0.03", "--grid", "seed=0,1", "--workers", "2", "--outdir", out]
    # a test runner started in the background by a non-interactive shell ignores SIGINT, and
    # its children inherit that: the sweep must get the default (Python then installs its own)
    proc = subprocess.Popen([sys.executable, "-m", "ncfkit", *map(str, args)], env=_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*.h5"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "on a local Dask cluster (2 worker processes" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted (SIGINT)"
    assert not list(out.glob(".*.tmp")) and not list((out / sw.STATE / "locks").iterdir())
    before = len(list(out.glob("*.h5")))
    assert 2 <= before < 8
    r = _ncfkit(*args, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["ran"] == 8 - before and summary["skipped"] == before and len(summary["table"]["rows"]) == 8
    m = json.loads((out / "sweep.json").read_text())
    assert [x["status"] for x in m["runs"]] == ["interrupted", "complete"]
    assert all(f["status"] == "complete" for f in m["files"])
    assert not any(f.get("torch_loaded") for f in m["files"])  # host runs: workers never import torch
    csv = (out / "sweep.csv").read_text().splitlines()
    assert csv[0].startswith("delta,seed,file,run") and len(csv) == 9
    f = m["files"][-1]  # the same point alone (its recorded command line, in this process): the same numbers
    alone = tmp_path / "alone.h5"
    assert run_cli(*shlex.split(f["command_line"])[1:], "--out", alone).exit_code == 0
    assert_same_numbers(_run_rows(out / f["file"]), _run_rows(alone), f["name"])


@needs_dask
def test_retries_when_a_worker_dies(tmp_path):
    """A point whose worker dies (holding its lock) is resubmitted: after one death it runs
    on a fresh worker; one that kills every worker fails after --retries reruns (exit 1)."""
    out = tmp_path / "out"
    env = dict(_env(), NCFKIT_SWEEP_DIE="delta=0.01#1,delta=0.001#9")
    r = subprocess.run([sys.executable, "-m", "ncfkit", "sweep", "escape", *EX1_ARGS, "--grid", "delta=1e-2,1e-3,1e-4",
                        "--workers", "2", "--retries", "1", "--outdir", str(out), "--json"],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)
    assert summary["ran"] == 2 and [f["name"] for f in summary["failed"]] == ["delta=0.001"]
    assert "worker died 2 times" in summary["failed"][0]["error"] and "worker died" in r.stderr
    m = {f["name"]: f for f in json.loads((out / "sweep.json").read_text())["files"]}
    assert m["delta=0.01"]["status"] == "complete" and m["delta=0.01"]["attempts"] == 2
    assert m["delta=0.0001"]["attempts"] == 1 and m["delta=0.001"]["status"] == "failed"  # queued there: no count
    assert not (out / "delta=0.001.h5").exists() and not list((out / sw.STATE / "locks").iterdir())


def test_without_dask_runs_in_process(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(sw, "_call_command", _fake_runner(calls))
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    r = run_cli("sweep", "escape", *EX1_ARGS, "--grid", "delta=1e-2,1e-3", "--outdir", tmp_path / "o")
    assert r.exit_code == 0 and "Dask is not installed" in r.stderr and len(calls) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes (no nanny: killing one kills
    the worker itself; one resource `slot` each) on 127.0.0.1; always stopped."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    dask = str(bindir / "dask") if (bindir / "dask").exists() else "dask"
    procs = []
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    try:
        procs.append(subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                       "--no-dashboard"], env=_env(), stdout=subprocess.DEVNULL,
                                      stderr=open(logs / "scheduler.log", "w")))
        for i in range(2):
            procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-nanny",
                                           "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}",
                                           "--resources", "slot=1"],
                                          env=_env(), stdout=subprocess.DEVNULL,
                                          stderr=open(logs / f"worker{i}.log", "w")))
        from distributed import Client

        with Client(address, timeout="60s") as c:
            c.wait_for_workers(2, timeout=60)
        yield address, procs[1:]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=30)


@needs_dask
def test_remote_cluster_survives_a_killed_worker(tmp_path, square5, dask_cluster):
    """12 points on a real scheduler; SIGKILL a worker while it runs a point: every point
    ends up present once, valid, and equal to the same point run alone."""
    address, workers = dask_cluster
    out = tmp_path / "out"
    args = ["sweep", "escape", *square5, "--grid", "delta=0.1,0.07,0.05,0.03",
            "--grid", "seed=0:3", "--outdir", out, "--scheduler", address, "--resources", "slot=1", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "ncfkit", *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    try:
        locks = out / sw.STATE / "locks"
        pids = {w.pid: w for w in workers}
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            if len(list(out.glob("*.h5"))) >= 2:
                for lock in locks.glob("*.lock"):
                    info = sw.PointLock.read(lock)
                    if info and info.get("pid") in pids:  # a worker in the middle of a point
                        pids[info["pid"]].send_signal(signal.SIGKILL)
                        killed = lock.stem
                        break
            time.sleep(0.02)
        stdout, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert killed is not None, f"no worker was caught running a point: {err[-3000:]}"
    assert proc.returncode == 0, err
    summary = json.loads(stdout)
    assert summary["failed"] == [] and summary["ran"] == 12, summary
    files = sorted(p.name for p in out.glob("*.h5"))
    assert len(files) == 12 and len(set(files)) == 12 and f"{killed}.h5" in files
    assert not list(out.glob(".*.tmp")) and not list((out / sw.STATE / "locks").iterdir())
    m = json.loads((out / "sweep.json").read_text())
    for f in m["files"]:
        path = out / f["file"]
        assert run_cli("info", path).exit_code == 0
        alone = tmp_path / f"alone-{f['file']}"
        assert run_cli(*shlex.split(f["command_line"])[1:], "--out", alone).exit_code == 0
        assert_same_numbers(_run_rows(path), _run_rows(alone), f["name"])


def test_plan_refuses_command_it_cannot_sweep(tmp_path):
    with pytest.raises(InputError, match="unknown command"):
        sw.plan("plot", [], [("x", "1")], tmp_path)
