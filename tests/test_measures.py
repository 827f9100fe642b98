"""The measure protocol (measures.py): a user's measure, named by its import spec, lands in a
trained run's dynamics.csv, in every ensemble member's and sweep member's, and in analyze's
progress.csv, with the values an independent computation from the checkpoint files gives."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok import measures as ms
from mechgrok.cli import app
from mechgrok.files import read_tensors
from mechgrok.runs import checkpoint_path, moments_path

SPEC = "tests.test_measures:embed_sum"


@ms.measure(prefix="we_")
def embed_sum(ctx):
    """The sum of W_E and the step the measure was handed (column we_sum, we_step)."""
    return {"sum": float(ctx.params["embed.W_E"].double().sum()), "step": ctx.step}


def moment_sum(ctx):
    """The sum of AdamW's first moment over every parameter, NaN where none is kept."""
    if ctx.exp_avg is None:
        return {"m_sum": float("nan")}
    return {"m_sum": float(sum(v.double().sum() for v in ctx.exp_avg.values()))}


def _cfg(seed=0, steps=30, **train):
    return mg.RunConfig(task=mg.TaskConfig(op="add", p=11, frac=0.6, seed=seed),
                        model=mg.ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=seed),
                        train=mg.TrainConfig(steps=steps, lr=3e-3, eval_every=10, checkpoint_every=10, seed=seed,
                                             device="cpu", **train))


def _embed_sum_in_file(run_dir, step):
    """W_E's sum read straight from the checkpoint file (HookedTransformer key names)."""
    return float(read_tensors(checkpoint_path(run_dir, step))["embed.W_E"].double().sum())


def _check_against_checkpoints(run_dir, rows: pd.DataFrame, steps):
    assert rows["step"].tolist() == list(steps)
    assert rows["we_step"].tolist() == list(steps)
    for s, v in zip(rows["step"], rows["we_sum"]):
        assert v == pytest.approx(_embed_sum_in_file(run_dir, s), rel=1e-8, abs=1e-9)  # 9 significant digits


@pytest.fixture(scope="module")
def measured_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("measures") / "solo"
    return mg.train(_cfg(), out, progress=False, measures=[SPEC], measure_every=10)


def test_a_user_measure_by_spec_lands_in_dynamics_csv_with_the_checkpoints_values(measured_run):
    rows = pd.read_csv(measured_run.path / "dynamics.csv")
    _check_against_checkpoints(measured_run.path, rows, [10, 20, 30])


def test_a_measure_from_a_file_and_a_resume_give_the_uninterrupted_rows(measured_run, tmp_path):
    f = tmp_path / "my_measures.py"
    f.write_text("def embed_sum(ctx):\n"
                 "    return {'we_sum': float(ctx.params['embed.W_E'].double().sum()), 'we_step': ctx.step}\n")
    spec = f"{f}:embed_sum"
    mg.train(_cfg(steps=20), tmp_path / "r", progress=False, measures=[spec], measure_every=10)
    mg.resume(tmp_path / "r", _cfg(steps=30), progress=False, measures=[spec], measure_every=10)
    a, b = pd.read_csv(tmp_path / "r" / "dynamics.csv"), pd.read_csv(measured_run.path / "dynamics.csv")
    pd.testing.assert_frame_equal(a, b)


def test_an_ensemble_member_takes_the_measure_as_its_solo_run_does(measured_run, tmp_path):
    from mechgrok.ensemble import train_ensemble

    cfgs = [_cfg(0), _cfg(1)]
    members = train_ensemble(cfgs, [tmp_path / "m0", tmp_path / "m1"], progress=False, measures=[SPEC],
                             measure_every=10)
    for m in members:
        _check_against_checkpoints(m.path, pd.read_csv(m.path / "dynamics.csv"), [10, 20, 30])
    # members round differently from solo runs in the last bit (ensemble.py's module docstring)
    a, b = pd.read_csv(members[0].path / "dynamics.csv"), pd.read_csv(measured_run.path / "dynamics.csv")
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5, atol=1e-6)


def test_a_two_member_sweep_writes_the_measure_in_every_member(tmp_path):
    from mechgrok.population import SweepConfig, run_sweep

    base = mg.presets.configure("demo", p=11, frac=0.6, d_model=16, n_heads=2, d_head=8, d_mlp=32, steps=30,
                                lr=3e-3, warmup_steps=0, eval_every=10, checkpoint_every=10, device="cpu")
    sweep = SweepConfig(base, seeds=2, chunk_size=2, measures=(SPEC,), measure_every=10)
    pop = run_sweep(sweep, tmp_path / "s", progress=False)
    assert len(pop.ids) == 2
    for i in pop.ids:
        run = pop.run(i)
        _check_against_checkpoints(run.path, pd.read_csv(run.path / "dynamics.csv"), [10, 20, 30])
    assert SweepConfig.from_dict(sweep.to_dict()).measures == (SPEC,)
    with pytest.raises(ValueError, match="no function"):
        SweepConfig(base, seeds=1, measures=("tests.test_measures:nothing_here",))


