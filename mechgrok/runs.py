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
import uuid
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


GROKFAST_MODES = ("none", "ema", "ma")


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
    # Grokfast gradient filter between backward and step (science.md, "Optimiser dynamics"):
    # "ema": e <- alpha e + (1 - alpha) g, g <- g + lambda e; "ma": g <- g + lambda mean(last
    # `window` gradients) once the window is full. lambda None: 2 for ema, 5 for ma.
    grokfast: str = "none"
    grokfast_alpha: float = 0.98
    grokfast_lambda: float | None = None
    grokfast_window: int = 100
    # Stop this many evaluations after the first one with test accuracy above
    # progress.GROKKED_TEST_ACC (None: train to `steps`); for sweeps that need transition metrics.
    stop_after_grok: int | None = None
    # Also write AdamW's moments at every checkpoint (checkpoints/moments_{step:07d}.safetensors),
    # for measures that need the optimizer state after training (dynamics.momentum_alignment) and
    # for interventions that carry it from a checkpoint other than the last.
    keep_moments: bool = False

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
        if self.grokfast not in GROKFAST_MODES:
            raise ValueError(f"TrainConfig.grokfast must be one of {GROKFAST_MODES}, got {self.grokfast!r}")
        if not 0 <= self.grokfast_alpha < 1:
            raise ValueError(f"TrainConfig.grokfast_alpha must be in [0, 1), got {self.grokfast_alpha}")
        if self.grokfast_lambda is None and self.grokfast != "none":
            object.__setattr__(self, "grokfast_lambda", {"ema": 2.0, "ma": 5.0}[self.grokfast])
        if self.grokfast_lambda is not None and self.grokfast_lambda < 0:
            raise ValueError(f"TrainConfig.grokfast_lambda must be >= 0, got {self.grokfast_lambda}")
        if int(self.grokfast_window) < 1:
            raise ValueError(f"TrainConfig.grokfast_window must be >= 1, got {self.grokfast_window}")
        if not isinstance(self.keep_moments, bool):
            raise ValueError(f"TrainConfig.keep_moments must be true or false, got {self.keep_moments!r}")
        if self.stop_after_grok is not None and int(self.stop_after_grok) < 0:
            raise ValueError(f"TrainConfig.stop_after_grok must be >= 0 or None, got {self.stop_after_grok}")


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


def provenance() -> dict:
    """Where and with what a result was made: machine, cores, torch threads, versions, UTC time.
    Analyses write it next to their figures (figures must say what made them)."""
    import datetime
    import platform

    return {"machine": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "made": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")} | versions()


# --- atomic writes ------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _atomic(path: Path, write):
    """Write through a temp file in the same directory, then rename: a reader (or a resume
    after SIGKILL) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        write(tmp)
        # The mode open() would give (0666 less the umask): collaborators on a shared filesystem
        # read checkpoints as they read figures. (Writers such as safetensors may replace the
        # temp file with a 0600 one of their own, so the mode is set after writing.)
        os.chmod(tmp, 0o666 & ~_umask())
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


def moments_path(run_dir: Path, step: int) -> Path:
    """Where a run trained with ``keep_moments`` stores AdamW's state at ``step``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"moments_{step:07d}.safetensors"


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
        """Checkpoint count, final metrics and the transition metrics
        (``progress.transition_metrics`` of ``metrics.csv``: memorised_step, grokked_step, ...)."""
        from .progress import transition_metrics

        m, steps = self.metrics, self.steps
        last = m.iloc[-1] if len(m) else {}
        return {
            "n_checkpoints": len(steps), "first_step": steps[0] if steps else None,
            "last_step": steps[-1] if steps else None,
            **{k: float(last[k]) if len(m) else float("nan")
               for k in ("train_loss", "test_loss", "train_acc", "test_acc")},
        } | transition_metrics(m).to_dict()

    def stacked_params(self, steps: list[int] | None = None) -> Params:
        """Weights of many checkpoints stacked on a leading axis (for vmap'd analyses)."""
        steps = self.steps if steps is None else steps
        all_params = [self.params(s) for s in steps]
        return {k: torch.stack([p[k] for p in all_params]) for k in all_params[0]}


def load_run(path: str | os.PathLike) -> Run:
    return Run(path)


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
           "save_tensors", "read_tensors", "checkpoint_path", "write_json", "write_metrics", "versions",
           "METRIC_COLUMNS"]


