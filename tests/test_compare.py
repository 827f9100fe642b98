"""`mg.compare` / `mechgrok compare RUN RUN...`: a few runs side by side -- the settings that differ,
the transition metrics and final losses per run, and the overlaid curves."""

import shutil
from dataclasses import replace

import pandas as pd
import pytest
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def no_browser(monkeypatch):
    import plotly.graph_objects as go

    def no_png(self, *a, **k):
        raise RuntimeError("PNG export switched off in these tests")

    monkeypatch.setattr(go.Figure, "write_image", no_png)


def first_step(m: pd.DataFrame, column: str, above: float):
    hit = m[m[column] > above]
    return None if hit.empty else int(hit["step"].iloc[0])


@pytest.fixture(scope="module")
def two_runs(grokked_run, tmp_path_factory):
    """The shared grokking run (copied, then analysed) and a shorter one with another weight decay
    and init seed (it memorises, and does not grok in its 150 steps); read-only for the tests."""
    tmp_path = tmp_path_factory.mktemp("compare")
    a = tmp_path / "a"
    shutil.copytree(grokked_run.path, a)
    cfg = grokked_run.config
    b = mg.train(replace(cfg, train=replace(cfg.train, weight_decay=1.0, steps=150), model=replace(cfg.model, seed=2)),
                 tmp_path / "b", progress=False)
    mg.report.analysis(mg.load_run(a), progress_bar=False, png=False)
    return mg.load_run(a), b


A_LABEL, B_LABEL = "a (steps=400, weight_decay=3, model_seed=0)", "b (steps=150, weight_decay=1, model_seed=2)"


def test_compare_table_has_each_runs_transitions_and_what_differs(two_runs):
    a, b = two_runs
    table = mg.compare([a.path, b.path])
    assert table.attrs["fields"] == ["steps", "weight_decay", "model_seed"]
    assert table["run"].tolist() == ["a", "b"]
    assert table["weight_decay"].tolist() == [3.0, 1.0] and table["model_seed"].tolist() == [0, 2]
    assert table["label"].tolist() == [A_LABEL, B_LABEL]
    assert table["memorised_step"].notna().all() and table["grokked"].tolist() == [True, False]
    for row, run in zip(table.itertuples(), (a, b)):
        m = pd.read_csv(run.path / "metrics.csv")
        mem, grok = first_step(m, "train_acc", 0.99), first_step(m, "test_acc", 0.9)
        assert (None if pd.isna(row.memorised_step) else row.memorised_step) == mem
        assert (None if pd.isna(row.grokked_step) else row.grokked_step) == grok
        assert row.final_test_loss == m["test_loss"].iloc[-1] and row.final_train_loss == m["train_loss"].iloc[-1]
        assert row.last_step == m["step"].iloc[-1]
    assert table["analysed"].tolist() == [True, False]
    assert mg.compare([a]).attrs["fields"] == []  # one run: nothing differs, the label is its name
    assert mg.compare([a])["label"].tolist() == ["a"]


def test_compare_command_prints_writes_and_says_which_runs_lack_progress(two_runs, tmp_path):
    a, b = two_runs
    out = tmp_path / "cmp"
    r = runner.invoke(app, ["compare", str(a.path), str(b.path), "--out", str(out), "--no-png"])
    assert r.exit_code == 0, r.output
    assert "settings that differ: steps, weight_decay, model_seed" in r.output
    assert "no progress measures for b (run `mechgrok analyze RUN`" in r.output
    written = pd.read_csv(out / "compare.csv")
    assert written["final_test_loss"].tolist() == pytest.approx(mg.compare([a, b])["final_test_loss"].tolist(),
                                                                rel=1e-5)
    curves, progress = (out / "compare_curves.html").read_text(), (out / "compare_progress.html").read_text()
    assert A_LABEL in curves and B_LABEL in curves
    assert A_LABEL in progress and B_LABEL not in progress
    r = runner.invoke(app, ["compare", str(a.path), str(tmp_path / "nothing"), "--out", str(out), "--no-png"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "nothing" in r.output, r.output


def test_compare_figure_overlays_each_runs_curves(two_runs):
    a, b = two_runs
    table = mg.compare([a, b])
    fig = mg.plots.population_curves(mg.comparison.curves([a, b], table), ("test_loss", "test_acc"),
                                     log=("test_loss",), by_seed=False)
    traces = {(t.name, t.xaxis): t for t in fig.data}
    for label, run in zip(table["label"], (a, b)):
        assert list(traces[(label, "x2")].y) == run.metrics["test_acc"].tolist()
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type != "log"
    assert traces[(table["label"][0], "x")].line.color != traces[(table["label"][1], "x")].line.color
