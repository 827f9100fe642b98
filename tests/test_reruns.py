"""The re-runs at published settings (analyses/seed001_main_run.py, weight_decay_comparison.py,
seed002_example1.py, grokfast_vs_momentum.py --mod113,
seed004_transition.py, training_maps.py): their numbers are the ones the runs'
metrics.csv give, their reports hold what the ledger reads, and seeds add up across calls."""

import importlib
import json
import shutil
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import mechgrok as mg

ANALYSES = Path(__file__).resolve().parents[1] / "analyses"
# a model that trains in a second: the tutorial2 preset's 2 layers shrunk to 1 small one on mod 23
TINY = ["p=23", "n_layers=1", "d_model=32", "d_head=8", "d_mlp=64", "batch_size=64", "lr=0.01"]


def script(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ANALYSES))
    return importlib.import_module(name)


def run_script(mod, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", [f"analyses/{mod.__name__}.py", *map(str, argv)])
    mod.main()


def sets(*extra):
    return [a for s in (*TINY, *extra) for a in ("--set", s)]


def section(readme: Path, name: str) -> str:
    text = readme.read_text()
    assert text.count(f"<!-- {name}:begin -->") == 1 and text.count(f"<!-- {name}:end -->") == 1
    return text[text.index(f"<!-- {name}:begin -->"):text.index(f"<!-- {name}:end -->")]


# --- seed 001's main run ----------------------------------------------------------------------


def test_seed001_numbers_are_the_transition_metrics_of_metrics_csv(grokked_run, monkeypatch):
    s1 = script("seed001_main_run", monkeypatch)
    m = pd.read_csv(Path(grokked_run.path) / "metrics.csv")
    mem = int(m.loc[m["train_acc"] > 0.99, "step"].iloc[0])
    grok = int(m.loc[m["test_acc"] > 0.9, "step"].iloc[0])
    o = s1.ours(grokked_run)
    assert (o["memorised_step"], o["grokked_step"], o["delay"]) == (mem, grok, grok - mem)
    assert o["delay_fraction"] == pytest.approx((grok - mem) / grokked_run.config.train.steps)
    last = m.iloc[-1]
    assert [o[f"final_{k}"] for k in ("train_loss", "test_loss", "train_acc", "test_acc")] == pytest.approx(
        [last["train_loss"], last["test_loss"], last["train_acc"], last["test_acc"]])


def test_seed001_script_writes_the_side_by_side_table_json_and_readme_section(tmp_path, monkeypatch):
    s1 = script("seed001_main_run", monkeypatch)
    readme = tmp_path / "README.md"
    readme.write_text("# Figures\n\nother text\n")
    args = ["--out", tmp_path / "run", "--figures", tmp_path, "--readme", readme,
            *sets("steps=30", "checkpoint_every=10")]
    run_script(s1, monkeypatch, *args)
    run_script(s1, monkeypatch, *args)  # re-running loads the finished run and rewrites the section in place
    data = json.loads((tmp_path / "seed001_main_run.json").read_text())
    assert {"config", "seeds", "rows", "summary", "command", "hardware", "seconds", "train_wall_s",
            "published"} <= set(data)
    o = s1.ours(mg.load_run(tmp_path / "run"))
    assert data["summary"].pop("drops_after_grok") == o.pop("drops_after_grok")
    assert data["summary"] == pytest.approx(o)
    assert data["published"]["grokked_step"] == 2260 and data["config"]["train"]["steps"] == 30
    final = f"| final train accuracy | 1.000 | {data['summary']['final_train_acc']:.3f} |"
    assert final in (tmp_path / "seed001_main_run.md").read_text() and final in section(readme, "seed001_main_run")
    assert "other text" in readme.read_text() and "pre-LN" in section(readme, "seed001_main_run")


# --- weight decay comparison --------------------------------------------------------------------


def member(wd, seed, steps, test, final_test=None, grokked=None, memorised=None):
    r = SimpleNamespace(weight_decay=wd, seed=seed, final_train_acc=1.0, memorised_step=memorised,
                        final_test_acc=test[-1] if final_test is None else final_test,
                        grokked_step=pd.NA if grokked is None else grokked)
    r.memorised_step = pd.NA if memorised is None else memorised
    return r, pd.DataFrame({"step": steps, "test_acc": test, "train_acc": [1.0] * len(steps)})


def test_wd_member_row_finds_the_lowest_test_accuracy_after_grokking(monkeypatch):
    wd = script("weight_decay_comparison", monkeypatch)
    r, m = member(2.0, 42, [0, 50, 100, 140, 150], [0.01, 0.3, 0.95, 0.016, 1.0], grokked=100, memorised=50)
    row = wd.member_row(r, m, epoch=10)
    assert (row["grokked_epoch"], row["memorised_epoch"]) == (10, 5)
    assert (row["min_test_acc_after_grok"], row["min_test_acc_after_grok_epoch"]) == (0.016, 14)
    r, m = member(0.01, 42, [0, 50], [0.01, 0.02])
    assert wd.member_row(r, m, epoch=10)["min_test_acc_after_grok"] is None


def test_wd_summary_is_median_and_inclusive_iqr_per_value_and_the_caption_reads_it(monkeypatch):
    wd = script("weight_decay_comparison", monkeypatch)
    finals = [0.1, 0.2, 0.3, 0.4, 1.0]
    rows = [{"weight_decay": 1.0, "seed": 42 + i, "final_train_acc": 1.0, "final_test_acc": t,
             "memorised_epoch": 5, "grokked_epoch": 100 if t == 1.0 else None,
             "min_test_acc_after_grok": 0.016 if t == 1.0 else None,
             "min_test_acc_after_grok_epoch": 140 if t == 1.0 else None} for i, t in enumerate(finals)]
    (s,) = wd.summarise(rows, 150)
    # one of five grokked (at epoch 100): the median grokking epoch is after the 150 run, not 100
    assert s["grokked_epoch"]["median"] == "> 150" and s["grokked_epoch"]["not_reached"] == 4
    q = statistics.quantiles(finals, n=4, method="inclusive")
    assert s["test_acc"] == {"n": 5, "median": 0.3, "q25": pytest.approx(q[0]), "q75": pytest.approx(q[2])}
    assert (s["n"], s["n_grokked"], s["n_collapsed_after_grok"]) == (5, 1, 1)
    assert s["seed001_test_acc"] == 0.480
    text = wd.caption([s], 150)
    assert "median 0.300 (0.200 to 0.400) (seed 001: 0.480)" in text and "1/5 grokked (test acc > 0.9), median epoch > 150" in text
    assert "1/5 grokked" in text and "1/1 (seed 46 fell to 0.016 at epoch 140)" in text


def test_wd_script_reports_every_seed_done_and_a_second_call_trains_only_new_seeds(tmp_path, monkeypatch):
    wd = script("weight_decay_comparison", monkeypatch)
    readme = tmp_path / "README.md"
    args = ["--out", tmp_path / "sw", "--figures", tmp_path, "--readme", readme, "--epochs", 2, "--eval-epochs", 1,
            *sets()]
    run_script(wd, monkeypatch, *args, "--seeds", 1)
    first = sorted((tmp_path / "sw" / "seed42").rglob("metrics.csv"))
    stamps = [f.stat().st_mtime_ns for f in first]
    run_script(wd, monkeypatch, *args, "--seeds", 2)
    assert [f.stat().st_mtime_ns for f in first] == stamps  # seed 42 loaded, not retrained
    data = json.loads((tmp_path / "weight_decay_comparison.json").read_text())
    assert data["seeds"] == [42, 43] and len(data["rows"]) == 8 and data["steps_per_epoch"] == 5  # ceil(264/64)
    for s in data["summary"]:
        finals = [r["final_test_acc"] for r in data["rows"] if r["weight_decay"] == s["weight_decay"]]
        assert s["n"] == 2 and s["test_acc"]["median"] == pytest.approx(statistics.median(finals))
    assert data["caption"] in section(readme, "weight_decay_comparison")
    assert {"command", "hardware", "seconds", "config"} <= set(data)


# --- seed 002 example 1 -------------------------------------------------------------------------


def test_seed002_verdict_needs_every_decay_member_to_grok_and_no_other(monkeypatch):
    s2 = script("seed002_example1", monkeypatch)
    r, m = member(1.0, 0, [0, 50, 100, 150], [0.01, 0.02, 0.5, 0.95], grokked=150, memorised=50)
    r.last_step = 150
    row = s2.member_row(r, m)
    assert row["test_acc_at_memorised"] == 0.02 and row["near_chance_at_memorised"] and row["grokked"]
    no_wd = dict(row, weight_decay=0.0, grokked=False, grokked_step=None)
    verdict = {v["weight_decay"]: v["verdict"] for v in s2.verdicts([row, row, no_wd, no_wd], 4000)}
    assert verdict == {1.0: "holds", 0.0: "holds"}
    verdict = {v["weight_decay"]: v["verdict"] for v in s2.verdicts([row, dict(row, grokked=False), no_wd, row | {
        "weight_decay": 0.0}], 4000)}
    assert verdict == {1.0: "does not hold", 0.0: "does not hold"}
    far = dict(row, test_acc_at_memorised=0.2, near_chance_at_memorised=False)
    assert s2.verdicts([far], 4000)[0]["verdict"] == "does not hold"


def test_seed002_script_writes_rows_summary_and_section(tmp_path, monkeypatch):
    s2 = script("seed002_example1", monkeypatch)
    readme = tmp_path / "README.md"
    run_script(s2, monkeypatch, "--out", tmp_path / "sw", "--figures", tmp_path, "--readme", readme, "--seeds", 1,
               "--steps", 10, "--eval-every", 5, *sets())
    data = json.loads((tmp_path / "seed002_example1.json").read_text())
    assert data["config"]["task"]["frac"] == 0.4 and data["config"]["model"]["n_layers"] == 1
    assert sorted(r["weight_decay"] for r in data["rows"]) == [0.0, 1.0] and data["seeds"] == [0]
    assert [s["n"] for s in data["summary"]] == [1, 1] and {"command", "hardware", "seconds"} <= set(data)
    assert "verdict" in section(readme, "seed002_example1")


# --- Grokfast on the mod-113 setting ------------------------------------------------------------


def test_grokfast_mod113_runs_the_four_arms_per_seed_on_the_dynamics_preset(tmp_path, monkeypatch):
    gf = script("grokfast_vs_momentum", monkeypatch)
    readme = tmp_path / "README.md"
    run_script(gf, monkeypatch, "--mod113", "--out", tmp_path / "sw", "--figures", tmp_path, "--readme", readme,
               "--seeds", 1, "--steps", 10, "--set", "eval_every=5", "--set", "checkpoint_every=5",
               "--set", "d_model=32", "--set", "d_head=8", "--set", "d_mlp=64")
    data = json.loads((tmp_path / "grokfast_mod113.json").read_text())
    assert data["config"]["task"]["p"] == 113 and data["config"]["model"]["n_layers"] == 2
    assert [s["arm"] for s in data["summary"]] == list(gf.ARMS) and all(s["n"] == 1 for s in data["summary"])
    arms = {(r["grokfast"], r["beta1"]) for r in data["table"]}
    assert arms == {(s["grokfast"], s["beta1"]) for s, _ in gf.ARMS.values()}
    assert "Grokfast EMA + beta1 = 0.5" in section(readme, "grokfast_mod113")


# --- seed 004's transition ----------------------------------------------------------------------


def test_seed004_transition_summary_is_the_median_and_within_25pct_is_inclusive(monkeypatch):
    st = script("seed004_transition", monkeypatch)
    rows = [{"candidate": "a", "seed": s, "grokked_step": g, "memorised_step": 100} for s, g in enumerate([1875, 1000, None])]
    rows += [{"candidate": "b", "seed": 0, "grokked_step": 1876, "memorised_step": None}]
    a, b = st.summary(rows, 3000)
    # the seed that never grokked counts as later than all: the median of (1000, 1875, > 3000) is 1875, not
    # 1437.5 (the median of the two that grokked)
    assert (a["n"], a["grokked"], a["steps"], a["grokked_step"]["median"]) == (3, 2, [1875, 1000, None], 1875)
    assert a["grokked_step"]["q75"] == "> 2437.5" and a["grokked_step"]["q25"] == 1437.5  # half-way to > 3000
    assert a["within_25pct"]  # 1875: within 375 of 1500 (inclusive)
    assert b["grokked_step"]["median"] == 1876 and not b["within_25pct"]  # 376 after 1500
    assert st.summary([{"candidate": "c", "seed": 0, "grokked_step": 1875, "memorised_step": 1}], 3000)[0]["within_25pct"]
    # most seeds never grokked: the median is "> 3000", never within 25%
    few = st.summary([{"candidate": "d", "seed": s, "grokked_step": g, "memorised_step": 1}
                      for s, g in enumerate([1500, None, None])], 3000)[0]
    assert few["grokked_step"]["median"] == "> 3000" and not few["within_25pct"]
    assert few["grokked_step"]["q25"] == "> 2250"  # half-way from 1500 to a step after 3000
    assert "> 3000 (> 2250 to > 3000)" in st.section({"summary": [few], "rows": [], "stop_after_grok": 10, "steps": 3000,
                                                    "train_seconds": 0})


def test_censored_quartiles_equal_numpys_with_the_unreached_beyond_every_step():
    import numpy as np

    from mechgrok.experiment import censored_quartiles
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        steps = [None if rng.random() < 0.3 else int(rng.integers(10, 3000)) for _ in range(n)]
        q = censored_quartiles(steps, 3000)
        big = np.array([1e12 if x is None else x for x in steps], float)  # never grokked: beyond any step
        at_bound = np.array([3000 if x is None else x for x in steps], float)  # ... or at the last step run
        for name, p in (("q25", 25), ("median", 50), ("q75", 75)):
            hi, lo = np.percentile(big, p), np.percentile(at_bound, p)  # numpy's linear = statistics' inclusive
            if hi != lo:  # the statistic depends on a seed that never grokked: a lower bound
                assert q[name] == f"> {lo:g}", (steps, name)
            else:
                assert q[name] == pytest.approx(hi), (steps, name)
        assert q["n"] == n and q["not_reached"] == steps.count(None)
    assert censored_quartiles([], 3000)["median"] is None


def test_seed004_transition_trains_each_candidate_and_reports_its_own_config(tmp_path, monkeypatch):
    from mechgrok.milestones import transition_metrics

    st = script("seed004_transition", monkeypatch)
    monkeypatch.setattr(st, "AS_IS", tmp_path / "none.json")  # no Grokfast report: no "as is" rows
    args = ["--out", tmp_path / "sw", "--figures", tmp_path, "--kept", tmp_path / "kept", "--seeds", 1, "--steps", 10,
            "--candidate", "beta2=0.999",
            "--candidate", "lr=3e-4", "--set", "eval_every=5", "--set", "checkpoint_every=5", "--set", "d_model=32",
            "--set", "d_head=8", "--set", "d_mlp=64"]
    run_script(st, monkeypatch, *args)
    data = json.loads((tmp_path / "transition.json").read_text())
    assert [s["candidate"] for s in data["summary"]] == ["beta2=0.999", "lr=3e-4"]
    assert data["configs"]["beta2=0.999"]["train"]["betas"] == [0.9, 0.999]
    assert data["configs"]["lr=3e-4"]["train"]["lr"] == 3e-4 and data["configs"]["lr=3e-4"]["train"]["betas"] == [0.9, 0.98]
    assert data["configs"]["lr=3e-4"]["task"]["p"] == 113 and data["configs"]["lr=3e-4"]["model"]["d_model"] == 32
    for r in data["rows"]:  # each row is its run's metrics.csv
        run = next((tmp_path / "sw" / st.label(r["candidate"]) / "seed0").glob("members/*"))
        m = transition_metrics(pd.read_csv(run / "metrics.csv"))
        assert (r["memorised_step"], r["grokked_step"], r["last_step"]) == (m.memorised_step, m.grokked_step, 10)
        assert r["test_acc_when_memorised"] is None  # 10 steps: nothing memorised
    before = (tmp_path / "transition.md").stat().st_mtime_ns
    only = [*args[:6], "--candidate", "beta2=0.999", "--candidate", "lr=3e-4", "--report-only"]
    run_script(st, monkeypatch, *only)
    assert json.loads((tmp_path / "transition.json").read_text())["rows"] == data["rows"]
    assert (tmp_path / "transition.md").stat().st_mtime_ns > before
    # a fresh machine: the runs are gone, the kept members bring the same rows back
    shutil.rmtree(tmp_path / "sw")
    run_script(st, monkeypatch, *only)
    assert json.loads((tmp_path / "transition.json").read_text())["rows"] == data["rows"]
    # nothing kept either: the committed report is left as it is, and the command fails
    shutil.rmtree(tmp_path / "sw")
    shutil.rmtree(tmp_path / "kept")
    committed = (tmp_path / "transition.json").read_text()
    with pytest.raises(SystemExit):
        run_script(st, monkeypatch, *only)
    assert (tmp_path / "transition.json").read_text() == committed


def test_training_maps_keeps_the_findings_of_populations_reported_by_earlier_invocations(tmp_path, monkeypatch):
    tm = script("training_maps", monkeypatch)
    path = tmp_path / "findings.csv"
    first = tm.merged_findings(path, [{"population": "modular_ln", "members": 20, "grokked": 20}])
    assert str(first.members.iloc[0]) == "20"  # a count, not 20.0
    first.to_csv(path, index=False)
    both = tm.merged_findings(path, [{"population": "modular", "members": 20, "grokked": 19}])
    assert list(both.population) == ["modular", "modular_ln"]  # POPULATIONS order, both kept
    assert both.set_index("population").loc["modular_ln", "members"] == 20
    both.to_csv(path, index=False)
    again = tm.merged_findings(path, [{"population": "modular", "members": 21, "grokked": 21}])
    assert len(again) == 2 and again.set_index("population").loc["modular", "members"] == 21  # replaced, not added


def test_training_maps_types_set_values_against_each_preset(monkeypatch):
    tm = script("training_maps", monkeypatch)
    t = tm.population_table(True, ["compile=true", "steps=1500"])
    preset, over, _ = t["modular_ln"]
    assert over == {"normalization": "LN", "compile": True, "steps": 1500}  # typed, not strings
    cfg = mg.configure(preset, seed=3, **over)
    assert cfg.train.compile is True and cfg.train.steps == 1500 and cfg.model.normalization == "LN"
    assert tm.population_table(False, [])["modular"][1] == tm.SMALL["hu_modular"]  # the small scale
    assert tm.population_table(True, [])["modular"][1] == {}  # the preset as it is


def test_training_maps_population_outlives_the_machine_through_its_kept_statistics(tmp_path, monkeypatch):
    tm = script("training_maps", monkeypatch)
    over = dict(p=13, frac=0.6, steps=40, eval_every=10, checkpoint_every=10, d_model=16, d_mlp=32, n_heads=2, d_head=8)
    stats, seconds = tm.train_population("modular", "hu_modular", over, [0, 1], tmp_path / "runs", tmp_path / "kept")
    # the same statistics, computed from the checkpoints by the library's own path
    import mechgrok.latent as latent
    from mechgrok.weight_statistics import STATISTICS

    direct = latent.population_statistics([tmp_path / "runs" / "modular" / f"seed0{s}" for s in (0, 1)], progress=False)
    cols = ["member", "step", *STATISTICS, *latent.METRICS, "grokking_step"]
    assert np.allclose(stats[cols].to_numpy(float), direct[cols].to_numpy(float), equal_nan=True)
    assert seconds > 0
    # a fresh machine: runs/ is gone; nothing is trained and the table is the same
    monkeypatch.setattr(tm, "train_or_resume", lambda *a, **k: pytest.fail("a kept member was trained again"))
    again, again_seconds = tm.train_population("modular", "hu_modular", over, [0, 1], tmp_path / "fresh", tmp_path / "kept")
    assert again[cols].equals(stats[cols]) and again_seconds == seconds


def test_limit_cycle_seed004_keeps_its_members_and_its_section_reads_the_report(tmp_path, monkeypatch):
    lc = script("limit_cycle_seed004", monkeypatch)
    args = ["--out", tmp_path / "sw", "--figures", tmp_path, "--kept", tmp_path / "kept", "--seeds", 1, "--steps", 20,
            "--set", "eval_every=5", "--set", "checkpoint_every=10", "--set", "d_model=32", "--set", "d_head=8",
            "--set", "d_mlp=64"]
    run_script(lc, monkeypatch, *args)
    d = json.loads((tmp_path / "limit_cycle.json").read_text())
    assert sorted((r["weight_decay"], r["beta1"]) for r in d["rows"]) == sorted(lc.ARMS)
    assert all(r["last_step"] == 20 and r["seed"] == 0 for r in d["rows"])
    text = lc.section(d)
    assert text.count("\n| ") == 1 + len(lc.ARMS) and "lr 0.0004" in text and d["command"] in text
    # a fresh machine: the kept members make the same report, and nothing trains
    import mechgrok.population as population

    monkeypatch.setattr(population, "train_chunk", lambda *a, **k: pytest.fail("a kept member was trained again"))
    run_script(lc, monkeypatch, *["--out", tmp_path / "fresh", *args[2:]])
    assert json.loads((tmp_path / "limit_cycle.json").read_text())["rows"] == d["rows"]


# --- seed 004's optimizer dynamics over a probed population -------------------------------------


def test_optimizer_dynamics_reports_its_members_setting_and_refuses_unfinished_members(tiny_cfg, monkeypatch,
                                                                                       tmp_path):
    """The report's setting is the members' (a population at beta1 0 must not be reported as the
    preset's beta1 0.9, which the ledger's Hessian-lag row would then compare with itself), and a
    member still training must not enter the report."""
    from mechgrok import dynamics as dy

    mod = script("optimizer_dynamics", monkeypatch)
    base = mg.configure(tiny_cfg, steps=20, beta1=0.0, eval_every=10, checkpoint_every=10)
    for s in (0, 1):
        cfg = mg.configure(base, seed=s)
        mg.train(cfg, tmp_path / "pop" / f"s{s}", progress=False, probe_every=10,
                 probe=dy.make_probe(cfg, measures=dy.MEASURES, hessian_iters=1, rank_n=4))
    argv = ["--setting", "seed004", "--population", tmp_path / "pop", "--skip", "wd", "--figures", tmp_path / "fig",
            "--out", tmp_path / "runs"]
    run_script(mod, monkeypatch, *argv)
    d = json.loads((tmp_path / "fig/optimizer_dynamics.json").read_text())
    assert d["setting"]["train"]["betas"] == [0.0, tiny_cfg.train.betas[1]] and d["setting"]["task"]["p"] == 23
    assert [r["seed"] for r in d["probed"]] == [0, 1] and all("hessian_lag" in r for r in d["probed"])
    md = (tmp_path / "fig/optimizer_dynamics.md").read_text()
    assert "betas (0.0, 0.98)" in md and "(ours: beta1 0)" in md and "(ours: beta1 0.9)" not in md
    # a member whose budget is past its last step: still training (or stopped), not reported
    c = json.loads((tmp_path / "pop/s1/config.json").read_text())
    c["train"]["steps"] = 40
    (tmp_path / "pop/s1/config.json").write_text(json.dumps(c))
    with pytest.raises(SystemExit, match=r"1 member\(s\) have not finished \(.*s1 at step 20 of 40\)"):
        run_script(mod, monkeypatch, *argv)


def test_seed004_transplant_restarts_the_untouched_recipient_like_the_arms_and_it_replays_the_base_run(
        monkeypatch, tmp_path):
    """fourier_transplant.py --preset's fourth arm: the recipient restarted untouched through the
    arms' own pipeline (its checkpoint, its AdamW moments, an ensemble of the arms). It must grok
    where the base run did, so that a gain of the transplant arms over the base run is not the
    restart's; the ledger's transplant rows compare the Fourier arm with it."""
    mod = script("fourier_transplant", monkeypatch)
    # a+b mod 23 on a small model whose seed 1 memorises at 100 and groks at 280 (measured)
    fields = ["p=23", "n_layers=1", "d_model=32", "d_head=8", "d_mlp=64", "frac=0.7", "weight_decay=2", "lr=0.01",
              "steps=800"]
    run_script(mod, monkeypatch, "--preset", "dynamics", *[a for f in fields for a in ("--set", f)], "--seeds", "1-1",
               "--min-delay", "50", "--arm-steps", "400", "--out", tmp_path / "runs", "--figures", tmp_path / "fig",
               "--threads", "1")
    report = next((tmp_path / "fig").glob("fourier_transplant_dynamics_*.json"))
    row = json.loads(report.read_text())["rows"][0]
    assert "skipped" not in row, row
    assert row["base_memorisation_step"] < row["recipient_step"] < row["base_grokking_step"]
    assert row["restart_after_test_acc"] == pytest.approx(row["recipient_test_acc"], abs=1e-6)
    assert row["restart_grokking_step"] == row["control_grokking_step"]
    restarted = mg.load_run(tmp_path / "runs" / "seed1" / f"restart_{row['recipient_step']}").metrics.set_index("step")
    base = mg.load_run(tmp_path / "runs" / "seed1" / "base").metrics.set_index("step")
    both = restarted.index.intersection(base.index)
    assert len(both) > 5
    np.testing.assert_allclose(restarted.loc[both, "train_loss"], base.loc[both, "train_loss"], rtol=1e-3)
    md = report.with_suffix(".md").read_text()
    assert "untouched, restarted like the arms" in md and "Fourier arm minus restarted recipient" in md
    # the command the report gives rebuilds this study: the settings --merge requires to match are in it
    assert "--arm-steps 400 --min-delay 50 --seeds 1-1`" in md
    # the at-chance rule on the same base run (--summarise: no arms trained): the row keeps the base
    # run's checkpoints up to memorisation with their accuracies and Fourier evidence
    run_script(mod, monkeypatch, "--preset", "dynamics", *[a for f in fields for a in ("--set", f)], "--seeds", "1-1",
               "--min-delay", "50", "--arm-steps", "400", "--out", tmp_path / "runs", "--figures", tmp_path / "fig",
               "--threads", "1", "--recipient-max-test-acc", "0.5", "--recipient-min-train-acc", "0", "--summarise")
    chance = json.loads(next((tmp_path / "fig").glob("fourier_transplant_dynamics_*_chance0.5_train0.json")).read_text())
    traj = chance["rows"][0]["trajectory"]
    checkpoints = mg.load_run(tmp_path / "runs" / "seed1" / "base").steps
    assert [t["step"] for t in traj] == [s for s in checkpoints if s <= row["base_memorisation_step"]] and len(traj) > 1
    assert [t["test_acc"] for t in traj] == pytest.approx(base.loc[[t["step"] for t in traj], "test_acc"].tolist())
    assert traj[0]["clustered"] == row["evidence"]["init"]["clustered"]
    assert "--recipient-max-test-acc 0.5 --recipient-min-train-acc 0" in next(
        (tmp_path / "fig").glob("fourier_transplant_dynamics_*_chance0.5_train0.md")).read_text()


def test_optimizer_dynamics_reports_a_population_probed_for_the_rank_only(tiny_cfg, monkeypatch, tmp_path):
    """A population probed with ``measures=rank`` (the erank-past-grokking one) has no agreement
    dips: the report must still be written, with the rank drop, instead of failing on the dips figure."""
    from mechgrok import dynamics as dy

    mod = script("optimizer_dynamics", monkeypatch)
    base = mg.configure(tiny_cfg, steps=20, eval_every=10, checkpoint_every=10)
    for s in (0, 1):
        cfg = mg.configure(base, seed=s)
        mg.train(cfg, tmp_path / "pop" / f"s{s}", progress=False, probe_every=10,
                 probe=dy.make_probe(cfg, measures=("rank",), rank_n=4))
    run_script(mod, monkeypatch, "--setting", "seed004", "--population", tmp_path / "pop", "--skip", "wd",
               "--figures", tmp_path / "fig", "--out", tmp_path / "runs")
    d = json.loads((tmp_path / "fig/optimizer_dynamics.json").read_text())
    assert [r["seed"] for r in d["probed"]] == [0, 1] and not (tmp_path / "fig/dips_vs_gap.html").exists()
    assert "effective rank" in (tmp_path / "fig/optimizer_dynamics.md").read_text()


def test_a_limit_cycle_call_for_one_seed_does_not_rewrite_the_report_without_the_kept_seeds(monkeypatch, tmp_path):
    """One process per seed shares the cores, but a report written from ``--seeds 2-2`` alone would
    drop the committed seeds 0 and 1: such a call leaves the report and says which call writes it.
    Planted kept dirs: seeds 0 and 1 with all arms kept, seed 2 with one of two."""
    mod = script("limit_cycle_seed004", monkeypatch)
    for s, done in ((0, 2), (1, 2), (2, 1)):
        d = tmp_path / f"seed{s}"
        d.mkdir()
        ids = [f"weight_decay={wd}_seed={s}" for wd in (1, 2)]
        (d / "sweep.json").write_text(json.dumps({"members": [{"id": i} for i in ids]}))
        (d / "finished.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in ids[:done]))
    assert mod.left_out(tmp_path, {2}) == [0, 1]
    assert mod.left_out(tmp_path, {0, 1, 2, 3}) == []
    assert mod.left_out(tmp_path, {0, 5}) == [1]  # seed 2 is not whole: a report without it loses nothing kept whole
