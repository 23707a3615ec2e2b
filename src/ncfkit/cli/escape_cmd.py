"""``ncfkit escape``: train from small initialization, find escape and the first saddle,
and set the measurements beside Theorems 4, 10 and 18 (:func:`ncfkit.escape`; the run.h5
layout: :data:`ncfkit.io.RUN_H5_LAYOUT`)."""

from __future__ import annotations

import click

from ..api import COMMAND_PARAMS
from ..dynamics import METHODS, UNTIL_HELP
from ..fastgd import ENGINES
from .options import emit_json, guarded, model_options, output_options, stderr_console

_D = COMMAND_PARAMS["escape"]
INIT_HELP = ("random: a unit direction drawn from --seed; kkt: along the KKT point w* "
             "(from --kkt, or computed); FILE: the direction of a weight .npz (W1 … WL, or w).")


@click.command("escape")
@model_options
@click.option("--delta", "deltas", type=float, multiple=True, required=True,
              help="Initialization scale δ (repeat for a sweep; all run as one batch).")
@click.option("--init", default=_D["init"], show_default=True, help=INIT_HELP)
@click.option("--kkt", "kkt_file", type=click.Path(dir_okay=False), default=None,
              help="A kkt.h5 file (ncfkit kkt --out) for --init kkt.")
@click.option("--point", type=int, default=_D["point"], show_default=True, help="Which point of --kkt.")
@click.option("--lr", type=float, default=_D["lr"], show_default=True, help="GD step size η.")
@click.option("--max-time", type=float, default=None,
              help="Gradient-flow time limit [default: 3 × the longest escape time predicted "
                   "by the NCF flow from w0].")
@click.option("--method", type=click.Choice(list(METHODS)), default=_D["method"], show_default=True,
              help="gd: gradient descent with step --lr; flow: the gradient flow itself, by an "
                   "adaptive integrator with tolerance --rtol (Dormand–Prince 5(4); Runge–Kutta–"
                   "Chebyshev where the flow is stiff, near saddles and minima).")
@click.option("--rtol", type=float, default=None,
              help="Relative tolerance of --method flow: each step's local error in a weight is at "
                   "most rtol × max(|w_i|, RMS(w)) [default: 1e-9; ReLU nets: try 1e-4].")
@click.option("--engine", type=click.Choice(list(ENGINES)), default=_D["engine"], show_default=True,
              help="How the gradients of gd and flow are computed: compiled (a C kernel, CPU, "
                   "float32/64, the feed-forward and diagonal models), torch (any device), or auto "
                   "(compiled where it applies). Both give the same iterates up to round-off.")
@click.option("--eps", type=float, default=_D["eps"], show_default=True,
              help="Escape: the first time the loss < (1 − eps)·loss(0).")
@click.option("--until", default=_D["until"], show_default=True, help="When a run stops: " + UNTIL_HELP + ".")
@click.option("--delta-ref", default=_D["delta_ref"], show_default=True,
              help="δ of the reference run along w* (p(t)); a number, auto or none.")
@click.option("--restarts", type=int, default=_D["restarts"], show_default=True,
              help="KKT restarts for --init kkt without --kkt.")
@click.option("--max-steps", type=int, default=_D["max_steps"], show_default=True,
              help="NCF ascent and NCF flow steps at most (the governing point).")
@click.option("--tol", type=float, default=_D["tol"], show_default=True, help="NCF ascent tolerance.")
@click.option("--governing-budget", type=float, default=_D["governing_budget"], show_default=True,
              help="Cost cap of the governing point (NCF flow from w0, ascent, certificate together), "
                   "in seconds of gradients at the cost model's one-thread rate, or 5% of the run if more: a "
                   "count of gradients, so the result is the same on every machine. 0: no cap.")
@output_options
@guarded
def command(data, as_json, out, force, **params):
    """Train from δ·w0 with gradient descent for every --delta, detect the escape from the
    origin and the first saddle, and compare with the theory: escape time (Theorems 4,
    10), the reference path p(t) and its saddle p* (Corollaries 5, 6, 11, 12), and the
    sparsity of the zero-preserving subset (Theorem 18). Times are gradient-flow times
    (step × η). Exit 1 if a run diverges, 130/143 if interrupted; --out is written
    either way.

    DATA is a .npz (X, y), .h5/.hdf5 (X, y) or .csv (last column y) file.
    """
    from ..api import run_command
    from ..errors import RunError
    from .progress import ConsoleProgress
    from .render_escape import escape_lines, escape_table

    console = stderr_console()
    try:
        with ConsoleProgress(console, n_deltas=len(params["deltas"])) as progress:
            result = run_command("escape", data, out=out, force=force, progress=progress, **params)
    except KeyboardInterrupt as e:  # written to --out already; show what was done, then exit 130/143
        result = getattr(e, "partial", None)
        if result is not None and result.raw is not None:
            _render(console, result, out, as_json, escape_table, escape_lines)
        raise
    _render(console, result, out, as_json, escape_table, escape_lines)
    status, message = result.status, result.record.get("message", "")
    kept = "; records so far kept in " + out if out else ""
    if status == "failed":
        raise RunError(f"{message}; try a larger --rtol or --method gd{kept}")
    if status == "diverged":
        raise RunError(f"{message}; try a smaller --lr{kept}")


def _render(console, result, out, as_json, table, lines) -> None:
    report = result.raw
    console.print(table(report, report.arch, result.how))
    for line in lines(report, report.arch):
        console.print(line)
    if out:
        console.print(f"wrote {out}" + (f" ({result.status})" if result.status != "complete" else ""))
    if as_json:
        emit_json(result.summary())
