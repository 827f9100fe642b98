"""Every file mechgrok writes goes through here: atomic replacement for whole files, fsynced
appends for logs, and safetensors for tensors.

A whole file is written to a temp file in the same directory, fsynced, then renamed over the
target: a reader (or a resume after SIGKILL) sees the old file or the new one, never half of
one, and a full disk leaves the old file as it was. An append-only log (JSON lines) is appended
and fsynced line by line; a line cut short by a crash is reported and skipped when read back.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import warnings
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def _umask() -> int:
    # Linux reports the umask in /proc/self/status; setting it to read it would change it for
    # every thread for a moment (a file another thread creates then gets the wrong mode)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def with_ext(stem: str | os.PathLike, ext: str) -> Path:
    """``stem`` + ``ext``: a report's or figure's file. Not ``Path.with_suffix``, which takes
    everything after the stem's last dot for a suffix: ``study_lr0.001`` would become
    ``study_lr0.json``, and two studies differing after that dot would overwrite each other."""
    stem = Path(stem)
    return stem.with_name(stem.name + ext)


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` to fill a temp file, then put it in place of ``path`` at once."""
    path = Path(path)
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
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return atomic_write(path, w)


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: str | os.PathLike, table: pd.DataFrame, float_format: str = "%.9g", **kw) -> Path:
    """``table.to_csv`` through the atomic writer (``index=False`` unless ``index_label`` is given)."""
    kw.setdefault("index", "index_label" in kw)
    return atomic_write(path, lambda tmp: table.to_csv(tmp, float_format=float_format, **kw))


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def read_tensors(path: str | os.PathLike, floating: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, refused (``check_tensors``) when a floating-point one
    holds NaN or inf, or, with ``floating``, when one is not floating-point (weights)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read checkpoint ({e}); the file may be truncated or "
                         f"not a safetensors file") from e
    check_tensors(tensors, str(path), floating=floating)
    return tensors


def check_tensors(tensors: dict[str, torch.Tensor], source: str, floating: bool = False):
    """Refuse tensors no analysis can use, naming ``source`` and the tensor: NaN or inf in a
    floating-point one (a byte flipped on disk, or a run that diverged: every measure computed
    from it would be NaN or, worse, a plausible-looking number such as an empty list of key
    frequencies), and, with ``floating``, an integer or boolean one among weights (a state dict
    of something else, or weights rounded on export). Every reader of weights calls this one
    check: ``read_tensors`` for mechgrok's files, ``foreign`` for files made elsewhere."""
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            continue
        if not v.is_floating_point():
            if floating:
                raise ValueError(f"{source}: tensor {k!r} holds {str(v.dtype).removeprefix('torch.')} values, "
                                 f"not floating-point weights: this is not a checkpoint of a trained model's "
                                 f"weights (or it was exported rounded); give the floating-point weights")
            continue
        bad = ~torch.isfinite(v)
        if bad.any():
            kinds = " and ".join(w for w, m in (("NaN", v.isnan()), ("inf", v.isinf())) if m.any())
            raise ValueError(f"{source}: tensor {k!r} holds {int(bad.sum())} {kinds} value(s) of {v.numel()}: "
                             f"the file is damaged or the run it comes from diverged; restore it from a "
                             f"copy or use another checkpoint")


# --- append-only logs (JSON lines) -----------------------------------------------------------


def append_jsonl(path: str | os.PathLike, records: list[dict]):
    """Append one JSON line per record and fsync, so a finished record survives a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a line a crash cut short must not swallow the next record: start on a line of our own
    torn = path.exists() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
    with open(path, "a") as f:
        if torn:
            f.write("\n")
        for rec in records:
            f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines log; a line cut short by a crash (the last one) is skipped
    with a warning naming the file."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}: line {i} is not complete JSON (a write cut short?); skipped", stacklevel=2)
    return out


# --- temp files a killed writer left (atomic_write's ".{name}.{pid}.{uuid}.tmp") ----------------

_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{12}\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove the temp files of ``atomic_write`` calls whose process is gone, in ``directory``
    and its sub-directories one level down (a run's ``checkpoints/``); return them. A temp file
    of a live process is left alone: a reader such as ``analyze`` may be writing its figures
    into the run while it trains. Called by the writer that has just taken the directory's lock."""
    directory = Path(directory)
    removed = []
    for d in [directory, *(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink())]:
        for f in d.iterdir():
            m = _TEMP_RE.match(f.name)
            if m and f.is_file() and not _pid_alive(int(m.group(1))):
                try:
                    f.unlink()
                    removed.append(f)
                except FileNotFoundError:
                    pass
    return removed
