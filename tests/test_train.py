import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import mechgrok as mg
from mechgrok.files import read_tensors, save_tensors
from mechgrok.runs import checkpoint_path
from mechgrok.schedule import batch_indices, lr_at
from mechgrok.trainer import TrainingDiverged, train


def _same_params(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_training_is_deterministic_for_a_seed(tiny_cfg, tmp_path):
    r1 = train(tiny_cfg, tmp_path / "a", progress=False)
    r2 = train(tiny_cfg, tmp_path / "b", progress=False)
    assert _same_params(r1.params(), r2.params())
    assert r1.metrics.equals(r2.metrics)


def test_run_directory_loads_back_with_checkpoints_metrics_and_tl_model(tiny_cfg, tmp_path):
    run = train(tiny_cfg, tmp_path / "run", progress=False)
    run = mg.load_run(tmp_path / "run")
    assert run.steps == [0, 20, 40, 60]
    assert list(run.metrics.columns[:5]) == ["step", "train_loss", "test_loss", "train_acc", "test_acc"]
    assert run.metrics["step"].tolist() == [0, 10, 20, 30, 40, 50, 60]
    assert run.metrics["train_loss"].iloc[-1] < run.metrics["train_loss"].iloc[0]
    model = run.model(step=run.steps[-1])
    logits, cache = model.run_with_cache(run.task.inputs)
    assert cache["post", 0, "mlp"].shape == (23 * 23, 3, 64)
    # the TL model's accuracy on the train split is the one the trainer recorded
    acc = (logits[run.task.train_idx, -1].argmax(-1) == run.task.train_labels).float().mean().item()
    assert acc == pytest.approx(run.metrics["train_acc"].iloc[-1], abs=1e-6)
    cfg = run.meta
    assert cfg["versions"]["torch"] == torch.__version__ and cfg["device"] == "cpu"
    assert not list(Path(tmp_path / "run").rglob("*.tmp")), "atomic writes leave no temp files"


def test_missing_step_lists_nearby_checkpoints(tiny_cfg, tmp_path):
    run = train(tiny_cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"no checkpoint at step 25.*nearest: \[0, 20, 40\]"):
        run.params(25)


def test_truncated_checkpoint_fails_naming_the_file(tiny_cfg, tmp_path):
    run = train(tiny_cfg, tmp_path / "run", progress=False)
    f = checkpoint_path(run.path, 20)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"step_0000020\.safetensors.*truncated"):
        run.params(20)


def test_checkpoint_with_wrong_shape_fails_naming_file_and_key(tiny_cfg, tmp_path):
    run = train(tiny_cfg, tmp_path / "run", progress=False)
    params = run.params(40)
    params["unembed.W_U"] = torch.zeros(32, 24)
    save_tensors(checkpoint_path(run.path, 40), params)
    with pytest.raises(ValueError, match=r"step_0000040\.safetensors.*unembed\.W_U"):
        run.params(40)


def test_nonfinite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path):
    cfg = replace(tiny_cfg, train=replace(tiny_cfg.train, lr=1e6, warmup_steps=0))
    with pytest.raises(TrainingDiverged, match=r"last good checkpoint is step \d+"):
        train(cfg, tmp_path / "run", progress=False)
    run = mg.load_run(tmp_path / "run")
    assert run.steps and all(torch.isfinite(v).all() for v in run.params().values())


def test_frozen_parameters_do_not_move(tiny_cfg, tmp_path):
    cfg = replace(tiny_cfg, train=replace(tiny_cfg.train, frozen=("blocks.0.attn.*", "embed.W_E")))
    run = train(cfg, tmp_path / "run", progress=False)
    first, last = run.params(0), run.params()
    for k in first:
        frozen = k.startswith("blocks.0.attn.") or k == "embed.W_E"
        assert torch.equal(first[k], last[k]) == frozen, k


def test_minibatch_order_depends_only_on_seed_and_step():
    a, b = batch_indices(17, 100, 32, seed=3), batch_indices(17, 100, 32, seed=3)
    assert torch.equal(a, b) and len(a) == 32
    epoch = torch.cat([batch_indices(s, 100, 32, seed=3) for s in range(4)])  # one epoch of 4 batches
    assert sorted(epoch.tolist()) == list(range(100))
    assert batch_indices(0, 100, None, seed=3) is None


def test_warmup_is_linear_then_constant():
    assert lr_at(0, 1e-3, 10) == pytest.approx(1e-4)
    assert lr_at(9, 1e-3, 10) == pytest.approx(1e-3) and lr_at(500, 1e-3, 10) == 1e-3
    assert lr_at(0, 1e-3, 0) == 1e-3


def test_refuses_to_overwrite_a_run(tiny_cfg, tmp_path):
    train(tiny_cfg, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_cfg, tmp_path / "run", progress=False)


