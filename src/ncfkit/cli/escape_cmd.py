"""``ncfkit escape``: train from small initialization, find escape and the first saddle,
and set the measurements beside Theorems 4, 10 and 18 (the library:
:mod:`ncfkit.escape`; the run.h5 layout: :data:`ncfkit.escape.RUN_H5_LAYOUT`)."""

from __future__ import annotations

import json
import math
import time

import click

from ..dynamics import METHODS
from ..fastgd import ENGINES
from .options import (
    build_problem,
    emit_json,
    guarded,
    model_options,
    output_options,
    stderr_console,
)

INIT_HELP = ("random: a unit direction drawn from --seed; kkt: along the KKT point w* "
             "(from --kkt, or computed); FILE: the direction of a weight .npz (W1 … WL, or w).")


def _fmt(v, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _check_settings(deltas, lr, eps, max_time, point, delta_ref, restarts, max_steps, tol):
    from ..errors import InputError

    for name, value in (("--restarts", restarts), ("--max-steps", max_steps)):
        if value < 1:
            raise InputError(f"{name} must be >= 1 (got {value})")
    if not (math.isfinite(tol) and tol > 0):
        raise InputError(f"--tol {tol:g}: must be finite and > 0")

    if not deltas:
        raise InputError("give at least one --delta")
    for d in deltas:
        if not (math.isfinite(d) and d > 0):
            raise InputError(f"--delta {d:g}: the initialization scale must be finite and > 0")
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"--lr {lr:g}: the step size must be finite and > 0")
    if not 0 < eps < 1:
        raise InputError(f"--eps {eps:g}: must lie in (0, 1) (escape: loss < (1 - eps)·loss(0))")
    if max_time is not None and not (math.isfinite(max_time) and max_time > 0):
        raise InputError(f"--max-time {max_time:g}: must be finite and > 0")
    if point < 0:
        raise InputError(f"--point {point}: must be >= 0")
    if delta_ref not in ("auto", "none"):
        try:
            v = float(delta_ref)
        except ValueError:
            raise InputError(f"--delta-ref {delta_ref!r}: a number, 'auto' or 'none'") from None
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"--delta-ref {delta_ref}: must be finite and > 0")


def _kkt_from_file(path, index, problem):
    """w* of point ``index`` of a kkt file made for this data and architecture (checked
    against the file's provenance: data sha256 and architecture; exit 2 otherwise)."""
    import numpy as np

    from ..errors import InputError
    from ..io import read_kkt_point

    rec, prov = read_kkt_point(path, index)
    sha = prov.get("data_sha256")
    if sha != problem.data.sha256:
        raise InputError(f"{path}: made for other data (data sha256 {str(sha)[:12]}…, "
                         f"this data {problem.data.sha256[:12]}…)")
    spec = prov.get("architecture")
    try:
        spec = json.loads(spec) if isinstance(spec, str) else spec
    except ValueError:
        spec = None
    if spec != problem.arch.to_dict():
        raise InputError(f"{path}: made for another architecture ({spec}; this run: "
                         f"{problem.arch.to_dict()})")
    w = np.asarray(rec["w"], dtype=np.float64).ravel()
    if w.size != problem.arch.num_params or not np.isfinite(w).all() or not np.linalg.norm(w) > 0:
        raise InputError(f"{path}: point {index} has unusable weights")
    return problem.array(w), rec


