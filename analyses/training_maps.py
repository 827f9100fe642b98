"""Latent-state training maps (Hu et al. 2023; issue 11) of hu_modular and hu_parity populations.

    python analyses/training_maps.py              # the small scale this 2-core machine allows
    python analyses/training_maps.py --full       # the presets as they are, 40 seeds each
    # the presets' own scale, one process per population, then either command again reports both:
    python analyses/training_maps.py --full --seeds 20 --populations modular --set compile=true \
        --out runs/training_maps_full --figures figures/latent_full
    python analyses/training_maps.py --full --seeds 20 --populations modular_ln --set compile=true \
        --out runs/training_maps_full --figures figures/latent_full

Hu et al. trained 40 seeds of each task, took the 14 weight statistics every 10 epochs, fitted
Gaussian HMMs to the within-run z-scored statistics and read detour states off a regression of
convergence time on state occupancy. This script does the same with mechgrok's presets:

* ``modular``: hu_modular (a+b mod 113, 30 %, Nanda's model, AdamW 1e-3, wd 1, batch 256); the
  default scale shrinks it to a+b mod 53 with a 50 % split and 4000 steps (a trial seed grokked
  at step ~3300), a checkpoint every 50 steps; ``modular_ln``: the same with pre-LN blocks
  and a final LayerNorm, for the paper's "LayerNorm makes paths more uniform".
* ``parity``: hu_parity (parity of 3 of 20 bits, 1000 training strings, batch 32); the default
  scale uses 12 bits and 1024 training strings (the test set, every other string, stays small
  enough to evaluate often), 4000 steps, a checkpoint every 25 steps (a trial seed jumped from
  chance to 100 % train and test accuracy at step ~650; at 1500 steps 3 of the first 4 seeds
  were still at chance).

Members are trained one after another with ``mg.experiment.train_or_resume`` (finished members
are skipped; an interrupted one, or a larger step count, resumes), then
``report.latent`` writes the statistics, model selection, map, ribbons and detour
table of each population under ``--figures/<population>/`` with its caption.md and setting.json
(the members' config and count, which the claims ledger compares with the paper); the comparison
with the paper's qualitative findings and the captions go to ``--figures/README.md`` and
findings.csv, keeping the populations that earlier invocations reported there.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

import mechgrok as mg
from mechgrok import latent
from mechgrok.experiment import (command_line, is_finished, keep, parse_args, parse_overrides, parser, restore,
                                 train_or_resume)
from mechgrok.files import write_csv, write_json, write_text
from mechgrok.plots import markdown_table
from mechgrok.presets import configure, get_preset, parse_value
from mechgrok.provenance import hardware

SMALL = {  # each preset at the small scale
    "hu_modular": dict(p=53, frac=0.5, steps=4000, eval_every=50, checkpoint_every=50),
    "hu_parity": dict(n_bits=12, frac=0.25, steps=4000, eval_every=25, checkpoint_every=25),
}
# name: (preset, overrides at every scale, HMM features: Hu et al.'s best subset for the task)
POPULATIONS = {
    "modular": ("hu_modular", {}, latent.BEST_FEATURES["modular"]),
    "modular_ln": ("hu_modular", dict(normalization="LN"), latent.BEST_FEATURES["modular"]),
    "parity": ("hu_parity", {}, latent.BEST_FEATURES["parity"]),
}

PAPER = {
    "detour": "Some seeds take a detour through an optional state and converge later (a state whose "
              "occupancy has a positive, significant regression coefficient on convergence time).",
    "high_l2": "On the grokking tasks the detour state has a high L2 norm.",
    "transition": "The memorisation-to-generalisation transition shows up as a change of latent state.",
    "layernorm": "LayerNorm makes the paths more uniform (fewer distinct routes, less spread in "
                 "convergence time).",
}


def population_table(full: bool, sets: list[str]) -> dict[str, tuple[str, dict, tuple]]:
    """name -> (preset, overrides, HMM features): POPULATIONS at the small scale (SMALL) or, with
    ``full``, as they are; ``sets`` ("FIELD=VALUE", ``--set``) apply to every population, typed against
    each preset (figures/latent's parity maps were made with --set steps=1500)."""
    out = {}
    for name, (preset, over, features) in POPULATIONS.items():
        given = {k.split(".")[-1]: parse_value(k, v, get_preset(preset)) for k, v in parse_overrides(sets).items()}
        out[name] = (preset, ({} if full else SMALL[preset]) | over | given, features)
    return out


def train_population(name: str, preset: str, overrides: dict, seeds: list[int], root: Path,
                     kept: Path) -> tuple[pd.DataFrame, float]:
    """Train (or finish) every member that ``kept/<name>/seed<s>`` does not hold yet, then keep
    it there: its config, metrics, training time and checkpoint statistics, the few hundred KB
    the map is made from, so that a population trained over several sessions outlives each
    session's machine (the checkpoints stay under ``root``). Returns the population's
    statistics table (``latent.population_statistics``'s columns) and the members' summed
    training time."""
    tables, seconds = [], 0.0
    for i, s in enumerate(seeds):
        out, here = root / name / f"seed{s:02d}", kept / name / f"seed{s:02d}"
        cfg = configure(preset, seed=s, **overrides)
        restore(here, out)
        # trained.json is written last: a member cut short while being kept is kept again
        if not ((here / "trained.json").exists() and is_finished(mg.load_run(out), cfg.train.steps)):
            t0, before = time.time(), mg.is_run_dir(out) and is_finished(mg.load_run(out), cfg.train.steps)
            run = train_or_resume(cfg, out)
            stats = latent.population_statistics([run], progress=False)
            # a member an earlier call finished trained at a time this one does not know
            trained = {"seconds": None if before else round(time.time() - t0, 1), "hardware": hardware()}
            write_csv(here / "statistics.csv", stats)
            keep(out, here)
            write_json(here / "trained.json", trained)
        stats = pd.read_csv(here / "statistics.csv").assign(member=i)
        tables.append(stats)
        seconds += json.loads((here / "trained.json").read_text())["seconds"] or 0
        print(f"  {name} seed {s}: {mg.load_run(out).summary()}", flush=True)
    return pd.concat(tables, ignore_index=True), seconds


def routes(tm: latent.TrainingMap) -> pd.Series:
    """Each member's route: its Viterbi path with repeats collapsed (e.g. "0-1-3")."""
    def collapse(p):
        return "-".join(str(int(s)) for i, s in enumerate(p) if i == 0 or s != p[i - 1])
    return pd.Series({m: collapse(p) for m, p in tm.paths.items()})


def transition_alignment(tm: latent.TrainingMap, window: int = 3) -> float:
    """Fraction of grokked members whose path changes state within ``window`` checkpoints of
    their grokking step."""
    hits, n = 0, 0
    for m, p in tm.paths.items():
        g = tm.grokking_steps.get(m)
        if g is None or not np.isfinite(g):
            continue
        steps = tm.steps[m]
        i = int(np.searchsorted(steps, g))
        lo, hi = max(0, i - window), min(len(p) - 1, i + window)
        n += 1
        hits += int(len(set(p[lo:hi + 1].tolist())) > 1)
    return hits / n if n else float("nan")


def findings(name: str, res: dict) -> dict:
    tm, det = res["map"], res["detours"]
    r = routes(tm)
    g = pd.Series(tm.grokking_steps, dtype=float)
    l2 = tm.state_metrics["l2"] if "l2" in tm.state_metrics else None
    high_l2 = int(l2.idxmax()) if l2 is not None else None
    detours = det[det.detour]
    return {
        "population": name, "members": len(tm.paths), "grokked": int(g.notna().sum()),
        "grok_step_median": float(g.median()), "grok_step_cv": float(g.std() / g.mean()) if g.notna().sum() > 1 else np.nan,
        "n_states": res["n_states"], "distinct_routes": int(r.nunique()),
        "most_common_route_share": float(r.value_counts(normalize=True).iloc[0]),
        "detour_states": ", ".join(f"S{int(d.state)} ({d.label}; +{d.coef:.0f} steps/ckpt, 95% CI "
                                   f"{d.ci_low:.0f}..{d.ci_high:.0f}, p={d.p_value:.2g}, n={d.n})"
                                   for d in detours.itertuples()) or "none significant",
        "highest_l2_state": (f"S{high_l2} (coef {det.loc[high_l2, 'coef']:.0f}, p={det.loc[high_l2, 'p_value']:.2g}, "
                             f"visited by {det.loc[high_l2, 'visited']}/{det.loc[high_l2, 'n']})"
                             if high_l2 is not None else "n/a"),
        "detour_is_highest_l2": bool(high_l2 in set(detours.state)) if high_l2 is not None else False,
        "state_change_at_grokking": transition_alignment(tm),
    }


def main():
    ap = parser(__doc__, out="runs/training_maps", figures="figures/latent", full="the presets unchanged, 40 seeds each",
                overrides=True)
    ap.add_argument("--seeds", default=None, help="seeds per population: N, or per population as "
                    "modular=8,parity=8 (default 8; 40 with --full)")
    ap.add_argument("--populations", default="modular,modular_ln,parity")
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--kept", type=Path, default=None, help="committed copy of each finished member's config, metrics "
                    "and checkpoint statistics (default: --figures/kept); members found there are not trained again")
    ap.add_argument("--note", default="", help="a sentence for the README (e.g. how the members were trained)")
    args = parse_args(ap)
    table = population_table(args.full, args.set)
    names = [n.strip() for n in args.populations.split(",")]
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown population(s) {unknown}; choose from {', '.join(table)}")
    default = 40 if args.full else 8
    if args.seeds and "=" in args.seeds:
        given = {k.strip(): int(v) for k, v in (x.split("=") for x in args.seeds.split(","))}
        seeds = {n: given.get(n, default) for n in names}
    else:
        seeds = {n: int(args.seeds or default) for n in names}

    rows = []
    for name in names:
        preset, overrides, features = table[name]
        n_seeds = seeds[name]
        print(f"== {name}: {preset} {overrides} x {n_seeds} seeds", flush=True)
        stats, t_train = train_population(name, preset, overrides, list(range(n_seeds)), args.out,
                                          args.kept or args.figures / "kept")
        t0 = time.time()
        res = mg.report.latent(stats, args.figures / name, features=list(features), max_states=8,
                               restarts=args.restarts, title=name, progress_bar=False)  # figures/'s plotly.min.js
        t_hmm = time.time() - t0
        f = findings(name, res)
        rows.append(f)
        print(pd.Series(f).to_string(), flush=True)
        cfg = configure(preset, seed=0, **overrides)
        # what the claims ledger compares with the paper: the members' config (seed 0's) and how many
        write_json(args.figures / name / "setting.json", {"config": cfg.to_dict(), "members": n_seeds,
                                                          "full": bool(args.full), "command": command_line()})
        caption = (
            f"### {name}\n\n`{command_line()}` (hardware: {hardware()}). `{preset}`" + (f" with {overrides}" if overrides else "") +
            f" ({mg.Task(cfg.task).describe()}, {cfg.train.steps} steps, a checkpoint every "
            f"{cfg.train.checkpoint_every} steps), seeds 0..{n_seeds - 1} (split, init and batch order); HMM "
            f"features {', '.join(features)}, diagonal covariance, {args.restarts} restarts, "
            f"{res['n_states']} states (" + ("lowest BIC of 1..8" if res["n_states"] == res["selection"].best else
            f"BIC was lowest at {res['selection'].best}, but a fit on all members emptied a state there; the "
            f"next lowest") + f"). Training {t_train / 60:.1f} min (all members, one "
            f"after another), statistics, HMMs and figures {t_hmm / 60:.1f} min.\n\nFiles in `{name}/`: model_selection, training_map, ribbons "
            f"(.html/.png), statistics.csv, model_selection.csv, transitions.csv, states.csv, paths.csv, "
            f"detours.csv.\n")
        write_text(args.figures / name / "caption.md", caption)
    summary = merged_findings(args.figures / "findings.csv", rows)
    write_csv(args.figures / "findings.csv", summary)
    captions = [(args.figures / n / "caption.md").read_text() for n in summary.population
                if (args.figures / n / "caption.md").exists()]
    write_readme(args, summary, captions)


