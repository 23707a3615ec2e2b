"""Issue 6's benchmark (run by hand, not in CI): the paper's Figure-1 run three ways.

    python benchmarks/bench_escape.py [--steps 260000] [--quick]

1. the usual plain PyTorch loop (benchmarks/plain_loop.py: nn.Module, torch.optim.SGD,
   loss.item() every step, every iterate kept; float32, η = 0.005), for --steps steps;
2. ``ncfkit escape --method gd`` (float64, same η, same start, same horizon);
3. ``ncfkit escape --method flow`` (adaptive Dormand–Prince, same start and horizon);

each in its own process, so process start (imports) is included; wall time and peak RSS
of each child come from ``os.wait4``. Then an identical-iterates check: the plain loop in
float64 for a short run against ncfkit gd's final snapshot (max |Δw|). A second part
compares the order-7 network (3-layer square, Figure 4) with gd and flow.
Prints one table and a JSON line; the README quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "fig1_square.npz"
NCFKIT = [sys.executable, "-m", "ncfkit"]


def run(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024, out


def write_w0(path: Path, shapes: list[tuple[int, int]], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    np.savez(path, **{f"W{l}": rng.standard_normal(s) for l, s in enumerate(shapes, start=1)})


def ncfkit_escape(tmp: Path, method: str, w0: Path, max_time: float, extra: list[str]) -> tuple[float, float, dict]:
    out = tmp / f"{method}.h5"
    cmd = [*NCFKIT, "escape", str(DATA), "--init", str(w0), "--method", method, "--max-time",
           str(max_time), "--json", "--out", str(out), "--force", *extra]
    wall, rss, stdout = run(cmd)
    return wall, rss, json.loads(stdout)


def identical_iterates(tmp: Path, w0: Path, steps: int = 2000) -> float:
    """max |w_plain − w_ncfkit| after ``steps`` GD steps, both in float64."""
    import h5py

    final = tmp / "plain_final.npz"
    run([sys.executable, str(ROOT / "benchmarks" / "plain_loop.py"), str(DATA), "--hidden", "50",
         "--act", "square", "--delta", "0.02", "--lr", "0.005", "--steps", str(steps),
         "--init", str(w0), "--dtype", "float64", "--save-final", str(final)])
    out = tmp / "short.h5"
    run([*NCFKIT, "escape", str(DATA), "--hidden", "50", "--act", "square", "--reduction", "mean",
         "--delta", "0.02", "--lr", "0.005", "--init", str(w0), "--max-time", str(steps * 0.005),
         "--until", "max-time", "--delta-ref", "none", "--out", str(out), "--force"])
    plain = np.load(final)
    with h5py.File(out) as f:
        snap = f["runs/0/snapshots/final"]
        assert int(snap.attrs["step"]) == steps, snap.attrs["step"]
        return max(float(np.abs(np.asarray(plain[k]).reshape(snap[k].shape) - snap[k][()]).max())
                   for k in ("W1", "W2"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=260_000,
                    help="plain-loop steps (η = 0.005; 260,000 reach t = 1300, past the first saddle)")
    ap.add_argument("--quick", action="store_true", help="skip the plain loop (reuse --plain-json)")
    ap.add_argument("--plain-json", default=None, help="a previous plain-loop result line")
    args = ap.parse_args()
    fig1 = ["--hidden", "50", "--act", "square", "--reduction", "mean", "--delta", "0.02", "--lr", "0.005"]
    horizon = args.steps * 0.005
    rows = {}
    sim_wall: dict[str, float] = {}  # the integration alone (ncfkit's JSON wall_time)
    engines: dict[str, str | None] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        w0 = tmp / "w0.npz"
        write_w0(w0, [(50, 20), (1, 50)])
        if args.plain_json:
            plain = json.loads(Path(args.plain_json).read_text())
        elif not args.quick:
            wall, rss, out = run([sys.executable, str(ROOT / "benchmarks" / "plain_loop.py"), str(DATA),
                                  "--hidden", "50", "--act", "square", "--delta", "0.02", "--lr", "0.005",
                                  "--steps", str(args.steps), "--init", str(w0), "--dtype", "float32"])
            plain = json.loads(out)
            plain |= {"loop_s": plain["wall_s"], "wall_s": wall, "peak_rss_mb": rss}
            print("plain:", json.dumps(plain), flush=True)
        else:
            plain = None
        if plain is not None:
            rows["plain torch loop (float32)"] = (plain["wall_s"], plain["peak_rss_mb"],
                                                 plain["escape_time"], plain["saddle_time"], plain["saddle_loss"])
        for method in ("gd", "flow"):
            wall, rss, res = ncfkit_escape(tmp, method, w0, horizon, fig1)
            r = res["runs"][0]
            rows[f"ncfkit escape --method {method}"] = (wall, rss, r["escape_time"], r["saddle_time"], r["saddle_loss"])
            sim_wall[method] = res["wall_time"]
            engines[method] = res.get("engine")
            print(f"{method}: {rows[f'ncfkit escape --method {method}']}", flush=True)
        max_diff = identical_iterates(tmp, w0)
        # The order-7 network (3-layer square, Figure 4): gd vs flow along w* at δ = 0.5
        # (predicted escape t = 74.6; the plateau grows like δ^{2−L_h} = δ^{-5}).
        deep = ["--hidden", "20,20", "--act", "square", "--reduction", "mean", "--delta", "0.5",
                "--lr", "0.005", "--max-time", "250"]
        deep_rows = {}
        for method in ("gd", "flow"):
            out = tmp / f"deep_{method}.h5"
            wall, rss, stdout = run([*NCFKIT, "escape", str(DATA), *deep, "--init", "kkt", "--method", method,
                                     "--json", "--out", str(out), "--force"])
            r = json.loads(stdout)["runs"][0]
            deep_rows[method] = (wall, rss, r["escape_time"], r["predicted_escape_time"], r["saddle_time"], r["status"])

    print(f"\nFigure-1 setting to t = {horizon:g} (η = 0.005), machine: {os.cpu_count()} cores, "
          f"{os.uname().machine}, Python {sys.version.split()[0]}")
    print(f"{'':34s} {'wall s':>8s} {'peak MB':>8s} {'T_esc':>10s} {'T_saddle':>10s} {'saddle loss':>12s}")
    for name, (wall, rss, te, ts, sl) in rows.items():
        fmt = lambda v: "—" if v is None else f"{v:.6g}"  # noqa: E731
        print(f"{name:34s} {wall:8.2f} {rss:8.0f} {fmt(te):>10s} {fmt(ts):>10s} {fmt(sl):>12s}")
    summary = {"max_abs_diff_gd_vs_plain_float64_2000_steps": max_diff}
    if plain is not None:
        base = rows["plain torch loop (float32)"]
        for method in ("gd", "flow"):
            wall, rss, te, _, _ = rows[f"ncfkit escape --method {method}"]
            summary[f"{method}_speedup"] = base[0] / wall
            summary[f"{method}_speedup_integration_only"] = plain.get("loop_s", plain["wall_s"]) / sim_wall[method]
            summary[f"{method}_memory_ratio"] = rss / base[1]
            if base[2]:
                summary[f"{method}_escape_time_rel_diff"] = abs(te - base[2]) / base[2]
    print(f"identical iterates: max |w_plain − w_gd| after 2000 float64 steps = {max_diff:.2e}")
    print(f"gd engine: {engines.get('gd')}; integration alone (no process start, KKT point, "
          f"analysis): gd {sim_wall['gd']:.2f} s, flow {sim_wall['flow']:.2f} s")
    for k, v in summary.items():
        print(f"  {k}: {v:.4g}")
    print("\norder-7 network (3-layer square 20-20, --init kkt, δ = 0.5):")
    for method, (wall, rss, te, pe, ts, st) in deep_rows.items():
        print(f"  {method:5s} wall {wall:7.2f} s, peak {rss:5.0f} MB, T_esc {te}, predicted {pe}, "
              f"T_saddle {ts}, {st}")
    print(json.dumps({"fig1": {k: v for k, v in rows.items()}, "summary": summary, "order7": deep_rows,
                      "integration_s": sim_wall, "engines": engines}))


if __name__ == "__main__":
    main()
