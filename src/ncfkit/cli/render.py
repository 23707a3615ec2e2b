"""What the commands print on stderr: the tables and lines of each result (progress:
:mod:`ncfkit.cli.progress`; escape: :mod:`ncfkit.cli.render_escape`)."""

from __future__ import annotations

import math


def fmt(v, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


# --------------------------------------------------------------------------- kkt


def kkt_table(result, arch):
    from rich.table import Table

    t = Table(title=f"KKT points of the constrained NCF — {arch.describe()}, "
                    f"L_h = {result.homogeneity:g}, k = {result.num_params}, "
                    f"{result.converged}/{result.restarts} restarts converged")
    cols = ["#", "𝒩(w*)", "Δ", "residual", "Lemma 20", "kind", "2nd order", "count", "basin", "converged"]
    neurons = arch.has_hidden_neurons
    if neurons:
        cols[5:5] = ["active/layer", "balance"]
    for c in cols:
        t.add_column(c, justify="right")
    for i, p in enumerate(result.points):
        c = p.cert
        row = [str(i), f"{c.ncf:.10g}", f"{c.delta:.6g}", f"{c.residual:.1e}", f"{c.eig_error:.1e}",
               c.kind, "yes" if c.second_order else "no", str(p.count), f"{p.basin_fraction:.0%}",
               "yes" if p.converged else ("no" if p.reason else "stalled")]
        if neurons:
            row[5:5] = [",".join(map(str, c.active_per_layer)), fmt(c.balance_error, ".1e")]
        t.add_row(*row)
    return t


def kkt_report(console, result, arch, tol: float, max_steps: int) -> None:
    console.print(kkt_table(result, arch))
    if result.stalled:
        console.print(f"[yellow]warning:[/] {len(result.stalled)} starts stalled above --tol {tol:g} "
                      "(𝒩 stopped improving: a kink of a non-differentiable activation); "
                      "their points are listed with converged = no")
    for start, reason in getattr(result, "reasons", ()):  # relu / leaky: why a start is not certified
        console.print(f"[yellow]warning:[/] start {start} not converged: {reason}")
    if result.unconverged:
        console.print(f"[yellow]warning:[/] {len(result.unconverged)} starts did not reach "
                      f"--tol {tol:g} in {max_steps} steps (raise --max-steps)")


# --------------------------------------------------------------------------- sparsity


def ranges(indices) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    out, run = [], []
    for j in indices:
        if run and j == run[-1] + 1:
            run.append(j)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [j]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out) or "—"


def sparsity_report(console, source, report, verify) -> None:
    from rich.table import Table

    act = report.activity
    where = (f"point {source.point} (𝒩 = {source.ncf:.6g})" if source.kind == "kkt" else "weight snapshot")
    t = Table(title=f"{source.path}: {where} — {source.arch.describe()}, "
                    f"threshold {report.tol:g} × largest neuron norm")
    for c in ("layer", "width", "active", "active neurons", "zero", "lopsided"):
        t.add_column(c, justify="left" if "neurons" in c else "right")
    for l, width in enumerate(act.widths):
        t.add_row(str(l + 1), str(width), str(len(act.active[l])), ranges(act.active[l]),
                  str(len(act.zero[l])), ranges(act.lopsided[l]))
    console.print(t)
    console.print(f"w_z (Lemma 16): {report.zero_preserving_size} of {report.num_params} weights "
                  f"({report.zero_preserving_fraction:.1%}); balance error (Lemma 17): "
                  f"{report.balance_error:.2e}")
    outside = report.outside_per_matrix(source.arch)
    sizes = [int(math.prod(s)) for s in source.arch.weight_shapes]
    pairs = zip(source.arch.weight_names, outside, sizes, strict=True)
    console.print("weights outside w_z: " + ", ".join(f"{name} {n}/{size}" for name, n, size in pairs))
    if report.lopsided:
        console.print(f"[yellow]warning:[/] {report.lopsided} lopsided neuron(s): row small but "
                      "column not (or the reverse); at a clean KKT point Lemma 17 forbids this. "
                      "They are not in w_z.")
    if verify is None:
        return
    c = {r.part: r for r in verify.controls}
    console.print(
        f"verify: {verify.steps} GD steps, η = {verify.lr:.3g}, start norm {verify.init_scale:g}, "
        f"loss {verify.loss_initial:.6g} → {verify.loss_final:.6g}; max |w_z| = {verify.wz_max_abs:g}; "
        f"other weights moved by {verify.relative_change:.3g} (relative)")
    for part, what in (("rows", "incoming weights only"), ("columns", "outgoing weights only")):
        r = c[part]
        console.print(f"  control, {what}: max |zeroed| = {r.max_abs:.3g} → "
                      f"{'left 0' if r.left_zero else 'stayed 0'}"
                      f"{'' if r.left_zero == r.expected_to_leave else ' (unexpected)'}")
    console.print("[green]verified[/]: w_z stays exactly 0" if verify.verified
                  else f"[red]not verified[/]: {verify.reason}")
