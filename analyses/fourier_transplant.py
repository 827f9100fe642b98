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

    python analyses/fourier_transplant.py --preset dynamics --seeds 0-9     # seed 004's setting

With ``--preset``: the setting seed 004 describes, a population of base runs of the preset
(trained as one ensemble, ``stop_after_grok``, AdamW moments kept at every checkpoint) and
three arms per seed from the recipient checkpoint ``--recipient-step`` on the memorising
plateau, all carrying the recipient's own AdamW moments, so the untouched arm is the base run
itself: (1) control, untouched; (2) the donor's Fourier-clustered last-layer neurons
transplanted; (3) as many of the donor's NOT clustered neurons, chosen at random (seeded),
transplanted. Arms (2) and (3) of every seed train as one ensemble until they grok (or the
preset's budget). Writes figures/fourier_transplant_dynamics.{html,png,md,json}; runs go to
``--out`` and a re-run resumes what is missing. ``--summarise`` trains nothing: it writes the
figure and table from whatever the run directories hold (unfinished base runs and arms are
listed as such), so a run cut short still gives its partial result. ``--merge`` adds this
invocation's seeds to the rows already in the JSON (earlier seeds whose run directories are
gone keep their recorded rows; each invocation's command and wall time are kept), e.g.

    python analyses/fourier_transplant.py --preset dynamics --seeds 0-19
    python analyses/fourier_transplant.py --preset dynamics --seeds 20-29 --merge

Evidence that the recipient is on a plateau with Fourier features already forming, per seed at
step 0, the recipient step and the donor step: the Gini sparsity of the embedding's spectrum
(k >= 1) and the number of last-layer neurons clustered on one frequency (and of those, how
many on a frequency the donor uses).
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

import mechgrok as mg
from mechgrok import interventions as iv
from mechgrok.ensemble import member_status
from mechgrok.experiment import (parse_args, parse_seeds, parser, train_or_resume, train_or_resume_ensemble,
                                 write_report)
from mechgrok.files import write_text
from mechgrok.plots import grokking_step_distributions, save_figure
from mechgrok.milestones import transition_metrics
from mechgrok.progress import spectrum_gini
from mechgrok.provenance import provenance
from mechgrok.runs import ResumeState, read_optimizer_state


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
    ap = parser(__doc__, out="runs/transplant", seeds="0,1,2,3,4,5")
    ap.add_argument("--p", type=int, default=23)
    ap.add_argument("--frac", type=float, default=0.7)
    ap.add_argument("--base-steps", type=int, default=1200)
    ap.add_argument("--recipient-step", type=int, default=None,
                    help="default: 150 (small setting); with --preset, half-way along each seed's plateau")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure and table from the saved JSON")
    ap.add_argument("--preset", default=None, help="seed 004's setting: a preset (dynamics), population mode")
    ap.add_argument("--stop-after-grok", type=int, default=3)
    ap.add_argument("--arm-steps", type=int, default=600, help="with --preset: budget of the arms after the transplant")
    ap.add_argument("--min-delay", type=int, default=150,
                    help="with --preset: a seed has a plateau if it groks at least this many steps after memorising")
    ap.add_argument("--summarise", action="store_true",
                    help="with --preset: train nothing, report what the run directories under --out hold")
    ap.add_argument("--merge", action="store_true",
                    help="with --preset: keep the JSON's rows of seeds not given here and add these")
    args = parse_args(ap)
    if args.preset:
        plateau_main(args)
        return
    args.recipient_step = 150 if args.recipient_step is None else args.recipient_step
    stem = args.figures / "fourier_transplant"
    if args.plot_only:
        write_text(stem.with_suffix(".md"), report(json.loads(stem.with_suffix(".json").read_text())["rows"], args, stem))
        return

    rows, t0 = [], time.time()
    for seed in parse_seeds(args.seeds):
        t = time.time()
        base = train_or_resume(base_config(seed, args.p, args.frac, args.base_steps), args.out / f"seed{seed}" / "base")
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

    write_report(stem, report(rows, args, stem), {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                 seeds=parse_seeds(args.seeds), started=t0)


def report(rows: list[dict], args, stem: Path) -> str:
    """Prints the distributions, draws the figure; returns the markdown table."""
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
    print("\n".join(lines))
    return "\n".join(lines) + "\n"


# --- seed 004's setting: a population on the preset, three arms from the plateau -------------------


def plateau_step(base, tr, min_delay: int, fixed: int | None) -> int | None:
    """The recipient checkpoint on the memorising plateau: ``fixed`` if it lies between
    memorisation and grokking, else the checkpoint nearest half-way between them; None when
    the run has no plateau (it grokked within ``min_delay`` steps of memorising, or never)."""
    if tr.grokked_step is None or tr.memorised_step is None or tr.delay < min_delay:
        return None
    inside = [s for s in base.steps if tr.memorised_step <= s < tr.grokked_step]
    if fixed is not None:
        return fixed if fixed in inside else None
    mid = tr.memorised_step + tr.delay / 2
    return min(inside, key=lambda s: abs(s - mid), default=None)


def carried_state(run, step: int, params) -> ResumeState:
    """Resume state at ``step`` with ``params`` and the run's own AdamW moments at that step."""
    opt = read_optimizer_state(run, step)
    if opt is None:
        raise SystemExit(f"{run.path} kept no AdamW moments at step {step}: base runs need keep_moments")
    return ResumeState(step, params, opt)


def finished(out: Path) -> bool:
    """An ensemble member that is not still training (an interrupted one says "running")."""
    status = member_status(out)
    return mg.is_run_dir(out) and (status or {}).get("status") != "running"


def fourier_evidence(run, step: int, layer: int, key_freqs: list[int]) -> dict:
    """How far the Fourier features have formed at ``step``: the embedding spectrum's Gini
    (k >= 1), the MLP ``layer``'s neurons clustered on one frequency, and of those the ones on
    a frequency in ``key_freqs`` (the donor's)."""
    params = run.params(step)
    nf = mg.fourier.neuron_frequencies(params, run.task, layer=layer, cfg=run.model_cfg)
    return {"embedding_gini": round(spectrum_gini(mg.fourier.embedding_spectrum(params, run.task, cfg=run.model_cfg)), 4),
            "clustered": int((nf.freq > 0).sum()),
            "on_donor_freqs": int(torch.isin(nf.freq, torch.tensor(key_freqs, dtype=nf.freq.dtype)).sum())}


def plateau_main(args):
    seeds = parse_seeds(args.seeds)
    stem = args.figures / f"fourier_transplant_{args.preset}"
    if args.plot_only:
        write_text(stem.with_suffix(".md"), plateau_report(json.loads(stem.with_suffix(".json").read_text()), stem))
        return
    t0 = time.time()
    base_outs = [args.out / f"seed{s}" / "base" for s in seeds]
    if args.summarise:
        bases = [mg.load_run(o) if finished(o) else None for o in base_outs]
    else:
        base_cfgs = [mg.configure(args.preset, seed=s, stop_after_grok=args.stop_after_grok, keep_moments=True)
                     for s in seeds]
        bases = train_or_resume_ensemble(base_cfgs, base_outs)
        print(f"base runs done ({time.time() - t0:.0f} s)", flush=True)

    rows, groups = [], {}  # groups: recipient step -> (configs, outs, initial states) of its arms
    for s, base in zip(seeds, bases):
        if base is None:
            rows.append({"seed": s, "skipped": "base run not finished"})
            continue
        tr = transition_metrics(base.metrics)
        row = {"seed": s, "base_memorisation_step": tr.memorised_step, "base_grokking_step": tr.grokked_step,
               "base_delay": tr.delay}
        rows.append(row)
        r_step = plateau_step(base, tr, args.min_delay, args.recipient_step)
        if r_step is None:
            row["skipped"] = (f"no plateau: grokked {tr.delay} steps after memorising (< {args.min_delay})"
                              if tr.delay is not None else "did not memorise and grok within the budget")
            continue
        m = base.metrics.set_index("step")
        row |= {"recipient_step": r_step, "recipient_train_acc": float(m.loc[r_step, "train_acc"]),
                "recipient_test_acc": float(m.loc[r_step, "test_acc"]),
                "recipient_test_loss": float(m.loc[r_step, "test_loss"])}
        donor_step = base.steps[-1]
        layer = base.model_cfg.n_layers - 1
        donor_nf = mg.fourier.neuron_frequencies(base.params(donor_step), base.task, layer=layer, cfg=base.model_cfg)
        recip_nf = mg.fourier.neuron_frequencies(base.params(r_step), base.task, layer=layer, cfg=base.model_cfg)
        fourier = torch.nonzero(donor_nf.freq > 0).flatten().tolist()
        others = torch.nonzero(donor_nf.freq <= 0).flatten()
        pick = torch.randperm(len(others), generator=torch.Generator().manual_seed(s))[:len(fourier)]
        non_fourier = sorted(others[pick].tolist())
        key_freqs = sorted(k for k in donor_nf.cluster_sizes() if k > 0)
        row |= {"donor_step": donor_step, "n_fourier": len(fourier), "n_non_fourier": len(non_fourier),
                "recipient_clustered": int((recip_nf.freq > 0).sum()), "donor_key_freqs": key_freqs,
                "evidence": {name: fourier_evidence(base, step, layer, key_freqs)
                             for name, step in (("init", 0), ("recipient", r_step), ("donor", donor_step))}}
        for arm, neurons in (("fourier", fourier), ("non_fourier", non_fourier)):
            params = iv.transplant_neurons(base, base, neurons, layer, donor_step, r_step)
            after = iv.evaluate_with_hooks(params, base.model_cfg, base.task)
            row[f"{arm}_after_test_acc"], row[f"{arm}_after_train_acc"] = after["test_acc"], after["train_acc"]
            budget = min(base.config.train.steps, r_step + args.arm_steps)
            cfg = replace(base.config, train=replace(base.config.train, keep_moments=False, steps=budget))
            group = groups.setdefault(r_step, ([], [], []))
            group[0].append(cfg)
            group[1].append(args.out / f"seed{s}" / f"{arm}_{r_step}")
            group[2].append(carried_state(base, r_step, params))
    by_out = {}
    for r_step, (cfgs, outs, init) in sorted(groups.items()):  # one ensemble per recipient step
        if args.summarise:
            by_out |= {str(o): mg.load_run(o) for o in outs if finished(o)}
            continue
        print(f"transplanting into {len(outs)} recipients at step {r_step}", flush=True)
        by_out |= {str(a.path): a for a in train_or_resume_ensemble(cfgs, outs, init=init)}
    for row in rows:
        if "skipped" in row:
            continue
        arms = {arm: by_out.get(str(args.out / f"seed{row['seed']}" / f"{arm}_{row['recipient_step']}"))
                for arm in ("fourier", "non_fourier")}
        if None in arms.values():
            row["skipped"] = "transplant arms not finished"
            continue
        row["control_grokking_step"] = row["base_grokking_step"]
        for arm, run in arms.items():
            row[f"{arm}_grokking_step"] = transition_metrics(run.metrics).grokked_step
            row[f"{arm}_last_step"] = int(run.metrics["step"].max())
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "provenance": provenance(),
              "wall_s": None if args.summarise else round(time.time() - t0), "preset": args.preset,
              "arm_steps": args.arm_steps, "min_delay": args.min_delay, "rows": rows}
    if args.merge and stem.with_suffix(".json").exists():
        old = json.loads(stem.with_suffix(".json").read_text())
        if (old.get("preset"), old.get("arm_steps"), old.get("min_delay")) != (args.preset, args.arm_steps,
                                                                               args.min_delay):
            raise SystemExit(f"--merge: {stem}.json was made with preset/arm_steps/min_delay "
                             f"{old.get('preset')}/{old.get('arm_steps')}/{old.get('min_delay')}, not these")
        kept = [r for r in old["rows"] if r["seed"] not in seeds]
        result["rows"] = sorted(kept + rows, key=lambda r: r["seed"])
        result["invocations"] = old.get("invocations") or [{k: old.get(k) for k in ("args", "provenance", "wall_s")}]
        result["invocations"].append({k: result[k] for k in ("args", "provenance", "wall_s")})
    write_report(stem, plateau_report(result, stem), result, seeds=seeds, prov=result["provenance"])


def quartiles(xs: list) -> str:
    """median (IQR) of the finite entries, or '-' when there are none."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "-"
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return f"{statistics.median(xs):g} ({q[0]:g} to {q[2]:g})"


def plateau_report(result: dict, stem: Path) -> str:
    """Prints the arms' distributions, draws the figure; returns the markdown report."""
    rows = [r for r in result["rows"] if "control_grokking_step" in r]
    arms = {"control (untouched)": "control", "Fourier neurons transplanted": "fourier",
            "as many non-Fourier neurons": "non_fourier"}
    steps = {name: [r[f"{key}_grokking_step"] for r in rows] for name, key in arms.items()}
    after = {name: [None if g is None else g - r["recipient_step"] for g, r in zip(v, rows)] for name, v in steps.items()}
    lines = [f"`{result['preset']}` preset, {len(result['rows'])} seeds, {len(rows)} with a memorising plateau "
             f"(grokked >= {result['min_delay']} steps after memorising) and all three arms finished; recipient = the "
             f"checkpoint nearest half-way along each plateau; grokking step = first evaluation with test accuracy "
             f"> 0.9; arms trained up to {result['arm_steps']} steps past the recipient (or the preset's step budget), "
             f"stopping 3 evaluations after grokking. Delay = grokking step minus the recipient step; paired = "
             f"the arm's delay minus the control's, per seed (seeds where both grokked).", "",
             "| arm | grokked within budget | grokking step: median (IQR) | delay after the recipient step: "
             "median (IQR) | paired vs control: median (IQR) |", "|---|---|---|---|---|"]
    control = after["control (untouched)"]
    for name in arms:
        ok = [x for x in steps[name] if x is not None]
        paired = [a - c for a, c in zip(after[name], control) if a is not None and c is not None]
        lines.append(f"| {name} | {len(ok)}/{len(rows)} | {quartiles(steps[name])} | {quartiles(after[name])} | "
                     f"{'-' if name.startswith('control') else quartiles(paired)} |")
        print(f"{name:32s} grokking steps: {describe(steps[name])}")
    diff = [r["fourier_grokking_step"] - r["non_fourier_grokking_step"] for r in rows
            if r["fourier_grokking_step"] is not None and r["non_fourier_grokking_step"] is not None]
    if diff:
        from scipy.stats import wilcoxon

        nonzero = [d for d in diff if d]
        p = wilcoxon(nonzero).pvalue if len(nonzero) >= 2 else float("nan")
        lines += ["", f"Fourier arm minus non-Fourier arm, grokking step per seed: median {statistics.median(diff):g}; "
                      f"the Fourier arm sooner in {sum(d < 0 for d in diff)}, equal in {diff.count(0)}, later in "
                      f"{sum(d > 0 for d in diff)} of {len(diff)} seeds (Wilcoxon signed-rank over the unequal "
                      f"pairs: p = {p:.2g})."]
    lines += ["", "Per seed (recipient = the base run's checkpoint; donor = its last checkpoint; clustered = "
              "last-layer neurons with > 85% of their variance on one frequency, of 512; Gini = embedding "
              "spectrum's Gini over k >= 1):", "",
              "| seed | memorised / grokked (base) | recipient step: train / test acc, test loss | "
              "embedding Gini: init / recipient / donor | clustered neurons: init / recipient (on donor's freqs) / donor | "
              "moved: Fourier / non-Fourier | test acc right after: Fourier / non-Fourier arm | "
              "grokking step: control / Fourier / non-Fourier |", "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in result["rows"] if "recipient_step" in r):  # arms unfinished: evidence only
        ev = r.get("evidence")
        gini_cell = " / ".join(f"{ev[k]['embedding_gini']:.2f}" for k in ("init", "recipient", "donor")) if ev else "-"
        clus_cell = (f"{ev['init']['clustered']} / {ev['recipient']['clustered']} ({ev['recipient']['on_donor_freqs']}) "
                     f"/ {ev['donor']['clustered']}" if ev else f"- / {r['recipient_clustered']} / {r['n_fourier']}")
        ends = [r[f"{a}_grokking_step"] or f"not by {r.get(f'{a}_last_step')}" if f"{a}_grokking_step" in r
                else "unfinished" for a in ("control", "fourier", "non_fourier")]
        lines.append(f"| {r['seed']} | {r['base_memorisation_step']} / {r['base_grokking_step']} | {r['recipient_step']}: "
                     f"{r['recipient_train_acc']:.3f} / {r['recipient_test_acc']:.3f}, {r['recipient_test_loss']:.2f} | "
                     f"{gini_cell} | {clus_cell} | {r['n_fourier']} / {r['n_non_fourier']} | "
                     f"{r['fourier_after_test_acc']:.3f} / {r['non_fourier_after_test_acc']:.3f} | "
                     f"{' / '.join(map(str, ends))} |")
    for inv in result.get("invocations", []):
        a = inv["args"]
        wall = (f"{inv['wall_s']} s" if inv["wall_s"] is not None else
                "a --summarise pass (training time in figures/README.md)")
        lines += ["", f"Rows of seeds {a['seeds']}: `python analyses/fourier_transplant.py --preset {a['preset']} "
                      f"--seeds {a['seeds']}{' --merge' if a.get('merge') == 'True' else ''}`, "
                      f"{wall} on {inv['provenance'].get('cpu_cores')} CPU cores, made "
                      f"{inv['provenance'].get('made')}."]
    skipped = [r for r in result["rows"] if "skipped" in r]
    if skipped:
        lines += ["", "Seeds not in the arms: " + "; ".join(
            f"seed {r['seed']}: {r['skipped']}" + (f" (memorised {r['base_memorisation_step']}, grokked "
                                                   f"{r['base_grokking_step']})" if "base_grokking_step" in r else "")
            for r in skipped)]
    print("\n".join(lines))
    fig = grokking_step_distributions(
        after, title=f"Transplant into the memorising plateau, {result['preset']} preset, {len(rows)} seeds")
    fig.update_yaxes(title_text="grokking step minus recipient step")
    save_figure(fig, stem)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
