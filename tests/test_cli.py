"""Every CLI command through typer's CliRunner, with numbers a bug would change: each output is
checked against a computation that does not go through the command's own code path."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app
from mechgrok.presets import DEMO_TIME

runner = CliRunner()
MODEL = ["--p", "13", "--frac", "0.6", "--d-model", "16", "--n-heads", "2", "--d-mlp", "32", "--eval-every", "10",
         "--checkpoint-every", "10", "--no-progress", "--no-png"]
SMALL = MODEL + ["--steps", "30"]


@pytest.fixture(autouse=True)
def no_browser(monkeypatch):
    """PNG export starts Chromium (seconds per figure): these tests check HTML and numbers."""
    import plotly.graph_objects as go

    def no_png(self, *a, **k):
        raise RuntimeError("PNG export switched off in the CLI tests")

    monkeypatch.setattr(go.Figure, "write_image", no_png)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args):
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    return r


def test_accuracy(params, cfg, inputs, labels) -> float:
    """Accuracy from the public forward, not the trainer's evaluate."""
    with torch.no_grad():
        return float((mg.forward(params, cfg, inputs).argmax(-1) == labels).float().mean())


test_accuracy.__test__ = False  # a helper, not a test


def ce(logits, labels) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double(), labels))


# --- train, info, presets, demo -------------------------------------------------------------


def test_presets_lists_every_preset_with_settings():
    r = ok("presets")
    for name in ("demo", "nanda", "division4", "tutorial2"):
        assert name in r.output
    assert "p=113" in r.output and "weight_decay=0.3" in r.output


def test_train_then_info_reports_the_final_checkpoints_accuracy(tmp_path):
    out = tmp_path / "run"
    r = ok("train", "--out", out, *SMALL)
    assert "checkpoints: 4 (steps 0..30)" in r.output
    info = json.loads(ok("info", out, "--json").stdout)
    assert info["last_step"] == 30
    assert info["config"]["task"]["p"] == 13 and info["config"]["model"]["d_head"] == 8
    run = mg.load_run(out)
    t = run.task
    assert info["test_acc"] == pytest.approx(test_accuracy(run.params(30), run.model_cfg, t.test_inputs,
                                                           t.test_labels), abs=1e-6)
    assert info["train_acc"] == pytest.approx(test_accuracy(run.params(30), run.model_cfg, t.train_inputs,
                                                            t.train_labels), abs=1e-6)


def test_overrides_reach_the_run_config_with_the_seed_fanned_out(tmp_path):
    out = tmp_path / "run"
    ok("train", "--out", out, *SMALL, "--op", "div", "--n-layers", "2", "--normalization", "ln", "--act-fn", "gelu",
       "--beta1", "0.5", "--wd", "0.1", "--seed", "7", "--d-model", "32", "--batch-size", "0")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"]["op"] == "div" and cfg["model"]["n_layers"] == 2 and cfg["model"]["act_fn"] == "gelu"
    assert cfg["model"]["normalization"] == "LN"
    assert cfg["train"]["betas"] == [0.5, 0.98] and cfg["train"]["weight_decay"] == 0.1
    assert (cfg["task"]["seed"], cfg["model"]["seed"], cfg["train"]["seed"]) == (7, 7, 7)
    assert cfg["model"]["d_head"] == 16 and cfg["train"]["batch_size"] is None  # 32 / 2 heads; 0 = full batch


def test_bad_input_exits_nonzero_with_one_line_not_a_traceback(tmp_path):
    cases = [(["train", "--out", tmp_path / "x", "--p", "12"], "TaskConfig.p must be a prime"),
             (["info", tmp_path / "nowhere"], "no such run directory"),
             (["info", tmp_path], "not a mechgrok run: config.json is missing"),  # a directory, but no run
             (["train", "--p", "13"], "--out"),
             (["train", "--resume", tmp_path / "nowhere"], "no such run directory"),
             (["train", "--out", tmp_path / "x", "--preset", "nope"], "unknown preset")]
    for args, msg in cases:
        r = invoke(*args)
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output
    r = invoke("train", "--out", tmp_path / "x", "--op", "pow")
    assert r.exit_code == 2 and "'pow' is not one of" in r.output and "'quad'" in r.output


