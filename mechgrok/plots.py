"""Figures (plotly). Functions here take numbers that other modules computed and return a
``go.Figure``; ``save_figure`` writes HTML always and PNG when a browser is available."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .files import atomic_write, with_ext
from .milestones import GROKKED_TEST_ACC

COLORS = {"train": "#1f77b4", "test": "#d62728", "restricted": "#2ca02c", "excluded": "#9467bd",
          "other": "#7f7f7f"}


def save_figure(fig: go.Figure, stem: str | Path, png: bool = True, scale: float = 2.0,
                plotlyjs: str | bool = "shared") -> list[Path]:
    """Write ``stem.html`` and, if possible, ``stem.png``; return the files written.

    The HTML works offline, opened from disk, without a copy of plotly.js (4.8 MB) per
    directory: by default (``"shared"``) it refers by relative path to the one ``plotly.min.js``
    of its output tree (``plotlyjs_home``: the run, the sweep, or the figures/ tree), written
    there once. Keep the HTML inside its tree (move the tree as a whole); ``mechgrok plot RUN``
    redraws a run's figures where they are. ``"directory"`` puts a copy beside the figure,
    ``True`` embeds it (one self-contained file), ``"cdn"`` loads it from the web.

    PNG export needs kaleido and a Chromium it can drive. Without one this warns (with kaleido's
    reason) and keeps the HTML: a missing browser must never cost a researcher the run that
    made the figure; ``mechgrok plot RUN`` draws the PNGs later.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html = with_ext(stem, ".html")
    if plotlyjs == "shared":
        plotlyjs = plotlyjs_src(stem.parent)
    elif plotlyjs == "directory":
        # ours first, so plotly (which writes its copy only where none exists, and not
        # atomically) finds it in place and leaves it alone
        ensure_plotlyjs(stem.parent)
    # the temp file sits in the figure's directory, so a relative src resolves as for the figure
    atomic_write(html, lambda tmp: fig.write_html(tmp, include_plotlyjs=plotlyjs))
    written = [html]
    if png:
        try:
            atomic_write(with_ext(stem, ".png"), lambda tmp: fig.write_image(tmp, format="png", scale=scale))
            written.append(with_ext(stem, ".png"))
        except Exception as e:  # kaleido raises several types for "no browser"
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            reason = f"{type(e).__name__}: {lines[0][:200]}" if lines else f"{type(e).__name__} from kaleido"
            # no file name in the message: Python's default filter then shows it once, not per figure
            warnings.warn(f"PNG export skipped ({reason}); the HTML figures are written. Install Chromium "
                          f"(apt-get install chromium), then `mechgrok plot RUN` adds the PNGs.", stacklevel=2)
    return written


PLOTLY_JS = "plotly.min.js"
_checked_plotlyjs: dict[Path, tuple[int, int, int]] = {}  # file -> (inode, size, mtime) found intact


def _plotlyjs_bytes() -> bytes:
    import pkgutil

    # the copy plotly ships, which its write_html(include_plotlyjs="directory") writes
    return pkgutil.get_data("plotly", "package_data/plotly.min.js")


def _tree_top(d: Path, js_size: int) -> bool:
    """Whether ``d`` can hold a tree's shared plotly.min.js: a run directory (config.json and
    checkpoints/), a sweep directory (sweep.json and members/), or a directory already holding
    a plotly.min.js of plotly's size (an earlier figure's shared copy, e.g. figures/'s)."""
    js = d / PLOTLY_JS
    return (((d / "config.json").is_file() and (d / "checkpoints").is_dir())
            or ((d / "sweep.json").is_file() and (d / "members").is_dir())
            or (js.is_file() and js.stat().st_size == js_size))


def plotlyjs_home(directory: str | Path) -> Path:
    """The directory whose ``plotly.min.js`` the figures in ``directory`` share: the highest
    ancestor of ``directory`` that ``_tree_top`` accepts (so a run's figures, its
    interventions' and a sweep's members' all share the run's or the sweep's copy), else
    ``directory`` itself."""
    import plotly

    directory = Path(os.path.abspath(directory))
    size = (Path(plotly.__file__).parent / "package_data" / PLOTLY_JS).stat().st_size  # _plotlyjs_bytes()'s
    home = directory
    for d in directory.parents:
        if _tree_top(d, size):
            home = d
    return home


def plotlyjs_src(directory: str | Path) -> str:
    """The ``<script src>`` of a figure written in ``directory``: the relative path to its
    tree's shared ``plotly.min.js`` (``plotlyjs_home``), which this makes sure exists."""
    js = ensure_plotlyjs(plotlyjs_home(directory))
    return Path(os.path.relpath(js, os.path.abspath(directory))).as_posix()


# the tags plotly's write_html writes for a path, "directory" and "cdn" (with integrity= and crossorigin=)
_PLOTLYJS_TAG = re.compile(r'<script charset="utf-8" src="[^"]*plotly[^"]*\.js"[^>]*></script>')


def relink_html(html: str | Path) -> Path:
    """Point an HTML figure written earlier (with a copy of plotly.js beside it, or from the
    CDN) at its tree's shared ``plotly.min.js``, the ``<script>`` tag ``save_figure`` writes
    today; figures without such a tag (plotly.js embedded) are left alone."""
    html = Path(html)
    text = html.read_text(encoding="utf-8")
    if _PLOTLYJS_TAG.search(text):
        tag = f'<script charset="utf-8" src="{plotlyjs_src(html.parent)}"></script>'
        new = _PLOTLYJS_TAG.sub(lambda m: tag, text, count=1)
        if new != text:
            atomic_write(html, lambda tmp: Path(tmp).write_text(new, encoding="utf-8"))
    return html