def test_run_writes_a_training_curve_and_degrades_to_html_without_a_browser(tiny_cfg, tmp_path, monkeypatch):
    import plotly.graph_objects as go

    def no_browser(*a, **k):
        raise RuntimeError("Kaleido requires Google Chrome to be installed")

    monkeypatch.setattr(go.Figure, "write_image", no_browser)
    run = train(tiny_cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "training_curve.html").exists(), "the trainer draws nothing"
    with pytest.warns(UserWarning, match="PNG export skipped"):
        mg.draw_figures(run, analysis=False)
    assert (tmp_path / "run" / "training_curve.html").stat().st_size > 1000
    assert not (tmp_path / "run" / "training_curve.png").exists()


RESUME_ARGS = ["--preset", "demo", "--p", "23", "--frac", "0.6", "--d-model", "32", "--d-mlp", "64",
               "--steps", "400", "--eval-every", "20", "--checkpoint-every", "40", "--batch-size", "64",
               "--seed", "2", "--device", "cpu", "--no-progress", "--no-png"]  # PNG export costs seconds


def _cli(out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # one thread in both processes: float sums must be ordered the same way to compare bit-exactly
    code = "import torch, sys; torch.set_num_threads(1); from mechgrok.cli import app; sys.argv[0]='mechgrok'; app()"
    return [sys.executable, "-c", code, "train", *(["--out", str(out)] if out else []), *extra], env


def wait_for_files(proc, files, safety_net_s=900):
    """Block until every path in ``files`` exists. The trigger is the files, not the clock: the
    timeout is only a safety net against a hung child, and a child that exits first fails the
    test with its exit code rather than being killed at an arbitrary point."""
    end = time.monotonic() + safety_net_s
    while not all(Path(f).exists() for f in files):
        if proc.poll() is not None:
            pytest.fail(f"the child exited (rc {proc.returncode}) before {[str(f) for f in files]} appeared")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"safety net: {[str(f) for f in files]} did not appear within {safety_net_s} s")
        time.sleep(0.01)


def test_run_killed_with_sigkill_and_resumed_ends_bit_identical(tmp_path):
    cmd, env = _cli(tmp_path / "whole", *RESUME_ARGS)
    subprocess.run(cmd, env=env, check=True, capture_output=True)

    cmd, env = _cli(tmp_path / "killed", *RESUME_ARGS)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume_file = tmp_path / "killed" / "resume.safetensors"
    # kill on a file event, not a clock: once the step-160 checkpoint file exists. A checkpoint
    # writes its step file before its resume state (RunWriter.checkpoint), so step 160's file
    # means step 120's resume state is committed; 240 steps from the end
    wait_for_files(proc, [checkpoint_path(tmp_path / "killed", 160)])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(read_tensors(resume_file)["meta.step"])
    assert 120 <= killed_at < 400, "the run should have been killed part-way"

    cmd, env = _cli(None, "--resume", str(tmp_path / "killed"), "--no-progress", "--no-png")
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    whole, resumed = mg.load_run(tmp_path / "whole"), mg.load_run(tmp_path / "killed")
    assert resumed.steps == whole.steps
    assert _same_params(whole.params(), resumed.params())
    assert whole.metrics.equals(resumed.metrics)


def test_legacy_hookedtransformer_state_dict_loads_with_weights_only(tiny_cfg, tmp_path):
    run = train(tiny_cfg, tmp_path / "run", progress=False)
    sd = run.params()
    legacy = dict(sd, **{"blocks.0.attn.mask": torch.ones(3, 3).tril().bool(), "blocks.0.attn.IGNORE": torch.tensor(-1e5)})
    torch.save(legacy, tmp_path / "legacy.pth")
    model = mg.load_hooked_transformer(tmp_path / "legacy.pth", run.model_cfg)
    assert torch.equal(model.W_E, sd["embed.W_E"])
    inferred = mg.load_hooked_transformer(tmp_path / "legacy.pth")  # shapes inferred, act_fn relu
    x = run.task.inputs
    assert torch.allclose(inferred(x), model(x), atol=0)
    # a file holding arbitrary pickled objects is refused, not executed
    torch.save({"model": sd, "obj": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="tensors-only"):
        mg.load_hooked_transformer(tmp_path / "evil.pth")


class _Evil:
    pass


@pytest.mark.parametrize("kwargs,field", [(dict(steps=0), "steps"), (dict(lr=-1.0), "lr"),
                                          (dict(betas=(0.9, 1.5)), "betas"), (dict(device="tpu"), "device"),
                                          (dict(batch_size=0), "batch_size")])
def test_bad_train_config_fails_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}"):
        mg.TrainConfig(**kwargs)


