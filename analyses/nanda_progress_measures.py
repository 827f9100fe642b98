"""Nanda et al. (2023), "Progress measures for grokking via mechanistic interpretability":
our numbers for the nanda preset next to the published ones.

    python analyses/nanda_progress_measures.py                       # runs/nanda -> figures/nanda/
    python analyses/nanda_progress_measures.py --run runs/nanda --steps 16000

Trains ``runs/nanda`` with the nanda preset (seed 0) if it does not exist (``--steps``
overrides the preset's 40k), measures every checkpoint (``mg.report.analysis``: key
frequencies from the final checkpoint, restricted/excluded loss by Nanda et al.'s definition
(the logits over all pairs), Gini, weight norm, phases), adds the final restricted loss by the
TransformerLens demo's definition (neurons, test pairs) for comparison, writes the figures and
tables into ``figures/nanda/`` and prints a markdown table of ours against the published
numbers (also written to ``figures/nanda/summary.md``).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import mechgrok as mg
from mechgrok.experiment import parse_args, parser
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


def fmt_k(step) -> str:
    return "-" if step is None else (f"{step / 1000:g}k" if step >= 1000 else str(step))


def main():
    ap = parser(__doc__.splitlines()[0], out=None, figures="figures/nanda", threads=2)
    ap.add_argument("--run", default="runs/nanda")
    ap.add_argument("--steps", type=int, default=None, help="training steps if the run must be trained")
    ap.add_argument("--readme", default="figures/README.md",
                    help="file whose nanda section (between the markers) gets the table; '' to skip")
    ap.add_argument("--command", default=None, help="the command line to quote in the README (default: this one)")
    args = parse_args(ap)

    run_dir = Path(args.run)
    if not mg.is_run_dir(run_dir):
        cfg = mg.get_preset("nanda")
        if args.steps:
            cfg = replace(cfg, train=replace(cfg.train, steps=args.steps))
        print(f"training {run_dir} ({cfg.train.steps} steps, preset nanda) ...")
        mg.train(cfg, run_dir)
    run = mg.load_run(run_dir)
    planned, last = run.config.train.steps, run.steps[-1]
    if last < planned:
        print(f"WARNING: {run_dir} is not finished (last checkpoint {last} of {planned} steps)")

    res, written = mg.report.analysis(run, out_dir=args.figures)
    table, ph = res.table, res.phases
    tr = ph.transitions
    task, params = run.task, run.params(last)
    keys = table.attrs["key_freqs"]
    nf = mg.fourier.neuron_frequencies(params, task, cfg=run.model_cfg)
    n_clustered, d_mlp = int(nf.clustered.sum()), len(nf.share)
    emb_keys = mg.fourier.key_frequencies(params, task, rule="embedding", cfg=run.model_cfg)
    wl_keys = mg.fourier.key_frequencies(params, task, rule="W_L", cfg=run.model_cfg)
    final = table.iloc[-1]
    b = ph.intervals()
    tl_demo = mg.progress.restricted_loss(run, task, keys, level="neurons")

    def span(name):
        return "-" if b[name] is None else f"{fmt_k(b[name][0])} - {fmt_k(b[name][1])}"

    ours = {
        "key frequencies": f"{len(keys)}: {keys} (W_L rule: {wl_keys})",
        "W_E frequencies with non-negligible norm": f"{len(emb_keys)}: {emb_keys} (> 1/4 of the largest)",
        "neurons with > 85% of variance in one frequency": f"{n_clustered} / {d_mlp} ({100 * n_clustered / d_mlp:.1f}%)",
        "memorisation phase": span("memorisation"),
        "circuit formation phase": span("circuit formation"),
        "cleanup phase": span("cleanup"),
        "final loss": f"train {final['train_loss']:.3g}, test {final['test_loss']:.3g} (step {last})",
    }
    lines = ["| measure | Nanda et al. (40k epochs) | ours |", "|---|---|---|"]
    lines += [f"| {k} | {PUBLISHED[k]} | {ours[k]} |" for k in PUBLISHED]
    extra = (f"\nmemorised at step {tr.memorised_step}, grokked at {tr.grokked_step} (evaluation grid), delay "
             f"{tr.delay}, max acceleration {tr.max_acceleration_step}; final restricted loss "
             f"{final['restricted_loss']:.3g} (Nanda et al.'s definition: logits, all pairs; the TL demo's "
             f"definition -- neurons, test pairs -- gives {tl_demo:.3g}), excluded loss {final['excluded_loss']:.3g} "
             f"(logits, train pairs); run {run_dir} ({len(table)} checkpoints, last {last} of {planned}), seeds "
             f"{run.config.task.seed}/{run.config.model.seed}/{run.config.train.seed}, {hardware()}")
    md = "\n".join(lines) + "\n" + extra + "\n"
    write_text(Path(args.figures) / "summary.md", md)
    print(md)
    pngs = [f for f in written if f.suffix == ".png"]
    print("figures:")
    for f in pngs:
        print(f"  {f}")
    if args.readme:
        command = args.command or "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
        update_readme(Path(args.readme), md, pngs, command, run, last, planned)


BEGIN, END = "<!-- nanda:begin -->", "<!-- nanda:end -->"


def update_readme(readme: Path, md: str, pngs: list[Path], command: str, run, last: int, planned: int):
    """Replace the nanda section of ``readme`` (between the markers) with this run's table."""
    readme = readme.resolve()
    status = "" if last >= planned else f" **Unfinished run: last checkpoint {last} of {planned} steps.**"
    section = "\n".join([
        BEGIN,
        "## Nanda et al. (2023): progress measures, a+b mod 113",
        "",
        f"Made by `{command}` from `{run.path}` (preset `{run.config.preset}`, "
        f"{run.config.train.steps} steps, task/model/train seeds {run.config.task.seed}/{run.config.model.seed}/"
        f"{run.config.train.seed}, trained on {run.meta.get('device', '?')}, torch "
        f"{run.meta.get('versions', {}).get('torch', '?')}). The published run trained 40k epochs; "
        f"phase boundaries are found by the rule in `mechgrok.progress.phases`, key frequencies by "
        f"Nanda's neuron rule on the final checkpoint.{status}",
        "",
        md.rstrip(),
        "",
        "Figures (HTML next to each PNG):",
        "",
        *[f"- [{p.stem}]({p.relative_to(readme.parent).as_posix() if p.is_relative_to(readme.parent) else p})"
          for p in (q.resolve() for q in pngs)],
        END,
    ])
    text = readme.read_text() if readme.exists() else "# Figures\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    write_text(readme, text)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
