"""Reproducibility (issue 7): the same command with the same seed gives bitwise-identical
JSON and result files on the same machine; another seed gives other random starts.

Result files are compared dataset by dataset and attribute by attribute, byte for byte,
except the provenance entries that must differ between two runs (start and end time, and
the command line, which names the two --out files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from ncfkit.cli.main import cli

rng = np.random.default_rng(3)
X = rng.standard_normal((8, 3))
X /= np.linalg.norm(X, axis=1, keepdims=True)
Y = rng.standard_normal(8)

KKT = ["--hidden", "4", "--act", "square", "--restarts", "6", "--max-steps", "3000"]
ESCAPE = ["--hidden", "4", "--act", "square", "--delta", "0.05", "--delta", "0.1", "--lr", "0.01",
          "--max-time", "20", "--delta-ref", "none", "--max-steps", "3000"]
#: Provenance entries that differ between two runs of one command by design.
VARYING = {"start_time", "end_time", "command_line"}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    return tmp_path / "data.npz"


def _run(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _contents(path: Path) -> dict[str, bytes]:
    """Every dataset and attribute of an HDF5 file as bytes, keyed by path."""
    out: dict[str, bytes] = {}

    def attrs(name, node):
        for k, v in node.attrs.items():
            if not (name == "provenance" and k in VARYING):
                out[f"{name}@{k}"] = v.encode() if isinstance(v, str) else np.asarray(v).tobytes()

    with h5py.File(path, "r") as f:
        attrs("", f)

        def visit(name, node):
            attrs(name, node)
            if isinstance(node, h5py.Dataset):
                out[name] = node[()].tobytes() if node.shape else np.asarray(node[()]).tobytes()

        f.visititems(visit)
    return out


def _assert_same_file(a: Path, b: Path) -> None:
    ca, cb = _contents(a), _contents(b)
    assert ca.keys() == cb.keys()
    differ = [k for k in ca if ca[k] != cb[k]]
    assert not differ, f"entries that differ: {differ}"


def _weights(path: Path, group: str) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {}
        f[group].visititems(lambda n, d: out.__setitem__(n, d[()]) if isinstance(d, h5py.Dataset)
                            and n.split("/")[-1] in ("w", "W1", "W2") else None)
        return out


@pytest.fixture
def starts(monkeypatch) -> list:
    """Every random direction drawn while the fixture is active (the random starts)."""
    import ncfkit.models

    drawn = []
    original = ncfkit.models.random_direction

    def spy(*args, **kwargs):
        u = original(*args, **kwargs)
        drawn.append(u.copy() if isinstance(u, np.ndarray) else u.clone())
        return u

    monkeypatch.setattr(ncfkit.models, "random_direction", spy)
    return drawn


def test_kkt_same_seed_is_bitwise_identical(data, tmp_path, starts):
    a = _run("kkt", data, *KKT, "--seed", 7, "--json", "--out", tmp_path / "a.h5")
    b = _run("kkt", data, *KKT, "--seed", 7, "--json", "--out", tmp_path / "b.h5")
    assert a == b
    _assert_same_file(tmp_path / "a.h5", tmp_path / "b.h5")
    assert len(starts) == 2 and bool((starts[0] == starts[1]).all())


def test_kkt_other_seed_other_starts(data, tmp_path, starts):
    _run("kkt", data, *KKT, "--seed", 7, "--out", tmp_path / "a.h5")
    _run("kkt", data, *KKT, "--seed", 8, "--out", tmp_path / "b.h5")
    assert len(starts) == 2 and not bool((starts[0] == starts[1]).any())
    wa, wb = _weights(tmp_path / "a.h5", "points"), _weights(tmp_path / "b.h5", "points")
    assert any(k not in wb or wa[k].shape != wb[k].shape or not np.array_equal(wa[k], wb[k])
               for k in wa), "different starts converged to bit-identical weights"


def _escape_registered():
    assert "escape" in cli.commands, "`ncfkit escape` is not registered"


def test_escape_same_seed_is_bitwise_identical(data, tmp_path, starts):
    _escape_registered()
    a = json.loads(_run("escape", data, *ESCAPE, "--seed", 3, "--json", "--out", tmp_path / "a.h5"))
    b = json.loads(_run("escape", data, *ESCAPE, "--seed", 3, "--json", "--out", tmp_path / "b.h5"))
    # wall_time is how long the run took, not a result; every float else round-trips exactly
    a.pop("wall_time", None), b.pop("wall_time", None), a.pop("timing", None), b.pop("timing", None)
    assert a == b
    _assert_same_file(tmp_path / "a.h5", tmp_path / "b.h5")
    assert len(starts) == 2 and bool((starts[0] == starts[1]).all())


def test_escape_other_seed_other_start(data, tmp_path, starts):
    _escape_registered()
    _run("escape", data, *ESCAPE, "--seed", 3, "--out", tmp_path / "a.h5")
    _run("escape", data, *ESCAPE, "--seed", 4, "--out", tmp_path / "b.h5")
    assert len(starts) == 2 and not bool((starts[0] == starts[1]).any())
    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb:
        wa, wb = fa["runs/0/snapshots/init/w"][()], fb["runs/0/snapshots/init/w"][()]
    assert not np.array_equal(wa, wb)


@pytest.mark.slow
def test_kkt_two_processes_identical(data, tmp_path):
    """Two separate processes (fresh interpreter, hash seed, allocator state) agree too."""
    env = {k: v for k, v in os.environ.items() if k not in ("NCFKIT_THREADS", "OMP_NUM_THREADS")}
    outs = []
    for seed_env in ("1", "2"):
        env["PYTHONHASHSEED"] = seed_env
        proc = subprocess.run([sys.executable, "-m", "ncfkit", "kkt", str(data), *KKT, "--seed",
                               "7", "--json"], capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
