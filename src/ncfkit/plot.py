"""Figures of ncfkit results, chosen by what a result file holds (issue 5).

- a ``kkt`` file: |W_l| of each distinct KKT point as heat maps, and per hidden layer the
  norms ‖W_l[j,:]‖ (incoming) and ‖W_{l+1}[:,j]‖ (outgoing) of every neuron j as bars; the
  neurons whose row and column vanish form the zero-preserving subset (Def. 15, Thm 18);
- an ``escape`` run of a feed-forward net: the loss against time with the escape and
  first-saddle events marked (the paper's Figures 1, 4–8, panel b), and below it |W_l| of
  every layer at initialization, escape and the saddle, one colour scale per layer, the
  zero-preserving subset w_z of w* hatched; a run through several plateaus (``escape
  --until saddles:K|converged``, Appendix G's Figures 14–17) gets each plateau's saddle
  numbered on the loss curve and one row of |W_l| per plateau's saddle, the neurons that
  were small at the previous plateau outlined in a second colour; when the plateau before
  escape dwarfs what follows (Figure 4: escape at t = 7.0e7, a drop of ~0.01), time is
  measured from escape on a log scale both ways; with several δ also the escape times against
  x(δ) = ln(1/δ) (L_h = 2) or δ^{2−L_h} (L_h > 2) beside the line of Theorems 4/10;
- an ``escape`` run of a model whose weights are one vector of two entries (the diagonal
  model of Example 1 in 2-D): the trajectories ψ(t, δw0) for each δ and the reference path
  p(t) over the loss contour, the saddle p* and the minimum marked (the paper's Figure 2).

Which figure a file gets follows from its architecture (:mod:`ncfkit.models`): weights in
matrices (``weight_shapes`` of two axes) are drawn as heat maps, with per-neuron bars for
its hidden layers (``neuron_layers``); weights in one vector as bars or, with two entries,
as points of the plane. No figure tests the architecture's name.

Every ``*_figure`` function is pure: it takes the nested dict :func:`ncfkit.io.read_h5`
returns and gives back a :class:`matplotlib.figure.Figure` built without pyplot (so no
global backend state and no display; PNG goes through Agg, PDF through matplotlib's PDF
backend, no LaTeX). :func:`save_figure` writes one atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .errors import InputError
from .models import Architecture

__all__ = ["FIGURE_SUFFIXES", "SCALES", "figure_for", "kkt_figure", "escape_figure",
           "parse_layers", "save_figure"]

FIGURE_SUFFIXES = (".png", ".pdf")
#: Colour scales of the |W_l| heat maps: ``layer`` — one scale per layer shared by the
#: panels of that layer, square-root colour map (so the O(1) weights at the saddle do not
#: wash out the still-small active weights at escape; the colour bar is in |W| itself);
#: ``panel`` — linear, one per panel (the paper's figures); ``log`` — one logarithmic scale
#: per layer (shows the O(δ) weights of w_z next to the O(1) active ones).
SCALES = ("layer", "panel", "log")
CMAP = "viridis"
WZ_COLOR = "#ff4fd8"  # outline of w_z: magenta, visible on every viridis colour
PREV_ZERO_COLOR = "#ff8c00"  # outline of the previous plateau's zero set: orange, hatched the other way
PLATEAU_COLOR = "#2ca02c"
EVENT_COLORS = {"escape": "#d62728", "saddle": "#2ca02c"}
MAX_KKT_POINTS = 6
NCF = r"$\mathcal{N}$"  # mathtext, no LaTeX needed (DejaVu has no 𝒩 glyph)


def _homogeneity(tree: dict) -> float | None:
    """L_h of the result; None for a non-homogeneous net (stored as NaN) or none stored."""
    return _opt_float(tree.get("homogeneity"))


def _lh_text(tree: dict) -> str:
    L_h = _homogeneity(tree)
    return ", not homogeneous" if L_h is None else f", L_h = {L_h:g}"


def _bad(tree: dict, what: str) -> InputError:
    return InputError(f"{tree.get('_source', 'result file')}: {what}")


# --------------------------------------------------------------------------- helpers


def _architecture(tree: dict) -> Architecture:
    """The architecture of the provenance's record (:func:`ncfkit.models.architecture_from_dict`;
    no torch needed)."""
    from .models import architecture_from_dict

    spec = tree.get("provenance", {}).get("architecture")
    if spec is None:
        raise _bad(tree, "no architecture in its provenance; not a complete ncfkit result")
    try:
        return architecture_from_dict(json.loads(spec) if isinstance(spec, str) else dict(spec))
    except (ValueError, KeyError, TypeError, AttributeError, InputError):
        raise _bad(tree, f"malformed architecture record {spec!r}") from None


def _layered(arch: Architecture) -> bool:
    """Whether the weights are matrices (heat maps), not one vector."""
    return all(len(shape) == 2 for shape in arch.weight_shapes)


def _layers(node: dict, arch: Architecture) -> list[np.ndarray]:
    """The weight blocks (W_1 … W_L) of a point or snapshot: its datasets named as the
    architecture names them, else the flat ``w`` split."""
    if all(name in node for name in arch.weight_names):
        return [np.asarray(node[name]).reshape(shape)
                for name, shape in zip(arch.weight_names, arch.weight_shapes, strict=True)]
    return [np.asarray(W) for W in arch.split(np.asarray(node["w"]).ravel())]


def _layer_names(L: int) -> list[str]:
    return [f"|W{l}|" for l in range(1, L)] + [f"|W{L}| = |v|ᵀ" if L > 1 else "|W1|"]


def _axis_labels(l: int, L: int) -> tuple[str, str]:
    """(x, y) labels of the heat map of W_l (1-based l): columns are the inputs of layer l,
    rows its neurons."""
    x = "input i" if l == 1 else f"neuron of layer {l - 1}"
    y = "output" if l == L else f"neuron of layer {l}"
    return x, y


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [start, stop) of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _outline(ax, mask: np.ndarray, color: str = WZ_COLOR, hatch: str = "//", gid: str | None = None) -> None:
    """Outline and hatch the entries of a boolean mask: whole rows and whole columns as
    bands, anything else cell by cell (hatched, so a band at the edge of the axes cannot
    be mistaken for the row next to it)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return
    style = dict(fill=False, edgecolor=color, linewidth=0.6, hatch=hatch, alpha=0.45, gid=gid)
    rows, cols = mask.all(axis=1), mask.all(axis=0)
    for a, b in _runs(rows):
        ax.add_patch(Rectangle((-0.5, a - 0.5), mask.shape[1], b - a, **style))
    for a, b in _runs(cols):
        ax.add_patch(Rectangle((a - 0.5, -0.5), b - a, mask.shape[0], **style))
    for i, j in zip(*np.nonzero(mask & ~rows[:, None] & ~cols[None, :]), strict=True):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, **style))


def _norm(scale: str, values: list[np.ndarray]):
    """A colour normalisation for |W| panels sharing one scale (``None``: per panel)."""
    from matplotlib.colors import LogNorm, PowerNorm

    top = max((float(np.abs(v).max()) for v in values if v.size), default=0.0)
    if scale == "panel":
        return None
    if scale == "log":
        nonzero = [np.abs(v)[np.abs(v) > 0] for v in values]
        low = min((float(v.min()) for v in nonzero if v.size), default=top)
        low = max(low, top * 1e-8) if top > 0 else 1e-12
        return LogNorm(vmin=low, vmax=max(top, low * 10))
    return PowerNorm(gamma=0.5, vmin=0.0, vmax=top if top > 0 else 1.0)


