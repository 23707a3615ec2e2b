"""The Dormand–Prince integrator against closed-form gradient flows (SPEC §3)."""

import math

import numpy as np
import pytest
import torch

from ncfkit.flow import DormandPrince, StepSizeUnderflow
from ncfkit.losses import make_loss
from ncfkit.models import Diagonal
from ncfkit.ncf import loss_value_and_grad

F64 = torch.float64


def example1_psi(t: float, delta: float) -> torch.Tensor:
    """ψ(t, δw0) of Example 1 with w0 = (1/√2, 1/√2) (SPEC §3, Appendix E)."""
    d2 = delta * delta
    return torch.tensor([2 * delta / math.sqrt(d2 + (8 - d2) * math.exp(-32 * t)),
                         delta / math.sqrt(d2 + (2 - d2) * math.exp(-8 * t))], dtype=F64)


def example1_rhs():
    """ẇ = −∇𝓛(w) of Example 1 by torch's closed form, on the integrator's numpy state."""
    arch, loss = Diagonal(2, 2), make_loss("square")
    X, y = torch.eye(2, dtype=F64), torch.tensor([4.0, 1.0], dtype=F64)

    def rhs(w):
        value, grad = loss_value_and_grad(arch, X, y, loss, torch.from_numpy(w))
        return -grad.numpy(), value.numpy()

    return rhs


@pytest.mark.parametrize("deltas", [(1e-3,), (1e-2, 1e-3, 1e-6)], ids=["one-delta", "batch-of-3"])
def test_example1_closed_form(deltas):
    w0 = torch.full((2,), 1 / math.sqrt(2), dtype=F64)
    stepper = DormandPrince(example1_rhs(), torch.stack([d * w0 for d in deltas]).numpy(), rtol=1e-10)
    worst = 0.0
    while stepper.t < 3.0:
        stepper.step()
        for b, delta in enumerate(deltas):
            exact = example1_psi(stepper.t, delta)
            worst = max(worst, float(np.linalg.norm(stepper.y[b] - exact.numpy()) / exact.norm()))
    assert worst <= 1e-8, f"relative error {worst:.2e} against the closed form"
    # The run passed escape and reached the minimum (2, 1) of eq. (7).
    assert np.allclose(stepper.y[0], [2.0, 1.0], atol=1e-3)
    # The aux channel carries the loss at the accepted point.
    assert float(stepper.aux[0]) == pytest.approx(float(((stepper.y[0] ** 2 - [4.0, 1.0]) ** 2).sum()), rel=1e-12)


def test_steps_are_large_on_the_plateau():
    """Near the origin the flow is exponential growth; the error control must let the
    steps grow far beyond the GD step a plain loop would need (here 1e-3)."""
    w0 = np.full((1, 2), 1e-6 / math.sqrt(2))
    stepper = DormandPrince(example1_rhs(), w0, rtol=1e-8)
    while stepper.t < 0.5:
        stepper.step()
    assert stepper.n_accepted < 100


def test_underflow_is_a_run_error():
    def rhs(y):  # blows up in finite time at t = 1: y' = y², y(0) = 1
        return y * y, y.sum(-1)

    stepper = DormandPrince(rhs, np.ones((1, 1)), rtol=1e-10)
    with pytest.raises(StepSizeUnderflow, match="underflowed at t = "):
        for _ in range(100000):
            stepper.step()
    assert 0.99 < stepper.t < 1.0


def test_bad_tolerance():
    with pytest.raises(ValueError, match="rtol"):
        DormandPrince(example1_rhs(), np.ones((1, 2)), rtol=0.0)
