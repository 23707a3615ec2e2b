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

- ``numpy``: the same closed forms on numpy arrays (:mod:`ncfkit.models`): one GEMM per
  layer over all samples (and, for layer 1, over all rows of a batch), so the arithmetic
  runs in the BLAS numpy links (OpenBLAS here); each step pays ~20 numpy calls of
  overhead (tens of µs), which is nothing once n·width is large. CPU, float32/float64,
  every architecture.

``auto`` chooses per problem and device by a cost model (:func:`predicted_costs`): on a
CUDA device ``torch``; on the CPU the cheaper of ``compiled`` (its cost grows with the
multiply-adds n·k at the kernel's loop rate) and ``numpy`` (a fixed per-call overhead
plus the multiply-adds at the BLAS rate); ``benchmarks/bench_scale.py --engines`` checks
the choice against measured times.
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
           "ncf_value_and_grad_fn", "compiled_available", "compiled_unsupported", "numpy_unsupported",
           "predicted_costs", "choose_host_engine"]

ENGINES = ("auto", "compiled", "numpy", "torch")

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


# --------------------------------------------------------------------------- numpy engine


def numpy_unsupported(objective=None, *, arch=None, X=None, loss_name=None) -> str | None:
    """Why the numpy (BLAS) engine cannot compute ``objective``'s gradients; None: it can."""
    if objective is not None:
        arch, X = objective.arch, objective.X
    if not is_numpy(X) and X.device.type != "cpu":
        return f"the numpy engine runs on the CPU only (data on {X.device})"
    if str(X.dtype).removeprefix("torch.") not in ("float32", "float64"):
        return f"the numpy engine needs float32 or float64 (got {X.dtype})"
    if not hasattr(arch, "forward_and_vjp"):
        return f"the numpy engine needs the closed forms of {type(arch).__name__}"
    return None


_BLAS_LIMITED = False


def _limit_blas_threads() -> None:
    """BLAS threads = :func:`ncfkit._runtime.row_workers` (NCFKIT_THREADS when set: a
    sweep's workers run one thread each; oversubscribed OpenBLAS threads spin and made a
    product 100x slower in our measurements), once per process, where threadpoolctl is
    installed (else BLAS keeps its own default)."""
    global _BLAS_LIMITED
    if _BLAS_LIMITED:
        return
    _BLAS_LIMITED = True
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return
    threadpool_limits(limits=row_workers(), user_api="blas")


class _Blas:
    """The closed forms of :mod:`ncfkit.models` on numpy copies of the data: ∇𝓛 (``loss``)
    or ∇𝒩 (``loss`` None, ``y`` = ỹ) for w (B, k) numpy arrays or CPU tensors (returned
    as the kind given; tensors share memory with the numpy results)."""

    def __init__(self, arch: Architecture, X: Array, y: Array, loss=None):
        _limit_blas_threads()
        X, y = to_numpy(X), to_numpy(y)
        self.dtype = np.float64 if X.dtype == np.float64 else np.float32
        self.arch, self.loss = arch, loss
        self.X = np.ascontiguousarray(X, dtype=self.dtype)
        self.y = np.ascontiguousarray(y, dtype=self.dtype)

    def run(self, w: np.ndarray):
        """(values (B,), gradients (B, k)) at numpy w (B, k)."""
        w = np.asarray(w, dtype=self.dtype)
        if self.loss is None:
            y = self.y
            out, grad = self.arch.forward_and_vjp(self.X, w, lambda o: np.broadcast_to(y, o.shape))
            return out @ y, grad
        loss, y = self.loss, self.y
        out, grad = self.arch.forward_and_vjp(self.X, w, lambda o: loss.dvalue(o, y))
        return loss.value(out, y), grad

    def __call__(self, w):
        if is_numpy(w):
            return self.run(w)
        val, grad = self.run(w.detach().cpu().numpy())
        return torch.from_numpy(np.ascontiguousarray(val)), torch.from_numpy(grad)


