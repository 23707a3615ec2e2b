"""The error policy shared by every command.

:class:`InputError` -- bad usage or bad input: one line on stderr, exit code 2.
:class:`RunError` -- a run that failed (divergence, a solver that cannot meet its
tolerance): one line on stderr, exit code 1, partial results kept.
:class:`OutputError` -- an output that could not be written: a RunError and an OSError.
"""


class NcfkitError(Exception):
    """Base class of ncfkit's own errors; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class InputError(NcfkitError, ValueError):
    """Bad usage or bad input (a file, a flag value, a grammar string)."""

    exit_code = 2


class RunError(NcfkitError, RuntimeError):
    """A computation that started but failed; what was computed so far is kept."""

    exit_code = 1


class OutputError(RunError, OSError):
    """An output that could not be written (a full disk, an I/O error): a :class:`RunError`
    (exit 1, one line naming the output) and an :class:`OSError` (``errno`` kept), so code
    that catches either sees it."""

    exit_code = 1
