"""The settings of a run: what to learn (``tasks.TaskConfig``), the model
(``model.ModelConfig``) and how to optimise (``TrainConfig``), together a ``RunConfig``, which
is what ``config.json`` stores. Each is validated at construction, so a mistake fails in one
line naming the field before anything is allocated or written."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .fieldtypes import check_field_types, checked_values
from .grokfast import MODES as GROKFAST_MODES
from .model import ModelConfig
from .optim import check_optimizer
from .tasks import TaskConfig

# --- configs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """How to optimise. Validated at construction."""

    steps: int = 3000
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    # one of optim.OPTIMIZERS; its other arguments (optim.OPTIMIZER_ARGS) in optimizer_args,
    # given as a dict and kept as sorted (key, value) pairs so the config stays hashable
    optimizer: str = "adamw"
    optimizer_args: tuple[tuple[str, object], ...] = ()
    warmup_steps: int = 10
    batch_size: int | None = None  # None: full batch
    eval_every: int = 10
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    # fnmatch patterns over parameter names kept fixed (e.g. "blocks.*.attn.b_*"); frozen
    # parameters stay out of the optimiser, so weight decay does not touch them either.
    frozen: tuple[str, ...] = ()
    # Grokfast gradient filter between backward and step (Lee et al. 2024, grokfast.py):
    # "ema": e <- alpha e + (1 - alpha) g, g <- g + lambda e; "ma": g <- g + lambda mean(last
    # `window` gradients) once the window is full. lambda None: 2 for ema, 5 for ma.
    grokfast: str = "none"
    grokfast_alpha: float = 0.98
    grokfast_lambda: float | None = None
    grokfast_window: int = 100
    # Stop this many evaluations after the first one with test accuracy above
    # milestones.GROKKED_TEST_ACC (None: train to `steps`); for sweeps that need transition metrics.
    stop_after_grok: int | None = None
    # Also write the optimizer's state at every checkpoint (checkpoints/moments_{step:07d}.safetensors),
    # for measures that need the optimizer state after training (dynamics.momentum_alignment) and
    # for interventions that carry it from a checkpoint other than the last.
    keep_moments: bool = False
    # torch.compile (inductor) the step: loss, gradient and update in one graph (Adam, AdamW;
    # trainer.compile_train_step), or forward + loss + backward and the update as two graphs.
    # Faster where a step is fixed-cost bound (small batches, several layers), but it rounds
    # differently from the eager step, so a compiled run is not bit-identical to an eager one:
    # resume refuses to switch it (resume_config), like every other field that shapes the trajectory.
    compile: bool = False

    def __post_init__(self):
        check_field_types(self)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "frozen", tuple(self.frozen))
        args = self.optimizer_args
        if isinstance(args, dict):
            args = args.items()
        try:
            args = dict((str(k), v) for k, v in args)
        except (TypeError, ValueError):
            raise ValueError(f"TrainConfig.optimizer_args must be a dict of argument: value, got {self.optimizer_args!r}") from None
        check_optimizer(self.optimizer, args)
        object.__setattr__(self, "optimizer_args", tuple(sorted(args.items())))
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
        if not isinstance(self.compile, bool):
            raise ValueError(f"TrainConfig.compile must be true or false, got {self.compile!r}")
        if self.stop_after_grok is not None and int(self.stop_after_grok) < 0:
            raise ValueError(f"TrainConfig.stop_after_grok must be >= 0 or None, got {self.stop_after_grok}")


@dataclass(frozen=True)
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None

    def to_dict(self) -> dict:
        train = asdict(self.train) | {"optimizer_args": dict(self.train.optimizer_args)}
        return {"task": asdict(self.task), "model": asdict(self.model), "train": train, "preset": self.preset}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        def build(klass, values):
            if not isinstance(values, dict):
                raise ValueError(f"{klass.__name__}: expected an object of fields, got {values!r}")
            known = {f.name for f in fields(klass)}
            unknown = set(values) - known
            if unknown:
                raise ValueError(f"{klass.__name__}: unknown field(s) {sorted(unknown)}; "
                                 f"allowed: {sorted(known)}")
            # the types first: a hand-edited "p": "53" fails here in one line naming the field
            return klass(**checked_values(klass, values))

        if not isinstance(d, dict):
            raise ValueError(f"RunConfig: expected an object with task, model and train, got {type(d).__name__}")
        return cls(task=build(TaskConfig, d.get("task", {})), model=build(ModelConfig, d.get("model", {})),
                   train=build(TrainConfig, d.get("train", {})), preset=d.get("preset"))


def parse_seeds(text: str | int) -> tuple[int, ...]:
    """Seeds from the command line (``--seeds``): "N" (seeds 0..N-1), "A-B" (A..B inclusive),
    "a,b,c", or a mix ("0-3,7"); distinct non-negative integers. An int is a count; one seed
    is "S-S" or "S,"."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    bad = ValueError(f"--seeds expects N (seeds 0..N-1), A-B or a,b,c (distinct non-negative integers, "
                     f"A <= B), got {text!r}")
    parts = [t.strip() for t in str(text).split(",")]
    try:
        if len(parts) == 1 and "-" not in parts[0]:  # a count
            out = tuple(range(int(parts[0])))
        else:
            out = ()
            for part in filter(None, parts):
                lo, sep, hi = part.partition("-")
                if sep and int(hi) < int(lo):
                    raise ValueError
                out += tuple(range(int(lo), int(hi) + 1)) if sep else (int(part),)
    except ValueError:
        raise bad from None
    if not out or min(out) < 0 or len(set(out)) != len(out):
        raise bad
    return out


def resolve_device(device: str):
    """The torch device of ``TrainConfig.device`` ("auto": CUDA when torch sees a GPU). A GPU
    asked for and not there is the user's mistake (ValueError: one line from the CLI), checked
    before anything is written."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use --device cpu (or auto)")
    index = device.partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} was requested but torch sees {torch.cuda.device_count()} CUDA GPU(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); choose one of them")
    return torch.device(device)

