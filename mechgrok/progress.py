"""Progress measures over a checkpoint series (Nanda et al. 2023) and the phases they reveal.

Restricted and excluded loss
----------------------------
A grokked ``a + b`` model computes logits cos(w_k (a + b - c)): as functions over the (a, b)
grid, the logits (and the neurons) it uses for frequency k lie in the two directions
cos(w_k (a + b)) and sin(w_k (a + b)) (``fourier.answer_directions``; for other ops the
answer's coordinate on the group replaces a + b). Restricted loss keeps only those directions
(plus the mean) of *everything* that reaches the logits; excluded loss removes exactly them.
Two published definitions are offered, by ``level``:

* ``level="logits"`` (default): Nanda et al.'s code. The logit vector of every answer c is
  projected over all p^2 pairs (hook ``unembed.hook_out``). Restricted loss is measured on all
  pairs, excluded loss on the train pairs. This is the definition behind the restricted/excluded
  loss curves of Nanda et al. 2023 (their Fig. 7 and the phase boundaries read off it).
* ``level="neurons"``: the TransformerLens Grokking demo. The neurons
  (``blocks.{L}.mlp.hook_post``, last position) are projected and only they reach the logits
  with their per-example content: for restricted loss the path that bypasses them
  (``blocks.{L}.hook_resid_mid``: embeddings and attention, read there and subtracted after the
  MLP so the MLP's input is untouched) is replaced by its mean over the examples -- which is exactly the demo's "neurons through W_out W_U, shifted to the full
  logits' mean" for a 1-layer model without LayerNorm, written as TL hooks so it runs on any
  depth -- and the loss is measured on the test pairs, as the demo's restricted-loss plot is.
  Excluded loss removes the key directions from the neurons and keeps the model's own direct
  path, as the demo adds ``resid_mid`` back; train pairs.

Letting the per-example direct path through a neuron-level restriction keeps non-key content:
on a checkpoint trained elsewhere that made restricted loss 3.6-5x too high. Tests pin
both definitions to second implementations written from these definitions.

The hooks have TransformerLens's signature ``fn(activation, hook)``, act only on the last
position and need the batch to be every example of the task in task order (``task.inputs``);
they run unchanged on a TL model and on the fast path.

Transition metrics and phases
-----------------------------
``milestones.transition_metrics`` is the one definition of the milestones (seed 001): memorised
= first evaluation with train accuracy > 0.99, grokked = first with test accuracy > 0.9, read from
the run's evaluation grid (``metrics.csv``, every ``eval_every`` steps), never from the coarser
checkpoint grid. ``phases`` adds Nanda's three phases on the checkpoint grid of a
``measure_run`` table.

Over a series
-------------
``measure_run`` computes every measure at every checkpoint. For the 1-layer, no-LayerNorm
models of the Nanda family it uses ``grid_forward``: the exact forward over the full (a, b) grid
with the attention and pre-activations built from per-token tables, sharing the model's pieces
(``model.token_position_table``, ``attn_scale``, ``activation_fn``); the hooks act on
``post @ W_L``, which equals hooking ``post`` because the projection is linear on the batch axis
and everything after ``hook_post`` is linear. Tests pin it to the hooked forward. Other
architectures use the hooks through the fast path (``engine="hooks"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from . import choices
from . import fourier
from .fourier import FrequencyProjection
from .evaluation import split_metrics
from .milestones import Transitions, transition_metrics
from .model import (Hook, ModelConfig, Params, activation_fn, as_model, as_params, attn_scale, hook_name,
                    is_tl_model, layer_index, run_target, token_position_table, weight_sq)
from .tasks import Task

LEVELS = choices.LEVELS
ENGINES = ("auto", "grid", "hooks")
# each definition's own split for restricted loss (see the module docstring)
RESTRICTED_SPLIT = {"logits": "all", "neurons": "test"}


# --- the hooks -----------------------------------------------------------------------------


class DirectPathMeanAblation:
    """Replace, at the last position, the path that bypasses block ``layer``'s MLP by its mean
    over the examples, leaving the MLP's own input untouched: two TL hooks that share state,
    one reading ``hook_resid_mid`` (the MLP input and the skip connection), one writing
    ``hook_resid_post = resid_mid + mlp_out`` as ``mean(resid_mid) + mlp_out``."""

    last_position_only = True

    def __init__(self, layer: int):
        self.layer, self._mid = layer, None

    def hooks(self) -> list[Hook]:
        return [(f"blocks.{self.layer}.hook_resid_mid", self.read), (f"blocks.{self.layer}.hook_resid_post", self.write)]

    def read(self, activation: Float[Tensor, "batch pos d_model"], hook=None):
        self._mid = activation[:, -1]

    def write(self, activation: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
        last = activation[:, -1] - self._mid + self._mid.mean(0, keepdim=True)
        self._mid = None
        return last[:, None] if activation.shape[1] == 1 else torch.cat([activation[:, :-1], last[:, None]], dim=1)

    read.last_position_only = write.last_position_only = True


def _check_level(level: str):
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def restricted_hooks(task: Task, freqs, cfg: ModelConfig, level: str = "logits", layer: int | None = None,
                     basis: str = "auto") -> list[Hook]:
    """The TL hooks of restricted loss at ``level`` (see the module docstring)."""
    _check_level(level)
    keep = FrequencyProjection(task, freqs, "keep", basis)
    if level == "logits":
        return [(hook_name("logits"), keep)]
    L = layer_index(cfg, layer)
    return [(hook_name("neurons", L, cfg), keep)] + DirectPathMeanAblation(L).hooks()


def excluded_hooks(task: Task, freqs, cfg: ModelConfig, level: str = "logits", layer: int | None = None,
                   basis: str = "auto") -> list[Hook]:
    """The TL hook of excluded loss at ``level``: the key directions removed."""
    _check_level(level)
    remove = FrequencyProjection(task, freqs, "remove", basis)
    return [(hook_name(level, layer, cfg), remove)]


# --- losses through the hooks --------------------------------------------------------------


@torch.no_grad()
def hooked_logits(model, task: Task, fwd_hooks=(), cfg: ModelConfig | None = None
                  ) -> Float[Tensor, "n_examples d_vocab_out"]:
    """Last-position logits for every example of ``task`` with ``fwd_hooks``: through the TL
    model's own ``run_with_hooks`` for a TL model (hooks attached to it take effect), through
    the fast path otherwise (``model.as_model``)."""
    target, _ = as_model(model, cfg)
    return run_target(target, task.inputs, list(fwd_hooks), last_only=True)[:, -1]


def restricted_loss(model, task: Task, freqs, level: str = "logits", split: str | None = None,
                    basis: str = "auto", layer: int | None = None, cfg: ModelConfig | None = None,
                    step: int | None = None) -> float:
    """Loss with everything that reaches the logits restricted to its mean and the key-frequency
    directions. ``level="logits"`` (default) is Nanda et al.'s definition, measured on all pairs;
    ``level="neurons"`` the TransformerLens Grokking demo's, measured on the test pairs.
    ``split`` overrides the definition's own split."""
    _check_level(level)
    target, mcfg = as_model(model, cfg, step)
    hooks = restricted_hooks(task, freqs, mcfg, level, layer, basis)
    return _split_loss(hooked_logits(target, task, hooks), task, split or RESTRICTED_SPLIT[level])


