"""Issue 13 item 8 (run by hand, not in CI): ``ncfkit kkt`` against its closest peer,
pymanopt 2.2.1 (Riemannian optimisation on the Sphere manifold), on the same cost, the
same 8 starts and one thread.

    python benchmarks/bench_kkt_peer.py [--only fig1,rand] [--starts 8] [--rounds 5]

Problems: the paper's Figure 1 (examples/data/fig1_square.npz, 50 hidden, x²; k = 1,050)
and random data n = 500, d = 50, 100 hidden, x² (k = 5,100); ỹ of the square loss (sum).
Time to a certified point: every start to a residual ‖P∇𝒩‖ / ‖∇𝒩‖ ≤ 1e-8, then Δ of
every distinct point found. ncfkit: ``find_kkt_points`` (batched ascent to a residual of
0.1, trust-region Newton finish, merge, certificate: Δ by dense/Lanczos); pymanopt: TrustRegions,
SteepestDescent and ConjugateGradient with the closed-form Euclidean gradient and
Hessian-vector product, then Δ by scipy ``eigsh`` on the restricted Hessian of each
distinct point. Basin fractions: how many of the starts reached each point.

Each problem runs ``--rounds`` rounds (Figure 1: four times as many) of ncfkit and every
pymanopt solver in turn, so every tool sees the same load on a shared machine; each
tool's time is its median over the rounds, and the speed-up is the median over the
rounds of (fastest pymanopt solver of the round) / (ncfkit in that round). The solvers
run twice: with ncfkit's closed forms (``ncfkit.ncf``: what a pymanopt user writes,
and what the issue measured) and with ncfkit's own point oracle
(``ncfkit._trust.point_oracle``: each point's passes computed once and reused by its
Hessian-vector products), which compares the solvers alone.

pymanopt is installed for this script only (``pip install --target`` into a temporary
folder, no dependencies: it needs numpy and scipy, already here).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread, before numpy loads BLAS
os.environ.setdefault("NCFKIT_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-8


def install_pymanopt(target: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    "pymanopt==2.2.1"], check=True)
    sys.path.insert(0, str(target))


def problem(name: str):
    from ncfkit.activations import parse_activation
    from ncfkit.models import MLP

    if name == "fig1":
        z = np.load(ROOT / "examples" / "data" / "fig1_square.npz")
        X, y, hidden = z["X"], z["y"], 50
    else:
        rng = np.random.default_rng(1)
        X, y, hidden = rng.standard_normal((500, 50)), rng.standard_normal(500), 100
    return MLP(X.shape[1], (hidden,), parse_activation("square")), X, 2.0 * y  # ỹ = −ℓ'(0) = 2y (sum)


def starts(arch, R: int) -> np.ndarray:
    """The starts of ``find_kkt_points(seed=0)`` (torch's generator), as numpy."""
    import torch

    from ncfkit.models import random_direction

    return random_direction(arch.num_params, torch.Generator().manual_seed(0), (R,), dtype=torch.float64).numpy()


def residual(arch, X, yt, u) -> float:
    from ncfkit.ncf import ncf_value_and_grad

    u = u / np.linalg.norm(u)
    _, g = ncf_value_and_grad(arch, X, yt, u)
    return float(np.linalg.norm(g - (u @ g) * u) / np.linalg.norm(g))


def basins(values: list[float], rtol: float = 1e-6) -> list[tuple[float, int]]:
    out: list[list] = []
    for v in sorted(values, reverse=True):
        for b in out:
            if abs(v - b[0]) <= rtol * max(abs(v), abs(b[0]), 1e-300):
                b[1] += 1
                break
        else:
            out.append([v, 1])
    return [(float(v), int(c)) for v, c in out]


def run_ncfkit(arch, X, yt, R: int) -> dict:
    from ncfkit.kkt import find_kkt_points

    t0, c0 = time.perf_counter(), time.process_time()
    res = find_kkt_points(arch, X, yt, restarts=R, seed=0, tol=TOL)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    pts = [{"ncf": p.cert.ncf, "count": p.count, "delta": p.cert.delta, "residual": p.cert.residual,
            "second_order": p.cert.second_order, "method": p.cert.hessian_method} for p in res.points]
    return {"wall_s": wall, "cpu_s": cpu, "converged": res.converged, "points": pts,
            "basins": [(p["ncf"], p["count"]) for p in pts], "max_steps": res.max_steps_taken}


def run_pymanopt(arch, X, yt, R: int, solver: str, gscale: float, max_time: float) -> dict:
    import pymanopt
    from pymanopt.manifolds import Sphere
    from pymanopt.optimizers import ConjugateGradient, SteepestDescent, TrustRegions
    from scipy.sparse.linalg import LinearOperator, eigsh

    from ncfkit.ncf import ncf, ncf_grad, ncf_hvp

    k = arch.num_params
    manifold = Sphere(k)
    cached = solver.endswith(CACHED)
    solver = solver.removesuffix(CACHED)
    if cached:  # ncfkit's point oracle: one forward/backward pass per point, reused by its products
        from ncfkit._trust import point_oracle

        at, last = point_oracle(arch, X, yt), [None, None]

        def point(u):
            if last[0] is None or not np.array_equal(last[0], u):
                last[:] = [np.array(u), at(u)]
            return last[1]

    @pymanopt.function.numpy(manifold)
    def cost(u):
        return -point(u).value if cached else -float(ncf(arch, X, yt, u))

    @pymanopt.function.numpy(manifold)
    def egrad(u):
        return -point(u).grad if cached else -ncf_grad(arch, X, yt, u)

    @pymanopt.function.numpy(manifold)
    def ehess(u, v):
        return -point(u).hvp(v) if cached else -ncf_hvp(arch, X, yt, u, v)

    prob = pymanopt.Problem(manifold, cost, euclidean_gradient=egrad, euclidean_hessian=ehess)
    make = {"TrustRegions": TrustRegions, "SteepestDescent": SteepestDescent,
            "ConjugateGradient": ConjugateGradient}[solver]
    opt = make(verbosity=0, min_gradient_norm=TOL * gscale, max_iterations=100_000, max_time=max_time)
    t0, c0 = time.perf_counter(), time.process_time()
    found, res_all = [], []
    for u0 in starts(arch, R):
        out = opt.run(prob, initial_point=u0)
        found.append(out.point)
        res_all.append(residual(arch, X, yt, out.point))
    t_solve = time.perf_counter() - t0
    vals = [float(ncf(arch, X, yt, u)) for u in found]
    # Δ of every distinct point (eigsh on the restricted Hessian, as the issue measured)
    distinct: list[tuple[float, np.ndarray]] = []
    for v, u in sorted(zip(vals, found, strict=True), key=lambda t: -t[0]):
        if not any(abs(v - w) <= 1e-6 * abs(w) for w, _ in distinct):
            distinct.append((v, u))
    deltas = []
    for v, u in distinct:
        pt = at(u) if cached else None

        def mv(b, u=u, pt=pt):
            b = b - (u @ b) * u
            h = pt.hvp(b) if pt is not None else ncf_hvp(arch, X, yt, u, b)
            return h - (u @ h) * u
        top = eigsh(LinearOperator((k, k), matvec=mv, dtype=np.float64), k=2, which="LA", tol=1e-10,
                    return_eigenvectors=False)
        deltas.append(float(arch.homogeneity) * v - float(np.sort(top)[-1]))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "solve_s": t_solve, "converged": int(sum(r <= TOL for r in res_all)),
            "max_residual": max(res_all), "basins": basins(vals), "deltas": deltas}


