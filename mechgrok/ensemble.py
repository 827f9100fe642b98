"""Ensembles: many runs of one model shape trained together in one process.

    from mechgrok.ensemble import train_ensemble      # also re-exported by mechgrok.population
    cfgs = [replace(base, model=replace(base.model, seed=s), task=replace(base.task, seed=s)) for s in range(8)]
    runs = train_ensemble(cfgs, [f"sweeps/x/seed{s}" for s in range(8)])

The N members' trainable weights live in one ``[N, n_params]`` tensor (the parameter dict is
a set of views into it). One step is one AdamW update over that tensor (and, if asked for, one
Grokfast filter) for all members. The gradients come from ``torch.func.grad`` of the solo loss,
computed one of two ways (``vectorize``):

- vectorised (the default on a GPU): ``torch.func.vmap`` maps the loss over the members, so the
  step is one batched forward and backward -- no Python loop over members and no host
  synchronisation inside a step, which is what fills a GPU;
- member by member (the default on a CPU): the same solo kernels the solo trainer runs, one
  member after another. On a CPU vmap does not pay: its batched matmuls run at a lower rate than
  the solo ones and its batching rules add copies, so a vmapped member-step costs more than a
  solo one (``bench/ensemble.py``; the measurements are in bench/README.md, Ensembles).

Per member: the split (``task.seed``, or an explicit ``task.train_idx`` of the same size),
the initialisation (``model.seed``), the minibatch order (``train.seed``), ``lr``,
``weight_decay``, ``betas``, ``warmup_steps``, the step budget (``steps``),
``stop_after_grok`` and Grokfast's ``alpha``/``lambda``. Everything else (``ensemble_key``)
must agree.

Each member writes an ordinary run directory (``runs.RunWriter``): ``mg.load_run`` and every
analysis work on it, and its ``resume.safetensors`` has the solo format, so a member can even
be resumed alone. ``member.json`` records whether it is still running. A member leaves the
ensemble when it reaches its budget, ``stop_after_grok`` evaluations after it groks, or when
its loss stops being finite (``diverged``); the stacked tensors are then compacted, so the
remaining members' steps get cheaper (masking would keep paying for the stopped ones).

Equality with a solo run: a member computes what its solo run computes, in another order.
The batched matmuls of vmap (and the per-member AdamW written here over stacked tensors
rather than ``torch.optim.AdamW``'s foreach kernels) round differently in the last bit, so a
member is not bit-identical to its solo run; the difference starts at ~1e-7 relative and
training amplifies it slowly. ``tests/test_ensemble.py`` pins the loss curves of members and
their solo runs to a relative 1e-4: over 300 steps member by member (the CPU path; with
minibatches and with Grokfast too) and over 150 with vmap, whose batched matmuls drift faster
(4e-3 by step 300 on the test's lr 3e-3 member). Two ensembles of the same
members are bit-identical, and so is an ensemble resumed after SIGKILL.

Crash safety: at a checkpoint every member's files are written first with the resume state
under ``resume.next.safetensors``; only then are they all renamed to ``resume.safetensors``.
``resume_ensemble`` rolls a half-finished rename forward (or a half-written checkpoint back),
so the members always resume from one common step.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap
from tqdm.auto import tqdm

from .config import RunConfig, resolve_device
from .evaluation import EVAL_CHUNK, split_metrics
from .files import write_json
from .grokfast import GradientFilter
from .locks import lock_dirs
from .measures import training_probe
from .milestones import grokked_step, should_stop
from .model import check_params, forward, init_params, per_example_loss, weight_sq
from .runs import RESUME_FILE, ResumeState, Run, RunWriter, check_new_run_dir, lock_new_run_dir, read_resume_state
from .schedule import batch_position, epoch_permutation, trainable_names, warmup_factor
from .tasks import Task

MEMBER_FILE = "member.json"
NEXT_RESUME_FILE = "resume.next.safetensors"
# Fields that may differ between the members of one ensemble; every other field must agree.
PER_MEMBER = {"task": ("seed", "train_idx"), "model": ("seed",),
              "train": ("seed", "lr", "weight_decay", "betas", "warmup_steps", "steps", "stop_after_grok",
                        "grokfast_alpha", "grokfast_lambda")}
EPS = 1e-8  # AdamW's eps (torch's default, as the solo trainer uses)
# A member's probe, made per member from its config: probe(cfg)(step, params, exp_avg) -> {column: value}
ProbeFactory = Callable[[RunConfig], Callable[[int, dict, dict], dict]]


def ensemble_key(cfg: RunConfig) -> tuple:
    """What members of one ensemble share: every config field but those in ``PER_MEMBER``
    (and ``preset``, a label). Group a sweep's members by this key to chunk it."""
    key = []
    for part in ("task", "model", "train"):
        c = getattr(cfg, part)
        key += [(f"{part}.{f.name}", getattr(c, f.name)) for f in fields(c) if f.name not in PER_MEMBER[part]]
    if cfg.task.train_idx is not None:
        key.append(("task.n_train", len(cfg.task.train_idx)))
    return tuple(key)


