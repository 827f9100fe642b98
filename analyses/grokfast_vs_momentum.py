"""Seed 004: is Grokfast doing anything beyond lowering Adam's momentum?

    python analyses/grokfast_vs_momentum.py            # 4 arms x 3 seeds (see figures/grokfast_vs_momentum.md)
    python analyses/grokfast_vs_momentum.py --full     # 4 arms x 30 seeds
    python analyses/grokfast_vs_momentum.py --mod113   # 4 arms x 5 seeds on the seed004 preset -> grokfast_mod113.*

Four arms of the ``dynamics`` preset (a+b mod 113, 2 layers), one sweep with explicit settings:
default AdamW (beta1 0.9), Grokfast EMA (alpha 0.98, lambda 2) + default AdamW, beta1 = 0.5, and
Grokfast + beta1 = 0.5. Seed 004: Grokfast + default Adam groks at ~800 steps, beta1 = 0.5 at
~700, both together worse than either ("the two interventions are redundant").

The default (small) scale: the published setting (a+b mod 113, 2 layers, ~1000 steps to grok)
costs minutes per member on the 2 shared CPU cores this was run on, so the small scale uses the
test suite's grokking setting instead: a+b mod 23, 70% train, Nanda's 1-layer model at d_model 64
(4 heads x 16, d_mlp 256), full-batch AdamW lr 3e-3, wd 1, 1500 steps, evaluated every 10 steps
(``SMALL`` of momentum_sweep.py: the ``demo`` preset with those fields). ``--full`` uses the ``dynamics`` preset.

``--mod113``: seed 004's own setting as far as it is given, the ``seed004`` preset's model and
task (a+b mod 113, 2 layers, full batch, AdamW wd 1, 3000 steps) at lr 1e-3 (``MOD113_LR``): seed
004 runs Grokfast on "default Adam", whose lr is 1e-3 (the preset itself is at lr 4e-4, where the
AdamW transition falls near seed 004's ~1500 steps: analyses/seed004_transition.py). 5 seeds per
arm by default, written to ``grokfast_mod113.*`` and the ``grokfast_mod113`` section of
``--readme``. Its AdamW arm is also seed004_transition.py's base row.

Members stop ``--stop-after-grok`` evaluations after grokking. Each seed's four arms are one
sweep of their own under ``--out/seed{s}`` (one ensemble): re-running resumes, more seeds add to
the finished ones, and the report is rewritten after every seed over the seeds done so far.
Outputs (``--figures``): grokfast_vs_momentum.html/.png (grokking step per member and arm),
grokfast_vs_momentum.md (table next to seed 004's numbers) and .json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

import mechgrok as mg
from mechgrok import experiment as ex
from mechgrok.experiment import command_line, parse_args, parse_overrides, parse_seeds, parser, write_report
from mechgrok.files import with_ext, write_text
from mechgrok.plots import grokking_step_distributions, markdown_table, save_figure
from momentum_sweep import small_or_preset  # the same small setting (analyses/ is on sys.path when run)

MOD113_LR = 1e-3  # seed 004 runs Grokfast on "default Adam": torch's default lr

ARMS = {  # name -> settings; seed 004's grokking step
    "AdamW (beta1 0.9)": ({"grokfast": "none", "beta1": 0.9}, "- (the slow baseline)"),
    "Grokfast EMA + AdamW": ({"grokfast": "ema", "beta1": 0.9}, "~800"),
    "beta1 = 0.5": ({"grokfast": "none", "beta1": 0.5}, "~700"),
    "Grokfast EMA + beta1 = 0.5": ({"grokfast": "ema", "beta1": 0.5}, "worse than either"),
}




def arm_of(row) -> str:
    return next(name for name, (s, _) in ARMS.items() if (row.grokfast, row.beta1) == (s["grokfast"], s["beta1"]))


def summarise(rows: list[dict], budget: int) -> list[dict]:
    """Per arm: n, how many grokked, median and IQR of the grokking step (a member that did not
    grok within ``budget`` steps counts as later than all: ``ex.censored_quartiles``) and of the
    delay (over the members that memorised and grokked)."""
    out = []
    for name, (_, published) in ARMS.items():
        g = [r for r in rows if r["arm"] == name]
        out.append({"arm": name, "n": len(g), "n_grokked": sum(r["grokked_step"] is not None for r in g),
                    "grokked_step": ex.censored_quartiles([r["grokked_step"] for r in g], budget),
                    "delay": ex.quartiles(r["delay"] for r in g), "seed004": published})
    return out


def table(summary: list[dict], rows: list[dict], budget: int) -> str:
    """Per arm: grokked, grokking step (median, IQR; not grokked within ``budget`` = later than
    all) and delay (median, IQR of those that grokked), next to seed 004's step."""
    steps = {s["arm"]: [r["grokked_step"] for r in rows if r["arm"] == s["arm"]] for s in summary}
    return markdown_table([{"arm": s["arm"], "grokked": f"{s['n_grokked']}/{s['n']}",
                            "grokking step, median (IQR)": ex.censored_iqr(steps[s["arm"]], budget),
                            "steps": ", ".join("-" if g is None else str(g) for g in steps[s["arm"]]),
                            "delay of those that grokked, median (IQR)": ex.median_iqr(r["delay"] for r in rows if r["arm"] == s["arm"]),
                            "seed 004 grokking step": s["seed004"]} for s in summary])


