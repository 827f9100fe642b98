"""What ``mechgrok analyze`` computes for one run: the progress measures of Nanda et al. where
the task has a Fourier basis (``progress.measure_run``, ``progress.phases``, the final
checkpoint's neuron frequencies), the generic measures where it has none, and any further
measures a user asks for (``measures.resolve``). Returns data; ``report.analysis`` writes it."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from . import fourier
from .evaluation import check_recorded_metrics
from .measures import add_columns, generic_series, measure_series
from .milestones import transition_metrics
from .progress import Phases, measure_run, phases


@dataclass(frozen=True)
class Analysis:
    """What ``analyze`` returns: the table (one row per checkpoint; ``attrs``: ``key_freqs``,
    ``basis``, ``level``, or ``fourier=False`` and ``note`` for a task without a Fourier basis),
    its ``Phases``, and the final checkpoint's neuron frequencies (None without a basis)."""

    table: pd.DataFrame
    phases: "Phases"
    neurons: object | None
    level: str = "logits"

    @property
    def fourier(self) -> bool:
        return self.table.attrs.get("fourier", True) is not False

    def summary(self) -> dict:
        """``phases.json``: key frequencies, basis, level, final step, and the phases."""
        return ({"key_freqs": self.table.attrs["key_freqs"], "basis": self.table.attrs["basis"],
                 "level": self.level, "final_step": int(self.table["step"].iloc[-1])} | self.phases.to_dict())


def analyze(run, freqs: list[int] | None = None, steps: list[int] | None = None, level: str = "logits",
            basis: str = "auto", key_rule: str = "neurons", measures=(), progress: bool = True) -> Analysis:
    """Measure the checkpoints of ``run`` (``progress.measure_run``), its phases (``progress.phases``) and the
    final checkpoint's neuron frequencies; ``measures``: more measures (``measures.resolve``
    specs or callables) whose columns join the table (``measures.measure_series``).

    A task without a Fourier basis (a table that is not addition mod n, parity) gets the
    non-Fourier measures instead (``measures.generic_series``); its ``Phases`` carries the transition
    metrics only (no boundaries), and ``table.attrs["note"]`` says what was skipped and why.
    ``report.analysis`` writes what this returns.

    A run whose config.json contradicts its metrics.csv (``evaluation.check_recorded_metrics``:
    a hand-edited split) is refused before anything is measured: every measure would be taken
    on another split than the training curve it is drawn against."""
    check_recorded_metrics(run)
    task, cfg = run.task, run.model_cfg
    if basis in fourier.BASES and fourier.fourier_unsupported(task, basis) is not None and freqs is None:
        table = generic_series(run, steps=steps, progress=progress)
        ph = Phases(transition_metrics(run.metrics), None, None, None, int(table["step"].iloc[-1]))
        nf = None
    else:
        table = measure_run(run, freqs=freqs, steps=steps, level=level, basis=basis, key_rule=key_rule,
                            progress=progress)
        ph = phases(table, run.metrics)
        nf = fourier.neuron_frequencies(run.params(int(table["step"].iloc[-1])), task, basis, cfg=cfg)
    if measures:
        table = add_columns(table, measure_series(run, measures, steps=table["step"].tolist(), progress=progress))
    return Analysis(table, ph, nf, level)
