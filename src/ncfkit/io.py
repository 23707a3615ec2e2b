"""Every file format ncfkit reads or writes, in one place.

- data: ``.npz`` (arrays X, y), ``.h5``/``.hdf5`` (datasets X, y), ``.csv`` (last column
  y, optional header row);
- weights: ``.npz`` with ``W1`` … ``WL`` (torch ``nn.Linear`` layout) or ``w`` (diagonal);
- results: HDF5 files whose root attribute ``ncfkit_kind`` says what they hold (``kkt``,
  ``sparsity``, ``escape``), with a ``provenance`` group.

Outputs are written atomically (temporary file in the same folder, fsync, rename) and an
existing output is never replaced unless ``force``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .data import Dataset, validate_xy
from .errors import InputError

__all__ = [
    "DATA_SUFFIXES", "load_data", "save_data", "sha256_of", "check_output_path",
    "atomic_path", "write_h5", "read_h5", "ArrayInfo", "result_kind", "provenance", "now_iso",
    "read_weights", "write_weights",
]

DATA_SUFFIXES = (".npz", ".h5", ".hdf5", ".csv")
H5_SUFFIXES = (".h5", ".hdf5")


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {str(p)!r} does not exist")
    if not p.is_file():
        raise InputError(f"{what} {str(p)!r} is not a file")
    if p.stat().st_size == 0:
        raise InputError(f"{what} {str(p)!r} is empty")
    return p


def _load_npz(p: Path) -> tuple[Any, Any]:
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in ("X", "y") if k not in z.files]
            if missing:
                raise InputError(f"{p}: NPZ has no array {missing[0]!r} (found: {', '.join(z.files) or 'none'})")
            return z["X"], z["y"]
    except InputError:
        raise
    except Exception as e:  # zipfile/pickle/value errors of a damaged file
        raise InputError(f"{p}: not a readable NPZ file ({type(e).__name__})") from None


def _load_h5(p: Path) -> tuple[Any, Any]:
    import h5py

    try:
        with h5py.File(p, "r") as f:
            missing = [k for k in ("X", "y") if k not in f or not isinstance(f[k], h5py.Dataset)]
            if missing:
                raise InputError(f"{p}: HDF5 file has no dataset {missing[0]!r}")
            return f["X"][()], f["y"][()]
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{p}: not a readable HDF5 file ({type(e).__name__})") from None


def _load_csv(p: Path) -> tuple[Any, Any]:
    try:
        text = p.read_text().strip().splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a text CSV file") from None
    rows = [line for line in text if line.strip()]
    if rows:
        try:
            [float(c) for c in rows[0].split(",")]
        except ValueError:
            rows = rows[1:]  # a header row
    if not rows:
        raise InputError(f"{p}: the data set is empty (n = 0 samples)")
    try:
        table = [[float(c) for c in line.split(",")] for line in rows]
    except ValueError as e:
        raise InputError(f"{p}: CSV holds a non-numeric value ({e})") from None
    ncols = {len(r) for r in table}
    if len(ncols) != 1:
        raise InputError(f"{p}: CSV rows have different numbers of columns {sorted(ncols)}")
    arr = np.asarray(table, dtype=np.float64)
    if arr.shape[1] < 2:
        raise InputError(f"{p}: CSV needs at least 2 columns (features, then the label y)")
    return arr[:, :-1], arr[:, -1]


_LOADERS = {".npz": _load_npz, ".h5": _load_h5, ".hdf5": _load_h5, ".csv": _load_csv}


def load_data(path: str | os.PathLike) -> Dataset:
    """Load and validate a data file; raise :class:`InputError` with a one-line reason."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _LOADERS:
        raise InputError(f"{p}: unsupported data file type {suffix or '(none)'!r}; use {', '.join(DATA_SUFFIXES)}")
    p = _existing_file(p, "data file")
    X, y = _LOADERS[suffix](p)
    X, y = validate_xy(X, y, source=str(p))
    return Dataset(X, y, str(p), sha256_of(p))


