"""Figures (plotly). Functions here take numbers that other modules computed and return a
``go.Figure``; ``save_figure`` writes HTML always and PNG when a browser is available."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORS = {"train": "#1f77b4", "test": "#d62728", "restricted": "#2ca02c", "excluded": "#9467bd",
          "other": "#7f7f7f"}


def save_figure(fig: go.Figure, stem: str | Path, png: bool = True, scale: float = 2.0) -> list[Path]:
    """Write ``stem.html`` and, if possible, ``stem.png``; return the files written.

    PNG export needs kaleido and a Chromium it can drive. Without one this warns and keeps the
    HTML: a missing browser must never cost a researcher the run that made the figure.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html = stem.with_suffix(".html")
    fig.write_html(html, include_plotlyjs="cdn")
    written = [html]
    if png:
        try:
            fig.write_image(stem.with_suffix(".png"), scale=scale)
            written.append(stem.with_suffix(".png"))
        except Exception as e:  # kaleido raises several types for "no browser"
            warnings.warn(f"PNG export skipped for {stem.name} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); the HTML figure is at {html}. "
                          f"Install Chromium (apt-get install chromium) for PNGs.", stacklevel=2)
    return written


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


# --- Fourier analysis and progress measures (issue 3) -------------------------------------

PHASE_COLORS = {"memorisation": "#1f77b4", "circuit formation": "#ff7f0e", "cleanup": "#2ca02c"}


def _shade_phases(fig: go.Figure, phases: dict[str, tuple[float, float] | None] | None, legend: bool = True,
                  **where):
    """Shade labelled step intervals (``Phases.boundaries()``) on ``fig``; the names go in the
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


def spectrum_evolution(steps, norms, key_freqs=(), title: str = "embedding spectrum over training",
                       zlabel: str = "norm of W_E") -> go.Figure:
    """Heat map of a norm per frequency (columns k = 0 ..) at each step (rows)."""
    import numpy as np

    norms = np.asarray(norms)
    fig = go.Figure(go.Heatmap(z=norms.T, x=list(steps), y=list(range(norms.shape[1])), colorscale="Viridis",
                               colorbar=dict(title=zlabel),
                               hovertemplate="step %{x}<br>k=%{y}<br>%{z:.3g}<extra></extra>"))
    for k in key_freqs:
        fig.add_annotation(x=0, xref="paper", xanchor="right", y=int(k), text=f"{int(k)} ▶", showarrow=False,
                           font=dict(size=9, color=COLORS["test"]))
    fig.update_layout(title=title, template="plotly_white", width=1000, height=480, xaxis_title="step",
                      yaxis_title="frequency k")
    return fig


# --- interventions (issue 4) ------------------------------------------------------------------


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
    fig.update_yaxes(title_text="grokking step (first eval with test acc > 0.9)")
    fig.update_layout(title=title, template="plotly_white", width=700, height=450, showlegend=False)
    return fig
