"""Nanda et al. (2023), "Progress measures for grokking via mechanistic interpretability":
our numbers for the nanda preset next to the published ones.

    python analyses/nanda_progress_measures.py                       # runs/nanda -> figures/nanda/
    python analyses/nanda_progress_measures.py --run runs/nanda --steps 16000

Trains ``runs/nanda`` with the nanda preset (seed 0) if it does not exist (``--steps`` overrides the
preset's 40k), measures every checkpoint (``mg.report.analysis``: key frequencies from the final
checkpoint, restricted/excluded loss by Nanda et al.'s definition (the logits over all pairs), Gini,
weight norm, phases), adds the final restricted loss by the TransformerLens demo's definition
(neurons, test pairs), writes the figures and tables into ``figures/nanda/`` and prints a markdown
table of ours against the published numbers (also written to ``figures/nanda/summary.md``).
"""

from __future__ import annotations

import json
from pathlib import Path

import mechgrok as mg
from mechgrok import experiment as ex
from mechgrok.provenance import hardware

PUBLISHED = {
    "key frequencies": "5: [14, 35, 41, 42, 52]",
    "W_E frequencies with non-negligible norm": "6",
    "neurons with > 85% of variance in one frequency": "433 / 512 (84.6%)",
    "memorisation phase": "0 - 1.4k",
    "circuit formation phase": "1.4k - 9.4k",
    "cleanup phase": "9.4k - 14k",
    "final loss": "2.41e-7",
}


def fmt_k(step) -> str:
    return "-" if step is None else (f"{step / 1000:g}k" if step >= 1000 else str(step))


def main():
    ap = ex.parser(__doc__.splitlines()[0], out=None, figures="figures/nanda", threads=2)
    ap.add_argument("--run", default="runs/nanda")
    ap.add_argument("--steps", type=int, default=None, help="training steps if the run must be trained")
    ap.add_argument("--readme", default="figures/README.md",
                    help="file whose nanda section (between the markers) gets the table; '' to skip")
    ap.add_argument("--command", default=None, help="the command line to quote in the README (default: this one)")
    args = ex.parse_args(ap)
    run_dir = Path(args.run)
    if not mg.is_run_dir(run_dir):
        cfg = mg.configure("nanda", steps=args.steps)  # None keeps the preset's
        print(f"training {run_dir} ({cfg.train.steps} steps, preset nanda) ...")
        mg.train(cfg, run_dir)
    run = mg.load_run(run_dir)
    planned, last = run.config.train.steps, run.steps[-1]
    if last < planned:
        print(f"WARNING: {run_dir} is not finished (last checkpoint {last} of {planned} steps)")

    res, written = mg.report.analysis(run, out_dir=args.figures)
    table, ph, task, params, cfg = res.table, res.phases, run.task, run.params(last), run.model_cfg
    keys, tr, final, b = table.attrs["key_freqs"], ph.transitions, table.iloc[-1], ph.intervals()
    nf = mg.fourier.neuron_frequencies(params, task, cfg=cfg)
    n_clustered, d_mlp = int(nf.clustered.sum()), len(nf.share)
    emb_keys, wl_keys = (mg.fourier.key_frequencies(params, task, rule=r, cfg=cfg) for r in ("embedding", "W_L"))
    tl_demo = mg.progress.restricted_loss(run, task, keys, level="neurons")
    summary = {"key_freqs": [int(k) for k in keys], "W_L_key_freqs": [int(k) for k in wl_keys],
               "embedding_key_freqs": [int(k) for k in emb_keys], "n_clustered": n_clustered, "d_mlp": d_mlp,
               "phases": {name: None if b[name] is None else [int(x) for x in b[name]]
                          for name in ("memorisation", "circuit formation", "cleanup")},
               "final": {k: float(final[k]) for k in ("train_loss", "test_loss", "restricted_loss", "excluded_loss")},
               "restricted_loss_tl_demo": float(tl_demo), "transitions": tr.to_dict(), "last_step": int(last),
               "planned_steps": int(planned), "n_checkpoints": len(table), "run": str(run_dir),
               "seeds": [run.config.task.seed, run.config.model.seed, run.config.train.seed],
               "preset": run.config.preset, "device": run.meta.get("device", "?"),
               "torch": run.meta.get("versions", {}).get("torch", "?"), "hardware": hardware(),
               "figures": [p.name for p in written if p.suffix == ".png"]}
    md = summary_table(summary)
    ex.write_report(Path(args.figures) / "summary", md, {"config": run.config.to_dict(), "summary": summary},
                    command=args.command)
    print(md + "\nfigures:\n" + "".join(f"  {f}\n" for f in written if f.suffix == ".png"), end="")
    if args.readme:
        readme = Path(args.readme).resolve()
        figures = Path(args.figures).resolve()
        rel = figures.relative_to(readme.parent).as_posix() if figures.is_relative_to(readme.parent) else str(figures)
        ex.write_section(readme, "nanda", section(json.loads((Path(args.figures) / "summary.json").read_text()), rel))
        print(f"updated {readme}")