def figure_from_html(html: str | Path) -> go.Figure:
    """The figure an HTML file written by ``save_figure`` holds (its ``Plotly.newPlot(div, data,
    layout)`` call read back as JSON, nothing executed): to export a PNG of a figure whose data
    was not kept, as ``mechgrok plot`` does for a run's figures."""
    text = Path(html).read_text(encoding="utf-8")
    i = text.index("Plotly.newPlot(") + len("Plotly.newPlot(")
    dec = json.JSONDecoder()
    args = []
    while len(args) < 3:
        while text[i] in " \n\t,":
            i += 1
        value, i = dec.raw_decode(text, i)
        args.append(value)
    return go.Figure(data=args[1], layout=args[2])


def ensure_plotlyjs(directory: str | Path) -> Path:
    """``directory/plotly.min.js``, made equal to the copy plotly ships: written (atomically)
    where it is missing, and replaced where it differs, e.g. cut short by a full disk, which
    would leave every figure in the directory blank offline."""
    path = Path(directory) / PLOTLY_JS
    try:
        st = path.stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    except FileNotFoundError:
        stamp = None
    if stamp is not None and _checked_plotlyjs.get(path) == stamp:
        return path
    want = _plotlyjs_bytes()
    if stamp is None or stamp[1] != len(want) or path.read_bytes() != want:
        def w(tmp):
            with open(tmp, "wb") as f:
                f.write(want)
        atomic_write(path, w)
        st = path.stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    _checked_plotlyjs[path] = stamp
    return path


def markdown_table(rows, columns: list[str] | None = None, floatfmt: str = ".3g") -> str:
    """A GitHub markdown table of ``rows`` (a DataFrame or a list of dicts; ``columns`` picks
    and orders them). None shows as "-", floats with ``floatfmt``: what analyses/ write next to
    their figures."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    columns = list(df.columns) if columns is None else columns

    def cell(v):
        if v is None or (isinstance(v, float) and v != v):
            return "-"
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in df.to_dict("records")]
    return "\n".join(lines) + "\n"


def training_curve(metrics: pd.DataFrame, title: str = "training", marks: dict[str, float] | None = None
                   ) -> go.Figure:
    """Train/test loss (log scale) and accuracy against step; ``marks`` draws labelled
    vertical lines (e.g. memorisation and grokking steps)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"), horizontal_spacing=0.1)
    for split in ("train", "test"):
        fig.add_trace(go.Scatter(x=metrics["step"], y=metrics[f"{split}_loss"], name=f"{split} loss",
                                 line=dict(color=COLORS[split])), row=1, col=1)
        fig.add_trace(go.Scatter(x=metrics["step"], y=metrics[f"{split}_acc"], name=f"{split} accuracy",
                                 line=dict(color=COLORS[split], dash="dot")), row=1, col=2)
    for label, step in (marks or {}).items():
        if step is None:
            continue
        for col in (1, 2):
            fig.add_vline(x=step, line=dict(color=COLORS["other"], dash="dash", width=1), row=1, col=col)
        fig.add_annotation(x=step, y=1.02, yref="paper", text=label, showarrow=False, xref="x2",
                           font=dict(size=10))
    fig.update_yaxes(type="log", title_text="cross-entropy", row=1, col=1, exponentformat="power")
    fig.update_yaxes(range=[-0.02, 1.02], title_text="accuracy", row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=title, template="plotly_white", width=1000, height=420,
                      legend=dict(orientation="h", y=-0.2))
    return fig


# --- Fourier analysis and progress measures -------------------------------------

PHASE_COLORS = {"memorisation": "#1f77b4", "circuit formation": "#ff7f0e", "cleanup": "#2ca02c"}


def _shade_phases(fig: go.Figure, phases: dict[str, tuple[float, float] | None] | None, legend: bool = True,
                  **where):
    """Shade labelled step intervals (``Phases.intervals()``) on ``fig``; the names go in the
    legend (labels on the plot collide when a phase is short)."""
    for name, span in (phases or {}).items():
        if span is None:
            continue
        color = PHASE_COLORS.get(name, COLORS["other"])
        fig.add_vrect(x0=span[0], x1=span[1], fillcolor=color, opacity=0.12, line_width=0, **where)
        if legend:
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"{name} {span[0]:g}-{span[1]:g}",
                                     marker=dict(symbol="square", size=12, color=color, opacity=0.4)),
                          **({"row": where["row"], "col": where["col"]} if "row" in where else {}))


def spectrum_bars(norms, key_freqs=(), title: str = "embedding spectrum", ylabel: str = "norm of W_E",
                  freq_label: str = "frequency k") -> go.Figure:
    """Bars of a norm per frequency (index = k), key frequencies highlighted and labelled."""
    norms = [float(v) for v in norms]
    keys = set(int(k) for k in key_freqs)
    colors = [COLORS["test"] if k in keys else COLORS["train"] for k in range(len(norms))]
    fig = go.Figure(go.Bar(x=list(range(len(norms))), y=norms, marker_color=colors,
                           hovertemplate="k=%{x}<br>norm=%{y:.3g}<extra></extra>"))
    for k in sorted(keys):
        fig.add_annotation(x=k, y=norms[k], text=str(k), showarrow=False, yshift=10, font=dict(size=10))
    shown = sorted(keys) if len(keys) <= 10 else f"{len(keys)} of them"
    fig.update_layout(title=f"{title} (key frequencies in red: {shown})", template="plotly_white",
                      width=900, height=380, xaxis_title=freq_label, yaxis_title=ylabel, showlegend=False)
    return fig


