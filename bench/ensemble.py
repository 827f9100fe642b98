"""Members per second: an ensemble of N runs in one process vs the same N runs trained solo one
after another, measured in one run, with each member's step against its matmul floor. The
ensemble is timed both ways it computes gradients: member by member (its CPU default) and
vectorised with vmap (its GPU default).

    python bench/ensemble.py                         # demo config, N = 1, 8; nanda config, N = 8
    python bench/ensemble.py --n 1,8,32 --steps 100  # more members
    python bench/ensemble.py --n '' --nanda-n '' --division4-n 22 --steps 100 --threads 1
                                                     # seed 000's freezing study: 22 runs at batch 64

Both sides train the same configs (seeds 0..N-1, everything else the preset's) for ``--steps``
steps with the preset's evaluation and checkpoint schedule shortened to the run, writing real
run directories (evaluation and checkpoints are part of what a sweep pays). The floor is one
member's step's own matrix products alone (``train_step.matmul_shapes``: each block's
projections, W_O, W_in, W_out and W_U, forward and both backward products) with the same shapes,
timed in the same process. Times are wall clock and CPU (process) seconds; on a shared machine
with 1 thread the CPU seconds are the work done. The last line reads ``N=8 speed-up: <ratio>x``
(per-member speed of the demo ensemble of 8 over its solo runs).

``--division4-n``: the seed-000 setting (the ``division4`` preset: 4 layers, pre-LN, GELU, batch
64), whose freezing study trains 22 continuations. Its runs keep the preset's evaluation every
100 steps (at batch 64 an evaluation of all 9409 pairs costs many steps, so the preset's ratio
of steps to evaluations is part of what the comparison measures) and checkpoint at the end.
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
from mechgrok.ensemble import train_ensemble
from train_step import floor_fn, matmul_shapes  # bench/ is on the path when run as a script


def configs(preset: str, n: int, steps: int) -> list[mg.RunConfig]:
    base = mg.get_preset(preset)
    # full-batch presets: evaluate 10 times per run; minibatch ones keep the preset's interval
    every = max(1, steps // 10) if base.train.batch_size is None else min(steps, base.train.eval_every)
    base = replace(base, train=replace(base.train, steps=steps, eval_every=every, checkpoint_every=steps,
                                       device="cpu"))
    return [replace(base, task=replace(base.task, seed=s), model=replace(base.model, seed=s),
                    train=replace(base.train, seed=s)) for s in range(n)]


def floor_ms(cfg: mg.RunConfig, repeats: int = 20) -> float:
    """One member's step's matmuls alone (median ms), as bench/train_step.py defines them."""
    task = mg.Task(cfg.task)
    mcfg = cfg.model.resolve(task)
    batch = len(task.train_idx) if cfg.train.batch_size is None else min(cfg.train.batch_size, len(task.train_idx))
    once = floor_fn(matmul_shapes(mcfg, batch, position0_table=False), torch.device("cpu"))
    once()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def measure(preset: str, n: int, steps: int, root: Path, vmap: bool = True, ensemble_first: bool = False) -> dict:
    cfgs = configs(preset, n, steps)
    # wall and CPU seconds (process time): on a shared machine with 1 thread the CPU seconds are
    # the work done, whatever share of a core the process got
    clock = {}

    def timed(key, fn):
        t, c = time.perf_counter(), time.process_time()
        fn()
        clock[key], clock[key + "_cpu"] = time.perf_counter() - t, time.process_time() - c

    sides = {"solo": lambda: [mg.train(c, root / f"{preset}_solo{n}_{i}", progress=False) for i, c in enumerate(cfgs)],
             "ens": lambda: train_ensemble(cfgs, [root / f"{preset}_ens{n}_{i}" for i in range(n)], progress=False,
                                           vectorize=False)}
    for key in (("ens", "solo") if ensemble_first else ("solo", "ens")):
        timed(key, sides[key])
    clock["vm"] = clock["vm_cpu"] = float("nan")
    if vmap:
        timed("vm", lambda: train_ensemble(cfgs, [root / f"{preset}_vmap{n}_{i}" for i in range(n)], progress=False,
                                           vectorize=True))
    per = 1e3 / (n * steps)
    return {"preset": preset, "n": n, "solo_s": clock["solo"], "ensemble_s": clock["ens"], "vmap_s": clock["vm"],
            "solo_ms_per_member_step": per * clock["solo"], "ens_ms_per_member_step": per * clock["ens"],
            "vmap_ms_per_member_step": per * clock["vm"], "speedup": clock["solo"] / clock["ens"],
            "vmap_speedup": clock["solo"] / clock["vm"], "cpu_speedup": clock["solo_cpu"] / clock["ens_cpu"],
            "cpu_vmap_speedup": clock["solo_cpu"] / clock["vm_cpu"],
            "solo_cpu_ms_per_member_step": per * clock["solo_cpu"], "ens_cpu_ms_per_member_step": per * clock["ens_cpu"],
            "floor_ms": floor_ms(cfgs[0])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="1,8", help="ensemble sizes for the demo config")
    ap.add_argument("--nanda-n", default="8", help="ensemble sizes for the nanda config ('' to skip)")
    ap.add_argument("--division4-n", default="", help="ensemble sizes for the division4 (seed 000) config")
    ap.add_argument("--no-vmap", action="store_true", help="skip the vmap timing")
    ap.add_argument("--ensemble-first", action="store_true", help="time the ensemble before the solo runs")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = [("demo", int(n)) for n in args.n.split(",") if n]
    plan += [("nanda", int(n)) for n in args.nanda_n.split(",") if n]
    plan += [("division4", int(n)) for n in args.division4_n.split(",") if n]
    print(f"{torch.get_num_threads()} threads, {args.steps} steps per member, "
          f"torch {torch.__version__}, {mg.provenance.provenance()['machine']}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in dict.fromkeys(p for p, _ in plan):  # first-call costs (TL boot, torch.func) out of the timings
            warm = configs(preset, 2, 2)
            mg.train(warm[0], Path(tmp) / f"warm_{preset}", progress=False)
            for vectorize in (False,) if args.no_vmap else (False, True):
                train_ensemble(warm, [Path(tmp) / f"warm_{preset}_{vectorize}_{i}" for i in range(2)], progress=False,
                               vectorize=vectorize)
        for preset, n in plan:
            r = measure(preset, n, args.steps, Path(tmp), vmap=not args.no_vmap, ensemble_first=args.ensemble_first)
            rows.append(r)
            f = r["floor_ms"]
            print(f"{preset:6s} N={n:3d} ms per member-step: solo {r['solo_ms_per_member_step']:6.1f}, "
                  f"ensemble {r['ens_ms_per_member_step']:6.1f} (x{r['speedup']:.2f} members/s), "
                  f"ensemble with vmap {r['vmap_ms_per_member_step']:6.1f} (x{r['vmap_speedup']:.2f}); "
                  f"over the matmul floor ({f:.1f} ms): solo {r['solo_ms_per_member_step'] / f:.2f}x, "
                  f"ensemble {r['ens_ms_per_member_step'] / f:.2f}x, vmap {r['vmap_ms_per_member_step'] / f:.2f}x; "
                  f"in CPU seconds: solo {r['solo_cpu_ms_per_member_step']:.1f} ms per member-step, ensemble "
                  f"{r['ens_cpu_ms_per_member_step']:.1f} (x{r['cpu_speedup']:.2f} members/s), "
                  f"vmap x{r['cpu_vmap_speedup']:.2f}",
                  flush=True)
    eight = next((r for r in rows if r["preset"] == "demo" and r["n"] == 8), None)
    if eight is not None:
        print(f"N=8 speed-up: {eight['speedup']:.2f}x")


if __name__ == "__main__":
    main()
