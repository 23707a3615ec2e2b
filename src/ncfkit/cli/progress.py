"""The ``progress`` of :mod:`ncfkit.api` on the console: spinners, notes, the training bar."""

from __future__ import annotations

from typing import Any


class ConsoleProgress:
    """The ``progress(event, value)`` of :mod:`ncfkit.api` on a rich console: a spinner
    per phase, notes and warnings as lines, the KKT ascent in the spinner, training as a
    bar on a terminal (a line every few seconds off one, :mod:`ncfkit._progress`).
    Use as a context manager, so the live displays stop however the call ends."""

    def __init__(self, console, *, restarts: int | None = None, n_deltas: int = 1):
        self.console, self.restarts, self.n_deltas = console, restarts, n_deltas
        self._status = self._bar = self._lines = None

    def __call__(self, event: str, value: Any) -> None:
        if event == "status":
            self._stop()
            if self.console.is_terminal:
                self._status = self.console.status(value)
                self._status.start()
            else:  # a log: a line every few seconds (issue 17)
                from .._progress import LineProgress

                self._lines = LineProgress(value.rstrip("…. "), unit="step")
        elif event in ("info", "note", "warning"):
            prefix = "" if event == "info" else f"[yellow]{event}:[/] "
            self.console.print(prefix + value)
        elif event == "ascent" and self._status is not None:
            step, running = value
            self._status.update(f"ascent: step {step}, {running}/{self.restarts} starts still running")
        elif event == "ascent" and self._lines is not None:
            step, running = value
            self._lines.update(step, f"{running}/{self.restarts} starts still running")
        elif event == "training":
            self._training(value)

    def _training(self, p) -> None:
        from .._progress import make_progress

        if self._bar is None:
            self._stop()
            self._bar = make_progress("escape", total=p.max_time, unit="t", console=self.console)
            self._bar.__enter__()
        phases = p.phases[:self.n_deltas]
        counts: dict[str, int] = {}
        for ph in phases:
            counts[ph] = counts.get(ph, 0) + 1
        desc = ", ".join(f"{ph} ×{c}" if len(phases) > 1 else ph for ph, c in counts.items())
        losses = [x for x in p.losses[:self.n_deltas] if x == x]
        text = desc + (f", loss {min(losses):.6g}" if losses else "")
        self._bar.update(min(p.time, p.max_time), text)

    def _stop(self) -> None:
        if self._lines is not None:
            self._lines.close()
            self._lines = None
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ConsoleProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop()
