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
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from .config import RunConfig, parse_seeds
from .ensemble import member_status, resume_ensemble, train_ensemble
from .files import atomic_write, with_ext, write_json, write_text
from .milestones import should_stop
from .presets import apply_overrides, parse_overrides
from .provenance import hardware, provenance
from .locks import LOCK_FILE
from .runs import MEMBERS_DIR, RESUME_FILE, SWEEP_FILE, Run, is_run_dir
from .trainer import resume, resume_config, train

__all__ = ["parser", "parse_args", "parse_seeds", "parse_overrides", "apply_overrides", "train_or_resume",
           "train_or_resume_ensemble", "sweep_or_resume", "is_finished", "finished_runs", "command_line",
           "write_report", "keep", "restore", "restore_sweep", "median_range", "median_iqr", "censored_quartiles", "censored_iqr", "iqr_text", "step_text", "quartiles", "sweep_seed_by_seed", "grokked_summary", "Paired", "paired_differences",
           "claims_table", "merge_rows", "replace_section", "section_markers", "write_section"]

# --- the command line every script shares ---------------------------------------------------


def parser(doc: str, *, out: str | None, figures: str = "figures", seeds: str | None = None, seeds_help: str | None = None,
           full: str | None = None, overrides: bool = False, threads: int = 1,
           kept: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the flags the scripts share: ``--out`` (runs; None: none), ``--figures``,
    ``--threads``, and when asked ``--seeds`` (text for ``parse_seeds``, default ``seeds``),
    ``--full`` (help text ``full``), ``--set FIELD=VALUE`` (repeatable, ``apply_overrides``) and
    ``--kept`` (default ``kept``: the committed copy of the finished members, see ``keep``)."""
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
    if kept is not None:
        ap.add_argument("--kept", type=Path, default=Path(kept),
                        help="committed copy of the finished members' metrics and configs: restored into --out "
                             "on a fresh machine, updated as members finish")
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


_OWN = object()  # is_finished's default stop rule: the run's own


def is_finished(run: Run, steps: int | None = None, stop_after_grok=_OWN) -> bool:
    """Whether ``run`` reached ``steps`` (default: its own budget) or the stop rule
    ``stop_after_grok`` (default: its own; None: no rule) has stopped it."""
    steps = run.config.train.steps if steps is None else steps
    rule = run.config.train.stop_after_grok if stop_after_grok is _OWN else stop_after_grok
    # a run ``restore`` brought back has no checkpoints: its metrics say how far it went
    last = run.steps[-1] if run.steps else (int(run.metrics["step"].max()) if len(run.metrics) else -1)
    return last >= steps or should_stop(run.metrics.to_dict("records"), rule)


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
    if is_finished(run, cfg.train.steps, cfg.train.stop_after_grok):  # cfg's stop rule: it may differ
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


def finished_runs(outs: Sequence[str | Path]) -> list[Run | None]:
    """The run in each of ``outs`` that is there and not still training (an ensemble member an
    interrupted call left says "running"); None for the others. Trains nothing."""
    done = lambda o: is_run_dir(o) and (member_status(o) or {}).get("status") != "running"  # noqa: E731
    return [Run(o) if done(Path(o)) else None for o in outs]


def sweep_or_resume(spec, out: str | Path, kept: str | Path | None = None, **kw):
    """``population.run_sweep`` of ``spec`` into ``out``, finishing the sweep ``out`` already
    holds (which must be the same sweep); returns the population. ``kept``: a committed
    directory that survives the machine: finished members found there are restored into
    ``out`` first (and not trained again), and each chunk is kept there as it finishes."""
    from .population import run_sweep

    if kept is not None:
        restore_sweep(spec, kept, out)
        kw["on_finished"] = lambda records: keep(out, kept, [r["id"] for r in records])
    return run_sweep(spec, out, resume=(Path(out) / SWEEP_FILE).exists(), **kw)


def sweep_seed_by_seed(spec, out: str | Path, after=None, kept: str | Path | None = None, **kw):
    """``spec``'s members one seed at a time, each seed a sweep of its own in ``out/seed{s}``
    (``sweep_or_resume``, kept in ``kept/seed{s}`` when ``kept`` is given), so that a call cut
    short keeps every seed it finished and a later call with more seeds only trains the new
    ones. ``after(pop)``: called once a seed is done, with the population of the seeds done so
    far (e.g. to rewrite the report). Returns that population for every seed of ``spec``."""
    from .population import Population

    pops = []
    for s in spec.seeds:
        pops.append(sweep_or_resume(replace(spec, seeds=(s,)), Path(out) / f"seed{s}",
                                    kept=None if kept is None else Path(kept) / f"seed{s}", **kw))
        pop = Population([p for q in pops for p in q.paths], [x for q in pops for x in q.settings],
                         [x for q in pops for x in q.seeds], [x for q in pops for x in q.ids], pops[0].fields,
                         root=Path(out), records={k: v for q in pops for k, v in q.records.items()})
        if after is not None:
            after(pop)
    return pop


# --- results that outlive the machine -------------------------------------------------------
# Each session gets a fresh machine: run directories under runs/ and sweeps/ are gone the next
# time, while a long experiment spans sessions. What a report reads from a finished member
# (config.json, metrics.csv, dynamics.csv, member.json: everything but the checkpoints) is small,
# so ``keep`` copies it into a committed directory and ``restore`` puts it back into an empty
# --out, where those members count as finished and only the others train. A restored member has
# no checkpoints: anything that reads its weights needs it trained again.


def _small_files(root: Path):
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix != ".safetensors" and f.name != LOCK_FILE:
            yield f


def _copy(src: Path, dst: Path):
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def keep(out: str | Path, kept: str | Path, ids: Sequence[str] | None = None) -> int:
    """Copy the small files of what is finished in ``out`` into ``kept``: of a sweep directory,
    its spec, manifest and members table and the finished members' directories (``ids``: only
    these members, e.g. the chunk that just finished; an unfinished member is left out: it would
    look finished once restored); of a run directory, the run when ``is_finished``. Files
    already in ``kept`` are overwritten. Returns the files copied."""
    out, kept = Path(out), Path(kept)
    if (out / SWEEP_FILE).exists():
        from .population import read_manifest

        done = read_manifest(out)
        members = [i for i in (done if ids is None else ids) if i in done]
        roots = [f for f in out.iterdir() if f.is_file()] + [out / MEMBERS_DIR / i for i in members]
    elif is_run_dir(out):
        roots = [out] if is_finished(Run(out)) else []
    else:
        raise FileNotFoundError(f"{out} is neither a sweep nor a run directory: nothing to keep")
    n = 0
    for root in roots:
        for f in ([root] if root.is_file() else _small_files(root)):
            if f.name != LOCK_FILE:
                _copy(f, kept / f.relative_to(out))
                n += 1
    return n


def restore_sweep(spec, kept: str | Path, out: str | Path) -> int:
    """``restore`` of a sweep's kept members into ``out``, when ``kept`` keeps ``spec``'s sweep
    (None: whichever it keeps); fails in one line when it keeps another."""
    from .population import SweepConfig

    kept, out = Path(kept), Path(out)
    if spec is not None and (kept / SWEEP_FILE).exists() and not (out / SWEEP_FILE).exists():
        stored = SweepConfig.from_dict(json.loads((kept / SWEEP_FILE).read_text()))
        if json.dumps(stored.to_dict()) != json.dumps(spec.to_dict()):
            raise ValueError(f"{kept} keeps the members of another sweep than this one (other settings, seeds "
                             f"or steps); give another kept directory, or remove it to train these from scratch")
    return restore(kept, out)


def restore(kept: str | Path, out: str | Path) -> int:
    """Copy what ``keep`` put in ``kept`` into ``out`` where ``out`` lacks it (a file ``out``
    already has is newer: it is left alone). Returns the files copied; 0 when ``kept`` is absent."""
    kept, out = Path(kept), Path(out)
    if not kept.is_dir():
        return 0
    n = 0
    for f in _small_files(kept):
        target = out / f.relative_to(kept)
        if not target.exists():
            _copy(f, target)
            n += 1
    return n


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
    md = write_text(with_ext(stem, ".md"), text.rstrip("\n") + "\n\n" + "  \n".join(facts) + "\n")
    meta = {"command": command, "seeds": None if seeds is None else list(seeds), "hardware": hardware(prov),
            "seconds": seconds, "provenance": prov}
    js = write_json(with_ext(stem, ".json"), json.loads(json.dumps(data | meta, default=str)))
    return md, js


def replace_section(path: str | Path, begin: str, end: str, section: str) -> Path:
    """Write ``section`` (which starts with ``begin`` and ends with ``end``) over the text between
    those markers in ``path``, or append it when the markers are not there (a new file starts
    with "# Figures")."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Figures\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    return write_text(path, text)


