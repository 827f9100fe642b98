"""Run directories: configs, checkpoint series, metrics, and loading them back.

A run directory holds::

    config.json                  task, model and training settings, versions, device
    checkpoints/step_0001000.safetensors   HookedTransformer-format weights at that step
    resume.safetensors           weights + AdamW state of the newest checkpoint (for --resume)
    metrics.csv                  step, train_loss, test_loss, train_acc, test_acc, weight_sq
    training_curve.html/.png     the figure every run writes

Everything is safetensors or text: nothing in a run is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model import (ModelConfig, Params, check_params, infer_config, init_params, param_shapes,
                    to_tl_model)
from .tasks import Task, TaskConfig

CHECKPOINT_DIR = "checkpoints"
METRIC_COLUMNS = ["step", "train_loss", "test_loss", "train_acc", "test_acc", "weight_sq"]
_STEP_RE = re.compile(r"step_(\d+)\.safetensors$")


# --- configs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """How to optimise. Validated at construction."""

    steps: int = 3000
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 10
    batch_size: int | None = None  # None: full batch
    eval_every: int = 10
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    # fnmatch patterns over parameter names kept fixed (e.g. "blocks.*.attn.b_*"); frozen
    # parameters stay out of the optimiser, so weight decay does not touch them either.
    frozen: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "frozen", tuple(self.frozen))
        for name in ("steps", "eval_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas}")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size must be >= 1 or None (full batch), got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"TrainConfig.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None

    def to_dict(self) -> dict:
        return {"task": asdict(self.task), "model": asdict(self.model), "train": asdict(self.train),
                "preset": self.preset}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        def build(klass, values):
            known = {f.name for f in fields(klass)}
            unknown = set(values) - known
            if unknown:
                raise ValueError(f"{klass.__name__}: unknown field(s) {sorted(unknown)}; "
                                 f"allowed: {sorted(known)}")
            return klass(**values)

        return cls(task=build(TaskConfig, d.get("task", {})), model=build(ModelConfig, d.get("model", {})),
                   train=build(TrainConfig, d.get("train", {})), preset=d.get("preset"))


def versions() -> dict:
    import importlib.metadata as md

    def v(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {"mechgrok": v("mechgrok"), "torch": torch.__version__, "transformer_lens": v("transformer_lens")}


# --- atomic writes ------------------------------------------------------------------------


def _atomic(path: Path, write):
    """Write through a temp file in the same directory, then rename: a reader (or a resume
    after SIGKILL) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(cpu, tmp, metadata=metadata))


def write_json(path: Path, obj: dict):
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    _atomic(Path(path), w)


def write_metrics(path: Path, rows: list[dict]):
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    _atomic(Path(path), lambda tmp: df.to_csv(tmp, index=False, float_format="%.9g"))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read checkpoint ({e}); the file may be truncated or "
                         f"not a safetensors file") from e


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:07d}.safetensors"


# --- loading runs -------------------------------------------------------------------------


