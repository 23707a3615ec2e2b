"""``ncfkit plot`` and :mod:`ncfkit.plot`: every figure kind rendered from small results
(Agg, no display), the images checked for format and pixel size, every bad input through
CliRunner (exit 2, one line, no image and no temporary file left), and examples/fig2.sh
end to end.

Result files are written here in the layouts of ``ncfkit kkt --out`` (:func:`ncfkit.io.
kkt_tree`) and ``ncfkit escape --out`` (:data:`ncfkit.escape.RUN_H5_LAYOUT`) from closed
forms (Example 1's ψ(t, δw0) and p(t); a logistic loss drop for the MLP), so these tests
do not depend on training; the fig2.sh test runs the real ``ncfkit escape``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ncfkit import plot, theory
from ncfkit.errors import InputError
from ncfkit.io import load_data, provenance, read_h5, write_h5
from utils import run_cli

REPO = Path(__file__).resolve().parents[1]
D, HIDDEN = 4, (5,)  # the MLP fixture: 4 inputs, 5 hidden neurons, neuron 2 active
ACTIVE = 2


# --------------------------------------------------------------------------- fixtures


def _mlp_arch(hidden=HIDDEN, act="square") -> dict:
    return {"arch": "mlp", "d": D, "hidden": list(hidden), "act": act}


def _shapes(arch: dict) -> list[tuple[int, int]]:
    k = [arch["d"], *arch["hidden"], 1]
    return [(k[l + 1], k[l]) for l in range(len(k) - 1)]


def _split(w: np.ndarray, shapes) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for l, (r, c) in enumerate(shapes, start=1):
        out[f"W{l}"] = w[start:start + r * c].reshape(r, c)
        start += r * c
    return out


def _one_neuron(arch: dict, scale: float, noise: float, rng) -> np.ndarray:
    """Weights with one bright path through neuron ACTIVE of every hidden layer, plus
    noise of size ``noise`` everywhere."""
    Ws = []
    for rows, cols in _shapes(arch):
        W = noise * rng.standard_normal((rows, cols))
        W[min(ACTIVE, rows - 1), min(ACTIVE, cols - 1)] += scale
        if cols == arch["d"]:
            W[min(ACTIVE, rows - 1)] += scale / 2
        Ws.append(W)
    return np.concatenate([W.ravel() for W in Ws])


def _wz_mask(arch: dict) -> np.ndarray:
    """w_z of the fixture's w*: every neuron but ACTIVE in every hidden layer."""
    masks = [np.zeros(s, dtype=np.uint8) for s in _shapes(arch)]
    for l in range(len(arch["hidden"])):
        zero = [j for j in range(arch["hidden"][l]) if j != ACTIVE]
        masks[l][zero, :] = 1
        masks[l + 1][:, zero] = 1
    return np.concatenate([m.ravel() for m in masks])


def _run_node(delta: float, arch: dict, rng, *, saddle: bool = True) -> dict:
    """One run of the escape layout: a logistic drop of the loss from 10 to 4 at
    t_esc = 10·ln(1/δ), snapshots growing from δ-noise to one bright neuron."""
    shapes = _shapes(arch)
    t_esc = 10 * math.log(1 / delta)
    t = np.linspace(0.0, t_esc + 20.0, 400)
    loss = 4.0 + 6.0 / (1.0 + np.exp((t - t_esc - 0.5) * 8.0))
    snaps = {}
    for name, ts, scale in (("init", 0.0, 0.0), ("escape", t_esc, 0.3),
                            ("saddle", t_esc + 1.5, 2.0), ("final", t[-1], 2.0)):
        if name == "saddle" and not saddle:
            continue
        w = _one_neuron(arch, scale, delta / 10, rng)
        snaps[name] = {"time": ts, "step": int(ts * 100), "loss": float(np.interp(ts, t, loss)),
                       "grad_norm": 1e-3, "w": w, **_split(w, shapes)}
    return {
        "delta": delta, "escaped": True, "escape_time": t_esc,
        "predicted_escape_time": 9.0 * math.log(1 / delta),
        "saddle_time": t_esc + 1.5 if saddle else float("nan"),
        "saddle_loss": 4.0 if saddle else float("nan"), "status": "passed saddle",
        "records": {"time": t, "loss": loss, "step": np.arange(t.size),
                    "grad_norm": np.abs(np.gradient(loss, t))},
        "events": {"escape": {"time": t_esc, "step": 1, "loss": 9.9, "grad_norm": 0.1}},
        "snapshots": snaps,
    }


