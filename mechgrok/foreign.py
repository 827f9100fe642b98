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
from dataclasses import dataclass, field, fields
from dataclasses import replace as dc_replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import RunConfig, TrainConfig
from .evaluation import LOSS_RTOL, loss_and_accuracy_on, loss_disagrees
from .files import check_tensors, read_tensors, save_tensors, write_csv, write_json
from .model import ModelConfig, check_params, infer_config, param_shapes, to_tl_model, weight_sq
from .provenance import versions
from .runs import Run, check_new_run_dir, checkpoint_path, write_metrics
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
    check_tensors(sd, source, floating=True)
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


class _SelfReference(Exception):
    """Raised inside ``_as_data`` when a container holds itself; ``read_foreign`` names the file."""


def _as_data(obj, _open: set[int] | None = None):
    """Plain data: a ForeignObject becomes a dict with its class name under "__class__".
    A container that holds itself (pickle allows cycles) cannot become plain data: raises
    ``_SelfReference`` instead of recursing for ever."""
    if not isinstance(obj, (ForeignObject, dict, list, tuple)):
        return obj
    _open = set() if _open is None else _open  # the containers being converted, outermost first
    if id(obj) in _open:
        raise _SelfReference(type(obj).__name__ if not isinstance(obj, ForeignObject) else obj.pickled_name)
    _open.add(id(obj))
    try:
        if isinstance(obj, ForeignObject):
            state = _as_data(obj.state, _open)
            if isinstance(state, dict) and not obj.args:
                return {"__class__": obj.pickled_name, **state}
            return {"__class__": obj.pickled_name, "args": _as_data(list(obj.args), _open), "state": state}
        if isinstance(obj, dict):
            return {k: _as_data(v, _open) for k, v in obj.items()}
        return type(obj)(_as_data(v, _open) for v in obj)
    finally:
        _open.discard(id(obj))


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
    try:
        return _as_data(contents), notes
    except _SelfReference as e:
        raise ForeignFileError(f"{path}: holds a {e} that contains itself, which no checkpoint does; "
                               f"not imported") from None
    except RecursionError:
        raise ForeignFileError(f"{path}: its objects are nested too deeply to be a checkpoint; not imported") from None


def _read_split(split, source: str, what: str = "train_indices") -> tuple[int, ...]:
    """Train indices from a sequence/tensor, or a file: a JSON list, a JSON object with
    ``train_indices``/``train_idx``, or integers separated by commas or whitespace. ``what``:
    the bundle key it came from, for the one-line error when it holds something else."""
    if not isinstance(split, (str, os.PathLike)):
        if isinstance(split, dict):  # a pickled object of some class, read as data
            kind = split.get("__class__", "dict")
            raise ForeignFileError(f"{source}: {what} holds a {kind} object, not a list of integers; pass the "
                                   f"split with --split FILE")
        try:
            values = torch.as_tensor(split)
        except (TypeError, ValueError, RuntimeError):
            values = None
        if values is None or values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
            raise ForeignFileError(f"{source}: {what} must be a list of integers (example indices), got "
                                   f"{type(split).__name__}{'' if values is None else f' of {values.dtype}'}; "
                                   f"pass the split with --split FILE")
        return tuple(int(i) for i in values.flatten().tolist())
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
    try:
        check_tensors(sd, source, floating=True)  # before .float(): an integer tensor is not weights
    except ValueError as e:
        raise ForeignFileError(str(e)) from None
    return {k: v.detach().float().contiguous() for k, v in sd.items()}


