"""What the commands print on stderr: progress, notes, and the tables of each result."""

from __future__ import annotations

import math
from typing import Any


def fmt(v, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


class ConsoleProgress:
    """The ``progress(event, value)`` of :mod:`ncfkit.api` on a rich console: a spinner
    per phase, notes and warnings as lines, the KKT ascent in the spinner, training as a
    bar on a terminal (a line every few seconds off one, :mod:`ncfkit._progress`).
    Use as a context manager, so the live displays stop however the call ends."""

    def __init__(self, console, *, restarts: int | None = None, n_deltas: int = 1):
        self.console, self.restarts, self.n_deltas = console, restarts, n_deltas
        self._status = self._bar = None

    def __call__(self, event: str, value: Any) -> None:
        if event == "status":
            self._stop()
            self._status = self.console.status(value)
            self._status.start()
        elif event in ("info", "note", "warning"):
            prefix = "" if event == "info" else f"[yellow]{event}:[/] "
            self.console.print(prefix + value)
        elif event == "ascent" and self._status is not None:
            step, running = value
            self._status.update(f"ascent: step {step}, {running}/{self.restarts} starts still running")
        elif event == "training":
            self._training(value)

    def _training(self, p) -> None:
        from .._progress import make_progress

        if self._bar is None:
            self._stop()
            self._bar = make_progress("escape", total=p.max_time, unit="t", console=self.console)
            self._bar.__enter__()
        phases = p.phases[:self.n_deltas]
        counts: dict[str, int] = {}
        for ph in phases:
            counts[ph] = counts.get(ph, 0) + 1
        desc = ", ".join(f"{ph} ×{c}" if len(phases) > 1 else ph for ph, c in counts.items())
        losses = [x for x in p.losses[:self.n_deltas] if x == x]
        text = desc + (f", loss {min(losses):.6g}" if losses else "")
        self._bar.update(min(p.time, p.max_time), text)

    def _stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ConsoleProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop()


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
               "yes" if p.converged else "stalled"]
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
    if result.unconverged:
        console.print(f"[yellow]warning:[/] {len(result.unconverged)} starts did not reach "
                      f"--tol {tol:g} in {max_steps} steps (raise --max-steps)")


# --------------------------------------------------------------------------- escape


def escape_table(report, arch, how: str):
    from rich.table import Table

    c = report.point.cert if report.point is not None else None
    title = f"escape — {arch.describe()}, init {how}"
    if c is not None:
        title += f", L_h = {report.homogeneity:g}, 𝒩(w*) = {c.ncf:.6g}, Δ = {c.delta:.4g}"
    t = Table(title=title)
    cols = ["δ", "T_esc", "predicted", "ratio", "pred. (w0)", "T_saddle", "𝓛(saddle)", "‖∇𝓛‖", "λ_min(∇²𝓛)",
            "‖ψ_wz‖/‖ψ‖ esc", "saddle", "‖ψ−p‖", "status"]
    for col in cols:
        t.add_column(col, justify="right")
    for r in report.runs:
        ratio = (r.escape_time / r.predicted_escape_time
                 if r.escape_time is not None and r.predicted_escape_time else None)
        t.add_row(fmt(r.delta, ".3g"), fmt(r.escape_time, ".6g"), fmt(r.predicted_escape_time, ".6g"),
                  fmt(ratio, ".4f"), fmt(r.predicted_escape_time_w0, ".6g"), fmt(r.saddle_time, ".6g"),
                  fmt(r.saddle_loss, ".6g"), fmt(r.saddle_grad_norm, ".2e"), fmt(r.saddle_min_hessian_eig, ".4g"),
                  fmt(r.sparsity_ratio_escape, ".2e"), fmt(r.sparsity_ratio_saddle, ".2e"),
                  fmt(r.path_distance, ".2e"), r.status)
    return t


def escape_lines(report, arch) -> list[str]:
    lines = []
    p = report.point
    if p is not None and p.cert.active_neurons is not None:
        act = "; ".join(f"layer {l}: {list(a)}" for l, a in enumerate(p.cert.active_neurons, start=1))
        lines.append(f"governing KKT point ({p.source}): active neurons {act}; "
                     f"w_z = {int(p.wz_mask.sum())} of {arch.num_params} weights")
    elif p is not None:
        lines.append(f"governing KKT point ({p.source}): w* = "
                     f"{[round(float(x), 6) + 0.0 for x in p.w_star[:8]]}; w_z = {int(p.wz_mask.sum())} coordinates")
    f = report.fits
    if f.escape is not None:
        extra = f"; GD with this step: {f.predicted_slope_gd:.6g}" if f.predicted_slope_gd else ""
        if f.predicted_slope_w0 is not None and report.homogeneity != 2:
            extra += f"; NCF flow from w0: {f.predicted_slope_w0:.6g}"
        lines.append(f"escape-time fit against {f.regressor}: slope {f.escape.slope:.6g}, "
                     f"predicted {f.predicted_slope:.6g} (along w*){extra}, r² = {f.escape.r2:.6f}")
    if f.path is not None:
        lines.append(f"path distance ~ δ^{f.path.slope:.3f} (Theorem bound exponent {fmt(f.path_exponent_theory)})")
    if f.sparsity is not None:
        lines.append(f"‖ψ_wz‖/‖ψ‖ at escape ~ δ^{f.sparsity.slope:.3f} (Theorem 18 bound exponent "
                     f"{fmt(f.sparsity_exponent_theory)})")
    ref = report.reference
    if ref is not None:
        lines.append(f"reference p(t) from δ_ref = {ref.delta_ref:.3g}: "
                     + (f"p* loss {fmt(ref.p_star_loss, '.6g')}, ‖∇𝓛(p*)‖ {fmt(ref.p_star_grad_norm, '.2e')}, "
                        f"λ_min {fmt(ref.p_star_min_hessian_eig, '.4g')}"
                        if ref.p_star_loss is not None else f"no saddle reached ({ref.result.status})"))
        if ref.result.status in ("diverged", "failed"):
            lines.append(f"[yellow]warning:[/] the reference run {ref.result.status}: {ref.result.message} "
                         "(the requested runs stand; no path distances)")
    for r in report.runs:
        if r.saddle_kind is not None:
            what = {"strict saddle": "a strict saddle (λ_min < 0)", "minimum": "a minimum (λ_min > 0)",
                    "degenerate": "degenerate to second order (λ_min ≈ 0)"}[r.saddle_kind]
            lines.append(f"δ = {r.delta:.3g}: the first plateau after escape is {what}"
                         + ("" if r.saddle_left else " (the run ended there)"))
        elif r.escaped:
            lines.append(f"δ = {r.delta:.3g}: escaped but no saddle plateau by t = {r.final_time:.6g}")
        else:
            lines.append(f"δ = {r.delta:.3g}: did not escape by t = {r.final_time:.6g}")
    return lines


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
