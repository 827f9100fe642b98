"""What a training step does, whichever trainer takes it: the learning rate at the step, the
examples it sees, and which parameters train. The solo trainer and the ensemble trainer both
call these, so a member and its solo run follow the same schedule.

Everything is a function of the step (and seeds) alone -- no RNG or scheduler state carried
between steps -- so a resumed run replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import Tensor


def warmup_factor(step: int, warmup_steps):
    """Linear warm-up from 1/warmup to 1 over ``warmup_steps`` steps (a number, or a tensor of
    one per ensemble member). Nanda's LambdaLR starts at 0 on step 0; we start one step on."""
    if isinstance(warmup_steps, Tensor):
        return torch.where(warmup_steps > 0, ((step + 1) / warmup_steps.clamp(min=1)).clamp(max=1.0), 1.0)
    return min((step + 1) / warmup_steps, 1.0) if warmup_steps else 1.0


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    return lr * warmup_factor(step, warmup_steps)


def epoch_permutation(seed: int, epoch: int, n_train: int) -> Tensor:
    """The order of the training examples in ``epoch``, seeded by (seed, epoch), like a
    shuffling DataLoader but reproducible from the step."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_train, generator=g)


def batch_position(step: int, n_train: int, batch_size: int) -> tuple[int, slice]:
    """(epoch, slice of that epoch's permutation) that step ``step`` trains on."""
    per_epoch = math.ceil(n_train / batch_size)
    epoch, i = divmod(step, per_epoch)
    return epoch, slice(i * batch_size, (i + 1) * batch_size)


def batch_indices(step: int, n_train: int, batch_size: int | None, seed: int) -> Tensor | None:
    """Which training examples step ``step`` sees (None: all of them)."""
    if batch_size is None or batch_size >= n_train:
        return None
    epoch, rows = batch_position(step, n_train, batch_size)
    return epoch_permutation(seed, epoch, n_train)[rows]


def trainable_names(params, frozen: tuple[str, ...]) -> list[str]:
    """Parameter names not matched by any fnmatch pattern of ``frozen``; fails when none is left."""
    names = [k for k in params if not any(fnmatch.fnmatchcase(k, pat) for pat in frozen)]
    if not names:
        raise ValueError(f"TrainConfig.frozen={tuple(frozen)} freezes every parameter")
    return names