def head(cfg: dict, preset: str, seeds, budget: int, stop: int, trained: float) -> str:
    task, model, train = cfg["task"], cfg["model"], cfg["train"]
    return (f"Grokfast vs momentum: {task['op']} mod {task['p']}, {task['frac']:.0%} train, {model['n_layers']} "
            f"layer(s), d_model {model['d_model']}, lr {train['lr']:g} ({preset}), Grokfast EMA alpha "
            f"{train['grokfast_alpha']:g}, {len(seeds)} seed(s) per arm ({', '.join(map(str, seeds))}), budget {budget} "
            f"steps, stop {stop} evaluations after grokking; training {trained / 60:.1f} min over all invocations.")


def section(d: dict | None) -> str:
    """figures/README's grokfast_mod113 section, from the --mod113 JSON report alone (the claims
    ledger regenerates it from the committed file); ``None``: not run yet."""
    title = "### Grokfast vs momentum on a+b mod 113, 2 layers (seed 004)"
    if d is None:
        return f"{title}\n\nWritten by `analyses/grokfast_vs_momentum.py --mod113`; not run yet."
    preset, budget = d["args"].get("preset") or "seed004", int(d["table"][0]["budget"])
    return "\n".join([f"{title} — `grokfast_mod113.png`, `.md`", "",
                      f"`{d['command']}`. {head(d['config'], preset, d['seeds'], budget, int(d['args']['stop_after_grok']), d['train_seconds'])}"
                      f" Hardware: {d['hardware']}.", "", table(d["summary"], d["rows"], budget).rstrip()])


def rows_of(t: pd.DataFrame) -> list[dict]:
    """One row per member of a population table (or a report's ``table`` read back)."""
    none = lambda v: None if pd.isna(v) else int(v)  # noqa: E731
    return [{"arm": arm_of(r), "seed": int(r.seed), "grokked_step": none(r.grokked_step),
             "memorised_step": none(r.memorised_step), "delay": none(r.delay), "last_step": none(r.last_step),
             "final_test_acc": float(r.final_test_acc)} for r in t.itertuples()]


def retable(stem: Path) -> None:
    """Rewrite the table of the report ``stem.md`` from the members in ``stem.json`` (its runs
    may be gone), as ``report`` writes it now; the report's other lines stay as they are."""
    t = pd.DataFrame(json.loads(with_ext(stem, ".json").read_text())["table"])
    rows, budget = rows_of(t), int(t["budget"].min())
    new = table(summarise(rows, budget), rows, budget).rstrip("\n").split("\n")
    lines = with_ext(stem, ".md").read_text().split("\n")
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    last = next(i for i in range(first, len(lines)) if not lines[i].startswith("|"))
    note = (f"Table rewritten from `{with_ext(stem, '.json').name}` by `{command_line()}` ({time.strftime('%Y-%m-%d')}): "
            f"a member that did not grok within {budget} steps counts in the median as later than all.")
    write_text(with_ext(stem, ".md"), "\n".join([*lines[:first], *new, "", note, *lines[last:]]))


