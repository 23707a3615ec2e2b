"""``ncfkit sparsity``: the zero-preserving subset w_z of a KKT point or a weight snapshot
(Definition 15, Lemmas 16-17, Theorem 18), optionally verified by gradient descent.

The ``--out`` file (root ``ncfkit_kind = "sparsity"``) holds:

- ``masks/W1`` … ``masks/WL``: boolean, the shape of each W_l (``nn.Linear`` layout; the
  last is (1, k_{L-1})), True on the weights of w_z; ``masks/w``: the same, flat, in
  ncfkit's parameter layout;
- ``w``: the analysed weights (flat); ``layers/<l>`` (l = 1 … L-1): attribute ``width``
  and int datasets ``zero_neurons``, ``active_neurons``, ``lopsided_neurons``;
- root attributes ``zero_preserving_size``, ``zero_preserving_fraction``, ``num_params``,
  ``balance_error``, ``threshold``, ``tol``, ``source_kind``, and ``point``/``ncf`` for
  a KKT file, ``verified`` with ``--verify`` (details in group ``verify``);
- ``provenance``: the source file and its sha256, the architecture, the settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from ..losses import LOSSES, REDUCTIONS
from .options import emit_json, guarded, output_options

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
    w: object  # torch tensor (k,)
    point: int | None = None
    ncf: float | None = None
    prov: dict | None = None  # the kkt file's provenance


def _no_hidden(path, what: str):
    from ..errors import InputError

    return InputError(f"{path}: {what} has no hidden neurons, so it has no zero-preserving "
                      "subsets of neurons (Lemma 16 concerns feed-forward nets with a hidden "
                      "layer)")


def _load_kkt(path: str, point: int) -> Source:
    from .._lazy import torch
    from ..io import architecture_of, read_kkt_point, sha256_of
    from ..models import MLP

    rec, prov = read_kkt_point(path, point)
    arch = architecture_of(prov, path)
    if not isinstance(arch, MLP):
        raise _no_hidden(path, f"the point is of the diagonal model ({arch.describe()}), which")
    w = torch.as_tensor(rec["w"], dtype=torch.float64).flatten()
    if w.numel() != arch.num_params:
        raise _damaged_point(path, point, w.numel(), arch)
    ncf = float(rec.get("ncf", float("nan")))
    return Source("kkt", path, sha256_of(path), arch, w, point, ncf, prov)


def _damaged_point(path, point, n, arch):
    from ..errors import InputError

    return InputError(f"{path}: point {point} has {n} weights but the recorded architecture "
                      f"({arch.describe()}) has {arch.num_params}")


def _load_weights(path: str, act: str) -> Source:
    from .._lazy import torch
    from ..io import read_weights, sha256_of, weight_file_shapes
    from ..models import MLP, parse_activation

    shapes = weight_file_shapes(path)
    if shapes is None:
        raise _no_hidden(path, "a diagonal-model weight file (array 'w')")
    if len(shapes) < 2:
        raise _no_hidden(path, "a one-layer network (only W1)")
    arch = MLP(shapes[0][1], tuple(s[0] for s in shapes[:-1]), parse_activation(act))
    w = torch.as_tensor(read_weights(path, shapes), dtype=torch.float64)
    return Source("weights", path, sha256_of(path), arch, w)


def _training_data(source: Source, data: str | None):
    """The data set for --verify: ``--data``, else the one the KKT file was computed on."""
    from ..errors import InputError
    from ..io import load_data

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


def _ranges(indices) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    out, run = [], []
    for j in indices:
        if run and j == run[-1] + 1:
            run.append(j)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [j]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out) or "—"


def _summary(console, source: Source, report, verify) -> None:
    from rich.table import Table

    act = report.activity
    where = (f"point {source.point} (𝒩 = {source.ncf:.6g})" if source.kind == "kkt"
             else "weight snapshot")
    t = Table(title=f"{source.path}: {where} — {source.arch.describe()}, "
                    f"threshold {report.tol:g} × largest neuron norm")
    for c in ("layer", "width", "active", "active neurons", "zero", "lopsided"):
        t.add_column(c, justify="left" if "neurons" in c else "right")
    for l, width in enumerate(act.widths):
        t.add_row(str(l + 1), str(width), str(len(act.active[l])), _ranges(act.active[l]),
                  str(len(act.zero[l])), _ranges(act.lopsided[l]))
    console.print(t)
    console.print(f"w_z (Lemma 16): {report.zero_preserving_size} of {report.num_params} weights "
                  f"({report.zero_preserving_fraction:.1%}); balance error (Lemma 17): "
                  f"{report.balance_error:.2e}")
    outside = report.outside_per_matrix(source.arch)
    sizes = [r * c for r, c in source.arch.shapes]
    pairs = enumerate(zip(outside, sizes, strict=True), start=1)
    console.print("weights outside w_z: " + ", ".join(f"W{l} {n}/{size}" for l, (n, size) in pairs))
    if report.lopsided:
        console.print(f"[yellow]warning:[/] {report.lopsided} lopsided neuron(s): row small but "
                      "column not (or the reverse); at a clean KKT point Lemma 17 forbids this. "
                      "They are not in w_z.")
    if verify is None:
        return
    c = {r.part: r for r in verify.controls}
    console.print(
        f"verify: {verify.steps} GD steps, η = {verify.lr:.3g}, start norm {verify.init_scale:g}, "
        f"loss {verify.loss_initial:.6g} → {verify.loss_final:.6g}; "
        f"max |w_z| = {verify.wz_max_abs:g}; "
        f"other weights moved by {verify.relative_change:.3g} (relative)")
    for part, what in (("rows", "incoming weights only"), ("columns", "outgoing weights only")):
        r = c[part]
        console.print(f"  control, {what}: max |zeroed| = {r.max_abs:.3g} → "
                      f"{'left 0' if r.left_zero else 'stayed 0'}"
                      f"{'' if r.left_zero == r.expected_to_leave else ' (unexpected)'}")
    console.print("[green]verified[/]: w_z stays exactly 0" if verify.verified
                  else f"[red]not verified[/]: {verify.reason}")


def _verify_json(v) -> dict:
    return {
        "preserved": v.preserved, "wz_max_abs": v.wz_max_abs, "others_moved": v.others_moved,
        "relative_change": v.relative_change, "loss_initial": v.loss_initial,
        "loss_final": v.loss_final, "negative_control": v.negative_control,
        "controls": [{"part": c.part, "zeroed": c.zeroed, "max_abs": c.max_abs,
                      "left_zero": c.left_zero, "expected_to_leave": c.expected_to_leave}
                     for c in v.controls],
        "steps": v.steps, "lr": v.lr, "init_scale": v.init_scale, "seed": v.seed,
        "attempts": v.attempts, "reason": v.reason,
    }


def _result(source: Source, report, verify) -> dict:
    act = report.activity
    out = {
        "source": source.path, "source_kind": source.kind,
        "architecture": source.arch.to_dict(),
        "layers": [{"layer": l + 1, "width": width, "zero_neurons": list(act.zero[l]),
                    "active_neurons": list(act.active[l]),
                    "lopsided_neurons": list(act.lopsided[l])}
                   for l, width in enumerate(act.widths)],
        "active_per_layer": act.active_per_layer,
        "outside_per_matrix": report.outside_per_matrix(source.arch),
        "zero_preserving_size": report.zero_preserving_size,
        "zero_preserving_fraction": report.zero_preserving_fraction,
        "num_params": report.num_params, "balance_error": report.balance_error,
        "lopsided": report.lopsided, "tol": report.tol, "threshold": act.threshold,
        "verified": None if verify is None else verify.verified,
        "verify": None if verify is None else _verify_json(verify),
    }
    if source.kind == "kkt":
        out.update(point=source.point, ncf=source.ncf)
    return out


def _h5_tree(source: Source, report, verify, prov: dict) -> dict:
    import numpy as np

    act = report.activity
    split = source.arch.split(report.mask)
    masks = {f"W{l}": M.cpu().numpy() for l, M in enumerate(split, start=1)}
    masks["w"] = report.mask.cpu().numpy()
    tree = {k: v for k, v in _result(source, report, verify).items()
            if k not in ("layers", "architecture", "verify", "active_per_layer", "source")}
    tree.update(
        provenance=prov, masks=masks, w=source.w.cpu().numpy(),
        layers={str(l + 1): {"width": width,
                             "zero_neurons": np.asarray(act.zero[l], dtype=np.int64),
                             "active_neurons": np.asarray(act.active[l], dtype=np.int64),
                             "lopsided_neurons": np.asarray(act.lopsided[l], dtype=np.int64)}
                for l, width in enumerate(act.widths)},
    )
    if verify is not None:
        v = _verify_json(verify)
        controls = v.pop("controls")
        tree["verify"] = {**v, "controls": {c["part"]: c for c in controls}}
    return tree


def _parse_lr(text: str) -> float | None:
    from ..errors import InputError

    if text.strip().lower() == "auto":
        return None
    try:
        lr = float(text)
    except ValueError:
        raise InputError(f"--lr {text!r}: not a number (or 'auto')") from None
    if not lr > 0 or lr == float("inf"):
        raise InputError(f"--lr must be a positive number (got {text})")
    return lr


@click.command("sparsity")
@click.argument("source", required=False, type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Analyse a weight snapshot .npz (W1 … WL, nn.Linear layout) instead of a "
                   "KKT file.")
@click.option("--point", type=int, default=0, show_default=True,
              help="Which point of the KKT file (0 = the largest 𝒩).")
@click.option("--tol", type=float, default=None,
              help="A row/column is zero when its norm is at most TOL × the largest neuron norm "
                   "[default: 1e-3 for a KKT file, 1e-2 for --weights].")
@click.option("--act", default=None,
              help="Activation of a --weights network (balance error and --verify) "
                   "[default: relu]; a KKT file records its own.")
@click.option("--verify", is_flag=True,
              help="Check by gradient descent that w_z stays exactly 0 (with negative controls).")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Training data for --verify [default: the KKT file's, checked by sha256].")
@click.option("--loss", "loss_name", type=click.Choice(list(LOSSES)), default=None,
              help="Loss for --verify [default: the KKT file's, else square].")
@click.option("--reduction", type=click.Choice(REDUCTIONS), default=None,
              help="Reduction for --verify [default: the KKT file's, else sum].")
@click.option("--steps", type=int, default=3000, show_default=True, help="GD steps of --verify.")
@click.option("--lr", default="auto", show_default=True,
              help="GD step size of --verify; auto: the first step moves the weights by 0.1%, "
                   "divided by 10 after a divergence.")
@click.option("--init-scale", type=float, default=0.1, show_default=True,
              help="Norm δ of the random start of --verify.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --verify start.")
@output_options
@guarded
def command(source, weights, point, tol, act, verify, data, loss_name, reduction, steps, lr,
            init_scale, seed, as_json, out, force):
    """Which hidden neurons of a KKT point are zero, the zero-preserving subset w_z their
    weights form (Def. 15, Lemma 16), and the Lemma-17 balance error.

    SOURCE is a file written by `ncfkit kkt --out`; `--weights FILE` (or a .npz SOURCE)
    analyses a weight snapshot instead, with the architecture read off the array shapes.
    `--verify` runs gradient descent on the training loss from a random start with w_z = 0
    and checks w_z stays exactly 0 while the other weights move; as negative controls it
    zeroes only the incoming, or only the outgoing, weights of the same neurons, at least
    one of which must leave 0.
    """
    from ..errors import InputError
    from ..io import check_output_path, now_iso, provenance, write_h5
    from ..losses import make_loss
    from ..sparsity import analyse_sparsity, verify_zero_preserving
    from .options import stderr_console

    if source is not None and weights is not None:
        raise InputError("give either a KKT file or --weights FILE, not both")
    if source is None and weights is None:
        raise InputError("missing input: give a KKT file (from `ncfkit kkt --out`) "
                         "or --weights FILE")
    if source is not None and source.lower().endswith(".npz"):
        source, weights = None, source
    kind = "kkt" if source is not None else "weights"
    if kind == "kkt" and act is not None:
        raise InputError("--act applies to --weights only; a KKT file records its activation")
    if kind == "weights" and point != 0:
        raise InputError("--point applies to a KKT file only")
    if steps < 1:
        raise InputError(f"--steps must be >= 1 (got {steps})")
    if not 0 < init_scale < float("inf"):
        raise InputError(f"--init-scale must be a positive number (got {init_scale:g})")
    eta = _parse_lr(lr)
    started = now_iso()
    if out:
        check_output_path(out, force, (".h5", ".hdf5"))

    src = _load_kkt(source, point) if kind == "kkt" else _load_weights(weights, act or "relu")
    tol = DEFAULT_TOL[kind] if tol is None else tol
    report = analyse_sparsity(src.arch, src.w, tol)
    prov_settings = {"source_file": src.path, "source_sha256": src.sha256, "source_kind": kind,
                     "point": src.point, "tol": tol, "architecture": src.arch.to_dict()}

    result = None
    ds = None
    if verify:
        from .._lazy import torch

        ds = _training_data(src, data)
        if ds.d != src.arch.d:
            raise InputError(f"data {ds.source} has d = {ds.d} features but the network takes "
                             f"d = {src.arch.d}")
        recorded = src.prov or {}
        loss = make_loss(loss_name or recorded.get("loss", "square"),
                         reduction or recorded.get("reduction", "sum"))
        X, y = ds.tensors(torch.float64)
        loss.check_labels(y)
        console = stderr_console()
        with console.status(f"gradient descent, {steps} steps × 3 starts…"):
            result = verify_zero_preserving(src.arch, X, y, loss, report.activity.zero,
                                            steps=steps, lr=eta, init_scale=init_scale, seed=seed)
        prov_settings.update(loss=loss.name, reduction=loss.reduction, steps=steps,
                             lr=result.lr, init_scale=init_scale, seed=seed)

    console = stderr_console()
    _summary(console, src, report, result)
    if out:
        prov = provenance(ds, **prov_settings)
        prov.update(start_time=started, end_time=now_iso())
        write_h5(out, "sparsity", _h5_tree(src, report, result, prov), force=force)
        console.print(f"wrote {out}")
    if as_json:
        emit_json(_result(src, report, result))
