"""Seed 004 ("Grokking Dynamics"), "What the geometry is doing": each claim about the optimizer's
geometry re-measured with mechgrok's probes, next to the seed's number.

    python analyses/optimizer_dynamics.py                     # small setting, 8 seeds (see the caption)
    python analyses/optimizer_dynamics.py --setting preset --seeds 0,1,2   # the `dynamics` preset
    mechgrok sweep --preset dynamics --seeds 12 --stop-after-grok 5 --probe every=10 --out runs/dyn_probed
    mechgrok sweep --preset dynamics --seeds 12-29 --stop-after-grok 5 --probe every=10 --out runs/dyn_probed2
    python analyses/optimizer_dynamics.py --setting preset --population runs/dyn_probed runs/dyn_probed2 \
        --steps 1500 --wds 0.25:3000,1:3000,2:3000 --figures figures/dynamics/preset   # the preset's population

1. Probed runs at weight decay 1, one per seed (``--seeds``), probed every ``--probe-every``
   steps with every measure (Hessian top eigenvalue by 3 warm-started power iterations, gradient
   agreement, momentum cosine, effective rank of 32 per-sample gradients): the Hessian's rise
   and fall, agreement during memorisation, the momentum cosine between memorisation and
   grokking, the effective-rank drop at the transition, the limit cycle, and over the seeds
   the correlation of agreement dips with the grokking gap.
2. The limit cycle at weight decay 0.25 / 1 / 2 (``--wds``; the first seed; wd 1 is the probed run;
   wd 0.25 gets 6000 steps: at 3000 it has not grokked yet in the small setting).

``--population DIR ...`` takes the probed runs from sweeps trained with ``--probe`` (the population
trainer; its members' seeds replace ``--seeds``) instead of training them here; the limit-cycle
runs then start from the first member's seed, and at wd 1 an unprobed run is trained when the
probed one is shorter than its budget (a sweep with ``--stop-after-grok`` ends soon after grokking).

``--setting seed004`` is the ``seed004`` preset, seed 004's own setting as far as it is given, and
with ``--set beta1=0`` the population for the Hessian's lag at beta1 0 (the ledger's
004-hessian-lag-own row compares the two reports):

    mechgrok sweep --preset seed004 --seeds 10 --stop-after-grok 5 --probe every=10 --out runs/seed004_probed \
        --kept figures/dynamics/seed004/kept/probed
    python analyses/optimizer_dynamics.py --setting seed004 --population figures/dynamics/seed004/kept/probed \
        --skip wd --figures figures/dynamics/seed004
    mechgrok sweep --preset seed004 --set beta1=0 --seeds 10 --stop-after-grok 5 --probe every=10 \
        --out runs/seed004_probed_beta1_0 --kept figures/dynamics/seed004/kept/probed_beta1_0
    python analyses/optimizer_dynamics.py --setting seed004 --population figures/dynamics/seed004/kept/probed_beta1_0 \
        --skip wd --figures figures/dynamics/seed004/beta1_0

(the kept members hold each member's config, metrics and probes, all the report reads; the
report's setting is the members', which must agree in everything but the seed)

(``--skip wd``: the limit cycle at this setting, beta1 0 as in seed 004's sweep, is
analyses/limit_cycle_seed004.py's, whose limit_cycle.* the wd part would overwrite there.)

``--setting preset`` is the ``dynamics`` preset (a+b mod 113, 2 layers); ``small`` (default) is
a+b mod 23 on a 1-layer d_model 64 model (70% train, lr 3e-3), which memorises within ~100 steps
and groks within ~1500: on a shared 2-core CPU a probed step of the preset took ~6 s, so the
preset cannot be probed over several seeds here. Runs go to ``--out`` and are reused (or
resumed) when the script is run again; a run of other settings in the same place is refused.
Figures and the report (``optimizer_dynamics.md``: command, seeds, hardware, time) go to
``--figures`` (default figures/dynamics).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

import mechgrok as mg
from mechgrok import cycles as cy
from mechgrok import dynamics as dy
from mechgrok import experiment as ex
from mechgrok.milestones import transition_metrics
from mechgrok.plots import dips_vs_gap_scatter, dynamics_geometry, limit_cycle_figure, markdown_table, save_figure

SEED_004 = {
    "hessian_rise": "~20x during memorisation",
    "hessian_peak_step": "falls from step ~600",
    "hessian_lag": "~400 steps at beta1 0.9, almost none at beta1 0",
    "momentum_cos_plateau": "-0.1 to -0.3 after memorisation",
    "erank_drop": "drops 30-40% at the transition",
    "limit_wd0.25": "collapses to ~0.25 accuracy, re-grokking",
    "limit_wd1": "period ~150 steps in accuracy and weight norm",
    "limit_wd2": "gentle hovering, no crashes",
    "dips_vs_gap": "r = 0.896, n = 30, p < 0.0001",
}
SETTINGS = {  # name: (base, how the report names it)
    "small": (mg.RunConfig(task=mg.TaskConfig(op="add", p=23, frac=0.7),
                           model=mg.ModelConfig(n_layers=1, d_model=64, n_heads=4, d_head=16, d_mlp=256),
                           train=mg.TrainConfig(steps=3000, lr=3e-3, weight_decay=1.0, betas=(0.9, 0.98),
                                                eval_every=10, checkpoint_every=500)),
              "a+b mod 23, 70% train, 1 layer (d_model 64, d_mlp 256), AdamW lr 3e-3 wd 1, full batch"),
    "preset": ("dynamics", "the dynamics preset (a+b mod 113, 2 layers)"),
    # seed 004's own setting: the preset whose grokking step seed004_transition.py measured over seeds
    "seed004": ("seed004", "the seed004 preset (a+b mod 113, 2 layers; figures/dynamics/seed004/transition.md)"),
}
TABLE = ["seed", "memorised_step", "grokked_step", "delay", "hessian_rise", "hessian_peak_step", "hessian_lag",
         "agreement_first",
         "agreement_at_memorised", "momentum_cos_plateau", "erank_drop", "agreement_dips", "agreement_dips_before_grokked",
         "agreement_dips_plateau", "agreement_dips_per_100_steps", "agreement_dips_plateau_per_100_steps", "limit_verdict",
         "limit_test_acc_period", "limit_weight_norm_period", "limit_collapses"]
LIMIT_TABLE = ["weight_decay", "steps", "seed 004", "verdict", "grokked_step", "test_acc_period", "test_acc_amplitude",
               "weight_norm_period", "weight_norm_amplitude", "collapses"]


def corr_text(c) -> str:
    return c.describe()


def sweep_note(path) -> str:
    """Seeds, probe and fixed settings of a sweep, from its sweep.json, and its finished members'
    training time, from its manifest (what the report must say)."""
    try:
        sw = json.loads((path / "sweep.json").read_text())
    except (OSError, ValueError):
        return "sweep.json unreadable"
    sw = sw.get("sweep", sw)
    done = mg.population.read_manifest(path)
    took = (f"; {len(done)} finished members, {sum(r.get('seconds', 0) for r in done.values()) / 60:.1f} min of "
            f"training in all (each member's wall time)" if done else "")
    return f"planned seeds {sw.get('seeds')}, probe {sw.get('probe')!r}, fixed {sw.get('fixed')}{took}"


def main():
    ap = ex.parser(__doc__, out="runs/dynamics", figures="figures/dynamics", seeds="0-7",
                   seeds_help="probed runs at wd 1, e.g. 0-7 or 0,3,5")
    ap.add_argument("--setting", choices=tuple(SETTINGS), default="small")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--probe-every", type=int, default=10)
    ap.add_argument("--wds", default="0.25:6000,1,2", help="weight decays of the limit-cycle figure, each with an "
                    "optional :steps budget (default --steps); wd 1 is the probed run")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: probed, wd")
    ap.add_argument("--population", type=Path, nargs="+", default=None,
                    help="probed runs from these sweep directories (mechgrok sweep ... --probe every=N) instead of "
                         "training them")
    ap.add_argument("--hardware-note", default=", shared with other jobs",
                    help="appended to the hardware line of the report (what else ran on the machine)")
    args = ex.parse_args(ap)
    skip, t0 = set(filter(None, args.skip.split(","))), time.time()
    base, scale = SETTINGS[args.setting]
    base, root = mg.configure(base), args.out / args.setting
    population = sorted((r for p in args.population for r in mg.find_runs(p)), key=lambda r: r.config.train.seed) \
        if args.population else None
    unfinished = [r for r in population or () if not ex.is_finished(r)]
    if unfinished:  # a member still training would enter the report with half its run
        raise SystemExit(f"--population: {len(unfinished)} member(s) have not finished ({unfinished[0].path} at step "
                         f"{int(unfinished[0].metrics['step'].max())} of {unfinished[0].config.train.steps}): wait "
                         f"for the sweep, or pass its --kept directory, which holds finished members only")
    if population:  # the report's setting is the members' (a sweep may --set beta1=0), one for all but the seed
        shared = {json.dumps(mg.configure(r.config, seed=0).to_dict(), sort_keys=True, default=str) for r in population}
        if len(shared) > 1:
            raise SystemExit(f"--population: the members differ in more than their seeds ({len(shared)} settings)")
        base = mg.configure(population[0].config, seed=0)  # its stop rule stays the members' (the limit-cycle
        base = replace(base, train=replace(base.train, stop_after_grok=None))  # runs train past grokking)
    seeds = [r.config.train.seed for r in population] if population else list(ex.parse_seeds(args.seeds))
    report, result, timing = [], {}, {}

    def train(s: int, steps: int, wd: float, out: str, probe: bool) -> mg.Run:
        t, cfg = time.time(), mg.configure(base, seed=s, device="cpu", steps=steps, weight_decay=wd)
        kw = {"probe": dy.make_probe(cfg, measures=dy.MEASURES, hessian_iters=3, rank_n=32),
              "probe_every": args.probe_every} if probe else {}
        run = ex.train_or_resume(cfg, root / out, progress=True, **kw)
        timing[f"probed_s{s}" if probe else out.partition("_")[0]] = round(time.time() - t)
        return run

    def probed(s: int) -> mg.Run:
        return population[seeds.index(s)] if population else train(s, args.steps, 1.0, f"probed_wd1_s{s}", True)

    if "probed" not in skip:  # 1. probed runs at wd 1
        runs = [probed(s) for s in seeds]
        t = pd.DataFrame([cy.run_summary(r) | {"seed": s} for r, s in zip(runs, seeds)])
        for run, s in zip(runs, seeds):
            tr = transition_metrics(run.metrics)
            save_figure(dynamics_geometry(run.metrics, mg.runs.read_dynamics(run),
                                          {"memorised": tr.memorised_step, "grokked": tr.grokked_step},
                                          title=f"{run.task.describe()}, wd {run.config.train.weight_decay:g}, beta1 "
                                                f"{run.config.train.betas[0]:g}, seed {s}: what the geometry is doing"),
                        args.figures / f"geometry_s{s}")
        result["probed"] = t.to_dict("records")
        col = lambda c: t[c] if c in t else [None] * len(t)  # noqa: E731
        spread = lambda c, fmt: ex.median_range(col(c), fmt)  # noqa: E731
        delay = pd.to_numeric(pd.Series(col("delay")), errors="coerce")
        corr, before = (cy.pearson(col(c), delay) for c in ("agreement_dips", "agreement_dips_before_grokked"))
        every = cy.dips_vs_gap_all(t)
        full_window = cy.erank_window_full(t)  # the stop rule may end a run inside the erank window
        claims = [
            ("grokked within the budget", "all (wd 1)", f"{int(t['grokked'].sum())}/{len(t)}"),
            ("memorised step / grokked step", "-", f"{spread('memorised_step', '{:.0f}')} / "
                                                   f"{spread('grokked_step', '{:.0f}')}"),
            ("grokking gap (grokked - memorised), steps", f"~300 at wd 1, beta1 <= 0.4 (ours: beta1 {base.train.betas[0]:g})",
             spread("delay", "{:.0f}")),
            ("Hessian top eigenvalue, peak / first probe", SEED_004["hessian_rise"], spread("hessian_rise", "{:.1f}x")),
            ("step of the Hessian peak (falls after)", SEED_004["hessian_peak_step"], spread("hessian_peak_step", "{:.0f}")),
            ("grokking step - Hessian peak step (the lag)", SEED_004["hessian_lag"], spread("hessian_lag", "{:.0f}")),
            ("gradient agreement, first probe", "rises during memorisation", spread("agreement_first", "{:.2f}")),
            ("gradient agreement at memorisation", "(higher than at the start)", spread("agreement_at_memorised", "{:.2f}")),
            ("cos(exp_avg, gradient), mean memorised..grokked", SEED_004["momentum_cos_plateau"],
             spread("momentum_cos_plateau", "{:.2f}")),
            ("cos(exp_avg, gradient), min memorised..grokked", "-", spread("momentum_cos_plateau_min", "{:.2f}")),
            ("effective rank: 1 - least within one gap after grokking / plateau median (members that ran that "
             "whole gap)", SEED_004["erank_drop"],
             f"{ex.median_range(t.loc[full_window, 'erank_drop'] if 'erank_drop' in t else [], '{:.0%}')} "
             f"({int(full_window.sum())} of {len(t)}; all members: {spread('erank_drop', '{:.0%}')})"),
            ("step of that least effective rank", "-", spread("erank_min_step", "{:.0f}")),
            ("limit cycle at wd 1: verdicts", "oscillation",
             ", ".join(f"{k} {v}" for k, v in t["limit_verdict"].value_counts().to_dict().items())),
            ("test-accuracy period where found, steps", "~150", spread("limit_test_acc_period", "{:.0f}")),
            ("weight-norm period where found, steps", "~150", spread("limit_weight_norm_period", "{:.0f}")),
            ("agreement dips per run (prominence 0.1)", "-", spread("agreement_dips", "{:.0f}")),
            ("agreement dips vs grokking gap, Pearson", SEED_004["dips_vs_gap"], corr_text(corr)),
            ("dips up to the grokking step vs gap (window grows with the gap)", "-", corr_text(before)),
            *[(f"{cy.DIP_COUNTS[c]} vs gap", "-", corr_text(every[c])) for c in list(cy.DIP_COUNTS)[1:]]]
        result["dips_vs_gap"] = corr.to_dict() | {"before_grokked": before.to_dict()} | {
            c: every[c].to_dict() for c in list(cy.DIP_COUNTS)[1:]}
        if "agreement_dips" in t:  # a population probed for some measures only (e.g. measures=rank) has none
            save_figure(dips_vs_gap_scatter(t, corr.r, corr.n, corr.p, title=f"agreement dips vs gap ({args.setting})",
                                            rate=every["agreement_dips_per_100_steps"]), args.figures / "dips_vs_gap")
        made = (f"the members of the sweeps {', '.join(f'`{p}` ({sweep_note(p)})' for p in args.population)}, "
                f"{len(seeds)} seeds" if population else
                f"{args.steps} steps, every measure probed every {args.probe_every} steps")
        report += [f"## Probed runs: {scale}; wd {base.train.weight_decay:g}, betas {tuple(base.train.betas)}, "
                   f"seeds {seeds}, {made}\n",
                   "Ours: median [min, max] over the seeds. Seed 004: its own scale (mod 113, 2 layers, 30 seeds).\n",
                   ex.claims_table(claims, ("claim", "seed 004", "ours")), "", markdown_table(t.reindex(columns=TABLE)), ""]

    if "wd" not in skip:  # 2. the limit cycle across weight decays
        series, grokked, lc_rows = {}, {}, []
        budgets = {float(w.partition(":")[0]): int(w.partition(":")[2] or args.steps) for w in args.wds.split(",") if w}
        for wd, budget in sorted(budgets.items()):
            if wd == 1.0 and (not population or probed(seeds[0]).steps[-1] >= budget):  # the probed run of part 1
                t = time.time()
                run = probed(seeds[0])
                timing["wd1"] = round(time.time() - t)
            else:
                run = train(seeds[0], budget, wd, f"wd{wd:g}_s{seeds[0]}", False)
            lc = cy.limit_cycle(run)
            series[f"wd {wd:g}"], grokked[f"wd {wd:g}"] = run.metrics, lc.grokked_step
            lc_rows.append({"weight_decay": wd, "seed 004": SEED_004.get(f"limit_wd{wd:g}", "-"), **lc.to_dict(),
                            "steps": budget})
        save_figure(limit_cycle_figure(series, grokked, title=f"after grokking ({args.setting} setting, seed {seeds[0]}; "
                                       f"budgets {budgets})"), args.figures / "limit_cycle")
        result["limit_cycle"] = lc_rows
        report += [f"## Limit cycle after grokking: {scale}; seed {seeds[0]}; steps per weight decay {budgets}\n",
                   markdown_table(pd.DataFrame([r | {"grokked_step": "-" if r["grokked_step"] is None else
                                                     str(r["grokked_step"])} for r in lc_rows]), LIMIT_TABLE), ""]

    text = (f"# Optimizer dynamics (seed 004), re-measured\n\nSetting ({args.setting}): "
            f"{json.dumps(base.to_dict(), default=str)}\n\n" + "\n".join(report))
    note = f"{args.hardware_note}; runs already on disk are reused; seconds per part in this invocation: {timing}"
    ex.write_report(args.figures / "optimizer_dynamics", text, {"args": vars(args), "setting": base.to_dict(),
                    **result, "seconds_per_part": timing}, seeds=seeds, started=t0, note=note)
    print(text)


if __name__ == "__main__":
    main()
