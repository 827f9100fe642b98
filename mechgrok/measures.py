"""One protocol for anything computed during training or over a checkpoint series.

A measure is a function of one checkpoint that returns columns::

    @mg.measures.measure(prefix="embed_", every=10)
    def embed_sum(ctx: MeasureContext) -> dict[str, float]:
        return {"sum": float(ctx.params["embed.W_E"].sum())}      # column "embed_sum"

    mg.train(cfg, "runs/x", measures=[embed_sum, "hessian+agreement"])   # rows in dynamics.csv
    mg.measures.measure_series(run, ["weight_norm", "mypkg.mod:embed_sum"])  # one row per checkpoint

``ctx`` (``MeasureContext``) carries the step, the weights (detached), the resolved
``ModelConfig``, the ``Task``, the ``RunConfig`` (None where there is none) and the optimizer's
first moment by parameter name (None where none is kept). A measure that keeps state between
calls (the Hessian probe warm-starts its power iteration) is made per run by a factory
``make(run_config) -> measure``, marked with ``@measure(factory=True)``: each run, and each
ensemble member, gets its own.

``resolve`` is the one parser of what names a measure: a callable, a built-in name
(``BUILTIN``; names of the optimizer-dynamics measures may be joined with "+", so they share
their gradients), an import spec ``"package.module:function"`` or ``"path/to/file.py:function"``,
or the ``--probe`` spec ``every=N[,measures=hessian+agreement+momentum+rank][,iters=2][,rank_n=16]``.
Nothing is registered at import time: a user's measure is found by its spec.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

import pandas as pd
from tqdm.auto import tqdm

from .config import RunConfig
from .dynamics import MEASURES as DYNAMICS  # the optimizer-dynamics measures, one built-in each
from .dynamics import check_measures, check_probe_args
from .model import ModelConfig, Params
from .tasks import Task


@dataclass(frozen=True)
class MeasureContext:
    """What a measure sees of one checkpoint."""

    step: int
    params: Params
    cfg: ModelConfig
    task: Task
    run_config: RunConfig | None = None
    exp_avg: Params | None = None


Measure = Callable[[MeasureContext], Mapping[str, float]]


def measure(fn: Callable | None = None, *, name: str | None = None, prefix: str = "", every: int | None = None,
            factory: bool = False):
    """Mark a function as a measure: ``name`` (default: the function's), ``prefix`` prepended
    to each returned key to make its column, ``every`` (steps between calls during training,
    unless the caller gives ``measure_every``). ``factory=True``: the function is
    ``make(run_config) -> measure`` (stateful measures). Usable bare (``@measure``) or called."""
    def mark(f):
        f.measure_name = name or getattr(f, "__name__", type(f).__name__)
        f.measure_prefix = prefix
        f.measure_every = every
        f.measure_factory = factory
        return f
    return mark(fn) if fn is not None else mark


@dataclass(frozen=True)
class MeasureSpec:
    """A resolved measure: ``make(run_config)`` returns the measure for one run (a new one per
    run for stateful measures); columns are ``prefix + key``."""

    name: str
    make: Callable[[RunConfig | None], Measure] = field(repr=False)
    prefix: str = ""
    every: int | None = None
    every_fixed: bool = False  # a --probe spec's every=N is the caller's own, not a default

    def columns(self, values: Mapping[str, float]) -> dict[str, float]:
        return {f"{self.prefix}{k}": float(v) for k, v in dict(values).items()}


# --- built-in measures ---------------------------------------------------------------------




def _dynamics(measures: Sequence[str] = DYNAMICS, **kw) -> Callable[[RunConfig | None], Measure]:
    """A factory of the optimizer-dynamics probe (``dynamics.make_probe``) as a measure."""
    def make(run_config):
        from .dynamics import make_probe

        state: dict = {}

        def probe_measure(ctx: MeasureContext):
            if "probe" not in state:
                state["probe"] = (make_probe(run_config, ctx.task, measures, **kw) if run_config is not None
                                  else make_probe(ctx.cfg, ctx.task, measures, **kw))
            return state["probe"](ctx.step, ctx.params, ctx.exp_avg)
        return probe_measure
    return make


def weight_norm(ctx: MeasureContext) -> dict[str, float]:
    """The sum of squared weights and its square root."""
    from .model import weight_sq

    s = weight_sq(ctx.params)
    return {"weight_sq": s, "weight_norm": math.sqrt(s)}


def losses(ctx: MeasureContext) -> dict[str, float]:
    """Train/test loss and accuracy of a forward over every example (``evaluation.split_metrics``)."""
    import torch

    from .evaluation import split_metrics
    from .model import forward

    with torch.no_grad():
        device = next(iter(ctx.params.values())).device
        logits = forward(ctx.params, ctx.cfg, ctx.task.inputs.to(device))
    return split_metrics(logits, ctx.task)


def weight_statistics(ctx: MeasureContext) -> dict[str, float]:
    """The 14 weight statistics of Hu et al. (``weight_statistics.weight_statistics``)."""
    from .weight_statistics import STATISTICS
    from .weight_statistics import weight_statistics as stats

    row = stats({k: v.detach().cpu()[None] for k, v in ctx.params.items()}, ctx.cfg.n_layers)
    return {k: float(row[k].iloc[0]) for k in STATISTICS}


def fourier_sparsity(ctx: MeasureContext) -> dict[str, float]:
    """Gini sparsity of the W_E and W_L frequency spectra (``progress.spectrum_gini``); no
    columns for a task without a Fourier basis (``fourier.fourier_unsupported``)."""
    from .fourier import fourier_unsupported
    from .progress import weight_measures

    if fourier_unsupported(ctx.task) is not None:
        return {}
    m = weight_measures(ctx.params, ctx.cfg, ctx.task)
    return {"gini_W_E": m["gini_W_E"], "gini_W_L": m["gini_W_L"]}


def _plain(fn: Measure) -> Callable[[RunConfig | None], Measure]:
    return lambda run_config: fn


BUILTIN: Mapping[str, MeasureSpec] = MappingProxyType(
    {name: MeasureSpec(name, _dynamics((name,))) for name in DYNAMICS}
    | {"dynamics": MeasureSpec("dynamics", _dynamics(DYNAMICS)),
       "weight_norm": MeasureSpec("weight_norm", _plain(weight_norm)),
       "losses": MeasureSpec("losses", _plain(losses)),
       "weight_statistics": MeasureSpec("weight_statistics", _plain(weight_statistics)),
       "fourier": MeasureSpec("fourier", _plain(fourier_sparsity))})


def dynamics_measure(measures: Sequence[str] = DYNAMICS, every: int | None = None, **kw) -> MeasureSpec:
    """The optimizer-dynamics measures ``measures`` as one measure (they share the first
    Hessian-vector product's half gradients); ``kw``: ``dynamics.make_probe``'s keywords."""
    measures = check_measures(measures)
    check_probe_args(**kw)  # now, not at the first probe many steps into a run
    return MeasureSpec("+".join(measures), _dynamics(measures, **kw), every=every)


# --- the parser ----------------------------------------------------------------------------


def parse_probe(spec: str) -> dict:
    """``every=10[,measures=hessian+agreement+momentum+rank][,iters=2][,rank_n=16]`` -> kwargs
    (``every`` plus ``dynamics.make_probe``'s keywords)."""
    def count(key: str, value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--probe {key}={value}: {key} must be an integer >= 1")
        return n

    out: dict = {}
    for part in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ValueError(f"--probe: expected key=value, got {part!r} (e.g. every=10,measures=hessian+agreement)")
        if key == "every":
            out["every"] = count(key, value)
        elif key == "measures":
            out["measures"] = check_measures(value.replace("+", " ").replace(";", " ").split())
        elif key in ("iters", "hessian_iters"):
            out["hessian_iters"] = count(key, value)
        elif key == "rank_n":
            out["rank_n"] = count(key, value)
        else:
            raise ValueError(f"--probe: unknown key {key!r}; allowed: every, measures, iters, rank_n")
    if "every" not in out:
        raise ValueError("--probe needs every=N with N >= 1")
    return out


def _load_object(spec: str):
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise ValueError(f"measure {spec!r}: not a built-in ({', '.join(BUILTIN)}), nor 'package.module:function' "
                         f"nor 'file.py:function'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"measure {spec!r}: no such file {path}")
        mod_spec = importlib.util.spec_from_file_location(f"mechgrok_user_measure_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:
            raise ValueError(f"measure {spec!r}: importing {path} failed ({type(e).__name__}: {e})") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ValueError(f"measure {spec!r}: cannot import {target} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"measure {spec!r}: {target} has no function {attr!r}")
    return fn


def resolve(spec: str | Callable | MeasureSpec) -> MeasureSpec:
    """The one parser: a ``MeasureSpec`` from a callable (a measure, or a factory marked
    ``@measure(factory=True)``), a built-in name (``BUILTIN``; dynamics names joined by "+"),
    a ``--probe`` spec (``every=N,...``), or an import spec (``pkg.mod:fn``, ``file.py:fn``)."""
    if isinstance(spec, MeasureSpec):
        return spec
    if callable(spec):
        fn = spec
    elif isinstance(spec, str):
        text = spec.strip()
        if text in BUILTIN:
            return BUILTIN[text]
        if "=" in text and ":" not in text:
            kw = parse_probe(text)
            every = kw.pop("every")
            return replace(dynamics_measure(**kw), every=every, every_fixed=True)
        if "+" in text and ":" not in text:
            return dynamics_measure(text.split("+"))
        fn = _load_object(text)
    else:
        raise ValueError(f"a measure is a callable or a spec string, got {type(spec).__name__}")
    name = getattr(fn, "measure_name", getattr(fn, "__name__", type(fn).__name__))
    make = fn if getattr(fn, "measure_factory", False) else _plain(fn)
    return MeasureSpec(name, make, getattr(fn, "measure_prefix", ""), getattr(fn, "measure_every", None))


def resolve_all(specs) -> list[MeasureSpec]:
    if specs is None:
        return []
    if isinstance(specs, (str, MeasureSpec)) or callable(specs):
        specs = [specs]
    return [resolve(s) for s in specs]


# --- during training -----------------------------------------------------------------------


Probe = Callable[[int, Params, "Params | None"], dict]


def training_probe(run_config: RunConfig, measures=None, measure_every: int | None = None,
                   probe: Probe | None = None, probe_every: int = 100) -> tuple[Probe | None, int]:
    """What the trainers call: ``(probe(step, params, exp_avg) -> row, every)`` for one run,
    running ``probe`` (a raw probe, at multiples of ``probe_every``) and each measure (at
    multiples of ``measure_every``, else its own ``every``, else ``probe_every``; a ``--probe``
    spec's ``every=N`` always holds); the trainer
    calls it at multiples of the greatest common divisor. (None, probe_every) when there is
    nothing to run."""
    specs = resolve_all(measures)
    if not specs:
        return probe, probe_every
    if measure_every is not None and measure_every < 1:
        raise ValueError(f"measure_every must be >= 1, got {measure_every}")
    task = Task(run_config.task)
    mcfg = run_config.model.resolve(task)
    runs = [(s, s.make(run_config), s.every if s.every_fixed else measure_every or s.every or probe_every)
            for s in specs]
    every = math.gcd(*[e for _, _, e in runs], *([probe_every] if probe is not None else []))

    def combined(step: int, params: Params, exp_avg: Params | None = None) -> dict:
        row: dict = {}
        if probe is not None and step % probe_every == 0:
            row |= dict(probe(step, params, exp_avg))
        ctx = MeasureContext(step, {k: v.detach() for k, v in params.items()}, mcfg, task, run_config, exp_avg)
        for spec, fn, e in runs:
            if step % e == 0:
                row |= spec.columns(fn(ctx))
        return row
    return combined, every


# --- over a checkpoint series --------------------------------------------------------------


def measure_series(run, measures, steps: Sequence[int] | None = None, progress: bool = False,
                   device=None) -> pd.DataFrame:
    """The measures at ``run``'s checkpoints (default: all), one row per step (column ``step``,
    then each measure's columns). ``ctx.exp_avg`` is the optimizer's first moment where the run
    kept it for that step (``runs.read_optimizer_state``: ``keep_moments`` files, or the resume
    state for the newest checkpoint), None elsewhere."""
    from .runs import read_optimizer_state

    specs = resolve_all(measures)
    if not specs:
        raise ValueError("measure_series: no measures given")
    steps = run.steps if steps is None else list(steps)
    if not steps:
        raise ValueError(f"{run.path}: no checkpoints to measure")
    fns = [(s, s.make(run.config)) for s in specs]
    rows = []
    for step in tqdm(steps, desc=f"measures {run.path.name}", unit="ckpt", disable=not progress,
                     dynamic_ncols=True):
        params = run.params(step, device=device)
        state = read_optimizer_state(run, step)
        exp_avg = {k: st["exp_avg"].to(params[k].device) for k, st in (state or {}).items() if "exp_avg" in st} or None
        ctx = MeasureContext(step, params, run.model_cfg, run.task, run.config, exp_avg)
        row = {"step": step}
        for spec, fn in fns:
            row |= spec.columns(fn(ctx))
        rows.append(row)
    return pd.DataFrame(rows)


def add_columns(table: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``extra``'s columns joined on ``step``. A column both have is kept once
    when the values agree (the same quantity, e.g. ``weight_sq``), and fails, naming it, when
    they do not."""
    import numpy as np

    both = table[["step"]].merge(extra, on="step", how="left")
    for c in [c for c in extra.columns if c != "step" and c in table.columns]:
        if not np.allclose(both[c].to_numpy(float), table[c].to_numpy(float), rtol=1e-6, equal_nan=True):
            raise ValueError(f"measure column {c!r} is already in the table with other values; give the measure "
                             f"a prefix")
        extra = extra.drop(columns=c)
    out = table.merge(extra, on="step", how="left")
    out.attrs.update(table.attrs)
    return out


# --- the built-in series ---------------------------------------------------------------------

# the built-in measures that need no Fourier basis (what `mechgrok analyze` writes for a task without one)
GENERIC = ("losses", "weight_norm", "weight_statistics")


def generic_series(run, steps: list[int] | None = None, progress: bool = True, device=None) -> pd.DataFrame:
    """The measures that need no Fourier basis (``GENERIC``) at every checkpoint of ``run`` (or
    ``steps``): ``step``, train/test loss and accuracy of a forward over every example,
    ``weight_sq`` and ``weight_norm``, and the 14 statistics of
    ``weight_statistics.weight_statistics``. Any task: a table (``op="table"``), parity, or a
    modular one. ``table.attrs["fourier"]`` is whether the Fourier measures
    (``progress.measure_run``) apply; if not, ``attrs["note"]`` says why."""
    from .fourier import fourier_unsupported

    table = measure_series(run, GENERIC, steps=steps, progress=progress, device=device)
    note = fourier_unsupported(run.task)
    table.attrs.update(fourier=note is None, note=note)
    return table


def dynamics_series(run, steps: Sequence[int] | None = None, measures: Sequence[str] = DYNAMICS,
                    hessian_iters: int = 20, rank_n: int = 128, split: str = "train", seed: int = 0,
                    progress: bool = True) -> pd.DataFrame:
    """The optimizer-dynamics measures at ``run``'s checkpoints (default: all), one row per
    step, with ``dynamics.make_probe``'s columns. Momentum comes only where the run kept the
    optimizer's state (``runs.read_optimizer_state``; NaN elsewhere). The power iteration is
    warm-started from each checkpoint's vector to the next (``hessian_iters`` is the cap per
    checkpoint, with tol 1e-3)."""
    spec = dynamics_measure(check_measures(measures), hessian_iters=hessian_iters, first_iters=hessian_iters,
                            rank_n=rank_n, split=split, seed=seed)
    return measure_series(run, [spec], steps=steps, progress=progress)
