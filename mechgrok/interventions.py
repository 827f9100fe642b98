"""Interventions on checkpoints: change something inside a model and measure what happens.

Three kinds, all taking a checkpoint (a ``Run`` and a step, a TransformerLens model, a params
dict, or a ``(params, cfg)`` pair) and returning numbers:

* **Key-frequency ablation** (``ablate_frequencies``, ``frequency_sweep``): TL-signature hooks
  ``fn(activation, hook)`` that remove a set of Fourier frequencies from an activation, or keep
  only them, at any hook point of ``[batch, pos, ...]`` activations (``where=``: a TL hook name,
  a ``get_act_name`` shorthand, or "embed", "neurons", "logits"). The same hook runs on the TL
  model (``model.run_with_hooks``) and on ``mechgrok.model.run_with_hooks``. Given a TL model,
  they run its own forward, so hooks already attached to it (``model.add_hook``) stay in force;
  given params, the fast path.
* **Neuron transplantation** (``transplant_neurons``, ``transplant_experiment``): copy neurons
  (W_in columns, b_in, W_out rows) from a donor checkpoint into a recipient, then train on.
* **Training on from a checkpoint** (``continue_training``, ``freeze_and_continue``,
  ``embedding_transfer``): the 11 freezing interventions of seed 000 and the embedding transfer
  of Xu et al. (2025), on the ordinary trainer.

What "frequency k" means at each hook point
-------------------------------------------
Frequencies are those of ``mechgrok.fourier``: k = 1 .. n//2 of the group the task lives on
(``basis="auto"``: Z_p for add/sub, the multiplicative group of order p-1, indexed by discrete
log, for mul/div). Residues outside the group (0 in the dlog basis) are never touched.

* ``where="embed"`` (``hook_embed``): the activation at the two operand positions is
  ``W_E[token]``. Frequency k is the pair of directions cos k, sin k of the *token axis*: the
  hook replaces every operand token's embedding by its projection, ``W_E' = P W_E[group]`` with
  P the projector (over residues) onto {cos k, sin k} (mode "keep": onto const + the kept
  frequencies; mode "remove": the complement of the removed frequencies). The ``=`` position
  and token 0 in the dlog basis are left as they are. Positional embeddings are untouched.
* ``where="neurons"`` (``blocks.{L}.mlp.hook_post``), ``where="logits"`` (``unembed.hook_out``)
  and any other hook point but the embedding, the token and position ids and the attention
  pattern and scores: at the last position each channel is a function over the examples.
  Frequency k is the two directions cos(w_k c), sin(w_k c) over the examples, c the answer's
  group coordinate (for addition: cos(w_k (a + b)), sin(w_k (a + b)) -- Nanda's restricted /
  excluded directions, two per frequency, so no cross-frequency terms). "remove" subtracts the
  projection onto them; "keep" keeps the projection onto them plus the channel's mean. Everything
  downstream is recomputed: at the neurons the residual stream (``hook_resid_mid``) still flows,
  so "keep" there is not the TL demo's restricted loss (which drops the residual), and in a
  multi-layer model later blocks see the ablated activation.

Because these directions are functions over the whole example set, the hooks expect the batch to
be ``task.inputs`` (every example, in order) and raise otherwise.

Training on from a checkpoint
-----------------------------
``continue_training`` restarts the trainer from the checkpoint's weights and *step*: training
runs steps ``from_step .. from_step + steps`` with the source run's settings, so warm-up and the
minibatch order (``schedule.batch_indices`` is a function of the step) continue where the source run
was. By default the optimiser starts fresh -- as in seed 000, which built a new AdamW for each
intervention. ``optimizer="carry"`` loads the moments of ``resume.safetensors`` instead, the
optimiser state of the newest checkpoint (moments a run kept at other checkpoints with
``TrainConfig.keep_moments``, ``runs.read_optimizer_state``, are not read here); that needs
``from_step`` to be the step of ``resume.safetensors``, and then the baseline continuation
replays the source run exactly.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from . import choices
from . import fourier
from .fourier import FrequencyProjection, check_frequencies, valid_frequencies
from .config import RunConfig
from .evaluation import evaluate, split_metrics
from .files import append_jsonl, read_jsonl, write_json
from .milestones import transition_metrics
from .model import HOOK_POINTS, ModelConfig, Params, as_model, as_params, check_params, hook_name, layer_index
from .progress import hooked_logits
from .runs import Run, read_resume_state
from .tasks import Task

WHERE = HOOK_POINTS
MODES = fourier.PROJECTION_MODES
OPTIMIZER_STATES = choices.OPTIMIZER_STATES
METRICS = ("train_loss", "test_loss", "train_acc", "test_acc")


# --- the embedding's token axis ----------------------------------------------------------------


def token_projector(task: Task, freqs: Sequence[int], mode: str = "remove", basis: str = "auto"
                    ) -> Float[Tensor, "p p"]:
    """Linear map over residues ``W_E[:p] -> M @ W_E[:p]`` that removes ``freqs`` (or keeps only
    them and the constant). Residues outside the group (0 in dlog) map to themselves."""
    c = fourier.coords(task, basis)
    ks = check_frequencies(freqs, task, basis)
    rows = [r for k in ks for r in fourier.freq_rows(k) if r < c.n]  # the Nyquist k of an even n has one row
    F = c.basis.double()[rows + ([0] if mode == "keep" else [])]
    proj = F.T @ F  # over group coordinates
    inner = proj if mode == "keep" else torch.eye(c.n, dtype=torch.float64) - proj
    M = torch.eye(task.p, dtype=torch.float64)
    M[c.elements[:, None], c.elements[None, :]] = inner
    return M.float()


# hook points a frequency hook cannot act on: integer ids, and [batch, head, q, k] attention
_NOT_PROJECTABLE = ("embed.hook_in", "pos_embed.hook_in", "attn.hook_pattern", "attn.hook_attn_scores")


def frequency_hook(task: Task, freqs: Sequence[int], mode: str = "remove", where="embed",
                   layer: int | None = None, basis: str = "auto", cfg: ModelConfig | None = None
                   ) -> tuple[str, Callable]:
    """``(hook_name, fn)`` that removes ``freqs`` from the activation (or keeps only them); see
    the module docstring for what that means at each point. ``where``: anything
    ``model.hook_name`` resolves (``layer`` applies to shorthands; ``cfg`` checks the name
    against the model). Pure: returns a new tensor. Away from the embedding it is
    ``fourier.FrequencyProjection``, the projection restricted and excluded loss use."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    name = hook_name(where, layer, cfg)
    if name.endswith(_NOT_PROJECTABLE):
        raise ValueError(f"a frequency hook acts on [batch, pos, ...] activations, not on {name!r}")
    if name not in ("hook_embed", "embed.hook_out"):
        return name, FrequencyProjection(task, freqs, mode, basis)
    M = token_projector(task, freqs, mode, basis)
    operand_positions = (0, 1)
    # First example carrying each token at each operand position: the activation there is
    # that token's embedding, so the hook stays a linear map of what it is given.
    first = [torch.full((task.p,), -1, dtype=torch.long).scatter_reduce(
        0, task.inputs[:, pos], torch.arange(len(task.labels)), "amin", include_self=False)
        for pos in operand_positions]

    def embed_fn(act: Float[Tensor, "batch pos d_model"], hook=None):
        if act.shape[0] != len(task.labels):
            raise ValueError(f"frequency-ablation hooks project over all {len(task.labels)} examples of "
                             f"{task.describe()}: run the model on task.inputs (in order), not a batch "
                             f"of {act.shape[0]}")
        out = act.clone()
        for pos, rep in zip(operand_positions, first):
            present = rep >= 0
            table = act.new_zeros(task.p, act.shape[-1])
            table[present] = act[rep[present], pos]
            out[:, pos] = (M.to(act) @ table)[task.inputs[:, pos].to(act.device)]
        return out

    return name, embed_fn


