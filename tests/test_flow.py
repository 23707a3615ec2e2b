"""The Dormand–Prince integrator against closed-form gradient flows (docs/theory.md)."""

import json
import math

import numpy as np
import pytest
import torch

from ncfkit.flow import DormandPrince, StepSizeUnderflow
from ncfkit.losses import make_loss
from ncfkit.models import Diagonal
from ncfkit.ncf import loss_value_and_grad
from utils import run_cli

F64 = torch.float64


def example1_psi(t: float, delta: float) -> torch.Tensor:
    """ψ(t, δw0) of Example 1 with w0 = (1/√2, 1/√2) (docs/theory.md, Appendix E)."""
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


# --------------------------------------------------------------------------- the command line


def _escape(root, *extra):
    args = ["escape", root / "ex1.npz", "--arch", "diag", "--init", root / "w0.npz", "--delta",
            "1e-3", "--method", "flow", "--delta-ref", "none", *extra]
    return run_cli(*args)


def test_cli_flow_matches_example1_closed_form_at_default_tolerance(ex1_files, tmp_path):
    """``escape --method flow`` with its default --rtol: every stored trajectory sample
    (integrator states) within 1e-8 relative of ψ(t, δw0) (docs/theory.md) at δ = 1e-3, t ≤ 3."""
    import h5py

    res = _escape(ex1_files, "--max-time", "3", "--until", "max-time", "--out", tmp_path / "run.h5")
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "run.h5") as f:
        t, w = f["runs/0/trajectory/time"][()], f["runs/0/trajectory/w"][()]
    assert t.size > 50 and t[-1] > 2.5
    exact = np.stack([example1_psi(float(s), 1e-3).numpy() for s in t])
    rel = np.linalg.norm(w - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert rel.max() <= 1e-8, f"max relative error {rel.max():.2e}"


@pytest.mark.parametrize("rtol", ["0", "-1e-6", "1", "nan"])
def test_cli_rejects_bad_tolerance(ex1_files, rtol):
    res = _escape(ex1_files, "--max-time", "1", "--rtol", rtol)
    assert res.exit_code == 2 and "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--rtol" in lines[0]


def test_cli_underflow_fails_with_the_time_and_keeps_the_records(ex1_files, tmp_path, monkeypatch):
    """An integrator that cannot meet its tolerance: exit 1, one line saying at what time,
    and run.h5 written with status failed and the records up to then."""
    import h5py

    import ncfkit.rk as rk

    original = rk.SwitchingStepper.step

    def step(self):
        if self.t > 0.5:
            raise StepSizeUnderflow(f"the integrator cannot meet rtol={self.rtol:g}: the step "
                                    f"size underflowed at t = {self.t:.6g}")
        original(self)

    monkeypatch.setattr(rk.SwitchingStepper, "step", step)
    res = _escape(ex1_files, "--max-time", "3", "--out", tmp_path / "run.h5")
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "underflowed at t = 0.5" in lines[-1]
    assert "records so far kept in" in lines[-1] and "Traceback" not in res.output
    with h5py.File(tmp_path / "run.h5") as f:
        assert f.attrs["status"] == "failed"
        assert f["runs/0"].attrs["status"] == "failed"
        times = f["runs/0/records/time"][()]
        assert times.size > 10 and 0.5 <= times[-1] < 0.6


def test_dense_output_is_scipys_and_fourth_order():
    """The continuous extension has scipy RK45's coefficients, and inside a step it is as
    accurate as the steps themselves (Example 1's closed form at mid-step)."""
    from scipy.integrate._ivp.rk import RK45

    from ncfkit.rk import DOPRI5

    np.testing.assert_allclose(np.asarray(DOPRI5.dense), RK45.P, rtol=1e-15, atol=0)
    w0 = np.full((1, 2), 1e-3 / math.sqrt(2))
    stepper = DormandPrince(example1_rhs(), w0, rtol=1e-10)
    worst = 0.0
    while stepper.t < 1.0:
        stepper.step()
        for theta in (0.0, 0.25, 0.5, 0.9, 1.0):
            s = stepper.t_prev + theta * (stepper.t - stepper.t_prev)
            exact = example1_psi(s, 1e-3).numpy()
            worst = max(worst, float(np.linalg.norm(stepper.dense(theta)[0] - exact) / np.linalg.norm(exact)))
    assert worst <= 1e-8, f"dense output relative error {worst:.2e}"
    assert np.array_equal(stepper.dense(1.0), stepper.y) or np.allclose(stepper.dense(1.0), stepper.y, rtol=1e-14)


def test_error_floor_is_the_rms_weight_after_escape_and_a_thousandth_of_it_before():
    """The absolute tolerance of each row of a batch: rtol × RMS(w) once the row has
    escaped, 10⁻³ of that before (the plateau's escape time hangs on every entry)."""
    from ncfkit.flow import ERROR_FLOOR, _error_floor

    y = np.array([[3.0, 4.0, 0.0, 0.0], [1e-6, 0.0, 0.0, 0.0]])
    atol = _error_floor(y, 1e-8, np.array([True, False]))
    assert atol.shape == (2, 1)
    assert atol[0, 0] == pytest.approx(1e-8 * 2.5 * ERROR_FLOOR["escaped"], rel=1e-12)
    assert atol[1, 0] == pytest.approx(1e-8 * 5e-7 * ERROR_FLOOR["near origin"], rel=1e-12)
    assert ERROR_FLOOR == {"near origin": 1e-3, "escaped": 1.0}



def test_escape_flow_turns_to_chebyshev_after_escape(tmp_path, monkeypatch):
    """Figure 4's setting (3-layer x² net 20-20 on 2-2 teacher data, δ = 0.1): the plateau
    is integrated by dopri5; after escape ∇²𝓛 is stiff and the integrator goes on with
    RKC. The escape is within O(1) of the time predicted from w0 (a plateau of 7·10⁷)."""
    import ncfkit.rk as rk

    seen = []
    original = rk.SwitchingStepper._switch

    def spy(self, new):
        original(self, new)
        seen.append((self.t, self.method))

    monkeypatch.setattr(rk.SwitchingStepper, "_switch", spy)
    data = tmp_path / "d.npz"
    assert run_cli("data", "teacher", "-o", data, "--hidden", "2,2", "--act", "square", "--seed", "0").exit_code == 0
    res = run_cli("escape", data, "--hidden", "20,20", "--act", "square", "--reduction", "mean", "--delta", "0.1",
                  "--method", "flow", "--rtol", "1e-8", "--max-time", "1e9", "--delta-ref", "none", "--json")
    assert res.exit_code == 0, res.output
    run = json.loads(res.stdout)["runs"][0]
    assert run["saddle_time"] is not None
    assert abs(run["escape_time"] - run["predicted_escape_time_w0"]) < 5.0
    assert seen and seen[0][1] == "rkc" and seen[0][0] > run["escape_time"] - 1.0, seen
