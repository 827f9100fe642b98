"""One plotly.min.js per output tree: figures refer to their tree's copy (the run's, the sweep's,
figures/'s) by relative path instead of a 4.8 MB copy in every directory, and still load
offline from disk (the src resolves to a file equal to the plotly.js plotly ships)."""

import json
import re
from pathlib import Path

import plotly.graph_objects as go
import pytest

from mechgrok import plots

REPO = Path(__file__).resolve().parents[1]
SRC = re.compile(r'<script charset="utf-8" src="([^"]*)"></script>')


@pytest.fixture(autouse=True)
def no_png(monkeypatch):
    def fail(self, *a, **k):
        raise RuntimeError("no PNG in these tests")

    monkeypatch.setattr(go.Figure, "write_image", fail)


def _plotly_file(html: Path) -> Path:
    """The file an HTML figure loads plotly.js from (it must be a local, relative one)."""
    srcs = [s for s in SRC.findall(html.read_text(encoding="utf-8")) if "plotly" in s]
    assert len(srcs) == 1 and not srcs[0].startswith(("http", "/")), (html, srcs)
    return (html.parent / srcs[0]).resolve()


def _fake_run(path: Path) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def _save(stem: Path):
    plots.save_figure(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])), stem, png=False)
    return stem.with_suffix(".html")


def test_a_runs_figures_and_its_interventions_share_the_runs_one_copy(tmp_path):
    run = _fake_run(tmp_path / "runs" / "demo")
    cont = _fake_run(run / "interventions" / "freeze" / "step_10" / "head")  # a run inside the run
    htmls = [_save(run / "training_curve"), _save(cont / "training_curve"),
             _save(run / "interventions" / "freeze" / "summary"), _save(run / "analysis" / "deep" / "fig")]
    copies = sorted(tmp_path.rglob(plots.PLOTLY_JS))
    assert copies == [run / plots.PLOTLY_JS]
    assert all(_plotly_file(h) == copies[0].resolve() for h in htmls)
    assert copies[0].read_bytes() == plots._plotlyjs_bytes()  # the real plotly.js: it loads offline


def test_a_sweeps_members_share_the_sweeps_copy_and_a_plain_directory_gets_its_own(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "members").mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"members": []}))
    member = _fake_run(sweep / "members" / "m0")
    htmls = [_save(member / "training_curve"), _save(sweep / "population_lr")]
    plain = _save(tmp_path / "elsewhere" / "fig")  # no run or sweep above it: the copy goes beside it
    assert sorted(tmp_path.rglob(plots.PLOTLY_JS)) == [tmp_path / "elsewhere" / plots.PLOTLY_JS,
                                                       sweep / plots.PLOTLY_JS]
    assert {_plotly_file(h) for h in htmls} == {(sweep / plots.PLOTLY_JS).resolve()}
    assert _plotly_file(plain) == (tmp_path / "elsewhere" / plots.PLOTLY_JS).resolve()


def test_relinking_an_old_figure_writes_the_tag_a_new_figure_gets(tmp_path):
    top = tmp_path / "figures"
    plots.ensure_plotlyjs(top)
    old = top / "dynamics" / "old.html"
    plots.save_figure(go.Figure(), old.with_suffix(""), png=False, plotlyjs="directory")  # the old layout
    assert _plotly_file(old) == (top / "dynamics" / plots.PLOTLY_JS).resolve()
    (top / "dynamics" / plots.PLOTLY_JS).unlink()
    plots.relink_html(old)
    new = _save(top / "dynamics" / "new")
    tag = [s for s in SRC.findall(new.read_text()) if "plotly" in s]
    assert [s for s in SRC.findall(old.read_text()) if "plotly" in s] == tag == ["../plotly.min.js"]


def test_the_committed_figures_share_one_plotlyjs():
    figures = REPO / "figures"
    assert sorted(figures.rglob(plots.PLOTLY_JS)) == [figures / plots.PLOTLY_JS]
    htmls = sorted(figures.rglob("*.html"))
    assert htmls and {_plotly_file(h) for h in htmls} == {(figures / plots.PLOTLY_JS).resolve()}


def test_a_saved_figure_is_read_back_from_its_html_with_its_data_and_layout(tmp_path):
    import base64

    import numpy as np
    import plotly.graph_objects as go

    from mechgrok.plots import figure_from_html, save_figure

    y = np.linspace(0, 1, 7) ** 2
    fig = go.Figure([go.Scatter(x=list(range(7)), y=y, name="a"), go.Scatter(x=[0, 1], y=[3, 4], name="b", yaxis="y2")],
                    layout=dict(title="t", yaxis2=dict(overlaying="y")))
    save_figure(fig, tmp_path / "f", png=False)
    back = figure_from_html(tmp_path / "f.html")
    assert [t.name for t in back.data] == ["a", "b"] and back.data[1].yaxis == "y2"
    ys = back.data[0].y  # plotly 6 writes arrays as typed base64 blocks
    ys = np.frombuffer(base64.b64decode(ys["bdata"]), dtype=ys["dtype"]) if isinstance(ys, dict) else np.asarray(ys)
    assert np.allclose(ys.astype(float), y) and back.layout.title.text == "t"
