"""analyses/freezing_phases.py --at-fractions: the checkpoints chosen are the saved ones nearest
the asked fractions of the base run's plateau (memorised to grokked), computed here by hand on a
planted metrics table."""

import importlib.util
import sys
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

SCRIPT = Path(__file__).parents[1] / "analyses" / "freezing_phases.py"


def _script():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("freezing_phases", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(mem: int | None, grok: int | None, last: int = 20_000, every: int = 100, saved_every: int = 500):
    steps = list(range(0, last + 1, every))
    train = [1.0 if mem is not None and s >= mem else 0.5 for s in steps]
    test = [1.0 if grok is not None and s >= grok else 0.01 for s in steps]
    return SimpleNamespace(path=Path("base"), steps=list(range(0, last + 1, saved_every)),
                           metrics=pd.DataFrame({"step": steps, "train_acc": train, "test_acc": test}))


def test_fractions_pick_the_nearest_saved_checkpoints():
    # memorised at 1200, grokked at 9300: 0.355 -> 4075.5 (nearest saved 4000), 0.613 -> 6165.3 (6000)
    steps, rule = _script().checkpoints(_run(1200, 9300), Namespace(at_fractions="0.355,0.613", from_steps="7,8"))
    assert steps == [4000, 6000]
    assert "1200 to 9300" in rule and "4000 (0.346)" in rule and "6000 (0.593)" in rule


def test_fraction_exactly_between_two_checkpoints_and_at_the_ends():
    steps, _ = _script().checkpoints(_run(1000, 3000), Namespace(at_fractions="0,1,0.4,0.37", from_steps=""))
    assert steps == [1000, 3000, 2000, 1500]  # 0.4 -> 1800: 2000 is 200 away; 0.37 -> 1740: 1500 is 240 away


def test_steps_given_are_used_as_they_are():
    steps, rule = _script().checkpoints(_run(1000, 3000), Namespace(at_fractions=None, from_steps="7000,11000"))
    assert steps == [7000, 11000] and rule == "the steps given"


def test_no_plateau_is_one_line():
    with pytest.raises(SystemExit, match="no plateau.*grokked at None"):
        _script().checkpoints(_run(1000, None), Namespace(at_fractions="0.3,0.6", from_steps=""))


def test_plateau_low_is_the_lowest_train_accuracy_strictly_inside_the_plateau():
    m = pd.DataFrame({"step": [0, 100, 200, 300, 400, 500], "train_acc": [0.0, 1.0, 0.9, 0.2, 1.0, 1.0],
                      "test_acc": [0.0, 0.0, 0.0, 0.0, 0.5, 0.95]})
    low = _script().plateau_low
    assert low(m, 100, 500) == {"step": 300, "train_acc": 0.2}
    assert low(m, 300, 500) == {"step": 400, "train_acc": 1.0}  # the memorising step itself is not inside
    assert low(m, 100, None) is None
