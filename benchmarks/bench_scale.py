"""Issue 13's benchmark (run by hand, not in CI): ncfkit at the sizes researchers run,
side by side with the usual PyTorch loop.

    python benchmarks/bench_scale.py [--only S,M,L] [--steps 1000] [--device cuda] [--engines]

Workloads (the same start and the same number of steps for every row):

- S: the paper's Figure 1 (n = 100, d = 20, 50 hidden, x², mean square loss, δ = 0.02,
  η = 0.005) to t = 800 (160,000 steps);
- M: the Figure-8 shape (MNIST 0/1 at 14×14: n = 12,665, d = 196; random data of that
  shape), ReLU 20-20-20, MSE, η = 0.05, ``--steps`` steps;
- L: wide, n = 2,000, d = 784, ReLU 200, MSE, η = 0.05, ``--steps`` steps;
- MF, MR (``--only MF,MR``): ``escape --method flow`` to the escape and the first saddle,
  on an x² teacher data set of M's shape (student x², 20 hidden, δ = 1e-3) and on M itself
  (ReLU 20-20-20, δ = 0.1, ``--rtol 1e-4``: at ReLU's kinks the local error is first
  order in the step), against the usual loop's measured ms per step × the steps it would
  need at the stable η = 1/λ_max(∇²𝓛) at the saddle found.

Rows: the usual loop (``benchmarks/plain_loop.py``: nn.Module, torch.optim.SGD,
``loss.item()`` every step, every iterate kept; float32, and float64 for M and L), and
``ncfkit escape`` from the same direction (``--init w0.npz``, float64): gd without the
reference run (``--delta-ref none``), gd with it (the default), and on S also
``--method flow``. Each row is its own process (imports included); wall time and peak
RSS come from ``os.wait4``; the per-phase times from ``escape --json`` (``timing`` where
the build reports it; else the integration alone, ``wall_time``). ``--engines`` also
times one gradient per host engine on a grid of sizes against ``ncfkit.fastgd``'s cost
model (which engine ``auto`` takes, which was fastest).

``--device cuda`` runs every row on the GPU (the plain loop too); on this project's
CPU-only machines it is untested by measurement. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIG1 = ROOT / "examples" / "data" / "fig1_square.npz"
NCFKIT = [sys.executable, "-m", "ncfkit"]
PLAIN = [sys.executable, str(ROOT / "benchmarks" / "plain_loop.py")]

WORKLOADS = {
    # name: (n, d, hidden, act, lr, delta, steps (None: --steps))
    "S": (100, 20, "50", "square", 0.005, 0.02, 160_000),
    "M": (12_665, 196, "20,20,20", "relu", 0.05, 0.02, None),
    "L": (2_000, 784, "200", "relu", 0.05, 0.02, None),
}


TIMEOUT = 600.0  # seconds per row (--row-timeout)


class RowTimeout(Exception):
    pass


def run(cmd: list[str], log: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of one child process (stderr to ``log``);
    :class:`RowTimeout` when it runs past :data:`TIMEOUT` (it is killed)."""
    t0 = time.perf_counter()
    with open(log, "w") as err, tempfile.TemporaryFile("w+") as out_f:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out_f, stderr=err, text=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > TIMEOUT:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                raise RowTimeout(f"over {TIMEOUT:g} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        out = out_f.read()
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"failed ({code}): {' '.join(map(str, cmd))}\n{tail}")
    return wall, usage.ru_maxrss / 1024, out


def make_data(tmp: Path, name: str, n: int, d: int, seed: int = 0) -> Path:
    """S: the paper's Figure-1 data; M, L: Gaussian inputs of rms 1 per feature and
    labels ±1 from a random ReLU teacher (the shape is what matters for the timing)."""
    if name == "S":
        return FIG1
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    teacher = np.maximum(X @ rng.standard_normal((d, 10)) / np.sqrt(d), 0) @ rng.standard_normal(10)
    y = np.where(teacher >= np.median(teacher), 1.0, -1.0)
    path = tmp / f"{name}.npz"
    np.savez(path, X=X, y=y)
    return path