def excluded_loss(model, task: Task, freqs, level: str = "logits", split: str = "train", basis: str = "auto",
                  layer: int | None = None, cfg: ModelConfig | None = None, step: int | None = None) -> float:
    """Loss (train pairs by default) with the key-frequency directions removed from the logits
    (``level="logits"``, Nanda et al.) or from the neurons (``level="neurons"``, TL demo)."""
    _check_level(level)
    target, mcfg = as_model(model, cfg, step)
    return _split_loss(hooked_logits(target, task, excluded_hooks(task, freqs, mcfg, level, layer, basis)),
                       task, split)


# --- weight measures -----------------------------------------------------------------------


def gini(x: Float[Tensor, " n"]) -> float:
    """Gini coefficient of a non-negative vector: 0 when all entries are equal, (n-1)/n for a
    one-hot vector. G = sum_i (2i - n - 1) x_(i) / (n sum x), x sorted ascending, i from 1."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    if (x < 0).any():
        raise ValueError("gini needs a non-negative vector")
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * i - n - 1) * x.sort().values).sum() / (n * total))


def spectrum_gini(norms: Float[Tensor, " n_freq"]) -> float:
    """The Gini sparsity of a spectrum (a norm per frequency, index = k, as
    ``fourier.embedding_spectrum`` returns it) -- the one convention mechgrok uses everywhere:
    over k >= 1 only. k = 0 is the constant: a shift of every embedding or every logit, which a
    bias or the softmax absorbs, so it says nothing about how few frequencies the model uses."""
    return gini(torch.as_tensor(norms)[1:])


def weight_measures(params: Params, cfg: ModelConfig, task: Task, basis: str = "auto",
                    W_L: Float[Tensor, "d_mlp d_vocab_out"] | None = None) -> dict[str, float]:
    """Gini (``spectrum_gini``) of the W_E and W_L frequency norms, the sum of squared weights,
    and the norms per frequency (columns ``W_E_k{k}``, ``W_L_k{k}``). Reads the weights only:
    hooks on a model do not affect it. ``W_L``: the last layer's
    ``W_out @ W_U`` if the caller has it already."""
    c = fourier.coords(task, basis)
    e = fourier.freq_norms(c.basis @ params["embed.W_E"][c.elements].float())
    W_L = fourier.W_L(params, cfg) if W_L is None else W_L
    wl = fourier.freq_norms(c.basis @ W_L[:, c.elements].T.float())
    out = {"gini_W_E": spectrum_gini(e), "gini_W_L": spectrum_gini(wl), "weight_sq": weight_sq(params)}
    out |= {f"W_E_k{k}": float(v) for k, v in enumerate(e)}
    out |= {f"W_L_k{k}": float(v) for k, v in enumerate(wl)}
    return out


# --- one checkpoint ------------------------------------------------------------------------


def _split_loss(logits: Float[Tensor, "n_examples d_vocab_out"], task: Task, split: str) -> float:
    """Mean loss over one split (``evaluation.split_metrics``, the one cross-entropy)."""
    return split_metrics(logits, task, (split,))[f"{split}_loss"]


def _loss_measures(full, restricted, excluded, task: Task, level: str) -> dict[str, float]:
    """Train/test loss and accuracy of ``full``, restricted loss on its definition's split,
    excluded loss on the train pairs."""
    return (split_metrics(full, task)
            | {"restricted_loss": _split_loss(restricted, task, RESTRICTED_SPLIT[level]),
               "excluded_loss": _split_loss(excluded, task, "train")})


def measure_checkpoint(model, task: Task, freqs, level: str = "logits", basis: str = "auto",
                       cfg: ModelConfig | None = None) -> dict[str, float]:
    """Every measure for one model by three hooked forwards: through the TL model's own
    ``run_with_hooks`` when given one (hooks attached to it take effect), through the fast path
    otherwise. The weight measures read the weights only."""
    params, mcfg = as_params(model, cfg)
    forward_of = model if is_tl_model(model) else (params, mcfg)
    full = hooked_logits(forward_of, task)
    r = hooked_logits(forward_of, task, restricted_hooks(task, freqs, mcfg, level, basis=basis))
    e = hooked_logits(forward_of, task, excluded_hooks(task, freqs, mcfg, level, basis=basis))
    return _loss_measures(full, r, e, task, level) | weight_measures(params, mcfg, task, basis)


# --- the grid engine -----------------------------------------------------------------------


def grid_engine_ok(cfg: ModelConfig, task: Task) -> bool:
    """Whether ``grid_forward`` applies: one block, no LayerNorm, a modular task."""
    return cfg.n_layers == 1 and cfg.normalization == "none" and task.is_modular and task.n_ctx == 3


def grid_forward(params: Params, cfg: ModelConfig, task: Task
                 ) -> tuple[Float[Tensor, "n_examples d_vocab_out"], Float[Tensor, "n_examples d_mlp"]]:
    """``(base, post)`` for every example of a 1-layer, no-LN modular task, exactly: the logits
    are ``base + post @ W_L`` where ``post`` is ``blocks.0.mlp.hook_post`` at the last position
    and ``base`` is everything else (the path through ``hook_resid_mid``, and the biases).

    Measurably needed (bench/progress_measures.py): position 0 holds one of p tokens, position
    1 one of the grid's b values, position 2 the ``=``, so keys, values and their images through
    W_O, W_in and W_U are computed per token (tables of p rows) and mixed per example by the
    attention pattern -- p^2 x 3 heads-wide mixes instead of p^2 x d_model x d_mlp products."""
    if not grid_engine_ok(cfg, task):
        raise ValueError("grid_forward needs a 1-layer, no-LayerNorm model on a modular task")
    P, p = params, task.p
    bs = torch.arange(1, p) if task.op == "div" else torch.arange(p)
    table = token_position_table(P, 3)
    resid = [table[:p, 0], table[bs, 1], table[p, 2][None]]  # residual per token, per position
    q = einops.einsum(resid[2][0], P["blocks.0.attn.W_Q"], "d, h d k -> h k") + P["blocks.0.attn.b_Q"]
    scores, values_out = [], []
    for r in resid:
        k = einops.einsum(r, P["blocks.0.attn.W_K"], "u d, h d k -> u h k") + P["blocks.0.attn.b_K"]
        v = einops.einsum(r, P["blocks.0.attn.W_V"], "u d, h d k -> u h k") + P["blocks.0.attn.b_V"]
        scores.append(einops.einsum(k, q, "u h k, h k -> u h") / attn_scale(cfg))
        values_out.append(einops.einsum(v, P["blocks.0.attn.W_O"], "u h k, h k d -> u h d"))
    n_a, n_b, h = p, len(bs), cfg.n_heads
    s = torch.stack([scores[0][:, None].expand(n_a, n_b, h), scores[1][None].expand(n_a, n_b, h),
                     scores[2][None].expand(n_a, n_b, h)], dim=-1)
    pattern = s.softmax(-1)  # [a b head pos]
    resid_eq = resid[2][0] + P["blocks.0.attn.b_O"]  # the "=" residual: every example's last position

    def mix(tables: list[Tensor], const: Tensor) -> Tensor:
        # sum over positions and heads of pattern * table row, as two batched matmuls on the
        # grid (over a, with the "=" table appended, and over b). Explicit bmm: torch.einsum
        # picks a path 20x slower for these shapes.
        by_a = torch.cat([pattern[..., 0], pattern[..., 2]], dim=-1)  # [a b 2h]
        t_a = torch.cat([tables[0], tables[2].expand(n_a, -1, -1)], dim=1)  # [a 2h m]
        by_b = torch.bmm(pattern[..., 1].transpose(0, 1).contiguous(), tables[1])  # [b a m]
        out = torch.baddbmm(by_b.transpose(0, 1) + const, by_a, t_a)
        return out.reshape(n_a * n_b, -1)

    W_in, W_U = P["blocks.0.mlp.W_in"], P["unembed.W_U"]
    pre = mix([t @ W_in for t in values_out], resid_eq @ W_in + P["blocks.0.mlp.b_in"])
    post = activation_fn(cfg)(pre)
    base = mix([t @ W_U for t in values_out], (resid_eq + P["blocks.0.mlp.b_out"]) @ W_U + P["unembed.b_U"])
    return base, post


@torch.no_grad()
def measure_grid(params: Params, cfg: ModelConfig, task: Task, projections: tuple, level: str = "logits",
                 basis: str = "auto") -> dict[str, float]:
    """Every measure for one checkpoint through ``grid_forward`` and the ``(keep, remove)``
    projections, by linearity (module docstring)."""
    base, post = grid_forward(params, cfg, task)
    W_L = fourier.W_L(params, cfg)
    keep, remove = (pr.project for pr in projections)
    if level == "logits":
        full = torch.addmm(base, post, W_L)
        restricted, excluded = keep(full), remove(full)
    else:  # the direct path mean-ablated for restricted, kept for excluded
        contrib = post @ W_L
        full = base + contrib
        restricted = base.mean(0, keepdim=True) + keep(contrib)
        excluded = base + remove(contrib)
    return _loss_measures(full, restricted, excluded, task, level) | weight_measures(params, cfg, task, basis, W_L)


# --- a whole run ---------------------------------------------------------------------------


def measure_run(run, freqs=None, steps: list[int] | None = None, level: str = "logits", basis: str = "auto",
                engine: str = "auto", key_rule: str = "neurons", progress: bool = True, device=None) -> pd.DataFrame:
    """Every measure at every checkpoint of ``run`` (or at ``steps``), one row per step.

    ``freqs``: the key frequencies the restricted/excluded losses use; default
    ``fourier.key_frequencies`` of the final checkpoint (rule ``key_rule``). They are stored in
    ``table.attrs["key_freqs"]`` with the basis and level."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    _check_level(level)
    task, cfg = run.task, run.model_cfg
    fourier.resolve_basis(task, basis)  # a task without a Fourier basis fails here, in one line
    steps = run.steps if steps is None else list(steps)
    if not steps:
        raise ValueError(f"{run.path}: no checkpoints to measure")
    if freqs is None:
        freqs = fourier.key_frequencies(run.params(run.steps[-1]), task, rule=key_rule, basis=basis, cfg=cfg)
    if not freqs:
        raise ValueError(f"{run.path}: the final checkpoint has no key frequencies by the {key_rule!r} rule "
                         f"(has it learned anything?): pass freqs")
    freqs = list(fourier.check_frequencies(freqs, task, basis))
    use_grid = engine == "grid" or (engine == "auto" and grid_engine_ok(cfg, task))
    if use_grid and not grid_engine_ok(cfg, task):
        raise ValueError("engine='grid' needs a 1-layer, no-LayerNorm model on a modular task")
    projections = (FrequencyProjection(task, freqs, "keep", basis), FrequencyProjection(task, freqs, "remove", basis))
    rows = []
    for step in tqdm(steps, desc="measures", unit="ckpt", disable=not progress, dynamic_ncols=True):
        params = run.params(step, device=device)
        if use_grid:
            m = measure_grid(params, cfg, task, projections, level, basis)
        else:
            m = measure_checkpoint((params, cfg), task, freqs, level, basis)
        rows.append({"step": step} | m)
    table = pd.DataFrame(rows)
    table.attrs.update(key_freqs=freqs, basis=fourier.resolve_basis(task, basis), level=level)
    return table


