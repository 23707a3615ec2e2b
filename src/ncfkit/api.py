"""ncfkit's Python API: the work of every command, callable from a notebook.

A :class:`Problem` holds data, network and loss on one device and dtype. The three
analyses take it (or a result) and return a result object:

- :func:`find_kkt_points` -- KKT points of the constrained NCF (eq. 4, Lemma 20);
- :func:`sparsity` -- the zero-preserving subset w_z of a KKT point or weight snapshot
  (Definition 15, Lemmas 16-17, Theorem 18);
- :func:`escape` -- training from δ·w0 beside Theorems 4, 10 and 18.

Every result has ``.summary()`` (the dict ``ncfkit <command> --json`` prints),
``.save(path)`` (the HDF5 layout of :mod:`ncfkit.io`) and ``.plot(path)``; :func:`load`
reads any result file back. :func:`run_command` runs a command from its CLI parameter
names (what ``ncfkit sweep`` and the CLI itself call). Bad input raises
:class:`~ncfkit.errors.InputError` with the one-line message the CLI prints; a failed
computation :class:`~ncfkit.errors.RunError`.

Interruptions: Ctrl-C (or SIGTERM under :func:`ncfkit._signals.handle_sigterm`) during
:func:`find_kkt_points` or :func:`escape` propagates as :class:`KeyboardInterrupt` with
an attribute ``partial``: the result so far, ``status`` ``"interrupted"`` and the phase
reached (:mod:`ncfkit._phases`); :func:`run_command` writes it to ``out`` before
re-raising.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import io
from ._lazy import torch
from ._phases import current_phase, phase, reset_times
from .errors import InputError

__all__ = ["Problem", "find_kkt_points", "sparsity", "escape", "load", "plot", "Result", "KKTResult",
           "SparsityResult", "EscapeResult", "run_command", "COMMAND_PARAMS", "DTYPES"]

DTYPES = ("float64", "float32")
RESULT_SUFFIXES = (".h5", ".hdf5")
MIN_DPI, MAX_DPI = 10, 1200
DEFAULT_RTOL = 1e-9  # of escape(method="flow")

#: ``progress(event, value)``: ``"status"`` (text: a phase starts), ``"info"``, ``"note"``,
#: ``"warning"`` (text for the user), ``"ascent"`` ((step, starts still running)) and
#: ``"training"`` (a :class:`ncfkit.dynamics.Progress` at each checkpoint).
ProgressFn = Callable[[str, Any], None]


def _tell(progress: ProgressFn | None, event: str, value: Any) -> None:
    if progress is not None:
        progress(event, value)


# --------------------------------------------------------------------------- the problem


@dataclass
class Problem:
    """The data, network and loss one computation works on: tensors on one device, or
    numpy arrays on the host (``host``: every gradient from the compiled kernel, so the
    computation never imports torch; :mod:`ncfkit._lazy`).

    Build it with :meth:`load` (a data file) or :meth:`from_arrays`.
    """

    data: Any  # ncfkit.data.Dataset
    arch: Any  # an ncfkit.models architecture
    loss: Any  # ncfkit.losses.Loss
    X: Any
    y: Any
    ytilde: Any
    dtype: Any  # torch.dtype, or numpy's float64/float32 on the host
    device: Any  # torch.device, or "cpu" on the host
    settings: dict  # recorded in every result's provenance
    host: bool = False
    engine: str | None = None  # how gd/flow compute gradients (escape): auto, compiled, torch
    options: dict = field(default_factory=dict, repr=False)  # the options as given

    def array(self, a):
        """A numpy array as the problem's kind of array (dtype, device)."""
        if self.host:
            return np.asarray(a, dtype=self.dtype)
        return torch.as_tensor(np.asarray(a), dtype=self.dtype, device=self.device)

    @classmethod
    def load(cls, path: str | os.PathLike, *, arch: str = "mlp", hidden: int | str | Sequence[int] = 50,
             depth: int = 2, act: str | None = None, loss: str = "square", reduction: str = "sum", seed: int = 0,
             dtype: str = "float64", device: str = "cpu", engine: str | None = None) -> Problem:
        """Load a data file (``.npz`` with X, y; ``.h5``/``.hdf5``; ``.csv``, last column y)
        and build the network and loss.

        Args:
            arch: ``"mlp"`` (a feed-forward net) or ``"diag"`` (the diagonal model of Example 1).
            hidden: hidden widths of the mlp: ``50``, ``"20,20"`` or ``[20, 20]``.
            depth: the power D of the diagonal model.
            act: activation (``relu``, ``leaky:A``, ``square``, ``poly:P``, ``tanh``, …) of an
                architecture that has one; None: ``relu``. Given for one that has none (the
                diagonal model), it is refused: no certificate is defined for that pair.
            loss, reduction: ``square``/``logistic``; ``sum``/``mean``.
            seed: random seed of the KKT restarts and of ``init="random"``.
            dtype, device: ``float64``/``float32``; ``cpu``/``cuda``/``cuda:N``.
            engine: for :func:`escape`: ``auto``/``compiled`` keep the problem as numpy
                arrays on the host when the compiled kernel handles it, ``torch`` (or
                None) builds tensors.

        Raises:
            InputError: a missing or malformed file, a bad option (named as the CLI flag).
        """
        from .io import load_data

        options = dict(arch=arch, hidden=hidden, depth=depth, act=act, loss=loss, reduction=reduction,
                       seed=seed, dtype=dtype, device=device, engine=engine)
        _check_options(options)
        return cls._build(load_data(path), options)

    @classmethod
    def from_arrays(cls, X, y, **options: Any) -> Problem:
        """The same from arrays X (n, d) and y (n,) (numpy, lists or tensors); ``options``
        as in :meth:`load`. The provenance records the sha256 of their float64 bytes."""
        from .data import Dataset, validate_xy

        unknown = sorted(set(options) - set(_PROBLEM_DEFAULTS))
        if unknown:
            raise InputError(f"unknown option {unknown[0]!r}; expected {', '.join(_PROBLEM_DEFAULTS)}")
        options = {**_PROBLEM_DEFAULTS, **options}
        _check_options(options)
        if hasattr(X, "detach"):
            X = X.detach().cpu().numpy()
        if hasattr(y, "detach"):
            y = y.detach().cpu().numpy()
        X, y = validate_xy(X, y, source="<arrays>")
        sha = hashlib.sha256(X.tobytes() + b"|" + y.tobytes()).hexdigest()
        return cls._build(Dataset(X, y, "<arrays>", sha), options)

    @classmethod
    def _build(cls, ds, options: dict) -> Problem:
        from .losses import make_loss
        from .models import ARCHITECTURES, make_architecture

        o = options
        loss = make_loss(o["loss"], o["reduction"])
        takes_act = "act" in getattr(ARCHITECTURES.get(o["arch"]), "options", ("act",))
        act = o["act"] if o["act"] is not None else DEFAULT_ACT
        network = make_architecture(o["arch"], ds.d, _hidden_text(o["hidden"]), act, o["depth"])
        if o["act"] is not None and not takes_act:
            from .clarke import check_certificate_defined

            check_certificate_defined(o["arch"], o["act"])  # the diagonal model has no activation
        try:
            order = network.homogeneity
        except OverflowError:  # poly:P with a huge P: p**l overflows
            order = math.inf
        if order is not None and not math.isfinite(order):
            raise InputError(f"--act {act}: the homogeneity order L_h = 1 + p + … + p^(L-1) of "
                             f"{network.describe()} overflows; use a smaller power P")
        from .validate import check_numeric_range  # X ~ 1e200, leaky:1e308, poly:1e9: refused up front

        check_numeric_range(network, ds.X, ds.y, o["dtype"], ds.source, act if takes_act else None)
        host = False
        engine, device = o["engine"], str(o["device"])
        if engine in ("auto", "compiled", "numpy") and device.strip() == "cpu":
            from .fastgd import compiled_unsupported, numpy_unsupported

            np_dtype = np.dtype(o["dtype"])
            empty = np.empty((0, ds.d), dtype=np_dtype)
            host = (numpy_unsupported(arch=network, X=empty) if engine == "numpy" else
                    compiled_unsupported(arch=network, X=empty, loss_name=o["loss"])) is None
        if host:
            X, y, the_dtype, the_device = ds.X.astype(np_dtype), ds.y.astype(np_dtype), np_dtype.type, "cpu"
        else:
            the_device = _resolve_device(device)
            the_dtype = getattr(torch, o["dtype"])
            X, y = ds.tensors(the_dtype, the_device)
        try:
            loss.check_labels(y)
        except InputError as e:
            raise InputError(f"{ds.source}: {e}") from None
        settings = {"architecture": network.to_dict(), "loss": o["loss"], "reduction": o["reduction"],
                    "seed": o["seed"], "dtype": o["dtype"], "device": str(the_device)}
        return cls(ds, network, loss, X, y, loss.ytilde(y), the_dtype, the_device, settings, host,
                   engine, dict(options))

    def with_engine(self, engine: str | None) -> Problem:
        """This problem for another ``engine`` (see :meth:`load`): the same data and
        options, its arrays rebuilt (itself when the engine is already that)."""
        if engine == self.engine:
            return self
        return type(self)._build(self.data, {**self.options, "engine": engine})

    def require_homogeneous(self) -> None:
        """Raise :class:`InputError` unless the network is homogeneous (the NCF needs it)."""
        if self.arch.homogeneity is None:
            act = getattr(getattr(self.arch, "activation", None), "name", self.options.get("act"))
            raise InputError(f"--act {act}: not homogeneous; the NCF theory needs a homogeneous "
                             "activation (linear, relu, leaky:A, square, sqrelu, poly:P)")

    def __repr__(self) -> str:
        return (f"Problem({self.data.source}: n = {self.data.n}, d = {self.data.d}; {self.arch.describe()}; "
                f"{self.loss.name} loss ({self.loss.reduction}); {self.settings['dtype']} on "
                f"{'host' if self.host else self.device})")


