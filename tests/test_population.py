"""Sweeps and population tables: validation before training, chunking,
resume after a crash, the Ray backend on a local 2-CPU cluster, the population table against
seed 001's definitions on planted runs, and the CLI commands."""

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok import population as popm
from mechgrok.cli import app
from mechgrok.population import SweepConfig, load_population, plan_chunks, read_manifest, run_sweep
from mechgrok.presets import configure
from mechgrok.files import write_json
from mechgrok.runs import METRIC_COLUMNS, write_metrics

# a member trains in well under a second: a+b mod 11 on a 16-wide model, 30 full-batch steps
TINY = dict(p=11, frac=0.6, d_model=16, n_heads=2, d_head=8, d_mlp=32, steps=30, lr=3e-3, warmup_steps=0,
            eval_every=10, checkpoint_every=30, device="cpu")
TINY_ARGS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]


def tiny_sweep(**kw) -> SweepConfig:
    return SweepConfig(configure("demo", **TINY), **({"grid": {"beta1": (0.0, 0.9)}, "seeds": 2, "chunk_size": 2} | kw))


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory):
    """beta1 in {0, 0.9} x seeds {0, 1}, two chunks of two, trained once per session."""
    return run_sweep(tiny_sweep(), tmp_path_factory.mktemp("sweeps") / "local", progress=False)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs, started once per session."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _metrics(pop) -> dict[str, pd.DataFrame]:
    return {i: pop.run(i).metrics for i in pop.ids}


# --- validation and chunking (nothing trains) -------------------------------------------------


def test_bad_grid_value_fails_before_training_naming_field_and_allowed_values(tmp_path):
    with pytest.raises(ValueError, match=r"beta1=1\.5: TrainConfig\.betas must be two numbers in \[0, 1\)"):
        tiny_sweep(grid={"beta1": (0.9, 1.5)})
    with pytest.raises(ValueError, match=r"'bta1' is not a config field; allowed: .*\bweight_decay\b.*\bbeta1\b"):
        tiny_sweep(grid={"bta1": (0.9,)})
    with pytest.raises(ValueError, match=r"lr: 'fast' is not a valid float"):
        tiny_sweep(grid={"lr": ("fast",)})
    res = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "s"), "--grid", "p=11,12", *TINY_ARGS])
    assert res.exit_code == 1 and "p=12: TaskConfig.p must be a prime" in res.output
    assert not (tmp_path / "s").exists(), "nothing may be written (or trained) for an invalid sweep"


def test_grid_is_the_product_of_fields_and_members_get_the_named_settings():
    sw = tiny_sweep(grid={"weight_decay": ("0.5", "1"), "beta1": (0.0, 0.9)}, seeds=3,
                    settings=({"lr": "0.01"},), fixed={"stop_after_grok": 2})
    ms = sw.members()
    assert len(ms) == (2 * 2 + 1) * 3
    m = next(m for m in ms if m.id == "weight_decay=1_beta1=0.9_seed=2")
    t = m.config.train
    assert (t.weight_decay, t.betas, t.seed, t.stop_after_grok) == (1.0, (0.9, 0.98), 2, 2)
    assert (m.config.task.seed, m.config.model.seed, m.config.task.p) == (2, 2, 11)
    extra = next(m for m in ms if m.id == "lr=0.01_seed=0")
    assert extra.config.train.lr == 0.01 and extra.config.train.weight_decay == 1.0  # the base's
    assert SweepConfig.from_dict(json.loads(json.dumps(sw.to_dict()))).members() == ms


def test_chunks_hold_only_members_of_one_shape():
    sw = tiny_sweep(grid={"d_mlp": (16, 32), "lr": (1e-3, 3e-3)}, seeds=2, chunk_size=3)
    by_id = {m.id: m.config for m in sw.members()}
    chunks = plan_chunks(sw.members(), 3)
    assert sorted(i for c in chunks for i in c) == sorted(by_id)
    assert all(len(c) <= 3 for c in chunks) and len(chunks) == 4  # 4 members per shape -> 3 + 1, twice
    assert all(len({by_id[i].model.d_mlp for i in c}) == 1 for c in chunks)


# --- training, resume, Ray ------------------------------------------------------------------


