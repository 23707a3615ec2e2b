"""Training dynamics of the loss 𝓛 (eq. 1) from small initialization: ψ(t, w(0)).

One public entry point, :func:`simulate`, advances a batch of initial points w0 (B, k)
together (several δ, or a run and its reference path) with a method looked up by name in
:data:`METHODS`, and returns one :class:`RunResult` per row: the escape event and every
plateau with its saddle (:mod:`ncfkit.events`), a bounded record of loss, ‖w‖, ‖∇𝓛‖,
cos(w, w*) and ‖ψ_wz‖/‖ψ‖, weight snapshots (init, escape, saddle, saddle_2, …, final)
and, optionally, a bounded sample of the trajectory itself. ``Settings.until`` says how
many plateaus a run follows (:func:`parse_until`).

A method is a function ``method(objective, w0, settings, tracker) -> None``. It owns the
numerics (how w moves); the :class:`Tracker` owns everything else (events, records,
snapshots, divergence, which rows stop). The method's contract:

1. call ``tracker.start(w0, loss, grad)`` once;
2. advance the active rows and call ``tracker.checkpoint(step, t, w, loss, grad)`` now
   and then; it returns a :class:`Verdict` whose ``keep`` mask says which rows go on
   (the method drops the others from its batch) and whose ``change`` (≈ 1 at the
   resolution the records want) lets it size the stretch to the next checkpoint;
3. land a checkpoint on the first step/time at which a row's loss crosses
   ``tracker.escape_levels()`` (GD: :meth:`Tracker.scan` finds it in the per-step
   losses, and the block is re-run up to it; an ODE method: locate the root);
4. stop when ``tracker.active`` is empty or t reaches ``settings.max_time``.

Times are gradient-flow times (GD: step × η). ``gd`` is plain gradient descent
w ← w − η∇𝓛(w), with closed-form gradients (``loss_value_and_grad``), per-step losses
kept on the device and inspected every K steps (no per-step host synchronisation).
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ._lazy import torch
from .arrays import asarray_like, is_numpy, to_numpy
from .events import PHASE_NAMES, Event, EventDetector, EventSettings, Phase, Plateau, Recorder
from .fastgd import ENGINES, make_stepper, resolve_engine
from .flow import gradient_flow
from .ncf import loss_hessian, loss_hvp, loss_value_and_grad

__all__ = ["Objective", "Settings", "Verdict", "Progress", "Snapshot", "RunResult",
           "Simulation", "Tracker", "gradient_descent", "METHODS", "simulate",
           "min_hessian_eigenvalue", "HessianExtremes", "hermite_interpolate", "STOP_REASONS",
           "parse_until", "UNTIL_HELP", "snapshot_name"]

#: Why a run stopped.
STOP_REASONS = ("passed saddle", "stationary", "max time", "diverged", "interrupted", "failed")

#: What ``Settings.until`` (and ``escape --until``) accepts.
UNTIL_HELP = ("saddle (stop once past the first saddle; = saddles:1), saddles:K (follow the run through "
              "K plateaus and stop once past the K-th), converged (run until the gradient vanishes, "
              "‖∇𝓛‖ ≤ 1e-10 × its peak, or --max-time) or max-time (run to --max-time)")


def parse_until(until: str) -> int | None:
    """How many plateaus a run follows before it stops: ``"saddle"`` → 1,
    ``"saddles:K"`` → K (an integer ≥ 1), ``"converged"`` and ``"max-time"`` → None
    (no plateau stops the run; it ends stationary or at ``max_time``).

    Raises:
        ValueError: anything else, with a message naming what is accepted.
    """
    if not isinstance(until, str):
        raise ValueError(f"{until!r}: expected saddle, saddles:K, converged or max-time")
    if until in ("converged", "max-time"):
        return None
    if until == "saddle":
        return 1
    head, sep, tail = until.partition(":")
    if head == "saddles" and sep:
        try:
            k = int(tail.strip())
        except ValueError:
            raise ValueError(f"{until!r}: K in saddles:K must be a whole number >= 1 "
                             f"(got {tail!r})") from None
        if k < 1:
            raise ValueError(f"{until!r}: K in saddles:K must be >= 1 (got {k})")
        return k
    raise ValueError(f"{until!r}: expected saddle, saddles:K, converged or max-time")


def snapshot_name(index: int) -> str:
    """The snapshot name of the saddle of plateau ``index`` (1-based): ``saddle`` for the
    first (the name it has always had), ``saddle_2``, ``saddle_3``, ... after it."""
    return "saddle" if index == 1 else f"saddle_{index}"


@dataclass(frozen=True)
class Objective:
    """The training loss 𝓛(w) = Σ_i ℓ(H(x_i; w), y_i) of one network on one data set."""

    arch: object
    X: torch.Tensor
    y: torch.Tensor
    loss: object

    def value_and_grad(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(𝓛(w), ∇𝓛(w)) for w of shape (..., k), one forward and one backward pass."""
        return loss_value_and_grad(self.arch, self.X, self.y, self.loss, w)