def check_ensemble(cfgs: Sequence[RunConfig]):
    """Fail naming the first field on which a member differs from the first member, or naming
    what the ensemble cannot train."""
    if not cfgs:
        raise ValueError("an ensemble needs at least one member")
    if cfgs[0].train.optimizer != "adamw":
        raise ValueError(f"ensembles train with AdamW only (its update is written over the stacked members); "
                         f"train.optimizer={cfgs[0].train.optimizer!r} needs solo runs (mg.train, or sweep "
                         f"--chunk-size 1)")
    if cfgs[0].train.compile:
        raise ValueError("ensembles (and so sweeps) train eagerly: train.compile=True compiles a solo run's "
                         "step; train the members as solo runs (mg.train, mechgrok train --compile), or set "
                         "compile=False")
    first = dict(ensemble_key(cfgs[0]))
    for i, c in enumerate(cfgs[1:], 1):
        for name, value in ensemble_key(c):
            if first.get(name, value) != value or name not in first:
                raise ValueError(f"ensemble member {i} differs in {name} ({value!r} vs {first.get(name)!r}); "
                                 f"members may differ only in {_per_member_names()}")


def _per_member_names() -> str:
    return ", ".join(f"{part}.{f}" for part, names in PER_MEMBER.items() for f in names)


def member_status(out: str | os.PathLike) -> dict | None:
    """The ``member.json`` of an ensemble member: ``status`` (running, done,
    stopped_after_grok, diverged), ``last_step``, ``grokked_step``, ``ensemble_size``;
    None for a directory that is not a member."""
    f = Path(out) / MEMBER_FILE
    return json.loads(f.read_text()) if f.exists() else None


def _write_status(out: Path, status: str, last_step: int, rows: list[dict], n: int):
    write_json(out / MEMBER_FILE, {"status": status, "last_step": int(last_step), "grokked_step": grokked_step(rows),
                                   "ensemble_size": n})


# --- entry points ---------------------------------------------------------------------------