def test_sweep_member_is_the_solo_run_of_its_settings(local_sweep, tmp_path):
    base = configure("demo", **TINY)
    cfg = replace(base, task=replace(base.task, seed=1), model=replace(base.model, seed=1),
                  train=replace(base.train, seed=1, betas=(0.9, base.train.betas[1])))
    solo = mg.train(cfg, tmp_path / "solo", progress=False).metrics
    member = local_sweep.run("beta1=0.9_seed=1")
    assert member.config == cfg
    # ensembles batch the same float ops differently: equal to float32 rounding, not bit for bit
    np.testing.assert_allclose(member.metrics[METRIC_COLUMNS].to_numpy(), solo[METRIC_COLUMNS].to_numpy(),
                               rtol=2e-4, atol=1e-6)
    row = local_sweep.table.set_index("id").loc["beta1=0.9_seed=1"]
    assert row["final_test_acc"] == pytest.approx(solo["test_acc"].iloc[-1], abs=1e-6)
    assert row["beta1"] == 0.9 and row["seed"] == 1 and row["last_step"] == 30


# both gradient paths against solo runs, to ensemble.py's stated 1e-4: tests/test_ensemble.py


def test_ensemble_started_from_checkpoints_with_their_moments_continues_as_the_solo_runs(tmp_path):
    from mechgrok.runs import read_resume_state

    base = configure("demo", **TINY)
    cfgs = [replace(base, task=replace(base.task, seed=s), model=replace(base.model, seed=s),
                    train=replace(base.train, seed=s, steps=20)) for s in (0, 1)]
    first = [mg.train(c, tmp_path / f"first{i}", progress=False) for i, c in enumerate(cfgs)]
    states = [read_resume_state(r.path) for r in first]  # step 20: weights and AdamW moments
    longer = [replace(c, train=replace(c.train, steps=40)) for c in cfgs]
    members = mg.ensemble.train_ensemble(longer, [tmp_path / f"m{i}" for i in range(2)], progress=False, init=states)
    for i, (c, st, member) in enumerate(zip(longer, states, members)):
        solo = mg.train(c, tmp_path / f"solo{i}", progress=False, init=st.params, start_step=20,
                            init_opt_state=st.optimizer).metrics
        assert member.metrics["step"].tolist() == solo["step"].tolist() == [20, 30, 40]
        np.testing.assert_allclose(member.metrics[METRIC_COLUMNS].to_numpy(), solo[METRIC_COLUMNS].to_numpy(),
                                   rtol=2e-4, atol=1e-6)
    uninterrupted = mg.train(longer[0], tmp_path / "whole", progress=False).metrics.set_index("step")
    assert members[0].metrics.set_index("step").loc[40, "train_loss"] == pytest.approx(
        uninterrupted.loc[40, "train_loss"], rel=2e-4), "the moments were carried, not reset"
    with pytest.raises(ValueError, match="same step"):
        mg.ensemble.train_ensemble(longer, [tmp_path / "x0", tmp_path / "x1"], progress=False,
                                   init=[states[0], replace(states[1], step=10)])


def test_resume_after_a_crash_trains_only_the_unfinished_members(local_sweep, tmp_path, monkeypatch):
    real, trained = popm._train_members, []

    def crash_in_second_chunk(cfgs, outs, progress, *measures):
        if trained:  # second chunk: one member gets trained, then the process "dies"
            real(cfgs[:1], outs[:1], progress, *measures)
            raise KeyboardInterrupt
        trained.extend(o.name for o in outs)
        real(cfgs, outs, progress, *measures)

    monkeypatch.setattr(popm, "_train_members", crash_in_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tiny_sweep(), tmp_path / "s", progress=False)
    assert sorted(read_manifest(tmp_path / "s")) == sorted(trained) and len(trained) == 2

    def record(cfgs, outs, progress, *measures):
        trained.extend(o.name for o in outs)
        real(cfgs, outs, progress, *measures)

    monkeypatch.setattr(popm, "_train_members", record)
    pop = run_sweep(None, tmp_path / "s", resume=True, progress=False)
    assert sorted(trained) == sorted(local_sweep.ids), "each member trained once, in its own chunk"
    again = run_sweep(None, tmp_path / "s", resume=True, progress=False)
    assert len(trained) == 4 and len(again) == 4, "a finished sweep resumes to nothing"
    ref = _metrics(local_sweep)
    for i, m in _metrics(pop).items():
        np.testing.assert_allclose(m[METRIC_COLUMNS].to_numpy(), ref[i][METRIC_COLUMNS].to_numpy(), rtol=2e-4, atol=1e-6)
    assert len(pd.read_csv(tmp_path / "s" / popm.MEMBERS_TABLE)) == 4