def neuron_frequency_map(shares, freq, cluster_sizes: dict[int, int], threshold: float,
                         title: str = "neurons by frequency") -> go.Figure:
    """Left: share of each neuron's variance per frequency (neurons sorted by their frequency,
    unclustered last). Right: neurons per frequency cluster (-1 = unclustered).

    ``shares``: [d_mlp, n_freq] array; ``freq``: each neuron's cluster (-1 unclustered)."""
    import numpy as np

    shares, freq = np.asarray(shares), np.asarray(freq)
    order = np.lexsort((-shares.max(1), shares.argmax(1), freq < 0))  # clustered first, then by frequency
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3], horizontal_spacing=0.13,
                        subplot_titles=("share of variance per frequency", f"cluster sizes (share >= {threshold})"))
    fig.add_trace(go.Heatmap(z=shares[order], x=list(range(shares.shape[1])), colorscale="Blues", zmin=0, zmax=1,
                             colorbar=dict(title="share", x=0.63, len=0.9, thickness=12),
                             hovertemplate="k=%{x}<br>neuron rank %{y}<br>share=%{z:.2f}<extra></extra>"),
                  row=1, col=1)
    ks = sorted(cluster_sizes)
    fig.add_trace(go.Bar(x=[("unclustered" if k < 0 else str(k)) for k in ks], y=[cluster_sizes[k] for k in ks],
                         marker_color=[COLORS["other"] if k < 0 else COLORS["train"] for k in ks],
                         showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="frequency k", row=1, col=1)
    fig.update_yaxes(title_text="neuron (sorted by cluster)", row=1, col=1)
    fig.update_xaxes(title_text="frequency", type="category", row=1, col=2)
    fig.update_yaxes(title_text="neurons", row=1, col=2)
    fig.update_layout(title=title, template="plotly_white", width=1100, height=480)
    return fig


def progress_losses(table: pd.DataFrame, phases: dict | None = None, title: str = "progress measures"
                    ) -> go.Figure:
    """Train, test, restricted and excluded loss against step (log scale), phases shaded."""
    fig = go.Figure()
    for col, name, color, dash in (("train_loss", "train", COLORS["train"], None),
                                   ("test_loss", "test", COLORS["test"], None),
                                   ("restricted_loss", "restricted", COLORS["restricted"], "dash"),
                                   ("excluded_loss", "excluded", COLORS["excluded"], "dash")):
        if col in table:
            fig.add_trace(go.Scatter(x=table["step"], y=table[col], name=name, line=dict(color=color, dash=dash)))
    _shade_phases(fig, phases)
    fig.update_yaxes(type="log", title_text="cross-entropy", exponentformat="power")
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=title, template="plotly_white", width=900, height=450,
                      legend=dict(orientation="h", y=-0.18))
    return fig


