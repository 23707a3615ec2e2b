"""Process-wide tuning the command line applies once at start-up.

glibc serves every allocation above 128 KiB with a fresh ``mmap``, so each batched
temporary (a few MB for 64 restarts) pays page faults on every step; raising the mmap
and trim thresholds lets freed blocks be reused and cuts a batched NCF step by ~3-4x on
Linux. It changes no result. It is applied by the CLI, not on ``import ncfkit``.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap/trim thresholds; return whether it was applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, threshold))
    except (OSError, AttributeError):  # musl, or no libc.so.6
        return False


def _cpus() -> int:
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


#: At most this many threads per CPU from NCFKIT_THREADS / OMP_NUM_THREADS.
MAX_THREADS_PER_CPU = 4
_warned: set[str] = set()


def thread_setting() -> int | None:
    """The thread count NCFKIT_THREADS (or OMP_NUM_THREADS) asks for, made sane: ``None``
    when neither is set; a value that is not an integer, below 1 or above
    :data:`MAX_THREADS_PER_CPU` × the CPUs this process may use is clamped into
    [1, 4 × CPUs] and said once on stderr (``100000`` threads crashed the interpreter)."""
    import os

    name = "NCFKIT_THREADS" if os.environ.get("NCFKIT_THREADS") else "OMP_NUM_THREADS"
    wanted = os.environ.get(name)
    if not wanted:
        return None
    high = MAX_THREADS_PER_CPU * _cpus()
    try:
        n = int(wanted.strip())
    except ValueError:
        n, why = 1, "not an integer"
    else:
        why = "below 1" if n < 1 else (f"above {MAX_THREADS_PER_CPU} x {_cpus()} CPUs" if n > high else "")
    clamped = min(max(n, 1), high)
    if why and name not in _warned:
        _warned.add(name)
        sys.stderr.write(f"warning: {name}={wanted!r} is {why}; using {clamped} thread"
                         f"{'s' if clamped != 1 else ''}\n")
    return clamped


def default_threads() -> None:
    """Use one intra-op torch thread unless NCFKIT_THREADS or OMP_NUM_THREADS says
    otherwise (clamped by :func:`thread_setting`), applied when torch is first imported
    (:func:`ncfkit._lazy.on_load`; a run that never needs torch never pays its import).

    ncfkit's tensors are small (thousands of parameters, hundreds of samples): a second
    thread buys little, and sweeps run many ncfkit processes side by side, where
    oversubscribed spinning threads made one step 100x slower in our measurements.
    """
    from ._lazy import on_load

    wanted = thread_setting()
    n = 1 if wanted is None else wanted
    on_load(lambda torch: torch.set_num_threads(n))


def row_workers() -> int:
    """Threads for independent rows of the compiled GD engine (one run each, no shared
    state, blocking waits: nothing spins): ``NCFKIT_THREADS`` or ``OMP_NUM_THREADS``
    when set (clamped by :func:`thread_setting`), else the CPUs this process may use."""
    wanted = thread_setting()
    return _cpus() if wanted is None else wanted


# --------------------------------------------------------------------------- memory


def _parse_bytes(text: str) -> int | None:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units and t[-1:] else ""
    try:
        value = float(t[: len(t) - len(unit)] if unit else t)
    except ValueError:
        return None
    return int(value * units[unit]) if value > 0 else None


def available_memory() -> int:
    """Bytes this process may still allocate: ``NCFKIT_MAX_MEMORY`` (e.g. ``4G``) when set,
    else the smaller of the kernel's MemAvailable and a cgroup memory limit; 2**62 when
    neither can be read."""
    import os

    setting = os.environ.get("NCFKIT_MAX_MEMORY")
    if setting:
        parsed = _parse_bytes(setting)
        if parsed is not None:
            return parsed
        if "NCFKIT_MAX_MEMORY" not in _warned:
            _warned.add("NCFKIT_MAX_MEMORY")
            sys.stderr.write(f"warning: NCFKIT_MAX_MEMORY={setting!r} is not a size such as 8G or 512M; "
                             "ignored\n")
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
            if text.isdigit():
                limit = int(text)
                with contextlib.suppress(OSError, ValueError):
                    with open(path.replace("memory.max", "memory.current")
                              .replace("limit_in_bytes", "usage_in_bytes")) as f:
                        limit -= int(f.read().strip())
                found.append(max(limit, 0))
        except (OSError, ValueError):
            pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    return min(found) if found else 1 << 62


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.3g} TB"  # pragma: no cover
