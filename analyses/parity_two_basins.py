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

import argparse
import json
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from mechgrok.plots import markdown_table, population_curves, save_figure
from mechgrok.population import SweepConfig, read_manifest, run_sweep
from mechgrok.presets import configure, get_preset
from mechgrok.provenance import provenance

PUBLISHED = {True: "eventually generalises (weight norm falls into the low-norm basin)",
             False: "can stay memorised indefinitely"}

# default: seed 002's 10-bit parity on the demo preset's 1-layer model (d_model 128, AdamW lr 1e-3,
# wd 1, betas (0.9, 0.98)), 2000 full-batch steps, 30% of the 1024 strings for training (with half of
# them, both arms generalise within ~150 steps, before memorising: no plateau to compare)
SMALL = dict(op="parity", n_bits=10, frac=0.3, steps=2000, eval_every=20, checkpoint_every=500)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--wd", type=float, default=None, help="the weight-decay arm (default: the preset's)")
    ap.add_argument("--steps", type=int, default=None, help="budget (default: the preset's)")
    ap.add_argument("--out", type=Path, default=Path("sweeps/parity_two_basins"))
    ap.add_argument("--figures", type=Path, default=Path("figures"))
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=V",
                    help="any other config field for every member, e.g. --set eval_every=20 (repeatable)")
    ap.add_argument("--preset", default=None, help="base configuration (default: SMALL, the demo preset on "
                    "10-bit parity; e.g. --preset parity)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = get_preset(args.preset) if args.preset else configure("demo", **SMALL)
    wd = args.wd if args.wd is not None else base.train.weight_decay
    fixed = {"device": "cpu"} | ({"steps": args.steps} if args.steps else {}) | dict(a.split("=", 1) for a in args.set)
    spec = SweepConfig(base, grid={"weight_decay": (wd, 0.0)}, seeds=args.seeds, fixed=fixed)
    t0 = time.time()
    pop = run_sweep(spec, args.out, resume=(args.out / "sweep.json").exists())
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
    args.figures.mkdir(parents=True, exist_ok=True)
    t = pop.run(0).config.task  # the members' task (--set may change the base's)
    save_figure(population_curves(curves, ("test_acc", "train_acc", "weight_norm"),
                                  ("test accuracy", "train accuracy", "weight norm"),
                                  title=f"{t.n_bits}-bit parity, {t.frac:.0%} train: with and without weight decay"), stem)
    text = (f"Parity with and without weight decay (seed 002): {args.preset + ' preset' if args.preset else 'demo model (SMALL)'} "
            f"({t.n_bits} bits, {t.frac:.0%} train), "
            f"{pop.table['budget'].iloc[0]} steps, {args.seeds} seeds per arm; training {trained / 60:.1f} min "
            f"(this invocation {seconds / 60:.1f} min).\n\n"
            + markdown_table(rows, floatfmt=".4g")
            + f"\nCommand: `OMP_NUM_THREADS=1 python analyses/parity_two_basins.py {' '.join(sys.argv[1:])}`\n")
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "base": base.to_dict(), "seconds": round(seconds, 1),
        "rows": rows, "provenance": provenance()}, indent=1, default=str) + "\n")
    print(text)
    print(f"wrote {stem}.html/.png/.md/.json")


if __name__ == "__main__":
    main()
