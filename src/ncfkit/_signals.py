"""SIGTERM handled like Ctrl-C, so one interruption path covers both.

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
(:func:`~ncfkit.cli.options.guarded`) then exits with 128 + the signal number (130 for
SIGINT, 143 for SIGTERM), the shell's convention for a process ended by a signal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "handle_sigterm", "interrupt_exit_code"]


class Terminated(KeyboardInterrupt):
    """Raised by SIGTERM inside :func:`handle_sigterm`."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def handle_sigterm() -> Iterator[None]:
    """Turn the first SIGTERM into :class:`Terminated` while the block runs.

    Further SIGTERMs are ignored until the block ends, so that writing the partial results
    after the first one is not itself cut short (SIGKILL still stops the process). The
    previous handler is restored on exit. Outside the main thread (where Python cannot
    install signal handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_exit_code(exc: BaseException) -> int:
    """128 + the signal that caused ``exc``: 143 for :class:`Terminated`, else 130 (SIGINT)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))