def test_loss_fn_maps_over_stacked_models_with_vmap():
    # The capability that trains many seeds at once stacks parameter dicts and vmaps the step.
    from torch.func import grad, vmap

    from mechgrok.trainer import loss_fn

    task = mg.make_task("add", p=13, frac=0.5)
    cfgs = [mg.ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=s).resolve(task) for s in (0, 1, 2)]
    ps = [mg.init_params(c) for c in cfgs]
    stacked = {k: torch.stack([p[k] for p in ps]) for k in ps[0]}
    x, y = task.train_inputs, task.train_labels
    loss = lambda P: loss_fn(P, cfgs[0], x, y)  # noqa: E731
    batched = vmap(grad(loss))(stacked)
    for i, p in enumerate(ps):
        single = grad(loss)(p)
        for k in single:
            assert torch.allclose(batched[k][i], single[k], atol=1e-7), k


# --- run writer, resume state, resume rules, probe hook ------------------------


def test_resume_with_more_steps_extends_a_finished_run_bit_identically(tiny_cfg, tmp_path):
    longer = replace(tiny_cfg, train=replace(tiny_cfg.train, steps=100))
    whole = mg.train(longer, tmp_path / "whole", progress=False)
    mg.train(tiny_cfg, tmp_path / "ext", progress=False)  # finished at 60
    extended = mg.resume(tmp_path / "ext", longer, progress=False)
    assert extended.config.train.steps == 100 and mg.load_run(tmp_path / "ext").config == longer
    assert extended.steps == whole.steps == [0, 20, 40, 60, 80, 100]
    assert _same_params(whole.params(), extended.params())
    assert whole.metrics.equals(extended.metrics)


def test_resume_refuses_any_other_changed_setting_naming_the_field(tiny_cfg):
    from mechgrok.trainer import resume_config

    for changed, field in [(replace(tiny_cfg, train=replace(tiny_cfg.train, lr=1e-2)), "train.lr"),
                           (replace(tiny_cfg, task=replace(tiny_cfg.task, p=29)), "task.p"),
                           (replace(tiny_cfg, model=replace(tiny_cfg.model, d_mlp=32)), "model.d_mlp")]:
        with pytest.raises(ValueError, match=rf"cannot change {field}"):
            resume_config(tiny_cfg, changed)
    with pytest.raises(ValueError, match="train.steps=30"):
        resume_config(tiny_cfg, replace(tiny_cfg, train=replace(tiny_cfg.train, steps=30)))
    cpu = replace(tiny_cfg, train=replace(tiny_cfg.train, device="cpu"))
    assert resume_config(tiny_cfg, cpu).train.device == "cpu"  # where to run is not the run


