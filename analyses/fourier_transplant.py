"""Seed 004's Fourier transplant, over several seeds: copy the Fourier neurons of a grokked
model into a model that has only memorised, train on, and ask whether it groks sooner.

    python analyses/fourier_transplant.py                 # 6 seeds, a+b mod 23 (~15 min, 1 core)
    python analyses/fourier_transplant.py --seeds 0,1,2 --p 23

Per seed s (task split and initialisation both seeded by s; full batch, so no batch order):
  1. train the base run until it has grokked (``--base-steps``);
  2. donor = its final checkpoint, recipient = its checkpoint at ``--recipient-step`` (after
     memorisation, long before grokking): the same network at two times, so the neurons'
     input and output spaces line up;
  3. transplant every neuron the donor has clustered on one frequency (Nanda's 85% rule:
     W_in column, b_in, W_out row) into the recipient;
  4. train the transplanted recipient and an untouched control from the same checkpoint, with
     the same settings and a fresh AdamW for both, for ``--steps`` steps; compare grokking steps
     (first evaluation with test accuracy > 0.9).
Prints both distributions and writes figures/fourier_transplant.{html,png,md,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

import mechgrok as mg
from mechgrok import interventions as iv
from mechgrok.plots import grokking_step_distributions, save_figure
from mechgrok.progress import transition_metrics
from mechgrok.runs import provenance


def base_config(seed: int, p: int, frac: float, steps: int) -> mg.RunConfig:
    return mg.RunConfig(
        task=mg.TaskConfig(op="add", p=p, frac=frac, seed=seed),
        model=mg.ModelConfig(n_layers=1, d_model=64, n_heads=4, d_head=16, d_mlp=256, seed=seed),
        train=mg.TrainConfig(steps=steps, lr=3e-3, weight_decay=2.0, warmup_steps=10, eval_every=10,
                             checkpoint_every=50, seed=seed, device="cpu"))


def describe(steps: list) -> str:
    ok = [s for s in steps if s is not None]
    med = f"median {statistics.median(ok):g}" if ok else "no seed grokked"
    return f"{ok} ({len(ok)}/{len(steps)} grokked, {med})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--p", type=int, default=23)
    ap.add_argument("--frac", type=float, default=0.7)
    ap.add_argument("--base-steps", type=int, default=1200)
    ap.add_argument("--recipient-step", type=int, default=150)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", type=Path, default=Path("runs/transplant"))
    ap.add_argument("--figures", type=Path, default=Path("figures"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure and table from the saved JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    stem = args.figures / "fourier_transplant"
    if args.plot_only:
        report(json.loads(stem.with_suffix(".json").read_text())["rows"], args, stem)
        return

    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        t = time.time()
        base_dir = args.out / f"seed{seed}" / "base"
        base = mg.load_run(base_dir) if (base_dir / "config.json").exists() else mg.train.train(
            base_config(seed, args.p, args.frac, args.base_steps), base_dir, progress=False, figure=False)
        m, tr = base.metrics, transition_metrics(base.metrics)
        row = {"seed": seed, "base_memorisation_step": tr.memorised_step, "base_grokking_step": tr.grokked_step,
               "recipient_test_acc": float(m.set_index("step").loc[args.recipient_step, "test_acc"])}
        nf = mg.fourier.neuron_frequencies(base.params(), base.task, cfg=base.model_cfg)
        row["donor_clusters"] = {k: v for k, v in nf.cluster_sizes().items() if k > 0}
        if row["base_grokking_step"] is None:
            print(f"seed {seed}: base run did not grok in {args.base_steps} steps; skipped", flush=True)
            rows.append(row)
            continue
        for arm in ("transplant", "control"):  # arms cut off half-way by an earlier attempt
            shutil.rmtree(args.out / f"seed{seed}" / arm, ignore_errors=True)
        res = iv.transplant_experiment(base, base.steps[-1], base, args.recipient_step, args.steps,
                                       out_dir=args.out / f"seed{seed}")
        row |= {"n_neurons": res["n_neurons"], "after_transplant_test_acc": res["after_transplant"]["test_acc"],
                "after_transplant_train_acc": res["after_transplant"]["train_acc"],
                "transplant_grokking_step": res["transplant"]["grokking_step"],
                "control_grokking_step": res["control"]["grokking_step"],
                "transplant_final_test_acc": res["transplant"]["final_test_acc"],
                "control_final_test_acc": res["control"]["final_test_acc"], "seconds": round(time.time() - t, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    args.figures.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                     "provenance": provenance(), "rows": rows}, indent=1) + "\n")
    report(rows, args, stem)


def report(rows: list[dict], args, stem: Path):
    done = [r for r in rows if "control_grokking_step" in r]
    groups = {"base run": [r["base_grokking_step"] for r in done],
              "control (from recipient step)": [r["control_grokking_step"] for r in done],
              "transplant": [r["transplant_grokking_step"] for r in done]}
    for name, steps in groups.items():
        print(f"{name:32s} grokking steps: {describe(steps)}")
    save_figure(grokking_step_distributions(
        groups, title=f"Fourier-neuron transplant at step {args.recipient_step}: a+b mod {args.p}, {len(done)} seeds<br>"
                      f"both arms trained to step {args.recipient_step + args.steps}"), stem)
    end = f"not by {args.recipient_step + args.steps}"
    lines = ["| seed | base run: memorised / grokked | clustered neurons moved | test acc right after transplant | "
             "grokking step: control | grokking step: transplant |", "|---|---|---|---|---|---|"]
    for r in done:
        lines.append(f"| {r['seed']} | {r['base_memorisation_step']} / {r['base_grokking_step']} | {r['n_neurons']} | "
                     f"{r['after_transplant_test_acc']:.1%} "
                     f"(recipient before: {r['recipient_test_acc']:.1%}) | {r['control_grokking_step'] or end} | "
                     f"{r['transplant_grokking_step'] or end} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
