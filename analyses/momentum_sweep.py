"""Seed 004 ("Grokking Dynamics"): how Adam's beta1 and the weight decay set the grokking delay.

    python analyses/momentum_sweep.py            # the documented small scale (see figures/momentum_sweep.md)
    python analyses/momentum_sweep.py --full     # the published scale: 13 beta1 x 30 seeds, 9 wd x 30 seeds

Two sweeps of the base (``mechgrok sweep``s; members stop ``--stop-after-grok`` evaluations after
grokking, and the steps this saves are reported; re-running finishes an interrupted sweep):

* beta1 at the base's weight decay: delay = grokking step - memorisation step, median and IQR
  per beta1, grok rate. Seed 004: flat at ~280-345 steps for beta1 <= 0.4, rising sharply past
  0.5; beta1 = 0 still has ~300 steps.
* weight decay at beta1 = 0, 3000 steps. Seed 004: wd 0 -> 5/30 grok, wd 1 -> all grok (delay
  ~300), wd 2 -> generalises without memorising first, wd 5 -> nothing learns (four of its nine
  values; ``--full`` adds five in between).

``--full`` uses the ``dynamics`` preset (a+b mod 113, 2 layers, ~1000 steps to grok: minutes per
member on the 2 shared CPU cores this ran on). The default small scale is the test suite's
grokking setting (``SMALL``: the ``demo`` preset at a+b mod 23, 70% train, d_model 64, 4 heads x
16, d_mlp 256, full-batch AdamW lr 3e-3, wd 1, 1500 steps, evaluated every 10 steps).
Outputs (``--figures``): momentum_sweep_beta1.*, momentum_sweep_wd.* (median delay with IQR
band, grok rate), momentum_sweep.md (tables next to seed 004's) and .json.
"""

from __future__ import annotations

import time

import mechgrok as mg
from mechgrok import experiment as ex
from mechgrok.plots import markdown_table, population_summary, save_figure

FULL_BETA1 = (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)  # seed 004's 13 values (figure axis)
SMALL_BETA1 = (0, 0.4, 0.6, 0.9, 0.95)
FULL_WD = (0, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5)  # 0, 0.25, 1, 2, 5 are seed 004's; the others fill in
SMALL_WD = (0, 1, 2, 5)
PUBLISHED_BETA1 = "delay flat at ~280-345 steps for beta1 <= 0.4, rising sharply past 0.5 (2-3x at high beta1)"
PUBLISHED_WD = {0.0: "5/30 grok within 3000 steps", 1.0: "30/30 grok, delay ~300",
                2.0: "generalises without memorising first", 5.0: "nothing learns", 0.25: "slow erosion, collapses"}
# the small scale: the test suite's grokking run (tests/conftest.py grokked_run), demo preset otherwise
SMALL = dict(p=23, frac=0.7, d_model=64, n_heads=4, d_head=16, d_mlp=256, lr=3e-3, weight_decay=1.0, warmup_steps=10,
             steps=1500, eval_every=10, checkpoint_every=500)


def small_or_preset(preset: str | None, full: bool):
    return mg.get_preset(preset or "dynamics") if preset or full else mg.configure("demo", **SMALL)


def sweep(spec: mg.SweepConfig, out, stem, title: str, name: str, result: dict):
    """Run (or finish) the sweep over its one field, draw its figure, and record its summary,
    seconds and steps trained (of the budget without stop-after-grok) in ``result[name...]``."""
    t0 = time.time()
    pop = ex.sweep_or_resume(spec, out)
    summary, field = pop.summary(spec.fields[0]), spec.fields[0]
    save_figure(population_summary(summary, field, title=title), stem.with_name(f"{stem.name}_{name}"))
    result |= {name: summary.reset_index().to_dict("records"), f"{name}_seconds": round(time.time() - t0, 1),
               f"{name}_steps_trained": int(pop.table["last_step"].sum()),
               f"{name}_steps_budget": int(pop.table["budget"].sum())}
    return pop, summary.reset_index()