def _heatmap(fig, ax, W: np.ndarray, norm, title: str, mask: np.ndarray | None = None,
             labels: tuple[str, str] | None = None, colorbar: bool = True,
             prev_mask: np.ndarray | None = None):
    A = np.abs(W)
    if norm is not None and getattr(norm, "vmin", 0) and norm.vmin > 0:
        A = np.maximum(A, norm.vmin)  # log scale: exact zeros at the floor colour
    im = ax.imshow(A, cmap=CMAP, norm=norm, aspect="auto", interpolation="nearest")
    if mask is not None:
        _outline(ax, mask)
    if prev_mask is not None:
        _outline(ax, prev_mask, PREV_ZERO_COLOR, "\\\\", gid="prev_zero")
    ax.set_title(f"{title}  max {np.abs(W).max():.2g}", fontsize=8)
    ax.tick_params(labelsize=6, length=2)
    rows, cols = W.shape
    ax.set_yticks(_ticks(rows))
    ax.set_xticks(_ticks(cols))
    if labels is not None:
        ax.set_xlabel(labels[0], fontsize=7, labelpad=1)
        ax.set_ylabel(labels[1], fontsize=7, labelpad=1)
    if colorbar:
        cb = fig.colorbar(im, ax=ax, fraction=0.08, pad=0.02)
        cb.ax.tick_params(labelsize=6)
    return im


def _ticks(n: int) -> list[int]:
    """A few integer tick positions (0-based neuron / input indices)."""
    if n == 1:
        return [0]
    step = max(1, math.ceil(n / 6))
    return list(range(0, n, step))


def _width_ratios(shapes: list[tuple[int, int]]) -> list[float]:
    return [float(np.clip(cols, 8, 40)) ** 0.6 for _rows, cols in shapes]


# --------------------------------------------------------------------------- kkt


def kkt_figure(tree: dict, *, run: int | None = None, scale: str = "layer") -> Figure:
    """|W_l| and per-neuron norms of every distinct KKT point of a ``kkt`` file (at most
    :data:`MAX_KKT_POINTS`, by 𝒩 descending as stored), w_z outlined."""
    arch = _architecture(tree)
    points = tree.get("points") or {}
    order = sorted(points, key=int)
    if not order:
        raise _bad(tree, "the kkt file holds no point to plot")
    shown = order[:MAX_KKT_POINTS]
    lh = _lh_text(tree)
    if not _layered(arch):
        return _kkt_vector_figure(arch, [points[i] for i in shown], len(order), lh)
    shapes = arch.weight_shapes
    L, H = len(shapes), len(arch.neuron_layers or ())
    fig = Figure(figsize=(3.0 * L + 2.6 * H + 0.4, 2.5 * len(shown) + 0.5),
                 layout="constrained")
    title = f"KKT points of the constrained NCF — {arch.describe()}{lh}"
    if len(order) > len(shown):
        title += f" (first {len(shown)} of {len(order)} points)"
    fig.suptitle(title + "; hatched: zero-preserving subset w_z", fontsize=10)
    subfigs = np.atleast_1d(fig.subfigures(len(shown), 1))
    for sub, key in zip(subfigs, shown, strict=True):
        p = points[key]
        Ws = _layers(p, arch)
        masks = _zero_preserving_masks(arch, np.asarray(p["w"], dtype=float))
        ratios = _width_ratios(shapes) + [2.2] * H
        axes = sub.subplots(1, L + H, width_ratios=ratios)
        active = p.get("active_per_layer")
        active = "" if active is None else f", active per layer {np.atleast_1d(active).tolist()}"
        sub.suptitle(f"point {key}: {NCF} = {p.get('ncf', float('nan')):.6g}, "
                     f"Δ = {p.get('delta', float('nan')):.4g}, {p.get('kind', '?')}, "
                     f"found {p.get('count', '?')}×{active}"
                     + ("" if p.get("converged", True) else " (stalled: not converged)"),
                     fontsize=9)
        names = _layer_names(L)
        for l, (ax, W, M, name) in enumerate(zip(axes[:L], Ws, masks, names, strict=True), 1):
            _heatmap(sub, ax, W, _norm(scale, [W]), name, M, _axis_labels(l, L))
        for l, ax in enumerate(axes[L:]):
            _neuron_bars(ax, Ws[l], Ws[l + 1], l + 1)
    return fig


def _zero_preserving_masks(arch: Architecture, w: np.ndarray) -> list[np.ndarray]:
    """Per block, the boolean mask of w_z of the KKT point ``w`` (the architecture's
    :meth:`~ncfkit.models.Architecture.zero_preserving_subset`, the default threshold)."""
    mask, _zero = arch.zero_preserving_subset(np.asarray(w, dtype=np.float64))
    return _layers({"w": np.asarray(mask)}, arch)


def _neuron_bars(ax, W_in: np.ndarray, W_out: np.ndarray, layer: int) -> None:
    """Bars of ‖W_l[j,:]‖ and ‖W_{l+1}[:,j]‖ for the neurons j of hidden layer l."""
    rows = np.linalg.norm(W_in, axis=1)
    cols = np.linalg.norm(W_out, axis=0)
    j = np.arange(rows.size)
    ax.bar(j - 0.2, rows, width=0.4, label=f"‖W{layer}[j,:]‖", color="#1f77b4")
    ax.bar(j + 0.2, cols, width=0.4, label=f"‖W{layer + 1}[:,j]‖", color="#ff7f0e")
    ax.set_title(f"layer {layer} neurons", fontsize=8)
    ax.set_xlabel("neuron j", fontsize=7)
    ax.set_xticks(_ticks(rows.size))
    ax.tick_params(labelsize=6, length=2)
    ax.legend(fontsize=6, frameon=False)


def _kkt_vector_figure(arch: Architecture, points, total, lh: str) -> Figure:
    """|w_k| of each point as bars: weights in one vector (the diagonal model)."""
    d = arch.num_params
    fig = Figure(figsize=(max(6.0, 0.35 * d + 2.5), 1.8 * len(points) + 0.6), layout="constrained")
    more = f" (first {len(points)} of {total})" if total > len(points) else ""
    fig.suptitle(f"KKT points of the constrained NCF — {arch.describe()}{lh}{more}",
                 fontsize=9)
    axes = np.atleast_1d(fig.subplots(len(points), 1))
    for i, (ax, p) in enumerate(zip(axes, points, strict=True)):
        w = np.asarray(p["w"], dtype=float).ravel()
        ax.bar(np.arange(d), np.abs(w), color="#1f77b4")
        ax.set_ylabel("|w_k|", fontsize=7)
        ax.set_xticks(np.arange(d) if d <= 20 else _ticks(d))
        ax.tick_params(labelsize=6)
        ax.set_title(f"point {i}: {NCF} = {p.get('ncf', float('nan')):.6g}, "
                     f"Δ = {p.get('delta', float('nan')):.4g}, {p.get('kind', '?')}", fontsize=8)
    axes[-1].set_xlabel("coordinate k", fontsize=7)
    return fig


# --------------------------------------------------------------------------- escape


SNAPSHOT_ORDER = ("init", "escape", "saddle", "final")


@dataclass(frozen=True)
class _Run:
    """What the escape figures need of one run (one δ, or the reference run)."""

    delta: float
    time: np.ndarray
    loss: np.ndarray
    escape_time: float | None
    saddle_time: float | None
    snapshots: dict[str, dict]  # name -> {"w": flat weights, "time": t}
    trajectory: tuple[np.ndarray, np.ndarray] | None  # (time (m,), w (m, k))
    predicted_escape_time: float | None
    plateaus: tuple[dict, ...] = ()  # runs/<i>/plateaus of ``escape --until saddles:K|converged``