# --- ablation ----------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_with_hooks(params: Params, cfg: ModelConfig, task: Task, fwd_hooks=()) -> dict[str, float]:
    """Loss and accuracy on train, test and all examples of the model run on every example
    with ``fwd_hooks`` (the fast path; ``evaluate_model`` takes any model form)."""
    return evaluate(params, cfg, task, ("train", "test", "all"), fwd_hooks=fwd_hooks)


@torch.no_grad()
def evaluate_model(model, task: Task, fwd_hooks=(), cfg: ModelConfig | None = None) -> dict[str, float]:
    """``evaluate_with_hooks`` for a TL model (its own forward: hooks attached to it take
    effect) or ``(params, cfg)`` (the fast path)."""
    return split_metrics(hooked_logits(model, task, fwd_hooks, cfg), task, ("train", "test", "all"))


def _where_label(where, cfg: ModelConfig) -> str:
    return where if isinstance(where, str) else hook_name(where, cfg=cfg)


@dataclass(frozen=True)
class AblationResult:
    """Loss and accuracy on train, test and all examples, before and after an ablation."""

    where: str
    mode: str
    freqs: tuple[int, ...]
    before: dict[str, float]
    after: dict[str, float]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.before, self.after], index=["before", "after"])

    def to_dict(self) -> dict:
        return asdict(self) | {"freqs": list(self.freqs)}


