"""Embedding transfer (Xu et al. 2025, "Let me grok for you"): start a run from another run's
token and position embeddings and compare its grokking step with a fresh start.

    python analyses/embedding_transfer.py                  # 3 seeds, a+b mod 23 (~10 min, 1 core)

One source run (model seed 100) is trained on the same train split as every target (task seed
fixed), so the transferred embeddings carry no information about the targets' test pairs. For
each target seed s (model initialisation s, the rest identical) three arms train from scratch:
  * control: the fresh initialisation;
  * grokked source: W_E and W_pos replaced by the source's final (grokked) checkpoint;
  * early source: the same from the source's checkpoint at ``--early-step`` (memorised, not
    grokked) -- closer to Xu et al.'s "weaker model".
Embeddings keep training (``--freeze`` fixes them). Prints the grokking-step distributions and
writes figures/embedding_transfer.{html,png,md,json}.
"""

from __future__ import annotations

import json
import statistics

import mechgrok as mg
from mechgrok import interventions as iv
from mechgrok.experiment import parse_args, parse_seeds, parser, train_or_resume, write_report
from mechgrok.plots import grokking_step_distributions, markdown_table, save_figure
from mechgrok.milestones import transition_metrics


def config(model_seed: int, p: int, frac: float, steps: int) -> mg.RunConfig:
    return mg.RunConfig(
        task=mg.TaskConfig(op="add", p=p, frac=frac, seed=0),
        model=mg.ModelConfig(n_layers=1, d_model=64, n_heads=4, d_head=16, d_mlp=256, seed=model_seed),
        train=mg.TrainConfig(steps=steps, lr=3e-3, weight_decay=2.0, warmup_steps=10, eval_every=10,
                             checkpoint_every=100, device="cpu"))


def main():
    ap = parser(__doc__, out="runs/embedding_transfer", seeds="0,1,2")
    ap.add_argument("--p", type=int, default=23)
    ap.add_argument("--frac", type=float, default=0.7)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--early-step", type=int, default=100)
    ap.add_argument("--freeze", action="store_true", help="keep the transferred embeddings fixed")
    args = parse_args(ap)
    seeds = parse_seeds(args.seeds)

    src = train_or_resume(config(100, args.p, args.frac, args.steps), args.out / "source")
    sm = src.metrics.set_index("step")
    print(f"source: grokked at {transition_metrics(src.metrics).grokked_step}, test acc at early step "
          f"{args.early_step}: {sm.loc[args.early_step, 'test_acc']:.3f}", flush=True)
    arms = {"control": None, "grokked source": src.steps[-1], "early source": args.early_step}
    rows = []
    for seed in seeds:
        cfg = config(seed, args.p, args.frac, args.steps)
        for arm, step in arms.items():
            d = args.out / f"seed{seed}" / (arm.replace(" ", "_") + (f"_step{step}" if arm == "early source" else ""))
            run = train_or_resume(cfg, d) if step is None else (
                train_or_resume(mg.load_run(d).config, d) if mg.is_run_dir(d)  # its config freezes what it froze
                else iv.embedding_transfer(src, step, cfg, d, freeze=args.freeze))
            tr = transition_metrics(run.metrics)
            rows.append({"seed": seed, "arm": arm, "grokking_step": tr.grokked_step,
                         "memorisation_step": tr.memorised_step, "final_test_acc": float(run.metrics["test_acc"].iloc[-1])})
            print(json.dumps(rows[-1]), flush=True)

    groups = {arm: [r["grokking_step"] for r in rows if r["arm"] == arm] for arm in arms}
    for arm, steps in groups.items():
        ok = [s for s in steps if s is not None]
        print(f"{arm:16s} grokking steps {steps}  median {statistics.median(ok) if ok else None}")
    stem = args.figures / "embedding_transfer"
    save_figure(grokking_step_distributions(groups, title=f"Embedding transfer: a+b mod {args.p}, "
                                                          f"{len(groups['control'])} target seeds"), stem)
    table = []
    for seed in dict.fromkeys(r["seed"] for r in rows):
        cells = {a: next(r for r in rows if r["seed"] == seed and r["arm"] == a) for a in arms}
        table.append({"seed": seed} | {f"{a}: grok / memorise": f"{c['grokking_step']} / {c['memorisation_step']}"
                                       for a, c in cells.items()})
    md = markdown_table(table)
    write_report(stem, md, {"args": vars(args), "rows": rows}, seeds=seeds)
    print(md)


if __name__ == "__main__":
    main()
