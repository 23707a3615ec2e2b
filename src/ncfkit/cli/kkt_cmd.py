"""``ncfkit kkt``: find and certify KKT points of the constrained NCF
(:func:`ncfkit.find_kkt_points`)."""

from __future__ import annotations

import click

from ..api import COMMAND_PARAMS
from .options import emit_json, guarded, model_options, output_options, stderr_console

_D = COMMAND_PARAMS["kkt"]


@click.command("kkt")
@model_options
@click.option("--restarts", type=int, default=_D["restarts"], show_default=True,
              help="Random unit-norm starts, run as one batch.")
@click.option("--max-steps", type=int, default=_D["max_steps"], show_default=True,
              help="Ascent steps at most per start.")
@click.option("--tol", type=float, default=_D["tol"],
              help="Stop a start when ‖∇𝒩 − (wᵀ∇𝒩)w‖ / ‖∇𝒩‖ falls below this "
                   "[default: 1e-9; 8 × machine epsilon ≈ 9.5e-7 for float32].")
@click.option("--active-tol", type=float, default=_D["active_tol"], show_default=True,
              help="A hidden neuron is zero when its norm is below this fraction of the largest.")
@output_options
@guarded
def command(data, as_json, out, force, **params):
    """Find KKT points of  max 𝒩(u) = ỹᵀH(X; u)  s.t. ‖u‖ = 1  by projected gradient
    ascent from many random starts, certify each (first-order residual, Δ from the
    Hessian restricted to w*⊥, Lemma-20 eigenvector check, Lemma-17 balance) and merge
    points equal up to permutations and sign symmetries of hidden neurons.

    DATA is a .npz (X, y), .h5/.hdf5 (X, y) or .csv (last column y) file.
    """
    from ..api import run_command
    from .progress import ConsoleProgress
    from .render import kkt_report

    console = stderr_console()
    with ConsoleProgress(console, restarts=params["restarts"]) as progress:
        result = run_command("kkt", data, out=out, force=force, progress=progress, **params)
    kkt_report(console, result.raw, result.problem.arch, result.record["provenance"]["tol"], params["max_steps"])
    if out:
        console.print(f"wrote {out}")
    if as_json:
        emit_json(result.summary())
