"""The README's Python example runs as written (issue 12): every ```python block of
README.md, in order, in one namespace, from the repository root; and its ``escape``
numbers are exactly those of the CLI's ``--json`` for the same settings."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
#: The CLI command the README's Python example reproduces.
FIG1_ESCAPE = ["escape", "examples/data/fig1_square.npz", "--hidden", "50", "--act", "square",
               "--reduction", "mean", "--delta", "0.02", "--method", "flow", "--json"]


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    """The README's blocks run one after another, as a notebook runs its cells."""
    assert BLOCKS, "README.md has no ```python block (the notebook example of issue 12)"
    ns: dict = {"__name__": "__readme__"}
    here = Path.cwd()
    import os

    os.chdir(ROOT)
    try:
        for i, block in enumerate(BLOCKS):
            exec(compile(block, f"README.md python block {i + 1}", "exec"), ns)
    finally:
        os.chdir(here)
    return ns


def test_every_python_block_runs(namespace):
    assert namespace


def _strict(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _strict(v) for k, v in o.items() if k not in ("wall_time", "timing")}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    return o


def test_the_escape_example_equals_the_cli(namespace, monkeypatch):
    import ncfkit

    runs = [v for v in namespace.values() if isinstance(v, ncfkit.EscapeResult)]
    assert runs, "the README example makes no ncfkit.escape result"
    monkeypatch.chdir(ROOT)
    res = run_cli(*FIG1_ESCAPE)
    assert res.exit_code == 0, res.output
    cli = _strict(json.loads(res.stdout))
    assert any(_strict(json.loads(json.dumps(r.summary(), default=str))) == cli for r in runs)
