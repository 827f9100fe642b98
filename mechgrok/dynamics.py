"""Optimizer dynamics (seed 004): curvature, gradient agreement, gradient rank,
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
``make_probe`` returns the stateful probe behind the built-in measures ``hessian``,
``agreement``, ``momentum`` and ``rank`` (``measures.BUILTIN``): the trainers run it every
``measure_every`` steps and write its rows to ``dynamics.csv``; ``measures.dynamics_series`` takes the same
measures at a run's checkpoints (``measures.measure_series``; the power iteration is
warm-started from one checkpoint to the next).

The time-series statistics over ``metrics.csv`` and ``dynamics.csv`` (the limit cycle after
grokking, agreement dips and their correlation with the grokking gap) are ``cycles.py``'s.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import grad, jvp, vmap

from .model import ModelConfig, Params, forward, loss_and_accuracy
from .runs import read_optimizer_state
from .tasks import Task
from .evaluation import split_index
from .schedule import trainable_names

MEASURES = ("hessian", "agreement", "momentum", "rank")
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


def check_measures(measures: Sequence[str]) -> tuple[str, ...]:
    """``measures`` as a tuple, or one line naming what is not one of ``MEASURES``."""
    measures = tuple(measures)
    bad = [m for m in measures if m not in MEASURES]
    if bad or not measures:
        raise ValueError(f"measures must be a non-empty subset of {MEASURES}, got {measures}")
    return measures


def check_probe_args(hessian_iters: int = 2, rank_n: int = 16, first_iters: int = 20, **_) -> None:
    """``make_probe``'s counts, checked where they are given (``measures.dynamics_measure``):
    the probe itself is built at its first call, many steps into a run, which is too late."""
    for name, value in (("iters", hessian_iters), ("rank_n", rank_n), ("first_iters", first_iters)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"probe {name} must be an integer >= 1, got {value!r}")


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
    measures = check_measures(measures)
    check_probe_args(hessian_iters, rank_n, first_iters)
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
