"""Fourier analysis of modular-arithmetic models (Nanda et al. 2023).

A model that groks ``a + b mod p`` embeds each residue as a handful of waves
cos(w_k x), sin(w_k x) with w_k = 2 pi k / p, multiplies them in its MLP and reads out
cos(w_k (a + b - c)). Everything here measures how much of a weight matrix or an activation
lives on each frequency k.

Conventions (fixed: other modules and users index rows by them)
---------------------------------------------------------------
``fourier_basis(n)`` has one row per basis function, orthonormal over the n points
x = 0 .. n-1::

    row 0        constant 1/sqrt(n)                       label "const"
    row 2k - 1   cos(2 pi k x / n), normalised            label "cos k"
    row 2k       sin(2 pi k x / n), normalised            label "sin k"

for k = 1 .. (n-1)//2: Nanda's order (cos before sin); ``freq_rows(k)`` gives the pair. For
odd n (every prime p) that is all n rows. For even n (the multiplicative group below has
order p - 1) the last row is the lone Nyquist wave cos(pi x) = (-1)^x, label "cos n/2"; it
has no sine partner, so ``freq_rows(n // 2)`` is ``(n - 1,)``. Frequencies run
k = 0 .. n // 2 and a "norm per frequency" is the root of the summed squares of its rows.

Bases of a task (``basis=``)
----------------------------
* ``"add"``: the additive group Z_p, the residues 0 .. p-1 in order.
* ``"dlog"``: the multiplicative group (Z_p)^*, cyclic of order p - 1. A nonzero x is
  relabelled by its discrete log j (x = g^j mod p, g the smallest primitive root), so that
  multiplication and division become addition and subtraction of j mod p - 1, and transforms
  run over p - 1 points. Zero is not in the group: every dlog transform drops it (the W_E row of
  token 0, the W_L column of residue 0, the grid row a = 0 and column b = 0), and the projection
  hooks of ``mechgrok.progress`` leave the examples whose answer is 0 untouched. For
  multiplication those are exactly the 2p - 1 pairs with a zero operand; for division the p - 1
  pairs with a = 0.
* ``"auto"`` (the default everywhere): ``"dlog"`` for mul and div tasks, ``"add"`` otherwise.

A table task (``op="table"``) has these measures only when its table is literally addition mod
n (then in the additive basis); any other table -- a non-abelian group, a relabelled cyclic
group, a non-group -- and parity are refused in one line by ``resolve_basis`` (every function
here goes through it), pointing at ``mechgrok.measures.generic_series``.

The grid of a division task has columns b = 1 .. p-1 only (see ``mechgrok.tasks``). In the
additive basis its missing b = 0 column is filled with zeros after centring (no variance
there), so the 2D transform still runs over p x p points; in the dlog basis nothing is
missing.

Models
------
Every function takes either a TransformerLens model (``run.model(step)``) or a
HookedTransformer-format params dict (``run.params(step)``, what the fast path uses). What
reads activations (``neuron_acts`` and everything built on it: ``neuron_fourier``,
``neuron_frequencies``, ``key_frequencies(rule="neurons")``) runs a TL model's own forward, so
hooks attached to it (``model.add_hook``: an SAE, a patch) take effect, and runs params on the
fast path. The spectra of W_E and W_L read the weights only: hooks on the model do not affect
them. For a params dict the architecture is inferred from the shapes; pass ``cfg=`` when the
activation is not ReLU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import einops
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from . import choices
from .model import (ModelConfig, Params, as_model, as_params, hook_name, last_position_acts, layer_index,
                    run_with_cache)
from .tasks import Task, is_cyclic_add_table

BASES = choices.BASES
KEY_RULES = ("neurons", "W_L", "embedding")
CLUSTER_THRESHOLD = 0.85  # Nanda et al.: a neuron is "clustered" above 85% of variance in one frequency


# --- the basis -----------------------------------------------------------------------------


def fourier_basis(n: int) -> tuple[Float[Tensor, "n n"], list[str]]:
    """Orthonormal Fourier basis over n points: rows const, cos 1, sin 1, cos 2, sin 2, ...
    (row 2k-1 = cos k, row 2k = sin k; see the module docstring for even n)."""
    if n < 2:
        raise ValueError(f"fourier_basis needs n >= 2 points, got {n}")
    x = torch.arange(n, dtype=torch.float64)
    k = torch.arange(1, n // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * k[:, None] * x[None, :] / n  # [k, x]
    # interleave cos k, sin k; for even n the Nyquist sine vanishes at every integer x: drop it
    waves = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1).reshape(-1, n)
    labels = ["const"] + [f"{trig} {int(f)}" for f in k for trig in ("cos", "sin")]
    if n % 2 == 0:
        waves, labels = waves[:-1], labels[:-1]
    basis = torch.cat([torch.ones(1, n, dtype=torch.float64), waves])
    basis = basis / basis.norm(dim=1, keepdim=True)
    return basis.float(), labels


def freq_rows(k: int) -> tuple[int, ...]:
    """Rows of ``fourier_basis`` that hold frequency k: ``(0,)`` for k = 0, else
    ``(2k - 1, 2k)`` = (cos k, sin k). (For even n the Nyquist k = n/2 has only row n - 1;
    ``freq_index`` handles that case.)"""
    if k < 0:
        raise ValueError(f"frequencies are >= 0, got {k}")
    return (0,) if k == 0 else (2 * k - 1, 2 * k)


def n_freqs(n: int) -> int:
    """Number of frequencies k = 0 .. n // 2 of an n-point basis."""
    return n // 2 + 1