def _initial_direction(init, problem, seed):
    """(w0 unit (k,), how) for --init random or FILE. random: torch's generator seeded
    with --seed, in the problem's dtype (the directions of every ncfkit version so far,
    so published seeds still give the same runs; this imports torch, ~2.5 s, also on the
    host)."""
    import numpy as np

    from .._lazy import torch
    from ..errors import InputError
    from ..io import read_weights
    from ..models import MLP, random_direction

    arch = problem.arch
    if init == "random":
        gen = torch.Generator(device="cpu").manual_seed(seed)
        dtype = getattr(torch, np.dtype(problem.dtype).name) if problem.host else problem.dtype
        w0 = random_direction(arch.num_params, gen, dtype=dtype)
        return problem.array(w0.numpy()), f"random (seed {seed})"
    shapes = arch.shapes if isinstance(arch, MLP) else None
    w = np.asarray(read_weights(init, shapes, d=arch.d if shapes is None else None), dtype=np.float64)
    norm = float(np.linalg.norm(w))
    if not norm > 0:
        raise InputError(f"--init {init}: the weights are all zero; no direction to start along")
    return problem.array(w / norm), f"file {init}"


def _governing(init, kkt_file, point, problem, seed, restarts, max_steps, tol, console):
    """(w0, GoverningPoint or None, description) for the three --init modes."""
    from ..errors import InputError
    from ..escape import certified_point, governing_point
    from ..kkt import find_kkt_points

    arch = problem.arch
    homogeneous = arch.homogeneity is not None
    from_file = _kkt_from_file(kkt_file, point, problem) if kkt_file else None  # checked first
    if init == "kkt":
        if not homogeneous:
            raise InputError(f"--init kkt: the activation {arch.act.name} is not homogeneous; "
                             "there is no NCF and no KKT point to start along")
        if from_file is not None:
            gp = certified_point(arch, problem.X, problem.ytilde, from_file[0],
                                 f"kkt file {kkt_file} point {point}", max_steps=max_steps)
        else:
            with console.status(f"finding KKT points ({restarts} restarts)…"):
                res = find_kkt_points(arch, problem.X, problem.ytilde, restarts, seed, max_steps, tol)
            if not res.points:
                raise InputError("--init kkt: no KKT point converged (raise --max-steps or --restarts)")
            if point >= len(res.points):
                raise InputError(f"--point {point} out of range: found points 0..{len(res.points) - 1}")
            gp = certified_point(arch, problem.X, problem.ytilde, res.points[point].cert.w,
                                 f"find_kkt_points (seed {seed}, {restarts} restarts) point {point}",
                                 max_steps=max_steps)
        return gp.w_star, gp, "along w*"
    w0, how = _initial_direction(init, problem, seed)
    if not homogeneous:
        console.print(f"[yellow]note:[/] {arch.act.name} is not homogeneous: no NCF, no KKT point, "
                      "no predictions (training and events only)")
        return w0, None, how
    with console.status("NCF flow from w0 (Definition 2)…"):
        gp = governing_point(arch, problem.X, problem.ytilde, w0, max_steps=max_steps, tol=tol)
    if not gp.converged:
        console.print(f"[yellow]warning:[/] the NCF flow / ascent from w0 did not settle within "
                      f"{max_steps} steps (--tol {tol:g}); the governing point is approximate")
    if from_file is not None:  # say whether the file's --point is the one that governs
        ncf = from_file[1].get("ncf")
        same = ncf is not None and abs(ncf - gp.cert.ncf) <= 1e-6 * max(abs(ncf), 1e-300)
        console.print(f"the governing point {'is' if same else 'is not'} point {point} of {kkt_file} "
                      f"(𝒩 = {gp.cert.ncf:.8g} vs {_fmt(ncf, '.8g')})")
    return w0, gp, how


