"""The plateau detector (ncfkit.events): what is a plateau and what is a transient.

Oracles: Example 1's closed form (Section 3.1: the saddle (2, 0), then the minimum (2, 1),
nothing in between), the samples of the Figure-4 run around its false saddle (a
slow-down between two stages of the drop at loss 574.8 / ‖∇𝓛‖ = 108.5 that is not a
plateau), a synthetic staircase, and a steady decay (no plateau)."""

import json
import math

import numpy as np
import pytest

from ncfkit.dynamics import Settings, parse_until
from ncfkit.events import EventDetector, EventSettings, Phase, detect_events
from ncfkit.theory import example1_grad_norm, example1_loss, example1_psi
from utils import run_cli

#: (time since escape, loss, ‖∇𝓛‖) of the Figure-4 run (examples/fig4.sh, --method flow,
#: rtol 1e-8), every 6th recorded sample and all around the false saddle; 𝓛(0) = 6446.28.
FIG4 = [
    (-0.003637, 6431.52, 60.929),
    (-0.001281, 6414.44, 117.52),
    (0.0, 6381.82, 214.36),
    (0.000875, 6300.22, 428.3),
    (0.001199, 6211.22, 637.5),
    (0.00136, 6126.83, 820.98),
    (0.001461, 6044.4, 989.4),
    (0.001533, 5963.07, 1146.7),
    (0.001587, 5882.47, 1294.8),
    (0.00163, 5802.37, 1434.8),
    (0.001665, 5722.65, 1567.4),
    (0.001695, 5643.24, 1693.1),
    (0.001721, 5564.05, 1812.1),
    (0.001744, 5485.11, 1924.5),
    (0.001764, 5406.24, 2030.5),
    (0.001782, 5327.66, 2129.8),
    (0.001799, 5249.19, 2222.6),
    (0.001814, 5170.87, 2308.6),
    (0.001828, 5092.7, 2387.6),
    (0.001841, 5014.52, 2459.4),
    (0.001854, 4936.45, 2523.6),
    (0.001866, 4858.61, 2579.6),
    (0.001877, 4780.81, 2627.1),
    (0.001888, 4703.09, 2665.4),
    (0.001899, 4625.49, 2693.7),
    (0.001917, 4496.11, 2716.1),
    (0.001927, 4418.55, 2712.5),
    (0.001952, 4240.3, 2644.4),
    (0.001987, 4019.59, 2397.5),
    (0.002031, 3815.18, 1877.4),
    (0.002108, 3654.06, 1065.1),
    (0.002219, 3561.21, 874.47),
    (0.002316, 3481.95, 943.44),
    (0.002399, 3402.61, 1016.8),
    (0.00247, 3323.52, 1086.3),
    (0.002533, 3244.63, 1151.9),
    (0.002589, 3165.92, 1213.9),
    (0.00264, 3087.33, 1272.5),
    (0.002687, 3008.88, 1328.0),
    (0.002729, 2930.5, 1380.5),
    (0.002769, 2852.24, 1430.2),
    (0.002806, 2774.06, 1477.1),
    (0.002841, 2695.94, 1521.3),
    (0.002874, 2617.9, 1562.5),
    (0.002905, 2539.93, 1600.5),
    (0.002935, 2462.02, 1635.0),
    (0.002963, 2384.13, 1665.5),
    (0.002991, 2306.39, 1691.3),
    (0.003017, 2228.74, 1711.8),
    (0.003044, 2151.24, 1726.0),
    (0.003087, 2022.11, 1733.0),
    (0.003156, 1819.06, 1687.2),
    (0.003236, 1608.86, 1528.1),
    (0.003322, 1439.5, 1259.7),
    (0.003421, 1319.89, 947.14),
    (0.003551, 1235.26, 689.78),
    (0.003734, 1163.88, 589.61),
    (0.003963, 1085.78, 584.71),
    (0.004188, 1008.13, 590.99),
    (0.00442, 927.571, 584.95),
    (0.00464, 854.758, 560.04),
    (0.004803, 806.201, 529.63),
    (0.004994, 757.024, 484.4),
    (0.005228, 708.968, 420.98),
    (0.005632, 654.807, 310.03),
    (0.006282, 615.944, 189.32),
    (0.007192, 594.301, 129.24),
    (0.008298, 579.214, 109.41),
    (0.008861, 572.56, 108.82),
    (0.009249, 567.894, 110.68),
    (0.009839, 560.341, 116.02),
    (0.012246, 517.933, 148.36),
    (0.014203, 475.377, 134.43),
    (0.015543, 457.558, 93.975),
    (0.016621, 450.726, 66.037),
    (0.017689, 447.333, 47.543),
    (0.018992, 445.235, 33.48),
    (0.020652, 443.935, 23.221),
    (0.022968, 443.069, 16.225),
    (0.028588, 442.071, 11.77),
    (0.058087, 438.917, 8.6858),
    (0.079471, 437.718, 6.4041),
    (0.100807, 437.058, 4.7113),
    (0.119404, 436.749, 3.4734),
    (0.141014, 436.557, 2.5641),
    (0.222123, 436.126, 2.5646),
    (0.22292, 436.12, 2.5762),]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_figure4_false_saddle_is_a_transient():
    det = EventDetector(6446.28)
    fired = {}
    for k, (t, loss, g) in enumerate(FIG4):
        fired[k] = det.update(t, k, loss, g)
    k_false = next(k for k, row in enumerate(FIG4) if row[1] == 572.56)
    assert "saddle" in fired[k_false]  # a candidate for a moment ...
    assert any("dropped" in fired[k] for k in range(k_false + 1, len(FIG4)))  # ... then dropped
    (p,) = det.all_plateaus()
    assert p.confirmed and not p.left and det.phase == Phase.AT_SADDLE
    # the saddle is on the way to the real plateau (433.765): loss < 440, ‖∇𝓛‖ < 3
    assert 433 < p.saddle.loss < 440 and p.saddle.grad_norm < 3
    assert p.drop_top == 6446.28 and p.drop_peak_grad == pytest.approx(2716.1)
    assert p.drop_half_time < p.enter_time < p.saddle.time