def section_markers(name: str) -> tuple[str, str]:
    """The markers around a generated section ``name`` of a README."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(path: str | Path, name: str, body: str) -> Path:
    """``body`` between ``path``'s ``name`` markers (``replace_section``), laid out as the claims
    ledger lays out the sections it regenerates, so that both write the same text."""
    begin, end = section_markers(name)
    return replace_section(path, begin, end, f"{begin}\n{body.rstrip(chr(10))}\n{end}")


def merge_rows(path: str | Path, result: dict, same: Sequence[str],
               invocation: Sequence[str] = ("args", "provenance", "wall_s")) -> dict:
    """``result`` with the rows of the report JSON ``path`` (when it exists) whose seeds
    ``result["rows"]`` does not have, sorted by seed, and ``invocations``: the ``invocation``
    keys of every earlier call and this one. The JSON must agree on every key in ``same``."""
    path = Path(path)
    if not path.exists():
        return result
    old = json.loads(path.read_text())
    if [old.get(k) for k in same] != [result.get(k) for k in same]:
        raise SystemExit(f"--merge: {path} was made with {'/'.join(same)} "
                         f"{'/'.join(str(old.get(k)) for k in same)}, not these")
    seeds = {r["seed"] for r in result["rows"]}
    rows = sorted([r for r in old["rows"] if r["seed"] not in seeds] + result["rows"], key=lambda r: r["seed"])
    calls = old.get("invocations") or [{k: old.get(k) for k in invocation}]
    return result | {"rows": rows, "invocations": calls + [{k: result.get(k) for k in invocation}]}


# --- numbers for the reports: population statistics and published claims ---------------------


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and v == v]


def median_range(values, fmt: str = "{:.3g}") -> str:
    """"median [min, max]" of the finite ``values`` ("n/a" when none, the value alone when one)."""
    v = sorted(_finite(values))
    if len(v) <= 1:
        return fmt.format(v[0]) if v else "n/a"
    return f"{fmt.format(statistics.median(v))} [{fmt.format(v[0])}, {fmt.format(v[-1])}]"


def quartiles(values) -> dict:
    """``n``, ``median``, ``q25`` and ``q75`` (inclusive quartiles) of the finite ``values``
    (None for the statistics when there are none): the numbers behind ``median_iqr``."""
    v = sorted(_finite(values))
    if not v:
        return {"n": 0, "median": None, "q25": None, "q75": None}
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return {"n": len(v), "median": statistics.median(v), "q25": q[0], "q75": q[2]}


def censored_quartiles(values, bound: int) -> dict:
    """``quartiles`` of steps where None means "not reached within ``bound`` steps" (a member that
    never grokked): such a member counts, as later than every step, instead of being left out
    (which would put the median of a population where half never grokked at the few that did).
    A statistic that depends on them is a lower bound, the string ``"> X"`` (X: the statistic with
    those members at ``bound``); ``not_reached`` counts them."""
    v = sorted(math.inf if x is None else float(x) for x in values)
    out = {"n": len(v), "not_reached": sum(x == math.inf for x in v)}
    if not v:
        return out | {"median": None, "q25": None, "q75": None}

    def at(p):  # statistics.quantiles(method="inclusive"): linear between the two nearest ranks
        pos = p * (len(v) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        if v[lo] == math.inf or (v[hi] == math.inf and hi != lo):
            a, b = min(v[lo], bound), min(v[hi], bound)
            return f"> {a + (b - a) * (pos - lo):g}"
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    return out | {"median": at(0.5), "q25": at(0.25), "q75": at(0.75)}


def step_text(x) -> str:
    """A ``censored_quartiles`` statistic as text: a number, its "> X" lower bound, or "-" (None)."""
    return "-" if x is None else x if isinstance(x, str) else f"{x:g}"


def iqr_text(q: dict) -> str:
    """"median (q25 to q75)" of a ``quartiles`` or ``censored_quartiles`` dict, each a number or
    its "> X" lower bound; "-" when there were no values."""
    f = step_text
    return "-" if q["median"] is None else f"{f(q['median'])} ({f(q['q25'])} to {f(q['q75'])})"


def censored_iqr(values, bound: int) -> str:
    """``iqr_text`` of ``censored_quartiles(values, bound)``."""
    return iqr_text(censored_quartiles(values, bound))


def median_iqr(values, fmt: str = "{:g}") -> str:
    """"median (q25 to q75)" of the finite ``values`` (inclusive quartiles); "-" when none."""
    q = quartiles(values)
    if not q["n"]:
        return "-"
    return f"{fmt.format(q['median'])} ({fmt.format(q['q25'])} to {fmt.format(q['q75'])})"


def grokked_summary(steps: Sequence[int | None], bound: int) -> str:
    """Grokking steps of a group (None: did not grok within ``bound`` steps) as "[...] (k/n
    grokked, median m)", the median counting the others as later than all (``censored_quartiles``)."""
    ok = [s for s in steps if s is not None]
    med = f"median {step_text(censored_quartiles(steps, bound)['median'])}" if ok else "no seed grokked"
    return f"{ok} ({len(ok)}/{len(steps)} grokked, {med})"


