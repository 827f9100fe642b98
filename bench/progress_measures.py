"""Time ``mechgrok.progress.measure_run`` against the straightforward loop.

    python bench/progress_measures.py                 # 400 synthetic nanda-shape checkpoints
    python bench/progress_measures.py runs/nanda      # a real run (all its checkpoints)
    python bench/progress_measures.py --n 100 --tl 5 --threads 2

Without a run, it writes ``--n`` checkpoints of the nanda configuration (a+b mod 113, 1 layer,
d_model 128, d_mlp 512) into a temporary run directory: one seeded initialisation plus a
growing random perturbation per step, so no training is needed and every checkpoint differs.
The key frequencies are fixed to Nanda's published five, so both sides do the same work.

Three timings, in one process:
  * ``measure_run`` (grid engine: one closed-form forward over the (a, b) grid per checkpoint);
  * the fast-path loop (``engine="hooks"``: ``run_with_hooks`` three times per checkpoint:
    plain, restricted hook, excluded hook);
  * the TransformerLens loop: per checkpoint ``run.model(step)`` and ``measure_checkpoint`` on
    it (the TL model's ``run_with_hooks`` with the same hooks). It is slow, so it runs on the
    first ``--tl`` checkpoints and its per-checkpoint time is scaled to ``--n``; say ``--tl N``
    with N = all to time every checkpoint.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import mechgrok as mg
from mechgrok import progress
from mechgrok.files import save_tensors, write_json
from mechgrok.runs import checkpoint_path

NANDA_FREQS = [14, 35, 41, 42, 52]


def synthetic_run(out: Path, n: int, seed: int = 0, cfg: mg.RunConfig | None = None) -> mg.Run:
    """``n`` checkpoints of ``cfg`` (default the nanda preset) without training (module docstring)."""
    cfg = mg.get_preset("nanda") if cfg is None else cfg
    write_json(out / "config.json", cfg.to_dict())
    task = mg.Task(cfg.task)
    params = mg.init_params(cfg.model.resolve(task))
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        noisy = {k: v + 0.01 * (1 + i / n) * torch.randn(v.shape, generator=g) for k, v in params.items()}
        save_tensors(checkpoint_path(out, 100 * i), noisy)
    return mg.load_run(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="a run directory (default: a synthetic nanda-shape series)")
    ap.add_argument("--n", type=int, default=400, help="checkpoints for the synthetic series")
    ap.add_argument("--tl", type=int, default=8, help="checkpoints timed through the TL model")
    ap.add_argument("--hooks", type=int, default=40, help="checkpoints timed through the fast-path hooks loop")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            run = mg.load_run(args.run)
            freqs = None
        else:
            t = time.perf_counter()
            run = synthetic_run(Path(tmp) / "bench", args.n)
            freqs = NANDA_FREQS
            print(f"wrote {args.n} synthetic checkpoints in {time.perf_counter() - t:.1f} s")
        steps = run.steps
        n = len(steps)
        if freqs is None:
            freqs = mg.fourier.key_frequencies(run.params(steps[-1]), run.task, cfg=run.model_cfg)
        print(f"{run.task.describe()}, {n} checkpoints, key frequencies {freqs}, "
              f"{torch.get_num_threads()} threads")

        t, c = time.perf_counter(), time.process_time()
        table = progress.measure_run(run, freqs=freqs)
        t_fast, c_fast = time.perf_counter() - t, time.process_time() - c

        k_hooks = min(args.hooks, n)
        t = time.perf_counter()
        slow = progress.measure_run(run, freqs=freqs, steps=steps[:k_hooks], engine="hooks", progress=False)
        t_hooks = (time.perf_counter() - t) / k_hooks

        k_tl = min(args.tl, n)
        t_build = t_measure = 0.0
        for step in steps[:k_tl]:
            t = time.perf_counter()
            model = run.model(step)
            t_build += time.perf_counter() - t
            t = time.perf_counter()
            ref = progress.measure_checkpoint(model, run.task, freqs)
            t_measure += time.perf_counter() - t
        t_tl = (t_build + t_measure) / k_tl

        # the three agree (the last TL checkpoint against the table's row)
        row = table.set_index("step").loc[steps[k_tl - 1]]
        for key in ("test_loss", "restricted_loss", "excluded_loss"):
            assert abs(ref[key] - row[key]) <= 1e-4 * max(1.0, abs(ref[key])), (key, ref[key], row[key])
        assert abs(slow["excluded_loss"].iloc[-1] - table["excluded_loss"].iloc[k_hooks - 1]) <= 1e-3

    print(f"\nmeasure_run (grid engine)      : {t_fast:7.2f} s for {n} checkpoints "
          f"({1000 * t_fast / n:.0f} ms each; {c_fast:.1f} CPU s over all threads)")
    print(f"fast-path hooks loop           : {t_hooks * n:7.2f} s for {n} (timed on {k_hooks}: "
          f"{1000 * t_hooks:.0f} ms each)  ratio {t_hooks * n / t_fast:.1f}x")
    print(f"TransformerLens run_with_hooks : {t_tl * n:7.2f} s for {n} (timed on {k_tl}: "
          f"{1000 * t_tl:.0f} ms each, {1000 * t_build / k_tl:.0f} ms of it building the model)  "
          f"ratio {t_tl * n / t_fast:.1f}x")


if __name__ == "__main__":
    main()
