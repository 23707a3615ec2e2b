"""Fast gradients and GD engines: ∇𝓛 and ∇𝒩 of the feed-forward and diagonal models
from a compiled kernel, and the stretch of K plain gradient-descent steps
w ← w − η∇𝓛(w) that :func:`ncfkit.dynamics.gradient_descent` runs between checkpoints.

Two engines compute the same numbers (up to floating-point summation order):

- ``compiled``: ``ncfkit._gdkernel``, a small C kernel built with the package
  (``setup.py``; optional, skipped without a C compiler). It writes the closed-form
  forward/backward pass of the network families of :class:`ncfkit.models.KernelSpec`
  (an architecture says, by its ``kernel_spec``, whether and how the kernel computes it)
  with the square, logistic or correlation (𝒩 = ỹᵀH, eq. 3) loss as loops over the
  samples, allocates nothing per step and runs K steps per call, so a step costs its
  arithmetic and no per-operation overhead (eager torch spends ~10x longer dispatching
  the same ~10 small ops). Rows (several δ, the reference run, KKT restarts) are
  independent and run on parallel threads (:func:`ncfkit._runtime.row_workers`). CPU
  tensors of float32/float64 without autograd only.
- ``torch``: :func:`ncfkit.ncf.loss_value_and_grad` / :func:`~ncfkit.ncf.ncf_value_and_grad`
  (any device, any architecture ncfkit has, differentiable); the reference the compiled
  engine is tested against.

``auto`` takes ``compiled`` where it applies and ``torch`` elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._lazy import torch
from ._runtime import row_workers
from .arrays import Array, asarray_like, is_numpy, to_numpy
from .models import Architecture
from .ncf import loss_value_and_grad, ncf_value_and_grad

__all__ = ["ENGINES", "Stepper", "make_stepper", "resolve_engine", "value_and_grad_fn",
           "ncf_value_and_grad_fn", "compiled_available", "compiled_unsupported"]

ENGINES = ("auto", "compiled", "torch")

#: ``stepper(w, L, g, K) -> (w_K, 𝓛(w_K), ∇𝓛(w_K), losses)`` from w_0 = w (B, k) with
#: its known loss L and gradient g (none of them modified); ``losses`` (K, B) float64
#: holds 𝓛 of the iterates w_0 … w_{K−1}.
Stepper = Callable[..., tuple]  # (w, L, g, K) -> (w_K, L_K, g_K, losses); numpy or torch

try:  # built by setup.py; absent when the package was installed without a C compiler
    from . import _gdkernel
except ImportError:  # pragma: no cover - depends on the build
    _gdkernel = None

_FAMILY_CODES = {"mlp": 0, "diag": 1}  # the network families the C kernel implements
_MAX_LAYERS = 62  # the C kernel's fixed-size arrays of widths (family "mlp")
_ACT_CODES = {"square": 0, "linear": 1, "relu": 2, "tanh": 4, "gelu": 5}
_LOSS_CODES = {"square": 0, "logistic": 1, "correlation": 2}
_PARALLEL_WORK = 1 << 21  # multiply-adds per call above which rows go to threads


def compiled_available() -> bool:
    """Whether the C kernel was built and imports."""
    return _gdkernel is not None


def compiled_unsupported(objective=None, *, arch=None, X=None, loss_name=None) -> str | None:
    """Why the compiled engine cannot compute ``objective``'s gradients (or those of
    ``arch`` on data ``X`` with loss ``loss_name``); None: it can."""
    if objective is not None:
        arch, X, loss_name = objective.arch, objective.X, objective.loss.name
    if _gdkernel is None:
        return "the compiled GD kernel was not built (no C compiler at install time?)"
    if not is_numpy(X) and X.device.type != "cpu":
        return f"the compiled engine runs on the CPU only (data on {X.device})"
    if str(X.dtype).removeprefix("torch.") not in ("float32", "float64"):
        return f"the compiled engine needs float32 or float64 (got {X.dtype})"
    if loss_name not in _LOSS_CODES:
        return f"the compiled engine has no {loss_name!r} loss"
    spec = getattr(arch, "kernel_spec", None)  # an object outside the registry may lack it
    if spec is None or spec.family not in _FAMILY_CODES:
        return f"the compiled engine has no {type(arch).__name__} architecture"
    if spec.act is None:
        return None
    if len(spec.widths) - 1 > _MAX_LAYERS:
        return f"the compiled engine handles at most {_MAX_LAYERS} layers"
    act = spec.act
    if not act.homogeneous and act.name not in _ACT_CODES:
        return f"the compiled engine has no {act.name!r} activation"
    return None


def _act_code(act) -> tuple[int, float, float]:
    """(code, p, α) of the C kernel for one activation (its fast paths as in
    :meth:`ncfkit.activations.Activation.__call__`)."""
    if not act.homogeneous:
        return _ACT_CODES[act.name], 0.0, 0.0
    if act.alpha == -1.0 and act.p == 2:
        return 0, 2.0, -1.0
    if act.alpha == 1.0 and act.p == 1:
        return 1, 1.0, 1.0
    if act.alpha == 0.0 and act.p == 1:
        return 2, 1.0, 0.0
    return 3, float(act.p), float(act.alpha)


class _Kernel:
    """One network on one data set, ready for ``_gdkernel.gd_block``."""

    def __init__(self, arch: Architecture, X: Array, y: Array, loss_name: str, scale: float):
        """``X`` (n, d) and ``y`` (n,): numpy arrays or CPU tensors, float32 or float64."""
        X, y = to_numpy(X), to_numpy(y)
        self.np_dtype = np.float64 if X.dtype == np.float64 else np.float32
        self.XT = np.ascontiguousarray(X.T, dtype=self.np_dtype)
        self.y = np.ascontiguousarray(y, dtype=self.np_dtype)
        spec = arch.kernel_spec
        self.widths = np.array(spec.widths, dtype=np.int64)
        self.kind = _FAMILY_CODES[spec.family]
        self.act, self.p, self.alpha = (0, 0.0, 0.0) if spec.act is None else _act_code(spec.act)
        self.loss = _LOSS_CODES[loss_name]
        self.scale = scale
        self.work = X.shape[0] * arch.num_params  # multiply-adds of one gradient, roughly
        self.workers = row_workers()

    def _run(self, out: np.ndarray, grad: np.ndarray, K: int, lr: float) -> np.ndarray:
        losses = np.empty((K + 1, out.shape[0]), dtype=self.np_dtype)
        _gdkernel.gd_block(self.XT, self.y, out, grad, losses, self.widths, out.shape[0], K, lr,
                           self.kind, self.act, self.p, self.alpha, self.loss, self.scale)
        return losses

    def run(self, w: np.ndarray, K: int, lr: float = 0.0):
        """(w_K, grad at w_K, losses (K+1, B)) after K steps from w (B, k), all numpy;
        w is untouched (K = 0 reads it in place: the gradient and loss at w)."""
        w = np.asarray(w)
        if K == 0 and w.dtype == self.np_dtype and w.flags.c_contiguous and w.flags.writeable:
            out = w  # the kernel does not write w when it takes no step
        else:
            out = np.array(w, dtype=self.np_dtype, order="C")
        grad = np.empty_like(out)
        B = out.shape[0]
        n_par = min(self.workers, B)
        if n_par > 1 and (K + 1) * B * self.work >= _PARALLEL_WORK:  # one slice of rows per thread
            cuts = np.linspace(0, B, n_par + 1).astype(int)
            parts = [(out[a:b], grad[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
            losses = np.concatenate(list(_pool().map(lambda pg: self._run(*pg, K, lr), parts)),
                                    axis=1)
        else:
            losses = self._run(out, grad, K, lr)
        return out, grad, losses

    def __call__(self, w: torch.Tensor, K: int, lr: float = 0.0):
        """:meth:`run` on torch tensors (CPU; the results share memory with numpy)."""
        out, grad, losses = self.run(w.detach().numpy(), K, lr)
        return torch.from_numpy(out), torch.from_numpy(grad), losses


def _kernel(objective) -> _Kernel:
    loss = objective.loss
    scale = 1.0 / objective.y.shape[-1] if loss.reduction == "mean" else 1.0
    return _Kernel(objective.arch, objective.X, objective.y, loss.name, scale)


def _compiled_stepper(objective, lr: float) -> Stepper:
    kernel = _kernel(objective)

    def step(w, L, g, K: int):
        if is_numpy(w):
            out, grad, losses = kernel.run(w, K, lr)
            return out, losses[K].copy(), grad, losses[:K].astype(np.float64)
        out, grad, losses = kernel(w, K, lr)
        return out, torch.from_numpy(losses[K].copy()), grad, losses[:K].astype(np.float64)

    return step


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """The process-wide pool of :func:`row_workers` threads (the kernel releases the GIL)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=row_workers(), thread_name_prefix="ncfkit-gd")
    return _POOL


