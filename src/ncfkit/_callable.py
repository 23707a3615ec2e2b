"""Modules that are also the API function of their name.

``ncfkit.escape``, ``ncfkit.sparsity`` and ``ncfkit.plot`` are modules (the library
behind each command) and, in the notebook API, functions (:mod:`ncfkit.api`). Python sets
a package attribute to the submodule once it is imported, so the name cannot simply be
the function; instead each of these modules is made callable, and calling it calls the
API function of the same name: ``ncfkit.escape(problem, deltas=[0.02])`` and
``from ncfkit.escape import run_escape`` both work.
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from . import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Let ``module_name`` (an ncfkit module) be called as :mod:`ncfkit.api`'s function of its name."""
    sys.modules[module_name].__class__ = _CallableModule
