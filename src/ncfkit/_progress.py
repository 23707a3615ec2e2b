"""Progress of a long run on stderr, on a terminal or not.

On a terminal a rich progress bar redraws in place; off a terminal (a batch job's log, a
pipe) nothing redraws, so :class:`LineProgress` writes one plain line every
``NCFKIT_PROGRESS_SECONDS`` seconds (default 5) instead: a week-long sweep's log shows
that each run is alive and how far it got. :func:`make_progress` picks one::

    with make_progress("escape", total=max_time, unit="t") as progress:
        for ...:
            progress.update(t, "δ = 1e-3, loss 0.52")

Both have ``update(completed, text="")`` and are context managers; ``total`` may be
``None`` (no bar, just the count).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

__all__ = ["make_progress", "LineProgress", "RichProgress", "progress_interval"]


def progress_interval() -> float:
    """Seconds between two plain progress lines (``NCFKIT_PROGRESS_SECONDS``, default 5)."""
    try:
        value = float(os.environ.get("NCFKIT_PROGRESS_SECONDS", "5"))
    except ValueError:
        return 5.0
    return value if value >= 0 and value == value else 5.0


class LineProgress:
    """One line ``LABEL: COMPLETED / TOTAL UNIT (PCT) TEXT, ELAPSED s`` at most every
    ``interval`` seconds, the first once ``interval`` has passed (a short run prints
    none), and a last one at the end if any was printed."""

    def __init__(self, label: str, total: float | None = None, unit: str = "",
                 interval: float | None = None, stream: TextIO | None = None,
                 clock=time.monotonic):
        self.label, self.total, self.unit = label, total, unit
        self.interval = progress_interval() if interval is None else interval
        self.stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._start = self._last = clock()
        self._state: tuple[float, str] | None = None
        self.lines = 0

    def _line(self, completed: float, text: str) -> str:
        done = f"{completed:.6g}"
        if self.total is not None:
            done += f" / {self.total:.6g}"
        if self.unit:
            done = f"{self.unit} = {done}"
        if self.total:
            done += f" ({100 * min(completed / self.total, 1):.0f}%)"
        elapsed = self._clock() - self._start
        rate = f" ({completed / elapsed:.3g} {self.unit or 'units'}/s)" if elapsed > 0 and completed > 0 else ""
        return f"{self.label}: {done}{', ' + text if text else ''}, {elapsed:.0f} s{rate}"

    def update(self, completed: float, text: str = "") -> None:
        self._state = (completed, text)
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._write(completed, text)

    def _write(self, completed: float, text: str) -> None:
        try:
            self.stream.write(self._line(completed, text) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken log must not stop the run
            return
        self.lines += 1

    def close(self) -> None:
        if self.lines and self._state is not None:
            self._write(*self._state)
            self._state = None

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RichProgress:
    """A rich bar on a terminal, with the same ``update(completed, text)``."""

    def __init__(self, label: str, total: float | None = None, unit: str = "", console=None):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.unit = unit
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                             TextColumn("{task.fields[done]}"), TimeElapsedColumn(),
                             console=console, transient=False)
        self._task = self._bar.add_task(label, total=total, done="")
        self._label, self._total = label, total

    def update(self, completed: float, text: str = "") -> None:
        done = f"{self.unit + ' = ' if self.unit else ''}{completed:.4g}"
        if self._total is not None:
            done += f" / {self._total:.4g}"
        self._bar.update(self._task, completed=completed, done=done,
                         description=f"{self._label}{' ' + text if text else ''}")

    def close(self) -> None:
        self._bar.stop()

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_progress(label: str, total: float | None = None, unit: str = "", stream: TextIO | None = None,
                  console=None) -> LineProgress | RichProgress:
    """:class:`RichProgress` when stderr is a terminal (or ``TTY_COMPATIBLE=1``, rich's
    own switch), else :class:`LineProgress`."""
    stream = stream if stream is not None else sys.stderr
    tty = os.environ.get("TTY_COMPATIBLE") == "1" or (hasattr(stream, "isatty") and stream.isatty())
    if tty:
        return RichProgress(label, total, unit, console=console)
    return LineProgress(label, total, unit, stream=stream)