def report(pop, args, base, mode: str, t0: float):
    t = pop.table
    rows = rows_of(t)
    budget = int(t["budget"].iloc[0])
    summary, seeds = summarise(rows, budget), sorted({r["seed"] for r in rows})
    groups = {s["arm"]: [r["grokked_step"] for r in rows if r["arm"] == s["arm"]] for s in summary}
    stem = args.figures / {"mod113": "grokfast_mod113", "full": "grokfast_vs_momentum_full"}.get(mode, "grokfast_vs_momentum")
    save_figure(grokking_step_distributions(groups, title=f"Grokfast vs momentum: grokking step, {len(seeds)} seeds "
                                            f"per arm (seed 004: one run per arm)"), stem)
    cfg = pop.run(0).config  # the members' settings (--set changes the base's)
    trained = sum(r.get("seconds") or 0 for r in pop.records.values())
    preset = args.preset or {"small": "small scale", "mod113": "seed004"}.get(mode, "dynamics")
    text = f"{head(cfg.to_dict(), preset, seeds, budget, args.stop_after_grok, trained)}\n\n{table(summary, rows, budget)}"
    _, js = write_report(stem, text, {"args": vars(args), "config": cfg.to_dict(), "rows": rows, "summary": summary,
                                      "train_seconds": trained, "table": t.drop(columns=["path"]).to_dict("records")},
                         seeds=seeds, started=t0)
    if mode == "mod113" and args.readme:
        ex.write_section(args.readme, "grokfast_mod113", section(json.loads(js.read_text())))
    print(text)
    print(f"wrote {stem}.html/.png/.md/.json")


def main():
    ap = parser(__doc__, out=None, seeds=None, full="30 seeds per arm", overrides=True)
    ap.add_argument("--mod113", action="store_true", help="the seed004 preset at lr 1e-3 (a+b mod 113, 2 layers), 5 "
                    "seeds per arm, written to grokfast_mod113.*")
    ap.add_argument("--out", type=Path, default=None, help="where the runs go (default sweeps/grokfast_vs_momentum, "
                    "or sweeps/grokfast_mod113 with --mod113; re-running reuses them)")
    ap.add_argument("--seeds", default=None, help="N (seeds 0..N-1), A-B, or a,b,c (default 3; --mod113 5; --full 30)")
    ap.add_argument("--steps", type=int, default=None, help="budget (default: the preset's)")
    ap.add_argument("--stop-after-grok", type=int, default=5)
    ap.add_argument("--chunk-size", type=int, default=8)
    ap.add_argument("--preset", default=None, help="base configuration (default: the small scale, or "
                    "dynamics with --full, seed004 with --mod113)")
    ap.add_argument("--readme", default="figures/README.md", help="README whose grokfast_mod113 section --mod113 "
                    "rewrites ('' to leave it)")
    ap.add_argument("--retable", type=Path, default=None, metavar="STEM", help="train nothing: rewrite the table of "
                    "the report STEM.md from STEM.json (e.g. figures/grokfast_vs_momentum)")
    args = parse_args(ap)
    if args.retable is not None:
        return retable(args.retable)
    mode = "mod113" if args.mod113 else "full" if args.full else "small"
    args.seeds = args.seeds or {"mod113": "5", "full": "30", "small": "3"}[mode]
    args.out = args.out or Path("sweeps/grokfast_mod113" if mode == "mod113" else "sweeps/grokfast_vs_momentum")
    preset = args.preset or ("seed004" if mode == "mod113" else None)
    seeds, base = parse_seeds(args.seeds), small_or_preset(preset, mode != "small")
    if mode == "mod113" and not args.preset:
        base = mg.configure(base, lr=MOD113_LR)
    fixed = {"stop_after_grok": args.stop_after_grok, "device": "cpu"} | ({"steps": args.steps} if args.steps else {})
    spec = mg.SweepConfig(base, settings=tuple(s for s, _ in ARMS.values()), seeds=seeds,
                          fixed=fixed | parse_overrides(args.set), chunk_size=args.chunk_size)
    t0 = time.time()
    ex.sweep_seed_by_seed(spec, args.out, after=lambda pop: report(pop, args, base, mode, t0))


if __name__ == "__main__":
    main()
