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
    "read_weights", "write_weights", "architecture_of_weights",
    # result layouts: one record per result, its JSON summary read off the same record
    "certificate_record", "kkt_record", "kkt_summary", "governing_point_record", "run_record",
    "escape_record", "escape_summary", "sparsity_record", "sparsity_summary", "interrupted_record",
    "write_result", "SUMMARIES", "RUN_KEYS", "RUN_INFO_KEYS", "RUN_COLUMNS", "FILE_COLUMNS",
    "escape_rows", "result_info", "RUN_H5_LAYOUT",
]

DATA_SUFFIXES = (".npz", ".h5", ".hdf5", ".csv")
H5_SUFFIXES = (".h5", ".hdf5")


def _file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def h5_linked_files(path: str | os.PathLike) -> list[str]:
    """The other files an HDF5 file's root datasets read from (external links, virtual
    dataset sources, external raw storage), as HDF5 resolves them; [] for a plain file
    or one that cannot be opened."""
    try:
        import h5py

        found: list[str] = []
        me = os.path.realpath(path)
        with h5py.File(path, "r", locking=False) as f:
            for name in f:
                try:
                    obj = f[name]
                except Exception:
                    continue  # a dangling link: the loader names it
                if not isinstance(obj, h5py.Dataset):
                    continue
                files = [obj.file.filename]
                if obj.is_virtual:
                    files += [src.file_name for src in obj.virtual_sources()]
                if obj.external:
                    files += [os.fsdecode(e[0]) for e in obj.external]
                for fn in files:
                    if fn not in (".",) and os.path.realpath(fn) != me and fn not in found:
                        found.append(fn)
        return found
    except Exception:
        return []


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (what ``sha256sum`` prints). For an HDF5 file whose
    datasets live in other files (external links, virtual datasets), the SHA-256 of the
    lines ``<sha256 of the file>`` and ``<sha256 of each linked file>  <its name>``, so a
    change of a linked file changes the hash too."""
    digest = _file_sha256(path)
    if Path(path).suffix.lower() not in H5_SUFFIXES:
        return digest
    linked = h5_linked_files(path)
    if not linked:
        return digest
    lines = [digest] + [f"{_file_sha256(fn)}  {Path(fn).name}" for fn in linked if os.path.isfile(fn)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {str(p)!r} does not exist")
    if not p.is_file():
        raise InputError(f"{what} {str(p)!r} is not a file")
    if p.stat().st_size == 0:
        raise InputError(f"{what} {str(p)!r} is empty")
    return p


#: A data file may declare at most this fraction of the memory available (the run keeps
#: X as read, as float64 and as the working dtype, plus per-sample work arrays).
DATA_MEMORY_SHARE = 0.25


def _declared_bytes(shape: tuple[int, ...], itemsize: int = 8) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * itemsize


def _check_declared_data(p: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a data file whose declared X and y cannot be a data set, or whose X and y
    (as float64) would not fit in the memory this process may use, before reading them
    (a crafted .npz or .h5 declares gigabytes in a few KB)."""
    from ._runtime import available_memory, human_bytes

    X, y = shapes["X"], shapes["y"]
    if len(X) != 2:
        raise InputError(f"{p}: X must have shape (n, d); got rank {len(X)} shape {X}")
    if len(y) not in (1, 2) or (len(y) == 2 and y[1] != 1):
        raise InputError(f"{p}: y must have shape (n,) or (n, 1); got shape {y}")
    if X[0] != y[0]:
        raise InputError(f"{p}: X has {X[0]} rows but y has {y[0]} labels")
    need = _declared_bytes(X) + _declared_bytes(y)
    budget = available_memory()
    if need > DATA_MEMORY_SHARE * budget:
        raise InputError(f"{p}: declares X of shape {tuple(X)} ({human_bytes(need)} as float64), more "
                         f"than this machine can work with ({human_bytes(budget)} of memory available; "
                         "NCFKIT_MAX_MEMORY sets the limit); not read")


#: An .npz member that inflates more than this many times, to more than ZIP_BOMB_MIN_BYTES,
#: is refused unread (measured data compresses a few-fold at most; a crafted 3.4 MB file
#: inflated to 3.2 GB).
ZIP_BOMB_RATIO = 200
ZIP_BOMB_MIN_BYTES = 256 << 20


def _npz_headers(p: Path) -> dict[str, tuple[tuple[int, ...], np.dtype, int]]:
    """name -> (shape, dtype, stored bytes) of every ``.npy`` member, read from the member
    headers alone (no array is inflated)."""
    import zipfile

    fmt = np.lib.format
    out = {}
    with zipfile.ZipFile(p) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as fh:
                version = fmt.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = fmt.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = fmt.read_array_header_2_0(fh)
                else:
                    shape, _, dtype = fmt._read_array_header(fh, version)
                header = fh.tell()
            name = info.filename[:-4]
            out[name] = (tuple(int(s) for s in shape), dtype, info.file_size - header)
            if info.file_size > ZIP_BOMB_MIN_BYTES and info.compress_size * ZIP_BOMB_RATIO < info.file_size:
                from ._runtime import human_bytes

                raise InputError(f"{p}: {name} inflates {info.file_size // max(info.compress_size, 1)}-fold, "
                                 f"from {human_bytes(info.compress_size)} to {human_bytes(info.file_size)} "
                                 f"(shape {out[name][0]}): a zip bomb, not data; not read")
    return out


def _readable_npz_headers(p: Path) -> dict[str, tuple[tuple[int, ...], np.dtype, int]]:
    """:func:`_npz_headers`, with a damaged file's zipfile/format errors as one InputError."""
    try:
        return _npz_headers(p)
    except InputError:
        raise
    except Exception as e:  # zipfile/format errors of a damaged file
        raise InputError(f"{p}: not a readable NPZ file ({type(e).__name__})") from None


def _check_npz_sizes(p: Path) -> dict[str, tuple[tuple[int, ...], np.dtype, int]]:
    """The member headers of an .npz (:func:`_npz_headers`), after refusing members of
    Python objects, members that declare more bytes than they hold, and a file whose
    arrays together would not fit in :data:`DATA_MEMORY_SHARE` of the memory available."""
    from ._runtime import available_memory, human_bytes

    headers = _readable_npz_headers(p)
    total = 0
    for k, (shape, dtype, stored) in headers.items():
        if dtype.hasobject:
            raise InputError(f"{p}: {k} holds Python objects (dtype {dtype}); ncfkit reads numeric arrays only")
        declared = _declared_bytes(shape, dtype.itemsize)
        if stored < declared:
            raise InputError(f"{p}: {k} declares shape {shape} ({declared} bytes) "
                             f"but the file holds only {max(stored, 0)} bytes of it: truncated or crafted")
        total += _declared_bytes(shape)
    budget = available_memory()
    if total > DATA_MEMORY_SHARE * budget:
        raise InputError(f"{p}: declares arrays of {human_bytes(total)} as float64, more than this machine can "
                         f"work with ({human_bytes(budget)} of memory available; NCFKIT_MAX_MEMORY sets the limit); "
                         "not read")
    return headers


