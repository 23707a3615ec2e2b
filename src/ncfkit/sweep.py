"""Grids of ncfkit runs: ``ncfkit sweep COMMAND DATA … --grid NAME=V1,V2 … --outdir DIR``.

A sweep is one command (``escape``, ``kkt`` or ``sparsity``), its fixed flags, and grid
axes over any of its flags (or its data file). Every grid point is one call of
:func:`ncfkit.api.run_command` in a worker process (never a subprocess) that writes one
result file ``DIR/<settings>.h5`` named after the point's grid values.

- **Where points run.** An embedded ``dask.distributed.LocalCluster`` (processes, one thread
  each) by default, any running Dask scheduler with ``scheduler="tcp://HOST:PORT"``, or this
  process, one point after another (``scheduler="in-process"``, and the fallback when Dask
  is not installed). Dask is imported only here, only when used.
- **Resume.** ``DIR/sweep.json`` records the sweep (command, fixed settings, grid, versions,
  every run's start and end). A rerun skips each point whose file is complete and whose
  provenance matches the point's settings, reruns failed, interrupted or damaged ones, and
  refuses (exit 2) a folder holding another sweep's results unless ``force``.
- **One point at a time.** A worker takes ``DIR/.sweep/locks/<name>.lock`` (``O_EXCL``,
  with its pid, host and a heartbeat) before running a point; a lock whose owner died (same
  host: the pid is gone; any host: no heartbeat for :data:`STALE_AFTER` s) is broken.
- **Faults.** Writes are atomic (:func:`ncfkit.io.atomic_path`): a killed worker leaves no
  half-written result, and its temporary file is removed by the next owner of the point.
  A point whose worker died is resubmitted up to ``retries`` times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import platform
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import InputError, NcfkitError

__all__ = ["COMMANDS", "Axis", "Point", "Sweep", "parse_grid_option", "load_spec", "plan",
           "run_point", "run_sweep", "point_name", "SweepReport", "resolve_inputs"]

COMMANDS = ("escape", "kkt", "sparsity")
#: Settings the sweep itself owns: each point's --out and --force, and --json.
OWNED = ("out", "force", "as_json")
MANIFEST = "sweep.json"
TABLE_CSV = "sweep.csv"
STATE = ".sweep"
#: A lock whose heartbeat is older than this (seconds) belongs to a dead worker.
STALE_AFTER = 90.0
HEARTBEAT = 15.0
MANIFEST_FORMAT = 1


# --------------------------------------------------------------------------- the command's flags


def command_object(command: str):
    """The click command ``ncfkit COMMAND`` (its parameters define what a grid can vary)."""
    if command not in COMMANDS:
        raise InputError(f"sweep: unknown command {command!r}; use one of {', '.join(COMMANDS)}")
    from .cli.main import cli

    return cli.commands[command]


def _positional(cmd):
    return next(p for p in cmd.params if p.param_type_name == "argument")


def _flag(param) -> str:
    return param.opts[0] if param.param_type_name == "option" else param.name


def resolve_param(cmd, name: str):
    """The click parameter a grid or spec name stands for: the flag without dashes
    (``max-steps`` or ``max_steps`` for ``--max-steps``, ``delta`` for ``--delta``), the
    parameter's own name (``deltas``), or the positional argument (``data``/``source``)."""
    key = name.strip().lstrip("-").replace("_", "-")
    for p in cmd.params:
        if p.param_type_name == "option" and any(o.lstrip("-") == key for o in p.opts):
            return p
    for p in cmd.params:
        if p.name.replace("_", "-") == key:
            return p
    names = sorted({o.lstrip("-") for p in cmd.params if p.param_type_name == "option" for o in p.opts
                    if p.name not in OWNED} | {_positional(cmd).name})
    raise InputError(f"--grid {name}: ncfkit {cmd.name} has no such flag (flags: {', '.join(names)})")


def _is_int(param) -> bool:
    import click

    return isinstance(param.type, (click.types.IntParamType, click.IntRange))


def _convert(cmd, param, raw: Any, where: str):
    """``raw`` as click would pass it for ``param`` (one value of a multiple option)."""
    import click

    if isinstance(raw, str) and param.param_type_name == "option" and param.is_flag:
        raw = click.BOOL.convert(raw, param, None)
    try:
        value = param.type.convert(raw, param, click.Context(cmd))
    except click.BadParameter as e:
        raise InputError(f"{where}: {' '.join(e.format_message().split())}") from None
    return value


def split_values(text: str) -> list[str]:
    """``a,b,c`` (or ``a;b;c`` when a value itself holds commas: ``hidden=20,20;50,50``)."""
    sep = ";" if ";" in text else ","
    return [v.strip() for v in text.split(sep)]


def _expand_range(param, text: str) -> list[int] | None:
    """``a:b[:step]`` for an integer flag: range(a, b, step) (b excluded, as in Python)."""
    if not _is_int(param) or not re.fullmatch(r"\s*-?\d+\s*:\s*-?\d+\s*(:\s*-?\d+\s*)?", text):
        return None
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 3 and parts[2] == 0:
        raise InputError(f"--grid {param.name}={text}: the step of a range must not be 0")
    return list(range(*parts))


# --------------------------------------------------------------------------- grid and points


@dataclasses.dataclass(frozen=True)
class Axis:
    """One grid axis: the click parameter's name, its flag, the values as click passes
    them and the labels that name the point files."""

    name: str
    flag: str
    values: tuple
    labels: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Point:
    index: int
    name: str  # file stem
    grid: dict  # axis name -> value
    data: str
    params: dict  # every click parameter of the command except the positional and OWNED

    def path(self, outdir: str | os.PathLike) -> Path:
        return Path(outdir) / f"{self.name}.h5"


def _label(value: Any, is_path: bool) -> str:
    if isinstance(value, tuple) and len(value) == 1:
        value = value[0]
    if is_path and isinstance(value, str):
        text = Path(value).stem
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, (int, float)):
        return repr(value)  # 0.01, 1e-05, -3: file-name safe as they are
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "_"


