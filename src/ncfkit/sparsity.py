"""Sparsity of feed-forward weights: zero-preserving subsets (Definition 15, Lemma 16),
the balance of a KKT point (Lemma 17), and exact zero preservation (Theorem 18).

For hidden layer l (1 ≤ l ≤ L−1) neuron j owns its incoming weights W_l[j, :] and its
outgoing weights W_{l+1}[:, j]. A set of neurons whose incoming AND outgoing weights are
all zero is a zero-preserving subset w_z: gradient flow and gradient descent started with
w_z = 0 keep it exactly 0 (Lemma 16). For a KKT point the neurons with zero row and
column form one (proof of Theorem 18).

:func:`analyse_sparsity` bundles the classification, the mask of w_z and the balance error
of one weight vector into a :class:`SparsityReport`. :func:`verify_zero_preserving` checks
Lemma 16 empirically: plain gradient descent on the training loss 𝓛 from a random small
start whose w_z entries are exactly 0 must keep them exactly 0 (bit for bit) while the
other weights move; as negative controls, starts that zero only the incoming weights
(rows) or only the outgoing weights (columns) of the same neurons must not all stay 0.

Why two controls: W_l[j,:] receives the gradient (W_{l+1}[:,j]ᵀ b) σ'(z_j) h_{l-1}, with
z_j = W_l[j,:] h_{l-1} = 0 when the row is 0. For activations with σ'(0) = 0 (ReLU with
torch's convention, and every p ≥ 2: square, sqrelu, poly:P) a zero row therefore stays
0 whatever the column holds, so the rows-only control is itself preserved there. The
outgoing weights W_{l+1}[:,j] receive b σ(z_j)ᵀ, which is nonzero as soon as the row is,
so the columns-only control leaves 0 for every activation (unless a ReLU neuron is dead on
all samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._lazy import torch
from .arrays import Array, is_numpy, nonzero, to_numpy, xp, zeros_like_bool
from .errors import InputError, RunError
from .losses import Loss
from .models import Architecture
from .ncf import loss_value, loss_value_and_grad

__all__ = ["NeuronActivity", "neuron_activity", "zero_preserving_mask", "balance_error",
           "SparsityReport", "analyse_sparsity", "ControlRun", "VerifyResult",
           "verify_zero_preserving", "PARTS", "Source", "DEFAULT_TOL", "load_kkt_source",
           "load_weights_source", "source_from_cli", "resolve_source", "parse_lr", "training_data",
           "verify_problem"]

#: Which weights of the zero neurons a mask holds: all of w_z, or one half of it.
PARTS = ("both", "rows", "columns")


@dataclass(frozen=True)
class NeuronActivity:
    """Per hidden layer: which neurons are zero (row and column small), which active,
    and which are lopsided (row small but column not, or the reverse)."""

    widths: tuple[int, ...]
    zero: tuple[tuple[int, ...], ...]
    active: tuple[tuple[int, ...], ...]
    lopsided: tuple[tuple[int, ...], ...]
    threshold: float

    @property
    def active_per_layer(self) -> list[int]:
        return [len(a) for a in self.active]


def neuron_activity(arch: Architecture, w: Array, tol: float = 1e-3) -> NeuronActivity:
    """Classify hidden neurons of one weight vector ``w`` (k,).

    A row or column counts as zero when its norm is at most ``tol`` times the largest
    neuron norm sqrt(‖row‖² + ‖col‖²) in the whole network.
    """
    norms = [(to_numpy(r), to_numpy(c)) for r, c in arch.neuron_norms(w)]
    scale = max((float(np.sqrt(r**2 + c**2).max()) for r, c in norms), default=0.0)
    threshold = tol * scale
    zero, active, lopsided = [], [], []
    for rows, cols in norms:
        r_small, c_small = rows <= threshold, cols <= threshold
        zero.append(tuple(nonzero(r_small & c_small)))
        active.append(tuple(nonzero(~r_small & ~c_small)))
        lopsided.append(tuple(nonzero(r_small ^ c_small)))
    return NeuronActivity(tuple(arch.neuron_layers or ()), tuple(zero), tuple(active), tuple(lopsided),
                          threshold)


def zero_preserving_mask(arch: Architecture, zero: tuple[tuple[int, ...], ...], *,
                         like: Array | None = None, part: str = "both") -> Array:
    """Flat boolean mask (k,) of w_z: incoming and outgoing weights of the ``zero`` neurons.

    ``zero[l]`` lists the neurons of hidden layer l + 1, laid out as
    :attr:`ncfkit.models.Architecture.neuron_layers` says. ``part="rows"`` keeps only the
    incoming weights W_l[j, :], ``part="columns"`` only the outgoing W_{l+1}[:, j] (the
    halves used as negative controls; neither alone is zero-preserving in general).
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    flat = zeros_like_bool(arch.num_params, like) if like is not None else \
        torch.zeros(arch.num_params, dtype=torch.bool)
    Ms = arch.split(flat)
    for l, neurons in enumerate(zero):
        idx = list(neurons)
        if part in ("both", "rows"):
            Ms[l][idx, :] = True
        if part in ("both", "columns"):
            Ms[l + 1][:, idx] = True
    return flat


