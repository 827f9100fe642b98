"""The trainer: one run on the functional forward, with checkpoint series and exact resume.

    run = mg.train(cfg, "runs/x")                 # a new run directory
    run = mg.resume("runs/x")                     # continue it after a crash or a stop
    run = mg.resume("runs/x", replace(cfg, train=replace(cfg.train, steps=8000)))  # extend it
    run = mg.resume("runs/x", replace(cfg, train=replace(cfg.train, steps=8000, stop_after_grok=None)))
                                                  # extend one stopped after grokking past the stop

Its collaborators are passed in: the optimizer (``TrainConfig.optimizer``, or ``optimizer=``
a factory, ``optim.py``), the loss (``loss=``, default the float64 cross-entropy of
``model.per_example_loss``), a probe run during training (``probe=``), and the storage
(``runs.RunWriter``). What a step does -- learning rate, minibatch, trainable parameters -- is
``schedule.py``'s, shared with the ensemble trainer (``ensemble.py``); evaluation is
``evaluation.py``'s; the stop rule is ``milestones.should_stop``. The trainer draws nothing.

Determinism: the initial weights come from ``model.seed``, the split from ``task.seed``, the
minibatch order from ``train.seed`` and the step number alone (no RNG state carried between
steps), so a resumed run replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .budget import check_run
from .config import RunConfig, resolve_device
from .evaluation import loss_and_accuracy_on
from .files import write_json
from .grokfast import GradientFilter
from .locks import lock_dir
from .measures import training_probe
from .milestones import should_stop
from .model import ModelConfig, Params, forward, init_params, per_example_loss, weight_sq
from .optim import (FunctionalUpdate, OptimizerFactory, compile_step, load_state_by_name, make_optimizer,
                    set_lr, state_by_name)
from .runs import (MEMBERS_DIR, METRIC_COLUMNS, SWEEP_FILE, ResumeState, Run, RunWriter, checkpoint_path,
                   optimizer_state, read_resume_state)
from .schedule import batch_indices, trainable_names, warmup_factor
from .tasks import Task

# probe(step, params, exp_avg) -> {column: value}: see train.
Probe = Callable[[int, Params, "dict[str, Tensor] | None"], "dict[str, float]"]
# loss(logits [batch, d_vocab_out], labels [batch]) -> scalar tensor to minimise
Loss = Callable[[Tensor, Tensor], Tensor]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run directory keeps the last good checkpoint."""


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """The default loss: mean float64 cross-entropy (``model.per_example_loss``)."""
    return per_example_loss(logits, labels).mean()


def loss_fn(params: Params, cfg: ModelConfig, tokens, labels, loss: Loss = cross_entropy) -> Tensor:
    """The training loss of the model on a batch: the whole of what one step differentiates."""
    return loss(forward(params, cfg, tokens), labels)


def compile_loss(fn: Callable[..., Tensor], backend="inductor") -> Callable[..., Tensor]:
    """``fn`` (a loss over the parameter dict, such as ``loss_fn``) through torch.compile: the
    forward and its backward (AOTAutograd) as compiled graphs, as ``train.compile`` trains.

    AOTAutograd's partitioner by default saves a ReLU's mask (``pre <= 0``, bool) for the
    backward instead of recomputing it from the saved output, which the backward reads anyway
    for the next matmul's gradient. Inductor's CPU store of a bool tensor is slow (a compiled
    ``y <= 0`` on [256, 512]: 1.8 ms, 16x eager's comparison); recomputing the mask makes the
    compiled Hu et al. step 1.08-1.15x faster (bench/README.md). With ``ban_recompute_materialized_backward`` off, the backward
    kernel that uses the mask recomputes it. The partition also decides how some sums fuse, so
    it is part of a compiled run's rounding (compiled runs made under the default partition
    drift from these as any two roundings do: hu_modular's loss 1.2% apart by step 1000).
    The setting is applied around every call: compilation happens at the first call and at a
    recompile (the smaller last minibatch of an epoch). ``backend``: torch.compile's (a test
    inspects the partition with its own).
    """
    compiled = torch.compile(fn, backend=backend)

    def call(*args, **kwargs) -> Tensor:
        with torch._functorch.config.patch(ban_recompute_materialized_backward=False):
            return compiled(*args, **kwargs)

    return call


