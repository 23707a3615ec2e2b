"""Shared test set-up: one torch thread (as the CLI uses by default), float64 defaults
are passed explicitly in each test; fixtures more than one test file uses."""

import numpy as np
import pytest
import torch

from ncfkit.dynamics import Objective
from ncfkit.losses import make_loss
from ncfkit.models import make_architecture, random_direction

F64 = torch.float64

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_square_net():
    """2-layer square net (L_h = 3) on 10 seeded Gaussian points: escape within ~300 steps."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(10, 3, generator=g, dtype=F64)
    y = torch.randn(10, generator=g, dtype=F64)
    arch = make_architecture("mlp", 3, "4", "square")
    w0 = random_direction(arch.num_params, g, dtype=F64)
    return Objective(arch, X, y, make_loss("square", "sum")), w0


@pytest.fixture(scope="module")
def ex1_files(tmp_path_factory):
    """Example 1 as files: ``ex1.npz`` (X = I, y = (4, 1)) and ``w0.npz`` (w = (1, 1))."""
    root = tmp_path_factory.mktemp("ex1")
    np.savez(root / "ex1.npz", X=np.eye(2), y=np.array([4.0, 1.0]))
    np.savez(root / "w0.npz", w=np.array([1.0, 1.0]))
    return root
