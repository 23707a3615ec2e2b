"""Faults (issue 7): the error policy for every kind of exception, SIGTERM handled as
Ctrl-C, atomic writes under failure, and real processes interrupted mid-run.

The subprocess tests start ``python -m ncfkit`` with ``TTY_COMPATIBLE=1`` so that rich
draws its progress on the stderr pipe; the test waits until the progress shows the run
under way, sends the signal, and then checks the exit code, the one line that says what
happened, and the files left behind (escape: a valid file marked interrupted holding the
records up to then; kkt: a valid file marked interrupted in the phase it reached).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from ncfkit._signals import Terminated, handle_sigterm, interrupt_exit_code
from ncfkit.cli.main import cli
from ncfkit.cli.options import guarded
from ncfkit.errors import InputError, RunError
from ncfkit.io import atomic_path, read_h5

# --------------------------------------------------------------------------- the policy


def _raises(exc: BaseException):
    @click.command()
    @guarded
    def command():
        raise exc

    return command


POLICY = [
    ("input-error", InputError("--x: bad"), 2, r"^error: --x: bad$"),
    ("run-error", RunError("diverged at t = 3"), 1, r"^error: diverged at t = 3$"),
    ("multi-line-message", InputError("first\nsecond"), 2, r"^error: first second$"),
    ("disk-full", OSError(errno.ENOSPC, "No space left on device", "out.h5"), 1,
     r"No space left on device: out\.h5"),
    ("memory", MemoryError(), 1, r"out of memory"),
    ("torch-cpu-alloc", RuntimeError("DefaultCPUAllocator: can't allocate memory: 6e12 bytes"),
     1, r"out of memory"),
    ("bug", ValueError("oops\nmore"), 1, r"internal error ValueError: oops more .*--debug"),
    ("linalg", np.linalg.LinAlgError("SVD did not converge"), 1,
     r"^error: numerical failure \(LinAlgError: SVD did not converge\): the computation left the floating-point"),
    ("ctrl-c", KeyboardInterrupt(), 130, r"^interrupted \(SIGINT\)$"),
    ("sigterm", Terminated(), 143, r"^terminated \(SIGTERM\)$"),
    ("sighup", Terminated(signum=signal.SIGHUP), 129, r"^hung up \(SIGHUP\)$"),
]


@pytest.mark.parametrize("exc, code, match", [p[1:] for p in POLICY], ids=[p[0] for p in POLICY])
def test_error_policy(exc, code, match):
    result = CliRunner().invoke(_raises(exc), [])
    assert result.exit_code == code
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(match, lines[0]), result.stderr
    assert result.stdout == ""


def test_interrupt_exit_codes():
    assert interrupt_exit_code(KeyboardInterrupt()) == 130
    assert interrupt_exit_code(Terminated()) == 143


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_becomes_terminated_then_is_ignored_until_the_block_ends():
    before = signal.getsignal(signal.SIGTERM)
    seen = []
    with handle_sigterm():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode; never reached
        except KeyboardInterrupt as e:
            seen.append(e)
        os.kill(os.getpid(), signal.SIGTERM)  # while "writing the partial results": ignored
        time.sleep(0.05)
    assert len(seen) == 1 and isinstance(seen[0], Terminated)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_sighup_is_handled_like_sigterm_unless_nohup():
    """A closed terminal or ssh session (SIGHUP) must not lose the run either: exit 129,
    "hung up (SIGHUP)". Under nohup (SIGHUP ignored) it stays ignored."""
    from ncfkit._signals import describe

    before = signal.getsignal(signal.SIGHUP)
    seen = []
    with handle_sigterm():
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(1)
        except KeyboardInterrupt as e:
            seen.append(e)
    assert len(seen) == 1 and isinstance(seen[0], Terminated) and seen[0].signum == signal.SIGHUP
    assert interrupt_exit_code(seen[0]) == 129 and describe(seen[0]) == "hung up (SIGHUP)"
    assert signal.getsignal(signal.SIGHUP) is before
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with handle_sigterm():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_handle_sigterm_off_the_main_thread_is_a_no_op():
    errors = []

    def body():
        try:
            with handle_sigterm():
                pass
        except Exception as e:  # signal.signal raises ValueError off the main thread
            errors.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert errors == []


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("fault", [RuntimeError("fails mid-write"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_atomic_path_fault_leaves_the_old_file(tmp_path, fault):
    target = tmp_path / "res.h5"
    target.write_bytes(b"old")
    with pytest.raises(type(fault)):
        with atomic_path(target, force=True) as tmp:
            Path(tmp).write_bytes(b"half of the new")
            raise fault
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["res.h5"]


def test_atomic_path_never_clobbers_a_file_that_appears_during_the_run(tmp_path):
    """Two jobs with the same --out: the second to finish refuses (exit 2) to replace the
    first's file and keeps its own result beside it."""
    target = tmp_path / "res.h5"
    with pytest.raises(InputError, match=r"appeared during the run; not overwritten; "
                       r"this run.s result is kept in .*res\.1\.h5"):
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(b"mine")
            target.write_bytes(b"the other job's")
    assert target.read_bytes() == b"the other job's"
    assert (tmp_path / "res.1.h5").read_bytes() == b"mine"  # the finished run is not thrown away
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.1.h5", "res.h5"]