def import_run(src: str | os.PathLike, out: str | os.PathLike, op: str | None = None, p: int | None = None,
               act_fn: str | None = None, split=None, step: int | None = None, progress: bool = True,
               accept_mismatch: bool = False) -> Run:
    """Turn a checkpoint series trained elsewhere into the run directory ``out`` and return it.

    ``src`` is a folder of per-step HookedTransformer state dicts (``read_checkpoint_folder``),
    one HookedTransformer state dict (``.pth``/``.pt``/``.safetensors``; a
    ``{"model": state_dict, ...}`` bundle works too; ``step``: the step it was taken at,
    default 0) or a TransformerLens Grokking-demo bundle (a ``.pth`` holding ``checkpoints``,
    ``checkpoint_epochs``, and optionally ``model``, ``config``, ``train_losses``,
    ``test_losses``, ``train_indices``, ``test_indices``). The TL demo saves epoch ``e``'s
    weights after its update (``e + 1`` optimiser steps: step ``e + 1``); other bundles save
    them before it (step ``e``). The bundle's own losses decide which (the convention under
    which the re-evaluated losses agree); a note says which, and ``imported.epoch_convention``
    in config.json keeps it. Without losses the demo's is assumed.

    ``op`` (default ``add``, the demo's task), ``p`` (default: the unembedding's width) and
    ``act_fn`` (default: the bundle config's, else ``relu``) say what the weights compute.
    ``split``: the train indices (rows of mechgrok's a-major example table), as a sequence or
    a file (JSON list, or integers separated by commas/whitespace); default the bundle's
    ``train_indices``. Without any, mechgrok's seeded split is used and a note says so.

    When the re-evaluated losses disagree with the bundle's beyond the tolerance
    (``evaluation.loss_disagrees``) under either convention, the weights do not compute
    what ``op``/``p``/``split`` assume and nothing is written: a ``ForeignFileError`` names the
    worst loss and the likely cause; ``accept_mismatch`` imports anyway (a note records it).

    Writes ``config.json`` (the split in ``task.train_idx``; what was read and assumed under
    ``imported``), ``checkpoints/``, ``metrics.csv`` (each checkpoint evaluated on the split),
    and ``source_losses.csv`` (the bundle's own per-step losses, when it has them); draws no
    figures (``report.draw_figures``). Never runs code from ``src``; every failure is a one-line
    ``ForeignFileError``; weights holding NaN/inf or integers are refused (``files.check_tensors``)."""
    src, out = Path(src), Path(out)
    check_new_run_dir(out)
    series = _read_series(src, step)
    notes = series.notes
    split_name = "the split"
    if split is None and series.train_indices is not None:
        split, split_name = series.train_indices, "train_indices"  # the bundle's own
    op, act_fn = _assumed_op_and_act_fn(op, act_fn, series.config, notes)
    try:  # a ValueError/TypeError of the task's or model's own checks, as one line naming the file
        task = _resolve_task(series, op, p, split, split_name, notes)
        mcfg, resolved = _resolve_model(series, act_fn, task, notes)
    except (ValueError, TypeError) as e:
        raise ForeignFileError(e if isinstance(e, ForeignFileError) else f"{src}: {_one_line(e)}") from None
    # every checkpoint evaluated once, before anything is written: where the checkpoints sit
    # (the epoch convention) and whether the file was read as what it is both depend on it
    evals = _evaluate(series.weights, resolved, task, f"import {src.name}", progress)
    table = _source_loss_table(series.losses) if series.losses else None
    reading = f"op {op}, p {task.cfg.p}, the split from {split_name if split is not None else 'mechgrok seed 0'}"
    steps_of, convention = _place_on_steps(series, evals, table, step, reading, accept_mismatch, notes)
    _write_run(out, series, task.cfg, mcfg, steps_of, evals, table, convention)
    return Run(out)


