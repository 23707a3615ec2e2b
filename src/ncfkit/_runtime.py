"""Process-wide tuning the command line applies once at start-up.

glibc serves every allocation above 128 KiB with a fresh ``mmap``, so each batched
temporary (a few MB for 64 restarts) pays page faults on every step; raising the mmap
and trim thresholds lets freed blocks be reused and cuts a batched NCF step by ~3-4x on
Linux. It changes no result. It is applied by the CLI, not on ``import ncfkit``.
"""

from __future__ import annotations

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


def default_threads() -> None:
    """Use one intra-op torch thread unless NCFKIT_THREADS or OMP_NUM_THREADS says
    otherwise, applied when torch is first imported (:func:`ncfkit._lazy.on_load`; a run
    that never needs torch never pays its import).

    ncfkit's tensors are small (thousands of parameters, hundreds of samples): a second
    thread buys little, and sweeps run many ncfkit processes side by side, where
    oversubscribed spinning threads made one step 100x slower in our measurements.
    """
    import os

    from ._lazy import on_load

    wanted = os.environ.get("NCFKIT_THREADS") or os.environ.get("OMP_NUM_THREADS")
    try:
        n = max(1, int(wanted)) if wanted else 1
    except ValueError:
        n = 1
    on_load(lambda torch: torch.set_num_threads(n))


def row_workers() -> int:
    """Threads for independent rows of the compiled GD engine (one run each, no shared
    state, blocking waits: nothing spins): ``NCFKIT_THREADS`` or ``OMP_NUM_THREADS``
    when set, else the CPUs this process may use."""
    import os

    wanted = os.environ.get("NCFKIT_THREADS") or os.environ.get("OMP_NUM_THREADS")
    try:
        if wanted:
            return max(1, int(wanted))
    except ValueError:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
