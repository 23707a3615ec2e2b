"""Named phases of a command, so an interruption can say how far a run got.

A command wraps each stage of its work (loading, the governing-point search, training,
the post-run Hessians, the final write, ...) in :func:`phase`::

    with phase("load"):
        problem = ...
    with phase("train"):
        ...

:func:`current_phase` names the innermost phase running now. When an exception (a
Ctrl-C, a SIGTERM turned into :class:`~ncfkit._signals.Terminated`, an error) leaves a
phase, the exception gets an attribute ``ncfkit_phase`` naming the innermost phase it
left, and :func:`current_phase` keeps returning that name until another phase is
entered, so an ``except KeyboardInterrupt:`` clause outside every phase can still record
where the run stopped (root attribute ``phase`` of an interrupted result file).

Tests stop a command at a chosen phase without sleeps or timing: with the environment
variable ``NCFKIT_STOP_AT=NAME`` the first entry into phase ``NAME`` interrupts the
process as Ctrl-C would (SIGINT, :class:`KeyboardInterrupt`), or as SIGTERM would
(:class:`~ncfkit._signals.Terminated`) when ``NCFKIT_STOP_SIGNAL=TERM`` (``HUP``: as
SIGHUP would): the real signal
when a Python handler for it is installed, else the exception its handler raises. ``NCFKIT_STOP_AT=NAME#K`` stops at
the K-th entry (1-based) of a phase entered several times. The phase counts as entered
(:func:`current_phase` names it) when the interruption is raised.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

__all__ = ["phase", "current_phase", "phases_entered", "reset", "reset_times", "timed"]

class _State(threading.local):
    """Each thread's own phases (a library caller may run commands on several threads)."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.left_by_exception: str | None = None
        self.times: dict[str, float] = {}  # wall seconds per phase name (nested ones counted in each)


_state = _State()
_entries: dict[str, int] = {}  # the whole process's, for NCFKIT_STOP_AT=NAME#K


def _stop_requested(name: str) -> bool:
    target = os.environ.get("NCFKIT_STOP_AT")
    if not target:
        return False
    want, _, k = target.partition("#")
    if want != name:
        return False
    try:
        nth = int(k) if k else 1
    except ValueError:
        nth = 1
    return _entries[name] == nth


def _interrupt() -> None:
    """Raise what the signal would: when this is the main thread and a Python handler is
    installed for it (Python's own for SIGINT, :func:`~ncfkit._signals.handle_sigterm`'s
    for SIGTERM and SIGHUP), by sending the real signal to this process, so the handler
    path itself is exercised; otherwise (no handler: the signal would kill the process)
    by raising the exception that handler raises."""
    import signal
    import time

    from ._signals import Terminated

    name = os.environ.get("NCFKIT_STOP_SIGNAL", "INT").strip().upper().removeprefix("SIG")
    signum = {"TERM": signal.SIGTERM, "15": signal.SIGTERM, "HUP": getattr(signal, "SIGHUP", signal.SIGTERM),
              "1": getattr(signal, "SIGHUP", signal.SIGTERM)}.get(name, signal.SIGINT)
    if threading.current_thread() is threading.main_thread() and callable(signal.getsignal(signum)):
        os.kill(os.getpid(), signum)
        time.sleep(1.0)  # the handler runs (and raises) as soon as the signal arrives
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(f"terminated by signal {int(signum)} (NCFKIT_STOP_AT)", signum=signum)


@contextlib.contextmanager
def phase(name: str) -> Iterator[str]:
    """Run the block as phase ``name`` (see the module docstring); yields ``name``."""
    _state.left_by_exception = None
    _state.stack.append(name)
    _entries[name] = _entries.get(name, 0) + 1
    try:
        with timed(name):
            if _stop_requested(name):
                _interrupt()
            yield name
    except BaseException as e:
        if getattr(e, "ncfkit_phase", None) is None:
            try:
                e.ncfkit_phase = name
            except AttributeError:  # pragma: no cover - exceptions without a __dict__
                pass
        if _state.left_by_exception is None:
            _state.left_by_exception = name
        raise
    finally:
        _state.stack.pop()


@contextlib.contextmanager
def timed(name: str) -> Iterator[str]:
    """Count the block's wall seconds under ``name`` in this thread's timings (the dict
    :func:`reset_times` returns; every phase is timed so, and a part of one, e.g.
    ``governing: flow``, can be too without becoming a phase)."""
    import time

    start = time.perf_counter()
    try:
        yield name
    finally:
        _state.times[name] = _state.times.get(name, 0.0) + time.perf_counter() - start


def current_phase() -> str | None:
    """The innermost phase this thread is running; outside every phase, the phase the
    last exception left (until another phase is entered); else ``None``."""
    if _state.stack:
        return _state.stack[-1]
    return _state.left_by_exception


def phases_entered() -> dict[str, int]:
    """How many times each phase was entered in this process (a copy)."""
    return dict(_entries)


def reset_times() -> dict[str, float]:
    """Start this thread's timings afresh: returns the new dict of wall seconds per name,
    which keeps counting (a phase inside another counts in both)."""
    _state.times = {}
    return _state.times


def reset() -> None:
    """Forget every phase (for a library caller running several commands in one process)."""
    _state.stack.clear()
    _entries.clear()
    _state.left_by_exception = None
    reset_times()