def parse_axis(cmd, name: str, values: Iterable[Any] | str) -> Axis:
    """One grid axis from a name and values (a string ``a,b,c`` / ``a:b:step``, or a list)."""
    param = resolve_param(cmd, name)
    if param.name in OWNED:
        raise InputError(f"--grid {name}: the sweep sets --{param.name.replace('_', '-')} of every point itself")
    flag = _flag(param)
    if isinstance(values, str):
        raw = _expand_range(param, values)
        if raw is None:
            raw = split_values(values)
    else:
        raw = list(values)
    if not raw or any(isinstance(v, str) and not v for v in raw):
        raise InputError(f"--grid {name}: empty value list" if not raw else f"--grid {name}: an empty value")
    converted = []
    for v in raw:
        value = _convert(cmd, param, v, f"--grid {name}={v}")
        if getattr(param, "multiple", False):
            value = (value,)
        converted.append(value)
    is_path = param.param_type_name == "argument" or _looks_like_path(param)
    labels = tuple(_label(v, is_path) for v in converted)
    dup = [v for v, c in _count(converted).items() if c > 1]
    if dup:
        raise InputError(f"--grid {name}: value {_plain(dup[0])!r} appears twice")
    if is_path and len(set(labels)) < len(labels):  # a.npz and other/a.npz
        labels = tuple(_label(str(Path(v[0] if isinstance(v, tuple) else v).with_suffix("")), False)
                       for v in converted)
    return Axis(param.name, flag, tuple(converted), labels)


def _looks_like_path(param) -> bool:
    import click

    return isinstance(param.type, click.Path)


def _count(values):
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def parse_grid_option(text: str) -> tuple[str, str]:
    """``NAME=VALUES`` of one ``--grid``."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise InputError(f"--grid {text!r}: expected NAME=V1,V2,… (e.g. delta=1e-2,1e-3 or seed=0:16)")
    if not values.strip():
        raise InputError(f"--grid {name}: empty value list")
    return name.strip(), values


def point_name(axes: list[Axis], combo: tuple[int, ...]) -> str:
    """``delta=0.01_seed=3``: the grid values of a point, in axis order."""
    parts = [f"{_short(a)}={a.labels[i]}" for a, i in zip(axes, combo, strict=True)]
    name = "_".join(parts) if parts else "point"
    if len(name) > 150:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:120]}_{digest}"
    return name


def _short(axis: Axis) -> str:
    return axis.flag.lstrip("-")


def load_spec(path: str | os.PathLike) -> dict:
    """A sweep file (TOML)::

        command = "escape"                # optional when given on the command line
        data = "examples/data/fig1_square.npz"
        outdir = "runs/fig1"              # optional
        [flags]                           # fixed flags of the command
        hidden = 50
        act = "square"
        [grid]                            # axes: lists, or "a,b,c" / "a:b[:step]" strings
        delta = [0.05, 0.03, 0.02, 0.01]
        seed = "0:4"
    """
    import tomllib

    p = Path(path)
    try:
        with open(p, "rb") as f:
            spec = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"--spec {str(p)!r} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"--spec {p}: not a readable TOML file ({' '.join(str(e).split())})") from None
    unknown = sorted(set(spec) - {"command", "data", "outdir", "flags", "grid", "workers", "retries"})
    if unknown:
        raise InputError(f"--spec {p}: unknown key {unknown[0]!r} (keys: command, data, outdir, flags, grid, "
                         "workers, retries)")
    for key in ("flags", "grid"):
        if not isinstance(spec.get(key, {}), dict):
            raise InputError(f"--spec {p}: [{key}] must be a table")
    return spec


def flags_to_args(cmd, flags: dict) -> list[str]:
    """A spec's ``[flags]`` table as command-line arguments of ``cmd``."""
    args: list[str] = []
    for name, value in flags.items():
        param = resolve_param(cmd, name)
        if param.param_type_name == "argument":
            args.append(str(value))
            continue
        if param.is_flag:
            if isinstance(value, str):
                value = value.lower() in ("1", "true", "yes", "on")
            if value:
                args.append(param.opts[0])
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
            continue
        for v in (value if isinstance(value, list) else [value]):
            args += [param.opts[0], str(v)]
    return args


def resolve_inputs(args, grids, spec, outdir, workers, retries):
    """``ncfkit sweep``'s inputs: (command, the command's args, grid [(name, values)],
    outdir, workers, retries) from the command line and the --spec file (the command line
    wins: its flags come after the spec's, its --grid axes replace the spec's)."""
    s = load_spec(spec) if spec else {}
    args = list(args)
    command = args.pop(0) if args and args[0] in COMMANDS else s.get("command")
    if command is None:
        got = f" (got {args[0]!r})" if args and not args[0].startswith("-") else ""
        raise InputError(f"sweep: give the COMMAND to sweep first: {', '.join(COMMANDS)}{got}")
    if s.get("command") not in (None, command):
        raise InputError(f"--spec {spec}: sweeps {s['command']!r}, the command line {command!r}")
    cmd = command_object(command)
    front = [str(s["data"])] if "data" in s else []
    grid = dict(s.get("grid", {}))
    for text in grids:
        name, values = parse_grid_option(text)
        grid.pop(next((k for k in grid if k.replace("_", "-") == name.replace("_", "-")), name), None)
        grid[name] = values
    outdir = outdir or s.get("outdir")
    if not outdir:
        raise InputError("sweep: give --outdir DIR (where the point files and sweep.json go)")
    return (command, front + flags_to_args(cmd, s.get("flags", {})) + args, list(grid.items()), outdir,
            workers or s.get("workers"), s.get("retries", 2) if retries is None else retries)


@dataclasses.dataclass
class Sweep:
    """A planned sweep: what runs, where each point's file goes."""

    command: str
    outdir: Path
    axes: list[Axis]
    fixed: dict  # the settings every point shares (click names), JSON-ready
    points: list[Point]

    def describe_grid(self) -> dict:
        return {_short(a): [_plain(v) for v in a.values] for a in self.axes}

    def fingerprint(self) -> dict:
        return {"command": self.command, "axes": [a.name for a in self.axes], "fixed": self.fixed}


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v] if len(v) != 1 else _plain(v[0])
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _jsonable(params: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}


