"""Seed 000 ("Grokking has two phases"): freeze one component at a checkpoint of the
memorisation plateau, train on, and see whether the model still groks.

    python analyses/freezing_phases.py            # the documented small scale (~15 min, 1 core)
    python analyses/freezing_phases.py --full     # the published scale (division4, 7k/11k, +10k)
    python analyses/freezing_phases.py --full --compile --at-fractions 0.355,0.613
        # the same, compiled (~1.4x faster per step), from the checkpoints nearest the fractions
        # of OUR plateau at which 7k and 11k sit on seed 000's ~1.5k-17k
    python analyses/freezing_phases.py --full --compile --base-as-is --from-steps 3000   # one
        # checkpoint per process: two processes share the base run and --out/results.jsonl (train
        # it first, with --base-only); then --at-fractions ... --report-only writes the report

The published scale (20k + 22 x 10k steps of a 4-layer d_model-128 model at batch 64) takes
about 3.5 hours on one CPU core here, so the default shrinks the problem but keeps its shape:
division mod 47 instead of 97, d_model 64 (4 heads x 16, MLP 256) instead of 128, lr 1e-3 and
weight decay 1.0 instead of 3e-4 and 0.3 (the plateau ends about ten times sooner). The two
checkpoints (900, 1200) sit EARLIER on this run's plateau (memorised to grokked) than 7k and 11k
sit on the published ~1.5k-17k one; figures/README.md computes both fractions from the data
(analyses/claims_ledger.py). The rest is the division4 preset: 4 layers, GELU, pre-LN and final
LN, batch 64, betas (0.9, 0.999), no warm-up, 50% train.

Outputs: the base run and one run per (checkpoint, intervention) under --out (re-running skips
the continuations recorded in --out/results.jsonl); the table (ours next to the published
numbers), the paired-bar figure and the raw results in --figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

import mechgrok as mg
from mechgrok import experiment as ex
from mechgrok import interventions as iv
from mechgrok.milestones import transition_metrics
from mechgrok.plots import freezing_bars, markdown_table, save_figure, training_curve

# Seed 000's final test accuracies (its results JSON): checkpoint 7k, checkpoint 11k.
PUBLISHED = {
    "baseline": (0.918, 0.9727), "no_weight_decay": (0.0273, 0.0859), "head": (0.4102, 0.9531),
    "embeddings": (0.7734, 0.9883), "exit_layer": (0.0703, 0.4492), "exit_attn": (0.6719, 0.6484),
    "exit_mlp": (0.2109, 0.8633), "entry_layer": (0.3203, 0.957), "middle_layers": (0.0352, 0.0859),
    "attn_all": (0.0312, 0.3906), "mlp_all": (0.0586, 0.1289),
}


def checkpoints(run: mg.Run, args) -> tuple[list[int], str]:
    """The steps to intervene at, and the rule that chose them, in words for the report: the
    steps asked for, or (--at-fractions) the saved checkpoints nearest those fractions of the
    base run's plateau, which needs a base run that memorised and grokked."""
    if not args.at_fractions:
        return [int(s) for s in args.from_steps.split(",")], "the steps given"
    tr = transition_metrics(run.metrics)
    if tr.memorised_step is None or tr.grokked_step is None:
        raise SystemExit(f"--at-fractions: the base run {run.path} has no plateau to take fractions of (memorised at "
                         f"{tr.memorised_step}, grokked at {tr.grokked_step}); train it longer (--base-steps) or "
                         f"give --from-steps")
    fracs = [float(f) for f in args.at_fractions.split(",")]
    mem, grok, saved = tr.memorised_step, tr.grokked_step, run.steps
    steps = [min(saved, key=lambda s: abs(s - (mem + f * (grok - mem)))) for f in fracs]
    return steps, (f"the saved checkpoints nearest {', '.join(f'{f:g}' for f in fracs)} of the base run's plateau "
                   f"({mem} to {grok}): " + ", ".join(f"{s} ({(s - mem) / (grok - mem):.3f})" for s in steps))


def plateau_low(m: pd.DataFrame, mem: int | None, grok: int | None) -> dict | None:
    """The lowest train accuracy between memorising and grokking, and its step: a plateau that
    ends in a collapse of the fit (as seed 000's scale does here) is not the same as one that ends
    in a smooth rise of test accuracy."""
    if None in (mem, grok):
        return None
    low = m[(m["step"] > mem) & (m["step"] < grok)].nsmallest(1, "train_acc")
    return None if low.empty else {"step": int(low["step"].iloc[0]), "train_acc": float(low["train_acc"].iloc[0])}


def base_wall_seconds(run: mg.Run) -> float:
    """Wall time from the base run's first checkpoint to its last (a resumed run's pauses
    included): the report is often written by a later invocation than the one that trained it."""
    times = [p.stat().st_mtime for p in (run.path / "checkpoints").glob("step_*.safetensors")]
    return round(max(times) - min(times), 1)


