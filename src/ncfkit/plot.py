"""Figures of ncfkit results, chosen by what a result file holds (issue 5).

- a ``kkt`` file: |W_l| of each distinct KKT point as heat maps, and per hidden layer the
  norms ‖W_l[j,:]‖ (incoming) and ‖W_{l+1}[:,j]‖ (outgoing) of every neuron j as bars; the
  neurons whose row and column vanish form the zero-preserving subset (Def. 15, Thm 18);
- an ``escape`` run of a feed-forward net: the loss against time with the escape and
  first-saddle events marked (the paper's Figures 1, 4–8, panel b), and below it |W_l| of
  every layer at initialization, escape and the saddle, one colour scale per layer, the
  zero-preserving subset w_z of w* outlined; with several δ also the escape times against
  x(δ) = ln(1/δ) (L_h = 2) or δ^{2−L_h} (L_h > 2) beside the line of Theorems 4/10;
- an ``escape`` run of the diagonal model in 2-D: the trajectories ψ(t, δw0) for each δ
  and the reference path p(t) over the loss contour, the saddle p* and the minimum marked
  (the paper's Figure 2, Example 1).

Every ``*_figure`` function is pure: it takes the nested dict :func:`ncfkit.io.read_h5`
returns and gives back a :class:`matplotlib.figure.Figure` built without pyplot (so no
global backend state and no display; PNG goes through Agg, PDF through matplotlib's PDF
backend, no LaTeX). :func:`save_figure` writes one atomically.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .errors import InputError

__all__ = ["FIGURE_SUFFIXES", "SCALES", "figure_for", "kkt_figure", "escape_figure",
           "save_figure"]

FIGURE_SUFFIXES = (".png", ".pdf")
#: Colour scales of the |W_l| heat maps: one linear scale per layer shared by the panels
#: of that layer (the issue's default), one per panel, or one logarithmic per layer (shows
#: the O(δ) weights of w_z next to the O(1) active ones).
SCALES = ("layer", "panel", "log")
CMAP = "viridis"
WZ_COLOR = "#ff4fd8"  # outline of w_z: magenta, visible on every viridis colour
EVENT_COLORS = {"escape": "#d62728", "saddle": "#2ca02c"}
MAX_KKT_POINTS = 6
NCF = r"$\mathcal{N}$"  # mathtext, no LaTeX needed (DejaVu has no 𝒩 glyph)


def _bad(tree: dict, what: str) -> InputError:
    return InputError(f"{tree.get('_source', 'result file')}: {what}")


# --------------------------------------------------------------------------- helpers


def _architecture(tree: dict) -> dict[str, Any]:
    """The architecture record of the provenance, as a dict (no torch needed)."""
    spec = tree.get("provenance", {}).get("architecture")
    if spec is None:
        raise _bad(tree, "no architecture in its provenance; not a complete ncfkit result")
    try:
        spec = json.loads(spec) if isinstance(spec, str) else dict(spec)
        if spec["arch"] == "mlp":
            widths = [int(spec["d"]), *(int(k) for k in spec["hidden"]), 1]
            spec["shapes"] = [(widths[l + 1], widths[l]) for l in range(len(widths) - 1)]
        elif spec["arch"] != "diag":
            raise KeyError(spec["arch"])
    except (ValueError, KeyError, TypeError):
        raise _bad(tree, f"malformed architecture record {spec!r}") from None
    return spec


def _layers(node: dict, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """W_1 … W_L of a point or snapshot: datasets ``W1`` … or the flat ``w`` split."""
    if all(f"W{l}" in node for l in range(1, len(shapes) + 1)):
        Ws = [np.asarray(node[f"W{l}"]) for l in range(1, len(shapes) + 1)]
        return [W.reshape(shape) for W, shape in zip(Ws, shapes)]
    w = np.asarray(node["w"]).ravel()
    sizes = np.cumsum([r * c for r, c in shapes])[:-1]
    return [part.reshape(shape) for part, shape in zip(np.split(w, sizes), shapes)]


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
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _outline(ax, mask: np.ndarray) -> None:
    """Outline and hatch the entries of a boolean mask: whole rows and whole columns as
    bands, anything else cell by cell (hatched, so a band at the edge of the axes cannot
    be mistaken for the row next to it)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return
    style = dict(fill=False, edgecolor=WZ_COLOR, linewidth=0.8, hatch="///", alpha=0.55)
    rows, cols = mask.all(axis=1), mask.all(axis=0)
    for a, b in _runs(rows):
        ax.add_patch(Rectangle((-0.5, a - 0.5), mask.shape[1], b - a, **style))
    for a, b in _runs(cols):
        ax.add_patch(Rectangle((a - 0.5, -0.5), b - a, mask.shape[0], **style))
    for i, j in zip(*np.nonzero(mask & ~rows[:, None] & ~cols[None, :])):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, **style))


def _norm(scale: str, values: list[np.ndarray]):
    """A colour normalisation for |W| panels sharing one scale (``None``: per panel)."""
    from matplotlib.colors import LogNorm, Normalize

    top = max((float(np.abs(v).max()) for v in values if v.size), default=0.0)
    if scale == "panel":
        return None
    if scale == "log":
        nonzero = [np.abs(v)[np.abs(v) > 0] for v in values]
        low = min((float(v.min()) for v in nonzero if v.size), default=top)
        low = max(low, top * 1e-8) if top > 0 else 1e-12
        return LogNorm(vmin=low, vmax=max(top, low * 10))
    return Normalize(vmin=0.0, vmax=top if top > 0 else 1.0)


