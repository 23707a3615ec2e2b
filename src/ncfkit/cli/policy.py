"""ncfkit's error and output policy for every command: exactly one JSON object on stdout
with ``--json``; every failure one line on stderr with its documented exit code (README,
"Exit codes"; docs/reliability.md), no traceback unless ``ncfkit --debug``."""

from __future__ import annotations

import functools
import json
import math
import sys

import click

from .._lazy import loaded, torch


def emit_json(obj: dict) -> None:
    """Write exactly one strict JSON object on stdout (NaN and ±Inf become null, so
    jq and other strict parsers read it)."""
    click.echo(json.dumps(_finite(obj), default=_json_default, allow_nan=False))


def _finite(o):

    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if hasattr(o, "tolist") and not isinstance(o, (str, bytes)):
        return _finite(o.tolist())
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        return _finite(o.item())
    return o


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def guarded(f):
    """Apply ncfkit's error policy to a command body: :class:`~ncfkit.errors.NcfkitError`
    becomes one line on stderr and its exit code; any other exception becomes one line and
    exit 1 (the traceback only with ``--debug``)."""
    from .._signals import describe, interrupt_exit_code
    from ..errors import NcfkitError

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        from .._phases import reset

        reset()  # NCFKIT_STOP_AT counts the phases of this command alone
        try:
            return f(*args, **kwargs)
        except NcfkitError as e:
            if debug:
                raise
            click.echo(f"error: {_one_line(e)}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM under _signals.handle_sigterm
            click.echo(describe(e), err=True)
            sys.exit(interrupt_exit_code(e))
        except _out_of_memory_errors():
            if debug:
                raise
            _out_of_memory()
        except OSError as e:  # a disk that fills up, a file that vanishes mid-run
            if debug:
                raise
            where = f": {e.filename}" if getattr(e, "filename", None) else _broken_stream(e)
            click.echo(f"error: {_one_line(e.strerror or e)}{where} "
                       "(rerun with --debug for the traceback)", err=True)
            sys.exit(1)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:  # the last line of defence: never a bare traceback
            if debug:
                raise
            if _is_out_of_memory(e):  # torch's CPU allocator raises a plain RuntimeError
                _out_of_memory()
            if type(e).__name__ in ("LinAlgError", "FloatingPointError", "_LinAlgError"):
                click.echo(f"error: numerical failure ({type(e).__name__}: {_one_line(e)}): the computation left "
                           "the floating-point range; check the data's scale, --act and --delta (rerun with "
                           "--debug for the traceback)", err=True)
                sys.exit(1)
            click.echo(f"error: internal error {type(e).__name__}: {_one_line(e)} "
                       "(rerun with --debug for the traceback)", err=True)
            sys.exit(1)

    return wrapper


def _broken_stream(e: BaseException) -> str:
    """': standard output' (or error) when writing to it is what failed (``--json >
    /dev/full``): the stream a write in the traceback was writing to."""
    tb = e.__traceback__
    while tb is not None:
        stream = tb.tb_frame.f_locals.get("file") if tb.tb_frame.f_code.co_name in ("echo", "write") else None
        try:
            fd = stream.fileno() if stream is not None else None
        except Exception:
            fd = None
        if fd in (1, 2):
            return ": standard output" if fd == 1 else ": standard error"
        tb = tb.tb_next
    return ""


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """MemoryError, and CUDA's when torch is in use (never imported just to check)."""
    return (MemoryError, torch.cuda.OutOfMemoryError) if loaded() else (MemoryError,)


def _is_out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text
                                            or "out of memory" in text)


def _out_of_memory():
    click.echo(f"error: {_out_of_memory_advice()}", err=True)
    sys.exit(1)


def _out_of_memory_advice() -> str:
    """Name the real cause: the data file when it is what does not fit (it was being
    read, or it alone takes a quarter of the memory available), else the problem size."""
    from .._phases import current_phase
    from .._runtime import available_memory, human_bytes

    ctx = click.get_current_context(silent=True)
    data = ctx.params.get("data") if ctx is not None else None
    if data:
        from ..io import declared_data_bytes

        size = declared_data_bytes(data)
        if size is not None and (current_phase() in ("load", "data") or 4 * size > available_memory()):
            return (f"out of memory: the data file {data} ({human_bytes(size)} as float64) does not fit "
                    f"with the work it needs ({human_bytes(available_memory())} available); use less data "
                    "or a machine with more memory")
    return ("out of memory; try a smaller problem (fewer --restarts, narrower --hidden) or another --device")


def _one_line(message) -> str:
    """The policy promises one line on stderr: fold a multi-line message onto one."""
    return " ".join(str(message).split())
