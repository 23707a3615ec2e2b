"""Options shared by several commands, and the glue that turns them into library objects.

Choices come from the library's registries (:data:`ncfkit.models.ARCHS`,
:data:`ncfkit.losses.LOSSES`), so a new entry there shows up here by itself.
"""

from __future__ import annotations

import sys

import click

from ..api import DTYPES
from ..losses import LOSSES, REDUCTIONS
from ..models import ARCHS, architectures_help
from .policy import emit_json, guarded  # noqa: F401 (re-exported: every command imports them from here)


def model_options(f):
    """DATA and the architecture / loss / numerics options shared by ``kkt`` and ``escape``."""
    decorators = [
        click.argument("data", type=click.Path(dir_okay=False)),
        click.option("--arch", type=click.Choice(ARCHS), default="mlp", show_default=True,
                     help=architectures_help()),
        click.option("--hidden", default="50", show_default=True,
                     help="Hidden widths of the mlp, e.g. 50 or 20,20."),
        click.option("--depth", type=int, default=2, show_default=True,
                     help="Power D of the diagonal model H = Σ w_k^D x_k."),
        click.option("--act", default=None,
                     help="Activation of the mlp: linear, relu, leaky:A, square, sqrelu, poly:P, poly:P:A, "
                          "tanh, gelu [default: relu]. The diagonal model has none."),
        click.option("--loss", "loss_name", type=click.Choice(list(LOSSES)), default="square",
                     show_default=True, help="Per-sample loss ℓ."),
        click.option("--reduction", type=click.Choice(REDUCTIONS), default="sum", show_default=True,
                     help="Sum the per-sample losses, or average them (torch's MSELoss)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Random seed."),
        click.option("--dtype", type=click.Choice(DTYPES), default="float64", show_default=True),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N."),
    ]
    for dec in reversed(decorators):
        f = dec(f)
    return f


QUIET_KEY = "ncfkit.quiet"


def _set_quiet(ctx: click.Context, _param, value: bool) -> bool:
    if value:
        ctx.meta[QUIET_KEY] = True  # meta is shared by the whole context chain
    return value


#: ``--quiet``/``-q``: on the group (``ncfkit -q escape …``) and on every command with output.
quiet_option = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet,
                            help="No progress lines, spinners or notes (warnings, errors and results stay).")


def is_quiet() -> bool:
    """Whether ``--quiet`` was given (to the group or the command) or NCFKIT_QUIET is set."""
    import os

    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(QUIET_KEY)) or os.environ.get("NCFKIT_QUIET", "") not in ("", "0")


def output_options(f):
    """--json, --out, --force and --quiet."""
    f = quiet_option(f)
    f = click.option("--force", is_flag=True, help="Overwrite an existing --out file.")(f)
    f = click.option("--out", type=click.Path(dir_okay=False), default=None,
                     help="Write the full result and its provenance to this HDF5 file.")(f)
    f = click.option("--json", "as_json", is_flag=True,
                     help="Print exactly one JSON object on stdout (tables go to stderr).")(f)
    return f


def build_problem(data, arch, hidden, depth, act, loss_name, reduction, seed, dtype, device,
                  require_homogeneous: bool = False, host_engine: str | None = None):
    """The options of :func:`model_options` as an :class:`ncfkit.api.Problem` (host-side
    for ``host_engine`` auto/compiled where the kernel applies)."""
    from ..api import Problem

    problem = Problem.load(data, arch=arch, hidden=hidden, depth=depth, act=act, loss=loss_name,
                           reduction=reduction, seed=seed, dtype=dtype, device=device, engine=host_engine)
    if require_homogeneous:
        problem.require_homogeneous()
    return problem


def stderr_console():
    """A rich console on stderr, wide enough for ncfkit's tables when not a terminal."""

    from rich.console import Console

    return Console(stderr=True, width=None if sys.stderr.isatty() else 160)
