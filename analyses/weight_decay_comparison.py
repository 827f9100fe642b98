"""Seed 001 (tutorial): test accuracy after 150 epochs for weight decay 0.01, 0.1, 1 and 2.

    python analyses/weight_decay_comparison.py --seeds 1  # seed 001's scale: 4 values x 1 seed (torch seed 42)
    python analyses/weight_decay_comparison.py            # 4 values x 5 seeds (42-46), median and IQR per value

The ``tutorial2`` preset (a+b mod 97, 50% train, 2 layers, d_model 128, 4 heads, FF 512, AdamW
lr 1e-3, batch 512): 4704 training pairs make 10 minibatches an epoch, so 150 epochs are 1500
steps; metrics are recorded every ``--eval-epochs`` epochs (default 5). Seed 001 reports train / test accuracy after 150
epochs of 1.000 / 0.131 (wd 0.01), 1.000 / 0.141 (0.1), 1.000 / 0.480 (1.0) and 1.000 / 1.000
(2.0), one run each. Its model was post-LN ``nn.TransformerEncoder`` layers; ours are pre-LN
(TransformerLens has no post-LN option; see the preset).
Each seed is one sweep of its own (its four members train as one ensemble) under
``--out/seed{s}``: re-running resumes, and a call with more seeds trains only the new ones. The
report is rewritten after every seed, over the seeds done so far.
Outputs (``--figures``): weight_decay_comparison.html/.png (test and train accuracy per epoch),
weight_decay_comparison.md (per value: median and IQR next to seed 001's numbers; per member) and
.json; the section between the ``weight_decay_comparison`` markers of ``--readme``.
"""

from __future__ import annotations

import json
import math
import time

import pandas as pd

import mechgrok as mg
from mechgrok import experiment as ex
from mechgrok.milestones import GROKKED_TEST_ACC
from mechgrok.plots import markdown_table, population_curves, save_figure

PUBLISHED = {0.01: (1.000, 0.131), 0.1: (1.000, 0.141), 1.0: (1.000, 0.480), 2.0: (1.000, 1.000)}
COLLAPSED_BELOW = 0.5  # a grokked run "collapses" when test accuracy later falls below this


def steps_per_epoch(cfg: mg.RunConfig) -> int:
    """Minibatches in one pass over the training split (seed 001: ceil(4704 / 512) = 10)."""
    n_train = len(mg.make_task(**{k: getattr(cfg.task, k) for k in ("op", "p", "frac", "seed")}).train_idx)
    return math.ceil(n_train / cfg.train.batch_size) if cfg.train.batch_size else 1