def _opt_float(value) -> float | None:
    if value is None:
        return None
    value = float(np.asarray(value).ravel()[0]) if np.ndim(value) else float(value)
    return value if math.isfinite(value) else None


def _read_run(node: dict) -> _Run:
    rec = node["records"]
    snaps = {k: v for k, v in (node.get("snapshots") or {}).items()
             if isinstance(v, dict) and "w" in v}
    traj = node.get("trajectory")
    trajectory = None
    if isinstance(traj, dict) and "w" in traj and np.size(traj["w"]):
        trajectory = (np.asarray(traj["time"], dtype=float), np.asarray(traj["w"], dtype=float))
    return _Run(float(node.get("delta", float("nan"))), np.asarray(rec["time"], dtype=float),
                np.asarray(rec["loss"], dtype=float), _opt_float(node.get("escape_time")),
                _opt_float(node.get("saddle_time")), snaps, trajectory,
                _opt_float(node.get("predicted_escape_time")), _read_plateaus(node.get("plateaus")))


def _read_plateaus(raw) -> tuple[dict, ...]:
    """The plateau records of a run (a JSON list), those with a finite time, in order;
    () when the run has none or they cannot be read."""
    if raw is None:
        return ()
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        items = json.loads(raw) if isinstance(raw, str) else list(raw)
    except (ValueError, TypeError):
        return ()
    out = [p for p in items if isinstance(p, dict) and isinstance(p.get("index"), int)
           and p["index"] >= 1 and _opt_float(p.get("time")) is not None]
    return tuple(sorted(out, key=lambda p: int(p.get("index", 0))))


def _saddle_name(k: int) -> str:
    """The snapshot of plateau k's saddle in run.h5: ``saddle``, ``saddle_2``, …"""
    return "saddle" if k == 1 else f"saddle_{k}"


def _multi(run: _Run) -> bool:
    """Whether the run went through several plateaus (then each one is drawn)."""
    return len(run.plateaus) >= 2


def _escape_runs(tree: dict) -> list[_Run]:
    runs = tree.get("runs") or {}
    if not runs:
        raise _bad(tree, "the escape file holds no run")
    return [_read_run(runs[k]) for k in sorted(runs, key=int)]


def _reference_run(tree: dict) -> _Run | None:
    ref = tree.get("reference")
    if not isinstance(ref, dict) or "records" not in ref:
        return None
    run = _read_run(ref)
    delta_ref = _opt_float(ref.get("delta_ref"))
    return run if delta_ref is None else _replace_delta(run, delta_ref)


def _replace_delta(run: _Run, delta: float) -> _Run:
    from dataclasses import replace

    return replace(run, delta=delta)


def _wz_mask(tree: dict) -> np.ndarray | None:
    """The flat mask of w_z of the governing KKT point, if the file has one."""
    mask = (tree.get("kkt") or {}).get("wz_mask")
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool).ravel()
    return mask if mask.any() else None


def _predicted_from_w0(tree: dict, delta):
    """Leading-order escape time of ψ(·, δw0) from the NCF flow started at w0 itself
    (:class:`ncfkit.theory.NcfFlowEscape`): δ^{2−L_h}·T_b, or (ln(1/δ) − ln A)/(2𝒩) for
    L_h = 2; None when the file does not carry it."""
    kkt = tree.get("kkt") or {}
    L_h, ncf = _homogeneity(tree), _opt_float(kkt.get("ncf"))
    T_b = _opt_float(kkt.get("ncf_flow_blowup_time"))
    log_A = _opt_float(kkt.get("ncf_flow_log_amplitude"))
    delta = np.asarray(delta, dtype=float)
    if L_h is not None and L_h > 2 and T_b is not None:
        return delta ** (2.0 - L_h) * T_b
    if L_h == 2 and log_A is not None and ncf is not None and ncf > 0:
        return (np.log(1.0 / delta) - log_A) / (2.0 * ncf)
    return None


def escape_figure(tree: dict, *, run: int | None = None, scale: str = "layer",
                  layers=None) -> Figure:
    """The figure of an ``escape`` run: :func:`_plane_figure` for weights in one vector of
    two entries (the 2-D diagonal model), else loss curve, escape-time fit (several δ) and
    |W_l| snapshots — of every layer, or of ``layers`` (1-based, :func:`parse_layers`)."""
    arch = _architecture(tree)
    runs = _escape_runs(tree)
    if run is not None and not 0 <= run < len(runs):
        raise InputError(f"--run {run} out of range; the file has runs 0..{len(runs) - 1}")
    if not _layered(arch):
        if arch.num_params != 2:
            raise _bad(tree, f"the figure of weights in one vector is a 2-D picture; this run ({arch.describe()}) "
                             f"has {arch.num_params} weights (d = {arch.d})")
        if layers is not None:
            raise InputError("--layers applies to the |W_l| heat maps of a network with weight matrices; "
                             f"this run ({arch.describe()}) has weights in one vector")
        return _plane_figure(tree, arch, runs)
    chosen = run if run is not None else int(np.argmin([r.delta for r in runs]))
    L = len(arch.weight_shapes)
    shown_layers = parse_layers(layers, L)
    shown = runs[chosen]
    names = [n for n in ("init", "escape", "saddle") if n in shown.snapshots]
    if _multi(shown):  # every plateau's saddle (Appendix G, Figures 14-17)
        names = [n for n in ("init", "escape") if n in shown.snapshots]
        names += [_saddle_name(int(p["index"])) for p in shown.plateaus
                  if _saddle_name(int(p["index"])) in shown.snapshots]
    if "saddle" not in names and "final" in shown.snapshots:
        names.append("final")
    many = len(runs) > 1
    width = max(9.0, 3.0 * len(shown_layers) + 1.0)
    fig = Figure(figsize=(width, 2.9 + 2.4 * len(names)), layout="constrained")
    which = "" if len(shown_layers) == L else "; weights of " + ", ".join(f"W{l + 1}" for l in shown_layers)
    fig.suptitle(f"escape from small initialization — {arch.describe()}{_lh_text(tree)}{which}",
                 fontsize=10)
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.9, 2.4 * len(names)])
    axes = top.subplots(1, 2, width_ratios=[2.2, 1]) if many else [top.subplots(1, 1)]
    _loss_panel(axes[0], runs, chosen, _predicted_escape(tree, shown))
    if many:
        _escape_fit_panel(axes[1], tree, runs)
    _snapshot_grid(bottom, shown, names, arch, _wz_mask(tree), scale, shown_layers)
    return fig


def parse_layers(layers, L: int) -> list[int]:
    """0-based indices of the weight blocks to draw from ``layers``: None (all L), a text
    of 1-based layers and ranges (``"1"``, ``"2-4"``, ``"1,3"``; W_L is the output
    weights v), or a sequence of 1-based ints. Raises InputError naming ``--layers``."""
    if layers is None:
        return list(range(L))
    items = []
    try:
        if isinstance(layers, str):
            for part in layers.replace(" ", "").split(","):
                a, sep, b = part.partition("-")
                lo, hi = int(a), int(b) if sep else int(a)
                if hi < lo:
                    raise ValueError(part)
                items += range(lo, hi + 1)
        else:
            items = [int(x) for x in layers]
    except (TypeError, ValueError):
        raise InputError(f"--layers {layers!r}: expected 1-based layers such as 1, 2-4 or 1,3 "
                         f"(this network has W1 … W{L})") from None
    bad = [x for x in items if not 1 <= x <= L]
    if not items or bad:
        raise InputError(f"--layers {layers!r}: layers run from 1 to {L} (W{L} is the output weights v)"
                         + (f"; got {bad[0]}" if bad else ""))
    return sorted(set(x - 1 for x in items))


