import json

from typer.testing import CliRunner

from mechgrok.cli import app

runner = CliRunner()
SMALL = ["--p", "13", "--frac", "0.6", "--d-model", "16", "--n-heads", "2", "--d-mlp", "32", "--steps", "30",
         "--eval-every", "10", "--checkpoint-every", "10", "--no-progress"]


def test_presets_lists_every_preset_with_settings():
    r = runner.invoke(app, ["presets"])
    assert r.exit_code == 0
    for name in ("demo", "nanda", "division4", "tutorial2"):
        assert name in r.output
    assert "p=113" in r.output and "weight_decay=0.3" in r.output


def test_train_then_info_reports_steps_and_accuracies(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--out", str(out), *SMALL])
    assert r.exit_code == 0, r.output
    assert "checkpoints: 4 (steps 0..30)" in r.output
    r = runner.invoke(app, ["info", str(out), "--json"])
    info = json.loads(r.output)
    assert info["last_step"] == 30 and 0.0 <= info["test_acc"] <= 1.0
    assert info["config"]["task"]["p"] == 13 and info["config"]["model"]["d_head"] == 8


def test_overrides_reach_the_run_config(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--out", str(out), *SMALL, "--op", "div", "--n-layers", "2",
                            "--normalization", "LN", "--act-fn", "gelu", "--beta1", "0.5", "--wd", "0.1"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"]["op"] == "div" and cfg["model"]["n_layers"] == 2 and cfg["model"]["act_fn"] == "gelu"
    assert cfg["train"]["betas"] == [0.5, 0.98] and cfg["train"]["weight_decay"] == 0.1


def test_bad_input_exits_nonzero_with_a_message_not_a_traceback(tmp_path):
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--p", "12"])
    assert r.exit_code == 1 and "TaskConfig.p must be a prime" in r.output
    r = runner.invoke(app, ["info", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "not a mechgrok run" in r.output
    r = runner.invoke(app, ["train", "--p", "13"])
    assert r.exit_code == 1 and "--out" in r.output
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "not a mechgrok run" in r.output
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--preset", "nope"])
    assert r.exit_code == 1 and "unknown preset" in r.output