def balance_error(arch: Architecture, w: Array) -> float:
    """Lemma 17: max over hidden neurons of |‖W_l[j,:]‖² − p‖W_{l+1}[:,j]‖²| / ‖w‖²
    (0 at an exact KKT point of the constrained NCF)."""
    act = arch.activation
    p = act.p if act is not None and act.homogeneous else 1.0
    errs = [float(abs(r**2 - p * c**2).max()) for r, c in arch.neuron_norms(w)]
    if not errs:
        return 0.0
    return max(errs) / float((w**2).sum())


# --------------------------------------------------------------------------- one point


@dataclass(frozen=True)
class SparsityReport:
    """The sparsity structure of one weight vector: which hidden neurons are zero, the
    mask of w_z (flat, ncfkit layout), and the Lemma-17 balance error."""

    activity: NeuronActivity
    mask: Array  # (k,) bool, of the kind of the weights analysed
    balance_error: float
    tol: float

    @property
    def num_params(self) -> int:
        return int(self.mask.size if is_numpy(self.mask) else self.mask.numel())

    @property
    def zero_preserving_size(self) -> int:
        """Number of weights in w_z (a weight shared by two zero neurons counts once)."""
        return int(self.mask.sum())

    @property
    def zero_preserving_fraction(self) -> float:
        return self.zero_preserving_size / max(self.num_params, 1)

    @property
    def lopsided(self) -> int:
        """Neurons whose row is zero while the column is not, or the reverse."""
        return sum(len(j) for j in self.activity.lopsided)

    def outside_per_matrix(self, arch: Architecture) -> list[int]:
        """Weights of each W_l outside w_z (at a KKT point: the active block)."""
        return [int((~M).sum()) for M in arch.split(self.mask)]


def analyse_sparsity(arch: Architecture, w: Array, tol: float = 1e-3) -> SparsityReport:
    """Classify the hidden neurons of ``w`` (k,) — a numpy array or a tensor — with
    relative threshold ``tol`` (see :func:`neuron_activity`) and build the mask of the
    zero-preserving subset w_z (of the kind of ``w``).

    >>> from ncfkit.activations import parse_activation
    >>> from ncfkit.models import MLP
    >>> arch = MLP(2, (2,), parse_activation("square"))
    >>> w = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.0])  # W1 = [[1, 0], [0, 0]], W2 = [.5, 0]
    >>> r = analyse_sparsity(arch, w); r.activity.zero, r.zero_preserving_size
    (((1,),), 3)

    Raises:
        InputError: ``tol`` outside [0, 1), or ``w`` all zero or not finite.
    """
    if not (math.isfinite(tol) and 0.0 <= tol < 1.0):
        raise InputError(f"--tol must be in [0, 1) (a fraction of the largest neuron norm); "
                         f"got {tol:g}")
    if not bool(xp(w).isfinite(w).all()):
        raise InputError("the weights contain NaN or Inf")
    if not bool((w != 0).any()):
        raise InputError("the weights are all zero: every neuron is zero, there is no "
                         "structure to report")
    activity = neuron_activity(arch, w, tol)
    mask = zero_preserving_mask(arch, activity.zero, like=w)
    return SparsityReport(activity, mask, balance_error(arch, w), tol)


# --------------------------------------------------------------------------- Lemma 16


