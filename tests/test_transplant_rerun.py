"""Running `transplant` again into the same --out (issue 18, item 8): the same settings reuse the
finished result; other settings, or the arms of an interrupted run, are refused in one line that
names a way that works (another --out, or deleting the directory), never `--resume`, which
transplant does not have."""

import json

import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok import interventions as iv
from mechgrok.cli import app

torch.set_num_threads(1)


def _run(path):
    cfg = mg.RunConfig(
        task=mg.TaskConfig(op="add", p=7, frac=0.6, seed=0),
        model=mg.ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, act_fn="gelu"),
        train=mg.TrainConfig(steps=20, lr=1e-2, weight_decay=1.0, warmup_steps=0, batch_size=8, eval_every=5,
                             checkpoint_every=10, device="cpu"))
    return mg.train(cfg, path, progress=False)


def transplant(run, out, steps, *extra):
    return CliRunner().invoke(app, ["transplant", "--donor", str(run.path), "--donor-step", "20", "--recipient",
                                    str(run.path), "--recipient-step", "10", "--steps", str(steps), "--neurons",
                                    "0,1,2", "--out", str(out), "--json", "--no-progress", *extra])


def test_transplant_rerun_reuses_the_same_settings_and_refuses_others_naming_what_works(tmp_path, monkeypatch):
    run = _run(tmp_path / "run")
    out = tmp_path / "tp"
    first = transplant(run, out, 4)
    assert first.exit_code == 0, first.output
    res = json.loads(first.stdout)
    arm = mg.load_run(out / "transplant")
    assert arm.steps[-1] == 14 and res["transplant"]["final_test_acc"] == float(arm.metrics["test_acc"].iloc[-1])

    calls = []
    real = iv.continue_training
    monkeypatch.setattr(iv, "continue_training", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = transplant(run, out, 4)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == res and calls == []  # the finished result, nothing retrained

    other = transplant(run, out, 6)
    assert other.exit_code == 1 and "Traceback" not in other.output
    line = other.output.strip()
    assert len(line.splitlines()) == 1 and "--resume" not in line
    assert "steps=4 (asked 6)" in line and f"choose another --out, or delete {out} to run it again" in line
    assert mg.load_run(out / "transplant").steps[-1] == 14  # left as it was

    elsewhere = transplant(run, tmp_path / "tp6", 6)  # the way the message names works
    assert elsewhere.exit_code == 0, elsewhere.output
    assert mg.load_run(tmp_path / "tp6" / "transplant").steps[-1] == 16

    (out / iv.TRANSPLANT_FILE).unlink()  # as if the first call had been cut off after its arms
    cut = transplant(run, out, 4)
    assert cut.exit_code == 1 and "did not finish" in cut.output and "--resume" not in cut.output
    assert f"delete {out} to run it again" in cut.output