def _predicted_escape(tree: dict, run: _Run) -> tuple[float, str] | None:
    """The theory's escape time for ``run``: from the NCF flow started at w0 when the file
    has it, else the leading-order time along w* (Theorems 4/10); None for a net that is
    not homogeneous (tanh, GELU: the theory does not apply)."""
    if _homogeneity(tree) is None:
        return None
    t = _predicted_from_w0(tree, run.delta)
    if t is not None:
        return float(t), "NCF flow from w0"
    if run.predicted_escape_time is not None:
        return run.predicted_escape_time, "along w*"
    return None


def _event_window(run: _Run) -> tuple[float, float] | None:
    """[t_esc − W, t_saddle + W] with W = t_saddle − t_esc (2% of the run without a
    saddle), when it is under a tenth of the run: the drop then deserves a zoom (the
    plateau before escape lasts ~ln(1/δ) or ~δ^{2−L_h}, the drop itself O(1))."""
    span = float(run.time.max() - run.time.min()) if run.time.size else 0.0
    if run.escape_time is None or not span > 0:
        return None
    if _multi(run):  # escape → the last plateau's saddle, a little either side
        end = max(float(p["time"]) for p in run.plateaus)
        if end > run.escape_time:
            W = 0.12 * (end - run.escape_time)
            lo, hi = max(run.escape_time - W, float(run.time.min())), end + W  # room for the last marker
            return (lo, hi) if hi - lo < 0.5 * span else None
    end = run.saddle_time if run.saddle_time is not None else run.escape_time
    W = end - run.escape_time if end > run.escape_time else 0.02 * span
    lo, hi = max(run.escape_time - W, float(run.time.min())), min(end + W, float(run.time.max()))
    return (lo, hi) if hi - lo < 0.1 * span else None


def _plot_losses(ax, runs: list[_Run], chosen: int, window=None, annotate: bool = True,
                 shift: float = 0.0, plateau_text: bool | None = None) -> None:
    """Loss of every run against t − ``shift`` (0: the time itself), escape and saddle
    events marked; a run with several plateaus gets each plateau's saddle marked and
    numbered 1, 2, … (markers with gid ``plateau k``)."""
    import matplotlib as mpl

    colors = mpl.colormaps["plasma"](np.linspace(0.0, 0.8, max(len(runs), 2)))
    for i, r in enumerate(runs):
        bold = i == chosen
        sel = slice(None) if window is None else (r.time >= window[0]) & (r.time <= window[1])
        ax.plot(r.time[sel] - shift, r.loss[sel], color=colors[i] if len(runs) > 1 else "black",
                lw=1.6 if bold else 0.9, alpha=1.0 if bold else 0.6,
                label=f"δ = {r.delta:g}" if len(runs) > 1 else None, zorder=3 if bold else 2)
        events = [("escape", r.escape_time)]
        if not (bold and _multi(r)):
            events.append(("saddle", r.saddle_time))
        for name, t in events:
            if t is None or (window is not None and not window[0] <= t <= window[1]):
                continue
            loss_t = float(np.interp(t, r.time, r.loss))
            ax.plot([t - shift], [loss_t], "o", ms=5 if bold else 3, color=EVENT_COLORS[name], zorder=4)
            if bold:
                ax.axvline(t - shift, color=EVENT_COLORS[name], ls="--", lw=0.9)
            if bold and annotate:
                when = f"t = {t:.4g}" if not shift else f"t = {t:.6g}" if name == "escape" else _time_text(t, shift)
                text = "unconfirmed plateau\n(run ended)" if name == "saddle" and _open_end(r) else name
                right = name == "saddle" and _open_end(r)  # at (near) the run's end: text to the left
                ax.annotate(f"{text}\n{when}", (t - shift, loss_t), textcoords="offset points",
                            ha="right" if right else "left", fontsize=7, color=EVENT_COLORS[name],
                            xytext=(-5 if right else 5, 6 if name != "escape" else -22))
        if bold and _multi(r):
            _plot_plateaus(ax, r, window, annotate if plateau_text is None else plateau_text, shift)
    if window is not None:
        ax.set_xlim(window[0] - shift, window[1] - shift)


def _time_text(t: float, shift: float = 0.0) -> str:
    """``t = …``, or ``t = t_esc + …`` on the from-escape axis (``shift`` = t_esc)."""
    if shift and t >= shift:
        return f"t = t_esc + {t - shift:.4g}"
    return f"t = {t:.6g}"


def _plot_plateaus(ax, r: _Run, window, annotate: bool, shift: float) -> None:
    """Each plateau's saddle on the loss curve: a numbered marker, a dashed line, and
    (``annotate``) its time and loss."""
    for p in r.plateaus:
        k, t = int(p["index"]), float(p["time"])
        if window is not None and not window[0] <= t <= window[1]:
            continue
        loss_t = _opt_float(p.get("loss"))
        loss_t = float(np.interp(t, r.time, r.loss)) if loss_t is None else loss_t
        ax.plot([t - shift], [loss_t], "o", ms=11, color="white", mec=PLATEAU_COLOR, mew=1.5,
                zorder=5, gid=f"plateau {k}")
        ax.annotate(str(k), (t - shift, loss_t), ha="center", va="center", fontsize=7,
                    fontweight="bold", color=PLATEAU_COLOR, zorder=6)
        ax.axvline(t - shift, color=PLATEAU_COLOR, ls="--", lw=0.8)
        if annotate:
            kind = (p.get("kind") or "plateau") + ("" if p.get("confirmed", True) else ", unconfirmed (run ended)")
            lo, hi = window if window is not None else (float(r.time.min()), float(r.time.max()))
            right = hi > lo and (t - lo) / (hi - lo) > 0.6  # text to the left of the marker
            shown = r.loss[(r.time >= lo) & (r.time <= hi)]
            low, top = (float(shown.min()), float(shown.max())) if shown.size else (loss_t, loss_t)
            up = top <= low or (loss_t - low) / (top - low) < 0.6  # text above the marker, else below
            ax.annotate(f"plateau {k}: {kind}\n{_time_text(t, shift)}, loss {loss_t:.4g}", (t - shift, loss_t),
                        textcoords="offset points", xytext=(-9 if right else 9, 10 + 10 * ((k - 1) % 2) if up else -28),
                        ha="right" if right else "left", fontsize=7, color=PLATEAU_COLOR)


