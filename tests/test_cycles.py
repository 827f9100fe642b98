"""The limit-cycle period (cycles.oscillation / limit_cycle) on planted series whose period is
known exactly: an integer number of evaluations on a fine grid, with a competing
autocorrelation peak before the true one, so that a period one lag off, or the first peak
after the zero crossing instead of the highest, gives an answer these tests refuse."""

import numpy as np
import pandas as pd
import pytest

from mechgrok import cycles as cy


def _metrics(steps, test_acc, weight_norm):
    return pd.DataFrame({"step": steps, "train_loss": 0.0, "test_loss": 0.0,
                         "train_acc": np.where(steps >= 100, 1.0, 0.5), "test_acc": test_acc,
                         "weight_sq": np.asarray(weight_norm) ** 2})


def _half_range(x):
    """The amplitude by its definition: half the 5-95 percentile range."""
    return (np.percentile(x, 95) - np.percentile(x, 5)) / 2


def _with_harmonic(t, period, a1, a2):
    """A fundamental of ``period`` plus a stronger second harmonic: its autocorrelation is
    (a1^2 cos(2 pi tau / P) + a2^2 cos(4 pi tau / P)) / (a1^2 + a2^2), which after the first
    zero crossing peaks first at tau = P / 2 (value (a2^2 - a1^2) / (a1^2 + a2^2) = 0.6 for
    a2 = 2 a1) and highest at tau = P (1)."""
    return a1 * np.sin(2 * np.pi * t / period) + a2 * np.sin(4 * np.pi * t / period)


def test_limit_cycle_period_is_the_highest_acf_peak_to_the_step_on_an_every_step_grid():
    steps = np.arange(0, 3001)  # evaluated at every step
    t = steps - 500
    acc_wave = _with_harmonic(t, 37, 0.01, 0.02)    # period 37; competing peak at 18.5
    norm_wave = _with_harmonic(t, 74, 1.0, 2.0)     # period 74; competing peak at 37
    acc = np.where(steps < 500, 0.01, 0.95 + acc_wave)
    norm = np.where(steps < 500, 40.0, 30.0 + norm_wave - steps / 1000)  # plus a linear decay
    lc = cy.limit_cycle(_metrics(steps, acc, norm))
    assert lc.verdict == "oscillation" and lc.grokked_step == 500
    # integer periods on a one-step grid: exactly, not "about" (one lag off is 36 or 38)
    assert lc.test_acc.period == 37
    assert lc.weight_norm.period == 74
    w = steps >= 500
    assert lc.test_acc.amplitude == pytest.approx(_half_range(acc_wave[w]), rel=0.03)
    assert lc.weight_norm.amplitude == pytest.approx(_half_range(norm_wave[w]), rel=0.03)
    assert lc.test_acc.acf_peak > 0.9 and lc.weight_norm.acf_peak > 0.9  # the highest peak, ~1, not 0.6


def test_oscillation_period_on_a_two_step_grid_is_lag_times_spacing():
    steps = np.arange(0, 4000, 2)  # evaluated every 2 steps: a 74-step period is 37 lags
    values = 5.0 + _with_harmonic(steps, 74, 1.0, 2.0)
    o = cy.oscillation(steps, values)
    assert o.found and o.period == 74  # one lag off: 72 or 76; the first peak: 36 or 38
    assert o.acf_peak > 0.9
    # the first-peak rule's answer, computed from the definition, differs: the test can tell
    r = values - values.mean()
    acf = np.array([r[: len(r) - k] @ r[k:] for k in range(60)]) / (r @ r)
    first = next(k for k in range(1, 59) if acf[k] < 0)
    first_peak = next(k for k in range(first, 59) if acf[k - 1] < acf[k] >= acf[k + 1])
    assert first_peak * 2 in (36, 38) and acf[first_peak] < 0.7


def test_oscillation_with_a_single_period_and_no_harmonic_is_exact_too():
    steps = np.arange(0, 2000)
    o = cy.oscillation(steps, np.cos(2 * np.pi * steps / 37))
    assert o.period == 37 and o.amplitude == pytest.approx(_half_range(np.cos(2 * np.pi * steps / 37)), rel=1e-3)