def gini_and_weight_norm(table: pd.DataFrame, phases: dict | None = None, title: str = "sparsity and weight norm"
                         ) -> go.Figure:
    """Gini coefficient of the W_E and W_L frequency norms, and the sum of squared weights."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Gini of Fourier norms", "sum of squared weights"),
                        horizontal_spacing=0.1)
    for col, name, color in (("gini_W_E", "W_E", COLORS["train"]), ("gini_W_L", "W_L", COLORS["test"])):
        fig.add_trace(go.Scatter(x=table["step"], y=table[col], name=f"Gini {name}", line=dict(color=color)),
                      row=1, col=1)
    fig.add_trace(go.Scatter(x=table["step"], y=table["weight_sq"], name="sum of squared weights",
                             line=dict(color=COLORS["other"])), row=1, col=2)
    for c in (1, 2):
        _shade_phases(fig, phases, legend=c == 1, row=1, col=c)
    fig.update_yaxes(range=[0, 1], title_text="Gini", row=1, col=1)
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=title, template="plotly_white", width=1000, height=420,
                      legend=dict(orientation="h", y=-0.2))
    return fig


def weight_statistics(table: pd.DataFrame, columns=("weight_sq", "l2", "spectral", "var_w"),
                      title: str = "weight statistics") -> go.Figure:
    """One small panel per column of ``table`` (e.g. ``measures.generic_series``) against step."""
    columns = [c for c in columns if c in table]
    fig = make_subplots(rows=1, cols=len(columns), subplot_titles=columns, horizontal_spacing=0.06)
    for i, col in enumerate(columns, start=1):
        fig.add_trace(go.Scatter(x=table["step"], y=table[col], name=col, line=dict(color=COLORS["other"]),
                                 showlegend=False), row=1, col=i)
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=title, template="plotly_white", width=300 * len(columns) + 100, height=380)
    return fig


def spectrum_evolution(steps, norms, key_freqs=(), title: str = "embedding spectrum over training",
                       zlabel: str = "norm of W_E") -> go.Figure:
    """Heat map of a norm per frequency (rows k = 0 ..) at each step (columns). Each key
    frequency (``key_freqs``: for ``mechgrok analyze``, those of the last measured checkpoint)
    gets a red ◀ and its k in the right margin, outside the data, explained in the legend."""
    import numpy as np

    norms = np.asarray(norms)
    fig = go.Figure(go.Heatmap(z=norms.T, x=list(steps), y=list(range(norms.shape[1])), colorscale="Viridis",
                               colorbar=dict(title=zlabel, x=1.07),
                               hovertemplate="step %{x}<br>k=%{y}<br>%{z:.3g}<extra></extra>"))
    for k in key_freqs:
        fig.add_annotation(x=1.0, xref="paper", xanchor="left", y=int(k), text=f"◀ {int(k)}", showarrow=False,
                           font=dict(size=9, color=COLORS["test"]))
    if len(key_freqs):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="key frequency k (of the final checkpoint)",
                                 marker=dict(symbol="triangle-left", size=10, color=COLORS["test"])))
    fig.update_layout(title=title, template="plotly_white", width=1000, height=500, xaxis_title="step",
                      yaxis_title="frequency k", showlegend=bool(len(key_freqs)),
                      legend=dict(orientation="h", x=0, y=-0.18), margin=dict(r=120))
    return fig


# --- interventions ------------------------------------------------------------------


def frequency_ablation(sweep: pd.DataFrame, baseline: float | None = None, key_freqs=None,
                       column: str = "test_loss", title: str = "loss with one frequency ablated") -> go.Figure:
    """Loss (log scale) after ablating each frequency alone (``interventions.frequency_sweep``),
    key frequencies in red, and the unablated loss as a dashed line. ``baseline`` and
    ``key_freqs`` default to what the sweep recorded in ``attrs``."""
    baseline = sweep.attrs.get("baseline", {}).get(column) if baseline is None else baseline
    keys = set(sweep.attrs.get("key_freqs", []) if key_freqs is None else key_freqs)
    colors = [COLORS["test"] if k in keys else COLORS["other"] for k in sweep["freq"]]
    fig = go.Figure(go.Bar(x=sweep["freq"], y=sweep[column], marker_color=colors, name=column,
                           hovertext=[f"k={k}{' (key)' if k in keys else ''}" for k in sweep["freq"]]))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", marker=dict(color=COLORS["test"], symbol="square"),
                             name="key frequency"))
    if baseline is not None:  # a trace, not add_hline: hline annotations misplace on log axes
        ks = list(sweep["freq"])
        fig.add_trace(go.Scatter(x=[ks[0] - 0.5, ks[-1] + 0.5], y=[baseline, baseline], mode="lines",
                                 line=dict(color=COLORS["train"], dash="dash"), name=f"no ablation: {baseline:.2e}"))
    where, mode = sweep.attrs.get("where", ""), sweep.attrs.get("mode", "remove")
    fig.update_yaxes(type="log", title_text=f"{column} ({mode} one frequency at {where})", exponentformat="power")
    fig.update_xaxes(title_text="frequency k")
    fig.update_layout(title=title, template="plotly_white", width=1000, height=420, bargap=0.15)
    return fig


def freezing_bars(results: pd.DataFrame, value: str = "final_test_acc", published: pd.DataFrame | None = None,
                  title: str = "final test accuracy after freezing") -> go.Figure:
    """Paired bars: ``value`` per intervention (x) from each checkpoint (one colour per
    ``from_step``); ``published`` (same columns) adds the reference values as open diamonds."""
    fig = go.Figure()
    palette = [COLORS["other"], "#2ca02c", COLORS["train"], COLORS["test"]]
    order = list(dict.fromkeys(results["name"]))
    for i, (step, grp) in enumerate(results.groupby("from_step", sort=True)):
        grp = grp.set_index("name").reindex(order)
        fig.add_trace(go.Bar(x=order, y=grp[value], name=f"from step {step}", marker_color=palette[i % len(palette)],
                             offsetgroup=str(i), text=[f"{v:.0%}" for v in grp[value]], textposition="outside"))
        if published is not None:
            ref = published[published["from_step_index"] == i].set_index("name").reindex(order)
            fig.add_trace(go.Scatter(x=order, y=ref[value], mode="markers", offsetgroup=str(i),
                                     name=f"published, checkpoint {i + 1}",
                                     marker=dict(symbol="diamond-open", size=11, color="black")))
    fig.update_yaxes(range=[0, 1.1], title_text=value.replace("_", " "), tickformat=".0%")
    fig.update_layout(title=title, template="plotly_white", width=1100, height=460, barmode="group",
                      scattermode="group", legend=dict(orientation="h", y=-0.25))
    return fig


def grokking_step_distributions(groups: dict[str, list], title: str = "grokking step") -> go.Figure:
    """One column of points per condition (``None``: never grokked, drawn at the top as x)."""
    fig = go.Figure()
    finite = [s for v in groups.values() for s in v if s is not None]
    top = 1.1 * max(finite) if finite else 1.0
    for i, (name, steps) in enumerate(groups.items()):
        ok = [s for s in steps if s is not None]
        fig.add_trace(go.Box(y=ok, name=name, boxpoints="all", jitter=0.3, pointpos=0,
                             marker_color=[COLORS["train"], COLORS["test"], "#2ca02c"][i % 3]))
        missed = len(steps) - len(ok)
        if missed:
            fig.add_trace(go.Scatter(x=[name], y=[top], mode="markers+text", showlegend=False,
                                     marker=dict(symbol="x", size=10, color="black"), textposition="middle right",
                                     text=[f"{missed} did not grok"]))
    fig.update_yaxes(title_text=f"grokking step (first eval with test acc > {GROKKED_TEST_ACC})")
    fig.update_layout(title=title, template="plotly_white", width=700, height=450, showlegend=False)
    return fig


# --- latent-state training maps ---

STATE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf"]


def latent_model_selection(table: pd.DataFrame, best: int | None = None,
                           title: str = "HMM model selection") -> go.Figure:
    """Held-out log-likelihood per checkpoint (best restart, and mean +- std over restarts),
    AIC and BIC against the number of states (``latent.select_states(...).table``)."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("held-out log-likelihood / checkpoint (higher is better)",
                                                        "AIC (lower is better)", "BIC (lower is better)"))
    n = table["n_states"]
    fig.add_trace(go.Scatter(x=n, y=table["heldout_ll_mean"], error_y=dict(array=table["heldout_ll_std"]),
                             mode="lines+markers", name="mean over restarts", line=dict(color=COLORS["other"])), 1, 1)
    fig.add_trace(go.Scatter(x=n, y=table["heldout_ll"], mode="lines+markers", name="best restart (by fit LL)",
                             line=dict(color=COLORS["train"])), 1, 1)
    fig.add_trace(go.Scatter(x=n, y=table["aic"], mode="lines+markers", name="AIC", line=dict(color="#2ca02c")), 1, 2)
    fig.add_trace(go.Scatter(x=n, y=table["bic"], mode="lines+markers", name="BIC", line=dict(color=COLORS["test"])), 1, 3)
    if best is not None:
        for c in (1, 2, 3):
            fig.add_vline(x=best, line_dash="dot", line_color="black", row=1, col=c)
    fig.update_xaxes(title_text="number of states", dtick=1)
    fig.update_layout(title=title, template="plotly_white", width=1300, height=420,
                      legend=dict(orientation="h", y=-0.2))
    return fig


