"""``ncfkit escape`` and ``ncfkit collect`` through click's CliRunner: the docs/theory.md §4 JSON
contract, the run.h5 layout, KKT-file provenance checks, divergence (exit 1, file kept)
and interruption (Ctrl-C and SIGTERM: exit 130/143, file marked interrupted)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from ncfkit._signals import handle_sigterm
from ncfkit.dynamics import Tracker
from ncfkit.io import load_data, provenance, read_h5, write_h5
from utils import run_cli

RUN_KEYS = {"delta", "escaped", "escape_time", "predicted_escape_time", "saddle_time", "saddle_loss",
            "saddle_grad_norm", "saddle_min_hessian_eig", "sparsity_ratio_escape",
            "sparsity_ratio_saddle"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("escape")
    np.savez(root / "ex1.npz", X=np.eye(2), y=np.array([4.0, 1.0]))
    np.savez(root / "w0.npz", w=np.array([1.0, 1.0]))  # Example 1's w0, unnormalised
    g = torch.Generator().manual_seed(1)  # 2-layer square net data (L_h = 3), as in test_dynamics
    X = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = torch.randn(10, generator=g, dtype=torch.float64)
    np.savez(root / "tiny.npz", X=X.numpy(), y=y.numpy())
    return root


EX1 = ("--arch", "diag", "--lr", "2e-3")


@pytest.fixture(scope="module")
def example1_run(files):
    out = files / "ex1_run.h5"
    res = run_cli("escape", files / "ex1.npz", *EX1, "--init", files / "w0.npz", "--delta", "1e-2",
               "--delta", "1e-3", "--json", "--out", out)
    return res, out


def test_example1_json_contract(example1_run):
    res, _ = example1_run
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)  # exactly one JSON object on stdout
    assert obj["homogeneity"] == 2
    assert obj["kkt"]["ncf"] == pytest.approx(8.0, rel=1e-9)
    assert obj["kkt"]["delta"] == pytest.approx(12.0, rel=1e-6)
    assert len(obj["runs"]) == 2 and RUN_KEYS <= set(obj["runs"][0])
    assert [r["delta"] for r in obj["runs"]] == [1e-2, 1e-3]
    for r in obj["runs"]:
        assert r["escaped"] and r["saddle_loss"] == pytest.approx(1.0, abs=0.01)
        assert r["saddle_min_hessian_eig"] < -3.9 and r["status"] == "passed saddle"
        assert r["escape_time"] / r["predicted_escape_time"] < 1  # + O(1), negative here
    assert {"slope", "predicted_slope"} <= set(obj["fit"])
    assert obj["fit"]["predicted_slope"] == pytest.approx(1 / 16)
    assert obj["fit"]["slope"] == pytest.approx(obj["fit"]["predicted_slope_gd"], rel=5e-3)


def test_example1_run_file_layout(example1_run):
    res, out = example1_run
    tree = read_h5(out, ("escape",))
    assert tree["status"] == "complete"
    prov = tree["provenance"]
    assert prov["data_sha256"] and json.loads(prov["architecture"]) == {"arch": "diag", "d": 2, "depth": 2}
    assert tree["kkt"]["w_star"].tolist() == pytest.approx([1.0, 0.0], abs=1e-8)
    assert tree["kkt"]["wz_mask"].tolist() == [0, 1]
    run = tree["runs"]["1"]
    assert run["delta"] == 1e-3 and run["escaped"]
    rec = run["records"]
    assert {"step", "time", "loss", "grad_norm", "w_norm", "cos_w_star", "wz_ratio", "phase"} <= set(rec)
    assert np.all(np.diff(rec["time"]) > 0) and rec["loss"][0] == pytest.approx(17.0, rel=1e-5)
    assert set(run["snapshots"]) == {"init", "escape", "saddle", "final"}
    sad = run["snapshots"]["saddle"]
    assert sad["w"] == pytest.approx([2.0, 0.0], abs=0.05)
    assert run["events"]["escape"]["time"] == pytest.approx(run["escape_time"])
    assert run["trajectory"]["w"].shape[1] == 2
    assert tree["reference"]["p_star_loss"] == pytest.approx(1.0, abs=1e-6)
    assert tree["fit"]["slope"] > 0 and "path_exponent" in tree


def test_collect_csv_and_json(example1_run, files):
    _, out = example1_run
    res = run_cli("collect", out, out, "--csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 4 and float(rows[1]["delta"]) == 1e-3
    assert rows[0]["status"] == "passed saddle" and float(rows[0]["saddle_loss"]) == pytest.approx(1, abs=0.01)
    res = run_cli("collect", out, "--json")
    obj = json.loads(res.stdout)
    assert [r["delta"] for r in obj["rows"]] == [1e-2, 1e-3]
    assert obj["rows"][0]["ncf"] == pytest.approx(8.0)
    bad = run_cli("collect", files / "ex1.npz")
    assert bad.exit_code == 2 and "error:" in bad.stderr and "Traceback" not in bad.output
    forged = files / "forged.h5"
    write_h5(forged, "escape", {"runs": {"first": {"delta": 1.0}}}, force=True)
    bad = run_cli("collect", forged)
    assert bad.exit_code == 2 and "malformed runs" in bad.stderr


def test_mlp_names_active_neurons_and_writes_layers(files, tmp_path):
    out = tmp_path / "tiny.h5"
    res = run_cli("escape", files / "tiny.npz", "--hidden", "4", "--act", "square", "--lr", "2e-3",
               "--delta", "0.1", "--delta", "0.05", "--seed", "3", "--json", "--out", out)
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["homogeneity"] == 3
    kkt = obj["kkt"]
    assert kkt["active_per_layer"] == [len(kkt["active_neurons"][0])]
    assert all(0 <= j < 4 for j in kkt["active_neurons"][0])
    for r in obj["runs"]:
        assert r["escaped"] and r["saddle_time"] > r["escape_time"]
        if kkt["zero_preserving_size"]:
            assert 0 <= r["sparsity_ratio_saddle"] < 1
    snap = read_h5(out)["runs"]["0"]["snapshots"]["saddle"]
    assert snap["W1"].shape == (4, 3) and snap["W2"].shape == (1, 4)
    assert np.concatenate([snap["W1"].ravel(), snap["W2"].ravel()]) == pytest.approx(snap["w"])


# --------------------------------------------------------------------------- KKT files


def _kkt_file(path: Path, data: Path, arch: dict, w: np.ndarray) -> Path:
    prov = provenance(load_data(data), architecture=arch, loss="square", reduction="sum")
    write_h5(path, "kkt", {"provenance": prov, "points": {"0": {"ncf": 8.0, "delta": 12.0, "w": w}}})
    return path


def test_init_kkt_from_file_starts_along_w_star(files, tmp_path):
    kkt = _kkt_file(tmp_path / "k.h5", files / "ex1.npz", {"arch": "diag", "d": 2, "depth": 2},
                    np.array([1.0, 0.0]))
    res = run_cli("escape", files / "ex1.npz", *EX1, "--init", "kkt", "--kkt", kkt, "--delta", "1e-3",
               "--json")
    assert res.exit_code == 0, res.output
    run = json.loads(res.stdout)["runs"][0]
    # along w*: ψ = (2δ/√(δ² + (4 − δ²)e^{−32t}), 0); escape at ln(…)/32, w_z stays exactly 0
    assert run["sparsity_ratio_saddle"] == 0.0
    assert run["saddle_loss"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("change, match", [
    ("data", r"made for other data"),
    ("arch", r"made for another architecture"),
], ids=["other-data", "other-arch"])
def test_kkt_file_provenance_mismatch_is_exit_2(files, tmp_path, change, match):
    data = files / "ex1.npz"
    arch = {"arch": "diag", "d": 2, "depth": 2}
    if change == "data":
        other = tmp_path / "other.npz"
        np.savez(other, X=np.eye(2), y=np.array([4.0, 2.0]))
        kkt = _kkt_file(tmp_path / "k.h5", other, arch, np.array([1.0, 0.0]))
    else:
        kkt = _kkt_file(tmp_path / "k.h5", data, dict(arch, depth=3), np.array([1.0, 0.0]))
    for init in ("kkt", "random"):
        res = run_cli("escape", data, *EX1, "--init", init, "--kkt", kkt, "--delta", "1e-3")
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
        assert res.stderr.startswith("error:") and __import__("re").search(match, res.stderr)


@pytest.mark.parametrize("args, match", [
    (("--delta", "0"), "delta"), (("--delta", "nan"), "delta"), (("--delta", "inf"), "delta"),
    (("--delta", "1e-3", "--lr", "0"), "lr"), (("--delta", "1e-3", "--lr", "-1"), "lr"),
    (("--delta", "1e-3", "--lr", "inf"), "lr"), (("--delta", "1e-3", "--lr", "nan"), "lr"),
    (("--delta", "1e-3", "--eps", "1.5"), "eps"), (("--delta", "1e-3", "--max-time", "-1"), "max-time"),
    (("--delta", "1e-3", "--delta-ref", "zero"), "delta-ref"),
    (("--delta", "1e-3", "--restarts", "0"), "restarts"), (("--delta", "1e-3", "--max-steps", "0"), "max-steps"),
    (("--delta", "1e-3", "--tol", "-1"), "tol"),
    (("--delta", "1e-3", "--init", "missing.npz"), "does not exist"),
], ids=lambda v: "-".join(v) if isinstance(v, tuple) else None)
def test_bad_numbers_are_exit_2(files, args, match):
    res = run_cli("escape", files / "ex1.npz", "--arch", "diag", *args)
    assert res.exit_code == 2, res.output
    assert match in res.stderr and "Traceback" not in res.output


# --------------------------------------------------------------------------- failures


def test_divergence_exits_1_and_keeps_the_file(files, tmp_path):
    out = tmp_path / "div.h5"
    res = run_cli("escape", files / "ex1.npz", "--arch", "diag", "--lr", "0.3", "--delta", "0.1",
               "--until", "max-time", "--max-time", "50", "--delta-ref", "none", "--out", out)
    assert res.exit_code == 1
    assert "diverged at t =" in res.stderr and "--lr" in res.stderr and "Traceback" not in res.output
    tree = read_h5(out, ("escape",))
    assert tree["status"] == "diverged" and "diverged at t =" in tree["message"]
    run = tree["runs"]["0"]
    assert run["status"] == "diverged" and np.isfinite(run["records"]["loss"]).all()
    assert np.isfinite(run["snapshots"]["final"]["w"]).all()


def _interrupt_at(monkeypatch, n, action):
    calls = {"n": 0}
    original = Tracker.checkpoint

    def checkpoint(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            action()
        return original(self, *a, **kw)

    monkeypatch.setattr(Tracker, "checkpoint", checkpoint)


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


@pytest.mark.parametrize("how, code", [("ctrl-c", 130), ("sigterm", 143)])
def test_interruption_writes_a_valid_file(files, tmp_path, monkeypatch, how, code):
    out = tmp_path / "int.h5"
    if how == "ctrl-c":
        _interrupt_at(monkeypatch, 40, _raise_keyboard_interrupt)
    else:
        _interrupt_at(monkeypatch, 40, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with handle_sigterm():  # as ncfkit.cli.main.main wraps every command
        res = run_cli("escape", files / "ex1.npz", *EX1, "--delta", "1e-3", "--delta", "1e-6",
                   "--out", out)
    assert res.exit_code == code, res.output
    tree = read_h5(out, ("escape",))
    assert tree["status"] == "interrupted"
    for key in ("0", "1"):
        run = tree["runs"][key]
        assert run["status"] == "interrupted" and run["steps"] > 0
        assert math.isfinite(run["snapshots"]["final"]["loss"])