def member_row(r, metrics: pd.DataFrame, epoch: int) -> dict:
    """One member: final accuracies, grokking epoch and the lowest test accuracy after grokking."""
    m = metrics.sort_values("step")
    after = m[m["step"] > r.grokked_step] if not pd.isna(r.grokked_step) else m.iloc[:0]
    low = after.loc[after["test_acc"].idxmin()] if len(after) else None
    return {"weight_decay": float(r.weight_decay), "seed": int(r.seed), "final_train_acc": float(r.final_train_acc),
            "final_test_acc": float(r.final_test_acc),
            "memorised_epoch": None if pd.isna(r.memorised_step) else int(r.memorised_step) // epoch,
            "grokked_epoch": None if pd.isna(r.grokked_step) else int(r.grokked_step) // epoch,
            "min_test_acc_after_grok": None if low is None else float(low["test_acc"]),
            "min_test_acc_after_grok_epoch": None if low is None else int(low["step"]) // epoch}


def summarise(rows: list[dict], epochs: int) -> list[dict]:
    """Per weight decay: n, median and IQR of the final accuracies and of the grokking epoch (a
    member that did not grok within ``epochs`` counts as later than all: ``ex.censored_quartiles``),
    how many grokked, and how many collapsed (test acc below ``COLLAPSED_BELOW`` after grokking)."""
    out = []
    for wd in sorted({r["weight_decay"] for r in rows}):
        g = [r for r in rows if r["weight_decay"] == wd]
        collapsed = [r for r in g if r["min_test_acc_after_grok"] is not None
                     and r["min_test_acc_after_grok"] < COLLAPSED_BELOW]
        out.append({"weight_decay": wd, "n": len(g), "test_acc": ex.quartiles(r["final_test_acc"] for r in g),
                    "train_acc": ex.quartiles(r["final_train_acc"] for r in g),
                    "n_grokked": sum(r["grokked_epoch"] is not None for r in g),
                    "grokked_epoch": ex.censored_quartiles([r["grokked_epoch"] for r in g], epochs),
                    "n_collapsed_after_grok": len(collapsed),
                    "collapses": [{"seed": r["seed"], "test_acc": r["min_test_acc_after_grok"],
                                   "epoch": r["min_test_acc_after_grok_epoch"]} for r in collapsed],
                    "seed001_train_acc": PUBLISHED.get(wd, (None, None))[0],
                    "seed001_test_acc": PUBLISHED.get(wd, (None, None))[1]})
    return out


def iqr(q: dict, fmt: str = "{:.3f}") -> str:
    return "-" if not q["n"] else f"{fmt.format(q['median'])} ({fmt.format(q['q25'])} to {fmt.format(q['q75'])})"


def caption(summary: list[dict], epochs: int) -> str:
    """What the data shows, one sentence per weight decay."""
    parts = []
    for s in summary:
        grok = (f"{s['n_grokked']}/{s['n']} grokked (test acc > {GROKKED_TEST_ACC:g}), median epoch "
                f"{ex.step_text(s['grokked_epoch']['median'])}" if s["n_grokked"] else f"0/{s['n']} grokked")
        drops = "; ".join(f"seed {c['seed']} fell to {c['test_acc']:.3f} at epoch {c['epoch']}" for c in s["collapses"])
        after = (f"; after grokking, test accuracy fell below {COLLAPSED_BELOW:g} again in "
                 f"{s['n_collapsed_after_grok']}/{s['n_grokked']} ({drops})" if s["n_collapsed_after_grok"] else
                 "; none fell below 0.5 after grokking" if s["n_grokked"] else "")
        parts.append(f"wd {s['weight_decay']:g}: test acc at epoch {epochs} median {iqr(s['test_acc'])} "
                     f"(seed 001: {s['seed001_test_acc']:.3f}); {grok}{after}.")
    return " ".join(parts)


def table(summary: list[dict], epochs: int) -> str:
    return markdown_table([{"weight decay": s["weight_decay"], "n": s["n"],
                            f"test acc @{epochs} ep, median (IQR)": iqr(s["test_acc"]),
                            "seed 001 test acc": s["seed001_test_acc"],
                            f"train acc @{epochs} ep, median (IQR)": iqr(s["train_acc"]),
                            "seed 001 train acc": s["seed001_train_acc"], "grokked": f"{s['n_grokked']}/{s['n']}",
                            "grokked at epoch, median (IQR)": ex.iqr_text(s["grokked_epoch"]),
                            f"fell below {COLLAPSED_BELOW:g} after grokking": s["n_collapsed_after_grok"]}
                           for s in summary])


def head(epochs: int, epoch: int, eval_epochs: int, seeds, trained: float) -> str:
    return (f"Weight decay comparison (seed 001): tutorial2 preset, {epochs} epochs = {epochs * epoch} "
            f"steps, evaluated every {eval_epochs} epochs, {len(seeds)} seed(s) per value ({', '.join(map(str, seeds))}); "
            f"training {trained / 60:.1f} min over all invocations.")


def section(d: dict) -> str:
    """figures/README's section, from this script's JSON report alone (the claims ledger
    regenerates it from the committed file)."""
    a = d["args"]
    return "\n".join([
        "### Weight decay comparison (seed 001) — `weight_decay_comparison.png`, `.md`", "",
        f"`{d['command']}`. **Scale = seed 001's setting, more seeds:** "
        + head(a["epochs"], d["steps_per_epoch"], a["eval_epochs"], d["seeds"], d["train_seconds"])
        + " Our blocks are pre-LN where seed 001's were post-LN. Median (IQR) over seeds:", "",
        table(d["summary"], a["epochs"]).rstrip(), "", caption(d["summary"], a["epochs"])])


def report(pop, args, base: mg.RunConfig, epoch: int, t0: float):
    t = pop.table
    curves = {f"wd {r.weight_decay:g} seed {r.seed}": pop.run(r.id).metrics for r in t.itertuples()}
    rows = [member_row(r, pop.run(r.id).metrics, epoch) for r in t.itertuples()]
    summary, seeds = summarise(rows, args.epochs), sorted({r["seed"] for r in rows})
    stem = args.figures / "weight_decay_comparison"
    save_figure(population_curves(curves, ("test_acc", "train_acc"), ("test accuracy", "train accuracy"),
                                  title=f"Weight decay, {base.task.op} mod {base.task.p} (tutorial2 preset), "
                                        f"{args.epochs} epochs of {epoch} steps, {len(seeds)} seed(s) per value",
                                  x_scale=1 / epoch, x_title="epoch"), stem)
    trained = sum(r.get("seconds") or 0 for r in pop.records.values())
    text = (f"{head(args.epochs, epoch, args.eval_epochs, seeds, trained)}\n\n{table(summary, args.epochs)}\n"
            f"{caption(summary, args.epochs)}\n\nPer member:\n\n{markdown_table(rows, floatfmt='.3g')}")
    _, js = ex.write_report(stem, text, {"args": vars(args), "config": base.to_dict(), "steps_per_epoch": epoch,
                                         "rows": rows, "summary": summary, "caption": caption(summary, args.epochs),
                                         "train_seconds": trained, "table": t.drop(columns=["path"]).to_dict("records")},
                            seeds=seeds, started=t0)
    if args.readme:
        ex.write_section(args.readme, "weight_decay_comparison", section(json.loads(js.read_text())))
    print(text)
    print(f"wrote {stem}.html/.png/.md/.json")


def main():
    ap = ex.parser(__doc__, out="sweeps/weight_decay_comparison", seeds="5", overrides=True,
                   seeds_help="N: seeds per value, torch seeds 42.. (seed 001: 1, torch seed 42)")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--eval-epochs", type=int, default=5, help="evaluate every N epochs (seed 001: every epoch; "
                    "each evaluation costs about six training steps here)")
    ap.add_argument("--preset", default="tutorial2", help="base configuration (default: tutorial2)")
    ap.add_argument("--readme", default="figures/README.md", help="README whose weight_decay_comparison section "
                    "is rewritten ('' to leave it)")
    args = ex.parse_args(ap)
    base = ex.apply_overrides(mg.get_preset(args.preset), args.set)
    epoch = steps_per_epoch(base)
    steps, seeds = args.epochs * epoch, tuple(42 + s for s in ex.parse_seeds(args.seeds))
    spec = mg.SweepConfig(base, grid={"weight_decay": tuple(PUBLISHED)}, seeds=seeds, chunk_size=8,
                          fixed={"steps": steps, "eval_every": args.eval_epochs * epoch,
                                 "checkpoint_every": max(1, steps // 5), "device": "cpu"})
    t0 = time.time()
    ex.sweep_seed_by_seed(spec, args.out, after=lambda pop: report(pop, args, base, epoch, t0))


if __name__ == "__main__":
    main()
