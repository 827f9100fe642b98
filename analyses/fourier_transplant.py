"""Seed 004's Fourier transplant, over several seeds: copy the Fourier neurons of a grokked
model into a model that has only memorised, train on, and ask whether it groks sooner.

    python analyses/fourier_transplant.py                 # 6 seeds, a+b mod 23 (~15 min, 1 core)
    python analyses/fourier_transplant.py --seeds 0,1,2 --p 23

Per seed s (split and initialisation seeded by s; full batch): train the base run until it has
grokked (``--base-steps``); donor = its final checkpoint, recipient = its checkpoint at
``--recipient-step`` (memorised, long before grokking; the same network at two times, so the
neurons' spaces line up); transplant every neuron the donor has clustered on one frequency
(Nanda's 85% rule: W_in column, b_in, W_out row) into the recipient; train it and an untouched
control from the same checkpoint (same settings, a fresh AdamW each) for ``--steps`` steps;
compare grokking steps (first evaluation with test accuracy > 0.9). Writes
figures/fourier_transplant.{html,png,md,json}.

    python analyses/fourier_transplant.py --preset dynamics --seeds 0-9     # seed 004's setting

With ``--preset``: a population of base runs of the preset (one ensemble, ``stop_after_grok``,
AdamW moments kept at every checkpoint) and four arms per seed from the recipient checkpoint
(``--recipient-step``, default half-way along the memorising plateau), all carrying the
recipient's own AdamW moments, so the untouched arm is the base run itself: (1) control;
(2) the donor's Fourier-clustered last-layer neurons transplanted; (3) as many of its NOT
clustered neurons, chosen at random (seeded); (4) the recipient untouched, restarted through the
same pipeline: what the restart alone does (arm 1 is the base run, which never restarted). Arms
(2)-(4) of every seed train as one ensemble until they grok (or ``--arm-steps``). Writes
figures/fourier_transplant_dynamics.*; a re-run resumes what is missing (an older study's
seeds gain arm 4). ``--summarise`` trains nothing and reports what the run directories hold
(unfinished ones listed as such); ``--merge`` adds this invocation's seeds to the JSON's rows
(earlier seeds keep their rows; each invocation's command and wall time are kept):

    python analyses/fourier_transplant.py --preset dynamics --seeds 0-19
    python analyses/fourier_transplant.py --preset dynamics --seeds 20-29 --merge

Seed 004's recipient has test accuracy at chance while its Fourier features form; no 50%-split
run memorises at chance (figures/README.md), a 30% split does. ``--recipient-max-test-acc`` takes
the plateau's last checkpoint at or under that accuracy as the recipient, and with
``--recipient-min-train-acc`` also a checkpoint still memorising (train accuracy at least that);
such a study records each base run's checkpoints up to memorisation with their accuracies and
Fourier evidence (``trajectory``). On the preset itself (the at-chance study of figures/README.md):

    python analyses/fourier_transplant.py --preset seed004 --seeds 1,2,4 --arm-steps 3000 \
        --recipient-max-test-acc 0.02 --recipient-min-train-acc 0.2 --out runs/transplant_s004

``--set`` changes the preset's fields; the fields and the recipient rule go into the figures'
names, so the preset's own study stays:

    python analyses/fourier_transplant.py --preset seed004 --set frac=0.3 --set lr=0.001 --set steps=10000 \
        --recipient-max-test-acc 0.02 --seeds 0-1 --out runs/transplant_chance
    (then --seeds 2-3 --merge, ...: the base runs train as one ensemble and are not kept between
    sessions, since the arms start from their checkpoints, so the seeds of one call must finish
    in one session)

The per-seed table gives, at step 0, the recipient step and the donor step, the Gini sparsity of
the embedding's spectrum (k >= 1) and the last-layer neurons clustered on one frequency (and of
those, how many on a frequency the donor uses): is the recipient on a plateau with Fourier
features already forming?
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace

import torch

import mechgrok as mg
from mechgrok import experiment as ex
from mechgrok import interventions as iv
from mechgrok.milestones import transition_metrics
from mechgrok.plots import grokking_step_distributions, markdown_table, save_figure
from mechgrok.progress import spectrum_gini
from mechgrok.runs import ResumeState, read_optimizer_state

SMALL_COLUMNS = ["seed", "base run: memorised / grokked", "clustered neurons moved", "test acc right after transplant",
                 "grokking step: control", "grokking step: transplant"]
SEED_COLUMNS = ["seed", "memorised / grokked (base)", "recipient step: train / test acc, test loss",
                "embedding Gini: init / recipient / donor", "clustered neurons: init / recipient (on donor's freqs) / donor",
                "moved: Fourier / non-Fourier", "test acc right after: Fourier / non-Fourier arm",
                "grokking step: control / Fourier / non-Fourier (/ restarted)"]
# seed 004's arms: the base run itself (control); the two transplants; and the recipient restarted
# untouched through the arms' pipeline, which measures what the restart alone does (a JSON made
# before that arm existed has no "restart" keys: it is reported without it)
ARMS = {"control (untouched)": "control", "Fourier neurons transplanted": "fourier",
        "as many non-Fourier neurons": "non_fourier", "untouched, restarted like the arms": "restart"}
TRAINED_ARMS = ("fourier", "non_fourier", "restart")
ARM_STEPS, MIN_DELAY = 600, 150  # --arm-steps, --min-delay


def main():
    ap = ex.parser(__doc__, out="runs/transplant", seeds="0,1,2,3,4,5", overrides=True)
    ap.add_argument("--p", type=int, default=23)
    ap.add_argument("--frac", type=float, default=0.7)
    ap.add_argument("--base-steps", type=int, default=1200)
    ap.add_argument("--recipient-step", type=int, default=None,
                    help="default: 150 (small setting); with --preset, half-way along each seed's plateau")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure and table from the saved JSON")
    ap.add_argument("--preset", default=None, help="seed 004's setting: a preset (dynamics), population mode")
    ap.add_argument("--recipient-max-test-acc", type=float, default=None,
                    help="with --preset: the recipient is the last plateau checkpoint whose test accuracy is at most "
                         "this (seed 004's recipient is at chance: e.g. 0.02 for p=113), not the half-way one")
    ap.add_argument("--recipient-min-train-acc", type=float, default=None,
                    help="with --recipient-max-test-acc: the recipient may be a model still memorising, any checkpoint "
                         "before grokking with train accuracy at least this (at the seed004 preset's 50%% split no "
                         "memorised checkpoint is at chance)")
    ap.add_argument("--stop-after-grok", type=int, default=3)
    ap.add_argument("--arm-steps", type=int, default=ARM_STEPS, help="with --preset: budget of the arms after the transplant")
    ap.add_argument("--min-delay", type=int, default=MIN_DELAY,
                    help="with --preset: a seed has a plateau if it groks at least this many steps after memorising")
    ap.add_argument("--summarise", action="store_true",
                    help="with --preset: train nothing, report what the run directories under --out hold")
    ap.add_argument("--merge", action="store_true",
                    help="with --preset: keep the JSON's rows of seeds not given here and add these")
    args = ex.parse_args(ap)
    if args.recipient_min_train_acc is not None and args.recipient_max_test_acc is None:
        raise SystemExit("--recipient-min-train-acc widens the at-chance rule: give --recipient-max-test-acc too")
    stem = args.figures / (f"fourier_transplant_{args.preset}{_tag(args)}" if args.preset else "fourier_transplant")
    if args.plot_only:
        saved = json.loads(mg.files.with_ext(stem, ".json").read_text())
        args.recipient_step = 150 if args.recipient_step is None else args.recipient_step
        mg.files.write_text(mg.files.with_ext(stem, ".md"), plateau_report(saved, stem) if args.preset else
                            report(saved["rows"], args, stem))
    elif args.preset:
        plateau_main(args, stem)
    else:
        args.recipient_step = 150 if args.recipient_step is None else args.recipient_step
        small_main(args, stem)


def _tag(args) -> str:
    """What sets this study apart from the preset's own (its figures' file names): the --set
    fields and the recipient rule, e.g. ``_frac0.3_chance0.02``."""
    sets = "".join(f"_{k.split('.')[-1]}{v}" for k, v in ex.parse_overrides(args.set).items())
    min_train = getattr(args, "recipient_min_train_acc", None)
    return (sets + (f"_chance{args.recipient_max_test_acc:g}" if args.recipient_max_test_acc is not None else "")
            + (f"_train{min_train:g}" if min_train is not None else ""))


def small_main(args, stem):
    rows, t0, seeds = [], time.time(), ex.parse_seeds(args.seeds)
    for seed in seeds:
        t = time.time()
        base = ex.train_or_resume(mg.RunConfig(
            task=mg.TaskConfig(op="add", p=args.p, frac=args.frac, seed=seed),
            model=mg.ModelConfig(n_layers=1, d_model=64, n_heads=4, d_head=16, d_mlp=256, seed=seed),
            train=mg.TrainConfig(steps=args.base_steps, lr=3e-3, weight_decay=2.0, warmup_steps=10, eval_every=10,
                                 checkpoint_every=50, seed=seed, device="cpu")), args.out / f"seed{seed}" / "base")
        tr = transition_metrics(base.metrics)
        nf = mg.fourier.neuron_frequencies(base.params(), base.task, cfg=base.model_cfg)
        row = {"seed": seed, "base_memorisation_step": tr.memorised_step, "base_grokking_step": tr.grokked_step,
               "recipient_test_acc": float(base.metrics.set_index("step").loc[args.recipient_step, "test_acc"]),
               "donor_clusters": {k: v for k, v in nf.cluster_sizes().items() if k > 0}}
        rows.append(row)
        if tr.grokked_step is None:
            print(f"seed {seed}: base run did not grok in {args.base_steps} steps; skipped", flush=True)
            continue
        for arm in ("transplant", "control"):  # arms cut off half-way by an earlier attempt
            shutil.rmtree(args.out / f"seed{seed}" / arm, ignore_errors=True)
        res = iv.transplant_experiment(base, base.steps[-1], base, args.recipient_step, args.steps,
                                       out_dir=args.out / f"seed{seed}")
        row |= {"n_neurons": res["n_neurons"], **{f"after_transplant_{k}_acc": res["after_transplant"][f"{k}_acc"]
                                                  for k in ("test", "train")},
                **{f"{arm}_{k}": res[arm][k] for k in ("grokking_step", "final_test_acc")
                   for arm in ("transplant", "control")}, "seconds": round(time.time() - t, 1)}
        print(json.dumps(row), flush=True)
    ex.write_report(stem, report(rows, args, stem), {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                    seeds=seeds, started=t0)


def report(rows: list[dict], args, stem) -> str:
    """Prints the distributions, draws the figure; returns the markdown table."""
    done = [r for r in rows if "control_grokking_step" in r]
    groups = {"base run": [r["base_grokking_step"] for r in done],
              "control (from recipient step)": [r["control_grokking_step"] for r in done],
              "transplant": [r["transplant_grokking_step"] for r in done]}
    for name, steps in groups.items():
        print(f"{name:32s} grokking steps: {ex.grokked_summary(steps, args.recipient_step + args.steps)}")
    end, last = f"not by {args.recipient_step + args.steps}", args.recipient_step + args.steps
    save_figure(grokking_step_distributions(groups, title=f"Fourier-neuron transplant at step {args.recipient_step}: "
                f"a+b mod {args.p}, {len(done)} seeds<br>both arms trained to step {last}"), stem)
    md = markdown_table([dict(zip(SMALL_COLUMNS, (
        r["seed"], f"{r['base_memorisation_step']} / {r['base_grokking_step']}", r["n_neurons"],
        f"{r['after_transplant_test_acc']:.1%} (recipient before: {r['recipient_test_acc']:.1%})",
        r["control_grokking_step"] or end, r["transplant_grokking_step"] or end))) for r in done], SMALL_COLUMNS)
    print(md.rstrip("\n"))
    return md


# --- seed 004's setting: a population on the preset, three arms from the plateau -------------------


def plateau_step(base, tr, min_delay: int, fixed: int | None, max_test_acc: float | None = None,
                 min_train_acc: float | None = None) -> int | None:
    """The recipient checkpoint on the memorising plateau: ``fixed`` if it lies between
    memorisation and grokking; with ``max_test_acc``, the last checkpoint there whose test
    accuracy is at most that (the plateau's latest state still at chance: seed 004's
    recipient); else the checkpoint nearest half-way between them. With ``min_train_acc`` too,
    the at-chance recipient may also be a model still memorising: any checkpoint before grokking
    whose train accuracy is at least that. None when the run has no plateau (it grokked within
    ``min_delay`` steps of memorising, or never) or no checkpoint of it meets the rule."""
    if tr.grokked_step is None or tr.memorised_step is None or tr.delay < min_delay:
        return None
    inside = [s for s in base.steps if tr.memorised_step <= s < tr.grokked_step]
    if fixed is not None:
        return fixed if fixed in inside else None
    if max_test_acc is not None:
        m = base.metrics.set_index("step")
        if min_train_acc is not None:
            inside = [s for s in base.steps if s < tr.grokked_step and s in m.index and m.at[s, "train_acc"] >= min_train_acc]
        return max((s for s in inside if s in m.index and m.at[s, "test_acc"] <= max_test_acc), default=None)
    return min(inside, key=lambda s: abs(s - tr.memorised_step - tr.delay / 2), default=None)


def fourier_evidence(run, step: int, layer: int, key_freqs: list[int]) -> dict:
    """The embedding spectrum's Gini (k >= 1) at ``step``, the MLP ``layer``'s neurons clustered
    on one frequency, and of those the ones on a frequency in ``key_freqs`` (the donor's)."""
    params = run.params(step)
    nf = mg.fourier.neuron_frequencies(params, run.task, layer=layer, cfg=run.model_cfg)
    return {"embedding_gini": round(spectrum_gini(mg.fourier.embedding_spectrum(params, run.task, cfg=run.model_cfg)), 4),
            "clustered": int((nf.freq > 0).sum()),
            "on_donor_freqs": int(torch.isin(nf.freq, torch.tensor(key_freqs, dtype=nf.freq.dtype)).sum())}


def chance_trajectory(base, tr) -> list[dict]:
    """For a study whose recipient is at chance: every checkpoint up to memorisation, with its train
    and test accuracy and its Fourier evidence on the donor's frequencies, so a reader sees whether
    test accuracy leaves chance before, with or after the neurons cluster."""
    donor, layer = base.steps[-1], base.model_cfg.n_layers - 1
    nf = mg.fourier.neuron_frequencies(base.params(donor), base.task, layer=layer, cfg=base.model_cfg)
    key_freqs = sorted(k for k in nf.cluster_sizes() if k > 0)
    m = base.metrics.set_index("step")
    last = tr.memorised_step if tr.memorised_step is not None else tr.grokked_step
    return [{"step": t, "train_acc": float(m.at[t, "train_acc"]), "test_acc": float(m.at[t, "test_acc"]),
             **fourier_evidence(base, t, layer, key_freqs)} for t in base.steps if t <= last and t in m.index]


def plateau_main(args, stem):
    seeds, t0 = ex.parse_seeds(args.seeds), time.time()
    base_outs = [args.out / f"seed{s}" / "base" for s in seeds]
    if args.summarise:
        bases = ex.finished_runs(base_outs)
    else:
        bases = ex.train_or_resume_ensemble([ex.apply_overrides(mg.configure(
            args.preset, seed=s, stop_after_grok=args.stop_after_grok, keep_moments=True), args.set)
            for s in seeds], base_outs)
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
        if args.recipient_max_test_acc is not None and tr.grokked_step is not None:
            row["trajectory"] = chance_trajectory(base, tr)
        r_step = plateau_step(base, tr, args.min_delay, args.recipient_step, args.recipient_max_test_acc,
                              args.recipient_min_train_acc)
        if r_step is None:
            row["skipped"] = (("did not memorise and grok within the budget" if tr.delay is None else
                               f"no plateau: grokked {tr.delay} steps after memorising (< {args.min_delay})"
                               if tr.delay < args.min_delay else
                               f"no plateau checkpoint at test accuracy <= {args.recipient_max_test_acc:g}"
                               if args.recipient_min_train_acc is None else
                               f"no checkpoint before grokking at test accuracy <= {args.recipient_max_test_acc:g} "
                               f"and train accuracy >= {args.recipient_min_train_acc:g}"))
            continue
        m = base.metrics.set_index("step")
        row |= {"recipient_step": r_step, **{f"recipient_{k}": float(m.loc[r_step, k])
                                             for k in ("train_acc", "test_acc", "test_loss")}}
        donor_step, layer = base.steps[-1], base.model_cfg.n_layers - 1
        donor_nf, recip_nf = (mg.fourier.neuron_frequencies(base.params(t), base.task, layer=layer, cfg=base.model_cfg)
                              for t in (donor_step, r_step))
        fourier, others = torch.nonzero(donor_nf.freq > 0).flatten().tolist(), torch.nonzero(donor_nf.freq <= 0).flatten()
        pick = torch.randperm(len(others), generator=torch.Generator().manual_seed(s))[:len(fourier)]
        non_fourier = sorted(others[pick].tolist())
        key_freqs = sorted(k for k in donor_nf.cluster_sizes() if k > 0)
        row |= {"donor_step": donor_step, "n_fourier": len(fourier), "n_non_fourier": len(non_fourier),
                "recipient_clustered": int((recip_nf.freq > 0).sum()), "donor_key_freqs": key_freqs,
                "evidence": {name: fourier_evidence(base, step, layer, key_freqs)
                             for name, step in (("init", 0), ("recipient", r_step), ("donor", donor_step))}}
        opt = read_optimizer_state(base, r_step)
        if opt is None:
            raise SystemExit(f"{base.path} kept no AdamW moments at step {r_step}: base runs need keep_moments")
        for arm, neurons in zip(TRAINED_ARMS, (fourier, non_fourier, None)):
            params = (base.params(r_step) if neurons is None else
                      iv.transplant_neurons(base, base, neurons, layer, donor_step, r_step))
            after = iv.evaluate_with_hooks(params, base.model_cfg, base.task)
            row[f"{arm}_after_test_acc"], row[f"{arm}_after_train_acc"] = after["test_acc"], after["train_acc"]
            train = replace(base.config.train, keep_moments=False, steps=min(base.config.train.steps, r_step + args.arm_steps))
            for part, item in zip(groups.setdefault(r_step, ([], [], [])), (replace(base.config, train=train),
                                  args.out / f"seed{s}" / f"{arm}_{r_step}", ResumeState(r_step, params, opt))):
                part.append(item)
    by_out = {}
    for r_step, (cfgs, outs, init) in sorted(groups.items()):  # one ensemble per recipient step
        if not args.summarise:
            print(f"transplanting into {len(outs)} recipients at step {r_step}", flush=True)
        arms = ex.finished_runs(outs) if args.summarise else ex.train_or_resume_ensemble(cfgs, outs, init=init)
        by_out |= {str(a.path): a for a in arms if a is not None}
    for row in (r for r in rows if "skipped" not in r):
        arms = {arm: by_out.get(str(args.out / f"seed{row['seed']}" / f"{arm}_{row['recipient_step']}"))
                for arm in TRAINED_ARMS}
        if None in arms.values():
            row["skipped"] = "transplant arms not finished"
            continue
        row["control_grokking_step"] = row["base_grokking_step"]
        for arm, run in arms.items():
            row[f"{arm}_grokking_step"] = transition_metrics(run.metrics).grokked_step
            row[f"{arm}_last_step"] = int(run.metrics["step"].max())
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "provenance": mg.provenance.provenance(),
              "wall_s": None if args.summarise else round(time.time() - t0), "preset": args.preset,
              "arm_steps": args.arm_steps, "min_delay": args.min_delay, "set": list(args.set) or None,
              "budget": next((b.config.train.steps for b in bases if b is not None), None),
              "recipient_max_test_acc": args.recipient_max_test_acc,
              "recipient_min_train_acc": args.recipient_min_train_acc, "rows": rows}
    if args.merge:
        result = ex.merge_rows(mg.files.with_ext(stem, ".json"), result, ("preset", "arm_steps", "min_delay", "set",
                                                                   "recipient_max_test_acc", "recipient_min_train_acc"))
    ex.write_report(stem, plateau_report(result, stem), result, seeds=seeds, prov=result["provenance"])


