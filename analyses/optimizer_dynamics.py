"""Seed 004 ("Grokking Dynamics"), "What the geometry is doing": each claim about the optimizer's
geometry re-measured with mechgrok's probes, next to the seed's number.

    python analyses/optimizer_dynamics.py                      # documented small scale (see the caption)
    python analyses/optimizer_dynamics.py --seeds 0,1,2 --steps 3000 --pop-seeds 30   # closer to the seed

1. Probed runs of the ``dynamics`` preset (a+b mod 113, 2 layers) at weight decay 1, one per
   ``--seeds`` value, probed every ``--probe-every`` steps (Hessian top eigenvalue by 3 warm-started
   power iterations, gradient agreement, momentum cosine, effective rank of 32 per-sample
   gradients): the Hessian's rise and fall, agreement during memorisation, the momentum cosine
   between memorisation and grokking, the effective-rank drop at the transition, the limit cycle.
2. The limit cycle at weight decay 0.25 / 1 / 2 (``--wds``; seed ``--seeds[0]``; only wd 1 is probed).
3. Agreement dips vs grokking gap over ``--pop-seeds`` runs. Probing every member of the preset is
   beyond a 2-core machine, so by default this part runs on a small setting (``--pop-*``: a+b mod
   23, 1 layer), probed for agreement only every 10 steps; the table says which scale it is.

Runs go to ``--out`` and are reused (or resumed) when the script is run again. Figures and the
report (``optimizer_dynamics.md``, caption with command, seeds, hardware and time) go to
``--figures`` (default figures/dynamics).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

import mechgrok as mg
from mechgrok import dynamics as dy
from mechgrok.plots import (dips_vs_gap_scatter, dynamics_geometry, limit_cycle_figure, markdown_table,
                            save_figure)
from mechgrok.progress import transition_metrics
from mechgrok.runs import provenance

SEED_004 = {
    "hessian_rise": "~20x during memorisation",
    "hessian_peak_step": "falls from step ~600",
    "agreement": "rises during memorisation",
    "momentum_cos_plateau": "-0.1 to -0.3 after memorisation",
    "erank_drop": "drops 30-40% at the transition",
    "delay": "~300 steps at wd 1 (beta1 <= 0.4); larger at beta1 0.9",
    "limit_wd1": "period ~150 steps in accuracy and weight norm",
    "limit_wd0.25": "collapses to ~0.25 accuracy, re-grokking",
    "limit_wd2": "gentle hovering, no crashes",
    "dips_vs_gap": "r = 0.896, n = 30, p < 0.0001",
}


def preset_config() -> mg.RunConfig:
    try:
        return mg.get_preset("dynamics")
    except ValueError:  # before the preset landed: seed 004's setting as described (frac: our choice)
        return mg.RunConfig(task=mg.TaskConfig(op="add", p=113, frac=0.5, seed=0),
                            model=mg.ModelConfig(n_layers=2, d_model=128, n_heads=4, d_head=32, d_mlp=512),
                            train=mg.TrainConfig(steps=3000, lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98),
                                                 eval_every=10, checkpoint_every=100), preset="dynamics")


def seeded(cfg: mg.RunConfig, seed: int, **train) -> mg.RunConfig:
    return replace(cfg, task=replace(cfg.task, seed=seed), model=replace(cfg.model, seed=seed),
                   train=replace(cfg.train, seed=seed, device="cpu", **train))


def get_run(cfg: mg.RunConfig, out: Path, probe_kw: dict | None, every: int) -> mg.Run:
    """The finished run in ``out``; resumed if unfinished, trained if absent."""
    from mechgrok.train import resume_run, train_run

    kw = {} if probe_kw is None else {"probe": dy.make_probe(cfg, **probe_kw), "probe_every": every}
    if (out / "config.json").exists():
        from mechgrok.train import resume_config

        run = mg.load_run(out)
        resume_config(run.config, cfg)  # refuses a run of other settings in the same directory
        if run.steps and run.steps[-1] >= cfg.train.steps:
            return run
        return resume_run(out, progress=True, **kw)
    return train_run(cfg, out, progress=True, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0", help="probed preset runs at wd 1 (comma-separated seeds)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--probe-every", type=int, default=20)
    ap.add_argument("--wds", default="0.25,1,2", help="weight decays of the limit-cycle figure (wd 1: the probed run)")
    ap.add_argument("--pop-seeds", type=int, default=10)
    ap.add_argument("--pop-p", type=int, default=23)
    ap.add_argument("--pop-steps", type=int, default=1500)
    ap.add_argument("--pop-preset", default=None, help="run the dips-vs-gap population on this preset instead")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: probed, wd, pop")
    ap.add_argument("--out", type=Path, default=Path("runs/dynamics"))
    ap.add_argument("--figures", type=Path, default=Path("figures/dynamics"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.time()
    args.figures.mkdir(parents=True, exist_ok=True)
    base = preset_config()
    seeds = [int(s) for s in args.seeds.split(",")]
    probe_kw = dict(measures=dy.MEASURES, hessian_iters=3, rank_n=32)
    report, result, timing = [], {}, {}

    # 1. probed preset runs at wd 1
    rows = []
    if "probed" not in skip:
        for s in seeds:
            t = time.time()
            run = get_run(seeded(base, s, steps=args.steps, weight_decay=1.0), args.out / f"probed_wd1_s{s}",
                          probe_kw, args.probe_every)
            timing[f"probed_s{s}"] = round(time.time() - t)
            dyn = dy.read_dynamics(run)
            tr = transition_metrics(run.metrics)
            rows.append(dy.run_summary(run) | {"seed": s})
            fig = dynamics_geometry(run.metrics, dyn, {"memorised": tr.memorised_step, "grokked": tr.grokked_step},
                                    title=f"{run.task.describe()}, 2 layers, wd 1, seed {s}: what the geometry is doing")
            save_figure(fig, args.figures / f"geometry_s{s}")
        t = pd.DataFrame(rows)
        result["probed"] = t.to_dict("records")

        def ours(col, fmt="{:.3g}"):
            vals = [fmt.format(v) if pd.notna(v) else "n/a" for v in t.get(col, pd.Series([None] * len(t)))]
            return ", ".join(vals)

        claims = [
            ("Hessian top eigenvalue: peak / first probe", SEED_004["hessian_rise"], ours("hessian_rise", "{:.1f}x")),
            ("step where the Hessian peaks (then falls)", SEED_004["hessian_peak_step"], ours("hessian_peak_step", "{:.0f}")),
            ("memorised / grokked step", "-", ", ".join(f"{a} / {b}" for a, b in zip(t["memorised_step"], t["grokked_step"]))),
            ("grokking gap (grokked - memorised)", SEED_004["delay"], ours("delay", "{:.0f}")),
            ("gradient agreement: first probe -> at memorisation", SEED_004["agreement"],
             ", ".join(f"{a:.2f} -> {b:.2f}" for a, b in zip(t.get("agreement_first", []), t.get("agreement_at_memorised", [])))),
            ("cos(exp_avg, gradient), mean (min) memorised..grokked", SEED_004["momentum_cos_plateau"],
             ", ".join(f"{a:.2f} ({b:.2f})" for a, b in zip(t.get("momentum_cos_plateau", []), t.get("momentum_cos_plateau_min", [])))),
            ("effective rank: 1 - erank(grokked) / erank(memorised)", SEED_004["erank_drop"], ours("erank_drop", "{:.0%}")),
            ("limit cycle at wd 1: verdict, test-acc period, weight-norm period", SEED_004["limit_wd1"],
             ", ".join(f"{v}, {a}, {b}" for v, a, b in zip(t["limit_verdict"], t["limit_test_acc_period"],
                                                           t["limit_weight_norm_period"]))),
            ("agreement dips over the run (prominence 0.1)", "-", ours("agreement_dips", "{:.0f}")),
        ]
        report += [f"## Probed runs: {base.task.op} mod {base.task.p}, 2 layers, wd 1, seeds {seeds}, "
                   f"{args.steps} steps, probe every {args.probe_every} steps\n",
                   markdown_table(pd.DataFrame(claims, columns=["claim", "seed 004 (30 seeds, its scale)", "ours"])),
                   ""]

    # 2. the limit cycle across weight decays
    if "wd" not in skip:
        series, grokked, lc_rows = {}, {}, []
        for wd in sorted({float(w) for w in args.wds.split(",") if w}):
            # wd 1 is the probed run of part 1 (trained here with its probes if part 1 has not run)
            out = args.out / (f"probed_wd1_s{seeds[0]}" if wd == 1.0 else f"wd{wd:g}_s{seeds[0]}")
            t = time.time()
            run = get_run(seeded(base, seeds[0], steps=args.steps, weight_decay=wd), out,
                          probe_kw if wd == 1.0 else None, args.probe_every)
            timing[f"wd{wd:g}"] = round(time.time() - t)
            lc = dy.limit_cycle(run)
            label = f"wd {wd:g}"
            series[label], grokked[label] = run.metrics, lc.grokked_step
            lc_rows.append({"weight_decay": wd, "seed 004": SEED_004.get(f"limit_wd{wd:g}", "-"), **lc.to_dict()})
        save_figure(limit_cycle_figure(series, grokked, title=f"after grokking: {base.task.op} mod {base.task.p}, "
                                       f"seed {seeds[0]}, {args.steps} steps"), args.figures / "limit_cycle")
        result["limit_cycle"] = lc_rows
        report += [f"## Limit cycle after grokking (seed {seeds[0]}, {args.steps} steps)\n",
                   markdown_table(pd.DataFrame(lc_rows), ["weight_decay", "seed 004", "verdict", "grokked_step",
                                                          "test_acc_period", "test_acc_amplitude",
                                                          "weight_norm_period", "weight_norm_amplitude", "collapses"]),
                   ""]

    # 3. agreement dips vs grokking gap
    if "pop" not in skip:
        if args.pop_preset:
            pop_base = mg.get_preset(args.pop_preset)
            scale = f"preset {args.pop_preset}"
        else:
            pop_base = mg.RunConfig(task=mg.TaskConfig(op="add", p=args.pop_p, frac=0.7),
                                    model=mg.ModelConfig(n_layers=1, d_model=64, n_heads=4, d_head=16, d_mlp=256),
                                    train=mg.TrainConfig(steps=args.pop_steps, lr=3e-3, weight_decay=1.0,
                                                         eval_every=10, checkpoint_every=500))
            scale = f"a+b mod {args.pop_p}, 70% train, 1 layer d_model 64, lr 3e-3, wd 1 (small scale)"
        t = time.time()
        runs = [get_run(seeded(pop_base, s, steps=args.pop_steps), args.out / "pop" / f"s{s}",
                        dict(measures=("agreement",)), 10) for s in range(args.pop_seeds)]
        timing["pop"] = round(time.time() - t)
        table, corr = dy.dips_vs_gap(runs)
        save_figure(dips_vs_gap_scatter(table, corr.r, corr.n, corr.p, title=f"agreement dips vs gap ({scale})"),
                    args.figures / "dips_vs_gap")
        result["dips_vs_gap"] = {"scale": scale, **corr.to_dict(),
                                 "runs": table[["run", "memorised_step", "grokked_step", "delay", "agreement_dips"]]
                                 .to_dict("records")}
        report += [f"## Agreement dips vs grokking gap ({scale}; {args.pop_seeds} seeds, agreement probed every 10 "
                   f"steps, dip = local minimum with prominence >= 0.1)\n",
                   markdown_table(pd.DataFrame([{"seed 004": SEED_004["dips_vs_gap"],
                                                 "ours": f"r = {corr.r:.3f}, n = {corr.n}, p = {corr.p:.3g}"}])),
                   "", markdown_table(table[["run", "memorised_step", "grokked_step", "delay", "agreement_dips"]]
                                      .assign(run=[Path(r).name for r in table["run"]])), ""]

    prov = provenance()
    minutes = (time.time() - t0) / 60
    caption = (f"# Optimizer dynamics (seed 004), re-measured\n\nCommand: `python analyses/optimizer_dynamics.py "
               f"{' '.join(sys.argv[1:])}`\n\nPreset `dynamics`: {json.dumps(base.to_dict(), default=str)}\n\n"
               f"Hardware: {prov['cpu_cores']}-core CPU VM, no GPU, torch {prov['torch']}, {prov['torch_threads']} "
               f"thread(s), shared with other jobs. Made {prov['made']}; this invocation took {minutes:.1f} min "
               f"(runs already on disk are reused; per part, seconds: {timing}).\n\n")
    text = caption + "\n".join(report)
    (args.figures / "optimizer_dynamics.md").write_text(text)
    (args.figures / "optimizer_dynamics.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "base": base.to_dict(), **result,
         "seconds": timing, "provenance": prov}, indent=1, default=str) + "\n")
    print(text)


if __name__ == "__main__":
    main()