def plan(command: str, args: list[str], grid: list[tuple[str, Any]], outdir: str | os.PathLike) -> Sweep:
    """Check everything up front and list the points (:class:`InputError` on bad input).

    ``args``: the command's own flags (and its positional DATA unless the grid varies it);
    ``grid``: (name, values) pairs in axis order, values a string or a list.
    """
    import click
    from click.core import ParameterSource

    cmd = command_object(command)
    if not grid:
        raise InputError("sweep: empty grid; give at least one --grid NAME=V1,V2,… (or a [grid] table in --spec)")
    axes: list[Axis] = []
    for name, values in grid:
        axis = parse_axis(cmd, name, values)
        if any(a.name == axis.name for a in axes):
            raise InputError(f"--grid {name}: the same flag is given as two axes")
        axes.append(axis)
    positional = _positional(cmd)
    combos = list(itertools.product(*[range(len(a.values)) for a in axes]))
    points: list[Point] = []
    fixed: dict | None = None
    for index, combo in enumerate(combos):
        defaults = {}
        for a, i in zip(axes, combo, strict=True):
            v = a.values[i]
            defaults[a.name] = list(v) if isinstance(v, tuple) else v
        try:
            ctx = cmd.make_context(command, list(args), default_map=defaults)
        except click.UsageError as e:
            raise InputError(f"ncfkit {command}: {' '.join(e.format_message().split())}") from None
        except click.exceptions.Exit:
            raise InputError(f"ncfkit sweep {command}: --help is not a flag of a point") from None
        params = _absolute_paths(cmd, dict(ctx.params))
        for a in axes:
            if ctx.get_parameter_source(a.name) == ParameterSource.COMMANDLINE:
                given = a.flag if a.flag.startswith("-") else a.flag.upper()
                raise InputError(f"--grid {a.flag.lstrip('-')}: also given as {given} on the command line; "
                                 "give it once")
        for owned in OWNED:
            if owned in params and ctx.get_parameter_source(owned) == ParameterSource.COMMANDLINE and params[owned]:
                flag = "--" + {"as_json": "json"}.get(owned, owned)
                raise InputError(f"{flag}: the sweep sets it for every point (files go to --outdir; "
                                 "sweep has its own --force and --json)")
            params.pop(owned, None)
        data = params.pop(positional.name)
        grid_values = {a.name: params[a.name] if a.name in params else data for a in axes}
        shared = {k: v for k, v in params.items() if k not in grid_values}
        if fixed is None:
            fixed = _jsonable(shared)
            if positional.name not in grid_values:
                fixed[positional.name] = data
        points.append(Point(index, point_name(axes, combo), grid_values, data, params))
    names = [p.name for p in points]
    if len(set(names)) != len(names):  # two values with one label (e.g. 1e-300 and 1e-300 written twice)
        raise InputError("sweep: two grid points would get the same file name; give distinct values")
    _check_points(command, points)
    return Sweep(command, Path(outdir), axes, fixed or {}, points)


_FILE_SUFFIXES = (".npz", ".h5", ".hdf5", ".csv")


def _absolute_paths(cmd, params: dict) -> dict:
    """File settings (DATA, --kkt, --init FILE, …) as absolute paths: points may run in
    another working directory (a cluster's workers)."""
    import click

    for param in cmd.params:
        v = params.get(param.name)
        if not isinstance(v, str):
            continue
        if isinstance(param.type, click.Path) or (v.lower().endswith(_FILE_SUFFIXES) and os.path.isfile(v)):
            params[param.name] = os.path.abspath(v)
    return params


def _check_points(command: str, points: list[Point]) -> None:
    """What the command would refuse, found before any point runs: data files (read and
    validated once each) and the command's own checks of its settings."""
    from .io import load_data

    seen: dict[str, Any] = {}
    for p in points:
        if p.data is None or p.data in seen:
            continue
        if command == "sparsity":
            if not Path(p.data).is_file():
                raise InputError(f"SOURCE {p.data!r} does not exist")
            seen[p.data] = True
        else:
            seen[p.data] = load_data(p.data)
    check = _settings_checker(command)
    if check is not None:
        for p in points:
            check(p)


def _api():
    """:mod:`ncfkit.api`, or None in a version without it."""
    try:
        from . import api
    except ImportError:
        return None
    return api


#: The click names of the options that define a command's problem (data, network, loss, numerics).
MODEL_KEYS = ("arch", "hidden", "depth", "act", "loss_name", "reduction", "dtype", "device")


def _settings_checker(command: str) -> Callable[[Point], None] | None:
    """The command's own validation of a point's settings, without running it: the data
    and network (:meth:`ncfkit.Problem.load`, once per distinct combination; on the host,
    so torch is imported only where the point itself would need it) and, for escape, the
    experiment's settings (:func:`ncfkit.escape.check_settings`)."""
    api = _api()
    checks: list[Callable[[Point], None]] = []
    if command in ("escape", "kkt") and api is not None and hasattr(api, "Problem"):
        seen: set = set()
        try:
            from .validate import check_seed
        except ImportError:
            check_seed = None

        def check_problem(p: Point) -> None:
            q = p.params
            if check_seed is not None:
                check_seed(q["seed"])
            key = (p.data, *(repr(q.get(k)) for k in MODEL_KEYS))
            if key in seen:
                return
            seen.add(key)
            # the device is the workers' (a GPU cluster's), not necessarily this machine's
            problem = api.Problem.load(p.data, arch=q["arch"], hidden=q["hidden"], depth=q["depth"], act=q["act"],
                                       loss=q["loss_name"], reduction=q["reduction"], seed=0,
                                       dtype=q["dtype"], device="cpu", engine="auto")
            if command == "kkt":
                problem.require_homogeneous()

        checks.append(check_problem)
    if command == "escape":
        try:
            from .escape import check_settings
        except ImportError:
            check_settings = None
        if check_settings is not None:
            def check_escape(p: Point) -> None:
                q = p.params
                check_settings(q["deltas"], lr=q["lr"], eps=q["eps"], max_time=q["max_time"], point=q["point"],
                               delta_ref=q["delta_ref"], restarts=q["restarts"], max_steps=q["max_steps"],
                               tol=q["tol"], rtol=q["rtol"])
        else:  # an older version: the CLI's checks
            from .cli import escape_cmd

            inner = getattr(escape_cmd, "_check_settings", lambda *a: None)

            def check_escape(p: Point) -> None:
                q = p.params
                inner(q["deltas"], q["lr"], q["eps"], q["max_time"], q["point"], q["delta_ref"], q["restarts"],
                      q["max_steps"], q["tol"])
                if not 0 < q["rtol"] < 1:
                    raise InputError(f"--rtol must be in (0, 1) (got {q['rtol']:g})")

        checks.append(check_escape)
    if not checks:
        return None

    def check(p: Point) -> None:
        for c in checks:
            c(p)

    return check


# --------------------------------------------------------------------------- the command line of one point