def main():
    ap = ex.parser(__doc__, out=None, full="published scale: division4, 7000/11000, +10000")
    ap.add_argument("--out", type=Path, default=None, help="base run and continuations (default runs/freezing, "
                    "runs/freezing_full with --full; re-running reuses them)")
    ap.add_argument("--p", type=int, default=47)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=1.0)
    ap.add_argument("--base-steps", type=int, default=None, help="base run length (default 2000; --full 20000)")
    ap.add_argument("--from-steps", default=None, help="checkpoints to intervene at (default 900,1200; --full 7000,11000)")
    ap.add_argument("--at-fractions", default=None, help="F1,F2 instead of --from-steps: the saved checkpoints nearest "
                    "these fractions of the base run's plateau (memorised to grokked at 0.9); 0.355,0.613 is where "
                    "seed 000's 7k and 11k sit on its ~1.5k-17k")
    ap.add_argument("--steps", type=int, default=None, help="steps to train on after each intervention (default 1000; "
                    "--full 10000)")
    ap.add_argument("--compile", action="store_true", help="torch.compile every step (TrainConfig.compile; not "
                    "bit-identical to eager, and a base run cannot switch)")
    ap.add_argument("--interventions", default="all")
    ap.add_argument("--report-only", action="store_true", help="train nothing: write the report from the "
                    "continuations --out/results.jsonl already holds (the rest read 'not run yet')")
    ap.add_argument("--base-as-is", action="store_true", help="use the base run under --out as it stands (stopped "
                    "by hand once it had grokked), training none of it; the report gives its last step")
    ap.add_argument("--base-only", action="store_true", help="train (or resume) the base run, print its milestones "
                    "and the checkpoints it would use, and stop")
    args = ex.parse_args(ap)
    args.out = args.out or Path("runs/freezing_full" if args.full else "runs/freezing")
    full = {"base_steps": 20_000, "from_steps": "7000,11000", "steps": 10_000}
    small = {"base_steps": 2000, "from_steps": "900,1200", "steps": 1000}
    for k, v in (full if args.full else small).items():
        setattr(args, k, getattr(args, k) if getattr(args, k) is not None else v)
    if args.full:
        cfg = mg.configure("division4", steps=args.base_steps, device="cpu", checkpoint_every=500,
                           compile=args.compile)
    else:
        cfg = mg.configure("division4", p=args.p, d_model=args.d_model, d_head=args.d_model // 4, d_mlp=4 * args.d_model,
                           steps=args.base_steps, lr=args.lr, weight_decay=args.wd, eval_every=50,
                           checkpoint_every=100, device="cpu", compile=args.compile)
    t0 = time.time()
    run = mg.load_run(args.out / "base") if args.base_as_is else ex.train_or_resume(cfg, args.out / "base")
    if args.base_as_is and run.config != cfg:
        raise SystemExit(f"{args.out / 'base'} holds a run of other settings than these (--base-as-is uses it as it is)")
    from_steps, rule = checkpoints(run, args)
    m, tr = run.metrics, transition_metrics(run.metrics)
    at = m.set_index("step")
    print(f"base run {args.out / 'base'}: {run.task.describe()}, memorised at {tr.memorised_step}, grokked at "
          f"{tr.grokked_step}; test acc at checkpoints: " + ", ".join(f"{s}: {at.loc[s, 'test_acc']:.3f}"
                                                                  for s in from_steps) + f" ({rule})", flush=True)
    if args.base_only:
        return
    names = iv.parse_interventions(args.interventions, run.model_cfg.n_layers)
    results = iv.freeze_sweep(run, from_steps, names, args.steps, out_dir=args.out, trajectories=True,
                              train=not args.report_only)
    # freeze_sweep's <NA> ("never grokked") as the None of the report's JSON
    done = {(r["from_step"], r["name"]): r | {"grokking_step": None if pd.isna(r["grokking_step"]) else int(r["grokking_step"])}
            for r in results.to_dict("records")}
    if not done:
        raise SystemExit(f"{args.out / 'results.jsonl'}: no continuation of these settings finished yet: nothing to report")
    published = pd.DataFrame([{"name": n, "from_step_index": i, "final_test_acc": PUBLISHED[n][i]}
                              for n in names for i in range(2)])
    stem = args.figures / ("freezing_phases_full" if args.full else "freezing_phases")
    save_figure(freezing_bars(results, published=published, title=(
        f"Freeze and continue: {run.task.describe()}, {run.model_cfg.n_layers} layers, d_model "
        f"{run.model_cfg.d_model}; final test accuracy {args.steps} steps after freezing")), stem)
    save_figure(training_curve(m, title=f"freezing base run: {run.task.describe()}",
                               marks={f"ckpt {s}": s for s in from_steps}), stem.with_name(stem.name + "_base"))

    def cell(r):
        if r is None:
            return "not run yet"
        g = r["grokking_step"]
        return f"{r['final_test_acc']:.1%} (max {r['max_test_acc']:.0%}, {'grok ' + str(g) if g is not None else 'no grok'})"

    n_asked = len(from_steps) * len(names)
    names = [n for n in names if any((s, n) in done for s in from_steps)]
    first = {n: next(done[(s, n)] for s in from_steps if (s, n) in done) for n in names}
    table = markdown_table([
        {"intervention": n, "trainable / total": f"{first[n]['trainable_params']:,} / {first[n]['total_params']:,}",
         **{f"ours from {s}": cell(done.get((s, n))) for s in from_steps[:2]},
         "published from 7k": f"{PUBLISHED[n][0]:.1%}", "published from 11k": f"{PUBLISHED[n][1]:.1%}"} for n in names])
    meta = {"config": cfg.to_dict(), "from_steps": from_steps, "checkpoint_rule": rule, "steps": args.steps,
            "base_memorisation_step": tr.memorised_step, "base_grokking_step": tr.grokked_step,
            "base_test_acc_at_checkpoints": {s: float(at.loc[s, "test_acc"]) for s in from_steps},
            "base_plateau_low": plateau_low(m, tr.memorised_step, tr.grokked_step),
            "base_wall_seconds": base_wall_seconds(run), "base_steps": int(m["step"].max()),
            "continuations": {"done": len(done), "asked": n_asked}}
    rows = [{k: v for k, v in done[(s, n)].items() if k != "trajectory"} for s in from_steps for n in names
            if (s, n) in done]
    ex.write_report(stem, table, {"meta": meta, "results": rows}, seeds=[cfg.model.seed], started=t0)
    print(table + f"\nwrote {stem}.html/.png/.md/.json")


if __name__ == "__main__":
    main()