def test_ray_backend_on_a_local_two_cpu_cluster_matches_the_local_sweep(local_sweep, ray_local, tmp_path):
    pop = run_sweep(tiny_sweep(), tmp_path / "ray", backend="ray", progress=False)
    assert sorted(read_manifest(tmp_path / "ray")) == sorted(local_sweep.ids)
    ref = _metrics(local_sweep)
    for i, m in _metrics(pop).items():
        np.testing.assert_allclose(m[METRIC_COLUMNS].to_numpy(), ref[i][METRIC_COLUMNS].to_numpy(), rtol=2e-4, atol=1e-6)
    workers = {r["pid"] for r in read_manifest(tmp_path / "ray").values()}
    assert os.getpid() not in workers, "chunks ran as Ray tasks in worker processes, not in the driver"
    assert ray_local.cluster_resources()["CPU"] == 2


def test_ray_backend_without_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'mechgrok\[ray\]'"):
        run_sweep(tiny_sweep(seeds=1), tmp_path / "s", backend="ray", progress=False)
    assert not (tmp_path / "s").exists()  # refused before the sweep directory was made
    res = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "s"), "--backend", "ray"])
    assert res.exit_code == 1 and "mechgrok[ray]" in res.output
    assert not (tmp_path / "s").exists()


class FakeRay:
    """Stands for a connected ``ray`` module: its nodes and nothing else (no Ray is started)."""

    def __init__(self, *nodes):
        self._nodes = [{"Alive": True, "Resources": n} for n in nodes] + [{"Alive": False, "Resources": {"GPU": 8.0}}]

    def nodes(self):
        return self._nodes


def test_ray_resources_no_node_can_place_are_refused_naming_the_resource():
    from mechgrok.population import check_ray_resources, ray_node_resources

    nodes = ray_node_resources(FakeRay({"CPU": 16.0, "memory": 1e10}, {"CPU": 4.0, "GPU": 1.0}))
    assert nodes == [{"CPU": 16.0, "memory": 1e10}, {"CPU": 4.0, "GPU": 1.0}]  # the dead node is left out
    check_ray_resources(nodes, 16, 0)  # fits the large node
    check_ray_resources(nodes, 4, 1)   # fits the GPU node
    with pytest.raises(ValueError, match=r"--gpus-per-chunk 2: the largest node of the Ray cluster has 1 GPU"):
        check_ray_resources(nodes, 1, 2)
    with pytest.raises(ValueError, match=r"--cpus-per-chunk 17: the largest node of the Ray cluster has 16 CPU"):
        check_ray_resources(nodes, 17, 0)
    with pytest.raises(ValueError, match=r"--gpus-per-chunk 1: no node of the Ray cluster has a GPU .*give "
                                         r"--gpus-per-chunk 0"):
        check_ray_resources([{"CPU": 16.0}], 1, 1)
    with pytest.raises(ValueError, match="--cpus-per-chunk must be >= 0"):
        check_ray_resources(nodes, -1, 0)


def test_sweep_asking_ray_for_a_gpu_it_lacks_fails_fast_in_one_line_and_writes_nothing(tmp_path, monkeypatch):
    import mechgrok.population as population

    monkeypatch.setattr(population, "_init_ray", lambda address: FakeRay({"CPU": 2.0}))
    res = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "s"), "--backend", "ray", "--gpus-per-chunk", "1",
                                   "--no-progress"])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert "no node of the Ray cluster has a GPU" in lines[-1] and "Traceback" not in res.output
    assert not (tmp_path / "s").exists()


# --- population tables on planted runs ------------------------------------------------------


def _planted_run(path: Path, weight_decay: float, seed: int, memorised: int | None, grokked: int | None,
                 steps=(0, 10, 20, 40, 80, 160, 320, 640)):
    """A run directory whose metrics.csv has train accuracy above 0.99 from ``memorised`` on and
    test accuracy above 0.9 from ``grokked`` on (None: never)."""
    cfg = configure("demo", weight_decay=weight_decay, seed=seed, p=11)
    write_json(path / "config.json", cfg.to_dict())
    rows = [dict(step=s, train_loss=1.0, test_loss=1.0, weight_sq=1.0,
                 train_acc=1.0 if memorised is not None and s >= memorised else 0.5,
                 test_acc=0.95 if grokked is not None and s >= grokked else 0.1) for s in steps]
    write_metrics(path / "metrics.csv", rows)