def ablate_frequencies(model, task: Task, freqs: Sequence[int] | None = None, mode: str = "remove",
                       where: str | tuple = "embed", layer: int | None = None, step: int | None = None,
                       basis: str = "auto", cfg: ModelConfig | None = None) -> AblationResult:
    """Remove ``freqs`` (default: ``fourier.key_frequencies``) at ``where``, or keep only them,
    and measure loss and accuracy before and after. ``where``: a TL hook name, a
    ``get_act_name`` shorthand or "embed", "neurons", "logits" (``model.hook_name``); ``layer``:
    the MLP for ``where="neurons"`` (default the last). A TL model runs its own forward (hooks
    attached to it take effect, before and after); params run the fast path. The model's
    weights are not changed."""
    target, cfg = as_model(model, cfg, step)
    layer = layer_index(cfg, layer)
    if freqs is None:
        freqs = fourier.key_frequencies(target[0] if isinstance(target, tuple) else target, task, basis=basis,
                                        layer=layer, cfg=cfg)
        if not freqs:
            raise ValueError("the model has no key frequencies (no clustered neurons): pass freqs")
    hook = frequency_hook(task, freqs, mode, where, layer, basis, cfg)
    before = evaluate_model(target, task)
    after = evaluate_model(target, task, [hook])
    return AblationResult(_where_label(where, cfg), mode, tuple(int(k) for k in freqs), before, after)


def frequency_sweep(model, task: Task, where: str | tuple = "embed", mode: str = "remove",
                    key_freqs: Sequence[int] | None = None, layer: int | None = None, step: int | None = None,
                    basis: str = "auto", cfg: ModelConfig | None = None, progress: bool = False) -> pd.DataFrame:
    """One frequency at a time: a row per k with the metrics after ablating k alone, ``is_key``
    (``key_freqs``, default ``fourier.key_frequencies``), and ``attrs["baseline"]``."""
    from tqdm.auto import tqdm

    target, cfg = as_model(model, cfg, step)
    layer = layer_index(cfg, layer)
    if key_freqs is None:
        key_freqs = fourier.key_frequencies(target[0] if isinstance(target, tuple) else target, task, basis=basis,
                                            layer=layer, cfg=cfg)
    rows = []
    for k in tqdm(valid_frequencies(task, basis), desc=f"ablate each frequency at {_where_label(where, cfg)}",
                  unit="freq", disable=not progress, dynamic_ncols=True):
        hook = frequency_hook(task, [k], mode, where, layer, basis, cfg)
        rows.append({"freq": k, "is_key": k in key_freqs} | evaluate_model(target, task, [hook]))
    df = pd.DataFrame(rows)
    df.attrs.update(baseline=evaluate_model(target, task), where=_where_label(where, cfg), mode=mode,
                    key_freqs=sorted(int(k) for k in key_freqs))
    return df


def ablation_table(model, task: Task, freqs: Sequence[int] | None = None, where: str | tuple = "embed",
                   layer: int | None = None, step: int | None = None, basis: str = "auto",
                   cfg: ModelConfig | None = None) -> pd.DataFrame:
    """Baseline, key frequencies removed, and only key frequencies kept, side by side."""
    target, cfg = as_model(model, cfg, step)
    layer = layer_index(cfg, layer)
    if freqs is None:
        freqs = fourier.key_frequencies(target[0] if isinstance(target, tuple) else target, task, basis=basis,
                                        layer=layer, cfg=cfg)
    rm = ablate_frequencies(target, task, freqs, "remove", where, layer, basis=basis, cfg=cfg)
    keep = ablate_frequencies(target, task, freqs, "keep", where, layer, basis=basis, cfg=cfg)
    df = pd.DataFrame([rm.before, rm.after, keep.after], index=["baseline", "remove key", "keep only key"])
    df.attrs.update(freqs=[int(k) for k in freqs], where=_where_label(where, cfg))
    return df


