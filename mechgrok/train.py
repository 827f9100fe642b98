"""The trainer: AdamW on the functional forward, with checkpoint series and exact resume.

    run = mg.train_run(cfg, "runs/x")              # a new run directory
    run = mg.resume_run("runs/x")                  # continue it after a crash or a stop
    run = mg.resume_run("runs/x", replace(cfg, train=replace(cfg.train, steps=8000)))  # extend it

The step is a function of a dict of parameters (``loss_fn``); ``population.py`` stacks many
such dicts and maps the same loss with ``torch.func.vmap``, reusing this module's pieces
(``lr_at``, ``batch_indices``, ``GradientFilter``, ``should_stop``) and ``runs.RunWriter``.
What a run directory holds, and the resume format, are defined in ``runs.py``; figures are
drawn by callers (``runs.draw_figures``).

Determinism: the initial weights come from ``model.seed``, the split from ``task.seed``, the
minibatch order from ``train.seed`` and the step number alone (no RNG state carried between
steps), so a resumed run replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .model import ModelConfig, Params, forward, init_params, loss_and_accuracy
from .runs import (METRIC_COLUMNS, ResumeState, Run, RunConfig, RunWriter, TrainConfig, checkpoint_path,
                   read_resume_state, write_json)
from .tasks import Task

EVAL_CHUNK = 65536

# probe(step, params, exp_avg) -> {column: value}: see train_run.
Probe = Callable[[int, Params, "dict[str, Tensor] | None"], "dict[str, float]"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run directory keeps the last good checkpoint."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was requested but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}); use --device cpu")
    return torch.device(device)


def loss_fn(params: Params, cfg: ModelConfig, tokens, labels):
    """(loss, accuracy) of the model on a batch: the whole of what one training step needs."""
    return loss_and_accuracy(forward(params, cfg, tokens), labels)


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    # Linear warm-up from lr/warmup to lr; a function of the step alone so that resume needs no
    # scheduler state. (Nanda's LambdaLR starts at 0 on step 0; we start one step further on.)
    return lr * min((step + 1) / warmup_steps, 1.0) if warmup_steps else lr


def trainable_names(params: Params, frozen: tuple[str, ...]) -> list[str]:
    return [k for k in params if not any(fnmatch.fnmatchcase(k, pat) for pat in frozen)]


def make_optimizer(params: Params, names: list[str], tcfg) -> torch.optim.AdamW:
    # foreach: one fused kernel per op across all tensors, several times faster than the
    # per-tensor loop for the many small tensors of these models.
    return torch.optim.AdamW([params[k] for k in names], lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                             betas=tcfg.betas, foreach=True)


def batch_indices(step: int, n_train: int, batch_size: int | None, seed: int) -> torch.Tensor | None:
    """Which training examples step ``step`` sees (None: all of them). Epoch-wise shuffles
    seeded by (seed, epoch), like a shuffling DataLoader, but reproducible from the step."""
    if batch_size is None or batch_size >= n_train:
        return None
    per_epoch = math.ceil(n_train / batch_size)
    epoch, i = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_train, generator=g)[i * batch_size:(i + 1) * batch_size]


@torch.no_grad()
def evaluate(params: Params, cfg: ModelConfig, inputs, labels) -> tuple[float, float]:
    total_loss, correct = 0.0, 0.0
    for s in range(0, len(labels), EVAL_CHUNK):
        loss, acc = loss_fn(params, cfg, inputs[s:s + EVAL_CHUNK], labels[s:s + EVAL_CHUNK])
        n = len(labels[s:s + EVAL_CHUNK])
        total_loss += loss.item() * n
        correct += acc.item() * n
    return total_loss / len(labels), correct / len(labels)


def should_stop(rows: list[dict], stop_after_grok: int | None) -> bool:
    """Whether a run with these evaluation rows has had ``stop_after_grok`` evaluations since
    the first one with test accuracy above ``progress.GROKKED_TEST_ACC`` (the grokking step of
    ``progress.transition_metrics``)."""
    from .progress import GROKKED_TEST_ACC

    if stop_after_grok is None:
        return False
    grok = next((i for i, r in enumerate(rows) if r["test_acc"] > GROKKED_TEST_ACC), None)
    return grok is not None and len(rows) - 1 - grok >= stop_after_grok


# --- Grokfast ---------------------------------------------------------------------------------


class GradientFilter:
    """Grokfast's gradient filters (Lee et al. 2024; science.md "Optimiser dynamics"), applied
    between backward and the optimiser step to a dict of gradients:

    - ``ema``: e <- alpha * e + (1 - alpha) * g, then g <- g + lambda * e. e starts as the first
      gradient (so the first filtered gradient is (1 + lambda) * g), not as zero, which would
      shrink the early filter by (1 - alpha^t).
    - ``ma``: keep the last ``window`` gradients; once the window is full,
      g <- g + lambda * mean(window); before that g passes unchanged.

    ``alpha`` and ``lam`` are numbers, or tensors that broadcast against the gradients (the
    ensemble trainer passes one value per member). The state (``state_tensors``) goes into the
    resume file, so a resumed run filters exactly as an uninterrupted one."""

    def __init__(self, mode: str, alpha=0.98, lam=2.0, window: int = 100):
        if mode not in ("ema", "ma"):
            raise ValueError(f"Grokfast mode must be ema or ma, got {mode!r}")
        self.mode, self.alpha, self.lam, self.window = mode, alpha, lam, window
        self.state: dict[str, Tensor] = {}
        self.count = 0  # gradients seen

    @classmethod
    def from_config(cls, tcfg: TrainConfig) -> "GradientFilter | None":
        if tcfg.grokfast == "none":
            return None
        return cls(tcfg.grokfast, tcfg.grokfast_alpha, tcfg.grokfast_lambda, tcfg.grokfast_window)

    @torch.no_grad()
    def __call__(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        if self.mode == "ema":
            for k, g in grads.items():
                e = self.state.get(f"{k}.ema")
                e = g.clone() if e is None else e * self.alpha + g * (1 - self.alpha)
                self.state[f"{k}.ema"] = e
                out[k] = g + self.lam * e
        else:
            slot = self.count % self.window
            for k, g in grads.items():
                buf = self.state.get(f"{k}.window")
                if buf is None:
                    buf = self.state[f"{k}.window"] = g.new_zeros((self.window, *g.shape))
                buf[slot] = g
                out[k] = g + self.lam * buf.mean(0) if self.count + 1 >= self.window else g
        self.count += 1
        return out

    def state_tensors(self) -> dict[str, Tensor]:
        return self.state | {"count": torch.tensor(self.count)}

    def load(self, tensors: dict[str, Tensor], device=None):
        self.state = {k: v.to(device) for k, v in tensors.items() if k != "count"}
        self.count = int(tensors["count"]) if "count" in tensors else 0


# --- optimiser state in the resume format --------------------------------------------------


def _opt_state(opt: torch.optim.AdamW, names: list[str]) -> dict[str, dict[str, Tensor]]:
    out = {}
    for name, p in zip(names, opt.param_groups[0]["params"]):
        st = opt.state.get(p, {})
        if "exp_avg" in st:
            out[name] = {k: st[k] for k in ("step", "exp_avg", "exp_avg_sq")}
    return out


def _load_opt_state(opt: torch.optim.AdamW, names: list[str], optimizer: dict[str, dict[str, Tensor]], device):
    state = {i: {k: v.to(device).clone() for k, v in optimizer[name].items()}
             for i, name in enumerate(names) if name in optimizer}
    for st in state.values():
        st["step"] = st["step"].cpu()  # torch keeps AdamW's step count on the CPU
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


def _as_optimizer_state(init_opt_state) -> dict[str, dict[str, Tensor]]:
    """Accept ``ResumeState.optimizer`` (name -> {step, exp_avg, exp_avg_sq}) or the flat
    ``opt.<name>.<key>`` tensors of a resume file."""
    if init_opt_state is None:
        return {}
    if all(isinstance(v, dict) for v in init_opt_state.values()):
        return dict(init_opt_state)
    return ResumeState.from_tensors({**init_opt_state, "meta.step": torch.tensor(0)}).optimizer


# --- the loop -------------------------------------------------------------------------------


def train_run(cfg: RunConfig, out: str | Path, *, progress: bool = True, init: Params | None = None,
              start_step: int = 0, init_opt_state=None, probe: Probe | None = None,
              probe_every: int = 100) -> Run:
    """Train ``cfg`` into a new run directory ``out`` and return the loaded ``Run``. Draws no
    figures (``runs.draw_figures(run)`` does).

    ``init``: start from these weights instead of a fresh initialisation (interventions).
    ``start_step``: with ``init``, the step those weights were taken at: training runs steps
    ``start_step .. cfg.train.steps``, so warm-up and minibatch order continue where the source
    run was. ``init_opt_state``: AdamW state to start from (``runs.read_resume_state(d).optimizer``,
    or the ``opt.*`` tensors of a resume file); entries of frozen names are ignored.

    ``probe``: ``probe(step, params, exp_avg) -> dict[str, float]``, called after the optimiser
    step at every step divisible by ``probe_every`` (``step`` counts completed steps, so the
    first call is at ``probe_every``), with the live parameter dict (trainable tensors have
    ``requires_grad``; do not modify them in place, detach what you keep) and AdamW's first
    moment per trainable parameter name (``None`` before AdamW has state). Each returned dict
    becomes a row ``{"step": step, **values}`` of ``dynamics.csv`` in the run directory,
    written at every checkpoint and kept across resume (rows after the resume step dropped).
    """
    out = Path(out)
    if start_step and init is None:
        raise ValueError("start_step needs init: the weights at that step")
    if not 0 <= start_step < cfg.train.steps:
        raise ValueError(f"start_step={start_step} must be in [0, steps={cfg.train.steps})")
    task = Task(cfg.task)
    mcfg = cfg.model.resolve(task)
    device = resolve_device(cfg.train.device)
    writer = RunWriter.create(out, cfg, device)
    params = {k: v.clone() for k, v in (init if init is not None else init_params(mcfg)).items()}
    state = ResumeState(start_step, params, _as_optimizer_state(init_opt_state))
    return _train(cfg, task, writer, state, fresh=True, progress=progress, probe=probe, probe_every=probe_every)


def resume_config(stored: RunConfig, asked: RunConfig) -> RunConfig:
    """The config a resumed run continues with: ``stored``, with a larger ``train.steps`` (the
    run is extended) or another ``train.device`` from ``asked``. Any other difference fails
    with the field's name: a resumed run must stay the run it was."""
    if asked.train.steps < stored.train.steps:
        raise ValueError(f"cannot resume with train.steps={asked.train.steps}: the run was set to "
                         f"{stored.train.steps} steps; give more to extend it")
    for part in ("task", "model", "train"):
        a, s = getattr(asked, part), getattr(stored, part)
        for f in fields(s):
            if f.name in ("steps", "device") and part == "train":
                continue
            if getattr(a, f.name) != getattr(s, f.name):
                raise ValueError(f"cannot change {part}.{f.name} when resuming (the run has "
                                 f"{getattr(s, f.name)!r}, asked {getattr(a, f.name)!r}); only "
                                 f"train.steps may grow. Start a new run for other settings")
    return replace(stored, train=replace(stored.train, steps=asked.train.steps, device=asked.train.device))