@pytest.mark.parametrize("delta", [1e-2, 1e-4, 1e-6], ids=lambda d: f"delta={d:g}")
def test_example1_saddle_then_minimum_nothing_in_between(delta):
    t = np.linspace(0.0, 9.0, 18001)
    w = example1_psi(t, delta)
    det = detect_events(t, example1_loss(w), example1_grad_norm(w))
    sad, minimum = det.all_plateaus()
    assert sad.confirmed and sad.left and sad.index == 1
    assert sad.saddle.loss == pytest.approx(1.0, abs=0.01)
    assert np.abs(w[sad.saddle.step] - [2.0, 0.0]).max() < 0.07
    assert sad.exit.loss < 0.99 * sad.saddle.loss <= sad.saddle.loss
    assert minimum.index == 2 and minimum.stationary and minimum.confirmed and not minimum.left
    assert minimum.drop_top == sad.saddle.loss
    assert np.abs(w[minimum.saddle.step] - [2.0, 1.0]).max() < 1e-9
    assert det.stationary and det.phase == Phase.PAST_SADDLE
    # the plateau at (2, 0) lasts longer, against its drop, as δ shrinks (ln 1/δ)
    assert (sad.exit.time - sad.enter_time) / sad.drop_time > 1.0


def test_staircase_three_plateaus():
    """100 → 20 → 5 → 0.5 in sharp steps with long flats: three plateaus, each the
    next one's top; the last one open."""
    t = np.linspace(0, 20, 20001)
    loss = 100 - 80 * _sigmoid((t - 1) / 0.02) - 15 * _sigmoid((t - 1.3) / 0.02) - 4.5 * _sigmoid((t - 12) / 0.1)
    g = np.sqrt(np.abs(np.gradient(loss, t))) + 1e-3  # gradient flow: d𝓛/dt = −‖∇𝓛‖²
    det = detect_events(t, loss, g)
    ps = det.all_plateaus()
    assert [round(p.saddle.loss, 2) for p in ps] == [20.0, 5.0, 0.5]
    assert [p.left for p in ps] == [True, True, False] and all(p.confirmed for p in ps)
    assert [p.drop_top for p in ps[1:]] == [ps[0].saddle.loss, ps[1].saddle.loss]
    assert ps[1].exit.time == pytest.approx(11.55, abs=0.05)
    assert det.saddle == ps[0].saddle and det.phase == Phase.PAST_SADDLE


def test_steady_decay_has_no_confirmed_plateau():
    """𝓛 = 100·e^{−t} (‖∇𝓛‖ = √𝓛): ‖∇𝓛‖ falls 10× and more from its peak, yet the loss
    never stays in a 1% band: the candidate is reported open, unconfirmed."""
    t = np.linspace(0, 12, 12001)
    loss = 100 * np.exp(-t)
    det = detect_events(t, loss, np.sqrt(loss))
    (p,) = det.all_plateaus()
    assert not p.confirmed and not p.left and p.saddle.step == t.size - 1
    assert det.phase == Phase.ESCAPING and not det.plateaus