@dataclass
class _ForeignSeries:
    """What a foreign file or folder holds, read as data and before anything is assumed about
    the task: the weights in the source's order, each with the name errors give it."""

    src: Path
    fmt: str  # "imported.format" in config.json
    weights: list[dict[str, torch.Tensor]]  # a bundle's checkpoints, then its final model when new
    labels: list[str]  # one per weights entry: "step 100", "checkpoints[2]", "model", "weights"
    notes: list[str]  # what reading it noticed; the import's later steps add theirs
    epochs: list[int] | None = None  # a bundle's checkpoint_epochs (placed on steps by the convention)
    folder_steps: list[int] | None = None  # a folder's steps, from its file names
    losses: dict[str, list[float]] = field(default_factory=dict)  # a bundle's train_losses/test_losses
    final_step: int | None = None  # the step of a bundle's final model, when it is among the weights
    config: dict = field(default_factory=dict)  # the source's own config, as data ({} without one)
    train_indices: object = None  # a bundle's split, as stored
    test_indices: object = None


def _read_series(src: Path, step: int | None) -> _ForeignSeries:
    """The source read as a folder of per-step state dicts, a Grokking-demo bundle, or one state dict."""
    if src.is_dir():  # a folder of per-step state dicts: every file through the single-file reader
        if step is not None:
            raise ForeignFileError(f"{src}: a folder's steps come from its file names; drop --step")
        by_step, notes = read_checkpoint_folder(src)
        steps = sorted(by_step)
        return _ForeignSeries(src, "folder of HookedTransformer state dicts", [by_step[s] for s in steps],
                              [f"step {s}" for s in steps], notes, folder_steps=steps)
    contents, notes = read_foreign(src)
    if isinstance(contents, dict) and "checkpoints" in contents:
        return _read_bundle(src, contents, notes)
    weights = [_state_dict(contents, str(src))]
    config = contents.get("config") if isinstance(contents, dict) else None
    return _ForeignSeries(src, "HookedTransformer state dict", weights, ["weights"], notes,
                          config=config if isinstance(config, dict) else {})


def _read_bundle(src: Path, contents: dict, notes: list[str]) -> _ForeignSeries:
    """A TransformerLens Grokking-demo bundle: its checkpoints with their epochs, its losses,
    its final model (when it is not just the last checkpoint again), config and split."""
    source = str(src)
    missing = [k for k in BUNDLE_REQUIRED if k not in contents]
    if missing:
        raise ForeignFileError(f"{source}: a Grokking-demo bundle needs {', '.join(missing)} next to "
                               f"'checkpoints'")
    ckpts, epochs = contents["checkpoints"], contents["checkpoint_epochs"]
    epochs = epochs.tolist() if isinstance(epochs, torch.Tensor) else list(epochs)
    if not isinstance(ckpts, list) or len(ckpts) != len(epochs):
        raise ForeignFileError(f"{source}: 'checkpoints' must be a list as long as 'checkpoint_epochs' "
                               f"({len(epochs)})")
    epochs = [int(e) for e in epochs]
    weights = [_state_dict(sd, f"{source} checkpoints[{i}]") for i, sd in enumerate(ckpts)]
    labels = [f"checkpoints[{i}]" for i in range(len(ckpts))]
    losses = {k: [float(v) for v in contents[k]] for k in ("train_losses", "test_losses")
              if isinstance(contents.get(k), (list, tuple, torch.Tensor))}
    n_steps = max(len(v) for v in losses.values()) if losses else None
    final_step = None
    if isinstance(contents.get("model"), dict) and (n_steps is not None or not weights):
        # the final weights: after the last epoch (len(train_losses) steps), if not saved already
        weights.append(_state_dict(contents["model"], f"{source} model"))
        labels.append("model")
        final_step = n_steps or 0
    if not weights:
        raise ForeignFileError(f"{source}: the bundle holds no checkpoints")
    config = contents.get("config")
    return _ForeignSeries(src, "TransformerLens Grokking-demo bundle", weights, labels, notes, epochs=epochs,
                          losses=losses, final_step=final_step, config=config if isinstance(config, dict) else {},
                          train_indices=contents.get("train_indices"), test_indices=contents.get("test_indices"))


