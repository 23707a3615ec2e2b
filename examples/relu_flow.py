"""Does a ReLU run follow the NCF flow from w0, and how far is that flow from its limit w*?

Used by fig5.sh … fig8.sh. Near the origin the run from δ·w0 is ψ(t) ≈ δ·u(δ^{L_h−2} t),
u the NCF flow u' = ∇𝒩(u) from u(0) = w0 (Definition 2; ``ncfkit.theory.NcfFlowEscape``):
write u = e^ρ·θ, ‖θ‖ = 1. At radius ‖ψ‖ = r the run's direction should be θ(ρ) with
ρ = ln(r/δ), and only as ρ → ∞ does θ reach the governing point w*. This script integrates
the flow from the escape run's own w0 (``--seed``: the direction of ``ncfkit escape
--init random``) to ``--rho-max`` and prints, as JSON on stdout:

- ``flow``: along ρ, 𝒩(θ), cos(θ, w*), ‖θ_wz‖ (θ's weight on w*'s zero-preserving
  subset w_z, as ``escape`` measures the run's) and its active neurons per layer;
- ``runs``: for every run of the given escape files (the first one's w* is used
  throughout; ``FILE=D``: a run continued from a ``--start`` file made ``--for-delta D``),
  at escape and at the saddle,
  ρ_run = ln(‖ψ‖/δ), cos(ψ, θ(ρ_run)) (the run follows the flow when this is ≈ 1),
  cos(ψ, w*), ‖ψ_wz‖/‖ψ‖ and the flow's ‖θ_wz‖ at ρ_run.

w* is the first escape file's governing point, or with ``--certify`` the Clarke-KKT point
that ``ncfkit.kkt.clarke_ascent`` reaches from θ(ρ_max), with its certificate (``w_star``).

``--start FILE --radius R --for-delta D`` also writes θ(ln(R/D)) as a weight file:
``ncfkit escape --init FILE --delta R`` then continues the run from D·w0 from the point
where it reaches radius R (the error is O(R^{L_h}) relative, from the loss's terms beyond
𝒩), which costs D^{2−L_h}·t(ρ) less gradient-flow time; ``time_offset`` (stderr and JSON)
is that time, to add to the shortened run's times.

usage: python examples/relu_flow.py DATA --hidden H [--reduction mean] [--seed 0]
       [--rho-max 12] [--rtol 1e-5] [RUN.h5 ...] [--start FILE --radius R --for-delta D]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np


def neuron_sizes(arch, w):
    Ws = arch.split(np.asarray(w, dtype=float))
    return [np.sqrt((Ws[i] ** 2).sum(1) + (Ws[i + 1] ** 2).sum(0)) for i in range(len(Ws) - 1)]


def zero_mask(arch, w, tol=1e-3):
    """w_z of w (Theorem 18): rows and columns of the neurons ≤ tol × the layer's largest."""
    Ms = arch.split(np.zeros(arch.num_params, dtype=float))
    for i, n in enumerate(neuron_sizes(arch, w)):
        z = n <= tol * n.max()
        Ms[i][z, :] = 1.0
        Ms[i + 1][:, z] = 1.0
    return np.asarray(arch.join(Ms)) > 0


