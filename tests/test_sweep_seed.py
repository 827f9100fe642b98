"""A sweep member's seed, in its id, sweep.json, members.csv and the population table, is the seed it
trained with (issue 18, item 3: `sweep --set seed=3` trained seed 3 under the name seed=0)."""

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok import population as popm
from mechgrok.cli import app
from mechgrok.population import SweepConfig, load_population
from mechgrok.presets import configure

torch.set_num_threads(1)

TINY = dict(p=11, frac=0.6, d_model=16, n_heads=2, d_head=8, d_mlp=32, steps=20, lr=3e-3, warmup_steps=0,
            eval_every=10, checkpoint_every=10, device="cpu")


def test_set_seed_is_the_members_seed_everywhere_and_trains_as_a_solo_run_of_that_seed(tmp_path):
    d = tmp_path / "sw"
    args = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    res = CliRunner().invoke(app, ["sweep", "--out", str(d), "--set", "seed=3", "--grid", "weight_decay=0.5,1",
                                   "--no-progress", *args])
    assert res.exit_code == 0, res.output
    pop = load_population(d)
    assert pop.ids == ["weight_decay=0.5_seed=3", "weight_decay=1_seed=3"]
    table = pd.read_csv(d / popm.MEMBERS_TABLE)
    assert table["seed"].tolist() == [3, 3] and pop.table["seed"].tolist() == [3, 3]
    for i in pop.ids:
        cfg = pop.run(i).config
        assert (cfg.task.seed, cfg.model.seed, cfg.train.seed) == (3, 3, 3)
    # the member's weights are those of a solo run with seed 3 (an ensemble member equals its
    # solo run to ~1e-7 relative, ensemble.py's docstring: a different seed differs by O(1))
    solo = mg.train(configure("demo", **TINY, weight_decay=0.5, seed=3), tmp_path / "solo", progress=False)
    member = pop.run("weight_decay=0.5_seed=3")
    for k, v in solo.params(20).items():
        torch.testing.assert_close(member.params(20)[k], v, rtol=1e-4, atol=1e-5)
    seed0 = mg.train(configure("demo", **TINY, weight_decay=0.5, seed=0), tmp_path / "seed0", progress=False)
    assert not torch.allclose(member.params(0)["embed.W_E"], seed0.params(0)["embed.W_E"], atol=1e-3)


def test_sweep_config_seed_rules(tmp_path):
    base = configure("demo", **TINY)
    sw = SweepConfig(base, fixed={"seed": "7"})
    assert sw.seeds == (7,) and "seed" not in sw.fixed
    (m,) = sw.members()
    assert (m.id, m.seed, m.config.model.seed, m.config.task.seed, m.config.train.seed) == ("seed=7", 7, 7, 7, 7)
    assert SweepConfig.from_dict(sw.to_dict()).members()[0].id == "seed=7"  # a resumed sweep names it alike
    with pytest.raises(ValueError, match=r"--set seed=7 gives every member seed 7, but --seeds asks for 3 seeds"):
        SweepConfig(base, fixed={"seed": 7}, seeds=3)
    with pytest.raises(ValueError, match="sweep field 'seed': the seed is not a grid or setting field; give the "
                                         "seeds with --seeds"):
        SweepConfig(base, grid={"seed": (1, 2)})
    with pytest.raises(ValueError, match="sweep field 'train.seed'"):
        SweepConfig(base, settings=({"lr": 1e-3, "train.seed": 4},))
