"""Data sets: a validated (X, y) pair, and the paper's synthetic teacher data.

The file convention is one sample per row: X of shape (n, d), y of shape (n,). (The
paper writes X as d × n.) Loading from disk lives in :mod:`ncfkit.io`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._lazy import torch
from .errors import InputError
from .models import make_architecture

__all__ = ["Dataset", "validate_xy", "teacher_dataset"]


@dataclass(frozen=True)
class Dataset:
    """Validated training data; ``sha256`` identifies the file it came from."""

    X: np.ndarray
    y: np.ndarray
    source: str = "<memory>"
    sha256: str = ""

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    def tensors(self, dtype=None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """X and y as tensors (float64 unless ``dtype``) on ``device``."""
        dtype = torch.float64 if dtype is None else dtype
        return (torch.as_tensor(self.X, dtype=dtype, device=device),
                torch.as_tensor(self.y, dtype=dtype, device=device))


def validate_xy(X, y, source: str = "<memory>") -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and values; return float64 X (n, d) and y (n,). Raise :class:`InputError`."""
    arrays = {}
    for name, arr in (("X", X), ("y", y)):
        try:
            arr = np.asarray(arr)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{source}: {name} must be a numeric array") from None
        # bool/int/float only: a cast would silently drop the imaginary part of complex
        # data, turn a record array into zeros, or parse strings.
        if arr.dtype.kind not in "biuf":
            raise InputError(f"{source}: {name} must be a real numeric array "
                             f"(got dtype {arr.dtype})")
        arrays[name] = arr.astype(np.float64)
    X, y = arrays["X"], arrays["y"]
    if X.ndim != 2:
        raise InputError(f"{source}: X must have shape (n, d); got rank {X.ndim} shape {X.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError(f"{source}: y must have shape (n,) or (n, 1); got shape {y.shape}")
    if X.shape[0] == 0:
        raise InputError(f"{source}: the data set is empty (n = 0 samples)")
    if X.shape[1] == 0:
        raise InputError(f"{source}: X has d = 0 features")
    if X.shape[0] != y.shape[0]:
        raise InputError(f"{source}: X has {X.shape[0]} rows but y has {y.shape[0]} labels")
    for name, arr in (("X", X), ("y", y)):
        if not np.isfinite(arr).all():
            bad = "NaN" if np.isnan(arr).any() else "Inf"
            raise InputError(f"{source}: {name} contains {bad} values")
    return X, y


def teacher_dataset(
    n: int = 100, d: int = 20, hidden: str = "2", act: str = "square", seed: int = 0,
    arch: str = "mlp",
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's synthetic data (Fig. 1, Sec. 4, App. F): x_i uniform on S^{d-1},
    y_i = H_teacher(x_i) from a small random network with standard normal weights."""
    if n < 1 or d < 1:
        raise InputError(f"teacher data needs n >= 1 and d >= 1 (got n={n}, d={d})")
    from .validate import check_seed

    check_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    X = X / X.norm(dim=1, keepdim=True)
    teacher = make_architecture(arch, d, hidden, act)
    w = torch.randn(teacher.num_params, generator=gen, dtype=torch.float64)
    y = teacher.forward(X, w).numpy()
    if not np.isfinite(y).all():
        bad = "NaN" if np.isnan(y).any() else "Inf"
        raise InputError(f"--act {act} --hidden {hidden}: the teacher's labels overflow float64 ({bad}); "
                         "use a smaller power, fewer or narrower layers")
    from .validate import check_data_range  # labels ncfkit itself would refuse are not written

    check_data_range(X.numpy(), y, "float64", f"--act {act} --hidden {hidden}: the teacher's labels",
                     "use a smaller power, fewer or narrower layers")
    return X.numpy(), y
