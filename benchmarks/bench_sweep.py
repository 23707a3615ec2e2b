"""16 Figure-1 escape runs (4 δ × 4 seeds) three ways, wall time and peak memory side by side:

1. the README's shell loop: one ``ncfkit escape … --out`` process per run, one after another,
   then ``ncfkit collect``;
2. ``ncfkit sweep`` on its embedded local Dask cluster (``--workers``, default 2);
3. ``ncfkit sweep --scheduler in-process``: every run in one process, one after another.

Each mode's peak memory is the largest total resident memory of its whole process tree
(sampled every 50 ms), and the largest single process. The numbers of every run (the
columns of ``ncfkit collect``) are compared with the shell loop's, run for run: equal, or
(the local cluster's workers run numpy's BLAS on one thread) equal to round-off.

    python benchmarks/bench_sweep.py [--workers 2] [--deltas 0.05,0.03,0.02,0.01] [--seeds 4]
                                     [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "fig1_square.npz"
FLAGS = ["--hidden", "50", "--act", "square", "--reduction", "mean", "--method", "flow"]


def ncfkit() -> list[str]:
    exe = shutil.which("ncfkit")
    return [exe] if exe else [sys.executable, "-m", "ncfkit"]


class TreeMemory:
    """Peak total RSS of a process and its descendants, and the peak of any one of them."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.total = 0
        self.single = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            self.total = max(self.total, sum(rss))
            self.single = max([self.single, *rss])
            self._stop.wait(0.05)

    def stop(self):
        self._stop.set()
        self._thread.join()


ENV = dict(os.environ)


def timed(argv: list[str], **kw) -> tuple[float, TreeMemory, subprocess.CompletedProcess]:
    """Run ``argv`` as one process tree; (wall s, memory, completed process)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **kw)
    mem = TreeMemory(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    mem.stop()
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(argv)}\n{err[-2000:]}")
    return wall, mem, subprocess.CompletedProcess(argv, proc.returncode, out, err)


def shell_loop(deltas, seeds, outdir: Path) -> dict:
    """The README's loop, as a bash script (one process per run), then collect."""
    outdir.mkdir(parents=True)
    exe = " ".join(ncfkit())
    script = "set -e\n"
    for d in deltas:
        for s in seeds:
            script += (f"{exe} escape {DATA} {' '.join(FLAGS)} --delta {d} --seed {s} "
                       f"--out {outdir}/run_{d}_{s}.h5 --force 2>/dev/null\n")
    script += f"{exe} collect {outdir}/run_*.h5 --csv > {outdir}/sweep.csv\n"
    wall, mem, _ = timed(["bash", "-c", script])
    files = {(d, s): outdir / f"run_{d}_{s}.h5" for d in deltas for s in seeds}
    return {"wall": wall, "peak_total": mem.total, "peak_single": mem.single, "files": files}


def sweep(deltas, seeds, outdir: Path, scheduler_args: list[str]) -> dict:
    argv = [*ncfkit(), "sweep", "escape", str(DATA), *FLAGS, "--grid", "delta=" + ",".join(map(str, deltas)),
            "--grid", f"seed={seeds[0]}:{seeds[-1] + 1}", "--outdir", str(outdir), *scheduler_args]
    wall, mem, proc = timed(argv)
    files = {(d, s): outdir / f"delta={float(d)!r}_seed={s}.h5" for d in deltas for s in seeds}
    return {"wall": wall, "peak_total": mem.total, "peak_single": mem.single, "files": files,
            "stderr_tail": proc.stderr.strip().splitlines()[-1:]}


def numbers(path: Path) -> list[dict]:
    sys.path.insert(0, str(ROOT / "src"))
    from ncfkit.sweep import escape_rows

    return [{k: v for k, v in r.items() if k != "file"} for r in escape_rows(path)[1]]