def _assumed_op_and_act_fn(op: str | None, act_fn: str | None, config: dict, notes: list[str]) -> tuple[str, str]:
    """``op`` and ``act_fn`` as given, else the demo's add and the source config's (or relu) act_fn, noted."""
    if op is None:
        op = "add"
        notes.append("op not given: assumed add (the TL Grokking demo's task)")
    if act_fn is None:
        act_fn = config.get("act_fn") if isinstance(config.get("act_fn"), str) else None
        if act_fn is None:
            act_fn = "relu"
            notes.append("act_fn not given and not in the file: assumed relu")
    return op, act_fn


def _resolve_task(series: _ForeignSeries, op: str, p: int | None, split, split_name: str,
                  notes: list[str]) -> Task:
    """The task the weights are read as: ``op``, its size from the weights' shapes (a ``p``
    that disagrees is an error), the split given (else mechgrok's seeded one, noted); a
    bundle's test_indices that are not the rest of the examples are noted."""
    first, source = series.weights[0], str(series.src)
    width = first["unembed.W_U"].shape[1]
    if op == "parity":
        task_kw = dict(op=op, n_bits=first["pos_embed.W_pos"].shape[0] - 1)
    else:
        if p is not None and p != width:
            raise ForeignFileError(f"{source}: --p {p} does not fit the weights: unembed.W_U has {width} "
                                   f"outputs (p = {width})")
        task_kw = dict(op=op, p=width)
    train_idx = _read_split(split, source, split_name) if split is not None else None
    if train_idx is None:
        notes.append("no split given: metrics use mechgrok's seeded split (frac 0.3, seed 0), not the "
                     "source's; pass a split file to analyse with the original one")
    task = Task(TaskConfig(**task_kw, train_idx=train_idx))
    if series.test_indices is not None:
        test_set = set(_read_split(series.test_indices, source, "test_indices"))
        if test_set != set(task.test_idx.tolist()):
            notes.append(f"test_indices in {series.src.name} are not all the examples outside train_indices: "
                         f"mechgrok tests on all {len(task.test_idx)} others")
    return task


def _resolve_model(series: _ForeignSeries, act_fn: str, task: Task,
                   notes: list[str]) -> tuple[ModelConfig, ModelConfig]:
    """The model config inferred from the first weights (seed from the source config), and it
    resolved on ``task``; every weights entry gets its missing biases as zeros (noted once)
    and is checked against that config's shapes. Returns ``(config, resolved)``."""
    mcfg = dc_replace(infer_config(series.weights[0], act_fn), seed=int(series.config.get("seed") or 0))
    resolved = mcfg.resolve(task)
    shapes = param_shapes(resolved)
    for i, sd in enumerate(series.weights):
        filled = [k for k, shape in shapes.items() if k not in sd and k.rsplit(".", 1)[-1].startswith("b_")]
        for k in filled:
            sd[k] = torch.zeros(shapes[k])
        if filled and i == 0:
            notes.append(f"biases missing in the source, filled with zeros: {', '.join(filled)}")
        check_params(sd, resolved, source=f"{series.src} ({series.labels[i]})")
    return mcfg, resolved


def _evaluate(weights: list[dict[str, torch.Tensor]], resolved: ModelConfig, task: Task, desc: str,
              progress: bool) -> list[dict[str, float]]:
    """Each weights entry's loss and accuracy on the task's train and test split, and its weight_sq."""
    evals = []
    for sd in tqdm(weights, desc=desc, unit="ckpt", disable=not progress, dynamic_ncols=True):
        tr = loss_and_accuracy_on(sd, resolved, task.train_inputs, task.train_labels)
        te = loss_and_accuracy_on(sd, resolved, task.test_inputs, task.test_labels)
        evals.append({"train_loss": tr[0], "test_loss": te[0], "train_acc": tr[1], "test_acc": te[1],
                      "weight_sq": weight_sq(sd)})
    return evals


