"""The claims ledger and every generated result table: regenerated from the committed data, they
must equal the committed files; an edited number in a data file must show up in them; and the
verdict rule (mechgrok.claims) gives "not comparable", never "not reproduced", to a surrogate."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import plotly.graph_objects as go
import pytest

from mechgrok.claims import Result, differences, setting_of, verdict
from mechgrok.presets import configure

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "analyses" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ledger_script():
    return _script("claims_ledger")


def test_the_ledger_and_every_generated_table_match_the_committed_data(ledger_script):
    files = ledger_script.generate(ROOT)
    assert {"figures/CLAIMS.md", "figures/CLAIMS.json", "README.md", "figures/README.md"} <= set(files)
    stale = [f for f, text in files.items() if (ROOT / f).read_text() != text]
    assert not stale, f"out of date with the data (run python analyses/claims_ledger.py): {stale}"


def _copy_data(tmp_path: Path) -> Path:
    """The files the ledger reads (data, READMEs, claims), without the figures themselves."""
    shutil.copytree(ROOT / "figures", tmp_path / "figures", ignore=shutil.ignore_patterns("*.png", "*.html", "*.js"))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def test_an_edited_number_in_a_data_file_changes_the_ledger_and_the_table(ledger_script, tmp_path):
    root = _copy_data(tmp_path)
    path = root / "figures/freezing_phases.json"
    d = json.loads(path.read_text())
    row = next(r for r in d["results"] if r["name"] == "no_weight_decay" and r["from_step"] == 900)
    row["final_test_acc"] = 0.95  # it now groks from the early checkpoint and not from the late one
    path.write_text(json.dumps(d))
    rows = ledger_script.ledger(root)
    assert ledger_script.ledger_markdown(rows) != (ROOT / "figures/CLAIMS.md").read_text()
    new = next(r for r in rows if r["id"] == "000-no-wd")
    assert new["ours"].startswith("95.0% -> 14.5%: grokks early only at 0.5")
    assert new["agrees_at_our_setting"] is False  # seed 000: always blocks
    table = ledger_script.freezing_block(root)
    assert "| no_weight_decay | 206,336 / 206,383 | 95.0% (max 7%, no grok) |" in table
    assert table not in (ROOT / "figures/README.md").read_text()


def test_a_missing_data_file_reads_not_run(ledger_script, tmp_path):
    root = _copy_data(tmp_path)
    (root / "figures/momentum_sweep.json").unlink()
    rows = {r["id"]: r for r in ledger_script.ledger(root)}
    assert rows["004-beta1-0"]["verdict"] == "not run" and rows["004-beta1-0"]["ours"] is None
    assert rows["000-no-wd"]["verdict"].startswith("not comparable")


def test_a_study_still_running_reads_not_run_where_a_checkpoint_is_missing(ledger_script, tmp_path):
    # the small study's report standing in for a --full one cut short: entry_layer done from 900 only
    root = _copy_data(tmp_path)
    d = json.loads((root / "figures/freezing_phases.json").read_text())
    d["results"] = [r for r in d["results"] if not (r["name"] == "entry_layer" and r["from_step"] == 1200)]
    d["meta"]["continuations"] = {"done": len(d["results"]), "asked": 22}
    d["meta"]["base_steps"] = d["meta"]["config"]["train"]["steps"] - 1  # stopped by hand, one step short
    (root / "figures/freezing_phases_full.json").write_text(json.dumps(d))
    rows = {r["id"]: r for r in ledger_script.ledger(root)}
    assert rows["000-entry-own"]["verdict"] == "not run" and rows["000-entry-own"]["ours"] is None
    assert rows["000-no-wd-own"]["ours"].startswith("5.9% -> 14.5%: always blocks at 0.5")
    table = ledger_script.freezing_block(root, "freezing_phases_full")
    assert "| entry_layer | 156,352 / 206,383 | 19.4% (max 19%, no grok) | not run yet |" in table
    assert "21 of 22 continuations are done" in table
    assert f"set to {d['meta']['config']['train']['steps']} steps and stopped by hand at {d['meta']['base_steps']}" in table
    assert "stopped by hand" not in ledger_script.freezing_block(root)  # the small study ran its whole base run
    d["meta"]["base_plateau_low"] = {"step": 1000, "train_acc": 0.03}
    (root / "figures/freezing_phases_full.json").write_text(json.dumps(d))
    assert "fell to 3.0% (step 1000): the plateau ended in a collapse of the fit, 700 steps before it grokked" in \
        ledger_script.freezing_block(root, "freezing_phases_full")
    d["meta"]["base_plateau_low"]["train_acc"] = 0.95  # a dip, not a collapse
    (root / "figures/freezing_phases_full.json").write_text(json.dumps(d))
    assert "collapse" not in ledger_script.freezing_block(root, "freezing_phases_full")
    assert "entry_layer" not in table.split("In seed 000's category")[1]  # no category from one checkpoint
    for i, r in enumerate(d["results"]):
        r["seconds"] = 6000.0 if i == 0 else 60.0  # 100 min and 20 x 1 min: 2.0 h, median 1 min (mean 5.7)
    d["meta"]["base_wall_seconds"] = 90.0
    (root / "figures/freezing_phases_full.json").write_text(json.dumps(d))
    assert "the base run 1.5 min; the 21 continuations 2.0 h in all, 1.0 min each (median)." in \
        ledger_script.freezing_block(root, "freezing_phases_full")


def test_the_verdict_rule():
    # seed 000's setting against our freezing surrogate: every stated field that differs is named
    published = {"task": "a/b", "p": 97, "lr": 3e-4, "batch_size": 64, "seeds": 1}
    ours = setting_of(configure("division4", p=47, lr=1e-3).to_dict(), seeds=1)
    assert differences(published, ours) == ["p 47 vs 97", "lr 0.001 vs 0.0003"]
    surrogate = Result("5.9% -> 14.5%", ours, 1, False, "a test")
    v, diff = verdict(published, surrogate)
    assert v == "not comparable (setting: p 47 vs 97; lr 0.001 vs 0.0003)" and not v.startswith("not reproduced")
    same = setting_of(configure("division4").to_dict(), seeds=3)  # more seeds than the source's: comparable
    assert verdict(published, Result("x", same, 3, True, "t"))[0] == "reproduced"
    assert verdict(published, Result("x", same, 3, False, "the rule"))[0] == "not reproduced (the test fails: the rule)"
    assert verdict(published | {"seeds": 30}, Result("x", same, 3, True, "t"))[0] == "not comparable (setting: seeds 3 vs 30)"
    assert verdict(published, None)[0] == "not run"
    # a field the source states that our data does not record is a difference, not a match
    assert differences({"n_bits": 10}, same) == ["n_bits (not recorded) vs 10"]


def test_epochs_are_passes_over_the_train_set():
    # tutorial2: 4704 training pairs in batches of 512 are 10 steps an epoch (the last one short),
    # so seed 001's 150 epochs are 1500 steps
    assert setting_of(configure("tutorial2", steps=1500).to_dict())["epochs"] == 150
    assert setting_of(configure("nanda", steps=16000).to_dict())["epochs"] == 16000  # full batch


def test_crash_steps_are_read_back_from_a_figures_data(tmp_path):
    backing = _script("backing_numbers")
    steps = list(range(0, 200, 10))
    acc = [0.1, 0.5, 0.95, 1.0, 1.0, 0.4, 0.3, 0.9, 1.0, 1.0, 1.0, 1.0, 0.95, 1.0, 0.55, 1.0, 1.0, 1.0, 1.0, 1.0]
    fig = go.Figure(go.Scatter(x=steps, y=acc, name="wd 1"))
    html = tmp_path / "f.html"
    fig.write_html(html)  # plotly stores the arrays base64-encoded ("bdata")
    (t,) = backing.figure_traces(html)
    assert t["name"] == "wd 1" and t["x"] == steps and t["y"] == pytest.approx(acc)
    assert backing.drops(steps, acc, 0.1) == [{"step": 50, "min_step": 60, "min_test_acc": 0.3},
                                              {"step": 140, "min_step": 140, "min_test_acc": 0.55}]


def test_a_rerun_report_is_read_for_our_numbers_never_for_the_published_ones(ledger_script, tmp_path):
    # seed001_main_run.json keeps the seed's numbers under "published" next to ours in "summary":
    # the ledger's "ours" must be the summary's, whatever order the keys come in
    cfg = configure("tutorial2").to_dict()
    ours = {"final_train_loss": 0.0428, "final_test_loss": 0.0469, "final_train_acc": 1.0, "final_test_acc": 1.0}
    theirs = {"final_train_loss": 0.1418, "final_test_loss": 0.171, "final_train_acc": 1.0, "final_test_acc": 1.0}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"published": theirs, "config": cfg, "summary": ours}))
    claim = {"published": {"train_loss": 0.1418, "test_loss": 0.171}}
    res = ledger_script.single_run(claim, path, tmp_path)
    assert res.ours == "train_loss 0.0428, test_loss 0.0469" and not res.agrees


def test_the_re_run_scripts_sections_come_from_their_reports(ledger_script, tmp_path):
    """The sections the re-run scripts write (seed 001's main run, the weight-decay comparison,
    Nanda's table, seed 002, Grokfast at mod 113) are regenerated from their committed JSON: an
    edited number shows up in the section, a missing report reads "not run yet"."""
    root = _copy_data(tmp_path)
    path = root / "figures/seed001_main_run.json"
    d = json.loads(path.read_text())
    d["summary"]["grokked_step"], d["summary"]["delay"] = 1234, 1004
    path.write_text(json.dumps(d))
    path = root / "figures/weight_decay_comparison.json"
    d = json.loads(path.read_text())
    next(s for s in d["summary"] if s["weight_decay"] == 1.0)["test_acc"]["median"] = 0.123
    path.write_text(json.dumps(d))
    path = root / "figures/nanda/summary.json"
    d = json.loads(path.read_text())
    d["summary"]["n_clustered"] = 433
    path.write_text(json.dumps(d))
    for name in ("seed002_example1.json", "grokfast_mod113.json"):
        (root / "figures" / name).unlink(missing_ok=True)
    blocks = ledger_script.render_blocks(root, ledger_script.ledger(root))
    assert "| grokked (first eval with test acc > 0.9), step | 2260 | 1234 |" in blocks["seed001_main_run"]
    assert "| delay (grokked - memorised), steps | 1880 | 1004 |" in blocks["seed001_main_run"]
    assert "| 1 | 5 | 0.123 (" in blocks["weight_decay_comparison"]
    assert "433 / 512 (84.6%) | 433 / 512 (84.6%) |" in blocks["nanda"]
    assert blocks["seed002_example1"].endswith("not run yet.")
    assert blocks["grokfast_mod113"].endswith("not run yet.")


def test_a_script_writes_its_section_as_the_ledger_does(ledger_script, tmp_path):
    from mechgrok import experiment as ex

    text = "# F\n\n<!-- seed002_example1:begin -->\nold\n<!-- seed002_example1:end -->\n\nafter\n"
    f = tmp_path / "README.md"
    f.write_text(text)
    ex.write_section(f, "seed002_example1", "### new\n\nbody")
    want = ledger_script.apply_blocks({"figures/README.md": text}, {"seed002_example1": "### new\n\nbody"})
    assert f.read_text() == want["figures/README.md"]


def _grokfast_report(root: Path, adamw_steps: list, others: int = 1000) -> None:
    """A planted Grokfast report at seed 004's setting: the AdamW arm groks at ``adamw_steps``
    (None: did not), every other arm at ``others``."""
    from mechgrok.presets import get_preset

    table = []
    for seed, step in enumerate(adamw_steps):
        for g, b in (("none", 0.9), ("ema", 0.9), ("none", 0.5), ("ema", 0.5)):
            s = step if (g, b) == ("none", 0.9) else others
            table.append({"grokfast": g, "beta1": b, "seed": seed, "grokked": s is not None, "grokked_step": s,
                          "memorised_step": 150, "budget": 3000, "final_test_acc": 1.0})
    d = {"args": {"preset": None, "stop_after_grok": 5}, "config": get_preset("seed004").to_dict(), "table": table}
    (root / "figures/grokfast_mod113.json").write_text(json.dumps(d))


def _transition_report(root: Path, candidates: dict) -> None:
    """A planted analyses/seed004_transition.py report: candidate -> (config overrides, steps)."""
    from mechgrok.presets import configure

    from mechgrok.experiment import censored_quartiles

    summary = [{"candidate": c, "n": len(steps), "grokked": sum(x is not None for x in steps), "steps": steps,
                "grokked_step": censored_quartiles(steps, 3000)} for c, (_, steps) in candidates.items()]
    # overrides of the lr-1e-3 seed004 base the script pins (the preset itself may move)
    configs = {c: configure("seed004", **({"lr": 1e-3} | kw)).to_dict() for c, (kw, _) in candidates.items()}
    path = root / "figures/dynamics/seed004/transition.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"summary": summary, "configs": configs}))


def test_seed004s_transition_is_tested_on_the_default_adamw_candidate(ledger_script, tmp_path):
    root = _copy_data(tmp_path)
    as_is = ({}, [440, 270, 1320])  # betas (0.9, 0.98): not seed 004's "default AdamW"
    _transition_report(root, {"as is": as_is, "beta2=0.999": ({"beta2": 0.999}, [1400, 1500, 1700, None]),
                              "lr=3e-4": ({"lr": 3e-4}, [900, 1000])})
    rows = {r["id"]: r for r in ledger_script.ledger(root)}
    t = rows["004-transition"]
    # the seed that never grokked counts as the latest: the median of 1400, 1500, 1700, > 3000 is 1600
    assert t["ours"].startswith("beta2=0.999: median 1600 over 4 seeds, 3 grokked (steps 1400, 1500, 1700, -). "
                                "Also measured: as is: median 440 over 3 seeds, 3 grokked; lr=3e-4: median 950")
    assert t["verdict"] == "reproduced" and t["n"] == 4 and t["our_setting"]["beta2"] == 0.999
    # the default-AdamW candidate more than 25% after seed 004's ~1500; lr=3e-4 near it does not count
    _transition_report(root, {"as is": as_is, "beta2=0.999": ({"beta2": 0.999}, [1880, 1900, 2000]),
                              "lr=3e-4": ({"lr": 3e-4}, [1500, 1500])})
    t = {r["id"]: r for r in ledger_script.ledger(root)}["004-transition"]
    assert t["verdict"].startswith("not reproduced (the test fails: median grokking step (a seed that never grokked")
    # without a default-AdamW candidate: the first setting, not comparable, naming beta2
    _transition_report(root, {"as is": ({}, [1500, 1500]), "lr=3e-4": ({"lr": 3e-4}, [1500])})
    t = {r["id"]: r for r in ledger_script.ledger(root)}["004-transition"]
    assert t["verdict"] == "not comparable (setting: beta2 0.98 vs 0.999)" and t["ours"].startswith("as is:")


def test_the_presets_block_reads_the_transition_candidate_trained_as_the_preset_is(ledger_script, tmp_path):
    root = _copy_data(tmp_path)
    _grokfast_report(root, [1400, 1500, 1700, None])
    rows = {r["id"]: r for r in ledger_script.ledger(root)}
    assert rows["004-grokfast-113"]["verdict"].startswith("not reproduced (the test fails")  # both = the faster arm
    path = root / "figures/dynamics/seed004/transition.json"
    d = json.loads(path.read_text())
    name = _script("seed004_transition").preset_candidate(d["configs"])
    next(x for x in d["summary"] if x["candidate"] == name)["grokked_step"]["median"] = 1234
    path.write_text(json.dumps(d))
    assert "median step 1234 over" in ledger_script.presets_block(root) and f"`{name}`" in ledger_script.presets_block(root)
    next(x for x in d["summary"] if x["candidate"] == name)["grokked_step"]["median"] = "> 2250"  # most never grokked
    path.write_text(json.dumps(d))
    assert "median step > 2250 over" in ledger_script.presets_block(root)
    # a candidate trained at another lr, or on another split, is not the preset: the Grokfast report's
    # AdamW arm is read instead
    _grokfast_report(root, [1880, 1900, 2000])
    for part, field, value in (("train", "lr", 5e-4), ("task", "frac", 0.3)):
        changed = json.loads(json.dumps(d))
        changed["configs"][name][part][field] = value
        path.write_text(json.dumps(changed))
        assert "median step 1900 over 3 seeds, 3 grokked" in ledger_script.presets_block(root), field
    # the seed that did not grok counts as later than all: the median of 1400, 1500, 1700, > 3000 is 1600
    _grokfast_report(root, [1400, 1500, 1700, None])
    assert "median step 1600 over 4 seeds, 3 grokked" in ledger_script.presets_block(root)


def test_the_grokfast_claim_counts_arms_that_did_not_grok_as_later_than_all(ledger_script, tmp_path):
    root = _copy_data(tmp_path)
    _grokfast_report(root, [1400, 1500, 1700], others=None)  # no member of the other three arms grokked
    row = {r["id"]: r for r in ledger_script.ledger(root)}["004-grokfast-113"]
    assert row["ours"] == "AdamW 1500 (3/3); Grokfast > 3000 (0/3); beta1 0.5 > 3000 (0/3); both > 3000 (0/3)"
    assert row["verdict"].startswith("not reproduced")
    _grokfast_report(root, [1400, None, None], others=600)  # AdamW's median is past the budget
    row = {r["id"]: r for r in ledger_script.ledger(root)}["004-grokfast-113"]
    assert row["ours"].startswith("AdamW > 3000 (1/3); Grokfast 600 (3/3)")


def test_seed002s_example_reads_every_part_of_the_claim(tmp_path):
    s2 = _script("seed002_example1")
    member = lambda wd, seed, mem, at_mem, grok: {  # noqa: E731
        "weight_decay": wd, "seed": seed, "memorised_step": mem, "test_acc_at_memorised": at_mem, "grokked_step": grok,
        "memorised": mem is not None, "near_chance_at_memorised": at_mem is not None and at_mem < s2.NEAR_CHANCE,
        "grokked": grok is not None, "final_test_acc": 1.0 if grok else 0.03}
    rows = [member(1.0, 0, 200, 0.02, 1500), member(1.0, 1, 210, 0.03, 1700), member(0.0, 0, 190, 0.02, None),
            member(0.0, 1, 200, 0.01, None)]
    by = {v["weight_decay"]: v for v in s2.verdicts(rows, 4000)}
    assert by[1.0]["verdict"] == by[0.0]["verdict"] == "holds" and by[1.0]["grokked_step"]["median"] == 1600
    rows[1] = member(1.0, 1, 210, 0.2, 1700)  # memorised well above chance: not seed 002's picture
    assert {v["weight_decay"]: v for v in s2.verdicts(rows, 4000)}[1.0]["verdict"] == "does not hold"
    rows[1], rows[3] = member(1.0, 1, 210, 0.03, 1700), member(0.0, 1, 200, 0.01, 3000)  # generalised without decay
    assert {v["weight_decay"]: v for v in s2.verdicts(rows, 4000)}[0.0]["verdict"] == "does not hold"


def test_seed004s_limit_cycle_at_its_own_setting_is_read_per_member(ledger_script, tmp_path):
    from mechgrok.presets import get_preset

    root = _copy_data(tmp_path)
    row = lambda wd, b1, seed, grok, period, lows: {  # noqa: E731
        "weight_decay": wd, "beta1": b1, "seed": seed, "grokked_step": grok, "test_acc_period": period,
        "crashes": [{"start": 2000 + 100 * i, "end": 2050 + 100 * i, "min_test_acc": x, "min_train_acc": 0.9}
                    for i, x in enumerate(lows)], "lowest_after_grok": min(lows, default=None)}
    rows = [row(1.0, 0.0, 0, 1300, 140, []), row(1.0, 0.0, 1, 1500, 170, []),
            row(0.25, 0.0, 0, 1900, None, [0.31]), row(0.25, 0.0, 1, None, None, []),
            row(2.0, 0.0, 0, 900, None, []), row(2.0, 0.0, 1, 950, None, [0.45]), row(1.0, 0.9, 0, 1400, None, [])]
    path = root / "figures/dynamics/seed004/limit_cycle.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": get_preset("seed004").to_dict(), "rows": rows}))
    by = {r["id"]: r for r in ledger_script.ledger(root)}
    assert by["004-cycle-wd1-own"]["verdict"] == "reproduced" and by["004-cycle-wd1-own"]["n"] == 2  # median 155
    assert by["004-cycle-wd025-own"]["verdict"] == "reproduced"  # seed 0 fell to 0.31 (within 0.15 of 0.25)
    assert by["004-cycle-wd2-own"]["verdict"].startswith("not reproduced")  # seed 1 crashed to 0.45
    assert by["004-cycle-wd2-own"]["ours"] == ("seed 0: grokked 900, 0 crash(es), period none; seed 1: grokked 950, "
                                               "1 crash(es) (lowest 0.45), period none")
    rows[1]["test_acc_period"] = 400  # median 270: more than 50% off ~150
    path.write_text(json.dumps({"config": get_preset("seed004").to_dict(), "rows": rows}))
    assert {r["id"]: r for r in ledger_script.ledger(root)}["004-cycle-wd1-own"]["verdict"].startswith("not reproduced")
    # no seed grokked at wd 2: nothing after grokking to test (not "no crash", not a refutation)
    rows[4]["grokked_step"] = rows[5]["grokked_step"] = None
    path.write_text(json.dumps({"config": get_preset("seed004").to_dict(), "rows": rows}))
    assert {r["id"]: r for r in ledger_script.ledger(root)}["004-cycle-wd2-own"]["verdict"] == "no test"


def test_checkpoints_at_seed_000s_places_on_the_plateau_count_as_its_checkpoints(ledger_script, tmp_path):
    # the small study's report as if --at-fractions had chosen 900 and 1200 on a plateau of 487-1650:
    # (900-487)/1163 = 0.355 and (1200-487)/1163 = 0.613, where 7k and 11k sit on seed 000's 1500-17000
    root = _copy_data(tmp_path)
    path = root / "figures/freezing_phases_full.json"
    d = json.loads((root / "figures/freezing_phases.json").read_text())
    d["meta"] |= {"checkpoint_rule": "the saved checkpoints nearest 0.355, 0.613 of the base run's plateau",
                  "base_memorisation_step": 487, "base_grokking_step": 1650}
    path.write_text(json.dumps(d))
    rows = ledger_script.ledger(root)
    row = {r["id"]: r for r in rows}["000-no-wd-own"]
    assert "checkpoints" not in row["verdict"] and "p 47 vs 97" in row["verdict"]
    assert "7000's place: our 900 (0.36 of our plateau, seed 000's 0.35)" in row["our_setting"]["placed_at"]
    assert "placed_at 7000's place: our 900" in ledger_script.ledger_markdown(rows)  # the table shows our steps
    d["meta"]["base_grokking_step"] = 1500  # 0.41 and 0.70: too far from 0.35 and 0.61
    path.write_text(json.dumps(d))
    row = {r["id"]: r for r in ledger_script.ledger(root)}["000-no-wd-own"]
    assert "checkpoints 900/1200 vs 7000/11000" in row["verdict"]
    del d["meta"]["checkpoint_rule"]  # steps given, not fractions: compared as steps
    d["meta"]["base_grokking_step"] = 1650
    path.write_text(json.dumps(d))
    row = {r["id"]: r for r in ledger_script.ledger(root)}["000-no-wd-own"]
    assert "checkpoints 900/1200 vs 7000/11000" in row["verdict"]


def test_a_latent_population_at_the_presets_own_scale_is_read_from_its_setting_file(ledger_script, tmp_path):
    d = tmp_path / "figures/latent_full/modular"
    d.mkdir(parents=True)
    cfg = configure("hu_modular", seed=0)
    (d / "setting.json").write_text(json.dumps({"config": cfg.to_dict(), "members": 20, "full": True}))
    claim = {"population": "modular", "data": "figures/latent_full/modular/detours.csv"}
    assert ledger_script._latent_root(claim, tmp_path) == tmp_path / "figures/latent_full"
    setting, n = ledger_script._latent_setting(claim, tmp_path)
    assert n == 20 and setting["seeds"] == 20 and setting["steps"] == 30_000 and setting["epochs"] == 2000
    assert setting["frac"] == 0.3 and setting["batch_size"] == 256
    # findings.csv sits above the populations: the LN claim's folder is the same
    assert ledger_script._latent_root({"population": "modular_ln", "data": "figures/latent_full/findings.csv"},
                                      tmp_path) == tmp_path / "figures/latent_full"
    # 20 seeds of 2000 epochs against Hu et al.'s 40 of 10,000: stated fields that differ
    pub = json.loads((ROOT / "figures/claims.json").read_text())["settings"]["hu_modular"]
    assert differences(pub, setting) == ["epochs 2000 vs 10000", "seeds 20 vs 40"]


def test_layernorms_uniformity_is_tested_on_the_spread_of_convergence_steps(ledger_script, tmp_path):
    # planted populations: every route unique in both (the commonest share is 1/n in each, as
    # at 20 seeds), so only the grokking steps can tell them apart
    top = tmp_path / "figures/latent_full"

    def population(name, steps, normalization):
        d = top / name
        d.mkdir(parents=True)
        cfg = configure("hu_modular", seed=0, **({"normalization": normalization} if normalization else {}))
        (d / "setting.json").write_text(json.dumps({"config": cfg.to_dict(), "members": len(steps), "full": True}))
        (d / "statistics.csv").write_text("member,step,grokking_step\n" + "".join(
            f"{m},{s},{'' if g is None else g}\n" for m, g in enumerate(steps) for s in (0, 150)))
        (d / "paths.csv").write_text("member,step,state\n" + "".join(
            f"{m},{s},{(m + k) % 8}\n" for m in range(len(steps)) for k, s in enumerate((0, 150))))

    narrow = [3000, 3150, 3300, 2850, 3000, 3450, 3150, 2700]
    wide = [3000, 10350, 12150, 3300, 5250, 13500, 4500, 7200]
    claim = {"population": "modular_ln", "data": "figures/latent_full/findings.csv"}
    path = top / "findings.csv"

    population("modular_ln", narrow, "LN")
    population("modular", wide, None)
    r = ledger_script.latent_ln(claim, path, tmp_path)
    assert r.agrees is True and r.extra["brown_forsythe_p"] < 0.05, r
    assert "8 of 8 grokked" in r.ours and "8 routes, the commonest taken by 12%" in r.ours

    shutil.rmtree(top)  # LayerNorm with the wide spread: the claim's test fails
    population("modular_ln", wide, "LN")
    population("modular", narrow, None)
    assert ledger_script.latent_ln(claim, path, tmp_path).agrees is False

    shutil.rmtree(top)  # the same spread in both: not significant, even with the lower CV on LN's side
    population("modular_ln", [s + 1 for s in wide], "LN")
    population("modular", wide, None)
    assert ledger_script.latent_ln(claim, path, tmp_path).agrees is False

    shutil.rmtree(top)  # two grokked members with LayerNorm: no test
    population("modular_ln", [3000, 3100] + [None] * 6, "LN")
    population("modular", wide, None)
    r = ledger_script.latent_ln(claim, path, tmp_path)
    assert r.agrees is None and "2 of 8 grokked" in r.ours


def test_the_transplant_row_reads_its_studys_own_settings_and_says_whether_the_recipient_was_at_chance(
        ledger_script, tmp_path):
    def study(acc, sets):
        rows = [{"seed": s, "control_grokking_step": 900, "fourier_grokking_step": 900 + d,
                 "non_fourier_grokking_step": 900, "recipient_test_acc": a}
                for s, (a, d) in enumerate(zip(acc, (-10, 0, 10)))]
        path = tmp_path / "transplant.json"
        path.write_text(json.dumps({"preset": "seed004", "set": sets, "rows": rows}))
        return ledger_script.transplant({}, path, tmp_path)

    r = study([0.009, 0.012, 0.017], ["frac=0.3", "lr=0.001"])  # all within 2/113 = 0.0177
    assert "(at chance: chance is 0.009)" in r.ours and r.setting["frac"] == 0.3 and r.setting["lr"] == 0.001
    assert r.agrees is True and r.n == 3
    r = study([0.009, 0.012, 0.25], None)  # one recipient well above chance; the preset's own split
    assert "(not at chance" in r.ours and r.setting["frac"] == 0.5

    # a study with the restarted-recipient arm: the Fourier arm is measured against it, not the base run
    path = tmp_path / "transplant.json"
    rows = [{"seed": s, "control_grokking_step": 900, "restart_grokking_step": 850, "fourier_grokking_step": 850 + d,
             "non_fourier_grokking_step": 850, "recipient_test_acc": 0.5} for s, d in enumerate((-10, 0, 10))]
    path.write_text(json.dumps({"preset": "seed004", "set": None, "rows": rows}))
    r = ledger_script.transplant({}, path, tmp_path)
    assert r.agrees is True and "(restarted like the arms) median +0" in r.ours
    assert "restart alone against the base run median -50" in r.ours and "(restarted)" in r.rule
    for row in rows:
        del row["restart_grokking_step"]
    path.write_text(json.dumps({"preset": "seed004", "set": None, "rows": rows}))
    r = ledger_script.transplant({}, path, tmp_path)  # no such arm: against the base run, 50 steps sooner
    assert r.agrees is False and "untouched median -50" in r.ours


def test_the_hessian_lag_compares_a_beta1_0_population_with_a_beta1_09_one(ledger_script, tmp_path):
    from mechgrok.presets import get_preset

    root = _copy_data(tmp_path)
    own = root / "figures/dynamics/seed004/optimizer_dynamics.json"
    zero = root / "figures/dynamics/seed004/beta1_0/optimizer_dynamics.json"
    zero.parent.mkdir(parents=True, exist_ok=True)

    def write(path, beta1, lags):
        cfg = configure("seed004", beta1=beta1).to_dict()
        path.write_text(json.dumps({"setting": cfg, "probed": [
            {"seed": i, "hessian_lag": lag, "grokked_step": None if lag is None else 300 + lag, "hessian_rise": 9.0,
             "hessian_peak": 9.0, "hessian_final": 1.0, "hessian_peak_step": 300, "agreement_first": -0.5,
             "agreement_at_memorised": 0.2, "momentum_cos_plateau": -0.2, "momentum_cos_plateau_min": -0.4,
             "erank_drop": 0.3} for i, lag in enumerate(lags)], "dips_vs_gap": {"r": 0.0, "n": 0, "p": 1.0}}))

    by = lambda: {r["id"]: r for r in ledger_script.ledger(root)}  # noqa: E731
    write(own, 0.9, [400 + 10 * (i % 3) for i in range(30)])  # median 410
    write(zero, 0.0, [20] * 29 + [None])  # median 20: 390 apart, within 50% of 400
    row = by()["004-hessian-lag-own"]
    assert row["verdict"] == "reproduced" and row["n"] == 60 and row["our_setting"]["seeds"] == 30
    assert row["ours"] == ("lag (grokked - Hessian peak step): median 410 at beta1 0.9 (30 of 30 grokked); "
                           "median 20 at beta1 0 (29 of 30 grokked); difference +390")
    write(zero, 0.0, [250] * 30)  # 160 apart: more than 50% off
    assert by()["004-hessian-lag-own"]["verdict"].startswith("not reproduced")
    write(zero, 0.0, [20, 20] + [None] * 28)  # two grokked members: nothing to compare
    assert by()["004-hessian-lag-own"]["verdict"] == "no test"
    write(own, 0.0, [410] * 30)  # two beta1-0 populations are not the comparison
    with pytest.raises(ValueError, match="beta1 0 population and a beta1 0.9 one"):
        ledger_script.ledger(root)
    assert get_preset("seed004").train.betas[0] == 0.9


def test_the_erank_drop_is_tested_on_members_that_ran_one_gap_past_grokking(ledger_script, tmp_path):
    root = _copy_data(tmp_path)
    path = root / "figures/dynamics/preset/optimizer_dynamics.json"
    d = json.loads(path.read_text())
    by = lambda: {r["id"]: r for r in ledger_script.ledger(root)}["004-erank"]  # noqa: E731
    for i, r in enumerate(d["probed"]):  # every member stopped 50 steps after grokking, with a 35% drop
        r.update(memorised_step=100, grokked_step=300, last_step=350, erank_drop=0.35)
    path.write_text(json.dumps(d))
    assert by()["verdict"] == "no test" and "(>= 3 needed, 0 did)" in by()["test"]
    for r in d["probed"][:3]:  # three ran the whole gap, [300, 500], and dropped 5%
        r.update(last_step=500, erank_drop=0.05)
    path.write_text(json.dumps(d))
    row = by()
    assert row["verdict"].startswith("not reproduced") and row["ours"].startswith("median drop 5% over the 3 of 30")
    for r in d["probed"][:3]:
        r.update(erank_drop=0.33)
    path.write_text(json.dumps(d))
    assert by()["verdict"] == "reproduced"


def test_the_kept_populations_table_counts_only_members_kept_with_their_metrics(ledger_script, tmp_path):
    """A planted kept population of 3 planned members: one finished and kept, one finished whose
    metrics never reached the kept directory, one not run. The table counts 1 of 3, its grokking
    step, gap and minutes; not the planned, not the manifest's lines."""
    d = tmp_path / "figures/x/kept/pop"
    members = [{"id": f"seed={s}", "settings": {}, "seed": s} for s in range(3)]
    d.mkdir(parents=True)
    (d / "sweep.json").write_text(json.dumps({"fixed": {"beta1": 0.0, "device": "cpu"}, "settings": [],
                                              "probe": "every=10", "members": members}))
    rec = lambda s, grok, delay, secs: {"id": f"seed={s}", "seconds": secs, "grokked": grok is not None,  # noqa: E731
                                        "grokked_step": grok, "delay": delay}
    (d / "finished.jsonl").write_text(json.dumps(rec(0, 700, 40, 600.0)) + "\n" + json.dumps(rec(1, 900, 10, 1200.0)) + "\n")
    (d / "members/seed=0").mkdir(parents=True)
    (d / "members/seed=0/metrics.csv").write_text("step\n0\n")
    (d / "members/seed=1").mkdir(parents=True)  # finished on some machine, its metrics not copied
    body = ledger_script.kept_block(tmp_path)
    row = next(line for line in body.splitlines() if "x/kept/pop" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["beta1 0.0; probe every=10", "1 of 3", "1 (at 700-700)", "40", "10.0 (10-10 each)"]


def test_the_chance_recipients_table_reads_when_a_run_left_chance_and_ranks_the_population(ledger_script, tmp_path):
    """Planted runs: a pilot memorising at step 20 at test accuracy 0.01 (chance) that is above 0.02
    at step 40, back at chance at 50, and never groks; three preset members whose test accuracy at memorisation orders
    their grokking steps exactly backwards (rho = -1), one never grokking."""
    import pandas as pd

    def plant(d: Path, seed: int, train: list, test: list, frac=0.3):
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"task": {"frac": frac}, "train": {"lr": 1e-3, "weight_decay": 1.0,
                                                                                     "seed": seed}}))
        pd.DataFrame({"step": [10 * i for i in range(len(train))], "train_acc": train, "test_acc": test}).to_csv(
            d / "metrics.csv", index=False)

    plant(tmp_path / "figures/backing/transplant_chance_pilot", 0, [0.1, 0.5, 1, 1, 1, 1], [0, 0, 0.01, 0.02, 0.025, 0.01])
    pop = tmp_path / "figures/dynamics/seed004/kept/probed/members"
    plant(pop / "seed=0", 0, [0.5, 1, 1, 1], [0, 0.05, 0.5, 0.95], 0.5)   # memorised at 0.05, groks at 30
    plant(pop / "seed=1", 1, [0.5, 1, 1, 1], [0, 0.3, 0.95, 0.95], 0.5)   # memorised at 0.30, groks at 20
    plant(pop / "seed=2", 2, [0.5, 1, 1, 1], [0, 0.01, 0.02, 0.03], 0.5)  # memorised at chance, left at 30
    body = ledger_script.chance_block(tmp_path)
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in body.splitlines() if line.startswith("| pilot") or line.startswith("| seed004")}
    assert cells["pilot `transplant_chance_pilot`"][5:] == ["20", "0.010", "40 / 50", "not by 50"]
    assert cells["seed004 `seed=2`"][5:] == ["10", "0.010", "30 / 20", "not by 30"]
    assert cells["seed004 `seed=0`"][5:] == ["10", "0.050", "-", "30"]
    assert "Spearman rho = -1.00" in body  # acc ranks 2, 3, 1 against grokking ranks 2, 1, 3 (never: last)


def test_an_at_chance_transplant_says_where_test_accuracy_left_chance_and_where_neurons_clustered(ledger_script):
    pt = lambda step, test, clustered: {"step": step, "train_acc": 0.5, "test_acc": test, "clustered": clustered}  # noqa: E731
    d = {"recipient_max_test_acc": 0.02, "rows": [
        {"seed": 1, "trajectory": [pt(0, 0.01, 0), pt(50, 0.02, 0), pt(100, 0.03, 4)]},   # both at 100 (0.02 is at chance)
        {"seed": 2, "trajectory": [pt(0, 0.01, 0), pt(50, 0.05, 0), pt(100, 0.06, 0), pt(200, 0.1, 2)]},
        {"seed": 3, "skipped": "no plateau"}]}
    text = ledger_script._chance_trajectories(d)
    assert text == ("Checkpoints up to memorisation (every 50/100 steps): seed 1: test accuracy first above 0.02 at "
                    "step 100, first neuron clustered at step 100 (4 neurons); seed 2: test accuracy first above 0.02 "
                    "at step 50, first neuron clustered at step 200 (2 neurons). The two are the same checkpoint in 1 of 2 seeds.")
    assert ledger_script._chance_trajectories({"rows": [{"seed": 0}]}) == ""