def _escape_tree(data: Path, arch: dict, deltas, *, L_h: float = 2.0, saddle: bool = True) -> dict:
    rng = np.random.default_rng(1)
    w_star = _one_neuron(arch, 1.0, 0.0, rng)
    prov = provenance(load_data(data), architecture=arch, loss="square", reduction="sum")
    return {
        "status": "complete", "message": "", "homogeneity": L_h, "method": "gd",
        "num_params": w_star.size, "provenance": prov,
        "kkt": {"ncf": 0.5, "delta": 0.3, "w_star": w_star / np.linalg.norm(w_star),
                "wz_mask": _wz_mask(arch)},
        "runs": {str(i): _run_node(d, arch, rng, saddle=saddle) for i, d in enumerate(deltas)},
    }


def _example1_run(delta: float) -> dict:
    """Example 1 from the closed form: ψ(t, δw0), t ∈ [0, 3], events where the loss
    crosses 0.99·𝓛(0) and where ‖∇𝓛‖ is least on the plateau at loss ≈ 1."""
    t = np.linspace(0.0, 3.0, 600)
    psi = theory.example1_psi(t, delta)
    loss = theory.example1_loss(psi)
    t_esc = float(t[np.argmax(loss < 0.99 * loss[0])])
    plateau = (loss < 1.5) & (t < 1.2)
    i_sad = int(np.flatnonzero(plateau)[np.argmin(theory.example1_grad_norm(psi)[plateau])])
    snaps = {name: {"time": t[i], "w": psi[i]} for name, i in
             (("init", 0), ("escape", int(np.searchsorted(t, t_esc))), ("saddle", i_sad),
              ("final", t.size - 1))}
    return {"delta": delta, "escape_time": t_esc, "saddle_time": float(t[i_sad]),
            "records": {"time": t, "loss": loss}, "snapshots": snaps,
            "trajectory": {"time": t[::4], "w": psi[::4]}}


def _example1_tree(data: Path, deltas=(0.1, 0.05, 0.001)) -> dict:
    s = np.linspace(-1.0, 1.0, 200)
    shift = math.log(1 / 1e-5) / 16
    p = theory.example1_reference_path(s)
    ref = {"delta_ref": 1e-5, "escape_time": shift, "saddle_time": shift + 1.0,
           "records": {"time": s + shift, "loss": theory.example1_loss(p)},
           "snapshots": {"saddle": {"time": shift + 1.0, "w": p[-1]}},
           "trajectory": {"time": s + shift, "w": p}}
    prov = provenance(load_data(data), architecture={"arch": "diag", "d": 2, "depth": 2},
                      loss="square", reduction="sum")
    return {"status": "complete", "homogeneity": 2.0, "num_params": 2, "provenance": prov,
            "kkt": {"ncf": 8.0, "delta": 12.0, "w_star": np.array([1.0, 0.0]),
                    "wz_mask": np.array([0, 1], dtype=np.uint8)},
            "runs": {str(i): _example1_run(d) for i, d in enumerate(deltas)},
            "reference": ref}


def _kkt_tree(data: Path, arch: dict, n_points: int = 2) -> dict:
    rng = np.random.default_rng(2)
    prov = provenance(load_data(data), architecture=arch, loss="square", reduction="sum")
    points = {}
    for i in range(n_points):
        if arch["arch"] == "mlp":
            w = _one_neuron(arch, 1.0, 0.0, rng)
        else:
            w = np.eye(arch["d"])[i % arch["d"]]
        w = w / np.linalg.norm(w)
        node = {"ncf": 2.0 - i / 10, "delta": 1.0, "kind": "positive", "count": 3, "w": w}
        if arch["arch"] == "mlp":
            node.update(_split(w, _shapes(arch)),
                        active_per_layer=np.ones(len(arch["hidden"]), dtype=np.int64))
        points[str(i)] = node
    return {"homogeneity": 3.0, "num_params": points["0"]["w"].size, "provenance": prov,
            "points": points}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """data.npz (n = 12, d = 4), example1.npz, and one result file per figure kind."""
    root = tmp_path_factory.mktemp("plot")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", X=rng.standard_normal((12, D)), y=rng.standard_normal(12))
    np.savez(root / "example1.npz", X=np.eye(2), y=np.array([4.0, 1.0]))
    write_h5(root / "kkt.h5", "kkt", _kkt_tree(root / "data.npz", _mlp_arch()))
    write_h5(root / "kkt3.h5", "kkt", _kkt_tree(root / "data.npz", _mlp_arch((3, 4), "relu"), 3))
    diag = {"arch": "diag", "d": D, "depth": 2}
    write_h5(root / "kkt_diag.h5", "kkt", _kkt_tree(root / "data.npz", diag))
    write_h5(root / "run.h5", "escape", _escape_tree(root / "data.npz", _mlp_arch(), [0.01]))
    write_h5(root / "sweep.h5", "escape",
             _escape_tree(root / "data.npz", _mlp_arch(), [0.1, 0.01, 0.001]))
    write_h5(root / "deep.h5", "escape",
             _escape_tree(root / "data.npz", _mlp_arch((3, 4), "relu"), [0.05, 0.02], L_h=3.0,
                          saddle=False))
    write_h5(root / "example1.h5", "escape", _example1_tree(root / "example1.npz"))
    write_h5(root / "masks.h5", "sparsity", {"provenance": {}, "w": np.zeros(3)})
    return root


