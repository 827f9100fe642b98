"""Cost of the optimizer-dynamics probes relative to one training step, same config.

    python bench/dynamics.py [--preset dynamics] [--repeats 5] [--threads 1] [--every 10]

Prints, per measure, milliseconds and the ratio to one full-batch AdamW training step
(``trainer.loss_fn`` + backward + AdamW step) on the same weights, then the slowdown of
training with a probe every ``--every`` steps, predicted from those timings
((every * step + probe) / (every * step)) and measured end to end (``mg.train`` with and
without ``probe=``, same steps). Timings alternate between the variants and the median is
reported, so background load slows all alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import mechgrok as mg
from mechgrok import dynamics as dy
from mechgrok.optim import make_optimizer
from mechgrok.schedule import trainable_names
from mechgrok.trainer import loss_fn
from mechgrok.trainer import train as train_run


def config(name: str) -> mg.RunConfig:
    if name not in mg.PRESETS:
        raise SystemExit(f"unknown preset {name!r}")
    return mg.get_preset(name)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="dynamics")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--iters", type=int, default=2, help="power iterations per probe (warm-started)")
    ap.add_argument("--rank-n", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=40, help="steps of the end-to-end comparison (0: skip)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = replace(config(args.preset), preset=None)
    cfg = replace(cfg, train=replace(cfg.train, device="cpu"))
    task = mg.Task(cfg.task)
    mcfg = cfg.model.resolve(task)
    params = mg.init_params(mcfg)
    names = trainable_names(params, cfg.train.frozen)
    x, y = task.train_inputs, task.train_labels
    print(f"{args.preset}: {task.describe()}, {len(y)} train examples, {mg.model.n_params(mcfg)} parameters, "
          f"torch threads {torch.get_num_threads()}")

    live = {k: v.contiguous().clone().requires_grad_(k in names) for k, v in params.items()}  # contiguous, as the trainer
    opt = make_optimizer(live, names, cfg.train)

    def step():
        loss = loss_fn(live, mcfg, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # AdamW state exists from here on
    exp_avg = {k: opt.state[live[k]]["exp_avg"] for k in names}
    loss = dy.model_loss(mcfg)
    hvp = dy.hvp_fn(lambda p: loss({**{k: v for k, v in params.items() if k not in names}, **p}, x, y),
                    {k: params[k] for k in names})
    v = dy._random_like({k: params[k] for k in names}, 0)
    # Probes run on the live weights after a (untimed) training step, as in training: the warm
    # start then has to follow a moving eigenvector, which is what a probe really costs.
    probes = {
        f"hessian ({args.iters} warm iterations)": dy.make_probe(cfg, task, measures=("hessian",),
                                                                 hessian_iters=args.iters),
        "agreement + momentum": dy.make_probe(cfg, task, measures=("agreement", "momentum")),
        f"effective rank (n={args.rank_n})": dy.make_probe(cfg, task, measures=("rank",), rank_n=args.rank_n),
        "full probe (all four)": dy.make_probe(cfg, task, measures=dy.MEASURES, hessian_iters=args.iters,
                                               rank_n=args.rank_n),
    }
    for probe in probes.values():
        probe(0, live, exp_avg)  # the cold first call (up to 20 iterations) happens once per run
    times: dict[str, list[float]] = {"training step": [], "Hessian-vector product": [], **{k: [] for k in probes}}
    iters_used = []
    for _ in range(args.repeats):  # alternate, so background load hits every variant alike
        times["training step"] += timed(step, 1)
        times["Hessian-vector product"] += timed(lambda: hvp(v), 1)
        for name, probe in probes.items():
            step()
            t = time.perf_counter()
            row = probe(1, live, exp_avg)
            times[name].append(time.perf_counter() - t)
            if "hessian_iters" in row and name.startswith("full"):
                iters_used.append(row["hessian_iters"])
    med = {k: statistics.median(t) for k, t in times.items()}
    base = med["training step"]
    print(f"\n{'measure':34s} {'ms':>9s} {'x step':>8s}")
    for name, t in med.items():
        print(f"{name:34s} {1000 * t:9.1f} {t / base:8.2f}")
    probe = med["full probe (all four)"]
    print(f"power iterations used by the warm full probe: {iters_used}")
    print(f"\npredicted slowdown with a full probe every {args.every} steps: "
          f"{(args.every * base + probe) / (args.every * base):.2f}x")

    if args.train_steps:
        short = replace(cfg, train=replace(cfg.train, steps=args.train_steps, eval_every=10,
                                           checkpoint_every=args.train_steps))
        wall = {"plain": [], "probed": []}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(2):
                for kind in ("plain", "probed"):
                    kw = {} if kind == "plain" else dict(
                        probe=dy.make_probe(short, task, measures=dy.MEASURES, hessian_iters=args.iters,
                                            rank_n=args.rank_n), probe_every=args.every)
                    t = time.perf_counter()
                    train_run(short, Path(tmp) / f"{kind}{r}", progress=False, init=params, **kw)
                    wall[kind].append(time.perf_counter() - t)
        a, b = statistics.median(wall["plain"]), statistics.median(wall["probed"])
        print(f"measured end to end, {args.train_steps} steps (evaluation every 10, one cold first probe): "
              f"plain {a:.1f} s, probed every {args.every} {b:.1f} s -> {b / a:.2f}x")


if __name__ == "__main__":
    main()
