"""The committed members under figures/*/kept are data a population is rebuilt from on the next
machine: the code of today must still train them. The first 300 steps of each kept Hu et al.
member, re-trained here (eager, where the member was compiled), must give the init its committed
metrics.csv records exactly and the losses after it to 1%. A changed split or init seed fails
this at step 0; a 10% change of lr at step 150 (both checked by hand)."""

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

import mechgrok as mg
from mechgrok.config import RunConfig

KEPT = Path(__file__).resolve().parents[1] / "figures" / "latent_full" / "kept"
MEMBERS = sorted(p for p in KEPT.glob("*/seed*") if (p / "trained.json").exists())[:2]


@pytest.mark.parametrize("member", MEMBERS, ids=[f"{p.parent.name}-{p.name}" for p in MEMBERS])
def test_a_kept_member_trains_again_to_its_recorded_losses(member, tmp_path):
    cfg = RunConfig.from_dict(json.loads((member / "config.json").read_text()))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=300, compile=False, device="cpu"))
    run = mg.train(cfg, tmp_path / "run", progress=False)
    ours = run.metrics.set_index("step")
    kept = pd.read_csv(member / "metrics.csv").set_index("step")
    # step 0 is the init on the split: exact up to the csv's digits
    for col in ("train_loss", "test_loss", "train_acc", "test_acc", "weight_sq"):
        assert ours.loc[0, col] == pytest.approx(kept.loc[0, col], rel=1e-6), col
    # later steps: eager and one thread here against compiled kernels there differ by ~1e-3
    # (measured: 7.7e-4 eager, 4.2e-4 compiled at 2 threads); an optimizer change moves far more
    for step in (150, 300):
        for col in ("train_loss", "test_loss", "weight_sq"):
            assert ours.loc[step, col] == pytest.approx(kept.loc[step, col], rel=1e-2), (step, col)
