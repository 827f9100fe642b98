"""An ensemble member whose AdamW moments overflow (finite weights and loss, ``exp_avg_sq``
inf) must leave the ensemble as diverged before such a state becomes its checkpoint: the
resume file a member keeps must be one the reader accepts, and the other members train on."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from mechgrok.ensemble import train_ensemble
from mechgrok.presets import configure
from mechgrok.runs import read_resume_state

TINY = dict(p=11, frac=0.6, d_model=16, n_heads=2, d_head=8, d_mlp=32, warmup_steps=0, eval_every=10,
            checkpoint_every=15, steps=100, device="cpu")


def _members(lrs):
    base = configure("demo", **TINY)
    return [replace(base, task=replace(base.task, seed=s), model=replace(base.model, seed=s),
                    train=replace(base.train, seed=s, lr=lr)) for s, lr in enumerate(lrs)]


def test_a_member_whose_moments_overflow_leaves_with_a_readable_checkpoint(tmp_path):
    outs = [tmp_path / f"m{i}" for i in range(3)]
    train_ensemble(_members((3e-3, 3.0, 30.0)), outs, progress=False, vectorize=False)
    status = [json.loads((o / "member.json").read_text()) for o in outs]
    assert status[0]["status"] == "done" and status[0]["last_step"] == 100
    for o, s in zip(outs[1:], status[1:]):
        assert s["status"] == "diverged"
        state = read_resume_state(o)  # refuses non-finite tensors: must not raise
        assert state.step == s["last_step"] < 100
        assert all(torch.isfinite(t).all() for opt in state.optimizer.values() for t in opt.values())


def test_a_solo_run_whose_moments_overflow_stops_with_a_readable_last_checkpoint(tmp_path):
    import pytest

    import mechgrok as mg
    from mechgrok.trainer import TrainingDiverged

    cfg = _members((3.0,))[0]
    with pytest.raises(TrainingDiverged, match=r"is not finite at step (\d+).*The last good checkpoint is step") as e:
        mg.train(cfg, tmp_path / "r", progress=False)
    state = read_resume_state(tmp_path / "r")  # refuses non-finite tensors: must not raise
    assert f"The last good checkpoint is step {state.step} " in str(e.value)
    assert state.step < int(str(e.value).split("at step ")[1].split(" ")[0])
