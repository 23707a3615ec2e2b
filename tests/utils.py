"""Comparison helpers shared by ncfkit's tests (STYLE.md §5: one place for them).

- :func:`assert_close` compares arrays or tensors entrywise and, on failure, says which
  entries mismatch and by how much (not just "not close").
- :func:`rel_error` is the scalar relative error used against closed forms.
- :func:`fd_grad`, :func:`fd_jvp` and :func:`fd_hvp` are central finite differences, the
  reference every closed-form or autograd derivative is checked against.
- :func:`seeded` gives a fresh float64 generator, so every fixture says its seed.
- :func:`ref_sigma` and :func:`ref_mlp_forward` are the independent reference network:
  a plain ``F.linear`` loop over weights cut from ``w`` by hand, σ written without the
  library's ``torch.maximum``/``where``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["as_numpy", "assert_close", "rel_error", "fd_grad", "fd_jvp", "fd_hvp", "seeded",
           "orthonormal_complement", "ref_sigma", "ref_mlp_forward"]

DTYPE = torch.float64


def as_numpy(x) -> np.ndarray:
    """A float64/complex/bool numpy copy of a tensor, array, list or scalar."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.numpy().astype(np.float64) if x.is_floating_point() else x.numpy()
    return np.asarray(x, dtype=np.float64)


def rel_error(actual, expected) -> float:
    """‖actual − expected‖ / ‖expected‖ (Frobenius; the absolute error if expected is 0)."""
    a, e = as_numpy(actual), as_numpy(expected)
    diff = float(np.linalg.norm((a - e).ravel()))
    scale = float(np.linalg.norm(e.ravel()))
    return diff / scale if scale > 0 else diff


def assert_close(actual, expected, rtol: float = 1e-10, atol: float = 0.0, what: str = "value",
                 show: int = 5) -> None:
    """Assert |actual − expected| ≤ atol + rtol·|expected| entrywise (numpy's rule).

    Shapes must match exactly (no broadcasting: a (k,) result compared to a (1, k)
    reference is a bug, not a pass). On failure the message names ``what``, the number
    of mismatching entries, the worst absolute and relative errors, and the first
    ``show`` mismatching indices with both values.
    """
    a, e = as_numpy(actual), as_numpy(expected)
    rtol, atol = float(rtol), float(atol)  # a 0-d tensor would turn the bound into a tensor
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    if a.size == 0:
        return
    err = np.abs(a - e)
    bound = atol + rtol * np.abs(e)
    bad = ~(err <= bound)  # NaN counts as a mismatch
    if not bad.any():
        return
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(e != 0, err / np.abs(e), np.inf)
    idx = np.argwhere(bad)
    lines = [f"{what}: {len(idx)} of {a.size} entries differ (rtol={rtol:g}, atol={atol:g}); "
             f"max abs err {np.nanmax(err):.3e}, max rel err {np.nanmax(rel):.3e}"]
    for i in idx[:show]:
        i = tuple(int(t) for t in i)
        lines.append(f"  at {i}: actual {a[i]!r}, expected {e[i]!r}, |diff| {err[i]:.3e}")
    if len(idx) > show:
        lines.append(f"  … and {len(idx) - show} more")
    raise AssertionError("\n".join(lines))


def fd_grad(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            h: float = 1e-6) -> torch.Tensor:
    """Central-difference gradient of a scalar function f at x (any shape), O(h²) error."""
    x = x.detach()
    g = torch.empty_like(x)
    flat_g = g.view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view_as(x)
        flat_g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def fd_jvp(F: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor,
           h: float = 1e-6) -> torch.Tensor:
    """Central-difference directional derivative (F(x + hv) − F(x − hv)) / 2h."""
    x, v = x.detach(), v.detach()
    return (F(x + h * v) - F(x - h * v)) / (2 * h)


def fd_hvp(grad: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor,
           h: float = 1e-5) -> torch.Tensor:
    """Hessian-vector product ∇²f(x) v as the central difference of a gradient function."""
    return fd_jvp(grad, x, v, h)


def seeded(seed: int) -> torch.Generator:
    """A CPU generator with a fixed seed."""
    return torch.Generator().manual_seed(seed)


def orthonormal_complement(w: np.ndarray) -> np.ndarray:
    """Columns: an orthonormal basis of w⊥ (k × (k−1)), from the SVD of wᵀ."""
    w = np.asarray(w, dtype=np.float64).reshape(1, -1)
    _, _, vt = np.linalg.svd(w)
    return vt[1:].T


def ref_sigma(p: float, alpha: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """σ(x) = max(x, αx)^p as ((1+α)x + |1−α|·|x|)/2)^p (not the library's formula)."""
    return lambda x: (((1 + alpha) * x + abs(1 - alpha) * x.abs()) / 2) ** p


def ref_mlp_forward(X: torch.Tensor, w: torch.Tensor, widths: list[int],
                    sigma: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """H(X; w) for one w (k,) of a bias-free MLP with ``widths`` = (d, k_1, …, 1):
    nn.Linear layout, layer 1 first, row-major."""
    import torch.nn.functional as F

    h, start = X, 0
    for l in range(len(widths) - 1):
        rows, cols = widths[l + 1], widths[l]
        h = F.linear(h, w[start : start + rows * cols].reshape(rows, cols))
        start += rows * cols
        if l < len(widths) - 2:
            h = sigma(h)
    assert start == w.numel(), "w has more entries than the network"
    return h[:, 0]


def run_cli(*args):
    """Invoke the ncfkit command line in-process (every argument as a string); the click
    result has ``exit_code``, ``stdout``, ``stderr`` and ``output``."""
    from click.testing import CliRunner

    from ncfkit.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


#: Skip a test that needs the compiled kernel only where the build may lack a C compiler;
#: where CI requires the kernel (NCFKIT_REQUIRE_KERNEL=1) a missing kernel fails instead.
KERNEL_OPTIONAL = not __import__("os").environ.get("NCFKIT_REQUIRE_KERNEL")
