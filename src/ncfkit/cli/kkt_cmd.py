"""``ncfkit kkt``: find and certify KKT points of the constrained NCF."""

from __future__ import annotations

import click

from .options import (
    build_problem,
    emit_json,
    guarded,
    model_options,
    output_options,
    stderr_console,
)


def _point_json(p, arch) -> dict:
    c = p.cert
    out = {
        "ncf": c.ncf, "lam": c.lam, "residual": c.residual, "delta": c.delta,
        "second_order": c.second_order, "kind": c.kind, "count": p.count,
        "basin_fraction": p.basin_fraction, "converged": p.converged, "eig_error": c.eig_error,
        "top_hessian_eigs": list(c.top_eigs), "hessian_method": c.hessian_method,
    }
    if c.active_per_layer is not None:
        out["active_per_layer"] = list(c.active_per_layer)
        out["active_neurons"] = [list(a) for a in c.active_neurons]
        out["balance_error"] = c.balance_error
    return out


def _table(result, arch, problem):
    from rich.table import Table

    t = Table(title=f"KKT points of the constrained NCF — {arch.describe()}, "
                    f"L_h = {result.homogeneity:g}, k = {result.num_params}, "
                    f"{result.converged}/{result.restarts} restarts converged")
    cols = ["#", "𝒩(w*)", "Δ", "residual", "Lemma 20", "kind", "2nd order", "count", "basin", "converged"]
    mlp = hasattr(arch, "hidden")
    if mlp:
        cols[5:5] = ["active/layer", "balance"]
    for c in cols:
        t.add_column(c, justify="right")
    for i, p in enumerate(result.points):
        c = p.cert
        row = [str(i), f"{c.ncf:.10g}", f"{c.delta:.6g}", f"{c.residual:.1e}", f"{c.eig_error:.1e}",
               c.kind, "yes" if c.second_order else "no", str(p.count), f"{p.basin_fraction:.0%}",
               "yes" if p.converged else "stalled"]
        if mlp:
            row[5:5] = [",".join(map(str, c.active_per_layer)), f"{c.balance_error:.1e}"]
        t.add_row(*row)
    return t


@click.command("kkt")
@model_options
@click.option("--restarts", type=int, default=32, show_default=True,
              help="Random unit-norm starts, run as one batch.")
@click.option("--max-steps", type=int, default=20000, show_default=True,
              help="Ascent steps at most per start.")
@click.option("--tol", type=float, default=1e-9, show_default=True,
              help="Stop a start when ‖∇𝒩 − (wᵀ∇𝒩)w‖ / ‖∇𝒩‖ falls below this.")
@click.option("--active-tol", type=float, default=1e-3, show_default=True,
              help="A hidden neuron is zero when its norm is below this fraction of the largest.")
@output_options
@guarded
def command(data, arch, hidden, depth, act, loss_name, reduction, seed, dtype, device,
            restarts, max_steps, tol, active_tol, as_json, out, force):
    """Find KKT points of  max 𝒩(u) = ỹᵀH(X; u)  s.t. ‖u‖ = 1  by projected gradient
    ascent from many random starts, certify each (first-order residual, Δ from the
    Hessian restricted to w*⊥, Lemma-20 eigenvector check, Lemma-17 balance) and merge
    points equal up to permutations and sign symmetries of hidden neurons.

    DATA is a .npz (X, y), .h5/.hdf5 (X, y) or .csv (last column y) file.
    """
    from ..errors import InputError
    from ..io import check_output_path, kkt_tree, now_iso, provenance, write_h5
    from ..kkt import find_kkt_points

    for name, value, low in (("--restarts", restarts, 1), ("--max-steps", max_steps, 1)):
        if value < low:
            raise InputError(f"{name} must be >= {low} (got {value})")
    if not tol > 0:
        raise InputError(f"--tol must be > 0 (got {tol})")
    if not active_tol >= 0:
        raise InputError(f"--active-tol must be >= 0 (got {active_tol})")
    if out:
        check_output_path(out, force, (".h5", ".hdf5"))
    problem = build_problem(data, arch, hidden, depth, act, loss_name, reduction, seed, dtype,
                            device, require_homogeneous=True)
    console = stderr_console()
    prov = provenance(problem.data, **problem.settings, restarts=restarts, max_steps=max_steps, tol=tol)
    with console.status(f"ascent from {restarts} starts…") as status:
        def progress(step, running):
            status.update(f"ascent: step {step}, {running}/{restarts} starts still running")

        result = find_kkt_points(problem.arch, problem.X, problem.ytilde, restarts, seed,
                                 max_steps, tol, active_tol=active_tol, progress=progress)
    prov["end_time"] = now_iso()
    console.print(_table(result, problem.arch, problem))
    if result.stalled:
        console.print(f"[yellow]warning:[/] {len(result.stalled)} starts stalled above --tol {tol:g} "
                      "(𝒩 stopped improving: a kink of a non-differentiable activation); "
                      "their points are listed with converged = no")
    if result.unconverged:
        console.print(f"[yellow]warning:[/] {len(result.unconverged)} starts did not reach "
                      f"--tol {tol:g} in {max_steps} steps (raise --max-steps)")
    if out:
        write_h5(out, "kkt", kkt_tree(result, problem.arch, prov), force=force)
        console.print(f"wrote {out}")
    if as_json:
        emit_json({
            "homogeneity": result.homogeneity, "num_params": result.num_params,
            "restarts": result.restarts, "converged": result.converged,
            "points": [_point_json(p, problem.arch) for p in result.points],
        })
