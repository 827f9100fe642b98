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

import time

import pandas as pd

import mechgrok as mg
from mechgrok.experiment import parse_args, parse_overrides, parse_seeds, parser, sweep_or_resume, write_report
from mechgrok.plots import grokking_step_distributions, markdown_table, save_figure
from momentum_sweep import small_or_preset  # the same small setting (analyses/ is on sys.path when run)

ARMS = {  # name -> settings; seed 004's grokking step
    "AdamW (beta1 0.9)": ({"grokfast": "none", "beta1": 0.9}, "- (the slow baseline)"),
    "Grokfast EMA + AdamW": ({"grokfast": "ema", "beta1": 0.9}, "~800"),
    "beta1 = 0.5": ({"grokfast": "none", "beta1": 0.5}, "~700"),
    "Grokfast EMA + beta1 = 0.5": ({"grokfast": "ema", "beta1": 0.5}, "worse than either"),
}


def main():
    ap = parser(__doc__, out="sweeps/grokfast_vs_momentum", seeds="3", full="30 seeds per arm", overrides=True)
    ap.add_argument("--steps", type=int, default=None, help="budget (default: the preset's)")
    ap.add_argument("--stop-after-grok", type=int, default=5)
    ap.add_argument("--chunk-size", type=int, default=8)
    ap.add_argument("--preset", default=None, help="base configuration (default: the small scale, or "
                    "dynamics with --full)")
    args = parse_args(ap)
    if args.full:
        args.seeds = "30"
    seeds, base = parse_seeds(args.seeds), small_or_preset(args.preset, args.full)
    fixed = {"stop_after_grok": args.stop_after_grok, "device": "cpu"} | ({"steps": args.steps} if args.steps else {})
    spec = mg.SweepConfig(base, settings=tuple(s for s, _ in ARMS.values()), seeds=seeds,
                          fixed=fixed | parse_overrides(args.set), chunk_size=args.chunk_size)
    t0 = time.time()
    pop = sweep_or_resume(spec, args.out)
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
    save_figure(grokking_step_distributions(groups, title=f"Grokfast vs momentum: grokking step, {len(seeds)} seeds "
                                            f"per arm (seed 004: one run per arm)"), stem)
    budget = int(t["budget"].iloc[0])
    text = (f"Grokfast vs momentum: {base.task.op} mod {base.task.p}, {base.task.frac:.0%} train, {base.model.n_layers} layer(s), "
            f"d_model {base.model.d_model}, lr {base.train.lr:g} ({args.preset or ('dynamics' if args.full else 'small scale')}), "
            f"{len(seeds)} seeds per arm, "
            f"budget {budget} steps, stop {args.stop_after_grok} evaluations after grokking; {seconds / 60:.1f} min.\n\n"
            + markdown_table(rows, floatfmt=".4g"))
    write_report(stem, text, {"args": vars(args), "base": base.to_dict(), "table": t.drop(columns=["path"]).to_dict("records")},
                 seeds=seeds, started=t0)
    print(text)
    print(f"wrote {stem}.html/.png/.md/.json")


if __name__ == "__main__":
    main()
