"""Seed 001 (tutorial): test accuracy after 150 epochs for weight decay 0.01, 0.1, 1 and 2.

    python analyses/weight_decay_comparison.py            # seed 001's scale: 4 values x 1 seed, 150 epochs
    python analyses/weight_decay_comparison.py --seeds 5  # more seeds per value

The ``tutorial2`` preset (a+b mod 97, 50% train, 2 layers, d_model 128, 4 heads, FF 512, AdamW
lr 1e-3, batch 512): 4704 training pairs make 10 minibatches an epoch, so 150 epochs are 1500
steps; metrics are recorded every ``--eval-epochs`` epochs (default 5). Seed 001 reports train / test accuracy after 150
epochs of 1.000 / 0.131 (wd 0.01), 1.000 / 0.141 (0.1), 1.000 / 0.480 (1.0) and 1.000 / 1.000
(2.0). Its model was post-LN ``nn.TransformerEncoder`` layers; ours are pre-LN (see the preset).
One sweep (the four members train as one ensemble); resumable (re-run the command).
Outputs (``--figures``): weight_decay_comparison.html/.png (test and train accuracy per epoch),
weight_decay_comparison.md (ours next to seed 001's numbers) and .json.
"""

from __future__ import annotations

import time

import pandas as pd

import mechgrok as mg
from mechgrok.experiment import parse_args, parse_overrides, parse_seeds, parser, sweep_or_resume, write_report
from mechgrok.plots import markdown_table, population_curves, save_figure

PUBLISHED = {0.01: (1.000, 0.131), 0.1: (1.000, 0.141), 1.0: (1.000, 0.480), 2.0: (1.000, 1.000)}
STEPS_PER_EPOCH = 10  # ceil(4704 / 512)


def main():
    ap = parser(__doc__, out="sweeps/weight_decay_comparison", seeds="1", overrides=True,
                seeds_help="N: seeds per value, torch seeds 42.. (seed 001: 1, torch seed 42)")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--eval-epochs", type=int, default=5, help="evaluate every N epochs (seed 001: every epoch; "
                    "each evaluation costs about six training steps here)")
    ap.add_argument("--preset", default="tutorial2", help="base configuration (default: tutorial2)")
    args = parse_args(ap)
    base = mg.get_preset(args.preset)
    steps, seeds = args.epochs * STEPS_PER_EPOCH, tuple(42 + s for s in parse_seeds(args.seeds))
    spec = mg.SweepConfig(base, grid={"weight_decay": tuple(PUBLISHED)}, seeds=seeds, chunk_size=8,
                          fixed={"steps": steps, "eval_every": args.eval_epochs * STEPS_PER_EPOCH,
                                 "checkpoint_every": steps // 5, "device": "cpu"} | parse_overrides(args.set))
    t0 = time.time()
    pop = sweep_or_resume(spec, args.out)
    t = pop.table
    curves = {f"wd {r.weight_decay:g} seed {r.seed}": pop.run(r.id).metrics for r in t.itertuples()}
    stem = args.figures / "weight_decay_comparison"
    save_figure(population_curves(curves, ("test_acc", "train_acc"), ("test accuracy", "train accuracy"),
                                  title=f"Weight decay, {base.task.op} mod {base.task.p} (tutorial2 preset), "
                                        f"{args.epochs} epochs of {STEPS_PER_EPOCH} steps",
                                  x_scale=1 / STEPS_PER_EPOCH, x_title="epoch"), stem)
    rows = [{"weight decay": r.weight_decay, "seed": r.seed, f"ours train acc @{args.epochs} ep": r.final_train_acc,
             f"ours test acc @{args.epochs} ep": r.final_test_acc,
             "ours grokked at epoch": None if pd.isna(r.grokked_step) else int(r.grokked_step) // STEPS_PER_EPOCH,
             "seed 001 train acc": PUBLISHED[r.weight_decay][0], "seed 001 test acc": PUBLISHED[r.weight_decay][1]}
            for r in t.itertuples()]
    text = (f"Weight decay comparison (seed 001): tutorial2 preset, {args.epochs} epochs = {steps} steps, "
            f"{len(seeds)} seed(s) per value, {(time.time() - t0) / 60:.1f} min.\n\n" + markdown_table(rows))
    write_report(stem, text, {"args": vars(args), "base": base.to_dict(), "table": t.drop(columns=["path"]).to_dict("records")},
                 seeds=seeds, started=t0)
    print(text)
    print(f"wrote {stem}.html/.png/.md/.json")


if __name__ == "__main__":
    main()