def plateau_summary(result: dict) -> list[str]:
    """The arms' summary table and the Fourier-vs-non-Fourier comparison, as markdown lines
    (figures/README.md's section is written from this too: analyses/claims_ledger.py)."""
    rows = [r for r in result["rows"] if "control_grokking_step" in r]
    arms = _arms(rows)
    steps = {name: [r[f"{key}_grokking_step"] for r in rows] for name, key in arms.items()}
    after = {name: [None if g is None else g - r["recipient_step"] for g, r in zip(v, rows)] for name, v in steps.items()}
    bound = _bound(result, rows)
    table = []
    for name in arms:  # the per-seed differences only (the signed-rank test of each is slow and not shown)
        paired = [a - c for a, c in zip(after[name], after["control (untouched)"]) if a is not None and c is not None]
        table.append({"arm": name, "grokked within budget": f"{sum(x is not None for x in steps[name])}/{len(rows)}",
                      "grokking step: median (IQR)": ex.censored_iqr(steps[name], bound),
                      "delay after the recipient step: median (IQR)": ex.censored_iqr(after[name], result["arm_steps"]),
                      "paired vs control: median (IQR)": "-" if name.startswith("control") else ex.median_iqr(paired)})
    rule = ("the checkpoint nearest half-way along each plateau" if result.get("recipient_max_test_acc") is None else
            f"the last checkpoint of each plateau with test accuracy <= {result['recipient_max_test_acc']:g}"
            if result.get("recipient_min_train_acc") is None else
            f"the last checkpoint before grokking with test accuracy <= {result['recipient_max_test_acc']:g} and train "
            f"accuracy >= {result['recipient_min_train_acc']:g} (memorised or still memorising)")
    sets = f" with {', '.join(result['set'])}" if result.get("set") else ""
    lines = [f"`{result['preset']}` preset{sets}, {len(result['rows'])} seeds, {len(rows)} with a memorising plateau "
             f"(grokked >= {result['min_delay']} steps after memorising), a recipient and all {len(arms)} arms finished; recipient = "
             f"{rule}; grokking step = first evaluation with test accuracy "
             f"> 0.9; arms trained up to {result['arm_steps']} steps past the recipient (or the preset's step budget), "
             f"stopping 3 evaluations after grokking. Delay = grokking step minus the recipient step; paired = "
             f"the arm's delay minus the control's, per seed (seeds where both grokked).", "",
             markdown_table(table).rstrip("\n")]
    for other, what in (("as many non-Fourier neurons", "non-Fourier arm"),
                        ("untouched, restarted like the arms", "restarted recipient")):
        d = ex.paired_differences(steps["Fourier neurons transplanted"], steps[other]) if other in steps else None
        if d is not None and d.diffs:
            lines += ["", f"Fourier arm minus {what}, grokking step per seed: median {d.median:g}; the Fourier "
                          f"arm sooner in {d.below}, equal in {d.equal}, later in {d.above} of {len(d.diffs)} seeds "
                          f"(Wilcoxon signed-rank over the unequal pairs: p = {d.p:.2g})."]
    return lines


