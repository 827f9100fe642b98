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

from pathlib import Path

import mechgrok as mg
from mechgrok import experiment as ex
from mechgrok.files import write_text
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
BEGIN, END = "<!-- nanda:begin -->", "<!-- nanda:end -->"


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
    span = lambda name: "-" if b[name] is None else f"{fmt_k(b[name][0])} - {fmt_k(b[name][1])}"  # noqa: E731
    ours = [f"{len(keys)}: {keys} (W_L rule: {wl_keys})", f"{len(emb_keys)}: {emb_keys} (> 1/4 of the largest)",
            f"{n_clustered} / {d_mlp} ({100 * n_clustered / d_mlp:.1f}%)", span("memorisation"),
            span("circuit formation"), span("cleanup"),
            f"train {final['train_loss']:.3g}, test {final['test_loss']:.3g} (step {last})"]
    md = ex.claims_table([(k, v, o) for (k, v), o in zip(PUBLISHED.items(), ours)],
                         ("measure", "Nanda et al. (40k epochs)", "ours")) + (
        f"\nmemorised at step {tr.memorised_step}, grokked at {tr.grokked_step} (evaluation grid), delay "
        f"{tr.delay}, max acceleration {tr.max_acceleration_step}; final restricted loss "
        f"{final['restricted_loss']:.3g} (Nanda et al.'s definition: logits, all pairs; the TL demo's "
        f"definition -- neurons, test pairs -- gives {tl_demo:.3g}), excluded loss {final['excluded_loss']:.3g} "
        f"(logits, train pairs); run {run_dir} ({len(table)} checkpoints, last {last} of {planned}), seeds "
        f"{run.config.task.seed}/{run.config.model.seed}/{run.config.train.seed}, {hardware()}\n")
    write_text(Path(args.figures) / "summary.md", md)
    pngs = [f for f in written if f.suffix == ".png"]
    print(md + "\nfigures:\n" + "".join(f"  {f}\n" for f in pngs), end="")
    if args.readme:
        readme = Path(args.readme).resolve()
        status = "" if last >= planned else f" **Unfinished run: last checkpoint {last} of {planned} steps.**"
        c = run.config
        ex.replace_section(readme, BEGIN, END, "\n".join([
            BEGIN, "## Nanda et al. (2023): progress measures, a+b mod 113", "",
            f"Made by `{args.command or ex.command_line()}` from `{run.path}` (preset `{c.preset}`, {c.train.steps} "
            f"steps, task/model/train seeds {c.task.seed}/{c.model.seed}/{c.train.seed}, trained on "
            f"{run.meta.get('device', '?')}, torch {run.meta.get('versions', {}).get('torch', '?')}). The published run "
            f"trained 40k epochs; phase boundaries are found by the rule in `mechgrok.progress.phases`, key frequencies "
            f"by Nanda's neuron rule on the final checkpoint.{status}", "", md.rstrip(), "",
            "Figures (HTML next to each PNG):", "",
            *[f"- [{p.stem}]({p.relative_to(readme.parent).as_posix() if p.is_relative_to(readme.parent) else p})"
              for p in (q.resolve() for q in pngs)], END]))
        print(f"updated {readme}")


if __name__ == "__main__":
    main()