def test_refuses_out_that_is_a_nonempty_directory_but_not_a_run(tiny_cfg, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user's file")
    with pytest.raises(FileExistsError, match="not an empty directory or a mechgrok run"):
        mg.train(tiny_cfg, tmp_path / "mine", progress=False)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    (tmp_path / "empty").mkdir()  # an empty directory is fine
    assert mg.train(tiny_cfg, tmp_path / "empty", progress=False).steps[-1] == 60


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_run_files_are_written_with_the_users_umask(tmp_path, umask):
    from mechgrok.files import write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        save_tensors(tmp_path / "b.safetensors", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    for f in ("a.json", "b.safetensors"):
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o666 & ~umask, f


def test_probe_rows_go_to_dynamics_csv_and_survive_resume(tiny_cfg, tmp_path):
    import pandas as pd

    from mechgrok.runs import read_resume_state

    def probe(step, params, exp_avg):
        return {"w_sq": float(sum((v.detach().double() ** 2).sum() for v in params.values())),
                "m_sq": float(sum((m.double() ** 2).sum() for m in exp_avg.values()))}

    run = mg.train(tiny_cfg, tmp_path / "a", progress=False, probe=probe, probe_every=10)
    dyn = pd.read_csv(tmp_path / "a" / "dynamics.csv")
    assert dyn["step"].tolist() == [10, 20, 30, 40, 50, 60]
    # against the files written independently of the probe: the checkpoint and AdamW's moments
    at40 = run.params(40)
    assert dyn.loc[dyn.step == 40, "w_sq"].item() == pytest.approx(sum(float((v.double() ** 2).sum()) for v in at40.values()), rel=1e-8)  # dynamics.csv keeps 9 significant digits
    m = read_resume_state(tmp_path / "a").optimizer
    assert dyn.loc[dyn.step == 60, "m_sq"].item() == pytest.approx(sum(float((s["exp_avg"].double() ** 2).sum()) for s in m.values()), rel=1e-8)  # 9 significant digits: up to 5e-9 relative
    # stopped at 40 and resumed to 60: the same rows as the uninterrupted run
    short = replace(tiny_cfg, train=replace(tiny_cfg.train, steps=40))
    mg.train(short, tmp_path / "b", progress=False, probe=probe, probe_every=10)
    mg.resume(tmp_path / "b", tiny_cfg, progress=False, probe=probe, probe_every=10)
    assert pd.read_csv(tmp_path / "b" / "dynamics.csv").equals(dyn)


def test_grokfast_ema_filter_is_the_closed_form_of_its_recursion():
    from mechgrok.grokfast import GradientFilter

    g = [torch.randn(3, 2, generator=torch.Generator().manual_seed(t)) for t in range(6)]
    alpha, lam = 0.9, 2.0
    f = GradientFilter("ema", alpha=alpha, lam=lam)
    for t in range(1, 7):
        out = f({"w": g[t - 1]})["w"]
        # e_t = alpha^(t-1) g_1 + sum_{s=2..t} (1 - alpha) alpha^(t-s) g_s (e_1 = g_1)
        e = alpha ** (t - 1) * g[0] + sum((1 - alpha) * alpha ** (t - s) * g[s - 1] for s in range(2, t + 1))
        assert torch.allclose(out, g[t - 1] + lam * e, atol=1e-6), t


def test_grokfast_ma_filter_adds_the_window_mean_once_full_and_resumes_exactly():
    from mechgrok.grokfast import GradientFilter

    g = [torch.full((2,), float(t)) for t in range(1, 9)]  # gradients 1, 2, ..., 8
    f = GradientFilter("ma", lam=5.0, window=3)
    outs = [f({"w": x})["w"] for x in g[:4]]
    assert [o[0].item() for o in outs] == [1.0, 2.0, 3 + 5 * 2.0, 4 + 5 * 3.0]  # window full from the 3rd
    # state round trip (what resume.safetensors carries): the continuation is the uninterrupted one
    again = GradientFilter("ma", lam=5.0, window=3)
    again.load({k: v.clone() for k, v in f.state_tensors().items()})
    for x in g[4:]:
        assert torch.equal(again({"w": x})["w"], f({"w": x})["w"])
    assert f({"w": torch.tensor([9.0, 9.0])})["w"][0].item() == 9 + 5 * 8.0  # mean of 7, 8, 9


def test_kept_moments_are_adams_state_at_each_checkpoint(tiny_cfg, tmp_path):
    import pandas as pd

    from mechgrok import dynamics
    from mechgrok.runs import moments_path, read_resume_state

    cfg = replace(tiny_cfg, train=replace(tiny_cfg.train, keep_moments=True))
    probe = dynamics.make_probe(cfg, measures=("momentum",))
    run = mg.train(cfg, tmp_path / "r", progress=False, probe=probe, probe_every=tiny_cfg.train.checkpoint_every)
    assert not moments_path(run.path, 0).exists(), "no AdamW state exists before the first step"
    dyn = pd.read_csv(run.path / "dynamics.csv").set_index("step")
    later = [s for s in run.steps if s > 0]
    assert len(later) >= 2
    # the probe read the live optimizer during training; momentum_alignment reads the kept file
    for s in later:
        assert dynamics.momentum_alignment(run, s) == pytest.approx(dyn.loc[s, "momentum_cos"], abs=1e-6)
    last = read_resume_state(run.path)
    kept = read_tensors(moments_path(run.path, last.step))
    for name, st in last.optimizer.items():
        assert torch.equal(kept[f"opt.{name}.exp_avg"], st["exp_avg"])
        assert torch.equal(kept[f"opt.{name}.exp_avg_sq"], st["exp_avg_sq"])
    first = read_tensors(moments_path(run.path, later[0]))
    assert not torch.equal(first[f"opt.{name}.exp_avg"], kept[f"opt.{name}.exp_avg"]), "one file per step"


def test_train_cli_sets_grokfast_stop_after_grok_and_keep_moments(tmp_path):
    from typer.testing import CliRunner

    from mechgrok.cli import app

    args = ["train", "--out", str(tmp_path / "gf"), "--p", "11", "--d-model", "16", "--n-heads", "2", "--d-mlp", "32",
            "--steps", "20", "--eval-every", "10", "--checkpoint-every", "10", "--grokfast", "ema",
            "--grokfast-lambda", "3", "--stop-after-grok", "2", "--keep-moments", "--no-progress", "--no-png"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    t = mg.load_run(tmp_path / "gf").config.train
    assert (t.grokfast, t.grokfast_lambda, t.stop_after_grok, t.keep_moments) == ("ema", 3.0, 2, True)
    assert "grokfast.count" in read_tensors(tmp_path / "gf" / "resume.safetensors")
    assert (tmp_path / "gf" / "checkpoints" / "moments_0000020.safetensors").exists()
    bad = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "bad"), "--grokfast", "adam"])
    flat = " ".join(bad.output.replace("│", " ").split())  # rich wraps the message in a box
    assert bad.exit_code == 2 and "'adam' is not one of 'none', 'ema', 'ma'" in flat, bad.output