DEFAULT_ACT = "relu"  # of an architecture with an activation, when none is given
_PROBLEM_DEFAULTS = dict(arch="mlp", hidden=50, depth=2, act=None, loss="square", reduction="sum",
                         seed=0, dtype="float64", device="cpu", engine=None)


def _hidden_text(hidden) -> str:
    if isinstance(hidden, str):
        return hidden
    if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
        return str(int(hidden))
    if isinstance(hidden, Sequence) and all(isinstance(h, (int, np.integer)) for h in hidden):
        return ",".join(str(int(h)) for h in hidden)
    raise InputError(f"--hidden {hidden!r}: widths as 50, '20,20' or [20, 20]")


def _check_options(o: dict) -> None:
    if o["dtype"] not in DTYPES:
        raise InputError(f"--dtype {o['dtype']!r}: expected one of {', '.join(DTYPES)}")
    if o["engine"] is not None:
        from .fastgd import ENGINES

        if o["engine"] not in ENGINES:
            raise InputError(f"--engine {o['engine']!r}: expected one of {', '.join(ENGINES)}")
    for name in ("seed", "depth"):
        if isinstance(o[name], bool) or not isinstance(o[name], (int, np.integer)):
            raise InputError(f"--{name} {o[name]!r}: an integer")
    from .validate import check_seed  # numpy and torch both take it (issue 17)

    check_seed(o["seed"])