def _loss_panel(ax, runs: list[_Run], chosen: int,
                predicted: tuple[float, str] | None = None, heading: str | None = None) -> None:
    """Loss against time, events of every run marked (labelled for ``chosen``), the
    predicted escape time of ``chosen`` (time, what predicts it) as a dotted line, and a
    zoom on the escape drop of ``chosen`` when it is a sliver of the time axis."""
    squeeze = _from_escape_axis(runs[chosen])
    shift = squeeze[0] if squeeze is not None else 0.0
    window = _event_window(runs[chosen]) if squeeze is None else None
    # with several plateaus and a zoom, their text goes in the zoom (the main axis is crowded)
    _plot_losses(ax, runs, chosen, shift=shift,
                 plateau_text=None if window is None or not _multi(runs[chosen]) else False)
    title = heading or f"loss; weights below: δ = {runs[chosen].delta:g}"
    if predicted is not None and math.isfinite(predicted[0]) and predicted[0] > 0:
        t, what = predicted
        title += f"\ndotted: predicted escape ({what}), {_time_text(t, shift) if shift else f't = {t:.4g}'}"
        if t <= runs[chosen].time.max():
            ax.axvline(t - shift, color="#9467bd", ls=":", lw=1.4)
        else:
            title += ", after the run's end"
    log_after = _log_after_escape(runs[chosen]) if squeeze is None and window is None else None
    if log_after is not None:  # plateaus decades apart after escape (tanh: Figures 9-11)
        ax.set_xscale("symlog", linthresh=log_after, linscale=0.6)
        ax.set_xlim(0.0, float(runs[chosen].time.max()))
        ax.set_xlabel(f"gradient-flow time t (linear up to escape, t = {log_after:.4g}; logarithmic after)",
                      fontsize=8)
        if float(np.min(runs[chosen].loss)) > 0 and np.ptp(np.log10(runs[chosen].loss)) > 2:
            ax.set_yscale("log")
    elif squeeze is None:
        ax.set_xlabel("gradient-flow time t", fontsize=8)
    else:
        _set_from_escape_scale(ax, runs[chosen], *squeeze)
    ax.set_ylabel("training loss", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    if len(runs) > 1:
        ax.legend(fontsize=7, frameon=False, loc="upper right")
    if window is not None:
        multi = _multi(runs[chosen])
        inset = ax.inset_axes([0.07, 0.1, 0.5 if multi else 0.42, 0.5])
        _plot_losses(inset, [runs[chosen]], 0, window, annotate=False, plateau_text=multi)
        inset.set_title("zoom: escape → last plateau" if multi else "zoom: escape → saddle", fontsize=7, pad=2)
        inset.tick_params(labelsize=6, length=2)
        inset.ticklabel_format(axis="x", useOffset=False, style="plain")
        from matplotlib.ticker import MaxNLocator

        inset.xaxis.set_major_locator(MaxNLocator(4))
        ax.indicate_inset_zoom(inset, edgecolor="gray", alpha=0.6)


#: The loss panel measures time from escape (log scale both sides) when the time before
#: escape is over this many times the span from escape to the last event.
SQUEEZE = 100.0
#: Fraction of the width of the from-escape axis given to the time before escape.
BEFORE_ESCAPE_WIDTH = 0.25


#: A run through several plateaus gets a time axis that is logarithmic after escape when
#: its last plateau is over this many times further from escape than its first.
LOG_SPREAD = 20.0


def _log_after_escape(run: _Run) -> float | None:
    """t_esc when the plateaus after escape lie decades apart (the last one over
    :data:`LOG_SPREAD` times further from escape than the first: Figure 9's plateaus at
    t_esc + 56 and t_esc + 10⁴), or a run without several plateaus creeps on long after its
    drop, so a linear axis would squeeze the drop into a sliver; else None."""
    t_esc = run.escape_time
    if t_esc is None or not t_esc > 0 or not run.time.size:
        return None
    if _multi(run):
        times = sorted(float(p["time"]) for p in run.plateaus)
        first, last = times[0] - t_esc, times[-1] - t_esc
        return t_esc if first > 0 and last > LOG_SPREAD * first else None
    # one plateau or none: a loss that falls over two decades after escape and creeps on
    # long after its fall (GELU, Figures 12-13) — the end over LOG_SPREAD times further from
    # escape than the time the loss took to fall half-way (geometrically)
    start, low = float(np.interp(t_esc, run.time, run.loss)), float(run.loss.min())
    if not (low > 0 and start > 100 * low):
        return None
    fallen = (run.time > t_esc) & (run.loss <= math.sqrt(start * low))
    half = float(run.time[fallen][0]) - t_esc if fallen.any() else 0.0
    return t_esc if half > 0 and float(run.time.max()) - t_esc > LOG_SPREAD * half else None


def _last_event(run: _Run) -> float | None:
    """The latest saddle or plateau exit of the run (None without any)."""
    times = [run.saddle_time] + [_opt_float(p.get(k)) for p in run.plateaus for k in ("time", "exit_time")]
    times = [t for t in times if t is not None]
    return max(times) if times else None


def _from_escape_axis(run: _Run) -> tuple[float, float] | None:
    """(t_esc, c) when the events after escape would be squeezed into a sliver of a linear
    time axis (the plateau before escape over :data:`SQUEEZE` × the span from escape to the
    last saddle or plateau exit: Figure 4 escapes at t = 7.0e7 and drops in ~0.01), else
    None. ``c`` is the time scale of the drop: half the time the loss takes after escape
    to fall half-way to the first saddle's loss (the axis is linear for |t − t_esc| ≲ c,
    logarithmic beyond)."""
    t_esc, last = run.escape_time, _last_event(run)
    if t_esc is None or last is None or not run.time.size:
        return None
    span, before = last - t_esc, t_esc - float(run.time.min())
    if not (span > 0 and before > SQUEEZE * span):
        return None
    first = run.saddle_time if run.saddle_time is not None and run.saddle_time > t_esc else last
    lo, hi = float(np.interp(t_esc, run.time, run.loss)), float(np.interp(first, run.time, run.loss))
    after = (run.time > t_esc) & (run.time <= first) & (run.loss <= 0.5 * (lo + hi))
    half = float(run.time[after][0]) - t_esc if after.any() else first - t_esc
    return t_esc, max(0.5 * half, 1e-6 * span)


def _set_from_escape_scale(ax, run: _Run, t_esc: float, c: float) -> None:
    """x = t − t_esc on a scale that is linear within ±c and logarithmic beyond, the time
    before escape compressed into :data:`BEFORE_ESCAPE_WIDTH` of the width; ticks at
    ±powers of ten."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    right = max(float(run.time.max()) - t_esc, c)
    left = max(t_esc - float(run.time.min()), c)
    pos, neg = math.log1p(right / c), math.log1p(left / c)
    a = BEFORE_ESCAPE_WIDTH / (1 - BEFORE_ESCAPE_WIDTH) * pos / neg  # squeeze of the left side

    def forward(x):
        x = np.asarray(x, dtype=float)
        with np.errstate(invalid="ignore", over="ignore"):
            return np.where(x >= 0, np.log1p(np.abs(x) / c), -a * np.log1p(np.abs(x) / c))

    def inverse(y):
        y = np.asarray(y, dtype=float)
        with np.errstate(invalid="ignore", over="ignore"):
            return np.where(y >= 0, c * np.expm1(np.abs(y)), -c * np.expm1(np.abs(y) / a))

    ax.set_xscale("function", functions=(forward, inverse))
    ax.set_xlim(-left, right)
    ticks = [0.0] + [10.0 ** k for k in _decades(c, right, 6)] + [-(10.0 ** k) for k in _decades(c, left, 3)]
    ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.xaxis.set_minor_locator(NullLocator())

    def label(x, _pos):
        if x == 0:
            return "0"
        k = math.log10(abs(x))
        return ("−" if x < 0 else "") + (f"{abs(x):g}" if -2 <= k <= 3 else f"$10^{{{round(k)}}}$")

    ax.xaxis.set_major_formatter(FuncFormatter(label))
    ax.axvspan(-left, 0, color="#e6e6e6", zorder=0, lw=0)
    ax.set_xlabel(f"time from escape, t − t_esc (t_esc = {t_esc:.6g}); log scale both ways, "
                  "before escape (shaded) compressed", fontsize=8)


def _decades(lo: float, hi: float, most: int) -> list[int]:
    """At most ``most`` integer k with lo ≤ 10^k ≤ hi, evenly thinned, the largest kept."""
    ks = list(range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1))
    step = max(1, math.ceil(len(ks) / most))
    return ks[::-1][::step][::-1]


def _escape_fit_panel(ax, tree: dict, runs: list[_Run]) -> None:
    """Escape times against x(δ) with the fitted line and the leading-order theory line."""
    from . import theory

    L_h = _homogeneity(tree)
    ncf = _opt_float((tree.get("kkt") or {}).get("ncf"))
    pairs = [(r.delta, r.escape_time) for r in runs if r.escape_time is not None]
    if L_h is None or L_h < 2 or len({d for d, _ in pairs}) < 2:
        ax.text(0.5, 0.5, "escape-time fit needs a homogeneous\nnet and two escaped runs",
                ha="center", va="center", fontsize=8, transform=ax.transAxes)
        ax.set_axis_off()
        return
    deltas, times = map(np.asarray, zip(*pairs, strict=True))
    x = theory.escape_regressor(deltas, L_h)
    fit = theory.fit_escape_times(deltas, times, L_h)
    xs = np.linspace(0.0, x.max() * 1.05, 50)
    ax.plot(x, times, "o", color="black", ms=4, label="measured", zorder=3)
    ax.plot(xs, fit.slope * xs + fit.intercept, "-", color="#1f77b4", lw=1,
            label=f"fit: slope {fit.slope:.4g}")
    if ncf is not None and ncf > 0:
        slope = theory.escape_slope(ncf, L_h)
        ax.plot(xs, slope * xs, "--", color="#d62728", lw=1,
                label=f"theory along w*: slope {slope:.4g}")
    grid = np.sort(deltas)
    t_w0 = _predicted_from_w0(tree, grid)
    if t_w0 is not None:
        ax.plot(theory.escape_regressor(grid, L_h), t_w0, ":", color="#9467bd", lw=1.4,
                label="theory, NCF flow from w0")
    ax.set_xlabel("ln(1/δ)" if L_h == 2 else f"δ^(2−L_h) = δ^{2 - L_h:g}", fontsize=8)
    ax.set_ylabel("escape time", fontsize=8)
    ax.set_title("escape time (Thm 4)" if L_h == 2 else "escape time (Thm 10)", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)


def _escape_small(run: _Run, names: list[str], arch: Architecture) -> tuple[str | None, np.ndarray | None]:
    """Without a governing KKT point (a non-homogeneous net: tanh, GELU — Figures 9–13):
    (the row after escape — the first plateau's saddle, else the end — and the flat mask
    of the neurons small at escape, :func:`ncfkit.phases.small_units`), so the figure shows
    which of the neurons that were small near the origin are still small at the next
    saddle; (None, None) when the run has no such rows or no small neuron at escape."""
    if "escape" not in names or not arch.neuron_layers:
        return None, None
    after = next((n for n in ("saddle", "final") if n in names), None)
    if after is None:
        return None, None
    from .phases import small_units, units_mask

    mask = units_mask(arch, small_units(arch, np.asarray(run.snapshots["escape"]["w"], dtype=float).ravel()))
    return (after, mask) if mask.any() else (None, None)


def _stayed_ratio(arch: Architecture, mask: np.ndarray, w: np.ndarray) -> float | None:
    """‖ψ_Z'‖/‖ψ‖ at ``w`` for Z' = the units of ``mask`` that are still small at ``w``."""
    from .phases import norm_ratio, small_units, units_mask

    return norm_ratio(mask & units_mask(arch, small_units(arch, w)), w)


def _previous_zero_masks(run: _Run, names: list[str], arch: Architecture,
                         escape_mask: np.ndarray | None = None) -> dict[str, list[np.ndarray]]:
    """For the row of plateau k ≥ 2: per block, the mask of the neurons that were small at
    plateau k − 1's saddle (:func:`ncfkit.phases.small_units`, the rule the plateau report
    uses), so one sees which of them stayed zero until this saddle. With ``escape_mask``
    (the neurons small at escape, :func:`_escape_small`) the escape row and the row after
    it outline that set too."""
    out = {}
    if escape_mask is not None:
        after, _ = _escape_small(run, names, arch)
        out["escape"] = out[after] = _layers({"w": escape_mask}, arch)
    if not _multi(run) or not arch.neuron_layers:
        return out
    from .phases import small_units, units_mask

    for p in run.plateaus:
        k = int(p["index"])
        name, prev = _saddle_name(k), _saddle_name(k - 1)
        if k < 2 or name not in names or prev not in run.snapshots:
            continue
        w_prev = np.asarray(run.snapshots[prev]["w"], dtype=float).ravel()
        mask = units_mask(arch, small_units(arch, w_prev))
        if mask.any():
            out[name] = _layers({"w": mask}, arch)
    return out


def _plateau_of(run: _Run, name: str) -> dict:
    """The plateau record whose saddle is snapshot ``name`` ({} if none)."""
    if not name.startswith("saddle"):
        return {}
    k = 1 if name == "saddle" else int(name.split("_")[1])
    return next((p for p in run.plateaus if int(p["index"]) == k), {})


def _open_end(run: _Run) -> bool:
    """A run with one plateau, unconfirmed: it ended inside a slow stretch that may or may
    not be a plateau (its "saddle" is where the run stopped)."""
    return len(run.plateaus) == 1 and not run.plateaus[0].get("confirmed", True)


def _row_label(run: _Run, name: str) -> str:
    """``saddle`` as before for a run with one plateau; ``plateau k`` with several."""
    if name == "saddle" and _open_end(run):
        return "end (unconfirmed plateau)"
    if _multi(run) and name.startswith("saddle"):
        k = 1 if name == "saddle" else int(name.split("_")[1])
        p = next((p for p in run.plateaus if int(p["index"]) == k), {})
        kind = {"strict saddle": "saddle"}.get(p.get("kind"), p.get("kind"))
        if p and not p.get("confirmed", True):
            kind = f"{kind}, unconfirmed" if kind else "unconfirmed"
        return f"plateau {k}" + (f" ({kind})" if kind else "")
    return name


def _snapshot_grid(sub, run: _Run, names: list[str], arch: Architecture, wz_mask, scale: str,
                   shown: list[int] | None = None) -> None:
    """|W_l| of the snapshots ``names`` (rows) for the layers ``shown`` (0-based columns; all
    by default), w_z hatched, the zero set of the previous row's event outlined."""
    shapes = arch.weight_shapes
    L = len(shapes)
    shown = list(range(L)) if shown is None else list(shown)
    axes = np.atleast_2d(sub.subplots(len(names), len(shown), width_ratios=_width_ratios([shapes[l] for l in shown])))
    if len(shown) == 1:
        axes = axes.reshape(len(names), 1)
    layers = {n: _layers(run.snapshots[n], arch) for n in names}
    masks = _layers({"w": wz_mask}, arch) if wz_mask is not None else [None] * L
    after, escape_mask = _escape_small(run, names, arch) if wz_mask is None else (None, None)
    prev = _previous_zero_masks(run, names, arch, escape_mask)
    times = {"init": 0.0, "escape": run.escape_time, "saddle": run.saddle_time}
    squeeze = _from_escape_axis(run)
    labels = {}
    for n in names:
        t = run.snapshots[n].get("time", times.get(n))
        if t is None:
            text = ""
        elif squeeze is not None and n != "init" and n != "escape":
            text = "\n" + _time_text(float(t), squeeze[0])
        else:
            text = f"\nt = {float(t):.5g}"
        labels[n] = _row_label(run, n) + text
        w = np.asarray(run.snapshots[n]["w"], dtype=float).ravel()
        if n != "init" and arch.neuron_layers and np.linalg.norm(w) > 0:  # the snapshot rule's count
            from .phases import small_units

            labels[n] += "\nsmall: " + "|".join(str(len(z)) for z in small_units(arch, w))
        if wz_mask is not None and wz_mask.size == w.size and np.linalg.norm(w) > 0:
            labels[n] += f"\n‖ψ_wz‖/‖ψ‖ = {np.linalg.norm(w[wz_mask]) / np.linalg.norm(w):.2g}"
        if n == after:  # Figures 9-13: the neurons small at escape, measured here
            stayed = _stayed_ratio(arch, escape_mask, w)
        else:
            stayed = _opt_float(_plateau_of(run, n).get("prev_zero_stayed_ratio")) if n in prev else None
        if stayed is not None:  # Appendix G's claim: the rest of the previous zero set
            labels[n] += f"\n‖ψ_Z'‖/‖ψ‖ = {stayed:.2g}"
    bottom = len(names) - 1
    for col, l in enumerate(shown):
        norm = _norm(scale, [layers[n][l] for n in names])
        for i, n in enumerate(names):
            ax = axes[i, col]
            im = _heatmap(sub, ax, layers[n][l], norm, _layer_names(L)[l], masks[l],
                          colorbar=scale == "panel", prev_mask=prev[n][l] if n in prev else None)
            if i == bottom:
                ax.set_xlabel(_axis_labels(l + 1, L)[0], fontsize=7, labelpad=1)
            if col == 0:
                ax.set_ylabel(labels[n], fontsize=8, fontweight="bold", labelpad=3)
        if scale != "panel":  # one colour bar for the shared scale of the layer
            cb = sub.colorbar(im, ax=list(axes[:, col]), fraction=0.08, pad=0.02)
            cb.ax.tick_params(labelsize=6)
    if wz_mask is not None:
        sub.suptitle("|W_l| (rows: neurons of layer l, columns: its inputs); hatched: the "
                     "zero-preserving subset w_z of the governing KKT point w*", fontsize=8)
    if prev:
        from matplotlib.patches import Patch

        if escape_mask is not None and len(prev) > 2:
            what = "at escape (rows escape and plateau 1) or at the previous plateau's saddle"
        elif escape_mask is not None:
            what = "at escape"
        else:
            what = "at the previous plateau's saddle"
        handles = [Patch(fill=False, edgecolor=PREV_ZERO_COLOR, hatch="\\\\",
                         label=f"neurons small {what} (< 10% of the layer's largest); "
                               "Z': those of them still small here")]
        if wz_mask is not None:
            handles.insert(0, Patch(fill=False, edgecolor=WZ_COLOR, hatch="//",
                                    label="w_z of the governing KKT point w*"))
        sub.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7,
                   frameon=False)


