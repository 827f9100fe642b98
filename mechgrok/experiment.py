"""What the scripts in analyses/ share, so each of them reads as the experiment it runs:

    ap = mg.experiment.parser(__doc__, out="runs/x", seeds="0,1,2")   # --out --figures --seeds --set --threads
    args = mg.experiment.parse_args(ap)
    cfg = mg.apply_overrides(base, args.set)                           # --set FIELD=VALUE ...
    for s in mg.experiment.parse_seeds(args.seeds):                    # "3", "0-9", "0,5,7"
        run = mg.experiment.train_or_resume(cfg, args.out / f"seed{s}")
    mg.experiment.write_report(args.figures / "x", markdown, data, seeds=seeds, started=t0)

A script keeps its runs under ``--out`` (re-running it reuses or finishes them) and writes its
figures and its report (``<stem>.md`` + ``<stem>.json``, with the command line, seeds, hardware
and time taken) under ``--figures``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from .config import RunConfig, parse_seeds
from .ensemble import member_status, resume_ensemble, train_ensemble
from .files import write_json, write_text
from .milestones import should_stop
from .presets import apply_overrides, parse_overrides
from .provenance import hardware, provenance
from .runs import RESUME_FILE, Run, is_run_dir
from .trainer import resume, resume_config, train

__all__ = ["parser", "parse_args", "parse_seeds", "parse_overrides", "apply_overrides", "train_or_resume",
           "train_or_resume_ensemble", "sweep_or_resume", "is_finished", "command_line", "write_report"]

# --- the command line every script shares ---------------------------------------------------


def parser(doc: str, *, out: str | None, figures: str = "figures", seeds: str | None = None, seeds_help: str | None = None,
           full: str | None = None, overrides: bool = False, threads: int = 1) -> argparse.ArgumentParser:
    """An argument parser with the flags the scripts share: ``--out`` (runs; None: none), ``--figures``,
    ``--threads``, and when asked ``--seeds`` (text for ``parse_seeds``, default ``seeds``),
    ``--full`` (help text ``full``) and ``--set FIELD=VALUE`` (repeatable, ``apply_overrides``)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if out is not None:
        ap.add_argument("--out", type=Path, default=Path(out), help="where the runs go (re-running reuses them)")
    ap.add_argument("--figures", type=Path, default=Path(figures), help="where figures and the report go")
    ap.add_argument("--threads", type=int, default=threads, help="torch threads")
    if seeds is not None:
        ap.add_argument("--seeds", default=seeds, help=seeds_help or "N (seeds 0..N-1), A-B, or a,b,c")
    if full is not None:
        ap.add_argument("--full", action="store_true", help=full)
    if overrides:
        ap.add_argument("--set", action="append", default=[], metavar="FIELD=V",
                        help="any other config field for every run, e.g. --set eval_every=20 (repeatable)")
    return ap


def parse_args(ap: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, check ``--seeds`` and ``--set`` at once (one line naming the bad one), set torch's threads."""
    args = ap.parse_args(argv)
    try:
        if getattr(args, "seeds", None) is not None:
            parse_seeds(args.seeds)
        parse_overrides(getattr(args, "set", []))
    except ValueError as e:
        ap.error(str(e))
    torch.set_num_threads(args.threads)
    return args


# --- runs: train what is missing, finish what was cut short ----------------------------------


def is_finished(run: Run, steps: int | None = None) -> bool:
    """Whether ``run`` reached ``steps`` (default: its own budget) or its stop rule stopped it."""
    steps = run.config.train.steps if steps is None else steps
    last = run.steps[-1] if run.steps else -1
    return last >= steps or should_stop(run.metrics.to_dict("records"), run.config.train.stop_after_grok)


def train_or_resume(cfg: RunConfig, out: str | Path, *, progress: bool = False, **kw) -> Run:
    """The run of ``cfg`` in ``out``: trained when ``out`` holds none, resumed when it holds an
    unfinished one (or one ``cfg`` extends to more steps), loaded when it is finished. A run of
    other settings in ``out`` fails in one line. ``kw``: ``probe=``, ``loss=``, ... of ``mg.train``."""
    out = Path(out)
    if not is_run_dir(out):
        return train(cfg, out, progress=progress, **kw)
    run = Run(out)
    try:
        resume_config(run.config, cfg)
    except ValueError as e:
        raise ValueError(f"{out} holds a run of other settings: {e}") from None
    if is_finished(run, cfg.train.steps):
        return run
    if not (out / RESUME_FILE).exists():  # stopped before its first checkpoint: nothing to keep
        shutil.rmtree(out)
        return train(cfg, out, progress=progress, **kw)
    return resume(out, cfg, progress=progress, **kw)


def train_or_resume_ensemble(cfgs: Sequence[RunConfig], outs: Sequence[str | Path], init=None,
                             progress: bool = True) -> list[Run]:
    """``train_or_resume`` for members trained together as one ensemble: the ones not started
    train as one ensemble (``init``: their initial states, one per member), the ones an
    interrupted call left finish (``resume_ensemble``)."""
    outs = [Path(o) for o in outs]
    new = [i for i, o in enumerate(outs) if not is_run_dir(o)]
    old = [o for i, o in enumerate(outs) if i not in new]
    if any((member_status(o) or {}).get("status") == "running" for o in old):
        resume_ensemble(old, progress=progress)
    if new:
        train_ensemble([cfgs[i] for i in new], [outs[i] for i in new], progress=progress,
                       init=None if init is None else [init[i] for i in new])
    return [Run(o) for o in outs]


def sweep_or_resume(spec, out: str | Path, **kw):
    """``population.run_sweep`` of ``spec`` into ``out``, finishing the sweep ``out`` already
    holds (which must be the same sweep); returns the population."""
    from .population import SWEEP_FILE, run_sweep

    return run_sweep(spec, out, resume=(Path(out) / SWEEP_FILE).exists(), **kw)


# --- the report next to the figures ----------------------------------------------------------


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, as a reader would type it."""
    argv = sys.argv if argv is None else argv
    return " ".join(["python", Path(argv[0]).as_posix(), *argv[1:]])


def write_report(stem: str | Path, text: str, data: dict, *, command: str | None = None,
                 seeds: Sequence[int] | None = None, started: float | None = None, prov: dict | None = None,
                 note: str = "") -> tuple[Path, Path]:
    """``stem.md`` (``text``, then the command line, seeds, hardware and time taken) and
    ``stem.json`` (``data`` with the same facts and the full provenance), both atomically.
    ``started``: ``time.time()`` when the work began; ``note``: appended to the hardware line."""
    stem, prov = Path(stem), prov or provenance()
    seconds = None if started is None else round(time.time() - started, 1)
    command = command or command_line()
    facts = [f"Command: `{command}`"]
    if seeds is not None:
        facts.append(f"Seeds: {', '.join(map(str, seeds))}")
    took = "" if seconds is None else f"; took {seconds / 60:.1f} min"
    facts.append(f"Hardware: {hardware(prov)}{note}. Made {prov['made']}{took}.")
    md = write_text(stem.with_suffix(".md"), text.rstrip("\n") + "\n\n" + "  \n".join(facts) + "\n")
    meta = {"command": command, "seeds": None if seeds is None else list(seeds), "hardware": hardware(prov),
            "seconds": seconds, "provenance": prov}
    js = write_json(stem.with_suffix(".json"), json.loads(json.dumps(data | meta, default=str)))
    return md, js
