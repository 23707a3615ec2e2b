"""Interrupts at every phase of ``kkt`` and ``escape`` (issue 17, item 1): Ctrl-C or SIGTERM
at start-up, in the governing-point search, in training, in the post-run Hessians or in
the final write must leave a valid ``--out`` saying how far the run got.

No sleeps or timing: ``NCFKIT_STOP_AT=PHASE`` makes :func:`ncfkit._phases.phase` raise
the interruption on entry to that phase (``NCFKIT_STOP_SIGNAL=TERM`` or ``HUP``: SIGTERM's
or SIGHUP's :class:`~ncfkit._signals.Terminated`), exactly what the signal handler raises when a real
signal lands there (it sends the real signal when a Python handler is installed).
Every case asserts the exit code (130/143), one stderr line, a valid
file that ``ncfkit info`` reads (status ``interrupted``, the phase recorded) and no
temporary file. One real-signal case per command runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ncfkit import _phases
from ncfkit.cli.main import cli
from ncfkit.io import read_h5

rng = np.random.default_rng(0)
X = rng.standard_normal((6, 3))
X /= np.linalg.norm(X, axis=1, keepdims=True)
Y = rng.standard_normal(6)

COMMANDS = {
    "kkt": ["kkt", "data.npz", "--hidden", "3", "--act", "square", "--restarts", "2", "--max-steps", "50",
            "--out", "r.h5"],
    "escape": ["escape", "data.npz", "--hidden", "3", "--act", "square", "--delta", "1e-2", "--init", "kkt",
               "--restarts", "2", "--max-steps", "200", "--out", "r.h5"],
}
#: The phases each command goes through (checked by test_every_phase_is_listed).
PHASES = {
    "kkt": ["load", "search", "write"],
    "escape": ["load", "governing", "train", "hessians", "write"],
}
#: Phases the command does not wrap yet (xfail, reported); none at the moment.
NOT_WIRED: dict[str, set[str]] = {"kkt": set(), "escape": set()}
SIGNALS = {"INT": (130, "interrupted (SIGINT)"), "TERM": (143, "terminated (SIGTERM)"),
           "HUP": (129, "hung up (SIGHUP)")}


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    np.savez(tmp_path / "data.npz", X=X, y=Y)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_phase_is_listed(folder, command):
    res = CliRunner().invoke(cli, COMMANDS[command])
    assert res.exit_code == 0, res.output
    assert list(_phases.phases_entered()) == PHASES[command]


CASES = [pytest.param(c, ph, sig, id=f"{c}-{ph}-{sig}",
                      marks=[pytest.mark.xfail(reason=f"{c} does not wrap phase {ph!r} yet", strict=False)]
                      if ph in NOT_WIRED[c] else [])
         for c in COMMANDS for ph in PHASES[c] for sig in SIGNALS]


@pytest.mark.parametrize("command, where, sig", CASES)
def test_interrupt_at_each_phase_leaves_a_valid_file(folder, monkeypatch, command, where, sig):
    monkeypatch.setenv("NCFKIT_STOP_AT", where)
    monkeypatch.setenv("NCFKIT_STOP_SIGNAL", sig)
    code, line = SIGNALS[sig]

    res = CliRunner().invoke(cli, COMMANDS[command])

    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and res.stdout == ""
    assert res.stderr.strip().splitlines()[-1] == line
    # what stderr holds before it is the progress of the phases that ran; the one line
    # about the interruption is the only one that mentions it
    assert sum(res.stderr.count(w) for _, w in SIGNALS.values()) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["data.npz", "r.h5"]  # nothing half-written
    tree = read_h5(folder / "r.h5", (command,))
    assert tree["status"] == "interrupted"
    assert tree["phase"] == where
    monkeypatch.delenv("NCFKIT_STOP_AT")
    info = CliRunner().invoke(cli, ["info", "r.h5", "--json"])
    assert info.exit_code == 0, info.output
    summary = json.loads(info.stdout)
    assert summary["status"] == "interrupted" and summary["interrupted"] is True


def test_stop_at_the_second_entry(monkeypatch):
    monkeypatch.setenv("NCFKIT_STOP_AT", "x#2")
    monkeypatch.delenv("NCFKIT_STOP_SIGNAL", raising=False)
    _phases.reset()
    with _phases.phase("x"):
        pass
    with pytest.raises(KeyboardInterrupt) as caught:
        with _phases.phase("outer"):
            with _phases.phase("x"):
                pytest.fail("entered")
    assert caught.value.ncfkit_phase == "x" and _phases.current_phase() == "x"
    _phases.reset()
    assert _phases.current_phase() is None


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", ["TERM", "HUP"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_real_sigterm_at_a_phase(folder, command, sig):
    """A real SIGTERM, which the process sends itself on entry to the search / governing
    phase (the CLI installs the SIGTERM handler, so _phases sends the signal rather
    than raising): the handler path end to end in a fresh interpreter."""
    where = {"kkt": "search", "escape": "governing"}[command]
    env = dict(os.environ, NCFKIT_STOP_AT=where, NCFKIT_STOP_SIGNAL=sig, NCFKIT_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "ncfkit", *COMMANDS[command]], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    code, line = SIGNALS[sig]
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == line
    tree = read_h5(folder / "r.h5", (command,))
    assert tree["status"] == "interrupted" and tree["phase"] == where
    assert sorted(p.name for p in folder.iterdir()) == ["data.npz", "r.h5"]


def test_phases_are_per_thread():
    import threading

    seen = []
    _phases.reset()
    with _phases.phase("main-work"):
        t = threading.Thread(target=lambda: seen.append(_phases.current_phase()))
        t.start()
        t.join()
        assert _phases.current_phase() == "main-work"
    assert seen == [None]
