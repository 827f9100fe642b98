"""Memory budget: what a task, a model and its training will need, checked before anything is
allocated or written.

``memory_estimate`` is the one estimate (a rough upper bound, in bytes):

* the example table: ``n_examples x (n_ctx + 1)`` int64 (inputs and labels), counted 2.5
  times: building it holds intermediates of about its size (the pair columns, the split
  permutation), and the trainer keeps its train and test copies beside it;
* the model: parameters, gradients and AdamW's two moments, ``4 x n_params`` float32;
* activations: one training batch (the full train split without ``batch_size``) kept for the
  backward pass, or one evaluation chunk (``evaluation.EVAL_CHUNK`` examples), whichever is larger.

``check_memory`` refuses, in one line with the estimate and the limit, anything over
``SAFETY`` times the memory available now (``/proc/meminfo`` MemAvailable, else
``os.sysconf``; on a CUDA device the model and activations are held against the GPU's free
memory). ``allow_large=True``, ``with allowing_large():`` or ``MECHGROK_ALLOW_LARGE=1`` lets
it through (the CLI's ``--allow-large``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

SAFETY = 0.8  # the share of the available memory a run may plan to use
ENV = "MECHGROK_ALLOW_LARGE"
_allow_large = False  # set by allowing_large(), for the length of a command


class MemoryBudgetError(ValueError):
    """What a task, model or run needs does not fit the memory there is."""


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def available_memory() -> int | None:
    """Bytes of host memory available now (None when the system does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _gpu_free(device) -> int | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    except Exception:  # no driver, a bad index: the trainer reports those itself
        return None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes each part needs (see the module docstring for what is counted)."""

    table: int
    model: int = 0
    activations: int = 0

    @property
    def total(self) -> int:
        return self.table + self.model + self.activations

    def describe(self) -> str:
        parts = [f"examples table {_gb(self.table)}"]
        if self.model:
            parts.append(f"model + gradients + optimizer state {_gb(self.model)}")
        if self.activations:
            parts.append(f"activations {_gb(self.activations)}")
        return f"about {_gb(self.total)} ({', '.join(parts)})"


def table_bytes(task_cfg) -> int:
    """The example table's share of ``memory_estimate``."""
    n = task_cfg.n_examples
    total = 5 * n * (task_cfg.n_ctx + 1) * 8 // 2  # measured: 2.4x for a+b mod 3001
    if task_cfg.op == "parity" and task_cfg.n_samples is not None:
        # sample_codes draws 2n strings of n_bits int64 bits (and their weighted copy) at once
        total += 2 * 2 * n * task_cfg.n_bits * 8
    return total


def _activation_floats(mcfg) -> int:
    """Floats one example's forward keeps: every position of every block but the last, whose
    keys and values alone span the sequence (``model.forward`` computes the rest of it at the
    last position only)."""
    n, d, h, k, m = mcfg.n_ctx, mcfg.d_model, mcfg.n_heads, mcfg.d_head, mcfg.d_mlp
    position = 4 * h * k + 2 * h * n + 3 * d + 2 * m  # q, k, v, z; scores, pattern; residuals; MLP
    # the first block reads its keys and values from a per-token table, so no per-example
    # embedding is kept unless a block precedes the last
    embed = n * 2 * d if mcfg.n_layers > 1 else 0
    return embed + (mcfg.n_layers - 1) * n * position + n * 2 * h * k + position


def memory_estimate(task_cfg, model_cfg=None, train_cfg=None) -> MemoryEstimate:
    """What ``task_cfg`` (and a model ``model_cfg`` trained with ``train_cfg``) will need, in
    bytes; nothing is allocated."""
    table = table_bytes(task_cfg)
    if model_cfg is None:
        return MemoryEstimate(table)
    from .evaluation import EVAL_CHUNK
    from .model import n_params

    mcfg = model_cfg.resolve(task_cfg)
    model = 4 * n_params(mcfg) * 4
    # logits in float32, their float64 copy and its log-softmax
    per_example = _activation_floats(mcfg) * 4 + mcfg.d_vocab_out * (4 + 8 + 8)
    n = task_cfg.n_examples
    n_train = max(1, int(task_cfg.frac * n))
    batch = n_train if train_cfg is None or train_cfg.batch_size is None else min(train_cfg.batch_size, n_train)
    # a training batch is kept for the backward pass, whose gradients come and go beside it
    # (measured: 1.9x the forward's for parity of 18 bits, 1.1x for a+b mod 499)
    activations = max(2 * batch * per_example, min(EVAL_CHUNK, n) * per_example)
    return MemoryEstimate(table, model, activations)


@contextlib.contextmanager
def allowing_large(allow: bool = True):
    """Within this block ``check_memory`` lets anything through (when ``allow``)."""
    global _allow_large
    before = _allow_large
    _allow_large = before or bool(allow)
    try:
        yield
    finally:
        _allow_large = before


def _allowed(allow_large: bool | None) -> bool:
    if allow_large is not None:
        return allow_large
    return _allow_large or os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


def _refuse(what: str, need: int, detail: str, free: int | None, where: str):
    if free is None:
        return
    limit = int(SAFETY * free)
    if need <= limit:
        return
    raise MemoryBudgetError(
        f"{what} needs {detail}, more than the limit of {_gb(limit)} ({SAFETY:.0%} of the {_gb(free)} {where} "
        f"available now); choose a smaller task or model, or pass --allow-large ({ENV}=1) to try anyway")


def _describe_task(task_cfg) -> str:
    if task_cfg.op == "parity":
        return f"parity with n_bits={task_cfg.n_bits} ({task_cfg.n_examples:,} examples)"
    return f"op={task_cfg.op} p={task_cfg.p} ({task_cfg.n_examples:,} examples)"


def check_memory(task_cfg, model_cfg=None, train_cfg=None, *, allow_large: bool | None = None,
                 device=None) -> MemoryEstimate:
    """``memory_estimate``, or a one-line ``MemoryBudgetError`` (a ValueError) when it exceeds
    ``SAFETY`` x the available memory. ``device``: where training runs (default
    ``train_cfg.device``); on CUDA the model and activations are held against the GPU and the
    table against host memory. ``allow_large`` (default: ``allowing_large`` or
    ``MECHGROK_ALLOW_LARGE``) skips the refusal."""
    est = memory_estimate(task_cfg, model_cfg, train_cfg)
    if _allowed(allow_large):
        return est
    what = _describe_task(task_cfg)
    if model_cfg is not None:
        what += (f" with a {model_cfg.n_layers}-layer d_model={model_cfg.d_model} d_mlp={model_cfg.d_mlp} model "
                 f"({n_params_of(task_cfg, model_cfg):,} parameters)")
    device = str(device if device is not None else getattr(train_cfg, "device", "cpu"))
    gpu = _gpu_free("cuda" if device == "auto" else device) if device.startswith(("cuda", "auto")) else None
    if gpu is None or model_cfg is None:
        _refuse(what, est.total, est.describe(), available_memory(), "of memory")
        return est
    _refuse(what, est.table, MemoryEstimate(est.table).describe(), available_memory(), "of memory")
    on_gpu = est.table * 2 // 5 + est.model + est.activations  # one copy of the table goes to the GPU
    _refuse(what, on_gpu, f"about {_gb(on_gpu)} of GPU memory", gpu, "of GPU memory")
    return est


def n_params_of(task_cfg, model_cfg) -> int:
    from .model import n_params

    return n_params(model_cfg.resolve(task_cfg))


def check_run(cfg, *, allow_large: bool | None = None) -> MemoryEstimate:
    """``check_memory`` of a ``RunConfig``: the task, the model and its training."""
    return check_memory(cfg.task, cfg.model, cfg.train, allow_large=allow_large)


__all__ = ["MemoryBudgetError", "MemoryEstimate", "SAFETY", "allowing_large", "available_memory", "check_memory",
           "check_run", "memory_estimate", "table_bytes"]