def command_line(command: str, point: Point, out: str | os.PathLike | None = None) -> list[str]:
    """``ncfkit COMMAND DATA --flag value …`` that runs ``point`` alone (flags at their
    default left out)."""
    import click

    cmd = command_object(command)
    ctx = click.Context(cmd)
    argv = ["ncfkit", command]
    if point.data is not None:
        argv.append(str(point.data))
    for param in cmd.params:
        if param.param_type_name != "option" or param.name not in point.params:
            continue
        value = point.params[param.name]
        default = param.get_default(ctx)
        if type(default).__name__ == "Sentinel":  # click's UNSET: no default
            default = None
        if param.multiple:
            if tuple(value or ()) == tuple(default or ()):
                continue
            for v in value:
                argv += [param.opts[0], _arg(v)]
        elif param.is_flag:
            if bool(value) != bool(default):
                argv.append(param.opts[0] if value else (param.secondary_opts or [param.opts[0]])[0])
        elif value is not None and value != default:
            argv += [param.opts[0], _arg(value)]
    if out is not None:
        argv += ["--out", str(out)]
    return argv


def _arg(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- result files


def result_state(command: str, point: Point, path: Path, data_sha: dict[str, str] | None = None) -> tuple[str, str]:
    """(state, why) of a point's file: ``missing``, ``complete`` (made with the point's
    settings), ``incomplete`` (failed, interrupted, damaged: rerun it) or ``other`` (a
    complete result of other settings: not this sweep's)."""
    from .io import read_h5, sha256_of

    if not path.exists():
        return "missing", ""
    try:
        tree = read_h5(path, max_array=0)
    except InputError as e:
        return "incomplete", str(e)
    kind = tree.get("ncfkit_kind")
    if kind != command:
        return "other", f"an ncfkit {kind!r} file, not {command!r}"
    status = tree.get("status", "complete")
    if tree.get("interrupted"):
        status = "interrupted"
    if status != "complete":
        return "incomplete", f"status {status}"
    prov = tree.get("provenance", {})
    if not isinstance(prov, dict):
        return "incomplete", "no provenance"
    sha_key = "source_sha256" if command == "sparsity" else "data_sha256"
    if point.data is not None and sha_key in prov:
        cache = data_sha if data_sha is not None else {}
        if point.data not in cache:
            cache[point.data] = sha256_of(point.data) if Path(point.data).is_file() else ""
        if prov[sha_key] != cache[point.data]:
            return "other", f"made from other data ({sha_key} {str(prov[sha_key])[:12]}…)"
    for key, ours in point.params.items():
        if key not in prov or ours is None or key in ("max_time", "device"):
            continue
        theirs = prov[key]
        if isinstance(ours, tuple):
            try:
                theirs = json.loads(theirs) if isinstance(theirs, str) else list(theirs)
            except (ValueError, TypeError):
                return "other", f"provenance {key} = {theirs!r}"
            if [float(x) if isinstance(x, (int, float)) else x for x in theirs] != list(ours):
                return "other", f"made with {key} = {theirs}, this point has {list(ours)}"
        elif isinstance(ours, bool) or not isinstance(ours, (int, float, str)):
            continue
        elif str(theirs) != str(ours) and not _same_number(theirs, ours):
            return "other", f"made with {key} = {theirs}, this point has {ours}"
    return "complete", ""


def _same_number(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- locks


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a zombie, killed but not yet
    reaped by its parent, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


class PointLock:
    """``DIR/.sweep/locks/<name>.lock``, created with O_EXCL; holds the owner's pid, host
    and sweep id; its mtime is a heartbeat, touched every :data:`HEARTBEAT` s."""

    def __init__(self, outdir: Path, name: str, owner: dict):
        self.path = Path(outdir) / STATE / "locks" / f"{name}.lock"
        self.owner = owner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.broken: dict | None = None  # the stale lock this one replaced

    @staticmethod
    def read(path: Path) -> dict | None:
        try:
            info = json.loads(path.read_text())
            info["age"] = time.time() - path.stat().st_mtime
            return info
        except (OSError, ValueError):
            return None

    @staticmethod
    def stale(info: dict | None) -> bool:
        if info is None:
            return True  # unreadable: a writer that died between create and write
        if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
            return True
        return info.get("age", 0.0) > STALE_AFTER

    def acquire(self) -> tuple[bool, dict | None]:
        """(taken, the live owner's record when not taken)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.read(self.path)
                if info is None and self._young():
                    time.sleep(0.05)  # created, not yet written
                    info = self.read(self.path)
                if not self.stale(info):
                    return False, info
                self.broken = info
                broken = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}.{time.monotonic_ns()}")
                try:
                    os.rename(self.path, broken)  # one breaker wins; the others retry
                    os.unlink(broken)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lock {self.path.name}")
            self._thread.start()
            return True, None
        return False, self.read(self.path)

    def _young(self) -> bool:
        try:
            return time.time() - self.path.stat().st_mtime < 2.0
        except OSError:
            return False

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        info = self.read(self.path)
        if info is not None and info.get("pid") == self.owner["pid"] and info.get("token") == self.owner["token"]:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def remove_temporaries(outdir: Path, name: str) -> int:
    """Remove the temporary files a killed writer of ``name`` left (``.<name>.h5.*.tmp``)."""
    n = 0
    for tmp in Path(outdir).glob(f".{name}.h5.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            n += 1
    return n


# --------------------------------------------------------------------------- one point (runs on a worker)

_worker_ready = False


def _prepare_worker(in_process: bool) -> None:
    """Once per worker process: glibc's allocator thresholds, one torch thread, and (on a
    cluster, where the workers share the cores) one kernel thread per point unless
    NCFKIT_THREADS / OMP_NUM_THREADS say otherwise."""
    global _worker_ready
    if _worker_ready:
        return
    from ._runtime import default_threads, tune_allocator

    if not in_process and not (os.environ.get("NCFKIT_THREADS") or os.environ.get("OMP_NUM_THREADS")):
        os.environ["NCFKIT_THREADS"] = "1"
    tune_allocator()
    default_threads()
    _worker_ready = True


def _call_command(command: str, data: str | None, out: str, force: bool, params: dict):
    """One point through the library: :func:`ncfkit.api.run_command` (the summary dict it
    returns is the CLI's ``--json`` object). Tests replace this function."""
    api = _api()
    if api is None or not hasattr(api, "run_command"):  # a version without the library API: the CLI's body
        return _call_click_body(command, data, out, force, params)
    known = getattr(api, "COMMAND_PARAMS", {}).get(command, {})
    if "data" in params and "data" not in known and "training_data" in known:  # sparsity --data
        params = dict(params)
        params["training_data"] = params.pop("data")
    result = api.run_command(command, data, out=out, force=force, **params)
    return result.summary() if hasattr(result, "summary") else None


def _call_click_body(command, data, out, force, params):
    import io

    import click

    cmd = command_object(command)
    body = getattr(cmd.callback, "__wrapped__", cmd.callback)
    kwargs = dict(params, out=out, force=force, as_json=False)
    kwargs[_positional(cmd).name] = data
    with click.Context(cmd, info_name=command), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        body(**kwargs)
    return None


@contextlib.contextmanager
def _argv(argv: list[str]):
    """The point's own command line as sys.argv while it runs, so the provenance of its
    file records how to rerun it alone (workers run one point at a time)."""
    saved = sys.argv
    sys.argv = list(argv)
    try:
        yield
    finally:
        sys.argv = saved


def run_point(task: dict) -> dict:
    """Run one grid point (a worker's task): take its lock, skip it if another run
    completed it meanwhile, else run it and write its file atomically. Returns a record
    (``status`` done / failed / busy / skipped); never raises for a failed run."""
    command, outdir, point = task["command"], Path(task["outdir"]), task["point"]
    in_process = task.get("in_process", False)
    _prepare_worker(in_process)
    path = point.path(outdir)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "sweep": task["sweep_id"], "worker": _worker_address(),
             "token": f"{task['sweep_id']}:{point.name}:{task.get('attempt', 0)}:{time.monotonic_ns()}",
             "start": _now()}
    lock = PointLock(outdir, point.name, owner)
    taken, holder = lock.acquire()
    record = {"name": point.name, "index": point.index, "host": owner["host"], "pid": owner["pid"]}
    if not taken:
        holder = holder or {}
        return dict(record, status="busy", holder_sweep=holder.get("sweep"),
                    error=f"running elsewhere (pid {holder.get('pid')} on {holder.get('host')})")
    t0 = time.perf_counter()
    _die_if_asked(point.name, int(task.get("attempt", 0)), in_process)
    try:
        remove_temporaries(outdir, point.name)
        force = bool(task.get("force"))
        if path.exists():
            state, why = result_state(command, point, path)
            if state == "other" and not force:  # appeared after the sweep checked the folder
                return dict(record, status="failed", exit_code=2, error=f"{path.name} exists and is not this "
                            f"sweep's point ({why}); not overwritten (pass --force to overwrite it)")
            if state == "complete" and not force:
                if _started(path) >= task.get("started", "~"):  # an earlier attempt wrote it, then its worker died
                    return dict(record, status="done", elapsed=0.0, note="written by an attempt whose worker died")
                return dict(record, status="skipped", elapsed=0.0)
            force = True  # this sweep's own failed, interrupted or damaged file (checked up front)
        with _argv(task["argv"]):
            summary = _call_command(command, point.data, str(path), force, dict(point.params))
        return dict(record, status="done", elapsed=time.perf_counter() - t0, summary=_json_ready(summary),
                    torch_loaded="torch" in sys.modules)
    except NcfkitError as e:
        return dict(record, status="failed", elapsed=time.perf_counter() - t0, exit_code=e.exit_code,
                    error=" ".join(str(e).split()))
    except KeyboardInterrupt:
        if in_process:
            raise
        return dict(record, status="failed", elapsed=time.perf_counter() - t0, error="interrupted")
    except MemoryError:
        return dict(record, status="failed", elapsed=time.perf_counter() - t0, error="out of memory")
    except Exception as e:  # one point's bug never ends the sweep
        return dict(record, status="failed", elapsed=time.perf_counter() - t0,
                    error=f"internal error {type(e).__name__}: {' '.join(str(e).split())}")
    finally:
        lock.release()


def _worker_address() -> str | None:
    """The Dask worker this runs on (None in-process)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


def _die_if_asked(name: str, attempt: int, in_process: bool) -> None:
    """Tests kill a worker in the middle of a point: ``NCFKIT_SWEEP_DIE=NAME#K`` ends the
    worker process running point NAME (holding its lock, as a crash would) on its first K
    attempts (K = 1 when left out)."""
    target = os.environ.get("NCFKIT_SWEEP_DIE")
    if not target or in_process:
        return
    for item in target.split(","):
        want, _, k = item.partition("#")
        if want == name and attempt < (int(k) if k.isdigit() else 1):
            os._exit(70)


def _started(path: Path) -> str:
    """The provenance start time of a result file ('' when unknown)."""
    from .io import read_h5

    try:
        return str(read_h5(path, max_array=0).get("provenance", {}).get("start_time", ""))
    except (InputError, AttributeError):
        return ""


def _json_ready(obj):
    if obj is None:
        return None
    try:
        return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    except (TypeError, ValueError):
        return None


def _now() -> str:
    from .io import now_iso

    return now_iso()


# --------------------------------------------------------------------------- the coordinator


@dataclasses.dataclass
class SweepReport:
    total: int
    skipped: list[str]
    done: list[dict]
    failed: list[dict]
    busy: list[dict]
    not_run: list[str]
    interrupted: bool
    where: str
    records: dict  # name -> last record


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"ncfkit": __version__, "python": platform.python_version()}
    for dist in ("numpy", "torch", "h5py", "dask", "distributed"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def read_manifest(outdir: Path) -> dict | None:
    p = outdir / MANIFEST
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError):
        raise InputError(f"--outdir {outdir}: {MANIFEST} is not readable JSON; not a sweep folder "
                         "(pass --force to start afresh there)") from None
    if not isinstance(m, dict) or "fingerprint" not in m:
        raise InputError(f"--outdir {outdir}: {MANIFEST} was not written by ncfkit sweep "
                         "(pass --force to start afresh there)")
    return m


def write_manifest(outdir: Path, manifest: dict) -> None:
    from .io import atomic_path

    with atomic_path(outdir / MANIFEST, force=True) as tmp:
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1, allow_nan=False, default=str)
            f.write("\n")


def _differs(a: dict, b: dict) -> str | None:
    if a.get("command") != b.get("command"):
        return f"command {a.get('command')!r}, this sweep {b.get('command')!r}"
    if list(a.get("axes", [])) != list(b.get("axes", [])):
        return f"grid axes {a.get('axes')}, this sweep {b.get('axes')}"
    fa, fb = a.get("fixed", {}), b.get("fixed", {})
    for k in sorted(set(fa) & set(fb)):
        if json.dumps(fa[k]) != json.dumps(fb[k]):
            return f"--{k.replace('_', '-')} {fa[k]!r}, this sweep {fb[k]!r}"
    return None


def check_outdir(sweep: Sweep, force: bool) -> tuple[dict | None, dict[str, str]]:
    """Refuse a folder that holds another sweep's results (unless ``force``); return the
    old manifest and each point's state (``missing``/``complete``/``incomplete``)."""
    out = sweep.outdir
    if out.exists() and not out.is_dir():
        raise InputError(f"--outdir {str(out)!r} is a file")
    parent = out.parent if str(out.parent) else Path(".")
    if not out.exists() and not parent.is_dir():
        raise InputError(f"--outdir {str(out)!r}: folder {str(parent)!r} does not exist")
    manifest = read_manifest(out) if out.is_dir() and not force else None
    if manifest is not None:
        why = _differs(manifest["fingerprint"], _jsonready_fp(sweep))
        if why is not None:
            raise InputError(f"--outdir {out} holds another sweep's results ({why}); use another "
                             "--outdir, or --force to rerun every point there")
    states: dict[str, str] = {}
    shas: dict[str, str] = {}
    for p in sweep.points:
        state, why = result_state(sweep.command, p, p.path(out), shas) if out.is_dir() else ("missing", "")
        if force and state != "missing":
            state = "incomplete"
        if state == "other" or (state != "missing" and manifest is None and not force):
            reason = why or "not made by an ncfkit sweep in this folder"
            raise InputError(f"--outdir {out}: {p.path(out).name} exists and is not this sweep's point ({reason}); "
                             "use another --outdir, or --force to overwrite")
        states[p.name] = state
    return manifest, states


def listing(sweep: Sweep, force: bool = False) -> list[dict]:
    """Each point's file, state (missing / complete / incomplete) and the command line that
    runs it alone (``ncfkit sweep --dry-run``; also a job-array script). Checks the folder
    as a run would; writes nothing."""
    import shlex

    _, states = check_outdir(sweep, force)
    return [{"file": p.path(sweep.outdir).name, "state": states[p.name],
             "command_line": shlex.join(command_line(sweep.command, p, p.path(sweep.outdir)))} for p in sweep.points]


def _jsonready_fp(sweep: Sweep) -> dict:
    return json.loads(json.dumps(sweep.fingerprint(), default=str))


def dask_setup(worker=None) -> None:
    """Dask's preload hook for the local cluster's worker processes: Ctrl-C in a terminal
    reaches the whole process group, and the sweep (not its workers) handles it."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Cluster:
    """Where the points run: an embedded LocalCluster, a remote scheduler, or nowhere
    (in this process)."""

    def __init__(self, scheduler: str | None, workers: int | None, retries: int):
        self.client = None
        self.cluster = None
        self.remote = False
        self.kind = "in-process"
        self.note = ""
        if scheduler in ("in-process", "sequential"):
            self.where = "in this process, one point after another"
            return
        try:
            import distributed  # noqa: F401
        except ImportError:
            if scheduler is not None:
                raise InputError(f"--scheduler {scheduler}: needs Dask (pip install \"ncfkit[cluster]\")") from None
            self.where = "in this process, one point after another"
            self.note = ("Dask is not installed (pip install \"ncfkit[cluster]\"): running the points in this "
                         "process, one after another")
            return
        import logging

        from distributed import Client, LocalCluster

        if scheduler is None:
            n = workers or _cores()
            self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.CRITICAL,
                                        scheduler_kwargs={"allowed_failures": 0}, preload=[__name__])
            self.client = Client(self.cluster)
            self.kind = "local"
            self.where = f"on a local Dask cluster ({n} worker processes, 1 thread each)"
            return
        logging.getLogger("distributed").setLevel(logging.ERROR)  # its warnings would break the progress bar
        try:
            self.client = Client(scheduler, timeout="5s")
        except (OSError, TimeoutError, ValueError) as e:
            raise InputError(f"--scheduler {scheduler}: cannot reach the scheduler "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
        self.remote = True
        self.kind = "remote"
        n = len(self.client.scheduler_info().get("workers", {}))
        self.where = f"on the Dask cluster at {scheduler} ({n} workers now)"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.client is not None:
                self.client.close(timeout=5)
        with contextlib.suppress(Exception):
            if self.cluster is not None:
                self.cluster.close(timeout=10)


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _worker_died(exc: BaseException) -> bool:
    try:
        from distributed import KilledWorker
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, KilledWorker) or type(exc).__name__ in ("CommClosedError", "FutureCancelledError")


def parse_resources(text: str | None) -> dict[str, float] | None:
    """``GPU=1,MEM=4e9`` (``--resources``): what each point takes of a worker's Dask resources."""
    if not text:
        return None
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, amount = item.partition("=")
        try:
            value = float(amount) if sep and name.strip() else math.nan
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"--resources {text!r}: expected NAME=AMOUNT[,NAME=AMOUNT] with amounts > 0 (e.g. GPU=1)")
        out[name.strip()] = value
    return out


