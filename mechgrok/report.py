"""The reporting layer: tables and figures written from what the measures return. Measures
and trainers compute and return data (``progress``, ``cycles``, ``latent``, ``population``);
this module writes it -- every table through ``files.py``'s atomic writers, every figure
through ``plots.save_figure`` -- and the CLI calls it.

    report.analysis(run)          progress.csv, phases.json, neurons.csv, the analysis figures
    report.spectrum(run, step)    spectrum_step{N}.csv and its bar charts
    report.dynamics(path)         dynamics_summary.csv, geometry, limit cycle, dips vs gap
    report.latent(pop, out)       the latent-state tables and figures
    report.population(pop, out)   population.csv and a figure per swept field
    report.draw_figures(run)      (re)draw a run's figures from its files
    report.grids(run, step)       the TL demo's attention and neuron grids over (a, b)
    report.compare(runs, out)     compare.csv and the overlaid curves of a few runs
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from . import fourier, plots, progress
from .analysis import Analysis, analyze
from .files import write_csv, write_json
from .milestones import transition_metrics
from .model import layer_index
from .runs import Run, find_runs, read_dynamics


def _save(figures: dict, out: Path, png: bool, bar: bool = False, **kw) -> list[Path]:
    written = []
    for stem, fig in tqdm(figures.items(), desc="figures", unit="fig", disable=not bar, dynamic_ncols=True):
        written += plots.save_figure(fig, out / stem, png=png, **kw)
    return written


# --- one run's progress measures -------------------------------------------------------------


def analysis(run: Run, out_dir=None, freqs: list[int] | None = None, steps: list[int] | None = None,
             level: str = "logits", basis: str = "auto", key_rule: str = "neurons", measures=(),
             progress_bar: bool = True, png: bool = True) -> tuple[Analysis, list[Path]]:
    """``analysis.analyze`` of ``run``, written into ``out_dir`` (default: the run directory):
    ``progress.csv`` (with the columns of ``measures``), ``phases.json`` (``phases`` plus the
    key frequencies), ``neurons.csv`` (the final checkpoint's neuron frequencies) and the
    figures ``progress_losses``, ``gini_weight_norm``, ``spectrum`` (final W_E),
    ``spectrum_W_L``, ``neuron_frequencies``, ``spectrum_evolution`` (HTML, and PNG unless
    ``png=False``). A task without a Fourier basis gets ``progress.csv`` of the generic measures
    and the figures ``progress_losses`` and ``weight_statistics``. Returns the analysis and the
    paths written."""
    out = Path(out_dir or run.path)
    res = analyze(run, freqs=freqs, steps=steps, level=level, basis=basis, key_rule=key_rule,
                           measures=measures, progress=progress_bar)
    table = res.table
    written = [write_csv(out / "progress.csv", table)]
    if not res.fourier:
        name = f"{run.path.name}: {run.task.describe()}"
        figs = {"progress_losses": plots.progress_losses(table, None, f"{name}: train and test loss"),
                "weight_statistics": plots.weight_statistics(table, ("weight_sq", "l2", "spectral", "var_w"),
                                                             f"{name}: weight statistics")}
        return res, written + _save(figs, out, png)
    written.append(write_json(out / "phases.json", res.summary()))
    written.append(write_csv(out / "neurons.csv", res.neurons.to_frame(), float_format="%.6g"))
    figs = analysis_figures(run, table, res.phases, res.neurons)
    return res, written + _save(figs, out, png, progress_bar)


def spectrum(run: Run, step: int | None = None, out_dir=None, basis: str = "auto",
             png: bool = True) -> tuple[pd.DataFrame, list[Path]]:
    """``progress.spectrum`` at ``step`` (default: the last), written as ``spectrum_step{N}.csv``
    and the bar charts ``spectrum_step{N}`` (W_E) and ``spectrum_W_L_step{N}`` (HTML, and PNG
    unless ``png=False``)."""
    table = progress.spectrum(run, step, basis)
    step, kind, keys = table.attrs["step"], table.attrs["basis"], table.attrs["key_freqs"]
    out = Path(out_dir or run.path)
    written = [write_csv(out / f"spectrum_step{step}.csv", table, float_format="%.6g")]
    label = "frequency k" + (" (discrete-log basis)" if kind == "dlog" else "")
    title = f"{run.task.describe()}, step {step}"
    written += plots.save_figure(plots.spectrum_bars(table["W_E_norm"].to_numpy(), keys["neurons"], f"{title}: W_E",
                                                     "norm of W_E", label), out / f"spectrum_step{step}", png=png)
    written += plots.save_figure(plots.spectrum_bars(table["W_L_norm"].to_numpy(), keys["neurons"], f"{title}: W_L",
                                                     "norm of W_out·W_U", label), out / f"spectrum_W_L_step{step}",
                                 png=png)
    return table, written


# --- optimizer dynamics ----------------------------------------------------------------------


def dynamics(path, out=None, measure: bool = True, prominence: float = 0.1, png: bool = True,
             progress_bar: bool = True):
    """``mechgrok dynamics``: for a run, or every run under a sweep directory, the summary table
    (``cycles.run_summary``, ``dynamics_summary.csv``), the geometry figure per run
    (``dynamics.html``/``.png`` in the run), and the limit-cycle figure; over several runs also
    the dips-vs-gap scatter and its Pearson correlation. Runs trained without measures are
    measured at their checkpoints (``measures.dynamics_series``, written to
    ``dynamics_checkpoints.csv``) unless ``measure=False``. Returns ``(table, correlation or
    None, files written)``."""
    from . import cycles
    from .measures import dynamics_series

    runs = find_runs(path)
    out = Path(out) if out is not None else Path(path)
    written: list[Path] = []
    rows, series, grokked = [], {}, {}
    for run in runs:
        dyn = read_dynamics(run)
        if dyn is None and measure and run.steps:
            dyn = dynamics_series(run, progress=progress_bar)
            written.append(write_csv(run.path / "dynamics_checkpoints.csv", dyn))
        tr = transition_metrics(run.metrics)
        rows.append(cycles.run_summary(run, dyn, prominence))
        label = run.path.name if len(runs) > 1 else f"{run.path.name} (wd {run.config.train.weight_decay:g})"
        series[label], grokked[label] = run.metrics, tr.grokked_step
        if dyn is not None:
            fig = plots.dynamics_geometry(run.metrics, dyn, {"memorised": tr.memorised_step, "grokked": tr.grokked_step},
                                          title=f"{run.path.name}: what the geometry is doing")
            written += plots.save_figure(fig, run.path / "dynamics", png=png)
    table = pd.DataFrame(rows)
    written.append(write_csv(out / "dynamics_summary.csv", table, float_format="%.6g"))
    written += plots.save_figure(plots.limit_cycle_figure(dict(list(series.items())[:12]), grokked),
                                 out / "dynamics_limit_cycle", png=png)
    corr = None
    if len(runs) > 1:
        corr = cycles.dips_correlation(table)
        if "agreement_dips" in table:
            fig = plots.dips_vs_gap_scatter(table, corr.r, corr.n, corr.p, rate=cycles.dips_vs_gap_all(table)[
                "agreement_dips_per_100_steps"])
            written += plots.save_figure(fig, out / "dynamics_dips_vs_gap", png=png)
    return table, corr, written


# --- populations -----------------------------------------------------------------------------


def latent(pop, out_dir, n_states: int | None = None, features=None, max_states: int = 8, covariance: str = "diag",
           restarts: int = 5, seed: int = 0, png: bool = True, title: str = "", progress_bar: bool = True,
           plotlyjs: str | bool = "shared", criterion: str = "bic") -> dict:
    """``latent.analyze_population`` of ``pop``, written to ``out_dir``: statistics.csv (reused
    when it exists and covers the same runs and steps), model_selection.csv, transitions.csv,
    states.csv, paths.csv, detours.csv, and the figures model_selection, training_map and
    ribbons (HTML, + PNG when ``png``; ``plotlyjs`` as in ``plots.save_figure``). Returns
    ``latent.analyze_population``'s dict with ``written`` added."""
    from . import latent as lt

    lt.check_covariance(covariance)  # before the statistics cache is read
    lt.check_criterion(criterion)
    out = Path(out_dir)
    cache = out / "statistics.csv"
    cached = None
    if not isinstance(pop, pd.DataFrame) and cache.exists():
        cached = lt.cached_statistics(pop, pd.read_csv(cache))
    res = lt.analyze_population(pop, n_states=n_states, features=features, max_states=max_states,
                                covariance=covariance, restarts=restarts, seed=seed, progress=progress_bar,
                                statistics=cached, criterion=criterion)
    sel, tm, n, features = res["selection"], res["map"], res["n_states"], res["features"]
    written = [write_csv(cache, res["statistics"]),
               write_csv(out / "model_selection.csv", sel.table, float_format=None),
               write_csv(out / "transitions.csv", tm.transitions, float_format=None, index_label="from"),
               write_csv(out / "states.csv", res["states"], float_format=None, index_label="state"),
               write_csv(out / "paths.csv", tm.paths_table(), float_format=None),
               write_csv(out / "detours.csv", res["detours"], float_format=None)]
    prefix = f"{title}: " if title else ""
    feats = ", ".join(features) if len(features) < 14 else "all 14 statistics"
    figs = {
        "model_selection": plots.latent_model_selection(
            sel.table, best=n, title=f"{prefix}HMM model selection ({feats}; {sel.covariance} covariance; "
                                     f"{len(sel.fit_members)} fit / {len(sel.heldout_members)} held-out members)"),
        "training_map": plots.latent_training_map(
            tm.transitions, tm.occupancy, tm.labels, tm.state_metrics["when"].tolist(),
            tm.state_metrics["test_acc"].fillna(0).tolist() if "test_acc" in tm.state_metrics else [0.5] * n,
            title=f"{prefix}training map, {n} states ({feats})"),
        "ribbons": plots.latent_ribbons(tm.paths_table(), tm.grokking_steps, tm.labels,
                                        title=f"{prefix}state of every member over training"),
    }
    written += _save(figs, out, png, plotlyjs=plotlyjs)
    return res | {"written": written}


def population(pop, out, fields: list[str], png: bool = True) -> list[Path]:
    """``population.csv`` (the population table) and, per field, ``population_{field}``: delay
    median/IQR and grok rate per value (``plots.population_summary``)."""
    out = Path(out)
    written = [write_csv(out / "population.csv", pop.table, float_format=None)]
    for f in fields:
        fig = plots.population_summary(pop.summary(f), f, title=f"{Path(str(pop.root or out)).name}: per {f}")
        written += plots.save_figure(fig, out / f"population_{f}", png=png)
    return written


# --- a run's figures from its files ----------------------------------------------------------


def draw_figures(run: Run, analysis: bool = True, png: bool = True, progress: bool = False) -> list[Path]:
    """(Re)draw a run's figures from its files: the training curve from ``metrics.csv`` and,
    with ``analysis`` and a ``progress.csv`` + ``phases.json`` from ``mechgrok analyze``, the
    analysis figures (``analysis_figures``), e.g. after installing Chromium for PNGs.
    ``progress``: a bar over the figures (PNG export takes seconds each). Returns the files written.
    After a resume the analysis figures stop where ``progress.csv`` does: ``stale_analysis`` says so."""
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
    return _save(figures, run.path, png, progress)


def stale_analysis(run: Run) -> str | None:
    """Why the analysis figures ``draw_figures`` redraws from ``progress.csv`` no longer show the
    whole run (it was resumed or extended after ``mechgrok analyze``), as one line; None when
    they are current or there is no analysis."""
    table_file = run.path / "progress.csv"
    if not table_file.exists() or not run.steps:
        return None
    measured = pd.read_csv(table_file, usecols=["step"])["step"]
    last = int(measured.max()) if len(measured) else None
    if last is not None and last >= run.steps[-1]:
        return None
    return (f"{table_file} ends at step {last} but the run has checkpoints up to step {run.steps[-1]} "
            f"(trained on since `mechgrok analyze`): the analysis figures stop at step {last}; "
            f"run `mechgrok analyze {run.path}` to measure the new checkpoints")


def analysis_figures(run, table: pd.DataFrame, ph: progress.Phases | None = None, nf=None) -> dict:
    """The figures of ``analysis`` (stem -> go.Figure) from its table (``progress.csv`` read
    back works: pass ``key_freqs``/``basis`` in ``table.attrs``), without measuring again.
    ``ph`` defaults to ``phases(table, run.metrics)``; ``nf`` (neuron frequencies of the last
    measured checkpoint) is computed when not given."""
    task, cfg = run.task, run.model_cfg
    ph = progress.phases(table, run.metrics) if ph is None else ph
    keys = table.attrs["key_freqs"]
    final = int(table["step"].iloc[-1])
    if nf is None:
        nf = fourier.neuron_frequencies(run.params(final), task, table.attrs.get("basis", "auto"), cfg=cfg)
    name = f"{run.path.name}: {task.describe()}"
    label = "frequency k" + (" (discrete-log basis)" if table.attrs["basis"] == "dlog" else "")
    bounds = ph.intervals()
    _, e_cols = progress.spectrum_columns(table, "W_E")
    _, l_cols = progress.spectrum_columns(table, "W_L")
    figs = {
        "progress_losses": plots.progress_losses(
            table, bounds, f"{name}: progress measures (" + (f"key freqs {keys})" if len(keys) <= 8
                                                             else f"{len(keys)} key freqs)")),
        "gini_weight_norm": plots.gini_and_weight_norm(table, bounds, f"{name}: sparsity and weight norm"),
        "spectrum": plots.spectrum_bars(table[e_cols].iloc[-1], keys, f"{name}, step {final}: W_E",
                                        "norm of W_E", label),
        "spectrum_W_L": plots.spectrum_bars(table[l_cols].iloc[-1], keys, f"{name}, step {final}: W_L",
                                            "norm of W_out·W_U", label),
        "neuron_frequencies": plots.neuron_frequency_map(nf.shares, nf.freq, nf.cluster_sizes(), nf.threshold,
                                                         f"{name}, step {final}: neurons by frequency"),
        "spectrum_evolution": plots.spectrum_evolution(table["step"], table[e_cols].to_numpy(), keys,
                                                       f"{name}: W_E spectrum over training"),
    }
    return figs


# --- (a, b) grids of one checkpoint ----------------------------------------------------------


def _long(grids, names: tuple[str, ...], value: str) -> pd.DataFrame:
    """A ``[..., p, p]`` grid tensor as one row per cell (``names`` index the leading axes, then
    a, b); cells without an example (NaN) are left out."""
    g = grids.numpy()
    index = pd.MultiIndex.from_product([range(n) for n in g.shape], names=[*names, "a", "b"])
    return pd.DataFrame({value: g.reshape(-1)}, index=index).dropna().reset_index()


def grids(run: Run, step: int | None = None, neurons: list[int] | None = None, layer: int | None = None,
          out_dir=None, png: bool = True) -> tuple[dict, list[Path]]:
    """The TL Grokking demo's figures at ``step`` (default: the last): attention of ``=`` to a
    and b per head (``fourier.attention_grids``) and neuron activations (``fourier.neuron_grids``,
    default the first 6 neurons) over the (a, b) grid, written to ``out_dir`` (default: the run
    directory) as ``attention_step{N}.csv`` (head, position, a, b, attention),
    ``neurons_step{N}.csv`` (neuron, a, b, activation) and the figures ``attention_step{N}``
    and ``neurons_step{N}``. Returns ``({"step", "layer", "neurons", "attention", "neuron"}, written)``."""
    step = run.resolve_step(step)
    params, cfg = run.params(step), run.model_cfg
    attention = fourier.attention_grids(params, run.task, layer, cfg)[:, :2]  # to a and b; '=' -> '=' is 1 - both
    neuron = fourier.neuron_grids(params, run.task, neurons, layer, cfg)
    neurons = list(range(len(neuron))) if neurons is None else [int(n) for n in neurons]
    out = Path(out_dir or run.path)
    at = _long(attention, ("head", "position"), "attention")
    at["position"] = at["position"].map({0: "a", 1: "b"})
    nt = _long(neuron, ("neuron",), "activation")
    nt["neuron"] = nt["neuron"].map(dict(enumerate(neurons)))
    written = [write_csv(out / f"attention_step{step}.csv", at, float_format="%.6g"),
               write_csv(out / f"neurons_step{step}.csv", nt, float_format="%.6g")]
    name = f"{run.path.name}: {run.task.describe()}, step {step}"
    layer_name = f"layer {layer_index(cfg, layer)}"
    figs = {f"attention_step{step}": plots.attention_grid_figure(
                attention.numpy(), title=f"{name}: attention from '=' ({layer_name})"),
            f"neurons_step{step}": plots.neuron_grid_figure(
                neuron.numpy(), neurons, title=f"{name}: neuron activations ({layer_name})")}
    written += _save(figs, out, png)
    res = {"step": step, "layer": layer_index(cfg, layer), "neurons": neurons, "attention": attention,
           "neuron": neuron}
    return res, written


# --- runs side by side -----------------------------------------------------------------------

PROGRESS_PANELS = {"restricted_loss": "restricted loss", "excluded_loss": "excluded loss", "gini_W_L": "Gini of W_L",
                   "weight_sq": "sum of squared weights"}


def compare(runs, out_dir=".", png: bool = True) -> tuple[pd.DataFrame, list[Path]]:
    """``comparison.compare`` of ``runs`` written to ``out_dir``: ``compare.csv`` (the table), the
    figure ``compare_curves`` (train/test loss and accuracy of every run overlaid) and, when any
    run was analysed, ``compare_progress`` (its progress measures: restricted and excluded
    loss, Gini of W_L, weight norm, where every analysed run has them). Returns
    ``(table, written)``."""
    from . import comparison as cmp

    runs = cmp.load_runs(runs)
    table = cmp.compare(runs)
    out = Path(out_dir)
    written = [write_csv(out / "compare.csv", table, float_format="%.6g")]
    title = ", ".join(table["run"][:4]) + (", ..." if len(table) > 4 else "")
    figs = {"compare_curves": plots.population_curves(
        cmp.curves(runs, table), ("train_loss", "test_loss", "train_acc", "test_acc"),
        ("train loss", "test loss", "train accuracy", "test accuracy"), title=f"{title}: training curves",
        log=("train_loss", "test_loss"), by_seed=False)}
    progress_tables = cmp.progress_tables(runs, table)
    if progress_tables:
        columns = [c for c in PROGRESS_PANELS if all(c in t for t in progress_tables.values())]
        if columns:
            figs["compare_progress"] = plots.population_curves(
                progress_tables, tuple(columns), tuple(PROGRESS_PANELS[c] for c in columns),
                title=f"{title}: progress measures", log=("restricted_loss", "excluded_loss"), by_seed=False)
    return table, written + _save(figs, out, png)