def _resolve_device(name: str):
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: not a device name (use cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name!r}: only cpu and cuda are supported")
    return device


# --------------------------------------------------------------------------- results


class Result:
    """A result: its record (the nested dict of :mod:`ncfkit.io`'s layout, what the HDF5
    file holds) and, for a result computed in this process, the library's own object
    (``raw``). ``summary()`` is the CLI's ``--json`` object."""

    kind: ClassVar[str] = ""

    def __init__(self, record: dict, raw: Any = None, *, path: str | None = None, problem: Problem | None = None):
        self.record = record
        self.raw = raw
        self.path = path
        self.problem = problem

    @property
    def status(self) -> str:
        """``complete``, or ``interrupted`` / ``diverged`` / ``failed`` (escape)."""
        return str(self.record.get("status", "complete"))

    @property
    def phase(self) -> str | None:
        """Where an interrupted computation stopped (None otherwise)."""
        return self.record.get("phase")

    def summary(self) -> dict:
        """The JSON object ``ncfkit <command> --json`` prints for this result."""
        return io.SUMMARIES[self.kind](self.record)

    def save(self, path: str | os.PathLike, force: bool = False) -> None:
        """Write the result as HDF5 (atomically; an existing file only with ``force``)."""
        io.check_output_path(path, force, RESULT_SUFFIXES)
        io.write_result(path, self.kind, self.record, force=force)

    def plot(self, path: str | os.PathLike, **options: Any):
        """Draw the result's figure into ``path`` (see :func:`plot`)."""
        return plot(self, path, **options)

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return f"<{type(self).__name__} ({self.status}){where}>"


class KKTResult(Result):
    """KKT points of the constrained NCF (``raw``: :class:`ncfkit.kkt.KKTResult`)."""

    kind = "kkt"

    @property
    def points(self) -> list[dict]:
        """The points (sorted by 𝒩 descending) as in the summary."""
        return self.summary()["points"]

    def weights(self, point: int = 0) -> np.ndarray:
        """w* (k,) of point ``point``, unit norm, in ncfkit's flat layout (float64)."""
        points = self.record.get("points", {})
        if str(point) not in points:
            raise InputError(f"point {point} out of range; the result has points 0..{len(points) - 1}")
        return np.asarray(points[str(point)]["w"], dtype=np.float64)


class SparsityResult(Result):
    """The zero-preserving subset of one weight vector (``raw``: (Source, SparsityReport,
    VerifyResult or None) of :mod:`ncfkit.sparsity`)."""

    kind = "sparsity"


class EscapeResult(Result):
    """An escape experiment (``raw``: :class:`ncfkit.escape.EscapeReport`; ``how``: how w0
    was chosen)."""

    kind = "escape"

    def __init__(self, record: dict, raw: Any = None, *, how: str = "", **kw: Any):
        super().__init__(record, raw, **kw)
        self.how = how

    @property
    def runs(self) -> list[dict]:
        """One summary per δ, in the order given (the summary's ``runs``)."""
        return self.summary()["runs"]

    def records(self, run: int = 0) -> dict[str, np.ndarray]:
        """The records of run ``run`` against time (``time``, ``loss``, ``grad_norm``,
        ``w_norm``, ``cos_w_star``, ``wz_ratio``, ``step``, ``phase``): what to plot."""
        runs = self.record.get("runs", {})
        if str(run) not in runs:
            raise InputError(f"run {run} out of range; the result has runs 0..{len(runs) - 1}")
        return {k: np.asarray(v) for k, v in runs[str(run)].get("records", {}).items() if not isinstance(v, str)}


