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
