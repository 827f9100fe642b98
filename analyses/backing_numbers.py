"""Files behind numbers that README and figures/README quoted without one: each part re-runs the
small job that made a number (or reads the committed data it came from) and writes what it
measured to ``figures/backing/<part>.json`` and ``.md``, which the claims ledger
(``analyses/claims_ledger.py``) and the generated tables read.

    python analyses/backing_numbers.py parity_solo_vs_ensemble   # parity seed 0: solo, in its sweep's ensemble, alone in one
    python analyses/backing_numbers.py parity_vmap               # the same sweep as one vmap ensemble (the CPU path of 2026-11-24)
    python analyses/backing_numbers.py key_frequency_ablation    # the transplant's seed-0 base run at step 1200
    python analyses/backing_numbers.py demo_ablation             # the `demo` run: its key frequencies at the embedding
    python analyses/backing_numbers.py plateau_transplant        # the freezing base run: Fourier neurons into step 900
    python analyses/backing_numbers.py limit_cycle_crashes       # crash steps of the wd 0.25 / 1 / 2 runs (their figure's data)
    python analyses/backing_numbers.py weight_decay_collapses    # seed 001's wd comparison: falls of test accuracy (figure's data)

Runs go under ``--out`` (default runs/backing; re-running reuses finished runs).
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

import mechgrok as mg
from mechgrok import experiment as ex
from mechgrok import interventions as iv
from mechgrok.ensemble import train_ensemble
from mechgrok.milestones import transition_metrics
from mechgrok.runs import is_run_dir

COLUMNS = ["train_loss", "test_loss", "train_acc", "test_acc", "weight_sq"]
RTOL = 1e-4  # ensemble.py's documented agreement of a member's loss curves with its solo run's


def milestones(run) -> dict:
    tr = transition_metrics(run.metrics)
    return {"memorised_step": tr.memorised_step, "grokked_step": tr.grokked_step,
            "final_test_acc": float(run.metrics["test_acc"].iloc[-1]), "last_step": tr.last_step}


def compare_metrics(a: pd.DataFrame, b: pd.DataFrame, rtol: float = RTOL) -> dict:
    """Two metrics tables over their common steps: identical or not, the first step whose losses
    differ by more than ``rtol`` (relative), and the largest relative difference per column."""
    a, b = a.set_index("step"), b.set_index("step")
    steps = a.index.intersection(b.index)
    a, b = a.loc[steps, COLUMNS], b.loc[steps, COLUMNS]
    rel = ((a - b).abs() / b.abs().clip(lower=1e-300)).fillna(0.0)
    over = (rel[["train_loss", "test_loss"]].max(axis=1) > rtol).to_numpy()
    first = int(steps[over][0]) if over.any() else None
    return {"identical": bool((a.to_numpy() == b.to_numpy()).all()), "first_step_over_rtol": first, "rtol": rtol,
            "max_rel_diff": {c: float(rel[c].max()) for c in COLUMNS},
            "train_loss_rel_diff": {int(s): float(rel.loc[s, "train_loss"]) for s in steps[:: max(1, len(steps) // 12)]}}


def _train(cfg, out: Path):
    return ex.train_or_resume(cfg, out)


# --- parity: one seed, solo and as an ensemble member -------------------------------------------


def parity_members():
    """The members of figures/parity_two_basins' sweep (``--set frac=0.1 --steps 3000``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("parity_two_basins", Path(__file__).with_name("parity_two_basins.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sweep = mg.SweepConfig(mg.configure("demo", **script.SMALL), grid={"weight_decay": (1.0, 0.0)}, seeds=(0, 1),
                           fixed={"device": "cpu", "steps": 3000, "frac": 0.1})
    return sweep.members()