def train_ensemble(cfgs: Sequence[RunConfig], outs: Sequence[str | os.PathLike], *,
                   progress: bool = True, vectorize: bool | None = None,
                   init: Sequence[ResumeState] | None = None, probe: ProbeFactory | None = None,
                   probe_every: int = 100, measures=None, measure_every: int | None = None) -> list[Run]:
    """Train every ``cfgs[i]`` into the new run directory ``outs[i]`` as one ensemble; return
    the members' ``Run`` objects. Nothing is written unless every member is valid.
    ``init``: start member ``i`` from ``init[i]`` (weights, AdamW state, at a step common to all
    members: e.g. a checkpoint after an intervention) instead of a fresh initialisation at step 0.
    ``probe``: ``probe(cfg) -> probe function`` (e.g. ``lambda c: dynamics.make_probe(c)``), called
    once per member; each member's probe runs at the steps, with the arguments, that
    ``trainer.train`` gives a solo run's probe, and its rows go to the member's dynamics.csv.
    ``measures``, ``measure_every``: as in ``trainer.train``; each member makes its own (a
    stateful measure keeps one state per member).
    ``vectorize``: vmap the members' gradients (True) or compute them member by member (False);
    None picks vmap on a GPU and member by member on a CPU (module docstring)."""
    cfgs, outs = list(cfgs), [Path(o) for o in outs]
    if len(cfgs) != len(outs):
        raise ValueError(f"{len(cfgs)} configs but {len(outs)} output directories")
    if len(set(map(str, outs))) != len(outs):
        raise ValueError("two ensemble members share an output directory")
    check_ensemble(cfgs)
    for o in outs:
        check_new_run_dir(o)
    tasks = [Task(c.task) for c in cfgs]
    device = resolve_device(cfgs[0].train.device)
    if init is not None:
        if len(init) != len(cfgs) or len({st.step for st in init}) != 1:
            raise ValueError("init needs one ResumeState per member, all at the same step")
        for st, c, t in zip(init, cfgs, tasks):
            check_params(st.params, c.model.resolve(t), source="init")
    # every member's lock before the first config.json: a member held elsewhere fails the
    # ensemble before it has written anything
    with lock_dirs(outs, lock=lock_new_run_dir):
        writers, states = [], []
        try:
            for i, (c, t, o) in enumerate(zip(cfgs, tasks, outs)):
                writers.append(RunWriter.create(o, c, device))
                _write_status(o, "running", 0 if init is None else init[i].step, [], len(cfgs))
                states.append(ResumeState(0, init_params(c.model.resolve(t))) if init is None else init[i])
            _train_members(cfgs, tasks, writers, states, fresh=True, progress=progress, vectorize=vectorize,
                           probe=probe, probe_every=probe_every, measures=measures, measure_every=measure_every)
        finally:
            for w in writers:
                w.close()
    return [Run(o) for o in outs]


def resume_ensemble(outs: Sequence[str | os.PathLike], *, progress: bool = True,
                    vectorize: bool | None = None, probe: ProbeFactory | None = None,
                    probe_every: int = 100, measures=None, measure_every: int | None = None) -> list[Run]:
    """Continue an ensemble after a crash or SIGKILL. Finished members are left as they are;
    the others resume from their common last checkpoint and end as an uninterrupted ensemble
    would have."""
    outs = [Path(o) for o in outs]
    for o in outs:
        Run(o)  # not a run: say so before taking any lock
    # every member's lock (finished ones too: no solo resume may extend one meanwhile) before
    # the half-finished checkpoint is rolled forward or back
    with lock_dirs(outs):
        running = [o for o in outs if (member_status(o) or {}).get("status", "running") == "running"]
        _recover_checkpoint(running)
        by_step: dict[int, list[tuple[Path, ResumeState]]] = {}
        for o in running:
            st = read_resume_state(o)
            by_step.setdefault(st.step, []).append((o, st))
        for step in sorted(by_step):
            group = by_step[step]
            cfgs = [Run(o).config for o, _ in group]
            check_ensemble(cfgs)
            tasks = [Task(c.task) for c in cfgs]
            writers = [RunWriter.reopen(o, step) for o, _ in group]
            try:
                _train_members(cfgs, tasks, writers, [st for _, st in group], fresh=False, progress=progress,
                               vectorize=vectorize, probe=probe, probe_every=probe_every, measures=measures,
                               measure_every=measure_every)
            finally:
                for w in writers:
                    w.close()
    return [Run(o) for o in outs]