def _arms(rows: list[dict]) -> dict[str, str]:
    """ARMS that every one of ``rows`` has (the restart arm is missing from older JSONs)."""
    return {name: key for name, key in ARMS.items() if all(f"{key}_grokking_step" in r for r in rows)}


def _bound(result: dict, rows: list[dict]) -> int:
    """A step no arm member that did not grok had reached: its recipient step + the arms' steps,
    or the preset's step budget where that is less, at least (the least over ``rows``); such a
    member counts in a median as later than all."""
    budget = result.get("budget") or mg.get_preset(result["preset"]).train.steps
    return min((min(r["recipient_step"] + result["arm_steps"], budget) for r in rows), default=0)


def plateau_report(result: dict, stem) -> str:
    """Prints the arms' distributions, draws the figure; returns the markdown report."""
    rows = [r for r in result["rows"] if "control_grokking_step" in r]
    arms = _arms(rows)
    steps = {name: [r[f"{key}_grokking_step"] for r in rows] for name, key in arms.items()}
    after = {name: [None if g is None else g - r["recipient_step"] for g, r in zip(v, rows)] for name, v in steps.items()}
    for name in arms:
        print(f"{name:32s} grokking steps: {ex.grokked_summary(steps[name], _bound(result, rows))}")
    lines = plateau_summary(result)
    lines += ["", "Per seed (recipient = the base run's checkpoint; donor = its last checkpoint; clustered = "
              "last-layer neurons with > 85% of their variance on one frequency, of 512; Gini = embedding "
              "spectrum's Gini over k >= 1):", "", markdown_table([seed_cells(r) for r in result["rows"]
                                                                   if "recipient_step" in r], SEED_COLUMNS).rstrip("\n")]
    for inv in result.get("invocations") or [result]:  # one call without --merge: the result is its own record
        a = inv["args"]
        wall = f"{inv['wall_s']} s" if inv["wall_s"] is not None else "a --summarise pass (training time in figures/README.md)"
        sets = "".join(f" --set {v}" for v in result.get("set") or [])  # merge_rows: the same in every invocation
        rule = (f" --recipient-max-test-acc {result['recipient_max_test_acc']:g}"
                if result.get("recipient_max_test_acc") is not None else "")
        rule += (f" --recipient-min-train-acc {result['recipient_min_train_acc']:g}"
                 if result.get("recipient_min_train_acc") is not None else "")
        # the fields --merge requires to match, where not the defaults: the command must rebuild the study
        rule += "".join(f" --{flag} {result[key]}" for flag, key, default in
                        (("arm-steps", "arm_steps", ARM_STEPS), ("min-delay", "min_delay", MIN_DELAY))
                        if result.get(key) not in (None, default))
        lines += ["", f"Rows of seeds {a['seeds']}: `python analyses/fourier_transplant.py --preset {a['preset']}{sets}"
                      f"{rule} --seeds {a['seeds']}{' --merge' if a.get('merge') == 'True' else ''}`, {wall} on "
                      f"{inv['provenance'].get('cpu_cores')} CPU cores, made {inv['provenance'].get('made')}."]
    skipped = [r for r in result["rows"] if "skipped" in r]
    if skipped:
        lines += ["", "Seeds not in the arms: " + "; ".join(f"seed {r['seed']}: {r['skipped']}" + (
            f" (memorised {r['base_memorisation_step']}, grokked {r['base_grokking_step']})"
            if "base_grokking_step" in r else "") for r in skipped)]
    print("\n".join(lines))
    fig = grokking_step_distributions(
        after, title=(f"Transplant into the memorising plateau, {result['preset']} preset, {len(rows)} seeds"
                      if result.get("recipient_min_train_acc") is None else
                      f"Transplant into a model still memorising, at test accuracy <= {result['recipient_max_test_acc']:g}, "
                      f"{result['preset']} preset, {len(rows)} seeds"))
    save_figure(fig.update_yaxes(title_text="grokking step minus recipient step"), stem)
    return "\n".join(lines) + "\n"