def parity_solo_vs_ensemble(out: Path) -> tuple[str, dict]:
    """Member wd 1 / seed 0 of the parity sweep three ways: in its sweep's ensemble (4 members,
    as figures/parity_two_basins trained it), alone in an ensemble of one, and solo
    (``mg.train``); and the parity preset's seed 0 solo (the preset's former note: "groks at 600")."""
    members = parity_members()
    cfgs = [m.config for m in members]
    target = next(i for i, m in enumerate(members) if m.settings["weight_decay"] == 1.0 and m.seed == 0)
    outs = [out / "parity_ensemble" / m.id for m in members]
    if not all(is_run_dir(o) for o in outs):
        train_ensemble(cfgs, outs, progress=False)
    if not is_run_dir(out / "parity_ensemble_of_one"):
        train_ensemble([cfgs[target]], [out / "parity_ensemble_of_one"], progress=False)
    arms = {"ensemble of the sweep (4 members)": mg.load_run(outs[target]),
            "ensemble of one": mg.load_run(out / "parity_ensemble_of_one"),
            "solo (mg.train), the member's config": _train(cfgs[target], out / "parity_solo"),
            "solo, the parity preset (seed 0)": _train(mg.configure("parity", seed=0, device="cpu"),
                                                       out / "parity_preset_solo")}
    solo = arms["solo (mg.train), the member's config"].metrics
    rows = {name: milestones(r) | {"vs solo": compare_metrics(r.metrics, solo)} for name, r in arms.items()}
    differ = {k: v for k, v in cfgs[target].to_dict()["train"].items()
              if mg.configure("parity", seed=0, device="cpu").to_dict()["train"].get(k) != v}
    data = {"member": members[target].id, "rows": rows,
            "member_vs_preset_train_fields": differ,
            "member_config": cfgs[target].to_dict()}
    lines = ["| arm | memorised | grokked | final test acc | vs solo: identical / first step over rtol 1e-4 |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        v = r["vs solo"]
        lines.append(f"| {name} | {r['memorised_step']} | {r['grokked_step']} | {r['final_test_acc']:.4f} | "
                     f"{v['identical']} / {v['first_step_over_rtol']} |")
    return "Parity seed 0 (wd 1), solo and as an ensemble member\n\n" + "\n".join(lines), data


def parity_vmap(out: Path) -> tuple[str, dict]:
    """The parity sweep's 4 members as one ensemble with vmap-ed gradients, the path every CPU
    ensemble took when figures/parity_two_basins was made (2026-11-24 00:08, before ensembles
    computed CPU gradients member by member), against the same member solo."""
    members = parity_members()
    outs = [out / "parity_ensemble_vmap" / m.id for m in members]
    if not all(is_run_dir(o) for o in outs):
        train_ensemble([m.config for m in members], outs, progress=False, vectorize=True)
    target = next(i for i, m in enumerate(members) if m.settings["weight_decay"] == 1.0 and m.seed == 0)
    run, solo = mg.load_run(outs[target]), _train(members[target].config, out / "parity_solo")
    rows = {m.id: milestones(mg.load_run(o)) for m, o in zip(members, outs)}
    a, b = run.metrics.set_index("step"), solo.metrics.set_index("step")
    early = ((a["train_loss"] - b["train_loss"]).abs() / b["train_loss"]).loc[:140]  # how the difference starts
    data = {"member": members[target].id, "rows": rows, "vs solo": compare_metrics(run.metrics, solo.metrics),
            "solo": milestones(solo), "train_loss_rel_diff_first_steps": {int(k): float(v) for k, v in early.items()}}
    md = (f"Parity sweep members as one vmap ensemble: member {members[target].id} memorised "
          f"{rows[members[target].id]['memorised_step']}, grokked {rows[members[target].id]['grokked_step']} "
          f"(solo: {data['solo']['grokked_step']}); first step over rtol 1e-4 vs solo: {data['vs solo']['first_step_over_rtol']}")
    return md, data


# --- key-frequency ablation ---------------------------------------------------------------------


def _ablation(run, step: int, where: str) -> dict:
    """``mechgrok ablate``'s numbers: baseline, key frequencies removed, kept, each one removed alone."""
    res = [iv.ablate_frequencies(run, run.task, None, mode=m, where=where, step=step) for m in ("remove", "keep")]
    sweep = iv.frequency_sweep(run, run.task, where=where, key_freqs=list(res[0].freqs), step=step, progress=False)
    return {"where": where, "step": step, "freqs": [int(f) for f in res[0].freqs], "baseline": res[0].before,
            "remove": res[0].after, "keep": res[1].after,
            "each_removed_alone": [{"freq": int(r.freq), "is_key": bool(r.is_key), "test_loss": float(r.test_loss),
                                    "test_acc": float(r.test_acc)} for r in sweep.itertuples()]}


def _ablation_md(title: str, rows: list[dict]) -> str:
    lines = [title, "", "| where | key freqs | baseline test loss | removed: test loss / acc | kept only: test loss / acc |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['where']} | {r['freqs']} | {r['baseline']['test_loss']:.3g} | {r['remove']['test_loss']:.3g} / "
                     f"{r['remove']['test_acc']:.3f} | {r['keep']['test_loss']:.3g} / {r['keep']['test_acc']:.3f} |")
    return "\n".join(lines)


def transplant_base_config(seed: int = 0) -> mg.RunConfig:
    """fourier_transplant.py's small-setting base run (a+b mod 23, 70% train, 1200 steps)."""
    return mg.RunConfig(task=mg.TaskConfig(op="add", p=23, frac=0.7, seed=seed),
                        model=mg.ModelConfig(n_layers=1, d_model=64, n_heads=4, d_head=16, d_mlp=256, seed=seed),
                        train=mg.TrainConfig(steps=1200, lr=3e-3, weight_decay=2.0, warmup_steps=10, eval_every=10,
                                             checkpoint_every=50, seed=seed, device="cpu"))


def key_frequency_ablation(out: Path) -> tuple[str, dict]:
    run = _train(transplant_base_config(0), out / "transplant_seed0_base")
    rows = [_ablation(run, 1200, w) for w in ("neurons", "embed")]
    return _ablation_md("Key-frequency ablation, transplant seed 0 base run, step 1200", rows), {"rows": rows}


def demo_ablation(out: Path) -> tuple[str, dict]:
    run = _train(mg.configure("demo", device="cpu"), out / "demo")
    rows = [_ablation(run, run.steps[-1], "embed")]
    data = {"rows": rows, "transitions": milestones(run)}
    return _ablation_md(f"Key-frequency ablation, the demo run, step {run.steps[-1]}", rows), data


# --- a transplant into a real plateau -------------------------------------------------------------


def freezing_base_config() -> mg.RunConfig:
    """freezing_phases.py's small-scale base run (a/b mod 47, d_model 64, lr 1e-3, wd 1, 2000 steps)."""
    return mg.configure("division4", p=47, d_model=64, d_head=16, d_mlp=256, steps=2000, lr=1e-3, weight_decay=1.0,
                        eval_every=50, checkpoint_every=100, device="cpu")


def plateau_transplant(out: Path) -> tuple[str, dict]:
    base = _train(freezing_base_config(), out / "freezing_base")
    res = iv.transplant_experiment(base, 2000, base, 900, 1000, layer=0, out_dir=out / "plateau_transplant")
    nf = mg.fourier.neuron_frequencies(base.params(2000), base.task, cfg=base.model_cfg, layer=0)
    at = base.metrics.set_index("step")
    data = {"base": milestones(base), "recipient_step": 900, "donor_step": 2000, "layer": 0,
            "recipient_test_acc": float(at.loc[900, "test_acc"]), "recipient_train_acc": float(at.loc[900, "train_acc"]),
            "n_neurons": res["n_neurons"], "donor_clusters": {int(k): int(v) for k, v in nf.cluster_sizes().items() if k > 0},
            "after_transplant": res["after_transplant"],
            "transplant": res["transplant"], "control": res["control"]}
    md = (f"Transplant into the freezing base run's plateau (step 900, layer 0): {data['n_neurons']} neurons; "
          f"grokking step transplant {res['transplant']['grokking_step']}, control {res['control']['grokking_step']}, "
          f"base run {data['base']['grokked_step']}")
    return md, data


# --- the limit cycle's crashes, from the data its figure was drawn from ---------------------------


def _decode(v):
    """A plotly trace array: a list, or {"dtype", "bdata"} (base64 of little-endian values)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]).newbyteorder("<")).tolist()
    return list(v)


def figure_traces(html: Path) -> list[dict]:
    """The traces of a plotly HTML figure written by ``plots.save_figure`` (name, x, y, axis)."""
    text = html.read_text()
    start = text.index("Plotly.newPlot(")
    arr = text.index("[", start)
    traces, _ = json.JSONDecoder().raw_decode(text[arr:])
    return [{"name": t.get("name"), "x": _decode(t["x"]), "y": _decode(t["y"]), "yaxis": t.get("yaxis", "y"),
             "xaxis": t.get("xaxis", "x")} for t in traces if "x" in t and "y" in t]


def drops(steps, acc, fall: float) -> list[dict]:
    """Every fall of ``acc`` by more than ``fall`` from the evaluation before: its step, and the
    step and value of the minimum it falls to (while it keeps falling)."""
    out, i = [], 1
    while i < len(acc):
        if acc[i] < acc[i - 1] - fall:
            j = i
            while j + 1 < len(acc) and acc[j + 1] < acc[j]:
                j += 1
            out.append({"step": int(steps[i]), "min_step": int(steps[j]), "min_test_acc": float(acc[j])})
            i = j + 1
        else:
            i += 1
    return out


def weight_decay_collapses(out: Path, html: Path = Path("figures/weight_decay_comparison.html"),
                           fall: float = 0.1) -> tuple[str, dict]:
    """figures/weight_decay_comparison's curves (x: epochs), read from its figure's data (the
    sweep directory is not kept): per weight decay, the grokking epoch (test acc > 0.9) and every
    fall of test accuracy by more than ``fall``, before or after grokking, with train accuracy there."""
    traces = figure_traces(html)
    train = {t["name"]: t for t in traces if t["yaxis"] == "y2"}
    rows = []
    for t in (t for t in traces if t["yaxis"] in ("y", None)):
        epochs, acc = np.array(t["x"]), np.array(t["y"])
        tr = dict(zip(train[t["name"]]["x"], train[t["name"]]["y"])) if t["name"] in train else {}
        grok = next((int(e) for e, a in zip(epochs, acc) if a > mg.milestones.GROKKED_TEST_ACC), None)
        falls = [c | {"train_acc_at_min": tr.get(c["min_step"]), "after_grokking": grok is not None and c["step"] > grok,
                      "epoch": c.pop("step"), "min_epoch": c.pop("min_step")} for c in drops(epochs, acc, fall)]
        rows.append({"run": t["name"], "grokked_epoch": grok, "falls": falls})
    lines = ["| run | grokked (epoch) | test-accuracy falls (epoch: min test / train acc; * after grokking) |",
             "|---|---|---|"]
    lines += [f"| {r['run']} | {r['grokked_epoch']} | " + (", ".join(
        f"{c['epoch']}{'*' if c['after_grokking'] else ''}: {c['min_test_acc']:.3f} / {c['train_acc_at_min']:.3f}"
        for c in r["falls"]) or "none") + " |" for r in rows]
    return f"Falls of test accuracy, read from {html}\n\n" + "\n".join(lines), {"source": str(html), "fall": fall,
                                                                                  "rows": rows}


def limit_cycle_crashes(out: Path, html: Path = Path("figures/dynamics/preset/limit_cycle.html"),
                        report: Path = Path("figures/dynamics/preset/optimizer_dynamics.json"),
                        below: float = 0.5, fall: float = 0.1) -> tuple[str, dict]:
    """Per weight decay: every step after grokking where test accuracy falls (by more than
    ``fall`` from the evaluation before) and the minimum it falls to, read from the data the
    limit-cycle figure was drawn from (the runs are not kept). The figure's x is steps since
    grokking; the grokking steps are the report's (``optimizer_dynamics.json``). A crash below
    ``below`` is what ``cycles.limit_cycle`` counts as a collapse."""
    grokked = {f"wd {r['weight_decay']:g}": r["grokked_step"] for r in json.loads(report.read_text())["limit_cycle"]}
    rows = []
    for t in figure_traces(html):
        if t["yaxis"] not in ("y", None) or t["name"] not in grokked:
            continue  # the first panel is test accuracy; the second the weight norm
        g = grokked[t["name"]]
        steps, acc = np.array(t["x"]) + g, np.array(t["y"])
        crashes = drops(steps, acc, fall)
        rows.append({"run": t["name"], "grokked_step": g, "last_step": int(steps[-1]), "crashes": crashes,
                     "collapses_below": sum(c["min_test_acc"] < below for c in crashes)})
    lines = ["| run | grokked | crashes after grokking (step: min test acc) |", "|---|---|---|"]
    lines += [f"| {r['run']} | {r['grokked_step']} | " + (", ".join(f"{c['step']}: {c['min_test_acc']:.2f}"
                                                                    for c in r["crashes"]) or "none") + " |" for r in rows]
    return f"Test-accuracy crashes after grokking, read from {html}\n\n" + "\n".join(lines), {
        "source": str(html), "grokked_from": str(report), "fall": fall, "below": below, "rows": rows}


PARTS = {f.__name__: f for f in (parity_solo_vs_ensemble, parity_vmap, key_frequency_ablation, demo_ablation, plateau_transplant,
                                 limit_cycle_crashes, weight_decay_collapses)}


def main():
    ap = ex.parser(__doc__, out="runs/backing")
    ap.add_argument("parts", nargs="+", choices=[*PARTS, "all"])
    args = ex.parse_args(ap)
    for name in (PARTS if "all" in args.parts else args.parts):
        t0 = time.time()
        md, data = PARTS[name](args.out)
        ex.write_report(args.figures / "backing" / name, md, data, started=t0)
        print(md, flush=True)


if __name__ == "__main__":
    main()
