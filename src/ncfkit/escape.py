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

Why δ_ref = min δ·10⁻² (L_h = 2) or min δ·2^{−1/(L_h−2)} (L_h > 2) by default: p(t) −
ψ(t + T(δ_ref), δ_ref w*) = O(δ_ref) (Lemmas 7, 31), and after alignment at the escape
event the difference is smaller still, since along the ray through w* the flow only
leaves the ray at relative order δ^{L_h}; the factor keeps the reference cheaper than
twice the slowest run (its escape time grows like δ_ref^{2−L_h}).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from . import theory
from ._lazy import torch
from .arrays import asarray_like, nonzero, norm, to_numpy, xp
from .dynamics import (
    Objective,
    RunResult,
    Settings,
    Simulation,
    hermite_interpolate,
    min_hessian_eigenvalue,
    simulate,
)
from .events import PHASE_NAMES
from .kkt import Certificate, certify, normalized_ascent
from .models import MLP

__all__ = ["GoverningPoint", "zero_preserving_subset", "governing_point", "certified_point",
           "default_delta_ref", "default_max_time", "RunSummary", "Reference", "Fits",
           "EscapeReport", "run_escape", "path_distance", "RUN_KEYS", "kkt_json", "report_json",
           "report_tree", "RUN_H5_LAYOUT"]


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
    """(mask (k,) bool, zero neurons per hidden layer or None) of w_z at w*.

    MLP: the incoming and outgoing weights of hidden neurons whose row and column norms
    are ≤ tol × the largest neuron norm (Theorem 18). Diagonal: the coordinates with
    |w*_k| ≤ tol·max|w*|.
    """
    if isinstance(arch, MLP):
        from .sparsity import neuron_activity, zero_preserving_mask

        activity = neuron_activity(arch, w_star, tol)
        return zero_preserving_mask(arch, activity.zero, like=w_star), activity.zero
    a = abs(w_star)
    return a <= tol * a.max(), None


def certified_point(arch, X, ytilde, w, source: str, *, active_tol: float = 1e-3,
                    converged: bool = True, steps: int = 0,
                    flow: theory.NcfFlowEscape | None = None,
                    max_steps: int = 200_000) -> GoverningPoint:
    """Certify w as the governing point; ``flow`` defaults to the NCF flow from w itself
    (a start along w*), integrated for at most ``max_steps`` steps (it need not settle
    where w is no exact KKT point, e.g. at a kink of ReLU)."""
    cert = certify(arch, X, ytilde, w, active_tol=active_tol)
    mask, zero = zero_preserving_subset(arch, cert.w, active_tol)
    if flow is None:
        flow = theory.ncf_flow_escape(arch, X, ytilde, cert.w, max_steps=max_steps)
    return GoverningPoint(cert, source, converged, steps, mask, zero, flow)