RESULT_CLASSES: dict[str, type[Result]] = {c.kind: c for c in (KKTResult, SparsityResult, EscapeResult)}


def load(path: str | os.PathLike) -> Result:
    """Read a result file (``--out`` of kkt, sparsity, escape) back into its result class.

    Raises:
        InputError: not an ncfkit result file, or a kind without a result class.
    """
    tree = io.read_h5(path)
    kind = tree["ncfkit_kind"]
    if kind not in RESULT_CLASSES:
        raise InputError(f"{path}: an ncfkit {kind!r} file; ncfkit.load reads "
                         f"{', '.join(RESULT_CLASSES)} files")
    return RESULT_CLASSES[kind](tree, path=str(path))


def plot(result: Result | str | os.PathLike, path: str | os.PathLike, *, run: int | None = None,
         scale: str = "layer", dpi: float = 100, palette: bool = True, force: bool = False, layers=None):
    """Draw the figure of a result (or result file) into ``path`` (.png or .pdf) and return
    the :class:`matplotlib.figure.Figure` (:mod:`ncfkit.plot` says what each kind shows;
    ``layers``: escape files, the 1-based layers whose |W_l| are drawn, e.g. ``"1"``).

    Raises:
        InputError: a bad option, an existing ``path`` without ``force``, a result without a figure.
    """
    from .plot import FIGURE_SUFFIXES, figure_for, save_figure

    if not MIN_DPI <= dpi <= MAX_DPI:  # (a figure under one pixel crashes Agg with SIGFPE)
        raise InputError(f"--dpi must be in [{MIN_DPI}, {MAX_DPI}] (got {dpi:g})")
    io.check_output_path(path, force, FIGURE_SUFFIXES)
    if isinstance(result, Result):
        tree = _as_read_back(result)
        tree["_source"] = result.path or f"<{result.kind} result>"
    else:
        tree = io.read_h5(result)
        tree["_source"] = str(result)
    fig = figure_for(tree, run=run, scale=scale, layers=layers)
    fig.set_label(str(tree.get("ncfkit_kind")))  # the kind of result drawn
    save_figure(fig, path, force=force, dpi=dpi, palette=palette)
    return fig


def _as_read_back(result: Result) -> dict:
    """The record exactly as a reader of the saved file sees it (types and all)."""
    if result.path is not None and "ncfkit_kind" in result.record:
        return dict(result.record)
    with tempfile.TemporaryDirectory(prefix="ncfkit-") as tmp:
        path = Path(tmp) / "result.h5"
        io.write_result(path, result.kind, result.record)
        return io.read_h5(path)


# --------------------------------------------------------------------------- kkt


def find_kkt_points(problem: Problem, *, restarts: int = 32, max_steps: int = 20000, tol: float | None = None,
                    active_tol: float = 1e-3, progress: ProgressFn | None = None) -> KKTResult:
    """KKT points of  max 𝒩(u) = ỹᵀH(X; u)  s.t. ‖u‖ = 1: projected gradient ascent from
    ``restarts`` random unit starts (seeded by the problem's seed), each converged start
    certified (first-order residual, Δ, Lemma 20, Lemma 17) and points equal up to the
    network's symmetries merged (:func:`ncfkit.kkt.find_kkt_points`). ``tol`` (the
    relative residual at which a start stops): None is 1e-9, or 8 × the machine epsilon
    where the dtype cannot resolve that (float32).

    Raises:
        InputError: a bad setting (named as its CLI flag), a non-homogeneous network.
    """
    from . import kkt

    for name, value, low in (("--restarts", restarts, 1), ("--max-steps", max_steps, 1)):
        if value < low:
            raise InputError(f"{name} must be >= {low} (got {value})")
    from .validate import check_tolerance, default_tolerance

    if tol is None:
        tol = default_tolerance(problem.settings["dtype"])
    check_tolerance("--tol", tol, problem.settings["dtype"])  # finite, > 0, no finer than the dtype's epsilon
    if not active_tol >= 0:
        raise InputError(f"--active-tol must be >= 0 (got {active_tol})")
    problem.require_homogeneous()
    problem = problem.with_engine(None)  # tensors, as `ncfkit kkt` (the same numbers to the last bit)
    prov = io.provenance(problem.data, **problem.settings, restarts=restarts, max_steps=max_steps, tol=tol)
    _tell(progress, "status", f"ascent from {restarts} starts…")
    try:
        with phase("search"):
            raw = kkt.find_kkt_points(problem.arch, problem.X, problem.ytilde, restarts, problem.settings["seed"],
                                      max_steps, tol, active_tol=active_tol,
                                      progress=None if progress is None else
                                      lambda step, running: progress("ascent", (step, running)))
    except KeyboardInterrupt as e:
        e.partial = KKTResult(_interrupted(e, prov, homogeneity=problem.arch.homogeneity,
                                           num_params=problem.arch.num_params, restarts=restarts,
                                           points={}), problem=problem)
        raise
    prov["end_time"] = io.now_iso()
    return KKTResult(io.kkt_record(raw, problem.arch, prov), raw, problem=problem)