@dataclass(frozen=True)
class Settings:
    """How far and how finely to integrate.

    Attributes:
        max_time: gradient-flow time at which every run stops.
        lr: the GD step η (time per step).
        rtol, atol: error tolerances of adaptive methods (unused by ``gd``).
        block: the longest stretch of GD steps between two checkpoints.
        until: ``"saddle"`` stops a run once it has passed its first saddle;
            ``"saddles:K"`` once it has passed its K-th plateau (:mod:`ncfkit.events`);
            ``"converged"`` runs a row until it is stationary (‖∇𝓛‖ ≤
            ``events.stationary_rtol`` × its peak) or ``max_time``, and says which;
            ``"max-time"`` runs every row to ``max_time`` (a stationary row stops too).
        capacity: rows of each run's scalar record.
        state_capacity: trajectory samples kept per run (0: none); fewer when
            2·k·8·state_capacity bytes would exceed ``state_memory``.
        state_memory: bytes per run for the trajectory sample (w and ∇𝓛 at each).
        events: thresholds of the event detector.
        engine: how ∇𝓛 is computed, by ``gd`` and ``flow`` alike (:mod:`ncfkit.fastgd`):
            ``auto``, ``compiled`` or ``torch``.
    """

    max_time: float
    lr: float = 1e-3
    rtol: float = 1e-9
    atol: float = 1e-12
    block: int = 4096
    until: str = "saddle"
    capacity: int = 2048
    state_capacity: int = 256
    state_memory: int = 16 << 20  # per run: 51 samples at k = 157,000 (the wide L), 256 up to k = 4,096
    events: EventSettings = field(default_factory=EventSettings)
    engine: str = "auto"

    def __post_init__(self):
        if not (math.isfinite(self.max_time) and self.max_time > 0):
            raise ValueError(f"max_time must be finite and > 0 (got {self.max_time})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"the step size must be finite and > 0 (got {self.lr})")
        parse_until(self.until)
        if self.block < 1:
            raise ValueError("block must be >= 1")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)} (got {self.engine!r})")


@dataclass(frozen=True)
class Verdict:
    """What a checkpoint tells the method: which active rows go on, and how much the
    records changed since the previous checkpoint (1 ≈ the record's resolution)."""

    keep: np.ndarray  # bool, one per active row
    change: float


@dataclass(frozen=True)
class Progress:
    """Handed to the observer at every checkpoint (cheap: host floats only)."""

    time: float
    max_time: float
    step: int
    phases: tuple[str, ...]  # per row, in the order of w0
    losses: tuple[float, ...]
    active: int


@dataclass(frozen=True)
class Snapshot:
    """The weights of one run at one sample."""

    time: float
    step: int
    loss: float
    grad_norm: float
    w: np.ndarray