# --- neuron transplantation ----------------------------------------------------------------------


def _neuron_keys(layer: int) -> tuple[str, str, str]:
    b = f"blocks.{layer}.mlp"
    return f"{b}.W_in", f"{b}.b_in", f"{b}.W_out"


def select_neurons(model, task: Task, freqs: Sequence[int] | None = None, layer: int | None = None,
                   threshold: float = fourier.CLUSTER_THRESHOLD, step: int | None = None,
                   basis: str = "auto", cfg: ModelConfig | None = None) -> list[int]:
    """Neurons of the frequency clusters ``freqs`` (default: every clustered neuron), by
    Nanda's rule (``fourier.neuron_frequencies``: one frequency holds >= ``threshold`` of the
    neuron's variance over the grid; a TL model's own forward, hooks included)."""
    target, cfg = as_model(model, cfg, step)
    layer = layer_index(cfg, layer)
    nf = fourier.neuron_frequencies(target[0] if isinstance(target, tuple) else target, task, basis=basis,
                                    layer=layer, threshold=threshold, cfg=cfg)
    f = nf.freq
    chosen = (f > 0) if freqs is None else torch.isin(f, torch.tensor(check_frequencies(freqs, task, basis)))
    return torch.nonzero(chosen).flatten().tolist()


def transplant_neurons(donor, recipient, neurons: Sequence[int], layer: int | None = None,
                       donor_step: int | None = None, recipient_step: int | None = None,
                       cfg: ModelConfig | None = None) -> Params:
    """A copy of the recipient's weights with ``neurons`` of MLP ``layer`` (default the last)
    taken from the donor: their W_in columns, b_in entries and W_out rows. Donor and recipient
    must have the same architecture; neither is modified."""
    d_params, d_cfg = as_params(donor, cfg, donor_step)
    r_params, r_cfg = as_params(recipient, cfg, recipient_step)
    for k, v in r_params.items():
        if k not in d_params or d_params[k].shape != v.shape:
            got = tuple(d_params[k].shape) if k in d_params else "missing"
            raise ValueError(f"donor and recipient have different shapes: {k} is {got} in the donor "
                             f"and {tuple(v.shape)} in the recipient")
    layer = layer_index(r_cfg, layer)
    idx = torch.as_tensor(list(neurons), dtype=torch.long)
    if idx.numel() == 0:
        raise ValueError("no neurons to transplant")
    if int(idx.min()) < 0 or int(idx.max()) >= r_cfg.d_mlp:
        raise ValueError(f"neuron indices must be in [0, {r_cfg.d_mlp}), got {sorted(set(idx.tolist()))[:5]}...")
    W_in, b_in, W_out = _neuron_keys(layer)
    out = {k: v.detach().clone() for k, v in r_params.items()}
    out[W_in][:, idx] = d_params[W_in][:, idx].to(out[W_in])
    out[b_in][idx] = d_params[b_in][idx].to(out[b_in])
    out[W_out][idx] = d_params[W_out][idx].to(out[W_out])
    return out


# --- training on from a checkpoint -------------------------------------------------------------


@dataclass
class Continuation:
    """What happened after training on from a checkpoint."""

    name: str
    from_step: int
    steps: int
    trainable_params: int
    total_params: int
    grokking_step: int | None
    final_train_acc: float
    final_test_acc: float
    max_test_acc: float
    path: str | None  # the continuation's run directory (None: it was temporary and is gone)
    metrics: pd.DataFrame = field(repr=False)
    optimizer: str = "fresh"

    @property
    def grokked(self) -> bool:
        return self.grokking_step is not None

    def to_dict(self, trajectory: bool = False) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "metrics"} | {"grokked": self.grokked}
        if trajectory:
            d["trajectory"] = self.metrics.to_dict("records")
        return d


