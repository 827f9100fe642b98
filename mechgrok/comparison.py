"""A few runs side by side: what differs in their settings, and when each memorised and grokked.

``compare(runs)`` is the table (one row per run: its label, the settings that differ between the
runs, the transition metrics of ``milestones`` and the final losses and accuracies);
``curves``/``progress_tables`` are what ``report.compare`` overlays in its figures. Computing
only: ``report.compare`` writes the table and draws the figures, ``mechgrok compare`` prints it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from .milestones import final_metrics, transition_metrics
from .presets import _current, sweepable_fields
from .runs import Run, find_runs

PROGRESS_FILE = "progress.csv"  # written by `mechgrok analyze` (report.analysis)
TRANSITION_COLUMNS = ["memorised_step", "grokked_step", "delay", "grokked", "max_acceleration_step", "final_gap",
                      "last_step"]
FINAL_COLUMNS = ["final_train_loss", "final_test_loss", "final_train_acc", "final_test_acc"]
# settings never shown as a difference: "seed" is model_seed under another name; a table task's
# table is too long to print (its op and p still show)
_HIDDEN = {"seed", "table"}


def load_runs(runs: Sequence[Run | str | os.PathLike]) -> list[Run]:
    """Runs from ``Run`` objects or paths; a path that holds runs (a sweep) gives each of them."""
    out: list[Run] = []
    for r in runs:
        out += [r] if isinstance(r, Run) else find_runs(r)
    if not out:
        raise ValueError("compare needs at least one run")
    return out


def _show(v) -> str:
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return text if len(text) <= 24 else text[:21] + "..."


def differing_settings(runs: Sequence[Run]) -> dict[str, list]:
    """The settings (by their ``--set``/``configure`` names, seeds as task_seed/model_seed/
    train_seed) whose values are not the same in every run: name -> one value per run."""
    names = [n for n in sweepable_fields() if n not in _HIDDEN]
    values = {n: [_current(r.config, n) for r in runs] for n in names}
    return {n: v for n, v in values.items() if len({repr(x) for x in v}) > 1}


def _names(runs: Sequence[Run]) -> list[str]:
    """Each run's directory name, or its path where two runs share a name."""
    names = [r.path.name for r in runs]
    return [str(r.path) if names.count(n) > 1 else n for r, n in zip(runs, names)]


def compare(runs: Sequence[Run | str | os.PathLike]) -> pd.DataFrame:
    """One row per run: ``run`` (name), ``label`` (name and the settings that differ, as the
    figures' legends show it), one column per differing setting, the transition metrics
    (``milestones.transition_metrics``: memorised_step, grokked_step, delay, grokked,
    max_acceleration_step, final_gap, last_step), the last evaluation's losses and accuracies
    (``milestones.final_metrics``), ``analysed`` (whether ``mechgrok analyze`` wrote its
    progress.csv) and ``path``. ``table.attrs["fields"]``: the differing settings."""
    runs = load_runs(runs)
    diff = differing_settings(runs)
    rows = []
    for i, (run, name) in enumerate(zip(runs, _names(runs))):
        m = run.metrics
        setting = {n: v[i] for n, v in diff.items()}
        label = name + (" (" + ", ".join(f"{n}={_show(v)}" for n, v in setting.items()) + ")" if setting else "")
        tr = transition_metrics(m).to_dict()
        final = {f"final_{k}": v for k, v in final_metrics(m).items()}
        rows.append({"run": name, "label": label, **setting, **{c: tr[c] for c in TRANSITION_COLUMNS}, **final,
                     "analysed": (run.path / PROGRESS_FILE).is_file(), "path": str(run.path)})
    table = pd.DataFrame(rows)
    for c in ("memorised_step", "grokked_step", "delay", "max_acceleration_step", "last_step"):
        table[c] = table[c].astype("Int64")  # integer steps, <NA> where not reached
    table.attrs["fields"] = list(diff)
    return table


def curves(runs: Sequence[Run | str | os.PathLike], table: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """label -> the run's evaluation rows (``metrics.csv``), labels as in ``compare``."""
    runs = load_runs(runs)
    table = compare(runs) if table is None else table
    return {label: run.metrics for label, run in zip(table["label"], runs)}


def progress_tables(runs: Sequence[Run | str | os.PathLike], table: pd.DataFrame | None = None
                    ) -> dict[str, pd.DataFrame]:
    """label -> the run's progress measures (``progress.csv`` from ``mechgrok analyze``), for the
    runs that have them; ``table.analysed`` says which do not."""
    runs = load_runs(runs)
    table = compare(runs) if table is None else table
    return {label: pd.read_csv(run.path / PROGRESS_FILE)
            for label, run, done in zip(table["label"], runs, table["analysed"]) if done}