CACHED = " + ncfkit oracle"
PLAIN = ("TrustRegions", "SteepestDescent", "ConjugateGradient")
#: the plain solvers get the closed forms of ncfkit.ncf (what the issue measured); the
#: CACHED ones ncfkit's own point oracle (ncfkit._trust.point_oracle: a point's forward and
#: backward passes once, reused by its Hessian-vector products): the solvers alone compared
SOLVERS = (*PLAIN, "TrustRegions" + CACHED, "ConjugateGradient" + CACHED)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="fig1,rand")
    ap.add_argument("--starts", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of ncfkit and each pymanopt solver in turn (medians reported; Figure 1: 4x)")
    ap.add_argument("--max-time", type=float, default=120.0, help="pymanopt seconds per start at most")
    args = ap.parse_args()
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_avg": os.getloadavg(),
                 "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        install_pymanopt(Path(tmp))
        import scipy.sparse.linalg  # noqa: F401 - loaded before any timing, as for the peer
        import torch  # noqa: F401 - (ncfkit draws its starts with torch's generator)
        for name in args.only.split(","):
            arch, X, yt = problem(name)
            run_ncfkit(arch, X, yt, args.starts)  # warm-up (first calls build caches)
            runs: dict[str, list[dict]] = {"ncfkit": [], **{s: [] for s in SOLVERS}}
            gscale = None
            rounds = args.rounds * (4 if name == "fig1" else 1)  # ~0.05 s a round: more rounds for the same noise
            for _ in range(rounds):  # interleaved: every tool sees the same load
                runs["ncfkit"].append(run_ncfkit(arch, X, yt, args.starts))
                if gscale is None:  # ‖∇𝒩‖ at a KKT point (Euler): L_h |𝒩(w*)|
                    gscale = float(arch.homogeneity) * abs(runs["ncfkit"][0]["points"][0]["ncf"])
                for solver in SOLVERS:
                    runs[solver].append(run_pymanopt(arch, X, yt, args.starts, solver, gscale, args.max_time))
            row: dict = {"k": arch.num_params}
            for tool, rs in runs.items():
                row[tool] = dict(rs[-1], wall_s=float(np.median([r["wall_s"] for r in rs])),
                                 cpu_s=float(np.median([r["cpu_s"] for r in rs])), wall_all=[r["wall_s"] for r in rs])
            nk = row["ncfkit"]
            print(f"{name} (k = {arch.num_params}): ncfkit {nk['wall_s']:.3f} s (cpu {nk['cpu_s']:.3f} s; "
                  f"medians of {rounds}), "
                  f"{nk['converged']}/{args.starts} to 1e-8, basins {nk['basins']}", flush=True)
            for solver in SOLVERS:
                r = row[solver]
                print(f"  pymanopt {solver}: {r['wall_s']:.3f} s (cpu {r['cpu_s']:.3f} s), "
                      f"{r['converged']}/{args.starts} to 1e-8, "
                      f"basins {r['basins']}", flush=True)
            # per round: the fastest pymanopt solver of that round over ncfkit (same load)
            ratios = [min(runs[s][i]["wall_s"] for s in PLAIN) / runs["ncfkit"][i]["wall_s"]
                      for i in range(rounds)]
            ratios_oracle = [min(runs[s][i]["wall_s"] for s in SOLVERS) / runs["ncfkit"][i]["wall_s"]
                             for i in range(rounds)]
            certified = [s for s in SOLVERS if row[s]["converged"] == args.starts]
            ratios_cert = [min(runs[s][i]["wall_s"] for s in certified) / runs["ncfkit"][i]["wall_s"]
                           for i in range(rounds)] if certified else []
            cpu_ratio = [min(runs[s][i]["cpu_s"] for s in PLAIN) / runs["ncfkit"][i]["cpu_s"] for i in range(rounds)]
            row["speedup_vs_best_peer_cpu"] = float(np.median(cpu_ratio))
            row["speedup_vs_best_peer"] = float(np.median(ratios))
            row["speedup_vs_best_peer_all_rounds"] = ratios
            row["speedup_vs_best_peer_any_oracle"] = float(np.median(ratios_oracle))
            row["speedup_vs_best_certifying_peer"] = float(np.median(ratios_cert)) if ratios_cert else None
            print(f"  ncfkit vs pymanopt's fastest solver: {row['speedup_vs_best_peer']:.2f}x (median of the "
                  f"rounds' ratios {', '.join(f'{x:.2f}' for x in ratios)})", flush=True)
            print(f"  the same in CPU time: {row['speedup_vs_best_peer_cpu']:.2f}x", flush=True)
            print(f"  ncfkit vs pymanopt's fastest solver, ncfkit's oracle allowed: "
                  f"{row['speedup_vs_best_peer_any_oracle']:.2f}x", flush=True)
            if ratios_cert:
                print(f"  ncfkit vs the fastest solver reaching 1e-8 from every start ({', '.join(certified)}): "
                      f"{row['speedup_vs_best_certifying_peer']:.2f}x", flush=True)
            out[name] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