def _numpy_stepper(objective, lr: float) -> Stepper:
    """K steps w ← w − η∇𝓛(w) by :class:`_Blas` (numpy; tensors in, tensors out)."""
    blas = _Blas(objective.arch, objective.X, objective.y, objective.loss)

    def step(w, L, g, K: int):
        tensor = not is_numpy(w)
        if tensor:
            w, L, g = (a.detach().cpu().numpy() for a in (w, L, g))
        losses = np.empty((K, w.shape[0]))
        for i in range(K):
            losses[i] = L
            w = w - lr * g
            L, g = blas.run(w)
        if tensor:
            return torch.from_numpy(w), torch.from_numpy(np.ascontiguousarray(L)), torch.from_numpy(g), losses
        return w, L, g, losses

    return step


# --------------------------------------------------------------------------- cost model

#: The cost model's constants, fitted to ``benchmarks/bench_scale.py --engines`` on this
#: project's 2-core x86-64 machine, idle (float64; ``3·n·k`` multiply-adds per row and
#: gradient): the compiled kernel's sample loops run at ~10–21 GMAC/s on one thread per
#: row (faster while the data fit in cache); the numpy engine pays a few µs per numpy
#: call (~3 per layer), its BLAS runs at ~28 GMAC/s per thread (products of ≥ 2·10⁶
#: multiply-adds use every thread), and each element of its (width × n) activations
#: costs ~3 ns of element-wise passes. On this machine ``auto`` picked the fastest engine
#: on 6 of 7 sizes from n·k = 10⁵ to 3·10⁸ and was within 1.4x on the seventh.
KERNEL_SEC_PER_MAC = 1.0 / 16e9
KERNEL_SEC_PER_CALL = 4e-6
BLAS_SEC_PER_MAC = 3.5e-11
NUMPY_SEC_PER_ELEMENT = 3e-9
NUMPY_SEC_PER_LAYER = 4e-6


def predicted_costs(arch: Architecture, n: int, batch: int = 1, threads: int | None = None) -> dict[str, float]:
    """Predicted seconds of one ∇𝓛 or ∇𝒩 evaluation of ``batch`` rows on ``n`` samples,
    per host engine, with ``threads`` threads (default :func:`ncfkit._runtime.row_workers`):
    the multiply-adds of a forward and a backward pass (≈ 3·n·k per row) at each engine's
    rate (the kernel runs rows on parallel threads, BLAS splits every product), plus the
    numpy engine's per-layer call overhead and its element-wise passes over the
    (width × n) activations."""
    threads = row_workers() if threads is None else max(1, threads)
    k = arch.num_params
    macs = 3.0 * n * k * batch
    widths = getattr(getattr(arch, "kernel_spec", None), "widths", None) or (arch.d, 1)
    layers = max(len(widths) - 1, 1)
    elements = n * batch * float(sum(widths[1:]))
    blas_threads = threads if macs >= 2e6 else 1  # OpenBLAS splits only large products
    return {"compiled": KERNEL_SEC_PER_CALL + macs * KERNEL_SEC_PER_MAC / min(threads, batch),
            "numpy": NUMPY_SEC_PER_LAYER * 3 * layers + macs * BLAS_SEC_PER_MAC / blas_threads
            + elements * NUMPY_SEC_PER_ELEMENT}


def choose_host_engine(arch: Architecture, n: int, loss_name: str, dtype: str = "float64",
                       batch: int = 1) -> str | None:
    """The host engine ``auto`` takes for ``arch`` on ``n`` CPU samples: ``compiled`` or
    ``numpy`` by :func:`predicted_costs` (``compiled`` only where it applies), None when
    neither applies."""
    X = np.empty((0, arch.d), dtype=np.dtype(dtype))
    options = [e for e, why in (("compiled", compiled_unsupported(arch=arch, X=X, loss_name=loss_name)),
                                ("numpy", numpy_unsupported(arch=arch, X=X))) if why is None]
    if not options:
        return None
    costs = predicted_costs(arch, n, batch)
    return min(options, key=lambda e: costs[e])


