"""Checkpoints made by other tools, read without running any code from them.

``load_hooked_transformer`` loads one legacy HookedTransformer state dict as mechgrok's TL 4
model. ``import_run`` turns a checkpoint series (a state dict, a folder of per-step state
dicts, or a TransformerLens Grokking-demo bundle) into a normal run directory, so every
command works on it.

Reading never runs code from the file: torch.load(weights_only=True), with every class the
pickle names that torch does not allow replaced by an inert ForeignObject registered under that
name, so a pickled config object becomes plain data and a malicious __reduce__ only records its
arguments.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import fields
from dataclasses import replace as dc_replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import RunConfig, TrainConfig
from .evaluation import loss_and_accuracy_on
from .files import read_tensors, save_tensors, write_csv, write_json
from .model import ModelConfig, check_params, infer_config, param_shapes, to_tl_model, weight_sq
from .provenance import versions
from .runs import METRIC_COLUMNS, Run, check_new_run_dir, checkpoint_path, write_metrics
from .tasks import Task, TaskConfig


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
               act_fn: str | None = None, split=None, step: int | None = None, progress: bool = True) -> Run:
    """Turn a checkpoint series trained elsewhere into the run directory ``out`` and return it.

    ``src`` is a folder of per-step HookedTransformer state dicts (``read_checkpoint_folder``),
    one HookedTransformer state dict (``.pth``/``.pt``/``.safetensors``; a
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
    and ``source_losses.csv`` (the bundle's own per-step losses, when it has them); draws no
    figures (``report.draw_figures``). Never runs code from ``src``; every failure is a one-line
    ``ForeignFileError``."""

    src, out = Path(src), Path(out)
    check_new_run_dir(out)
    source = str(src)
    contents, notes = (None, []) if src.is_dir() else read_foreign(src)
    if src.is_dir():  # a folder of per-step state dicts: every file through the single-file reader
        if step is not None:
            raise ForeignFileError(f"{source}: a folder's steps come from its file names; drop --step")
        fmt = "folder of HookedTransformer state dicts"
        series, notes = read_checkpoint_folder(src)
        losses, foreign_cfg, test_given = {}, None, None
    elif isinstance(contents, dict) and "checkpoints" in contents:
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
        tr = loss_and_accuracy_on(sd, mcfg_resolved, task.train_inputs, task.train_labels)
        te = loss_and_accuracy_on(sd, mcfg_resolved, task.test_inputs, task.test_labels)
        rows.append(dict(zip(METRIC_COLUMNS, (s, tr[0], te[0], tr[1], te[1], weight_sq(sd)))))
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
        write_csv(out / "source_losses.csv", table)
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
    return Run(out)


# --- a folder of per-step checkpoints ----------------------------------------------------------

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """One HookedTransformer state dict from a file, as a single-file import reads it
    (``read_foreign``, then ``_state_dict``): never runs code from it; ``(tensors, notes)``."""
    contents, notes = read_foreign(path)
    return _state_dict(contents, str(path)), notes


def read_checkpoint_folder(src: str | os.PathLike) -> tuple[dict[int, dict[str, torch.Tensor]], list[str]]:
    """The checkpoint series in a folder of ``.pt``/``.pth``/``.safetensors`` HookedTransformer
    state dicts (``step_100.pt``, ``step_0000200.safetensors``, ``ckpt-300.pth``, ...): step ->
    tensors, each file read by ``read_state_dict``; the step is the last number in the file's
    name (an epoch count in the name is taken as a step: pass steps, not epochs). Other files
    and subfolders are left alone. Returns ``(series, notes)``; a file without a number, two
    files with one step, or a folder without checkpoints is a one-line ``ForeignFileError``."""
    src = Path(src)
    files = sorted(f for f in src.iterdir() if f.is_file() and f.suffix in CHECKPOINT_SUFFIXES)
    if not files:
        raise ForeignFileError(f"{src}: no {'/'.join(CHECKPOINT_SUFFIXES)} files in this folder")
    by_step: dict[int, Path] = {}
    for f in files:
        numbers = re.findall(r"\d+", f.stem)
        if not numbers:
            raise ForeignFileError(f"{f}: no step in the file name (a folder import reads the step from names "
                                   f"like step_1000{f.suffix}); rename it or move it out of {src}")
        step = int(numbers[-1])
        if step in by_step:
            raise ForeignFileError(f"{src}: {by_step[step].name} and {f.name} are both step {step}; keep one")
        by_step[step] = f
    series, notes = {}, [f"{len(by_step)} files in {src.name}/, steps from the file names "
                         f"({min(by_step)}..{max(by_step)})"]
    for step in sorted(by_step):
        series[step], file_notes = read_state_dict(by_step[step])
        notes += [n for n in file_notes if n not in notes]
    return series, notes