def compare(rows: list[dict], ref: list[dict]) -> tuple[float, bool]:
    """(largest relative difference of a float column, bitwise equal) against the shell
    loop's rows; other columns must be equal. Dask's workers run numpy's BLAS on one
    thread (OPENBLAS_NUM_THREADS=1), so a Hessian eigenvalue can differ in its last bits
    from a process with a multi-threaded BLAS."""
    worst, bitwise = 0.0, True
    if len(rows) != len(ref):
        return float("inf"), False
    for a, b in zip(rows, ref, strict=True):
        for k in b:
            x, y = a.get(k), b[k]
            if x == y:
                continue
            bitwise = False
            if isinstance(x, float) and isinstance(y, float):
                worst = max(worst, abs(x - y) / max(abs(y), 1e-300))
            else:
                return float("inf"), False
    return worst, bitwise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--deltas", default="0.05,0.03,0.02,0.01")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", default=None, help="keep the run files here (default: a temporary folder)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="OMP/OPENBLAS/MKL_NUM_THREADS for every mode (Dask's workers use 1 by default)")
    a = ap.parse_args()
    if a.blas_threads is not None:
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            ENV[k] = str(a.blas_threads)
    deltas = [float(d) for d in a.deltas.split(",")]
    seeds = list(range(a.seeds))
    root = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    root.mkdir(parents=True, exist_ok=True)
    modes = {}
    print(f"{len(deltas) * len(seeds)} runs: fig1_square.npz {' '.join(FLAGS)}, δ ∈ {deltas}, seeds {seeds}",
          file=sys.stderr)
    modes["shell loop (one process per run)"] = shell_loop(deltas, seeds, root / "shell")
    print(f"shell loop: {modes['shell loop (one process per run)']['wall']:.1f} s", file=sys.stderr)
    key_cluster = f"ncfkit sweep, local cluster ({a.workers} workers)"
    modes[key_cluster] = sweep(deltas, seeds, root / "cluster", ["--workers", str(a.workers)])
    print(f"sweep on the local cluster: {modes[key_cluster]['wall']:.1f} s", file=sys.stderr)
    modes["ncfkit sweep --scheduler in-process (one process)"] = sweep(deltas, seeds, root / "inprocess",
                                                                      ["--scheduler", "in-process"])
    print(f"one process: {modes['ncfkit sweep --scheduler in-process (one process)']['wall']:.1f} s",
          file=sys.stderr)

    ref = {k: numbers(p) for k, p in modes["shell loop (one process per run)"]["files"].items()}
    base = modes["shell loop (one process per run)"]["wall"]
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "blas_threads": a.blas_threads,
              "runs": len(ref), "modes": []}
    for name, m in modes.items():
        diffs = [compare(numbers(p), ref[k]) for k, p in m["files"].items()]
        worst = max(d for d, _ in diffs)
        result["modes"].append({"mode": name, "wall_s": round(m["wall"], 2), "speedup": round(base / m["wall"], 2),
                                "peak_tree_mb": round(m["peak_total"] / 2**20), "peak_process_mb":
                                round(m["peak_single"] / 2**20), "bitwise_equal": all(b for _, b in diffs),
                                "max_rel_diff": worst, "numbers_equal_to_shell_loop": worst <= 1e-9})
    escaped = [r["escaped"] for rows in ref.values() for r in rows]
    result["all_escaped"] = all(escaped)
    if a.json:
        print(json.dumps(result))
        return
    print(f"\n{result['runs']} runs, {result['machine']}; all escaped: {result['all_escaped']}\n")
    print("| mode | wall s | vs shell loop | peak memory, all processes MB | largest process MB | "
          "numbers vs the shell loop's |")
    print("|---|---|---|---|---|---|")
    for m in result["modes"]:
        same = ("bitwise equal" if m["bitwise_equal"] else f"equal to {m['max_rel_diff']:.1e} relative"
                if m["numbers_equal_to_shell_loop"] else f"DIFFERENT ({m['max_rel_diff']:.1e})")
        print(f"| {m['mode']} | {m['wall_s']:.1f} | {m['speedup']:.2f}× | {m['peak_tree_mb']} | "
              f"{m['peak_process_mb']} | {same} |")


if __name__ == "__main__":
    main()