def integrate(arch, X, ytilde, w0, rho_max: float, rtol: float, rho_at: float | None = None):
    """(ρ, t, θ) of the NCF flow from w0 at every 0.05 of ρ, up to ρ_max (clock s of
    ``ncfkit.theory.ncf_flow``: θ' = P∇𝒩(θ), ρ' = L_h𝒩(θ), t' = e^{(2−L_h)ρ}), the
    accepted steps, and (θ, t) at exactly ρ = ``rho_at`` (the integrator's dense output)."""
    from ncfkit.fastgd import ncf_value_and_grad_fn
    from ncfkit.rk import RungeKutta

    L_h = float(arch.homogeneity)
    vg = ncf_value_and_grad_fn(arch, X, ytilde, "auto", host=True)
    k = w0.size

    def rhs(y):
        th = y[:k] / np.linalg.norm(y[:k])
        val, g = vg(th)
        val, g = float(val), np.asarray(g, dtype=float)
        dy = np.empty_like(y)
        dy[:k] = g - (th @ g) * th
        dy[k] = L_h * val
        dy[k + 1] = math.exp(min((2.0 - L_h) * y[k], 700.0))
        return dy, val

    def err_norm(e):
        return float(max(np.linalg.norm(e[:k]), abs(e[k]), abs(e[k + 1])))

    y0 = np.concatenate([w0 / np.linalg.norm(w0), [0.0, 0.0]])
    st = RungeKutta(rhs, y0, rtol=rtol, atol=rtol, tableau="dopri5", norm=err_norm, hold_after_reject=True)
    rho, t, th = [0.0], [0.0], [y0[:k].copy()]
    exact = None
    while st.y[k] < rho_max and st.n_accepted < 1_000_000:
        st.step()
        if rho_at is not None and exact is None and st.y_prev[k] < rho_at <= st.y[k]:
            lo, hi = 0.0, 1.0
            for _ in range(60):  # ρ increases along the step (𝒩 > 0 near a maximum)
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if st.dense(mid)[k] < rho_at else (lo, mid)
            y = st.dense(hi)
            exact = (y[:k] / np.linalg.norm(y[:k]), float(y[k + 1]))
        st.y[:k] /= np.linalg.norm(st.y[:k])
        if st.y[k] >= rho[-1] + 0.05 or st.y[k] >= rho_max:
            rho.append(float(st.y[k]))
            t.append(float(st.y[k + 1]))
            th.append(st.y[:k].copy())
    return np.array(rho), np.array(t), np.array(th), st.n_accepted, exact