PLANTED = [  # weight_decay, seed, memorised, grokked
    (0.0, 0, 10, None), (0.0, 1, 20, 640), (0.0, 2, 10, None),
    (1.0, 0, 10, 160), (1.0, 1, 20, 320), (1.0, 2, 10, 80), (1.0, 3, 40, 640),
    (2.0, 0, None, 80), (2.0, 1, 160, 40)]


@pytest.fixture
def planted(tmp_path):
    for wd, seed, mem, grok in PLANTED:
        _planted_run(tmp_path / f"wd{wd}_s{seed}", wd, seed, mem, grok)
    return tmp_path


def test_population_table_follows_seed_001_definitions_on_planted_runs(planted):
    pop = load_population(planted)  # a directory of run directories
    assert pop.fields == ["weight_decay"] and len(pop) == len(PLANTED)
    t = pop.table.set_index("id")
    for wd, seed, mem, grok in PLANTED:
        row = t.loc[f"wd{wd}_s{seed}"]
        assert row["weight_decay"] == wd and row["seed"] == seed
        assert (None if pd.isna(row["memorised_step"]) else row["memorised_step"]) == mem
        assert (None if pd.isna(row["grokked_step"]) else row["grokked_step"]) == grok
        assert bool(row["grokked"]) == (grok is not None)
        if mem is not None and grok is not None:
            assert row["delay"] == grok - mem
        assert row["final_test_acc"] == (0.95 if grok is not None else 0.1)
        assert row["final_gap"] == pytest.approx(1.0 - row["final_test_acc"] if mem is not None else 0.5 - 0.95)
    assert pop.run("wd1.0_s2").path == planted / "wd1.0_s2"
    assert load_population(sorted(planted.iterdir())).table.equals(pop.table)  # the same from a list


def test_population_summary_per_value_is_median_and_iqr_of_the_delays(planted):
    s = load_population(planted).summary("weight_decay")
    assert list(s.index) == [0.0, 1.0, 2.0]
    delays = {1.0: [150, 300, 70, 600], 0.0: [620]}
    for wd, d in delays.items():
        q25, med, q75 = np.percentile(d, [25, 50, 75])
        assert (s.loc[wd, "delay_median"], s.loc[wd, "delay_q25"], s.loc[wd, "delay_q75"]) == (med, q25, q75)
    assert s.loc[1.0, "delay_median"] == 225.0  # (150 + 300) / 2, by hand
    assert list(s["n"]) == [3, 4, 2] and list(s["n_grokked"]) == [1, 4, 2]
    assert s.loc[0.0, "grok_rate"] == pytest.approx(1 / 3)
    # wd 2: one never memorises, one generalises (step 40) before it memorises (step 160)
    assert s.loc[2.0, "n_grokked_before_memorising"] == 2
    assert s.loc[2.0, "delay_median"] == -120


def test_generalisation_gap_figure_shades_train_minus_test(planted):
    m = mg.load_run(planted / "wd1.0_s0").metrics
    fig = mg.plots.generalisation_gap_area(m, marks={"memorised": 10, "grokked": 160})
    gap = next(t for t in fig.data if t.name.startswith("gap"))
    # planted: train 0.5 then 1.0 from step 10; test 0.1 then 0.95 from step 160
    assert list(gap.y) == pytest.approx([0.4, 0.9, 0.9, 0.9, 0.9, 0.05, 0.05, 0.05]) and gap.fill == "tozeroy"


# --- CLI ------------------------------------------------------------------------------------