def _plane_figure(tree: dict, arch: Architecture, runs: list[_Run]) -> Figure:
    """Example 1 / Figure 2: the trajectories ψ(t, δw0) and the reference path p(t) over
    the contour of 𝓛, the saddle p* (where p(t) ends) and the end point of the runs; the
    loss of each run; with two or more escaped δ the escape times against ln(1/δ)."""
    fit = len({r.delta for r in runs if r.escape_time is not None}) >= 2
    fig = Figure(figsize=(14.0 if fit else 10.0, 5.0), layout="constrained")
    axes = fig.subplots(1, 3 if fit else 2, width_ratios=[1.25, 1, 0.8] if fit else [1.25, 1])
    ax, ax_loss = axes[0], axes[1]
    if fit:
        _escape_fit_panel(axes[2], tree, runs)
    ref = _reference_run(tree)
    paths = [(r, _path(r)) for r in runs]
    pts = [p for _, p in paths if p is not None]
    if ref is not None and _path(ref) is not None:
        pts.append(_path(ref))
    if not pts:
        raise _bad(tree, "the run kept no trajectory (nor snapshots) to draw")
    lo, hi = _window(np.concatenate(pts))
    _loss_contour(ax, tree, (lo[0], hi[0]), (lo[1], hi[1]))
    import matplotlib as mpl

    colors = mpl.colormaps["Reds"](np.linspace(0.55, 0.95, max(len(runs), 2)))
    for (r, p), c in zip(paths, colors, strict=False):  # colors: at least one per run
        if p is not None:
            ax.plot(p[:, 0], p[:, 1], "-", color=c, lw=1.5, label=f"ψ(t, δw0), δ = {r.delta:g}")
    if ref is not None and _path(ref) is not None:
        p = _path(ref)
        ax.plot(p[:, 0], p[:, 1], "-", color="#2ca02c", lw=2.2, alpha=0.8,
                label=f"reference path p(t) (δ_ref = {ref.delta:.2g})")
        if "saddle" in ref.snapshots:
            s = np.asarray(ref.snapshots["saddle"]["w"], dtype=float).ravel()
            ax.plot(*s, "o", color="#2ca02c", ms=8, mec="black", zorder=5,
                    label=f"saddle p* ≈ ({s[0]:.3g}, {s[1]:.3g})")
    ends = [np.asarray(r.snapshots["final"]["w"], dtype=float).ravel()
            for r in runs if "final" in r.snapshots]
    for i, e in enumerate(ends):
        ax.plot(*e, "o", color="#d62728", ms=7, mec="black", zorder=5,
                label=f"where the runs end ≈ ({e[0]:.3g}, {e[1]:.3g})" if i == 0 else None)
    smallest = int(np.argmin([r.delta for r in runs]))
    _plane_plateaus(ax, runs[smallest])
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel("w1", fontsize=8)
    ax.set_ylabel("w2", fontsize=8)
    ax.set_aspect("equal", adjustable="box")
    ax.tick_params(labelsize=7)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="outside lower center", ncols=3,
               frameon=False)
    ax.set_title("trajectories over the loss contour (paper Figure 2)", fontsize=9)
    smallest = int(np.argmin([r.delta for r in runs]))
    _loss_panel(ax_loss, runs, smallest, _predicted_escape(tree, runs[smallest]),
                heading=f"loss; events labelled for δ = {runs[smallest].delta:g}")
    fig.suptitle(f"escape from small initialization — {arch.describe()}{_lh_text(tree)}",
                 fontsize=10)
    return fig