def seed_cells(r: dict) -> dict:
    """One seed's row of the per-seed table (arms unfinished: the evidence only)."""
    ev = r.get("evidence")
    ends = [r[f"{a}_grokking_step"] or f"not by {r.get(f'{a}_last_step')}" if f"{a}_grokking_step" in r
            else "unfinished" for a in ("control", *TRAINED_ARMS) if a != "restart" or f"{a}_grokking_step" in r]
    return dict(zip(SEED_COLUMNS, (
        str(r["seed"]), f"{r['base_memorisation_step']} / {r['base_grokking_step']}",
        f"{r['recipient_step']}: {r['recipient_train_acc']:.3f} / {r['recipient_test_acc']:.3f}, "
        f"{r['recipient_test_loss']:.2f}",
        " / ".join(f"{ev[k]['embedding_gini']:.2f}" for k in ("init", "recipient", "donor")) if ev else "-",
        f"{ev['init']['clustered']} / {ev['recipient']['clustered']} ({ev['recipient']['on_donor_freqs']}) / "
        f"{ev['donor']['clustered']}" if ev else f"- / {r['recipient_clustered']} / {r['n_fourier']}",
        f"{r['n_fourier']} / {r['n_non_fourier']}",
        f"{r['fourier_after_test_acc']:.3f} / {r['non_fourier_after_test_acc']:.3f}", " / ".join(map(str, ends)))))


if __name__ == "__main__":
    main()