# --- foreign checkpoint series: `mechgrok import`, and redrawing a run's figures (issue 7) ---
#
# A checkpoint series trained with another tool becomes a normal run directory, so every
# command works on it. Reading never runs code from the file: torch.load(weights_only=True),
# with every class the pickle names that torch does not allow replaced by an inert
# ForeignObject registered under that name, so a pickled config object becomes plain data and a
# malicious __reduce__ only records its arguments.

HT_REQUIRED = ("embed.W_E", "pos_embed.W_pos", "blocks.0.attn.W_Q", "blocks.0.mlp.W_in", "unembed.W_U")
BUNDLE_REQUIRED = ("checkpoints", "checkpoint_epochs")


class ForeignFileError(ValueError):
    """A foreign checkpoint file cannot be imported; the message is one line naming the file."""


class ForeignObject:
    """Stands in for a pickled object of a class mechgrok never imports: keeps the pickled
    class name, the constructor arguments and the state; runs nothing of the original."""

    pickled_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


def _as_data(obj):
    """Plain data: a ForeignObject becomes a dict with its class name under "__class__"."""
    if isinstance(obj, ForeignObject):
        state = _as_data(obj.state)
        if isinstance(state, dict) and not obj.args:
            return {"__class__": obj.pickled_name, **state}
        return {"__class__": obj.pickled_name, "args": _as_data(list(obj.args)), "state": state}
    if isinstance(obj, dict):
        return {k: _as_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_as_data(v) for v in obj)
    return obj


def _one_line(e: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0][:200] if lines else ""
    return f"{type(e).__name__}: {line}" if len(line) < 20 else line


def read_foreign(path: str | os.PathLike) -> tuple[object, list[str]]:
    """The contents of a ``.safetensors`` or torch (``.pth``/``.pt``) file, read without running
    any code from it; returns ``(contents, notes)``. Tensors, lists, dicts, numbers and strings
    come back as they are; any other pickled object comes back as a dict of its data with its
    class name under ``"__class__"`` (never constructed), and a note says so. A pickle that
    calls into ``os``/``sys`` is refused. Failures raise ``ForeignFileError`` (one line)."""
    import zipfile

    from torch import _weights_only_unpickler as wou

    path = Path(path)
    if not path.is_file():
        raise ForeignFileError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return read_tensors(path), []
        except ValueError as e:
            raise ForeignFileError(str(e)) from None
    if not zipfile.is_zipfile(path):  # torch < 1.6 format, or not a torch file at all
        try:
            return torch.load(path, map_location="cpu", weights_only=True), []
        except Exception as e:
            raise ForeignFileError(f"{path}: not a torch or safetensors file that can be read without "
                                   f"running code ({_one_line(e)})") from None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:
        raise ForeignFileError(f"{path}: not a readable torch file ({_one_line(e)})") from None
    blocked_modules = set(getattr(wou, "_blocklisted_modules", ())) | {"os", "sys", "posix", "nt", "subprocess"}
    blocked = [n for n in names if n.split(".")[0] in blocked_modules]
    if blocked:
        raise ForeignFileError(f"{path}: refused: its pickle calls {', '.join(blocked)}, which a checkpoint "
                               f"never needs (nothing was run)")
    stubs = [(type(f"Foreign[{n}]", (ForeignObject,), {"pickled_name": n}), n) for n in names]
    try:
        with torch.serialization.safe_globals(stubs):
            contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ForeignFileError(f"{path}: cannot read ({_one_line(e)})") from None
    notes = [f"{n} in {path.name} read as plain data (never constructed)" for n in names]
    return _as_data(contents), notes


def _read_split(split, source: str) -> tuple[int, ...]:
    """Train indices from a sequence/tensor, or a file: a JSON list, a JSON object with
    ``train_indices``/``train_idx``, or integers separated by commas or whitespace."""
    if not isinstance(split, (str, os.PathLike)):
        return tuple(int(i) for i in torch.as_tensor(split).flatten().tolist())
    path = Path(split)
    if not path.is_file():
        raise ForeignFileError(f"{path}: no such split file")
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        data = data.get("train_indices", data.get("train_idx"))
        if data is None:
            raise ForeignFileError(f"{path}: a JSON split file needs a list, or an object with "
                                   f"'train_indices' (or 'train_idx')")
    if data is None:
        tokens = [t for t in re.split(r"[\s,\[\]]+", text) if t]
        if not tokens or not all(re.fullmatch(r"\d+", t) for t in tokens):
            raise ForeignFileError(f"{path}: a split file holds train indices: a JSON list or integers "
                                   f"separated by commas or whitespace")
        data = [int(t) for t in tokens]
    if not isinstance(data, list) or not all(isinstance(i, int) for i in data):
        raise ForeignFileError(f"{path}: the train indices must be a list of integers")
    return tuple(data)