def compile_train_step(params: Params, names: list[str], opt, cfg: ModelConfig, loss: Loss = cross_entropy,
                       backend="inductor") -> Callable[[Tensor, Tensor], Tensor] | None:
    """``train.compile``'s step as one compiled graph: the loss of a batch, its gradient
    (``torch.func.grad_and_value``) and the optimizer's update (``optim.FunctionalUpdate``)
    in one call; it returns the loss and leaves the update applied to ``params`` and to
    ``opt``'s state in place. None where the optimizer has no functional form (anything but
    torch's Adam and AdamW): the trainer then compiles the loss (``compile_loss``) and the
    update (``optim.compile_step``) as two graphs.

    Why one graph: on small batches the two-graph step is still mostly fixed cost, the autograd
    engine between the graphs, three guarded calls a step and the update's own kernels over
    every tensor; in one graph inductor fuses the update into the gradient's kernels. It
    computes what the two-graph step computes, fused differently: the same trajectory to
    rounding (bit for bit on hu_modular on one thread, 1e-8 apart on tiny_cfg on two;
    ``tests/test_compile.py``), 1.07-1.20x faster (bench/README.md).

    A trainable parameter the loss does not reach gets a zero gradient from ``torch.func``,
    where the autograd step leaves its ``grad`` None and the optimizer skips it (no decay, no
    moment update). The first call finds such parameters with one eager gradient on two
    examples and leaves them out of the update, as the autograd step does."""
    update = FunctionalUpdate.of(opt, params)
    if update is None:
        return None
    reached: list[str] = []
    fixed: dict[str, Tensor] = {}  # the frozen parameters and those the loss does not reach

    def step(tokens: Tensor, labels: Tensor) -> Tensor:
        def of(trainable: dict[str, Tensor]) -> Tensor:
            return loss_fn(fixed | trainable, cfg, tokens, labels, loss)

        grads, value = torch.func.grad_and_value(of)({k: params[k].detach() for k in reached})
        update(grads)
        return value

    compiled = torch.compile(step, backend=backend)

    def call(tokens: Tensor, labels: Tensor) -> Tensor:
        if not reached and not fixed:
            grads = torch.autograd.grad(loss_fn(params, cfg, tokens[:2], labels[:2], loss), [params[k] for k in names],
                                        allow_unused=True)
            reached.extend(k for k, g in zip(names, grads) if g is not None)
            fixed.update({k: v.detach() for k, v in params.items() if k not in reached})
            update.start(reached)
        if tokens.device.type != "cpu" or torch.get_num_threads() == 1:
            return compiled(tokens, labels)
        # on a CPU with more than one thread, inductor accumulates the embeddings' gradients
        # (index_put with accumulate) with atomic adds in parallel loops, whose order, and so
        # rounding, changes from run to run: a resumed run would not replay the uninterrupted
        # one. In deterministic mode it lowers them to aten's serial index_put_ instead (on one
        # thread the atomic adds run in order, and are 0.6 ms faster a step on hu_modular).
        # Dynamo guards on the mode, so it is on around every call, compilation included.
        before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)  # a user's op without one warns, not fails
        try:
            return compiled(tokens, labels)
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])

    return call