def _recover_checkpoint(outs: list[Path]):
    """Finish or undo a checkpoint that a kill interrupted (see the module docstring)."""
    pending = [o for o in outs if (o / NEXT_RESUME_FILE).exists()]
    if not pending:
        return
    nxt = {o: read_resume_state(o, NEXT_RESUME_FILE).step for o in pending}
    target = max(nxt.values())
    complete = all(nxt.get(o) == target or ((o / RESUME_FILE).exists() and read_resume_state(o).step == target)
                   for o in outs)
    for o in pending:
        if complete and nxt[o] == target:
            os.replace(o / NEXT_RESUME_FILE, o / RESUME_FILE)
        else:
            os.unlink(o / NEXT_RESUME_FILE)


# --- the batched step -----------------------------------------------------------------------


@torch.no_grad()
def adamw_(p: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, lr: Tensor, wd: Tensor, b1: Tensor, b2: Tensor):
    """``torch.optim.AdamW``'s update (decoupled weight decay, bias-corrected moments) on
    stacked members, in place: ``p, g, m, v`` are ``[N, n_params]``, the hyper-parameters
    ``[N, 1]`` float64 (one per member), ``t`` the step count after this step."""
    f32 = p.dtype
    p.mul_((1 - lr * wd).to(f32))
    m.lerp_(g, (1 - b1).to(f32))
    v.mul_(b2.to(f32)).addcmul_(g * (1 - b2).to(f32), g)
    step_size = (lr / (1 - b1 ** t)).to(f32)
    denom = (v.sqrt() / (1 - b2 ** t).sqrt().to(f32)).add_(EPS)
    p.addcdiv_(m * -step_size, denom)