def _count(params: Params, frozen: Sequence[str]) -> tuple[int, int]:
    from .schedule import trainable_names

    trainable = set(trainable_names(params, tuple(frozen)))
    return sum(v.numel() for k, v in params.items() if k in trainable), sum(v.numel() for v in params.values())


def continue_training(run: Run, from_step: int, steps: int, params: Params | None = None,
                      out: str | Path | None = None, frozen: Sequence[str] = (),
                      weight_decay: float | None = None, optimizer: str = "fresh", name: str = "continue",
                      progress: bool = False, **train_overrides) -> Continuation:
    """Train ``run`` on from checkpoint ``from_step`` for ``steps`` more steps with the run's own
    settings (step count, warm-up and minibatch order continue; see the module docstring).

    ``params``: start from these weights instead of the checkpoint's (a transplant).
    ``frozen``: extra fnmatch patterns of parameters kept fixed. ``weight_decay``: override.
    ``optimizer``: "fresh" AdamW state, or "carry" the moments in ``resume.safetensors``.
    ``out``: the new run directory; without it the run is trained in a temporary directory that
    is removed before this returns (the result keeps the metrics; its ``path`` is None).
    """
    from .trainer import train as train_run

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {OPTIMIZER_STATES}, got {optimizer!r}")
    init = run.params(from_step) if params is None else params
    check_params(init, run.model_cfg, source="params to continue from")
    opt_state = None
    if optimizer == "carry":
        state = read_resume_state(run.path)
        if state.step != from_step:
            raise ValueError(f"{run.path} keeps AdamW moments only for its newest checkpoint (step {state.step}), "
                             f"not step {from_step}: use optimizer='fresh'")
        opt_state = state.optimizer
    tcfg = run.config.train
    changes = dict(steps=from_step + steps, frozen=tuple(tcfg.frozen) + tuple(frozen)) | train_overrides
    if weight_decay is not None:
        changes["weight_decay"] = weight_decay
    cfg = replace(run.config, train=replace(tcfg, **changes))
    with contextlib.ExitStack() as temporary:
        keep = out is not None
        if not keep:  # nobody asked for the run: train in a temporary directory, removed once its metrics are read
            out = Path(temporary.enter_context(tempfile.TemporaryDirectory(prefix=f"mechgrok-{name}-"))) / "run"
        out = Path(out)
        new = train_run(cfg, out, init=init, start_step=from_step, init_opt_state=opt_state, progress=progress)
        write_json(out / "intervention.json", {"name": name, "source": str(run.path), "from_step": from_step,
                                               "steps": steps, "optimizer": optimizer,
                                               "frozen": list(cfg.train.frozen),
                                               "weight_decay": cfg.train.weight_decay})
        m = new.metrics
    trainable, total = _count(init, cfg.train.frozen)
    return Continuation(name=name, from_step=from_step, steps=steps, trainable_params=trainable,
                        total_params=total, grokking_step=transition_metrics(m).grokked_step,
                        final_train_acc=float(m["train_acc"].iloc[-1]),
                        final_test_acc=float(m["test_acc"].iloc[-1]),
                        max_test_acc=float(m["test_acc"].max()), path=str(out) if keep else None, metrics=m,
                        optimizer=optimizer)


# --- freezing (seed 000) -----------------------------------------------------------------------

INTERVENTIONS = choices.INTERVENTIONS