def _place_on_steps(series: _ForeignSeries, evals: list[dict], table: pd.DataFrame | None, step: int | None,
                    reading: str, accept_mismatch: bool, notes: list[str]) -> tuple[list[int], str | None]:
    """The step of each weights entry, and the epoch convention that placed them (None unless a
    bundle). A folder's steps are its file names', a single state dict's ``step`` (default
    0); a bundle's epochs sit where its own losses say (``_checked_convention``), or where the
    demo puts them when it has none."""
    if series.epochs is None:
        return (series.folder_steps if series.folder_steps is not None else [int(step or 0)]), None
    if table is not None:
        convention = _checked_convention(series, evals, table, reading, accept_mismatch, notes)
    else:
        convention = "after"
        notes.append("no losses in the bundle to tell where its checkpoints sit: assumed after their epoch's "
                     "update (epoch e -> step e + 1, as the TL demo saves them)")
    offset = EPOCH_CONVENTIONS[convention]
    final = [series.final_step] if series.final_step is not None else []
    return [e + offset for e in series.epochs] + final, convention


def _checked_convention(series: _ForeignSeries, evals: list[dict], table: pd.DataFrame, reading: str,
                        accept_mismatch: bool, notes: list[str]) -> str:
    """The bundle's epoch convention (``_epoch_convention``), noted with how well each one
    reproduces its losses. Losses beyond the tolerance even so mean the weights were read as
    the wrong task or split (``reading``: what they were read as): a ``ForeignFileError``,
    unless ``accept_mismatch`` (then noted)."""
    final = (series.final_step, evals[-1]) if series.final_step is not None else None
    convention, diffs = _epoch_convention(series.epochs, evals[:len(series.epochs)], final, table)
    chosen, other = diffs[convention], diffs["before" if convention == "after" else "after"]
    how = {"after": "after their epoch's update (epoch e -> step e + 1, as the TL demo saves them)",
           "before": "before their epoch's update (epoch e -> step e)"}[convention]
    notes.append(f"checkpoints saved {how}: the bundle's own losses say so; re-evaluated losses vs the "
                 f"source's at the checkpoints: max relative difference train {_max_rel(chosen, 'train')}, "
                 f"test {_max_rel(chosen, 'test')} (the other convention: train {_max_rel(other, 'train')}, "
                 f"test {_max_rel(other, 'test')})")
    bad = chosen[chosen["out"]]
    if len(bad):
        w = bad.loc[bad["rel"].idxmax()]
        what = (f"{w['split']} loss at step {int(w['step'])}: {w['ours']:.4g} re-evaluated, {w['theirs']:.4g} "
                f"in the bundle (relative difference {w['rel']:.2g}; {len(bad)} of {len(chosen)} losses "
                f"beyond the tolerance {LOSS_RTOL:g})")
        if not accept_mismatch:
            raise ForeignFileError(
                f"{series.src}: the weights do not reproduce the bundle's own losses ({what}): read as {reading}"
                f", they were likely trained on another task or split: check --op, --p and --split "
                f"(the split's seed), or pass --accept-mismatch to import anyway")
        notes.append(f"imported despite a loss mismatch (--accept-mismatch): {what}")
    return convention


# Where a Grokking-demo bundle's checkpoint of epoch e sits: "after" its epoch's update (step
# e + 1, as the TL demo saves them) or "before" it (step e, as variants that save at the top of
# the loop do). The bundle's own losses say which (``_epoch_convention``).
EPOCH_CONVENTIONS = {"after": 1, "before": 0}


def _source_loss_table(losses: dict[str, list[float]]) -> pd.DataFrame:
    """The bundle's losses by the step of the weights they were computed on: train_losses[e]
    before epoch e's update (the weights of step e), test_losses[e] after it (step e + 1)."""
    n = max(len(v) for v in losses.values())
    tr_l, te_l = losses.get("train_losses", []), losses.get("test_losses", [])
    return pd.DataFrame({"step": range(n + 1),
                         "train_loss": [tr_l[s] if s < len(tr_l) else float("nan") for s in range(n + 1)],
                         "test_loss": [te_l[s - 1] if 0 < s <= len(te_l) else float("nan") for s in range(n + 1)]})