def latent_training_map(transitions: pd.DataFrame, occupancy: pd.Series, labels: dict[int, str],
                        x: list[float], y: list[float], min_share: float = 0.15,
                        title: str = "training map") -> go.Figure:
    """States as nodes (area ~ occupancy, placed at ``x`` = mean relative time of occupancy and
    ``y`` = mean test accuracy; overlapping nodes are nudged apart), transitions between
    states as arrows whose label gives the probability and whose width its share of the
    state's leaving probability (1 - stay). Arrows with less than ``min_share`` of it are not
    drawn: with a checkpoint every few steps every state mostly stays (stay 0.9-0.94 at Hu et
    al.'s scale), so a fixed probability cut would hide every edge. Self-transitions are not
    drawn (the stay probability is in each node's hover text)."""
    fig = go.Figure()
    k = len(transitions)
    T = transitions.to_numpy()
    occ = occupancy.to_numpy(float)
    sizes = 18 + 50 * (occ / max(occ.max(), 1)) ** 0.5
    x, y = _spread(list(x), list(y), min_dist=0.14)
    for i in range(k):
        for j in range(k):
            leave = max(1 - T[i, i], 1e-12)
            if i == j or T[i, j] < min_share * leave:
                continue
            # offset the two directions of a pair so that both arrows stay visible
            dx, dy = x[j] - x[i], y[j] - y[i]
            norm = max((dx * dx + dy * dy) ** 0.5, 1e-9)
            ox, oy = -dy / norm * 0.015, dx / norm * 0.015
            fig.add_annotation(x=x[j] + ox, y=y[j] + oy, ax=x[i] + ox, ay=y[i] + oy, xref="x", yref="y",
                               axref="x", ayref="y", showarrow=True, arrowhead=2, arrowsize=1,
                               arrowwidth=1 + 5 * T[i, j] / leave, arrowcolor="rgba(80,80,80,0.6)", standoff=sizes[j] / 2,
                               startstandoff=sizes[i] / 2)
            fig.add_annotation(x=(x[i] + x[j]) / 2 + 2 * ox, y=(y[i] + y[j]) / 2 + 2 * oy, text=f"{T[i, j]:.2g}",
                               showarrow=False, font=dict(size=10, color="#444"))
    fig.add_trace(go.Scatter(
        x=x, y=y, mode="markers+text", text=[f"S{i}" for i in range(k)], textposition="middle center",
        textfont=dict(color="white", size=12), showlegend=False,
        marker=dict(size=sizes, color=[STATE_COLORS[i % len(STATE_COLORS)] for i in range(k)],
                    line=dict(color="black", width=1)),
        hovertext=[f"S{i}: {labels[i]}<br>{int(occ[i])} checkpoints<br>stay: {T[i, i]:.2f}" for i in range(k)],
        hoverinfo="text"))
    for i in range(k):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"S{i}: {labels[i]} ({int(occ[i])} ckpts)",
                                 marker=dict(size=10, color=STATE_COLORS[i % len(STATE_COLORS)])))
    fig.update_xaxes(title_text="mean relative time in the state (0 = start of training, 1 = end)", range=[-0.1, 1.1])
    fig.update_yaxes(title_text="mean test accuracy in the state", range=[-0.15, 1.15])
    fig.update_layout(title=title, template="plotly_white", width=1000, height=620,
                      legend=dict(orientation="h", y=-0.18))
    return fig


def _spread(x: list[float], y: list[float], min_dist: float, rounds: int = 200) -> tuple[list[float], list[float]]:
    """Nudge points apart (mostly vertically) until no two are closer than ``min_dist``, so that
    states at the same time and accuracy stay readable; positions are approximate after this."""
    x, y = [float(v) for v in x], [float(v) for v in y]
    for _ in range(rounds):
        moved = False
        for i in range(len(x)):
            for j in range(i + 1, len(x)):
                dx, dy = x[j] - x[i], y[j] - y[i]
                d = (dx * dx + dy * dy) ** 0.5
                if d < min_dist:
                    push = (min_dist - d) / 2 + 1e-3
                    uy = dy / d if d > 1e-9 else 1.0
                    ux = dx / d if d > 1e-9 else 0.0
                    x[i], x[j] = x[i] - 0.3 * push * ux, x[j] + 0.3 * push * ux
                    y[i], y[j] = y[i] - push * (uy if abs(uy) > 0.2 else 1.0), y[j] + push * (uy if abs(uy) > 0.2 else 1.0)
                    moved = True
        if not moved:
            break
    return x, y