# --- phases --------------------------------------------------------------------------------


PHASE_NAMES = ("memorisation", "circuit formation", "cleanup")


@dataclass(frozen=True)
class Phases:
    """Nanda et al.'s three phases on the checkpoint grid, with the run's ``transitions``.

    The memorisation phase runs from 0 to ``circuit_start``, circuit formation to
    ``cleanup_start``, cleanup to ``cleanup_end`` (see ``phases`` for the rule); any is None
    when the series does not show it. Steps of events are in ``transitions`` (``*_step``);
    ``intervals()`` gives each phase as a (start, end) interval."""

    transitions: Transitions
    circuit_start: int | None
    cleanup_start: int | None
    cleanup_end: int | None
    last_step: int | None

    def intervals(self) -> dict[str, tuple[int, int] | None]:
        """Step interval of each phase; a run that has not grokked is still forming its circuit
        at its last step (no cleanup)."""
        end = self.cleanup_start if self.cleanup_start is not None else self.last_step
        b = (0, self.circuit_start, end, self.cleanup_end)
        return {n: (b[i], b[i + 1]) if None not in (b[i], b[i + 1]) else None for i, n in enumerate(PHASE_NAMES)}

    def to_dict(self) -> dict:
        """Flat: the transition metrics, the phase starts, and ``phases`` (the intervals)."""
        return (self.transitions.to_dict() | {"circuit_start": self.circuit_start, "cleanup_start": self.cleanup_start,
                                              "cleanup_end": self.cleanup_end, "phases": self.intervals()})