@dataclass(frozen=True)
class RunResult:
    """One row of :func:`simulate`.

    ``records`` holds arrays ``step, time, loss, grad_norm, w_norm, cos_w_star,
    wz_ratio, phase`` (the last three NaN where w* or w_z were not given);
    ``trajectory`` holds ``time`` (m,), ``w`` (m, k) and ``grad`` (m, k) or is None.
    """

    status: str  # one of STOP_REASONS
    message: str
    escape: Event | None
    saddle: Event | None
    phase: str
    saddle_left: bool  # the loss dropped again after the saddle candidate
    snapshots: dict[str, Snapshot]
    records: dict[str, np.ndarray]
    trajectory: dict[str, np.ndarray] | None
    steps: int
    final_time: float
    loss0: float
    divergence_time: float | None = None
    #: every plateau (:class:`ncfkit.events.Plateau`), the last one open if the run ended in
    #: it; the saddle of plateau i has the snapshot :func:`snapshot_name` (i)
    plateaus: tuple[Plateau, ...] = ()
    #: a run without a confirmed plateau: its first slow-down (reported as ``saddle``)
    transient: Plateau | None = None


@dataclass(frozen=True)
class Simulation:
    runs: list[RunResult]
    method: str
    settings: Settings
    wall_time: float
    interrupted: KeyboardInterrupt | None = None  # what stopped the runs early, if anything
    engine: str | None = None  # what computed ∇𝓛 (compiled / torch)

    @property
    def status(self) -> str:
        """``interrupted``, ``diverged`` or ``failed`` (the integrator could not meet its
        tolerance) if any run was, else ``complete``."""
        for s in ("interrupted", "diverged", "failed"):
            if any(r.status == s for r in self.runs):
                return s
        return "complete"


RECORD_FIELDS = ("step", "time", "loss", "grad_norm", "w_norm", "cos_w_star", "wz_ratio", "phase")