class _Members:
    """The stacked state of the members still training: trainable weights ``flat [N, P]``
    (``params`` are views into it), frozen weights, AdamW moments, per-member settings and data."""

    def __init__(self, cfgs, tasks, writers, states, device):
        self.cfgs, self.tasks, self.writers = list(cfgs), list(tasks), list(writers)
        self.left_grokked = 0  # members that grokked and left: the progress bar counts them too
        c0 = cfgs[0]
        self.mcfg = c0.model.resolve(tasks[0])
        self.names = trainable_names(states[0].params, c0.train.frozen)
        self.order = list(states[0].params)  # the state dict's own key order, for the files
        self.frozen_names = [k for k in self.order if k not in self.names]
        self.shapes = {k: tuple(states[0].params[k].shape) for k in self.names}
        self.slices, off = {}, 0
        for k in self.names:
            n = int(torch.Size(self.shapes[k]).numel())
            self.slices[k], off = slice(off, off + n), off + n

        def flat(get):
            return torch.stack([torch.cat([get(s, k).reshape(-1) for k in self.names]) for s in states]).to(device)

        self.flat = flat(lambda s, k: s.params[k]).float().contiguous()
        self.frozen = {k: torch.stack([s.params[k] for s in states]).to(device) for k in self.frozen_names}
        has_opt = [bool(s.optimizer) for s in states]
        if any(has_opt) and not all(has_opt):
            raise ValueError("ensemble members disagree on whether AdamW has state")
        if all(has_opt):
            self.m = flat(lambda s, k: s.optimizer[k]["exp_avg"])
            self.v = flat(lambda s, k: s.optimizer[k]["exp_avg_sq"])
            counts = {int(s.optimizer[self.names[0]]["step"]) for s in states}
            if len(counts) != 1:
                raise ValueError(f"ensemble members are at different AdamW steps {sorted(counts)}")
            self.t = counts.pop()
        else:
            self.m, self.v, self.t = torch.zeros_like(self.flat), torch.zeros_like(self.flat), 0

        def col(get):
            return torch.tensor([float(get(c.train)) for c in cfgs], dtype=torch.float64, device=device)[:, None]

        self.lr, self.wd = col(lambda t: t.lr), col(lambda t: t.weight_decay)
        self.b1, self.b2 = col(lambda t: t.betas[0]), col(lambda t: t.betas[1])
        self.warmup = col(lambda t: t.warmup_steps)
        self.gfilter = GradientFilter.from_config(c0.train)
        if self.gfilter is not None:
            self.gfilter.alpha = col(lambda t: t.grokfast_alpha)  # float64: see GradientFilter
            self.gfilter.lam = col(lambda t: t.grokfast_lambda).float()
            if states[0].grokfast:
                self.gfilter.count = int(states[0].grokfast["count"])
                key = "ema" if self.gfilter.mode == "ema" else "window"
                if key == "ema":
                    self.gfilter.state["flat.ema"] = flat(lambda s, k: s.grokfast[f"{k}.ema"])
                else:  # window axis first: [window, N, P]
                    self.gfilter.state["flat.window"] = torch.stack(
                        [torch.cat([s.grokfast[f"{k}.window"].reshape(self.gfilter.window, -1) for k in self.names], 1)
                         for s in states], 1).to(device)
        self.train_idx = torch.stack([t.train_idx for t in tasks]).to(device)  # [N, n_train]
        self.inputs, self.labels = tasks[0].inputs.to(device), tasks[0].labels.to(device)

    def __len__(self):
        return len(self.cfgs)

    @property
    def params(self) -> dict[str, Tensor]:
        n = len(self)
        return {k: self.flat[:, sl].view(n, *self.shapes[k]) for k, sl in self.slices.items()}

    def moment_views(self) -> dict[str, Tensor]:
        """AdamW's first moment per trainable name, ``[N, *shape]`` views into ``m``."""
        n = len(self)
        return {k: self.m[:, sl].view(n, *self.shapes[k]) for k, sl in self.slices.items()}

    def member_state(self, i: int, step: int) -> ResumeState:
        """Member ``i``'s resume state in the solo format (per-name tensors)."""
        def cut(x):  # copies: safetensors refuses tensors that share memory
            return {k: x[i, sl].view(self.shapes[k]).clone() for k, sl in self.slices.items()}

        params = cut(self.flat) | {k: v[i].clone() for k, v in self.frozen.items()}
        m, v = cut(self.m), cut(self.v)
        optimizer = ({k: {"step": torch.tensor(float(self.t)), "exp_avg": m[k], "exp_avg_sq": v[k]}
                      for k in self.names} if self.t else {})
        grokfast = {}
        if self.gfilter is not None and self.gfilter.state:
            if self.gfilter.mode == "ema":
                grokfast = {f"{k}.ema": e for k, e in cut(self.gfilter.state["flat.ema"]).items()}
            else:
                w = self.gfilter.state["flat.window"]
                grokfast = {f"{k}.window": w[:, i, sl].reshape(self.gfilter.window, *self.shapes[k]).clone()
                            for k, sl in self.slices.items()}
            grokfast["count"] = torch.tensor(self.gfilter.count)
        return ResumeState(step, {k: params[k] for k in self.order}, optimizer, grokfast)

    def keep(self, idx: list[int]):
        """Compact the ensemble to members ``idx`` (the others have left it)."""
        sel = torch.tensor(idx, dtype=torch.long, device=self.flat.device)
        self.cfgs = [self.cfgs[i] for i in idx]
        self.tasks = [self.tasks[i] for i in idx]
        self.writers = [self.writers[i] for i in idx]
        self.flat, self.m, self.v = self.flat[sel].contiguous(), self.m[sel], self.v[sel]
        self.frozen = {k: v[sel] for k, v in self.frozen.items()}
        for name in ("lr", "wd", "b1", "b2", "warmup", "train_idx"):
            setattr(self, name, getattr(self, name)[sel])
        if self.gfilter is not None:
            self.gfilter.alpha, self.gfilter.lam = self.gfilter.alpha[sel], self.gfilter.lam[sel]
            for k, s in list(self.gfilter.state.items()):
                self.gfilter.state[k] = s[sel] if k == "flat.ema" else s[:, sel]