def test_train_resume_extends_to_more_steps_as_if_never_stopped(tmp_path):
    ok("train", "--out", tmp_path / "a", *MODEL, "--steps", "20")
    r = ok("train", "--resume", tmp_path / "a", "--steps", "30", "--no-progress", "--no-png")
    assert f"resuming {tmp_path / 'a'} from step 20 to step 30" in r.output
    ok("train", "--out", tmp_path / "b", *SMALL)
    a, b = mg.load_run(tmp_path / "a"), mg.load_run(tmp_path / "b")
    assert a.steps == b.steps == [0, 10, 20, 30]
    for k, v in b.params(30).items():
        torch.testing.assert_close(a.params(30)[k], v, rtol=0, atol=0)
    r = invoke("train", "--resume", tmp_path / "a", "--lr", "0.5")
    assert r.exit_code == 1 and "cannot change train.lr" in r.output


def test_demo_help_states_the_measured_time_and_demo_trains_the_demo_preset(tmp_path, monkeypatch):
    assert DEMO_TIME in " ".join(ok("demo", "--help").output.split())
    desc, _ = mg.PRESETS["demo"]
    tiny = mg.presets.configure("demo", p=13, d_model=16, n_heads=2, d_mlp=32, steps=20, eval_every=10,
                                checkpoint_every=10)
    monkeypatch.setitem(mg.PRESETS, "demo", (desc, tiny))
    ok("demo", "--out", tmp_path / "d", "--no-progress", "--device", "cpu", "--no-png")
    run = mg.load_run(tmp_path / "d")
    assert run.config.task == tiny.task and run.config.model == tiny.model and run.steps == [0, 10, 20]
    assert run.config.train.device == "cpu"


# --- analysis commands on the session's grokked run ---------------------------------------


def test_analyze_every_nth_checkpoint_matches_the_trainers_metrics(grokked_run, tmp_path):
    ok("analyze", grokked_run.path, "--out", tmp_path, "--every", "3", "--freqs", "1,2", "--no-progress")
    table = pd.read_csv(tmp_path / "progress.csv")
    steps = grokked_run.steps
    assert list(table["step"]) == steps[::3] + ([steps[-1]] if steps[::3][-1] != steps[-1] else [])
    m = grokked_run.metrics.set_index("step").loc[table["step"]]
    assert table["test_loss"].to_numpy() == pytest.approx(m["test_loss"].to_numpy(), rel=1e-4)
    assert json.loads((tmp_path / "phases.json").read_text())["key_freqs"] == [1, 2]