def _tree(path: Path) -> dict:
    tree = read_h5(path)
    tree["_source"] = str(path)
    return tree


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; asserts the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- figures

KINDS = ["kkt.h5", "kkt3.h5", "kkt_diag.h5", "run.h5", "sweep.h5", "deep.h5", "example1.h5"]


@pytest.mark.parametrize("name", KINDS, ids=[k.removesuffix(".h5") for k in KINDS])
def test_png_has_the_figure_size(files, tmp_path, name):
    fig = plot.figure_for(_tree(files / name))
    assert isinstance(fig, Figure)
    out = tmp_path / "fig.png"
    plot.save_figure(fig, out, dpi=40)
    w, h = fig.get_size_inches() * 40
    assert _png_size(out) == (round(w), round(h))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["kkt.h5", "run.h5", "example1.h5"])
def test_pdf_is_a_pdf(files, tmp_path, name):
    out = tmp_path / "fig.pdf"
    r = run_cli("plot", files / name, "-o", out)
    assert r.exit_code == 0, r.output
    data = out.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")


def test_full_colour_png_has_the_same_size(files, tmp_path):
    r = run_cli("plot", files / "run.h5", "-o", tmp_path / "a.png", "--dpi", 30)
    r2 = run_cli("plot", files / "run.h5", "-o", tmp_path / "b.png", "--dpi", 30, "--no-palette")
    assert r.exit_code == r2.exit_code == 0
    assert _png_size(tmp_path / "a.png") == _png_size(tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes()[25] == 3  # colour type: palette
    assert (tmp_path / "b.png").read_bytes()[25] in (2, 6)  # RGB / RGBA


def test_cli_png_size_and_message(files, tmp_path):
    out = tmp_path / "run.png"
    r = run_cli("plot", files / "run.h5", "-o", out, "--dpi", 50)
    assert r.exit_code == 0, r.output
    w, h = _png_size(out)
    assert f"{w}×{h} px" in r.stderr and "escape figure" in r.stderr
    assert r.stdout == ""


def _heatmaps(fig: Figure):
    return [ax for ax in fig.get_axes() if ax.images and ax.get_label() != "<colorbar>"]


def test_escape_figure_panels(files):
    """One heat map per layer and snapshot (init, escape, saddle), one colour scale per
    layer, w_z hatched in every one, and the escape drop zoomed."""
    fig = plot.figure_for(_tree(files / "run.h5"))
    maps = _heatmaps(fig)
    assert len(maps) == 2 * 3
    for ax in maps:
        assert any(isinstance(p, Rectangle) and p.get_hatch() for p in ax.patches)
    for layer in (0, 1):  # shared norm per layer: the three panels of a column agree
        norms = {(im.norm.vmin, im.norm.vmax) for ax in maps[layer::2] for im in ax.images}
        assert len(norms) == 1
    labels = [ax.get_ylabel() for ax in maps[0::2]]
    assert [lab.split("\n")[0] for lab in labels] == ["init", "escape", "saddle"]
    assert any(ax.get_title().startswith("zoom") for a in fig.get_axes() for ax in a.child_axes)


def test_panel_scale_gives_each_panel_its_own_norm(files):
    fig = plot.figure_for(_tree(files / "run.h5"), scale="panel")
    vmax = {round(im.norm.vmax, 12) for ax in _heatmaps(fig) for im in ax.images}
    assert len(vmax) > 2


def test_sweep_has_the_escape_time_fit_with_the_theory_slope(files):
    fig = plot.figure_for(_tree(files / "sweep.h5"))
    fit_ax = next(ax for ax in fig.get_axes() if ax.get_xlabel() == "ln(1/δ)")
    labels = [line.get_label() for line in fit_ax.get_lines()]
    assert "theory along w*: slope 1" in labels  # 1/(2𝒩) with 𝒩 = 0.5
    assert any(lab.startswith("fit: slope 10") for lab in labels)  # t_esc = 10·ln(1/δ)


def test_prediction_from_w0_is_drawn_when_the_file_has_it(files):
    """L_h = 2: T(δ) = (ln(1/δ) − ln A)/(2𝒩) on the fit panel and as a line on the loss."""
    tree = _tree(files / "sweep.h5")
    tree["kkt"]["ncf_flow_log_amplitude"] = -1.0
    fig = plot.figure_for(tree)
    fit_ax = next(ax for ax in fig.get_axes() if ax.get_xlabel() == "ln(1/δ)")
    line = next(li for li in fit_ax.get_lines() if li.get_label() == "theory, NCF flow from w0")
    x, y = line.get_data()
    assert np.allclose(y, (np.asarray(x) + 1.0) / (2 * 0.5))
    loss_ax = fig.get_axes()[0]
    t = (math.log(1000) + 1.0) / (2 * 0.5)  # chosen run: the smallest δ = 0.001
    assert f"predicted escape (NCF flow from w0), t = {t:.4g}" in loss_ax.get_title()
    assert any(line.get_linestyle() == ":" and np.allclose(line.get_xdata(), t)
               for line in loss_ax.get_lines())


def test_deep_run_without_saddle_shows_final_and_regressor(files):
    fig = plot.figure_for(_tree(files / "deep.h5"), run=0)
    rows = [ax.get_ylabel().split("\n")[0] for ax in _heatmaps(fig) if ax.get_ylabel()]
    assert rows == ["init", "escape", "final"]
    assert any(ax.get_xlabel().startswith("δ^(2−L_h)") for ax in fig.get_axes())


def test_non_homogeneous_run_has_no_theory_but_a_figure(files):
    """A tanh run: homogeneity stored as NaN, no governing KKT point, two δ. No w_z and no
    theory line; instead (Figures 9-13) the neurons small at escape — every hidden neuron
    but ACTIVE — are outlined at escape and at the saddle, with ‖ψ_Z'‖/‖ψ‖ at the saddle."""
    tree = _escape_tree(files / "data.npz", _mlp_arch(act="tanh"), [0.1, 0.01])
    tree.update(ncfkit_kind="escape", homogeneity=float("nan"))
    del tree["kkt"]
    fig = plot.figure_for(tree)
    assert "not homogeneous" in fig._suptitle.get_text()
    assert "predicted" not in _loss_axes(fig).get_title()
    assert any("fit needs a homogeneous" in t.get_text() for ax in fig.get_axes() for t in ax.texts)
    maps = _heatmaps(fig)
    assert all(p.get_gid() == "prev_zero" for ax in maps for p in ax.patches)  # no w_z hatch
    rows = [ax.get_ylabel().split("\n")[0] for ax in maps[0::2]]
    assert rows == ["init", "escape", "saddle"]
    outlined = [any(p.get_gid() == "prev_zero" for p in ax.patches) for ax in maps]
    assert outlined == [False, False, True, True, True, True]
    # W1: the rows of the 4 small neurons (ACTIVE's row is not outlined)
    bands = sorted((round(p.get_y() + 0.5), round(p.get_y() + 0.5 + p.get_height())) for p in maps[2].patches)
    assert bands == [(0, ACTIVE), (ACTIVE + 1, HIDDEN[0])]
    assert "‖ψ_Z'‖/‖ψ‖ = " in maps[4].get_ylabel()
    assert any("small at escape" in t.get_text() for sub in fig.subfigs for leg in sub.legends
               for t in leg.get_texts())


def test_layers_selects_the_heat_map_columns(files, tmp_path):
    """--layers 2 draws |W2| only (Figure 17 is layer 1 of the Figure-16 run): one column
    of heat maps, the loss panel unchanged, the title names the layer; "1-2" and [1, 2]
    are every layer."""
    tree = _tree(files / "run.h5")
    every = _heatmaps(plot.figure_for(tree))
    fig = plot.figure_for(tree, layers="2")
    maps = _heatmaps(fig)
    assert len(maps) == len(every) // 2 == 3
    assert all(ax.get_title().startswith("|W2|") for ax in maps)
    assert fig._suptitle.get_text().endswith("weights of W2")
    assert _loss_axes(fig) is not None
    assert plot.parse_layers("1-2", 2) == plot.parse_layers([2, 1], 2) == plot.parse_layers(None, 2) == [0, 1]
    res = run_cli("plot", files / "run.h5", "-o", tmp_path / "w1.png", "--layers", "1")
    assert res.exit_code == 0, res.output
    assert _png_size(tmp_path / "w1.png")[0] > 400


def test_example1_figure_draws_paths_contour_and_points(files):
    fig = plot.figure_for(_tree(files / "example1.h5"))
    ax = fig.get_axes()[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert sum(lab.startswith("ψ(t, δw0)") for lab in labels) == 3
    assert any(lab.startswith("reference path p(t)") for lab in labels)
    saddle = next(line for line in ax.get_lines() if line.get_label().startswith("saddle p*"))
    assert np.allclose(np.ravel(saddle.get_data()), [2.0, 0.0], atol=1e-3)
    end = next(line for line in ax.get_lines() if line.get_label().startswith("where the runs end"))
    assert np.allclose(np.ravel(end.get_data()), [2.0, 1.0], atol=1e-3)
    assert ax.collections, "no loss contour"


def test_example1_without_its_data_file_says_so(files, tmp_path):
    tree = _example1_tree(files / "example1.npz")
    tree["provenance"]["data_file"] = str(tmp_path / "gone.npz")
    tree["ncfkit_kind"] = "escape"
    fig = plot.figure_for(tree)
    assert any("no data" in t.get_text() for t in fig.get_axes()[0].texts)


def test_kkt_figure_one_panel_per_point(files):
    fig = plot.figure_for(_tree(files / "kkt3.h5"))
    assert len(fig.subfigs) == 3
    assert len(_heatmaps(fig)) == 3 * 3  # W1, W2, W3 per point
    bars = [ax for ax in fig.get_axes() if ax.get_title().startswith("layer")]
    assert len(bars) == 3 * 2  # one per hidden layer per point


def test_outline_bands_rows_columns_and_cells():
    fig = Figure()
    ax = fig.subplots()
    mask = np.zeros((4, 5), dtype=bool)
    mask[[0, 1]] = True  # rows 0-1: one band
    mask[:, 4] = True  # column 4: one band
    mask[3, 1] = True  # a lone cell
    plot._outline(ax, mask)
    boxes = sorted(tuple(float(v) for v in (p.get_x(), p.get_y(), p.get_width(), p.get_height()))
                   for p in ax.patches)
    assert boxes == [(-0.5, -0.5, 5, 2), (0.5, 2.5, 1, 1), (3.5, -0.5, 1, 4)]
    assert all(p.get_hatch() for p in ax.patches)


# --------------------------------------------------------------------------- bad input


def _not_ncfkit(folder: Path) -> Path:
    import h5py

    p = folder / "plain.h5"
    with h5py.File(p, "w") as f:
        f["X"] = np.zeros((2, 2))
    return p


BAD = {
    "not an ncfkit result": (lambda f, t: [_not_ncfkit(t), "-o", t / "x.png"],
                             "not an ncfkit result"),
    "data file": (lambda f, t: [f / "data.npz", "-o", t / "x.png"], "not a readable HDF5"),
    "missing result": (lambda f, t: [t / "none.h5", "-o", t / "x.png"], "does not exist"),
    "missing folder": (lambda f, t: [f / "run.h5", "-o", t / "no" / "x.png"], "does not exist"),
    "extension": (lambda f, t: [f / "run.h5", "-o", t / "x.jpg"], "unsupported extension"),
    "no extension": (lambda f, t: [f / "run.h5", "-o", t / "x"], "unsupported extension"),
    "kind without figure": (lambda f, t: [f / "masks.h5", "-o", t / "x.png"], "has no figure"),
    "run out of range": (lambda f, t: [f / "sweep.h5", "-o", t / "x.png", "--run", 3],
                         "out of range"),
    "run on kkt": (lambda f, t: [f / "kkt.h5", "-o", t / "x.png", "--run", 0], "escape files only"),
    "layers on kkt": (lambda f, t: [f / "kkt.h5", "-o", t / "x.png", "--layers", "1"], "escape files only"),
    "layer 0": (lambda f, t: [f / "run.h5", "-o", t / "x.png", "--layers", "0"], "--layers"),
    "layer past the last": (lambda f, t: [f / "run.h5", "-o", t / "x.png", "--layers", "1,3"], "--layers"),
    "layers not numbers": (lambda f, t: [f / "run.h5", "-o", t / "x.png", "--layers", "1-x"], "--layers"),
    "layers backwards": (lambda f, t: [f / "run.h5", "-o", t / "x.png", "--layers", "2-1"], "--layers"),
    "layers of a 2-D model": (lambda f, t: [f / "example1.h5", "-o", t / "x.png", "--layers", "1"], "--layers"),
    "dpi": (lambda f, t: [f / "kkt.h5", "-o", t / "x.png", "--dpi", 0], "--dpi"),
    "tiny dpi": (lambda f, t: [f / "kkt.h5", "-o", t / "x.png", "--dpi", 0.001], "--dpi"),
    "huge dpi": (lambda f, t: [f / "kkt.h5", "-o", t / "x.png", "--dpi", 1e6], "--dpi"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_exit_2_no_image(files, tmp_path, case):
    make, match = BAD[case]
    r = run_cli("plot", *make(files, tmp_path))
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], r.stderr
    assert "Traceback" not in r.output
    assert not list(tmp_path.glob("x*")) and _leftovers(tmp_path) == []


def test_existing_output_needs_force(files, tmp_path):
    out = tmp_path / "fig.png"
    out.write_bytes(b"keep me")
    r = run_cli("plot", files / "kkt.h5", "-o", out)
    assert r.exit_code == 2 and "--force" in r.stderr
    assert out.read_bytes() == b"keep me"
    r = run_cli("plot", files / "kkt.h5", "-o", out, "--force")
    assert r.exit_code == 0, r.output
    _png_size(out)
    assert _leftovers(tmp_path) == []


def test_damaged_escape_file_is_one_line(files, tmp_path):
    tree = _escape_tree(files / "data.npz", _mlp_arch(), [0.01])
    del tree["runs"]["0"]["records"]
    write_h5(tmp_path / "bad.h5", "escape", tree)
    r = run_cli("plot", tmp_path / "bad.h5", "-o", tmp_path / "x.png")
    assert r.exit_code == 2 and "incomplete or damaged escape result" in r.stderr
    assert not (tmp_path / "x.png").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_failed_render_leaves_no_partial_image(files, tmp_path, monkeypatch, suffix):
    def broken(self, fname, **kw):
        data = b"%PDF-1.4 partial" if suffix == ".pdf" else b"\x89PNG partial"
        if hasattr(fname, "write"):
            fname.write(data)
        else:
            Path(fname).write_bytes(data)
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plot.save_figure(plot.figure_for(_tree(files / "kkt.h5")), tmp_path / f"x{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_save_figure_refuses_an_image_under_16_pixels(files, tmp_path):
    with pytest.raises(InputError, match="too small"):
        plot.save_figure(plot.figure_for(_tree(files / "kkt.h5")), tmp_path / "x.png", dpi=1)
    assert list(tmp_path.iterdir()) == []


def test_figure_for_rejects_unknown_scale_and_diag_beyond_2d(files):
    with pytest.raises(InputError, match="colour scale"):
        plot.figure_for(_tree(files / "run.h5"), scale="rainbow")
    tree = _tree(files / "example1.h5")
    tree["provenance"]["architecture"] = json.dumps({"arch": "diag", "d": 3, "depth": 2})
    with pytest.raises(InputError, match="2-D picture"):
        plot.figure_for(tree)


# --------------------------------------------------------------------------- examples


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_fig2_script_end_to_end(tmp_path):
    """examples/fig2.sh from a clean output folder: the run file and the PNG appear, the
    PNG is the figure of the run, and the run went through the saddle (2, 0) to (2, 1)."""
    import sys

    # the ncfkit script of this interpreter's environment, even when it is not activated
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, NCFKIT_EXAMPLES_OUT=str(tmp_path), OMP_NUM_THREADS="1", PATH=path)
    start = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "examples" / "fig2.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - start < 300
    png = tmp_path / "fig2.png"
    w, h = _png_size(png)
    assert w > 400 and h > 200
    run = read_h5(tmp_path / "fig2.h5", ("escape",))
    assert sorted(float(r["delta"]) for r in run["runs"].values()) == [0.001, 0.05, 0.1]
    for r in run["runs"].values():
        assert np.allclose(r["snapshots"]["final"]["w"], [2.0, 1.0], atol=1e-3)
    assert np.allclose(run["reference"]["snapshots"]["saddle"]["w"], [2.0, 0.0], atol=1e-3)


# --------------------------------------------------------------------------- plateaus (issue 15)


def _plateau_markers(ax) -> list[str]:
    return sorted(line.get_gid() for line in ax.get_lines() if (line.get_gid() or "").startswith("plateau"))


def _loss_axes(fig: Figure):
    return next(ax for ax in fig.get_axes() if ax.get_ylabel() == "training loss")


@pytest.fixture(scope="module")
def plateau_runs(tmp_path_factory) -> Path:
    """Two real runs through two plateaus: Example 1 ``--until converged`` (the saddle
    (2, 0), then the minimum (2, 1)) and a 2-3-1 square net on two orthogonal inputs with
    targets 4 and 1 ``--until saddles:2`` (one neuron learns each target in turn)."""
    folder = tmp_path_factory.mktemp("plateaus")
    data = REPO / "examples" / "data"
    res = run_cli("escape", data / "example1.npz", "--arch", "diag", "--init", data / "example1_w0.npz",
                  "--delta", "0.01", "--lr", "0.001", "--max-time", "3", "--until", "converged",
                  "--out", folder / "ex1.h5")
    assert res.exit_code == 0, res.output
    np.savez(folder / "two.npz", X=np.eye(2), y=np.array([4.0, 1.0]))
    res = run_cli("escape", folder / "two.npz", "--hidden", "3", "--act", "square", "--delta", "0.01",
                  "--lr", "0.01", "--max-time", "200", "--until", "saddles:2", "--delta-ref", "none",
                  "--out", folder / "mlp.h5")
    assert res.exit_code == 0, res.output
    return folder


def test_example1_until_converged_marks_both_plateaus(plateau_runs, tmp_path):
    """The plane and the loss curve each mark the two plateau saddles, numbered 1 and 2;
    the time axis stays linear (nothing is squeezed) and the PNG is written."""
    tree = _tree(plateau_runs / "ex1.h5")
    assert len(json.loads(tree["runs"]["0"]["plateaus"])) == 2
    fig = plot.figure_for(tree)
    plane, loss = fig.get_axes()[:2]
    assert _plateau_markers(plane) == ["plateau 1", "plateau 2"]
    assert _plateau_markers(loss) == ["plateau 1", "plateau 2"]
    assert loss.get_xscale() == "linear"
    res = run_cli("plot", plateau_runs / "ex1.h5", "-o", tmp_path / "ex1.png")
    assert res.exit_code == 0, res.output
    assert _png_size(tmp_path / "ex1.png")[0] > 400


def test_mlp_two_plateaus_one_row_per_snapshot(plateau_runs, tmp_path):
    """init, escape and one row per plateau saddle, one column per layer; the second
    plateau's row outlines the zero set of the first (orange, with a legend), the others
    do not; two numbered markers on the loss curve."""
    tree = _tree(plateau_runs / "mlp.h5")
    plateaus = json.loads(tree["runs"]["0"]["plateaus"])
    assert len(plateaus) == 2 and {"saddle", "saddle_2"} <= set(tree["runs"]["0"]["snapshots"])
    fig = plot.figure_for(tree)
    maps = _heatmaps(fig)
    assert len(maps) == 4 * 2
    labels = [ax.get_ylabel().split("\n")[0] for ax in maps[0::2]]
    assert labels[:2] == ["init", "escape"]
    assert labels[2].startswith("plateau 1") and labels[3].startswith("plateau 2")
    prev = [any(p.get_gid() == "prev_zero" for p in ax.patches) for ax in maps]
    assert prev == [False] * 6 + [True] * 2
    assert _plateau_markers(_loss_axes(fig)) == ["plateau 1", "plateau 2"]
    assert any("previous plateau" in t.get_text() for sub in fig.subfigs for leg in sub.legends
               for t in leg.get_texts())
    res = run_cli("plot", plateau_runs / "mlp.h5", "-o", tmp_path / "mlp.png")
    assert res.exit_code == 0, res.output


def test_one_saddle_run_has_no_plateau_rows(files):
    """A run with a single saddle draws as before: no numbered markers, no outline of a
    previous zero set."""
    fig = plot.figure_for(_tree(files / "run.h5"))
    assert _plateau_markers(_loss_axes(fig)) == []
    assert not any(p.get_gid() == "prev_zero" for ax in _heatmaps(fig) for p in ax.patches)


def _stretched(tree: dict, T: float) -> dict:
    """The run with every time after t = 0 moved later by T: a plateau before escape
    T long, the events after it unchanged (Figure 4's shape)."""
    run = tree["runs"]["0"]
    rec = run["records"]
    rec["time"] = np.where(np.asarray(rec["time"]) > 0, np.asarray(rec["time"]) + T, 0.0)
    for key in ("escape_time", "saddle_time", "final_time"):
        if run.get(key) is not None:
            run[key] = float(run[key]) + T
    for snap in run["snapshots"].values():
        if snap.get("time") is not None and float(snap["time"]) > 0:
            snap["time"] = float(snap["time"]) + T
    plateaus = json.loads(run["plateaus"])
    for p in plateaus:
        for key in ("time", "enter_time", "exit_time"):
            if p.get(key) is not None:
                p[key] += T
    run["plateaus"] = json.dumps(plateaus)
    run.pop("trajectory", None)
    return tree


def test_long_plateau_before_escape_uses_the_from_escape_axis(plateau_runs, tmp_path):
    """Escape at t = 1e7 + 16 with the two plateaus within 3 time units after it: the
    loss panel measures time from escape (function scale, label says so), the markers
    sit at t − t_esc > 0 and the drop is spread over a visible part of the width; the
    same run unstretched keeps the linear axis."""
    assert _loss_axes(plot.figure_for(_tree(plateau_runs / "mlp.h5"))).get_xscale() == "linear"
    tree = _stretched(_tree(plateau_runs / "mlp.h5"), 1e7)
    fig = plot.figure_for(tree)
    ax = _loss_axes(fig)
    assert ax.get_xscale() == "function"
    assert "t − t_esc" in ax.get_xlabel()
    run = tree["runs"]["0"]
    t_esc = float(run["escape_time"])
    xs = [float(line.get_xdata()[0]) for line in ax.get_lines() if (line.get_gid() or "").startswith("plateau")]
    assert len(xs) == 2 and all(0 < x < 5 for x in xs)
    # in axes coordinates, escape and the first saddle are far apart (a linear axis over
    # 1e7 would put them within 1e-6 of the width)
    to_axes = ax.transAxes.inverted().transform
    pos = [to_axes(ax.transData.transform((x, 1.0)))[0] for x in (0.0, float(_plateau_time(run, 1)) - t_esc)]
    assert pos[1] - pos[0] > 0.2
    out = tmp_path / "stretched.png"
    plot.save_figure(fig, out)
    assert _png_size(out)[0] > 400


def _plateau_time(run: dict, k: int) -> float:
    return next(p["time"] for p in json.loads(run["plateaus"]) if p["index"] == k)


@pytest.mark.parametrize("raw", ["not json", "[{\"time\": 1.0}]", "{}"])
def test_unreadable_plateau_record_draws_the_one_saddle_figure(plateau_runs, raw):
    """A plateau record that cannot be read (not JSON, no index, not a list) is ignored:
    the figure is the one-saddle figure, no numbered marker, no error."""
    tree = _tree(plateau_runs / "mlp.h5")
    tree["runs"]["0"]["plateaus"] = raw
    fig = plot.figure_for(tree)
    assert _plateau_markers(_loss_axes(fig)) == []
    assert [ax.get_ylabel().split("\n")[0] for ax in _heatmaps(fig)[0::2]] == ["init", "escape", "saddle"]


def test_plateaus_decades_apart_get_a_log_time_axis_and_unconfirmed_is_said(plateau_runs):
    """Plateau 2 moved 100× further from escape than plateau 1 (and the run extended to
    it), and left unconfirmed (the run ended in it, as tanh runs do): the time axis is
    linear up to escape and logarithmic after, and the plateau's row and marker text say
    "unconfirmed"; the unmoved run keeps its linear axis."""
    tree = _tree(plateau_runs / "mlp.h5")
    assert _loss_axes(plot.figure_for(tree)).get_xscale() == "linear"
    run = tree["runs"]["0"]
    t_esc = float(run["escape_time"])
    plateaus = json.loads(run["plateaus"])
    far = t_esc + 100 * (plateaus[0]["time"] - t_esc)
    plateaus[1].update(time=far, confirmed=False, exit_time=None)
    run["plateaus"] = json.dumps(plateaus)
    run["snapshots"]["saddle_2"]["time"] = far
    rec = run["records"]
    rec["time"] = np.append(np.asarray(rec["time"]), far)
    rec["loss"] = np.append(np.asarray(rec["loss"]), np.asarray(rec["loss"])[-1])
    fig = plot.figure_for(tree)
    ax = _loss_axes(fig)
    assert ax.get_xscale() == "symlog" and "logarithmic after" in ax.get_xlabel()
    rows = [a.get_ylabel() for a in _heatmaps(fig) if a.get_ylabel()]
    assert any(r.startswith("plateau 2") and "unconfirmed" in r for r in rows)
    assert any("unconfirmed" in t.get_text() for t in ax.texts)


def test_run_ending_in_an_unconfirmed_plateau_says_so_and_counts_small_neurons(plateau_runs):
    """A run whose only plateau is unconfirmed (it ended in a slow stretch: GELU, Figures
    12-13): the row is "end (unconfirmed plateau)", the marker text says the run ended;
    every row after init counts the small neurons per hidden layer (the snapshot rule)."""
    tree = _tree(plateau_runs / "mlp.h5")
    run = tree["runs"]["0"]
    plateaus = json.loads(run["plateaus"])[:1]
    plateaus[0].update(confirmed=False, exit_time=None)
    run["plateaus"] = json.dumps(plateaus)
    del run["snapshots"]["saddle_2"]
    fig = plot.figure_for(tree)
    rows = [a.get_ylabel() for a in _heatmaps(fig)[0::2]]
    assert [r.split("\n")[0] for r in rows] == ["init", "escape", "end (unconfirmed plateau)"]
    assert all("\nsmall: " in r for r in rows[1:]) and "small" not in rows[0]
    assert any("unconfirmed plateau" in t.get_text() for t in _loss_axes(fig).texts)