def intervention_groups(n_layers: int) -> dict[str, tuple[str, ...]]:
    """The interventions available for an ``n_layers`` model, as fnmatch patterns of the
    parameters they freeze (HookedTransformer keys). Seed 000's groups: the head is W_U (+b_U),
    not the final LayerNorm; exit attention/MLP are the last block's attn/mlp without their
    LayerNorms; "all attention" and "all MLP" include ln1 and ln2. A 1-layer model's entry and
    exit layer are the same block; middle layers exist from 3 layers on."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    last = f"blocks.{n_layers - 1}"
    groups = {
        "baseline": (), "no_weight_decay": (),
        "head": ("unembed.*",), "embeddings": ("embed.*", "pos_embed.*"),
        "exit_layer": (f"{last}.*",), "exit_attn": (f"{last}.attn.*",), "exit_mlp": (f"{last}.mlp.*",),
        "entry_layer": ("blocks.0.*",),
        "middle_layers": tuple(f"blocks.{i}.*" for i in range(1, n_layers - 1)),
        "attn_all": ("blocks.*.attn.*", "blocks.*.ln1.*"), "mlp_all": ("blocks.*.mlp.*", "blocks.*.ln2.*"),
    }
    if n_layers < 3:
        del groups["middle_layers"]
    return groups


def parse_interventions(names: str | Sequence[str], n_layers: int) -> list[str]:
    """``"all"``, a comma-separated string or a list -> validated intervention names."""
    groups = intervention_groups(n_layers)
    if isinstance(names, str):
        names = list(groups) if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    for n in names:
        if n not in groups:
            extra = (" (middle_layers needs a model with at least 3 layers)"
                     if n == "middle_layers" else "")
            raise ValueError(f"unknown intervention {n!r} for a {n_layers}-layer model{extra}; "
                             f"allowed: {', '.join(groups)}")
    return list(names)


def freeze_and_continue(run: Run, from_step: int, intervention: str, steps: int,
                        out: str | Path | None = None, optimizer: str = "fresh",
                        progress: bool = False) -> Continuation:
    """Seed 000's experiment: from checkpoint ``from_step``, freeze one component group (or
    drop weight decay) and train ``steps`` more steps with otherwise the run's settings."""
    name = parse_interventions([intervention], run.model_cfg.n_layers)[0]
    patterns = intervention_groups(run.model_cfg.n_layers)[name]
    return continue_training(run, from_step, steps, out=out, frozen=patterns,
                             weight_decay=0.0 if name == "no_weight_decay" else None,
                             optimizer=optimizer, name=name, progress=progress)


def _cache_key(run: Run | str | None, from_step: int, name: str, steps: int, optimizer: str | None) -> dict:
    """Every setting that produces a freeze continuation: a result in ``results.jsonl`` is
    reused only when all of them match (``run``, ``optimizer`` None: a row written before rows
    named them, which matches nothing)."""
    source = None if run is None else str(Path(run.path if isinstance(run, Run) else run).resolve())
    return {"source": source, "from_step": int(from_step), "name": name, "steps": int(steps), "optimizer": optimizer}


def _key_fields(row: dict) -> dict:
    """``_cache_key``'s arguments as a ``results.jsonl`` row records them."""
    return {"run": row.get("source"), "from_step": row["from_step"], "name": row["name"],
            "steps": row["steps"], "optimizer": row.get("optimizer")}


def _differences(had: dict, asked: dict) -> str:
    """The settings on which a cached result and the one asked for differ, as one phrase."""
    return ", ".join(f"{k}={had.get(k) if had.get(k) is not None else 'unrecorded'} (asked {asked[k]})"
                     for k in asked if had.get(k) != asked[k])


