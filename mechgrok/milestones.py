"""Milestones of a run, read from its evaluation rows (``metrics.csv``): when it memorised,
when it grokked, and the stop rule built on them. The one definition every trainer, command,
table and figure uses.

The transition metrics are M. Brenndoerfer's ("Grokking: How Neural Networks Suddenly Learn to
Generalize", 2025): memorised at the first evaluation with train accuracy above 0.99, grokked
at the first with test accuracy above 0.9 (strictly above).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from .choices import GROKKED_TEST_ACC, MEMORISED_TRAIN_ACC  # noqa: F401 (this module's thresholds)


@dataclass(frozen=True)
class Transitions:
    """Brenndoerfer's transition metrics of one run, read from its evaluation grid.

    ``memorised_step``: first evaluation with train accuracy > ``MEMORISED_TRAIN_ACC`` (0.99);
    ``grokked_step``: first with test accuracy > ``GROKKED_TEST_ACC`` (0.9); ``delay`` = grokked -
    memorised (negative when a run generalises before it memorises); ``max_acceleration_step``:
    where test accuracy's second derivative in steps is largest over the whole run (Brenndoerfer's
    definition; in many runs that is the small rise of test accuracy while the training
    set is memorised, long before grokking); ``grokking_acceleration_step``: the same restricted
    to the grokking transition (``grokking_window``: from memorisation to the grokking step),
    the one ``mechgrok info`` shows; ``final_gap``: train - test accuracy at the last
    evaluation; ``grokked``: grokked within the run's budget. None where the run does not show
    it."""

    memorised_step: int | None
    grokked_step: int | None
    delay: int | None
    max_acceleration_step: int | None
    final_gap: float | None
    grokked: bool
    last_step: int | None
    grokking_acceleration_step: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _first(mask: np.ndarray, steps: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(steps[hits[0]]) if len(hits) else None


def max_acceleration_step(steps, values, window: tuple[int, int] | None = None) -> int | None:
    """Step where ``values``' second derivative with respect to the step is largest (among the
    steps inside ``window``, both ends included, when given). Derivatives are divided
    differences (slopes between evaluations, then slopes of those between interval midpoints),
    so uneven evaluation spacing does not bias the argmax; on an even grid this is the argmax of
    the second difference. None without an interior evaluation (in the window)."""
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if len(s) < 3:
        return None
    slope = np.diff(v) / np.diff(s)
    mid = (s[:-1] + s[1:]) / 2
    curvature = np.diff(slope) / np.diff(mid)
    inner = s[1:-1]
    if window is not None:
        keep = (inner >= window[0]) & (inner <= window[1])
        if not keep.any():
            return None
        inner, curvature = inner[keep], curvature[keep]
    return int(inner[np.argmax(curvature)])


def grokking_window(memorised: int | None, grokked: int | None, first_step: int) -> tuple[int, int] | None:
    """The steps of the grokking transition: from the memorisation step (or the run's first
    evaluation, when it generalises before it memorises) to the grokking step. Before it, test
    accuracy's sharpest bend is often the memorisation bump; after it, the oscillations of a
    grokked run. None when the run has not grokked."""
    if grokked is None:
        return None
    start = memorised if memorised is not None and memorised <= grokked else first_step
    return start, grokked


def transition_metrics(metrics: pd.DataFrame, memorised_above: float = MEMORISED_TRAIN_ACC,
                       grokked_above: float = GROKKED_TEST_ACC) -> Transitions:
    """The transition metrics of a run's ``metrics.csv`` table (``run.metrics``: columns step,
    train_acc, test_acc). The one definition every command and table uses."""
    m = metrics.sort_values("step")
    if not len(m):
        return Transitions(None, None, None, None, None, False, None)
    steps, train, test = m["step"].to_numpy(), m["train_acc"].to_numpy(), m["test_acc"].to_numpy()
    mem, grok = _first(train > memorised_above, steps), _first(test > grokked_above, steps)
    window = grokking_window(mem, grok, int(steps[0]))
    return Transitions(mem, grok, None if None in (mem, grok) else grok - mem, max_acceleration_step(steps, test),
                       float(train[-1] - test[-1]), grok is not None, int(steps[-1]),
                       None if window is None else max_acceleration_step(steps, test, window))


def final_metrics(metrics: pd.DataFrame) -> dict[str, float]:
    """Loss and accuracy at a run's last evaluation (NaN before the first)."""
    m = metrics.sort_values("step")
    keys = ("train_loss", "test_loss", "train_acc", "test_acc")
    return {k: float(m[k].iloc[-1]) if len(m) else float("nan") for k in keys}


def grokked_step(rows: Iterable[Mapping], above: float = GROKKED_TEST_ACC) -> int | None:
    """Step of the first evaluation row with test accuracy above ``above`` (None: not yet)."""
    return next((int(r["step"]) for r in rows if r["test_acc"] > above), None)


def should_stop(rows: list[Mapping], stop_after_grok: int | None) -> bool:
    """The stop rule: whether a run with these evaluation rows has had ``stop_after_grok``
    evaluations since the first one with test accuracy above ``GROKKED_TEST_ACC``."""
    if stop_after_grok is None:
        return False
    grok = next((i for i, r in enumerate(rows) if r["test_acc"] > GROKKED_TEST_ACC), None)
    return grok is not None and len(rows) - 1 - grok >= stop_after_grok


def drops_after_grok(metrics: pd.DataFrame, below: float = 0.5, grokked_above: float = GROKKED_TEST_ACC) -> list[dict]:
    """Episodes after a run first grokked in which test accuracy fell below ``below`` again:
    runs of consecutive evaluations under it, each as ``start`` / ``end`` (first and last step
    under it), ``min_test_acc`` and ``min_train_acc`` over the episode (train accuracy falling
    with it says the fit itself broke, not only generalisation). Empty when it never grokked."""
    m = metrics.sort_values("step")
    grok = _first(m["test_acc"].to_numpy() > grokked_above, m["step"].to_numpy())
    if grok is None:
        return []
    after = m[m["step"] > grok]
    under = (after["test_acc"] < below).to_numpy()
    episode = np.cumsum(np.diff(np.r_[0, under.astype(int)]) == 1)  # a new id at every fall under
    out = []
    for k in np.unique(episode[under]):
        e = after[under & (episode == k)]
        out.append({"start": int(e["step"].iloc[0]), "end": int(e["step"].iloc[-1]),
                    "min_test_acc": float(e["test_acc"].min()), "min_train_acc": float(e["train_acc"].min())})
    return out