def merged_findings(path: Path, rows: list[dict]) -> pd.DataFrame:
    """This invocation's findings (``rows``, one per population) with those that earlier invocations
    wrote to ``path`` for other populations: one process per population, then any of them, leaves
    findings.csv (and the README) with all of them. In POPULATIONS order."""
    new = pd.DataFrame(rows)
    earlier = pd.read_csv(path) if path.exists() else new.iloc[:0]
    earlier = earlier[~earlier.population.isin(new.population)]
    # an empty frame in the concat would turn the counts into floats ("5.0 members")
    summary = pd.concat([earlier, new], ignore_index=True) if len(earlier) else new
    return summary.sort_values("population", key=lambda c: c.map(list(POPULATIONS).index), ignore_index=True)


def spread_comparison(figures: Path) -> list[str]:
    """With LayerNorm and without: do the grokked members' grokking steps spread differently?"""
    files = [figures / pop / "statistics.csv" for pop in ("modular_ln", "modular")]
    if not all(f.exists() for f in files):
        return []
    sp = latent.convergence_spread(*(pd.read_csv(f) for f in files))
    if sp.p is None:
        return []
    ln, plain = sp.a, sp.b
    return ["", f"Spread of convergence: the grokked members' grokking steps range {ln.min():.0f}-{ln.max():.0f} "
            f"with LayerNorm (n={len(ln)}, SD {ln.std():.0f}) and {plain.min():.0f}-{plain.max():.0f} without "
            f"(n={len(plain)}, SD {plain.std():.0f}); Brown-Forsythe test of equal spread: W = {sp.statistic:.1f}, "
            f"p = {sp.p:.2g}."]


