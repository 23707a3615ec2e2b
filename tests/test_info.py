"""``ncfkit info``: provenance and summary of every kind of result file, text and --json."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from ncfkit.cli.main import cli
from ncfkit.io import sha256_of
from utils import run_cli

PROVENANCE = ("ncfkit_version", "command_line", "data_sha256", "architecture", "loss", "seed",
              "dtype", "device", "start_time", "end_time")


def _info(path) -> dict:
    result = run_cli("info", path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # exactly one JSON object


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("info")
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, 3))
    np.savez(root / "data.npz", X=X / np.linalg.norm(X, axis=1, keepdims=True),
             y=rng.standard_normal(6))
    np.savez(root / "ex1.npz", X=np.eye(2), y=np.array([4.0, 1.0]))  # docs/theory.md §3, Example 1
    res = run_cli("kkt", root / "data.npz", "--hidden", "3", "--act", "square", "--restarts", "4",
               "--seed", "5", "--out", root / "kkt.h5")
    assert res.exit_code == 0, res.output
    res = run_cli("sparsity", root / "kkt.h5", "--out", root / "sparsity.h5")
    assert res.exit_code == 0, res.output
    if "escape" in cli.commands:
        res = run_cli("escape", root / "ex1.npz", "--arch", "diag", "--delta", "1e-3", "--delta",
                   "1e-2", "--lr", "1e-3", "--delta-ref", "none", "--out", root / "escape.h5")
        assert res.exit_code == 0, res.output
    return root


def test_kkt_file(files):
    info = _info(files / "kkt.h5")
    assert info["kind"] == "kkt" and info["status"] == "complete" and not info["interrupted"]
    prov = info["provenance"]
    for key in PROVENANCE:
        assert key in prov, key
    assert prov["data_sha256"] == sha256_of(files / "data.npz")
    assert prov["seed"] == 5 and prov["loss"] == "square" and prov["dtype"] == "float64"
    assert prov["architecture"] == {"arch": "mlp", "d": 3, "hidden": [3], "act": "square"}
    assert "L_h = 3" in info["architecture_description"]
    assert prov["start_time"] <= prov["end_time"]
    with h5py.File(files / "kkt.h5") as f:
        ncfs = [f["points"][str(i)].attrs["ncf"] for i in range(len(f["points"]))]
    assert [p["ncf"] for p in info["points"]] == ncfs and len(ncfs) >= 1
    assert all(p["active_per_layer"] for p in info["points"])
    assert info["summary"]["restarts"] == 4


def test_kkt_text(files):
    result = run_cli("info", files / "kkt.h5")
    assert result.exit_code == 0 and result.stderr == ""
    text = result.stdout
    for word in ("kind", "kkt", "status", "complete", "command line", "data sha256",
                 sha256_of(files / "data.npz"), "architecture", "seed", "5", "dtype", "device",
                 "start time", "end time", "points", "#0", "ncf"):
        assert word in text, word


def test_sparsity_file(files):
    info = _info(files / "sparsity.h5")
    assert info["kind"] == "sparsity"
    assert info["provenance"]["source_sha256"] == sha256_of(files / "kkt.h5")
    assert "zero_preserving_size" in info["summary"]


def test_escape_file(files):
    info = _info(files / "escape.h5")
    assert info["kind"] == "escape" and info["status"] == "complete"
    assert [r["delta"] for r in info["runs"]] == [1e-3, 1e-2]
    assert all(r["records"] > 0 and r["escaped"] for r in info["runs"])
    assert info["groups"]["kkt"]["ncf"] == pytest.approx(8.0)
    assert "escape_time" in run_cli("info", files / "escape.h5").stdout


@pytest.mark.parametrize("marks, status", [({"interrupted": True}, "interrupted"),
                                           ({"status": "interrupted"}, "interrupted"),
                                           ({"status": "diverged"}, "diverged"),
                                           ({}, "complete")])
def test_status_and_interrupted_flag(tmp_path, marks, status):
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        f.attrs["ncfkit_kind"] = "escape"
        for k, v in marks.items():
            f.attrs[k] = v
    info = _info(path)
    assert info["status"] == status and info["interrupted"] == (status == "interrupted")
    text = run_cli("info", path).stdout
    assert ("INTERRUPTED" in text) == (status == "interrupted")


def test_minimal_and_large_files(tmp_path):
    """Only the kind: still a report. A large dataset is described, not read."""
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        f.attrs["ncfkit_kind"] = "future-kind"
        f["big"] = np.zeros((1000, 7))
        f.create_group("runs").create_group("0").create_group("records")["time"] = np.arange(500.0)
    info = _info(path)
    assert info["kind"] == "future-kind" and info["provenance"] == {}
    assert info["runs"] == [{"run": 0, "records": 500}]
    assert run_cli("info", path).exit_code == 0
