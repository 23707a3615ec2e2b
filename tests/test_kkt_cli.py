"""``ncfkit kkt`` through click's CliRunner: the docs/theory.md §4 JSON contract on the Figure-1
data against the 2-layer square closed form (docs/theory.md §3), the HDF5 ``--out`` file and its
provenance, ``--force``, and bad input (exit 2, one line, no traceback).

The Figure-1 run (k = 1050, dense Hessian) is made once per module and shared.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from utils import assert_close, rel_error, run_cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data"
FIG1 = EXAMPLES / "fig1_square.npz"
EXAMPLE1 = EXAMPLES / "example1.npz"
POINT_KEYS = {"ncf", "residual", "delta", "second_order", "kind", "count", "basin_fraction",
              "active_per_layer"}


def _square_closed_form(path: Path) -> float:
    """max 𝒩 = (2/(3√3))·max(λ_max(M), −λ_min(M)), M = Σ ỹ_i x_i x_iᵀ, ỹ = 2y."""
    with np.load(path) as z:
        X, y = z["X"], z["y"]
    lam = np.linalg.eigvalsh((X.T * (2 * y)) @ X)
    return 2 / (3 * math.sqrt(3)) * max(lam[-1], -lam[0])


@pytest.fixture(scope="module")
def fig1(tmp_path_factory):
    """``kkt fig1 --hidden 50 --act square --json --restarts 4 --out kkt.h5``."""
    out = tmp_path_factory.mktemp("kkt_cli") / "kkt.h5"
    result = run_cli("kkt", FIG1, "--hidden", 50, "--act", "square", "--json", "--restarts", 4,
                  "--out", out)
    return result, out


def test_fig1_json_contract_and_closed_form(fig1):
    result, _ = fig1
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1, "stdout must carry exactly one JSON object and nothing else"
    doc = json.loads(lines[0])
    assert isinstance(doc, dict)
    assert {"homogeneity", "num_params", "restarts", "points"} <= set(doc)
    assert (doc["homogeneity"], doc["num_params"], doc["restarts"]) == (3, 20 * 50 + 50, 4)
    points = doc["points"]
    assert points, "no KKT point reported"
    ncfs = [p["ncf"] for p in points]
    assert ncfs == sorted(ncfs, reverse=True)
    for p in points:
        assert POINT_KEYS <= set(p)
        assert p["kind"] in ("positive", "zero", "negative")
        assert isinstance(p["second_order"], bool) and isinstance(p["count"], int)
        assert p["basin_fraction"] == pytest.approx(p["count"] / 4, abs=1e-15)
        assert all(isinstance(k, int) for k in p["active_per_layer"])
        assert len(p["active_per_layer"]) == 1
    assert sum(p["count"] for p in points) <= 4
    top = points[0]
    assert rel_error(top["ncf"], _square_closed_form(FIG1)) <= 1e-6
    assert top["active_per_layer"] == [1]
    assert (top["kind"], top["second_order"]) == ("positive", True)
    assert top["residual"] <= 1e-8 and top["delta"] > 0
    assert "KKT points" in result.stderr  # the table goes to stderr


def test_fig1_out_file_holds_points_and_provenance(fig1):
    result, out = fig1
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    with h5py.File(out, "r") as f:
        assert f.attrs["ncfkit_kind"] == "kkt"
        prov = f["provenance"].attrs
        assert prov["data_sha256"] == hashlib.sha256(FIG1.read_bytes()).hexdigest()
        arch = json.loads(prov["architecture"])
        assert (arch["arch"], arch["hidden"], arch["act"]) == ("mlp", [50], "square")
        assert "ncfkit_version" in prov and "command_line" in prov
        assert len(f["points"]) == len(doc["points"])
        for i, p in enumerate(doc["points"]):
            node = f["points"][str(i)]
            assert node.attrs["ncf"] == p["ncf"] and node.attrs["count"] == p["count"]
            w, W1, W2 = node["w"][()], node["W1"][()], node["W2"][()]
            assert (w.shape, W1.shape, W2.shape) == ((1050,), (50, 20), (1, 50))
            assert_close(np.linalg.norm(w), 1.0, rtol=1e-12, what="‖w‖")
            assert_close(W1, w[:1000].reshape(50, 20), rtol=0, what="W1 vs w")
            assert_close(W2, w[1000:].reshape(1, 50), rtol=0, what="W2 vs w")
    assert [q.name for q in out.parent.iterdir()] == ["kkt.h5"]  # no temporary left


@pytest.mark.parametrize(("reduction", "ncf", "delta"), [("sum", 8.0, 12.0), ("mean", 4.0, 6.0)],
                         ids=["sum", "mean"])
def test_example1_through_the_cli(reduction, ncf, delta):
    """Diagonal model on Example 1: 𝒩 = 8, Δ = 12 (sum); ỹ halves with --reduction mean."""
    result = run_cli("kkt", EXAMPLE1, "--arch", "diag", "--reduction", reduction, "--restarts", 6,
                  "--json")
    assert result.exit_code == 0, result.stderr
    (point,) = json.loads(result.stdout)["points"]
    assert rel_error(point["ncf"], ncf) <= 1e-6 and rel_error(point["delta"], delta) <= 1e-6
    assert (point["count"], point["basin_fraction"]) == (6, 1.0)
    assert "active_per_layer" not in point  # mlp only


def test_without_json_stdout_is_empty():
    result = run_cli("kkt", EXAMPLE1, "--arch", "diag", "--restarts", 2)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "KKT points" in result.stderr


def test_existing_out_is_refused_then_forced(tmp_path):
    out = tmp_path / "kkt.h5"
    out.write_bytes(b"precious")
    args = ["kkt", EXAMPLE1, "--arch", "diag", "--restarts", 2, "--out", out]
    refused = run_cli(*args)
    assert refused.exit_code == 2
    assert "exists" in refused.stderr and "--force" in refused.stderr
    assert out.read_bytes() == b"precious"
    forced = run_cli(*args, "--force")
    assert forced.exit_code == 0, forced.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["ncfkit_kind"] == "kkt"
        assert rel_error(f["points"]["0"].attrs["ncf"], 8.0) <= 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kkt.h5"]


def _nan_data(tmp_path):
    X = np.eye(3)
    X[1, 2] = np.nan
    np.savez(tmp_path / "nan.npz", X=X, y=np.ones(3))
    return tmp_path / "nan.npz"


BAD = {
    "missing-file": (lambda t: ["kkt", t / "nope.npz"], r"nope\.npz.*does not exist"),
    "nan-in-X": (lambda t: ["kkt", _nan_data(t), "--hidden", 3], r"X contains NaN"),
    "logistic-labels": (lambda t: ["kkt", FIG1, "--loss", "logistic"], r"labels in \{-1, \+1\}"),
    "unknown-act": (lambda t: ["kkt", FIG1, "--act", "swish"], r"unknown activation 'swish'"),
    "tanh": (lambda t: ["kkt", FIG1, "--act", "tanh"], r"--act tanh: not homogeneous"),
    "hidden-empty-width": (lambda t: ["kkt", FIG1, "--hidden", "20,,5"],
                           r"--hidden '20,,5': empty width"),
    "restarts-0": (lambda t: ["kkt", FIG1, "--restarts", 0], r"--restarts must be >= 1"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_input_exits_2_with_one_line(case, tmp_path):
    make_args, match = case
    result = run_cli(*make_args(tmp_path), "--json", "--out", tmp_path / "never.h5")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert "\n" not in message, message
    assert message.startswith("error: ")
    assert re.search(match, message), message
    assert result.stdout == ""
    assert not (tmp_path / "never.h5").exists()
