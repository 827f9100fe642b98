"""Seed 001 (tutorial): its main run, with the transition-metrics table next to the seed's.

    python analyses/seed001_main_run.py                       # the published setting: 3000 steps
    python analyses/seed001_main_run.py --set steps=200       # a short look (another --out)

The ``tutorial2`` preset: a+b mod 97, 50% train (4704 pairs), 2 layers, d_model 128, 4 heads,
FF 512, no dropout; AdamW lr 1e-3, wd 1, betas (0.9, 0.999), batch 512 (10 minibatches an
epoch), 300 epochs = 3000 steps, evaluated every epoch (every 10 steps) on the full train and
test splits, torch seed 42. Seed 001 reports memorised (train acc > 0.99) at step 380, grokked
(test acc > 0.9) at 2260, a delay of 1880 steps (62.7% of training), final train / test
loss 0.1418 / 0.1710 and final accuracy 1.000 / 1.000.

What differs from seed 001's model (its own code is in the seed): its encoder layers were
post-LN ``nn.TransformerEncoderLayer`` with attention in both directions; ours (TransformerLens
blocks) are pre-LN with causal attention -- TransformerLens has no post-LN option, so we run
pre-LN. The readout (last position, a 97-way linear head), the data split sizes, the optimiser and
the evaluation grid are seed 001's; its split permutation (numpy seed 42) and init are not
reproducible here, so the numbers are one draw of the same setting.
The transition metrics are ``mechgrok.milestones.transition_metrics`` of the run's metrics.csv.
Resumable (re-run the command). Outputs (``--figures``): seed001_main_run.html/.png (loss and
accuracy), seed001_main_run.md (the table) and .json; the section between the
``seed001_main_run`` markers of ``--readme``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mechgrok as mg
from mechgrok import experiment as ex
from mechgrok.milestones import drops_after_grok, final_metrics, transition_metrics
from mechgrok.plots import save_figure, training_curve

# seed 001's transition metrics and final numbers (Out[9] and Out[18] of the tutorial)
PUBLISHED = {"memorised_step": 380, "grokked_step": 2260, "delay": 1880, "delay_fraction": 0.627,
             "final_train_loss": 0.1418, "final_test_loss": 0.1710, "final_train_acc": 1.000,
             "final_test_acc": 1.000}
DIFFERENCES = ("pre-LN blocks (seed 001: post-LN; TransformerLens has no post-LN option)",
               "causal attention (seed 001: attention in both directions)",
               "our own split permutation and init from seed 42 (seed 001: numpy/torch seed 42 in its own code)")
DROP_BELOW = 0.5  # a drop after grokking: test accuracy under this again


def ours(run: mg.Run) -> dict:
    """The quantities of ``PUBLISHED`` for ``run``, from its metrics.csv."""
    tr, fin = transition_metrics(run.metrics), final_metrics(run.metrics)
    total = run.config.train.steps
    return tr.to_dict() | {f"final_{k}": v for k, v in fin.items()} | {
        "delay_fraction": None if tr.delay is None else tr.delay / total,
        "drops_after_grok": drops_after_grok(run.metrics, DROP_BELOW)}


def train_wall_s(run: mg.Run) -> float:
    """Wall time of the training, over every invocation: first to last checkpoint file's mtime
    (a run records no clock of its own; this invocation's time is only loading once it is done)."""
    times = sorted(f.stat().st_mtime for f in (Path(run.path) / "checkpoints").glob("*.safetensors"))
    return round(times[-1] - times[0], 1) if times else 0.0


def fmt(v, kind: str) -> str:
    if v is None:
        return "-"
    return {"step": "{:.0f}", "frac": "{:.1%}", "loss": "{:.4f}", "acc": "{:.3f}"}[kind].format(v)


def table_rows(o: dict, steps: int) -> list[dict]:
    """The transition-metrics table: each quantity of seed 001's next to ours (``o``, see ``ours``)."""
    rows = [{"metric": label, "seed 001": fmt(PUBLISHED[k], kind), "ours": fmt(o[k], kind)} for label, k, kind in (
        ("memorised (first eval with train acc > 0.99), step", "memorised_step", "step"),
        ("grokked (first eval with test acc > 0.9), step", "grokked_step", "step"),
        ("delay (grokked - memorised), steps", "delay", "step"),
        (f"delay as a fraction of training ({steps} steps)", "delay_fraction", "frac"),
        ("final train loss", "final_train_loss", "loss"), ("final test loss", "final_test_loss", "loss"),
        ("final train accuracy", "final_train_acc", "acc"), ("final test accuracy", "final_test_acc", "acc"))]
    rows.append({"metric": "max acceleration of test acc, step", "seed 001": "- (not printed)",
                 "ours": fmt(o["max_acceleration_step"], "step")})
    drops = o["drops_after_grok"]
    rows.append({"metric": f"drops after grokking (test acc < {DROP_BELOW:g} again): steps, lowest test / train acc",
                 "seed 001": "- (not reported)",
                 "ours": "none" if not drops else f"{len(drops)}: " + ", ".join(
                     f"{d['start']}-{d['end']} ({d['min_test_acc']:.3f} / {d['min_train_acc']:.3f})" for d in drops)})
    return rows


def drop_note(o: dict, eval_every: int) -> str:
    """Whether the drops broke the fit too, and whether the max-acceleration step is one's recovery."""
    drops, peak = o["drops_after_grok"], o["max_acceleration_step"]
    in_drop = peak is not None and any(d["start"] <= peak <= d["end"] + eval_every for d in drops)
    both = sum(d["min_train_acc"] < DROP_BELOW for d in drops)
    return " ".join(([f"In {both} of the {len(drops)} drops train accuracy fell below {DROP_BELOW:g} too (the fit "
                      f"itself broke, then recovered)."] if drops else []) +
                    ([f"The max-acceleration step ({peak}) is a recovery from a drop, not the grokking transition."]
                     if in_drop else []))


def unfinished(o: dict, steps: int) -> str:
    return "" if o["last_step"] is not None and o["last_step"] >= steps else (
        f" **Unfinished: last evaluation at step {o['last_step']} of {steps}.**")


def section(d: dict) -> str:
    """figures/README's section, from this script's JSON report alone (the claims ledger
    regenerates it from the committed file)."""
    o, train = d["summary"], d["config"]["train"]
    return "\n".join([
        "### Seed 001's main run — `seed001_main_run.png`, `.md`", "",
        f"`{d['command']}`. Setting as seed 001 (tutorial2 preset, {train['steps']} steps, evaluated every "
        f"{train['eval_every']} steps); " + "; ".join(d["differences"]) + f". One run (seed {d['seeds'][0]})."
        + unfinished(o, train["steps"]), "", mg.plots.markdown_table(table_rows(o, train["steps"])).rstrip(), "",
        drop_note(o, train["eval_every"]),
        f"Training {d['train_wall_s'] / 60:.1f} min wall on {d['hardware']} (cores shared with other jobs)."])


def main():
    ap = ex.parser(__doc__, out="runs/seed001_main_run", overrides=True)
    ap.add_argument("--readme", default="figures/README.md", help="the README whose seed001_main_run section is "
                    "rewritten ('' to leave it)")
    args = ex.parse_args(ap)
    cfg = ex.apply_overrides(mg.get_preset("tutorial2"), args.set)
    t0 = time.time()
    run = ex.train_or_resume(cfg, args.out)
    o = ours(run)
    rows = table_rows(o, cfg.train.steps)
    stem = args.figures / "seed001_main_run"
    save_figure(training_curve(run.metrics, title=f"Seed 001's main run (tutorial2 preset, pre-LN): a+b mod 97, "
                               f"{cfg.train.steps} steps of batch 512",
                               marks={"memorised": o["memorised_step"], "grokked": o["grokked_step"]}), stem)
    c = run.config
    text = (f"Seed 001's main run: tutorial2 preset ({c.task.op} mod {c.task.p}, {c.task.frac:.0%} train, {c.model.n_layers} "
            f"layers, batch {c.train.batch_size}, AdamW lr {c.train.lr:g} wd {c.train.weight_decay:g}), {c.train.steps} steps "
            f"evaluated every {cfg.train.eval_every}; run `{run.path}`.{unfinished(o, cfg.train.steps)}\n\n"
            f"{mg.plots.markdown_table(rows)}\nDifferences from seed 001's model: " + "; ".join(DIFFERENCES) + ".")
    data = {"config": run.config.to_dict(), "published": PUBLISHED, "differences": list(DIFFERENCES),
            "rows": [{"seed": cfg.model.seed} | o], "summary": o, "table": rows, "run": str(run.path),
            "args": vars(args)}
    _, js = ex.write_report(stem, text, data | {"train_wall_s": train_wall_s(run)}, seeds=[cfg.model.seed], started=t0,
                            note=f"; training took {train_wall_s(run) / 60:.1f} min wall (first to last checkpoint)")
    if args.readme:
        ex.write_section(args.readme, "seed001_main_run", section(json.loads(js.read_text())))
    print(text)
    print(f"wrote {stem}.html/.png/.md/.json")


if __name__ == "__main__":
    main()