def run_sweep(sweep: Sweep, *, scheduler: str | None = None, workers: int | None = None, retries: int = 2,
              force: bool = False, progress: Callable[[dict], None] | None = None,
              on_start: Callable[[dict], None] | None = None, resources: dict[str, float] | None = None) -> SweepReport:
    """Run the points of ``sweep`` that are not complete; keep ``DIR/sweep.json`` up to date;
    write the table at the end. ``progress`` gets {done, failed, running, total} as points
    finish; ``on_start`` gets {where, note, total, skipped, to_run} once the cluster is up.

    Raises :class:`KeyboardInterrupt` (after cleaning up, with the report as its
    ``sweep_report`` attribute) when interrupted.
    """
    manifest, states = check_outdir(sweep, force)
    if all(state == "complete" for state in states.values()):
        scheduler = "in-process"  # nothing to run: no cluster to start
    if resources and scheduler in (None, "in-process", "sequential"):
        raise InputError("--resources needs a --scheduler whose workers offer them (dask worker --resources GPU=1)")
    cluster = _Cluster(scheduler, workers, retries)  # an unreachable scheduler fails here, before any point
    if resources and cluster.client is not None:
        offered = [w.get("resources", {}) for w in cluster.client.scheduler_info().get("workers", {}).values()]
        if not any(all(r.get(k, 0) >= v for k, v in resources.items()) for r in offered):
            cluster.note = (f"no worker of the cluster offers {resources} now; the points wait for one "
                            "(start workers with dask worker --resources …)")
    outdir = sweep.outdir
    sweep_id = hashlib.sha1(f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}".encode()).hexdigest()[:12]
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / STATE / "locks").mkdir(parents=True, exist_ok=True)
        run_entry = {"id": sweep_id, "start_time": _now(), "end_time": None, "where": cluster.where,
                     "host": socket.gethostname(), "pid": os.getpid(), "argv": list(sys.argv), "status": "running"}
        manifest = _new_manifest(sweep, manifest, run_entry)
        write_manifest(outdir, manifest)
        todo = [p for p in sweep.points if states[p.name] != "complete"]
        skipped = [p.name for p in sweep.points if states[p.name] == "complete"]
        if on_start is not None:
            on_start({"where": cluster.where, "note": cluster.note, "total": len(sweep.points),
                      "skipped": len(skipped), "to_run": len(todo)})
        report = SweepReport(len(sweep.points), skipped, [], [], [], [], False, cluster.where, {})
        tasks = {p.name: _task(sweep, p, sweep_id, force, cluster.client is None, run_entry["start_time"])
                 for p in todo}
        try:
            if cluster.client is None:
                _run_here(tasks, report, progress)
            else:
                _run_dask(cluster, tasks, report, retries, progress, outdir, sweep_id, resources)
        except KeyboardInterrupt as e:
            report.interrupted = True
            cluster.close()  # no more writes; then count what finished meanwhile
            for name, task in tasks.items():
                if name not in report.records and result_state(sweep.command, task["point"],
                                                                task["point"].path(outdir))[0] == "complete":
                    _record(report, {"name": name, "index": task["point"].index, "status": "done",
                                     "note": "finished while the sweep was stopping"})
            report.not_run = [n for n in tasks if n not in report.records]
            e.sweep_report = report
            raise
        finally:
            cluster.close()
            _cleanup(outdir, sweep, sweep_id, remote=cluster.remote)
            status = "interrupted" if report.interrupted else ("failed" if report.failed else "complete")
            run_entry.update(end_time=_now(), done=len(report.done), skipped=len(report.skipped),
                             failed=len(report.failed), busy=len(report.busy), status=status)
            manifest["runs"][-1] = run_entry
            _finish_manifest(sweep, manifest, report)
            with contextlib.suppress(OSError, InputError):
                write_manifest(outdir, manifest)
        return report
    except BaseException:
        cluster.close()
        raise