def freq_index(n: int) -> Int[Tensor, " n"]:
    """Frequency of every row of ``fourier_basis(n)``: [0, 1, 1, 2, 2, ...]."""
    return (torch.arange(n) + 1) // 2


def freq_norms(coeffs: Float[Tensor, "n *rest"]) -> Float[Tensor, " n_freq"]:
    """Norm per frequency of coefficients whose first axis is a Fourier basis axis."""
    n = coeffs.shape[0]
    sq = coeffs.reshape(n, -1).double().pow(2).sum(1)
    per_freq = torch.zeros(n_freqs(n), dtype=torch.float64).index_add_(0, freq_index(n), sq)
    return per_freq.sqrt().float()


# --- group coordinates of a task -----------------------------------------------------------


def primitive_root(p: int) -> int:
    """Smallest generator of the multiplicative group mod the prime p."""
    order = p - 1
    factors, m, d = set(), order, 2
    while d * d <= m:
        while m % d == 0:
            factors.add(d)
            m //= d
        d += 1
    if m > 1:
        factors.add(m)
    for g in range(2, p):
        if all(pow(g, order // q, p) != 1 for q in factors):
            return g
    raise ValueError(f"no primitive root mod {p}: is it an odd prime?")


@dataclass(frozen=True)
class Coords:
    """Where each residue sits on the group the transforms run over.

    ``elements[j]`` is the residue at coordinate j (j = 0 .. n-1); ``coord[x]`` is the inverse
    (-1 for a residue outside the group, i.e. 0 in the dlog basis)."""

    kind: str  # "add" or "dlog"
    p: int
    generator: int | None

    @cached_property
    def n(self) -> int:
        return self.p if self.kind == "add" else self.p - 1

    @cached_property
    def elements(self) -> Int[Tensor, " n"]:
        if self.kind == "add":
            return torch.arange(self.p)
        return torch.tensor([pow(self.generator, j, self.p) for j in range(self.p - 1)])

    @cached_property
    def coord(self) -> Int[Tensor, " p"]:
        c = torch.full((self.p,), -1, dtype=torch.long)
        c[self.elements] = torch.arange(self.n)
        return c

    @cached_property
    def basis(self) -> Float[Tensor, "n n"]:
        return fourier_basis(self.n)[0]

    @cached_property
    def labels(self) -> list[str]:
        return fourier_basis(self.n)[1]

    @property
    def n_freqs(self) -> int:
        return n_freqs(self.n)


NON_FOURIER_HINT = ("use the non-Fourier measures (train/test loss and accuracy, weight norm, the weight "
                    "statistics: mechgrok.measures.generic_series, which `mechgrok analyze` writes for such a run)")


def fourier_unsupported(task: Task, basis: str = "auto") -> str | None:
    """Why the Fourier measures do not apply to ``task`` in ``basis`` (one line), or None when
    they do. A table task is accepted only when it is literally addition mod n
    (``tasks.is_cyclic_add_table``), and then in the additive basis only."""
    if task.op == "table":
        if is_cyclic_add_table(task.cfg.table):
            if basis in ("auto", "add"):
                return None
            return (f"task {task.describe()} is addition mod {task.p}: only the add basis applies, "
                    f"got basis {basis!r}")
        return (f"Fourier measures need a cyclic group (add/sub/mul/div mod p); task {task.describe()} is not one: "
                + NON_FOURIER_HINT)
    if not task.is_modular:
        return f"Fourier analysis needs a modular task, got {task.describe()}: " + NON_FOURIER_HINT
    return None


def resolve_basis(task: Task, basis: str = "auto") -> str:
    """The basis ``"add"`` or ``"dlog"`` that ``basis`` names for ``task``; a one-line ValueError
    for a task without one (parity, a table that is not addition mod n)."""
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    why = fourier_unsupported(task, basis)
    if why is not None:
        raise ValueError(why)
    if basis == "auto":
        return "dlog" if task.op in ("mul", "div") else "add"
    return basis


def coords(task: Task, basis: str = "auto") -> Coords:
    """The group coordinates for ``task`` in ``basis`` (see the module docstring)."""
    kind = resolve_basis(task, basis)
    return Coords(kind, task.p, primitive_root(task.p) if kind == "dlog" else None)


def example_index(task: Task) -> Int[Tensor, "p p"]:
    """``idx[a, b]``: the row of ``task.inputs`` holding the pair (a, b), or -1 (div, b = 0)."""
    p = task.p
    idx = torch.full((p, p), -1, dtype=torch.long)
    idx[task.a, task.b] = torch.arange(len(task.a))
    return idx


def to_grid(values: Float[Tensor, "n_examples *rest"], task: Task, basis: str = "auto"
            ) -> Float[Tensor, "n n *rest"]:
    """Arrange per-example values on the (a, b) grid in group coordinates, centred over the
    examples placed (the mean is the constant component; neurons are studied without it).
    Cells with no example (div's b = 0 in the additive basis) hold 0 = the mean."""
    c = coords(task, basis)
    idx = example_index(task)[c.elements][:, c.elements]  # [n a-coords, n b-coords]
    present = idx >= 0
    placed = values[idx[present]]
    grid = values.new_zeros((c.n, c.n) + values.shape[1:])
    grid[present] = placed - placed.mean(0)
    return grid


# --- frequencies, and the directions they name over the examples ---------------------------


def valid_frequencies(task: Task, basis: str = "auto") -> list[int]:
    """The frequencies k = 1 .. n//2 of the group ``task`` lives on (n = p or p - 1)."""
    return list(range(1, coords(task, basis).n // 2 + 1))


def check_frequencies(freqs, task: Task, basis: str = "auto") -> tuple[int, ...]:
    """``freqs`` as sorted ints, or a one-line error naming the frequency that does not exist."""
    c = coords(task, basis)
    ks = [int(k) for k in freqs]
    bad = [k for k in ks if not 1 <= k <= c.n // 2]
    if bad:
        raise ValueError(f"frequency {bad[0]} does not exist for {task.describe()} in the {c.kind} basis: "
                         f"frequencies are 1..{c.n // 2} (0, the constant, is not a frequency)")
    if len(set(ks)) != len(ks):
        raise ValueError(f"frequencies listed twice: {sorted(ks)}")
    return tuple(sorted(ks))


def answer_directions(task: Task, freqs, basis: str = "auto"
                      ) -> tuple[Float[Tensor, "n_examples r"], Bool[Tensor, " n_examples"]]:
    """Orthonormal columns over the task's examples (in task order): column 0 the constant, then
    cos(w_k z(c)) and sin(w_k z(c)) of every frequency k in ``freqs`` (one column for an even
    group's Nyquist frequency), z(c) the answer's coordinate on the group. For addition these
    are Nanda's directions cos/sin(w_k (a + b)) -- two per frequency, never the 3x3 block whose
    cross terms bias ARENA-style masks. Columns are orthogonalised in that order (QR), so they
    are orthonormal for every op, including those whose answers are not spread evenly over the
    group (``quad``). Rows of examples whose answer is outside the group (0 in the dlog basis)
    are 0; ``active`` marks the others."""
    c = coords(task, basis)
    ks = check_frequencies(freqs, task, basis)
    z = c.coord[task.labels]
    active = z >= 0
    cols = [active.double()]
    for k in ks:
        angle = 2 * math.pi * k * z.double() / c.n
        cols.append(torch.cos(angle) * active)
        if 2 * k < c.n:
            cols.append(torch.sin(angle) * active)
    q, _ = torch.linalg.qr(torch.stack(cols, dim=1))
    return q.float(), active


PROJECTION_MODES = choices.PROJECTION_MODES


class FrequencyProjection:
    """The one projection hook (TL signature ``fn(activation, hook)``): at the last position,
    each channel of the activation is a function over the examples; ``mode="keep"`` keeps its
    mean and its components along ``answer_directions`` (restricted loss, "keep only"),
    ``mode="remove"`` subtracts those components and keeps the mean (excluded loss, ablation).
    Examples whose answer is outside the group pass through unchanged. The batch must be
    every example of the task in task order (``task.inputs``). Linear in the activation and
    acting on the batch axis only, so any channel width works and hooking ``post`` equals
    hooking ``post @ W`` for any linear ``W`` after it."""

    last_position_only = True  # see model.last_position_hook

    def __init__(self, task: Task, freqs, mode: str, basis: str = "auto"):
        if mode not in PROJECTION_MODES:
            raise ValueError(f"mode must be one of {PROJECTION_MODES}, got {mode!r}")
        self.mode, self.freqs = mode, check_frequencies(freqs, task, basis)
        self.q, self.active = answer_directions(task, self.freqs, basis)
        self.all_active = bool(self.active.all())

    def __repr__(self):
        return f"FrequencyProjection({self.mode}, freqs={list(self.freqs)})"

    def project(self, x: Float[Tensor, "n_examples d"]) -> Float[Tensor, "n_examples d"]:
        if x.shape[0] != self.q.shape[0]:
            raise ValueError(f"{self!r} projects over all {self.q.shape[0]} examples of the task: run the "
                             f"model on task.inputs (in order), not a batch of {x.shape[0]}")
        q = self.q.to(device=x.device, dtype=x.dtype)
        if self.mode == "keep":
            kept = q @ (q.T @ x)
            if self.all_active:
                return kept
            return kept + x * (~self.active).to(device=x.device, dtype=x.dtype)[:, None]
        qk = q[:, 1:]  # the mean stays
        return torch.addmm(x, qk, qk.T @ x, alpha=-1)

    def __call__(self, activation: Float[Tensor, "batch pos *rest"], hook=None) -> Float[Tensor, "batch pos *rest"]:
        # every channel after the position axis (heads x d_head for hook_q) is one column
        x = activation[:, -1]
        last = self.project(x.reshape(x.shape[0], -1)).view(x.shape)[:, None]
        if activation.shape[1] == 1:
            return last
        return torch.cat([activation[:, :-1], last], dim=1)


def W_L(params: Params, cfg: ModelConfig, layer: int | None = None) -> Float[Tensor, "d_mlp d_vocab_out"]:
    """Neurons -> logits: ``W_out @ W_U`` of ``layer`` (default the last: the direct path of the
    last MLP)."""
    return params[f"blocks.{layer_index(cfg, layer)}.mlp.W_out"] @ params["unembed.W_U"]


# --- 1D spectra ----------------------------------------------------------------------------


def embedding_fourier(model, task: Task, basis: str = "auto", cfg: ModelConfig | None = None
                      ) -> Float[Tensor, "n d_model"]:
    """W_E's residue rows (the ``=`` row dropped) transformed along the vocabulary axis. Reads
    the weights only: hooks on the model do not affect it."""
    params, _ = as_params(model, cfg)
    c = coords(task, basis)
    return c.basis @ params["embed.W_E"][c.elements].float()


def W_L_fourier(model, task: Task, basis: str = "auto", layer: int | None = None, cfg: ModelConfig | None = None
                ) -> Float[Tensor, "n d_mlp"]:
    """W_L = W_out @ W_U transformed along the logit (answer) axis. Reads the weights only:
    hooks on the model do not affect it."""
    params, mcfg = as_params(model, cfg)
    c = coords(task, basis)
    wl = W_L(params, mcfg, layer)
    return c.basis @ wl[:, c.elements].T.float()


def embedding_spectrum(model, task: Task, basis: str = "auto", cfg: ModelConfig | None = None
                       ) -> Float[Tensor, " n_freq"]:
    """Norm of W_E per frequency k = 0 .. n//2 (index = k). Reads the weights only: hooks on
    the model do not affect it."""
    return freq_norms(embedding_fourier(model, task, basis, cfg))


def W_L_spectrum(model, task: Task, basis: str = "auto", layer: int | None = None, cfg: ModelConfig | None = None
                 ) -> Float[Tensor, " n_freq"]:
    """Norm of W_L = W_out @ W_U per frequency k = 0 .. n//2 of the answer. Reads the weights
    only: hooks on the model do not affect it."""
    return freq_norms(W_L_fourier(model, task, basis, layer, cfg))


# --- 2D transform of neurons ---------------------------------------------------------------


@torch.no_grad()
def neuron_acts(model, task: Task, layer: int | None = None, cfg: ModelConfig | None = None
                ) -> Float[Tensor, "n_examples d_mlp"]:
    """``blocks.{layer}.mlp.hook_post`` at the last position for every example of ``task``:
    the TL model's own forward for a TL model (hooks attached to it take effect), the fast path
    for params."""
    target, mcfg = as_model(model, cfg)
    name = hook_name("neurons", layer, mcfg)
    if isinstance(target, tuple):
        params = target[0]
        return last_position_acts(params, mcfg, task.inputs.to(next(iter(params.values())).device), name)
    _, cache = target.run_with_cache(task.inputs.to(next(target.parameters()).device), names_filter=name)
    return cache[name][:, -1]


def fourier_2d(grid: Float[Tensor, "n n *rest"], basis: Float[Tensor, "n n"]) -> Float[Tensor, "n n *rest"]:
    """Transform both grid axes: ``out[i, j] = sum_ab F[i, a] F[j, b] grid[a, b]``."""
    return einops.einsum(basis, basis, grid, "i a, j b, a b ... -> i j ...")


def neuron_fourier(model, task: Task, basis: str = "auto", layer: int | None = None, cfg: ModelConfig | None = None
                   ) -> Float[Tensor, "n n d_mlp"]:
    """2D Fourier coefficients of every neuron's centred activation over the (a, b) grid."""
    c = coords(task, basis)
    return fourier_2d(to_grid(neuron_acts(model, task, layer, cfg), task, basis), c.basis)


def _block_membership(n: int) -> Float[Tensor, "n_freq n"]:
    # Frequency k's 3x3 block is {const, cos k, sin k} on each axis.
    m = torch.zeros(n_freqs(n), n)
    m[:, 0] = 1
    m[freq_index(n)[1:], torch.arange(1, n)] = 1
    return m


def frequency_shares(coeffs_2d: Float[Tensor, "n n d"]) -> Float[Tensor, "d n_freq"]:
    """Share of each neuron's variance in the 3x3 block of each frequency (column k; column 0
    is 0: the const-const entry is the mean, removed before the transform)."""
    n = coeffs_2d.shape[0]
    energy = coeffs_2d.double().pow(2)
    m = _block_membership(n).double()
    block = einops.einsum(m, m, energy, "k i, k j, i j d -> d k")
    block = block - energy[0, 0][:, None]  # the const-const entry belongs to no frequency
    block[:, 0] = 0.0
    total = energy.sum((0, 1)) - energy[0, 0]
    shares = block / total.clamp_min(1e-30)[:, None]
    return shares.float()


@dataclass(frozen=True)
class NeuronFrequencies:
    """Per neuron: its dominant frequency, the share of its variance that frequency holds, and
    whether that share exceeds the threshold ("clustered": share > threshold, Nanda's "more than
    85%"; unclustered neurons have freq -1)."""

    shares: Float[Tensor, "d_mlp n_freq"]
    threshold: float

    @property
    def best(self) -> Int[Tensor, " d_mlp"]:
        return self.shares.argmax(1)

    @property
    def share(self) -> Float[Tensor, " d_mlp"]:
        return self.shares.max(1).values

    @property
    def clustered(self) -> Bool[Tensor, " d_mlp"]:
        return self.share > self.threshold

    @property
    def freq(self) -> Int[Tensor, " d_mlp"]:
        return torch.where(self.clustered, self.best, torch.full_like(self.best, -1))

    def cluster_sizes(self) -> dict[int, int]:
        """Number of clustered neurons per frequency, plus -1: the unclustered ones."""
        ks, counts = torch.unique(self.freq, return_counts=True)
        return {int(k): int(c) for k, c in zip(ks, counts)}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"neuron": range(len(self.best)), "freq": self.freq.tolist(),
                             "best_freq": self.best.tolist(), "share": self.share.tolist()})


def neuron_frequencies(model, task: Task, basis: str = "auto", layer: int | None = None,
                       threshold: float = CLUSTER_THRESHOLD, cfg: ModelConfig | None = None
                       ) -> NeuronFrequencies:
    """Nanda's rule: centre each neuron over the grid, 2D-transform, and give it the frequency
    whose {const, cos k, sin k}^2 block (minus const-const) holds the largest share of its
    variance; neurons whose share is not above ``threshold`` are unclustered."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return NeuronFrequencies(frequency_shares(neuron_fourier(model, task, basis, layer, cfg)), threshold)


# --- key frequencies -----------------------------------------------------------------------


def key_frequencies(model, task: Task, rule: str = "neurons", basis: str = "auto", layer: int | None = None,
                    threshold: float | None = None, min_neurons: int | None = None,
                    cfg: ModelConfig | None = None) -> list[int]:
    """The frequencies the model computes with, sorted.

    ``rule``:
      * ``"neurons"`` (default; Nanda's code): give every neuron its dominant frequency (the
        largest 3x3-block share, whatever its size) and take the distinct frequencies. We add
        one guard: a frequency needs at least ``min_neurons`` neurons (default 1% of d_mlp, at
        least 2) so that a stray neuron does not add one; ``min_neurons=1`` is Nanda's rule.
        Dead neurons (no variance) are skipped. ``threshold`` is unused by this rule: the 0.85
        "clustered" cut-off only labels neurons (``neuron_frequencies``).
      * ``"W_L"`` (Nanda's paper): frequencies k >= 1 whose norm in W_L's transform exceeds
        ``threshold`` (default 0.25) times the largest.
      * ``"embedding"`` (TL demo): the same on W_E's norms (default threshold 0.25).
    """
    if rule not in KEY_RULES:
        raise ValueError(f"rule must be one of {KEY_RULES}, got {rule!r}")
    if rule == "neurons":
        nf = neuron_frequencies(model, task, basis, layer, cfg=cfg)
        d_mlp = nf.shares.shape[0]
        min_neurons = max(2, round(0.01 * d_mlp)) if min_neurons is None else min_neurons
        alive = nf.share > 0
        ks, counts = torch.unique(nf.best[alive], return_counts=True)
        return sorted(int(k) for k, c in zip(ks, counts) if k > 0 and c >= min_neurons)
    norms = (W_L_spectrum(model, task, basis, layer, cfg) if rule == "W_L"
             else embedding_spectrum(model, task, basis, cfg))
    return spectrum_peaks(norms, 0.25 if threshold is None else threshold)


def spectrum_peaks(norms: Float[Tensor, " n_freq"], threshold: float = 0.25) -> list[int]:
    """Frequencies k >= 1 whose norm exceeds ``threshold`` times the largest (k >= 1) norm."""
    tail = norms[1:]
    return sorted(int(k) + 1 for k in torch.nonzero(tail > threshold * tail.max()).flatten())


# --- plain (a, b) grids: the TL Grokking demo's attention and neuron figures ----------------


def ab_grid(values: Float[Tensor, "n_examples *rest"], task: Task) -> Float[Tensor, "p p *rest"]:
    """Per-example values on the plain (a, b) grid: ``out[a, b]`` is the value of the example
    (a, b), residues in order, not centred (what the TL demo draws; ``to_grid`` is the centred
    grid in group coordinates the transforms use). NaN where the task has no example (div's
    b = 0 column). Parity has no (a, b) grid: one line says so."""
    if task.a is None:
        raise ValueError(f"{task.describe()}: no (a, b) grid (only two-operand tasks have one)")
    idx = example_index(task)
    grid = values.new_full((task.p, task.p) + values.shape[1:], float("nan"))
    present = idx >= 0
    grid[present] = values[idx[present]]
    return grid


@torch.no_grad()
def attention_grids(model, task: Task, layer: int | None = None, cfg: ModelConfig | None = None
                    ) -> Float[Tensor, "n_heads n_ctx p p"]:
    """Attention of the ``=`` position (the last query) to each position (a, b, =) for every
    example, per head, on the (a, b) grid: ``out[h, k, a, b] =
    blocks.{layer}.attn.hook_pattern[example (a, b), h, -1, k]`` (the TL demo draws k = 0). A
    TL model runs its own forward (its hooks take effect); params take the fast path."""
    target, mcfg = as_model(model, cfg)
    name = f"blocks.{layer_index(mcfg, layer)}.attn.hook_pattern"
    if isinstance(target, tuple):
        params = target[0]
        tokens = task.inputs.to(next(iter(params.values())).device)
        _, cache = run_with_cache(params, mcfg, tokens, names_filter=name)
    else:
        _, cache = target.run_with_cache(task.inputs.to(next(target.parameters()).device), names_filter=name)
    from_last = cache[name][:, :, -1].float().cpu()  # [example, head, key position]
    return einops.rearrange(ab_grid(from_last, task), "a b head k -> head k a b")


@torch.no_grad()
def neuron_grids(model, task: Task, neurons=None, layer: int | None = None, cfg: ModelConfig | None = None
                 ) -> Float[Tensor, "n_neurons p p"]:
    """Activation of each neuron in ``neurons`` (default: the first 6) over the (a, b) grid:
    ``out[i, a, b] = blocks.{layer}.mlp.hook_post[example (a, b), -1, neurons[i]]`` (``neuron_acts``)."""
    acts = neuron_acts(model, task, layer, cfg).float().cpu()
    d_mlp = acts.shape[1]
    neurons = list(range(min(6, d_mlp))) if neurons is None else [int(n) for n in neurons]
    bad = [n for n in neurons if not 0 <= n < d_mlp]
    if bad or not neurons:
        raise ValueError(f"neurons must be indices in 0..{d_mlp - 1} (d_mlp = {d_mlp}), got {bad or neurons}")
    return einops.rearrange(ab_grid(acts[:, neurons], task), "a b n -> n a b")


__all__ = ["fourier_basis", "freq_rows", "freq_index", "freq_norms", "n_freqs", "primitive_root", "Coords",
           "coords", "resolve_basis", "fourier_unsupported", "example_index", "to_grid", "valid_frequencies", "check_frequencies",
           "answer_directions", "FrequencyProjection", "PROJECTION_MODES", "W_L",
           "embedding_fourier", "W_L_fourier", "embedding_spectrum", "W_L_spectrum", "neuron_acts",
           "fourier_2d", "neuron_fourier", "frequency_shares", "NeuronFrequencies", "neuron_frequencies",
           "key_frequencies", "spectrum_peaks", "BASES", "KEY_RULES", "CLUSTER_THRESHOLD",
           "ab_grid", "attention_grids", "neuron_grids"]