class Run:
    """A run directory, loaded lazily: ``run.steps``, ``run.metrics``, ``run.params(step)``,
    ``run.model(step)`` (a TransformerLens model), ``run.task``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        cfg_file = self.path / "config.json"
        if not cfg_file.exists():
            raise FileNotFoundError(f"{self.path} is not a mechgrok run: {cfg_file.name} is missing")
        try:
            self.meta = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_file}: not valid JSON ({e})") from e
        self.config = RunConfig.from_dict(self.meta)
        self.task = Task(self.config.task)
        self.model_cfg = self.config.model.resolve(self.task)

    def __repr__(self):
        return f"Run({str(self.path)!r}, {self.task!r}, {len(self.steps)} checkpoints)"

    @property
    def steps(self) -> list[int]:
        files = (self.path / CHECKPOINT_DIR).glob("step_*.safetensors")
        return sorted(int(m.group(1)) for f in files if (m := _STEP_RE.search(f.name)))

    @property
    def metrics(self) -> pd.DataFrame:
        f = self.path / "metrics.csv"
        if not f.exists():
            return pd.DataFrame(columns=METRIC_COLUMNS)
        return pd.read_csv(f)

    def resolve_step(self, step: int | None) -> int:
        steps = self.steps
        if not steps:
            raise FileNotFoundError(f"{self.path}: no checkpoints in {CHECKPOINT_DIR}/")
        if step is None or step == -1:
            return steps[-1]
        if step not in steps:
            near = sorted(steps, key=lambda s: abs(s - step))[:3]
            raise ValueError(f"{self.path}: no checkpoint at step {step}; nearest: {sorted(near)} "
                             f"(run has {len(steps)} checkpoints, {steps[0]}..{steps[-1]})")
        return step

    def params(self, step: int | None = None, device=None) -> Params:
        """The HookedTransformer-format weights at ``step`` (default: the last)."""
        f = checkpoint_path(self.path, self.resolve_step(step))
        params = read_tensors(f)
        check_params(params, self.model_cfg, source=str(f))
        return params if device is None else {k: v.to(device) for k, v in params.items()}

    def model(self, step: int | None = None, device=None):
        """The TransformerLens 4 model at ``step`` (default: the last)."""
        return to_tl_model(self.params(step), self.model_cfg, device=device)

    def summary(self) -> dict:
        """Checkpoint count, final metrics, memorisation and grokking steps."""
        m, steps = self.metrics, self.steps
        last = m.iloc[-1] if len(m) else {}
        return {
            "n_checkpoints": len(steps), "first_step": steps[0] if steps else None,
            "last_step": steps[-1] if steps else None,
            **{k: float(last[k]) if len(m) else float("nan")
               for k in ("train_loss", "test_loss", "train_acc", "test_acc")},
            "memorisation_step": first_step_above(m, "train_acc", 0.99),
            "grokking_step": first_step_above(m, "test_acc", 0.9),
        }

    def stacked_params(self, steps: list[int] | None = None) -> Params:
        """Weights of many checkpoints stacked on a leading axis (for vmap'd analyses)."""
        steps = self.steps if steps is None else steps
        all_params = [self.params(s) for s in steps]
        return {k: torch.stack([p[k] for p in all_params]) for k in all_params[0]}


def load_run(path: str | os.PathLike) -> Run:
    return Run(path)


def first_step_above(metrics: pd.DataFrame, column: str, threshold: float) -> int | None:
    """First evaluated step where ``column`` exceeds ``threshold`` (science.md: memorisation is
    train_acc > 0.99, grokking is test_acc > 0.9), or None if it never does."""
    hit = metrics.loc[metrics[column] > threshold, "step"]
    return int(hit.iloc[0]) if len(hit) else None


# --- legacy HookedTransformer checkpoints -------------------------------------------------


def load_hooked_transformer(state_dict_or_path, config: ModelConfig | dict | None = None,
                            act_fn: str = "relu", device=None):
    """Load a legacy HookedTransformer state dict into the same TL 4 model mechgrok builds.

    ``state_dict_or_path``: a dict, a ``.safetensors`` file, or a ``.pth``/``.pt`` file (read
    with ``weights_only=True``: tensors only, never arbitrary pickled objects).
    ``config``: a resolved ``ModelConfig``, a dict of its fields (HookedTransformerConfig's
    ``normalization_type`` is accepted too), or None to infer the shapes from the tensors
    (``act_fn`` cannot be inferred: pass it). Missing biases are filled with zeros, as
    HookedTransformer did for checkpoints trained without them.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        path = Path(state_dict_or_path)
        if path.suffix == ".safetensors":
            sd = read_tensors(path)
        else:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ValueError(f"{path}: cannot read as a tensors-only torch file ({e})") from e
        source = str(path)
    else:
        sd, source = dict(state_dict_or_path), "state dict"
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]  # Nanda-style {"model": ..., "optimizer": ...} bundles
    sd = {k: v for k, v in sd.items() if not k.endswith((".mask", ".IGNORE"))}
    if config is None:
        cfg = infer_config(sd, act_fn)
    elif isinstance(config, dict):
        c = dict(config)
        if "normalization_type" in c:
            c["normalization"] = c.pop("normalization_type") or "none"
        known = {f.name for f in fields(ModelConfig)}
        cfg = ModelConfig(**{k: v for k, v in c.items() if k in known})
    else:
        cfg = config
    shapes = param_shapes(cfg)
    for k, shape in shapes.items():
        if k not in sd and k.rsplit(".", 1)[-1].startswith("b_"):
            sd[k] = torch.zeros(shape)
    check_params(sd, cfg, source=source)
    return to_tl_model({k: v.float() for k, v in sd.items()}, cfg, device=device)


__all__ = ["TrainConfig", "RunConfig", "Run", "load_run", "load_hooked_transformer", "init_params",
           "save_tensors", "read_tensors", "first_step_above", "checkpoint_path", "write_json", "write_metrics", "versions",
           "METRIC_COLUMNS"]