def test_cli_sweep_resume_and_population_table_and_figure(tmp_path):
    runner, d = CliRunner(), tmp_path / "sw"
    res = runner.invoke(app, ["sweep", "--out", str(d), "--grid", "weight_decay=0.5,1", "--seeds", "1",
                              "--stop-after-grok", "2", "--no-progress", *TINY_ARGS])
    assert res.exit_code == 0, res.output
    assert "2 members (2 settings x 1 seeds)" in res.output and "per weight_decay" in res.output
    lines = (d / popm.MANIFEST_FILE).read_text()
    res = runner.invoke(app, ["sweep", "--resume", str(d), "--no-progress"])
    assert res.exit_code == 0 and (d / popm.MANIFEST_FILE).read_text() == lines, "nothing retrained"
    res = runner.invoke(app, ["population", str(d), "--no-png"])
    assert res.exit_code == 0, res.output
    pop = load_population(d)
    for r in pop.table.itertuples():
        assert r.id in res.output
    assert (d / "population_weight_decay.html").stat().st_size > 1000
    assert pd.read_csv(d / "population.csv")["final_test_acc"].tolist() == pytest.approx(
        pop.table["final_test_acc"].tolist())
    res = runner.invoke(app, ["population", str(d), "--json"])
    out = json.loads(res.output)
    assert [r["id"] for r in out["table"]] == pop.ids
    assert out["summary"]["weight_decay"][1]["n"] == 1
    assert pop.run(0).config.train.stop_after_grok == 2 and pop.run(0).config.train.weight_decay == 0.5


def test_sweep_seeds_option_takes_a_count_a_range_or_a_list(tmp_path):
    from mechgrok.config import parse_seeds

    assert parse_seeds("3") == (0, 1, 2) and parse_seeds("12-14") == (12, 13, 14) and parse_seeds("0,5") == (0, 5)
    assert SweepConfig(mg.get_preset("demo"), seeds=parse_seeds("12-13")).seeds == (12, 13)
    assert SweepConfig(mg.get_preset("demo"), seeds="3").seeds == (0, 1, 2)
    for bad in ("5-2", "x", "1-"):
        with pytest.raises(ValueError, match="--seeds expects"):
            parse_seeds(bad)
    res = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "sw"), "--seeds", "5-2", "--no-progress"])
    assert res.exit_code != 0 and "--seeds expects" in res.output and not (tmp_path / "sw").exists()


def _sweep_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # one thread in both processes: float sums must be ordered the same way to compare bit-exactly
    code = "import torch, sys; torch.set_num_threads(1); from mechgrok.cli import app; sys.argv[0]='mechgrok'; app()"
    return [sys.executable, "-c", code, "sweep", *map(str, args), "--no-progress"], env


KILL_ARGS = [a for k, v in (TINY | {"steps": 240, "checkpoint_every": 20}).items() for a in ("--set", f"{k}={v}")] + [
    "--grid", "lr=0.003,0.001", "--seeds", "1", "--chunk-size", "2"]


def test_ensemble_killed_with_sigkill_and_resumed_ends_bit_identical(tmp_path):
    import signal
    import subprocess

    from mechgrok.files import read_tensors
    from mechgrok.runs import checkpoint_path
    from test_train import wait_for_files

    cmd, env = _sweep_cli("--out", tmp_path / "whole", *KILL_ARGS)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    cmd, env = _sweep_cli("--out", tmp_path / "killed", *KILL_ARGS)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    members = tmp_path / "killed" / popm.MEMBERS_DIR
    # kill on a file event, not a clock: once both members' step-100 checkpoints exist (atomic
    # renames). Those are phase 1 of the step-100 checkpoint, which starts only after step 80's
    # commit (ensemble.py), so every resume.safetensors is at step 80 or later; 140 steps from the end
    wait_for_files(proc, [checkpoint_path(members / f"lr={lr}_seed=0", 100) for lr in ("0.003", "0.001")])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = [int(read_tensors(f)["meta.step"]) for f in members.glob("*/resume.safetensors")]
    assert all(80 <= s < 240 for s in steps), f"should have been killed part-way, at {steps}"

    cmd, env = _sweep_cli("--resume", tmp_path / "killed")
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    whole, resumed = load_population(tmp_path / "whole"), load_population(tmp_path / "killed")
    assert sorted(whole.ids) == sorted(resumed.ids) and len(whole.ids) == 2
    for i in whole.ids:
        a, b = whole.run(i), resumed.run(i)
        assert a.steps == b.steps and a.steps[-1] == 240
        pa, pb = a.params(), b.params()
        assert all(torch.equal(pa[k], pb[k]) for k in pa), f"{i}: weights differ after the resume"
        assert a.metrics.equals(b.metrics), f"{i}: metrics differ after the resume"