def _batch(members: _Members, step: int, cache: dict) -> Tensor:
    """``[N, batch]`` rows of the example table each member trains on at ``step``: its whole
    train split (full batch), or its minibatch in the order ``schedule.batch_indices`` gives a
    solo run (one shuffle per member per epoch, made once per epoch)."""
    bs = members.cfgs[0].train.batch_size
    n_train = members.train_idx.shape[1]
    if bs is None or bs >= n_train:
        return members.train_idx
    epoch, rows = batch_position(step, n_train, bs)
    seeds = tuple(c.train.seed for c in members.cfgs)
    if cache.get("key") != (epoch, seeds):
        perms = torch.stack([epoch_permutation(s, epoch, n_train) for s in seeds]).to(members.train_idx.device)
        cache.update(key=(epoch, seeds), rows=members.train_idx.gather(1, perms))
    return cache["rows"][:, rows]


def _train_members(cfgs, tasks, writers, states, fresh: bool, progress: bool, vectorize: bool | None = None,
                   probe: ProbeFactory | None = None, probe_every: int = 100, measures=None,
                   measure_every: int | None = None):
    """Train the members from ``states`` until every one has left the ensemble (its budget,
    ``stop_after_grok``, or a loss or weight that is not finite). ``fresh``: evaluate and
    checkpoint the starting step first (a resumed ensemble has both already)."""
    c0 = cfgs[0]
    device = resolve_device(c0.train.device)
    vectorize = device.type != "cpu" if vectorize is None else vectorize
    if probe is not None and probe_every < 1:
        raise ValueError(f"probe_every must be >= 1, got {probe_every}")
    mem = _Members(cfgs, tasks, writers, states, device)
    probes, probe_every = _member_probes(cfgs, writers, probe, probe_every, measures, measure_every)
    n_total = len(mem)
    start = states[0].step
    eval_every, ckpt_every = c0.train.eval_every, c0.train.checkpoint_every
    gradients = _gradient_function(mem.mcfg, vectorize)

    if fresh:
        for i, row in enumerate(_evaluate(mem, start, vectorize)):
            mem.writers[i].record(row)
        _checkpoint(mem, start, list(range(len(mem))))
    _leave(mem, start, [(i, s) for i in range(len(mem)) if (s := _finished(mem, i, start))], True, n_total)

    end = max((c.train.steps for c in mem.cfgs), default=start)
    bar = tqdm(total=end, initial=start, disable=not progress, unit="step", dynamic_ncols=True, mininterval=0.5,
               desc=f"ensemble of {n_total}")
    cache: dict = {}
    nonfinite = torch.zeros(len(mem), dtype=torch.bool, device=device)  # per member: a loss was not finite
    step = start
    while len(mem) and step < end:
        nonfinite |= _update(mem, step, cache, gradients)
        step += 1
        if probes and step % probe_every == 0:
            _record_probes(mem, probes, step)
        budgets = [c.train.steps for c in mem.cfgs]
        is_eval = step % eval_every == 0 or step in budgets
        is_ckpt = step % ckpt_every == 0
        if is_eval:
            nonfinite = _evaluate_and_retire(mem, step, nonfinite, vectorize, is_ckpt, n_total)
            n_grok = mem.left_grokked + sum(1 for w in mem.writers if grokked_step(w.rows) is not None)
            bar.set_postfix(members=len(mem), grokked=n_grok, refresh=False)
        elif is_ckpt:  # a diverged member keeps its last good checkpoint; it leaves at the next evaluation
            bad = _diverged(mem, nonfinite)
            _checkpoint(mem, step, [i for i in range(len(mem)) if not bad[i]])
        bar.update(1)
    bar.close()