def main():
    ap = ex.parser(__doc__, out="sweeps/momentum", seeds="3", seeds_help="seeds per beta1 value: N, A-B or a,b,c",
                   full="published scale: 13 beta1 x 30 seeds, 9 wd x 30 seeds", overrides=True)
    ap.add_argument("--beta1", default=",".join(map(str, SMALL_BETA1)))
    ap.add_argument("--wd", default=",".join(map(str, SMALL_WD)))
    ap.add_argument("--wd-seeds", default="2", help="seeds per weight decay value")
    ap.add_argument("--steps", type=int, default=None, help="beta1 sweep budget (default: the preset's)")
    ap.add_argument("--wd-steps", type=int, default=None, help="weight-decay sweep budget (default: the base's "
                    "steps; --full: 3000, seed 004's)")
    ap.add_argument("--stop-after-grok", type=int, default=5)
    ap.add_argument("--chunk-size", type=int, default=8)
    ap.add_argument("--skip-wd", action="store_true", help="only the beta1 sweep")
    ap.add_argument("--preset", default=None, help="base configuration (default: the small scale, or "
                    "dynamics with --full)")
    args = ex.parse_args(ap)
    if args.full:
        args.beta1, args.wd, args.seeds, args.wd_seeds = ",".join(map(str, FULL_BETA1)), ",".join(map(str, FULL_WD)), "30", "30"
        args.wd_steps = args.wd_steps or 3000
    base = small_or_preset(args.preset, args.full)
    args.wd_steps = args.wd_steps or base.train.steps
    seeds, wd_seeds = ex.parse_seeds(args.seeds), ex.parse_seeds(args.wd_seeds)
    fixed = {"stop_after_grok": args.stop_after_grok, "device": "cpu"} | ({"steps": args.steps} if args.steps else {})
    fixed |= ex.parse_overrides(args.set)
    stem, t0, result = args.figures / ("momentum_sweep_full" if args.full else "momentum_sweep"), time.time(), {}
    t, m, tr = base.task, base.model, base.train

    b_pop, b_sum = sweep(mg.SweepConfig(base, grid={"beta1": args.beta1.split(",")}, seeds=seeds, fixed=fixed,
                                        chunk_size=args.chunk_size), args.out / "beta1", stem,
                         f"beta1 sweep: {t.op} mod {t.p}, {len(seeds)} seeds per value (seed 004: 30)", "beta1", result)
    done, budget = result["beta1_steps_trained"], result["beta1_steps_budget"]
    report = [f"Setting: {t.op} mod {t.p}, {t.frac:.0%} train, {m.n_layers} layer(s), d_model {m.d_model}, d_mlp "
              f"{m.d_mlp}, AdamW lr {tr.lr:g}, batch {tr.batch_size or 'full'}, eval every {tr.eval_every} steps "
              f"({'dynamics preset' if args.full and args.preset is None else args.preset or 'small scale'}); "
              f"device cpu, {args.threads} thread(s).\n",
              f"## beta1 sweep ({len(b_pop)} members: {len(b_sum)} values x {len(seeds)} seeds, budget "
              f"{b_pop.table['budget'].iloc[0]} steps, stop {args.stop_after_grok} evaluations after grokking)\n",
              f"Seed 004 (13 values x 30 seeds): {PUBLISHED_BETA1}.\n",
              markdown_table(b_sum, ["beta1", "n", "n_grokked", "delay_median", "delay_q25", "delay_q75",
                                     "memorised_step_median", "grokked_step_median"], floatfmt=".4g"),
              f"\nSteps trained {done:,} of {budget:,} ({1 - done / budget:.0%} saved by stop-after-grok); "
              f"{result['beta1_seconds'] / 60:.1f} min.\n"]
    if not args.skip_wd:
        w_pop, w_sum = sweep(mg.SweepConfig(base, grid={"weight_decay": args.wd.split(",")}, seeds=wd_seeds,
                                            chunk_size=args.chunk_size, fixed=fixed | {"beta1": 0.0, "steps": args.wd_steps}),
                             args.out / "wd", stem, f"weight-decay sweep at beta1 = 0, {args.wd_steps} steps, "
                             f"{len(wd_seeds)} seeds per value (seed 004: 30)", "wd", result)
        w_sum["seed 004"] = [PUBLISHED_WD.get(float(w), "-") for w in w_sum["weight_decay"]]
        w_sum["grokked"] = [f"{int(g)}/{int(n)}" for g, n in zip(w_sum["n_grokked"], w_sum["n"])]
        report += [f"\n## weight-decay sweep at beta1 = 0 ({len(w_pop)} members, budget {args.wd_steps} steps)\n",
                   markdown_table(w_sum, ["weight_decay", "grokked", "delay_median", "delay_q25", "delay_q75",
                                          "n_grokked_before_memorising", "final_test_acc_mean", "seed 004"],
                                  floatfmt=".4g"), f"\n{result['wd_seconds'] / 60:.1f} min.\n"]
    text = "\n".join(report)
    ex.write_report(stem, text, {"args": vars(args), "base": base.to_dict(), **result}, seeds=seeds, started=t0)
    print(text + f"\nwrote {stem}.md/.json and figures")


if __name__ == "__main__":
    main()
