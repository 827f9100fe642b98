"""Populations of runs: ensembles trained in one process, sweeps over settings x seeds, and the
population table of grokking statistics.

    pop = mg.load_population("sweeps/beta1")
    pop.table              # one row per member: settings, seed, transition metrics, final accuracies
    pop.summary("beta1")   # per value: n, grok rate, median/IQR of the delay, ...
    pop.run(0)             # an ordinary Run
"""

from __future__ import annotations

# --- the ensemble trainer ---
# The ensemble trainer lives in ensemble.py (Grokfast in grokfast.py); its API is re-exported here
# so that ``mechgrok.population`` holds everything about populations (hence the noqa).
from .ensemble import check_ensemble, ensemble_key, member_status, resume_ensemble, train_ensemble  # noqa: E402,F401


# --- sweeps and population tables ---
#
# A sweep is a grid (and/or a list of explicit settings) over config fields x seeds. Its members
# are grouped into chunks of members that can share one ensemble (``ensemble_key``); a chunk is
# the unit of work, trained in this process (backend "local") or as a Ray task (backend "ray").
# Sweep directory layout:
#
#     sweep.json          the sweep: base config, grid, settings, seeds, every member (id,
#                         settings, seed) and the fixed chunk plan
#     members/<id>/       one normal run directory per member (mg.load_run works on it)
#     finished.jsonl      one line per finished member, appended by the driver as chunks return:
#                         the manifest that ``--resume`` reads
#     members.csv         the members table (population table), rewritten after every chunk
#
# Only the driver writes sweep.json, finished.jsonl and members.csv; chunks write only their own
# members' directories, so Ray workers need the sweep directory on a shared filesystem.

import itertools
import json
import math
import os
import shutil
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .config import RunConfig, parse_seeds, resolve_device
from .ensemble import MEMBER_FILE, NEXT_RESUME_FILE
from .files import append_jsonl, read_jsonl, write_csv, write_json, write_text
from .locks import LOCK_FILE, lock_dir, lock_dirs
from .presets import CONFIG_PARTS, apply_overrides, parse_value
from .runs import CONFIG_FILE, MEMBERS_DIR, RESUME_FILE, SWEEP_FILE, Run, is_run_dir

MANIFEST_FILE = "finished.jsonl"
MEMBERS_TABLE = "members.csv"
RAY_INSTALL_HINT = ("the Ray backend needs Ray: pip install 'mechgrok[ray]' (or pip install 'ray>=2.9'); "
                    "--backend local runs the same sweep without it")


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _field_name(name: str) -> str:
    """An override's field name without its part: "train.steps" -> "steps"."""
    return name.rpartition(".")[2]


def _is_seed(name: str) -> bool:
    """Whether an override name is the member seed ``seed`` (or ``model.seed``-style spellings of it)."""
    return _field_name(name) == "seed"


def member_id(settings: dict[str, Any], seed: int) -> str:
    """Directory name of a member: its settings and seed, e.g. ``beta1=0.9_seed=3``."""
    parts = [f"{k}={_fmt(v)}" for k, v in settings.items()] + [f"seed={seed}"]
    return "_".join(parts).replace("/", "-").replace(" ", "")


# A member id names a directory under members/: one path component, never "." or "..", never
# hidden (it could then pass for a temp or lock file), no separators or control characters.
SAFE_ID = re.compile(r"(?!\.)[^/\\\x00-\x1f]{1,255}")


def _check_ids(spec: dict, source: Path, chunks: bool = True):
    """Fail with one line when ``sweep.json`` (``spec``) names a member id that is not a safe
    directory name, or (``chunks``) a chunk that names no member of the sweep."""
    members = spec.get("members")
    if not isinstance(members, list) or not all(isinstance(m, dict) and "id" in m for m in members):
        raise ValueError(f"{source}: 'members' must be a list of members with an 'id'")
    ids = [m["id"] for m in members]
    for i in ids:
        if not isinstance(i, str) or not SAFE_ID.fullmatch(i):
            raise ValueError(f"{source}: member id {i!r} is not a plain directory name (one path component, "
                             f"not starting with '.'); the file was edited or is not a mechgrok sweep")
    if not chunks:
        return
    known = set(ids)
    plan = spec.get("chunks")
    if not isinstance(plan, list) or not all(isinstance(c, list) for c in plan):
        raise ValueError(f"{source}: 'chunks' must be a list of lists of member ids")
    for n, chunk in enumerate(plan):
        bad = next((i for i in chunk if not isinstance(i, str) or i not in known), None)
        if bad is not None or not chunk:
            raise ValueError(f"{source}: chunk {n} names {bad!r}, not a member of the sweep; the file was "
                             f"edited or is not a mechgrok sweep")


