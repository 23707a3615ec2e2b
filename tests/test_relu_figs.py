"""examples/relu_flow.py, the tool behind the Figure 5–8 scripts: the run follows the NCF
flow from w0, and a run continued from the flow's point at radius R (``--start``) stands
for the run from δ·w0 (the figures' small-δ runs)."""

from __future__ import annotations

import importlib.util
import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _relu_flow():
    spec = importlib.util.spec_from_file_location("relu_flow", ROOT / "examples" / "relu_flow.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _flow(*args) -> dict:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert _relu_flow().main([str(a) for a in args]) == 0
    return json.loads(buf.getvalue())


def _escape(data, out, *extra):
    r = run_cli("escape", data, "--hidden", "6,6", "--act", "relu", "--reduction", "mean", "--lr", "0.05",
                "--json", "--out", out, *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["runs"][0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-layer ReLU net (L_h = 3) on teacher data: the run from δ = 0.01 directly, and
    the same run continued from the NCF flow's point at radius 0.1 (--start)."""
    d = tmp_path_factory.mktemp("relu_figs")
    data = d / "data.npz"
    r = run_cli("data", "teacher", "-o", data, "--n", "40", "--d", "5", "--hidden", "2,2", "--act", "relu",
                "--seed", "1")
    assert r.exit_code == 0, r.output
    direct = _escape(data, d / "direct.h5", "--delta", "0.01", "--max-time", "4000")
    start = _flow(data, "--hidden", "6,6", "--rho-max", "1", "--start", d / "start.npz", "--radius", "0.1",
                  "--for-delta", "0.01")["start"]
    short = _escape(data, d / "short.h5", "--init", d / "start.npz", "--delta", "0.1", "--max-time", "1000")
    check = _flow(data, d / "direct.h5", f"{d / 'short.h5'}=0.01", "--hidden", "6,6", "--rho-max", "8")
    return d, direct, start, short, check


def test_start_file_is_the_flow_at_the_radius(runs):
    d, _, start, _, _ = runs
    assert start["rho"] == pytest.approx(math.log(0.1 / 0.01), rel=1e-12)
    with np.load(d / "start.npz") as f:
        w = np.concatenate([f[k].ravel() for k in sorted(f.files, key=lambda s: int(s[1:]))])
    assert np.linalg.norm(w) == pytest.approx(0.1, rel=1e-12)
    assert start["time_offset"] > 0


def test_the_run_follows_the_flow_and_the_shortcut_stands_for_it(runs):
    _, direct, start, short, check = runs
    assert direct["escaped"] and short["escaped"]
    # the shortcut's escape plus the skipped flow time is the direct run's escape
    assert short["escape_time"] + start["time_offset"] == pytest.approx(direct["escape_time"], rel=0.02)
    by_file = {Path(r["file"]).stem: r for r in check["runs"]}
    for name in ("direct", "short"):
        esc = by_file[name]["escape"]
        assert esc["cos_flow"] > 0.999  # the direction at escape is the flow's at that radius
        assert esc["rho_run"] == pytest.approx(by_file["direct"]["escape"]["rho_run"], abs=0.05)
    assert by_file["short"]["escape"]["wz_ratio"] == pytest.approx(by_file["direct"]["escape"]["wz_ratio"],
                                                                   rel=0.05, abs=1e-3)