def test_analyze_adds_the_measure_columns_to_progress_csv(measured_run, tmp_path):
    res = CliRunner().invoke(app, ["analyze", str(measured_run.path), "--out", str(tmp_path), "--measure", SPEC,
                                   "--measure", "weight_norm", "--no-png", "--no-progress"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "progress.csv")
    assert {"restricted_loss", "gini_W_E"} <= set(table.columns)  # the Fourier measures are still there
    _check_against_checkpoints(measured_run.path, table, measured_run.steps)
    for s, v in zip(table["step"], table["weight_norm"]):
        w = read_tensors(checkpoint_path(measured_run.path, s))
        assert v == pytest.approx(float(sum((t.double() ** 2).sum() for t in w.values())) ** 0.5, rel=1e-8)


def test_measure_series_hands_the_kept_moments_to_the_measure(tmp_path):
    run = mg.train(_cfg(keep_moments=True), tmp_path / "k", progress=False)
    table = ms.measure_series(run, [moment_sum, SPEC])
    assert table["step"].tolist() == run.steps == [0, 10, 20, 30]
    assert np.isnan(table["m_sum"].iloc[0])  # no optimizer state before the first step
    for s, v in zip(table["step"].iloc[1:], table["m_sum"].iloc[1:]):
        kept = read_tensors(moments_path(run.path, s))
        assert v == pytest.approx(float(sum(t.double().sum() for k, t in kept.items() if k.endswith(".exp_avg"))),
                                  rel=1e-9)
    _check_against_checkpoints(run.path, table, [0, 10, 20, 30])


def test_the_probe_spec_is_a_measure_with_its_own_every(tmp_path):
    run = mg.train(_cfg(steps=20), tmp_path / "p", progress=False,
                   measures=["every=5,measures=agreement", SPEC], measure_every=10)
    rows = pd.read_csv(run.path / "dynamics.csv")
    assert rows["step"].tolist() == [5, 10, 15, 20]
    assert rows["agreement"].notna().all()
    assert rows["we_sum"].isna().tolist() == [True, False, True, False]
    # the agreement column is the one dynamics.gradient_agreement computes from the checkpoint
    at20 = run.params(20)
    assert rows["agreement"].iloc[-1] == pytest.approx(
        mg.dynamics.gradient_agreement(at20, run.model_cfg, run.task), abs=1e-6)


@pytest.mark.parametrize("spec, message", [
    ("no_such_package_xyz.mod:fn", "cannot import"),
    ("tests.test_measures:nothing_here", "no function"),
    ("/nonexistent/dir/m.py:fn", "no such file"),
    ("hessian+curvature", "subset"),
    ("every=10,hession=3", "unknown key"),
    ("bogus", "not a built-in"),
])
def test_a_bad_spec_fails_in_one_line(spec, message):
    with pytest.raises(ValueError, match=message) as e:
        ms.resolve(spec)
    assert "\n" not in str(e.value)


def test_cli_train_takes_measures_and_refuses_a_bad_one_before_training(tmp_path):
    args = ["train", "--preset", "demo", "--p", "11", "--d-model", "16", "--n-heads", "2", "--d-mlp", "32",
            "--steps", "20", "--eval-every", "10", "--checkpoint-every", "10", "--device", "cpu", "--no-png",
            "--no-progress"]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "bad"), "--measure", "nope:fn"])
    assert res.exit_code == 1 and "error:" in res.output and not (tmp_path / "bad").exists()
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "ok"), "--measure", SPEC, "--measure-every", "10"])
    assert res.exit_code == 0, res.output
    _check_against_checkpoints(tmp_path / "ok", pd.read_csv(tmp_path / "ok" / "dynamics.csv"), [10, 20])


def test_builtins_are_immutable_and_cheap_ones_match_their_definitions(measured_run):
    with pytest.raises(TypeError):
        ms.BUILTIN["mine"] = ms.BUILTIN["weight_norm"]  # type: ignore[index]
    table = ms.measure_series(measured_run, ["weight_statistics", "fourier", "losses"], steps=[30])
    stats = mg.weight_statistics.weight_statistics({k: v[None] for k, v in measured_run.params(30).items()}, 1)
    for c in mg.weight_statistics.STATISTICS:
        assert table[c].iloc[0] == pytest.approx(float(stats[c].iloc[0]), rel=1e-9)
    wm = mg.progress.weight_measures(measured_run.params(30), measured_run.model_cfg, measured_run.task)
    assert table["gini_W_E"].iloc[0] == pytest.approx(wm["gini_W_E"])
    last = measured_run.metrics.iloc[-1]
    assert table["test_acc"].iloc[0] == pytest.approx(float(last["test_acc"]))