def save_data(path: str | os.PathLike, X: np.ndarray, y: np.ndarray, force: bool = False) -> None:
    """Write a data set in the format given by the suffix (atomically)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _LOADERS:
        raise InputError(f"{p}: unsupported data file type {suffix!r}; use {', '.join(DATA_SUFFIXES)}")
    with atomic_path(p, force=force) as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, X=X, y=y)
        elif suffix == ".csv":
            header = ",".join([f"x{i + 1}" for i in range(X.shape[1])] + ["y"])
            np.savetxt(tmp, np.column_stack([X, y]), delimiter=",", header=header, comments="", fmt="%.17g")
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                f["X"], f["y"] = X, y


# --------------------------------------------------------------------------- outputs


def check_output_path(path: str | os.PathLike, force: bool = False, suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse (with :class:`InputError`) an output into a missing folder, with a wrong
    suffix, or onto an existing file without ``force``."""
    p = Path(path)
    if suffixes and p.suffix.lower() not in suffixes:
        raise InputError(f"output {str(p)!r}: unsupported extension; use {', '.join(suffixes)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output {str(p)!r}: folder {str(parent)!r} does not exist")
    if p.is_dir():
        raise InputError(f"output {str(p)!r} is a folder")
    if p.exists() and not force:
        raise InputError(f"output {str(p)!r} exists; pass --force to overwrite it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output {str(p)!r}: folder {str(parent)!r} is not writable")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False) -> Iterator[str]:
    """Yield a temporary path in the target's folder; on success fsync it, move it to
    ``path`` and fsync the folder; on any error (or Ctrl-C) remove it, leaving ``path``
    untouched. Without ``force`` the move is a hard link, which fails rather than replace
    a file that appeared at ``path`` while the run was going (another job's output)."""
    p = check_output_path(path, force=force)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _move_into_place(tmp, p, force)
        _fsync_dir(p.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _move_into_place(tmp: str, p: Path, force: bool) -> None:
    if force:
        os.replace(tmp, p)
        return
    try:
        os.link(tmp, p)  # atomic, and refuses an existing target
    except FileExistsError:
        raise InputError(f"output {str(p)!r} appeared during the run; not overwritten "
                         "(pass --force to overwrite it)") from None
    except OSError:  # a file system without hard links
        if p.exists():
            raise InputError(f"output {str(p)!r} appeared during the run; not overwritten "
                             "(pass --force to overwrite it)") from None
        os.replace(tmp, p)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_node(group, key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        sub = group.create_group(key)
        for k, v in value.items():
            _write_node(sub, str(k), v)
    elif isinstance(value, str):
        group.attrs[key] = str(value)  # np.str_ has no HDF5 conversion
    elif isinstance(value, (bool, int, float, np.integer, np.floating, np.bool_)):
        group.attrs[key] = value
    elif isinstance(value, (list, tuple)) and (not value or not isinstance(value[0], (np.ndarray, list, dict))):
        arr = np.asarray(value)
        if arr.dtype.kind in "US":
            group.attrs[key] = json.dumps(list(value))
        else:
            group.create_dataset(key, data=arr)
    else:
        arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        group.create_dataset(key, data=arr, compression="gzip" if arr.size > 4096 else None)


def write_h5(path: str | os.PathLike, kind: str, tree: dict[str, Any], force: bool = False) -> None:
    """Write a nested dict as HDF5 atomically: dicts become groups, arrays datasets and
    scalars/strings attributes. ``kind`` goes to the root attribute ``ncfkit_kind``."""
    import h5py

    with atomic_path(path, force=force) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["ncfkit_kind"] = kind
            f.attrs["ncfkit_version"] = __version__
            for k, v in tree.items():
                _write_node(f, k, v)


@dataclass(frozen=True)
class ArrayInfo:
    """What :func:`read_h5` leaves in place of a dataset larger than ``max_array``."""

    shape: tuple[int, ...]
    dtype: str


def _read_node(node, max_array: int | None = None) -> dict[str, Any]:
    import h5py

    out: dict[str, Any] = {}
    for k, v in node.attrs.items():
        out[k] = v.item() if isinstance(v, np.generic) else v
    for k, v in node.items():
        if isinstance(v, h5py.Group):
            out[k] = _read_node(v, max_array)
        elif max_array is not None and v.size > max_array:
            out[k] = ArrayInfo(tuple(int(s) for s in v.shape), str(v.dtype))
        else:
            out[k] = v[()]
    return out


def read_h5(path: str | os.PathLike, kinds: tuple[str, ...] | None = None,
            max_array: int | None = None) -> dict[str, Any]:
    """Read an ncfkit result file into a nested dict; raise :class:`InputError` for a file
    that is missing, damaged, not an ncfkit result, or not one of ``kinds``.

    With ``max_array``, datasets of more elements are not read: an :class:`ArrayInfo`
    (shape, dtype) stands in for each (``ncfkit info`` reads only the small parts)."""
    import h5py

    p = _existing_file(path, "result file")
    try:
        is_hdf5 = h5py.is_hdf5(p)
    except Exception:
        is_hdf5 = False
    if not is_hdf5:
        raise InputError(f"{p}: not a readable HDF5 file (no HDF5 signature; ncfkit result "
                         "files are the .h5 files its commands write with --out)")
    try:
        with h5py.File(p, "r") as f:
            tree = _read_node(f, max_array)
    except Exception as e:
        raise InputError(f"{p}: not a readable HDF5 file: truncated or corrupted "
                         f"({type(e).__name__})") from None
    kind = tree.get("ncfkit_kind")
    if kind is None:
        raise InputError(f"{p}: not an ncfkit result file (no 'ncfkit_kind' attribute)")
    if kinds and kind not in kinds:
        raise InputError(f"{p}: is an ncfkit {kind!r} file; expected {' or '.join(kinds)}")
    return tree


def result_kind(path: str | os.PathLike) -> str:
    return read_h5(path)["ncfkit_kind"]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(data: Dataset | None = None, **settings: Any) -> dict[str, Any]:
    """Where a result came from: version, command line, data hash, settings, machine."""
    prov: dict[str, Any] = {
        "ncfkit_version": __version__,
        "command_line": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "python": platform.python_version(),
        "host": platform.node(),
        "start_time": now_iso(),
    }
    try:  # the installed version, read without importing torch (~2.5 s)
        from importlib.metadata import version

        prov["torch"] = version("torch")
    except Exception:  # pragma: no cover - not installed as a distribution
        pass
    if data is not None:
        prov.update(data_file=data.source, data_sha256=data.sha256, n=data.n, d=data.d)
    for k, v in settings.items():
        prov[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
    return {k: v for k, v in prov.items() if v is not None}


# --------------------------------------------------------------------------- weights


def read_weights(path: str | os.PathLike, shapes: list[tuple[int, int]] | None, d: int | None = None) -> np.ndarray:
    """Read a weight file (SPEC §4) as one flat vector in ncfkit's layout.

    ``shapes`` are the MLP's (k_l, k_{l-1}); ``None`` means the diagonal model, whose file
    holds ``w`` of length ``d``. Raise :class:`InputError` on any mismatch.
    """
    p = _existing_file(path, "weight file")
    if p.suffix.lower() != ".npz":
        raise InputError(f"{p}: weight files are .npz (arrays W1 … WL, or w)")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise InputError(f"{p}: not a readable NPZ file ({type(e).__name__})") from None
    if shapes is None:
        if "w" not in arrays:
            raise InputError(f"{p}: a diagonal-model weight file needs an array 'w'")
        w = np.asarray(arrays["w"], dtype=np.float64).ravel()
        if d is not None and w.size != d:
            raise InputError(f"{p}: 'w' has {w.size} entries, the model has {d}")
        return w
    parts = []
    for l, shape in enumerate(shapes, start=1):
        key = f"W{l}"
        if key not in arrays:
            raise InputError(f"{p}: no array {key!r} (the network has {len(shapes)} layers)")
        W = np.asarray(arrays[key], dtype=np.float64)
        if l == len(shapes) and W.ndim == 1:
            W = W[None, :]
        if W.shape != tuple(shape):
            raise InputError(f"{p}: {key} has shape {W.shape}, the network needs {tuple(shape)}")
        parts.append(W.ravel())
    extra = sorted(set(arrays) - {f"W{l}" for l in range(1, len(shapes) + 1)})
    if extra:
        raise InputError(f"{p}: unexpected arrays {extra} (the network has {len(shapes)} layers)")
    w = np.concatenate(parts)
    if not np.isfinite(w).all():
        raise InputError(f"{p}: weights contain NaN or Inf")
    return w


def write_weights(path: str | os.PathLike, layers: list[np.ndarray] | np.ndarray, force: bool = False) -> None:
    """Write a weight file: a list of W_l (MLP) or one vector ``w`` (diagonal)."""
    with atomic_path(path, force=force) as tmp:
        with open(tmp, "wb") as f:
            if isinstance(layers, np.ndarray):
                np.savez(f, w=layers)
            else:
                np.savez(f, **{f"W{l}": np.asarray(W) for l, W in enumerate(layers, start=1)})


# --------------------------------------------------------------------------- kkt files


def kkt_tree(result, arch, prov: dict[str, Any]) -> dict[str, Any]:
    """The HDF5 layout of a ``kkt`` result: attrs of the run, ``provenance``, and
    ``points/<i>`` (sorted by 𝒩 descending) with the certificate as attributes and the
    weights as datasets ``w`` (flat, unit norm) and ``W1`` … ``WL`` (mlp)."""
    points = {}
    for i, p in enumerate(result.points):
        c = p.cert
        node: dict[str, Any] = {
            "ncf": c.ncf, "lam": c.lam, "residual": c.residual, "delta": c.delta,
            "eig_error": c.eig_error, "kind": c.kind, "second_order": c.second_order,
            "hessian_method": c.hessian_method, "count": p.count,
            "basin_fraction": p.basin_fraction, "converged": p.converged,
            "restarts": np.asarray(p.restarts, dtype=np.int64),
            "top_eigs": np.asarray(c.top_eigs), "w": c.w.detach().cpu().numpy(),
        }
        if c.balance_error is not None:
            node["balance_error"] = c.balance_error
            node["active_per_layer"] = np.asarray(c.active_per_layer, dtype=np.int64)
            for l, W in enumerate(arch.split(c.w.detach().cpu()), start=1):
                node[f"W{l}"] = W.numpy()
        points[str(i)] = node
    return {
        "homogeneity": result.homogeneity, "num_params": result.num_params,
        "restarts": result.restarts, "converged": result.converged,
        "max_steps_taken": result.max_steps_taken, "stalled": len(result.stalled),
        "provenance": prov, "points": points,
    }


def read_kkt_point(path: str | os.PathLike, point: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(point record, provenance) of point ``point`` of a ``kkt`` file; raise
    :class:`InputError` for a wrong file or an index out of range."""
    tree = read_h5(path, kinds=("kkt",))
    points = tree.get("points", {})
    if not points:
        raise InputError(f"{path}: the kkt file holds no converged point")
    if not 0 <= point < len(points):
        raise InputError(f"{path}: --point {point} out of range; the file has points 0..{len(points) - 1}")
    rec = points.get(str(point))
    if rec is None or "w" not in rec:
        raise InputError(f"{path}: point {point} is damaged (no weights)")
    return rec, tree.get("provenance", {})


def architecture_of(prov: dict[str, Any]):
    """The architecture recorded in a result's provenance."""
    from .models import architecture_from_dict

    spec = prov.get("architecture")
    if spec is None:
        raise InputError("result file has no architecture in its provenance")
    try:
        return architecture_from_dict(json.loads(spec) if isinstance(spec, str) else spec)
    except (ValueError, KeyError, TypeError):
        raise InputError(f"result file has a malformed architecture record {spec!r}") from None


def weight_file_shapes(path: str | os.PathLike) -> list[tuple[int, int]] | None:
    """The MLP layer shapes (k_l, k_{l-1}) a weight file implies, read from its arrays
    ``W1`` … ``WL`` (the last may be (k_{L-1},)); ``None`` for a diagonal-model file
    (array ``w``). Pass the result to :func:`read_weights`. Raise :class:`InputError` for
    a file that is not a weight snapshot or whose shapes do not chain."""
    p = _existing_file(path, "weight file")
    if p.suffix.lower() != ".npz":
        raise InputError(f"{p}: weight files are .npz (arrays W1 … WL, or w)")
    try:
        with np.load(p, allow_pickle=False) as z:
            shapes = {k: z[k].shape for k in z.files}
    except Exception as e:
        raise InputError(f"{p}: not a readable NPZ file ({type(e).__name__})") from None
    if "W1" not in shapes:
        if "w" in shapes:
            return None
        found = ", ".join(sorted(shapes)) or "none"
        raise InputError(f"{p}: not a weight snapshot (needs arrays W1 … WL or w; found: {found})")
    L = 1
    while f"W{L + 1}" in shapes:
        L += 1
    out: list[tuple[int, int]] = []
    for l in range(1, L + 1):
        shape = shapes[f"W{l}"]
        if l == L and len(shape) == 1:
            shape = (1, shape[0])
        if len(shape) != 2:
            raise InputError(f"{p}: W{l} has shape {shape}; expected a matrix (k_l, k_l-1)")
        if out and shape[1] != out[-1][0]:
            raise InputError(f"{p}: W{l} has shape {shape} but W{l - 1} has {out[-1][0]} rows")
        out.append((int(shape[0]), int(shape[1])))
    if out[-1][0] != 1:
        raise InputError(f"{p}: the last layer W{L} has shape {shapes[f'W{L}']}; the output must be "
                         "scalar, (1, k) or (k,)")
    return out