def make_step(params: Params, names: list[str], opt, cfg: ModelConfig, loss: Loss, compile: bool,
              gfilter: GradientFilter | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """One training step on a batch, ``step(tokens, labels) -> loss``: gradient of the loss,
    the gradient filter if any, the optimizer's update. A non-finite loss is returned before
    the update (the trainer stops the run), except from the one-graph compiled step, which has
    updated the weights by the time its loss is seen; either way nothing after the last good
    checkpoint is saved.

    ``compile`` (``train.compile``): loss, gradient and Adam/AdamW update as one compiled graph
    (``compile_train_step``); with another optimizer or a gradient filter between gradient and
    update, the forward + loss + backward as one graph (``compile_loss``) and the update as
    another (``optim.compile_step``). On small batches a step is hundreds of small kernels plus
    autograd and Python (bench/README.md); compiled, they fuse. Dynamo caches compiled code per
    code object and, past its recompile limit (8), runs the rest eagerly: the 9th compiled run
    of a process (a population trained in one loop) would then take an eager step, which
    refuses compile_step's capturable CPU groups and would round differently anyway. So each
    compiled step starts from an empty cache, and its numbers do not depend on how many runs
    the process made before it."""
    if compile:
        torch.compiler.reset()
        whole = compile_train_step(params, names, opt, cfg, loss) if gfilter is None else None
        if whole is not None:
            return whole
    step_loss, update = (compile_loss(loss_fn), compile_step(opt)) if compile else (loss_fn, opt.step)

    def step(tokens: Tensor, labels: Tensor) -> Tensor:
        value = step_loss(params, cfg, tokens, labels, loss)
        if not torch.isfinite(value):
            return value
        opt.zero_grad(set_to_none=True)
        value.backward()
        if gfilter is not None:
            filtered = gfilter({k: params[k].grad for k in names})
            for k in names:
                params[k].grad = filtered[k]
        update()
        return value

    return step


def _label(fn) -> str | None:
    return None if fn is None else f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def train(cfg: RunConfig, out: str | Path, *, progress: bool = True, init: Params | None = None,
          start_step: int = 0, init_opt_state=None, loss: Loss | None = None,
          optimizer: OptimizerFactory | None = None, probe: Probe | None = None, probe_every: int = 100,
          measures=None, measure_every: int | None = None) -> Run:
    """Train ``cfg`` into a new run directory ``out`` and return the loaded ``Run``.

    ``init``: start from these weights instead of a fresh initialisation (interventions).
    ``start_step``: with ``init``, the step those weights were taken at: training runs steps
    ``start_step .. cfg.train.steps``, so warm-up and minibatch order continue where the source
    run was. ``init_opt_state``: optimizer state to start from, by parameter name
    (``runs.read_resume_state(d).optimizer``); entries of frozen names are ignored.

    ``loss``: ``loss(logits, labels) -> scalar`` to minimise instead of the cross-entropy
    (metrics.csv still reports the cross-entropy, so runs stay comparable).
    ``optimizer``: a factory ``named_params -> torch.optim.Optimizer`` instead of the one
    ``cfg.train.optimizer`` names (``optim.py``). A run trained with either records its name in
    config.json, and resuming it needs the same one passed again.

    ``probe``: ``probe(step, params, exp_avg) -> dict[str, float]``, called after the optimizer
    step at every step divisible by ``probe_every`` (``step`` counts completed steps, so the
    first call is at ``probe_every``), with the live parameter dict (trainable tensors have
    ``requires_grad``; do not modify them in place, detach what you keep) and the optimizer's
    first moment per trainable parameter name (``None`` when it keeps none). Each returned dict
    becomes a row ``{"step": step, **values}`` of ``dynamics.csv`` in the run directory,
    written at every checkpoint and kept across resume (rows after the resume step dropped).

    ``measures``: measures (``measures.py``: callables, built-in names, ``"pkg.mod:fn"`` specs)
    taken every ``measure_every`` steps (default: each measure's own ``every``, else
    ``probe_every``) with the same arguments as a probe; their columns go to the same rows.
    """
    out = Path(out)
    if start_step and init is None:
        raise ValueError("start_step needs init: the weights at that step")
    if not 0 <= start_step < cfg.train.steps:
        raise ValueError(f"start_step={start_step} must be in [0, steps={cfg.train.steps})")
    if probe is not None and probe_every < 1:
        raise ValueError(f"probe_every must be >= 1, got {probe_every}")
    probe, probe_every = training_probe(cfg, measures, measure_every, probe, probe_every)
    check_run(cfg)  # refuse what will not fit before anything is allocated or written
    task = Task(cfg.task)
    mcfg = cfg.model.resolve(task)
    device = resolve_device(cfg.train.device)
    params = {k: v.clone() for k, v in (init if init is not None else init_params(mcfg)).items()}
    trainable_names(params, cfg.train.frozen)  # fail before anything is written
    custom = {k: v for k, v in (("loss", _label(loss)), ("optimizer_factory", _label(optimizer))) if v}
    opt_state = dict(init_opt_state or {})
    if opt_state and not all(isinstance(v, dict) for v in opt_state.values()):
        opt_state = optimizer_state(opt_state)  # the flat opt.<name>.<key> tensors of a resume file
    state = ResumeState(start_step, params, opt_state)
    with RunWriter.create(out, cfg, device, extra=custom) as writer:  # holds the run's write lock
        return _train(cfg, task, writer, state, fresh=True, progress=progress, loss=loss, optimizer=optimizer,
                      probe=probe, probe_every=probe_every)


# What a resume may change: where the run trains, how long, and when it stops after grokking
# (the stop rule only decides where the trajectory ends, never what it is up to there).
RESUMABLE_CHANGES = ("steps", "device", "stop_after_grok")


def resume_config(stored: RunConfig, asked: RunConfig) -> RunConfig:
    """The config a resumed run continues with: ``stored``, with a larger ``train.steps`` (the
    run is extended), another ``train.device`` or another ``train.stop_after_grok`` (None: no
    stop rule) from ``asked``. Any other difference fails with the field's name: a resumed run
    must stay the run it was."""
    if asked.train.steps < stored.train.steps:
        raise ValueError(f"cannot resume with train.steps={asked.train.steps}: the run was set to "
                         f"{stored.train.steps} steps; give more to extend it")
    for part in ("task", "model", "train"):
        a, s = getattr(asked, part), getattr(stored, part)
        for f in fields(s):
            if f.name in RESUMABLE_CHANGES and part == "train":
                continue
            if getattr(a, f.name) != getattr(s, f.name):
                raise ValueError(f"cannot change {part}.{f.name} when resuming (the run has "
                                 f"{getattr(s, f.name)!r}, asked {getattr(a, f.name)!r}); only "
                                 f"train.steps may grow (and train.stop_after_grok change). Start a new "
                                 f"run for other settings")
    return replace(stored, train=replace(stored.train, **{k: getattr(asked.train, k) for k in RESUMABLE_CHANGES}))


def check_resume(out: str | Path, asked: RunConfig) -> RunConfig:
    """``resume_config`` of the run in ``out``, refusing a stop rule that has already fired at
    its resume state while steps remain (such a resume would train nothing), and any change to
    a member of a sweep (``population.extend_sweep`` extends those, keeping the sweep's table
    true)."""
    out = Path(out)
    run = Run(out)
    new = resume_config(run.config, asked)
    sweep = out.parent.parent
    if new != run.config and out.parent.name == MEMBERS_DIR and (sweep / SWEEP_FILE).exists():
        # the sweep's manifest and table would go on reporting the member as it was
        raise ValueError(f"{out} is a member of the sweep {sweep}: extend the whole sweep with "
                         f"`mechgrok sweep --resume {sweep} --set steps=N` (population.extend_sweep), or copy "
                         f"the member out of it to extend it alone")
    step = stop_rule_fired(out, new.train.stop_after_grok)
    if step is not None and step < new.train.steps:
        raise ValueError(f"{out} was stopped at step {step} by its stop rule (train.stop_after_grok="
                         f"{new.train.stop_after_grok}: that many evaluations after it grokked), which has fired "
                         f"already: to train on to step {new.train.steps}, resume with stop_after_grok=None or a "
                         f"larger one (mechgrok train --resume: --steps N alone, or a larger --stop-after-grok)")
    return new


def stop_rule_fired(out: str | Path, stop_after_grok: int | None) -> int | None:
    """The step of the resume state of the run in ``out`` when the stop rule
    ``stop_after_grok`` has fired by then (``milestones.should_stop`` on the evaluations up to
    it), else None."""
    step = read_resume_state(out).step
    rows = [r for r in Run(out).metrics.to_dict("records") if r["step"] <= step]
    return step if should_stop(rows, stop_after_grok) else None


def stopped_after_grok(out: str | Path) -> int | None:
    """The step at which the run in ``out`` was stopped by its own stop rule
    (``train.stop_after_grok``: fired before its budget), or None when it was not."""
    cfg = Run(out).config.train
    step = stop_rule_fired(out, cfg.stop_after_grok)
    return step if step is not None and step < cfg.steps else None


def resume(out: str | Path, cfg: RunConfig | None = None, *, progress: bool = True, loss: Loss | None = None,
           optimizer: OptimizerFactory | None = None, probe: Probe | None = None, probe_every: int = 100,
           measures=None, measure_every: int | None = None) -> Run:
    """Continue the run in ``out`` from its resume state (its newest checkpoint). ``cfg``: the
    settings asked for (``resume_config``: only more steps, another device or another stop
    rule are accepted); with more steps a finished run is extended and its config.json updated.
    A run its stop rule stopped (``stopped_after_grok``) trains on only under a rule that has
    not fired yet: ``cfg`` with ``train.stop_after_grok=None`` (or a larger K) extends it past
    the stop, exactly as if it had never stopped; asking to train on under a rule that has
    already fired is refused, since it would train nothing. ``loss``,
    ``optimizer``: the same ones the run was trained with, if it was trained with its own.
    ``probe``, ``measures``: as in ``train`` (pass the same ones to keep ``dynamics.csv`` consistent)."""
    out = Path(out)
    Run(out)  # not a run: say so before anything else
    # the lock before config.json is read for the last time: a second resume must neither
    # rewrite config.json nor see one that a live resume is about to change
    with lock_dir(out):
        run = Run(out)
        for key, given in (("loss", loss), ("optimizer_factory", optimizer)):
            if run.meta.get(key) and given is None:
                raise ValueError(f"{out} was trained with its own {key.split('_')[0]} ({run.meta[key]}): pass "
                                 f"{key.split('_')[0]}= to resume it")
        state = read_resume_state(out)
        if cfg is not None:
            new = check_resume(out, cfg)
            if new != run.config:
                write_json(out / "config.json", run.meta | new.to_dict())
            run = Run(out)
        probe, probe_every = training_probe(run.config, measures, measure_every, probe, probe_every)
        with RunWriter.reopen(out, state.step) as writer:
            return _train(run.config, run.task, writer, state, fresh=False, progress=progress, loss=loss,
                          optimizer=optimizer, probe=probe, probe_every=probe_every)


def _train(cfg: RunConfig, task: Task, writer: RunWriter, state: ResumeState, fresh: bool, progress: bool,
           loss: Loss | None, optimizer: OptimizerFactory | None, probe: Probe | None, probe_every: int) -> Run:
    """Steps ``state.step .. cfg.train.steps`` from ``state``; ``fresh``: record and checkpoint
    the starting point first."""
    out, tcfg = writer.path, cfg.train
    mcfg = cfg.model.resolve(task)
    device = resolve_device(tcfg.device)
    loss = cross_entropy if loss is None else loss
    if probe is not None and probe_every < 1:
        raise ValueError(f"probe_every must be >= 1, got {probe_every}")
    # contiguous copies: init_params builds the attention weights as strided views, and a file
    # gives them back contiguous; CPU matmul kernels round differently on the two layouts, so
    # training on the strided ones would make a resumed run drift from an uninterrupted one
    params = {k: v.to(device, memory_format=torch.contiguous_format, copy=True) for k, v in state.params.items()}
    names = trainable_names(params, tcfg.frozen)
    for k, v in params.items():
        v.requires_grad_(k in names)
    opt = make_optimizer(params, names, tcfg, optimizer)
    if state.optimizer:
        load_state_by_name(opt, params, {k: v for k, v in state.optimizer.items() if k in names})
    gfilter = GradientFilter.from_config(tcfg)
    if gfilter is not None and state.grokfast:
        gfilter.load(state.grokfast, device)
    take_step = make_step(params, names, opt, mcfg, loss, tcfg.compile, gfilter)

    inputs, labels = task.inputs.to(device), task.labels.to(device)
    train_x, train_y = inputs[task.train_idx.to(device)], labels[task.train_idx.to(device)]
    test_x, test_y = inputs[task.test_idx.to(device)], labels[task.test_idx.to(device)]

    def record(step: int) -> dict:
        tr_loss, tr_acc = loss_and_accuracy_on(params, mcfg, train_x, train_y)
        te_loss, te_acc = loss_and_accuracy_on(params, mcfg, test_x, test_y)
        return writer.record(dict(zip(METRIC_COLUMNS, (step, tr_loss, te_loss, tr_acc, te_acc, weight_sq(params)))))

    def checkpoint(step: int):
        resume = ResumeState(step, params, state_by_name(opt, params), gfilter.state_tensors() if gfilter is not None else {})
        # the update after the last finite loss can overflow the weights, and AdamW's second
        # moment overflows first (the squared gradient of a too-large lr): a state holding
        # either is one the reader refuses (files.check_tensors), so it must not replace the last good one
        bad = [k for k, v in resume.to_tensors().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            bar.close()
            raise TrainingDiverged(
                f"{bad[0]} is not finite at step {step} ({len(bad)} tensor(s)): training stopped. The last good "
                f"checkpoint is step {last_good} in {out} (resume.safetensors and "
                f"{checkpoint_path(out, last_good).name}); try a lower lr or more warm-up.")
        writer.checkpoint(resume)

    start = last_good = state.step
    bar = tqdm(total=tcfg.steps, initial=start, disable=not progress, desc=out.name, unit="step",
               dynamic_ncols=True, mininterval=0.5)
    if fresh:
        record(start)
        checkpoint(start)
    stopped = should_stop(writer.rows, tcfg.stop_after_grok)
    t0 = time.time()
    for step in range(start, tcfg.steps if not stopped else start):
        idx = batch_indices(step, len(train_y), tcfg.batch_size, tcfg.seed)
        x, y = (train_x, train_y) if idx is None else (train_x[idx.to(device)], train_y[idx.to(device)])
        set_lr(opt, warmup_factor(step, tcfg.warmup_steps))
        value = take_step(x, y)
        if not torch.isfinite(value):
            bar.close()
            raise TrainingDiverged(
                f"loss became {value.item()} at step {step}: training stopped. The last good "
                f"checkpoint is step {last_good} in {out} (resume.safetensors and "
                f"{checkpoint_path(out, last_good).name}); try a lower lr or more warm-up.")
        done = step + 1
        if probe is not None and done % probe_every == 0:
            moments = state_by_name(opt, params)
            exp_avg = {k: st["exp_avg"] for k, st in moments.items() if "exp_avg" in st} or None
            writer.record_dynamics({"step": done} | dict(probe(done, params, exp_avg)))
        stop = False
        if done % tcfg.eval_every == 0 or done == tcfg.steps:
            r = record(done)
            bar.set_postfix(train_acc=f"{r['train_acc']:.3f}", test_acc=f"{r['test_acc']:.3f}",
                            test_loss=f"{r['test_loss']:.2e}", refresh=False)
            stop = should_stop(writer.rows, tcfg.stop_after_grok)
        if done % tcfg.checkpoint_every == 0 or done == tcfg.steps or stop:
            checkpoint(done)
            last_good = done
        bar.update(1)
        if stop:
            break
    bar.close()
    if progress and start < tcfg.steps and not stopped:
        print(f"trained {bar.n - start} steps in {time.time() - t0:.1f} s on {device}")
    return Run(out)