def governing_point(arch, X, ytilde, w0: torch.Tensor, *, max_steps: int = 20000,
                    tol: float = 1e-9, active_tol: float = 1e-3) -> GoverningPoint:
    """Definition 2: the limit direction of the NCF flow from w0 (k,), integrated by
    :func:`ncfkit.theory.ncf_flow_escape` (which also predicts the escape time from w0),
    then polished to ``tol`` by the normalized ascent and certified. If the flow does not
    settle within ``max_steps`` the ascent starts from w0 itself."""
    flow = theory.ncf_flow_escape(arch, X, ytilde, w0, max_steps=max_steps)
    start = asarray_like(flow.direction, w0) if flow.converged else w0 / norm(w0)
    asc = normalized_ascent(arch, X, ytilde, start.reshape(1, -1), max_steps=max_steps, tol=tol)
    return certified_point(arch, X, ytilde, asc.u[0], "NCF flow from w0", active_tol=active_tol,
                           converged=bool(asc.converged[0]) and flow.converged,
                           steps=flow.steps + int(asc.steps[0]), flow=flow)


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
    predicted_escape_time: float | None  # SPEC §2 (leading order along w*)
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

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "result"}
        d["steps"] = self.result.steps
        d["final_w_norm"] = float(np.linalg.norm(self.result.snapshots["final"].w))
        return d


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

    def to_dict(self) -> dict:
        r = self.result
        return {"delta_ref": self.delta_ref, "escaped": self.escaped,
                "escape_time": None if r.escape is None else r.escape.time,
                "saddle_time": None if r.saddle is None else r.saddle.time,
                "p_star_loss": self.p_star_loss, "p_star_grad_norm": self.p_star_grad_norm,
                "p_star_min_hessian_eig": self.p_star_min_hessian_eig, "status": r.status}


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

    def to_dict(self) -> dict:
        out: dict = {}
        if self.escape is not None:
            rel = None
            if self.predicted_slope and math.isfinite(self.predicted_slope):
                rel = self.escape.slope / self.predicted_slope - 1.0
            out["fit"] = {"slope": self.escape.slope, "predicted_slope": self.predicted_slope,
                          "relative_error": rel, "intercept": self.escape.intercept,
                          "r2": self.escape.r2, "n": self.escape.n, "regressor": self.regressor}
            if self.predicted_slope_gd is not None:
                out["fit"]["predicted_slope_gd"] = self.predicted_slope_gd
            if self.predicted_slope_w0 is not None:
                out["fit"]["predicted_slope_w0"] = self.predicted_slope_w0
        if self.path is not None:
            out["path_exponent"] = {"empirical": self.path.slope, "theory": self.path_exponent_theory,
                                    "r2": self.path.r2, "n": self.path.n}
        if self.sparsity is not None:
            out["sparsity_exponent"] = {"empirical": self.sparsity.slope,
                                        "theory": self.sparsity_exponent_theory,
                                        "r2": self.sparsity.r2, "n": self.sparsity.n,
                                        "at": "escape event"}
        return out


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

    @property
    def status(self) -> str:
        return self.simulation.status


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


def _saddle_info(objective: Objective, run: RunResult, like):
    if run.saddle is None:
        return None, None
    w = asarray_like(run.snapshots["saddle"].w, like)
    h = min_hessian_eigenvalue(objective, w)
    return h.min, h.kind


def run_escape(objective: Objective, w0: torch.Tensor, deltas, settings: Settings, *,
               method: str = "gd", point: GoverningPoint | None = None,
               delta_ref: float | None | str = "auto", observer=None) -> EscapeReport:
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
    sim = simulate(objective, W0, settings, method=method,
                   w_star=None if point is None else asarray_like(point.w_star, w0),
                   wz_mask=None if point is None else point.wz_mask, observer=observer)

    reference = None
    if delta_ref is not None:
        ref = sim.runs[-1]
        lam = None
        if ref.saddle is not None and ref.status != "interrupted":
            lam, _ = _saddle_info(objective, ref, w0)
        reference = Reference(float(delta_ref), ref,
                              None if ref.saddle is None else ref.saddle.loss,
                              None if ref.saddle is None else ref.saddle.grad_norm, lam)

    ncf = point.cert.ncf if point is not None else None
    mask = point.wz_mask if point is not None else None
    runs = []
    for d, r in zip(deltas, sim.runs, strict=False):
        lam, kind = (None, None)
        if r.status != "interrupted" or r.saddle is not None:
            lam, kind = _saddle_info(objective, r, w0)
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
            final_loss=r.snapshots["final"].loss, result=r))
    fits = Fits(None, None, None, None, None, None, None)
    if theory_ok:
        fits = _fits(runs, point, L_h, settings.lr if method == "gd" else None)
    return EscapeReport(arch, L_h, arch.num_params, point, runs, reference, fits, sim)


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


# --------------------------------------------------------------------------- serialisation

#: Summary keys of one run, in JSON and as attributes of ``runs/<i>`` in run.h5.
RUN_KEYS = ("delta", "escaped", "escape_time", "predicted_escape_time",
            "predicted_escape_time_w0", "saddle_time",
            "saddle_loss", "saddle_grad_norm", "saddle_min_hessian_eig", "saddle_kind",
            "saddle_left", "sparsity_ratio_escape", "sparsity_ratio_saddle", "path_distance",
            "saddle_distance_to_p_star", "status", "message", "final_time", "final_loss",
            "steps", "final_w_norm")