def _interrupted(e: BaseException, prov: dict, **fields: Any) -> dict:
    """The record of a command interrupted before it had a result."""
    where = getattr(e, "ncfkit_phase", None) or current_phase()
    prov = dict(prov, end_time=io.now_iso())
    return io.interrupted_record(prov, where, f"{_signal_name(e)} during {where or 'start-up'}", **fields)


def _signal_name(e: BaseException) -> str:
    from ._signals import describe

    return describe(e)


# --------------------------------------------------------------------------- sparsity


def sparsity(source: KKTResult | str | os.PathLike | None = None, *, point: int = 0, tol: float | None = None,
             weights: str | os.PathLike | None = None, act: str | None = None, verify: bool = False,
             data: Problem | str | os.PathLike | None = None, loss: str | None = None,
             reduction: str | None = None, steps: int = 3000, lr: float | str | None = "auto",
             init_scale: float = 0.1, seed: int = 0, progress: ProgressFn | None = None) -> SparsityResult:
    """Which hidden neurons of a KKT point (or weight snapshot) are zero, the zero-preserving
    subset w_z their weights form (Def. 15, Lemma 16), and the Lemma-17 balance error;
    with ``verify``, a gradient-descent check that w_z stays exactly 0 (Lemma 16).

    Args:
        source: a :class:`KKTResult`, a kkt file (``ncfkit kkt --out``) or a weight ``.npz``.
        point: which point of a KKT source (0 = the largest 𝒩).
        tol: relative threshold of a zero row/column [1e-3 for KKT points, 1e-2 for weights].
        weights: a weight snapshot ``.npz`` (W1 … WL) instead of ``source``; ``act`` its activation.
        verify, data, loss, reduction, steps, lr, init_scale, seed: the check of Lemma 16
            (``data``: a :class:`Problem` or data file [default: the KKT point's own data]).

    Raises:
        InputError: bad input (named as the CLI flag), a network without hidden neurons.
        RunError: every step size of ``verify`` diverged.
    """
    from . import sparsity as sp

    src, loaded_data = sp.resolve_source(source, weights, point, act, data)
    return _sparsity(src, loaded_data, tol=tol, verify=verify, data=data, loss=loss, reduction=reduction,
                     steps=steps, lr=lr, init_scale=init_scale, seed=seed, progress=progress)


def _sparsity(src, loaded_data, *, tol, verify, data, loss, reduction, steps, lr, init_scale, seed,
              progress) -> SparsityResult:
    from . import sparsity as sp

    if steps < 1:
        raise InputError(f"--steps must be >= 1 (got {steps})")
    from .validate import check_seed  # numpy and torch both take it (issue 17)

    check_seed(seed)
    if not 0 < init_scale < float("inf"):
        raise InputError(f"--init-scale must be a positive number (got {init_scale:g})")
    eta = sp.parse_lr(lr)
    started = io.now_iso()
    tol = sp.DEFAULT_TOL[src.kind] if tol is None else tol
    report = sp.analyse_sparsity(src.arch, src.w, tol)
    prov_settings = {"source_file": src.path, "source_sha256": src.sha256, "source_kind": src.kind,
                     "point": src.point, "tol": tol, "architecture": src.arch.to_dict()}
    checked, ds = None, None
    if verify:
        ds, X, y, the_loss = sp.verify_problem(src, data if isinstance(data, Problem) else loaded_data,
                                               None if isinstance(data, Problem) else data, loss, reduction)
        _tell(progress, "status", f"gradient descent, {steps} steps × 3 starts…")
        checked = sp.verify_zero_preserving(src.arch, X, y, the_loss, report.activity.zero,
                                            steps=steps, lr=eta, init_scale=init_scale, seed=seed)
        prov_settings.update(loss=the_loss.name, reduction=the_loss.reduction, steps=steps,
                             lr=checked.lr, init_scale=init_scale, seed=seed)
    prov = io.provenance(ds, **prov_settings)
    prov.update(start_time=started, end_time=io.now_iso())
    return SparsityResult(io.sparsity_record(src, report, checked, prov), (src, report, checked))


# --------------------------------------------------------------------------- escape


