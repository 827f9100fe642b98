"""Run directories: the storage of one run, read and written. Knows nothing of training,
measures or figures; trainers write through ``RunWriter``, everything else reads ``Run``.

A run directory holds::

    config.json                  task, model and training settings, versions, device
    checkpoints/step_0001000.safetensors   HookedTransformer-format weights at that step
    checkpoints/moments_0001000.safetensors  the optimizer's state there (with keep_moments)
    resume.safetensors           weights + optimizer state of the newest checkpoint (for resume)
    metrics.csv                  step, train_loss, test_loss, train_acc, test_acc, weight_sq
    dynamics.csv                 rows of measures taken during training (optional)

Everything is safetensors or text: nothing in a run is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .config import RunConfig
from .files import read_tensors, save_tensors, write_csv, write_json
from .locks import LOCK_FILE, DirLock, lock_dir
from .model import Params, check_params, to_tl_model
from .provenance import versions
from .tasks import Task

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.csv"
RESUME_FILE = "resume.safetensors"
# a sweep directory: its spec, and its members' run directories under members/ (population.py)
SWEEP_FILE = "sweep.json"
MEMBERS_DIR = "members"
DYNAMICS_FILE = "dynamics.csv"
METRIC_COLUMNS = ["step", "train_loss", "test_loss", "train_acc", "test_acc", "weight_sq"]
_STEP_RE = re.compile(r"step_(\d+)\.safetensors$")


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run directory (it holds a config.json)."""
    return (Path(path) / CONFIG_FILE).is_file()


def find_runs(path: str | os.PathLike) -> list["Run"]:
    """``path`` itself when it is a run, else every run directory below it (sweep members,
    ensemble members, a folder of runs), in path order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such directory")
    if is_run_dir(path):
        return [Run(path)]
    found = sorted(p.parent for p in path.rglob(CONFIG_FILE))
    if not found:
        raise FileNotFoundError(f"{path}: neither a run nor a directory holding runs (no {CONFIG_FILE})")
    return [Run(p) for p in found]


def read_dynamics(run: "Run | str | os.PathLike") -> pd.DataFrame | None:
    """The rows of the measures taken during training (``dynamics.csv``), None without them."""
    f = Path(getattr(run, "path", run)) / DYNAMICS_FILE
    return pd.read_csv(f) if f.exists() else None


def write_metrics(path: Path, rows: list[dict]):
    write_csv(path, pd.DataFrame(rows, columns=METRIC_COLUMNS))


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:07d}.safetensors"


def moments_path(run_dir: Path, step: int) -> Path:
    """Where a run trained with ``keep_moments`` stores the optimizer's state at ``step``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"moments_{step:07d}.safetensors"


# --- loading runs -------------------------------------------------------------------------


