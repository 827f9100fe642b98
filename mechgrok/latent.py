"""Latent-state training maps (Hu et al. 2023, "Latent State Models of Training Dynamics").

Training is modelled as a walk through a few hidden states. At every checkpoint of every
member of a population we compute 14 statistics of the weights; each member's statistics are
z-scored within that member; a Gaussian HMM (hmmlearn) is fitted to all the sequences. Its
transition graph is the "training map"; each member's Viterbi path is its route through the
map; a "detour" is a state whose occupancy goes with later convergence.

    stats = checkpoint_statistics(run)           # step x the 14 statistics (+ losses, accuracies)
    sel = select_states(pop, max_states=8)       # held-out log-likelihood, AIC, BIC per n
    tm = fit_training_map(pop, n_states=sel.best)
    tm.paths, tm.transitions, tm.means, tm.detours()

A population is a sweep directory, a population object with ``.run(i)`` and ``len()``, a list
of run directories or ``Run`` objects, or -- for the HMM functions -- the long statistics table
that ``population_statistics`` returns (columns ``member``, ``step``, features, and
``grokking_step``), which is how tests plant synthetic sequences.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps
from tqdm.auto import tqdm

from .runs import Run, find_runs, is_run_dir
# The weight statistics are defined in weight_statistics.py; they are re-exported here because the
# training maps are built on them (``latent.matrix_statistics`` etc. keep working), hence the noqa.
from .weight_statistics import MATRIX_STATISTICS, STATISTICS, block_matrices, matrix_statistics, weight_statistics  # noqa: F401

METRICS = ("train_loss", "test_loss", "train_acc", "test_acc")
BEST_FEATURES = {"modular": ("var_w", "l1", "l2"), "parity": ("spectral", "variance_lambda")}
COVARIANCES = ("spherical", "diag", "full", "tied")  # hmmlearn's GaussianHMM covariance types
MIN_CHECKPOINTS = 5
# model selection: criterion -> (column of ModelSelection.table, "min" or "max", what the rule says)
CRITERIA = {"bic": ("bic", "min", "lowest BIC"), "aic": ("aic", "min", "lowest AIC"),
            "heldout": ("heldout_ll", "max", "highest held-out log-likelihood")}
# Fewer observed values than this per free parameter of the HMM and its likelihood can be pushed
# up by states that fit a handful of checkpoints (a variance shrunk onto them), so BIC, whose
# penalty assumes many observations per parameter, keeps adding states: the number is not to be
# trusted. 10 per parameter is the usual rule of thumb for likelihood-based model selection.
MIN_VALUES_PER_PARAMETER = 10


def check_covariance(covariance: str) -> str:
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
    return covariance


def n_free_parameters(n_states: int, n_features: int, covariance: str) -> int:
    """Free parameters of a GaussianHMM (what hmmlearn's AIC/BIC count): start probabilities
    n - 1, transitions n (n - 1), means n f, and the covariances: n (spherical), n f (diag),
    n f (f + 1) / 2 (full), f (f + 1) / 2 (tied, one shared by all states)."""
    n, f = n_states, n_features
    cov = {"spherical": n, "diag": n * f, "full": n * f * (f + 1) // 2, "tied": f * (f + 1) // 2}[check_covariance(covariance)]
    return (n - 1) + n * (n - 1) + n * f + cov


def size_warning(n_states: int, n_features: int, covariance: str, n_checkpoints: int, n_sequences: int) -> str | None:
    """A warning when ``n_checkpoints`` checkpoints (x ``n_features`` values each) in
    ``n_sequences`` members are too few for an HMM with ``n_states`` states: fewer than
    ``MIN_VALUES_PER_PARAMETER`` observed values per free parameter, or fewer members than
    states (the start distribution has one probability per state to estimate from one start per
    member). None when the data are enough."""
    k, values = n_free_parameters(n_states, n_features, covariance), n_checkpoints * n_features
    why = []
    if values < MIN_VALUES_PER_PARAMETER * k:
        why.append(f"{k} free parameters for {values} observed values ({n_checkpoints} checkpoints x {n_features} "
                   f"features), under {MIN_VALUES_PER_PARAMETER} per parameter")
    if n_sequences < n_states:
        why.append(f"fewer members ({n_sequences}) than states")
    if not why:
        return None
    return (f"warning: the population is too small for {n_states} states ({'; '.join(why)}): the states may fit "
            f"noise; use fewer states (--states, --max-states), fewer features, or more members")


def checkpoint_grid(run: Run, min_checkpoints: int = MIN_CHECKPOINTS) -> list[int]:
    """The run's checkpoints on its regular grid: steps s0, s0 + d, s0 + 2d, ... with d the
    most common spacing. A final checkpoint off the grid (a run whose length is not a
    multiple of ``checkpoint_every``) is dropped; a gap in the grid is an error."""
    steps = run.steps
    if len(steps) < min_checkpoints:
        raise ValueError(f"{run.path}: {len(steps)} checkpoints; latent-state models need at least "
                         f"{min_checkpoints} per run (train longer or checkpoint more often)")
    spacing = Counter(np.diff(steps).tolist()).most_common(1)[0][0]
    grid = [s for s in steps if (s - steps[0]) % spacing == 0]
    if grid != list(range(grid[0], grid[-1] + 1, spacing)):
        missing = sorted(set(range(grid[0], grid[-1] + 1, spacing)) - set(grid))
        raise ValueError(f"{run.path}: checkpoints every {spacing} steps with gaps at {missing[:5]}; "
                         f"the HMM needs an unbroken, evenly spaced series")
    if len(grid) < min_checkpoints:
        raise ValueError(f"{run.path}: only {len(grid)} checkpoints on the {spacing}-step grid; "
                         f"need at least {min_checkpoints}")
    return grid


def _grokking_step(metrics: pd.DataFrame) -> float:
    from .milestones import transition_metrics

    step = transition_metrics(metrics).grokked_step
    return float("nan") if step is None else float(step)


def checkpoint_statistics(run: Run | str | os.PathLike, steps: list[int] | None = None,
                          chunk: int = 64) -> pd.DataFrame:
    """One row per checkpoint: ``step``, the 14 statistics of Hu et al. (see
    ``weight_statistics`` for the definitions) and train/test loss and accuracy from
    metrics.csv at the same step (NaN where the step was not evaluated). ``steps`` defaults to
    the run's regular checkpoint grid (``checkpoint_grid``). SVDs are batched over ``chunk``
    checkpoints at a time."""
    run = run if isinstance(run, Run) else Run(run)
    steps = checkpoint_grid(run, min_checkpoints=1) if steps is None else list(steps)
    n_layers = run.model_cfg.n_layers
    parts = [weight_statistics(run.stacked_params(steps[i:i + chunk]), n_layers)
             for i in range(0, len(steps), chunk)]
    table = pd.concat(parts, ignore_index=True)
    table.insert(0, "step", steps)
    m = run.metrics
    m = m[["step", *METRICS]].drop_duplicates("step", keep="last") if len(m) else pd.DataFrame(columns=["step", *METRICS])
    return table.merge(m, on="step", how="left")


# --- populations -------------------------------------------------------------------------


def population_runs(pop) -> list[Run]:
    """The member runs of ``pop``: a sweep directory (``mechgrok.population.load_population``
    when it can read it, otherwise every run directory below it, ``runs.find_runs``), a
    population object with ``.run(i)`` and ``len()``, or a list of run directories / ``Run`` objects."""
    if isinstance(pop, (str, os.PathLike)):
        path = Path(pop)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such population directory")
        if is_run_dir(path):
            raise ValueError(f"{path} is a single run; a latent-state model needs a population "
                             f"(a sweep directory or a list of run directories)")
        try:
            from .population import load_population
            return population_runs(load_population(path))
        except (ImportError, AttributeError, FileNotFoundError, ValueError):
            pass
        try:
            return find_runs(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no run directories (sub-directories with a config.json)") from None
    if hasattr(pop, "run") and hasattr(pop, "__len__"):
        return [pop.run(i) for i in range(len(pop))]
    runs = [r if isinstance(r, Run) else Run(r) for r in pop]
    if not runs:
        raise ValueError("the population is empty")
    return runs


def population_statistics(pop, min_checkpoints: int = MIN_CHECKPOINTS, progress: bool = True) -> pd.DataFrame:
    """The long table the HMM functions take: one row per (member, checkpoint) with columns
    ``member`` (0..n-1), ``run`` (its directory), ``step``, the 14 statistics, losses and
    accuracies, and ``grokking_step`` (``milestones.transition_metrics``; NaN if it never
    grokked), and ``checkpoint_stamp`` (``checkpoint_stamps``, which ``cached_statistics`` checks).
    Fails with the offending runs when a run has fewer than ``min_checkpoints``
    checkpoints or the runs' checkpoint spacings differ."""
    runs = population_runs(pop)
    grids = [checkpoint_grid(r, min_checkpoints) for r in runs]
    spacings = {str(r.path): g[1] - g[0] for r, g in zip(runs, grids)}
    if len(set(spacings.values())) > 1:
        by = Counter(spacings.values())
        raise ValueError("the runs differ in checkpoint spacing ("
                         + ", ".join(f"{n} run(s) every {d} steps" for d, n in by.items())
                         + "): HMM time steps must mean the same thing in every run; e.g. "
                         + ", ".join(f"{p}: {d}" for p, d in list(spacings.items())[:4]))
    tables = []
    for i, (r, g) in enumerate(tqdm(list(zip(runs, grids)), desc="statistics", disable=not progress)):
        stamps = checkpoint_stamps(r, g)  # before reading: a file rewritten meanwhile then looks stale
        t = checkpoint_statistics(r, g)
        t.insert(0, "run", str(r.path))
        t.insert(0, "member", i)
        t["grokking_step"] = _grokking_step(r.metrics)
        t[STAMP] = stamps
        tables.append(t)
    return pd.concat(tables, ignore_index=True)


STAMP = "checkpoint_stamp"  # the statistics table's column of checkpoint_stamps


def checkpoint_stamps(run: Run, steps: list[int]) -> list[str]:
    """``"size:mtime_ns"`` of each checkpoint file at ``steps``: what a cached statistics row
    was computed from (a member retrained in place rewrites them)."""
    from .runs import checkpoint_path

    out = []
    for s in steps:
        st = checkpoint_path(run.path, s).stat()
        out.append(f"{st.st_size}:{st.st_mtime_ns}")
    return out


def _as_table(pop, progress: bool = True) -> pd.DataFrame:
    return pop if isinstance(pop, pd.DataFrame) else population_statistics(pop, progress=progress)


def _features(features, table: pd.DataFrame) -> list[str]:
    features = list(STATISTICS) if features is None else (
        [f.strip() for f in features.split(",") if f.strip()] if isinstance(features, str) else list(features))
    allowed = [c for c in table.columns if c not in ("member", "run", "step", "grokking_step", STAMP)]
    bad = [f for f in features if f not in allowed]
    if bad or not features:
        raise ValueError(f"unknown feature(s) {bad}; allowed: {', '.join(allowed)}")
    return features


def zscore_within(table: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """``table`` with each feature z-scored within each member (a feature constant within a
    member becomes 0 there)."""
    out = table.copy()
    g = table.groupby("member")[features]
    mu, sd = g.transform("mean"), g.transform("std", ddof=0)
    out[features] = ((table[features] - mu) / sd.where(sd > 0)).fillna(0.0)
    return out


def _sequences(z: pd.DataFrame, features: list[str], members) -> tuple[np.ndarray, list[int]]:
    parts = [z.loc[z.member == m].sort_values("step")[features].to_numpy(np.float64) for m in members]
    return np.concatenate(parts), [len(p) for p in parts]


def _fit_hmm(X: np.ndarray, lengths: list[int], n_states: int, covariance: str, restarts: int,
             seed: int, n_iter: int):
    """The best of ``restarts`` GaussianHMM fits (by log-likelihood of the data it was fitted
    on), and every restart's model."""
    from hmmlearn.hmm import GaussianHMM

    check_covariance(covariance)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    models, errors = [], []
    for r in range(restarts):
        m = GaussianHMM(n_components=n_states, covariance_type=covariance, n_iter=n_iter,
                        random_state=seed * 1000 + r, min_covar=1e-3)
        try:  # EM can empty a state (a zero row in the transition matrix): that restart is dropped
            m.fit(X, lengths)
            models.append((m.score(X, lengths), m))
        except ValueError as e:
            errors.append(str(e))
    if not models:
        raise ValueError(f"every one of {restarts} GaussianHMM fits with {n_states} states failed "
                         f"({errors[0]}); the data may not support that many states")
    best = max(models, key=lambda t: t[0])[1]
    return best, [m for _, m in models]


def split_members(members: list, held_out: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """Seeded split of the members into fit and held-out sets (``held_out`` of them, at least
    one each)."""
    if len(members) < 2:
        raise ValueError(f"model selection needs at least 2 members (one to fit, one held out), got {len(members)}")
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be in (0, 1), got {held_out}")
    perm = np.random.default_rng(seed).permutation(len(members))
    n_out = min(max(1, round(held_out * len(members))), len(members) - 1)
    return sorted(members[i] for i in perm[n_out:]), sorted(members[i] for i in perm[:n_out])


@dataclass
class ModelSelection:
    """``table``: per number of states, the held-out log-likelihood per checkpoint of the
    best restart (``heldout_ll``) and its mean and std over restarts, the fit-set
    log-likelihood, AIC and BIC (on the fit set), and the number of free parameters.
    ``best``: the number of states the ``criterion`` picks (``CRITERIA``: lowest BIC by
    default). A row is NaN where every restart emptied a state (hmmlearn then has no valid
    transition matrix); ``select_states`` fails when every row is."""

    table: pd.DataFrame
    features: list[str]
    fit_members: list
    heldout_members: list
    covariance: str
    criterion: str = "bic"

    def pick(self, criterion: str | None = None) -> int:
        """The number of states ``criterion`` (default: this selection's) picks."""
        column, how, _ = CRITERIA[check_criterion(criterion or self.criterion)]
        values = self.table.set_index("n_states")[column]
        return int(values.idxmin() if how == "min" else values.idxmax())

    @property
    def best(self) -> int:
        return self.pick()

    @property
    def rule(self) -> str:
        """The rule in words, e.g. "lowest BIC"."""
        return CRITERIA[self.criterion][2]

    def ranked(self) -> list[int]:
        """The numbers of states from the best by the criterion to the worst (rows that could
        not be fitted left out)."""
        column, how, _ = CRITERIA[self.criterion]
        t = self.table.dropna(subset=[column])
        return t.sort_values(column, ascending=how == "min", kind="stable").n_states.astype(int).tolist()

    def disagreement(self) -> str | None:
        """A line naming what each criterion picks, when they do not all pick the same."""
        picks = {c: self.pick(c) for c in CRITERIA}
        if len(set(picks.values())) == 1:
            return None
        return "the criteria disagree: " + ", ".join(f"{CRITERIA[c][2]} at {n}" for c, n in picks.items())


def check_criterion(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    return criterion


def select_states(pop, max_states: int = 8, features=None, covariance: str = "diag", restarts: int = 5,
                  held_out: float = 0.2, seed: int = 0, n_iter: int = 200, progress: bool = True,
                  criterion: str = "bic") -> ModelSelection:
    """Hu et al.'s model selection: members split (seeded) into fit and held-out sets,
    features z-scored within each member, a GaussianHMM with 1..``max_states`` states fitted
    ``restarts`` times on the fit set; the table reports held-out log-likelihood (per
    checkpoint), AIC and BIC. AIC/BIC are computed on the fit set, where the information
    criteria are defined (Hu et al.'s script evaluated them on the held-out set).
    ``criterion`` (``CRITERIA``: bic, aic or heldout) is the rule ``best`` applies."""
    check_covariance(covariance)
    check_criterion(criterion)
    table = _as_table(pop, progress)
    features = _features(features, table)
    if max_states < 1:
        raise ValueError(f"max_states must be >= 1, got {max_states}")
    z = zscore_within(table, features)
    fit_m, out_m = split_members(sorted(z.member.unique().tolist()), held_out, seed)
    X, lx = _sequences(z, features, fit_m)
    Y, ly = _sequences(z, features, out_m)
    rows = []
    for n in tqdm(range(1, max_states + 1), desc="HMM states", disable=not progress):
        try:
            best, models = _fit_hmm(X, lx, n, covariance, restarts, seed, n_iter)
        except ValueError:
            rows.append({"n_states": n})  # no restart converged to n occupied states: NaN row
            continue
        held = np.array([m.score(Y, ly) for m in models]) / len(Y)
        rows.append({"n_states": n, "heldout_ll": best.score(Y, ly) / len(Y), "heldout_ll_mean": held.mean(),
                     "heldout_ll_std": held.std(), "fit_ll": best.score(X, lx) / len(X),
                     "aic": best.aic(X, lx), "bic": best.bic(X, lx),
                     "n_params": sum(best._get_n_fit_scalars_per_param().values())})
    result = pd.DataFrame(rows)
    if "bic" not in result or result.bic.isna().all():
        raise ValueError(f"no HMM with 1..{max_states} states could be fitted ({covariance} covariance, {restarts} "
                         f"restarts): every restart emptied a state; try fewer features or another --covariance")
    return ModelSelection(result, features, fit_m, out_m, covariance, criterion)


# --- the training map --------------------------------------------------------------------


@dataclass
class TrainingMap:
    """A GaussianHMM fitted to every member, its states numbered by when they are visited
    (state 0 is occupied earliest on average).

    ``paths``: member -> Viterbi state sequence (one state per checkpoint); ``transitions``:
    the transition matrix (rows: from, columns: to); ``means``: state x feature means in
    within-member z units; ``occupancy``: checkpoints per state over all members; ``labels``:
    what distinguishes each state; ``steps``: member -> checkpoint steps of its path;
    ``grokking_steps``: member -> grokking step (NaN: never grokked); ``state_metrics``: per
    state, ``when`` (mean relative time of occupancy, 0 = start, 1 = end) and the mean test/train
    accuracy and l2 of the checkpoints decoded into it."""

    model: object
    features: list[str]
    paths: dict
    steps: dict
    transitions: pd.DataFrame
    means: pd.DataFrame
    occupancy: pd.Series
    labels: dict[int, str]
    grokking_steps: dict
    state_metrics: pd.DataFrame = field(repr=False)

    @property
    def n_states(self) -> int:
        return len(self.transitions)

    def occupancy_counts(self) -> pd.DataFrame:
        """member x state: how many checkpoints each member spent in each state."""
        rows = {m: np.bincount(p, minlength=self.n_states) for m, p in self.paths.items()}
        return pd.DataFrame.from_dict(rows, orient="index", columns=range(self.n_states))

    def detours(self, alpha: float = 0.05) -> pd.DataFrame:
        """Per state, the regression of the members' grokking step on the number of checkpoints
        they spent in that state: ``coef`` (steps of convergence per checkpoint in the
        state), its 95 % CI, p-value (two-sided t-test), ``n`` (grokked members used) and
        ``visited`` (of them, how many visited the state), and ``note``: why a row has no
        regression (NaN numbers), empty where it has one. A state with a positive coefficient
        at p < ``alpha`` is a detour.

        One regression per state, y = a + b n_s: with runs of equal length the occupancies of
        all states sum to the run length, so a joint regression on all of them plus an
        intercept is singular. Members that never grokked have no convergence step and are
        left out."""
        occ = self.occupancy_counts()
        y = pd.Series(self.grokking_steps).reindex(occ.index).astype(float)
        keep = y.notna()
        occ, y = occ[keep], y[keep]
        rows = []
        for s in range(self.n_states):
            x = occ[s].to_numpy(float)
            row = {"state": s, "label": self.labels[s], "n": int(len(y)), "visited": int((x > 0).sum()),
                   "coef": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "note": ""}
            if len(y) < 3:  # a line through 2 points has no residual, so no standard error
                row["note"] = f"n too small (n={len(y)}; a regression needs at least 3 members that grokked)"
            elif np.ptp(x) == 0:
                row["note"] = f"no variation (every one of the {len(y)} grokked members spent {int(x[0])} checkpoints here)"
            else:
                fit = sps.linregress(x, y.to_numpy())
                half = sps.t.ppf(0.975, len(y) - 2) * fit.stderr
                row |= {"coef": fit.slope, "ci_low": fit.slope - half, "ci_high": fit.slope + half,
                        "p_value": fit.pvalue}
            row["detour"] = bool(row["coef"] > 0 and row["p_value"] < alpha)
            rows.append(row)
        return pd.DataFrame(rows)

    def paths_table(self) -> pd.DataFrame:
        """Long table: member, step, state."""
        return pd.DataFrame([{"member": m, "step": s, "state": int(k)}
                             for m, p in self.paths.items() for s, k in zip(self.steps[m], p)])


def describe_state(means: pd.Series, test_acc: float | None = None, top: int = 2, threshold: float = 0.5) -> str:
    """A label from a state's z-scored feature means: the ``top`` features furthest from the
    member's average (|z| > ``threshold``) as "high l2 (+1.3)" / "low var_w (-0.8)", plus the
    mean test accuracy of the checkpoints in the state."""
    strongest = means.abs().sort_values(ascending=False)
    parts = [f"{'high' if means[f] > 0 else 'low'} {f} ({means[f]:+.1f})" for f in strongest.index[:top]
             if abs(means[f]) > threshold]
    label = ", ".join(parts) if parts else "average"
    if test_acc is not None and np.isfinite(test_acc):
        label += f"; test acc {test_acc:.2f}"
    return label


def fit_training_map(pop, n_states: int, features=None, covariance: str = "diag", restarts: int = 5,
                     seed: int = 0, n_iter: int = 200, progress: bool = True) -> TrainingMap:
    """Fit the training map to every member (best of ``restarts`` by log-likelihood) and decode
    each member's Viterbi path."""
    check_covariance(covariance)
    table = _as_table(pop, progress)
    features = _features(features, table)
    if n_states < 1:
        raise ValueError(f"n_states must be >= 1, got {n_states}")
    z = zscore_within(table, features)
    members = sorted(z.member.unique().tolist())
    X, lengths = _sequences(z, features, members)
    model, _ = _fit_hmm(X, lengths, n_states, covariance, restarts, seed, n_iter)
    raw = [model.predict(X[a:a + n]) for a, n in zip(np.cumsum([0, *lengths[:-1]]), lengths)]
    # number states by their mean relative time of occupancy (0 = visited earliest)
    when = np.full(n_states, np.inf)
    for k in range(n_states):
        t = np.concatenate([np.flatnonzero(p == k) / max(len(p) - 1, 1) for p in raw])
        if len(t):
            when[k] = t.mean()
    order = np.argsort(when, kind="stable")  # new id -> hmm id
    new_id = np.empty(n_states, int)
    new_id[order] = np.arange(n_states)
    paths = {m: new_id[p] for m, p in zip(members, raw)}
    steps = {m: z.loc[z.member == m].sort_values("step").step.to_numpy() for m in members}
    transitions = pd.DataFrame(model.transmat_[np.ix_(order, order)])
    means = pd.DataFrame(model.means_[order], columns=features)
    states = np.concatenate([paths[m] for m in members])
    occupancy = pd.Series(np.bincount(states, minlength=n_states), name="checkpoints")
    ordered = table.sort_values(["member", "step"])
    extra = [c for c in ("test_acc", "train_acc", "l2") if c in table.columns]
    state_metrics = ordered[extra].assign(state=states).groupby("state").mean().reindex(range(n_states))
    state_metrics.insert(0, "when", when[order])  # mean relative time (0 = start, 1 = end) in the state
    labels = {s: describe_state(means.loc[s], state_metrics.loc[s].get("test_acc") if "test_acc" in extra else None)
              for s in range(n_states)}
    grok = (table.groupby("member").grokking_step.first().to_dict() if "grokking_step" in table.columns
            else {m: np.nan for m in members})
    return TrainingMap(model, features, paths, steps, transitions, means, occupancy, labels, grok, state_metrics)


# --- everything for one population ---------------------------------------------------------


def cached_statistics(pop, table: pd.DataFrame | None) -> pd.DataFrame | None:
    """``table`` (a ``statistics.csv`` read back) when it covers exactly ``pop``'s runs and
    checkpoint grids, computed from the checkpoint files there now (their sizes and mtimes,
    ``checkpoint_stamps``), else None."""
    if table is None or STAMP not in table:
        return None
    runs = population_runs(pop)
    if sorted(table.run.unique()) != sorted(str(r.path) for r in runs):
        return None
    for r in runs:
        rows, grid = table.loc[table.run == str(r.path)], checkpoint_grid(r)
        try:
            stamps = checkpoint_stamps(r, grid)
        except FileNotFoundError:  # a checkpoint went away between listing and looking
            return None
        if rows["step"].tolist() != grid or rows[STAMP].astype(str).tolist() != stamps:
            return None
    return table


@dataclass(frozen=True)
class ConvergenceSpread:
    """Two populations' grokking steps (members that grokked) and the Brown-Forsythe test of
    equal spread between them (Levene's test about the median: grokking steps have a long
    right tail); ``p`` is None with fewer than ``min_members`` grokked in either."""

    a: pd.Series
    b: pd.Series
    statistic: float | None
    p: float | None

    @staticmethod
    def cv(steps: pd.Series) -> float:
        return float(steps.std() / steps.mean()) if len(steps) > 1 else float("nan")


def grokking_steps(statistics: pd.DataFrame) -> pd.Series:
    """Each member's grokking step from a population's checkpoint statistics (statistics.csv), NaN where it never grokked."""
    return statistics.groupby("member")["grokking_step"].first()


def convergence_spread(a: pd.DataFrame, b: pd.DataFrame, min_members: int = 3) -> ConvergenceSpread:
    """Do populations ``a`` and ``b`` (their statistics tables) converge with different spreads?"""
    ga, gb = grokking_steps(a).dropna(), grokking_steps(b).dropna()
    if min(len(ga), len(gb)) < min_members:
        return ConvergenceSpread(ga, gb, None, None)
    test = sps.levene(ga, gb, center="median")
    return ConvergenceSpread(ga, gb, float(test.statistic), float(test.pvalue))


def analyze_population(pop, n_states: int | None = None, features=None, max_states: int = 8,
                       covariance: str = "diag", restarts: int = 5, seed: int = 0, progress: bool = True,
                       statistics: pd.DataFrame | None = None, criterion: str = "bic") -> dict:
    """Statistics (``statistics`` when given, e.g. a cache that ``cached_statistics`` accepted),
    model selection (always; it picks ``n_states`` when not given, by ``criterion``: lowest BIC
    first, the next best if a fit on every member empties a state), the training map, Viterbi
    paths and the detour table of ``pop``. Returns ``statistics``, ``selection``, ``map``,
    ``detours``, ``states`` (means in z units, occupancy, labels, per-state metrics),
    ``features``, ``n_states`` and ``notes``: the lines that say how the number of states was
    chosen (the rule and the criterion's value per number of states), whether the criteria
    disagree, and whether the population is too small for it (``size_warning``);
    ``report.latent`` writes them."""
    check_covariance(covariance)
    check_criterion(criterion)
    table = pop if isinstance(pop, pd.DataFrame) else statistics
    if table is None:
        table = population_statistics(pop, progress=progress)
    features = _features(features, table)
    sel = select_states(table, max_states=max_states, features=features, covariance=covariance,
                        restarts=restarts, seed=seed, progress=progress, criterion=criterion)
    column = CRITERIA[criterion][0]
    values = ", ".join(f"{int(r.n_states)}: {getattr(r, column):.4g}" if np.isfinite(getattr(r, column, np.nan))
                       else f"{int(r.n_states)}: not fitted" for r in sel.table.itertuples())
    if n_states is not None:
        n = n_states
        tm = fit_training_map(table, n, features=features, covariance=covariance, restarts=restarts, seed=seed,
                              progress=progress)
        notes = [f"{n} states as asked (--states); {sel.rule} would pick {sel.best} ({column} per number of "
                 f"states: {values})"]
    else:
        for n in sel.ranked():
            try:
                tm = fit_training_map(table, n, features=features, covariance=covariance, restarts=restarts,
                                      seed=seed, progress=progress)
                break
            except ValueError:
                continue
        else:
            raise ValueError(f"every fit of the training map on all members emptied a state (tried {sel.ranked()} "
                             f"states); try fewer features or another covariance")
        notes = [f"{n} state{'s' if n != 1 else ''} by the rule {sel.rule} of 1..{max_states} ({column} per number of states: {values})"
                 + ("" if n == sel.best else f"; the best, {sel.best}, emptied a state in the fit on every member")]
    if (why := sel.disagreement()) is not None:
        notes.append(why)
    if (warn := size_warning(n, len(features), covariance, len(table), table.member.nunique())) is not None:
        notes.append(warn)
    states = tm.means.add_prefix("z_").assign(checkpoints=tm.occupancy, label=pd.Series(tm.labels))
    states = pd.concat([states, tm.state_metrics], axis=1)
    return {"statistics": table, "selection": sel, "map": tm, "detours": tm.detours(), "states": states,
            "features": features, "n_states": n, "notes": notes}