@dataclass(frozen=True)
class Member:
    id: str
    settings: dict
    seed: int
    config: RunConfig


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: ``grid`` (field -> values; every combination) and/or ``settings`` (explicit
    dicts of field -> value), each run for every seed in ``seeds`` (a count or the seeds),
    starting from ``base`` with ``fixed`` (field -> value, e.g. ``stop_after_grok``) set on
    every member. Field names are those of ``presets.sweepable_fields`` (``presets.configure``'s); a
    member's seed goes to ``configure(seed=...)`` (split, init and batch order), which
    ``task_seed`` etc. in ``fixed`` or a setting override (the member's seed, in its id and
    row, is then that of the parts not overridden). ``seed`` itself is no grid or setting
    field; in ``fixed`` (``--set seed=S``) it is the sweep's one seed, as ``seeds=(S,)``.
    Every member's config is built and validated at construction: a bad value fails before
    anything trains, naming the field and the allowed values. ``chunk_size``: members per ensemble (one unit of work). ``probe``: a
    ``--probe`` spec (``every=10[,measures=...]``): every member writes optimizer-dynamics
    probes to its dynamics.csv as it trains. ``measures``: measure specs (``measures.resolve``:
    built-in names, ``"pkg.mod:fn"``, ``"file.py:fn"``), taken every ``measure_every`` steps
    into each member's dynamics.csv. Specs, not callables: a sweep's settings are plain data
    (sweep.json, Ray tasks)."""

    base: RunConfig
    grid: tuple[tuple[str, tuple], ...] = ()
    settings: tuple[dict, ...] = ()
    seeds: tuple[int, ...] = (0,)
    fixed: dict = field(default_factory=dict)
    chunk_size: int = 8
    probe: str | None = None
    measures: tuple[str, ...] = ()
    measure_every: int | None = None

    def __post_init__(self):
        from .measures import resolve

        object.__setattr__(self, "measures", (self.measures,) if isinstance(self.measures, str)
                           else tuple(self.measures))
        if not all(isinstance(m, str) for m in self.measures):
            raise ValueError("SweepConfig.measures takes spec strings ('pkg.mod:fn', 'file.py:fn', built-in names)")
        if self.measure_every is not None and int(self.measure_every) < 1:
            raise ValueError(f"SweepConfig.measure_every must be >= 1, got {self.measure_every}")
        for spec in ((self.probe,) if self.probe is not None else ()) + self.measures:
            resolve(spec)  # fails now, naming the bad key or spec, not after training
        grid = self.grid.items() if isinstance(self.grid, dict) else self.grid
        grid = tuple((name, tuple(parse_value(name, v, self.base) for v in values)) for name, values in grid)
        for name, values in grid:
            if not values:
                raise ValueError(f"sweep field {name}: no values given")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"sweep field {name}: a value is listed twice: {list(values)}")
            for v in values:  # each value alone first, so the message names the one that is bad
                apply_overrides(self.base, {name: v})
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "settings", tuple({k: parse_value(k, v, self.base) for k, v in s.items()}
                                                   for s in self.settings))
        object.__setattr__(self, "fixed", {k: parse_value(k, v, self.base) for k, v in dict(self.fixed).items()})
        seeds = (parse_seeds(self.seeds) if isinstance(self.seeds, (int, str)) and not isinstance(self.seeds, bool)
                 else tuple(int(s) for s in self.seeds))
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"SweepConfig.seeds must be a positive count or distinct integers, got {self.seeds}")
        # A member's seed is its id's, its row's and the one it trains with: a "seed" among the
        # swept settings would train with one seed under the name of another, so it is refused,
        # and a fixed one (--set seed=S) becomes the sweep's only seed.
        swept = next((k for k in [n for n, _ in grid] + [k for s in self.settings for k in s] if _is_seed(k)), None)
        if swept is not None:
            raise ValueError(f"sweep field {swept!r}: the seed is not a grid or setting field; give the seeds "
                             f"with --seeds (SweepConfig.seeds), e.g. --seeds 3-5")
        fixed_seed = next((k for k in self.fixed if _is_seed(k)), None)
        if fixed_seed is not None:
            value = int(self.fixed[fixed_seed])
            if len(seeds) > 1:
                raise ValueError(f"--set {fixed_seed}={value} gives every member seed {value}, but --seeds asks "
                                 f"for {len(seeds)} seeds {list(seeds)}: choose the seeds with --seeds alone")
            seeds = (value,)
            object.__setattr__(self, "fixed", {k: v for k, v in self.fixed.items() if k != fixed_seed})
        object.__setattr__(self, "seeds", seeds)
        if int(self.chunk_size) < 1:
            raise ValueError(f"SweepConfig.chunk_size must be >= 1, got {self.chunk_size}")
        ids = [m.id for m in self.members()]  # builds and validates every member's config
        dup = next((i for i in ids if ids.count(i) > 1), None)
        if dup:
            raise ValueError(f"sweep lists member {dup!r} twice (same settings and seed)")

    def points(self) -> list[dict]:
        """The settings of the sweep, without seeds: the grid's combinations, then ``settings``."""
        names = [n for n, _ in self.grid]
        combos = [dict(zip(names, vals)) for vals in itertools.product(*(v for _, v in self.grid))] if names else []
        return (combos + [dict(s) for s in self.settings]) or [{}]

    def members(self) -> list[Member]:
        return [Member(member_id(s, seed), s, seed, apply_overrides(self.base, {"seed": seed} | self.fixed | s))
                for s in self.points() for seed in self.seeds]

    @property
    def fields(self) -> list[str]:
        """The swept field names, in order of first appearance."""
        out: list[str] = []
        for s in self.points():
            out += [k for k in s if k not in out]
        return out

    def to_dict(self) -> dict:
        return {"base": self.base.to_dict(), "grid": {n: list(v) for n, v in self.grid},
                "settings": [dict(s) for s in self.settings], "seeds": list(self.seeds),
                "fixed": dict(self.fixed), "chunk_size": self.chunk_size, "probe": self.probe,
                "measures": list(self.measures), "measure_every": self.measure_every}

    @classmethod
    def from_dict(cls, d: dict) -> "SweepConfig":
        return cls(base=RunConfig.from_dict(d["base"]), grid=tuple((n, tuple(v)) for n, v in d["grid"].items()),
                   settings=tuple(d["settings"]), seeds=tuple(d["seeds"]), fixed=d["fixed"],
                   chunk_size=d["chunk_size"], probe=d.get("probe"), measures=tuple(d.get("measures", ())),
                   measure_every=d.get("measure_every"))

    def measure_specs(self) -> list[str]:
        """The probe spec and the measure specs every member takes."""
        return ([self.probe] if self.probe is not None else []) + list(self.measures)


def plan_chunks(members: Sequence[Member], chunk_size: int) -> list[list[str]]:
    """Member ids grouped by ensemble key (in sweep order), cut into chunks of ``chunk_size``."""
    groups: dict[Any, list[str]] = {}
    for m in members:
        groups.setdefault(ensemble_key(m.config), []).append(m.id)
    return [ids[i:i + chunk_size] for ids in groups.values() for i in range(0, len(ids), chunk_size)]


# --- training a chunk ----------------------------------------------------------------------


def _has_run(out: Path) -> bool:
    return is_run_dir(out)


def _restart_reason(out: Path) -> str | None:
    """Why the unfinished member ``out`` cannot be resumed and starts over, or None: it can be
    resumed, or it is finished (a finished member is never started over), or it does not exist."""
    if not out.exists():
        return None
    if not is_run_dir(out):
        if any(p.name != LOCK_FILE for p in out.iterdir()):
            return f"it holds no {CONFIG_FILE}: the process was stopped before the run began"
        return None  # empty (or only its lock file): trained as a new member
    status = member_status(out)
    if status is not None and status.get("status") != "running":
        return None
    if not (out / RESUME_FILE).exists() and not (out / NEXT_RESUME_FILE).exists():
        return "it never reached its first checkpoint"
    return None


def _clear(out: Path):
    """Remove a member's files, leaving the directory and its lock file (which this process holds)."""
    for p in out.iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _train_members(cfgs: list[RunConfig], outs: list[Path], progress: bool, measures=None,
                   measure_every: int | None = None) -> None:
    """Train the members of one chunk as one ensemble. Members a crash left behind are resumed
    from their checkpoints (``resume_ensemble``; finished members are left as they are); a
    member is started over only when it never reached its first checkpoint (the reason is
    printed), and any other failure to resume is raised, deleting nothing.
    ``measures``: spec strings (``measures.resolve``) every member takes."""
    kw = {"measures": list(measures or ()), "measure_every": measure_every}
    # this process writes every member of the chunk: hold their locks from the decision on
    with lock_dirs(outs, create=True):
        for o in outs:
            why = _restart_reason(o)
            if why is not None:
                print(f"{o}: starting this member over: {why}", file=sys.stderr)
                _clear(o)
        old = [o for o in outs if _has_run(o)]
        new = [i for i, o in enumerate(outs) if not _has_run(o)]
        if old:
            resume_ensemble(old, progress=progress, **kw)
        if new:
            train_ensemble([cfgs[i] for i in new], [outs[i] for i in new], progress=progress, **kw)


def member_record(run: Run) -> dict:
    """Transition metrics (``milestones.transition_metrics``, the one definition) and final
    accuracies of a run, flat."""
    from .milestones import final_metrics, transition_metrics

    m = run.metrics
    final = final_metrics(m)
    return transition_metrics(m).to_dict() | {"final_train_acc": final["train_acc"], "final_test_acc": final["test_acc"],
                                              "budget": run.config.train.steps}


def train_chunk(sweep_dir: str, ids: list[str], configs: list[dict], progress: bool = False,
                measures: list[str] | None = None, measure_every: int | None = None) -> list[dict]:
    """Train one chunk of a sweep into ``sweep_dir/members/<id>`` and return one record per
    member (id, seconds, transition metrics). A plain function of plain data: the same call runs
    in the driver (backend local) and as a Ray task (backend ray)."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    t0 = time.time()
    outs = [Path(sweep_dir) / MEMBERS_DIR / i for i in ids]
    _train_members([RunConfig.from_dict(c) for c in configs], outs, progress, measures, measure_every)
    seconds = time.time() - t0
    where = {"host": socket.gethostname(), "pid": os.getpid()}  # which machine and process trained it
    return [{"id": i, "seconds": seconds / len(ids)} | where | member_record(Run(o)) for i, o in zip(ids, outs)]


# --- running a sweep -----------------------------------------------------------------------


def read_manifest(sweep_dir: str | Path) -> dict[str, dict]:
    """Finished members of a sweep: id -> record. A line cut short by a crash is ignored."""
    return {rec["id"]: rec for rec in read_jsonl(Path(sweep_dir) / MANIFEST_FILE)}


def _append_manifest(sweep_dir: Path, records: list[dict]):
    append_jsonl(sweep_dir / MANIFEST_FILE, records)


def _init_ray(address: str | None):
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_INSTALL_HINT) from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return ray


def ray_node_resources(ray) -> list[dict]:
    """The resources of each live node of the Ray cluster ``ray`` is connected to."""
    nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive", True)]
    return nodes or [dict(ray.cluster_resources())]


def check_ray_resources(nodes: list[dict], cpus_per_chunk: float, gpus_per_chunk: float) -> None:
    """Refuse a chunk task that no node of the cluster can place (``nodes``: each node's
    resources, ``ray_node_resources``): Ray would keep it pending for ever, and the sweep would
    sit at 0 members without a word. A task runs on one node, so the largest node counts."""
    for name, option, asked in (("CPU", "--cpus-per-chunk", cpus_per_chunk), ("GPU", "--gpus-per-chunk", gpus_per_chunk)):
        if asked < 0:
            raise ValueError(f"{option} must be >= 0, got {asked:g}")
        most = max(float(n.get(name, 0)) for n in nodes)
        if asked > most:
            where = "no node of the Ray cluster has a GPU" if name == "GPU" and most == 0 else (
                f"the largest node of the Ray cluster has {most:g} {name}(s)")
            hint = "0 to train on CPUs" if name == "GPU" else f"at most {most:g}"
            raise ValueError(f"{option} {asked:g}: {where} ({len(nodes)} node(s)), so no chunk could ever start; "
                             f"give {option} {hint}, or a cluster with more (--ray-address)")


def run_sweep(sweep: SweepConfig | None, out: str | Path, resume: bool = False, backend: str = "local",
              ray_address: str | None = None, cpus_per_chunk: float = 1, gpus_per_chunk: float = 0,
              progress: bool = True, on_finished=None) -> "Population":
    """Train every member of ``sweep`` into the sweep directory ``out`` (``resume``: finish the
    sweep stored in ``out``, which must equal ``sweep`` if one is given; members in the manifest
    are skipped) and return the population.

    ``backend``: ``local`` trains the chunks one after another in this process (torch uses all
    cores inside a step); ``ray`` submits each chunk as a Ray task with ``cpus_per_chunk`` CPUs
    and ``gpus_per_chunk`` GPUs, on a local Ray instance (``ray.init()``) or the cluster at
    ``ray_address`` (e.g. ``auto``). Every node must see ``out`` at the same path.
    ``on_finished(records)``: called after each chunk's members are in the manifest (e.g.
    ``experiment.keep``, so that what is done survives the machine)."""
    out = Path(out)
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be local or ray, got {backend!r}")
    if resume and not (out / SWEEP_FILE).exists():
        raise FileNotFoundError(f"{out} is not a sweep directory: {SWEEP_FILE} is missing")
    if not resume:
        if sweep is None:
            raise ValueError("give a SweepConfig (or resume=True to finish the sweep in out)")
        if (out / SWEEP_FILE).exists():
            raise FileExistsError(f"{out} already holds a sweep; use --resume to finish it, or choose another --out")
        if backend == "local":  # a GPU asked for and not there: say so before the directory is made
            for device in sorted({m.config.train.device for m in sweep.members()}):
                resolve_device(device)
    if backend == "ray":  # what Ray cannot place would wait for ever: check before anything is written
        check_ray_resources(ray_node_resources(_init_ray(ray_address)), cpus_per_chunk, gpus_per_chunk)
    # one driver per sweep: it alone appends to finished.jsonl and decides what each member
    # needs; the lock is taken before sweep.json is read (or written) for the last time
    with lock_dir(out, create=not resume):
        return _run_sweep(sweep, out, resume, backend, ray_address, cpus_per_chunk, gpus_per_chunk, progress,
                          on_finished)


def _run_sweep(sweep: SweepConfig | None, out: Path, resume: bool, backend: str, ray_address: str | None,
               cpus_per_chunk: float, gpus_per_chunk: float, progress: bool, on_finished=None) -> "Population":
    from tqdm.auto import tqdm

    if resume:
        spec = json.loads((out / SWEEP_FILE).read_text())
        _check_ids(spec, out / SWEEP_FILE)
        stored = SweepConfig.from_dict(spec)
        if sweep is not None and json.dumps(sweep.to_dict()) != json.dumps(stored.to_dict()):
            raise ValueError(f"{out} holds a different sweep than the one given; resume it without a sweep "
                             f"(mechgrok sweep --resume {out}) or choose another --out")
        sweep, chunks = stored, spec["chunks"]
        ours = {m.id for m in sweep.members()}
        strange = next((c for chunk in chunks for c in chunk if c not in ours), None)
        if strange is not None:
            raise ValueError(f"{out / SWEEP_FILE}: chunk member {strange!r} is not a member of the stored sweep's "
                             f"settings; the file was edited or is not a mechgrok sweep")
    else:
        if (out / SWEEP_FILE).exists():
            raise FileExistsError(f"{out} already holds a sweep; use --resume to finish it, or choose another --out")
        members = sweep.members()
        chunks = plan_chunks(members, sweep.chunk_size)
        write_json(out / SWEEP_FILE, sweep.to_dict() | {
            "fields": sweep.fields, "chunks": chunks,
            "members": [{"id": m.id, "settings": m.settings, "seed": m.seed} for m in members]})
    members = {m.id: m for m in sweep.members()}
    done = read_manifest(out)
    todo = [c for c in chunks if not all(i in done for i in c)]
    ray = _init_ray(ray_address) if backend == "ray" and todo else None

    bar = tqdm(total=len(members), initial=sum(i in done for i in members), disable=not progress,
               desc=f"sweep {out.name}", unit="member", dynamic_ncols=True)

    def finished(records: list[dict]):
        new = [r for r in records if r["id"] not in done]
        _append_manifest(out, new)
        done.update({r["id"]: r for r in new})
        bar.update(len(new))
        write_members_table(out)
        if on_finished is not None:
            on_finished(new)

    def args(chunk):
        return str(out), chunk, [members[i].config.to_dict() for i in chunk]

    if ray is None:
        for chunk in todo:
            finished(train_chunk(*args(chunk), progress=progress, measures=sweep.measure_specs(),
                                 measure_every=sweep.measure_every))  # the ensemble's bar over steps
    else:
        task = ray.remote(num_cpus=cpus_per_chunk, num_gpus=gpus_per_chunk)(train_chunk)
        pending = [task.remote(*args(chunk), measures=sweep.measure_specs(), measure_every=sweep.measure_every) for chunk in todo]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            finished(ray.get(ready[0]))
    bar.close()
    write_members_table(out)
    return load_population(out)


def extend_sweep(out: str | Path, steps: int | None = None, stop_after_grok: int | None = None,
                 **run_kw) -> "Population":
    """Train every member of the sweep in ``out`` on to ``steps`` (default: the budget it has)
    under the stop rule ``stop_after_grok`` (default None: none, so members stopped after
    grokking train on past the stop, e.g. to study the cleanup after grokking), then return the
    population.

    Each member resumes from its resume state -- where it stopped, or its old budget -- exactly as
    if it had been trained with these settings from the start (``trainer.resume``'s rule for a
    solo run). Members that diverged, or that the new rule has stopped already, stay as they are.
    ``sweep.json`` records the new ``steps`` and stop rule; ``run_kw``: ``run_sweep``'s backend
    options. A sweep over ``steps`` or ``stop_after_grok`` itself is refused: those are its
    members' settings, named in their ids."""
    from dataclasses import replace

    from .runs import read_resume_state
    from .trainer import resume_config, stop_rule_fired

    out = Path(out)
    if not (out / SWEEP_FILE).exists():
        raise FileNotFoundError(f"{out} is not a sweep directory: {SWEEP_FILE} is missing")
    with lock_dir(out):
        spec = json.loads((out / SWEEP_FILE).read_text())
        _check_ids(spec, out / SWEEP_FILE)
        stored = SweepConfig.from_dict(spec)
        swept = next((k for k in stored.fields if _field_name(k) in ("steps", "stop_after_grok")), None)
        if swept is not None:
            raise ValueError(f"{out} sweeps over {swept}, so its members' ids name their {swept}: start a new "
                             f"sweep with --out for other values (or copy a member out of {out / MEMBERS_DIR} "
                             f"and `mechgrok train --resume COPY --steps N`)")
        fixed = {k: v for k, v in stored.fixed.items() if _field_name(k) not in ("steps", "stop_after_grok")}
        steps = stored.members()[0].config.train.steps if steps is None else int(steps)
        base = replace(stored.base, train=replace(stored.base.train, steps=steps, stop_after_grok=stop_after_grok))
        new = replace(stored, base=base, fixed=fixed)
        members = {m.id: m for m in new.members()}
        if set(members) != {m["id"] for m in spec["members"]}:
            raise ValueError(f"{out / SWEEP_FILE}: its members are not those of its own settings; the file was "
                             f"edited or is not a mechgrok sweep")
        manifest = read_manifest(out)
        # every member's write lock: no chunk or solo resume may train one while its budget changes
        with lock_dirs([out / MEMBERS_DIR / i for i in members if is_run_dir(out / MEMBERS_DIR / i)]):
            plan = []  # (id, member dir, its run, its new config, its new member.json)
            for i, m in members.items():
                d = out / MEMBERS_DIR / i
                if not is_run_dir(d):
                    continue  # never started: it trains with the new settings
                run = Run(d)
                try:
                    cfg = resume_config(run.config, m.config)
                except ValueError as e:
                    raise ValueError(f"{d}: {e}") from None
                status = member_status(d) or {}
                if status.get("status") in ("done", "stopped_after_grok"):
                    if (read_resume_state(d).step < cfg.train.steps
                            and stop_rule_fired(d, cfg.train.stop_after_grok) is None):
                        status = status | {"status": "running"}
                plan.append((i, d, run, cfg, status))
            # first the records of the members that change go (a kill after this only makes a
            # plain --resume record them again), then the members, then the sweep's settings:
            # extending again finishes whatever a kill cut short
            gone = {i for i, d, run, cfg, status in plan
                    if status.get("status") == "running" or manifest.get(i, {}).get("budget") != cfg.train.steps}
            write_text(out / MANIFEST_FILE, "".join(json.dumps(r) + "\n" for i, r in manifest.items() if i not in gone))
            for i, d, run, cfg, status in plan:
                if cfg != run.config:
                    write_json(d / CONFIG_FILE, run.meta | cfg.to_dict())
                if status != (member_status(d) or {}):
                    write_json(d / MEMBER_FILE, status)
            write_json(out / SWEEP_FILE, spec | new.to_dict())
    return run_sweep(None, out, resume=True, **run_kw)