def freeze_sweep(run: Run, from_steps: Sequence[int], interventions: str | Sequence[str] = "all",
                 steps: int = 10_000, out_dir: str | Path | None = None, optimizer: str = "fresh",
                 progress: bool = True, on_result: Callable[[dict], None] | None = None,
                 trajectories: bool = False, train: bool = True) -> pd.DataFrame:
    """``freeze_and_continue`` for every (checkpoint, intervention); one row each, with the
    seconds it took; ``grokking_step`` is an integer column, <NA> where a continuation never
    grokked. Continuation runs go to ``out_dir/step_{s}/{name}`` (default ``out_dir``:
    ``RUN/interventions/freeze``). Resumable: every finished continuation is appended to
    ``out_dir/results.jsonl`` as it ends, and a later call with the same ``out_dir`` reuses a
    result there only when every setting that produced it matches (``_cache_key``: source run,
    checkpoint, intervention, steps, optimizer); one trained with other settings is trained
    again (a line on stderr says why) and its run directory replaced; a continuation cut off
    half-way is trained again from its checkpoint.
    ``trajectories``: keep each continuation's metrics in the rows (column ``trajectory``).
    ``train=False``: train nothing; the rows already in ``results.jsonl`` (a report of a sweep
    still running, or split over processes)."""
    import shutil
    import time

    from tqdm.auto import tqdm

    names = parse_interventions(interventions, run.model_cfg.n_layers)
    for s in from_steps:
        run.resolve_step(s)  # fail before hours of training, not after
    out_dir = Path(out_dir) if out_dir is not None else run.path / "interventions" / "freeze"
    log = out_dir / "results.jsonl"
    # the newest row per continuation directory: a row trained again later supersedes the
    # older one (whose directory it replaced)
    newest = {(r["from_step"], r["name"]): r for r in read_jsonl(log)}
    asked = {(s, n): _cache_key(run, s, n, steps, optimizer) for s in from_steps for n in names}
    done = {k: r for k, r in newest.items() if k in asked and _cache_key(**_key_fields(r)) == asked[k]}
    todo = list(asked) if train else [k for k in asked if k in done]
    bar = tqdm(total=len(todo), initial=sum(k in done for k in todo), desc="freeze and continue",
               unit="run", disable=not progress or not train, dynamic_ncols=True)
    for s, name in todo:
        if (s, name) in done:
            continue
        if (s, name) in newest:
            had = _cache_key(**_key_fields(newest[(s, name)]))
            print(f"{log}: {name} from step {s} was trained with {_differences(had, asked[(s, name)])}: "
                  f"training it again (its run directory is replaced)", file=sys.stderr)
        out = out_dir / f"step_{s}" / name
        shutil.rmtree(out, ignore_errors=True)
        t = time.time()
        res = freeze_and_continue(run, s, name, steps, out=out, optimizer=optimizer)
        row = res.to_dict(trajectory=True) | {"source": asked[(s, name)]["source"],
                                               "seconds": round(time.time() - t, 1)}
        done[(s, name)] = row
        append_jsonl(log, [row])
        if on_result:
            on_result(row)
        bar.set_postfix(last=f"{name}@{s}: test {res.final_test_acc:.2f}", refresh=False)
        bar.update(1)
    bar.close()
    rows = [done[k] for k in todo]
    if not trajectories:
        rows = [{k: v for k, v in r.items() if k != "trajectory"} for r in rows]
    table = pd.DataFrame(rows)
    # "never grokked" is None in a row; a float column would make it NaN (and 1500 a 1500.0)
    for c in ("from_step", "grokking_step", "steps"):
        if c in table:
            table[c] = table[c].astype("Int64")
    return table


# --- transplant and transfer experiments -------------------------------------------------------


def transplant_experiment(donor: Run, donor_step: int, recipient: Run, recipient_step: int, steps: int,
                          neurons: Sequence[int] | None = None, freqs: Sequence[int] | None = None,
                          layer: int | None = None, out_dir: str | Path | None = None,
                          progress: bool = False) -> dict:
    """Seed 004: transplant the donor's Fourier neurons (``neurons``, or the clusters ``freqs``,
    default every clustered neuron) into the recipient checkpoint, train on ``steps`` steps, and
    compare with the untouched recipient trained on from the same checkpoint (same seed, same
    minibatches, fresh optimiser for both). The two arms are run directories under ``out_dir``
    (default ``RECIPIENT/interventions/transplant_{recipient_step}``), and the result goes to
    ``out_dir/transplant.json`` with the settings that produced it: a call with the same
    settings returns it without training again; one with other settings, or over arms an
    interrupted call left, is refused (another ``out_dir``, or delete the directory)."""
    if neurons is None:
        neurons = select_neurons(donor, donor.task, freqs, layer, step=donor_step)
        if not neurons:
            raise ValueError(f"{donor.path} step {donor_step} has no clustered neurons to transplant")
    params = transplant_neurons(donor, recipient, neurons, layer, donor_step, recipient_step)
    out_dir = Path(out_dir) if out_dir is not None else recipient.path / "interventions" / f"transplant_{recipient_step}"
    settings = {"donor": str(donor.path.resolve()), "donor_step": int(donor_step),
                "recipient": str(recipient.path.resolve()), "recipient_step": int(recipient_step),
                "steps": int(steps), "neurons": sorted(map(int, neurons)),
                "layer": layer_index(recipient.model_cfg, layer)}
    cached = _finished_transplant(out_dir, settings)
    if cached is not None:
        return cached
    sub = (lambda n: out_dir / n)
    treated = continue_training(recipient, recipient_step, steps, params=params, out=sub("transplant"),
                                name="transplant", progress=progress)
    control = continue_training(recipient, recipient_step, steps, out=sub("control"), name="control",
                                progress=progress)
    before = evaluate_with_hooks(params, recipient.model_cfg, recipient.task)
    result = {"n_neurons": len(neurons), "neurons": list(map(int, neurons)),
              "after_transplant": before, "transplant": treated.to_dict(), "control": control.to_dict()}
    write_json(out_dir / TRANSPLANT_FILE, {"settings": settings, "result": result})
    return result


