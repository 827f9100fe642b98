"""mechgrok.experiment: what the analyses/ scripts share."""

import json
from dataclasses import replace

import pytest

import mechgrok as mg
from mechgrok import experiment as ex


def _steps(cfg, n):
    return replace(cfg, train=replace(cfg.train, steps=n))


# --- train_or_resume --------------------------------------------------------------------------


def test_train_or_resume_trains_a_new_dir_then_loads_it_finished(tiny_cfg, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run = ex.train_or_resume(tiny_cfg, out)
    assert mg.is_run_dir(out) and run.steps[-1] == tiny_cfg.train.steps
    called = []
    monkeypatch.setattr(ex, "train", lambda *a, **k: called.append("train"))
    monkeypatch.setattr(ex, "resume", lambda *a, **k: called.append("resume"))
    again = ex.train_or_resume(tiny_cfg, out)
    assert called == [] and again.steps == run.steps, "a finished run is loaded, not trained again"


def test_train_or_resume_finishes_an_unfinished_run_and_extends_one(tiny_cfg, tmp_path):
    short, full = _steps(tiny_cfg, 20), tiny_cfg
    ref = mg.train(full, tmp_path / "ref", progress=False)
    mg.train(short, tmp_path / "cut", progress=False)
    run = ex.train_or_resume(full, tmp_path / "cut")  # asks for more steps: resumes to them
    assert run.steps[-1] == full.train.steps
    assert run.metrics.equals(ref.metrics), "a resumed run is the run an uninterrupted one would be"


def test_train_or_resume_refuses_a_run_of_other_settings_in_one_line(tiny_cfg, tmp_path):
    ex.train_or_resume(tiny_cfg, tmp_path / "run")
    other = replace(tiny_cfg, train=replace(tiny_cfg.train, lr=tiny_cfg.train.lr * 2))
    with pytest.raises(ValueError, match=r"holds a run of other settings: cannot change train\.lr") as e:
        ex.train_or_resume(other, tmp_path / "run")
    assert "\n" not in str(e.value)


def test_is_finished_counts_the_stop_rule(tiny_cfg, tmp_path):
    run = mg.train(_steps(tiny_cfg, 20), tmp_path / "run", progress=False)
    assert ex.is_finished(run) and not ex.is_finished(run, steps=40)


# --- seeds ------------------------------------------------------------------------------------


def test_parse_seeds_takes_a_count_a_range_a_list_or_a_mix():
    assert ex.parse_seeds("3") == (0, 1, 2) and ex.parse_seeds(4) == (0, 1, 2, 3)
    assert ex.parse_seeds("0-9") == tuple(range(10)) and ex.parse_seeds("0,5,7") == (0, 5, 7)
    assert ex.parse_seeds("0-2, 7") == (0, 1, 2, 7)


@pytest.mark.parametrize("bad", ["5-2", "x", "1-", "", "0", "1,1", "-3", "0-2,2"])
def test_parse_seeds_refuses_bad_text_in_one_line(bad):
    with pytest.raises(ValueError, match=r"--seeds expects N .*got") as e:
        ex.parse_seeds(bad)
    assert "\n" not in str(e.value)


# --- overrides --------------------------------------------------------------------------------


def test_apply_overrides_types_values_by_the_base_and_accepts_part_names():
    base = mg.get_preset("demo")
    cfg = ex.apply_overrides(base, ["lr=1e-2", "train.weight_decay=0.5", "beta1=0", "p=11", "seed=3",
                                    "batch_size=32", "keep_moments=true"])
    t = cfg.train
    assert (t.lr, t.weight_decay, t.betas, t.batch_size, t.keep_moments) == (1e-2, 0.5, (0.0, 0.98), 32, True)
    assert (cfg.task.p, cfg.task.seed, cfg.model.seed, t.seed) == (11, 3, 3, 3)
    assert ex.apply_overrides(base, {"lr": 0.5}).train.lr == 0.5
    assert ex.apply_overrides(base, []) == base


@pytest.mark.parametrize("bad, message", [
    (["lrr=1"], r"'lrr' is not a config field; allowed: .*\blr\b"),
    (["model.lr=1"], r"'model.lr' is not a config field"),
    (["lr=fast"], r"lr: 'fast' is not a valid float \(base value 0.001\)"),
    (["n_layers=1.5"], r"n_layers: '1.5' is not a valid int"),
    (["keep_moments=maybe"], r"keep_moments: 'maybe' is not a valid bool"),
    (["lr"], r"--set expects FIELD=VALUE, got 'lr'"),
    (["beta1=1.5"], r"beta1=1.5: TrainConfig.betas must be two numbers in \[0, 1\)"),
])
def test_apply_overrides_fails_in_one_line_naming_the_setting(bad, message):
    with pytest.raises(ValueError, match=message) as e:
        ex.apply_overrides(mg.get_preset("demo"), bad)
    assert "\n" not in str(e.value)


def test_cli_sweep_set_goes_through_the_same_parser(tmp_path):
    from typer.testing import CliRunner

    from mechgrok.cli import app

    res = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "s"), "--set", "lr=fast", "--no-progress"])
    assert res.exit_code == 1 and "lr: 'fast' is not a valid float" in res.output
    assert not (tmp_path / "s").exists()


# --- the report and the flags -----------------------------------------------------------------


def test_write_report_writes_md_and_json_side_by_side(tmp_path):
    import time

    stem = tmp_path / "figs" / "result"
    md, js = ex.write_report(stem, "| a |\n|---|\n| 1 |\n", {"rows": [{"a": 1}], "path": tmp_path},
                             command="python analyses/x.py --seeds 0-1", seeds=(0, 1), started=time.time() - 90)
    text = md.read_text()
    assert md == stem.with_suffix(".md") and js == stem.with_suffix(".json")
    assert text.startswith("| a |\n|---|\n| 1 |\n\n")
    assert "Command: `python analyses/x.py --seeds 0-1`" in text and "Seeds: 0, 1" in text
    assert mg.provenance.hardware() in text and "took 1.5 min" in text
    data = json.loads(js.read_text())
    assert data["rows"] == [{"a": 1}] and data["path"] == str(tmp_path)  # anything else as text
    assert data["command"] == "python analyses/x.py --seeds 0-1" and data["seeds"] == [0, 1]
    assert 89 <= data["seconds"] < 120 and data["provenance"]["cpu_cores"] and data["hardware"]
    assert sorted(p.name for p in stem.parent.iterdir()) == ["result.json", "result.md"], "no temp files left"


def test_parser_has_the_shared_flags_and_checks_seeds_and_set(capsys):
    ap = ex.parser("doc", out="runs/x", seeds="0,1", full="the published scale", overrides=True)
    args = ex.parse_args(ap, ["--seeds", "2-3", "--set", "lr=1", "--set", "p=11", "--full"])
    assert (str(args.out), str(args.figures), args.seeds, args.set, args.full) == \
        ("runs/x", "figures", "2-3", ["lr=1", "p=11"], True)
    for bad in (["--seeds", "5-2"], ["--set", "lr"]):
        with pytest.raises(SystemExit):
            ex.parse_args(ap, bad)
    assert "--seeds expects" in capsys.readouterr().err
    assert not hasattr(ex.parse_args(ex.parser("doc", out=None), []), "out")