def kkt_json(point: GoverningPoint | None) -> dict | None:
    """The ``kkt`` object of the JSON output (SPEC §4)."""
    if point is None:
        return None
    c = point.cert
    out = {"ncf": c.ncf, "delta": c.delta, "residual": c.residual, "kind": c.kind,
           "second_order": c.second_order, "lam": c.lam, "source": point.source,
           "ascent_converged": point.converged, "ascent_steps": point.steps,
           "zero_preserving_size": int(point.wz_mask.sum())}
    if point.flow is not None:
        out["ncf_flow"] = {"blowup_time": point.flow.blowup_time,
                           "log_amplitude": point.flow.log_amplitude,
                           "converged": point.flow.converged, "steps": point.flow.steps}
    if c.active_per_layer is not None:
        out["active_per_layer"] = list(c.active_per_layer)
        out["active_neurons"] = [list(a) for a in c.active_neurons]
    else:
        out["zero_coordinates"] = nonzero(point.wz_mask)
    return out


def report_json(report: EscapeReport) -> dict:
    """The JSON object of ``ncfkit escape --json`` (SPEC §4 keys, and more)."""
    L_h = report.homogeneity
    out = {"homogeneity": L_h, "num_params": report.num_params,
           "kkt": kkt_json(report.point),
           "runs": [r.to_dict() for r in report.runs],
           "status": report.status, "method": report.simulation.method,
           "engine": report.simulation.engine,
           "lr": report.simulation.settings.lr, "eps": report.simulation.settings.events.eps,
           "max_time": report.simulation.settings.max_time,
           "wall_time": report.simulation.wall_time}
    out.update(report.fits.to_dict())
    if report.reference is not None:
        out["reference"] = report.reference.to_dict()
    return out


def _nan(v):
    return float("nan") if v is None else v


def _run_tree(r: RunResult, arch) -> dict:
    """records / events / snapshots / trajectory of one run."""
    snaps = {}
    for name, s in r.snapshots.items():
        node = {"time": s.time, "step": s.step, "loss": s.loss, "grad_norm": s.grad_norm, "w": s.w}
        if isinstance(arch, MLP):
            for l, W in enumerate(arch.split(np.asarray(s.w)), start=1):
                node[f"W{l}"] = W
        snaps[name] = node
    events = {name: {"time": e.time, "step": e.step, "loss": e.loss, "grad_norm": e.grad_norm}
              for name, e in (("escape", r.escape), ("saddle", r.saddle)) if e is not None}
    tree = {"records": dict(r.records), "events": events, "snapshots": snaps}
    tree["records"]["phase_names"] = json.dumps(list(PHASE_NAMES.values()))
    if r.trajectory is not None:
        tree["trajectory"] = {"time": r.trajectory["time"], "w": r.trajectory["w"]}
    return tree


