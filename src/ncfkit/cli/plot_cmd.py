"""``ncfkit plot``: the figure of a result file (:func:`ncfkit.plot`; what it shows: :mod:`ncfkit.plot`)."""

from __future__ import annotations

import click

from .options import guarded


@click.command("plot")
@click.argument("result", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="Output image: .png or .pdf.")
@click.option("--dpi", type=float, default=100, show_default=True,
              help="Resolution of a PNG (pixels per inch of the figure size), 10 to 1200.")
@click.option("--run", "run_index", type=int, default=None,
              help="escape files with several δ: the run whose weights are shown "
                   "(default: the smallest δ).")
@click.option("--scale", type=click.Choice(["layer", "panel", "log"]), default="layer",
              show_default=True,
              help="Colour scale of the |W| heat maps: one linear scale per layer, one per "
                   "panel, or one logarithmic scale per layer.")
@click.option("--layers", default=None, metavar="LAYERS",
              help="escape files: draw |W_l| of these layers only, 1-based (W_L is the output "
                   "weights v): 1, 2-4 or 1,3 [default: all]. The paper's Figure 17 is layer 1 "
                   "of the Figure-16 run.")
@click.option("--palette/--no-palette", default=True, show_default=True,
              help="PNG with 256 colours (2-3x smaller) or full colour.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@guarded
def command(result, out, dpi, run_index, scale, layers, palette, force):
    """Draw the figure of RESULT (a file written by `ncfkit kkt --out` or
    `ncfkit escape --out`) into OUT.

    kkt: |W_l| of each KKT point and its per-neuron norms. escape: the loss against time
    with the escape and saddle events, and |W_l| at initialization, escape and the saddle
    with the zero-preserving subset outlined (the paper's Figures 1, 4-8); with several δ
    the escape times against the theory line; the 2-D diagonal model of Example 1: the
    trajectories over the loss contour (the paper's Figure 2). A run made with
    `--until saddles:K` or `--until converged` gets every plateau's saddle numbered on the
    loss curve and one row of |W_l| per plateau, the zero set of the previous plateau
    outlined (the paper's Figures 14-17). When the plateau before escape is over 100 times
    longer than the events after it (Figure 4), time is measured from escape on a log scale.
    """
    from ..api import plot

    fig = plot(result, out, run=run_index, scale=scale, dpi=dpi, palette=palette, force=force,
               layers=layers)
    size = fig.get_size_inches() * dpi
    click.echo(f"wrote {out} ({fig.get_label()} figure, "
               f"{int(round(size[0]))}×{int(round(size[1]))} px at {dpi:g} dpi)", err=True)
