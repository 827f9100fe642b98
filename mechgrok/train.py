"""The trainer: AdamW on the functional forward, with checkpoint series and exact resume.

The step is a function of a dict of parameters (``loss_fn``), so training many seeds or
settings at once is a matter of stacking the dicts and mapping ``loss_fn`` with
``torch.func.vmap`` -- nothing here assumes one model.

Determinism: the initial weights come from ``model.seed``, the split from ``task.seed``, the
minibatch order from ``train.seed`` and the step number alone (no RNG state carried between
steps), so a resumed run replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import fnmatch
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .model import ModelConfig, Params, forward, init_params, loss_and_accuracy
from .runs import (METRIC_COLUMNS, Run, RunConfig, checkpoint_path, read_tensors, save_tensors,
                   versions, write_json, write_metrics)
from .tasks import Task

EVAL_CHUNK = 65536


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


def _opt_state_tensors(opt: torch.optim.AdamW, names: list[str]) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in zip(names, opt.param_groups[0]["params"]):
        st = opt.state.get(p, {})
        for key in ("step", "exp_avg", "exp_avg_sq"):
            if key in st:
                out[f"opt.{name}.{key}"] = st[key]
    return out


def _load_opt_state(opt: torch.optim.AdamW, names: list[str], tensors: dict[str, torch.Tensor]):
    state = {}
    for i, name in enumerate(names):
        if f"opt.{name}.exp_avg" in tensors:
            state[i] = {k: tensors[f"opt.{name}.{k}"].clone() for k in ("step", "exp_avg", "exp_avg_sq")}
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


def train(cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = True,
          init: Params | None = None, figure: bool = True, start_step: int = 0,
          init_opt_state: dict[str, torch.Tensor] | None = None) -> Run:
    """Train ``cfg`` into the run directory ``out`` and return the loaded ``Run``.

    ``resume``: continue from ``out/resume.safetensors`` (config read from ``out``).
    ``init``: start from these weights instead of a fresh initialisation (interventions).
    ``start_step``: with ``init``, the step those weights were taken at: training runs steps
    ``start_step .. cfg.train.steps``, so warm-up and minibatch order continue where the source
    run was (interventions). ``init_opt_state``: AdamW state (``opt.<name>.*`` tensors, as in
    resume.safetensors) to start from instead of a fresh one; entries of frozen names are ignored.
    """
    out = Path(out)
    if resume:
        run = Run(out)
        cfg = run.config
    elif (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a run; use --resume to continue it, "
                              f"or choose another --out")
    task = Task(cfg.task)
    mcfg = cfg.model.resolve(task)
    tcfg = cfg.train
    device = resolve_device(tcfg.device)

    if resume:
        state = read_tensors(out / "resume.safetensors")
        start = int(state["meta.step"].item())
        params = {k[len("param."):]: v for k, v in state.items() if k.startswith("param.")}
        import pandas as pd
        rows = pd.read_csv(out / "metrics.csv").to_dict("records") if (out / "metrics.csv").exists() else []
        rows = [r for r in rows if r["step"] <= start]
    else:
        if start_step and init is None:
            raise ValueError("start_step needs init: the weights at that step")
        if not 0 <= start_step < tcfg.steps:
            raise ValueError(f"start_step={start_step} must be in [0, steps={tcfg.steps})")
        start, rows = start_step, []
        params = {k: v.clone() for k, v in (init if init is not None else init_params(mcfg)).items()}
        meta = cfg.to_dict() | {"versions": versions(), "device": str(device)}
        write_json(out / "config.json", meta)

    params = {k: v.to(device) for k, v in params.items()}
    names = trainable_names(params, tcfg.frozen)
    if not names:
        raise ValueError(f"TrainConfig.frozen={tcfg.frozen} freezes every parameter")
    for k, v in params.items():
        v.requires_grad_(k in names)
    opt = make_optimizer(params, names, tcfg)
    if resume:
        _load_opt_state(opt, names, {k: v.to(device) for k, v in state.items() if k.startswith("opt.")})
    elif init_opt_state is not None:
        _load_opt_state(opt, names, {k: v.to(device) for k, v in init_opt_state.items() if k.startswith("opt.")})

    inputs, labels = task.inputs.to(device), task.labels.to(device)
    train_x, train_y = inputs[task.train_idx.to(device)], labels[task.train_idx.to(device)]
    test_x, test_y = inputs[task.test_idx.to(device)], labels[task.test_idx.to(device)]

    def record(step: int):
        tr_loss, tr_acc = evaluate(params, mcfg, train_x, train_y)
        te_loss, te_acc = evaluate(params, mcfg, test_x, test_y)
        wsq = sum(float((v.detach().double() ** 2).sum()) for v in params.values())
        rows.append(dict(zip(METRIC_COLUMNS, (step, tr_loss, te_loss, tr_acc, te_acc, wsq))))
        return rows[-1]

    def checkpoint(step: int):
        save_tensors(checkpoint_path(out, step), params, metadata={"step": str(step)})
        resume_state = {f"param.{k}": v for k, v in params.items()} | _opt_state_tensors(opt, names)
        resume_state["meta.step"] = torch.tensor(step)
        save_tensors(out / "resume.safetensors", resume_state)
        write_metrics(out / "metrics.csv", rows)

    if start == 0 or not resume:
        record(start)
        checkpoint(start)
    last_good = start
    bar = tqdm(total=tcfg.steps, initial=start, disable=not progress, desc=out.name, unit="step",
               dynamic_ncols=True, mininterval=0.5)
    t0 = time.time()
    for step in range(start, tcfg.steps):
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
        opt.step()
        done = step + 1
        if done % tcfg.eval_every == 0 or done == tcfg.steps:
            r = record(done)
            bar.set_postfix(train_acc=f"{r['train_acc']:.3f}", test_acc=f"{r['test_acc']:.3f}",
                            test_loss=f"{r['test_loss']:.2e}", refresh=False)
        if done % tcfg.checkpoint_every == 0 or done == tcfg.steps:
            checkpoint(done)
            last_good = done
        bar.update(1)
    bar.close()
    run = Run(out)
    if figure and rows:
        from .plots import save_figure, training_curve
        s = run.summary()
        marks = {"memorised": s["memorisation_step"], "grokked": s["grokking_step"]}
        save_figure(training_curve(run.metrics, title=f"{out.name}: {task.describe()}", marks=marks),
                    out / "training_curve")
    if progress and start < tcfg.steps:
        print(f"trained {tcfg.steps - start} steps in {time.time() - t0:.1f} s on {device}")
    return run
