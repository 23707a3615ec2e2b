"""``ncfkit sparsity``: the zero-preserving subset w_z of a KKT point or a weight snapshot
(Definition 15, Lemmas 16-17, Theorem 18), optionally verified by gradient descent
(:func:`ncfkit.sparsity`; the ``--out`` layout: :func:`ncfkit.io.sparsity_record`)."""

from __future__ import annotations

import click

from ..api import COMMAND_PARAMS
from ..losses import LOSSES, REDUCTIONS
from .options import emit_json, guarded, output_options, stderr_console

_D = COMMAND_PARAMS["sparsity"]


@click.command("sparsity")
@click.argument("source", required=False, type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Analyse a weight snapshot .npz (W1 … WL, nn.Linear layout) instead of a "
                   "KKT file.")
@click.option("--point", type=int, default=_D["point"], show_default=True,
              help="Which point of the KKT file (0 = the largest 𝒩).")
@click.option("--tol", type=float, default=None,
              help="A row/column is zero when its norm is at most TOL × the largest neuron norm "
                   "[default: 1e-3 for a KKT file, 1e-2 for --weights].")
@click.option("--act", default=None,
              help="Activation of a --weights network (balance error and --verify) "
                   "[default: relu]; a KKT file records its own.")
@click.option("--verify", is_flag=True,
              help="Check by gradient descent that w_z stays exactly 0 (with negative controls).")
@click.option("--data", "training_data", type=click.Path(dir_okay=False), default=None,
              help="Training data for --verify [default: the KKT file's, checked by sha256].")
@click.option("--loss", "loss_name", type=click.Choice(list(LOSSES)), default=None,
              help="Loss for --verify [default: the KKT file's, else square].")
@click.option("--reduction", type=click.Choice(REDUCTIONS), default=None,
              help="Reduction for --verify [default: the KKT file's, else sum].")
@click.option("--steps", type=int, default=_D["steps"], show_default=True, help="GD steps of --verify.")
@click.option("--lr", default=_D["lr"], show_default=True,
              help="GD step size of --verify; auto: the first step moves the weights by 0.1%, "
                   "divided by 10 after a divergence.")
@click.option("--init-scale", type=float, default=_D["init_scale"], show_default=True,
              help="Norm δ of the random start of --verify.")
@click.option("--seed", type=int, default=_D["seed"], show_default=True, help="Seed of the --verify start.")
@output_options
@guarded
def command(source, as_json, out, force, **params):
    """Which hidden neurons of a KKT point are zero, the zero-preserving subset w_z their
    weights form (Def. 15, Lemma 16), and the Lemma-17 balance error.

    SOURCE is a file written by `ncfkit kkt --out`; `--weights FILE` (or a .npz SOURCE)
    analyses a weight snapshot instead, with the architecture read off the array shapes.
    `--verify` runs gradient descent on the training loss from a random start with w_z = 0
    and checks w_z stays exactly 0 while the other weights move; as negative controls it
    zeroes only the incoming, or only the outgoing, weights of the same neurons, at least
    one of which must leave 0.
    """
    from ..api import run_command
    from .progress import ConsoleProgress
    from .render import sparsity_report

    console = stderr_console()
    with ConsoleProgress(console) as progress:
        result = run_command("sparsity", source, out=out, force=force, progress=progress, **params)
    sparsity_report(console, *result.raw)
    if out:
        console.print(f"wrote {out}")
    if as_json:
        emit_json(result.summary())