def test_spectrum_matches_a_closed_form_fourier_transform_of_W_E(grokked_run, tmp_path):
    r = ok("spectrum", grokked_run.path, "--step", "200", "--out", tmp_path, "--basis", "add")
    table = pd.read_csv(tmp_path / "spectrum_step200.csv")
    p = grokked_run.task.p
    W_E = grokked_run.params(200)["embed.W_E"][:p].double()
    x = torch.arange(p, dtype=torch.float64)
    for k in (0, 1, 5, (p - 1) // 2):
        rows = [torch.ones(p, dtype=torch.float64)] if k == 0 else [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        norm = math.sqrt(sum(float(((r / r.norm()) @ W_E).pow(2).sum()) for r in rows))
        assert table.loc[table["k"] == k, "W_E_norm"].item() == pytest.approx(norm, rel=1e-4)
    top = int(table.sort_values("W_E_norm", ascending=False)["k"].iloc[0])
    assert f"largest W_E frequencies: {top} (" in r.output


def _remove_at_embed(run, step, freqs):
    """Test loss with ``freqs`` removed from W_E's token axis, computed from the definition."""
    params, cfg, task = dict(run.params(step)), run.model_cfg, run.task
    p = task.p
    x = torch.arange(p, dtype=torch.float64)
    M = torch.eye(p, dtype=torch.float64)
    for k in freqs:
        for r in (torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)):
            v = r / r.norm()
            M -= torch.outer(v, v)
    W_E = params["embed.W_E"].clone()
    W_E[:p] = (M @ W_E[:p].double()).float()
    params["embed.W_E"] = W_E
    with torch.no_grad():
        return ce(mg.forward(params, cfg, task.test_inputs), task.test_labels)


def test_ablate_json_has_one_schema_and_matches_the_definition(grokked_run, tmp_path):
    both = json.loads(ok("ablate", grokked_run.path, "--step", "400", "--freqs", "3,7", "--json", "--no-progress",
                         "--out", tmp_path).stdout)
    one = json.loads(ok("ablate", grokked_run.path, "--step", "400", "--freqs", "3,7", "--mode", "remove",
                        "--json").stdout)
    assert set(both) == set(one) == {"run", "step", "where", "layer", "freqs", "results", "sweep", "figures"}
    assert [r["name"] for r in both["results"]] == ["baseline", "remove [3, 7]", "keep [3, 7]"]
    assert [r["name"] for r in one["results"]] == ["baseline", "remove [3, 7]"]
    assert one["sweep"] == [] and len(both["sweep"]) == (grokked_run.task.p - 1) // 2 + 1 - 1
    final_test_loss = grokked_run.metrics.set_index("step").loc[400, "test_loss"]
    assert both["results"][0]["test_loss"] == pytest.approx(final_test_loss, rel=1e-4)
    assert one["results"][1]["test_loss"] == pytest.approx(_remove_at_embed(grokked_run, 400, [3, 7]), rel=1e-4)
    every_freq = ",".join(str(k) for k in range(1, (grokked_run.task.p - 1) // 2 + 1))
    keep_all = json.loads(ok("ablate", grokked_run.path, "--freqs", every_freq, "--mode", "keep", "--json").stdout)
    assert keep_all["results"][1]["test_loss"] == pytest.approx(final_test_loss, rel=1e-4)  # the identity


def test_freeze_keeps_the_frozen_weights_and_counts_trainable_params(tiny_run, tmp_path):
    rows = json.loads(ok("freeze", tiny_run.path, "--from-step", "40", "--steps", "10", "--interventions",
                         "baseline,embeddings", "--out", tmp_path, "--json", "--no-progress").stdout)
    by = {r["name"]: r for r in rows}
    start = tiny_run.params(40)
    sizes = {k: v.numel() for k, v in start.items()}
    assert by["baseline"]["trainable_params"] == sum(sizes.values())
    assert by["embeddings"]["trainable_params"] == sum(sizes.values()) - sizes["embed.W_E"] - sizes["pos_embed.W_pos"]
    frozen = mg.load_run(tmp_path / "step_40" / "embeddings")
    end = frozen.params(frozen.steps[-1])
    assert frozen.steps[-1] == 50
    assert torch.equal(end["embed.W_E"], start["embed.W_E"]) and torch.equal(end["pos_embed.W_pos"], start["pos_embed.W_pos"])
    assert not torch.equal(end["blocks.0.mlp.W_in"], start["blocks.0.mlp.W_in"])
    assert by["embeddings"]["final_test_acc"] == pytest.approx(
        test_accuracy(end, frozen.model_cfg, frozen.task.test_inputs, frozen.task.test_labels), abs=1e-6)
    help_text = " ".join(ok("freeze", "--help").output.split())
    assert all(name in help_text for name in ("no_weight_decay", "exit_layer", "embeddings"))


def test_transplant_of_a_run_into_itself_changes_nothing_right_after(tiny_run, tmp_path):
    res = json.loads(ok("transplant", "--donor", tiny_run.path, "--donor-step", "40", "--recipient", tiny_run.path,
                        "--recipient-step", "40", "--steps", "10", "--neurons", "0,1,2", "--out", tmp_path,
                        "--json").stdout)
    assert res["n_neurons"] == 3
    m = tiny_run.metrics.set_index("step").loc[40]
    assert res["after_transplant"]["test_acc"] == pytest.approx(m["test_acc"], abs=1e-6)
    assert res["after_transplant"]["train_acc"] == pytest.approx(m["train_acc"], abs=1e-6)


# --- import of foreign checkpoint series --------------------------------------------------


class Sneaky:
    """Pickles to a call of open(path, "w"): unpickling with code execution creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class Blocked:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.path}",))


def test_import_bundle_keeps_its_split_losses_and_config_as_data(tl_demo_bundle, tmp_path):
    d, bundle = tl_demo_bundle
    r = ok("import", d / "grokking.pth", "--out", tmp_path / "imp", "--no-progress", "--no-png")
    assert "HookedTransformerConfig" in r.output and "never constructed" in r.output
    run = mg.load_run(tmp_path / "imp")
    assert run.steps == [10, 20, 30]  # epoch e saved the weights after e + 1 updates
    assert run.config.task.train_idx == tuple(bundle["train_indices"].tolist())
    assert sorted(run.task.test_idx.tolist()) == sorted(bundle["test_indices"].tolist())
    assert run.config.model.act_fn == "gelu" and run.config.model.seed == 999
    m = run.metrics.set_index("step")
    for s in run.steps:  # the bundle's own losses, recorded while it trained
        assert m.loc[s, "test_loss"] == pytest.approx(bundle["test_losses"][s - 1], rel=1e-5)
        if s < len(bundle["train_losses"]):
            assert m.loc[s, "train_loss"] == pytest.approx(bundle["train_losses"][s], rel=1e-5)
    meta = json.loads((tmp_path / "imp" / "config.json").read_text())
    assert meta["imported"]["source_config"]["d_model"] == 16
    assert meta["imported"]["source_config"]["__class__"].endswith("HookedTransformerConfig")


def test_every_command_runs_on_an_imported_run(tl_demo_bundle, tmp_path):
    d, _ = tl_demo_bundle
    imp = tmp_path / "imp"
    ok("import", d / "grokking.pth", "--out", imp, "--no-progress", "--no-png")
    info = json.loads(ok("info", imp, "--json").stdout)
    assert info["last_step"] == 30 and info["config"]["task"]["train_idx"] is not None
    ok("analyze", imp, "--freqs", "1", "--no-progress")
    ok("spectrum", imp)
    ok("ablate", imp, "--freqs", "1", "--mode", "keep")
    r = ok("plot", imp, "--no-png")
    assert "spectrum_evolution.html" in r.output
    html = (imp / "spectrum_evolution.html").read_text()
    assert 'src="plotly.min.js"' in html and "cdn.plot.ly" not in html  # offline: plotly.js ships alongside
    assert (imp / "plotly.min.js").stat().st_size > 1_000_000


def test_import_single_state_dict_with_a_split_file(tl_demo_bundle, tmp_path):
    d, bundle = tl_demo_bundle
    (tmp_path / "split.txt").write_text(", ".join(str(i) for i in bundle["train_indices"].tolist()))
    ok("import", d / "single.pth", "--out", tmp_path / "one", "--op", "add", "--p", "13", "--act-fn", "gelu",
       "--split", tmp_path / "split.txt", "--step", "10", "--no-progress", "--no-png")
    run = mg.load_run(tmp_path / "one")
    assert run.steps == [10] and run.config.model.act_fn == "gelu"
    assert run.metrics["test_loss"].item() == pytest.approx(bundle["test_losses"][9], rel=1e-5)
    r = invoke("import", d / "single.pth", "--out", tmp_path / "two", "--p", "17")
    assert r.exit_code == 1 and "unembed.W_U has 13 outputs" in r.output


def test_import_never_runs_code_from_the_file(tl_demo_bundle, tmp_path):
    d, bundle = tl_demo_bundle
    target = tmp_path / "created_by_unpickling"
    torch.save(bundle | {"extra": Sneaky(target)}, tmp_path / "sneaky.pth")
    r = ok("import", tmp_path / "sneaky.pth", "--out", tmp_path / "s", "--no-progress", "--no-png")
    assert not target.exists()
    assert "open" in r.output and "never constructed" in r.output
    torch.save(bundle | {"extra": Blocked(target)}, tmp_path / "blocked.pth")
    r = invoke("import", tmp_path / "blocked.pth", "--out", tmp_path / "b")
    assert r.exit_code == 1 and "system" in r.output and "nothing was run" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not target.exists()


def test_import_failures_are_one_line_naming_the_file_and_what_is_missing(tl_demo_bundle, tmp_path):
    d, bundle = tl_demo_bundle
    torch.save({"foo": 1}, tmp_path / "foo.pth")
    torch.save({"checkpoints": bundle["checkpoints"]}, tmp_path / "half.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    cases = [("foo.pth", "embed.W_E"), ("half.pth", "checkpoint_epochs"), ("text.pth", "text.pth"),
             ("absent.pth", "no such file")]
    for name, what in cases:
        r = invoke("import", tmp_path / name, "--out", tmp_path / f"out_{name}")
        assert r.exit_code == 1, r.output
        assert len(r.output.strip().splitlines()) == 1 and "\x1b" not in r.output, r.output
        assert name in r.output and what in r.output, r.output
        assert not (tmp_path / f"out_{name}").exists()


# --- figures --------------------------------------------------------------------------------


def test_png_warning_names_the_reason(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    def no_browser(self, *a, **k):
        raise RuntimeError("")

    monkeypatch.setattr(go.Figure, "write_image", no_browser)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = mg.plots.save_figure(go.Figure(), tmp_path / "f")
    assert [w.name for w in written] == ["f.html"]
    assert "PNG export skipped (RuntimeError" in str(caught[0].message)


def test_spectrum_evolution_explains_key_markers_and_keeps_them_off_the_data():
    import numpy as np

    fig = mg.plots.spectrum_evolution([0, 100, 200], np.ones((3, 12)), key_freqs=[2, 7])
    marks = [a for a in fig.layout.annotations if "◀" in a.text]
    assert sorted(int(a.text.split()[-1]) for a in marks) == [2, 7] and [a.y for a in marks] == [2, 7]
    assert all(a.xref == "paper" and a.x >= 1.0 and a.xanchor == "left" for a in marks)  # right margin
    assert any("key frequency" in (t.name or "") for t in fig.data) and fig.layout.showlegend


def test_info_shows_the_transition_metrics_read_off_metrics_csv(grokked_run):
    m = grokked_run.metrics
    memorised = int(m.loc[m["train_acc"] > 0.99, "step"].iloc[0])  # seed 001's definitions, by hand
    grokked = int(m.loc[m["test_acc"] > 0.9, "step"].iloc[0])
    gap = float(m["train_acc"].iloc[-1] - m["test_acc"].iloc[-1])
    out = ok("info", grokked_run.path).output
    assert f"memorised (train acc > 0.99) at step: {memorised}" in out
    assert f"grokked (test acc > 0.9) at step: {grokked}\n" in out
    assert f"delay (grokked - memorised): {grokked - memorised}," in out and f"final gap (train - test acc): {gap:.4f}" in out


def test_info_headlines_the_acceleration_of_the_grokking_transition(grokked_run):
    m = grokked_run.metrics
    steps, test = m["step"].to_numpy(), m["test_acc"].to_numpy()
    memorised = int(steps[m["train_acc"] > 0.99][0])
    grokked = int(steps[test > 0.9][0])
    second = np.diff(test, 2)  # the grid is even (eval_every 10): curvature = second difference, by hand
    inner = steps[1:-1]
    during = (inner >= memorised) & (inner <= grokked)
    out = ok("info", grokked_run.path).output
    assert (f"max acceleration of test acc while grokking (memorised..grokked): step "
            f"{int(inner[during][np.argmax(second[during])])}; over the whole run: step "
            f"{int(inner[np.argmax(second)])}\n") in out


def test_info_on_a_missing_directory_says_there_is_no_such_run_directory(tmp_path):
    r = invoke("info", tmp_path / "rnus" / "demo")
    assert r.exit_code == 1 and r.output.strip() == f"error: no such run directory: {tmp_path / 'rnus' / 'demo'}"
    (tmp_path / "file").write_text("x")
    r = invoke("info", tmp_path / "file")
    assert r.exit_code == 1 and r.output.strip() == f"error: {tmp_path / 'file'} is a file, not a run directory"


@pytest.mark.parametrize("command", [["spectrum"], ["ablate", "--freqs", "3", "--no-progress"]],
                         ids=["spectrum", "ablate"])
def test_spectrum_and_ablate_take_no_png(grokked_run, tmp_path, monkeypatch, command):
    import plotly.graph_objects as go

    exported = []

    def fake_png(self, path, *a, **k):  # stands for kaleido: records the export and writes a file
        exported.append(path)
        open(path, "wb").close()

    monkeypatch.setattr(go.Figure, "write_image", fake_png)
    ok(*command, grokked_run.path, "--step", "400", "--out", tmp_path / "html", "--no-png")
    assert exported == [] and not list((tmp_path / "html").glob("*.png"))
    htmls = sorted(f.stem for f in (tmp_path / "html").glob("*.html"))
    assert htmls
    ok(*command, grokked_run.path, "--step", "400", "--out", tmp_path / "png")
    assert sorted(f.stem for f in (tmp_path / "png").glob("*.png")) == htmls and len(exported) == len(htmls)


def test_plot_after_a_resume_warns_that_the_analysis_figures_stop_at_progress_csv(tmp_path):
    run = tmp_path / "r"
    ok("train", "--out", run, *MODEL, "--steps", "20")
    ok("analyze", run, "--no-progress", "--no-png")
    assert "warning" not in ok("plot", run, "--no-png", "--no-progress").output  # current: nothing to say
    ok("train", "--resume", run, "--steps", "40", "--no-progress", "--no-png")
    measured = int(pd.read_csv(run / "progress.csv")["step"].max())
    assert measured == 20 and mg.load_run(run).steps[-1] == 40
    r = ok("plot", run, "--no-png", "--no-progress")
    warned = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: {run / 'progress.csv'} ends at step 20 but the run has checkpoints up to step 40 "
                      f"(trained on since `mechgrok analyze`): the analysis figures stop at step 20; "
                      f"run `mechgrok analyze {run}` to measure the new checkpoints"]
    ok("analyze", run, "--no-progress", "--no-png")
    assert "warning" not in ok("plot", run, "--no-png", "--no-progress").output
