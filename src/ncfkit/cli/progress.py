"""The ``progress`` of :mod:`ncfkit.api` on the console: spinners, notes, the training bar."""

from __future__ import annotations

from typing import Any


class ConsoleProgress:
    """The ``progress(event, value)`` of :mod:`ncfkit.api` on a rich console: a spinner
    per phase, notes and warnings as lines, the KKT ascent in the spinner, training as a
    bar on a terminal (a line every few seconds off one, :mod:`ncfkit._progress`).
    Use as a context manager, so the live displays stop however the call ends."""

    def __init__(self, console, *, restarts: int | None = None, n_deltas: int = 1, quiet: bool | None = None):
        from .options import is_quiet

        self.console, self.restarts, self.n_deltas = console, restarts, n_deltas
        self.quiet = is_quiet() if quiet is None else quiet  # --quiet: warnings only
        self._status = self._bar = self._lines = self._timer = None

    def __call__(self, event: str, value: Any) -> None:
        if self.quiet and event != "warning":
            return
        if event == "status":
            self._stop()
            if self.console.is_terminal:
                self._status = self.console.status(value)
                self._status.start()
            else:  # a log: the phase's name once it has run 2 s, then a line every few seconds
                from .._progress import LineProgress, progress_interval

                self._announce(value, min(2.0, progress_interval()))
                self._lines = LineProgress(value.rstrip("…. "), unit="step")
        elif event in ("info", "note", "warning"):
            prefix = "" if event == "info" else f"[yellow]{event}:[/] "
            self.console.print(prefix + value)
        elif event == "ascent":
            step, running = value
            text = f"{running}/{self.restarts} starts still running" if self.restarts else "running"
            self._update(step, text, f"ascent: step {step}, {text}")
        elif event == "flow":  # the NCF flow from w0: (gradients, their cap, KKT residual)
            evals, cap, residual = value
            text = f"of at most {cap}, residual {residual:.2g}"
            self._update(evals, text, f"NCF flow from w0: {evals} gradients {text}")
        elif event == "training":
            self._training(value)

    def _announce(self, text: str, delay: float) -> None:
        """Print ``text`` after ``delay`` seconds unless the phase has ended by then (a
        short phase, e.g. one that fails on bad input, leaves the log to its one error
        line); at once for ``delay`` 0."""
        import threading

        if delay <= 0:
            self.console.print(text)
            return
        self._timer = threading.Timer(delay, self.console.print, args=(text,))
        self._timer.daemon = True
        self._timer.start()

    def _update(self, count, line_text: str, status_text: str) -> None:
        if self._status is not None:
            self._status.update(status_text)
        elif self._lines is not None:
            self._lines.update(count, line_text)

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
