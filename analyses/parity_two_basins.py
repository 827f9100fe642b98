"""Seed 002 ("Grokking as a phase transition"): 10-bit parity with and without weight decay.

    python analyses/parity_two_basins.py              # 2 arms x 2 seeds, 30% train
    python analyses/parity_two_basins.py --set frac=0.1 --steps 3000 --out sweeps/parity_f10   # figures/parity_two_basins.md
    python analyses/parity_two_basins.py --seeds 10   # more seeds

10-bit parity (seed 002's example 2; by default the ``demo`` preset's 1-layer model on 30% of
the 1024 strings, 2000 full-batch steps, ``SMALL`` below; ``--preset parity`` for the preset)
trained with the base's weight decay and with none, weight norm recorded at every evaluation (sqrt of the summed squared weights).
Seed 002's claim (qualitative, no numbers): memorising solutions sit at a higher weight norm;
with weight decay the model eventually generalises as the norm falls, without it the model can
stay in the memorisation basin indefinitely. One sweep; resumable (re-run the command).
Outputs (``--figures``): parity_two_basins.html/.png (test accuracy and weight norm per member),
parity_two_basins.md (per member: memorised, grokked, weight norm at memorisation and at the
end) and .json.
"""

from __future__ import annotations

import math
import time

import pandas as pd

import mechgrok as mg
from mechgrok.experiment import parse_args, parse_overrides, parse_seeds, parser, sweep_or_resume, write_report
from mechgrok.plots import markdown_table, population_curves, save_figure
from mechgrok.population import read_manifest

PUBLISHED = {True: "eventually generalises (weight norm falls into the low-norm basin)",
             False: "can stay memorised indefinitely"}

# default: seed 002's 10-bit parity on the demo preset's 1-layer model (d_model 128, AdamW lr 1e-3,
# wd 1, betas (0.9, 0.98)), 2000 full-batch steps, 30% of the 1024 strings for training (with half of
# them, both arms generalise within ~150 steps, before memorising: no plateau to compare)
SMALL = dict(op="parity", n_bits=10, frac=0.3, steps=2000, eval_every=20, checkpoint_every=500)


def main():
    ap = parser(__doc__, out="sweeps/parity_two_basins", seeds="2", overrides=True)
    ap.add_argument("--wd", type=float, default=None, help="the weight-decay arm (default: the preset's)")
    ap.add_argument("--steps", type=int, default=None, help="budget (default: the preset's)")
    ap.add_argument("--preset", default=None, help="base configuration (default: SMALL, the demo preset on "
                    "10-bit parity; e.g. --preset parity)")
    args = parse_args(ap)
    base = mg.get_preset(args.preset) if args.preset else mg.configure("demo", **SMALL)
    wd = args.wd if args.wd is not None else base.train.weight_decay
    seeds = parse_seeds(args.seeds)
    fixed = {"device": "cpu"} | ({"steps": args.steps} if args.steps else {}) | parse_overrides(args.set)
    t0 = time.time()
    pop = sweep_or_resume(mg.SweepConfig(base, grid={"weight_decay": (wd, 0.0)}, seeds=seeds, fixed=fixed), args.out)
    seconds = time.time() - t0
    trained = sum(r["seconds"] for r in read_manifest(args.out).values())  # training time, over all invocations
    curves, rows = {}, []
    for r in pop.table.itertuples():
        m = pop.run(r.id).metrics.assign(weight_norm=lambda d: d["weight_sq"] ** 0.5)
        curves[f"wd {r.weight_decay:g} seed {r.seed}"] = m
        at = m.set_index("step")["weight_norm"]
        rows.append({"weight decay": r.weight_decay, "seed": r.seed,
                     "memorised at": None if pd.isna(r.memorised_step) else int(r.memorised_step),
                     "grokked at": None if pd.isna(r.grokked_step) else int(r.grokked_step),
                     "norm at start": at.iloc[0],
                     "norm at memorisation": math.nan if pd.isna(r.memorised_step) else at[int(r.memorised_step)],
                     "norm at end": at.iloc[-1], "final test acc": r.final_test_acc,
                     "seed 002": PUBLISHED[r.weight_decay > 0]})
    stem = args.figures / "parity_two_basins"
    t = pop.run(0).config.task  # the members' task (--set may change the base's)
    save_figure(population_curves(curves, ("test_acc", "train_acc", "weight_norm"),
                                  ("test accuracy", "train accuracy", "weight norm"),
                                  title=f"{t.n_bits}-bit parity, {t.frac:.0%} train: with and without weight decay"), stem)
    text = (f"Parity with and without weight decay (seed 002): {args.preset + ' preset' if args.preset else 'demo model (SMALL)'} "
            f"({t.n_bits} bits, {t.frac:.0%} train), "
            f"{pop.table['budget'].iloc[0]} steps, {len(seeds)} seeds per arm; training {trained / 60:.1f} min "
            f"(this invocation {seconds / 60:.1f} min).\n\n" + markdown_table(rows, floatfmt=".4g"))
    write_report(stem, text, {"args": vars(args), "base": base.to_dict(), "rows": rows}, seeds=seeds, started=t0)
    print(text)
    print(f"wrote {stem}.html/.png/.md/.json")


if __name__ == "__main__":
    main()