def _loss_differences(steps: list[int], evals: list[dict], table: pd.DataFrame) -> pd.DataFrame:
    """Our loss vs the source's at each (step, split) where the source has one."""
    theirs = table.set_index("step")
    rows = []
    for s, ev in zip(steps, evals):
        for split in ("train", "test"):
            t = theirs[f"{split}_loss"].get(s, float("nan"))
            if t == t:  # not NaN: the source has this loss
                ours = ev[f"{split}_loss"]
                rows.append({"step": s, "split": split, "ours": ours, "theirs": t,
                             "rel": abs(ours - t) / abs(t) if t else float("inf"),
                             "out": loss_disagrees(ours, t)})
    return pd.DataFrame(rows, columns=["step", "split", "ours", "theirs", "rel", "out"])


def _epoch_convention(epochs: list[int], evals: list[dict], final: tuple[int, dict] | None,
                      table: pd.DataFrame) -> tuple[str, dict[str, pd.DataFrame]]:
    """The convention (``EPOCH_CONVENTIONS``) under which the checkpoints' re-evaluated losses
    agree with the bundle's: fewest losses out of tolerance, then the smaller largest relative
    difference (the demo's "after" on a tie); with the comparisons of each convention."""
    diffs = {}
    for name, offset in EPOCH_CONVENTIONS.items():
        steps = [e + offset for e in epochs] + ([final[0]] if final else [])
        diffs[name] = _loss_differences(steps, evals + ([final[1]] if final else []), table)

    def badness(name):
        d = diffs[name]
        return (int(d["out"].sum()), float(d["rel"].max()) if len(d) else float("inf"), name != "after")

    return min(diffs, key=badness), diffs


def _max_rel(d: pd.DataFrame, split: str) -> str:
    rel = d.loc[d["split"] == split, "rel"]
    return f"{rel.max():.2g}" if len(rel) else "n/a"


def _write_run(out: Path, series: _ForeignSeries, task_cfg: TaskConfig, mcfg: ModelConfig, steps_of: list[int],
               evals: list[dict], table: pd.DataFrame | None, convention: str | None):
    """The run directory: a checkpoint and a metrics row per step (the first weights placed on
    a step win: a bundle's final model duplicates its last checkpoint under "after"),
    source_losses.csv when the source has losses, and config.json with what was read under
    ``imported``."""
    by_step: dict[int, tuple[dict, dict]] = {}
    for s, sd, ev in zip(steps_of, series.weights, evals):
        by_step.setdefault(s, (sd, ev))
    steps = sorted(by_step)
    every = min((b - a for a, b in zip(steps, steps[1:])), default=max(steps[-1], 1))
    train_cfg = TrainConfig(steps=max(steps[-1], 1), eval_every=every, checkpoint_every=every, device="cpu")
    model_cfg = dc_replace(mcfg, d_vocab=None, d_vocab_out=None, n_ctx=None)
    config = RunConfig(task=task_cfg, model=model_cfg, train=train_cfg)
    rows = []
    for s in steps:
        sd, ev = by_step[s]
        rows.append({"step": s} | ev)
        save_tensors(checkpoint_path(out, s), sd, metadata={"step": str(s)})
    write_metrics(out / "metrics.csv", rows)
    if table is not None:
        write_csv(out / "source_losses.csv", table)
    imported = {"source": str(series.src.resolve()), "format": series.fmt, "notes": series.notes,
                "source_config": json.loads(json.dumps(series.config, default=str)),
                "train_settings": "unknown: only steps and the checkpoint grid come from the source"}
    if convention is not None:
        imported["epoch_convention"] = convention
    write_json(out / "config.json", config.to_dict() | {"versions": versions(), "device": "cpu",
                                                        "imported": imported})


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

