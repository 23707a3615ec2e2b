"""ncfkit: the neural correlation function (NCF) of homogeneous networks, its KKT
points, their sparsity, and gradient-flow escape from small initialization.

In a notebook::

    import ncfkit
    problem = ncfkit.Problem.load("data.npz", hidden=[50], act="square", reduction="mean")
    kkt = ncfkit.find_kkt_points(problem)
    run = ncfkit.escape(problem, deltas=[0.02], method="flow")
    run.summary(); run.save("run.h5"); ncfkit.plot(run, "run.png")

(:mod:`ncfkit.api`; every command of the ``ncfkit`` CLI is one call of it.)

The science follows Kumar & Haupt, "Towards Understanding Gradient Flow Dynamics of
Homogeneous Neural Networks Beyond the Origin". Each idea lives in one module:

- :mod:`ncfkit.activations` -- σ(x) = max(x, αx)^p and its grammar (docs/theory.md §1)
- :mod:`ncfkit.losses` -- square / logistic losses and ỹ = −ℓ'(0, y) (eq. 1)
- :mod:`ncfkit.models` -- feed-forward nets (eq. 9) and the diagonal model (Example 1)
- :mod:`ncfkit.ncf` -- the NCF 𝒩(u) = ỹᵀH(X; u) (eq. 3), gradients, Hessian products
- :mod:`ncfkit.kkt` -- KKT points of the constrained NCF (eq. 4, Lemma 20)
- :mod:`ncfkit.clarke` -- Clarke-KKT certificates where the activation has a kink (ReLU, leaky ReLU)
- :mod:`ncfkit.sparsity` -- zero-preserving subsets (Def. 15, Lemmas 16-17, Thm 18)
- :mod:`ncfkit.dynamics` -- gradient descent / gradient flow of the training loss
- :mod:`ncfkit.theory` -- the predictions of Theorems 4, 10, 18 and Corollaries 5-12
- :mod:`ncfkit.phases` -- plateaus beyond the first saddle and which neurons grow next (Appendix G)
- :mod:`ncfkit.escape` -- the escape experiment: governing point, runs, measurements beside theory
- :mod:`ncfkit.io` -- every file format (data, results, weights, provenance)
- :mod:`ncfkit.sweep` -- grids of runs on Dask (or in one process), resumable

Numerics: :mod:`ncfkit.fastgd` (the compiled gradient kernel and GD engines),
:mod:`ncfkit.rk` (the one Runge–Kutta stepper; each method is a Butcher tableau),
:mod:`ncfkit.flow` (the adaptive gradient flow on it), :mod:`ncfkit.validate` (checks of
settings that know the dtype), :mod:`ncfkit.arrays` (the
maths on numpy arrays or torch tensors alike) and :mod:`ncfkit._lazy` (torch imported
on first use, so a CPU run on the kernel never pays for it).
"""

__version__ = "0.1.0"

#: The public API (:mod:`ncfkit.api`), loaded on first use: ``import ncfkit`` imports
#: neither torch nor the numerics.
__all__ = [
    # the problem: data, network, loss
    "Problem",
    # the analyses
    "find_kkt_points", "sparsity", "escape",
    # results
    "load", "plot", "KKTResult", "SparsityResult", "EscapeResult",
    # errors
    "NcfkitError", "InputError", "RunError",
    "__version__",
]

_ERRORS = ("NcfkitError", "InputError", "RunError")
#: Names that are modules too (callable ones, :mod:`ncfkit._callable`).
_MODULES = ("escape", "sparsity", "plot")


def __getattr__(name: str):
    import importlib

    if name in _ERRORS:
        return getattr(importlib.import_module(".errors", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in __all__:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module 'ncfkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