def report_tree(report: EscapeReport, provenance: dict, message: str = "") -> dict:
    """The run.h5 layout (kind ``escape``), documented in :data:`RUN_H5_LAYOUT`."""
    sim = report.simulation
    tree: dict = {"status": report.status, "message": message, "homogeneity": _nan(report.homogeneity),
                  "num_params": report.num_params, "method": sim.method,
                  "engine": sim.engine or "", "provenance": provenance}
    point = report.point
    if point is not None:
        c = point.cert
        tree["kkt"] = {"ncf": c.ncf, "delta": c.delta, "lam": c.lam, "residual": c.residual,
                       "kind": c.kind, "second_order": c.second_order, "source": point.source,
                       "ascent_converged": point.converged, "ascent_steps": point.steps,
                       "zero_preserving_size": int(point.wz_mask.sum()),
                       "w_star": to_numpy(c.w),
                       "wz_mask": to_numpy(point.wz_mask).astype(np.uint8)}
        if point.flow is not None:
            tree["kkt"]["ncf_flow_blowup_time"] = point.flow.blowup_time
            tree["kkt"]["ncf_flow_log_amplitude"] = point.flow.log_amplitude
        if c.active_per_layer is not None:
            tree["kkt"]["active_per_layer"] = np.asarray(c.active_per_layer, dtype=np.int64)
            tree["kkt"]["active_neurons"] = json.dumps([list(a) for a in c.active_neurons])
            tree["kkt"]["zero_neurons"] = json.dumps([list(z) for z in point.zero_neurons])
    L_h = report.homogeneity
    if point is not None and L_h is not None and L_h >= 2:
        ncf, Delta = point.cert.ncf, point.cert.delta
        pos = ncf > 0 and Delta > 0
        tree["predictions"] = {
            "escape_slope": theory.escape_slope(ncf, L_h),
            "regressor": report.fits.regressor,
            "path_distance_exponent": _nan(theory.path_distance_exponent(Delta, ncf, L_h) if pos else None),
            "sparsity_exponent": _nan(theory.sparsity_exponent(Delta, ncf, L_h) if pos else None),
        }
    fits = report.fits.to_dict()
    for key in ("fit", "path_exponent", "sparsity_exponent"):
        if key in fits:
            tree[key] = {k: _nan(v) if k != "regressor" and k != "at" else v for k, v in fits[key].items()}
    arch = report.arch
    runs = {}
    for i, r in enumerate(report.runs):
        node = {k: _nan(v) for k, v in r.to_dict().items()}
        node.update(_run_tree(r.result, arch))
        runs[str(i)] = node
    tree["runs"] = runs
    if report.reference is not None:
        ref = {k: _nan(v) for k, v in report.reference.to_dict().items()}
        ref.update(_run_tree(report.reference.result, arch))
        tree["reference"] = ref
    return tree


RUN_H5_LAYOUT = """run.h5 (root attribute ncfkit_kind = "escape")

/                  attrs: status (complete | diverged | interrupted), message, homogeneity
                   (NaN: not homogeneous), num_params, method, engine (what computed
                   ∇𝓛: compiled | torch), ncfkit_version
/provenance        attrs: data_file, data_sha256, n, d, architecture (JSON of
                   arch.to_dict()), loss, reduction, seed, dtype, device, init, lr, eps,
                   max_time, until, deltas (JSON), delta_ref, kkt_file, point, command_line, ...
/kkt               attrs: ncf, delta (Δ), lam, residual, kind, second_order, source,
                   ascent_converged, ascent_steps, zero_preserving_size,
                   ncf_flow_blowup_time (L_h > 2) / ncf_flow_log_amplitude (L_h = 2),
                   active_neurons / zero_neurons (JSON, mlp); datasets: w_star (k,) unit
                   norm, wz_mask (k,) uint8 (1 = weight in w_z), active_per_layer (mlp)
/predictions       attrs: escape_slope, regressor, path_distance_exponent, sparsity_exponent
/fit               attrs: slope, predicted_slope (along w*), relative_error, intercept,
                   r2, n, regressor[, predicted_slope_gd (L_h = 2, GD),
                   predicted_slope_w0 (NCF flow from w0)]      (with >= 2 escaped δ)
/path_exponent     attrs: empirical, theory, r2, n
/sparsity_exponent attrs: empirical, theory, r2, n, at
/runs/<i>          one per --delta, in the order given; attrs RUN_KEYS (NaN where unknown)
  records/         datasets step, time, loss, grad_norm, w_norm, cos_w_star, wz_ratio,
                   phase (int8, names in attr phase_names: JSON list) — log-spaced in time
                   plus event-driven, at most Settings.capacity rows
  events/escape    attrs time (crossing time), step, loss, grad_norm
  events/saddle    attrs time, step, loss, grad_norm
  snapshots/<name> name in init, escape, saddle, final; attrs time, step, loss,
                   grad_norm; datasets w (k,) and, for mlp, W1 … WL (nn.Linear layout)
  trajectory/      datasets time (m,), w (m, k): bounded sample of ψ(t)
/reference         the run from δ_ref·w* that stands for p(t): attrs delta_ref, escaped,
                   escape_time, saddle_time, p_star_loss, p_star_grad_norm,
                   p_star_min_hessian_eig, status; groups as a run (snapshots/saddle is p*)
"""