def _member_probes(cfgs, writers, probe: ProbeFactory | None, probe_every: int, measures,
                   measure_every: int | None) -> tuple[dict[Path, Callable], int]:
    """Each member's probe (``measures.training_probe``: its ``probe(cfg)`` and its own
    measures) by the member's run directory, and the step interval they run at."""
    probes, every = {}, probe_every
    for w, c in zip(writers, cfgs):
        one, every = training_probe(c, measures, measure_every, probe(c) if probe is not None else None, probe_every)
        if one is not None:
            probes[w.path] = one
    return probes, every


def _member(tensors: dict[str, Tensor], i: int) -> dict[str, Tensor]:
    """Member ``i``'s slice of stacked ``[N, ...]`` tensors."""
    return {k: v[i] for k, v in tensors.items()}


def _gradient_function(mcfg, vectorize: bool) -> Callable[[_Members, Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``gradients(mem, x, y)``: every member's gradient ``[N, P]`` (in ``flat``'s layout) and
    loss ``[N]`` on its batch ``x[i], y[i]``: through vmap, or member by member with the solo
    kernels (module docstring)."""
    def member_loss(P: dict[str, Tensor], frozen: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return per_example_loss(forward(P | frozen, mcfg, x), y).mean()

    if vectorize:
        def total_loss(P, frozen, x, y):
            losses = vmap(member_loss)(P, frozen, x, y)
            return losses.sum(), losses

        step_grad = grad_and_value(total_loss, has_aux=True)

        def vectorized(mem: _Members, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            grads, (_, losses) = step_grad(mem.params, mem.frozen, x, y)
            return torch.cat([grads[k].flatten(1) for k in mem.names], 1), losses

        return vectorized
    solo_grad = grad_and_value(member_loss)

    def member_by_member(mem: _Members, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        g = torch.empty_like(mem.flat)
        losses = []
        params = mem.params
        for i in range(len(mem)):
            grads, loss = solo_grad(_member(params, i), _member(mem.frozen, i), x[i], y[i])
            torch.cat([grads[k].flatten() for k in mem.names], out=g[i])
            losses.append(loss)
        return g, torch.stack(losses)

    return member_by_member


def _update(mem: _Members, step: int, cache: dict, gradients) -> Tensor:
    """One optimiser step of every member on its batch at ``step`` (``_batch``): gradients,
    the Grokfast filter if asked for, AdamW. Returns ``[N]``: the members whose loss on that
    batch was not finite."""
    rows = _batch(mem, step, cache)
    x, y = mem.inputs[rows], mem.labels[rows]
    g, losses = gradients(mem, x, y)
    nonfinite = ~torch.isfinite(losses)
    if mem.gfilter is not None:
        g = mem.gfilter({"flat": g})["flat"]
    mem.t += 1
    lr = mem.lr * warmup_factor(step, mem.warmup)
    adamw_(mem.flat, g, mem.m, mem.v, mem.t, lr, mem.wd, mem.b1, mem.b2)
    return nonfinite


def _record_probes(mem: _Members, probes: dict[Path, Callable], step: int):
    """Every member's probe row at ``step``, into its dynamics.csv."""
    params, exp_avg = mem.params, mem.moment_views()
    for i, w in enumerate(mem.writers):
        row = probes[w.path](step, _member(params, i) | _member(mem.frozen, i), _member(exp_avg, i))
        w.record_dynamics({"step": step} | dict(row))


def _logits(mem: _Members, x: Tensor, vectorize: bool) -> Tensor:
    """``[N, batch, vocab]`` logits of every member on the same inputs."""
    if vectorize:
        return vmap(lambda P, Fz: forward(P | Fz, mem.mcfg, x))(mem.params, mem.frozen)
    params = mem.params
    return torch.stack([forward(_member(params, i) | _member(mem.frozen, i), mem.mcfg, x) for i in range(len(mem))])


@torch.no_grad()
def _evaluate(mem: _Members, step: int, vectorize: bool) -> list[dict]:
    """Every member's metrics row (``evaluation.split_metrics`` of its logits on every example)."""
    n = len(mem)
    chunk = max(1, EVAL_CHUNK // n) if vectorize else EVAL_CHUNK
    logits = torch.cat([_logits(mem, mem.inputs[s:s + chunk], vectorize) for s in range(0, len(mem.labels), chunk)], 1)
    wsq = weight_sq({"flat": mem.flat} | mem.frozen, batch_dims=1).tolist()
    return [dict(step=step, **split_metrics(logits[i], mem.tasks[i]), weight_sq=wsq[i]) for i in range(n)]


def _diverged(mem: _Members, nonfinite: Tensor) -> list[bool]:
    """Per member: a loss so far (``nonfinite``), or a weight or AdamW moment now, is not
    finite. The weights are checked too: the update after the last finite loss can overflow
    them, and such weights must not become a checkpoint. So are the moments: ``exp_avg_sq``
    overflows first (the squared gradient of a too-large lr) while weights and loss are still
    finite, and a resume state holding it is one the reader refuses (``files.check_tensors``)."""
    finite = torch.isfinite(mem.flat).all(1) & torch.isfinite(mem.m).all(1) & torch.isfinite(mem.v).all(1)
    return (nonfinite | ~finite).cpu().tolist()


def _evaluate_and_retire(mem: _Members, step: int, nonfinite: Tensor, vectorize: bool, is_ckpt: bool,
                         n_total: int) -> Tensor:
    """At an evaluation step: every member's metrics row (none for a diverged member), the
    checkpoint when ``is_ckpt``, and the members that are done leave (``_leave``). Returns
    ``nonfinite`` of the members that stay."""
    bad = _diverged(mem, nonfinite)
    for i, row in enumerate(_evaluate(mem, step, vectorize)):
        if not bad[i]:
            mem.writers[i].record(row)
    done = [(i, "diverged") if bad[i] else (i, s) for i in range(len(mem))
            if bad[i] or (s := _finished(mem, i, step))]
    if is_ckpt:
        _checkpoint(mem, step, [i for i in range(len(mem)) if not bad[i]])
    keep_flags = [i for i in range(len(mem)) if i not in {j for j, _ in done}]
    _leave(mem, step, done, is_ckpt, n_total)
    return nonfinite[torch.tensor(keep_flags, dtype=torch.long, device=nonfinite.device)]


def _checkpoint(mem: _Members, step: int, which: list[int]):
    """Members ``which`` checkpointed at ``step`` in two phases (module docstring, Crash safety)."""
    for i in which:  # phase 1: every member's files, resume state under its "next" name
        mem.writers[i].checkpoint(mem.member_state(i, step), resume_name=NEXT_RESUME_FILE)
    for i in which:  # phase 2: commit
        os.replace(mem.writers[i].path / NEXT_RESUME_FILE, mem.writers[i].path / RESUME_FILE)


def _finished(mem: _Members, i: int, step: int) -> str | None:
    """Member ``i``'s status if it is done at ``step`` ("stopped_after_grok", "done"), else None."""
    tc = mem.cfgs[i].train
    if should_stop(mem.writers[i].rows, tc.stop_after_grok):
        return "stopped_after_grok"
    return "done" if step >= tc.steps else None


def _leave(mem: _Members, step: int, rows_done: list[tuple[int, str]], checkpointed: bool, n_total: int):
    """Members that are done at ``step``: final checkpoint, member.json, compaction."""
    if not rows_done:
        return
    if not checkpointed:
        _checkpoint(mem, step, [i for i, status in rows_done if status != "diverged"])
    for i, status in rows_done:
        w = mem.writers[i]
        last = step if status != "diverged" else read_resume_state(w.path).step
        _write_status(w.path, status, last, w.rows, n_total)
    gone = {i for i, _ in rows_done}
    mem.left_grokked += sum(grokked_step(mem.writers[i].rows) is not None for i in gone)
    mem.keep([i for i in range(len(mem)) if i not in gone])
