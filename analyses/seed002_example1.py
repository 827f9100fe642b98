"""Seed 002 ("Grokking as a phase transition"), example 1: a+b mod 97 on 40% of the pairs, with
and without weight decay.

    python analyses/seed002_example1.py              # 2 arms x 3 seeds, 4000 steps
    python analyses/seed002_example1.py --seeds 5    # more seeds (only the new ones train)

Seed 002's claim: a 2-layer transformer trained on 40% of the a+b mod 97 pairs "quickly
achieves near-100% training accuracy while test accuracy stays near chance. After many
additional epochs with weight decay, test accuracy suddenly rises to near-perfect"; without
weight decay the model can stay memorised. Seed 002 gives no optimiser, batch, weight decay or
length, so ours are seed 001's (the ``tutorial2`` preset: 2 layers, d_model 128, 4 heads, FF 512,
pre-LN, AdamW lr 1e-3, betas (0.9, 0.999), batch 512) with ``frac=0.4``, weight decay 1 against 0,
``--steps`` steps evaluated every ``--eval-every``.

Per member we check the three parts of the claim: memorised (train acc > 0.99), near chance
when it memorised (test acc below ``NEAR_CHANCE``, 5x chance = 5/97), and grokked (test acc > 0.9)
within the budget. Each seed is one sweep of its own under ``--out/seed{s}`` (resumable; more
seeds add to it); the report is rewritten after every seed. Outputs (``--figures``):
seed002_example1.html/.png (accuracies per member), .md (per member and per arm, next to seed
002's claim) and .json; the section between the ``seed002_example1`` markers of ``--readme``.
"""

from __future__ import annotations

import json
import time

import pandas as pd

import mechgrok as mg
from mechgrok import experiment as ex
from mechgrok.plots import markdown_table, population_curves, save_figure

NEAR_CHANCE = 5 / 97  # test accuracy counted "near chance" (chance is 1/97)
CLAIM = {True: "memorises quickly, sits near chance, then generalises", False: "memorises, sits near chance, "
         "does not generalise"}


def member_row(r, metrics: pd.DataFrame) -> dict:
    """One member: when it memorised and grokked, test accuracy when it memorised, at the end."""
    m = metrics.sort_values("step").set_index("step")
    mem = None if pd.isna(r.memorised_step) else int(r.memorised_step)
    at_mem = None if mem is None else float(m.loc[mem, "test_acc"])
    return {"weight_decay": float(r.weight_decay), "seed": int(r.seed), "memorised_step": mem,
            "test_acc_at_memorised": at_mem, "grokked_step": None if pd.isna(r.grokked_step) else int(r.grokked_step),
            "final_train_acc": float(r.final_train_acc), "final_test_acc": float(r.final_test_acc),
            "last_step": int(r.last_step), "memorised": mem is not None,
            "near_chance_at_memorised": at_mem is not None and at_mem < NEAR_CHANCE,
            "grokked": not pd.isna(r.grokked_step)}


def verdicts(rows: list[dict], steps: int) -> list[dict]:
    """Per arm: how many members show each part of seed 002's claim, and the verdict: with
    decay every member memorises near chance and then groks; without, none groks."""
    out = []
    for wd in sorted({r["weight_decay"] for r in rows}, reverse=True):
        g = [r for r in rows if r["weight_decay"] == wd]
        k = {c: sum(r[c] for r in g) for c in ("memorised", "near_chance_at_memorised", "grokked")}
        want = wd > 0
        holds = k["memorised"] == k["near_chance_at_memorised"] == len(g) and k["grokked"] == (len(g) if want else 0)
        out.append({"weight_decay": wd, "n": len(g), **{f"n_{c}": v for c, v in k.items()},
                    # not grokked within ``steps``: later than all (ex.censored_quartiles)
                    "grokked_step": ex.censored_quartiles([r["grokked_step"] for r in g], steps),
                    "memorised_step": ex.quartiles(r["memorised_step"] for r in g),
                    "final_test_acc": ex.quartiles(r["final_test_acc"] for r in g),
                    "seed002": CLAIM[want], "verdict": "holds" if holds else "does not hold"})
    return out


def table(summary: list[dict], rows: list[dict]) -> str:
    """Per arm: the counts behind the verdict, and per seed the test accuracy when it memorised,
    the step it grokked and its final test accuracy (a grokked run can fall back)."""
    med = lambda q: "-" if not q["n"] else f"{q['median']:.3g}"  # noqa: E731
    seeds = lambda wd: ", ".join(  # noqa: E731
        f"{r['seed']}: {'-' if r['test_acc_at_memorised'] is None else format(r['test_acc_at_memorised'], '.3f')} / "
        f"{r['grokked_step'] or '-'} / {r['final_test_acc']:.3f}"
        for r in rows if r["weight_decay"] == wd)
    return markdown_table([{"weight decay": s["weight_decay"], "n": s["n"], "memorised": s["n_memorised"],
                            f"near chance when memorised (< {NEAR_CHANCE:.3f})": s["n_near_chance_at_memorised"],
                            "grokked": s["n_grokked"], "grokked at step (median)": ex.step_text(s["grokked_step"]["median"]),
                            "final test acc (median)": med(s["final_test_acc"]),
                            "per seed: test acc when memorised / grokked at / final test acc": seeds(s["weight_decay"]),
                            "seed 002": s["seed002"], "verdict": s["verdict"]} for s in summary])