def latent_ribbons(paths: pd.DataFrame, grokking_steps: dict, labels: dict[int, str] | None = None,
                   title: str = "state sequences") -> go.Figure:
    """Every member's Viterbi state sequence over training (``paths``: member, step, state),
    one row per member ordered by grokking step (earliest at the top; members that never
    grokked at the bottom); a black x marks each member's grokking step."""
    k = int(paths["state"].max()) + 1
    order = sorted(paths["member"].unique(), key=lambda m: (pd.isna(grokking_steps.get(m)),
                                                             grokking_steps.get(m, 0) if not pd.isna(grokking_steps.get(m)) else 0))
    grid = paths.pivot(index="member", columns="step", values="state").reindex(order)
    names = [f"member {m}" for m in order]
    scale = []
    for i in range(k):  # discrete colour bands, one per state
        c = STATE_COLORS[i % len(STATE_COLORS)]
        scale += [[i / k, c], [(i + 1) / k, c]]
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=grid.columns, y=names, colorscale=scale, zmin=-0.5, zmax=k - 0.5,
                               colorbar=dict(title="state", tickvals=list(range(k)),
                                             ticktext=[f"S{i}" for i in range(k)]),
                               hovertemplate="%{y}<br>step %{x}<br>state S%{z}<extra></extra>"))
    gx = [grokking_steps.get(m) for m in order]
    fig.add_trace(go.Scatter(x=[g for g in gx if not pd.isna(g)], y=[n for n, g in zip(names, gx) if not pd.isna(g)],
                             mode="markers", marker=dict(symbol="x", size=8, color="black"), name="grokking step"))
    fig.update_yaxes(autorange="reversed", title_text="member (ordered by grokking step)")
    fig.update_xaxes(title_text="step")
    lines = [] if labels is None else ["; ".join(f"S{j}: {labels[j]}" for j in range(i, min(i + 2, k)))
                                       for i in range(0, k, 2)]
    legend = "".join(f"<br><sup>{line}</sup>" for line in lines)
    fig.update_layout(title=title + legend, template="plotly_white", width=1100,
                      height=max(320, 140 + 22 * len(order) + 18 * len(lines)),
                      margin=dict(t=80 + 18 * len(lines)), legend=dict(orientation="h", y=-0.15))
    return fig


# --- populations of runs ---


def generalisation_gap_area(metrics: pd.DataFrame, title: str = "generalisation gap",
                            marks: dict[str, float] | None = None) -> go.Figure:
    """Train accuracy - test accuracy against step, the area under it shaded (seed 001's
    generalisation gap); ``marks``: labelled vertical lines (memorised, grokked)."""
    m = metrics.sort_values("step")
    gap = m["train_acc"] - m["test_acc"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=m["step"], y=m["train_acc"], name="train accuracy", line=dict(color=COLORS["train"])))
    fig.add_trace(go.Scatter(x=m["step"], y=m["test_acc"], name="test accuracy", line=dict(color=COLORS["test"])))
    fig.add_trace(go.Scatter(x=m["step"], y=gap, name="gap (train - test)", fill="tozeroy",
                             line=dict(color=COLORS["other"], width=1), fillcolor="rgba(127,127,127,0.35)"))
    for label, step in (marks or {}).items():
        if step is not None:
            fig.add_vline(x=step, line=dict(color=COLORS["other"], dash="dash", width=1),
                          annotation_text=label, annotation_position="top")
    fig.update_yaxes(range=[-0.02, 1.05], title_text="accuracy")
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=title, template="plotly_white", width=800, height=420, legend=dict(orientation="h", y=-0.2))
    return fig


def population_summary(summary: pd.DataFrame, field: str | None = None, title: str = "population",
                       published: pd.DataFrame | None = None) -> go.Figure:
    """Left: median delay (grokking - memorisation step) per value of the swept field with its
    interquartile band; right: grok rate per value. ``summary`` is ``Population.summary``'s
    table; ``published`` (index: value, columns delay_median and/or grok_rate) is drawn as
    markers for comparison."""
    field = field or summary.index.name
    x = list(summary.index)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)
    xs = x if numeric else [str(v) for v in x]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("delay: median and IQR", "grok rate"),
                        horizontal_spacing=0.12)
    fig.add_trace(go.Scatter(x=xs + xs[::-1], y=list(summary["delay_q75"]) + list(summary["delay_q25"])[::-1],
                             fill="toself", fillcolor="rgba(31,119,180,0.2)", line=dict(width=0), mode="lines",
                             name="IQR", hoverinfo="skip"), row=1, col=1)
    fig.add_trace(go.Scatter(x=xs, y=summary["delay_median"], mode="lines+markers", name="median delay",
                             line=dict(color=COLORS["test"]),
                             customdata=summary[["n_delay", "n"]].to_numpy(),
                             hovertemplate="%{x}: %{y} steps (%{customdata[0]} of %{customdata[1]} members)"),
                  row=1, col=1)
    fig.add_trace(go.Bar(x=[str(v) for v in x], y=summary["grok_rate"], name="grok rate", marker_color=COLORS["train"],
                         text=[f"{a}/{b}" for a, b in zip(summary["n_grokked"], summary["n"])],
                         textposition="outside"), row=1, col=2)
    if published is not None:
        for col, name in ((1, "delay_median"), (2, "grok_rate")):
            px = list(published.index) if numeric and col == 1 else [str(v) for v in published.index]
            if name in published:
                fig.add_trace(go.Scatter(x=px, y=published[name], mode="markers", name=f"published {name}",
                                         marker=dict(symbol="x", size=10, color="black")), row=1, col=col)
    fig.update_xaxes(title_text=field)
    fig.update_xaxes(type="category", row=1, col=2)
    fig.update_yaxes(title_text="steps", row=1, col=1)
    fig.update_yaxes(title_text="fraction grokked", range=[0, 1.15], row=1, col=2)
    fig.update_layout(title=title, template="plotly_white", width=1000, height=420, legend=dict(orientation="h", y=-0.25))
    return fig


