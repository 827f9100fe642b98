"""GPU against CPU in one run: the solo training step, a 64-member ensemble and ``measure_run``.

    python bench/gpu.py                  # < 5 min on a CUDA machine; CPU-only machines time the CPU
    python bench/gpu.py --full           # then the sweeps: ensemble sizes, 400 checkpoints, every
                                         # bench/train_step.py config on the GPU
    python bench/gpu.py --quick          # a tiny model, seconds (the test's smoke run)
    python bench/gpu.py --out bench/results/gpu.json   # also write the numbers (JSON)

Three timings, each on the CUDA device and on the CPU of the same machine, in one process:

* solo step: one full-batch AdamW step of the nanda config (p=113, 3830 examples) through
  mechgrok's trainer step (``trainer.loss_fn``, the run's optimizer), median of alternated steps;
* ensemble: ``train_ensemble`` of 64 members (seeds 0..63 of the nanda config) for ``--steps``
  steps with one evaluation and one checkpoint at the end (real run directories), against one
  solo ``mg.train`` of the same steps; the ensemble computes gradients as it does by default on
  each device (vmap on a GPU, member by member on a CPU). The GPU target: 64 members in <= 2x
  the wall time of one;
* ``measure_run``: every progress measure at ``--checkpoints`` synthetic nanda-shape checkpoints
  (``bench/progress_measures.synthetic_run``), on each device.

Initial weights are built before the clocks start (one TransformerLens boot per member would
otherwise be timed). Without a CUDA device it says so in one line and times the CPU alone
(exit status 0), so the script can be checked anywhere.
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
from mechgrok.files import write_json
from mechgrok.optim import make_optimizer
from mechgrok.runs import ResumeState
from mechgrok.schedule import trainable_names
from mechgrok.trainer import loss_fn
from progress_measures import NANDA_FREQS, synthetic_run  # bench/ is on the path when run as a script

# --quick: a+b mod 23 on a 1-layer d_model-32 model (the tests' tiny config)
TINY = mg.RunConfig(task=mg.TaskConfig(op="add", p=23, frac=0.6, seed=1),
                    model=mg.ModelConfig(n_layers=1, d_model=32, n_heads=4, d_head=8, d_mlp=64, seed=1),
                    train=mg.TrainConfig(steps=4, lr=3e-3, weight_decay=1.0, eval_every=4, checkpoint_every=4))


def _sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def solo_step_ms(cfg: mg.RunConfig, dev: torch.device, repeats: int) -> float:
    """Median ms of one trainer step of ``cfg`` (full batch) on ``dev``."""
    task = mg.Task(cfg.task)
    mcfg = cfg.model.resolve(task)
    names = trainable_names(mg.init_params(mcfg), cfg.train.frozen)
    params = {k: v.to(dev).contiguous().requires_grad_(k in names) for k, v in mg.init_params(mcfg).items()}
    opt = make_optimizer(params, names, cfg.train)
    x, y = task.train_inputs.to(dev), task.train_labels.to(dev)
    times = []
    for i in range(repeats + 3):
        _sync(dev)
        t = time.perf_counter()
        loss = loss_fn(params, mcfg, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)
        if i >= 3:  # the first steps pay for allocation and kernel selection
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def members(cfg: mg.RunConfig, n: int, steps: int, dev: torch.device, inits=None
            ) -> tuple[list[mg.RunConfig], list[ResumeState]]:
    """``n`` seeds of ``cfg`` for ``steps`` steps on ``dev`` (one evaluation and checkpoint at the
    end), with their initial weights (``inits``: reuse these, built for another device)."""
    cfg = replace(cfg, train=replace(cfg.train, steps=steps, eval_every=steps, checkpoint_every=steps,
                                     device=str(dev)))
    cfgs = [replace(cfg, task=replace(cfg.task, seed=s), model=replace(cfg.model, seed=s),
                    train=replace(cfg.train, seed=s)) for s in range(n)]
    if inits is None:  # one TransformerLens boot per member: seconds for 64, so built once
        inits = [ResumeState(0, mg.init_params(c.model.resolve(mg.Task(c.task)))) for c in cfgs]
    return cfgs, inits


def ensemble_s(cfgs, inits, root: Path) -> tuple[float, float]:
    """Seconds of one solo ``mg.train`` of member 0 and of ``train_ensemble`` of all members."""
    _sync(torch.device(cfgs[0].train.device))
    t = time.perf_counter()
    mg.train(cfgs[0], root / "solo", init=inits[0].params, progress=False)
    solo = time.perf_counter() - t
    t = time.perf_counter()
    train_ensemble(cfgs, [root / f"m{i}" for i in range(len(cfgs))], init=inits, progress=False)
    return solo, time.perf_counter() - t


def measure_run_s(run: mg.Run, freqs, dev: torch.device) -> float:
    t = time.perf_counter()
    mg.progress.measure_run(run, freqs=freqs, progress=False, device=dev)
    _sync(dev)
    return time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny model and few steps (seconds): a smoke run")
    ap.add_argument("--full", action="store_true", help="then the sweeps (GPU: ensemble sizes up to 256, "
                                                        "400 checkpoints, bench/train_step.py's configs)")
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="steps of the solo and ensemble runs")
    ap.add_argument("--checkpoints", type=int, default=100, help="synthetic checkpoints for measure_run")
    ap.add_argument("--repeats", type=int, default=20, help="timed solo steps")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.members, args.steps, args.checkpoints, args.repeats = 2, 4, 3, 3
    cfg = TINY if args.quick else mg.get_preset("nanda")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.insert(0, torch.device("cuda"))
        print(f"CUDA device: {torch.cuda.get_device_name(0)}; timing it against the CPU "
              f"({torch.get_num_threads()} threads)")
    else:
        print(f"no CUDA device: timing the CPU only ({torch.get_num_threads()} threads); run this on a machine "
              f"with a GPU for the comparison")
    result = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "config": "tiny" if args.quick else "nanda", "members": args.members, "steps": args.steps,
              "checkpoints": args.checkpoints, "devices": {}}
    with tempfile.TemporaryDirectory() as tmp:
        run = synthetic_run(Path(tmp) / "series", args.checkpoints, cfg=cfg)
        freqs = [1, 2, 3] if args.quick else NANDA_FREQS
        inits = warm_i = None
        for dev in devices:
            r = {"solo_step_ms": solo_step_ms(cfg, dev, args.repeats)}
            cfgs, inits = members(cfg, args.members, args.steps, dev, inits)
            # a short warm-up: first-call costs (CUDA context, torch.func tracing) out of the timings
            warm_c, warm_i = members(cfg, 2, 2, dev, warm_i)
            ensemble_s(warm_c, warm_i, Path(tmp) / f"warm_{dev.type}")
            r["solo_run_s"], r["ensemble_s"] = ensemble_s(cfgs, inits, Path(tmp) / f"ens_{dev.type}")
            r["ensemble_over_solo"] = r["ensemble_s"] / r["solo_run_s"]
            measure_run_s(run, freqs, dev)  # warm
            r["measure_run_s"] = measure_run_s(run, freqs, dev)
            result["devices"][dev.type] = r
            print(f"{dev.type:4s}: solo step {r['solo_step_ms']:8.2f} ms | {args.steps} steps: one run "
                  f"{r['solo_run_s']:6.2f} s, {args.members}-member ensemble {r['ensemble_s']:7.2f} s "
                  f"({r['ensemble_over_solo']:.2f}x one run; {args.members * r['solo_run_s'] / r['ensemble_s']:.1f}x "
                  f"the members/s of solo runs) | measure_run {args.checkpoints} checkpoints "
                  f"{r['measure_run_s']:6.2f} s", flush=True)
        if "cuda" in result["devices"]:
            g, c = result["devices"]["cuda"], result["devices"]["cpu"]
            print(f"GPU / CPU speed-up: solo step {c['solo_step_ms'] / g['solo_step_ms']:.1f}x, ensemble "
                  f"{c['ensemble_s'] / g['ensemble_s']:.1f}x, measure_run {c['measure_run_s'] / g['measure_run_s']:.1f}x; "
                  f"GPU ensemble of {args.members} = {g['ensemble_over_solo']:.2f}x one run (target <= 2x)")
        if args.full and not args.quick:
            result["sweeps"] = sweeps(cfg, devices[0], Path(tmp), args.steps)
    if args.out is not None:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return result


def sweeps(cfg: mg.RunConfig, dev: torch.device, root: Path, steps: int) -> dict:
    """--full, on the fastest device: the ensemble's wall time over one run's for 1..256 members,
    measure_run at 400 checkpoints, and bench/train_step.py's configs (TL / mechgrok, floor; on a
    GPU also compiled, the two small-batch configs)."""
    import train_step

    out = {"device": dev.type, "ensemble": [], "train_step": []}
    for n in ((1, 8, 32, 64, 128, 256) if dev.type == "cuda" else (1, 8)):
        cfgs, inits = members(cfg, n, steps, dev)
        solo, ens = ensemble_s(cfgs, inits, root / f"sweep{n}")
        out["ensemble"].append({"members": n, "solo_run_s": solo, "ensemble_s": ens})
        print(f"sweep {dev.type} N={n:3d}: ensemble {ens:7.2f} s = {ens / solo:.2f}x one run", flush=True)
    run = synthetic_run(root / "series400", 400, cfg=cfg)
    out["measure_run_400_s"] = measure_run_s(run, NANDA_FREQS, dev)
    print(f"sweep {dev.type}: measure_run at 400 checkpoints {out['measure_run_400_s']:.1f} s", flush=True)
    out["train_step"] = train_step.main(["--device", dev.type])
    if dev.type == "cuda":  # the small-batch configs compiled (train.compile's one graph), where compiling pays
        try:
            out["train_step_compiled"] = train_step.main(["--device", "cuda", "--compile", "--configs",
                                                          "1layer_b256,4layer_b64"])
        except Exception as e:  # a compile failure must not lose the sweeps above
            out["train_step_compiled"] = f"failed: {type(e).__name__}: {e}"
            print(f"sweep cuda: compiled train_step failed: {out['train_step_compiled']}", flush=True)
    return out


if __name__ == "__main__":
    main()
