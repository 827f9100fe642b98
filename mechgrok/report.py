"""The reporting layer: tables and figures written from what the measures return. Measures
and trainers compute and return data; this module (and the CLI above it) writes files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from . import plots
from .milestones import transition_metrics
from .progress import analysis_figures
from .runs import Run


def draw_figures(run: Run, analysis: bool = True, png: bool = True, progress: bool = False) -> list[Path]:
    """(Re)draw a run's figures from its files: the training curve from ``metrics.csv`` and,
    with ``analysis`` and a ``progress.csv`` + ``phases.json`` from ``mechgrok analyze``, the
    analysis figures (``progress.analysis_figures``), e.g. after installing Chromium for PNGs.
    ``progress``: a bar over the figures (PNG export takes seconds each). Returns the files written."""
    figures = {}
    m = run.metrics
    if len(m):
        tr = transition_metrics(m)
        figures["training_curve"] = plots.training_curve(
            m, title=f"{run.path.name}: {run.task.describe()}",
            marks={"memorised": tr.memorised_step, "grokked": tr.grokked_step})
    table_file, phases_file = run.path / "progress.csv", run.path / "phases.json"
    if analysis and table_file.exists() and phases_file.exists():
        table = pd.read_csv(table_file)
        ph = json.loads(phases_file.read_text())
        table.attrs.update(key_freqs=ph["key_freqs"], basis=ph["basis"], level=ph.get("level"))
        figures |= analysis_figures(run, table)
    written = []
    for stem, fig in tqdm(figures.items(), desc="figures", unit="fig", disable=not progress, dynamic_ncols=True):
        written += plots.save_figure(fig, run.path / stem, png=png)
    return written