class Run:
    """A run directory, loaded lazily: ``run.steps``, ``run.metrics``, ``run.params(step)``,
    ``run.model(step)`` (a TransformerLens model), ``run.task``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        cfg_file = self.path / CONFIG_FILE
        if not self.path.exists():  # a typo in the path: say so, not that a file inside it is missing
            raise FileNotFoundError(f"no such run directory: {self.path}")
        if not self.path.is_dir():
            raise NotADirectoryError(f"{self.path} is a file, not a run directory")
        if not cfg_file.exists():
            raise FileNotFoundError(f"{self.path} is not a mechgrok run: {cfg_file.name} is missing")
        try:
            self.meta = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_file}: not valid JSON ({e})") from e
        try:
            self.config = RunConfig.from_dict(self.meta)
        except (ValueError, TypeError) as e:  # a hand-edited field: name the file as well
            raise ValueError(f"{cfg_file}: {e}") from None
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
        f = self.path / METRICS_FILE
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
        params = read_tensors(f, floating=True)
        check_params(params, self.model_cfg, source=str(f))
        return params if device is None else {k: v.to(device) for k, v in params.items()}

    def model(self, step: int | None = None, device=None):
        """The TransformerLens 4 model at ``step`` (default: the last)."""
        return to_tl_model(self.params(step), self.model_cfg, device=device)

    def summary(self) -> dict:
        """Checkpoint count, final metrics and the transition metrics
        (``milestones.transition_metrics`` of ``metrics.csv``: memorised_step, grokked_step, ...)."""
        from .milestones import final_metrics, transition_metrics  # pure: they read the rows only

        m, steps = self.metrics, self.steps
        return ({"n_checkpoints": len(steps), "first_step": steps[0] if steps else None,
                 "last_step": steps[-1] if steps else None}
                | final_metrics(m) | transition_metrics(m).to_dict())

    def stacked_params(self, steps: list[int] | None = None) -> Params:
        """Weights of many checkpoints stacked on a leading axis (for vmap'd analyses)."""
        steps = self.steps if steps is None else steps
        all_params = [self.params(s) for s in steps]
        return {k: torch.stack([p[k] for p in all_params]) for k in all_params[0]}


def load_run(path: str | os.PathLike) -> Run:
    return Run(path)


def every_nth_step(run: Run, every: int = 1) -> list[int] | None:
    """Every ``every``-th checkpoint step of ``run``, always ending at the last (None: all)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if every == 1:
        return None
    steps = run.steps[::every]
    return steps + [run.steps[-1]] if steps and steps[-1] != run.steps[-1] else steps


#
# resume.safetensors is defined here and nowhere else:
#   meta.step                  the step it was written at (its newest checkpoint)
#   param.<name>               every weight at that step
#   opt.<name>.<key>           the optimizer's per-parameter state, by parameter name and torch's
#                              own key (AdamW: step, exp_avg, exp_avg_sq; SGD and Muon:
#                              momentum_buffer)
#   grokfast.<name>.ema | .window, grokfast.count   Grokfast filter state, when the run uses one
# checkpoints/moments_<step>.safetensors holds the same opt.* and meta.step keys for a checkpoint
# other than the newest (keep_moments). The solo trainer (trainer.py) and the ensemble trainer
# (ensemble.py) both write through RunWriter, so an ensemble member resumes solo too.

@dataclass
class ResumeState:
    """What training needs to continue exactly: the step, the weights, the optimizer's state
    per trainable parameter (``optimizer[name] = {key: tensor}`` with torch's keys: AdamW's
    ``step``, ``exp_avg``, ``exp_avg_sq``) and the gradient filter's state (``grokfast``:
    ``"<name>.ema"``, ``"<name>.window"``, ``"count"``)."""

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

    def moment(self, key: str = "exp_avg") -> Params:
        """One optimizer state entry per parameter name (AdamW's first moment by default)."""
        return {k: st[key] for k, st in self.optimizer.items() if key in st}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], source: str = "resume state") -> "ResumeState":
        if "meta.step" not in tensors:
            raise ValueError(f"{source}: not a mechgrok resume state (meta.step is missing)")
        return cls(step=int(tensors["meta.step"].item()),
                   params={k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")},
                   optimizer=optimizer_state(tensors),
                   grokfast={k[len("grokfast."):]: v for k, v in tensors.items() if k.startswith("grokfast.")})


def optimizer_state(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{name: {key: tensor}}`` from the flat ``opt.<name>.<key>`` tensors of a resume or
    moments file (other keys are ignored)."""
    optimizer: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            name, key = k[len("opt."):].rsplit(".", 1)
            optimizer.setdefault(name, {})[key] = v
    return optimizer


def read_optimizer_state(run: "Run", step: int | None = None) -> dict[str, dict[str, torch.Tensor]] | None:
    """The optimizer's state at a checkpoint of ``run`` (default: the last), keyed by parameter
    name, from ``checkpoints/moments_*.safetensors`` or, for the newest checkpoint,
    ``resume.safetensors``; None when the run kept none for that step. Files written before
    the step count was kept get it from ``meta.step``."""
    step = run.resolve_step(step)
    f = moments_path(run.path, step)
    if f.exists():
        tensors = read_tensors(f)
    else:
        resume = run.path / RESUME_FILE
        if not resume.exists():
            return None
        tensors = read_tensors(resume)
        if "meta.step" in tensors and int(tensors["meta.step"].item()) != step:
            return None
    state = optimizer_state(tensors)
    for st in state.values():
        if "exp_avg" in st and "step" not in st:
            st["step"] = torch.tensor(float(step))
    return state or None


def read_resume_state(run_dir: str | os.PathLike, name: str = RESUME_FILE) -> ResumeState:
    """The resume state of a run directory (its newest checkpoint, with AdamW's moments)."""
    f = Path(run_dir) / name
    if not f.exists():
        hint = (f"; there is nothing to resume: train it again with --out {run_dir} (a run without a checkpoint "
                f"counts as empty)" if never_checkpointed(run_dir) else "")
        raise FileNotFoundError(f"{run_dir}: no {name}; the run never reached its first checkpoint{hint}")
    return ResumeState.from_tensors(read_tensors(f), source=str(f))


def write_resume_state(run_dir: str | os.PathLike, state: ResumeState, name: str = RESUME_FILE):
    save_tensors(Path(run_dir) / name, state.to_tensors())


def never_checkpointed(out: str | os.PathLike) -> bool:
    """Whether ``out`` holds a run that a process left before its first checkpoint: a
    config.json and nothing that training writes (no resume state, checkpoint or metrics.csv).
    There is nothing to resume in it, so a new run may take its place (``check_new_run_dir``)."""
    out = Path(out)
    return (is_run_dir(out) and not any(out.glob("resume*.safetensors")) and not (out / METRICS_FILE).exists()
            and not any((out / CHECKPOINT_DIR).glob("*.safetensors")))


def _leftovers(out: Path) -> list[str]:
    """What a run that never reached its first checkpoint holds besides what a new run
    overwrites (config.json, an empty checkpoints/, the lock and temp files of atomic writes)."""
    def ours(p: Path) -> bool:
        return p.name in (CONFIG_FILE, LOCK_FILE, CHECKPOINT_DIR) or (p.name.startswith(".") and p.name.endswith(".tmp"))
    return sorted(p.name for p in out.iterdir() if not ours(p))


def check_new_run_dir(out: str | os.PathLike):
    """Refuse to start a run in a directory that already holds one, or holds anything else. A
    run that never reached its first checkpoint (``never_checkpointed``: killed while it
    started) counts as empty: it can be neither resumed nor analysed, and refusing it too would
    leave the user no way on but deleting it by hand."""
    out = Path(out)
    if never_checkpointed(out):
        if _leftovers(out):
            raise FileExistsError(f"{out} holds a run that never reached its first checkpoint, and other files "
                                  f"({', '.join(_leftovers(out)[:5])}): remove them, or choose another --out")
        return
    if is_run_dir(out):
        raise FileExistsError(f"{out} already holds a run; use --resume to continue it, or choose another --out")
    if out.exists() and (not out.is_dir() or any(p.name != LOCK_FILE for p in out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory or a mechgrok run: "
                              f"choose a new --out")


def lock_new_run_dir(out: str | os.PathLike) -> DirLock:
    """The write lock of ``out`` for a new run in it, or ``RunLocked`` naming the process that
    writes it, or ``check_new_run_dir``'s error; the directory is checked again under the lock
    (another process may have started a run there since)."""
    out = Path(out)
    if not (out / LOCK_FILE).exists():
        check_new_run_dir(out)  # before a lock file exists: a refused directory is left as it was
    lock = lock_dir(out, create=True)
    try:
        check_new_run_dir(out)
    except BaseException:
        lock.release()
        raise
    if never_checkpointed(out):
        print(f"{out}: starting over: it held a run that never reached its first checkpoint", file=sys.stderr)
    return lock


def _read_rows(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in pd.read_csv(path).to_dict("records") if r["step"] <= upto]


class RunWriter:
    """Writes one run directory as training goes: ``config.json`` when it is created, the
    evaluation rows (``metrics.csv``) and probe rows (``dynamics.csv``), and at each checkpoint
    the step's weights and the resume state. ``RunWriter.create`` starts a new directory;
    ``RunWriter.reopen`` continues one at its resume step (rows after it are dropped, as an
    uninterrupted run would not have them yet).

    Both take the directory's write lock (``locks.lock_dir``: ``RunLocked`` names the process
    that holds it) and hold it until ``close()`` or the end of a ``with`` block."""

    def __init__(self, path: Path, rows: list[dict], dynamics: list[dict], keep_moments: bool = False,
                 lock: DirLock | None = None):
        self.path, self.rows, self.dynamics = Path(path), rows, dynamics
        self.keep_moments, self.lock = keep_moments, lock

    @classmethod
    def create(cls, path: str | os.PathLike, cfg: RunConfig, device, extra: dict | None = None) -> "RunWriter":
        """A new run directory; ``extra``: more top-level keys for config.json."""
        path = Path(path)
        lock = lock_new_run_dir(path)
        try:
            write_json(path / CONFIG_FILE, cfg.to_dict() | {"versions": versions(), "device": str(device)}
                       | dict(extra or {}))
        except BaseException:
            lock.release()
            raise
        return cls(path, [], [], cfg.train.keep_moments, lock)

    @classmethod
    def reopen(cls, path: str | os.PathLike, step: int) -> "RunWriter":
        path = Path(path)
        lock = lock_dir(path)
        try:
            return cls(path, _read_rows(path / METRICS_FILE, step), _read_rows(path / DYNAMICS_FILE, step),
                       Run(path).config.train.keep_moments, lock)
        except BaseException:
            lock.release()
            raise

    def close(self):
        """Let go of the directory's write lock."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def record(self, row: dict) -> dict:
        self.rows.append({k: row[k] for k in METRIC_COLUMNS})
        return self.rows[-1]

    def record_dynamics(self, row: dict):
        self.dynamics.append(row)

    def write_tables(self):
        write_metrics(self.path / METRICS_FILE, self.rows)
        if self.dynamics:
            write_csv(self.path / DYNAMICS_FILE, pd.DataFrame(self.dynamics))

    def checkpoint(self, state: ResumeState, resume_name: str = RESUME_FILE):
        """The step's weights, then the tables, then the resume state: after a kill at any point
        the resume state names a step whose checkpoint file exists and whose metric rows are all
        in the tables (rows past it are dropped on resume). Tables after the resume state lost
        the rows of the last interval when a kill fell between the two writes."""
        save_tensors(checkpoint_path(self.path, state.step), state.params, metadata={"step": str(state.step)})
        if self.keep_moments and state.optimizer:  # the resume state's "opt.*" keys, for this step
            moments = {f"opt.{k}.{key}": v for k, st in state.optimizer.items() for key, v in st.items()}
            save_tensors(moments_path(self.path, state.step), moments | {"meta.step": torch.tensor(state.step)})
        self.write_tables()
        write_resume_state(self.path, state, resume_name)


