"""`analyze` refuses a run whose config.json no longer describes the split its metrics.csv was
measured on (a hand-edited frac or seed), instead of measuring every checkpoint on another split
than the training curve it draws them against."""

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app
from mechgrok.evaluation import check_recorded_metrics


def edited_copy(run, tmp_path, **task):
    d = tmp_path / "run"
    shutil.copytree(run.path, d)
    meta = json.loads((d / "config.json").read_text())
    meta["task"] |= task
    (d / "config.json").write_text(json.dumps(meta))
    return mg.load_run(d)


def test_the_unedited_run_agrees_with_its_metrics(tiny_run):
    check_recorded_metrics(tiny_run)  # the trainer's own rows: no complaint


@pytest.mark.parametrize("edit", [dict(frac=0.5), dict(seed=2)])
def test_a_hand_edited_split_is_refused_naming_the_numbers(tiny_run, tmp_path, edit):
    run = edited_copy(tiny_run, tmp_path, **edit)
    m = tiny_run.metrics.set_index("step").loc[60]
    with pytest.raises(ValueError, match=r"config.json contradicts the run's own metrics.csv at step 60 ") as e:
        mg.analysis.analyze(run, progress=False)
    # the first disagreeing split, with the number recomputed on the edited split and the recorded one
    split, ours, recorded = re.search(r"\((train|test) loss (\S+) here, (\S+) in metrics.csv", str(e.value)).groups()
    assert float(recorded) == pytest.approx(m[f"{split}_loss"], rel=1e-3)
    x, y = (run.task.train_inputs, run.task.train_labels) if split == "train" else (run.task.test_inputs, run.task.test_labels)
    assert float(ours) == pytest.approx(mg.evaluation.loss_and_accuracy_on(run.params(60), run.model_cfg, x, y)[0], rel=1e-3)
    assert abs(float(ours) - float(recorded)) > 0.02 * float(recorded)
    r = CliRunner().invoke(app, ["analyze", str(run.path), "--no-progress", "--no-png"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "restore them" in r.output and not (run.path / "progress.csv").exists()