def _progress(console, n_deltas, max_time):
    """A rich progress bar and the observer that drives it (rows: the δ, then the reference)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(),
                   TextColumn("t = {task.completed:.5g} / {task.total:.5g}"),
                   TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), console=console)
    task = bar.add_task("starting", total=max_time, loss="")
    last = [0.0]

    def observer(p):
        now = time.monotonic()
        if now - last[0] < 0.1 and p.active:
            return
        last[0] = now
        phases = p.phases[:n_deltas]
        counts = {}
        for ph in phases:
            counts[ph] = counts.get(ph, 0) + 1
        desc = ", ".join(f"{ph} ×{c}" if len(phases) > 1 else ph for ph, c in counts.items())
        losses = [x for x in p.losses[:n_deltas] if x == x]
        loss = f"loss {min(losses):.6g}" if losses else ""
        bar.update(task, completed=min(p.time, max_time), description=desc, loss=loss)

    return bar, observer


def _table(report, problem, how):
    from rich.table import Table

    c = report.point.cert if report.point is not None else None
    title = f"escape — {problem.arch.describe()}, init {how}"
    if c is not None:
        title += f", L_h = {report.homogeneity:g}, 𝒩(w*) = {c.ncf:.6g}, Δ = {c.delta:.4g}"
    t = Table(title=title)
    cols = ["δ", "T_esc", "predicted", "ratio", "pred. (w0)", "T_saddle", "𝓛(saddle)", "‖∇𝓛‖", "λ_min(∇²𝓛)",
            "‖ψ_wz‖/‖ψ‖ esc", "saddle", "‖ψ−p‖", "status"]
    for col in cols:
        t.add_column(col, justify="right")
    for r in report.runs:
        ratio = (r.escape_time / r.predicted_escape_time
                 if r.escape_time is not None and r.predicted_escape_time else None)
        t.add_row(_fmt(r.delta, ".3g"), _fmt(r.escape_time, ".6g"), _fmt(r.predicted_escape_time, ".6g"),
                  _fmt(ratio, ".4f"), _fmt(r.predicted_escape_time_w0, ".6g"), _fmt(r.saddle_time, ".6g"),
                  _fmt(r.saddle_loss, ".6g"),
                  _fmt(r.saddle_grad_norm, ".2e"), _fmt(r.saddle_min_hessian_eig, ".4g"),
                  _fmt(r.sparsity_ratio_escape, ".2e"), _fmt(r.sparsity_ratio_saddle, ".2e"),
                  _fmt(r.path_distance, ".2e"), r.status)
    return t


def _summary_lines(report, problem):
    lines = []
    p = report.point
    if p is not None and p.cert.active_neurons is not None:
        act = "; ".join(f"layer {l}: {list(a)}" for l, a in enumerate(p.cert.active_neurons, start=1))
        lines.append(f"governing KKT point ({p.source}): active neurons {act}; "
                     f"w_z = {int(p.wz_mask.sum())} of {problem.arch.num_params} weights")
    elif p is not None:
        lines.append(f"governing KKT point ({p.source}): w* = "
                     f"{[round(float(x), 6) + 0.0 for x in p.w_star[:8]]}; w_z = {int(p.wz_mask.sum())} coordinates")
    f = report.fits
    if f.escape is not None:
        extra = f"; GD with this step: {f.predicted_slope_gd:.6g}" if f.predicted_slope_gd else ""
        if f.predicted_slope_w0 is not None and report.homogeneity != 2:
            extra += f"; NCF flow from w0: {f.predicted_slope_w0:.6g}"
        lines.append(f"escape-time fit against {f.regressor}: slope {f.escape.slope:.6g}, "
                     f"predicted {f.predicted_slope:.6g} (along w*){extra}, r² = {f.escape.r2:.6f}")
    if f.path is not None:
        lines.append(f"path distance ~ δ^{f.path.slope:.3f} (Theorem bound exponent "
                     f"{_fmt(f.path_exponent_theory)})")
    if f.sparsity is not None:
        lines.append(f"‖ψ_wz‖/‖ψ‖ at escape ~ δ^{f.sparsity.slope:.3f} (Theorem 18 bound exponent "
                     f"{_fmt(f.sparsity_exponent_theory)})")
    ref = report.reference
    if ref is not None:
        lines.append(f"reference p(t) from δ_ref = {ref.delta_ref:.3g}: "
                     + (f"p* loss {_fmt(ref.p_star_loss, '.6g')}, ‖∇𝓛(p*)‖ {_fmt(ref.p_star_grad_norm, '.2e')}, "
                        f"λ_min {_fmt(ref.p_star_min_hessian_eig, '.4g')}"
                        if ref.p_star_loss is not None else f"no saddle reached ({ref.result.status})"))
    for r in report.runs:
        if r.saddle_kind is not None:
            what = {"strict saddle": "a strict saddle (λ_min < 0)", "minimum": "a minimum (λ_min > 0)",
                    "degenerate": "degenerate to second order (λ_min ≈ 0)"}[r.saddle_kind]
            lines.append(f"δ = {r.delta:.3g}: the first plateau after escape is {what}"
                         + ("" if r.saddle_left else " (the run ended there)"))
        elif r.escaped:
            lines.append(f"δ = {r.delta:.3g}: escaped but no saddle plateau by t = {r.final_time:.6g}")
        else:
            lines.append(f"δ = {r.delta:.3g}: did not escape by t = {r.final_time:.6g}")
    return lines


@click.command("escape")
@model_options
@click.option("--delta", "deltas", type=float, multiple=True, required=True,
              help="Initialization scale δ (repeat for a sweep; all run as one batch).")
@click.option("--init", default="random", show_default=True, help=INIT_HELP)
@click.option("--kkt", "kkt_file", type=click.Path(dir_okay=False), default=None,
              help="A kkt.h5 file (ncfkit kkt --out) for --init kkt.")
@click.option("--point", type=int, default=0, show_default=True, help="Which point of --kkt.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="GD step size η.")
@click.option("--max-time", type=float, default=None,
              help="Gradient-flow time limit [default: 3 × the longest escape time predicted "
                   "by the NCF flow from w0].")
@click.option("--method", type=click.Choice(list(METHODS)), default="gd", show_default=True,
              help="gd: gradient descent with step --lr; flow: the gradient flow itself, by an "
                   "adaptive Dormand–Prince 5(4) integrator with tolerance --rtol.")
@click.option("--rtol", type=float, default=1e-9, show_default=True,
              help="Relative tolerance of --method flow (local error per step).")
@click.option("--engine", type=click.Choice(list(ENGINES)), default="auto", show_default=True,
              help="How the gradients of gd and flow are computed: compiled (a C kernel, CPU, "
                   "float32/64, the feed-forward and diagonal models), torch (any device), or auto "
                   "(compiled where it applies). Both give the same iterates up to round-off.")
@click.option("--eps", type=float, default=0.01, show_default=True,
              help="Escape: the first time the loss < (1 − eps)·loss(0).")
@click.option("--until", type=click.Choice(["saddle", "max-time"]), default="saddle", show_default=True,
              help="Stop a run once it has passed its first saddle, or run to --max-time.")
@click.option("--delta-ref", default="auto", show_default=True,
              help="δ of the reference run along w* (p(t)); a number, auto or none.")
@click.option("--restarts", type=int, default=32, show_default=True,
              help="KKT restarts for --init kkt without --kkt.")
@click.option("--max-steps", type=int, default=20000, show_default=True,
              help="NCF ascent and NCF flow steps at most (the governing point).")
@click.option("--tol", type=float, default=1e-9, show_default=True, help="NCF ascent tolerance.")
@output_options
@guarded
def command(data, arch, hidden, depth, act, loss_name, reduction, seed, dtype, device, deltas,
            init, kkt_file, point, lr, max_time, method, rtol, engine, eps, until, delta_ref, restarts,
            max_steps, tol, as_json, out, force):
    """Train from δ·w0 with gradient descent for every --delta, detect the escape from the
    origin and the first saddle, and compare with the theory: escape time (Theorems 4,
    10), the reference path p(t) and its saddle p* (Corollaries 5, 6, 11, 12), and the
    sparsity of the zero-preserving subset (Theorem 18). Times are gradient-flow times
    (step × η). Exit 1 if a run diverges, 130/143 if interrupted; --out is written
    either way.

    DATA is a .npz (X, y), .h5/.hdf5 (X, y) or .csv (last column y) file.
    """
    from ..dynamics import Objective, Settings
    from ..errors import InputError, RunError
    from ..escape import default_max_time, report_json, report_tree, run_escape
    from ..events import EventSettings
    from ..io import check_output_path, now_iso, provenance, write_h5

    _check_settings(deltas, lr, eps, max_time, point, delta_ref, restarts, max_steps, tol)
    if not (rtol > 0 and rtol < 1):
        raise InputError(f"--rtol must be in (0, 1) (got {rtol:g})")
    if out:
        check_output_path(out, force, (".h5", ".hdf5"))
    problem = build_problem(data, arch, hidden, depth, act, loss_name, reduction, seed, dtype, device,
                            host_engine=engine)
    console = stderr_console()
    w0, gp, how = _governing(init, kkt_file, point, problem, seed, restarts, max_steps, tol, console)
    act_fn = getattr(problem.arch, "act", None)
    if method == "flow" and act_fn is not None and act_fn.homogeneous and act_fn.p == 1 \
            and act_fn.alpha != 1.0:
        console.print(f"[yellow]warning:[/] --act {act_fn.name} has a kink at 0: the adaptive "
                      "integrator may need tiny steps wherever a neuron's pre-activation "
                      "crosses it (--method gd does not)")
    if gp is not None and gp.cert.ncf <= 0:
        console.print(f"[yellow]warning:[/] the governing KKT point is {gp.cert.kind} "
                      f"(𝒩 = {gp.cert.ncf:.3g}): the theory predicts no escape")
    if max_time is None:
        max_time = default_max_time(deltas, gp)
        if max_time is None:
            raise InputError("--max-time is needed: no escape time is predicted here "
                             "(non-homogeneous activation, or a governing KKT point with 𝒩 ≤ 0)")
    settings = Settings(max_time=max_time, lr=lr, rtol=rtol, until=until, events=EventSettings(eps=eps),
                        engine=engine)
    ref = None if delta_ref == "none" else (delta_ref if delta_ref == "auto" else float(delta_ref))
    prov = provenance(problem.data, **problem.settings, init=init, method=method, lr=lr, rtol=rtol,
                      engine=engine, eps=eps,
                      max_time=max_time, until=until, deltas=list(deltas), delta_ref=str(delta_ref),
                      kkt_file=kkt_file, point=point)
    bar, observer = _progress(console, len(deltas), max_time)
    objective = Objective(problem.arch, problem.X, problem.y, problem.loss)
    if engine == "compiled":
        from ..fastgd import compiled_unsupported

        why = compiled_unsupported(objective)
        if why is not None:
            raise InputError(f"--engine compiled: {why}; use --engine auto or torch")
    with bar:
        report = run_escape(objective, w0, deltas, settings, method=method, point=gp,
                            delta_ref=ref, observer=observer)
    prov["end_time"] = now_iso()
    console.print(_table(report, problem, how))
    for line in _summary_lines(report, problem):
        console.print(line)
    diverged = [r for r in report.runs if r.status in ("diverged", "failed")]
    message = "; ".join(f"δ = {r.delta:g}: {r.message}" for r in diverged)
    if report.reference is not None and report.reference.result.status == "diverged":
        message = "; ".join(filter(None, [message, f"reference run: {report.reference.result.message}"]))
    if report.status == "interrupted":
        message = report.runs[0].message if report.runs else "interrupted"
    if out:
        write_h5(out, "escape", report_tree(report, prov, message), force=force)
        console.print(f"wrote {out}" + (f" ({report.status})" if report.status != "complete" else ""))
    if as_json:
        emit_json(report_json(report))
    if report.simulation.interrupted is not None:
        raise report.simulation.interrupted
    if report.status == "failed":
        raise RunError(f"{message}; try a larger --rtol or --method gd"
                       + ("; records so far kept in " + out if out else ""))
    if report.status == "diverged":
        raise RunError(f"{message}; try a smaller --lr" + ("; records so far kept in " + out if out else ""))
