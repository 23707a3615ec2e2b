"""The events of a run from small initialization, and its bounded record.

Escape from the origin (Theorems 4 and 10): the first time the training loss falls below
(1 − ε)·𝓛(0). With ε = 1% (the default) the event sits at the start of the drop: the
weights have grown enough to change the loss by 1%, and the time of that crossing scales
like the theory's escape time (T_esc + O(1)).

The first saddle after escape (Corollaries 5, 6, 11, 12): the loss drops, ‖∇𝓛‖ rises to
a peak and then falls as the trajectory slows down near the saddle p* of the reference
path. The saddle is the point where ‖∇𝓛‖ takes its minimum on that plateau, before the
loss drops again or the run ends. Online, per run:

1. *near origin* until the escape crossing;
2. *escaping*: track the peak ``g_peak`` of ‖∇𝓛‖ since escape;
3. *at saddle* once ‖∇𝓛‖ ≤ ``saddle_dip``·g_peak: the candidate saddle is the sample of
   least ‖∇𝓛‖ so far;
4. *past saddle* once the loss has fallen below (1 − ``leave_margin``)·𝓛(candidate):
   the trajectory has left the plateau, the candidate is final, and a run may stop.

A run whose candidate is never left (it ends on the plateau, or at a minimum) reports the
candidate; the smallest Hessian eigenvalue there tells a strict saddle from a minimum.

:class:`Recorder` keeps samples log-spaced in time plus whenever the loss, ‖∇𝓛‖ or ‖w‖
changed by a set amount, in a fixed-capacity buffer that thins itself (every other
sample dropped, thresholds doubled) when full, so memory is bounded however long a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np

__all__ = ["EventSettings", "Phase", "PHASE_NAMES", "Event", "EventDetector",
           "detect_events", "Recorder"]


@dataclass(frozen=True)
class EventSettings:
    """Thresholds of the event detector; every one is relative, so units do not matter.

    Attributes:
        eps: escape when 𝓛 < (1 − eps)·𝓛(0).
        saddle_dip: the saddle plateau starts when ‖∇𝓛‖ ≤ saddle_dip × its peak since escape.
        leave_margin: the saddle is left when 𝓛 ≤ (1 − leave_margin)·𝓛(saddle).
        stationary_rtol: after escape, a run whose ‖∇𝓛‖ ≤ stationary_rtol × peak has
            reached a stationary point (it stops there; nothing more happens in finite time).
        explode: diverged when 𝓛 is not finite or exceeds explode·max(𝓛(0), 1e-300).
    """

    eps: float = 0.01
    saddle_dip: float = 0.1
    leave_margin: float = 0.01
    stationary_rtol: float = 1e-10
    explode: float = 1e6

    def __post_init__(self):
        for name in ("eps", "saddle_dip", "leave_margin"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise ValueError(f"{name} must lie in (0, 1) (got {v})")
        if not self.stationary_rtol >= 0 or not self.explode > 1:
            raise ValueError("stationary_rtol must be >= 0 and explode > 1")


class Phase(IntEnum):
    NEAR_ORIGIN = 0
    ESCAPING = 1
    AT_SADDLE = 2
    PAST_SADDLE = 3


PHASE_NAMES = {Phase.NEAR_ORIGIN: "near origin", Phase.ESCAPING: "escaping",
               Phase.AT_SADDLE: "at saddle", Phase.PAST_SADDLE: "past saddle"}


@dataclass(frozen=True)
class Event:
    """A sample at which an event happened."""

    time: float
    step: int
    loss: float
    grad_norm: float


class EventDetector:
    """Online escape / first-saddle detection for one run (host floats only).

    Feed it every sample in time order with :meth:`update`; it returns which events this
    sample triggered, so the caller can snapshot the weights there.
    """

    def __init__(self, loss0: float, settings: EventSettings = EventSettings()):
        self.loss0 = float(loss0)
        self.settings = settings
        self.phase = Phase.NEAR_ORIGIN
        self.escape: Event | None = None
        self.saddle: Event | None = None  # the current candidate, final once PAST_SADDLE
        self.peak_grad = 0.0
        self.stationary = False
        self._last: tuple[float, float] | None = None  # (t, loss) of the previous sample

    @property
    def escape_level(self) -> float:
        """The loss level whose first crossing is the escape event."""
        return (1.0 - self.settings.eps) * self.loss0

    def diverged(self, loss: float) -> bool:
        return not math.isfinite(loss) or loss > self.settings.explode * max(abs(self.loss0), 1e-300)

    def update(self, t: float, step: int, loss: float, grad_norm: float,
               prev: tuple[float, float] | None = None) -> tuple[str, ...]:
        """Advance on one sample; return the events it triggered among ``"escape"``,
        ``"saddle"`` (a new, lower candidate), ``"passed"`` and ``"stationary"``.

        The escape time is the level crossing interpolated linearly between the previous
        point ``prev`` = (t, loss) (default: the previous sample) and this one; the
        escape event's ``step`` is this sample's.
        """
        s = self.settings
        fired: list[str] = []
        prev = self._last if prev is None else prev
        self._last = (t, loss)
        if self.phase == Phase.NEAR_ORIGIN and loss < self.escape_level:
            self.phase = Phase.ESCAPING
            t_cross = t
            if prev is not None and prev[1] > loss and prev[0] < t:
                frac = (prev[1] - self.escape_level) / (prev[1] - loss)
                t_cross = prev[0] + min(max(frac, 0.0), 1.0) * (t - prev[0])
            self.escape = Event(t_cross, step, loss, grad_norm)
            fired.append("escape")
        if self.phase == Phase.ESCAPING:
            self.peak_grad = max(self.peak_grad, grad_norm)
            if grad_norm <= s.saddle_dip * self.peak_grad:
                self.phase = Phase.AT_SADDLE
        if self.phase == Phase.AT_SADDLE:
            if self.saddle is None or grad_norm < self.saddle.grad_norm:
                self.saddle = Event(t, step, loss, grad_norm)
                fired.append("saddle")
            elif loss <= (1.0 - s.leave_margin) * self.saddle.loss:
                self.phase = Phase.PAST_SADDLE
                fired.append("passed")
        if (self.phase >= Phase.ESCAPING and not self.stationary
                and grad_norm <= s.stationary_rtol * self.peak_grad):
            self.stationary = True
            fired.append("stationary")
        return tuple(fired)


def detect_events(t, loss, grad_norm, settings: EventSettings = EventSettings(),
                  loss0: float | None = None) -> EventDetector:
    """Run :class:`EventDetector` over sampled sequences (e.g. a closed-form trajectory)
    and return it; ``loss0`` defaults to ``loss[0]``."""
    t, loss, grad_norm = (np.asarray(a, dtype=float) for a in (t, loss, grad_norm))
    det = EventDetector(float(loss[0]) if loss0 is None else loss0, settings)
    for i in range(t.size):
        det.update(float(t[i]), i, float(loss[i]), float(grad_norm[i]))
    return det


# --------------------------------------------------------------------------- recorder


@dataclass(frozen=True)
class _Spacing:
    log_time: float  # keep when t ≥ (1 + log_time)·t_last
    loss_step: float  # ... or |Δ𝓛| ≥ loss_step·scale
    log_ratio: float  # ... or |Δ ln ‖∇𝓛‖| or |Δ ln ‖w‖| ≥ log_ratio


class Recorder:
    """Bounded record of one run: named float fields (and optionally a state vector) at
    the samples the keep rule accepts.

    A sample is kept when it is forced (an event), or when, since the last kept one, the
    time grew by the factor (1 + ``log_time``), the loss moved by ``loss_step``·``scale``,
    or ‖∇𝓛‖ or ‖w‖ (fields ``grad_norm`` and ``w_norm``, if present) changed by the
    factor e^``log_ratio``. When the buffer is full every other unforced sample is
    dropped and the thresholds double, so at most ``capacity`` rows are ever held.
    """

    def __init__(self, fields: tuple[str, ...], capacity: int = 2048, *, scale: float = 1.0,
                 log_time: float = 0.01, loss_step: float = 1e-3, log_ratio: float = 0.05,
                 state_dim: int = 0):
        if capacity < 8:
            raise ValueError("Recorder capacity must be at least 8")
        self.fields = tuple(fields)
        self.capacity = capacity
        self.scale = abs(float(scale)) or 1.0
        self.spacing = _Spacing(log_time, loss_step, log_ratio)
        self._data = np.full((capacity, len(self.fields)), np.nan)
        self._forced = np.zeros(capacity, dtype=bool)
        self._states = np.zeros((capacity, state_dim)) if state_dim else None
        self._n = 0
        self._col = {f: i for i, f in enumerate(self.fields)}
        self.thinned = 0  # how many times the buffer was thinned

    def __len__(self) -> int:
        return self._n

    def _wants(self, values: dict[str, float]) -> bool:
        if self._n == 0:
            return True
        last = self._data[self._n - 1]
        sp = self.spacing
        t, t_last = values["time"], last[self._col["time"]]
        if t >= (1.0 + sp.log_time) * t_last and t > t_last:
            return True
        if "loss" in self._col and abs(values["loss"] - last[self._col["loss"]]) >= sp.loss_step * self.scale:
            return True
        for f in ("grad_norm", "w_norm"):
            if f in self._col:
                a, b = values[f], last[self._col[f]]
                if a > 0 and b > 0 and abs(math.log(a / b)) >= sp.log_ratio:
                    return True
                if (a > 0) != (b > 0) or not math.isfinite(a) or not math.isfinite(b):
                    return True
        return False

    def offer(self, values: dict[str, float], *, force: bool = False, state=None) -> bool:
        """Keep this sample if forced or if the keep rule wants it; return whether kept.
        ``state`` (a vector, or a callable giving one) is stored with it when the
        recorder holds states; a callable is only called for a kept sample."""
        if not (force or self._wants(values)):
            return False
        if self._n == self.capacity:
            self._thin()
        i = self._n
        self._data[i] = [values.get(f, np.nan) for f in self.fields]
        self._forced[i] = force
        if self._states is not None and state is not None:
            self._states[i] = np.asarray(state() if callable(state) else state, dtype=float)
        self._n += 1
        return True

    def _thin(self) -> None:
        """Drop every other unforced sample (the first and last always stay), double the
        thresholds."""
        n = self._n
        idx = np.arange(n)
        free = idx[~self._forced[:n]]
        drop = set(free[1::2].tolist()) - {0, n - 1}
        keep = np.array([i for i in idx if i not in drop])
        if keep.size == n:  # everything forced: drop the oldest half of the forced ones
            keep = np.concatenate([idx[: n // 4], idx[n // 2:]])
        m = keep.size
        self._data[:m] = self._data[keep]
        self._data[m:] = np.nan
        self._forced[:m] = self._forced[keep]
        self._forced[m:] = False
        if self._states is not None:
            self._states[:m] = self._states[keep]
        self._n = m
        sp = self.spacing
        self.spacing = replace(sp, log_time=2 * sp.log_time, loss_step=2 * sp.loss_step,
                               log_ratio=2 * sp.log_ratio)
        self.thinned += 1

    def arrays(self) -> dict[str, np.ndarray]:
        """The kept samples, one array per field (copies)."""
        return {f: self._data[: self._n, j].copy() for f, j in self._col.items()}

    def states(self) -> np.ndarray | None:
        return None if self._states is None else self._states[: self._n].copy()

    @property
    def nbytes(self) -> int:
        """Memory held by the buffers (fixed at construction)."""
        return self._data.nbytes + self._forced.nbytes + (0 if self._states is None else self._states.nbytes)
