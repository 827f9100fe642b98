"""Optimizer dynamics (seed 004, issue 10): curvature, gradient agreement, gradient rank,
momentum alignment, and the limit cycle after grokking.

Every measure is a function of ``(params, cfg, task)`` written with ``torch.func``. By default
the loss is the model's training loss (``model.loss_and_accuracy``: mean float64 cross-entropy)
over the whole train split, WITHOUT the weight-decay term: AdamW's decay is decoupled from the
gradient, so this is the loss whose gradient AdamW's moments average. ``split=`` picks "test" or
"all" instead, ``batch=`` a seeded minibatch of that split (an int) or explicit rows of it.
``names=`` restricts the parameters differentiated (default: all; the probe uses the trainable
ones). Costs are given in units of one training step (one forward + backward over the same
examples, F+B ~ 3 forwards).

Measures
--------
``hessian_top_eigenvalue``
    Largest-magnitude eigenvalue of the Hessian of the loss, by power iteration on
    Hessian-vector products computed forward-over-reverse (``jvp`` of ``grad``). Returns the
    Rayleigh quotient v.Hv of the last iterate. Cost: ~1.5-2 training steps per iteration;
    ``iters`` (default 20, stops early at relative change < ``tol``); ``v0`` warm-starts from a
    previous vector (``return_vector=True`` gives it back), which is what makes probing cheap.
``gradient_agreement``
    Cosine between the gradients of the two halves of the examples (a seeded random split into
    halves of n // 2 and n - n // 2 examples). 1: every example pulls the same way. On the
    whole train split the halves are complementary: with g the full gradient and d half the
    difference of the half gradients (equal halves), g_a = g + d, g_b = g - d, so the cosine
    is ~ (|g|^2 - |d|^2) / (|g|^2 + |d|^2): a signal-to-noise measure that goes to -1 as the
    full gradient vanishes (near a minimum of the train loss, e.g. after memorisation). With
    ``batch=B`` the halves are two disjoint random samples of B/2 examples. Cost: one training
    step.
``gradient_effective_rank``
    Effective rank (Roy & Vetterli 2007) of the ``n x n_params`` matrix G of per-sample
    gradients (``vmap(grad)``) on a seeded sample of ``n`` examples (default 128) of the split:
    with singular values s_i of G and p_i = s_i / sum_j s_j, erank = exp(-sum_i p_i log p_i)
    (0 log 0 = 0); between 1 (all gradients parallel) and n. G is not centred. Computed from
    the eigenvalues of the n x n Gram matrix G G^T in float64. Cost: ~n/|batch| of a training
    step plus n^2 * n_params for the Gram matrix; memory n * n_params floats.
``momentum_cosine`` / ``momentum_alignment(run, step)``
    Cosine between AdamW's first moment ``exp_avg`` (the EMA of past gradients, bias correction
    does not change a cosine) and the gradient of the loss at the same weights (the gradient the
    next step would add). Negative: the optimizer's history points against the current
    gradient. Needs the moments: a probe during training, a run trained with moments kept
    (``checkpoints/moments_*.safetensors``), or ``resume.safetensors`` (the last checkpoint).
    Cost: one training step.

Over a run
----------
``measure_run`` computes the measures at a run's checkpoints (the power iteration is
warm-started from one checkpoint to the next); ``make_probe`` returns the callable the trainer
runs every ``probe_every`` steps, whose rows it writes to ``dynamics.csv``.

Limit cycle and agreement dips
------------------------------
``limit_cycle`` looks after the grokking step (``progress.transition_metrics``) at test
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

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import grad, jvp, vmap
from tqdm.auto import tqdm

from .model import ModelConfig, Params, forward, loss_and_accuracy
from .runs import read_optimizer_state
from .tasks import Task
from .evaluation import SPLITS, split_index
from .schedule import trainable_names

MEASURES = ("hessian", "agreement", "momentum", "rank")
DYNAMICS_CSV = "dynamics.csv"
# A loss over a batch of examples, as a function of the parameters: the measures' internals
# take one of these, so tests can plant a loss whose Hessian or gradients are known.
BatchLoss = Callable[[Params, Tensor, Tensor], Tensor]


# --- the loss and the examples ------------------------------------------------------------


def model_loss(cfg: ModelConfig) -> BatchLoss:
    """The training loss without weight decay: mean cross-entropy of ``forward`` (float64)."""
    def loss(params: Params, x: Int[Tensor, "batch pos"], y: Int[Tensor, " batch"]) -> Tensor:
        return loss_and_accuracy(forward(params, cfg, x), y)[0]
    return loss


def examples(task: Task, split: str = "train", batch: int | Sequence[int] | Tensor | None = None,
             seed: int = 0) -> tuple[Int[Tensor, "n pos"], Int[Tensor, " n"]]:
    """Inputs and labels of ``split``; ``batch``: a seeded sample of that many of its examples,
    or explicit rows of the split."""
    idx = split_index(task, split)
    idx = torch.arange(len(task.labels)) if idx is None else idx
    if batch is not None:
        if isinstance(batch, int):
            if not 1 <= batch:
                raise ValueError(f"batch must be >= 1, got {batch}")
            g = torch.Generator().manual_seed(seed)
            idx = idx[torch.randperm(len(idx), generator=g)[:batch]]
        else:
            idx = idx[torch.as_tensor(batch, dtype=torch.long)]
    return task.inputs[idx], task.labels[idx]


def _detached(params: Params, names: Sequence[str] | None) -> tuple[Params, Params]:
    """(differentiated, fixed) parts of ``params``."""
    names = list(params) if names is None else list(names)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"names: no parameter {unknown[0]!r}")
    diff = {k: params[k].detach() for k in names}
    return diff, {k: v.detach() for k, v in params.items() if k not in diff}


def _bind(loss: BatchLoss, fixed: Params, x: Tensor, y: Tensor) -> Callable[[Params], Tensor]:
    return lambda p: loss({**fixed, **p}, x, y)


# --- dict-vector algebra ------------------------------------------------------------------


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[k].double() * b[k].double()).sum() for k in a)


def _norm(a: Params) -> Tensor:
    return _dot(a, a).sqrt()


def _scale(a: Params, c) -> Params:
    return {k: v * c for k, v in a.items()}


def cosine(a: Params, b: Params) -> float:
    """Cosine between two parameter-shaped dicts seen as one flat vector (over ``a``'s keys)."""
    na, nb = _norm(a), _norm({k: b[k] for k in a})
    if na == 0 or nb == 0:
        return float("nan")
    return float(_dot(a, b) / (na * nb))


# --- Hessian top eigenvalue ---------------------------------------------------------------


def hvp_fn(f: Callable[[Params], Tensor], params: Params) -> Callable[[Params], Params]:
    """v -> H v for the Hessian H of ``f`` at ``params`` (forward-over-reverse: jvp of grad)."""
    g = grad(f)
    return lambda v: jvp(g, (params,), (v,))[1]


def power_iteration(hvp: Callable[[Params], Params], v0: Params, iters: int = 20, tol: float = 1e-3
                    ) -> tuple[float, Params, int]:
    """Largest-magnitude eigenvalue of the symmetric operator ``hvp`` by power iteration from
    ``v0``: ``(Rayleigh quotient of the last iterate, unit eigenvector estimate, iterations run)``.
    Stops after ``iters`` or when the estimate changes by less than ``tol`` (relative)."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    v = _scale(v0, 1 / _norm(v0))
    lam = None
    for i in range(1, iters + 1):
        hv = hvp(v)
        new = float(_dot(v, hv))
        n = _norm(hv)
        if n == 0:
            return 0.0, v, i
        v = _scale(hv, 1 / n)
        if lam is not None and abs(new - lam) <= tol * abs(new):
            return new, v, i
        lam = new
    return lam, v, iters


def _random_like(params: Params, seed: int) -> Params:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=v.dtype).to(v.device) for k, v in params.items()}


def top_eigenvalue_of(loss: BatchLoss, params: Params, x: Tensor, y: Tensor, iters: int = 20,
                      tol: float = 1e-3, v0: Params | None = None, seed: int = 0,
                      names: Sequence[str] | None = None) -> tuple[float, Params, int]:
    """``hessian_top_eigenvalue`` for any ``loss(params, x, y)``: (eigenvalue, vector, iterations)."""
    diff, fixed = _detached(params, names)
    hvp = hvp_fn(_bind(loss, fixed, x, y), diff)
    start = v0 if v0 is not None else _random_like(diff, seed)
    return power_iteration(hvp, {k: start[k].to(diff[k]) for k in diff}, iters, tol)


def hessian_top_eigenvalue(params: Params, cfg: ModelConfig, task: Task, split: str = "train",
                           batch=None, iters: int = 20, tol: float = 1e-3, v0: Params | None = None,
                           seed: int = 0, names: Sequence[str] | None = None,
                           return_vector: bool = False):
    """Top (largest-magnitude) eigenvalue of the Hessian of the loss of ``split`` (default: the
    whole train split, no weight-decay term), by power iteration on jvp-of-grad Hessian-vector
    products. ``v0``: warm start (a params-shaped dict); ``return_vector``: also return the
    final vector, to warm-start the next call. Cost: ~2 training steps per iteration."""
    x, y = examples(task, split, batch, seed)
    lam, v, _ = top_eigenvalue_of(model_loss(cfg), params, x, y, iters, tol, v0, seed, names)
    return (lam, v) if return_vector else lam


# --- gradient agreement -------------------------------------------------------------------


def halves(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A seeded random split of ``range(n)`` into halves of ``n // 2`` and ``n - n // 2`` rows."""
    if n < 2:
        raise ValueError(f"gradient agreement needs at least 2 examples, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n // 2], perm[n // 2:]


def half_gradients(loss: BatchLoss, params: Params, x: Tensor, y: Tensor, seed: int = 0,
                   split_rows: tuple[Tensor, Tensor] | None = None, names: Sequence[str] | None = None
                   ) -> tuple[Params, Params]:
    """Gradients of the mean loss over each half of the examples (``halves`` unless
    ``split_rows`` gives the two sets of rows)."""
    a, b = split_rows if split_rows is not None else halves(len(y), seed)
    diff, fixed = _detached(params, names)
    ga = grad(_bind(loss, fixed, x[a], y[a]))(diff)
    gb = grad(_bind(loss, fixed, x[b], y[b]))(diff)
    return ga, gb


def agreement_of(loss: BatchLoss, params: Params, x: Tensor, y: Tensor, seed: int = 0,
                 split_rows: tuple[Tensor, Tensor] | None = None, names: Sequence[str] | None = None) -> float:
    """``gradient_agreement`` for any ``loss(params, x, y)``."""
    return cosine(*half_gradients(loss, params, x, y, seed, split_rows, names))


def gradient_agreement(params: Params, cfg: ModelConfig, task: Task, split: str = "train", batch=None,
                       seed: int = 0, names: Sequence[str] | None = None) -> float:
    """Cosine between the loss gradients of two random halves (seeded) of the examples of
    ``split`` (default the train split; ``batch``: a minibatch of it). Cost: one training step."""
    x, y = examples(task, split, batch, seed)
    return agreement_of(model_loss(cfg), params, x, y, seed, names=names)


# --- effective rank of per-sample gradients ----------------------------------------------


def per_sample_gradients(loss: BatchLoss, params: Params, x: Tensor, y: Tensor, chunk: int = 64,
                         names: Sequence[str] | None = None) -> Float[Tensor, "n n_params"]:
    """The matrix of per-example gradients (one flattened gradient per row), by
    ``vmap(grad)`` over the examples in chunks of ``chunk``."""
    diff, fixed = _detached(params, names)

    def one(p: Params, xi: Tensor, yi: Tensor) -> Tensor:
        return loss({**fixed, **p}, xi[None], yi[None])

    g = vmap(grad(one), in_dims=(None, 0, 0))
    rows = []
    for s in range(0, len(y), chunk):
        gs = g(diff, x[s:s + chunk], y[s:s + chunk])
        rows.append(torch.cat([gs[k].reshape(gs[k].shape[0], -1) for k in diff], dim=1))
    return torch.cat(rows)


def effective_rank(matrix: Float[Tensor, "n d"]) -> float:
    """Roy & Vetterli's (2007) effective rank: exp of the Shannon entropy of the singular values
    normalised to sum 1. Singular values from the eigenvalues of the smaller Gram matrix
    (float64); Gram eigenvalues below ``k * eps * largest`` (k = its size; the rounding level of
    the Gram matrix) count as zero. 0 for a zero matrix."""
    m = matrix.double()
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    eig = torch.linalg.eigvalsh(gram)
    top = eig.max()
    if top <= 0:
        return 0.0
    s = eig[eig > len(eig) * torch.finfo(torch.float64).eps * top].sqrt()
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def gradient_effective_rank(params: Params, cfg: ModelConfig, task: Task, n: int = 128,
                            split: str = "train", seed: int = 0, names: Sequence[str] | None = None) -> float:
    """Effective rank (Roy & Vetterli 2007: exp of the entropy of the normalised singular values)
    of the per-sample gradients of a seeded sample of ``n`` examples of ``split`` (default 128
    train examples; fewer if the split is smaller). Between 1 and n. Cost: per-sample gradients of
    n examples (vmap(grad)) and an n x n Gram matrix; memory n * n_params floats."""
    x, y = examples(task, split, min(n, _split_size(task, split)), seed)
    return effective_rank(per_sample_gradients(model_loss(cfg), params, x, y, names=names))


def _split_size(task: Task, split: str) -> int:
    idx = split_index(task, split)
    return len(task.labels) if idx is None else len(idx)


# --- momentum alignment -------------------------------------------------------------------


def momentum_cosine(params: Params, exp_avg: Params, cfg: ModelConfig, task: Task, split: str = "train",
                    batch=None, seed: int = 0) -> float:
    """Cosine between AdamW's ``exp_avg`` (keyed by parameter name; only those parameters are
    differentiated) and the gradient of the loss of ``split`` at ``params``."""
    x, y = examples(task, split, batch, seed)
    diff, fixed = _detached(params, list(exp_avg))
    g = grad(_bind(model_loss(cfg), fixed, x, y))(diff)
    return cosine({k: exp_avg[k].to(g[k]) for k in g}, g)


def read_moments(run, step: int | None = None) -> dict[str, Params] | None:
    """AdamW's moments at a checkpoint, ``{"exp_avg": {...}, "exp_avg_sq": {...}}`` keyed by
    parameter name (``runs.read_optimizer_state``); None when the run kept none for that step."""
    state = read_optimizer_state(run, step)
    if not state or not any("exp_avg" in st for st in state.values()):
        return None
    return {key: {k: st[key] for k, st in state.items() if key in st} for key in ("exp_avg", "exp_avg_sq")}


def momentum_alignment(run, step: int | None = None, split: str = "train") -> float:
    """Cosine between AdamW's ``exp_avg`` and the training-loss gradient at checkpoint ``step``
    of ``run`` (default: the last). Needs moments for that step (see ``read_moments``); runs
    probed with momentum have the series in ``dynamics.csv`` (column ``momentum_cos``)."""
    moments = read_moments(run, step)
    if moments is None:
        raise ValueError(f"{run.path}: no AdamW moments kept for step {run.resolve_step(step)}; "
                         f"train with --keep-moments, or probe with --probe every=N (dynamics.csv), "
                         f"or ask for the last step (resume.safetensors)")
    return momentum_cosine(run.params(step), moments["exp_avg"], run.model_cfg, run.task, split=split)


# --- over a run, and while training --------------------------------------------------------


def _check_measures(measures: Sequence[str]) -> tuple[str, ...]:
    measures = tuple(measures)
    bad = [m for m in measures if m not in MEASURES]
    if bad or not measures:
        raise ValueError(f"measures must be a non-empty subset of {MEASURES}, got {measures}")
    return measures


def make_probe(cfg, task: Task | None = None, measures: Sequence[str] = MEASURES,
               hessian_iters: int = 2, rank_n: int = 16, split: str = "train", seed: int = 0,
               names: Sequence[str] | None = None, first_iters: int = 20
               ) -> Callable[[int, Params, Params | None], dict[str, float]]:
    """The callable the trainer runs every ``probe_every`` steps:
    ``probe(step, params, exp_avg_or_None) -> {column: value}`` (rows of ``dynamics.csv``).

    ``cfg``: a ``RunConfig`` (its trainable parameters are differentiated) or a resolved
    ``ModelConfig`` (then pass ``task``). Columns: ``hessian_top`` (+ ``hessian_iters``),
    ``agreement``, ``momentum_cos`` (NaN while there is no ``exp_avg``), ``grad_erank``.
    Cheap by construction: the power iteration runs ``hessian_iters`` steps (default 2) warm-
    started from the previous probe's vector (the first, cold, up to ``first_iters``); each Hessian-vector
    product is taken as the size-weighted mean of the two halves' products, and ``jvp`` of the
    halves' ``grad`` returns the half gradients alongside, so agreement and the momentum's
    full-batch gradient (the weighted mean of the half gradients) come with the first product at
    no extra cost; the effective rank uses ``rank_n`` examples (default 16)."""
    measures = _check_measures(measures)
    if hasattr(cfg, "model") and hasattr(cfg, "train"):
        task = task or Task(cfg.task)
        mcfg = cfg.model.resolve(task)
        frozen = cfg.train.frozen
    else:
        if task is None:
            raise ValueError("make_probe(ModelConfig, ...) needs the task")
        mcfg, frozen = cfg, ()
    loss = model_loss(mcfg)
    x, y = examples(task, split)
    rows_a, rows_b = halves(len(y), seed)
    na, nb = len(rows_a), len(rows_b)
    xr, yr = examples(task, split, min(rank_n, len(y)), seed)
    state: dict[str, Params] = {}

    def probe(step: int, params: Params, exp_avg: Params | None = None) -> dict[str, float]:
        chosen = list(names) if names is not None else (list(exp_avg) if exp_avg else trainable_names(params, frozen))
        diff, fixed = _detached(params, chosen)
        grad_a = grad(_bind(loss, fixed, x[rows_a], y[rows_a]))
        grad_b = grad(_bind(loss, fixed, x[rows_b], y[rows_b]))
        out: dict[str, float] = {}
        halves_seen: list[tuple[Params, Params]] = []

        def hvp(v: Params) -> Params:
            ga, ha = jvp(grad_a, (diff,), (v,))
            gb, hb = jvp(grad_b, (diff,), (v,))
            if not halves_seen:
                halves_seen.append((ga, gb))
            return {k: (na * ha[k] + nb * hb[k]) / (na + nb) for k in ha}

        if "hessian" in measures:
            v0 = state.get("v")
            start = v0 if v0 is not None else _random_like(diff, seed)
            lam, v, n_it = power_iteration(hvp, {k: start[k].to(diff[k]) for k in diff},
                                           hessian_iters if v0 is not None else first_iters, tol=1e-3)
            state["v"] = v
            out["hessian_top"], out["hessian_iters"] = lam, n_it
        if "agreement" in measures or "momentum" in measures:
            ga, gb = halves_seen[0] if halves_seen else (grad_a(diff), grad_b(diff))
            if "agreement" in measures:
                out["agreement"] = cosine(ga, gb)
            if "momentum" in measures:
                # the half means weighted by size: the gradient of the mean loss over both halves
                g = {k: (na * ga[k] + nb * gb[k]) / (na + nb) for k in ga}
                out["momentum_cos"] = (cosine({k: exp_avg[k].to(g[k]) for k in g}, g)
                                       if exp_avg else float("nan"))
        if "rank" in measures:
            p = {k: v.detach() for k, v in params.items()}
            out["grad_erank"] = effective_rank(per_sample_gradients(loss, p, xr, yr, names=chosen))
        return out

    return probe


def parse_probe(spec: str) -> dict:
    """``every=10[,measures=hessian+agreement+momentum+rank][,iters=2][,rank_n=16]`` -> kwargs
    (``every`` plus ``make_probe``'s keywords)."""
    out: dict = {}
    for part in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--probe: expected key=value, got {part!r} (e.g. every=10,measures=hessian+agreement)")
        if key == "every":
            out["every"] = int(value)
        elif key == "measures":
            out["measures"] = _check_measures(value.replace("+", " ").replace(";", " ").split())
        elif key in ("iters", "hessian_iters"):
            out["hessian_iters"] = int(value)
        elif key == "rank_n":
            out["rank_n"] = int(value)
        else:
            raise ValueError(f"--probe: unknown key {key!r}; allowed: every, measures, iters, rank_n")
    if out.get("every", 0) < 1:
        raise ValueError("--probe needs every=N with N >= 1")
    return out


def probe_from_spec(spec: str):
    """A ``--probe`` spec as ``(factory, every)``: ``factory(run_config)`` makes that run's probe
    (what ``train_run(probe=...)`` and, per member, ``train_ensemble(probe=factory)`` take)."""
    kw = parse_probe(spec)
    every = kw.pop("every")
    return (lambda cfg: make_probe(cfg, **kw)), every


def measure_run(run, steps: Sequence[int] | None = None, measures: Sequence[str] = MEASURES,
                hessian_iters: int = 20, rank_n: int = 128, split: str = "train", seed: int = 0,
                progress: bool = True) -> pd.DataFrame:
    """The measures at ``run``'s checkpoints (default: all), one row per step: columns as
    ``make_probe``'s. Momentum comes only where the run kept moments (``read_moments``). The
    power iteration is warm-started from each checkpoint's vector to the next (``hessian_iters``
    is the cap per checkpoint, with tol 1e-3)."""
    measures = _check_measures(measures)
    names = _trainable(run)
    probe = make_probe(run.model_cfg, run.task, [m for m in measures if m != "momentum"] or ["agreement"],
                       hessian_iters=hessian_iters, rank_n=rank_n, split=split, seed=seed, names=names)
    rows = []
    for s in tqdm(list(run.steps if steps is None else steps), desc=f"dynamics {run.path.name}",
                  unit="ckpt", disable=not progress, dynamic_ncols=True):
        params = run.params(s)
        row = {"step": s, **probe(s, params, None)}
        if "momentum" in measures:
            m = read_moments(run, s)
            row["momentum_cos"] = (momentum_cosine(params, m["exp_avg"], run.model_cfg, run.task, split)
                                   if m is not None else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


def _trainable(run) -> list[str]:
    return trainable_names(run.params(run.steps[0]), run.config.train.frozen)


def read_dynamics(run) -> pd.DataFrame | None:
    """The probed series of a run (``dynamics.csv``), None when it was not probed."""
    f = Path(run.path) / DYNAMICS_CSV
    return pd.read_csv(f) if f.exists() else None


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


@dataclass(frozen=True)
class Correlation:
    r: float
    n: int
    p: float

    def to_dict(self) -> dict:
        return asdict(self)


def pearson(x, y) -> Correlation:
    """Pearson r, n and two-sided p (scipy.stats.pearsonr) over the pairs where both are finite."""
    from scipy.stats import pearsonr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.std(x[keep]) == 0 or np.std(y[keep]) == 0:
        return Correlation(float("nan"), int(keep.sum()), float("nan"))
    res = pearsonr(x[keep], y[keep])
    return Correlation(float(res.statistic), int(keep.sum()), float(res.pvalue))


def _at(dyn: pd.DataFrame, col: str, step: int | None) -> float:
    """``col`` at the probe nearest ``step`` (NaN without a step or a value)."""
    if step is None or col not in dyn or not len(dyn):
        return float("nan")
    return float(dyn[col].iloc[int(np.argmin(np.abs(dyn["step"].to_numpy() - step)))])


def series_summary(dyn: pd.DataFrame, memorised: int | None, grokked: int | None) -> dict:
    """What each probed series did around the transition (the numbers seed 004 quotes):
    ``hessian_rise`` = largest top eigenvalue / the first probe's, and where it peaked;
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
                "hessian_final": float(h[-1])}
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
    return table, _dips_correlation(table)


def _dips_correlation(table: pd.DataFrame, column: str = "agreement_dips") -> Correlation:
    if column not in table:
        return Correlation(float("nan"), 0, float("nan"))
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
    return {c: _dips_correlation(table, c) for c in DIP_COUNTS}


def analyze(path, out=None, measure: bool = True, prominence: float = 0.1, png: bool = True,
            progress: bool = True) -> tuple[pd.DataFrame, Correlation | None, list[Path]]:
    """``mechgrok dynamics``: for a run, or every run under a sweep directory, the summary table
    (``dynamics_summary.csv``), the geometry figure per run (``dynamics.html``/``.png`` in the
    run), and the limit-cycle figure; over several runs also the dips-vs-gap scatter and its
    Pearson correlation. Runs trained without ``--probe`` are measured at their checkpoints
    (``measure_run``, written to ``dynamics_checkpoints.csv``) unless ``measure=False``.
    Returns ``(table, correlation or None, files written)``."""
    from . import plots
    from .milestones import transition_metrics

    runs = find_runs(path)
    out = Path(out) if out is not None else Path(path)
    written: list[Path] = []
    rows, series, grokked = [], {}, {}
    for run in runs:
        dyn = read_dynamics(run)
        if dyn is None and measure and run.steps:
            dyn = measure_run(run, progress=progress)
            f = run.path / "dynamics_checkpoints.csv"
            dyn.to_csv(f, index=False, float_format="%.9g")
            written.append(f)
        tr = transition_metrics(run.metrics)
        rows.append(run_summary(run, dyn, prominence))
        label = run.path.name if len(runs) > 1 else f"{run.path.name} (wd {run.config.train.weight_decay:g})"
        series[label], grokked[label] = run.metrics, tr.grokked_step
        if dyn is not None:
            fig = plots.dynamics_geometry(run.metrics, dyn, {"memorised": tr.memorised_step, "grokked": tr.grokked_step},
                                          title=f"{run.path.name}: what the geometry is doing")
            written += plots.save_figure(fig, run.path / "dynamics", png=png)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "dynamics_summary.csv", index=False, float_format="%.6g")
    written.append(out / "dynamics_summary.csv")
    written += plots.save_figure(plots.limit_cycle_figure(dict(list(series.items())[:12]), grokked),
                                 out / "dynamics_limit_cycle", png=png)
    corr = None
    if len(runs) > 1:
        corr = _dips_correlation(table)
        if "agreement_dips" in table:
            fig = plots.dips_vs_gap_scatter(table, corr.r, corr.n, corr.p, rate=dips_vs_gap_all(table)[
                "agreement_dips_per_100_steps"])
            written += plots.save_figure(fig, out / "dynamics_dips_vs_gap", png=png)
    return table, corr, written


def find_runs(path) -> list:
    """``path`` itself when it is a run, else every run below it (sweep or ensemble members)."""
    from .runs import Run

    path = Path(path)
    if (path / "config.json").exists():
        return [Run(path)]
    found = sorted(p.parent for p in path.rglob("config.json"))
    if not found:
        raise FileNotFoundError(f"{path}: neither a run nor a directory holding runs (no config.json)")
    return [Run(p) for p in found]
