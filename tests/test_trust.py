"""The trust-region finish of the NCF ascent (ncfkit._trust): it reaches the point the
plain ascent reaches (same 𝒩, same direction up to the network's symmetries, residual
≤ tol) in fewer steps, quadratically; relu keeps the Clarke path. Seeded, CPU, small."""

from __future__ import annotations

import numpy as np
import pytest

from ncfkit._trust import point_oracle, trust_region_finish
from ncfkit.activations import parse_activation
from ncfkit.kkt import find_kkt_points, normalized_ascent
from ncfkit.models import MLP, random_direction
from ncfkit.ncf import ncf_hvp, ncf_value_and_grad


def _problem(act="square", hidden=(8,), seed=0, n=40, d=5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    return MLP(d, hidden, parse_activation(act)), X, 2 * y / n


@pytest.mark.parametrize(("act", "hidden"), [("square", (8,)), ("square", (4, 3)), ("poly:3", (6,)),
                                             ("linear", (4,))])
def test_finish_reaches_the_ascent_point(act, hidden):
    arch, X, yt = _problem(act, hidden)
    u0 = random_direction(arch.num_params, np.random.default_rng(3), (4,))
    plain = normalized_ascent(arch, X, yt, u0, tol=1e-10, finish=None)
    fast = normalized_ascent(arch, X, yt, u0, tol=1e-10, finish=1e-4)
    assert bool(plain.converged.all()) and bool(fast.converged.all())
    assert (fast.residual <= 1e-10).all()
    np.testing.assert_allclose(fast.ncf, plain.ncf, rtol=1e-9, atol=1e-12 * float(np.abs(plain.ncf).max()))
    assert fast.steps.sum() <= plain.steps.sum()


def test_finish_is_quadratic():
    """From a point with residual ~1e-3, a handful of Newton steps reach 1e-12."""
    arch, X, yt = _problem()
    u0 = random_direction(arch.num_params, np.random.default_rng(5), (1,))
    near = normalized_ascent(arch, X, yt, u0, tol=1e-3, finish=None).u[0]

    def vg(u):
        return ncf_value_and_grad(arch, X, yt, u)

    g0 = float(np.linalg.norm(vg(u0[0])[1]))
    generic = point_oracle(_NoMLP(), X, yt, vg, lambda u, v: ncf_hvp(arch, X, yt, u, v))
    for at in (point_oracle(arch, X, yt), generic):
        fr = trust_region_finish(at, near, g0=g0, tol=1e-12)
        assert fr.converged and fr.residual <= 1e-12 and fr.iterations <= 12
        assert abs(np.linalg.norm(fr.u) - 1) < 1e-14


class _NoMLP:
    """Any architecture that is not an MLP: the oracle falls back to the functions given."""


@pytest.mark.parametrize(("act", "hidden"), [("square", ()), ("square", (8,)), ("square", (4, 3)),
                                             ("poly:3", (6,)), ("sqrelu", (5, 4, 3)), ("poly:3:0.2", (3, 3)),
                                             ("linear", (4,))])
def test_point_oracle_equals_the_closed_forms(act, hidden):
    """The cached point (forward and backward passes once) gives 𝒩, ∇𝒩 and ∇²𝒩 v of the
    architecture's closed forms, for one vector and a batch of them."""
    arch, X, yt = _problem(act, hidden, seed=2)
    rng = np.random.default_rng(7)
    u = random_direction(arch.num_params, rng)
    V = rng.standard_normal((3, arch.num_params))
    pt = point_oracle(arch, X, yt)(u)
    val, grad = ncf_value_and_grad(arch, X, yt, u)
    hv = ncf_hvp(arch, X, yt, u, V)
    scale = max(float(np.abs(hv).max()), 1e-300)
    assert abs(pt.value - float(val)) <= 1e-13 * max(abs(float(val)), 1e-300)
    np.testing.assert_allclose(pt.grad, grad, rtol=0, atol=1e-13 * float(np.abs(grad).max()))
    np.testing.assert_allclose(pt.hvp(V), hv, rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(pt.hvp(V[1]), hv[1], rtol=0, atol=1e-13 * scale)


def test_relu_keeps_the_clarke_path():
    """max(x, αx) nets are not finished by Newton (no Hessian at the kinks)."""
    arch, X, yt = _problem("relu")
    res = find_kkt_points(arch, X, yt, restarts=4, seed=1)
    assert res.points and all(p.cert.field in ("clarke", "conservative") for p in res.points)


def test_kkt_finish_keeps_every_start_in_its_basin():
    """find_kkt_points finishes its starts from a residual of 0.1: every start still ends
    at the point the plain ascent reaches from it (here two local maxima, 3 and 21 of 24
    starts), in a fraction of the steps."""
    from ncfkit.kkt import _KKT_FINISH

    arch, X, yt = _problem("square", (6,), seed=5, n=60, d=6)
    u0 = random_direction(arch.num_params, np.random.default_rng(11), (24,))
    plain = normalized_ascent(arch, X, yt, u0, tol=1e-10, finish=None)
    fast = normalized_ascent(arch, X, yt, u0, tol=1e-10, finish=_KKT_FINISH)
    assert bool(plain.converged.all()) and bool(fast.converged.all())
    scale = float(np.abs(plain.ncf).max())
    np.testing.assert_allclose(fast.ncf, plain.ncf, rtol=0, atol=1e-9 * scale)
    assert len(np.unique(np.round(plain.ncf / scale, 6))) == 2
    assert fast.steps.sum() < plain.steps.sum() / 2


def test_find_kkt_points_starts_end_where_the_plain_ascent_does():
    """find_kkt_points (float32 ascent to a residual of 0.1, then the float64 trust-region
    finish) puts every start in the point the float64 ascent alone reaches from it, and
    certifies those points to tol."""
    import torch

    arch, X, yt = _problem("square", (6,), seed=5, n=60, d=6)
    res = find_kkt_points(arch, X, yt, restarts=24, seed=3, tol=1e-10)
    u0 = random_direction(arch.num_params, torch.Generator().manual_seed(3), (24,), dtype=torch.float64).numpy()
    plain = normalized_ascent(arch, X, yt, u0, tol=1e-10, finish=None)
    scale = float(np.abs(plain.ncf).max())
    assert len(res.points) >= 2 and res.converged == 24
    for p in res.points:
        assert p.cert.residual <= 1e-10
        for r in p.restarts:
            assert abs(float(plain.ncf[r]) - p.cert.ncf) <= 1e-9 * scale


def test_numpy_engine_ascent_row_by_row_equals_the_kernel():
    """The numpy engine evaluates a batch of starts one row at a time (faster than one
    batched call at scale); the ascent reaches the same points as with the kernel."""
    from ncfkit.fastgd import compiled_unsupported

    arch, X, yt = _problem("square", (6,), seed=5, n=60, d=6)
    u0 = random_direction(arch.num_params, np.random.default_rng(11), (6,))
    by_rows = normalized_ascent(arch, X, yt, u0, tol=1e-10, engine="numpy")
    other = "torch" if compiled_unsupported(arch=arch, X=X, loss_name="correlation") else "compiled"
    batched = normalized_ascent(arch, X, yt, u0, tol=1e-10, engine=other)
    assert bool(by_rows.converged.all()) and bool(batched.converged.all())
    scale = float(np.abs(batched.ncf).max())
    np.testing.assert_allclose(by_rows.ncf, batched.ncf, rtol=0, atol=1e-9 * scale)