@dataclass(frozen=True)
class Paired:
    """Per-pair differences ``a - b`` over the pairs where both are given."""
    diffs: tuple[float, ...]
    median: float
    below: int  # a < b
    equal: int
    above: int
    p: float  # two-sided Wilcoxon signed-rank over the unequal pairs; NaN under two of them


def paired_differences(a: Sequence[float | None], b: Sequence[float | None]) -> Paired:
    """``a - b`` pair by pair (pairs with a None or NaN left out), their median, how many are
    below / at / above zero and the Wilcoxon signed-rank p of the nonzero ones."""
    d = [x - y for x, y in zip(a, b) if _finite([x]) and _finite([y])]
    nonzero = [x for x in d if x]
    if len(nonzero) >= 2:
        from scipy.stats import wilcoxon

        p = float(wilcoxon(nonzero).pvalue)
    else:
        p = float("nan")
    return Paired(tuple(d), statistics.median(d) if d else float("nan"), sum(x < 0 for x in d), d.count(0),
                  sum(x > 0 for x in d), p)


def claims_table(rows: Sequence[Sequence], columns: Sequence[str] = ("claim", "published", "ours")) -> str:
    """A markdown table of (claim, the published number, ours) rows: a result next to the paper's."""
    from .plots import markdown_table

    return markdown_table([dict(zip(columns, r)) for r in rows], list(columns))