@dataclass(frozen=True)
class ControlRun:
    """A negative control: a start that zeroes only one half (``part``) of w_z."""

    part: str  # "rows" (incoming weights) or "columns" (outgoing weights)
    zeroed: int  # entries set to 0 at the start
    max_abs: float  # max |w| over those entries, over every step
    expected_to_leave: bool  # what the gradient formulas predict (module docstring)

    @property
    def left_zero(self) -> bool:
        return not self.max_abs == 0.0  # NaN counts as having left


@dataclass(frozen=True)
class VerifyResult:
    """Gradient descent w ← w − η∇𝓛(w) from δ·u (u unit-norm, u_{w_z} = 0) and from the
    two controls; ``verified`` iff w_z stays exactly 0, the rest moves, and at least one
    control leaves 0."""

    zero_preserving_size: int
    wz_max_abs: float  # max |w_z| over every step of the w_z = 0 run: 0.0 when preserved
    relative_change: float  # ‖Δw‖/‖w(0)‖ over the weights outside w_z
    loss_initial: float
    loss_final: float
    controls: tuple[ControlRun, ...]
    steps: int
    lr: float
    init_scale: float
    seed: int
    attempts: int  # runs made: the automatic step size shrinks 10x after a divergence
    move_tol: float
    w_start: torch.Tensor  # (3, k): the w_z = 0 start, then the rows and columns controls
    w_end: torch.Tensor  # (3, k) after ``steps`` steps

    @property
    def preserved(self) -> bool:
        return self.wz_max_abs == 0.0

    @property
    def others_moved(self) -> bool:
        return self.relative_change > self.move_tol

    @property
    def negative_control(self) -> bool:
        return any(c.left_zero for c in self.controls)

    @property
    def verified(self) -> bool:
        return (self.zero_preserving_size > 0 and self.preserved and self.others_moved
                and self.negative_control)

    @property
    def reason(self) -> str:
        """One line: why the check failed ('' when verified)."""
        if self.zero_preserving_size == 0:
            return "w_z is empty (no zero neurons): nothing to verify"
        if not self.preserved:
            return (f"w_z did not stay at 0 (max |w_z| reached {self.wz_max_abs:.3g}): "
                    "not a zero-preserving subset")
        if not self.others_moved:
            return (f"the other weights barely moved (relative change {self.relative_change:.2g}"
                    f" <= {self.move_tol:g}), so the check says nothing; raise --lr, "
                    "--init-scale or --steps")
        if not self.negative_control:
            return ("negative control failed: zeroing only the rows or only the columns "
                    "also stayed exactly 0")
        return ""


def _descend(arch, X, y, loss, w0, watch, lr, steps):
    """Gradient descent from every row of ``w0`` (B, k). Returns (w, 𝓛(w0), 𝓛(w), peak),
    peak (B,) = the largest |w| seen on the ``watch`` entries of each row at any step, or
    ``None`` as soon as a loss is not finite."""
    w = w0.clone()
    peak = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    loss0 = None
    for step in range(steps):
        val, grad = loss_value_and_grad(arch, X, y, loss, w)
        if loss0 is None:
            loss0 = val
        if step % 64 == 0 and not bool(torch.isfinite(val).all()):
            return None
        w = w - lr * grad
        peak = torch.maximum(peak, w.abs().masked_fill(~watch, 0.0).amax(-1))
    final = loss_value(arch, X, y, loss, w)
    if not (bool(torch.isfinite(final).all()) and bool(torch.isfinite(w).all())):
        return None
    return w, loss0, final, peak