def at(rho_grid, value):
    return int(min(np.searchsorted(rho_grid, value), len(rho_grid) - 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("runs", nargs="*", help="escape run files (.h5) made from this data, --hidden and --seed; "
                    "FILE=D: a run continued from --start ... --for-delta D (it stands for the run from D·w0)")
    ap.add_argument("--hidden", required=True)
    ap.add_argument("--reduction", default="mean")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rho-max", type=float, default=12.0)
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--certify", action="store_true",
                    help="polish θ(ρ_max) by the Clarke ascent (ncfkit.kkt.clarke_ascent), certify it, "
                    "and use it as w*")
    ap.add_argument("--start", help="write θ(ln(radius/for-delta)) × radius to this .npz (W1 … WL)")
    ap.add_argument("--radius", type=float)
    ap.add_argument("--for-delta", type=float)
    a = ap.parse_args(argv)

    import h5py

    from ncfkit.api import Problem
    from ncfkit.escape import initial_direction

    p = Problem.load(a.data, hidden=a.hidden, act="relu", reduction=a.reduction, seed=a.seed)
    arch = p.arch
    L_h = float(arch.homogeneity)
    w0 = np.asarray(initial_direction("random", p, a.seed)[0], dtype=float).ravel()
    rho_max = a.rho_max
    if a.start:
        if not (a.radius and a.for_delta and a.radius > a.for_delta):
            ap.error("--start needs --radius R > --for-delta D > 0")
        rho_max = max(rho_max, math.log(a.radius / a.for_delta) + 0.1)
    rho_at = math.log(a.radius / a.for_delta) if a.start else None
    rho, t, th, steps, exact = integrate(arch, np.asarray(p.X), np.asarray(p.ytilde), w0, rho_max, a.rtol,
                                         rho_at)
    from ncfkit.fastgd import ncf_value_and_grad_fn
    vg = ncf_value_and_grad_fn(arch, np.asarray(p.X), np.asarray(p.ytilde), "auto", host=True)
    out = {"data": a.data, "hidden": a.hidden, "seed": a.seed, "L_h": L_h, "flow_steps": steps,
           "rho_end": float(rho[-1])}

    wstar = mask = None
    if a.certify:
        from ncfkit.kkt import certify, clarke_ascent

        t0 = time.time()
        tries = []
        for j in (len(rho) - 1, at(rho, 0.9 * rho[-1]), at(rho, 0.8 * rho[-1])):  # late points of the flow
            asc = clarke_ascent(arch, p.X, p.ytilde, p.array(th[j][None, :]), max_steps=100_000, tol=1e-9)
            c = certify(arch, p.X, p.ytilde, asc.u[0])
            tries.append({"rho": float(rho[j]), "ncf": c.ncf, "residual": c.residual})
            if c.residual <= 1e-9:
                break
        wstar = np.asarray(c.w.cpu() if hasattr(c.w, "cpu") else c.w, dtype=float)
        out["w_star"] = {"source": f"Clarke ascent from θ(ρ = {rho[j]:.1f})", "tries": tries,
                         "ncf": c.ncf, "residual": c.residual,
                         "delta": c.delta, "certified": bool(c.residual <= 1e-9),
                         "reason": None if c.residual <= 1e-9 else asc.reason[0],
                         "field": c.field, "active_per_layer": list(c.active_per_layer or ()),
                         "cos_theta_end": float(th[-1] @ wstar / np.linalg.norm(wstar)),
                         "seconds": round(time.time() - t0, 1)}
    elif a.runs:
        with h5py.File(a.runs[0].partition("=")[0], "r") as f:
            wstar = np.asarray(f["kkt/w_star"], dtype=float)
        out["w_star"] = {"source": f"{a.runs[0].partition('=')[0]} (kkt/w_star)"}
    if wstar is not None:
        wstar = wstar / np.linalg.norm(wstar)
        mask = zero_mask(arch, wstar)
        out["w_star"]["zero_preserving_size"] = int(mask.sum())
        out["w_star"]["zero_neurons"] = [np.flatnonzero(n <= 1e-3 * n.max()).tolist()
                                         for n in neuron_sizes(arch, wstar)]
    rows = []
    for mark in (0.5, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50, 100, 200, 300, 500, 700):
        if mark > rho[-1] + 1e-9:
            break
        i = at(rho, mark)
        n = neuron_sizes(arch, th[i])
        row = {"rho": round(float(rho[i]), 3), "ncf": float(vg(th[i])[0]),
               "active_per_layer_5pct": [int((x >= 0.05 * x.max()).sum()) for x in n]}
        if wstar is not None:
            row["cos_w_star"] = float(th[i] @ wstar)
            row["wz_norm"] = float(np.linalg.norm(th[i][mask]))
        rows.append(row)
    out["flow"] = rows

    runs = []
    for spec in a.runs:
        path, _, stands = spec.partition("=")
        with h5py.File(path, "r") as f:
            for r in sorted(f["runs"], key=int):
                g = f["runs"][r]
                d = float(stands) if stands else float(g.attrs["delta"])
                rec = {"file": path, "delta": d}
                for ev in ("escape", "saddle"):
                    if ev not in g["snapshots"]:
                        continue
                    w = np.asarray(g["snapshots"][ev]["w"], dtype=float)
                    nw = float(np.linalg.norm(w))
                    rr = math.log(nw / d)
                    i = at(rho, rr)
                    e = {"rho_run": rr, "cos_flow": float(w @ th[i]) / nw,
                         "flow_rho_reached": bool(rr <= rho[-1] + 1e-9)}
                    if wstar is not None:
                        e["cos_w_star"] = float(w @ wstar) / nw
                        e["wz_ratio"] = float(np.linalg.norm(w[mask])) / nw
                        e["flow_wz_norm"] = float(np.linalg.norm(th[i][mask]))
                    rec[ev] = e
                runs.append(rec)
    out["runs"] = runs

    if a.start:
        theta, t_at = exact
        np.savez(a.start, **{f"W{j + 1}": W for j, W in enumerate(arch.split(theta * a.radius))})
        offset = a.for_delta ** (2.0 - L_h) * t_at if L_h != 2 else t_at
        out["start"] = {"file": a.start, "radius": a.radius, "for_delta": a.for_delta, "rho": rho_at,
                        "time_offset": offset}
        print(f"relu_flow: wrote {a.start}: θ(ρ = {rho_at:.4f}) × {a.radius:g}, the run from "
              f"{a.for_delta:g}·w0 at radius {a.radius:g} (gradient-flow time {offset:.6g} after its start)",
              file=sys.stderr)
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
