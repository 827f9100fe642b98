"""Extending a sweep whose members --stop-after-grok stopped (issue 18, item 2, for sweeps):
`sweep --resume DIR --set steps=N` trains every member on past its stop to N, each exactly as the
member of a sweep that never stopped; members.csv and the table report the new ends."""

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mechgrok import population as popm
from mechgrok.cli import app
from mechgrok.population import SweepConfig, extend_sweep, load_population, run_sweep
from mechgrok.presets import configure

torch.set_num_threads(1)

# a+b mod 11, 80% train, full batch: seed 0 groks at step 70 (evaluations every 5)
TINY = dict(p=11, frac=0.8, d_model=32, n_heads=2, d_mlp=64, lr=1e-2, weight_decay=1.0, warmup_steps=0,
            eval_every=5, checkpoint_every=20, batch_size=0, device="cpu")


def sweep(**fixed) -> SweepConfig:
    return SweepConfig(configure("demo", **TINY), grid={"weight_decay": (1.0, 0.9)}, seeds=1, chunk_size=2,
                       fixed={"steps": 120} | fixed)


def assert_same_members(a, b, step):
    assert a.ids == b.ids
    for i in a.ids:
        ra, rb = a.run(i), b.run(i)
        for k, v in ra.params(step).items():
            assert torch.equal(rb.params(step)[k], v), (i, k)
        pd.testing.assert_frame_equal(ra.metrics, rb.metrics)


@pytest.fixture(scope="module")
def never_stopped(tmp_path_factory):
    return run_sweep(sweep(), tmp_path_factory.mktemp("sw") / "whole", progress=False)


def test_cli_extends_a_stopped_sweep_past_the_stop_as_if_it_never_stopped(never_stopped, tmp_path):
    d = tmp_path / "stopped"
    stopped = run_sweep(sweep(stop_after_grok=1), d, progress=False)
    ends = stopped.table.set_index("id")["last_step"]
    assert stopped.table["grokked"].all() and (ends < 120).all(), stopped.table  # every member stopped early
    res = CliRunner().invoke(app, ["sweep", "--resume", str(d), "--set", "steps=120", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"extending {d}: every member trains on to step 120 with no stop rule" in res.output
    pop = load_population(d)
    assert_same_members(never_stopped, pop, 120)
    table = pd.read_csv(d / popm.MEMBERS_TABLE)
    assert table["last_step"].tolist() == [120, 120] and table["budget"].tolist() == [120, 120]
    assert all(popm.member_status(pop.paths[i])["status"] == "done" for i in range(len(pop)))
    assert all(pop.run(i).config.train.stop_after_grok is None for i in pop.ids)
    # a plain resume afterwards has nothing left to do
    again = CliRunner().invoke(app, ["sweep", "--resume", str(d), "--no-progress"])
    assert again.exit_code == 0 and pd.read_csv(d / popm.MEMBERS_TABLE).equals(table)


def test_extend_sweep_with_a_new_stop_rule_and_what_resume_refuses(tmp_path):
    d = tmp_path / "s"
    run_sweep(sweep(stop_after_grok=1), d, progress=False)
    before = {i: r["last_step"] for i, r in popm.read_manifest(d).items()}
    pop = extend_sweep(d, stop_after_grok=3, progress=False)  # the same budget, a later stop
    after = pop.table.set_index("id")["last_step"].to_dict()
    assert after == {i: min(s + 10, 120) for i, s in before.items()}  # two more evaluations each
    for args, msg in [(["--set", "lr=0.1"], "--set lr cannot change"),
                      (["--grid", "beta1=0.9"], "--grid cannot change"),
                      (["--set", "steps=60"], "cannot resume with train.steps=60")]:
        res = CliRunner().invoke(app, ["sweep", "--resume", str(d), *args, "--no-progress"])
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output, res.output
    assert load_population(d).table.set_index("id")["last_step"].to_dict() == after


def test_extending_one_member_alone_is_refused_naming_the_sweep_command(tmp_path):
    d = tmp_path / "s"
    pop = run_sweep(sweep(stop_after_grok=1), d, progress=False)
    member = pop.paths[0]
    res = CliRunner().invoke(app, ["train", "--resume", str(member), "--steps", "120", "--no-progress", "--no-png"])
    assert res.exit_code == 1 and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert f"is a member of the sweep {d}: extend the whole sweep with `mechgrok sweep --resume {d} --set " \
           f"steps=N`" in res.output
    assert load_population(d).table["last_step"].tolist() == pop.table["last_step"].tolist()
    assert pop.run(0).steps[-1] < 120  # nothing trained


def test_a_sweep_over_steps_is_not_extended_to_one_budget(tmp_path):
    d = tmp_path / "s"
    sw = SweepConfig(configure("demo", **TINY), grid={"steps": (10, 20)}, seeds=1, chunk_size=2)
    run_sweep(sw, d, progress=False)
    with pytest.raises(ValueError, match="sweeps over steps, so its members' ids name their steps: start a new sweep"):
        extend_sweep(d, 40, progress=False)
    stored = SweepConfig.from_dict(json.loads((d / popm.SWEEP_FILE).read_text()))
    assert [m.config.train.steps for m in stored.members()] == [10, 20]  # left as it was
