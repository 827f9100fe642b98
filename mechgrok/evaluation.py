"""Loss and accuracy of a model on the splits of its task: the one place they are computed.

Every loss is ``model.per_example_loss`` (float64 cross-entropy, as in Nanda et al.). The
trainers, ``mechgrok import``, interventions and measures all evaluate through here, so a
number in metrics.csv, in an ablation table and in a progress table means the same thing.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .model import Hook, ModelConfig, Params, forward, per_example_loss

SPLITS = ("train", "test", "all")
EVAL_CHUNK = 65536  # examples per forward: bounds the activations' memory on large tasks


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def split_index(task, split: str) -> Int[Tensor, " n"] | None:
    """Rows of the task's example table in ``split`` (None: every example)."""
    return {"train": task.train_idx, "test": task.test_idx, "all": None}[check_split(split)]


def split_metrics(logits: Float[Tensor, "n_examples d_vocab_out"], task, splits: Sequence[str] = ("train", "test")
                  ) -> dict[str, float]:
    """``{split}_loss`` and ``{split}_acc`` for each of ``splits`` from last-position logits
    over every example of ``task`` in task order."""
    labels = task.labels.to(logits.device)
    out = {}
    for split in splits:
        idx = split_index(task, split)
        x, y = (logits, labels) if idx is None else (logits[idx.to(logits.device)], labels[idx.to(logits.device)])
        out[f"{split}_loss"] = float(per_example_loss(x, y).mean())
        out[f"{split}_acc"] = float((x.argmax(-1) == y).double().mean())
    return out


@torch.no_grad()
def loss_and_accuracy_on(params: Params, cfg: ModelConfig, inputs: Int[Tensor, "n pos"], labels: Int[Tensor, " n"]
                         ) -> tuple[float, float]:
    """Mean loss and accuracy on ``inputs`` in chunks of ``EVAL_CHUNK`` (the trainers' evaluation)."""
    total_loss, correct = 0.0, 0.0
    for s in range(0, len(labels), EVAL_CHUNK):
        logits = forward(params, cfg, inputs[s:s + EVAL_CHUNK])
        y = labels[s:s + EVAL_CHUNK]
        total_loss += float(per_example_loss(logits, y).sum())
        correct += float((logits.argmax(-1) == y).double().sum())
    return total_loss / len(labels), correct / len(labels)


@torch.no_grad()
def last_logits(params: Params, cfg: ModelConfig, task, fwd_hooks: Sequence[Hook] = ()
                ) -> Float[Tensor, "n_examples d_vocab_out"]:
    """Last-position logits on every example of ``task``, through ``fwd_hooks`` (TL names)."""
    inputs = task.inputs.to(next(iter(params.values())).device)
    return torch.cat([forward(params, cfg, inputs[s:s + EVAL_CHUNK], fwd_hooks)
                      for s in range(0, len(inputs), EVAL_CHUNK)])


def evaluate(params: Params, cfg: ModelConfig, task, splits: Sequence[str] = ("train", "test", "all"),
             fwd_hooks: Sequence[Hook] = ()) -> dict[str, float]:
    """``{split}_loss`` and ``{split}_acc`` of the model on ``task``, with ``fwd_hooks`` applied."""
    return split_metrics(last_logits(params, cfg, task, fwd_hooks), task, splits)


# --- recorded metrics against a re-evaluation ------------------------------------------------

# When a loss computed again from the weights disagrees with the one recorded for them: the same
# weights on the same split agree to ~1e-6 (float32 forwards on other hardware, TF32 included,
# to ~1e-3); another split, task or epoch is off by tens of percent or orders of magnitude. The
# absolute part covers the ~1e-7 losses of a memorised train set, which float32 logits cannot
# resolve relatively. ``mechgrok import`` checks a bundle's own losses with it, ``analyze`` a
# run's metrics.csv.
LOSS_RTOL = 0.02
LOSS_ATOL = 1e-3


def loss_disagrees(ours: float, recorded: float) -> bool:
    """Whether a re-evaluated loss is beyond the tolerance of the recorded one."""
    return abs(ours - recorded) > LOSS_ATOL + LOSS_RTOL * abs(recorded)


def check_recorded_metrics(run) -> None:
    """Refuse a run whose config.json no longer describes the split its metrics.csv was
    measured on (a hand-edited ``frac``, ``seed`` or ``train_idx``, or another ``op``): the last
    checkpoint with a metrics row is evaluated again on the split config.json defines, and a
    loss beyond ``loss_disagrees`` or an accuracy off by more than one example raises one
    ValueError naming both numbers. One forward per split: cheap next to any analysis."""
    m = run.metrics
    recorded = set(m["step"].astype(int)) if len(m) else set()
    steps = [s for s in run.steps if s in recorded]
    if not steps:
        return  # nothing recorded to contradict
    step = steps[-1]
    row = m[m["step"] == step].iloc[-1]
    params, task = run.params(step), run.task
    bad = []
    for split, x, y in (("train", task.train_inputs, task.train_labels), ("test", task.test_inputs, task.test_labels)):
        loss, acc = loss_and_accuracy_on(params, run.model_cfg, x, y)
        if loss_disagrees(loss, float(row[f"{split}_loss"])):
            bad.append(f"{split} loss {loss:.4g} here, {float(row[f'{split}_loss']):.4g} in metrics.csv")
        elif abs(acc - float(row[f"{split}_acc"])) > 1.5 / len(y):
            bad.append(f"{split} accuracy {acc:.4g} here, {float(row[f'{split}_acc']):.4g} in metrics.csv")
    if bad:
        raise ValueError(f"{run.path / 'config.json'} contradicts the run's own metrics.csv at step {step} "
                         f"({'; '.join(bad)}): its task settings (frac, seed, train_idx, op, p) are not the "
                         f"ones the run was trained with; restore them")