def verify_zero_preserving(
    arch: Architecture, X: torch.Tensor, y: torch.Tensor, loss: Loss, zero: tuple[tuple[int, ...], ...],
    *, steps: int = 3000, lr: float | None = None, init_scale: float = 0.1, seed: int = 0,
    move_tol: float = 1e-6, max_attempts: int = 6,
) -> VerifyResult:
    """Check Lemma 16 for the neurons ``zero`` (per hidden layer) by gradient descent.

    Three runs share one random draw g ~ N(0, I) (seeded): g with w_z set to 0, g with only
    the rows (incoming weights) of the zero neurons set to 0, and g with only their
    columns (outgoing weights) set to 0; each is scaled to norm ``init_scale``. All three
    take ``steps`` steps with the same η. ``lr=None`` picks η so that the first step moves
    the w_z = 0 start by 10⁻³ of its norm, and divides η by 10 after a divergence.

    Raises:
        RunError: every step size tried diverged.
    """
    like = X
    mask = zero_preserving_mask(arch, zero, like=like)
    halves = [zero_preserving_mask(arch, zero, like=like, part=p) for p in ("rows", "columns")]
    watch = torch.stack([mask, *halves])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    g = torch.randn(arch.num_params, generator=gen, dtype=X.dtype).to(X.device)
    w0 = g.expand(watch.shape).masked_fill(watch, 0.0)
    w0 = init_scale * w0 / w0.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)

    if lr is None:
        grad0 = loss_value_and_grad(arch, X, y, loss, w0[0])[1]
        gnorm = float(grad0.norm())
        eta = 1e-3 * init_scale / gnorm if gnorm > 0 else 1.0
        attempts_left = max_attempts
    else:
        eta, attempts_left = lr, 1
    attempts = 0
    while True:
        attempts += 1
        run = _descend(arch, X, y, loss, w0, watch, eta, steps)
        if run is not None:
            break
        if attempts >= attempts_left:
            raise RunError(f"gradient descent diverged (last step size {eta:.3g}); "
                           "pass a smaller --lr or --init-scale")
        eta /= 10
    w, loss0, final, peak = run
    others = ~mask
    tiny = torch.finfo(X.dtype).tiny
    change = float((w[0] - w0[0])[others].norm() / w0[0].norm().clamp_min(tiny))
    rows_move = bool(arch.activation.derivative(torch.zeros((), dtype=X.dtype)) != 0)
    controls = tuple(
        ControlRun(part, int(h.sum()), float(peak[i + 1]), expected)
        for i, (part, h, expected) in enumerate(
            zip(("rows", "columns"), halves, (rows_move, True), strict=True))
    )
    return VerifyResult(int(mask.sum()), float(peak[0]), change, float(loss0[0]), float(final[0]),
                        controls, steps, float(eta), float(init_scale), seed, attempts, move_tol,
                        w0, w)


# --------------------------------------------------------------------------- sources


#: Default relative thresholds: KKT points have exact zeros (up to round-off), snapshots
#: of training only approximately small rows and columns.
DEFAULT_TOL = {"kkt": 1e-3, "weights": 1e-2}


@dataclass(frozen=True)
class Source:
    """The weights to analyse and where they came from."""

    kind: str  # "kkt" or "weights"
    path: str
    sha256: str
    arch: object
    w: object  # (k,) float64 (tensor)
    point: int | None = None
    ncf: float | None = None
    prov: dict | None = None  # the kkt file's provenance


def _no_hidden(path, what: str) -> InputError:
    return InputError(f"{path}: {what} has no hidden neurons, so it has no zero-preserving "
                      "subsets of neurons (Lemma 16 concerns feed-forward nets with a hidden "
                      "layer)")


def _kkt_source(path: str, point: int, rec: dict, prov: dict, sha256: str) -> Source:
    from .io import architecture_of

    arch = architecture_of(prov, path)
    if not arch.has_hidden_neurons:
        raise _no_hidden(path, f"the point is of {arch.describe()}, which")
    w = torch.as_tensor(np.asarray(rec["w"]), dtype=torch.float64).flatten()
    if w.numel() != arch.num_params:
        raise InputError(f"{path}: point {point} has {w.numel()} weights but the recorded architecture "
                         f"({arch.describe()}) has {arch.num_params}")
    ncf = float(rec.get("ncf", float("nan")))
    return Source("kkt", path, sha256, arch, w, point, ncf, prov)


def load_kkt_source(path: str, point: int) -> Source:
    """Point ``point`` of a kkt file (``ncfkit kkt --out``)."""
    from .io import read_kkt_point, sha256_of

    rec, prov = read_kkt_point(path, point)
    return _kkt_source(path, point, rec, prov, sha256_of(path))


def load_weights_source(path: str, act: str) -> Source:
    """A weight snapshot ``.npz`` (W1 … WL), the architecture read off the array shapes."""
    from .io import architecture_of_weights, read_weights, sha256_of

    arch = architecture_of_weights(path, act=act)
    if not arch.has_hidden_neurons:
        raise _no_hidden(path, f"a weight file of {arch.describe()}, which")
    w = torch.as_tensor(read_weights(path, arch), dtype=torch.float64)
    return Source("weights", path, sha256_of(path), arch, w)