def test_probed_sweep_members_write_the_dynamics_rows_their_solo_runs_write(tmp_path):
    import pandas as pd

    sweep = tiny_sweep(grid={"lr": (3e-3,)}, probe="every=10,measures=hessian+agreement+momentum")
    pop = run_sweep(sweep, tmp_path / "s", progress=False)
    for i in pop.ids:
        member = pop.run(i)
        solo = mg.train(member.config, tmp_path / f"solo_{i}", progress=False,
                        measures=["every=10,measures=hessian+agreement+momentum"])
        a, b = pd.read_csv(member.path / "dynamics.csv"), pd.read_csv(solo.path / "dynamics.csv")
        assert a["step"].tolist() == b["step"].tolist() == [10, 20, 30]
        # members round differently from solo runs in the last bit (module docstring of ensemble.py);
        # the Hessian's power iteration and the cosines amplify that a little, not past 1e-3
        np.testing.assert_allclose(a.drop(columns="step").to_numpy(), b.drop(columns="step").to_numpy(),
                                   rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="unknown key"):
        tiny_sweep(probe="every=10,hession=3")


def test_a_member_that_never_started_is_counted_apart_not_as_not_grokked(planted):
    # wd 0: 1 of 3 members grokked; two more never got an evaluation row (one no metrics.csv at
    # all, one only its header): they must not pull the rate down to 1/5
    cfg = configure("demo", weight_decay=0.0, seed=7, p=11)
    write_json(planted / "wd0.0_s7" / "config.json", cfg.to_dict())
    write_json(planted / "wd0.0_s8" / "config.json", configure("demo", weight_decay=0.0, seed=8, p=11).to_dict())
    write_metrics(planted / "wd0.0_s8" / "metrics.csv", [])
    pop = load_population(planted)
    s = pop.summary("weight_decay")
    assert s.loc[0.0, "grok_rate"] == pytest.approx(1 / 3)
    assert (s.loc[0.0, "n"], s.loc[0.0, "n_not_started"], s.loc[0.0, "n_grokked"]) == (3, 2, 1)
    assert list(s["n_not_started"]) == [2, 0, 0] and s.loc[1.0, "grok_rate"] == 1.0
    res = CliRunner().invoke(app, ["population", str(planted), "--no-png"])
    assert res.exit_code == 0, res.output
    assert "n_not_started" in res.output


def test_cli_population_of_several_runs_writes_only_where_told(planted, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    runs = [str(planted / f"wd{wd}_s{seed}") for wd, seed, *_ in PLANTED]
    before = sorted(p.relative_to(planted) for p in planted.rglob("*"))
    res = CliRunner().invoke(app, ["population", *runs, "--no-png"])
    assert res.exit_code == 0, res.output
    assert res.output.rstrip().endswith("not written: give --out DIR to write population.csv and the figures")
    assert list(cwd.iterdir()) == [] and sorted(p.relative_to(planted) for p in planted.rglob("*")) == before
    res = CliRunner().invoke(app, ["population", *runs, "--no-png", "--out", str(tmp_path / "pop")])
    assert res.exit_code == 0, res.output
    written = pd.read_csv(tmp_path / "pop" / "population.csv")
    assert written["id"].tolist() == load_population([Path(r) for r in runs]).ids and list(cwd.iterdir()) == []
    assert (tmp_path / "pop" / "population_weight_decay.html").exists()


def test_cli_sweep_kept_restores_finished_members_on_a_fresh_machine(tmp_path):
    args = ["sweep", "--grid", "weight_decay=0.5,1", "--seeds", "1", "--chunk-size", "1", "--no-progress",
            "--kept", str(tmp_path / "kept"), *TINY_ARGS]
    first = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    kept = sorted(p.name for p in (tmp_path / "kept" / "members").iterdir())
    assert kept == ["weight_decay=0.5_seed=0", "weight_decay=1_seed=0"]
    # the same command on a fresh machine (another --out): nothing trains, the same members come back
    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert again.exit_code == 0, again.output
    a, b = load_population(tmp_path / "a"), load_population(tmp_path / "b")
    assert not list((tmp_path / "b").rglob("*.safetensors"))  # restored, not retrained
    assert b.table["final_test_acc"].tolist() == a.table["final_test_acc"].tolist()
