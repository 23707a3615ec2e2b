"""SIGTERM (and SIGHUP) handled like Ctrl-C, so one interruption path covers them all.

A batch scheduler or ``timeout`` stops a job with SIGTERM, a person with Ctrl-C (SIGINT,
which Python turns into :class:`KeyboardInterrupt`). Inside :func:`handle_sigterm`,
SIGTERM raises :class:`Terminated`, a subclass of :class:`KeyboardInterrupt`, so a command
that writes its partial results in ``except KeyboardInterrupt:`` does so for both::

    with handle_sigterm():
        try:
            run()
        except KeyboardInterrupt:
            write_partial_results(interrupted=True)
            raise

The CLI's :func:`~ncfkit.cli.main.main` wraps every command in it; the error policy
(:func:`~ncfkit.cli.policy.guarded`) then exits with 128 + the signal number (130 for
SIGINT, 143 for SIGTERM), the shell's convention for a process ended by a signal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "handle_sigterm", "interrupt_exit_code", "describe", "HANDLED"]

#: Signals :func:`handle_sigterm` turns into :class:`Terminated`: a scheduler's or
#: ``timeout``'s SIGTERM, and SIGHUP (the terminal or ssh session of a run closed).
HANDLED = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class Terminated(KeyboardInterrupt):
    """Raised by SIGTERM (or SIGHUP) inside :func:`handle_sigterm`; ``signum`` says which."""

    signum = signal.SIGTERM

    def __init__(self, *args, signum: int | None = None):
        super().__init__(*args)
        if signum is not None:
            self.signum = signum


@contextlib.contextmanager
def handle_sigterm() -> Iterator[None]:
    """Turn the first SIGTERM or SIGHUP into :class:`Terminated` while the block runs.

    Further SIGTERMs and SIGHUPs are ignored until the block ends, so that writing the
    partial results after the first one is not itself cut short (SIGKILL still stops the
    process). A SIGHUP that is already ignored (``nohup``) stays ignored. The previous
    handlers are restored on exit. Outside the main thread (where Python cannot install
    signal handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        for s in HANDLED:
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(f"terminated by signal {signum}", signum=signum)

    previous = {}
    for s in HANDLED:
        if s != getattr(signal, "SIGHUP", None) or signal.getsignal(s) is not signal.SIG_IGN:
            previous[s] = signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def interrupt_exit_code(exc: BaseException) -> int:
    """128 + the signal that caused ``exc``: 143 for SIGTERM, 129 for SIGHUP, else 130 (SIGINT)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def describe(exc: BaseException) -> str:
    """The one line an interruption prints: ``interrupted (SIGINT)``, ``terminated
    (SIGTERM)`` or ``hung up (SIGHUP)``."""
    signum = int(getattr(exc, "signum", signal.SIGINT))
    if signum == int(signal.SIGINT):
        return "interrupted (SIGINT)"
    if signum == int(getattr(signal, "SIGHUP", -1)):
        return "hung up (SIGHUP)"
    if signum == int(signal.SIGTERM):
        return "terminated (SIGTERM)"
    return f"terminated ({signal.Signals(signum).name})"