def escape(problem: Problem, deltas: Sequence[float], *, init: str = "random", kkt: str | None = None,
           point: int = 0, lr: float = 1e-3, max_time: float | None = None, method: str = "gd",
           rtol: float | None = None, eps: float = 0.01, until: str = "saddle", delta_ref: float | str | None = "auto",
           restarts: int = 32, max_steps: int = 20000, tol: float = 1e-9, governing_budget: float | None = 10.0,
           progress: ProgressFn | None = None) -> EscapeResult:
    """Train from δ·w0 for every δ in ``deltas`` (one batch), detect the escape from the
    origin and the first saddle, and set them beside the theory: escape time (Theorems 4,
    10), the reference path p(t) and its saddle p* (Corollaries 5, 6, 11, 12), the sparsity
    of w_z (Theorem 18). Times are gradient-flow times (GD: step × η).

    Args:
        init: ``"random"`` (a unit direction from the problem's seed), ``"kkt"`` (along w*,
            from ``kkt`` or a fresh KKT search) or a weight ``.npz`` (its direction).
        kkt, point: a kkt file (``ncfkit kkt --out``) and which point of it.
        lr, method, rtol: the GD step η; ``"gd"`` or ``"flow"`` (the adaptive integrator of
            :mod:`ncfkit.flow`, relative tolerance ``rtol`` [1e-9]).
        max_time: gradient-flow time limit [3 × the longest escape time predicted from w0].
        eps: escape is the first time the loss < (1 − eps)·loss(0).
        until: ``"saddle"`` (stop after the first saddle), ``"saddles:K"`` (after the K-th
            plateau), ``"converged"`` or ``"max-time"`` (:func:`ncfkit.dynamics.parse_until`).
        delta_ref: δ of the reference run along w*: a number, ``"auto"`` or None/``"none"``.
        restarts, max_steps, tol: the KKT search and the NCF flow / ascent to w*.
        governing_budget: the cost cap of the governing point (the NCF flow from w0, the
            ascent and the certificate's eigenvalues together), in seconds of gradients at
            the cost model's one-thread rate, or 5% of the run's gradients if more
            (:func:`ncfkit.escape.governing_budget`: a count, the same on every machine);
            None or 0: no cap.

    A run that diverges is reported (``status`` ``"diverged"``), not raised.

    Raises:
        InputError: bad settings (named as the CLI flags).
    """
    from .dynamics import Objective, Settings
    from .escape import default_max_time, find_governing_point, run_escape
    from .escape import governing_budget as cost_cap
    from .events import EventSettings
    from .validate import check_step

    deltas, ref, rtol = _escape_settings(problem, deltas, lr=lr, eps=eps, max_time=max_time, point=point,
                                         delta_ref=delta_ref, restarts=restarts, max_steps=max_steps, tol=tol,
                                         rtol=rtol, method=method, until=until)
    problem = problem.with_engine(problem.engine or "auto")  # as `ncfkit escape` (--engine auto)
    engine = problem.engine
    objective = Objective(problem.arch, problem.X, problem.y, problem.loss)
    if engine in ("compiled", "numpy"):
        from .fastgd import compiled_unsupported, numpy_unsupported

        why = (compiled_unsupported if engine == "compiled" else numpy_unsupported)(objective)
        if why is not None:
            raise InputError(f"--engine {engine}: {why}; use --engine auto or torch")
    prov = io.provenance(problem.data, **problem.settings, init=init, method=method, lr=lr, rtol=rtol,
                         engine=engine, eps=eps, max_time=max_time, until=until, deltas=deltas,
                         delta_ref=str("none" if delta_ref is None else delta_ref), kkt_file=kkt, point=point)
    arch = problem.arch
    known = dict(homogeneity=io._nan(arch.homogeneity), num_params=arch.num_params, method=method,
                 lr=lr, eps=eps, max_time=max_time, runs={})
    if governing_budget is not None and not (math.isfinite(governing_budget) and governing_budget >= 0):
        raise InputError(f"--governing-budget {governing_budget:g}: seconds, finite and >= 0 (0: no cap)")
    run_gradients = len(deltas) * max_time / lr if method == "gd" and max_time is not None else 0.0
    budget = cost_cap(arch, int(problem.X.shape[0]), governing_budget, run_gradients)
    try:
        with phase("governing"):
            w0, gp, how = find_governing_point(init, kkt, point, problem, seed=problem.settings["seed"],
                                               restarts=restarts, max_steps=max_steps, tol=tol,
                                               notify=progress, budget=budget)
    except KeyboardInterrupt as e:
        e.partial = EscapeResult(_interrupted(e, prov, **known), problem=problem)
        raise
    _escape_warnings(arch, method, gp, progress)
    if max_time is None:
        max_time = default_max_time(deltas, gp)
        if max_time is None:
            raise InputError("--max-time is needed: no escape time is predicted here "
                             "(non-homogeneous activation, or a governing KKT point with 𝒩 ≤ 0)")
        prov["max_time"] = known["max_time"] = max_time
        check_step(lr, max_time)
    settings = Settings(max_time=max_time, lr=lr, rtol=rtol, until=until, events=EventSettings(eps=eps),
                        engine=engine)
    try:
        report = run_escape(objective, w0, deltas, settings, method=method, point=gp, delta_ref=ref,
                            observer=None if progress is None else lambda p: progress("training", p),
                            notify=progress, budget=None if budget is None else max(budget // 2, 50))
    except KeyboardInterrupt as e:
        if gp is not None:
            known["kkt"] = io.governing_point_record(gp)
        e.partial = EscapeResult(_interrupted(e, prov, **known), problem=problem, how=how)
        raise
    prov["end_time"] = io.now_iso()
    result = EscapeResult(io.escape_record(report, prov, report.message, phase=report.phase), report,
                          how=how, problem=problem)
    if report.interrupted is not None:
        report.interrupted.partial = result
        raise report.interrupted
    return result


def _escape_settings(problem: Problem, deltas, *, lr, eps, max_time, point, delta_ref, restarts, max_steps,
                     tol, rtol, method, until) -> tuple[list[float], float | str | None, float]:
    """Validate :func:`escape`'s settings with the CLI's messages (each names its flag,
    ranges checked against the problem's dtype); return (the δ as floats, δ_ref as
    :func:`ncfkit.escape.run_escape` takes it, rtol)."""
    from . import validate  # the dtype's range: --rtol, --delta, --lr (issue 17)
    from .dynamics import METHODS, parse_until
    from .escape import check_settings

    try:
        deltas = [float(d) for d in np.atleast_1d(np.asarray(deltas, dtype=np.float64)).ravel()]
    except (TypeError, ValueError):
        raise InputError(f"--delta {deltas!r}: initialization scales are numbers") from None
    ref = check_settings(deltas, lr=lr, eps=eps, max_time=max_time, point=point, delta_ref=delta_ref,
                         restarts=restarts, max_steps=max_steps, tol=tol, rtol=rtol)
    if rtol is None:  # the default, 1e-9 (given explicitly, it must suit the dtype)
        rtol = DEFAULT_RTOL
    else:
        validate.check_tolerance("--rtol", rtol, problem.settings["dtype"])
    # (not --tol: escape's default 1e-9 stands in float32 too; an ascent that cannot meet
    # it leaves an approximate governing point, with a warning)
    scale = validate.output_scale(problem.arch, problem.data.X)
    for d in deltas:
        validate.check_scale("--delta", d, problem.arch.homogeneity, problem.settings["dtype"], scale)
    if max_time is not None:
        validate.check_step(lr, max_time)
    if method not in METHODS:
        raise InputError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    try:
        parse_until(until)
    except ValueError as e:
        raise InputError(f"--until {e}") from None
    return deltas, ref, rtol


def _escape_warnings(arch, method: str, gp, progress: ProgressFn | None) -> None:
    """Say what may go wrong before training: a kink for the adaptive integrator, a
    governing point from which the theory predicts no escape."""
    act = arch.activation
    if method == "flow" and act is not None and act.homogeneous and act.p == 1 and act.alpha != 1.0:
        _tell(progress, "warning", f"--act {act.name} has a kink at 0: the adaptive integrator may need "
                                   "tiny steps wherever a neuron's pre-activation crosses it "
                                   "(--method gd does not)")
    if gp is not None and gp.cert.ncf <= 0:
        _tell(progress, "warning", f"the governing KKT point is {gp.cert.kind} (𝒩 = {gp.cert.ncf:.3g}): "
                                   "the theory predicts no escape")


# --------------------------------------------------------------------------- commands by CLI names

_MODEL = dict(arch="mlp", hidden="50", depth=2, act=None, loss_name="square", reduction="sum", seed=0,
              dtype="float64", device="cpu")

#: The parameters of each command, by their click names, with the CLI's defaults.
COMMAND_PARAMS: dict[str, dict[str, Any]] = {
    "kkt": {**_MODEL, "restarts": 32, "max_steps": 20000, "tol": None, "active_tol": 1e-3},
    "escape": {**_MODEL, "deltas": (), "init": "random", "kkt_file": None, "point": 0, "lr": 1e-3,
               "max_time": None, "method": "gd", "rtol": None, "engine": "auto", "eps": 0.01,
               "until": "saddle", "delta_ref": "auto", "restarts": 32, "max_steps": 20000, "tol": 1e-9,
               "governing_budget": 10.0},
    "sparsity": {"weights": None, "point": 0, "tol": None, "act": None, "verify": False,
                 "training_data": None, "loss_name": None, "reduction": None, "steps": 3000, "lr": "auto",
                 "init_scale": 0.1, "seed": 0},
}


def run_command(command: str, data: str | os.PathLike | None, *, out: str | os.PathLike | None = None,
                force: bool = False, progress: ProgressFn | None = None, **params: Any) -> Result:
    """Run ``ncfkit <command>`` (``kkt``, ``escape``, ``sparsity``) from its click parameter
    names (:data:`COMMAND_PARAMS`; e.g. ``hidden="50"``, ``deltas=(0.01, 0.001)``): validate
    as the CLI does, run, write ``out`` (atomically; an existing file only with ``force``)
    and return the result. ``data`` is the command's positional argument (DATA, or the
    SOURCE of ``sparsity``). An interruption writes what was done to ``out`` (status
    ``interrupted``, the phase reached) and re-raises.

    Raises:
        InputError: an unknown command or parameter, or bad input (the CLI's messages).
    """
    if command not in COMMAND_PARAMS:
        raise InputError(f"unknown command {command!r}; expected one of {', '.join(COMMAND_PARAMS)}")
    defaults = COMMAND_PARAMS[command]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise InputError(f"{command}: unknown parameter {unknown[0]!r}; expected one of {', '.join(defaults)}")
    p = _as_click_would_pass(command, {**defaults, **params})
    if out is not None:
        io.check_output_path(out, force, RESULT_SUFFIXES)
    timing = reset_times()
    if data is not None:
        _tell(progress, "status", f"loading {data}…")
    try:
        result = _RUNNERS[command](data, p, progress)
        result.record["_timing"] = timing  # live: the write below counts too (not stored in the file)
    except KeyboardInterrupt as e:
        if out is not None:
            partial = getattr(e, "partial", None)
            record = partial.record if partial is not None else _interrupted(
                e, io.provenance(None, data_file=None if data is None else str(data), **_plain_params(p)))
            _rescue_write(out, command, record, force)
        raise
    if out is not None:
        _tell(progress, "status", f"writing {out}…")
        _write(out, result, force)
    return result


def _as_click_would_pass(command: str, params: dict) -> dict:
    """``params`` converted by the CLI command's own parameter types (so "50" and 50 both
    work for an int, and a bad value gets click's message, as on the command line)."""
    import click

    from .cli.main import cli

    cmd = cli.commands[command]
    ctx = click.Context(cmd)
    by_name = {param.name: param for param in cmd.params}
    out = dict(params)
    for name, value in params.items():
        param = by_name.get(name)
        if param is None or value is None:
            continue
        if getattr(param, "multiple", False) and not isinstance(value, (list, tuple)):
            value = (value,)
        try:
            out[name] = param.type_cast_value(ctx, value)
        except click.BadParameter as e:
            flag = max(param.opts, key=len) if param.opts else name
            raise InputError(f"Invalid value for '{flag}': {e.message}") from None
    return out


def _plain_params(p: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()}


def _problem(data, p: dict, engine: str | None = None) -> Problem:
    with phase("load"):
        return Problem.load(data, arch=p["arch"], hidden=p["hidden"], depth=p["depth"], act=p["act"],
                            loss=p["loss_name"], reduction=p["reduction"], seed=p["seed"], dtype=p["dtype"],
                            device=p["device"], engine=engine)


def _run_kkt(data, p: dict, progress) -> KKTResult:
    problem = _problem(data, p)
    problem.require_homogeneous()
    return find_kkt_points(problem, restarts=p["restarts"], max_steps=p["max_steps"], tol=p["tol"],
                           active_tol=p["active_tol"], progress=progress)


def _run_escape(data, p: dict, progress) -> EscapeResult:
    from .escape import check_settings

    check_settings(p["deltas"], lr=p["lr"], eps=p["eps"], max_time=p["max_time"], point=p["point"],
                   delta_ref=p["delta_ref"], restarts=p["restarts"], max_steps=p["max_steps"], tol=p["tol"],
                   rtol=p["rtol"])
    problem = _problem(data, p, engine=p["engine"])
    return escape(problem, p["deltas"], init=p["init"], kkt=p["kkt_file"], point=p["point"], lr=p["lr"],
                  max_time=p["max_time"], method=p["method"], rtol=p["rtol"], eps=p["eps"], until=p["until"],
                  delta_ref=p["delta_ref"], restarts=p["restarts"], max_steps=p["max_steps"], tol=p["tol"],
                  governing_budget=p["governing_budget"], progress=progress)


def _run_sparsity(data, p: dict, progress) -> SparsityResult:
    from . import sparsity as sp

    with phase("load"):
        src, loaded = sp.source_from_cli(data, p["weights"], p["point"], p["act"])
    return _sparsity(src, loaded, tol=p["tol"], verify=p["verify"], data=p["training_data"],
                     loss=p["loss_name"], reduction=p["reduction"], steps=p["steps"], lr=p["lr"],
                     init_scale=p["init_scale"], seed=p["seed"], progress=progress)


_RUNNERS = {"kkt": _run_kkt, "escape": _run_escape, "sparsity": _run_sparsity}


def _write(out, result: Result, force: bool) -> None:
    """Write ``out``; an interruption during the write still leaves a valid file (marked
    interrupted, phase ``write``)."""
    try:
        with phase("write"):
            io.write_result(out, result.kind, result.record, force=force)
    except KeyboardInterrupt as e:
        record = dict(result.record, status="interrupted", phase="write",
                      message=f"{_signal_name(e)} while writing {out}")
        _rescue_write(out, result.kind, record, force)
        e.partial = type(result)(record, result.raw, problem=result.problem)
        raise


def _rescue_write(out, kind: str, record: dict, force: bool) -> None:
    """Write an interrupted record with SIGINT and SIGTERM held off (a second signal must
    not cost the file); a file that our own interrupted write left is replaced."""
    own = Path(out).exists() and not force
    main = threading.current_thread() is threading.main_thread()
    held = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        io.write_result(out, kind, record, force=force or own)
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