def _load_npz(p: Path) -> tuple[Any, Any]:
    headers = _readable_npz_headers(p)
    missing = [k for k in ("X", "y") if k not in headers]
    if missing:
        raise InputError(f"{p}: NPZ has no array {missing[0]!r} (found: {', '.join(headers) or 'none'})")
    for k in ("X", "y"):
        shape, dtype, stored = headers[k]
        if dtype.hasobject:
            raise InputError(f"{p}: {k} holds Python objects (dtype {dtype}); ncfkit reads numeric arrays only")
        if stored < _declared_bytes(shape, dtype.itemsize):
            raise InputError(f"{p}: {k} declares shape {shape} ({_declared_bytes(shape, dtype.itemsize)} bytes) "
                             f"but the file holds only {max(stored, 0)} bytes of it: truncated or crafted")
    _check_declared_data(p, {k: headers[k][0] for k in ("X", "y")})
    try:
        with np.load(p, allow_pickle=False) as z:
            return z["X"], z["y"]
    except Exception as e:  # zipfile/pickle/value errors of a damaged file
        raise InputError(f"{p}: not a readable NPZ file ({type(e).__name__})") from None


def _h5_unwritten(ds) -> str | None:
    """Why dataset ``ds`` cannot hold the data its shape declares, or ``None``: an
    unfiltered dataset stores every byte it declares; a compressed one at most ~1032x
    less (deflate's limit)."""
    declared = ds.size * ds.dtype.itemsize
    if declared == 0 or ds.is_virtual or ds.external:
        return None
    stored = ds.id.get_storage_size()
    filtered = bool(ds.compression or ds.scaleoffset or ds.shuffle) or (
        ds.chunks is not None and ds.id.get_create_plist().get_nfilters() > 0)
    if stored >= (declared // 1100 if filtered else declared):
        return None
    return (f"declares shape {tuple(ds.shape)} ({declared} bytes) but the file stores only {stored} "
            "bytes of it: unwritten, truncated or crafted")


def _load_h5(p: Path) -> tuple[Any, Any]:
    import h5py

    try:
        with h5py.File(p, "r", locking=False) as f:
            for k in ("X", "y"):
                link = f.get(k, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    try:
                        f[k]
                    except (KeyError, OSError):
                        raise InputError(f"{p}: {k} is an external link to {link.filename}:{link.path}, "
                                         "which cannot be opened") from None
            missing = [k for k in ("X", "y") if k not in f or not isinstance(f[k], h5py.Dataset)]
            if missing:
                raise InputError(f"{p}: HDF5 file has no dataset {missing[0]!r}")
            for k in ("X", "y"):
                why = _h5_unwritten(f[k])
                if why:
                    raise InputError(f"{p}: {k} {why}")
            _check_declared_data(p, {k: tuple(f[k].shape) for k in ("X", "y")})
            return f["X"][()], f["y"][()]
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{p}: not a readable HDF5 file ({type(e).__name__})") from None


#: CSV fields read as a missing value (NaN, refused by the data check with its column).
_CSV_MISSING = {"na", "n/a", "nan", "null", "none", "-nan", "+nan", "?"}


def _csv_number(field: str) -> float:
    text = field.strip().strip('"').strip()
    try:
        return float(text)
    except ValueError:
        if text.lower() in _CSV_MISSING or text == "":
            return float("nan")
        raise


def _load_csv(p: Path) -> tuple[Any, Any]:
    from ._runtime import available_memory, human_bytes

    size = p.stat().st_size
    # parsing keeps ~40 bytes of Python objects per byte-sized field in flight
    if 20 * size > DATA_MEMORY_SHARE * available_memory():
        raise InputError(f"{p}: a {human_bytes(size)} CSV file is too large to parse in "
                         f"{human_bytes(available_memory())} of available memory; convert it to .npz or .h5")
    try:  # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first field
        text = p.read_text(encoding="utf-8-sig").strip().splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a text CSV file") from None
    rows = [line for line in text if line.strip()]
    if rows:
        try:  # a first row whose every field is a number (or NA/NaN) is data
            [_csv_number(c) for c in rows[0].split(",")]
        except ValueError:
            rows = rows[1:]  # a header row
    if not rows:
        raise InputError(f"{p}: the data set is empty (n = 0 samples)")
    try:
        table = [[_csv_number(c) for c in line.split(",")] for line in rows]
    except ValueError as e:
        raise InputError(f"{p}: CSV holds a non-numeric value ({e})") from None
    ncols = {len(r) for r in table}
    if len(ncols) != 1:
        raise InputError(f"{p}: CSV rows have different numbers of columns {sorted(ncols)}")
    arr = np.asarray(table, dtype=np.float64)
    if arr.shape[1] < 2:
        raise InputError(f"{p}: CSV needs at least 2 columns (features, then the label y)")
    return arr[:, :-1], arr[:, -1]


def declared_data_bytes(path: str | os.PathLike) -> int | None:
    """Bytes X and y of a data file take as float64, from its headers (npz, h5) or its
    size (csv: ~8 bytes a number for ~3 characters of text); ``None`` if unreadable."""
    p = Path(path)
    try:
        suffix = p.suffix.lower()
        if suffix == ".npz":
            h = _npz_headers(p)
            return sum(_declared_bytes(h[k][0]) for k in ("X", "y") if k in h)
        if suffix in H5_SUFFIXES:
            import h5py

            with h5py.File(p, "r", locking=False) as f:
                return sum(_declared_bytes(f[k].shape) for k in ("X", "y") if k in f)
        if suffix == ".csv":
            return 3 * p.stat().st_size
    except Exception:
        return None
    return None


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
            _write_all_to(tmp, _h5_image(lambda f: (_dataset(f, "X", np.asarray(X), compress=True),
                                                    _dataset(f, "y", np.asarray(y), compress=True))))


# --------------------------------------------------------------------------- outputs


def _link_target(p: Path) -> Path:
    """Where an output path that is a symbolic link writes: the file it points to
    (resolved through every link); ``p`` itself when it is no link."""
    if not p.is_symlink():
        return p
    return Path(os.path.realpath(p))


def check_output_path(path: str | os.PathLike, force: bool = False, suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse (with :class:`InputError`) an output into a missing folder, with a wrong
    suffix, or onto an existing file without ``force``.

    An output that is a symbolic link is written through: the file it points to is
    created (or, with ``force``, replaced) and the link kept; so a dangling link is
    accepted when the folder it points into exists."""
    p = Path(path)
    if suffixes and p.suffix.lower() not in suffixes:
        raise InputError(f"output {str(p)!r}: unsupported extension; use {', '.join(suffixes)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output {str(p)!r}: folder {str(parent)!r} does not exist")
    if p.is_dir():
        raise InputError(f"output {str(p)!r} is a folder")
    target = _link_target(p)
    if target is not p:
        if target.is_symlink():
            raise InputError(f"output {str(p)!r} is a symbolic link that loops")
        if not target.parent.is_dir():
            raise InputError(f"output {str(p)!r} is a symbolic link into {str(target.parent)!r}, "
                             "a folder that does not exist")
        if target.is_dir():
            raise InputError(f"output {str(p)!r} is a symbolic link to a folder")
        parent = target.parent
    if p.exists() and not force:
        raise InputError(f"output {str(p)!r} exists; pass --force to overwrite it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output {str(p)!r}: folder {str(parent)!r} is not writable")
    return p


def _disk_error(p: Path, e: OSError, replaced: bool):
    from .errors import OutputError

    what = e.strerror or str(e) or type(e).__name__
    kept = f"; the earlier {p.name} is left as it was" if replaced else ""
    err = OutputError(f"output {str(p)!r}: could not write it ({what}); nothing written{kept}")
    err.errno = e.errno
    return err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False) -> Iterator[str]:
    """Yield a temporary path in the target's folder; on success fsync it, move it to
    ``path`` and fsync the folder; on any error (or Ctrl-C) remove it, leaving ``path``
    untouched. Without ``force`` the move is a hard link, which fails rather than replace
    a file that appeared at ``path`` while the run was going (another job's output); the
    finished file is then kept beside it (``NAME.1.h5``, …) and the error names it.

    A disk that fills up (or any other error of the file system) while the file is
    written becomes a :class:`~ncfkit.errors.RunError` naming ``path`` (exit 1); the
    temporary file is removed and an earlier ``path`` is left as it was. A symbolic link
    at ``path`` is written through (:func:`check_output_path`)."""
    # an output that exists now is only refused at the move (below): the run is over, its
    # result is kept beside the file (commands refuse an existing output at their start)
    p = check_output_path(path, force=True)
    final = _link_target(p)
    existed = final.exists()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as e:
        raise _disk_error(p, e, existed) from e
    os.close(fd)
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            _move_into_place(tmp, final, force)
        except OSError as e:
            raise _disk_error(p, e, existed) from e
        _fsync_dir(final.parent)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _keep_beside(tmp: str, p: Path) -> Path | None:
    """Hard-link the finished ``tmp`` to the first free ``STEM.N.SUFFIX`` beside ``p``."""
    for i in range(1, 1000):
        alt = p.with_name(f"{p.stem}.{i}{p.suffix}")
        try:
            os.link(tmp, alt)
            return alt
        except FileExistsError:
            continue
        except OSError:
            if alt.exists():
                continue
            try:
                os.replace(tmp, alt)
                return alt
            except OSError:
                return None
    return None


def _move_into_place(tmp: str, p: Path, force: bool) -> None:
    if force:
        os.replace(tmp, p)
        return
    try:
        os.link(tmp, p)  # atomic, and refuses an existing target
        return
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links
        if not p.exists():
            os.replace(tmp, p)
            return
    alt = _keep_beside(tmp, p)
    kept = f"; this run's result is kept in {str(alt)!r}" if alt else ""
    raise InputError(f"output {str(p)!r} appeared during the run; not overwritten{kept} "
                     "(pass --force to overwrite)")


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


def _dataset(group, key: str, arr: np.ndarray, compress: bool = False) -> None:
    """One dataset, checksummed (HDF5's Fletcher-32 filter, which needs chunks) unless it
    is a scalar or empty: every reader's HDF5 library verifies it, so flipped bytes are
    an error rather than wrong numbers."""
    if arr.ndim == 0 or arr.size == 0 or arr.dtype.kind not in "biufc":
        group.create_dataset(key, data=arr)
        return
    group.create_dataset(key, data=arr, chunks=True, fletcher32=True,
                         compression="gzip" if compress and arr.size > 4096 else None)


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
            _dataset(group, key, arr)
    else:
        arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        _dataset(group, key, arr, compress=True)


#: HDF5 file format of ncfkit's outputs: 1.10's, whose metadata (superblock, object
#: headers with the attributes, chunk indexes) carries checksums. Readers open files
#: without HDF5's file locks (``locking=False``): outputs are written whole and renamed
#: into place, and the locks fail on file systems without them (NFS, Lustre).
H5_LIBVER = ("v110", "latest")


def _write_all(f, image: bytes) -> None:
    """Write ``image`` to the open binary file ``f`` (in 4 MB blocks)."""
    view = memoryview(image)
    for start in range(0, len(view), 1 << 22):
        f.write(view[start:start + (1 << 22)])


def _h5_image(fill) -> bytes:
    """An HDF5 file built in memory by ``fill(h5py.File)``: the HDF5 library never writes
    to the disk itself, so a full disk is one Python ``OSError`` in :func:`_write_all`
    (h5py writing straight to a full disk crashed the interpreter)."""
    import io as _io

    import h5py

    buf = _io.BytesIO()
    with h5py.File(buf, "w", libver=H5_LIBVER) as f:
        fill(f)
    return buf.getvalue()


def _write_all_to(path: str, image: bytes) -> None:
    with open(path, "wb") as f:
        _write_all(f, image)


def _rescue_image(path, image: bytes) -> Path | None:
    """Write a finished result that its output could not take (a full disk, a folder
    removed during the run) to ``NCFKIT_RESCUE_DIR``, else the current folder, else the
    temporary folder, as ``NAME.rescued-TIME-PID.SUFFIX``; its path, or ``None``."""
    p = Path(path)
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    name = f"{p.stem}.rescued-{stamp}-{os.getpid()}{p.suffix}"
    folders = [os.environ.get("NCFKIT_RESCUE_DIR"), os.getcwd(), tempfile.gettempdir()]
    for folder in dict.fromkeys(f for f in folders if f):
        target = Path(folder) / name
        try:
            with open(target, "xb") as f:
                _write_all(f, image)
                f.flush()
                os.fsync(f.fileno())
            return target
        except OSError:
            with contextlib.suppress(OSError):
                if target.exists():
                    target.unlink()
    return None


def _write_h5_atomic(path, fill, force: bool) -> None:
    """Build the file in memory and write it atomically. A finished result the output
    cannot take (a disk error, its folder gone or read-only) is rescued elsewhere
    (:func:`_rescue_image`) and the one-line error names where."""
    from .errors import RunError

    image = _h5_image(fill)
    try:
        with atomic_path(path, force=force) as tmp:
            with open(tmp, "wb") as f:
                _write_all(f, image)
                f.flush()
    except (RunError, InputError) as e:
        parent = Path(path).parent if str(Path(path).parent) else Path(".")
        lost_folder = not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK)
        if "kept in" in str(e) or not (isinstance(e, RunError) or lost_folder):
            raise
        kept = _rescue_image(path, image)
        if kept is None:
            raise
        raise type(e)(f"{e}; the finished result is kept in {str(kept)!r}") from None


def write_h5(path: str | os.PathLike, kind: str, tree: dict[str, Any], force: bool = False) -> None:
    """Write a nested dict as HDF5 atomically: dicts become groups, arrays datasets and
    scalars/strings attributes. ``kind`` goes to the root attribute ``ncfkit_kind``.
    Every non-scalar dataset carries a Fletcher-32 checksum, the metadata HDF5 1.10's."""
    def fill(f):
        f.attrs["ncfkit_kind"] = kind
        f.attrs["ncfkit_version"] = __version__
        for k, v in tree.items():
            _write_node(f, k, v)

    _write_h5_atomic(path, fill, force)


@dataclass(frozen=True)
class ArrayInfo:
    """What :func:`read_h5` leaves in place of a dataset larger than ``max_array``."""

    shape: tuple[int, ...]
    dtype: str


#: A result file may declare at most this fraction of the memory available.
RESULT_MEMORY_SHARE = 0.5


def _verify_chunks(ds) -> None:
    """Read a checksummed dataset chunk by chunk, keeping nothing: HDF5 checks each
    chunk's Fletcher-32 sum (an error for flipped bytes)."""
    if ds.chunks is None or ds.fletcher32 is False or ds.size == 0:
        return
    for sl in ds.iter_chunks():
        ds[sl]


def _read_node(node, max_array: int | None = None, budget: list[int] | None = None, where: str = "") -> dict[str, Any]:
    import h5py

    out: dict[str, Any] = {}
    for k, v in node.attrs.items():
        out[k] = v.item() if isinstance(v, np.generic) else v
    if where.rsplit("/", 1)[-1] == "records":  # one row per record in every column
        rows = {k: (v.shape[0] if v.ndim else None) for k, v in node.items() if isinstance(v, h5py.Dataset)}
        if len(set(rows.values())) > 1:
            detail = ", ".join(f"{k} {n}" for k, n in rows.items())
            raise InputError(f"{where}: the record columns disagree in length ({detail}): damaged")
    for k, v in node.items():
        name = f"{where}/{k}"
        if isinstance(v, h5py.Group):
            out[k] = _read_node(v, max_array, budget, name)
            continue
        why = _h5_unwritten(v)
        if why:
            raise InputError(f"dataset {name} {why}")
        if max_array is not None and v.size > max_array:
            _verify_chunks(v)
            out[k] = ArrayInfo(tuple(int(s) for s in v.shape), str(v.dtype))
            continue
        if budget is not None:
            budget[0] -= v.size * v.dtype.itemsize
            if budget[0] < 0:
                from ._runtime import human_bytes

                raise InputError(f"dataset {name} of shape {tuple(v.shape)} would exceed the memory "
                                 f"available ({human_bytes(budget[1])} for reading a result file; "
                                 "NCFKIT_MAX_MEMORY sets the limit)")
        out[k] = v[()]
    return out


def read_h5(path: str | os.PathLike, kinds: tuple[str, ...] | None = None,
            max_array: int | None = None) -> dict[str, Any]:
    """Read an ncfkit result file into a nested dict; raise :class:`InputError` for a file
    that is missing, damaged, not an ncfkit result, or not one of ``kinds``.

    With ``max_array``, datasets of more elements are not read: an :class:`ArrayInfo`
    (shape, dtype) stands in for each (``ncfkit info`` reads only the small parts); their
    checksums are still verified, chunk by chunk. Every dataset's declared shape is
    checked against the bytes the file stores and against the memory available before
    it is read."""
    import h5py

    from ._runtime import available_memory

    p = _existing_file(path, "result file")
    try:
        is_hdf5 = h5py.is_hdf5(p)
    except Exception:
        is_hdf5 = False
    if not is_hdf5:
        raise InputError(f"{p}: not a readable HDF5 file (no HDF5 signature; ncfkit result "
                         "files are the .h5 files its commands write with --out)")
    limit = int(RESULT_MEMORY_SHARE * available_memory())
    try:
        with h5py.File(p, "r", locking=False) as f:
            tree = _read_node(f, max_array, [limit, limit])
    except InputError as e:
        raise InputError(f"{p}: {e}") from None
    except Exception as e:
        text = str(e).lower()
        if "already open for write" in text:
            raise InputError(f"{p}: marked open for writing by another program (HDF5's file consistency flags); "
                             f"if none has it open, clear them with 'h5clear -s {p}'") from None
        what = "a checksum does not match" if "checksum" in text or "filter" in text else ""
        raise InputError(f"{p}: not a readable HDF5 file: truncated or corrupted "
                         f"({what or type(e).__name__})") from None
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


def _weight_file_arrays(path: str | os.PathLike) -> tuple[Path, dict[str, np.ndarray]]:
    """(path, name -> array) of a weight file (.npz); raise :class:`InputError`."""
    from .models import ARCHITECTURES

    p = _existing_file(path, "weight file")
    if p.suffix.lower() != ".npz":
        kinds = ", or ".join(cls.weight_file_arrays for cls in ARCHITECTURES.values())
        raise InputError(f"{p}: weight files are .npz (arrays {kinds})")
    _check_npz_sizes(p)  # a crafted file declaring gigabytes is refused unread
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise InputError(f"{p}: not a readable NPZ file ({type(e).__name__})") from None
    return p, arrays


def read_weights(path: str | os.PathLike, arch) -> np.ndarray:
    """Read a weight file as one flat float64 vector in the layout of the architecture
    ``arch`` (an :class:`ncfkit.models.Architecture`), which validates the arrays
    (:meth:`~ncfkit.models.Architecture.weights_from_arrays`). Raise :class:`InputError`
    on any mismatch or a weight that is NaN or Inf. :func:`architecture_of_weights` says
    which architecture a file holds."""
    p, arrays = _weight_file_arrays(path)
    w = arch.weights_from_arrays(arrays, str(p))
    if not np.isfinite(w).all():
        raise InputError(f"{p}: weights contain NaN or Inf")
    return w


def architecture_of_weights(path: str | os.PathLike, **options: Any):
    """The architecture a weight file's arrays imply (asked of every registered
    architecture; ``options`` supply what files do not store, e.g. ``act``). Raise
    :class:`InputError` for a file that is no architecture's weight snapshot."""
    from .models import architecture_of_weight_arrays

    p, arrays = _weight_file_arrays(path)
    return architecture_of_weight_arrays(arrays, str(p), **options)


def write_weights(path: str | os.PathLike, layers: dict[str, np.ndarray] | list[np.ndarray] | np.ndarray,
                  force: bool = False) -> None:
    """Write a weight file: named arrays (``arch.weight_arrays(w)``), a list of W_l (MLP)
    or one vector ``w`` (diagonal)."""
    with atomic_path(path, force=force) as tmp:
        with open(tmp, "wb") as f:
            if isinstance(layers, dict):
                np.savez(f, **{k: np.asarray(v) for k, v in layers.items()})
            elif isinstance(layers, np.ndarray):
                np.savez(f, w=layers)
            else:
                np.savez(f, **{f"W{l}": np.asarray(W) for l, W in enumerate(layers, start=1)})


# --------------------------------------------------------------------------- kkt files


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
    for key, value in rec.items():
        if (key == "w" or key[:1] == "W") and isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise InputError(f"{path}: point {point}: {key} is not a numeric array (dtype {value.dtype})")
            if not np.isfinite(value).all():
                raise InputError(f"{path}: point {point}: {key} holds NaN or Inf weights")
    return rec, tree.get("provenance", {})


def architecture_of(prov: dict[str, Any], source: str | os.PathLike | None = None):
    """The architecture recorded in a result's provenance; errors name ``source`` (the
    file), else the ``_source`` key :func:`read_h5` callers may set."""
    from .models import architecture_from_dict

    where = str(source or prov.get("_source") or "result file")
    spec = prov.get("architecture")
    if spec is None:
        raise InputError(f"{where}: no architecture in its provenance")
    try:
        return architecture_from_dict(json.loads(spec) if isinstance(spec, str) else spec)
    except InputError as e:
        raise InputError(f"{where}: malformed architecture record ({e})") from None
    except Exception:
        raise InputError(f"{where}: malformed architecture record {str(spec)[:200]!r}") from None


# --------------------------------------------------------------------------- result layouts
#
# Every result is one nested dict, its *record*: dicts become HDF5 groups, arrays datasets,
# scalars and strings attributes (:func:`write_h5`); keys starting with "_" stay in memory.
# A result's JSON summary (what the CLI prints with --json, keys of docs/theory.md) is read
# off the same record by the ``*_summary`` functions below, so the file and the JSON cannot
# disagree, and a file read back (:func:`read_h5`) gives the same summary. NaN in a record
# stands for "unknown" (None in the summary).


def _plain(value: Any) -> Any:
    """A record value as plain Python: arrays to lists, numpy scalars to Python, NaN to None."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float) and value != value:
        return None
    return value


def _nan(value: Any) -> Any:
    return float("nan") if value is None else value


def _numbered(group: Any) -> list[dict[str, Any]]:
    """The subgroups ``0``, ``1``, … of a group (points/<i>, runs/<i>), in order."""
    if not isinstance(group, dict):
        return []
    return [group[k] for k in sorted((k for k in group if str(k).isdigit()), key=int)
            if isinstance(group[k], dict)]


def _json_field(node: dict[str, Any], key: str) -> Any:
    value = node.get(key)
    return json.loads(value) if isinstance(value, (str, bytes)) else _plain(value)


def certificate_record(cert) -> dict[str, Any]:
    """The certificate of one KKT point (:class:`ncfkit.kkt.Certificate`), the one place
    its fields are listed; ``kkt`` files hold it per point, ``escape`` files for w*."""
    rec: dict[str, Any] = {
        "ncf": cert.ncf, "lam": cert.lam, "residual": cert.residual, "delta": cert.delta,
        "eig_error": cert.eig_error, "kind": cert.kind, "second_order": bool(cert.second_order),
        "hessian_method": cert.hessian_method, "top_eigs": np.asarray(cert.top_eigs, dtype=np.float64),
    }
    if cert.balance_error is not None:
        rec["balance_error"] = cert.balance_error
    if cert.active_per_layer is not None:
        rec["active_per_layer"] = np.asarray(cert.active_per_layer, dtype=np.int64)
        rec["active_neurons"] = json.dumps([[int(j) for j in a] for a in cert.active_neurons])
    if getattr(cert, "field", "smooth") != "smooth":  # relu / leaky: the Clarke certificate (ncfkit.clarke)
        rec.update(field=cert.field, multipliers=int(cert.multipliers), kinks=int(cert.kinks),
                   exact=bool(cert.exact), stratum_dim=int(cert.stratum_dim))
    if getattr(cert, "reason", None):
        rec["reason"] = cert.reason
    return rec


def _layer_weights(arch, w) -> dict[str, np.ndarray]:
    """W1 … WL of a flat weight vector (nn.Linear layout), for architectures with hidden neurons."""
    from .arrays import to_numpy

    if not arch.has_hidden_neurons:
        return {}
    return {k: v for k, v in arch.weight_arrays(to_numpy(w)).items() if k != "w"}


def kkt_record(result, arch, prov: dict[str, Any]) -> dict[str, Any]:
    """The layout of a ``kkt`` result (:class:`ncfkit.kkt.KKTResult`): attrs of the run,
    ``provenance``, and ``points/<i>`` (sorted by 𝒩 descending) with the certificate as
    attributes and the weights as datasets ``w`` (flat, unit norm) and ``W1`` … ``WL`` (mlp)."""
    from .arrays import to_numpy

    points = {}
    for i, p in enumerate(result.points):
        node = certificate_record(p.cert)
        node.update(count=p.count, basin_fraction=p.basin_fraction, converged=bool(p.converged),
                    restarts=np.asarray(p.restarts, dtype=np.int64), w=to_numpy(p.cert.w))
        if p.cert.balance_error is not None:
            node.update(_layer_weights(arch, p.cert.w))
        points[str(i)] = node
    return {
        "homogeneity": result.homogeneity, "num_params": result.num_params,
        "restarts": result.restarts, "converged": result.converged,
        "max_steps_taken": result.max_steps_taken, "stalled": len(result.stalled),
        "provenance": prov, "points": points,
    }


kkt_tree = kkt_record  # the name of ncfkit <= 0.1

#: Per point of ``ncfkit kkt --json``, in order (the record's ``top_eigs`` is ``top_hessian_eigs``).
KKT_POINT_KEYS = ("ncf", "lam", "residual", "delta", "second_order", "kind", "count",
                  "basin_fraction", "converged", "eig_error", "top_hessian_eigs", "hessian_method")


#: Extra per-point keys of relu / leaky certificates (and ``reason`` of an uncertified point).
CLARKE_KEYS = ("field", "multipliers", "kinks", "exact", "stratum_dim", "reason")


def kkt_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of ``ncfkit kkt --json`` from a ``kkt`` record."""
    points = []
    for p in _numbered(record.get("points")):
        out = {k: _plain(p.get("top_eigs" if k == "top_hessian_eigs" else k)) for k in KKT_POINT_KEYS}
        if "active_per_layer" in p:
            out["active_per_layer"] = _plain(p["active_per_layer"])
            out["active_neurons"] = _json_field(p, "active_neurons")
            out["balance_error"] = _plain(p.get("balance_error"))
        out.update({k: _plain(p[k]) for k in CLARKE_KEYS if k in p})
        points.append(out)
    return {k: _plain(record.get(k)) for k in ("homogeneity", "num_params", "restarts", "converged")} \
        | {"points": points}


#: Summary keys of one escape run: JSON ``runs[i]`` and the attributes of ``runs/<i>``.
RUN_KEYS = ("delta", "escaped", "escape_time", "predicted_escape_time",
            "predicted_escape_time_w0", "saddle_time",
            "saddle_loss", "saddle_grad_norm", "saddle_min_hessian_eig", "saddle_kind",
            "saddle_left", "sparsity_ratio_escape", "sparsity_ratio_saddle", "path_distance",
            "saddle_distance_to_p_star", "status", "message", "final_time", "final_loss",
            "steps", "final_w_norm")
#: The run keys ``ncfkit info`` shows per run, and ``ncfkit collect``'s per-run columns
#: (``escape_ratio`` = escape_time / predicted_escape_time is computed by :func:`escape_rows`).
RUN_INFO_KEYS = ("delta", "status", "escaped", "escape_time", "predicted_escape_time",
                 "saddle_time", "saddle_loss", "steps")
RUN_COLUMNS = tuple(c for k in RUN_KEYS if k not in ("saddle_left", "message", "final_w_norm")
                    for c in ((k, "escape_ratio") if k == "predicted_escape_time" else (k,)))
#: Per-file columns of ``ncfkit collect``.
FILE_COLUMNS = ("file", "run", "file_status", "homogeneity", "ncf", "kkt_delta", "active_per_layer",
                "method", "init", "lr", "seed", "loss", "reduction", "fit_slope", "predicted_slope")
#: Attributes of ``/reference`` (JSON ``reference``), of ``/fit`` and of the exponent groups.
REFERENCE_KEYS = ("delta_ref", "escaped", "escape_time", "saddle_time", "p_star_loss",
                  "p_star_grad_norm", "p_star_min_hessian_eig", "status")
FIT_KEYS = ("slope", "predicted_slope", "relative_error", "intercept", "r2", "n", "regressor",
            "predicted_slope_gd", "predicted_slope_w0")
EXPONENT_KEYS = ("empirical", "theory", "r2", "n", "at")
#: The escape file's kkt group as JSON ``kkt`` (the documented keys of docs/theory.md §4 first).
ESCAPE_KKT_KEYS = ("ncf", "delta", "residual", "kind", "second_order", "lam", "source",
                   "ascent_converged", "ascent_steps", "zero_preserving_size")


def run_record(summary, arch) -> dict[str, Any]:
    """``runs/<i>`` of an escape file from one :class:`ncfkit.escape.RunSummary`: the
    :data:`RUN_KEYS` as attributes (NaN where unknown) and the run's records, events,
    snapshots and trajectory."""
    r = summary.result
    values = {k: getattr(summary, k) for k in RUN_KEYS if k not in ("steps", "final_w_norm")}
    values.update(steps=r.steps, final_w_norm=float(np.linalg.norm(r.snapshots["final"].w)))
    node = {k: _nan(v) for k, v in values.items()}
    if getattr(summary, "plateaus", None):  # docs/phases.md (JSON: nested lists and nulls)
        node["plateaus"] = json.dumps(summary.plateaus)
    node.update(_trajectory_record(r, arch))
    return node


def _trajectory_record(r, arch) -> dict[str, Any]:
    """records / events / snapshots / trajectory of one :class:`ncfkit.dynamics.RunResult`."""
    from .events import PHASE_NAMES

    snaps = {}
    for name, s in r.snapshots.items():
        node = {"time": s.time, "step": s.step, "loss": s.loss, "grad_norm": s.grad_norm, "w": s.w}
        node.update(_layer_weights(arch, s.w))
        snaps[name] = node
    events = {name: {"time": e.time, "step": e.step, "loss": e.loss, "grad_norm": e.grad_norm}
              for name, e in (("escape", r.escape), ("saddle", r.saddle)) if e is not None}
    tree = {"records": dict(r.records), "events": events, "snapshots": snaps}
    tree["records"]["phase_names"] = json.dumps(list(PHASE_NAMES.values()))
    if r.trajectory is not None:
        tree["trajectory"] = {"time": r.trajectory["time"], "w": r.trajectory["w"]}
    return tree


def governing_point_record(point) -> dict[str, Any]:
    """``/kkt`` of an escape file from a :class:`ncfkit.escape.GoverningPoint`."""
    from .arrays import to_numpy

    c = point.cert
    rec = certificate_record(c)
    rec.update(source=point.source, ascent_converged=bool(point.converged), ascent_steps=int(point.steps),
               zero_preserving_size=int(point.wz_mask.sum()), w_star=to_numpy(c.w),
               wz_mask=to_numpy(point.wz_mask).astype(np.uint8))
    if point.flow is not None:
        rec.update(ncf_flow_blowup_time=point.flow.blowup_time, ncf_flow_log_amplitude=point.flow.log_amplitude,
                   ncf_flow_converged=bool(point.flow.converged), ncf_flow_steps=int(point.flow.steps),
                   ncf_flow_stop=str(getattr(point.flow, "reason", "")),
                   ncf_flow_evaluations=int(getattr(point.flow, "evaluations", 0)))
    if point.zero_neurons is not None:
        rec["zero_neurons"] = json.dumps([[int(j) for j in z] for z in point.zero_neurons])
    return rec


def escape_record(report, prov: dict[str, Any], message: str = "", *, phase: str | None = None) -> dict[str, Any]:
    """The run.h5 layout (kind ``escape``) of an :class:`ncfkit.escape.EscapeReport`,
    documented in :data:`RUN_H5_LAYOUT`. ``phase``: where an interrupted run stopped."""
    sim = report.simulation
    settings = sim.settings
    tree: dict[str, Any] = {
        "status": report.status, "message": message, "homogeneity": _nan(report.homogeneity),
        "num_params": report.num_params, "method": sim.method, "engine": sim.engine or "",
        "lr": settings.lr, "eps": settings.events.eps, "max_time": settings.max_time,
        "provenance": prov, "_wall_time": sim.wall_time,
    }
    if report.status == "interrupted":
        tree["phase"] = phase or "train"
    if report.point is not None:
        tree["kkt"] = governing_point_record(report.point)
    if report.predictions is not None:
        tree["predictions"] = {k: v if k == "regressor" else _nan(v) for k, v in report.predictions.items()}
    for key, value in _fits_record(report.fits).items():
        tree[key] = {k: v if k in ("regressor", "at") else _nan(v) for k, v in value.items()}
    tree["runs"] = {str(i): run_record(r, report.arch) for i, r in enumerate(report.runs)}
    ref = report.reference
    if ref is not None:
        res = ref.result
        values = {"delta_ref": ref.delta_ref, "escaped": ref.escaped,
                  "escape_time": None if res.escape is None else res.escape.time,
                  "saddle_time": None if res.saddle is None else res.saddle.time,
                  "p_star_loss": ref.p_star_loss, "p_star_grad_norm": ref.p_star_grad_norm,
                  "p_star_min_hessian_eig": ref.p_star_min_hessian_eig, "status": res.status}
        tree["reference"] = {k: _nan(v) for k, v in values.items()} | _trajectory_record(res, report.arch)
    return tree


def _fits_record(fits) -> dict[str, dict[str, Any]]:
    """``fit``, ``path_exponent``, ``sparsity_exponent`` of an :class:`ncfkit.escape.Fits`."""
    out: dict[str, dict[str, Any]] = {}
    if fits.escape is not None:
        rel = None
        if fits.predicted_slope and np.isfinite(fits.predicted_slope):
            rel = fits.escape.slope / fits.predicted_slope - 1.0
        out["fit"] = {"slope": fits.escape.slope, "predicted_slope": fits.predicted_slope,
                      "relative_error": rel, "intercept": fits.escape.intercept,
                      "r2": fits.escape.r2, "n": fits.escape.n, "regressor": fits.regressor}
        if fits.predicted_slope_gd is not None:
            out["fit"]["predicted_slope_gd"] = fits.predicted_slope_gd
        if fits.predicted_slope_w0 is not None:
            out["fit"]["predicted_slope_w0"] = fits.predicted_slope_w0
    if fits.path is not None:
        out["path_exponent"] = {"empirical": fits.path.slope, "theory": fits.path_exponent_theory,
                                "r2": fits.path.r2, "n": fits.path.n}
    if fits.sparsity is not None:
        out["sparsity_exponent"] = {"empirical": fits.sparsity.slope, "theory": fits.sparsity_exponent_theory,
                                    "r2": fits.sparsity.r2, "n": fits.sparsity.n, "at": "escape event"}
    return out


def interrupted_record(prov: dict[str, Any], phase: str | None, message: str, **fields: Any) -> dict[str, Any]:
    """What an interrupted command leaves at ``--out`` before it has a result: status,
    the phase it reached, its provenance and whatever ``fields`` it knew (no runs)."""
    tree = {"status": "interrupted", "phase": phase or "start", "message": message, **fields,
            "provenance": prov}
    return {k: v for k, v in tree.items() if v is not None}


def _escape_kkt_summary(kkt: Any) -> dict[str, Any] | None:
    if not isinstance(kkt, dict):
        return None
    out = {k: _plain(kkt.get(k)) for k in ESCAPE_KKT_KEYS}
    if any(f"ncf_flow_{k}" in kkt for k in ("converged", "steps", "blowup_time", "log_amplitude")):
        out["ncf_flow"] = {k: _plain(kkt.get(f"ncf_flow_{k}"))
                           for k in ("blowup_time", "log_amplitude", "converged", "steps", "stop", "evaluations")
                           if k in ("blowup_time", "log_amplitude", "converged", "steps") or f"ncf_flow_{k}" in kkt}
    if "active_per_layer" in kkt:
        out["active_per_layer"] = _plain(kkt["active_per_layer"])
        out["active_neurons"] = _json_field(kkt, "active_neurons")
    elif "wz_mask" in kkt:
        out["zero_coordinates"] = [int(i) for i in np.flatnonzero(np.asarray(kkt["wz_mask"]))]
    return out


def escape_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of ``ncfkit escape --json`` from an ``escape`` record (``wall_time``:
    None for a file read back; how long a run took is not stored, so that two runs with
    one seed give byte-identical files)."""
    engine = _plain(record.get("engine"))
    out = {
        "homogeneity": _plain(record.get("homogeneity")), "num_params": _plain(record.get("num_params")),
        "kkt": _escape_kkt_summary(record.get("kkt")),
        "runs": [{k: _plain(r.get(k)) for k in RUN_KEYS}
                 | ({"plateaus": json.loads(r["plateaus"])} if isinstance(r.get("plateaus"), str) else {})
                 for r in _numbered(record.get("runs"))],
        "status": _plain(record.get("status")), "method": _plain(record.get("method")),
        "engine": engine or None, "lr": _plain(record.get("lr")), "eps": _plain(record.get("eps")),
        "max_time": _plain(record.get("max_time")), "wall_time": _plain(record.get("_wall_time")),
    }
    if isinstance(record.get("_timing"), dict):  # seconds per phase (ncfkit._phases), this process only
        out["timing"] = {k: round(float(v), 3) for k, v in record["_timing"].items()}
    for key, keys in (("fit", FIT_KEYS), ("path_exponent", EXPONENT_KEYS), ("sparsity_exponent", EXPONENT_KEYS)):
        if isinstance(record.get(key), dict):
            out[key] = {k: _plain(record[key][k]) for k in keys if k in record[key]}
    if isinstance(record.get("reference"), dict):
        out["reference"] = {k: _plain(record["reference"].get(k)) for k in REFERENCE_KEYS}
    return out


def escape_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One dict per run of an escape result file, keyed by :data:`FILE_COLUMNS` +
    :data:`RUN_COLUMNS` (``ncfkit collect``); None where unknown."""
    tree = read_h5(path, ("escape",), max_array=64)
    prov, kkt, fit = (tree.get(k, {}) for k in ("provenance", "kkt", "fit"))
    runs = tree.get("runs", {})
    if not isinstance(runs, dict) or not runs:
        raise InputError(f"{path}: the escape file holds no runs")
    bad = [k for k, v in runs.items() if not (str(k).isdigit() and isinstance(v, dict))]
    if bad:
        raise InputError(f"{path}: malformed runs group (entry {bad[0]!r} is not a run 0, 1, …)")
    active = kkt.get("active_per_layer")
    base = {
        "file": str(path), "file_status": tree.get("status"), "homogeneity": tree.get("homogeneity"),
        "ncf": kkt.get("ncf"), "kkt_delta": kkt.get("delta"),
        "active_per_layer": None if active is None or not hasattr(active, "tolist")
        else ",".join(str(a) for a in active.tolist()),
        "method": tree.get("method"), "init": prov.get("init"), "lr": prov.get("lr"),
        "seed": prov.get("seed"), "loss": prov.get("loss"), "reduction": prov.get("reduction"),
        "fit_slope": fit.get("slope"), "predicted_slope": fit.get("predicted_slope"),
    }
    out = []
    for key in sorted(runs, key=int):
        row = dict(base, run=int(key), **{c: runs[key].get(c) for c in RUN_COLUMNS})
        row = {c: _plain(row.get(c)) for c in FILE_COLUMNS + RUN_COLUMNS}
        esc, pred = row["escape_time"], row["predicted_escape_time"]
        row["escape_ratio"] = esc / pred if esc is not None and pred else None
        out.append(row)
    return out


#: ``verify`` of ``ncfkit sparsity --json`` (and the attributes of the ``verify`` group);
#: ``controls`` is a list in JSON, subgroups ``verify/controls/<part>`` in the file.
VERIFY_KEYS = ("preserved", "wz_max_abs", "others_moved", "relative_change", "loss_initial",
               "loss_final", "negative_control", "controls", "steps", "lr", "init_scale", "seed",
               "attempts", "reason")
CONTROL_KEYS = ("part", "zeroed", "max_abs", "left_zero", "expected_to_leave")
#: Root attributes of a ``sparsity`` file, in JSON order (``point``/``ncf`` for a KKT file).
SPARSITY_KEYS = ("outside_per_matrix", "zero_preserving_size", "zero_preserving_fraction",
                 "num_params", "balance_error", "lopsided", "tol", "threshold", "verified")


def sparsity_record(source, report, verify, prov: dict[str, Any]) -> dict[str, Any]:
    """The layout of a ``sparsity`` result (``ncfkit sparsity --out``):

    - ``masks/W1`` … ``masks/WL``: boolean, the shape of each W_l (``nn.Linear`` layout; the
      last is (1, k_{L-1})), True on the weights of w_z; ``masks/w``: the same, flat, in
      ncfkit's parameter layout;
    - ``w``: the analysed weights (flat); ``layers/<l>`` (l = 1 … L-1): attribute ``width``
      and int datasets ``zero_neurons``, ``active_neurons``, ``lopsided_neurons``;
    - root attributes :data:`SPARSITY_KEYS`, ``source_kind``, and ``point``/``ncf`` for a
      KKT file; group ``verify`` with ``--verify``;
    - ``provenance``: the source file and its sha256, the architecture, the settings.

    ``source`` is a :class:`ncfkit.sparsity.Source`, ``report`` a
    :class:`ncfkit.sparsity.SparsityReport`, ``verify`` a
    :class:`ncfkit.sparsity.VerifyResult` or None.
    """
    from .arrays import to_numpy

    act, arch = report.activity, source.arch
    masks = {f"W{l}": np.asarray(to_numpy(M)) for l, M in enumerate(arch.split(report.mask), start=1)}
    masks["w"] = to_numpy(report.mask)
    values = [report.outside_per_matrix(arch), report.zero_preserving_size, report.zero_preserving_fraction,
              report.num_params, report.balance_error, report.lopsided, report.tol, act.threshold,
              None if verify is None else verify.verified]
    tree: dict[str, Any] = {"source_kind": source.kind, **dict(zip(SPARSITY_KEYS, values, strict=True))}
    if source.kind == "kkt":
        tree.update(point=source.point, ncf=source.ncf)
    tree.update(
        provenance=prov, masks=masks, w=to_numpy(source.w),
        layers={str(l + 1): {"width": width,
                             "zero_neurons": np.asarray(act.zero[l], dtype=np.int64),
                             "active_neurons": np.asarray(act.active[l], dtype=np.int64),
                             "lopsided_neurons": np.asarray(act.lopsided[l], dtype=np.int64)}
                for l, width in enumerate(act.widths)},
    )
    if verify is not None:
        v = verify
        values = [v.preserved, v.wz_max_abs, v.others_moved, v.relative_change, v.loss_initial,
                  v.loss_final, v.negative_control, None, v.steps, v.lr, v.init_scale, v.seed,
                  v.attempts, v.reason]
        node = {k: x for k, x in zip(VERIFY_KEYS, values, strict=True) if k != "controls"}
        node["controls"] = {c.part: dict(zip(CONTROL_KEYS, (c.part, c.zeroed, c.max_abs, c.left_zero,
                                                             c.expected_to_leave), strict=True))
                            for c in v.controls}
        tree["verify"] = node
    return tree


def sparsity_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of ``ncfkit sparsity --json`` from a ``sparsity`` record."""
    prov = record.get("provenance", {})
    layers = record.get("layers", {})
    layers = [{"layer": int(k), "width": _plain(layers[k].get("width")),
               **{f"{s}_neurons": [int(j) for j in _plain(layers[k].get(f"{s}_neurons", []))]
                  for s in ("zero", "active", "lopsided")}}
              for k in sorted((k for k in layers if str(k).isdigit()), key=int)]
    out = {"source": _plain(prov.get("source_file")), "source_kind": _plain(record.get("source_kind")),
           "architecture": _json_field(prov, "architecture"), "layers": layers,
           "active_per_layer": [len(lay["active_neurons"]) for lay in layers]}
    out.update({k: _plain(record.get(k)) for k in SPARSITY_KEYS})
    verify = record.get("verify")
    if isinstance(verify, dict):
        controls = verify.get("controls", {})
        verify = {k: _plain(verify.get(k)) for k in VERIFY_KEYS if k != "controls"} | {
            "controls": [{k: _plain(controls[p].get(k)) for k in CONTROL_KEYS}
                         for p in ("rows", "columns") if p in controls]}
        verify = {k: verify[k] for k in VERIFY_KEYS}
    out["verify"] = verify if isinstance(verify, dict) else None
    if out["source_kind"] == "kkt":
        out.update(point=_plain(record.get("point")), ncf=_plain(record.get("ncf")))
    return out


#: What each ``ncfkit_kind`` of result file holds, for :func:`ncfkit.load`.
SUMMARIES = {"kkt": kkt_summary, "escape": escape_summary, "sparsity": sparsity_summary}


def write_result(path: str | os.PathLike, kind: str, record: dict[str, Any], force: bool = False) -> None:
    """Write a result record (keys starting with "_" stay in memory)."""
    write_h5(path, kind, {k: v for k, v in record.items() if not str(k).startswith("_")}, force=force)


# --------------------------------------------------------------------------- ncfkit info

#: Datasets of more elements than this are described by shape, not read.
_INFO_SMALL = 64

_INFO_ROOT_META = ("ncfkit_kind", "ncfkit_version", "interrupted", "status")
#: Per-row keys of the kkt points in ``ncfkit info``, in display order (escape runs: :data:`RUN_INFO_KEYS`).
_INFO_POINT_KEYS = ("ncf", "delta", "residual", "kind", "second_order", "count", "converged")


def _info_architecture(spec: Any) -> tuple[Any, str | None]:
    """(the record as a dict if it parses, a one-line description or None)."""
    from .models import architecture_from_dict

    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError:
            return spec, None
    try:
        arch = architecture_from_dict(spec)
    except Exception:  # a record this version cannot rebuild: show it as stored
        return spec, None
    order = arch.homogeneity
    return spec, arch.describe() + (f", L_h = {order:g}" if order is not None else "")


def _info_value(value: Any) -> Any:
    """JSON-ready: arrays to lists, :class:`~ncfkit.io.ArrayInfo` to {shape, dtype}."""
    if isinstance(value, ArrayInfo):
        return {"shape": list(value.shape), "dtype": value.dtype}
    if isinstance(value, dict):
        return {k: _info_value(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def _info_is_scalar(v: Any) -> bool:
    return not isinstance(v, dict) and getattr(v, "ndim", 0) == 0 and not hasattr(v, "dtype")


def _info_scalars(node: dict[str, Any], skip=()) -> dict[str, Any]:
    return {k: v for k, v in node.items() if _info_is_scalar(v) and k not in skip}


def _info_length(node: Any) -> int | None:
    """Rows of a dataset (read or described)."""
    shape = getattr(node, "shape", None)
    return int(shape[0]) if shape else None


def _info_rows(group: Any, keys: tuple[str, ...], label: str) -> list[dict[str, Any]]:
    """One row per numbered subgroup (points/<i>, runs/<i>) with ``keys`` where present."""
    if not isinstance(group, dict):
        return []
    rows = []
    for k in sorted((k for k in group if k.isdigit() and isinstance(group[k], dict)), key=int):
        node = group[k]
        row = {label: int(k), **{name: node[name] for name in keys if name in node}}
        active = node.get("active_per_layer")
        if active is not None and hasattr(active, "tolist"):
            row["active_per_layer"] = [int(a) for a in active.tolist()]
        records = node.get("records")
        if isinstance(records, dict) and _info_length(records.get("time")) is not None:
            row["records"] = _info_length(records["time"])
        rows.append(row)
    return rows


def result_info(path: str | os.PathLike) -> dict[str, Any]:
    """Everything ``ncfkit info`` reports of a result file, as one JSON-ready dict: the
    provenance, the root attributes, the scalar attributes of each other top-level group,
    and one row per kkt point or escape run. Only attributes and small datasets are read."""
    tree = read_h5(path, max_array=_INFO_SMALL)
    prov = tree.get("provenance")
    prov = dict(prov) if isinstance(prov, dict) else {}
    described = None
    if "architecture" in prov:
        prov["architecture"], described = _info_architecture(prov["architecture"])
    status = tree.get("status")
    interrupted = bool(tree.get("interrupted", False)) or status == "interrupted"
    if not isinstance(status, str):
        status = "interrupted" if interrupted else "complete"
    tables = {"points": _INFO_POINT_KEYS, "runs": RUN_INFO_KEYS}
    out = {
        "file": str(path), "kind": tree["ncfkit_kind"],
        "ncfkit_version": tree.get("ncfkit_version", prov.get("ncfkit_version")),
        "status": status, "interrupted": interrupted,
        "architecture_description": described, "provenance": prov,
        "summary": _info_scalars(tree, _INFO_ROOT_META),
        "groups": {k: _info_scalars(v) for k, v in tree.items()
                   if isinstance(v, dict) and k != "provenance" and k not in tables},
    }
    for name, keys in tables.items():
        if isinstance(tree.get(name), dict):
            out[name] = _info_rows(tree[name], keys, name[:-1])
    return _info_value(out)


#: The run.h5 layout of :func:`escape_record`.
RUN_H5_LAYOUT = """run.h5 (root attribute ncfkit_kind = "escape")

/                  attrs: status (complete | diverged | failed | interrupted), message,
                   homogeneity (NaN: not homogeneous), num_params, method, engine (what
                   computed ∇𝓛: compiled | torch), lr, eps, max_time, ncfkit_version, and
                   phase (interrupted files: the phase the command reached)
/provenance        attrs: data_file, data_sha256, n, d, architecture (JSON of
                   arch.to_dict()), loss, reduction, seed, dtype, device, init, lr, eps,
                   max_time, until, deltas (JSON), delta_ref, kkt_file, point, command_line, ...
/kkt               attrs: the certificate (certificate_record), source,
                   ascent_converged, ascent_steps, zero_preserving_size,
                   ncf_flow_blowup_time (L_h > 2) / ncf_flow_log_amplitude (L_h = 2),
                   ncf_flow_converged, ncf_flow_steps, ncf_flow_stop (converged |
                   settled: the direction stopped moving, e.g. at a ReLU kink | max steps |
                   budget: --governing-budget's gradient cap), ncf_flow_evaluations,
                   active_neurons / zero_neurons (JSON, mlp); datasets: w_star (k,) unit
                   norm, wz_mask (k,) uint8 (1 = weight in w_z), active_per_layer (mlp)
/predictions       attrs: escape_slope, regressor, path_distance_exponent, sparsity_exponent
/fit               attrs: slope, predicted_slope (along w*), relative_error, intercept,
                   r2, n, regressor[, predicted_slope_gd (L_h = 2, GD),
                   predicted_slope_w0 (NCF flow from w0)]      (with >= 2 escaped δ)
/path_exponent     attrs: empirical, theory, r2, n
/sparsity_exponent attrs: empirical, theory, r2, n, at
/runs/<i>          one per --delta, in the order given; attrs RUN_KEYS (NaN where unknown)
  records/         datasets step, time, loss, grad_norm, w_norm, cos_w_star, wz_ratio,
                   phase (int8, names in attr phase_names: JSON list) — log-spaced in time
                   plus event-driven, at most Settings.capacity rows
  events/escape    attrs time (crossing time), step, loss, grad_norm
  events/saddle    attrs time, step, loss, grad_norm
                   attr plateaus (with --until converged or saddles:K, K >= 2): JSON list,
                   one object per plateau (docs/phases.md), as in --json
  snapshots/<name> name in init, escape, saddle, saddle_2, …, final; attrs time, step, loss,
                   grad_norm; datasets w (k,) and, for mlp, W1 … WL (nn.Linear layout)
  trajectory/      datasets time (m,), w (m, k): bounded sample of ψ(t)
/reference         the run from δ_ref·w* that stands for p(t): attrs delta_ref, escaped,
                   escape_time, saddle_time, p_star_loss, p_star_grad_norm,
                   p_star_min_hessian_eig, status; groups as a run (snapshots/saddle is p*)
"""
