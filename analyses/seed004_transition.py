"""Where does the transition fall at seed 004's setting? Seed 004 trains "default Adam" on a+b mod
113 with 2 layers and puts the phase transition at ~1500 steps; it gives no lr and no betas. This
script measures candidate changes to one base, ``BASE``: the dynamics model and task with full-batch
AdamW at lr 1e-3, betas (0.9, 0.98), wd 1 (the Grokfast report's AdamW arm, figures/grokfast_mod113.json,
is that base over 5 seeds), each member stopped 10 evaluations (100 steps) after it groks:

    python analyses/seed004_transition.py                            # every candidate, 5 seeds each
    python analyses/seed004_transition.py --candidate beta2=0.999 --seeds 0-2   # one candidate, some seeds
    python analyses/seed004_transition.py --report-only                  # the report of what is finished

Candidates (``--candidate FIELD=V[,FIELD=V]``, repeatable): ``beta2=0.999`` is PyTorch's default
AdamW (lr 1e-3, betas (0.9, 0.999)), the reading of seed 004's "default Adam"; ``lr=3e-4`` and
``lr=4e-4`` keep the betas and lower the lr, which delays memorisation and grokking. The candidate
whose median is nearest ~1500 became the ``seed004`` preset (lr 4e-4); the base stays pinned
here so that a candidate names the same runs whatever the preset is. A seed that does not grok
counts in the median as later than every step. Each candidate's seeds are sweeps of their own
under ``--out/<candidate>/seed{s}`` (two processes may take different seeds); each finished
member's metrics and config are copied to ``--kept`` (committed), so a re-run on a fresh clone
trains only what is not there. The report covers every candidate and seed found there, next to
the base, and is rewritten after every seed, but never over a committed report that has members
neither holds (the members of figures/dynamics/seed004/transition.json were trained before
``--kept`` existed: re-running means training them again). Outputs (``--figures``): transition.md/.json and transition.html/.png (grokking step
per candidate and seed).

Cost on one core of the 2-core CPU VM: ~0.67 s per step (bench/train_step.py, 2layer_mod113), so
a member that groks at 1500 takes ~18 min; one that never groks, 3000 steps, ~34 min.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

import mechgrok as mg
from mechgrok import experiment as ex
from mechgrok.plots import grokking_step_distributions, markdown_table, save_figure

CANDIDATES = ("beta2=0.999", "lr=3e-4", "lr=4e-4")
BASE = mg.configure("seed004", lr=1e-3)  # what the candidates change (the seed004 preset before lr 4e-4)
STOP_AFTER = 10  # evaluations (of 10 steps) a member trains on after it groks
PUBLISHED = 1500  # seed 004: "the phase transition at ~step 1500"
AS_IS = Path("figures/grokfast_mod113.json")  # BASE unchanged: the AdamW arm of that report
AS_IS_LABEL = "base (lr 1e-3, beta2 0.98)"


# the fields that shape a run's grokking step (the seeds, steps and stopping rule do not)
SHAPING = {"task": ("op", "p", "frac"), "model": ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "act_fn", "normalization"),
           "train": ("optimizer", "lr", "weight_decay", "betas", "warmup_steps", "batch_size", "grokfast")}


def shaping(cfg: dict) -> dict:
    """The SHAPING fields of a config dict (``RunConfig.to_dict()``, tuples as the reports store them)."""
    cfg = json.loads(json.dumps(cfg))
    return {part: {k: cfg[part].get(k) for k in keys} for part, keys in SHAPING.items()}


def preset_candidate(configs: dict) -> str | None:
    """The candidate (of a report's ``configs``) trained as the ``seed004`` preset is now; None: none was."""
    now = shaping(mg.get_preset("seed004").to_dict())
    return next((c for c, cfg in configs.items() if shaping(cfg) == now), None)


def label(candidate: str) -> str:
    """A candidate's directory name: ``beta2=0.999,lr=1e-3`` -> ``beta2_0.999-lr_1e-3``."""
    return "-".join(p.replace("=", "_") for p in candidate.split(","))


def _step(v) -> int | None:
    """An Int64 table cell as a step, or None where it was not reached (<NA>)."""
    return None if pd.isna(v) else int(v)


def populations(out: Path, candidate: str, kept: Path | None = None) -> list:
    """One candidate's seeds (a sweep each), whichever process trained them, with the ones
    ``kept`` holds restored first (a fresh machine); finished members only."""
    if kept is not None:
        for d in sorted((kept / label(candidate)).glob("seed*")):
            ex.restore(d, out / label(candidate) / d.name)
    return [mg.load_population(d) for d in sorted((out / label(candidate)).glob("seed*"))
            if (d / mg.population.SWEEP_FILE).exists()]


def missing_rows(stem: Path, rows: list[dict]) -> list[tuple[str, int]]:
    """(candidate, seed) of the members the committed report ``stem.json`` has and ``rows`` lack:
    members trained on another machine and not kept. Rewriting the report would drop them."""
    path = mg.files.with_ext(stem, ".json")
    if not path.exists():
        return []
    have = {(r["candidate"], r["seed"]) for r in rows}
    return sorted({(r["candidate"], r["seed"]) for r in json.loads(path.read_text())["rows"]} - have)


def rows_of(pops: list, candidate: str) -> list[dict]:
    """Every finished member of one candidate (its ``populations``)."""
    rows = []
    for pop in pops:
        for r in pop.table.itertuples():
            mem = _step(r.memorised_step)
            m = pop.run(r.id).metrics.set_index("step")
            rows.append({"candidate": candidate, "seed": int(r.seed), "memorised_step": mem,
                         "grokked_step": _step(r.grokked_step), "delay": _step(r.delay), "last_step": _step(r.last_step),
                         # seed 004's transplant recipient "memorises at chance": does our plateau start there?
                         "test_acc_when_memorised": None if mem is None else round(float(m.loc[mem, "test_acc"]), 4)})
    return rows


def as_is_rows() -> list[dict]:
    """The base unchanged: the AdamW arm (beta1 0.9, no Grokfast) of the Grokfast report."""
    if not AS_IS.exists():
        return []
    t = json.loads(AS_IS.read_text())["table"]
    return [{"candidate": AS_IS_LABEL, "seed": int(r["seed"]),
             "memorised_step": r["memorised_step"], "grokked_step": r["grokked_step"] if r["grokked"] else None,
             "delay": r["delay"], "last_step": r["last_step"], "test_acc_when_memorised": None}
            for r in t if r["grokfast"] == "none" and r["beta1"] == 0.9]


def summary(rows: list[dict], steps_run: int) -> list[dict]:
    """Per candidate: its grokking steps' quartiles with a member that did not grok within
    ``steps_run`` counted as later than all (``ex.censored_quartiles``: "> 3000" where the
    statistic falls among those), and whether that median is within 25% of the published step."""
    out = []
    for c in dict.fromkeys(r["candidate"] for r in rows):
        g = [r for r in rows if r["candidate"] == c]
        steps = [r["grokked_step"] for r in g]
        q = ex.censored_quartiles(steps, steps_run)
        out.append({"candidate": c, "n": len(g), "grokked": sum(s is not None for s in steps),
                    "grokked_step": q, "memorised_step": ex.quartiles(r["memorised_step"] for r in g),
                    "test_acc_when_memorised": ex.quartiles(r.get("test_acc_when_memorised") for r in g),
                    "steps": steps, "within_25pct": isinstance(q["median"], (int, float))
                    and abs(q["median"] - PUBLISHED) <= 0.25 * PUBLISHED})
    return out


def section(d: dict | None) -> str:
    """figures/README's seed004_transition section, from the JSON report alone (the claims ledger
    regenerates it from the committed file); ``None``: not run yet."""
    title = "### Where seed 004's transition falls: the seed004 preset and candidate changes"
    if d is None:
        return f"{title}\n\nWritten by `analyses/seed004_transition.py`; not run yet."
    table = [{"candidate": s["candidate"], "seeds": s["n"], "grokked": f"{s['grokked']}/{s['n']}",
              "grokking step median (IQR)": ex.censored_iqr(s["steps"], d["steps"]),
              "memorised median": "-" if s["memorised_step"]["median"] is None else f"{s['memorised_step']['median']:g}",
              "test acc when memorised, median": "-" if (t := s.get("test_acc_when_memorised", {}).get("median")) is None
              else f"{t:.3f}",
              "per seed": ", ".join("-" if x is None else str(x) for x in s["steps"]),
              f"within 25% of {PUBLISHED}": "yes" if s["within_25pct"] else "no"} for s in d["summary"]]
    seeds = sorted({r["seed"] for r in d["rows"] if r["candidate"] != AS_IS_LABEL})
    where = f" Hardware: {d['hardware']}." if "hardware" in d else ""
    return (f"{title} — `dynamics/seed004/transition.png`, `.md`\n\n"
            f"`python analyses/seed004_transition.py --seeds {','.join(map(str, seeds)) or '-'}` (any split of the "
            f"seeds over processes). Seed 004 puts the transition at ~{PUBLISHED} steps and gives no lr or betas. Each "
            f"member is stopped {d['stop_after_grok']} evaluations after it groks (test acc > 0.9) or at {d['steps']} "
            f"steps; training {d['train_seconds'] / 60:.1f} min over all invocations.{where} A seed that did not grok "
            f"counts in the median and IQR as later than every step (\"> {d['steps']}\" where they fall among such "
            f"seeds). The first row is the "
            f"base every candidate changes: lr 1e-3, betas (0.9, 0.98), wd 1 (the AdamW arm of `grokfast_mod113.json`). "
            + (f"The `seed004` preset is the row {preset}. " if (preset := preset_candidate(d.get("configs", {}))) else
               "No row is the `seed004` preset as it is now. ")
            + f"Chance test accuracy is 1/113 = 0.009.\n\n{markdown_table(table)}")


def report(args, t0: float):
    trained, configs, rows = 0.0, {}, []
    if AS_IS.exists() and "config" in (as_is := json.loads(AS_IS.read_text())):
        configs[AS_IS_LABEL] = as_is["config"]
    for c in args.candidate:
        pops = populations(args.out, c, args.kept)
        rows += rows_of(pops, c)
        for pop in pops:
            trained += sum(r.get("seconds") or 0 for r in pop.records.values())
            if len(pop):
                configs.setdefault(c, pop.run(0).config.to_dict())  # the members' own config, as trained
    rows = as_is_rows() + sorted(rows, key=lambda r: (args.candidate.index(r["candidate"]), r["seed"]))
    data = {"args": vars(args), "configs": configs, "published": PUBLISHED,
            "steps": args.steps, "stop_after_grok": STOP_AFTER, "rows": rows, "summary": summary(rows, args.steps),
            "train_seconds": trained}
    stem = args.figures / "transition"
    if lost := missing_rows(stem, rows):
        print(f"{stem}.json not rewritten: it has {len(lost)} member(s) that neither --out nor --kept holds "
              f"({', '.join(f'{c} seed {s}' for c, s in lost[:6])}{', ...' if len(lost) > 6 else ''}); train them "
              f"again (the same command with those seeds) or write elsewhere with --figures", flush=True)
        return False
    groups = {s["candidate"]: s["steps"] for s in data["summary"]}
    save_figure(grokking_step_distributions(groups, title="seed004 preset: grokking step per candidate"), stem)
    text = section(data)
    ex.write_report(stem, text, data, seeds=sorted({r["seed"] for r in rows}), started=t0)
    print(text)
    return True



def main():
    ap = ex.parser(__doc__, out="sweeps/seed004_transition", figures="figures/dynamics/seed004", seeds="5",
                   overrides=True, kept="figures/dynamics/seed004/kept/transition")
    ap.add_argument("--candidate", action="append", default=None, metavar="FIELD=V[,FIELD=V]",
                    help=f"a change to the seed004 preset (repeatable; default: {', '.join(CANDIDATES)})")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: report the members finished so far (e.g. while other processes train)")
    args = ex.parse_args(ap)
    args.candidate = args.candidate or list(CANDIDATES)
    t0 = time.time()
    for c in [] if args.report_only else args.candidate:
        spec = mg.SweepConfig(BASE, settings=(ex.parse_overrides(c.split(",")),),
                              seeds=tuple(ex.parse_seeds(args.seeds)), chunk_size=1,
                              fixed={"steps": args.steps, "stop_after_grok": STOP_AFTER, "device": "cpu"}
                              | ex.parse_overrides(args.set))
        ex.sweep_seed_by_seed(spec, args.out / label(c), after=lambda pop: report(args, t0),
                              kept=args.kept / label(c))
    if not report(args, t0):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
