"""The escape experiment: train from δ·w0 for several δ and check Theorems 4, 10 and 18.

1. The governing KKT point (Definition 2): the limit direction of the NCF flow from w0,
   approximated by the normalized ascent of :mod:`ncfkit.kkt` started at w0 itself, and
   certified (𝒩(w*), Δ, residual). Its zero neurons give the zero-preserving subset w_z
   (Lemma 17, proof of Theorem 18); for the diagonal model the zero coordinates of w*
   (∂𝓛/∂w_k ∝ w_k^{D−1}, so they stay 0 as well).
2. One batched simulation (:func:`ncfkit.dynamics.simulate`) of every δ·w0 together with
   the reference run δ_ref·w* (δ_ref < min δ).
3. Per δ: escape time beside the prediction (Theorem 4/10), the first saddle with the
   smallest Hessian eigenvalue of 𝓛 there, ‖ψ_wz‖/‖ψ‖ at escape and at the saddle
   (Theorem 18), and the distance to the reference path p(t) (Corollaries 5, 6, 11, 12).
   The reference run approximates p(t) = lim_{δ→0} ψ(t + T(δ), δw*): both runs are aligned
   at their escape events (this absorbs the O(1) constants of the theorems' time
   shifts), and the distance max ‖ψ(t_esc + s) − p(s)‖ is taken over the window
   s ∈ [−W/2, W], W = (saddle time − escape time) of the run.
4. With several δ: a least-squares fit of the escape times against ln(1/δ) (L_h = 2) or
   δ^{2−L_h} (L_h > 2) beside the predicted slope, and the empirical exponents of the path
   distance and of ‖ψ_wz‖/‖ψ‖ against δ beside the theorems'.

The command's set-up lives here too (:func:`check_settings`, :func:`kkt_point_from_file`
with its provenance checks, :func:`initial_direction`, :func:`find_governing_point` for
the three ``--init`` modes); :func:`ncfkit.api.escape` strings them together, and the
run.h5 layout is :func:`ncfkit.io.escape_record`. Training runs in phase ``train`` and the
saddle Hessians in phase ``hessians`` (:mod:`ncfkit._phases`); an interruption in the
latter keeps every finished run (:attr:`EscapeReport.interrupted`).

Why δ_ref = min δ·10⁻² (L_h = 2) or min δ·2^{−1/(L_h−2)} (L_h > 2) by default: p(t) −
ψ(t + T(δ_ref), δ_ref w*) = O(δ_ref) (Lemmas 7, 31), and after alignment at the escape
event the difference is smaller still, since along the ray through w* the flow only
leaves the ray at relative order δ^{L_h}; the factor keeps the reference cheaper than
twice the slowest run (its escape time grows like δ_ref^{2−L_h}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import clarke, theory
from ._lazy import torch
from ._phases import phase, timed
from .arrays import asarray_like, norm, to_numpy, xp
from .dynamics import (
    Objective,
    RunResult,
    Settings,
    Simulation,
    hermite_interpolate,
    min_hessian_eigenvalue,
    simulate,
)
from .errors import InputError
from .io import RUN_H5_LAYOUT, RUN_KEYS
from .kkt import Certificate, certify, clarke_ascent, normalized_ascent

__all__ = ["GoverningPoint", "zero_preserving_subset", "governing_point", "certified_point",
           "default_delta_ref", "default_max_time", "RunSummary", "Reference", "Fits",
           "EscapeReport", "run_escape", "path_distance", "check_settings", "kkt_point_from_file",
           "initial_direction", "find_governing_point", "report_json", "RUN_KEYS", "RUN_H5_LAYOUT",
           "GOVERNING_SECONDS", "governing_budget"]


@dataclass(frozen=True)
class GoverningPoint:
    """The KKT point w* whose stable set holds w0, with its certificate and w_z."""

    cert: Certificate
    source: str  # "ascent from w0", "kkt file", "find_kkt_points"
    converged: bool
    steps: int
    wz_mask: torch.Tensor  # bool (k,)
    zero_neurons: tuple[tuple[int, ...], ...] | None  # per hidden layer (mlp) or None
    flow: theory.NcfFlowEscape | None = None  # the NCF flow from w0 (escape-time prediction)

    @property
    def w_star(self) -> torch.Tensor:
        return self.cert.w


def zero_preserving_subset(arch, w_star: torch.Tensor, tol: float = 1e-3):
    """(mask (k,) bool, zero neurons per hidden layer or None) of w_z at w* (the
    architecture's :meth:`~ncfkit.models.Architecture.zero_preserving_subset`: for a
    feed-forward net the incoming and outgoing weights of hidden neurons whose row and
    column norms are ≤ tol × the largest neuron norm, Theorem 18; for the diagonal model
    the coordinates with |w*_k| ≤ tol·max|w*|)."""
    return arch.zero_preserving_subset(w_star, tol)


#: The governing point's cost cap in seconds of gradients at the cost model's one-thread
#: rates (:func:`governing_budget`): ``--governing-budget``'s default.
GOVERNING_SECONDS = 10.0


def governing_budget(arch, n: int, seconds: float | None = GOVERNING_SECONDS,
                     run_gradients: float = 0.0) -> int | None:
    """The most gradients of 𝒩 the governing point may compute (shared by the NCF flow
    from w0, the ascent and the certificate's Lanczos: :func:`governing_point`): ``seconds`` worth at
    the one-thread rate of the cheapest host engine by :func:`ncfkit.fastgd.predicted_costs`,
    or 5% of the run's ``run_gradients`` if more; None (no cap) for ``seconds`` None or
    ≤ 0. A count, not a clock: the governing point is the same on every machine, and costs
    about ``seconds`` on one like this project's (less with several BLAS threads)."""
    if seconds is None or not seconds > 0:
        return None
    from .fastgd import predicted_costs

    per_gradient = min(predicted_costs(arch, n, threads=1).values())
    return max(int(math.ceil(seconds / max(per_gradient, 1e-12))), int(0.05 * run_gradients), 50)


def certified_point(arch, X, ytilde, w, source: str, *, active_tol: float = 1e-3,
                    converged: bool = True, steps: int = 0,
                    flow: theory.NcfFlowEscape | None = None,
                    max_steps: int = 200_000, budget: int | None = None, notify=None) -> GoverningPoint:
    """Certify w as the governing point; ``flow`` defaults to the NCF flow from w itself
    (a start along w*), integrated for at most ``max_steps`` steps and ``budget``
    gradients (it need not settle where w is no exact KKT point, e.g. at a kink of ReLU).
    ``notify(event, value)`` hears ``status`` and ``flow`` progress."""
    _say(notify, "status", "certifying the governing point (residual, Δ)…")
    with timed("governing: certificate"):
        cert = certify(arch, X, ytilde, w, active_tol=active_tol, max_products=budget)
    mask, zero = zero_preserving_subset(arch, cert.w, active_tol)
    if flow is None:
        _say(notify, "status", "NCF flow from w*…")
        with timed("governing: flow"):
            flow = theory.ncf_flow_escape(arch, X, ytilde, cert.w, max_steps=max_steps, max_evals=budget,
                                          progress=_flow_progress(notify))
    return GoverningPoint(cert, source, converged, steps, mask, zero, flow)


def _flow_progress(notify):
    if notify is None:
        return None
    return lambda evals, cap, residual: notify("flow", (evals, cap, residual))


def governing_point(arch, X, ytilde, w0: torch.Tensor, *, max_steps: int = 20000,
                    tol: float = 1e-9, active_tol: float = 1e-3, budget: int | None = None,
                    notify=None) -> GoverningPoint:
    """Definition 2: the limit direction of the NCF flow from w0 (k,), integrated by
    :func:`ncfkit.theory.ncf_flow_escape` (which also predicts the escape time from w0),
    then polished to ``tol`` by the normalized ascent and certified; the ascent starts
    from where the flow stopped when it settled or ran out of ``budget``, else from w0.

    ``budget`` (:func:`governing_budget`; None: no cap) bounds the whole: the flow may
    compute 60% of it in gradients, the ascent what is left of 80% (at least 20%), the
    certificate's Lanczos a tenth in Hessian-vector products. A point that did not settle
    within it is marked not converged."""
    _say(notify, "status", "NCF flow from w0 (Definition 2)…")
    with timed("governing: flow"):
        flow = theory.ncf_flow_escape(arch, X, ytilde, w0, max_steps=max_steps,
                                      max_evals=None if budget is None else max(1, int(0.6 * budget)),
                                      progress=_flow_progress(notify))
    # settled: also at a kink; out of budget: from where the flow got. A flow stopped by
    # --max-steps starts the ascent from w0 (on a continuum of maxima, e.g. ReLU's parallel
    # neurons, the ascent from an unsettled flow's end can land on another point of it)
    usable = flow.direction is not None and (flow.settled or flow.reason == "budget")
    start = asarray_like(flow.direction, w0) if usable else w0 / norm(w0)
    # relu / leaky: the ascent that converges at kinks (stratum Newton + Clarke certificate)
    ascend = clarke_ascent if clarke.applies(arch) else normalized_ascent
    steps = max_steps if budget is None else \
        max(1, min(max_steps, max(int(0.2 * budget), int(0.8 * budget) - flow.evaluations)))
    _say(notify, "status", "NCF ascent to the governing point…")
    with timed("governing: ascent"):
        asc = ascend(arch, X, ytilde, start.reshape(1, -1), max_steps=steps, tol=tol,
                     progress=None if notify is None else lambda step, running: notify("ascent", (step, running)))
    return certified_point(arch, X, ytilde, asc.u[0], "NCF flow from w0", active_tol=active_tol,
                           converged=bool(asc.converged[0]) and flow.settled,  # settled: also at a kink
                           steps=flow.steps + int(asc.steps[0]), flow=flow,
                           budget=None if budget is None else max(60, budget // 10), notify=notify)


def default_delta_ref(deltas, L_h: float) -> float:
    """δ_ref of the reference run (see the module doc)."""
    d = float(min(deltas))
    return d * 1e-2 if L_h == 2 else d * 2.0 ** (-1.0 / (L_h - 2.0))


def default_max_time(deltas, point: GoverningPoint | None) -> float | None:
    """3 × the longest escape time predicted by the NCF flow from w0 (enough to reach the
    first saddle: after escape it is O(1) away); None when no escape is predicted."""
    if point is None or point.flow is None:
        return None
    times = [float(point.flow.escape_time(float(d))) for d in deltas]
    if not all(math.isfinite(t) and t > 0 for t in times):
        return None
    return 3.0 * max(times)


@dataclass(frozen=True)
class RunSummary:
    """Measurement beside theory for one δ."""

    delta: float
    escaped: bool
    escape_time: float | None
    predicted_escape_time: float | None  # docs/theory.md §2 (leading order along w*)
    predicted_escape_time_w0: float | None  # the NCF flow from w0 (theory.ncf_flow_escape)
    saddle_time: float | None
    saddle_loss: float | None
    saddle_grad_norm: float | None
    saddle_min_hessian_eig: float | None
    saddle_kind: str | None  # "strict saddle" / "minimum" / "degenerate" / None
    saddle_left: bool
    sparsity_ratio_escape: float | None
    sparsity_ratio_saddle: float | None
    path_distance: float | None
    saddle_distance_to_p_star: float | None
    status: str
    message: str
    final_time: float
    final_loss: float
    result: RunResult = field(repr=False)
    #: every plateau, measured (:func:`ncfkit.phases.analyse_plateaus`, ``to_dict`` form);
    #: filled for ``until`` = converged or saddles:K with K >= 2
    plateaus: list = field(default_factory=list)


@dataclass(frozen=True)
class Reference:
    """The reference run from δ_ref·w*: p(s) = its trajectory at s + its escape time."""

    delta_ref: float
    result: RunResult
    p_star_loss: float | None
    p_star_grad_norm: float | None
    p_star_min_hessian_eig: float | None

    @property
    def escaped(self) -> bool:
        return self.result.escape is not None


@dataclass(frozen=True)
class Fits:
    """Fits over δ (None where fewer than two δ qualify)."""

    escape: theory.LineFit | None
    regressor: str | None  # "ln(1/delta)" or "delta^(2-L_h)"
    predicted_slope: float | None
    path: theory.LineFit | None
    path_exponent_theory: float | None
    sparsity: theory.LineFit | None
    sparsity_exponent_theory: float | None
    predicted_slope_gd: float | None = None  # L_h = 2 and GD: η/ln(1 + 2𝒩η)
    predicted_slope_w0: float | None = None  # from the NCF flow from w0 (T_b for L_h > 2)


@dataclass(frozen=True)
class EscapeReport:
    arch: object
    homogeneity: float | None
    num_params: int
    point: GoverningPoint | None
    runs: list[RunSummary]
    reference: Reference | None
    fits: Fits
    simulation: Simulation = field(repr=False)
    interrupted: KeyboardInterrupt | None = None  # what stopped the command, if anything
    phase: str | None = None  # the phase it stopped in (ncfkit._phases)

    @property
    def status(self) -> str:
        """``interrupted`` if the command was, else ``diverged`` or ``failed`` if a
        requested run was, else ``complete``. The reference run does not count: when only it
        fails, its status and message say so and every requested δ stands."""
        if self.interrupted is not None or self.simulation.interrupted is not None:
            return "interrupted"
        for s in ("diverged", "failed"):
            if any(r.status == s for r in self.runs):
                return s
        return "complete"

    @property
    def message(self) -> str:
        """One line on what went wrong ('' when every run is complete and the reference too)."""
        if self.status == "interrupted":
            return self.runs[0].message if self.runs and self.runs[0].message else "interrupted"
        parts = [f"δ = {r.delta:g}: {r.message}" for r in self.runs if r.status in ("diverged", "failed")]
        if self.reference is not None and self.reference.result.status in ("diverged", "failed"):
            parts.append(f"reference run: {self.reference.result.message}")
        return "; ".join(parts)

    @property
    def predictions(self) -> dict | None:
        """The theorems' numbers for w* (None without a homogeneous governing point):
        the escape-time slope (Theorems 4, 10) and the exponents of the path distance and of
        the sparsity ratio (Corollaries 6, 12; Theorem 18)."""
        point, L_h = self.point, self.homogeneity
        if point is None or L_h is None or L_h < 2:
            return None
        ncf, Delta = point.cert.ncf, point.cert.delta
        pos = ncf > 0 and Delta > 0
        return {"escape_slope": theory.escape_slope(ncf, L_h), "regressor": self.fits.regressor,
                "path_distance_exponent": theory.path_distance_exponent(Delta, ncf, L_h) if pos else None,
                "sparsity_exponent": theory.sparsity_exponent(Delta, ncf, L_h) if pos else None}


def _ratio(mask, w: np.ndarray) -> float | None:
    if mask is None or not bool(mask.any()):
        return None
    n = float(np.linalg.norm(w))
    return float(np.linalg.norm(w[to_numpy(mask)])) / n if n > 0 else None


def path_distance(run: RunResult, ref: RunResult) -> float | None:
    """max ‖ψ(t_esc + s) − p(s)‖ over s ∈ [−W/2, W] at the run's trajectory samples and
    its escape and saddle snapshots; p is the reference run aligned at its escape event,
    interpolated (cubic Hermite with ẇ = −∇𝓛). None when either run did not escape or
    the run kept no trajectory."""
    if run.escape is None or ref.escape is None or run.trajectory is None or ref.trajectory is None:
        return None
    t_esc = run.escape.time
    t_end = run.saddle.time if run.saddle is not None else run.final_time
    W = max(t_end - t_esc, 0.0)
    tr = run.trajectory
    times = [tr["time"]]
    states = [tr["w"]]
    for name in ("escape", "saddle"):
        if name in run.snapshots:
            times.append(np.array([run.snapshots[name].time]))
            states.append(run.snapshots[name].w[None, :])
    t = np.concatenate(times)
    w = np.concatenate(states)
    s = t - t_esc
    sel = (s >= -W / 2) & (s <= W)
    if not sel.any():
        return None
    rt = ref.trajectory
    p = hermite_interpolate(s[sel] + ref.escape.time, rt["time"], rt["w"], -rt["grad"])
    d = np.linalg.norm(w[sel] - p, axis=1)
    d = d[np.isfinite(d)]
    return float(d.max()) if d.size else None


def _saddle_info(objective: Objective, run: RunResult, like, budget: int | None = None):
    if run.saddle is None:
        return None, None
    w = asarray_like(run.snapshots["saddle"].w, like)
    h = min_hessian_eigenvalue(objective, w, max_products=budget)
    return h.min, h.kind


def run_escape(objective: Objective, w0: torch.Tensor, deltas, settings: Settings, *,
               method: str = "gd", point: GoverningPoint | None = None,
               delta_ref: float | None | str = "auto", observer=None, notify=None,
               budget: int | None = None) -> EscapeReport:
    """Train from δ·w0 for every δ in ``deltas`` (and the reference run), then analyse.

    Args:
        objective: the training loss.
        w0: the initial direction (k,), unit norm.
        deltas: initialization scales δ > 0.
        settings: see :class:`ncfkit.dynamics.Settings`.
        method: a key of :data:`ncfkit.dynamics.METHODS`.
        point: the governing KKT point (None: no theory, e.g. a non-homogeneous net).
        delta_ref: δ of the reference run, ``"auto"`` (:func:`default_delta_ref`) or None
            for no reference run.
        observer: progress callback (rows: the δ in order, then the reference).
        notify: ``notify(event, text)`` hears a ``status`` as each saddle's Hessian starts.
        budget: the most Hessian-vector products of each saddle's λ_min (Lanczos above
            :func:`ncfkit.spectra.dense_max` weights; None: until converged).
    """
    arch = objective.arch
    L_h = arch.homogeneity
    deltas = [float(d) for d in deltas]
    theory_ok = point is not None and L_h is not None and L_h >= 2
    if point is None or not theory_ok:
        delta_ref = None
    elif delta_ref == "auto":
        delta_ref = default_delta_ref(deltas, L_h)
    rows = [d * w0 for d in deltas]
    if delta_ref is not None:
        rows.append(float(delta_ref) * asarray_like(point.w_star, w0))
    W0 = xp(w0).stack(rows)
    with phase("train"):
        sim = simulate(objective, W0, settings, method=method,
                       w_star=None if point is None else asarray_like(point.w_star, w0),
                       wz_mask=None if point is None else point.wz_mask, observer=observer)

    # λ_min(∇²𝓛) at each saddle (the reference's first); an interruption here keeps the
    # finished runs, with the eigenvalues not yet computed left unknown
    n = len(deltas)
    order = ([n] if delta_ref is not None else []) + list(range(n))
    hessians: dict[int, tuple[float | None, str | None]] = {}
    interrupted, stopped_in = None, None
    try:
        with phase("hessians"):
            for i in order:
                r = sim.runs[i]
                if i == n and (r.saddle is None or r.status == "interrupted"):
                    continue
                if i < n and r.status == "interrupted" and r.saddle is None:
                    continue
                _say(notify, "status", "smallest Hessian eigenvalue at the "
                     + ("reference run's saddle…" if i == n else f"saddle of δ = {deltas[i]:g}…"))
                hessians[i] = _saddle_info(objective, r, w0, budget)
    except KeyboardInterrupt as e:
        interrupted, stopped_in = e, "hessians"

    reference = None
    if delta_ref is not None:
        ref = sim.runs[-1]
        reference = Reference(float(delta_ref), ref,
                              None if ref.saddle is None else ref.saddle.loss,
                              None if ref.saddle is None else ref.saddle.grad_norm,
                              hessians.get(n, (None, None))[0])

    ncf = point.cert.ncf if point is not None else None
    mask = point.wz_mask if point is not None else None
    plateaus: dict[int, list] = {}
    if _follows_plateaus(settings):
        with phase("plateaus"):
            for i, (d, r) in enumerate(zip(deltas, sim.runs, strict=False)):
                _say(notify, "status", f"the plateaus of δ = {d:g}: Hessians, small units, the next to grow…")
                known = {}
                if i in hessians and hessians[i][0] is not None and "saddle" in r.snapshots:
                    known[r.snapshots["saddle"].time] = hessians[i]  # the first saddle's, computed above
                plateaus[i] = _plateaus(objective, r, mask, settings, known)
    runs = []
    for i, (d, r) in enumerate(zip(deltas, sim.runs, strict=False)):
        lam, kind = hessians.get(i, (None, None))
        pred = theory.escape_time(d, ncf, L_h) if theory_ok and ncf > 0 else None
        pred_w0 = None
        if theory_ok and point.flow is not None and point.flow.ncf > 0:
            pred_w0 = float(point.flow.escape_time(d))
        pdist = p_star_dist = None
        if reference is not None:
            pdist = path_distance(r, reference.result)
            if r.saddle is not None and reference.result.saddle is not None:
                p_star_dist = float(np.linalg.norm(r.snapshots["saddle"].w
                                                   - reference.result.snapshots["saddle"].w))
        runs.append(RunSummary(
            delta=d, escaped=r.escape is not None,
            escape_time=None if r.escape is None else r.escape.time, predicted_escape_time=pred,
            predicted_escape_time_w0=pred_w0,
            saddle_time=None if r.saddle is None else r.saddle.time,
            saddle_loss=None if r.saddle is None else r.saddle.loss,
            saddle_grad_norm=None if r.saddle is None else r.saddle.grad_norm,
            saddle_min_hessian_eig=lam, saddle_kind=kind, saddle_left=r.saddle_left,
            sparsity_ratio_escape=_ratio(mask, r.snapshots["escape"].w) if "escape" in r.snapshots else None,
            sparsity_ratio_saddle=_ratio(mask, r.snapshots["saddle"].w) if "saddle" in r.snapshots else None,
            path_distance=pdist, saddle_distance_to_p_star=p_star_dist,
            status=r.status, message=r.message, final_time=r.final_time,
            final_loss=r.snapshots["final"].loss, result=r, plateaus=plateaus.get(i, [])))
    fits = Fits(None, None, None, None, None, None, None)
    if theory_ok:
        fits = _fits(runs, point, L_h, settings.lr if method == "gd" else None)
    if sim.interrupted is not None and interrupted is None:
        interrupted, stopped_in = sim.interrupted, "train"
    return EscapeReport(arch, L_h, arch.num_params, point, runs, reference, fits, sim,
                        interrupted, stopped_in)


def _follows_plateaus(settings: Settings) -> bool:
    """Whether the runs are followed past their first saddle (then every plateau is analysed)."""
    from .dynamics import parse_until

    return parse_until(settings.until) != 1


def _plateaus(objective: Objective, run: RunResult, mask, settings: Settings, known: dict | None = None) -> list:
    """Every plateau of a run followed past its first saddle (docs/phases.md); ``known``:
    λ_min and kind at snapshot times where they are computed already."""
    from .phases import analyse_plateaus, plateaus_json

    if not _follows_plateaus(settings) or run.status == "interrupted":
        return []
    return plateaus_json(analyse_plateaus(objective, run, wz_mask=mask, known_hessians=known))


def _fits(runs: list[RunSummary], point: GoverningPoint, L_h: float, gd_lr: float | None) -> Fits:
    ncf, Delta = point.cert.ncf, point.cert.delta

    def usable(attr):
        pairs = [(r.delta, getattr(r, attr)) for r in runs
                 if getattr(r, attr) is not None and math.isfinite(getattr(r, attr))
                 and (attr == "escape_time" or getattr(r, attr) > 0)]
        return pairs if len({d for d, _ in pairs}) >= 2 else None

    esc = usable("escape_time")
    path = usable("path_distance")
    spars = usable("sparsity_ratio_escape")
    ok = ncf > 0 and Delta > 0
    return Fits(
        escape=theory.fit_escape_times(*zip(*esc, strict=False), L_h) if esc else None,
        regressor="ln(1/delta)" if L_h == 2 else f"delta^(2-L_h) = delta^{2 - L_h:g}",
        predicted_slope=theory.escape_slope(ncf, L_h),
        path=theory.fit_power_law(*zip(*path, strict=False)) if path else None,
        path_exponent_theory=theory.path_distance_exponent(Delta, ncf, L_h) if ok else None,
        sparsity=theory.fit_power_law(*zip(*spars, strict=False)) if spars else None,
        sparsity_exponent_theory=theory.sparsity_exponent(Delta, ncf, L_h) if ok else None,
        predicted_slope_gd=None if gd_lr is None else theory.escape_slope_gd(ncf, L_h, gd_lr),
        predicted_slope_w0=_flow_slope(point.flow))


def _flow_slope(flow: theory.NcfFlowEscape | None) -> float | None:
    """dT_esc/dx(δ) for a start along w0: 1/(2𝒩) (L_h = 2: w0 only shifts the intercept)
    or the blow-up time T_b of the NCF flow from w0 (L_h > 2)."""
    if flow is None or not flow.ncf > 0:
        return None
    return 1.0 / (2.0 * flow.ncf) if flow.L_h == 2 else flow.blowup_time


# --------------------------------------------------------------------------- the command's set-up


def check_settings(deltas, *, lr: float, eps: float, max_time: float | None, point: int,
                   delta_ref, restarts: int, max_steps: int, tol: float, rtol: float | None):
    """Validate the settings of an escape experiment with the CLI's messages (each names
    its flag); return ``delta_ref`` as :func:`run_escape` takes it (``"auto"``, None or a
    number). Raise :class:`~ncfkit.errors.InputError`."""
    for name, value in (("--restarts", restarts), ("--max-steps", max_steps)):
        if value < 1:
            raise InputError(f"{name} must be >= 1 (got {value})")
    if not (math.isfinite(tol) and tol > 0):
        raise InputError(f"--tol {tol:g}: must be finite and > 0")
    if not deltas:
        raise InputError("give at least one --delta")
    for d in deltas:
        if not (math.isfinite(d) and d > 0):
            raise InputError(f"--delta {d:g}: the initialization scale must be finite and > 0")
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"--lr {lr:g}: the step size must be finite and > 0")
    if not 0 < eps < 1:
        raise InputError(f"--eps {eps:g}: must lie in (0, 1) (escape: loss < (1 - eps)·loss(0))")
    if max_time is not None and not (math.isfinite(max_time) and max_time > 0):
        raise InputError(f"--max-time {max_time:g}: must be finite and > 0")
    if point < 0:
        raise InputError(f"--point {point}: must be >= 0")
    if rtol is not None and not (rtol > 0 and rtol < 1):
        raise InputError(f"--rtol must be in (0, 1) (got {rtol:g})")
    if delta_ref is None or delta_ref in ("auto", "none"):
        return None if delta_ref in (None, "none") else "auto"
    try:
        v = float(delta_ref)
    except ValueError:
        raise InputError(f"--delta-ref {delta_ref!r}: a number, 'auto' or 'none'") from None
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"--delta-ref {delta_ref}: must be finite and > 0")
    return v


def kkt_point_from_file(path, index: int, problem):
    """(w* as the problem's kind of array, its record) of point ``index`` of a kkt file
    made for this data and architecture (checked against the file's provenance: data
    sha256 and architecture). Raise :class:`~ncfkit.errors.InputError` otherwise."""
    import json

    from .io import read_kkt_point

    rec, prov = read_kkt_point(path, index)
    sha = prov.get("data_sha256")
    if sha != problem.data.sha256:
        raise InputError(f"{path}: made for other data (data sha256 {str(sha)[:12]}…, "
                         f"this data {problem.data.sha256[:12]}…)")
    spec = prov.get("architecture")
    try:
        spec = json.loads(spec) if isinstance(spec, str) else spec
    except ValueError:
        spec = None
    if spec != problem.arch.to_dict():
        raise InputError(f"{path}: made for another architecture ({spec}; this run: "
                         f"{problem.arch.to_dict()})")
    w = np.asarray(rec["w"], dtype=np.float64).ravel()
    if w.size != problem.arch.num_params or not np.isfinite(w).all() or not np.linalg.norm(w) > 0:
        raise InputError(f"{path}: point {index} has unusable weights")
    return problem.array(w), rec


def initial_direction(init: str, problem, seed: int):
    """(w0 unit (k,), how) for ``init`` ``"random"`` or a weight FILE. random: torch's
    generator seeded with ``seed``, in the problem's dtype (the directions of every ncfkit
    version so far, so published seeds still give the same runs; this imports torch, also
    on the host)."""
    from . import models
    from .io import read_weights

    arch = problem.arch
    if init == "random":
        gen = torch.Generator(device="cpu").manual_seed(seed)
        dtype = getattr(torch, np.dtype(problem.dtype).name) if problem.host else problem.dtype
        w0 = models.random_direction(arch.num_params, gen, dtype=dtype)
        return problem.array(w0.numpy()), f"random (seed {seed})"
    w = np.asarray(read_weights(init, arch), dtype=np.float64)
    norm_w = float(np.linalg.norm(w))
    if not norm_w > 0:
        raise InputError(f"--init {init}: the weights are all zero; no direction to start along")
    return problem.array(w / norm_w), f"file {init}"


def _say(notify, event: str, text: str) -> None:
    if notify is not None:
        notify(event, text)


def find_governing_point(init: str, kkt_file, point: int, problem, *, seed: int, restarts: int,
                         max_steps: int, tol: float, notify=None, budget: int | None = None):
    """(w0, GoverningPoint or None, how w0 was chosen) for the three ``init`` modes:
    ``"kkt"`` (w* of ``kkt_file``'s point, or of a fresh KKT search), ``"random"`` or a
    weight FILE (then the NCF flow from w0 finds the governing point, Definition 2).
    ``notify(event, text)`` hears ``status`` (a phase starts), ``info``, ``note``,
    ``warning``, and the progress of the NCF flow (``flow``) and ascent (``ascent``).
    ``budget``: :func:`governing_budget`'s gradient cap per phase (None: none)."""
    from .kkt import find_kkt_points

    arch = problem.arch
    homogeneous = arch.homogeneity is not None
    from_file = kkt_point_from_file(kkt_file, point, problem) if kkt_file else None  # checked first
    if init == "kkt":
        if not homogeneous:
            raise InputError(f"--init kkt: the activation {arch.activation.name} is not homogeneous; "
                             "there is no NCF and no KKT point to start along")
        if from_file is not None:
            gp = certified_point(arch, problem.X, problem.ytilde, from_file[0],
                                 f"kkt file {kkt_file} point {point}", max_steps=max_steps, budget=budget,
                                 notify=notify)
        else:
            _say(notify, "status", f"finding KKT points ({restarts} restarts)…")
            res = find_kkt_points(arch, problem.X, problem.ytilde, restarts, seed, max_steps, tol)
            if not res.points:
                raise InputError("--init kkt: no KKT point converged (raise --max-steps or --restarts)")
            if point >= len(res.points):
                raise InputError(f"--point {point} out of range: found points 0..{len(res.points) - 1}")
            gp = certified_point(arch, problem.X, problem.ytilde, res.points[point].cert.w,
                                 f"find_kkt_points (seed {seed}, {restarts} restarts) point {point}",
                                 max_steps=max_steps, budget=budget, notify=notify)
        return gp.w_star, gp, "along w*"
    w0, how = initial_direction(init, problem, seed)
    if not homogeneous:
        _say(notify, "note", f"{arch.activation.name} is not homogeneous: no NCF, no KKT point, "
                             "no predictions (training and events only)")
        return w0, None, how
    gp = governing_point(arch, problem.X, problem.ytilde, w0, max_steps=max_steps, tol=tol, budget=budget,
                         notify=notify)
    if gp.flow is not None and gp.flow.reason == "budget":
        _say(notify, "warning", f"the NCF flow from w0 reached its cost cap ({gp.flow.evaluations} gradients, "
                                f"--governing-budget) before its direction settled (residual "
                                f"{gp.flow.residual:.2g}); the governing point and the predictions from w0 are "
                                "approximate")
    elif not gp.converged:
        _say(notify, "warning", f"the NCF flow / ascent from w0 did not settle within "
                                f"{max_steps} steps (--tol {tol:g}); the governing point is approximate")
    if from_file is not None:  # say whether the file's point is the one that governs
        ncf = from_file[1].get("ncf")
        same = ncf is not None and abs(ncf - gp.cert.ncf) <= 1e-6 * max(abs(ncf), 1e-300)
        shown = "—" if ncf is None or ncf != ncf else format(ncf, ".8g")
        _say(notify, "info", f"the governing point {'is' if same else 'is not'} point {point} of "
                             f"{kkt_file} (𝒩 = {gp.cert.ncf:.8g} vs {shown})")
    return w0, gp, how


# --------------------------------------------------------------------------- serialisation


def report_json(report: EscapeReport) -> dict:
    """The JSON object of ``ncfkit escape --json`` (read off the run.h5 record of
    :func:`ncfkit.io.escape_record`, so the two agree)."""
    from .io import escape_record, escape_summary

    return escape_summary(escape_record(report, {}, report.message))


from ._callable import make_callable  # noqa: E402  (ncfkit.escape(...) calls ncfkit.api.escape)

make_callable(__name__)