TRANSPLANT_FILE = "transplant.json"


def _finished_transplant(out_dir: Path, settings: dict) -> dict | None:
    """The result of the transplant experiment in ``out_dir`` when it was made with
    ``settings``; None when ``out_dir`` holds none; one clear error when it holds one made
    otherwise, or the arms of one that never finished."""
    f = out_dir / TRANSPLANT_FILE
    again = f"choose another --out, or delete {out_dir} to run it again"
    if f.exists():
        try:
            stored = json.loads(f.read_text())
            had = stored["settings"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ValueError(f"{f} is not a mechgrok transplant result: {again}") from None
        if had == settings:
            print(f"{f}: this transplant experiment has been run with the same settings; its result is "
                  f"reused", file=sys.stderr)
            return stored["result"]
        diff = ", ".join(f"{k}={had.get(k)!r} (asked {v!r})" for k, v in settings.items() if had.get(k) != v)
        raise ValueError(f"{out_dir} holds a transplant experiment with other settings ({diff}): {again}")
    arms = [n for n in ("transplant", "control") if (out_dir / n).exists()]
    if arms:
        raise ValueError(f"{out_dir} holds the {' and '.join(arms)} arm(s) of a transplant experiment that did not "
                         f"finish (no {TRANSPLANT_FILE}): {again}")
    return None


EMBEDDING_KEYS = ("embed.W_E", "pos_embed.W_pos")


def transfer_embeddings(source, target, keys: Sequence[str] = EMBEDDING_KEYS, source_step: int | None = None,
                        cfg: ModelConfig | None = None) -> Params:
    """A copy of ``target``'s weights with ``keys`` (default W_E and W_pos) from ``source``."""
    s_params, _ = as_params(source, cfg, source_step)
    t_params, _ = as_params(target, cfg)
    out = {k: v.detach().clone() for k, v in t_params.items()}
    for k in keys:
        if k not in s_params or k not in out:
            raise ValueError(f"{k!r} is not a parameter of both models")
        if s_params[k].shape != out[k].shape:
            raise ValueError(f"source and target have different shapes: {k} is {tuple(s_params[k].shape)} "
                             f"in the source and {tuple(out[k].shape)} in the target")
        out[k] = s_params[k].detach().clone().to(out[k])
    return out


def embedding_transfer(source: Run, source_step: int | None, cfg: RunConfig, out: str | Path,
                       freeze: bool = False, progress: bool = False) -> Run:
    """Xu et al. (2025): train ``cfg`` from its own fresh initialisation except for the token
    and position embeddings, taken from ``source`` at ``source_step``; ``freeze`` keeps them
    fixed. Returns the new run."""
    from .model import init_params
    from .trainer import train as train_run

    mcfg = cfg.model.resolve(Task(cfg.task))
    init = transfer_embeddings(source, (init_params(mcfg), mcfg), source_step=source_step)
    if freeze:
        cfg = replace(cfg, train=replace(cfg.train, frozen=tuple(cfg.train.frozen) + ("embed.*", "pos_embed.*")))
    run = train_run(cfg, out, init=init, progress=progress)
    write_json(Path(out) / "intervention.json", {"name": "embedding_transfer", "source": str(source.path),
                                                 "source_step": source_step, "freeze": freeze})
    return run


__all__ = ["WHERE", "MODES", "INTERVENTIONS", "valid_frequencies",
           "check_frequencies", "token_projector", "frequency_hook", "evaluate_with_hooks", "evaluate_model",
           "AblationResult", "ablate_frequencies", "frequency_sweep",
           "ablation_table", "select_neurons", "transplant_neurons", "Continuation", "continue_training",
           "intervention_groups", "parse_interventions", "freeze_and_continue", "freeze_sweep",
           "transplant_experiment", "transfer_embeddings", "embedding_transfer", "EMBEDDING_KEYS"]
