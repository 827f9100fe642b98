"""Seed 004: is Grokfast doing anything beyond lowering Adam's momentum?

    python analyses/grokfast_vs_momentum.py            # 4 arms x 3 seeds (see figures/grokfast_vs_momentum.md)
    python analyses/grokfast_vs_momentum.py --full     # 4 arms x 30 seeds

Four arms of the ``dynamics`` preset (a+b mod 113, 2 layers), one sweep with explicit settings:
default AdamW (beta1 0.9), Grokfast EMA (alpha 0.98, lambda 2) + default AdamW, beta1 = 0.5, and
Grokfast + beta1 = 0.5. Seed 004: Grokfast + default Adam groks at ~800 steps, beta1 = 0.5 at
~700, both together worse than either ("the two interventions are redundant").

The default (small) scale: the published setting (a+b mod 113, 2 layers, ~1000 steps to grok)
costs minutes per member on the 2 shared CPU cores this was run on, so the small scale uses the
test suite's grokking setting instead: a+b mod 23, 70% train, Nanda's 1-layer model at d_model 64
(4 heads x 16, d_mlp 256), full-batch AdamW lr 3e-3, wd 1, 1500 steps, evaluated every 10 steps
(``SMALL`` of momentum_sweep.py: the ``demo`` preset with those fields). ``--full`` uses the ``dynamics`` preset.

Members stop ``--stop-after-grok`` evaluations after grokking. Resumable (re-run the command).
Outputs (``--figures``): grokfast_vs_momentum.html/.png (grokking step per member and arm),
grokfast_vs_momentum.md (table next to seed 004's numbers) and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from mechgrok.plots import grokking_step_distributions, markdown_table, save_figure
from mechgrok.population import SweepConfig, run_sweep
from mechgrok.provenance import provenance
from momentum_sweep import small_or_preset  # the same small setting (analyses/ is on sys.path when run)

ARMS = {  # name -> settings; seed 004's grokking step
    "AdamW (beta1 0.9)": ({"grokfast": "none", "beta1": 0.9}, "- (the slow baseline)"),
    "Grokfast EMA + AdamW": ({"grokfast": "ema", "beta1": 0.9}, "~800"),
    "beta1 = 0.5": ({"grokfast": "none", "beta1": 0.5}, "~700"),
    "Grokfast EMA + beta1 = 0.5": ({"grokfast": "ema", "beta1": 0.5}, "worse than either"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="30 seeds per arm")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="budget (default: the preset's)")
    ap.add_argument("--stop-after-grok", type=int, default=5)
    ap.add_argument("--chunk-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("sweeps/grokfast_vs_momentum"))
    ap.add_argument("--figures", type=Path, default=Path("figures"))
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=V",
                    help="any other config field for every member, e.g. --set eval_every=20 (repeatable)")
    ap.add_argument("--preset", default=None, help="base configuration (default: the small scale, or "
                    "dynamics with --full)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.full:
        args.seeds = 30
    base = small_or_preset(args.preset, args.full)
    fixed = {"stop_after_grok": args.stop_after_grok, "device": "cpu"} | ({"steps": args.steps} if args.steps else {})
    fixed |= dict(a.split("=", 1) for a in args.set)
    spec = SweepConfig(base, settings=tuple(s for s, _ in ARMS.values()), seeds=args.seeds, fixed=fixed,
                       chunk_size=args.chunk_size)
    t0 = time.time()
    pop = run_sweep(spec, args.out, resume=(args.out / "sweep.json").exists())
    seconds = time.time() - t0
    t = pop.table
    summary = pop.summary(["grokfast", "beta1"])
    rows, groups = [], {}
    for name, (s, published) in ARMS.items():
        r = summary.loc[(s["grokfast"], s["beta1"])]
        members = t[(t["grokfast"] == s["grokfast"]) & (t["beta1"] == s["beta1"])]
        groups[name] = [None if pd.isna(g) else int(g) for g in members["grokked_step"]]
        rows.append({"arm": name, "grokked": f"{int(r['n_grokked'])}/{int(r['n'])}",
                     "grokking step (median)": r["grokked_step_median"],
                     "steps": ", ".join("-" if g is None else str(g) for g in groups[name]),
                     "delay (median)": r["delay_median"], "seed 004 grokking step": published})
    stem = args.figures / ("grokfast_vs_momentum_full" if args.full else "grokfast_vs_momentum")
    args.figures.mkdir(parents=True, exist_ok=True)
    save_figure(grokking_step_distributions(groups, title=f"Grokfast vs momentum: grokking step, {args.seeds} seeds "
                                            f"per arm (seed 004: one run per arm)"), stem)
    budget = int(t["budget"].iloc[0])
    text = (f"Grokfast vs momentum: {base.task.op} mod {base.task.p}, {base.task.frac:.0%} train, {base.model.n_layers} layer(s), "
            f"d_model {base.model.d_model}, lr {base.train.lr:g} ({args.preset or ('dynamics' if args.full else 'small scale')}), "
            f"{args.seeds} seeds per arm, "
            f"budget {budget} steps, stop {args.stop_after_grok} evaluations after grokking; {seconds / 60:.1f} min.\n\n"
            + markdown_table(rows, floatfmt=".4g")
            + f"\nCommand: `OMP_NUM_THREADS=1 python analyses/grokfast_vs_momentum.py {' '.join(sys.argv[1:])}`\n")
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "base": base.to_dict(), "seconds": round(seconds, 1),
        "table": t.drop(columns=["path"]).to_dict("records"), "provenance": provenance()}, indent=1, default=str) + "\n")
    print(text)
    print(f"wrote {stem}.html/.png/.md/.json")


if __name__ == "__main__":
    main()
