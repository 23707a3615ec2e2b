"""``ncfkit``: the command group. Each subcommand lives in its own module."""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ncfkit")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
def cli(debug: bool) -> None:
    """Neural correlation functions, KKT points and escape dynamics of homogeneous
    networks trained from small initialization (Kumar & Haupt)."""


def _register() -> None:
    import importlib

    for name in ("data_cmd", "kkt_cmd", "sparsity_cmd", "escape_cmd", "collect_cmd",
                 "plot_cmd", "info_cmd"):
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as e:
            if e.name == f"{__package__}.{name}":
                continue  # not built yet
            raise
        cli.add_command(module.command)


_register()


def main() -> None:
    from .._runtime import tune_allocator
    from .._signals import handle_sigterm

    tune_allocator()
    with handle_sigterm():  # SIGTERM takes Ctrl-C's path: partial results kept, marked interrupted
        cli(prog_name="ncfkit")