def _state_dict(obj, source: str) -> dict[str, torch.Tensor]:
    """The HookedTransformer-format tensors of ``obj`` (TL's attention mask/IGNORE buffers
    dropped), or a one-line error naming what is missing."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ForeignFileError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor) and not k.endswith((".mask", ".IGNORE"))}
    missing = [k for k in HT_REQUIRED if k not in sd]
    if missing:
        found = ", ".join(map(str, list(obj)[:6])) + (", ..." if len(obj) > 6 else "") or "nothing"
        raise ForeignFileError(f"{source}: not a HookedTransformer state dict or a TL Grokking-demo bundle: "
                               f"missing {', '.join(missing)} (and no 'checkpoints'); it holds: {found}")
    return {k: v.detach().float().contiguous() for k, v in sd.items()}


def import_run(src: str | os.PathLike, out: str | os.PathLike, op: str | None = None, p: int | None = None,
               act_fn: str | None = None, split=None, step: int | None = None, progress: bool = True,
               png: bool = True) -> Run:
    """Turn a checkpoint series trained elsewhere into the run directory ``out`` and return it.

    ``src`` is either one HookedTransformer state dict (``.pth``/``.pt``/``.safetensors``; a
    ``{"model": state_dict, ...}`` bundle works too; ``step``: the step it was taken at,
    default 0) or a TransformerLens Grokking-demo bundle (a ``.pth`` holding ``checkpoints``,
    ``checkpoint_epochs``, and optionally ``model``, ``config``, ``train_losses``,
    ``test_losses``, ``train_indices``, ``test_indices``). Epoch ``e`` of the demo saved the
    weights after ``e + 1`` optimiser steps: it becomes step ``e + 1``.

    ``op`` (default ``add``, the demo's task), ``p`` (default: the unembedding's width) and
    ``act_fn`` (default: the bundle config's, else ``relu``) say what the weights compute.
    ``split``: the train indices (rows of mechgrok's a-major example table), as a sequence or
    a file (JSON list, or integers separated by commas/whitespace); default the bundle's
    ``train_indices``. Without any, mechgrok's seeded split is used and a note says so.

    Writes ``config.json`` (the split in ``task.train_idx``; what was read and assumed under
    ``imported``), ``checkpoints/``, ``metrics.csv`` (each checkpoint evaluated on the split),
    ``source_losses.csv`` (the bundle's own per-step losses, when it has them) and the training
    curve (``png=False``: HTML only). Never runs code from ``src``; every failure is a one-line ``ForeignFileError``."""
    from dataclasses import replace as dc_replace

    from tqdm.auto import tqdm

    from .train import evaluate

    src, out = Path(src), Path(out)
    check_new_run_dir(out)
    contents, notes = read_foreign(src)
    source = str(src)
    if isinstance(contents, dict) and "checkpoints" in contents:
        fmt = "TransformerLens Grokking-demo bundle"
        missing = [k for k in BUNDLE_REQUIRED if k not in contents]
        if missing:
            raise ForeignFileError(f"{source}: a Grokking-demo bundle needs {', '.join(missing)} next to "
                                   f"'checkpoints'")
        ckpts, epochs = contents["checkpoints"], contents["checkpoint_epochs"]
        epochs = epochs.tolist() if isinstance(epochs, torch.Tensor) else list(epochs)
        if not isinstance(ckpts, list) or len(ckpts) != len(epochs):
            raise ForeignFileError(f"{source}: 'checkpoints' must be a list as long as 'checkpoint_epochs' "
                                   f"({len(epochs)})")
        series = {int(e) + 1: _state_dict(sd, f"{source} checkpoints[{i}]")
                  for i, (e, sd) in enumerate(zip(epochs, ckpts))}
        losses = {k: [float(v) for v in contents[k]] for k in ("train_losses", "test_losses")
                  if isinstance(contents.get(k), (list, tuple, torch.Tensor))}
        n_steps = max(len(v) for v in losses.values()) if losses else None
        if isinstance(contents.get("model"), dict) and (n_steps is not None or not series):
            # the final weights: after the last epoch (len(train_losses) steps), if not saved already
            series.setdefault(n_steps or 0, _state_dict(contents["model"], f"{source} model"))
        foreign_cfg = contents.get("config")
        if split is None and contents.get("train_indices") is not None:
            split = contents["train_indices"]
        test_given = contents.get("test_indices")
    else:
        fmt = "HookedTransformer state dict"
        series = {int(step or 0): _state_dict(contents, source)}
        losses, foreign_cfg, test_given = {}, contents.get("config") if isinstance(contents, dict) else None, None
    if not series:
        raise ForeignFileError(f"{source}: the bundle holds no checkpoints")
    foreign_cfg = foreign_cfg if isinstance(foreign_cfg, dict) else {}

    first = series[min(series)]
    if op is None:
        op = "add"
        notes.append("op not given: assumed add (the TL Grokking demo's task)")
    if act_fn is None:
        act_fn = foreign_cfg.get("act_fn") if isinstance(foreign_cfg.get("act_fn"), str) else None
        if act_fn is None:
            act_fn = "relu"
            notes.append("act_fn not given and not in the file: assumed relu")
    width = first["unembed.W_U"].shape[1]
    try:
        if op == "parity":
            task_kw = dict(op=op, n_bits=first["pos_embed.W_pos"].shape[0] - 1)
        else:
            if p is not None and p != width:
                raise ForeignFileError(f"{source}: --p {p} does not fit the weights: unembed.W_U has {width} "
                                       f"outputs (p = {width})")
            task_kw = dict(op=op, p=width)
        train_idx = _read_split(split, source) if split is not None else None
        if train_idx is None:
            notes.append("no split given: metrics use mechgrok's seeded split (frac 0.3, seed 0), not the "
                         "source's; pass a split file to analyse with the original one")
        task_cfg = TaskConfig(**task_kw, train_idx=train_idx)
        task = Task(task_cfg)
        if test_given is not None:
            test_set = set(_read_split(test_given, source))
            if test_set != set(task.test_idx.tolist()):
                notes.append(f"test_indices in {src.name} are not all the examples outside train_indices: "
                             f"mechgrok tests on all {len(task.test_idx)} others")
        mcfg = dc_replace(infer_config(first, act_fn), seed=int(foreign_cfg.get("seed") or 0))
        mcfg_resolved = mcfg.resolve(task)
        shapes = param_shapes(mcfg_resolved)
        for s, sd in series.items():
            filled = [k for k, shape in shapes.items() if k not in sd and k.rsplit(".", 1)[-1].startswith("b_")]
            for k in filled:
                sd[k] = torch.zeros(shapes[k])
            if filled and s == min(series):
                notes.append(f"biases missing in the source, filled with zeros: {', '.join(filled)}")
            check_params(sd, mcfg_resolved, source=f"{source} (step {s})")
    except (ValueError, TypeError) as e:
        raise ForeignFileError(e if isinstance(e, ForeignFileError) else f"{source}: {_one_line(e)}") from None

    steps = sorted(series)
    every = min((b - a for a, b in zip(steps, steps[1:])), default=max(steps[-1], 1))
    train_cfg = TrainConfig(steps=max(steps[-1], 1), eval_every=every, checkpoint_every=every, device="cpu")
    model_cfg = dc_replace(mcfg, d_vocab=None, d_vocab_out=None, n_ctx=None)
    config = RunConfig(task=task_cfg, model=model_cfg, train=train_cfg)
    rows = []
    for s in tqdm(steps, desc=f"import {src.name}", unit="ckpt", disable=not progress, dynamic_ncols=True):
        sd = series[s]
        tr = evaluate(sd, mcfg_resolved, task.train_inputs, task.train_labels)
        te = evaluate(sd, mcfg_resolved, task.test_inputs, task.test_labels)
        wsq = sum(float((v.double() ** 2).sum()) for v in sd.values())
        rows.append(dict(zip(METRIC_COLUMNS, (s, tr[0], te[0], tr[1], te[1], wsq))))
        save_tensors(checkpoint_path(out, s), sd, metadata={"step": str(s)})
    write_metrics(out / "metrics.csv", rows)
    if losses:
        # train_losses[e] was computed before epoch e's update (weights of step e), test_losses[e]
        # after it (step e + 1): align both by the step of the weights they were computed on.
        n = max(len(v) for v in losses.values())
        tr_l, te_l = losses.get("train_losses", []), losses.get("test_losses", [])
        table = pd.DataFrame({"step": range(n + 1),
                              "train_loss": [tr_l[s] if s < len(tr_l) else float("nan") for s in range(n + 1)],
                              "test_loss": [te_l[s - 1] if 0 < s <= len(te_l) else float("nan") for s in range(n + 1)]})
        _atomic(out / "source_losses.csv", lambda tmp: table.to_csv(tmp, index=False, float_format="%.9g"))
        ours = pd.DataFrame(rows).set_index("step")
        theirs = table.set_index("step").reindex(ours.index)
        rel = ((ours[["train_loss", "test_loss"]] - theirs) / theirs.abs()).abs().max(skipna=True)
        if rel.notna().any():
            notes.append(f"re-evaluated losses vs the source's at the checkpoints: max relative difference "
                         f"train {rel['train_loss']:.2g}, test {rel['test_loss']:.2g}")
    imported = {"source": str(src.resolve()), "format": fmt, "notes": notes,
                "source_config": json.loads(json.dumps(foreign_cfg, default=str)),
                "train_settings": "unknown: only steps and the checkpoint grid come from the source"}
    write_json(out / "config.json", config.to_dict() | {"versions": versions(), "device": "cpu",
                                                        "imported": imported})
    run = Run(out)
    draw_figures(run, analysis=False, png=png)
    return run


def every_nth_step(run: Run, every: int = 1) -> list[int] | None:
    """Every ``every``-th checkpoint step of ``run``, always ending at the last (None: all)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if every == 1:
        return None
    steps = run.steps[::every]
    return steps + [run.steps[-1]] if steps and steps[-1] != run.steps[-1] else steps


def draw_figures(run: Run, analysis: bool = True, png: bool = True, progress: bool = False) -> list[Path]:
    """(Re)draw a run's figures from its files: the training curve from ``metrics.csv`` and,
    with ``analysis`` and a ``progress.csv`` + ``phases.json`` from ``mechgrok analyze``, the
    analysis figures (``progress.analysis_figures``), e.g. after installing Chromium for PNGs.
    ``progress``: a bar over the figures (PNG export takes seconds each). Returns the files written."""
    from tqdm.auto import tqdm

    from . import plots
    from .progress import transition_metrics

    figures = {}
    m = run.metrics
    if len(m):
        tr = transition_metrics(m)
        figures["training_curve"] = plots.training_curve(
            m, title=f"{run.path.name}: {run.task.describe()}",
            marks={"memorised": tr.memorised_step, "grokked": tr.grokked_step})
    table_file, phases_file = run.path / "progress.csv", run.path / "phases.json"
    if analysis and table_file.exists() and phases_file.exists():
        from .progress import analysis_figures

        table = pd.read_csv(table_file)
        ph = json.loads(phases_file.read_text())
        table.attrs.update(key_freqs=ph["key_freqs"], basis=ph["basis"], level=ph.get("level"))
        figures |= analysis_figures(run, table)
    written = []
    for stem, fig in tqdm(figures.items(), desc="figures", unit="fig", disable=not progress, dynamic_ncols=True):
        written += plots.save_figure(fig, run.path / stem, png=png)
    return written


__all__ += ["import_run", "read_foreign", "draw_figures", "every_nth_step", "ForeignFileError", "ForeignObject"]


# --- run writer and resume state (the trainer's side of a run directory; issue 8 finding 3) ---
#
# resume.safetensors is defined here and nowhere else:
#   meta.step                              the step it was written at (its newest checkpoint)
#   param.<name>                           every weight at that step
#   opt.<name>.step|exp_avg|exp_avg_sq     AdamW state of each trainable parameter (torch's names)
#   grokfast.<name>.ema | .window, grokfast.count   Grokfast filter state, when the run uses one
# The solo trainer (train.py) and the ensemble trainer (population.py) both write it through
# RunWriter, so an ensemble member resumes solo too.

RESUME_FILE = "resume.safetensors"
DYNAMICS_FILE = "dynamics.csv"
OPT_KEYS = ("step", "exp_avg", "exp_avg_sq")


@dataclass
class ResumeState:
    """What training needs to continue exactly: the step, the weights, AdamW's state per
    trainable parameter (``optimizer[name] = {"step", "exp_avg", "exp_avg_sq"}``) and the
    gradient filter's state (``grokfast``: ``"<name>.ema"``, ``"<name>.window"``, ``"count"``)."""

    step: int
    params: Params
    optimizer: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    grokfast: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"param.{k}": v for k, v in self.params.items()}
        out |= {f"opt.{k}.{key}": v for k, st in self.optimizer.items() for key, v in st.items()}
        out |= {f"grokfast.{k}": v for k, v in self.grokfast.items()}
        out["meta.step"] = torch.tensor(self.step)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], source: str = "resume state") -> "ResumeState":
        if "meta.step" not in tensors:
            raise ValueError(f"{source}: not a mechgrok resume state (meta.step is missing)")
        optimizer: dict[str, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                name, key = k[len("opt."):].rsplit(".", 1)
                optimizer.setdefault(name, {})[key] = v
        return cls(step=int(tensors["meta.step"].item()),
                   params={k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")},
                   optimizer=optimizer,
                   grokfast={k[len("grokfast."):]: v for k, v in tensors.items() if k.startswith("grokfast.")})


def read_resume_state(run_dir: str | os.PathLike, name: str = RESUME_FILE) -> ResumeState:
    """The resume state of a run directory (its newest checkpoint, with AdamW's moments)."""
    f = Path(run_dir) / name
    if not f.exists():
        raise FileNotFoundError(f"{run_dir}: no {name}; the run never reached its first checkpoint")
    return ResumeState.from_tensors(read_tensors(f), source=str(f))


def write_resume_state(run_dir: str | os.PathLike, state: ResumeState, name: str = RESUME_FILE):
    save_tensors(Path(run_dir) / name, state.to_tensors())


def check_new_run_dir(out: str | os.PathLike):
    """Refuse to start a run in a directory that already holds one, or holds anything else."""
    out = Path(out)
    if (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a run; use --resume to continue it, or choose another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory or a mechgrok run: "
                              f"choose a new --out")


def _read_rows(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in pd.read_csv(path).to_dict("records") if r["step"] <= upto]


class RunWriter:
    """Writes one run directory as training goes: ``config.json`` when it is created, the
    evaluation rows (``metrics.csv``) and probe rows (``dynamics.csv``), and at each checkpoint
    the step's weights and the resume state. ``RunWriter.create`` starts a new directory;
    ``RunWriter.reopen`` continues one at its resume step (rows after it are dropped, as an
    uninterrupted run would not have them yet)."""

    def __init__(self, path: Path, rows: list[dict], dynamics: list[dict], keep_moments: bool = False):
        self.path, self.rows, self.dynamics = Path(path), rows, dynamics
        self.keep_moments = keep_moments

    @classmethod
    def create(cls, path: str | os.PathLike, cfg: RunConfig, device) -> "RunWriter":
        check_new_run_dir(path)
        write_json(Path(path) / "config.json", cfg.to_dict() | {"versions": versions(), "device": str(device)})
        return cls(Path(path), [], [], cfg.train.keep_moments)

    @classmethod
    def reopen(cls, path: str | os.PathLike, step: int) -> "RunWriter":
        path = Path(path)
        return cls(path, _read_rows(path / "metrics.csv", step), _read_rows(path / DYNAMICS_FILE, step),
                   Run(path).config.train.keep_moments)

    def record(self, row: dict) -> dict:
        self.rows.append({k: row[k] for k in METRIC_COLUMNS})
        return self.rows[-1]

    def record_dynamics(self, row: dict):
        self.dynamics.append(row)

    def write_tables(self):
        write_metrics(self.path / "metrics.csv", self.rows)
        if self.dynamics:
            df = pd.DataFrame(self.dynamics)
            _atomic(self.path / DYNAMICS_FILE, lambda tmp: df.to_csv(tmp, index=False, float_format="%.9g"))

    def checkpoint(self, state: ResumeState, resume_name: str = RESUME_FILE):
        """The step's weights, then the tables, then the resume state: after a kill at any point
        the resume state names a step whose checkpoint file exists and whose metric rows are all
        in the tables (rows past it are dropped on resume). Tables after the resume state lost
        the rows of the last interval when a kill fell between the two writes."""
        save_tensors(checkpoint_path(self.path, state.step), state.params, metadata={"step": str(state.step)})
        if self.keep_moments and state.optimizer:  # the resume state's "opt.*" keys, for this step
            moments = {f"opt.{k}.{key}": st[key] for k, st in state.optimizer.items() for key in ("exp_avg", "exp_avg_sq")}
            save_tensors(moments_path(self.path, state.step), moments | {"meta.step": torch.tensor(state.step)})
        self.write_tables()
        write_resume_state(self.path, state, resume_name)


__all__ += ["ResumeState", "read_resume_state", "write_resume_state", "check_new_run_dir", "RunWriter",
            "RESUME_FILE", "DYNAMICS_FILE", "GROKFAST_MODES"]