def write_members_table(sweep_dir: str | Path) -> Path:
    """``members.csv``: the population table of the members finished so far (from the
    manifest's records: no run is re-read)."""
    pop = load_population(sweep_dir, finished_only=True)
    f = Path(sweep_dir) / MEMBERS_TABLE
    write_csv(f, pop.table, float_format=None)
    return f


# --- population tables ---------------------------------------------------------------------

TRANSITION_COLUMNS = ["memorised_step", "grokked_step", "delay", "max_acceleration_step", "grokked",
                      "final_gap", "final_train_acc", "final_test_acc", "last_step", "budget"]


def _flat_config(cfg: RunConfig) -> dict:
    """A run's settings by the names of ``presets.sweepable_fields`` (seeds and split left out)."""
    d = cfg.to_dict()
    out = {}
    for part in CONFIG_PARTS:
        for k, v in d[part].items():
            if k == "betas":
                out["beta1"], out["beta2"] = v
            elif k not in ("seed", "train_idx"):
                out[k] = tuple(v) if isinstance(v, list) else v
    return out


class Population:
    """Members of a sweep (or any list of run directories) with their grokking statistics.

    ``table``: one row per member (id, swept settings, seed, transition metrics, final
    accuracies, path); ``summary(field)``: per value of a swept field; ``run(i)``: the member's
    ``Run`` (by row number or id)."""

    def __init__(self, paths: Sequence[Path], settings: Sequence[dict], seeds: Sequence[int],
                 ids: Sequence[str], fields: Sequence[str], root: Path | None = None,
                 records: dict[str, dict] | None = None):
        self.paths, self.settings, self.seeds = [Path(p) for p in paths], list(settings), list(seeds)
        self.ids, self.fields, self.root = list(ids), list(fields), root
        self.records = records or {}  # id -> member_record, as the sweep's manifest holds them
        self._table: pd.DataFrame | None = None

    def __len__(self):
        return len(self.paths)

    def __repr__(self):
        return f"Population({str(self.root) if self.root else 'runs'!r}, {len(self)} members, fields {self.fields})"

    def run(self, i: int | str) -> Run:
        if isinstance(i, str):
            if i not in self.ids:
                raise KeyError(f"no member {i!r}; members: {', '.join(self.ids[:5])}{', ...' if len(self) > 5 else ''}")
            i = self.ids.index(i)
        return Run(self.paths[i])

    @property
    def table(self) -> pd.DataFrame:
        if self._table is None:
            rows = []
            for i, path in enumerate(self.paths):
                rec = self.records.get(self.ids[i]) or member_record(Run(path))
                rows.append({"id": self.ids[i], **self.settings[i], "seed": self.seeds[i],
                             **{c: rec.get(c) for c in TRANSITION_COLUMNS}, "path": str(path)})
            cols = ["id", *self.fields, "seed", *TRANSITION_COLUMNS, "path"]
            table = pd.DataFrame(rows, columns=cols)
            for c in ("memorised_step", "grokked_step", "delay", "max_acceleration_step", "last_step"):
                table[c] = table[c].astype("Int64")  # integer steps, <NA> where not reached
            table["grokked"] = table["grokked"].astype(bool)
            self._table = table
        return self._table

    def summary(self, field: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Per value of ``field`` (or per combination of several fields; default: every swept
        field): n (members with at least one evaluation), n_not_started (members without one:
        never started, or stopped before it; outside n and the rate), n_grokked, grok_rate
        (n_grokked / n), delay median and quartiles (over members that
        memorised and grokked), grokking and memorisation step medians, how many generalised
        before memorising, mean final test accuracy."""
        names = list(self.fields) if field is None else [field] if isinstance(field, str) else list(field)
        if not names:
            raise ValueError("summary needs a field: this population varies nothing but the seed")
        bad = [f for f in names if f not in self.table.columns]
        if bad:
            raise ValueError(f"summary field {bad[0]!r} is not a column; swept fields: {self.fields}")
        return summarise(self.table, names[0] if len(names) == 1 else names)


def summarise(table: pd.DataFrame, field: str | list[str]) -> pd.DataFrame:
    """The per-value statistics of ``Population.summary`` for any population table."""
    def stats(g: pd.DataFrame) -> pd.Series:
        # A member with no evaluation row (it never started, or died before its first) has no
        # outcome: counted as "not grokked" it would lower the rate of its setting. It is left
        # out of n and the rate, and counted apart.
        started = g["last_step"].notna()
        not_started, g = int((~started).sum()), g[started]
        delay = g["delay"].dropna().to_numpy(dtype=float)
        q = np.percentile(delay, [25, 50, 75]) if len(delay) else [math.nan] * 3
        first = (g["grokked"] & (g["memorised_step"].isna() | (g["delay"].fillna(1) <= 0))).sum()
        return pd.Series({
            "n": len(g), "n_not_started": not_started, "n_grokked": int(g["grokked"].sum()),
            "grok_rate": float(g["grokked"].mean()) if len(g) else math.nan,
            "n_delay": len(delay), "delay_median": q[1], "delay_q25": q[0], "delay_q75": q[2],
            "grokked_step_median": float(g["grokked_step"].dropna().median()) if g["grokked"].any() else math.nan,
            "memorised_step_median": (float(g["memorised_step"].dropna().median())
                                      if g["memorised_step"].notna().any() else math.nan),
            "n_grokked_before_memorising": int(first),
            "final_test_acc_mean": float(g["final_test_acc"].mean()),
            "last_step_mean": float(g["last_step"].astype(float).mean())})

    def label(v):
        return "none" if v is None or (isinstance(v, float) and math.isnan(v)) else v

    names = [field] if isinstance(field, str) else list(field)
    keys = [table[f].map(label).rename(f) for f in names]
    out = table.groupby(keys if len(keys) > 1 else keys[0], sort=True)[table.columns].apply(stats)
    counts = ["n", "n_not_started", "n_grokked", "n_delay", "n_grokked_before_memorising"]
    return out.astype({c: int for c in counts})


def load_population(source: str | Path | Sequence[str | Path], finished_only: bool = True) -> Population:
    """A sweep directory (members from ``sweep.json``; ``finished_only``: those in the
    manifest), a directory of run directories, or a list of run directories (the swept fields
    are then the config fields that differ between the runs; the seed is the model seed)."""
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        spec_file = root / SWEEP_FILE
        if not spec_file.exists():
            if is_run_dir(root):
                raise ValueError(f"{root} is a single run, not a population (a sweep directory, a directory of "
                                 f"run directories, or a list of them)")
            runs = sorted(p for p in root.iterdir() if is_run_dir(p)) if root.is_dir() else []
            if not runs:
                raise FileNotFoundError(f"{root}: neither a sweep directory ({SWEEP_FILE}) nor a directory of run "
                                        f"directories (sub-directories with a config.json)")
            return load_population(runs)
        spec = json.loads(spec_file.read_text())
        _check_ids(spec, spec_file, chunks=False)
        done = read_manifest(root) if finished_only else None
        ms = [m for m in spec["members"] if done is None or m["id"] in done]
        return Population([root / MEMBERS_DIR / m["id"] for m in ms], [m["settings"] for m in ms],
                          [m["seed"] for m in ms], [m["id"] for m in ms], spec["fields"], root, done)
    paths = [Path(p) for p in source]
    if not paths:
        raise ValueError("load_population: no run directories given")
    configs = [Run(p).config for p in paths]
    flat = [_flat_config(c) for c in configs]
    varying = [k for k in flat[0] if len({repr(f.get(k)) for f in flat}) > 1]
    settings = [{k: f[k] for k in varying} for f in flat]
    ids = [p.name if [q.name for q in paths].count(p.name) == 1 else str(p) for p in paths]
    return Population(paths, settings, [c.model.seed for c in configs], ids, varying)

