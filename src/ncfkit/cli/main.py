"""``ncfkit``: the command group. Each subcommand lives in its own module."""

from __future__ import annotations

import click

from .. import __version__
from .options import quiet_option


class _OneLineUsageError(click.UsageError):
    """A click usage error (unknown option, a value of the wrong type, a missing argument)
    shown as one line, as ncfkit's own input errors are (docs/theory.md §4: exit 2, one line)."""

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {' '.join(self.format_message().split())}{hint}", file=file, err=True)


def _one_line(e: click.UsageError) -> click.UsageError:
    if isinstance(e, (_OneLineUsageError, click.exceptions.NoArgsIsHelpError)):
        return e  # a bare group name prints its help, as click does
    return _OneLineUsageError(e.format_message(), e.ctx)


class _Group(click.Group):
    """The root group: click's usage errors, from any subcommand, become one line."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line(e) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ncfkit")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@quiet_option
def cli(debug: bool) -> None:
    """Neural correlation functions, KKT points and escape dynamics of homogeneous
    networks trained from small initialization (Kumar & Haupt)."""


def _register() -> None:
    import importlib

    for name in ("data_cmd", "kkt_cmd", "sparsity_cmd", "escape_cmd", "collect_cmd",
                 "plot_cmd", "info_cmd", "sweep_cmd"):
        module = importlib.import_module(f".{name}", __package__)
        cli.add_command(module.command)


_register()


def main() -> None:
    from .._runtime import default_threads, tune_allocator
    from .._signals import handle_sigterm

    tune_allocator()
    default_threads()
    with handle_sigterm():  # SIGTERM takes Ctrl-C's path: partial results kept, marked interrupted
        cli(prog_name="ncfkit")