def _plane_plateaus(ax, run: _Run) -> None:
    """The saddle of each plateau of a run with several, as a numbered point of the plane
    (markers with gid ``plateau k``, as on the loss curve)."""
    if not _multi(run):
        return
    for i, p in enumerate(run.plateaus):
        k = int(p["index"])
        snap = run.snapshots.get(_saddle_name(k))
        if snap is None:
            continue
        w = np.asarray(snap["w"], dtype=float).ravel()
        ax.plot(*w, "o", ms=15, mfc="none", mec=PLATEAU_COLOR, mew=1.6, zorder=6, gid=f"plateau {k}",
                label=f"plateau saddles of δ = {run.delta:g} (numbered)" if i == 0 else None)
        ax.annotate(str(k), tuple(w), textcoords="offset points", xytext=(-9, 7), ha="right",
                    fontsize=9, fontweight="bold", color=PLATEAU_COLOR, zorder=7)


def _window(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plot limits holding the origin and every point, padded, neither side shorter than
    half the other (so an almost 1-D path still shows the contour around it)."""
    lo = np.minimum(points.min(0), 0.0)
    hi = np.maximum(points.max(0), 0.0)
    span = float(max((hi - lo).max(), 1e-12))
    short = np.maximum(0.5 * span - (hi - lo), 0.0)
    lo, hi = lo - short / 2, hi + short / 2
    return lo - 0.1 * span, hi + 0.1 * span


def _path(run: _Run) -> np.ndarray | None:
    """The 2-D points of a run in time order: its trajectory samples and snapshots."""
    parts = []
    if run.trajectory is not None:
        parts.append(np.column_stack([run.trajectory[0], run.trajectory[1]]))
    for snap in run.snapshots.values():
        t = snap.get("time")
        if t is not None:
            w = np.asarray(snap["w"], dtype=float).ravel()
            parts.append(np.concatenate([[float(t)], w])[None])
    if not parts:
        return None
    tw = np.concatenate(parts)
    tw = tw[np.argsort(tw[:, 0], kind="stable")]
    return tw[:, 1:]


def _loss_contour(ax, tree: dict, xlim, ylim) -> None:
    """Contour of 𝓛 over the plotted window, from the data stored in the file or the data
    file its provenance names; a note instead when neither can be read."""
    loss_grid = _plane_loss_grid(tree, xlim, ylim)
    if loss_grid is None:
        ax.text(0.02, 0.02, "no data to draw the loss contour", fontsize=7, transform=ax.transAxes)
        return
    G1, G2, Z = loss_grid
    from matplotlib.colors import LogNorm

    levels = np.geomspace(max(Z.min(), Z.max() * 1e-4), Z.max(), 18)
    import matplotlib as mpl
    from matplotlib.colors import ListedColormap

    # pale blues without transparency: few distinct colours, so 256-colour PNGs keep them
    pale = ListedColormap(mpl.colormaps["Blues_r"](np.linspace(0.35, 1.0, 256)))
    ax.contourf(G1, G2, Z, levels=levels, norm=LogNorm(), cmap=pale)
    ax.contour(G1, G2, Z, levels=levels, colors="#4a6b8a", linewidths=0.4)


def _plane_loss_grid(tree, xlim, ylim, n: int = 160):
    """(G1, G2, 𝓛) on an n × n grid of the plane of the two weights (the architecture's
    forward pass on numpy arrays), or None without the run's data."""
    from .losses import make_loss

    X, y = _run_data(tree)
    if X is None:
        return None
    prov = tree.get("provenance", {})
    arch = _architecture(tree)
    loss = make_loss(prov.get("loss", "square"), prov.get("reduction", "sum"))
    g1, g2 = np.linspace(*xlim, n), np.linspace(*ylim, n)
    G1, G2 = np.meshgrid(g1, g2)
    W = np.column_stack([G1.ravel(), G2.ravel()])
    pred = arch.forward(np.asarray(X, dtype=np.float64), W)
    Z = np.asarray(loss.value(pred, np.asarray(y, dtype=np.float64))).reshape(G1.shape)
    return G1, G2, Z


def _run_data(tree: dict):
    """(X, y) of the run: a ``data`` group in the file, else the provenance's data file
    when it can be found and its sha256 matches; (None, None) otherwise."""
    data = tree.get("data")
    if isinstance(data, dict) and "X" in data and "y" in data:
        return np.asarray(data["X"], dtype=float), np.asarray(data["y"], dtype=float)
    prov = tree.get("provenance", {})
    path = prov.get("data_file")
    if not path:
        return None, None
    from pathlib import Path

    from .io import load_data

    candidates = [Path(path)]
    if tree.get("_source") and not Path(path).is_absolute():
        # a path as typed where the run started: try the result's folder and its parents
        # (an example script writes examples/out/run.h5 with data examples/data/…)
        folder = Path(tree["_source"]).resolve().parent
        candidates += [parent / path for parent in (folder, *folder.parents)]
    for c in candidates:
        if c.is_file():
            try:
                ds = load_data(c)
            except InputError:
                continue
            if prov.get("data_sha256") in (None, ds.sha256):
                return ds.X, ds.y
    return None, None


# --------------------------------------------------------------------------- dispatch


FIGURES: dict[str, Callable[[dict], Figure]] = {"kkt": kkt_figure, "escape": escape_figure}


def figure_for(tree: dict, *, run: int | None = None, scale: str = "layer", layers=None) -> Figure:
    """The figure for a result tree, chosen by its ``ncfkit_kind``.

    Args:
        tree: what :func:`ncfkit.io.read_h5` returned (``_source``, if set, names the file
            in messages).
        run: escape files with several δ: the index of the run whose weights are shown
            (default: the smallest δ).
        scale: colour scale of the |W| heat maps, one of :data:`SCALES`.
        layers: escape files: the layers whose |W_l| are drawn (1-based: ``"1"``,
            ``"2-4"``, ``[1, 3]``; :func:`parse_layers`); None draws every layer.

    Raises:
        InputError: a kind without a figure, an option that does not apply, a result
            missing what its figure needs.
    """
    kind = tree.get("ncfkit_kind")
    if kind not in FIGURES:
        raise _bad(tree, f"an ncfkit {kind!r} file has no figure; plot a "
                         f"{' or '.join(repr(k) for k in FIGURES)} file")
    if scale not in SCALES:
        raise InputError(f"unknown colour scale {scale!r}; expected one of {', '.join(SCALES)}")
    if kind != "escape" and run is not None:
        raise InputError("--run applies to escape files only")
    if kind != "escape" and layers is not None:
        raise InputError("--layers applies to escape files only")
    try:
        if layers is not None:
            return FIGURES[kind](tree, run=run, scale=scale, layers=layers)
        return FIGURES[kind](tree, run=run, scale=scale)
    except (KeyError, IndexError, ValueError, TypeError) as e:
        if isinstance(e, InputError):
            raise
        raise _bad(tree, f"incomplete or damaged {kind} result ({type(e).__name__}: {e})") from None


def save_figure(fig: Figure, path, force: bool = False, dpi: float = 100,
                palette: bool = True) -> None:
    """Write ``fig`` as PNG or PDF (by suffix) atomically: a partial image never appears
    at ``path``. The PNG is exactly ``fig.get_size_inches() * dpi`` pixels; with
    ``palette`` it is stored with 256 colours (2-3× smaller, for READMEs and repositories;
    colour bars show slight banding), else as full RGBA."""
    from .io import atomic_path, check_output_path

    p = check_output_path(path, force, FIGURE_SUFFIXES)
    pixels = fig.get_size_inches() * dpi
    if not (math.isfinite(dpi) and pixels.min() >= 16):
        raise InputError(f"a {pixels[0]:.3g}×{pixels[1]:.3g} px image is too small to draw; "
                         "raise the dpi")
    with atomic_path(p, force=force) as tmp:
        if p.suffix.lower() == ".png" and palette:
            _write_png(fig, tmp, dpi)
        elif p.suffix.lower() == ".png":
            fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": "ncfkit"})
        else:
            fig.savefig(tmp, format="pdf", dpi=dpi, metadata={"Creator": "ncfkit"})


def _write_png(fig: Figure, path: str, dpi: float) -> None:
    import io

    from PIL import Image  # a dependency of matplotlib

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    with Image.open(buf) as img:
        # max-coverage keeps every colour within a few levels (median cut moved the
        # thin event lines by up to 97 levels)
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MAXCOVERAGE,
                                            dither=Image.Dither.NONE)
        small.save(path, format="PNG", optimize=True, pnginfo=_png_info())


def _png_info():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", "ncfkit")
    return info


from ._callable import make_callable  # noqa: E402  (ncfkit.plot(...) calls ncfkit.api.plot)

make_callable(__name__)
