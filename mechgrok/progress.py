"""Progress measures over a checkpoint series (Nanda et al. 2023), and the phases they reveal.

Restricted and excluded loss
----------------------------
A grokked ``a + b`` model computes logits cos(w_k (a + b - c)): seen as functions over the
(a, b) grid, the neurons and logits it uses for frequency k lie in the two directions
cos(w_k (a + b)) and sin(w_k (a + b)). The projection hooks here act on exactly those
2 directions per key frequency (never the 3x3 block {1, cos w_k a, sin w_k a} x {...b}, whose
cross terms are the bias reported for ARENA-style masks), plus the mean:

* restricted: keep the grid mean and the key directions of the hooked activation, drop the
  rest; the loss is measured on all pairs (``split="all"``, as in Nanda's code).
* excluded: remove only the key directions (the mean stays); the loss is measured on the
  train pairs, so a rising excluded loss means memorisation no longer carries the train set.

For other ops the directions are cos/sin(w_k z(c)) with z(c) the coordinate of the answer c
on the group of ``fourier.coords`` (c = a - b for sub; the discrete log of c for mul and div),
which is what each op's circuit reads out. Examples whose answer is outside the group (answer
0 in the dlog basis) pass through the hooks unchanged.

Mean and bias handling. The constant direction (the grid mean of every neuron or logit) is
always kept by both hooks. At the neuron level (default; ``blocks.{L}.mlp.hook_post`` at the
last position) only the neurons are projected: everything else that reaches the logits (the
direct path through ``hook_resid_mid``, ``b_out``, ``b_U``) is the model's own, as in the
TransformerLens demo's excluded loss; at the logit level (``level="logits"``, hook
``unembed.hook_out``) the whole logit vector of each answer c is projected, as in Nanda's code.
With every frequency the restricted projection keeps all functions of a + b (a p-dimensional
space), so it equals the full loss when the hooked quantity depends on (a, b) only through
a + b -- exactly what a generalising circuit does, and not what a memorising one does.

The hooks have TransformerLens's signature ``fn(activation, hook) -> activation``, touch only the
last position, and need the batch to be every example of the task in task order
(``task.inputs``); they run unchanged on a TL model and on ``mechgrok.model.run_with_hooks``.

Over a series
-------------
``measure_run`` computes every measure at every checkpoint. For the 1-layer, no-LayerNorm
models of the Nanda family it uses ``grid_forward``: the exact forward over the full (a, b)
grid with the attention and the pre-activations built from per-token tables (every position
of ``[a, b, =]`` sees one of p tokens), and the neuron hooks applied to ``post @ W_L``, which
equals hooking ``post`` because everything after ``hook_post`` is linear and the projection acts
on the batch axis only. Tests pin it to ``run_with_hooks`` with the hooks. Other architectures
use the hooks through ``run_with_hooks`` (``engine="hooks"``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import einops
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from . import fourier
from .model import ModelConfig, Params, loss_and_accuracy, run_with_hooks
from .tasks import Task

LEVELS = ("neurons", "logits")
SPLITS = ("all", "train", "test")
ENGINES = ("auto", "grid", "hooks")


# --- the hooks -----------------------------------------------------------------------------


def key_directions(task: Task, freqs: list[int], basis: str = "auto"
                   ) -> tuple[Float[Tensor, "n_examples r"], Bool[Tensor, " n_examples"]]:
    """Orthonormal columns over the task's examples: column 0 the constant, then the
    cos/sin(w_k z(c)) direction of every key frequency (orthogonalised against the earlier
    columns; 2 per frequency, 1 for an even group's Nyquist frequency). Rows of examples
    outside the group are 0; ``active`` marks the others."""
    c = fourier.coords(task, basis)
    z = c.coord[task.labels]  # answer's coordinate on the group, -1 outside it
    active = z >= 0
    cols = [active.double()]
    for k in sorted(set(int(k) for k in freqs)):
        if not 1 <= k <= c.n // 2:
            raise ValueError(f"frequency {k} out of range 1..{c.n // 2} for {task.describe()} "
                             f"in the {c.kind} basis")
        angle = 2 * math.pi * k * z.double() / c.n
        cols.append(torch.cos(angle) * active)
        if 2 * k < c.n:
            cols.append(torch.sin(angle) * active)
    q, _ = torch.linalg.qr(torch.stack(cols, dim=1))  # Gram-Schmidt in column order
    return q.float(), active


class FourierProjection:
    """A TL forward hook projecting the last position onto (``mode="restricted"``) or off
    (``mode="excluded"``) the key directions over the task's examples. Linear in the
    activation, acts on the batch axis only (any trailing width works)."""

    def __init__(self, task: Task, freqs: list[int], mode: str, basis: str = "auto"):
        if mode not in ("restricted", "excluded"):
            raise ValueError(f"mode must be 'restricted' or 'excluded', got {mode!r}")
        self.mode, self.freqs = mode, sorted(set(int(k) for k in freqs))
        self.q, self.active = key_directions(task, self.freqs, basis)
        self.all_active = bool(self.active.all())

    def __repr__(self):
        return f"FourierProjection({self.mode}, freqs={self.freqs})"

    def project(self, x: Float[Tensor, "n_examples d"]) -> Float[Tensor, "n_examples d"]:
        if x.shape[0] != self.q.shape[0]:
            raise ValueError(f"{self!r} needs every example of the task in task order "
                             f"({self.q.shape[0]} rows), got a batch of {x.shape[0]}")
        q = self.q.to(device=x.device, dtype=x.dtype)
        if self.mode == "restricted":
            kept = q @ (q.T @ x)
            if self.all_active:
                return kept
            return kept + x * (~self.active).to(device=x.device, dtype=x.dtype)[:, None]
        qk = q[:, 1:]  # the mean stays
        return torch.addmm(x, qk, qk.T @ x, alpha=-1)

    def __call__(self, activation: Float[Tensor, "batch pos d"], hook=None) -> Float[Tensor, "batch pos d"]:
        last = self.project(activation[:, -1])[:, None]
        if activation.shape[1] == 1:  # the fast path's last-only final block
            return last
        return torch.cat([activation[:, :-1], last], dim=1)


def restricted_hook(task: Task, freqs: list[int], basis: str = "auto") -> FourierProjection:
    return FourierProjection(task, freqs, "restricted", basis)


def excluded_hook(task: Task, freqs: list[int], basis: str = "auto") -> FourierProjection:
    return FourierProjection(task, freqs, "excluded", basis)


def hook_name(level: str = "neurons", layer: int = -1, n_layers: int = 1) -> str:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    return f"blocks.{layer % n_layers}.mlp.hook_post" if level == "neurons" else "unembed.hook_out"


# --- losses through the hooks --------------------------------------------------------------


def _split_idx(task: Task, split: str) -> Tensor | None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return {"all": None, "train": task.train_idx, "test": task.test_idx}[split]


def split_loss(logits: Float[Tensor, "n_examples d_vocab_out"], task: Task, split: str = "all"
               ) -> tuple[float, float]:
    """(loss, accuracy) over one split of logits given for every example."""
    idx = _split_idx(task, split)
    labels = task.labels.to(logits.device)
    if idx is not None:
        idx = idx.to(logits.device)
        logits, labels = logits[idx], labels[idx]
    loss, acc = loss_and_accuracy(logits, labels)
    return float(loss), float(acc)


@torch.no_grad()
def hooked_logits(model, task: Task, fwd_hooks=(), cfg: ModelConfig | None = None
                  ) -> Float[Tensor, "n_examples d_vocab_out"]:
    """Last-position logits for every example of ``task`` with ``fwd_hooks``: through the TL
    model's ``run_with_hooks`` for a TL model, through the fast path for a params dict."""
    if fourier.is_tl_model(model):
        device = next(model.parameters()).device
        return model.run_with_hooks(task.inputs.to(device), fwd_hooks=list(fwd_hooks))[:, -1]
    params, mcfg = fourier.as_params(model, cfg)
    device = next(iter(params.values())).device
    return run_with_hooks(params, mcfg, task.inputs.to(device), fwd_hooks=list(fwd_hooks))[0][:, -1]


def restricted_loss(model, task: Task, freqs: list[int], level: str = "neurons", basis: str = "auto",
                    layer: int = -1, split: str = "all", cfg: ModelConfig | None = None) -> float:
    """Loss with the hooked quantity restricted to its mean and key-frequency directions."""
    n_layers = fourier.config_of(model, cfg).n_layers
    hook = (hook_name(level, layer, n_layers), restricted_hook(task, freqs, basis))
    return split_loss(hooked_logits(model, task, [hook], cfg), task, split)[0]


def excluded_loss(model, task: Task, freqs: list[int], level: str = "neurons", basis: str = "auto",
                  layer: int = -1, split: str = "train", cfg: ModelConfig | None = None) -> float:
    """Loss (train set by default) with the key-frequency directions removed."""
    n_layers = fourier.config_of(model, cfg).n_layers
    hook = (hook_name(level, layer, n_layers), excluded_hook(task, freqs, basis))
    return split_loss(hooked_logits(model, task, [hook], cfg), task, split)[0]


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


def weight_sq(params: Params) -> float:
    """Sum of squared weights over every parameter."""
    return float(sum((v.detach().double() ** 2).sum() for v in params.values()))


def weight_measures(params: Params, task: Task, basis: str = "auto", n_layers: int = 1) -> dict[str, float]:
    """Gini of the W_E and W_L frequency norms (k >= 1: a constant shift of every logit or
    every embedding is invisible to the softmax / a bias), the sum of squared weights, and the
    norms per frequency (columns ``W_E_k{k}``, ``W_L_k{k}``)."""
    c = fourier.coords(task, basis)
    e = fourier.freq_norms(c.basis @ params["embed.W_E"][c.elements].float())
    wl = fourier.W_L(params, -1, n_layers)
    l_ = fourier.freq_norms(c.basis @ wl[:, c.elements].T.float())
    out = {"gini_W_E": gini(e[1:]), "gini_W_L": gini(l_[1:]), "weight_sq": weight_sq(params)}
    out |= {f"W_E_k{k}": float(v) for k, v in enumerate(e)}
    out |= {f"W_L_k{k}": float(v) for k, v in enumerate(l_)}
    return out


# --- one checkpoint ------------------------------------------------------------------------


def measure_checkpoint(model, task: Task, freqs: list[int], level: str = "neurons", basis: str = "auto",
                       cfg: ModelConfig | None = None) -> dict[str, float]:
    """Every measure for one model (TL model or params dict), by three hooked forwards."""
    params, mcfg = fourier.as_params(model, cfg)
    name = hook_name(level, -1, mcfg.n_layers)
    full = hooked_logits(model, task, (), cfg)
    r = hooked_logits(model, task, [(name, restricted_hook(task, freqs, basis))], cfg)
    e = hooked_logits(model, task, [(name, excluded_hook(task, freqs, basis))], cfg)
    return _losses(full, r, e, task) | weight_measures(params, task, basis, mcfg.n_layers)


def _nll(logits: Float[Tensor, "n d_vocab_out"], labels) -> Float[Tensor, " n"]:
    """Per-example cross-entropy, accurate down to the 1e-7 losses of grokked models without
    float64: loss = (max - l_c) + log1p(sum over j != argmax of exp(l_j - max)). The naive
    float32 logsumexp(l) - l_c cancels to zero there (hence float64 in ``loss_and_accuracy``);
    this form never subtracts two large numbers, so it can stay in float32 until the sum."""
    top, arg = logits.max(-1)
    e = (logits - top[:, None]).exp_()
    e.scatter_(-1, arg[:, None], 0.0)
    return (top - logits.gather(-1, labels[:, None])[:, 0]).double() + torch.log1p(e.sum(-1).double())


def _losses(full, restricted, excluded, task: Task) -> dict[str, float]:
    """Train/test loss and accuracy of ``full``, restricted loss on all pairs, excluded loss
    on the train pairs (one log-softmax per variant)."""
    labels = task.labels.to(full.device)
    tr, te = task.train_idx.to(full.device), task.test_idx.to(full.device)
    nll, correct = _nll(full, labels), (full.argmax(-1) == labels).double()
    return {"train_loss": float(nll[tr].mean()), "test_loss": float(nll[te].mean()),
            "train_acc": float(correct[tr].mean()), "test_acc": float(correct[te].mean()),
            "restricted_loss": float(_nll(restricted, labels).mean()),
            "excluded_loss": float(_nll(excluded[tr], labels[tr]).mean())}


# --- the grid engine -----------------------------------------------------------------------


def grid_engine_ok(cfg: ModelConfig, task: Task) -> bool:
    """Whether ``grid_forward`` applies: one block, no LayerNorm, a modular task."""
    return cfg.n_layers == 1 and cfg.normalization == "none" and task.is_modular and task.n_ctx == 3


def grid_forward(params: Params, cfg: ModelConfig, task: Task
                 ) -> tuple[Float[Tensor, "n_examples d_vocab_out"], Float[Tensor, "n_examples d_mlp"]]:
    """``(base, post)`` for every example of a 1-layer, no-LN modular task, exactly: the logits
    are ``base + post @ W_L`` where ``post`` is ``blocks.0.mlp.hook_post`` at the last position
    and ``base`` is everything else (direct path and biases).

    Position 0 holds one of p tokens (a), position 1 one of the grid's b values, position 2 the
    ``=``: keys, values and their images through W_O, W_in and W_U are computed per token
    (tables of p rows) and mixed per example by the attention pattern, instead of once per
    example and position."""
    if not grid_engine_ok(cfg, task):
        raise ValueError("grid_forward needs a 1-layer, no-LayerNorm model on a modular task")
    P, p = params, task.p
    bs = torch.arange(1, p) if task.op == "div" else torch.arange(p)
    W_E, W_pos = P["embed.W_E"], P["pos_embed.W_pos"]
    r = [W_E[:p] + W_pos[0], W_E[bs] + W_pos[1], (W_E[p] + W_pos[2])[None]]  # residual per token, per position
    q = einops.einsum(r[2][0], P["blocks.0.attn.W_Q"], "d, h d k -> h k") + P["blocks.0.attn.b_Q"]
    scores, vo = [], []
    for ri in r:
        k = einops.einsum(ri, P["blocks.0.attn.W_K"], "u d, h d k -> u h k") + P["blocks.0.attn.b_K"]
        v = einops.einsum(ri, P["blocks.0.attn.W_V"], "u d, h d k -> u h k") + P["blocks.0.attn.b_V"]
        scores.append(einops.einsum(k, q, "u h k, h k -> u h") / math.sqrt(cfg.d_head))
        vo.append(einops.einsum(v, P["blocks.0.attn.W_O"], "u h k, h k d -> u h d"))
    na, nb, h = p, len(bs), cfg.n_heads
    s = torch.stack([scores[0][:, None].expand(na, nb, h), scores[1][None].expand(na, nb, h),
                     scores[2][None].expand(na, nb, h)], dim=-1)
    pat = s.softmax(-1)  # [a b head pos]
    resid0 = r[2][0] + P["blocks.0.attn.b_O"]  # the "=" residual: every example's last position

    def mix(tables: list[Tensor], const: Tensor) -> Tensor:
        # sum over positions and heads of pattern * table row, as two batched matmuls on the
        # grid (over a, with the "=" table appended, and over b). Explicit bmm: torch.einsum
        # picks a path 20x slower for these shapes.
        by_a = torch.cat([pat[..., 0], pat[..., 2]], dim=-1)  # [a b 2h]
        t_a = torch.cat([tables[0], tables[2].expand(na, -1, -1)], dim=1)  # [a 2h m]
        by_b = torch.bmm(pat[..., 1].transpose(0, 1).contiguous(), tables[1])  # [b a m]
        out = torch.baddbmm(by_b.transpose(0, 1) + const, by_a, t_a)
        return out.reshape(na * nb, -1)

    W_in, W_U = P["blocks.0.mlp.W_in"], P["unembed.W_U"]
    pre = mix([t @ W_in for t in vo], resid0 @ W_in + P["blocks.0.mlp.b_in"])
    post = F.relu_(pre) if cfg.act_fn == "relu" else F.gelu(pre)
    base = mix([t @ W_U for t in vo], (resid0 + P["blocks.0.mlp.b_out"]) @ W_U + P["unembed.b_U"])
    return base, post


@torch.no_grad()
def measure_grid(params: Params, cfg: ModelConfig, task: Task, hooks: tuple, level: str = "neurons",
                 basis: str = "auto") -> dict[str, float]:
    """Every measure for one checkpoint through ``grid_forward`` and the given
    ``(restricted, excluded)`` hooks."""
    base, post = grid_forward(params, cfg, task)
    contrib = post @ fourier.W_L(params, -1, 1)
    full = base + contrib
    rh, eh = hooks
    if level == "neurons":  # hook(post) @ W_L == hook(post @ W_L): the hooks are linear on the batch axis
        r = base + rh(contrib[:, None])[:, -1]
        e = base + eh(contrib[:, None])[:, -1]
    else:
        r, e = rh(full[:, None])[:, -1], eh(full[:, None])[:, -1]
    return _losses(full, r, e, task) | weight_measures(params, task, basis, 1)


# --- a whole run ---------------------------------------------------------------------------


def measure_run(run, freqs: list[int] | None = None, steps: list[int] | None = None, level: str = "neurons",
                basis: str = "auto", engine: str = "auto", key_rule: str = "neurons",
                progress: bool = True, device=None) -> pd.DataFrame:
    """Every measure at every checkpoint of ``run`` (or at ``steps``), one row per step.

    ``freqs``: the key frequencies the restricted/excluded losses use; default
    ``fourier.key_frequencies`` of the final checkpoint (rule ``key_rule``). They are stored in
    ``table.attrs["key_freqs"]`` with the basis and level."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    task, cfg = run.task, run.model_cfg
    steps = run.steps if steps is None else list(steps)
    if not steps:
        raise ValueError(f"{run.path}: no checkpoints to measure")
    if freqs is None:
        freqs = fourier.key_frequencies(run.params(run.steps[-1]), task, rule=key_rule, basis=basis, cfg=cfg)
    freqs = sorted(set(int(k) for k in freqs))
    use_grid = engine == "grid" or (engine == "auto" and grid_engine_ok(cfg, task))
    if use_grid and not grid_engine_ok(cfg, task):
        raise ValueError("engine='grid' needs a 1-layer, no-LayerNorm model on a modular task")
    hooks = (restricted_hook(task, freqs, basis), excluded_hook(task, freqs, basis))
    rows = []
    for step in tqdm(steps, desc="measures", unit="ckpt", disable=not progress, dynamic_ncols=True):
        params = run.params(step, device=device)
        if use_grid:
            m = measure_grid(params, cfg, task, hooks, level, basis)
        else:
            m = measure_checkpoint(params, task, freqs, level, basis, cfg)
        rows.append({"step": step} | m)
    table = pd.DataFrame(rows)
    table.attrs.update(key_freqs=freqs, basis=fourier.resolve_basis(task, basis), level=level)
    return table


# --- phases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phases:
    """Transition metrics (seed 001 definitions) and the three phases of Nanda et al.

    ``memorisation``: first step with train accuracy > 0.99; ``grokking``: first with test
    accuracy > 0.90; ``delay`` = grokking - memorisation; ``max_acceleration``: the step of the
    largest second difference of test accuracy. Phase boundaries: memorisation runs from 0 to
    ``circuit_start``, circuit formation to ``cleanup_start``, cleanup to ``cleanup_end``
    (see ``phases`` for the rule). Any of them is None when the series does not show it."""

    memorisation: int | None
    grokking: int | None
    delay: int | None
    max_acceleration: int | None
    circuit_start: int | None
    cleanup_start: int | None
    cleanup_end: int | None
    last_step: int | None = None

    def boundaries(self) -> dict[str, tuple[int, int] | None]:
        """Step interval of each phase; a run that has not grokked is still forming its circuit
        at its last step (no cleanup)."""
        end = self.cleanup_start if self.cleanup_start is not None else self.last_step
        b = (0, self.circuit_start, end, self.cleanup_end)
        names = ("memorisation", "circuit formation", "cleanup")
        return {n: (b[i], b[i + 1]) if None not in (b[i], b[i + 1]) else None for i, n in enumerate(names)}

    def to_dict(self) -> dict:
        return asdict(self)


def _first(mask: np.ndarray, steps: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(steps[hits[0]]) if len(hits) else None


def _smooth(y: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return y
    pad = np.pad(y, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(pad, np.ones(width) / width, mode="valid")


def phases(table: pd.DataFrame, smooth: int | None = None) -> Phases:
    """Transition metrics and phase boundaries from a ``measure_run`` table (or any table
    with step, train_acc, test_acc, test_loss and excluded_loss columns).

    Rule for the boundaries (no step is hand-set):
      * cleanup is the drop of the test loss: its rate of fall, -d log(test loss)/d step
        (smoothed over ``smooth`` evaluations, default 2% of them, at least 3), peaks during
        cleanup; ``cleanup_start`` and ``cleanup_end`` are the first and last steps around the
        peak where the rate is at least half its peak (the full width at half maximum);
        Only a series that groks (test accuracy > 0.9) has a cleanup: elsewhere the fall
        rate peaks on noise;
      * circuit formation starts where memorisation stops helping: the step with the lowest
        excluded loss before ``cleanup_start`` (or in the whole series without a cleanup)
        (Nanda: train and excluded loss fall during memorisation, excluded loss rises during
        circuit formation). Without an excluded_loss column, the memorisation step is used.
    """
    t = table.sort_values("step").reset_index(drop=True)
    steps = t["step"].to_numpy()
    train_acc, test_acc = t["train_acc"].to_numpy(), t["test_acc"].to_numpy()
    mem = _first(train_acc > 0.99, steps)
    grok = _first(test_acc > 0.90, steps)
    accel = int(steps[np.argmax(np.diff(test_acc, 2)) + 1]) if len(steps) >= 3 else None

    circuit = cleanup_start = cleanup_end = None
    if len(steps) >= 3 and grok is not None:
        width = smooth or max(3, round(0.02 * len(steps)))
        log_loss = _smooth(np.log(t["test_loss"].to_numpy().clip(1e-30)), width)
        rate = -np.gradient(log_loss, steps)
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
    if "excluded_loss" in t and len(steps):
        before = steps <= (cleanup_start if cleanup_start is not None else steps[-1])
        circuit = int(steps[before][np.argmin(t["excluded_loss"].to_numpy()[before])])
    else:
        circuit = mem
    return Phases(mem, grok, None if None in (mem, grok) else grok - mem, accel, circuit, cleanup_start,
                  cleanup_end, int(steps[-1]) if len(steps) else None)


# --- writing a run's analysis --------------------------------------------------------------


def spectrum_columns(table: pd.DataFrame, which: str = "W_E") -> tuple[list[int], list[str]]:
    """The frequencies and column names of the per-frequency norms ``measure_run`` stores."""
    cols = [c for c in table.columns if c.startswith(f"{which}_k")]
    return [int(c.split("_k")[-1]) for c in cols], cols


def analyze_spectrum(run, step: int | None = None, out_dir=None, basis: str = "auto"
                     ) -> tuple[pd.DataFrame, list]:
    """W_E and W_L norms per frequency at one checkpoint (default: the last), with the key
    frequencies of all three rules; writes ``spectrum_step{N}.csv`` and its bar charts."""
    from pathlib import Path

    from . import plots

    step = run.steps[-1] if step in (None, -1) else step  # run.params names the nearest steps if absent
    params, task, cfg = run.params(step), run.task, run.model_cfg
    e = fourier.embedding_spectrum(params, task, basis, cfg=cfg)
    wl = fourier.W_L_spectrum(params, task, basis, cfg=cfg)
    keys = {rule: fourier.key_frequencies(params, task, rule=rule, basis=basis, cfg=cfg) for rule in fourier.KEY_RULES}
    table = pd.DataFrame({"k": range(len(e)), "W_E_norm": e.tolist(), "W_L_norm": wl.tolist()})
    for rule, ks in keys.items():
        table[f"key_{rule}"] = table["k"].isin(ks)
    out = Path(out_dir or run.path)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"spectrum_step{step}.csv"]
    table.to_csv(written[0], index=False, float_format="%.6g")
    kind = fourier.resolve_basis(task, basis)
    label = "frequency k" + (" (discrete-log basis)" if kind == "dlog" else "")
    written += plots.save_figure(plots.spectrum_bars(e, keys["neurons"], f"{task.describe()}, step {step}: W_E",
                                                     "norm of W_E", label), out / f"spectrum_step{step}")
    written += plots.save_figure(plots.spectrum_bars(wl, keys["neurons"], f"{task.describe()}, step {step}: W_L",
                                                     "norm of W_out·W_U", label), out / f"spectrum_W_L_step{step}")
    table.attrs.update(step=step, key_freqs=keys, basis=kind)
    return table, written


def analyze_run(run, out_dir=None, freqs: list[int] | None = None, steps: list[int] | None = None,
                level: str = "neurons", basis: str = "auto", key_rule: str = "neurons", progress: bool = True,
                png: bool = True) -> tuple[pd.DataFrame, list]:
    """Measure every checkpoint of ``run`` and write, into ``out_dir`` (default: the run
    directory): ``progress.csv`` (``measure_run``), ``phases.json`` (``phases`` plus the key
    frequencies), ``neurons.csv`` (the final checkpoint's neuron frequencies) and the figures
    ``progress_losses``, ``gini_weight_norm``, ``spectrum`` (final W_E), ``spectrum_W_L``,
    ``neuron_frequencies``, ``spectrum_evolution`` (HTML, and PNG unless ``png=False``).
    Returns the table and the paths written."""
    import json
    from pathlib import Path

    from . import plots

    out = Path(out_dir or run.path)
    out.mkdir(parents=True, exist_ok=True)
    task, cfg = run.task, run.model_cfg
    table = measure_run(run, freqs=freqs, steps=steps, level=level, basis=basis, key_rule=key_rule,
                        progress=progress)
    ph = phases(table)
    keys = table.attrs["key_freqs"]
    final = int(table["step"].iloc[-1])
    written = [out / "progress.csv", out / "phases.json", out / "neurons.csv"]
    table.to_csv(written[0], index=False, float_format="%.9g")
    summary = {"key_freqs": keys, "basis": table.attrs["basis"], "level": level, "final_step": final} | ph.to_dict()
    written[1].write_text(json.dumps(summary, indent=2) + "\n")
    nf = fourier.neuron_frequencies(run.params(final), task, basis, cfg=cfg)
    nf.to_frame().to_csv(written[2], index=False, float_format="%.6g")

    name = f"{run.path.name}: {task.describe()}"
    label = "frequency k" + (" (discrete-log basis)" if table.attrs["basis"] == "dlog" else "")
    bounds = ph.boundaries()
    _, e_cols = spectrum_columns(table, "W_E")
    _, l_cols = spectrum_columns(table, "W_L")
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
    for stem, fig in figs.items():
        written += plots.save_figure(fig, out / stem, png=png)
    return table, written