def _task(sweep: Sweep, p: Point, sweep_id: str, force: bool, in_process: bool, started: str) -> dict:
    return {"command": sweep.command, "outdir": str(sweep.outdir.resolve()), "point": p, "sweep_id": sweep_id,
            "started": started,
            "force": force, "argv": command_line(sweep.command, p, p.path(sweep.outdir)), "in_process": in_process,
            "attempt": 0}


def _record(report: SweepReport, rec: dict) -> None:
    report.records[rec["name"]] = rec
    if rec["status"] == "skipped":  # completed by another sweep meanwhile
        report.skipped.append(rec["name"])
    else:
        {"done": report.done, "failed": report.failed, "busy": report.busy}[rec["status"]].append(rec)


def _run_here(tasks: dict, report: SweepReport, progress) -> None:
    counts = {"done": 0, "failed": 0, "running": 0, "total": len(tasks)}
    for task in tasks.values():
        counts["running"] = 1
        if progress:
            progress(dict(counts, current=task["point"].name))
        rec = run_point(task)
        _record(report, rec)
        counts["running"] = 0
        counts["failed" if rec["status"] == "failed" else "done"] += 1
        if progress:
            progress(dict(counts, last=rec))


def _run_dask(cluster: _Cluster, tasks: dict, report: SweepReport, retries: int, progress, outdir: Path,
              sweep_id: str, resources: dict[str, float] | None = None) -> None:
    """Submit every point; as each finishes, record it. A point whose worker died while
    running it (its lock is left, from this sweep) is resubmitted up to ``retries`` times;
    one that was only queued on the dead worker is resubmitted without counting. A point
    found locked by an earlier attempt of this sweep is resubmitted as soon as that
    attempt's worker has left the cluster (or its lock went stale)."""
    client = cluster.client
    attempts = dict.fromkeys(tasks, 0)  # deaths while running the point
    submissions = dict.fromkeys(tasks, 0)
    futures = {}
    locks = outdir / STATE / "locks"

    def submit(name: str) -> None:
        submissions[name] += 1
        task = dict(tasks[name], attempt=attempts[name])
        key = f"ncfkit-{name}-{sweep_id}-{submissions[name]}"
        futures[client.submit(run_point, task, key=key, pure=False, resources=resources)] = name

    def our_dead_lock(name: str) -> bool:
        """Whether ``name`` is locked by this sweep from a worker no longer in the cluster
        (then the lock is removed)."""
        lock = locks / f"{name}.lock"
        info = PointLock.read(lock)
        if info is None or info.get("sweep") != sweep_id:
            return False
        try:
            live = set(client.scheduler_info().get("workers", {}))
        except Exception:  # the scheduler is gone: the next submit says so
            live = set()
        if info.get("worker") in live and not PointLock.stale(info):
            return False
        broken = lock.with_name(f"{lock.name}.dead.{os.getpid()}.{time.monotonic_ns()}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(lock, broken)
            os.unlink(broken)
        return True

    for name in tasks:
        submit(name)
    counts = {"done": 0, "failed": 0, "running": 0, "total": len(tasks)}
    last_poll = 0.0
    deferred: dict[str, float] = {}  # points locked by an earlier attempt whose worker is not yet known dead
    first_busy: dict[str, float] = {}
    while futures or deferred:
        now = time.monotonic()
        for name in [n for n, t in deferred.items() if t <= now]:
            del deferred[name]
            submit(name)
        for fut in [f for f in futures if f.done()]:
            name = futures.pop(fut)
            if fut.status == "finished":
                rec = fut.result()
                if rec["status"] == "busy" and rec.get("holder_sweep") == sweep_id \
                        and now - first_busy.setdefault(name, now) < 2 * STALE_AFTER:
                    deferred[name] = now + (0.0 if our_dead_lock(name) else 2.0)
                    continue
            else:
                exc = fut.exception() if fut.status == "error" else None
                # "lost": the worker holding the finished result died before it was fetched;
                # resubmitted, the point finds its complete file and reports it done
                died = fut.status == "lost" or (exc is not None and _worker_died(exc))
                if died:
                    if our_dead_lock(name):  # it was running there
                        attempts[name] += 1
                    if attempts[name] <= retries and submissions[name] < retries + 20:
                        submit(name)
                        continue
                why = (f"its worker died {attempts[name]} times (--retries {retries})" if died
                       else f"{type(exc).__name__}: {' '.join(str(exc).split())}" if exc is not None
                       else f"task {fut.status}")
                rec = {"name": name, "index": tasks[name]["point"].index, "status": "failed", "error": why}
            rec["attempts"] = attempts[name] + (0 if rec["status"] == "failed" else 1)
            _record(report, rec)
            counts["failed" if rec["status"] == "failed" else "done"] += 1
            if progress:
                progress(dict(counts, last=rec))
        now = time.monotonic()
        if now - last_poll > 0.5:
            last_poll = now
            counts["running"] = _running(locks, sweep_id)
            if progress:
                progress(dict(counts))
        if futures or deferred:
            time.sleep(0.05)
    if progress:
        progress(dict(counts, running=0))


def _running(locks: Path, sweep_id: str) -> int:
    n = 0
    for p in locks.glob("*.lock"):
        info = PointLock.read(p)
        if info is not None and info.get("sweep") == sweep_id:
            n += 1
    return n


def _cleanup(outdir: Path, sweep: Sweep, sweep_id: str, remote: bool) -> None:
    """After the run (or Ctrl-C): locks of this sweep whose owner is gone, and the
    temporary files of points no one runs any more. Points still running on a remote
    cluster keep theirs (they finish there, atomically)."""
    locks = outdir / STATE / "locks"
    for p in sweep.points:
        lock = locks / f"{p.name}.lock"
        info = PointLock.read(lock)
        if info is not None and info.get("sweep") == sweep_id and (not remote or PointLock.stale(info)):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # its worker was ours and is gone (the local cluster is closed)
            info = None
        if info is None or PointLock.stale(info):
            remove_temporaries(outdir, p.name)


def _new_manifest(sweep: Sweep, old: dict | None, run_entry: dict) -> dict:
    m = {
        "ncfkit_sweep": MANIFEST_FORMAT,
        "command": sweep.command,
        "fingerprint": _jsonready_fp(sweep),
        "grid": sweep.describe_grid(),
        "fixed": sweep.fixed,
        "points": len(sweep.points),
        "versions": versions(),
        "start_time": (old or {}).get("start_time") or run_entry["start_time"],
        "end_time": None,
        "runs": list((old or {}).get("runs", [])) + [run_entry],
    }
    return json.loads(json.dumps(m, default=str))


def _finish_manifest(sweep: Sweep, manifest: dict, report: SweepReport) -> None:
    manifest["end_time"] = manifest["runs"][-1]["end_time"]
    import shlex

    files = []
    for p in sweep.points:
        entry = {"name": p.name, "file": p.path(sweep.outdir).name,
                 "grid": {_short(a): _plain(p.grid[a.name]) for a in sweep.axes},
                 "status": _point_status(p, report), "command_line": shlex.join(command_line(sweep.command, p))}
        rec = report.records.get(p.name, {})
        entry.update({k: rec[k] for k in ("host", "pid", "elapsed", "attempts", "torch_loaded", "error") if k in rec})
        old = {f["name"]: f for f in manifest.get("files", [])}.get(p.name)
        if p.name not in report.records and old is not None:  # kept from the run that made it
            entry.update({k: old[k] for k in ("host", "pid", "elapsed", "attempts", "torch_loaded") if k in old})
        files.append(entry)
    manifest["files"] = files
    manifest["failures"] = [{"name": r["name"], "error": r.get("error")} for r in report.failed]
    manifest["runs"][-1] = json.loads(json.dumps(manifest["runs"][-1], default=str))


def _point_status(p: Point, report: SweepReport) -> str:
    rec = report.records.get(p.name)
    if rec is not None:
        return {"done": "complete", "skipped": "complete"}.get(rec["status"], rec["status"])
    if p.name in report.skipped:
        return "complete"
    return "not run"


# --------------------------------------------------------------------------- the table


def table(sweep: Sweep) -> tuple[list[str], list[dict]]:
    """One row per complete point (escape: per point and δ, the columns of ``ncfkit
    collect``), its grid values first."""
    from .io import read_h5

    grid_cols = [_short(a) for a in sweep.axes]
    rows: list[dict] = []
    columns: list[str] | None = None
    for p in sweep.points:
        path = p.path(sweep.outdir)
        if result_state(sweep.command, p, path)[0] != "complete":
            continue
        front = {_short(a): _plain(p.grid[a.name]) for a in sweep.axes}
        if sweep.command == "escape":
            collect_columns, file_rows = escape_rows(path)
            columns = columns or [*grid_cols, *[c for c in collect_columns if c not in grid_cols]]
            for r in file_rows:
                r["file"] = path.name
                rows.append({**front, **r})
        else:
            tree = read_h5(path, max_array=0)
            flat = _scalars(tree)
            first = tree.get("points", {}).get("0") if isinstance(tree.get("points"), dict) else None
            if isinstance(first, dict):  # kkt: the point of largest NCF
                flat.update({f"point0_{k}": v for k, v in _scalars(first).items()})
            rows.append({**front, "file": path.name, **{k: v for k, v in flat.items() if k not in front}})
    if columns is None:
        extra: list[str] = []
        for r in rows:
            extra += [k for k in r if k not in extra and k not in grid_cols]
        columns = [*grid_cols, *extra]
    return columns, [{c: _cell(r.get(c)) for c in columns} for r in rows]


def _scalars(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if isinstance(v, (int, float, str, bool)) and k != "ncfkit_kind"}


def escape_rows(path: str | os.PathLike) -> tuple[tuple[str, ...], list[dict]]:
    """(columns, rows) of ``ncfkit collect`` for one escape file."""
    from . import io

    if hasattr(io, "escape_rows"):
        return io.FILE_COLUMNS + io.RUN_COLUMNS, io.escape_rows(path)
    from .cli.collect_cmd import FILE_COLUMNS, RUN_COLUMNS, rows_of  # older versions

    return FILE_COLUMNS + RUN_COLUMNS, rows_of(str(path))


def _cell(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_table(sweep: Sweep, manifest_extra: bool = True) -> tuple[list[str], list[dict]]:
    """``DIR/sweep.csv`` and the ``table`` of ``DIR/sweep.json``."""
    import csv
    import io as _io

    from .io import atomic_path

    columns, rows = table(sweep)
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r[c] is None else (f"{r[c]:.10g}" if isinstance(r[c], float) else r[c]) for c in columns])
    with atomic_path(sweep.outdir / TABLE_CSV, force=True) as tmp:
        Path(tmp).write_text(buf.getvalue())
    if manifest_extra:
        m = read_manifest(sweep.outdir) or {}
        m["table"] = {"columns": columns, "rows": rows}
        write_manifest(sweep.outdir, m)
    return columns, rows