def resume_run(out: str | Path, cfg: RunConfig | None = None, *, progress: bool = True,
               probe: Probe | None = None, probe_every: int = 100) -> Run:
    """Continue the run in ``out`` from its resume state (its newest checkpoint). ``cfg``: the
    settings asked for (``resume_config``: only more steps, or another device, are accepted);
    with more steps a finished run is extended and its config.json updated. ``probe``: as in
    ``train_run`` (pass the same one to keep ``dynamics.csv`` consistent)."""
    out = Path(out)
    run = Run(out)
    if cfg is not None:
        new = resume_config(run.config, cfg)
        if new != run.config:
            write_json(out / "config.json", run.meta | new.to_dict())
        run = Run(out)
    state = read_resume_state(out)
    writer = RunWriter.reopen(out, state.step)
    return _train(run.config, run.task, writer, state, fresh=False, progress=progress, probe=probe,
                  probe_every=probe_every)


def _train(cfg: RunConfig, task: Task, writer: RunWriter, state: ResumeState, fresh: bool, progress: bool,
           probe: Probe | None, probe_every: int) -> Run:
    """Steps ``state.step .. cfg.train.steps`` from ``state``; ``fresh``: record and checkpoint
    the starting point first."""
    out, tcfg = writer.path, cfg.train
    mcfg = cfg.model.resolve(task)
    device = resolve_device(tcfg.device)
    if probe is not None and probe_every < 1:
        raise ValueError(f"probe_every must be >= 1, got {probe_every}")
    params = {k: v.to(device) for k, v in state.params.items()}
    names = trainable_names(params, tcfg.frozen)
    if not names:
        raise ValueError(f"TrainConfig.frozen={tcfg.frozen} freezes every parameter")
    for k, v in params.items():
        v.requires_grad_(k in names)
    opt = make_optimizer(params, names, tcfg)
    if state.optimizer:
        _load_opt_state(opt, names, state.optimizer, device)
    gfilter = GradientFilter.from_config(tcfg)
    if gfilter is not None and state.grokfast:
        gfilter.load(state.grokfast, device)

    inputs, labels = task.inputs.to(device), task.labels.to(device)
    train_x, train_y = inputs[task.train_idx.to(device)], labels[task.train_idx.to(device)]
    test_x, test_y = inputs[task.test_idx.to(device)], labels[task.test_idx.to(device)]

    def record(step: int) -> dict:
        tr_loss, tr_acc = evaluate(params, mcfg, train_x, train_y)
        te_loss, te_acc = evaluate(params, mcfg, test_x, test_y)
        wsq = sum(float((v.detach().double() ** 2).sum()) for v in params.values())
        return writer.record(dict(zip(METRIC_COLUMNS, (step, tr_loss, te_loss, tr_acc, te_acc, wsq))))

    def checkpoint(step: int):
        writer.checkpoint(ResumeState(step, params, _opt_state(opt, names),
                                      gfilter.state_tensors() if gfilter is not None else {}))

    start = state.step
    if fresh:
        record(start)
        checkpoint(start)
    last_good = start
    stopped = should_stop(writer.rows, tcfg.stop_after_grok)
    bar = tqdm(total=tcfg.steps, initial=start, disable=not progress, desc=out.name, unit="step",
               dynamic_ncols=True, mininterval=0.5)
    t0 = time.time()
    for step in range(start, tcfg.steps if not stopped else start):
        idx = batch_indices(step, len(train_y), tcfg.batch_size, tcfg.seed)
        x, y = (train_x, train_y) if idx is None else (train_x[idx.to(device)], train_y[idx.to(device)])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tcfg.lr, tcfg.warmup_steps)
        loss, _ = loss_fn(params, mcfg, x, y)
        if not torch.isfinite(loss):
            bar.close()
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {step}: training stopped. The last good "
                f"checkpoint is step {last_good} in {out} (resume.safetensors and "
                f"{checkpoint_path(out, last_good).name}); try a lower lr or more warm-up.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if gfilter is not None:
            filtered = gfilter({k: params[k].grad for k in names})
            for k in names:
                params[k].grad = filtered[k]
        opt.step()
        done = step + 1
        if probe is not None and done % probe_every == 0:
            moments = _opt_state(opt, names)
            exp_avg = {k: st["exp_avg"] for k, st in moments.items()} or None
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


def train(cfg: RunConfig | None, out: str | Path, resume: bool = False, progress: bool = True,
          init: Params | None = None, figure: bool = True, start_step: int = 0,
          init_opt_state=None) -> Run:
    """The earlier entry point, kept for existing code: ``train_run`` (or ``resume_run`` with
    ``resume``), then the training-curve figure unless ``figure=False``."""
    if resume:
        run = resume_run(out, progress=progress)
    else:
        run = train_run(cfg, out, progress=progress, init=init, start_step=start_step,
                        init_opt_state=init_opt_state)
    if figure:
        from .runs import draw_figures

        draw_figures(run, analysis=False)
    return run
