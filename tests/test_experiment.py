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


def test_a_report_and_figure_whose_name_has_a_dot_keep_the_whole_name(tmp_path):
    """A study named by its settings (fourier_transplant's ``_lr0.001_chance0.02``) must not lose
    everything after the name's last dot, which would write ``_lr0.json`` and let two studies
    that differ after it overwrite each other."""
    import plotly.graph_objects as go

    for name in ("study_lr0.001_chance0.02", "study_lr0.001_chance0.05"):
        ex.write_report(tmp_path / name, "x\n", {"name": name}, command="c")
        mg.plots.save_figure(go.Figure(), tmp_path / name, png=False, plotlyjs=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"study_lr0.001_chance0.0{k}.{e}" for k in (2, 5) for e in ("html", "json", "md")]
    assert json.loads((tmp_path / "study_lr0.001_chance0.02.json").read_text())["name"] == "study_lr0.001_chance0.02"


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


# --- report numbers ---------------------------------------------------------------------------


def test_median_range_and_iqr_skip_missing_values_and_match_a_hand_computation():
    assert ex.median_range([3, 1, None, 2, float("nan")], "{:.0f}") == "2 [1, 3]"
    assert ex.median_range([0.25], "{:.0%}") == "25%" and ex.median_range([None]) == "n/a"
    # inclusive quartiles of 1..4: 1 + 0.75 * 1, 1 + 2.25 * 1
    assert ex.median_iqr([4, None, 1, 3, 2]) == "2.5 (1.75 to 3.25)"
    assert ex.median_iqr([7]) == "7 (7 to 7)" and ex.median_iqr([None]) == "-"
    # the seed that did not grok within 500 steps counts as later than all: the median is 300, not 200
    assert ex.grokked_summary([300, None, 100], 500) == "[300, 100] (2/3 grokked, median 300)"
    assert ex.grokked_summary([300, None, None], 500) == "[300] (1/3 grokked, median > 500)"
    assert ex.grokked_summary([None], 500) == "[] (0/1 grokked, no seed grokked)"
    assert ex.censored_iqr([300, None, 100, 200], 500) == "250 (175 to > 350)"


def test_paired_differences_count_signs_and_take_wilcoxon_over_the_unequal_pairs():
    res = ex.paired_differences([2, 3, 5, None, 4, 1], [1, 1, 2, 4, 4, 2])
    assert res.diffs == (1, 2, 3, 0, -1) and res.median == 1
    assert (res.below, res.equal, res.above) == (1, 1, 3)
    # the zero difference is left out before the test, not ranked
    from scipy.stats import wilcoxon
    assert res.p == pytest.approx(wilcoxon([1, 2, 3, -1]).pvalue)
    # all three positive: the exact two-sided p is 2 / 2**3
    assert ex.paired_differences([2, 3, 4], [1, 1, 1]).p == pytest.approx(0.25)
    one = ex.paired_differences([1, 2], [0, 2])
    assert one.p != one.p and (one.below, one.equal, one.above) == (0, 1, 1)


def test_claims_table_puts_ours_next_to_the_published_number():
    assert ex.claims_table([("delay", "~300", 280.0), ("grokked", "all", None)]) == (
        "| claim | published | ours |\n|---|---|---|\n| delay | ~300 | 280 |\n| grokked | all | - |\n")
    assert ex.claims_table([("a", 1)], ("x", "y")).startswith("| x | y |")


def test_merge_rows_keeps_earlier_seeds_and_every_invocation(tmp_path):
    path = tmp_path / "r.json"
    first = {"preset": "p", "args": {"seeds": "0-1"}, "wall_s": 5, "rows": [{"seed": 0, "v": 1}, {"seed": 1, "v": 1}]}
    assert ex.merge_rows(path, first, ["preset"]) is first  # nothing to merge yet
    path.write_text(json.dumps(first))
    again = {"preset": "p", "args": {"seeds": "1-2"}, "wall_s": 7, "rows": [{"seed": 2, "v": 2}, {"seed": 1, "v": 2}]}
    merged = ex.merge_rows(path, again, ["preset"])
    assert merged["rows"] == [{"seed": 0, "v": 1}, {"seed": 1, "v": 2}, {"seed": 2, "v": 2}]
    assert [i["args"]["seeds"] for i in merged["invocations"]] == ["0-1", "1-2"]
    assert [i["wall_s"] for i in merged["invocations"]] == [5, 7]
    with pytest.raises(SystemExit, match="preset p, not these"):
        ex.merge_rows(path, again | {"preset": "q"}, ["preset"])


def test_replace_section_rewrites_between_the_markers_or_appends(tmp_path):
    path = tmp_path / "README.md"
    ex.replace_section(path, "<a>", "</a>", "<a>\none\n</a>")
    assert path.read_text() == "# Figures\n\n<a>\none\n</a>\n"
    path.write_text("top\n<a>\nold\n</a>\nbottom\n")
    ex.replace_section(path, "<a>", "</a>", "<a>\nnew\n</a>")
    assert path.read_text() == "top\n<a>\nnew\n</a>\nbottom\n"


def test_finished_runs_leaves_out_missing_dirs_and_members_still_running(tiny_cfg, tmp_path):
    run = ex.train_or_resume(_steps(tiny_cfg, 20), tmp_path / "done")
    running = tmp_path / "running"
    import shutil
    shutil.copytree(run.path, running)
    from mechgrok.ensemble import MEMBER_FILE
    (running / MEMBER_FILE).write_text(json.dumps({"status": "running"}))
    got = ex.finished_runs([tmp_path / "done", tmp_path / "missing", running])
    assert got[0].path == run.path and got[1] is None and got[2] is None