def population_curves(curves: dict[str, pd.DataFrame], columns: tuple[str, ...] = ("test_acc",),
                      titles: tuple[str, ...] | None = None, title: str = "members", x: str = "step",
                      x_scale: float = 1.0, x_title: str = "step", log: tuple[str, ...] = (),
                      by_seed: bool = True) -> go.Figure:
    """One line per member (``curves``: label -> its metrics table), one panel per column
    (e.g. test accuracy and weight norm); members with the same label prefix before " seed"
    share a colour (``by_seed=False``: a colour per member). ``x_scale`` rescales the x axis
    (e.g. 0.1 for epochs of 10 steps); the panels of ``log`` columns have a log y axis."""
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    group_of = (lambda label: label.split(" seed")[0]) if by_seed else (lambda label: label)
    groups = list(dict.fromkeys(group_of(label) for label in curves))
    fig = make_subplots(rows=1, cols=len(columns), subplot_titles=titles or columns, horizontal_spacing=0.1)
    for label, m in curves.items():
        g = group_of(label)
        color = palette[groups.index(g) % len(palette)]
        for col, c in enumerate(columns, start=1):
            fig.add_trace(go.Scatter(x=m[x] * x_scale, y=m[c], name=label, legendgroup=g, showlegend=col == 1,
                                     line=dict(color=color, width=1.5)), row=1, col=col)
    for col, c in enumerate(columns, start=1):
        if c in log:
            fig.update_yaxes(type="log", exponentformat="power", row=1, col=col)
    fig.update_xaxes(title_text=x_title)
    fig.update_layout(title=title, template="plotly_white", width=520 * len(columns), height=430,
                      legend=dict(orientation="h", y=-0.22))
    return fig


# --- optimizer dynamics ---


def _mark_steps(fig: go.Figure, marks: dict | None, rows: int):
    for label, step in (marks or {}).items():
        if step is None:
            continue
        for r in range(1, rows + 1):
            fig.add_vline(x=step, line=dict(color=COLORS["other"], dash="dash", width=1), row=r, col=1)
        fig.add_annotation(x=step, y=1.0, yref="paper", yanchor="bottom", text=label, showarrow=False,
                           font=dict(size=10))


def dynamics_geometry(metrics: pd.DataFrame, dynamics: pd.DataFrame, marks: dict | None = None,
                      title: str = "what the geometry is doing") -> go.Figure:
    """Seed 004's per-run figure on one step axis: train/test accuracy (``metrics.csv``), the
    Hessian's top eigenvalue (log scale), gradient agreement and momentum cosine, and the
    effective rank of per-sample gradients (``dynamics.csv`` columns, where present); ``marks``:
    labelled vertical lines (memorisation and grokking steps)."""
    panels = [("accuracy", None)]
    if "hessian_top" in dynamics:
        panels.append(("Hessian top eigenvalue", "hessian_top"))
    if "agreement" in dynamics or "momentum_cos" in dynamics:
        panels.append(("cosine", "cos"))
    if "grad_erank" in dynamics:
        panels.append(("effective rank of per-sample gradients", "grad_erank"))
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=[p[0] for p in panels])
    for split in ("train", "test"):
        fig.add_trace(go.Scatter(x=metrics["step"], y=metrics[f"{split}_acc"], name=f"{split} accuracy",
                                 line=dict(color=COLORS[split])), row=1, col=1)
    fig.update_yaxes(range=[-0.02, 1.02], title_text="accuracy", row=1, col=1)
    for row, (_, col) in enumerate(panels[1:], start=2):
        if col == "cos":
            for name, color, label in (("agreement", COLORS["restricted"], "gradient agreement (two halves)"),
                                       ("momentum_cos", COLORS["excluded"], "cos(exp_avg, gradient)")):
                if name in dynamics:
                    fig.add_trace(go.Scatter(x=dynamics["step"], y=dynamics[name], name=label,
                                             line=dict(color=color)), row=row, col=1)
            fig.add_hline(y=0, line=dict(color=COLORS["other"], width=1), row=row, col=1)
            fig.update_yaxes(range=[-1.05, 1.05], title_text="cosine", row=row, col=1)
        else:
            fig.add_trace(go.Scatter(x=dynamics["step"], y=dynamics[col], name=col,
                                     line=dict(color=COLORS["other"] if col == "grad_erank" else "#ff7f0e")),
                          row=row, col=1)
            if col == "hessian_top":
                fig.update_yaxes(type="log", exponentformat="power", title_text="lambda_max", row=row, col=1)
            else:
                fig.update_yaxes(title_text="erank", row=row, col=1)
    _mark_steps(fig, marks, len(panels))
    fig.update_xaxes(title_text="step", row=len(panels), col=1)
    fig.update_layout(title=title, template="plotly_white", width=900, height=230 * len(panels) + 120,
                      legend=dict(orientation="h", y=-0.08))
    return fig


