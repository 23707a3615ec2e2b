"""Shared test set-up: one torch thread (as the CLI uses by default), float64 defaults
are passed explicitly in each test; fixtures more than one test file uses."""

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
