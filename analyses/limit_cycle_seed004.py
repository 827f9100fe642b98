"""Seed 004's limit cycle at its own setting: what happens after grokking at weight decay 0.25,
1 and 2 with beta1 = 0 (its weight-decay sweep sets beta1 = 0), and at wd 1 with beta1 = 0.9.

    python analyses/limit_cycle_seed004.py                 # 4 arms x 2 seeds, 3000 steps
    python analyses/limit_cycle_seed004.py --seeds 4       # more seeds (only the new ones train)

The ``seed004`` preset (a+b mod 113, 50% train, 2 layers, full-batch AdamW lr 4e-4, betas
(beta1, 0.98)): the lr whose median grokking step over seeds is nearest seed 004's ~1500
(figures/dynamics/seed004/transition.md). Seed 004: at wd 1 accuracy and weight norm oscillate with a
period of ~150 steps; at wd 0.25 accuracy collapses to ~0.25 and re-groks; at wd 2 it hovers
near the boundary without sharp crashes. Per member: ``cycles.limit_cycle`` (period and
amplitude of test accuracy and weight norm after grokking) and ``milestones.drops_after_grok``
(every episode of test accuracy under 0.5 after grokking, with its lowest test and train
accuracy). Each seed's four arms are one sweep under ``--out/seed{s}``, each member trained on its
own; as each finishes, its metrics and config are copied to ``--kept`` (committed), so re-running
the command, on this machine or a fresh clone, trains only what is not there yet. The report is
rewritten after every seed, unless the call's seeds leave out a seed already kept whole (one
process per seed, ``--seeds 2-2`` and ``--seeds 3-3``: then ``--seeds 4`` writes the report). Outputs (``--figures``): limit_cycle.html/.png
(test accuracy and weight norm after grokking, every member), limit_cycle.md and .json.

Cost on the 2-core CPU VM: a member of 3000 steps took 2080-2180 s of wall time with two 1-thread
processes (one per seed) sharing the cores, ~0.7 s per step (bench/train_step.py's
2layer_mod113 step is ~0.67 s of CPU), so a seed's four arms are ~2.4 hours of one core.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mechgrok as mg
from mechgrok import cycles as cy
from mechgrok import experiment as ex
from mechgrok.milestones import drops_after_grok
from mechgrok.plots import limit_cycle_figure, markdown_table, save_figure

ARMS = {  # (weight decay, beta1) -> seed 004's statement
    (0.25, 0.0): "collapses to ~0.25 accuracy, re-grokking",
    (1.0, 0.0): "period ~150 steps in accuracy and weight norm",
    (2.0, 0.0): "gentle hovering near the boundary, no sharp crashes",
    (1.0, 0.9): "- (beta1 0.9: the momentum control)",
}
BELOW = 0.5  # a crash: test accuracy under this again after grokking


def member(r, metrics) -> dict:
    lc = cy.limit_cycle(metrics, collapse_below=BELOW)
    crashes = drops_after_grok(metrics, BELOW)
    return {"weight_decay": float(r.weight_decay), "beta1": float(r.beta1), "seed": int(r.seed),
            "last_step": int(metrics["step"].max()), **lc.to_dict(), "crashes": crashes,
            "lowest_after_grok": min((c["min_test_acc"] for c in crashes), default=None)}


def table(rows: list[dict]) -> str:
    out = []
    for (wd, b1), said in ARMS.items():
        for r in (r for r in rows if (r["weight_decay"], r["beta1"]) == (wd, b1)):
            low = "-" if r["lowest_after_grok"] is None else f"{r['lowest_after_grok']:.3f}"
            out.append({"wd": wd, "beta1": b1, "seed": r["seed"], "seed 004": said, "grokked": r["grokked_step"] or "-",
                        "verdict": r["verdict"], "test-acc period": r["test_acc_period"] or "-",
                        "weight-norm period": r["weight_norm_period"] or "-",
                        f"crashes under {BELOW:g} (lowest test acc)": f"{len(r['crashes'])} ({low})",
                        "steps": r["last_step"]})
    return markdown_table(out)


def section(d: dict | None) -> str:
    """figures/README's section, from the JSON report alone (the claims ledger regenerates it
    from the committed file); ``None``: not run yet."""
    title = "### Seed 004's limit cycle at its own setting (the seed004 preset)"
    if d is None:
        return f"{title}\n\nWritten by `analyses/limit_cycle_seed004.py`; not run yet."
    seeds = sorted({r["seed"] for r in d["rows"]})
    cfg = d["config"]["train"]
    return (f"{title} — `dynamics/seed004/limit_cycle.png`, `.md`\n\n`{d['command']}`: the seed004 preset (a+b mod "
            f"113, 50% train, 2 layers, full batch, AdamW lr {cfg['lr']:g}, beta2 {cfg['betas'][1]:g}), "
            f"{d['args']['steps']} steps, seeds {', '.join(map(str, seeds))} per arm; training "
            f"{d['train_seconds'] / 60:.1f} min over all invocations. Hardware: {d['hardware']}. Period: "
            f"``cycles.limit_cycle`` after grokking (test acc > 0.9); a crash: test accuracy under {d['below']:g} "
            f"again after grokking. The members are kept in `dynamics/seed004/kept/limit_cycle/`.\n\n"
            f"{table(d['rows']).rstrip()}")


def report(pop, args, t0: float):
    t = pop.table
    metrics = {r.id: pop.run(r.id).metrics for r in t.itertuples()}
    rows = [member(r, metrics[r.id]) for r in t.itertuples()]
    seeds = sorted({r["seed"] for r in rows})
    stem = args.figures / "limit_cycle"
    label = lambda r: f"wd {r.weight_decay:g} beta1 {r.beta1:g} seed {r.seed}"  # noqa: E731
    save_figure(limit_cycle_figure({label(r): metrics[r.id] for r in t.itertuples()},
                                   {label(r): m["grokked_step"] for r, m in zip(t.itertuples(), rows)},
                                   title=f"seed004 preset after grokking ({len(seeds)} seeds per arm)"), stem)
    trained = sum(r.get("seconds") or 0 for r in pop.records.values())
    text = (f"Limit cycle at seed 004's setting: seed004 preset, {args.steps} steps, {len(seeds)} seed(s) per arm "
            f"({', '.join(map(str, seeds))}); training {trained / 60:.1f} min over all invocations.\n\n{table(rows)}")
    ex.write_report(stem, text, {"args": vars(args), "config": pop.run(0).config.to_dict(), "rows": rows,
                                 "below": BELOW, "train_seconds": trained}, seeds=seeds, started=t0)
    print(text)


def left_out(kept, seeds) -> list[int]:
    """The seeds whose arms are all kept in ``kept`` but are not among ``seeds``: a report written
    from ``seeds`` alone would drop them (``--seeds 2-2`` beside a committed report of seeds 0-1)."""
    from mechgrok.population import read_manifest

    out = []
    for d in sorted(Path(kept).glob("seed*")):
        spec = d / "sweep.json"
        if spec.exists() and d.name[4:].isdigit() and int(d.name[4:]) not in seeds:
            done = read_manifest(d)
            if all(m["id"] in done for m in json.loads(spec.read_text())["members"]):
                out.append(int(d.name[4:]))
    return out


def report_if_whole(pop, args, t0: float):
    """``report`` unless the call's seeds leave out a seed already kept whole: then one line
    saying which call writes the report (training one seed per process is how to share cores)."""
    missing = left_out(args.kept, set(pop.table["seed"]))
    if missing:
        print(f"report not rewritten: kept seeds {missing} are not in this call; once every process has "
              f"finished, `--seeds {max(missing + list(pop.table['seed'])) + 1}` reports them all (trains nothing new)")
        return
    report(pop, args, t0)


def main():
    ap = ex.parser(__doc__, out="sweeps/limit_cycle_seed004", figures="figures/dynamics/seed004", seeds="2",
                   overrides=True, kept="figures/dynamics/seed004/kept/limit_cycle")
    ap.add_argument("--steps", type=int, default=3000)
    args = ex.parse_args(ap)
    spec = mg.SweepConfig(mg.get_preset("seed004"),
                          settings=tuple({"weight_decay": wd, "beta1": b1} for wd, b1 in ARMS),
                          seeds=tuple(ex.parse_seeds(args.seeds)), chunk_size=1,
                          fixed={"steps": args.steps, "device": "cpu"} | ex.parse_overrides(args.set))
    t0 = time.time()
    ex.sweep_seed_by_seed(spec, args.out, after=lambda pop: report_if_whole(pop, args, t0), kept=args.kept)


if __name__ == "__main__":
    main()