def _heatmap(fig, ax, W: np.ndarray, norm, title: str, mask: np.ndarray | None = None,
             labels: tuple[str, str] | None = None, colorbar: bool = True) -> None:
    A = np.abs(W)
    if norm is not None and getattr(norm, "vmin", 0) and norm.vmin > 0:
        A = np.maximum(A, norm.vmin)  # log scale: exact zeros at the floor colour
    im = ax.imshow(A, cmap=CMAP, norm=norm, aspect="auto", interpolation="nearest")
    if mask is not None:
        _outline(ax, mask)
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
    L_h = tree.get("homogeneity", float("nan"))
    if arch["arch"] == "diag":
        return _kkt_diag_figure(tree, arch, [points[i] for i in shown], len(order), L_h)
    shapes = arch["shapes"]
    L = len(shapes)
    fig = Figure(figsize=(3.0 * L + 2.6 * (L - 1) + 0.4, 2.5 * len(shown) + 0.5),
                 layout="constrained")
    title = f"KKT points of the constrained NCF — {_describe(arch)}, L_h = {L_h:g}"
    if len(order) > len(shown):
        title += f" (first {len(shown)} of {len(order)} points)"
    fig.suptitle(title + "; hatched: zero-preserving subset w_z", fontsize=10)
    subfigs = np.atleast_1d(fig.subfigures(len(shown), 1))
    for sub, key in zip(subfigs, shown):
        p = points[key]
        Ws = _layers(p, shapes)
        masks = _zero_preserving_masks(tree, np.asarray(p["w"], dtype=float), shapes)
        ratios = _width_ratios(shapes) + [2.2] * (L - 1)
        axes = sub.subplots(1, 2 * L - 1, width_ratios=ratios)
        active = p.get("active_per_layer")
        active = "" if active is None else f", active per layer {np.atleast_1d(active).tolist()}"
        sub.suptitle(f"point {key}: {NCF} = {p.get('ncf', float('nan')):.6g}, "
                     f"Δ = {p.get('delta', float('nan')):.4g}, {p.get('kind', '?')}, "
                     f"found {p.get('count', '?')}×{active}", fontsize=9)
        for l, (ax, W, M, name) in enumerate(zip(axes[:L], Ws, masks, _layer_names(L)), 1):
            _heatmap(sub, ax, W, _norm(scale, [W]), name, M, _axis_labels(l, L))
        for l, ax in enumerate(axes[L:]):
            _neuron_bars(ax, Ws[l], Ws[l + 1], l + 1)
    return fig


def _describe(arch: dict) -> str:
    if arch["arch"] == "diag":
        return f"diagonal model d={arch['d']}, D={arch['depth']}"
    return f"mlp {'-'.join(str(k) for k in (arch['d'], *arch['hidden'], 1))}, act={arch['act']}"


def _zero_preserving_masks(tree: dict, w: np.ndarray, shapes) -> list[np.ndarray]:
    """Per layer, the boolean mask of w_z of the KKT point ``w`` (:mod:`ncfkit.sparsity`,
    its default relative threshold)."""
    import torch

    from .io import architecture_of
    from .sparsity import analyse_sparsity

    arch = architecture_of(tree["provenance"])
    mask = analyse_sparsity(arch, torch.as_tensor(w, dtype=torch.float64)).mask
    return _layers({"w": mask.numpy()}, shapes)


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


def _kkt_diag_figure(tree, arch, points, total, L_h) -> Figure:
    d = int(arch["d"])
    fig = Figure(figsize=(max(6.0, 0.35 * d + 2.5), 1.8 * len(points) + 0.6), layout="constrained")
    fig.suptitle(f"KKT points of the constrained NCF — {_describe(arch)}, L_h = {L_h:g}" + (f" (first {len(points)} of {total})" if total > len(points) else ""),
                 fontsize=9)
    axes = np.atleast_1d(fig.subplots(len(points), 1))
    for i, (ax, p) in enumerate(zip(axes, points)):
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


def escape_figure(tree: dict, *, run: int | None = None, scale: str = "layer") -> Figure:
    raise _bad(tree, "escape figures are not available yet")


# --------------------------------------------------------------------------- dispatch


FIGURES: dict[str, Callable[[dict], Figure]] = {"kkt": kkt_figure, "escape": escape_figure}


def figure_for(tree: dict, *, run: int | None = None, scale: str = "layer") -> Figure:
    """The figure for a result tree, chosen by its ``ncfkit_kind``.

    Args:
        tree: what :func:`ncfkit.io.read_h5` returned (``_source``, if set, names the file
            in messages).
        run: escape files with several δ: the index of the run whose weights are shown
            (default: the smallest δ).
        scale: colour scale of the |W| heat maps, one of :data:`SCALES`.

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
    try:
        return FIGURES[kind](tree, run=run, scale=scale)
    except (KeyError, IndexError, ValueError, TypeError) as e:
        if isinstance(e, InputError):
            raise
        raise _bad(tree, f"incomplete or damaged {kind} result ({type(e).__name__}: {e})") from None


def save_figure(fig: Figure, path, force: bool = False, dpi: float = 100) -> None:
    """Write ``fig`` as PNG or PDF (by suffix) atomically: a partial image never appears
    at ``path``. The PNG is exactly ``fig.get_size_inches() * dpi`` pixels."""
    from .io import atomic_path, check_output_path

    p = check_output_path(path, force, FIGURE_SUFFIXES)
    with atomic_path(p, force=force) as tmp:
        fig.savefig(tmp, format=p.suffix.lower().lstrip("."), dpi=dpi,
                    metadata={"Software": "ncfkit"} if p.suffix.lower() == ".png" else None)
