"""What ``ncfkit escape`` prints on stderr: the table of runs and the lines beside theory."""

from __future__ import annotations

from .render import fmt


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
    # a net that is not homogeneous (tanh, GELU) has no NCF theory: its theory columns say n/a
    theory = fmt if report.homogeneity is not None else (lambda v, spec=None: "n/a")
    for r in report.runs:
        ratio = (r.escape_time / r.predicted_escape_time
                 if r.escape_time is not None and r.predicted_escape_time else None)
        t.add_row(fmt(r.delta, ".3g"), fmt(r.escape_time, ".6g"), theory(r.predicted_escape_time, ".6g"),
                  theory(ratio, ".4f"), theory(r.predicted_escape_time_w0, ".6g"), fmt(r.saddle_time, ".6g"),
                  fmt(r.saddle_loss, ".6g"), fmt(r.saddle_grad_norm, ".2e"), fmt(r.saddle_min_hessian_eig, ".4g"),
                  theory(r.sparsity_ratio_escape, ".2e"), theory(r.sparsity_ratio_saddle, ".2e"),
                  theory(r.path_distance, ".2e"), r.status)
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
        for q in r.plateaus if len(r.plateaus) >= 2 else ():  # --until saddles:K / converged
            small = (f"; of plateau {q['index'] - 1}'s small neurons, those still small: ‖ψ_Z'‖/‖ψ‖ = "
                     f"{fmt(q.get('prev_zero_stayed_ratio'), '.2g')} (at most "
                     f"{fmt(q.get('prev_zero_stayed_max_ratio'), '.2g')} in between)"
                     if q.get("prev_zero_stayed_ratio") is not None else "")
            ended = "" if q.get("confirmed", True) else " (unconfirmed: the run ended in it)"
            lines.append(f"δ = {r.delta:.3g}: plateau {q['index']} at t = {fmt(q.get('time'), '.6g')}, "
                         f"loss {fmt(q.get('loss'), '.6g')}, ‖∇𝓛‖ {fmt(q.get('grad_norm'), '.2e')}, "
                         f"{q.get('kind') or 'kind n/a'}{ended}, "
                         f"active per layer {q.get('active_per_layer')}{small}")
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