def _choose(engine: str, arch, X, loss_name: str, batch: int = 1) -> str:
    """``engine`` resolved for ``arch`` on data ``X`` with loss ``loss_name``
    (``correlation``: ∇𝒩); ``auto`` by :func:`choose_host_engine` on the CPU, ``torch``
    on any other device or where no host engine applies."""
    if engine not in ENGINES:
        raise ValueError(f"unknown GD engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "torch":
        return "torch"
    if engine == "compiled":
        why = compiled_unsupported(arch=arch, X=X, loss_name=loss_name)
        if why is not None:
            raise ValueError(f"the compiled GD engine cannot run this: {why}")
        return "compiled"
    if engine == "numpy":
        why = numpy_unsupported(arch=arch, X=X)
        if why is not None:
            raise ValueError(f"the numpy GD engine cannot run this: {why}")
        return "numpy"
    if not is_numpy(X) and X.device.type != "cpu":
        return "torch"
    dtype = str(X.dtype).removeprefix("torch.")
    if dtype not in ("float32", "float64"):
        return "torch"
    return choose_host_engine(arch, X.shape[0], loss_name, dtype, batch) or "torch"


def resolve_engine(objective, engine: str = "auto", batch: int = 1) -> str:
    """The engine that ``engine`` means for ``objective`` (``batch`` rows at a time):
    ``auto`` becomes ``torch`` on a CUDA device and the cheaper of ``compiled`` and
    ``numpy`` on the CPU (:func:`choose_host_engine`).

    Raises:
        ValueError: unknown engine, or ``compiled``/``numpy`` asked for where it cannot
            run (the message says why).
    """
    return _choose(engine, objective.arch, objective.X, objective.loss.name, batch)


def make_stepper(objective, lr: float, engine: str = "auto", batch: int = 1) -> Stepper:
    """The GD stepper of ``engine`` (see :func:`resolve_engine`) for ``objective`` and
    step ``lr``."""
    chosen = resolve_engine(objective, engine, batch)
    if chosen == "compiled":
        return _compiled_stepper(objective, lr)
    if chosen == "numpy":
        return _numpy_stepper(objective, lr)
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


def value_and_grad_fn(objective, engine: str = "auto", *, host: bool = False, batch: int = 1):
    """``f(w) -> (𝓛(w), ∇𝓛(w))`` for w (k,) or (B, k), computed by ``engine`` (see
    :func:`resolve_engine`); the host engines take no autograd (use ``torch`` to
    differentiate through it). ``host=True``: f takes and returns numpy arrays, for the
    integrators that keep their state on the host (:mod:`ncfkit.flow`): a host engine
    straight, or torch on the data's device with one transfer each way."""
    chosen = resolve_engine(objective, engine, batch)
    if chosen == "torch":
        f = objective.value_and_grad
        return _unbatched(_on_host(f, objective.X)) if host else f
    if chosen == "numpy":
        return _unbatched(_Blas(objective.arch, objective.X, objective.y, objective.loss))
    return _from_kernel(_kernel(objective), host)


def ncf_value_and_grad_fn(arch: Architecture, X: Array, ytilde: Array, engine: str = "auto", *,
                          host: bool = False, batch: int = 1):
    """``f(u) -> (𝒩(u), ∇𝒩(u))`` (eq. 3) for u (k,) or (B, k): by ``engine`` with the
    correlation loss (``auto``: the cheaper host engine on the CPU, see
    :func:`resolve_engine`), else :func:`ncfkit.ncf.ncf_value_and_grad`; ``host`` as in
    :func:`value_and_grad_fn`."""
    chosen = _choose(engine, arch, X, "correlation", batch)
    if chosen == "torch":
        f = _unbatched(lambda u: ncf_value_and_grad(arch, X, ytilde, u))
        return _unbatched(_on_host(f, X)) if host else f
    if chosen == "numpy":
        return _unbatched(_Blas(arch, X, ytilde))
    return _from_kernel(_Kernel(arch, X, ytilde, "correlation", 1.0), host)