def summary_table(s: dict) -> str:
    """Ours next to the published numbers, and the run's transitions and final losses."""
    span = lambda name: "-" if s["phases"][name] is None else " - ".join(map(fmt_k, s["phases"][name]))  # noqa: E731
    keys, emb, fin, tr = s["key_freqs"], s["embedding_key_freqs"], s["final"], s["transitions"]
    ours = [f"{len(keys)}: {keys} (W_L rule: {s['W_L_key_freqs']})", f"{len(emb)}: {emb} (> 1/4 of the largest)",
            f"{s['n_clustered']} / {s['d_mlp']} ({100 * s['n_clustered'] / s['d_mlp']:.1f}%)", span("memorisation"),
            span("circuit formation"), span("cleanup"),
            f"train {fin['train_loss']:.3g}, test {fin['test_loss']:.3g} (step {s['last_step']})"]
    return ex.claims_table([(k, v, o) for (k, v), o in zip(PUBLISHED.items(), ours)],
                           ("measure", "Nanda et al. (40k epochs)", "ours")) + (
        f"\nmemorised at step {tr['memorised_step']}, grokked at {tr['grokked_step']} (evaluation grid), delay "
        f"{tr['delay']}, max acceleration {tr['max_acceleration_step']}; final restricted loss "
        f"{fin['restricted_loss']:.3g} (Nanda et al.'s definition: logits, all pairs; the TL demo's "
        f"definition -- neurons, test pairs -- gives {s['restricted_loss_tl_demo']:.3g}), excluded loss "
        f"{fin['excluded_loss']:.3g} (logits, train pairs); run {s['run']} ({s['n_checkpoints']} checkpoints, last "
        f"{s['last_step']} of {s['planned_steps']}), seeds {'/'.join(map(str, s['seeds']))}, {s['hardware']}\n")


def section(d: dict, figures: str = "nanda") -> str:
    """figures/README's nanda section, from figures/nanda/summary.json alone (the claims ledger
    regenerates it from the committed file); ``figures``: the PNGs' folder relative to the README."""
    s, train = d["summary"], d["config"]["train"]
    status = "" if s["last_step"] >= s["planned_steps"] else (
        f" **Unfinished run: last checkpoint {s['last_step']} of {s['planned_steps']} steps.**")
    return "\n".join([
        "## Nanda et al. (2023): progress measures, a+b mod 113", "",
        f"Made by `{d['command']}` from `{s['run']}` (preset `{s['preset']}`, {train['steps']} steps, task/model/train "
        f"seeds {'/'.join(map(str, s['seeds']))}, trained on {s['device']}, torch {s['torch']}). The published run "
        f"trained 40k epochs; phase boundaries are found by the rule in `mechgrok.progress.phases`, key frequencies "
        f"by Nanda's neuron rule on the final checkpoint.{status}", "", summary_table(s).rstrip(), "",
        "Figures (HTML next to each PNG):", "", *[f"- [{Path(p).stem}]({figures}/{p})" for p in s["figures"]]])

if __name__ == "__main__":
    main()