def source_from_cli(source: str | None, weights: str | None, point: int, act: str | None) -> tuple[Source, None]:
    """The source of ``ncfkit sparsity SOURCE | --weights FILE`` (a ``.npz`` SOURCE is a
    weight snapshot), with the CLI's checks of which options apply."""
    if source is not None and weights is not None:
        raise InputError("give either a KKT file or --weights FILE, not both")
    if source is None and weights is None:
        raise InputError("missing input: give a KKT file (from `ncfkit kkt --out`) "
                         "or --weights FILE")
    source, weights = (None, str(source)) if source is not None and str(source).lower().endswith(".npz") \
        else (source, weights)
    if source is not None and act is not None:
        raise InputError("--act applies to --weights only; a KKT file records its activation")
    if source is None and point != 0:
        raise InputError("--point applies to a KKT file only")
    if source is not None:
        return load_kkt_source(str(source), point), None
    return load_weights_source(str(weights), act or "relu"), None


def resolve_source(source, weights, point: int, act: str | None, data):
    """(Source, the problem it was computed on or None) for :func:`ncfkit.sparsity`:
    ``source`` an in-memory kkt result (:class:`ncfkit.api.KKTResult`) or as in
    :func:`source_from_cli`."""
    record = getattr(source, "record", None)
    if record is None:
        return source_from_cli(source, weights, point, act)
    if weights is not None or act is not None:
        raise InputError("--weights and --act apply without a KKT result")
    if getattr(source, "kind", None) != "kkt":
        raise InputError(f"sparsity analyses a kkt result or file, not a {getattr(source, 'kind', '?')} result")
    points = record.get("points", {})
    name = source.path or "<kkt result>"
    if not 0 <= point < len(points):
        raise InputError(f"{name}: --point {point} out of range; the result has points 0..{len(points) - 1}"
                         if points else f"{name}: the kkt result holds no converged point")
    return _kkt_source(name, point, points[str(point)], record.get("provenance", {}), ""), source.problem


def parse_lr(text) -> float | None:
    """``--lr`` of ``--verify``: a positive number, or ``auto``/None (the automatic step)."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "auto"):
        return None
    try:
        lr = float(text)
    except ValueError:
        raise InputError(f"--lr {text!r}: not a number (or 'auto')") from None
    if not lr > 0 or lr == float("inf"):
        raise InputError(f"--lr must be a positive number (got {text})")
    return lr


def training_data(source: Source, data: str | None):
    """The data set for ``--verify``: ``data``, else the one the KKT file was computed on
    (checked by sha256)."""
    from pathlib import Path

    from .io import load_data

    if data is not None:
        return load_data(data)
    if source.kind == "weights":
        raise InputError("--verify on --weights needs the training data: pass --data FILE")
    recorded = (source.prov or {}).get("data_file")
    if not recorded:
        raise InputError(f"{source.path}: no data file recorded in its provenance; "
                         "pass --data FILE")
    candidates = [Path(recorded), Path(source.path).parent / recorded]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise InputError(f"data file {recorded!r} recorded in {source.path} does not exist; "
                         "pass --data FILE")
    ds = load_data(found)
    expected = source.prov.get("data_sha256")
    if expected and ds.sha256 != expected:
        raise InputError(f"data file {str(found)!r} has changed since the KKT point was computed "
                         "(sha256 differs); pass --data FILE to use it anyway")
    return ds


def verify_problem(source: Source, problem, data: str | None, loss_name: str | None, reduction: str | None):
    """(dataset, X, y, loss) of ``--verify``, float64 tensors: ``problem``'s data when
    given (an in-memory KKT result), else :func:`training_data`; the loss and reduction
    default to the KKT file's, else square and sum."""
    from .losses import make_loss

    ds = problem.data if problem is not None else training_data(source, data)
    if ds.d != source.arch.d:
        raise InputError(f"data {ds.source} has d = {ds.d} features but the network takes "
                         f"d = {source.arch.d}")
    recorded = source.prov or {}
    loss = make_loss(loss_name or recorded.get("loss", "square"), reduction or recorded.get("reduction", "sum"))
    X, y = ds.tensors(torch.float64)
    loss.check_labels(y)
    return ds, X, y, loss


from ._callable import make_callable  # noqa: E402  (ncfkit.sparsity(...) calls ncfkit.api.sparsity)

make_callable(__name__)
