"""``ncfkit data``: make data sets."""

from __future__ import annotations

import click

from ..models import ARCHS, architectures_help
from .options import guarded


@click.group("data")
def command() -> None:
    """Make data sets (synthetic teacher data as in the paper's experiments)."""


@command.command("teacher")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="Output file: .npz, .h5/.hdf5 or .csv.")
@click.option("--n", "n", type=int, default=100, show_default=True, help="Number of samples.")
@click.option("--d", "d", type=int, default=20, show_default=True, help="Input dimension.")
@click.option("--arch", type=click.Choice(ARCHS), default="mlp", show_default=True,
              help="Teacher architecture: " + architectures_help())
@click.option("--hidden", default="2", show_default=True, help="Teacher hidden widths, e.g. 2 or 3,3.")
@click.option("--act", default="square", show_default=True, help="Teacher activation.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@guarded
def teacher(out, n, d, arch, hidden, act, seed, force) -> None:
    """n points uniform on the unit sphere of R^d, labelled by a small random teacher
    network with standard normal weights (Figure 1 and Appendix F of the paper)."""
    from ..data import teacher_dataset
    from ..io import check_output_path, save_data

    check_output_path(out, force, (".npz", ".h5", ".hdf5", ".csv"))
    X, y = teacher_dataset(n, d, hidden, act, seed, arch)
    save_data(out, X, y, force=force)
    click.echo(f"wrote {out}: n={n}, d={d}, teacher {arch} hidden={hidden} act={act} seed={seed}", err=True)
