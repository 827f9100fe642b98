"""Milestones on planted evaluation rows: the thresholds are strict (train accuracy exactly
0.99, or test accuracy exactly 0.9, does not count; the next float above does), and the stop
rule stops exactly ``stop_after_grok`` evaluations after the first grokked one."""

import numpy as np
import pandas as pd
import pytest

from mechgrok import milestones as ms

ABOVE_99, ABOVE_90 = np.nextafter(0.99, 1.0), np.nextafter(0.9, 1.0)


def _table(train_acc, test_acc, every=10):
    n = len(train_acc)
    return pd.DataFrame({"step": np.arange(n) * every, "train_acc": train_acc, "test_acc": test_acc})


def test_thresholds_are_the_documented_constants():
    assert (ms.MEMORISED_TRAIN_ACC, ms.GROKKED_TEST_ACC) == (0.99, 0.9)


@pytest.mark.parametrize("just_above_99, just_above_90", [(ABOVE_99, ABOVE_90), (0.991, 0.901)],
                         ids=["next_float", "a_thousandth"])
def test_memorised_and_grokked_need_strictly_more_than_the_threshold(just_above_99, just_above_90):
    train = [0.5, 0.99, 0.99, just_above_99, 1.0, 1.0]
    test = [0.1, 0.5, 0.9, 0.9, just_above_90, 1.0]
    tr = ms.transition_metrics(_table(train, test))
    # from the definition: the first row strictly above, by hand
    assert tr.memorised_step == 30 and tr.grokked_step == 40 and tr.delay == 10 and tr.grokked
    rows = _table(train, test).to_dict("records")
    assert ms.grokked_step(rows) == 40


def test_accuracy_exactly_at_the_threshold_never_counts():
    tr = ms.transition_metrics(_table([0.5, 0.99, 0.99], [0.9, 0.9, 0.9]))
    assert tr.memorised_step is None and tr.grokked_step is None and not tr.grokked and tr.delay is None
    rows = _table([0.5, 0.99, 0.99], [0.9, 0.9, 0.9]).to_dict("records")
    assert ms.grokked_step(rows) is None
    assert not any(ms.should_stop(rows[:k], 0) for k in range(1, 4)), "0.9 is not grokked, even with 0 to wait"


@pytest.mark.parametrize("wait", [0, 1, 2, 3])
def test_should_stop_exactly_stop_after_grok_evaluations_after_the_first_grokked_one(wait):
    # rows 0..2 below (0.9 exactly at row 2), first grokked row at index 3, then more rows
    test = [0.1, 0.5, 0.9, ABOVE_90, 0.95, 0.85, 1.0, 1.0, 1.0]
    rows = _table([1.0] * len(test), test).to_dict("records")
    first = 3
    stops = [ms.should_stop(rows[:k], wait) for k in range(1, len(rows) + 1)]
    # the rule by hand: the k-th prefix ends at row k-1, which is (k-1) - first evaluations after it
    assert stops == [(k - 1) - first >= wait for k in range(1, len(rows) + 1)]
    assert stops.index(True) == first + wait  # stops at the row `wait` evaluations after the first grokked one
    assert not any(ms.should_stop(rows[:k], None) for k in range(1, len(rows) + 1))


def _bump_then_grok():
    """A run that memorises by step 100 with the usual small rise of test accuracy on the way
    (0 -> 0.3 between 80 and 100: the sharpest bend of the whole run), a plateau, then grokking:
    test accuracy starts rising at 1600 (0.3 -> 0.95 over 1600..1730), evaluated every 10."""
    steps = np.arange(0, 2001, 10)
    train = np.clip(steps / 100, 0, 1.0)
    test = np.where(steps < 90, 0.0, 0.3)
    test = np.where(steps >= 1610, np.minimum(0.3 + 0.05 * (steps - 1600) / 10, 1.0), test)
    return pd.DataFrame({"step": steps, "train_acc": train, "test_acc": test})


def test_the_grokking_acceleration_is_the_bend_of_the_grokking_transition_not_the_memorisation_bump():
    m = _bump_then_grok()
    tr = ms.transition_metrics(m)
    assert (tr.memorised_step, tr.grokked_step) == (100, 1730)  # first train acc > 0.99; first test acc > 0.9
    second = np.diff(m["test_acc"].to_numpy(), 2)  # even grid: curvature = second difference, by hand
    inner = m["step"].to_numpy()[1:-1]
    assert tr.max_acceleration_step == inner[np.argmax(second)] == 80  # the whole run's: the bump (0 -> 0.3)
    during = (inner >= 100) & (inner <= 1730)
    assert tr.grokking_acceleration_step == inner[during][np.argmax(second[during])] == 1600


def test_the_grokking_acceleration_needs_a_grokked_run_and_starts_at_the_first_step_without_memorising():
    m = _bump_then_grok()
    assert ms.transition_metrics(m.assign(test_acc=0.3)).grokking_acceleration_step is None
    # a run that generalises before it memorises (train acc stays at 0.5): the window is 0..grokked
    tr = ms.transition_metrics(m.assign(train_acc=0.5))
    assert tr.memorised_step is None and tr.grokking_acceleration_step == tr.max_acceleration_step == 80


def test_drops_after_grok_are_runs_of_evaluations_under_the_line_after_grokking():
    import pandas as pd

    from mechgrok.milestones import drops_after_grok

    # memorised and below 0.5 before grokking (ignored), grokked at 30, two drops: 50-60 and 90
    test = [0.01, 0.2, 0.4, 0.95, 0.99, 0.3, 0.1, 0.97, 0.98, 0.2, 1.0]
    train = [0.5, 1.0, 1.0, 1.0, 1.0, 0.4, 0.05, 1.0, 1.0, 0.3, 1.0]
    m = pd.DataFrame({"step": range(0, 110, 10), "test_acc": test, "train_acc": train})
    assert drops_after_grok(m.sample(frac=1, random_state=0)) == [
        {"start": 50, "end": 60, "min_test_acc": 0.1, "min_train_acc": 0.05},
        {"start": 90, "end": 90, "min_test_acc": 0.2, "min_train_acc": 0.3}]
    assert drops_after_grok(m, below=0.05) == []
    assert drops_after_grok(m.assign(test_acc=[0.1] * 11)) == []
