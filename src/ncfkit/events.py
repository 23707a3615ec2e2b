"""The events of a run from small initialization, and its bounded record.

Escape from the origin (Theorems 4 and 10): the first time the training loss falls below
(1 − ε)·𝓛(0). With ε = 1% (the default) the event sits at the start of the drop: the
weights have grown enough to change the loss by 1%, and the time of that crossing scales
like the theory's escape time (T_esc + O(1)).

Plateaus and their saddles (Corollaries 5, 6, 11, 12 for the first; Appendix G for the
saddle-to-saddle phases after it). After escape the loss drops, ‖∇𝓛‖ rises to a peak and
falls again as the trajectory slows down near a saddle, stays there a while, and drops
again. A *plateau* is a stretch where the loss stays within a relative band
[(1 − m)·𝓛_s, (1 + m)·𝓛_s] (m = ``leave_margin``, 1%) around the loss 𝓛_s of its
saddle for a time long compared with the drop that led into it; its *saddle* is the
sample of least ‖∇𝓛‖ inside it (the band's half-width also has a floor of
``loss_atol``·𝓛(0), for losses at round-off). Online, per run and per drop:

1. *candidate*: once ‖∇𝓛‖ ≤ ``saddle_dip`` × its peak since the drop began, the sample
   of least ‖∇𝓛‖ so far is the candidate saddle s;
2. *confirmed*: the candidate's plateau is real once the time since the loss entered the
   band, t − t_in (t_in: first time 𝓛 ≤ (1 + m)·𝓛_s), is at least ``plateau_ratio`` ×
   (t_in − t_½), the time the second half of the drop took (t_½: first time the loss had
   covered half the drop from its top 𝓛_top — 𝓛(0), or the previous saddle's loss — to
   𝓛_s). Measuring the drop from its half-way point, not from its start, makes the rule
   blind to the slow exponential start of an escape;
3. *left*: once 𝓛 < (1 − m)·𝓛_s at a sample that is no new candidate (a lower ‖∇𝓛‖
   moves the candidate first). A confirmed plateau is then final (event ``passed``) and
   the next drop begins with 𝓛_top = 𝓛_s; an unconfirmed candidate was a transient
   slow-down inside the drop and is dropped (the search goes on in the same drop).

While a plateau is confirmed its saddle keeps moving to any sample of smaller ‖∇𝓛‖ (the
band follows it), so a plateau approached slowly (Figure 4: ‖∇𝓛‖ dips to 2.2 at loss 436
on the way to the saddle at 433.765 where it is 0.006) reports its real saddle. A slow-down
between two stages of a drop (Figure 4's loss 574.8 with ‖∇𝓛‖ = 108.5, 10× below the
drop's peak) leaves its 1% band in about a sixth of the time the drop took: not a
plateau. Example 1 (Section 3.1) at δ = 10⁻², the shortest plateau of the test suite,
stays 1.2 drop-halves in its band; δ = 10⁻⁴ 6.8.

A run that reaches ‖∇𝓛‖ ≤ ``stationary_rtol`` × its peak since escape is *stationary*
(converged: nothing more happens in finite time); its candidate there is confirmed and
later samples only move it to a smaller ‖∇𝓛‖ (no plateau starts or ends at round-off). A
run that ends inside an unconfirmed band reports that candidate as an open plateau
(``confirmed`` False). A run with no confirmed plateau but a transient slow-down (Example
1 at δ ≥ 0.05: the loss only shoulders at 0.85–0.94 on its way to the minimum) reports
the first transient as its saddle (:attr:`EventDetector.transient`, left), as a rule
that looks at the dip of ‖∇𝓛‖ alone would. The smallest Hessian eigenvalue at a saddle tells a strict saddle
from a minimum (:mod:`ncfkit.phases`).

``phase`` follows the first saddle only (near origin → escaping → at saddle → past
saddle), as the records' ``phase`` field always has; :attr:`EventDetector.plateaus` holds
every plateau.

:class:`Recorder` keeps samples log-spaced in time plus whenever the loss, ‖∇𝓛‖ or ‖w‖
changed by a set amount, in a fixed-capacity buffer that thins itself (every other
sample dropped, thresholds doubled) when full, so memory is bounded however long a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np

__all__ = ["EventSettings", "Phase", "PHASE_NAMES", "Event", "Plateau", "EventDetector",
           "detect_events", "Recorder"]


@dataclass(frozen=True)
class EventSettings:
    """Thresholds of the event detector; every one is relative, so units do not matter.

    Attributes:
        eps: escape when 𝓛 < (1 − eps)·𝓛(0).
        saddle_dip: a saddle candidate needs ‖∇𝓛‖ ≤ saddle_dip × its peak since the drop began.
        leave_margin: m, the relative half-width of a plateau's band: the loss enters it at
            (1 + m)·𝓛(saddle) and leaves it (the saddle is passed) at (1 − m)·𝓛(saddle).
        plateau_ratio: a plateau is confirmed once it has lasted plateau_ratio × the time
            the second half of the drop into it took.
        loss_atol: added to the band's half-width, relative to 𝓛(0): a loss at the
            round-off floor of a zero-loss minimum is one plateau, not a chain of them.
        stationary_rtol: after escape, a run whose ‖∇𝓛‖ ≤ stationary_rtol × peak has
            reached a stationary point (it stops there; nothing more happens in finite time).
        explode: diverged when 𝓛 is not finite or exceeds explode·max(𝓛(0), 1e-300).
    """

    eps: float = 0.01
    saddle_dip: float = 0.1
    leave_margin: float = 0.01
    plateau_ratio: float = 0.5
    loss_atol: float = 1e-12
    stationary_rtol: float = 1e-10
    explode: float = 1e6

    def __post_init__(self):
        for name in ("eps", "saddle_dip", "leave_margin"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise ValueError(f"{name} must lie in (0, 1) (got {v})")
        if not (math.isfinite(self.plateau_ratio) and self.plateau_ratio >= 0):
            raise ValueError(f"plateau_ratio must be finite and >= 0 (got {self.plateau_ratio})")
        if not self.loss_atol >= 0 or not self.stationary_rtol >= 0 or not self.explode > 1:
            raise ValueError("loss_atol and stationary_rtol must be >= 0 and explode > 1")


class Phase(IntEnum):
    """Where a run stands with respect to its first saddle."""

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


@dataclass(frozen=True)
class Plateau:
    """One plateau of a run (see the module doc).

    Attributes:
        index: 1 for the first plateau after escape, 2 for the next, ...
        saddle: the sample of least ‖∇𝓛‖ inside it.
        enter_time: t_in, the first time the loss was ≤ (1 + m)·𝓛(saddle).
        exit: the first sample with loss < (1 − m)·𝓛(saddle), or None (the run ended there).
        drop_top: 𝓛_top, the loss the drop into it started from.
        drop_half_time: t_½, when the drop into it had covered half of 𝓛_top − 𝓛(saddle).
        drop_peak_grad: the peak of ‖∇𝓛‖ during that drop.
        confirmed: it lasted long enough (or the run became stationary there); False only
            for a run that ended inside a band too young to tell.
        stationary: the run became stationary (converged) on it.
    """

    index: int
    saddle: Event
    enter_time: float
    exit: Event | None
    drop_top: float
    drop_half_time: float
    drop_peak_grad: float
    confirmed: bool
    stationary: bool = False

    @property
    def left(self) -> bool:
        return self.exit is not None

    @property
    def duration(self) -> float | None:
        """Time in the band (None while the run is still in it)."""
        return None if self.exit is None else self.exit.time - self.enter_time

    @property
    def drop_time(self) -> float:
        """t_in − t_½: the second half of the drop into it."""
        return self.enter_time - self.drop_half_time


def _first_crossing(ts: np.ndarray, L: np.ndarray, level: float) -> float:
    """The first time the sampled loss is ≤ ``level``, interpolated linearly between the
    samples around it (the first sample's time if it already is, the last's if never)."""
    below = L <= level
    if not below.any():
        return float(ts[-1])
    i = int(below.argmax())
    if i == 0 or not L[i - 1] > L[i]:
        return float(ts[i])
    frac = (L[i - 1] - level) / (L[i - 1] - L[i])
    return float(ts[i - 1] + min(max(frac, 0.0), 1.0) * (ts[i] - ts[i - 1]))


class EventDetector:
    """Online escape / plateau detection for one run (host floats only).

    Feed it every sample in time order with :meth:`update`; it returns which events this
    sample triggered, so the caller can snapshot the weights there.
    """

    #: samples of the current drop kept for the band-entry look-ups (thinned beyond)
    HISTORY = 4096

    def __init__(self, loss0: float, settings: EventSettings = EventSettings()):
        self.loss0 = float(loss0)
        self.settings = settings
        self.phase = Phase.NEAR_ORIGIN
        self.escape: Event | None = None
        self.plateaus: list[Plateau] = []  # the plateaus left so far
        #: the first candidate of the first drop that was left unconfirmed (index 0): what a
        #: run without any plateau reports as its saddle (the slow-down a dip-only rule finds)
        self.transient: Plateau | None = None
        self.candidate: Event | None = None  # the current saddle candidate
        self.confirmed = False  # the candidate's plateau is confirmed
        self.peak_grad = 0.0  # peak of ‖∇𝓛‖ since escape
        self.drop_peak = 0.0  # ... since the current drop began
        self.drop_top = self.loss0
        self.stationary = False
        self._hist = np.empty((self.HISTORY + 1, 2))  # (t, loss) since the drop began
        self._n = 0
        self._enter = self._half = math.nan  # t_in, t_½ of the current candidate
        self._last: tuple[float, float] | None = None  # (t, loss) of the previous sample

    @property
    def escape_level(self) -> float:
        """The loss level whose first crossing is the escape event."""
        return (1.0 - self.settings.eps) * self.loss0

    @property
    def saddle(self) -> Event | None:
        """The first plateau's saddle; while there is no confirmed plateau, the first
        transient slow-down (:attr:`transient`), else the current candidate."""
        if self.plateaus:
            return self.plateaus[0].saddle
        if self.candidate is not None and self.confirmed:
            return self.candidate
        return self.transient.saddle if self.transient is not None else self.candidate

    @property
    def saddle_left(self) -> bool:
        """The loss has dropped 1% below the loss of :attr:`saddle`."""
        if self.plateaus:
            return True
        return self.transient is not None and not (self.candidate is not None and self.confirmed)

    def current_plateau(self) -> Plateau | None:
        """The plateau the run is in now (confirmed, or an unconfirmed candidate unless the
        run has no plateau but a :attr:`transient`), or None."""
        if self.candidate is None or (not self.confirmed and not self.plateaus and self.transient is not None):
            return None
        return Plateau(len(self.plateaus) + 1, self.candidate, self._enter, None, self.drop_top,
                       self._half, self.drop_peak, self.confirmed, self.stationary)

    def all_plateaus(self) -> list[Plateau]:
        """The plateaus left so far and the current one, if any."""
        cur = self.current_plateau()
        return self.plateaus + ([cur] if cur is not None else [])

    def _band(self, loss_s: float) -> tuple[float, float]:
        """(lower, upper) edge of the band around a saddle's loss."""
        h = self.settings.leave_margin * abs(loss_s) + self.settings.loss_atol * abs(self.loss0)
        return loss_s - h, loss_s + h

    def diverged(self, loss: float) -> bool:
        return not math.isfinite(loss) or loss > self.settings.explode * max(abs(self.loss0), 1e-300)

    def _remember(self, t: float, loss: float) -> None:
        self._hist[self._n] = (t, loss)
        self._n += 1
        if self._n > self.HISTORY:  # keep the first, every other, the last
            keep = np.r_[np.arange(0, self._n - 1, 2), self._n - 1]
            self._hist[: keep.size] = self._hist[keep]
            self._n = keep.size

    def _new_drop(self, t: float, loss: float, top: float, grad_norm: float) -> None:
        self.drop_top = top
        self.drop_peak = grad_norm
        self.candidate = None
        self.confirmed = False
        self._n = 0
        self._remember(t, loss)

    def _locate(self) -> None:
        """t_in and t_½ of the current candidate, from the drop's history."""
        c = self.candidate
        ts, ls = self._hist[: self._n, 0], self._hist[: self._n, 1]
        self._enter = _first_crossing(ts, ls, self._band(c.loss)[1])
        self._half = min(_first_crossing(ts, ls, self.drop_top - 0.5 * (self.drop_top - c.loss)), self._enter)

    def update(self, t: float, step: int, loss: float, grad_norm: float,
               prev: tuple[float, float] | None = None) -> tuple[str, ...]:
        """Advance on one sample; return the events it triggered among ``"escape"``,
        ``"saddle"`` (a new saddle candidate, or a lower point of a confirmed plateau),
        ``"plateau"`` (the candidate's plateau is confirmed), ``"passed"`` (a confirmed
        plateau was left; :attr:`plateaus` has it), ``"dropped"`` (an unconfirmed
        candidate was left: a transient) and ``"stationary"``.

        The escape time is the level crossing interpolated linearly between the previous
        point ``prev`` = (t, loss) (default: the previous sample) and this one; the
        escape event's ``step`` is this sample's.
        """
        s = self.settings
        t, loss, grad_norm = float(t), float(loss), float(grad_norm)
        fired: list[str] = []
        prev = self._last if prev is None else prev
        self._last = (t, loss)
        if self.stationary:  # nothing more happens in finite time: the saddle settles
            if grad_norm < self.candidate.grad_norm:
                self.candidate = Event(t, step, loss, grad_norm)
                return ("saddle",)
            return ()
        if self.phase == Phase.NEAR_ORIGIN:
            if not loss < self.escape_level:
                return ()
            self.phase = Phase.ESCAPING
            t_cross = t
            if prev is not None and prev[1] > loss and prev[0] < t:
                frac = (prev[1] - self.escape_level) / (prev[1] - loss)
                t_cross = prev[0] + min(max(frac, 0.0), 1.0) * (t - prev[0])
            self.escape = Event(t_cross, step, loss, grad_norm)
            fired.append("escape")
            self.drop_top, self.drop_peak = self.loss0, grad_norm
            if prev is not None and prev[0] < t:  # the sample before the crossing
                self._remember(float(prev[0]), float(prev[1]))
            self._remember(t, loss)
        else:
            self._remember(t, loss)
        self.peak_grad = max(self.peak_grad, grad_norm)
        self.drop_peak = max(self.drop_peak, grad_norm)
        c = self.candidate
        lower = c is not None and grad_norm < c.grad_norm  # a new candidate comes first
        if c is not None and not lower and loss < self._band(c.loss)[0]:  # the band is left
            if self.confirmed:
                self.plateaus.append(Plateau(len(self.plateaus) + 1, c, self._enter,
                                             Event(t, step, loss, grad_norm), self.drop_top, self._half,
                                             self.drop_peak, True))
                if len(self.plateaus) == 1:
                    self.phase = Phase.PAST_SADDLE
                fired.append("passed")
                self._new_drop(t, loss, c.loss, grad_norm)
            else:
                if self.transient is None and not self.plateaus:
                    self.transient = Plateau(0, c, self._enter, Event(t, step, loss, grad_norm), self.drop_top,
                                             self._half, self.drop_peak, False)
                self.candidate = None
                fired.append("dropped")
        c = self.candidate
        if grad_norm <= s.saddle_dip * self.drop_peak and (c is None or grad_norm < c.grad_norm):
            self.candidate = Event(t, step, loss, grad_norm)
            fired.append("saddle")
            self._locate()
        if self.candidate is not None and not self.confirmed:
            dur = t - self._enter
            if dur > 0 and dur >= s.plateau_ratio * (self._enter - self._half):
                self._confirm(fired)
        if (self.phase >= Phase.ESCAPING and not self.stationary
                and grad_norm <= s.stationary_rtol * self.peak_grad):
            self.stationary = True
            fired.append("stationary")
            if self.candidate is None or grad_norm < self.candidate.grad_norm:
                self.candidate = Event(t, step, loss, grad_norm)
                if "saddle" not in fired:
                    fired.append("saddle")
                self._locate()
            if not self.confirmed:
                self._confirm(fired)
        return tuple(fired)

    def _confirm(self, fired: list[str]) -> None:
        self.confirmed = True
        fired.append("plateau")
        if not self.plateaus and self.phase == Phase.ESCAPING:
            self.phase = Phase.AT_SADDLE


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