def _smooth(y: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return y
    pad = np.pad(y, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(pad, np.ones(width) / width, mode="valid")


def phases(table: pd.DataFrame, metrics: pd.DataFrame | None = None, smooth: int | None = None) -> Phases:
    """Phase boundaries from a ``measure_run`` table (step, test_loss, excluded_loss on the
    checkpoint grid); transition metrics from ``metrics`` (the run's evaluation grid,
    ``run.metrics``: pass it) or, without it, from the table's own accuracy columns.

    Rule for the boundaries (no step is hand-set):
      * cleanup is the drop of the test loss: its rate of fall, -d log(test loss)/d step
        (smoothed over ``smooth`` checkpoints, default 2% of them, at least 3), peaks during
        cleanup; ``cleanup_start`` and ``cleanup_end`` are the first and last steps around the
        peak where the rate is at least half its peak (full width at half maximum). Only a run
        that groks has a cleanup: elsewhere the fall rate peaks on noise;
      * circuit formation starts where memorisation stops helping: the checkpoint with the
        lowest excluded loss at or after the memorised step and before ``cleanup_start`` (Nanda:
        train and excluded loss fall during memorisation, excluded loss rises during circuit
        formation). Without an excluded_loss column, the first checkpoint at or after the
        memorised step. So memorised step <= circuit_start <= cleanup_start.
    """
    t = table.sort_values("step").reset_index(drop=True)
    tr = transition_metrics(t if metrics is None else metrics)
    steps = t["step"].to_numpy()
    circuit = cleanup_start = cleanup_end = None
    if len(steps) >= 3 and tr.grokked:
        width = smooth or max(3, round(0.02 * len(steps)))
        rate = -np.gradient(_smooth(np.log(t["test_loss"].to_numpy().clip(1e-30)), width), steps)
        peak = int(np.argmax(rate))
        if rate[peak] > 0:
            half = rate >= rate[peak] / 2
            lo = peak
            while lo > 0 and half[lo - 1]:
                lo -= 1
            hi = peak
            while hi < len(steps) - 1 and half[hi + 1]:
                hi += 1
            cleanup_start, cleanup_end = int(steps[lo]), int(steps[hi])
    if len(steps):
        window = steps >= (tr.memorised_step if tr.memorised_step is not None else steps[0])
        if cleanup_start is not None:
            window &= steps <= cleanup_start
        if window.any():
            if "excluded_loss" in t:
                circuit = int(steps[window][np.argmin(t["excluded_loss"].to_numpy()[window])])
            else:
                circuit = int(steps[window][0])
    return Phases(tr, circuit, cleanup_start, cleanup_end, int(steps[-1]) if len(steps) else None)


# --- writing a run's analysis --------------------------------------------------------------


def spectrum_columns(table: pd.DataFrame, which: str = "W_E") -> tuple[list[int], list[str]]:
    """The frequencies and column names of the per-frequency norms ``measure_run`` stores."""
    cols = [c for c in table.columns if c.startswith(f"{which}_k")]
    return [int(c.split("_k")[-1]) for c in cols], cols


def spectrum(run, step: int | None = None, basis: str = "auto") -> pd.DataFrame:
    """W_E and W_L norms per frequency at one checkpoint (default: the last), with the key
    frequencies of all three rules (columns ``key_<rule>``; ``attrs``: ``step``, ``key_freqs``,
    ``basis``). ``report.spectrum`` writes it."""
    step = run.resolve_step(step)  # one line naming the nearest steps, or saying there are none
    params, task, cfg = run.params(step), run.task, run.model_cfg
    e = fourier.embedding_spectrum(params, task, basis, cfg=cfg)
    wl = fourier.W_L_spectrum(params, task, basis, cfg=cfg)
    keys = {rule: fourier.key_frequencies(params, task, rule=rule, basis=basis, cfg=cfg) for rule in fourier.KEY_RULES}
    table = pd.DataFrame({"k": range(len(e)), "W_E_norm": e.tolist(), "W_L_norm": wl.tolist()})
    for rule, ks in keys.items():
        table[f"key_{rule}"] = table["k"].isin(ks)
    table.attrs.update(step=step, key_freqs=keys, basis=fourier.resolve_basis(task, basis))
    return table
