"""`mechgrok train --train-seed`: the minibatch order's seed alone, apart from the split's and the
initial weights' seeds (--seed sets all three)."""

import pandas as pd
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app

runner = CliRunner()
SMALL = ["--p", "13", "--frac", "0.6", "--d-model", "16", "--n-heads", "2", "--d-mlp", "32", "--eval-every", "5",
         "--checkpoint-every", "10", "--steps", "20", "--no-progress", "--no-png", "--seed", "3"]


def train(out, *args):
    r = runner.invoke(app, ["train", "--out", str(out), *SMALL, *map(str, args)])
    assert r.exit_code == 0, r.output
    return mg.load_run(out)


def test_train_seed_sets_the_batch_order_seed_and_nothing_else(tmp_path):
    a = train(tmp_path / "a", "--batch-size", "8")
    b = train(tmp_path / "b", "--batch-size", "8", "--train-seed", "4")
    assert (a.config.train.seed, b.config.train.seed) == (3, 4)
    assert (b.config.task.seed, b.config.model.seed) == (3, 3)  # --seed still sets the other two
    assert a.task.train_idx.tolist() == b.task.train_idx.tolist()
    # another batch order: other losses after the first step
    assert not a.metrics["train_loss"].iloc[1:].equals(b.metrics["train_loss"].iloc[1:])
    # the same run as the API trains with train seed 4 alone
    cfg = mg.configure(b.config)
    api = mg.train(cfg, tmp_path / "api", progress=False)
    pd.testing.assert_frame_equal(api.metrics, b.metrics)

    # full batch: there is no batch order, so the train seed changes nothing (same split, same init)
    full_a = train(tmp_path / "fa", "--batch-size", "0")
    full_b = train(tmp_path / "fb", "--batch-size", "0", "--train-seed", "4")
    assert full_b.config.train.seed == 4
    pd.testing.assert_frame_equal(full_a.metrics, full_b.metrics)