def test_stationary_confirms_and_freezes():
    det = EventDetector(10.0, EventSettings(stationary_rtol=1e-6))
    assert det.update(0.0, 0, 9.0, 1.0) == ("escape",)
    det.update(1.0, 1, 5.0, 2.0)
    fired = det.update(2.0, 2, 4.0, 1e-7)
    assert {"saddle", "plateau", "stationary"} <= set(fired)
    assert det.update(3.0, 3, 0.1, 1e-6) == ()  # nothing after convergence ...
    assert det.update(4.0, 4, 0.1, 1e-9) == ("saddle",)  # ... but the saddle settling
    (p,) = det.all_plateaus()
    assert p.stationary and p.confirmed and p.saddle.time == 4.0 and len(det.all_plateaus()) == 1


def test_plateau_ratio_zero_confirms_at_once_and_settings_validate():
    t = np.linspace(0, 12, 1201)
    loss = 100 * np.exp(-t)
    det = detect_events(t, loss, np.sqrt(loss), EventSettings(plateau_ratio=0.0))
    assert det.all_plateaus()[0].confirmed  # ratio 0: any candidate that stays in its band
    for bad in (dict(plateau_ratio=-1.0), dict(plateau_ratio=math.inf), dict(loss_atol=-1.0)):
        with pytest.raises(ValueError):
            EventSettings(**bad)


@pytest.mark.parametrize("text, k", [("saddle", 1), ("saddles:1", 1), ("saddles:3", 3), ("saddles: 2", 2),
                                     ("converged", None), ("max-time", None)])
def test_parse_until(text, k):
    assert parse_until(text) == k
    assert Settings(max_time=1.0, until=text).until == text


@pytest.mark.parametrize("text, why", [("saddles:0", "must be >= 1"), ("saddles:-2", "must be >= 1"),
                                       ("saddles:1.5", "whole number"), ("saddles:", "whole number"),
                                       ("saddles:two", "whole number"), ("forever", "saddles:K"),
                                       ("saddles", "saddles:K")])
def test_parse_until_rejects(text, why):
    with pytest.raises(ValueError, match=why):
        parse_until(text)
    with pytest.raises(ValueError, match=why):
        Settings(max_time=1.0, until=text)


@pytest.mark.parametrize("value, why", [("saddles:0", "must be >= 1"), ("saddles:-1", "must be >= 1"),
                                        ("saddles:2.5", "whole number"), ("later", "expected saddle")])
def test_cli_until_bad_values_exit_2_with_one_line(ex1_files, value, why):
    res = run_cli("escape", ex1_files / "ex1.npz", "--arch", "diag", "--init", ex1_files / "w0.npz",
                  "--delta", "1e-3", "--until", value)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"--until '{value}'" in res.stderr and why in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_until_saddles_2_follows_example1_to_its_minimum(ex1_files):
    res = run_cli("escape", ex1_files / "ex1.npz", "--arch", "diag", "--init", ex1_files / "w0.npz",
                  "--delta", "1e-3", "--until", "saddles:2", "--max-time", "10", "--delta-ref", "none", "--json")
    assert res.exit_code == 0, res.output
    run = json.loads(res.stdout)["runs"][0]
    assert run["status"] == "stationary" and run["saddle_loss"] == pytest.approx(1.0, abs=1e-3)
    assert run["final_loss"] < 1e-12
    sad, minimum = run["plateaus"]  # docs/phases.md: every plateau, measured
    assert sad["kind"] == "strict saddle" and minimum["kind"] == "minimum" and minimum["stationary"]
    assert sad["active_units"] == [[0]] and minimum["prev_zero_grown"] == [[1]]
    assert sad["next"]["first"]["unit"] == 1 and sad["next"]["time"] > sad["exit_time"] > sad["time"]


@pytest.mark.parametrize("delta, loss", [(0.1, 0.853), (0.05, 0.940)])
def test_no_plateau_reports_the_first_slow_down_as_before(delta, loss):
    """Example 1 from δ ≥ 0.05: the loss only shoulders on its way to the minimum (no
    plateau by the ratio rule); the saddle reported is that shoulder, left, as a rule
    looking at the dip of ‖∇𝓛‖ alone finds it (Figure 2's large-δ runs keep their numbers)."""
    t = np.linspace(0.0, 3.0, 6001)
    w = example1_psi(t, delta)
    det = detect_events(t, example1_loss(w), example1_grad_norm(w))
    assert det.plateaus == [] and det.all_plateaus() == []
    assert det.transient is not None and not det.transient.confirmed and det.transient.left
    assert det.saddle == det.transient.saddle and det.saddle.loss == pytest.approx(loss, abs=0.01)
    assert det.saddle_left and det.phase == Phase.ESCAPING
