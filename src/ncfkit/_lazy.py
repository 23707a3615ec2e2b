"""torch, imported the first time ncfkit uses it.

Importing torch costs ~2.5 s and ~200 MB here, more than a whole ``escape --method flow``
run of the paper's Figure-1 network once its gradients come from the compiled kernel
(:mod:`ncfkit.fastgd`). Modules therefore write ``from ._lazy import torch``: the name is
a stand-in module whose first attribute access imports the real torch (and runs the
hooks registered with :func:`on_load`, such as the CLI's thread setting); later accesses
are plain attribute lookups. Code that runs on numpy arrays and the kernel alone (see
:mod:`ncfkit.arrays`) never touches it, so such a process never imports torch.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

__all__ = ["torch", "on_load", "loaded"]

_hooks: list[Callable[[types.ModuleType], None]] = []


def _load() -> types.ModuleType:
    fresh = "torch" not in sys.modules
    import torch as module

    if fresh or _hooks:
        hooks = list(_hooks)
        _hooks.clear()
        for hook in hooks:
            hook(module)
    return module


class _LazyTorch(types.ModuleType):
    def __getattr__(self, name: str):
        value = getattr(_load(), name)
        setattr(self, name, value)
        return value


torch = _LazyTorch("torch", "torch, imported on first use (ncfkit._lazy)")


def loaded() -> bool:
    """Whether the real torch has been imported in this process."""
    return "torch" in sys.modules


def on_load(hook: Callable[[types.ModuleType], None]) -> None:
    """Run ``hook(torch)`` once torch is imported (now, if it already is)."""
    if loaded():
        hook(sys.modules["torch"])
    else:
        _hooks.append(hook)