class Tracker:
    """Events, records, snapshots and stopping for a batch of runs (see module doc)."""

    def __init__(self, objective: Objective, batch: int, settings: Settings, *,
                 w_star: torch.Tensor | None = None, wz_mask: torch.Tensor | None = None,
                 observer: Callable[[Progress], None] | None = None):
        self.objective = objective
        self.settings = settings
        self.B = batch
        self._w_star_np = None if w_star is None else to_numpy(w_star).astype(np.float64)
        if self._w_star_np is not None:
            self._w_star_np = self._w_star_np / np.linalg.norm(self._w_star_np)
        wz = None if wz_mask is None else to_numpy(wz_mask).astype(bool)
        self._wz_np = None if wz is None or not wz.any() else wz
        self.observer = observer
        self.active = np.arange(batch)  # rows of the original batch still running
        self.detectors: list[EventDetector] = []
        self.records: list[Recorder] = []
        self.states: list[Recorder | None] = []
        self.snapshots: list[dict[str, Snapshot]] = [{} for _ in range(batch)]
        self.status: list[str | None] = [None] * batch
        self.message = [""] * batch
        self.stop_step = [0] * batch
        self.stop_time = [0.0] * batch
        self.divergence_time: list[float | None] = [None] * batch
        self._pending_divergence: dict[int, tuple[int, float, str]] = {}
        self._before: dict[int, tuple[float, float]] = {}  # row -> (t, loss) one step before
        self._last = None  # (step, t, w, values, grad) at the previous checkpoint, active rows
        self._last_loss = [float("nan")] * batch
        self._candidate: list[Snapshot | None] = [None] * batch  # the current saddle candidate
        self._kept: list[dict[str, Snapshot]] = [{} for _ in range(batch)]
        self._stop_after = parse_until(settings.until)

    # ------------------------------------------------------------------ helpers
    def _values(self, W: np.ndarray, loss: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """(B_active, 5): loss, ‖∇𝓛‖, ‖w‖, cos(w, w*), ‖w_z‖/‖w‖, in numpy on the host
        (numpy's small ops cost a fraction of torch's)."""
        W, grad = W.astype(np.float64, copy=False), grad.astype(np.float64, copy=False)
        wn = np.linalg.norm(W, axis=-1)
        out = np.full((W.shape[0], 5), np.nan)
        out[:, 0] = loss
        out[:, 1] = np.linalg.norm(grad, axis=-1)
        out[:, 2] = wn
        with np.errstate(divide="ignore", invalid="ignore"):
            if self._w_star_np is not None:
                out[:, 3] = W @ self._w_star_np / wn
            if self._wz_np is not None:
                out[:, 4] = np.linalg.norm(W[:, self._wz_np], axis=-1) / wn
        return out

    def _snap(self, row: int, name: str, step: int, t: float, v: np.ndarray, w_row: np.ndarray) -> None:
        self.snapshots[row][name] = Snapshot(t, step, float(v[0]), float(v[1]), w_row.copy())

    def escape_levels(self) -> np.ndarray:
        """Per active row: the loss level whose first crossing is the escape event
        (−inf once a row has escaped)."""
        return np.array([self.detectors[r].escape_level if self.detectors[r].phase == Phase.NEAR_ORIGIN
                         else -np.inf for r in self.active])

    # ------------------------------------------------------------------ protocol
    def start(self, w, loss, grad) -> None:
        s = self.settings
        w, loss, grad = to_numpy(w), to_numpy(loss), to_numpy(grad)
        vals = self._values(w, loss, grad)
        k = w.shape[-1]
        n_states = min(s.state_capacity, s.state_memory // (16 * k))
        n_states = n_states if n_states >= 8 else 0  # too big a network for a useful sample
        for r in range(self.B):
            loss0 = float(vals[r, 0])
            self.detectors.append(EventDetector(loss0, s.events))
            self.records.append(Recorder(RECORD_FIELDS, s.capacity, scale=loss0))
            self.states.append(Recorder(("time", "loss", "grad_norm", "w_norm"), n_states,
                                        scale=loss0, log_time=0.05, loss_step=5e-3, log_ratio=0.1,
                                        state_dim=2 * k) if n_states else None)
        self._last = (0, 0.0, w.copy(), vals, grad.copy())
        for r in range(self.B):
            self._offer(r, 0, 0.0, vals[r], w[r], grad[r], force=True)
            self._snap(r, "init", 0, 0.0, vals[r], w[r])

    def _offer(self, r, step, t, v, w_row, g_row, force=False) -> None:
        det = self.detectors[r]
        values = {"step": step, "time": t, "loss": v[0], "grad_norm": v[1], "w_norm": v[2],
                  "cos_w_star": v[3], "wz_ratio": v[4], "phase": int(det.phase)}
        self.records[r].offer(values, force=force)
        self._last_loss[r] = float(v[0])
        if self.states[r] is not None:
            self.states[r].offer(values, force=force,
                                 state=lambda: np.concatenate([w_row, g_row]))

    def scan(self, step0: int, losses: np.ndarray, t_of_step: Callable[[int], float]) -> int | None:
        """Inspect per-step losses ``losses`` (m, B_active) of iterates step0 … step0+m−1.

        Registers divergences; returns the smallest offset j ≥ 1 at which a row that has
        not escaped crosses its escape level (the method then re-runs to step0 + j and
        checkpoints there), or None.
        """
        levels = self.escape_levels()
        m = losses.shape[0]
        scale = np.array([max(abs(self.detectors[r].loss0), 1e-300) for r in self.active])
        bad = ~np.isfinite(losses) | (losses > self.settings.events.explode * scale)
        first_bad = np.where(bad.any(0), bad.argmax(0), m)
        below = losses[1:] < levels  # offset 0 was the previous checkpoint
        first_cross = np.where(below.any(0), below.argmax(0) + 1, m) if m > 1 else np.full(len(levels), m)
        first_cross = np.where(first_cross < first_bad, first_cross, m)
        cut = int(first_cross.min()) if first_cross.size else m
        horizon = cut if cut < m else m
        for i, r in enumerate(self.active):  # the iterate just before the next checkpoint
            self._before[r] = (t_of_step(step0 + horizon - 1), float(losses[horizon - 1, i]))
        for i, r in enumerate(self.active):
            j = int(first_bad[i])
            if j < horizon and r not in self._pending_divergence:
                why = "the loss became NaN/Inf" if not np.isfinite(losses[j, i]) else \
                    f"the loss exceeded {self.settings.events.explode:g} × 𝓛(0)"
                self._pending_divergence[r] = (step0 + j, t_of_step(step0 + j), why)
        return cut if cut < m else None

    def checkpoint(self, step: int, t: float, w, loss, grad) -> Verdict:
        """Record a sample of every active row (``w`` (B_active, k), ``loss``, ``grad``:
        numpy arrays or tensors, never written in place afterwards by the method);
        decide which rows go on."""
        s = self.settings
        w, loss, grad = to_numpy(w), to_numpy(loss), to_numpy(grad)
        vals = self._values(w, loss, grad)
        _, _, w_prev, v_prev, _ = self._last
        keep = np.ones(len(self.active), dtype=bool)
        change = 0.0
        for i, r in enumerate(self.active):
            det = self.detectors[r]
            v = vals[i]
            if r in self._pending_divergence or det.diverged(float(v[0])) or not np.isfinite(v[1]):
                j, tj, why = self._pending_divergence.pop(
                    r, (step, t, "the loss became NaN/Inf" if not np.isfinite(v[0]) or not np.isfinite(v[1])
                        else f"the loss exceeded {s.events.explode:g} × 𝓛(0)"))
                self._stop(r, "diverged", f"diverged at t = {tj:.6g} (step {j}): {why}",
                           self._last[0], self._last[1])
                self.divergence_time[r] = tj
                self._snap(r, "final", self._last[0], self._last[1], v_prev[i], w_prev[i])
                keep[i] = False
                continue
            fired = det.update(t, step, float(v[0]), float(v[1]), prev=self._before.pop(r, None))
            # escape / plateau / passed / stationary samples are kept for good; saddle
            # candidates come every checkpoint on the way into a plateau and are not.
            self._offer(r, step, t, v, w[i], grad[i], force=bool(set(fired) - {"saddle", "dropped"}))
            if "escape" in fired:
                self._snap(r, "escape", step, t, v, w[i])
            if "passed" in fired:  # the plateau just left: its saddle is the last candidate
                self.snapshots[r][snapshot_name(len(det.plateaus))] = self._candidate[r]
                self._candidate[r] = None
            if "dropped" in fired and det.transient is not None and "transient" not in self._kept[r]:
                self._kept[r]["transient"] = self._candidate[r]  # the run's first slow-down
            if "saddle" in fired:
                self._candidate[r] = Snapshot(t, step, float(v[0]), float(v[1]), w[i].copy())
            change = max(change, self._change(v_prev[i], v, det.loss0))
            k = self._stop_after
            if "passed" in fired and k is not None and len(det.plateaus) >= k:
                which = "the first saddle" if k == 1 else f"saddle {k}"
                self._stop(r, "passed saddle", f"passed {which} at t = {t:.6g}", step, t)
            elif "stationary" in fired:
                conv = " (converged)" if s.until == "converged" else ""
                self._stop(r, "stationary",
                           f"reached a stationary point{conv} at t = {t:.6g} (‖∇𝓛‖ = {v[1]:.3g})", step, t)
            if self.status[r] is not None:
                self._snap(r, "final", step, t, v, w[i])
                keep[i] = False
        self.active = self.active[keep]
        if bool(keep.all()):  # the method never writes into w or grad in place
            self._last = (step, t, w, vals, grad)
        else:
            self._last = (step, t, w[keep], vals[keep], grad[keep])
        if self.observer is not None:
            self.observer(self.progress(t, step))
        return Verdict(keep, change)

    @staticmethod
    def _change(a: np.ndarray, b: np.ndarray, loss0: float) -> float:
        """Change between two samples in units of twice the record's finest resolution
        (loss: 2e-3·𝓛(0); ‖∇𝓛‖ and ‖w‖: 10% in ratio)."""
        c = abs(b[0] - a[0]) / (2e-3 * max(abs(loss0), 1e-300))
        for j in (1, 2):
            if a[j] > 0 and b[j] > 0 and np.isfinite(a[j]) and np.isfinite(b[j]):
                c = max(c, abs(math.log(b[j] / a[j])) / 0.1)
        return float(c)

    def _stop(self, r: int, status: str, message: str, step: int, t: float) -> None:
        self.status[r] = status
        self.message[r] = message
        self.stop_step[r] = step
        self.stop_time[r] = t

    @staticmethod
    def _phase_name(det: EventDetector) -> str:
        n = len(det.plateaus)
        if n == 0:
            return PHASE_NAMES[det.phase]
        return f"at saddle {n + 1}" if det.confirmed else ("past saddle" if n == 1 else f"past saddle {n}")

    def progress(self, t: float, step: int) -> Progress:
        phases = tuple(self.status[r] if self.status[r] is not None else self._phase_name(det)
                       for r, det in enumerate(self.detectors))
        return Progress(t, self.settings.max_time, step, phases, tuple(self._last_loss), len(self.active))

    def finish(self, status: str = "max time", message: str | None = None) -> None:
        """Stop every row still active (``max time``, ``interrupted`` or ``failed``), at
        the last checkpoint; ``message`` overrides the default wording."""
        step, t, w_last, v_last, g_last = self._last
        for i, r in enumerate(self.active):
            if self.status[r] is not None:  # stopped by a checkpoint cut short by Ctrl-C
                continue
            rec = self.records[r]
            if not len(rec) or rec.arrays()["step"][-1] != step:  # the last sample stays
                self._offer(r, step, t, v_last[i], w_last[i], g_last[i], force=True)
            msg = message or (f"reached --max-time {self.settings.max_time:g}" if status == "max time"
                              else f"interrupted at t = {t:.6g} (step {step})")
            if status == "max time" and message is None and self.settings.until not in ("max-time", "saddle"):
                msg += (f" before converging (‖∇𝓛‖ = {v_last[i][1]:.3g})" if self.settings.until == "converged"
                        else f" after {len(self.detectors[r].plateaus)} of {self._stop_after} saddle(s)")
            self._stop(r, status, msg, step, t)
            self._snap(r, "final", step, t, v_last[i], w_last[i])
        self.active = self.active[:0]

    def results(self) -> list[RunResult]:
        out = []
        for r in range(self.B):
            det = self.detectors[r]
            st = self.states[r]
            traj = None
            if st is not None and len(st):
                a, S = st.arrays(), st.states()
                k = S.shape[1] // 2
                traj = {"time": a["time"], "w": S[:, :k], "grad": S[:, k:]}
            rec = self.records[r].arrays()
            rec["step"] = rec["step"].astype(np.int64)
            rec["phase"] = rec["phase"].astype(np.int8)
            plateaus = tuple(det.all_plateaus())
            snaps = dict(self.snapshots[r])
            cur = det.current_plateau()
            cand = self._candidate[r]
            if cur is not None and cand is not None and cand.step == cur.saddle.step:
                snaps[snapshot_name(cur.index)] = cand
            elif not det.plateaus and det.transient is not None and "transient" in self._kept[r]:
                snaps["saddle"] = self._kept[r]["transient"]
            out.append(RunResult(
                status=self.status[r] or "max time", message=self.message[r],
                escape=det.escape, saddle=det.saddle, phase=PHASE_NAMES[det.phase],
                saddle_left=det.saddle_left, snapshots=snaps,
                records=rec, trajectory=traj, steps=self.stop_step[r],
                final_time=self.stop_time[r], loss0=det.loss0,
                divergence_time=self.divergence_time[r], plateaus=plateaus, transient=det.transient))
        return out


# --------------------------------------------------------------------------- methods


def gradient_descent(objective: Objective, w0: torch.Tensor, settings: Settings, tracker: Tracker) -> None:
    """Plain GD w ← w − η∇𝓛(w) on every row of ``w0`` (B, k), t = step·η, with the steps
    computed by ``settings.engine`` (:func:`ncfkit.fastgd.make_stepper`).

    Steps run in blocks of K (1 ≤ K ≤ ``settings.block``) by the engine (the compiled
    kernel, or torch with the losses kept on the device); after a block one look at the
    per-step losses (:meth:`Tracker.scan`) decides. When a row crossed its escape level
    inside the block, the block is re-run from its start up to that step (same iterates),
    so the escape snapshot is exact. K halves when a checkpoint saw more change than the
    record resolution, and doubles when it saw little, so events and records are resolved
    without a host sync every step.
    """
    lr = settings.lr
    stepper = make_stepper(objective, lr, settings.engine)
    n_steps = int(math.floor(settings.max_time / lr + 1e-9))
    w = w0.copy() if is_numpy(w0) else w0.clone()
    L, g = objective.value_and_grad(w)
    tracker.start(w, L, g)
    step, K = 0, 1
    while tracker.active.size and step < n_steps:
        # early samples log-spaced: K ≤ 1 + step/32 keeps ≥ 32 checkpoints per e-fold
        K = max(1, min(K, settings.block, n_steps - step, 1 + step // 32))
        w_start, L_start, g_start = w, L, g
        w, L, g, losses = stepper(w, L, g, K)  # losses of iterates step … step+K−1
        cut = tracker.scan(step, losses, lambda s: s * lr)
        if cut is not None:  # land the checkpoint on the escape step
            w, L, g, _ = stepper(w_start, L_start, g_start, cut)
            step += cut
        else:
            step += K
        verdict = tracker.checkpoint(step, step * lr, w, L, g)
        if not bool(verdict.keep.all()):
            keep = verdict.keep if is_numpy(w) else torch.as_tensor(verdict.keep, device=w.device)
            w, L, g = w[keep], L[keep], g[keep]
        if verdict.change > 1.0:
            K = max(1, K // 2)
        elif verdict.change < 0.25:
            K = 2 * K
    if tracker.active.size:
        tracker.finish("max time")


#: Dynamics methods by name (the CLI's ``--method`` choices come from here).
METHODS: dict[str, Callable[[Objective, torch.Tensor, Settings, Tracker], None]] = {
    "gd": gradient_descent,
    "flow": gradient_flow,
}


def simulate(objective: Objective, w0: torch.Tensor, settings: Settings, *, method: str = "gd",
             w_star: torch.Tensor | None = None, wz_mask: torch.Tensor | None = None,
             observer: Callable[[Progress], None] | None = None) -> Simulation:
    """Train every row of ``w0`` (B, k) with ``method`` until ``settings.max_time``, or
    until the row has passed its first saddle (``until="saddle"``) or its K-th plateau
    (``until="saddles:K"``), reached a stationary point, or diverged. Every plateau met
    on the way is in :attr:`RunResult.plateaus` (:mod:`ncfkit.events`).

    Args:
        objective: the training loss.
        w0: initial points, one per row (already scaled by δ).
        settings: time horizon, step size / tolerances, record sizes, event thresholds.
        method: a key of :data:`METHODS`.
        w_star: the governing KKT direction (for cos(w, w*)), or None.
        wz_mask: boolean (k,) mask of the zero-preserving subset w_z, or None.
        observer: called with a :class:`Progress` at every checkpoint.

    Returns:
        A :class:`Simulation` with one :class:`RunResult` per row. A KeyboardInterrupt
        during the run is caught: the rows still running end with status
        ``interrupted`` at their last checkpoint, and the result is returned.

    Raises:
        KeyError: unknown method.
        ValueError: ``settings.engine`` is ``compiled`` where it cannot run.
    """
    if method not in METHODS:
        raise KeyError(f"unknown dynamics method {method!r}; expected one of {', '.join(METHODS)}")
    if w0.ndim != 2:
        raise ValueError(f"w0 must have shape (B, k); got {tuple(w0.shape)}")
    tracker = Tracker(objective, w0.shape[0], settings, w_star=w_star, wz_mask=wz_mask,
                      observer=observer)
    start = _time.perf_counter()
    engine = resolve_engine(objective, settings.engine)
    interrupted = None
    try:
        METHODS[method](objective, w0, settings, tracker)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM under ncfkit._signals.handle_sigterm
        if tracker._last is None:
            raise
        tracker.finish("interrupted")
        interrupted = e
    return Simulation(tracker.results(), method, settings, _time.perf_counter() - start, interrupted,
                      engine)


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class HessianExtremes:
    """The extreme eigenvalues of ∇²𝓛 at a stationary point, and what they say.

    ``kind``: ``strict saddle`` (λ_min < −tol), ``minimum`` (λ_min > tol) or
    ``degenerate`` (|λ_min| ≤ tol: the second-order test cannot tell; e.g. the saddles of
    square-activation nets, flat to second order along w_z), tol = rtol·max|λ|.
    """

    min: float
    max: float
    method: str  # dense / lanczos
    rtol: float = 1e-7
    residual: float = 0.0  # achieved max ‖Hv − λv‖/‖H‖ of the two eigenpairs (ncfkit.spectra)

    @property
    def kind(self) -> str:
        tol = self.rtol * max(abs(self.min), abs(self.max), 1e-300)
        if self.min < -tol:
            return "strict saddle"
        return "minimum" if self.min > tol else "degenerate"


def min_hessian_eigenvalue(objective: Objective, w, dense_max: int | None = None,
                           chunk: int | None = None, max_products: int | None = None) -> HessianExtremes:
    """Smallest (and largest) eigenvalue of ∇²𝓛(w) at one point (k,) (numpy array or
    tensor) by :func:`ncfkit.spectra.extreme_eigs`: dense for k ≤ ``dense_max`` (default
    :func:`ncfkit.spectra.dense_max`; :func:`ncfkit.ncf.loss_hessian`, ``chunk`` rows at a
    time, refused up front when it would not fit in memory), else Lanczos on closed-form
    Hessian-vector products, both ends from one Krylov space, no k × k matrix, at most
    about ``max_products`` of them (None: until converged); ``residual`` is the accuracy
    achieved."""
    from .spectra import extreme_eigs

    o = objective

    def matmat(V):
        return to_numpy(loss_hvp(o.arch, o.X, o.y, o.loss, w, asarray_like(V, w))).astype(np.float64)

    spec = extreme_eigs(matmat, w.shape[-1], num=2, which="BE", dense=dense_max, tol=1e-8,
                        dense_matrix=lambda: to_numpy(loss_hessian(o.arch, o.X, o.y, o.loss, w, chunk=chunk)),
                        max_products=max_products)
    return HessianExtremes(float(spec.values.min()), float(spec.values.max()), spec.method,
                           residual=spec.residual)


def hermite_interpolate(t_query: np.ndarray, t: np.ndarray, w: np.ndarray, dw: np.ndarray) -> np.ndarray:
    """Cubic Hermite interpolation of samples w(t_i) with derivatives dw(t_i) (for a
    gradient flow dw = −∇𝓛); queries outside [t_0, t_{m−1}] give NaN rows."""
    t_query = np.atleast_1d(np.asarray(t_query, dtype=float))
    out = np.full((t_query.size, w.shape[1]), np.nan)
    if t.size < 2:
        return out
    i = np.clip(np.searchsorted(t, t_query, side="right") - 1, 0, t.size - 2)
    h = t[i + 1] - t[i]
    s = ((t_query - t[i]) / np.where(h > 0, h, 1.0))[:, None]
    h = h[:, None]
    h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
    h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
    val = h00 * w[i] + h10 * h * dw[i] + h01 * w[i + 1] + h11 * h * dw[i + 1]
    inside = (t_query >= t[0]) & (t_query <= t[-1])
    out[inside] = val[inside]
    return out