def test_atomic_path_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "res.h5") as tmp:
            Path(tmp).write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "res.h5").stat().st_mode & 0o777 == 0o640


# --------------------------------------------------------------------------- real processes

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class Process:
    """``python -m ncfkit ARGS`` with its stderr collected by a thread."""

    def __init__(self, args: list[str], cwd: Path):
        env = dict(os.environ, TTY_COMPATIBLE="1", NCFKIT_THREADS="1", COLUMNS="200")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ncfkit", *map(str, args)], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            # a test runner started in the background may ignore SIGINT; the child must not
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.err = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            self.err += chunk

    def wait_for(self, pattern: str, timeout: float = 240) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = list(re.finditer(pattern, self.err.decode(errors="replace")))
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                pytest.fail(f"ended (exit {self.proc.returncode}) before {pattern!r}: "
                            f"{self.err.decode(errors='replace')[-2000:]}")
            time.sleep(0.1)
        self.proc.kill()
        tail = self.err.decode(errors="replace")[-2000:]
        pytest.fail(f"no {pattern!r} within {timeout} s: {tail}")

    def stop(self, signum: int | None, timeout: float = 120) -> tuple[int, str]:
        """Send ``signum`` (None: the process stops by itself) and wait for the exit."""
        if signum is not None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"still running {timeout} s after signal {signum}")
        self._reader.join(5)
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.err.decode(errors="replace"))
        return code, text


def _last_line(text: str) -> str:
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()][-1].strip()


@pytest.fixture
def long_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 8))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.savez(tmp_path / "data.npz", X=X, y=rng.standard_normal(40))
    return tmp_path / "data.npz"


@posix_only
@pytest.mark.slow
@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted (SIGINT)"),
                                                (signal.SIGTERM, 143, "terminated (SIGTERM)")],
                         ids=["sigint", "sigterm"])
def test_escape_interrupted_mid_run_keeps_a_valid_file(long_data, tmp_path, signum, code, word):
    out = tmp_path / "run.h5"
    proc = Process(["escape", long_data, "--hidden", "10", "--act", "square", "--delta", "1e-6",
                    "--delta", "1e-5", "--lr", "1e-3", "--max-time", "1e9", "--until", "max-time",
                    "--delta-ref", "none", "--out", out], tmp_path)
    # rich's bar: "t = <completed> / <total>"; wait until the runs are well under way
    proc.wait_for(r"t = (?!0 )[0-9.e+-]+ / ")
    time.sleep(1.0)
    exit_code, err = proc.stop(signum)

    assert exit_code == code, err[-2000:]
    assert "Traceback" not in err
    assert _last_line(err) == word
    tree = read_h5(out, ("escape",))  # opens: a valid ncfkit result file
    assert tree["status"] == "interrupted"
    assert tree["provenance"]["end_time"] >= tree["provenance"]["start_time"]
    for key in ("0", "1"):
        run = tree["runs"][key]
        assert run["status"] == "interrupted" and run["steps"] > 0
        records = run["records"]
        assert len(records["time"]) > 1 and np.isfinite(records["loss"]).all()
        assert np.all(np.diff(records["time"]) > 0)
        assert records["step"][-1] <= run["steps"]
        assert np.isfinite(run["snapshots"]["final"]["w"]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "run.h5"]  # no temp file
    info = CliRunner().invoke(cli, ["info", str(out), "--json"])
    assert info.exit_code == 0 and '"interrupted": true' in info.stdout


@posix_only
@pytest.mark.slow
@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted (SIGINT)"),
                                                (signal.SIGTERM, 143, "terminated (SIGTERM)")],
                         ids=["sigint", "sigterm"])
def test_kkt_interrupted_mid_run_leaves_a_valid_file(long_data, tmp_path, monkeypatch, signum, code, word):
    """A real signal during the search: one line, and --out is a valid kkt file marked
    interrupted in phase "search" (issue 17: every phase leaves a file saying how far it
    got; tests/test_fault_phases.py stops at every phase). The process sends the signal to
    itself as it enters the search (ncfkit._phases): the ascent now converges too fast to
    aim a signal at it from outside without depending on timing."""
    monkeypatch.setenv("NCFKIT_STOP_AT", "search")
    monkeypatch.setenv("NCFKIT_STOP_SIGNAL", "INT" if signum == signal.SIGINT else "TERM")
    out = tmp_path / "kkt.h5"
    proc = Process(["kkt", long_data, "--hidden", "200", "--act", "square", "--restarts", "64",
                    "--max-steps", "10000000", "--tol", "2.3e-16", "--out", out], tmp_path)
    exit_code, err = proc.stop(None)

    assert exit_code == code, err[-2000:]
    assert "Traceback" not in err
    assert _last_line(err) == word
    tree = read_h5(out, ("kkt",))
    assert tree["status"] == "interrupted" and tree["phase"] == "search"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "kkt.h5"]
