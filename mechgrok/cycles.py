"""Time-series statistics of a run's rows: the limit cycle after grokking (over
``metrics.csv``), agreement dips and their correlation with the grokking gap (over the
``dynamics.csv`` rows of the optimizer-dynamics measures, ``dynamics.py``), and the per-run
summary of those series. Pure functions of tables; ``report.dynamics`` writes what they return.

Limit cycle and agreement dips
------------------------------
``limit_cycle`` looks after the grokking step (``milestones.transition_metrics``) at test
accuracy and the weight norm sqrt(weight_sq): each series is resampled to a uniform step grid,
its quadratic trend removed, and its autocorrelation computed; the period is the lag of the
highest autocorrelation peak after the first zero crossing. A series oscillates when that peak
is >= ``min_acf`` (0.3), at least two periods fit in the window, and the amplitude (half the
5-95 percentile range of the detrended series) is at least ``min_amplitude`` (test accuracy:
0.01; weight norm: 0.1% of its mean). Collapses: downward crossings of test accuracy below
``collapse_below`` (0.5) after grokking. Otherwise the answer is "none" -- unless the window
after grokking spans fewer than ``min_window`` steps (300: two periods of the ~150 steps seed
004 reports), where an absent oscillation says nothing and the answer is "too short".

An agreement dip is a local minimum of the probed agreement series with topographic
prominence >= ``prominence`` (0.1, cosine units; ``scipy.signal.find_peaks`` on the negated
series): a drop of at least 0.1 below the lower of the two neighbouring maxima between which
it lies. ``dips_vs_gap`` correlates the count per run with the grokking gap (grokked_step -
memorised_step) over a population: Pearson r, n, two-sided p (``scipy.stats.pearsonr``).
A count depends on the window it is taken over, and a run stopped soon after grokking (or the
plateau itself) is longer when the gap is; ``dips_vs_gap_all`` therefore also correlates the
gap with the dips between memorisation and grokking and with two rates, dips per 100 probed
steps and per 100 steps of the plateau, which a constant rate of dips leaves uncorrelated
with the gap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .runs import read_dynamics


# --- limit cycle after grokking -----------------------------------------------------------


@dataclass(frozen=True)
class Oscillation:
    """One series' oscillation: ``period`` (steps) and ``amplitude`` (half the 5-95 percentile
    range of the detrended series), or None when there is none; ``acf_peak``: the
    autocorrelation at the period (NaN when there is no peak)."""

    period: float | None
    amplitude: float | None
    acf_peak: float

    @property
    def found(self) -> bool:
        return self.period is not None


def oscillation(steps, values, min_acf: float = 0.3, min_amplitude: float = 0.0, min_cycles: float = 2.0
                ) -> Oscillation:
    """Period and amplitude of an oscillation in ``values`` over ``steps`` (see the module
    docstring for the rule); ``Oscillation(None, None, nan)`` when there is none."""
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(v)
    s, v = s[keep], v[keep]
    none = Oscillation(None, None, float("nan"))
    if len(s) < 8:
        return none
    dt = float(np.median(np.diff(s)))
    grid = np.arange(s[0], s[-1] + dt / 2, dt)
    u = np.interp(grid, s, v)
    t = (grid - grid.mean()) / max(grid.std(), 1e-12)
    r = u - np.polyval(np.polyfit(t, u, 2), t)
    if r.std() < 1e-12 * max(1.0, abs(u).max()):
        return none
    r = r - r.mean()
    acf = np.correlate(r, r, mode="full")[len(r) - 1:] / (r @ r)
    below = np.flatnonzero(acf < 0)
    if not len(below):
        return none
    from scipy.signal import find_peaks

    peaks, _ = find_peaks(acf[below[0]:])
    if not len(peaks):
        return none
    lags = peaks + below[0]
    best = lags[np.argmax(acf[lags])]
    period, peak = best * dt, float(acf[best])
    amplitude = float(np.percentile(r, 95) - np.percentile(r, 5)) / 2
    if peak < min_acf or amplitude < min_amplitude or (grid[-1] - grid[0]) < min_cycles * period:
        return Oscillation(None, None, peak)
    return Oscillation(float(period), amplitude, peak)


@dataclass(frozen=True)
class LimitCycle:
    """What happens after grokking. ``verdict``: "none", "oscillation" (test accuracy or weight
    norm oscillates without collapsing), "collapses" (test accuracy falls below the threshold
    again), "too short" (no oscillation, but the window is too short to rule one out), or
    "not grokked"."""

    verdict: str
    grokked_step: int | None
    window: tuple[int, int] | None
    test_acc: Oscillation | None
    weight_norm: Oscillation | None
    collapses: int
    collapse_below: float

    def to_dict(self) -> dict:
        d = {"verdict": self.verdict, "grokked_step": self.grokked_step, "collapses": self.collapses,
             "window_start": self.window[0] if self.window else None,
             "window_end": self.window[1] if self.window else None}
        for name in ("test_acc", "weight_norm"):
            o = getattr(self, name)
            d |= {f"{name}_period": o.period if o else None, f"{name}_amplitude": o.amplitude if o else None,
                  f"{name}_acf_peak": o.acf_peak if o else None}
        return d


def limit_cycle(run_or_metrics, collapse_below: float = 0.5, min_acf: float = 0.3,
                min_acc_amplitude: float = 0.01, min_norm_amplitude: float = 1e-3,
                after: int | None = None, min_window: int = 300) -> LimitCycle:
    """Oscillation of test accuracy and weight norm after the grokking step (or ``after``) of a
    run (or its ``metrics`` table): period by autocorrelation, amplitude, and collapses (test
    accuracy falling below ``collapse_below`` again). ``min_norm_amplitude`` is relative to the
    mean weight norm. Says "none" when neither series oscillates and nothing collapses over at
    least ``min_window`` steps after grokking ("too short" over fewer)."""
    from .milestones import transition_metrics

    m = run_or_metrics.metrics if hasattr(run_or_metrics, "metrics") else run_or_metrics
    m = m.sort_values("step")
    start = after if after is not None else transition_metrics(m).grokked_step
    if start is None:
        return LimitCycle("not grokked", None, None, None, None, 0, collapse_below)
    w = m[m["step"] >= start]
    steps, acc = w["step"].to_numpy(), w["test_acc"].to_numpy()
    norm = np.sqrt(w["weight_sq"].to_numpy())
    osc_acc = oscillation(steps, acc, min_acf, min_acc_amplitude)
    osc_norm = oscillation(steps, norm, min_acf, min_norm_amplitude * float(np.mean(norm)) if len(norm) else 0)
    above = acc >= collapse_below
    collapses = int(np.sum(above[:-1] & ~above[1:]))
    window = (int(steps[0]), int(steps[-1])) if len(steps) else None
    short = window is None or window[1] - window[0] < min_window
    verdict = ("collapses" if collapses else "oscillation" if osc_acc.found or osc_norm.found
               else "too short" if short else "none")
    return LimitCycle(verdict, None if after is not None else start, window, osc_acc, osc_norm, collapses,
                      collapse_below)


# --- agreement dips and the grokking gap --------------------------------------------------


def agreement_dips(steps, agreement, prominence: float = 0.1, until: int | None = None,
                   since: int | None = None) -> list[int]:
    """Steps of the dips of an agreement series: local minima with prominence >= ``prominence``
    (scipy.signal.find_peaks on the negated series over the whole series), optionally only
    those at steps in [``since``, ``until``]."""
    from scipy.signal import find_peaks

    s, a = np.asarray(steps, dtype=float), np.asarray(agreement, dtype=float)
    keep = np.isfinite(a) & (s <= until if until is not None else True)
    s, a = s[keep], a[keep]
    if len(a) < 3:
        return []
    idx, _ = find_peaks(-a, prominence=prominence)
    return [int(s[i]) for i in idx if since is None or s[i] >= since]


MIN_PAIRS = 3  # Pearson's p needs n - 2 >= 1 degrees of freedom; with 2 points r is always +-1


@dataclass(frozen=True)
class Correlation:
    """Pearson r, n and p; ``note``: why r and p are NaN (too few pairs, or no variation),
    empty when they are not."""

    r: float
    n: int
    p: float
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """"r = 0.512, n = 8, p = 0.195", or the note saying why there is no r (naming n)."""
        return self.note or f"r = {self.r:.3f}, n = {self.n}, p = {self.p:.3g}"


def pearson(x, y) -> Correlation:
    """Pearson r, n and two-sided p (scipy.stats.pearsonr) over the pairs where both are finite."""
    from scipy.stats import pearsonr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    if n < MIN_PAIRS:
        return Correlation(float("nan"), n, float("nan"),
                           f"r: n too small (n={n}; needs at least {MIN_PAIRS} runs with both values)")
    if np.std(x[keep]) == 0 or np.std(y[keep]) == 0:
        which = "the first" if np.std(x[keep]) == 0 else "the second"
        return Correlation(float("nan"), n, float("nan"),
                           f"r: none, {which} variable is the same in all {n} runs")
    res = pearsonr(x[keep], y[keep])
    return Correlation(float(res.statistic), n, float(res.pvalue))


def _at(dyn: pd.DataFrame, col: str, step: int | None) -> float:
    """``col`` at the probe nearest ``step`` (NaN without a step or a value)."""
    if step is None or col not in dyn or not len(dyn):
        return float("nan")
    return float(dyn[col].iloc[int(np.argmin(np.abs(dyn["step"].to_numpy() - step)))])


def series_summary(dyn: pd.DataFrame, memorised: int | None, grokked: int | None) -> dict:
    """What each probed series did around the transition (the numbers seed 004 quotes):
    ``hessian_rise`` = largest top eigenvalue / the first probe's, and where it peaked;
    ``hessian_lag`` = the grokking step - that peak's step (the decline's start);
    agreement at the first probe, at memorisation and at grokking; the mean (and least) momentum
    cosine between memorisation and grokking (``momentum_cos_plateau``); and ``erank_drop`` =
    1 - (least effective rank within one gap after grokking, [grokked, grokked + (grokked -
    memorised)]) / (median effective rank on the plateau [memorised, grokked])."""
    out: dict = {}
    if "hessian_top" in dyn and len(dyn):
        h = dyn["hessian_top"].to_numpy()
        i = int(np.nanargmax(h))
        out |= {"hessian_first": float(h[0]), "hessian_peak": float(h[i]),
                "hessian_peak_step": int(dyn["step"].iloc[i]), "hessian_rise": float(h[i] / h[0]),
                "hessian_at_grokked": _at(dyn, "hessian_top", grokked),
                "hessian_final": float(h[-1]),
                # seed 004: generalisation follows the curvature's decline at once with beta1 0,
                # ~400 steps later with beta1 0.9 (the momentum buffer catching up)
                "hessian_lag": None if grokked is None else grokked - int(dyn["step"].iloc[i])}
    if "agreement" in dyn and len(dyn):
        out |= {"agreement_first": float(dyn["agreement"].iloc[0]),
                "agreement_at_memorised": _at(dyn, "agreement", memorised),
                "agreement_at_grokked": _at(dyn, "agreement", grokked)}
    if "momentum_cos" in dyn and memorised is not None:
        end = grokked if grokked is not None else int(dyn["step"].max())
        w = dyn[(dyn["step"] >= memorised) & (dyn["step"] <= end)]["momentum_cos"]
        out |= {"momentum_cos_plateau": float(w.mean()) if len(w) else float("nan"),
                "momentum_cos_plateau_min": float(w.min()) if len(w) else float("nan")}
    if "grad_erank" in dyn and memorised is not None and grokked is not None and grokked > memorised:
        st, e = dyn["step"], dyn["grad_erank"]
        plateau = e[(st >= memorised) & (st <= grokked)]
        after = e[(st >= grokked) & (st <= 2 * grokked - memorised)]
        if len(plateau) and len(after):
            i = after.idxmin()
            out |= {"erank_plateau": float(plateau.median()), "erank_min_after_grokked": float(after.min()),
                    "erank_min_step": int(st[i]), "erank_drop": float(1 - after.min() / plateau.median())}
    return out


def erank_window_full(table: pd.DataFrame) -> pd.Series:
    """Per ``run_summary`` row: whether the run went on for the whole window ``erank_drop``
    looks in, one gap past grokking ([grokked, 2 grokked - memorised]); a run stopped soon after
    grokking (``--stop-after-grok``) sees only its start, where the rank may still be falling."""
    need = {"grokked_step", "memorised_step", "last_step"}
    if not need <= set(table):
        return pd.Series(False, index=table.index)
    g, m, last = (pd.to_numeric(table[c], errors="coerce") for c in ("grokked_step", "memorised_step", "last_step"))
    return (last >= 2 * g - m).fillna(False).astype(bool)


def run_summary(run, dyn: pd.DataFrame | None = None, prominence: float = 0.1) -> dict:
    """One row per run: transition metrics, the series summary (``series_summary``), agreement
    dips (count over the whole run, and up to the grokking step), and the limit cycle. ``dyn`` defaults to ``dynamics.csv``."""
    from .milestones import transition_metrics

    tr = transition_metrics(run.metrics)
    row = {"run": str(run.path), "weight_decay": run.config.train.weight_decay,
           "beta1": run.config.train.betas[0], **tr.to_dict()}
    dyn = read_dynamics(run) if dyn is None else dyn
    if dyn is not None:
        row |= series_summary(dyn, tr.memorised_step, tr.grokked_step)
        if "agreement" in dyn:
            row["agreement_dips"] = len(agreement_dips(dyn["step"], dyn["agreement"], prominence))
            # up to grokking only: a window as long as the gap itself (so the count grows with it)
            row["agreement_dips_before_grokked"] = (
                len(agreement_dips(dyn["step"], dyn["agreement"], prominence, until=tr.grokked_step))
                if tr.grokked_step is not None else None)
            plateau = tr.memorised_step is not None and tr.grokked_step is not None
            row["agreement_dips_plateau"] = (
                len(agreement_dips(dyn["step"], dyn["agreement"], prominence, until=tr.grokked_step,
                                   since=tr.memorised_step)) if plateau else None)
            row["agreement_dips_plateau_per_100_steps"] = (
                100 * row["agreement_dips_plateau"] / tr.delay if plateau and tr.delay > 0 else None)
            span = float(dyn["step"].max() - dyn["step"].min()) if len(dyn) > 1 else 0.0
            # a count grows with the window it is counted over; its rate does not
            row["agreement_dips_per_100_steps"] = 100 * row["agreement_dips"] / span if span else None
    row |= {f"limit_{k}": v for k, v in limit_cycle(run).to_dict().items() if k != "grokked_step"}
    return row


def dips_vs_gap(runs, prominence: float = 0.1) -> tuple[pd.DataFrame, Correlation]:
    """Per probed run: agreement dips and the grokking gap (``delay``: grokked - memorised
    step); and their Pearson correlation over the runs where both exist."""
    table = pd.DataFrame([run_summary(r, prominence=prominence) for r in runs])
    return table, dips_correlation(table)


def dips_correlation(table: pd.DataFrame, column: str = "agreement_dips") -> Correlation:
    if column not in table:
        return pearson([], [])
    return pearson(pd.to_numeric(table[column], errors="coerce"), pd.to_numeric(table["delay"], errors="coerce"))


DIP_COUNTS = {"agreement_dips": "dips over the run",
              "agreement_dips_plateau": "dips between memorisation and grokking",
              "agreement_dips_per_100_steps": "dips per 100 probed steps (length control)",
              "agreement_dips_plateau_per_100_steps": "dips per 100 steps between memorisation and grokking"}


def dips_vs_gap_all(table: pd.DataFrame) -> dict[str, Correlation]:
    """Pearson r of the grokking gap with each dip count in ``DIP_COUNTS``. The rate is the
    control: a window that grows with the gap (a run stopped soon after grokking; the plateau
    itself) collects more dips at a constant rate, so a count can correlate with the gap
    while the rate does not."""
    return {c: dips_correlation(table, c) for c in DIP_COUNTS}
