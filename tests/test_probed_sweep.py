"""Ensemble members as dynamics data: a probed sweep's rows are what
``mechgrok dynamics SWEEP_DIR`` reads, and members trained with ``keep_moments`` keep AdamW's
state at each checkpoint as solo runs do."""

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app
from mechgrok.ensemble import train_ensemble
from mechgrok.population import SweepConfig, run_sweep
from mechgrok.presets import configure
from mechgrok.files import read_tensors
from mechgrok.runs import moments_path, read_resume_state

# a member trains in well under a second: a+b mod 11 on a 16-wide model, 30 full-batch steps
TINY = dict(p=11, frac=0.6, d_model=16, n_heads=2, d_head=8, d_mlp=32, steps=30, lr=3e-3, warmup_steps=0,
            eval_every=10, checkpoint_every=30, device="cpu")


def test_dynamics_command_on_a_probed_sweep_reads_the_members_probe_rows(tmp_path):
    sweep = SweepConfig(configure("demo", **TINY), seeds=2, chunk_size=2, probe="every=10,measures=agreement+momentum")
    pop = run_sweep(sweep, tmp_path / "s", progress=False)
    res = CliRunner().invoke(app, ["dynamics", str(tmp_path / "s"), "--no-png", "--no-progress"])
    assert res.exit_code == 0, res.output
    # measuring at checkpoints would have written these (steps 0 and 30 here, not the probe's 10, 20, 30)
    assert not list((tmp_path / "s").rglob("dynamics_checkpoints.csv")), "probed members were re-measured"
    table = pd.read_csv(tmp_path / "s" / "dynamics_summary.csv").set_index("run")
    assert len(table) == len(pop.ids) == 2
    for i in pop.ids:
        rows = pd.read_csv(pop.run(i).path / "dynamics.csv")
        assert rows["step"].tolist() == [10, 20, 30]
        summary = table.loc[str(pop.run(i).path)]
        assert summary["agreement_first"] == pytest.approx(rows["agreement"].iloc[0], rel=1e-5)


def test_ensemble_members_keep_moments_equal_to_their_resume_state_and_to_the_solo_optimizer(tmp_path):
    cfgs = [configure("demo", seed=s, **(TINY | {"checkpoint_every": 10, "keep_moments": True})) for s in (0, 1)]
    members = train_ensemble(cfgs, [tmp_path / f"m{i}" for i in range(2)], progress=False)
    for cfg, member in zip(cfgs, members):
        assert not moments_path(member.path, 0).exists(), "no AdamW state exists before the first step"
        last = read_resume_state(member.path)
        kept = read_tensors(moments_path(member.path, last.step))
        for name, st in last.optimizer.items():  # the last checkpoint's file is the resume state's moments
            assert torch.equal(kept[f"opt.{name}.exp_avg"], st["exp_avg"])
            assert torch.equal(kept[f"opt.{name}.exp_avg_sq"], st["exp_avg_sq"])
        # second path: the solo trainer's torch.optim.AdamW, same config; members round differently
        # in the last bit (ensemble.py's docstring), which ten steps of Adam leave near 1e-4 relative
        solo = mg.train(cfg, tmp_path / f"solo_{member.path.name}", progress=False)
        for step in (10, 20, 30):
            a, b = read_tensors(moments_path(member.path, step)), read_tensors(moments_path(solo.path, step))
            assert sorted(a) == sorted(b)
            for k in a:
                if k.startswith("opt."):
                    scale = b[k].abs().max().item()
                    np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-3, atol=1e-3 * scale, err_msg=k)