def limit_cycle_figure(series: dict[str, pd.DataFrame], grokked: dict[str, int | None],
                       title: str = "after grokking: test accuracy and weight norm") -> go.Figure:
    """Test accuracy and weight norm sqrt(weight_sq) after each run's grokking step, one trace
    per run (``series``: label -> metrics table; ``grokked``: label -> its grokking step);
    x is steps since grokking. Runs that never grokked are left out (named in the legend)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("test accuracy", "weight norm"))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    for i, (label, m) in enumerate(series.items()):
        g = grokked.get(label)
        color = palette[i % len(palette)]
        if g is None:
            fig.add_trace(go.Scatter(x=[None], y=[None], name=f"{label} (never grokked)", line=dict(color=color)),
                          row=1, col=1)
            continue
        w = m[m["step"] >= g]
        fig.add_trace(go.Scatter(x=w["step"] - g, y=w["test_acc"], name=label, legendgroup=label,
                                 line=dict(color=color)), row=1, col=1)
        fig.add_trace(go.Scatter(x=w["step"] - g, y=w["weight_sq"] ** 0.5, name=label, legendgroup=label,
                                 showlegend=False, line=dict(color=color)), row=2, col=1)
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="||theta||", row=2, col=1)
    fig.update_xaxes(title_text="steps after grokking", row=2, col=1)
    fig.update_layout(title=title, template="plotly_white", width=900, height=600, legend=dict(orientation="h", y=-0.15))
    return fig


def dips_vs_gap_scatter(table: pd.DataFrame, r: float | None = None, n: int | None = None, p: float | None = None,
                        title: str = "agreement dips vs grokking gap", rate=None) -> go.Figure:
    """One point per run: count of gradient-agreement dips (x) against the grokking gap
    (``delay``: grokked - memorised step, y), with Pearson r, n and p in the title. With
    ``rate`` (a ``cycles.Correlation``) and an ``agreement_dips_per_100_steps`` column, a
    second panel plots the dip rate against the gap: the control for window length."""
    text = [str(v) for v in table.get("run", [""] * len(table))]
    stats = "" if r is None else f" (Pearson r = {r:.3f}, n = {n}, p = {p:.3g})"
    two = rate is not None and "agreement_dips_per_100_steps" in table
    fig = make_subplots(rows=1, cols=2 if two else 1, subplot_titles=(
        [f"count: r = {r:.2f}" if r is not None else "count",
         f"per 100 probed steps: r = {rate.r:.2f}, p = {rate.p:.2g}"] if two else None))
    fig.add_trace(go.Scatter(x=table["agreement_dips"], y=table["delay"], mode="markers", text=text, name="count",
                             hovertemplate="%{text}<br>dips %{x}, gap %{y}", marker=dict(color=COLORS["train"])),
                  row=1, col=1)
    fig.update_xaxes(title_text="agreement dips", row=1, col=1)
    fig.update_yaxes(title_text="grokking gap (steps)", row=1, col=1)
    if two:
        fig.add_trace(go.Scatter(x=table["agreement_dips_per_100_steps"], y=table["delay"], mode="markers", text=text,
                                 name="rate", hovertemplate="%{text}<br>%{x:.2f} dips / 100 steps, gap %{y}",
                                 marker=dict(color=COLORS["test"])), row=1, col=2)
        fig.update_xaxes(title_text="agreement dips per 100 probed steps", row=1, col=2)
    fig.update_layout(title=title + stats, template="plotly_white", width=1100 if two else 700, height=480,
                      showlegend=False)
    return fig



# --- (a, b) grids: the TL Grokking demo's attention and neuron figures ---


def _grid_figure(grids, titles: list[str], cols: int, title: str, colorbar: str | None, zmin=None, zmax=None,
                 colorscale: str = "RdBu_r") -> go.Figure:
    """One heatmap per ``grids[i]`` (a p x p array: rows a, columns b), ``cols`` to a row. With
    ``colorbar`` every panel shares one colour scale (zmin..zmax); without, each panel has its
    own (neurons differ in scale by orders of magnitude; hover shows the values)."""
    rows = -(-len(grids) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.04,
                        vertical_spacing=0.3 / rows)
    for i, g in enumerate(grids):
        shared = dict(coloraxis="coloraxis") if colorbar else dict(colorscale=colorscale, showscale=False)
        fig.add_trace(go.Heatmap(z=g, hovertemplate="a=%{y}, b=%{x}: %{z:.3g}<extra></extra>", **shared),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(title_text="a", col=1)
    fig.update_xaxes(title_text="b", row=rows)
    fig.update_layout(title=title, template="plotly_white", width=260 * cols + 160, height=260 * rows + 130)
    if colorbar:
        fig.update_layout(coloraxis=dict(colorscale=colorscale, cmin=zmin, cmax=zmax, colorbar=dict(title=colorbar)))
    return fig


def attention_grid_figure(grids, positions: tuple[str, ...] = ("a", "b"), title: str = "attention from '='"
                          ) -> go.Figure:
    """Per head (rows), the attention of the ``=`` position to each of ``positions`` (columns;
    0 = a, 1 = b) over the (a, b) grid: ``grids[head, position]`` (``fourier.attention_grids``)."""
    heads, k = len(grids), len(positions)
    panels = [grids[h][j] for h in range(heads) for j in range(k)]
    titles = [f"head {h}: '=' -> {positions[j]}" for h in range(heads) for j in range(k)]
    return _grid_figure(panels, titles, k, title, "attention", zmin=0.0, zmax=1.0, colorscale="Viridis")


def neuron_grid_figure(grids, neurons: list[int], title: str = "neuron activations") -> go.Figure:
    """The activation of each neuron over the (a, b) grid (``grids[i]`` for neuron
    ``neurons[i]``: ``fourier.neuron_grids``), up to 4 panels a row."""
    return _grid_figure(list(grids), [f"neuron {n}" for n in neurons], min(4, len(neurons)), title, None)
