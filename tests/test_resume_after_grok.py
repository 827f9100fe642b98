"""Extending a run that --stop-after-grok stopped (issue 18, item 2): `train --resume RUN --steps N`
trains on to N with the stop rule off (or a new one given with --stop-after-grok), exactly as a run
that never stopped; `mg.resume` does so with stop_after_grok=None and refuses, in one line, a rule
that has already fired rather than training nothing."""

from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app
from mechgrok.presets import configure
from mechgrok.trainer import stopped_after_grok

torch.set_num_threads(1)

# a+b mod 11, 80% train, full batch: test accuracy passes 0.9 at step 70 (evaluations every 5)
TINY = dict(p=11, frac=0.8, d_model=32, n_heads=2, d_mlp=64, lr=1e-2, weight_decay=1.0, warmup_steps=0,
            eval_every=5, checkpoint_every=20, batch_size=0, device="cpu")
FLAGS = ["--p", "11", "--frac", "0.8", "--d-model", "32", "--n-heads", "2", "--d-mlp", "64", "--lr", "0.01",
         "--wd", "1", "--warmup", "0", "--eval-every", "5", "--checkpoint-every", "20", "--batch-size", "0",
         "--device", "cpu", "--no-progress", "--no-png"]
GROKKED = 70


def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r


def assert_same_run(a: mg.Run, b: mg.Run, step: int):
    for k, v in a.params(step).items():
        assert torch.equal(b.params(step)[k], v), k
    ma, mb = a.metrics.set_index("step"), b.metrics.set_index("step")
    assert ma.index.equals(mb.index)
    assert ma.equals(mb), (ma.compare(mb))


@pytest.fixture(scope="module")
def never_stopped(tmp_path_factory):
    return mg.train(configure("demo", **TINY, steps=120), tmp_path_factory.mktemp("a") / "a", progress=False)


def test_api_resume_past_the_stop_is_the_run_that_never_stopped(never_stopped, tmp_path):
    b = mg.train(configure("demo", **TINY, steps=120, stop_after_grok=1), tmp_path / "b", progress=False)
    assert b.metrics["step"].max() == GROKKED + 5 and stopped_after_grok(b.path) == GROKKED + 5
    assert stopped_after_grok(never_stopped.path) is None
    # the stop rule as it was: nothing could train, so it is refused, naming what works
    with pytest.raises(ValueError, match=r"stopped at step 75 by its stop rule \(train.stop_after_grok=1.*"
                                         r"resume with stop_after_grok=None or a larger one"):
        mg.resume(b.path, configure(b.config, steps=150), progress=False)
    assert mg.load_run(b.path).config.train.steps == 120  # the refusal changed nothing
    # stop rule off: steps 75..120, bit for bit the run that never stopped (step 75 is no
    # checkpoint boundary: the stop wrote the resume state there)
    ext = mg.resume(b.path, replace(b.config, train=replace(b.config.train, stop_after_grok=None)), progress=False)
    assert ext.config.train.stop_after_grok is None and ext.steps[-1] == 120
    assert_same_run(never_stopped, ext, 120)
    assert stopped_after_grok(b.path) is None


def test_cli_steps_on_a_stopped_run_trains_on_to_n_as_if_it_never_stopped(never_stopped, tmp_path):
    b = tmp_path / "b"
    r = cli("train", "--out", b, *FLAGS, "--steps", "120", "--stop-after-grok", "2")
    assert r.exit_code == 0, r.output
    assert mg.load_run(b).metrics["step"].max() == GROKKED + 10  # a checkpoint boundary (80)
    r = cli("train", "--resume", b, "--steps", "120", "--no-progress", "--no-png")
    assert r.exit_code == 0, r.output
    assert f"{b} stopped after grokking at step 80 (--stop-after-grok 2); --steps 120 trains on with no stop rule" \
        in r.output and f"resuming {b} from step 80 to step 120" in r.output
    run = mg.load_run(b)
    assert run.config.train.stop_after_grok is None and run.metrics["step"].max() == 120
    assert_same_run(never_stopped, run, 120)


def test_cli_resume_with_a_new_stop_rule_and_one_that_has_fired(tmp_path):
    b = tmp_path / "b"
    assert cli("train", "--out", b, *FLAGS, "--steps", "120", "--stop-after-grok", "1").exit_code == 0
    r = cli("train", "--resume", b, "--stop-after-grok", "4", "--no-progress", "--no-png")
    assert r.exit_code == 0, r.output
    run = mg.load_run(b)  # four evaluations after grokking at 70
    assert run.metrics["step"].max() == GROKKED + 20 and run.config.train.stop_after_grok == 4
    r = cli("train", "--resume", b, "--steps", "150", "--stop-after-grok", "3", "--no-progress", "--no-png")
    assert r.exit_code == 1 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert "stopped at step 90 by its stop rule (train.stop_after_grok=3" in r.output
    assert mg.load_run(b).config.train.steps == 120


def test_train_or_resume_honours_the_stop_rule_it_is_given(never_stopped, tmp_path):
    from mechgrok.experiment import train_or_resume

    cfg = configure("demo", **TINY, steps=120)
    b = mg.train(replace(cfg, train=replace(cfg.train, stop_after_grok=1)), tmp_path / "b", progress=False)
    assert b.steps[-1] == GROKKED + 5
    run = train_or_resume(cfg, b.path)  # asked: no stop rule, so the stopped run is not finished
    assert run.steps[-1] == 120
    assert_same_run(never_stopped, run, 120)
