"""freeze's results.jsonl is a cache of finished continuations: a result is reused only when every
setting that produced it (source run, checkpoint, intervention, steps, optimizer) matches the
one asked for; otherwise it is trained again (issue 18, item 1)."""

import json

import pandas as pd
import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok import interventions as iv
from mechgrok.cli import app

torch.set_num_threads(1)


def _cfg(steps=40):
    return mg.RunConfig(
        task=mg.TaskConfig(op="add", p=7, frac=0.6, seed=0),
        model=mg.ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, act_fn="gelu"),
        train=mg.TrainConfig(steps=steps, lr=1e-2, weight_decay=1.0, warmup_steps=0, batch_size=8, eval_every=5,
                             checkpoint_every=10, device="cpu"))


def freeze_json(*args) -> list[dict]:
    r = CliRunner().invoke(app, ["freeze", *map(str, args), "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_freeze_rerun_with_other_steps_or_optimizer_is_trained_again(tmp_path):
    run = mg.train(_cfg(), tmp_path / "run", progress=False)
    out = tmp_path / "freeze"
    common = (run.path, "--from-step", "40", "--interventions", "baseline", "--out", out)

    long = freeze_json(*common, "--steps", "10")[0]
    assert long["steps"] == 10 and long["optimizer"] == "fresh"
    short = freeze_json(*common, "--steps", "4")[0]
    # the answer for 4 steps, not the cached one for 10: it ends at step 44, as a fresh
    # continuation of 4 steps does
    assert short["steps"] == 4
    direct = iv.continue_training(run, 40, 4, out=tmp_path / "direct", name="baseline")
    assert short["final_test_acc"] == direct.final_test_acc and short["max_test_acc"] == direct.max_test_acc
    cont = mg.load_run(out / "step_40" / "baseline")
    assert cont.steps[-1] == 44

    # carry the moments of resume.safetensors (step 40 is the run's newest checkpoint): the
    # baseline continuation then replays the source run exactly, which a fresh AdamW does not
    carry = freeze_json(*common, "--steps", "4", "--optimizer", "carry")[0]
    assert carry["optimizer"] == "carry" and carry["steps"] == 4
    extended = mg.resume(run.path, mg.presets.configure(run.config, steps=44), progress=False)
    cont = mg.load_run(out / "step_40" / "baseline")
    for k, v in extended.params(44).items():
        assert torch.equal(cont.params(44)[k], v), k
    assert carry["final_test_acc"] == float(extended.metrics.set_index("step").loc[44, "test_acc"])
    fresh_params = mg.load_run(tmp_path / "direct").params(44)
    assert any(not torch.equal(fresh_params[k], v) for k, v in cont.params(44).items())


def test_freeze_sweep_reuses_a_result_only_when_every_setting_matches(tmp_path, monkeypatch):
    run = mg.train(_cfg(), tmp_path / "run", progress=False)
    out = tmp_path / "freeze"
    trained = []
    real = iv.freeze_and_continue

    def counting(run, s, name, steps, **kw):
        trained.append((s, name, steps, kw.get("optimizer")))
        return real(run, s, name, steps, **kw)

    monkeypatch.setattr(iv, "freeze_and_continue", counting)
    first = iv.freeze_sweep(run, [20], ["baseline"], steps=5, out_dir=out, progress=False)
    same = iv.freeze_sweep(run, [20], ["baseline"], steps=5, out_dir=out, progress=False)
    assert trained == [(20, "baseline", 5, "fresh")]  # the same settings: reused
    pd.testing.assert_frame_equal(first, same)
    other = iv.freeze_sweep(run, [20], ["baseline"], steps=3, out_dir=out, progress=False)
    assert trained[-1] == (20, "baseline", 3, "fresh") and list(other["steps"]) == [3]
    # another source run writing into the same out_dir does not get the first run's answer
    run2 = mg.train(mg.presets.configure(_cfg(), seed=5), tmp_path / "run2", progress=False)
    iv.freeze_sweep(run2, [20], ["baseline"], steps=3, out_dir=out, progress=False)
    assert len(trained) == 3
    # a row written before rows recorded their optimizer and source is not trusted either
    log = out / "results.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text(json.dumps({k: v for k, v in rows[-1].items() if k not in ("optimizer", "source")}) + "\n")
    iv.freeze_sweep(run2, [20], ["baseline"], steps=3, out_dir=out, progress=False)
    assert len(trained) == 4


def test_train_false_reports_what_is_done_and_trains_nothing(tmp_path):
    run = mg.train(_cfg(), tmp_path / "run", progress=False)
    out = tmp_path / "freeze"
    done = iv.freeze_sweep(run, [20], ["baseline"], 4, out_dir=out, progress=False)
    both = iv.freeze_sweep(run, [20, 40], ["baseline", "head"], 4, out_dir=out, progress=False, train=False)
    assert list(zip(both["from_step"], both["name"])) == [(20, "baseline")]
    assert both["final_test_acc"].tolist() == done["final_test_acc"].tolist()
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl", "step_20"]
    assert [p.name for p in (out / "step_20").iterdir()] == ["baseline"]
    # other steps: the done row is not this setting's, so nothing is reported
    assert iv.freeze_sweep(run, [20], ["baseline"], 5, out_dir=out, progress=False, train=False).empty


def test_never_grokked_is_na_in_the_table_and_null_in_the_json(tmp_path):
    # two continuations that do not grok; then the log says one of them grokked at step 25: a
    # column of 25 and None must stay integer and "missing", never 25.0 and NaN (not JSON)
    run = mg.train(_cfg(), tmp_path / "run", progress=False)
    out = tmp_path / "freeze"
    table = iv.freeze_sweep(run, [20], ["baseline", "head"], 4, out_dir=out, progress=False)
    assert str(table["grokking_step"].dtype) == "Int64" and table["grokking_step"].isna().all()
    log = out / "results.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    rows[0]["grokking_step"] = 25
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = iv.freeze_sweep(run, [20], ["baseline", "head"], 4, out_dir=out, progress=False, train=False)
    assert table["grokking_step"].tolist() == [25, pd.NA] and isinstance(table["grokking_step"].tolist()[0], int)

    def no_nan(name):
        raise AssertionError(f"{name} in the --json output: not JSON")

    listed = json.loads(CliRunner().invoke(app, ["freeze", str(run.path), "--from-step", "20", "--steps", "4",
                                                 "--interventions", "baseline,head", "--out", str(out), "--json",
                                                 "--no-progress"]).stdout, parse_constant=no_nan)
    assert [r["grokking_step"] for r in listed] == [25, None]