def write_w0(path: Path, widths: list[int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    np.savez(path, **{f"W{l + 1}": rng.standard_normal((widths[l + 1], widths[l]))
                      for l in range(len(widths) - 1)})


def phases(res: dict) -> dict:
    """Per-phase seconds from ``escape --json`` (``timing`` when reported)."""
    timing = res.get("timing") or res.get("phase_times")
    if isinstance(timing, dict):
        return {k: float(v) for k, v in timing.items() if isinstance(v, (int, float))}
    return {"integration": float(res.get("wall_time") or 0.0)}


def workload(tmp: Path, name: str, steps: int, device: str, plain64: bool, s_steps: int,
             governing_steps: int | None) -> dict:
    n, d, hidden, act, lr, delta, fixed = WORKLOADS[name]
    steps = s_steps if name == "S" else steps
    data = make_data(tmp, name, n, d)
    widths = [d, *(int(k) for k in hidden.split(",")), 1]
    w0 = tmp / f"w0_{name}.npz"
    write_w0(w0, widths)
    data_mb = os.path.getsize(data) / 2**20
    rows: dict[str, dict] = {}
    for dtype in ("float32", "float64") if plain64 else ("float32",):
        wall, rss, out = run([*PLAIN, data, "--hidden", hidden, "--act", act, "--delta", delta, "--lr", lr,
                              "--steps", steps, "--init", w0, "--dtype", dtype, "--device", device],
                             tmp / f"{name}_plain_{dtype}.log")
        res = json.loads(out)
        rows[f"plain torch loop ({dtype})"] = {"wall_s": wall, "peak_mb": rss, "loop_s": res["wall_s"],
                                                "ms_per_step": 1e3 * res["wall_s"] / steps,
                                                "final_loss": res["final_loss"]}
        print(f"  {name} plain {dtype}: {wall:.2f} s, {rss:.0f} MB", flush=True)
    common = ["escape", data, "--hidden", hidden, "--act", act, "--reduction", "mean", "--delta", delta,
              "--lr", lr, "--init", w0, "--max-time", repr(steps * lr), "--until", "max-time", "--json",
              "--device", device, "--force"]
    variants = {"ncfkit gd, no reference run": ["--method", "gd", "--delta-ref", "none"],
                "ncfkit gd": ["--method", "gd"]}
    if plain64:  # M, L: also in float32, beside the float32 loop (the same arithmetic)
        variants.update({f"{k} (float32)": [*v, "--dtype", "float32"] for k, v in list(variants.items())})
    if name == "S":
        variants["ncfkit flow"] = ["--method", "flow"]
    elif governing_steps:
        variants[f"ncfkit gd, no ref, --max-steps {governing_steps}"] = [
            "--method", "gd", "--delta-ref", "none", "--max-steps", str(governing_steps)]
    for label, extra in variants.items():
        out_h5 = tmp / f"{name}_{len(rows)}.h5"
        try:
            wall, rss, out = run([*NCFKIT, *common, "--out", out_h5, *extra], tmp / f"{name}_{len(rows)}.log")
        except (RowTimeout, SystemExit) as e:  # past --row-timeout, or failed (e.g. out of memory)
            rows[label] = {"wall_s": float("nan"), "peak_mb": float("nan"), "timeout": str(e).splitlines()[0]}
            print(f"  {name} {label}: {e}", flush=True)
            continue
        res = json.loads(out)
        r0 = res["runs"][0]
        rows[label] = {"wall_s": wall, "peak_mb": rss, "engine": res.get("engine"), "phases": phases(res),
                       "steps": r0.get("steps"), "final_loss": r0.get("final_loss")}
        print(f"  {name} {label}: {wall:.2f} s, {rss:.0f} MB, engine {res.get('engine')}, "
              f"phases {rows[label]['phases']}", flush=True)
    stepping = stepping_only(data, w0, hidden, act, lr, delta, min(steps, 200)) if name != "S" else None
    if stepping:
        print(f"  {name} gd stepping alone, ms/step: {stepping}", flush=True)
    return {"n": n, "d": d, "hidden": hidden, "act": act, "lr": lr, "steps": steps, "data_mb": data_mb,
            "rows": rows, "stepping_ms_per_step": stepping}


#: The flow workloads (issue 13 item 6): MNIST-shaped data, the run to its escape and
#: first saddle by ``--method flow`` against the usual loop's per-step time × the steps it
#: would need at a stable η (1/λ_max(∇²𝓛) at the saddle, measured).
#: name: (n, d, teacher hidden and act, or None: M's data, student hidden, act, delta, --rtol,
#: until: "saddle" (the run stops once past its first saddle) or "predicted" (see flow_workload))
FLOW_WORKLOADS = {
    "MF": (12_665, 196, ("3", "square"), "20", "square", 1e-3, None, "predicted"),  # x² teacher of M's shape
    "MR": (12_665, 196, None, "20,20,20", "relu", 0.1, 1e-4, "saddle"),  # M itself (kinks need a loose rtol)
}


def flow_workload(tmp: Path, name: str, device: str) -> dict:
    """``escape --method flow`` to the first saddle (whole process) beside the usual loop's
    time for the same stretch (its ms per step, from 1000 steps, × saddle time / η)."""
    from ncfkit import io as nio
    from ncfkit.dynamics import Objective, min_hessian_eigenvalue
    from ncfkit.losses import make_loss
    from ncfkit.models import make_architecture

    n, d, teacher, hidden, act, delta, rtol, until = FLOW_WORKLOADS[name]
    if teacher is None:
        data = make_data(tmp, name, n, d)
    else:
        data = tmp / f"{name}.npz"
        subprocess.run([*NCFKIT, "data", "teacher", "-o", data, "--n", str(n), "--d", str(d), "--hidden",
                        teacher[0], "--act", teacher[1], "--force"], check=True, capture_output=True)
    widths = [d, *(int(k) for k in hidden.split(",")), 1]
    w0 = tmp / f"w0_{name}.npz"
    write_w0(w0, widths)
    out_h5 = tmp / f"{name}.h5"
    common = [*NCFKIT, "escape", data, "--hidden", hidden, "--act", act, "--reduction", "mean", "--delta", delta,
              "--init", w0, "--method", "flow", "--delta-ref", "none", "--json", "--device", device, "--force",
              *(["--rtol", rtol] if rtol else [])]
    if until == "saddle":
        wall, rss, out = run([*common, "--until", "saddle", "--out", out_h5], tmp / f"{name}_flow.log")
    else:
        # "predicted": the first saddle is confirmed only when the run leaves its plateau,
        # which can last far longer than the escape (and near a saddle a stiff flow is no
        # cheaper than GD): run to 1.02 × the escape time predicted from w0 (the first
        # process: the governing point alone) and count both processes.
        wall0, _, out0 = run([*common, "--max-time", "1", "--until", "max-time"], tmp / f"{name}_pred.log")
        t_end = 1.02 * json.loads(out0)["runs"][0]["predicted_escape_time_w0"]
        wall, rss, out = run([*common, "--max-time", repr(t_end), "--until", "max-time", "--out", out_h5],
                             tmp / f"{name}_flow.log")
        wall += wall0
    res = json.loads(out)
    r0 = res["runs"][0]
    if r0.get("saddle_time") is None:
        raise SystemExit(f"{name}: the flow run found no first saddle (status {r0.get('status')})")
    z = np.load(data)
    arch = make_architecture("mlp", d, hidden, act)
    obj = Objective(arch, np.asarray(z["X"], float), np.asarray(z["y"], float), make_loss("square", "mean"))
    w_saddle = np.asarray(nio.read_h5(out_h5)["runs"]["0"]["snapshots"]["saddle"]["w"], float)
    lam_max = min_hessian_eigenvalue(obj, w_saddle).max
    lr = 1.0 / lam_max
    rows = {"ncfkit flow": {"wall_s": wall, "peak_mb": rss, "phases": phases(res), "escape_time": r0["escape_time"],
                            "saddle_time": r0["saddle_time"], "predicted_escape_time_w0": r0.get(
                                "predicted_escape_time_w0")}}
    print(f"  {name} ncfkit flow: {wall:.2f} s, {rss:.0f} MB, escape t = {r0['escape_time']}, saddle t = "
          f"{r0['saddle_time']}, phases {rows['ncfkit flow']['phases']}", flush=True)
    steps_needed = int(math.ceil(r0["saddle_time"] / lr))
    for dtype in ("float32", "float64"):
        wall_p, rss_p, out_p = run([*PLAIN, data, "--hidden", hidden, "--act", act, "--delta", delta, "--lr", lr,
                                    "--steps", 1000, "--init", w0, "--dtype", dtype, "--device", device],
                                   tmp / f"{name}_plain_{dtype}.log")
        ms = 1e3 * json.loads(out_p)["wall_s"] / 1000
        rows[f"plain torch loop ({dtype}), extrapolated"] = {
            "wall_s": ms * steps_needed / 1e3, "peak_mb": rss_p, "ms_per_step": ms, "steps": steps_needed}
        print(f"  {name} plain {dtype}: {ms:.2f} ms/step x {steps_needed} steps (η = 1/λ_max = {lr:.4g}) = "
              f"{ms * steps_needed / 1e3:.0f} s, {wall / (ms * steps_needed / 1e3):.4f} of it for ncfkit "
              f"({ms * steps_needed / 1e3 / wall:.1f}x)", flush=True)
        at_m = ms * r0["saddle_time"] / WORKLOADS["M"][4] / 1e3  # at M's η = 0.05, the setting
        rows[f"plain torch loop ({dtype}), extrapolated"]["wall_s_at_eta_0.05"] = at_m
        print(f"  {name} plain {dtype} at M's η = {WORKLOADS['M'][4]}: {at_m:.0f} s ({at_m / wall:.1f}x)", flush=True)
    return {"n": n, "d": d, "hidden": hidden, "act": act, "lr": lr, "steps": steps_needed, "delta": delta, "rtol": rtol,
            "lambda_max_saddle": lam_max, "data_mb": os.path.getsize(data) / 2**20, "rows": rows,
            "baseline": "plain torch loop (float32), extrapolated"}


def stepping_only(data: Path, w0: Path, hidden: str, act: str, lr: float, delta: float, steps: int) -> dict:
    """ms per gd step of ``ncfkit.dynamics.simulate`` alone (in this process: no start-up,
    no governing point, no Hessians), per host engine: what the engines cost per step."""
    from ncfkit.dynamics import Objective, Settings, simulate
    from ncfkit.losses import make_loss
    from ncfkit.models import make_architecture

    z = np.load(data)
    X, y = np.asarray(z["X"], dtype=np.float64), np.asarray(z["y"], dtype=np.float64)
    arch = make_architecture("mlp", X.shape[1], hidden, act)
    w = np.concatenate([a.ravel() for a in np.load(w0).values()])
    w = (delta * w / np.linalg.norm(w))[None]
    obj = Objective(arch, X, y, make_loss("square", "mean"))
    out = {}
    for engine in ("auto", "compiled", "numpy"):
        sim = simulate(obj, w, Settings(max_time=steps * lr, lr=lr, until="max-time", engine=engine))
        out[engine if engine != "auto" else f"auto ({sim.engine})"] = 1e3 * sim.wall_time / steps
    return out


def engines_grid() -> list[dict]:
    """One gradient (B = 1) per host engine on a grid of sizes, against the cost model."""
    from ncfkit import fastgd
    from ncfkit.dynamics import Objective
    from ncfkit.losses import make_loss
    from ncfkit.models import make_architecture

    out = []
    grid = [(100, 20, (50,)), (100, 20, (20, 20)), (1000, 20, (50,)), (500, 50, (100,)),
            (2000, 100, (100,)), (12_665, 196, (20, 20, 20)), (2000, 784, (200,))]
    for n, d, hidden in grid:
        rng = np.random.default_rng(0)
        X, y = rng.standard_normal((n, d)), rng.standard_normal(n)
        arch = make_architecture("mlp", d, hidden, "relu")
        obj = Objective(arch, X, y, make_loss("square", "mean"))
        w = 0.1 * rng.standard_normal((1, arch.num_params))
        times = {}
        for engine in ("compiled", "numpy"):
            f = fastgd.value_and_grad_fn(obj, engine, host=True)
            f(w)
            t0, reps = time.perf_counter(), 0
            while time.perf_counter() - t0 < 0.5 or reps < 3:
                f(w)
                reps += 1
            times[engine] = (time.perf_counter() - t0) / reps
        chosen = fastgd.resolve_engine(obj, "auto")
        fastest = min(times, key=times.get)
        row = {"n": n, "d": d, "hidden": list(hidden), "k": arch.num_params,
               "ms": {e: 1e3 * t for e, t in times.items()},
               "predicted_ms": {e: 1e3 * t for e, t in fastgd.predicted_costs(arch, n).items()},
               "auto": chosen, "fastest": fastest, "loss_vs_best": times[chosen] / times[fastest]}
        out.append(row)
        print(f"  n={n:6d} d={d:4d} hidden={hidden!s:12s} k={arch.num_params:7d}: compiled "
              f"{row['ms']['compiled']:8.3f} ms, numpy {row['ms']['numpy']:8.3f} ms; auto -> {chosen} "
              f"(fastest {fastest}, x{row['loss_vs_best']:.2f})", flush=True)
    return out


def targets(results: dict) -> list[dict]:
    """Issue 13's targets, each with the figures it was judged on (printed and returned)."""
    out = []

    def check(what: str, value: float, limit: float, ok: bool) -> None:
        out.append({"target": what, "value": value, "limit": limit, "met": bool(ok)})
        print(f"  {'MET ' if ok else 'MISS'} {what}: {value:.2f} (limit {limit:.2f})")

    print("\ntargets:")
    for name, w in results["workloads"].items():
        rows = w["rows"]
        if name == "S":
            base = rows["plain torch loop (float32)"]["wall_s"]
            for label, need in (("ncfkit gd", 8.0), ("ncfkit flow", 20.0)):
                if label in rows and rows[label]["wall_s"] == rows[label]["wall_s"]:
                    check(f"S {label} speed-up vs the usual loop", base / rows[label]["wall_s"], need,
                          base / rows[label]["wall_s"] >= need)
        elif name in FLOW_WORKLOADS:
            r = rows["ncfkit flow"]
            for dtype in ("float32", "float64"):
                loop = rows[f"plain torch loop ({dtype}), extrapolated"]["wall_s"]
                check(f"{name} flow to escape + first saddle, speed-up vs the {dtype} loop", loop / r["wall_s"],
                      20.0, loop / r["wall_s"] >= 20.0)
        else:
            for dtype in ("float32", "float64"):  # the same dtype on both sides
                key = f"plain torch loop ({dtype})"
                if key not in rows:
                    continue
                loop = rows[key]["wall_s"]
                for base, factor in (("ncfkit gd, no reference run", 1.3), ("ncfkit gd", 2.3)):
                    label = base if dtype == "float64" else f"{base} (float32)"
                    if label in rows and rows[label]["wall_s"] == rows[label]["wall_s"]:
                        limit = factor * loop + 10.0
                        check(f"{name} {label} vs {factor} x the {dtype} loop + 10 s", rows[label]["wall_s"], limit,
                              rows[label]["wall_s"] <= limit)
            for label in [k for k in rows if k.startswith("ncfkit gd")]:
                if label in rows and rows[label]["peak_mb"] == rows[label]["peak_mb"]:
                    limit = w["data_mb"] + 300.0
                    check(f"{name} {label} peak MB vs data + 300 MB", rows[label]["peak_mb"], limit,
                          rows[label]["peak_mb"] <= limit)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="S,M,L", help="workloads, e.g. M,L")
    ap.add_argument("--steps", type=int, default=1000, help="steps of M and L (S: 160,000, to t = 800)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (every row)")
    ap.add_argument("--engines", action="store_true", help="also check auto's cost model")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--s-steps", type=int, default=160_000, help="steps of S (160,000: t = 800)")
    ap.add_argument("--governing-steps", type=int, default=None,
                    help="M, L: also a row with the governing point's NCF flow capped (--max-steps)")
    ap.add_argument("--row-timeout", type=float, default=600.0, help="seconds per row before it is killed")
    args = ap.parse_args()
    global TIMEOUT
    TIMEOUT = args.row_timeout
    machine = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
               "machine": platform.machine(), "python": platform.python_version(),
               "load_avg": os.getloadavg()}
    results: dict = {"machine": machine, "device": args.device, "workloads": {}}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in args.only.split(","):
            print(f"{name}:", flush=True)
            name = name.strip()
            if name in FLOW_WORKLOADS:
                results["workloads"][name] = flow_workload(tmp, name, args.device)
                continue
            results["workloads"][name] = workload(tmp, name, args.steps, args.device,
                                                  name != "S", args.s_steps, args.governing_steps)
    if args.engines:
        print("engines (one gradient, B = 1, float64):", flush=True)
        results["engines"] = engines_grid()
    print(f"\nmachine: {machine}")
    for name, w in results["workloads"].items():
        base = w["rows"][w.get("baseline", "plain torch loop (float32)")]["wall_s"]
        print(f"\n{name}: n = {w['n']}, d = {w['d']}, hidden {w['hidden']} {w['act']}, η = {w['lr']}, "
              f"{w['steps']} steps, data {w['data_mb']:.1f} MB")
        print(f"  {'':40s} {'wall s':>8s} {'vs plain32':>10s} {'peak MB':>8s}  phases")
        for label, r in w["rows"].items():
            ph = ", ".join(f"{k} {v:.2f}" for k, v in r.get("phases", {}).items())
            print(f"  {label:40s} {r['wall_s']:8.2f} {base / r['wall_s']:9.2f}x {r['peak_mb']:8.0f}  {ph}"
                  + (f" ({r['timeout']})" if "timeout" in r else ""))
        if w.get("stepping_ms_per_step"):
            plain = {k: v["ms_per_step"] for k, v in w["rows"].items() if "ms_per_step" in v}
            print(f"  ms per step: {plain} | ncfkit gd stepping alone: {w['stepping_ms_per_step']}")
    results["targets"] = targets(results)
    print(json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
