"""Which checkpoint of a base run analyses/fourier_transplant.py --preset takes as the recipient:
half-way along the memorising plateau by default, or, with --recipient-max-test-acc, the last
plateau checkpoint still at chance (seed 004's recipient: test accuracy at chance, Fourier
features already forming)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mechgrok.milestones import transition_metrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("fourier_transplant", ROOT / "analyses" / "fourier_transplant.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _base(test_acc: list[float], every: int = 100):
    """A base run evaluated and checkpointed every ``every`` steps: memorised at step 200
    (train accuracy 1 from there), test accuracy as given."""
    steps = [i * every for i in range(len(test_acc))]
    metrics = pd.DataFrame({"step": steps, "train_acc": [0.2, 0.6] + [1.0] * (len(steps) - 2), "test_acc": test_acc})
    return SimpleNamespace(steps=steps, metrics=metrics)


def test_the_recipient_at_chance_is_the_plateaus_last_checkpoint_at_or_under_the_limit(script):
    # memorised at 200, grokked (> 0.9) at 1000; at chance (<= 0.02) until 500, climbing after
    acc = [0.01, 0.01, 0.012, 0.015, 0.02, 0.02, 0.05, 0.2, 0.5, 0.8, 0.95, 0.97]
    base = _base(acc)
    tr = transition_metrics(base.metrics)
    assert (tr.memorised_step, tr.grokked_step) == (200, 1000)
    assert script.plateau_step(base, tr, 150, None, 0.02) == 500  # 0.02 itself counts: <=, not <
    assert script.plateau_step(base, tr, 150, None, 0.015) == 300
    assert script.plateau_step(base, tr, 150, None) == 600  # half-way, without the rule
    # a plateau never at chance (the dynamics preset's: ~0.2-0.8 when memorised) has no such recipient
    assert script.plateau_step(base, tr, 150, None, 0.005) is None
    # checkpoints before memorisation are not on the plateau, however close to chance
    early = _base([0.001, 0.001, 0.03, 0.04, 0.3, 0.95, 0.97])
    assert script.plateau_step(early, transition_metrics(early.metrics), 150, None, 0.02) is None


def test_the_figures_of_a_study_with_its_own_settings_do_not_overwrite_the_presets(script):
    args = argparse.Namespace(set=["frac=0.3", "train.lr=0.001"], recipient_max_test_acc=0.02)
    assert script._tag(args) == "_frac0.3_lr0.001_chance0.02"
    assert script._tag(argparse.Namespace(set=[], recipient_max_test_acc=None)) == ""


def test_with_a_train_accuracy_floor_the_recipient_at_chance_may_still_be_memorising(script):
    """The seed004 preset's case: test accuracy leaves chance while the run memorises, so no plateau
    checkpoint is at chance; with min_train_acc the recipient is the last checkpoint before grokking
    at chance whose train accuracy reaches the floor (>=, not >)."""
    steps = [i * 50 for i in range(12)]
    train = [0.01, 0.02, 0.07, 0.25, 0.65, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # memorised at 250
    test = [0.008, 0.003, 0.002, 0.014, 0.09, 0.25, 0.3, 0.4, 0.5, 0.8, 0.95, 0.97]  # grokked at 500
    base = SimpleNamespace(steps=steps, metrics=pd.DataFrame({"step": steps, "train_acc": train, "test_acc": test}))
    tr = transition_metrics(base.metrics)
    assert (tr.memorised_step, tr.grokked_step) == (250, 500)
    assert script.plateau_step(base, tr, 150, None, 0.02) is None  # the plateau is never at chance
    assert script.plateau_step(base, tr, 150, None, 0.02, 0.25) == 150
    assert script.plateau_step(base, tr, 150, None, 0.02, 0.26) is None  # step 150 is under the floor
    assert script.plateau_step(base, tr, 150, None, 0.02, 0.05) == 150  # the last one at chance, not the first
    assert script.plateau_step(base, tr, 150, None, 0.001, 0.0) is None
    args = argparse.Namespace(set=[], recipient_max_test_acc=0.02, recipient_min_train_acc=0.2)
    assert script._tag(args) == "_chance0.02_train0.2"


def test_a_train_accuracy_floor_without_the_at_chance_rule_is_refused(script, monkeypatch):
    monkeypatch.setattr("sys.argv", ["fourier_transplant.py", "--preset", "seed004", "--recipient-min-train-acc", "0.2"])
    with pytest.raises(SystemExit, match="give --recipient-max-test-acc too"):
        script.main()