def test_quartiles_are_the_numbers_behind_median_iqr():
    assert ex.quartiles([4, None, 1, 3, 2]) == {"n": 4, "median": 2.5, "q25": 1.75, "q75": 3.25}
    assert ex.quartiles([None, float("nan")]) == {"n": 0, "median": None, "q25": None, "q75": None}


def test_sweep_seed_by_seed_keeps_finished_seeds_and_trains_only_new_ones(tiny_cfg, tmp_path):
    spec = mg.SweepConfig(_steps(tiny_cfg, 20), grid={"weight_decay": (0.0, 1.0)}, seeds=(0, 1),
                          fixed={"eval_every": 10, "checkpoint_every": 10, "device": "cpu"})
    seen = []
    pop = ex.sweep_seed_by_seed(spec, tmp_path / "sw", after=lambda p: seen.append(sorted(set(p.seeds))), progress=False)
    assert seen == [[0], [0, 1]] and sorted((tmp_path / "sw").iterdir()) == [tmp_path / "sw" / "seed0",
                                                                             tmp_path / "sw" / "seed1"]
    stamps = {f: f.stat().st_mtime_ns for f in (tmp_path / "sw").rglob("metrics.csv")}
    pop = ex.sweep_seed_by_seed(replace(spec, seeds=(0, 1, 2)), tmp_path / "sw", progress=False)
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # seeds 0 and 1 were loaded, not retrained
    assert sorted(zip(pop.table["seed"], pop.table["weight_decay"])) == [(s, w) for s in (0, 1, 2) for w in (0.0, 1.0)]
    assert pop.table["last_step"].tolist() == [20] * 6


def test_kept_members_outlive_the_machine_and_are_not_trained_again(tiny_cfg, tmp_path, monkeypatch):
    spec = mg.SweepConfig(_steps(tiny_cfg, 20), grid={"weight_decay": (0.0, 1.0)}, seeds=(0,), chunk_size=1,
                          fixed={"eval_every": 10, "checkpoint_every": 10, "device": "cpu"})
    kept = tmp_path / "kept"
    first = ex.sweep_or_resume(spec, tmp_path / "a", kept=kept, progress=False)
    files = sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file())
    # each chunk is kept as it finishes: config, metrics and status of both members, no weights
    assert [f for f in files if f.startswith("members/")] == [
        f"members/{i}/{n}" for i in sorted(first.ids) for n in ("config.json", "member.json", "metrics.csv")]
    assert {"sweep.json", "finished.jsonl"} <= set(files)
    # a fresh machine: --out is gone; nothing trains, and the metrics are the kept ones
    import mechgrok.population as population

    monkeypatch.setattr(population, "train_chunk", lambda *a, **k: pytest.fail("a kept member was trained again"))
    again = ex.sweep_or_resume(spec, tmp_path / "b", kept=kept, progress=False)
    assert again.table["last_step"].tolist() == [20, 20]
    # members kept for another sweep are not taken for this one's
    with pytest.raises(ValueError, match="keeps the members of another sweep"):
        ex.sweep_or_resume(replace(spec, seeds=(1,)), tmp_path / "c", kept=kept, progress=False)
    assert not (tmp_path / "c").exists()
    for i in first.ids:
        assert again.run(i).metrics.equals(first.run(i).metrics)


def test_keep_leaves_out_unfinished_members_and_restore_never_overwrites(tiny_cfg, tmp_path):
    spec = mg.SweepConfig(_steps(tiny_cfg, 20), grid={"weight_decay": (0.0, 1.0)}, seeds=(0,), chunk_size=1,
                          fixed={"eval_every": 10, "checkpoint_every": 10, "device": "cpu"})
    pop = ex.sweep_or_resume(spec, tmp_path / "sw", progress=False)
    gone = pop.ids[1]  # as if the machine went while this member trained: not in the manifest
    manifest = tmp_path / "sw" / "finished.jsonl"
    manifest.write_text("".join(l + "\n" for l in manifest.read_text().splitlines() if gone not in l))
    assert ex.keep(tmp_path / "sw", tmp_path / "kept") > 0
    assert not (tmp_path / "kept" / "members" / gone).exists() and (tmp_path / "kept" / "members" / pop.ids[0]).is_dir()
    ex.keep(tmp_path / "sw", tmp_path / "one", ids=[pop.ids[0], gone])  # a chunk's ids: only the finished of them
    assert [p.name for p in (tmp_path / "one" / "members").iterdir()] == [pop.ids[0]]
    # restore fills in only what is missing: the file --out already has is newer
    (tmp_path / "kept" / "members" / pop.ids[0] / "member.json").write_text("stale")
    ex.restore(tmp_path / "kept", tmp_path / "sw")
    assert (tmp_path / "sw" / "members" / pop.ids[0] / "member.json").read_text() != "stale"
    assert ex.restore(tmp_path / "nothing", tmp_path / "sw") == 0


def test_a_restored_run_without_checkpoints_counts_as_finished(tiny_cfg, tmp_path, monkeypatch):
    cfg = _steps(tiny_cfg, 20)
    ex.train_or_resume(cfg, tmp_path / "run")
    ex.keep(tmp_path / "run", tmp_path / "kept")
    assert not list((tmp_path / "kept").rglob("*.safetensors"))
    ex.restore(tmp_path / "kept", tmp_path / "fresh")
    import mechgrok.experiment as experiment

    monkeypatch.setattr(experiment, "train", lambda *a, **k: pytest.fail("a restored finished run was retrained"))
    run = ex.train_or_resume(cfg, tmp_path / "fresh")
    assert run.steps == [] and ex.is_finished(run) and not ex.is_finished(run, 30)
    assert run.metrics.equals(mg.load_run(tmp_path / "run").metrics)
