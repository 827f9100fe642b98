"""Config values of the wrong type fail at construction in one line naming the field (and, read
from a run's config.json, the file), instead of a traceback or a silently different run."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app
from mechgrok.presets import configure


@pytest.mark.parametrize("part, kw, field", [
    ("train", dict(steps=100.5), "TrainConfig.steps"),
    ("train", dict(eval_every=10.0), "TrainConfig.eval_every"),
    ("train", dict(lr="1e-3"), "TrainConfig.lr"),
    ("train", dict(batch_size=True), "TrainConfig.batch_size"),
    ("task", dict(p="53"), "TaskConfig.p"),
    ("task", dict(p=53.0), "TaskConfig.p"),
    ("task", dict(frac="0.3"), "TaskConfig.frac"),
    ("model", dict(seed=1.5), "ModelConfig.seed"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(part, kw, field):
    # through from_dict (what reading config.json does): the test session type-checks the
    # constructors of model.py and tasks.py with jaxtyping, which would answer first
    with pytest.raises(ValueError, match=rf"^{field} must be "):
        mg.RunConfig.from_dict({part: kw})
    if part == "train":  # the Python API's own constructor (not type-checked by the test session)
        with pytest.raises(ValueError, match=rf"^{field} must be "):
            mg.TrainConfig(**kw)


def test_values_of_the_right_type_are_kept_and_normalised():
    p = mg.RunConfig.from_dict({"task": {"p": np.int64(53)}}).task.p
    assert p == 53 and type(p) is int
    assert mg.TrainConfig(lr=1).lr == 1.0 and type(mg.TrainConfig(lr=1).lr) is float
    assert mg.TrainConfig(batch_size=None, stop_after_grok=None).batch_size is None
    assert configure("demo", steps=200).train.steps == 200
    with pytest.raises(ValueError, match="TrainConfig.steps must be an integer, got 100.5"):
        configure("demo", steps=100.5)


def test_n_heads_not_dividing_d_model_is_refused_naming_both():
    # d_head follows d_model / n_heads only when it divides: 128 // 3 = 42 would give 126 dims
    with pytest.raises(ValueError, match="n_heads 3 does not divide d_model 128"):
        configure("demo", n_heads=3)
    with pytest.raises(ValueError, match="n_heads 4 does not divide d_model 30"):
        configure("demo", d_model=30, n_heads=4)
    assert configure("demo", n_heads=8).model.d_head == 16
    assert configure("demo", n_heads=3, d_head=40).model.d_head == 40  # given: the user's choice


@pytest.mark.parametrize("part, field, value", [("task", "p", "23"), ("task", "p", 23.0), ("train", "lr", "3e-3"),
                                                ("train", "steps", 60.5)])
def test_a_hand_edited_config_json_fails_in_one_line_naming_file_and_field(tiny_run, tmp_path, part, field, value):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.path, run_dir)
    meta = json.loads((run_dir / "config.json").read_text())
    meta[part][field] = value
    (run_dir / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"config.json: \w+Config.{field} must be"):
        mg.load_run(run_dir)
    r = CliRunner().invoke(app, ["info", str(run_dir)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "config.json" in r.output and field in r.output


def test_a_config_part_that_is_not_an_object_is_one_line(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.path, run_dir)
    meta = json.loads((run_dir / "config.json").read_text())
    meta["model"] = "big"
    (run_dir / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="config.json: ModelConfig: expected an object of fields"):
        mg.load_run(run_dir)