def write_readme(args, summary: pd.DataFrame, captions: list[str]):
    s = summary.set_index("population")
    hw = f"{hardware()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    lines = [
        "# Latent-state training maps (Hu et al. 2023; issue 11)", "",
        f"Last command: `{command_line()}` (each population's own command is in its caption below)  ",
        f"Hardware: {hw}.  ", *([args.note + "  "] if args.note else []),
        f"Scale: {'the presets unchanged' if args.full else 'the small scale of analyses/training_maps.py (see its docstring)'}, "
        "seeds per population: " + ", ".join(f"{r.population} {r.members}" for r in summary.itertuples())
        + " (Hu et al.: 40).", "",
        "## Side by side with the paper's qualitative findings", "",
    ]
    rows = {
        "members (grokked)": [f"{r.members} ({r.grokked})" for r in s.itertuples()],
        "grokking step: median, coefficient of variation": [f"{r.grok_step_median:.0f}, {r.grok_step_cv:.2f}"
                                                             for r in s.itertuples()],
        "states (lowest BIC)": [str(r.n_states) for r in s.itertuples()],
        PAPER["detour"]: [r.detour_states for r in s.itertuples()],
        PAPER["high_l2"]: [f"highest-l2 state {r.highest_l2_state}; it is a detour: "
                           f"{'yes' if r.detour_is_highest_l2 else 'no'}" for r in s.itertuples()],
        PAPER["transition"]: [f"{r.state_change_at_grokking:.0%} of grokked members change state within 3 "
                              f"checkpoints of their grokking step" for r in s.itertuples()],
        PAPER["layernorm"]: [f"{r.distinct_routes} distinct routes; the most common taken by "
                             f"{r.most_common_route_share:.0%}; grokking-step CV {r.grok_step_cv:.2f}"
                             for r in s.itertuples()],
    }
    lines.append(markdown_table([{"finding (Hu et al.)": k, **dict(zip(s.index, v))} for k, v in rows.items()])
                 .rstrip("\n"))
    lines += ["", "Routes are Viterbi paths with repeated states collapsed; each population has its own "
              "HMM, so state numbers are not comparable across columns. Detour coefficients are grokking "
              "steps per checkpoint spent in the state (one regression per state, members that grokked).",
              *spread_comparison(args.figures), "", "## Figures", "", *captions]
    write_text(args.figures / "README.md", "\n".join(lines) + "\n")
    print(f"wrote {args.figures / 'README.md'}")


if __name__ == "__main__":
    main()