def caption(rows: list[dict]) -> str:
    """What the members show beyond the verdict: grokked members that ended below half accuracy."""
    out = []
    for wd in sorted({r["weight_decay"] for r in rows}, reverse=True):
        g = [r for r in rows if r["weight_decay"] == wd]
        grokked = [r for r in g if r["grokked"]]
        fell = [r for r in grokked if r["final_test_acc"] < 0.5]
        out.append(f"wd {wd:g}: {len(grokked)}/{len(g)} grokked" + (
            f", and {len(fell)} of them ended below 0.5 test accuracy (seeds "
            f"{', '.join(str(r['seed']) for r in fell)}: the fit itself broke, train accuracy "
            f"{', '.join(format(r['final_train_acc'], '.3f') for r in fell)} at the end)" if fell else "") + ".")
    return " ".join(out)


def head(frac: float, wd: float, steps: int, eval_every: int, seeds, trained: float) -> str:
    return (f"Seed 002 example 1: tutorial2 preset (seed 001's 2-layer model and optimiser; seed 002 gives none) with "
            f"frac {frac:g}, weight decay {wd:g} vs 0, {steps} steps evaluated every {eval_every}, {len(seeds)} seed(s) "
            f"per arm ({', '.join(map(str, seeds))}); training {trained / 60:.1f} min over all invocations.")


def section(d: dict | None) -> str:
    """figures/README's section, from this script's JSON report alone (the claims ledger
    regenerates it from the committed file); ``None``: not run yet."""
    title = "### Seed 002 example 1 (a+b mod 97, 40% train)"
    if d is None:
        return f"{title}\n\nWritten by `analyses/seed002_example1.py`; not run yet."
    a = d["args"]
    return "\n".join([
        f"{title} — `seed002_example1.png`, `.md`", "",
        f"`{d['command']}`. " + head(d["config"]["task"]["frac"], a["wd"], a["steps"], a["eval_every"], d["seeds"],
                                      d["train_seconds"]) + f" Hardware: {d['hardware']}.", "", table(d["summary"], d["rows"]).rstrip(), "", caption(d["rows"])])


def report(pop, args, base: mg.RunConfig, t0: float):
    t = pop.table
    rows = [member_row(r, pop.run(r.id).metrics) for r in t.itertuples()]
    summary, seeds = verdicts(rows, args.steps), sorted({r["seed"] for r in rows})
    stem = args.figures / "seed002_example1"
    save_figure(population_curves({f"wd {r.weight_decay:g} seed {r.seed}": pop.run(r.id).metrics for r in t.itertuples()},
                                  ("test_acc", "train_acc"), ("test accuracy", "train accuracy"),
                                  title=f"Seed 002 example 1: a+b mod 97, 40% train, 2 layers, with and without "
                                        f"weight decay ({len(seeds)} seeds per arm)"), stem)
    trained = sum(r.get("seconds") or 0 for r in pop.records.values())
    text = (f"{head(base.task.frac, args.wd, args.steps, args.eval_every, seeds, trained)}\n\n{table(summary, rows)}\n"
            f"Per member:\n\n{markdown_table(rows, floatfmt='.3g')}")
    _, js = ex.write_report(stem, text, {"args": vars(args), "config": base.to_dict(), "rows": rows, "summary": summary,
                                         "near_chance_below": NEAR_CHANCE, "train_seconds": trained}, seeds=seeds,
                            started=t0)
    if args.readme:
        ex.write_section(args.readme, "seed002_example1", section(json.loads(js.read_text())))
    print(text)
    print(f"wrote {stem}.html/.png/.md/.json")


def main():
    ap = ex.parser(__doc__, out="sweeps/seed002_example1", seeds="3", overrides=True)
    ap.add_argument("--wd", type=float, default=1.0, help="the weight-decay arm (the other has none)")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--readme", default="figures/README.md", help="README whose seed002_example1 section is "
                    "rewritten ('' to leave it)")
    args = ex.parse_args(ap)
    base = ex.apply_overrides(mg.get_preset("tutorial2"), ["frac=0.4", *args.set])
    spec = mg.SweepConfig(base, grid={"weight_decay": (args.wd, 0.0)}, seeds=tuple(ex.parse_seeds(args.seeds)),
                          fixed={"steps": args.steps, "eval_every": args.eval_every,
                                 "checkpoint_every": max(args.eval_every, args.steps // 10), "device": "cpu"})
    t0 = time.time()
    ex.sweep_seed_by_seed(spec, args.out, after=lambda pop: report(pop, args, base, t0))


if __name__ == "__main__":
    main()