def _torch_stepper(objective, lr: float) -> Stepper:
    """Steps by the closed forms of :mod:`ncfkit.ncf` on the objective's arrays: tensors
    (any device; the losses stay there until the block ends), or numpy arrays."""
    o = objective

    def step(w, L, g, K: int):
        losses = []
        for _ in range(K):
            losses.append(L)
            w = w - lr * g if is_numpy(w) else torch.add(w, g, alpha=-lr)  # (as torch's SGD)
            L, g = loss_value_and_grad(o.arch, o.X, o.y, o.loss, w)
        if not losses:
            return w, L, g, np.empty((0, w.shape[0]))
        arr = np.stack(losses) if is_numpy(w) else torch.stack(losses).detach().cpu().numpy()
        return w, L, g, arr.astype(np.float64)

    return step


def _choose(engine: str, why_not_compiled) -> str:
    """``engine`` resolved: ``why_not_compiled()`` gives the reason the kernel cannot
    run (None: it can), asked only when the engine is not ``torch``."""
    if engine not in ENGINES:
        raise ValueError(f"unknown GD engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "torch":
        return "torch"
    why = why_not_compiled()
    if engine == "compiled" and why is not None:
        raise ValueError(f"the compiled GD engine cannot run this: {why}")
    return "compiled" if why is None else "torch"


def resolve_engine(objective, engine: str = "auto") -> str:
    """The engine that ``engine`` means for ``objective``: ``auto`` becomes ``compiled``
    where the kernel applies, else ``torch``.

    Raises:
        ValueError: unknown engine, or ``compiled`` asked for where it cannot run (the
            message says why).
    """
    return _choose(engine, lambda: compiled_unsupported(objective))


def make_stepper(objective, lr: float, engine: str = "auto") -> Stepper:
    """The GD stepper of ``engine`` (see :func:`resolve_engine`) for ``objective`` and
    step ``lr``."""
    if resolve_engine(objective, engine) == "compiled":
        return _compiled_stepper(objective, lr)
    return _torch_stepper(objective, lr)


def _unbatched(f):
    """Let a (B, k) -> ((B,), (B, k)) function take a single point (k,) too."""
    def g(w):
        if w.ndim == 1:
            L, grad = f(w[None])
            return L[0], grad[0]
        return f(w)
    return g


def _on_host(f, like):
    """A torch (B, k) -> ((B,), (B, k)) function taking and returning numpy arrays (one
    transfer each way to ``like``'s device and dtype); f itself when the data ``like``
    are numpy arrays already (the closed forms run on either)."""
    if is_numpy(like):
        return f

    def g(w: np.ndarray):
        L, grad = f(asarray_like(w, like))
        return to_numpy(L), to_numpy(grad)
    return g


def _from_kernel(kernel: _Kernel, host: bool):
    """(value, gradient) at w from the kernel without a step, as numpy or torch."""
    def f(w):
        if host or is_numpy(w):
            _, grad, vals = kernel.run(w, 0)
            return vals[0], grad
        _, grad, vals = kernel(w, 0)
        return torch.from_numpy(vals[0].copy()), grad
    return _unbatched(f)


def value_and_grad_fn(objective, engine: str = "auto", *, host: bool = False):
    """``f(w) -> (𝓛(w), ∇𝓛(w))`` for w (k,) or (B, k), computed by ``engine`` (see
    :func:`resolve_engine`); the compiled one takes no autograd (use ``torch`` to
    differentiate through it). ``host=True``: f takes and returns numpy arrays, for the
    integrators that keep their state on the host (:mod:`ncfkit.flow`): the kernel
    straight, or torch on the data's device with one transfer each way."""
    if resolve_engine(objective, engine) == "torch":
        f = objective.value_and_grad
        return _unbatched(_on_host(f, objective.X)) if host else f
    return _from_kernel(_kernel(objective), host)


def ncf_value_and_grad_fn(arch: Architecture, X: Array, ytilde: Array, engine: str = "auto", *,
                          host: bool = False):
    """``f(u) -> (𝒩(u), ∇𝒩(u))`` (eq. 3) for u (k,) or (B, k): the compiled kernel with
    the correlation loss where it applies (``auto``), else
    :func:`ncfkit.ncf.ncf_value_and_grad`; ``host`` as in :func:`value_and_grad_fn`."""
    if _choose(engine, lambda: compiled_unsupported(arch=arch, X=X, loss_name="correlation")) == "torch":
        f = _unbatched(lambda u: ncf_value_and_grad(arch, X, ytilde, u))
        return _unbatched(_on_host(f, X)) if host else f
    return _from_kernel(_Kernel(arch, X, ytilde, "correlation", 1.0), host)
