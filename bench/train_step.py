"""One training step of mechgrok's trainer vs a plain loop through the TransformerLens 4 model,
same weights, same optimiser, against the step's own matrix products, for several configs,
all measured in one run.

    python bench/train_step.py [--configs nanda,2layer_mod113,4layer_b64] [--repeats 20]
                               [--threads N] [--device cpu|cuda] [--compile]

Configs (``CONFIGS``): ``nanda`` (1 layer, p=113, full batch of 3830), ``2layer_mod113`` (the
``dynamics`` preset: 2 layers, p=113, full batch of 6384) and ``4layer_b64`` (the ``division4``
preset, seed 000's model: 4 layers, pre-LN, GELU, a/b mod 97, batch 64; each step gathers its
minibatch as the trainer does, in all three timings), ``1layer_b256`` (the ``hu_modular`` preset:
Nanda's 1-layer model, a+b mod 113, minibatch 256).

For each config it prints milliseconds per step and two ratios, both measured in the same run:
TL / mechgrok, and mechgrok / floor. Steps alternate between the three timings so that
whatever else the machine is doing slows them alike; the median is reported.

The floor is the step's matrix products alone, with the shapes a forward that computes every
block at every position except the final block (last position only) needs -- block 0's
queries, keys and values from its (token, position) table, then per layer the Q/K/V
projections (layers > 0), W_O, W_in and W_out, and W_U -- each forward and its two backward
products, on random matrices, nothing else (no attention mixing, softmax, loss, optimiser).
``fewer rows`` is the same with the rows the forward now actually computes (``model._run``:
position 0 of the non-final blocks, which with causal attention depends on one token alone,
computed once per token instead of once per example). The gap between the step and the floor
is what is left to optimise: element-wise ops, softmax, the float64 loss, AdamW, dispatch.
A fifth timing is the same step with torch's fused AdamW instead of the trainer's foreach one
(a measurement only: fused rounds differently, so the trainer does not use it).
With ``--compile`` a sixth is the trainer's ``train.compile`` step (``trainer.compile_train_step``:
loss, gradient and AdamW update in one compiled graph), after its compilation, whose time is
printed too; a seventh the same step as two compiled graphs (``compile_loss`` of the forward +
loss + backward and ``optim.compile_step`` of the update, what ``train.compile`` builds for an
optimizer without a functional form); an eighth that through a plain ``torch.compile`` of the
loss, whose partition saves each ReLU's bool mask for the backward (what ``compile_loss``
avoids: inductor stores bool tensors slowly on a CPU).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import torch
import torch.nn.functional as F

import mechgrok as mg
from mechgrok.optim import compile_step, make_optimizer
from mechgrok.schedule import batch_indices, trainable_names
from mechgrok.trainer import compile_loss, compile_train_step, loss_fn

CONFIGS = {"nanda": "nanda", "2layer_mod113": "dynamics", "4layer_b64": "division4", "1layer_b256": "hu_modular"}  # bench name -> preset


def matmul_shapes(mcfg: mg.ModelConfig, batch: int, position0_table: bool) -> list[tuple[int, int, int]]:
    """(rows, d_in, d_out) of every forward matmul of a step on ``batch`` sequences.
    ``position0_table``: the non-final blocks compute position 0 once per token (d_vocab rows)."""
    d, hk, m, ctx = mcfg.d_model, mcfg.n_heads * mcfg.d_head, mcfg.d_mlp, mcfg.n_ctx
    table = mcfg.d_vocab * ctx  # block 0's (token, position) rows
    full = batch * (ctx - 1) + mcfg.d_vocab if position0_table else batch * ctx
    shapes = [(table, d, hk), (table, d, 2 * hk)]  # block 0: Q and K/V of the table
    for layer in range(mcfg.n_layers):
        rows = batch if layer == mcfg.n_layers - 1 else full  # the final block: last position only
        if layer > 0:
            shapes += [(rows, d, hk), (full, d, 2 * hk)]  # Q at the rows computed, K/V at every position
        shapes += [(rows, hk, d), (rows, d, m), (rows, m, d)]  # W_O, W_in, W_out
    return shapes + [(batch, d, mcfg.d_vocab_out)]  # W_U


def floor_fn(shapes, dev):
    """The forward product and both backward products of each shape, on random matrices."""
    g = torch.Generator().manual_seed(0)
    mats = [tuple(torch.randn(*s, generator=g).to(dev) for s in ((r, i), (i, o), (r, o))) for r, i, o in shapes]

    def run():
        for x, w, dy in mats:
            x @ w, dy @ w.T, x.T @ dy

    return run


def gflop(shapes) -> float:
    return sum(3 * 2 * r * i * o for r, i, o in shapes) / 1e9


def bench_config(name: str, repeats: int, dev: torch.device, compiled: bool = False) -> dict:
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cfg = mg.get_preset(CONFIGS[name])
    task = mg.Task(cfg.task)
    mcfg = cfg.model.resolve(task)
    tcfg = cfg.train
    params = {k: v.to(dev) for k, v in mg.init_params(mcfg).items()}
    train_x, train_y = task.train_inputs.to(dev), task.train_labels.to(dev)
    batch = len(train_y) if tcfg.batch_size is None else min(tcfg.batch_size, len(train_y))

    def minibatch(step: int):  # as mechgrok.trainer picks it: all three timings pay the gather
        idx = batch_indices(step, len(train_y), tcfg.batch_size, tcfg.seed)
        return (train_x, train_y) if idx is None else (train_x[idx.to(dev)], train_y[idx.to(dev)])

    def step_of(p, opt, loss=loss_fn, update=None):
        """One trainer step on the parameter dict ``p``: minibatch, loss, backward, update."""
        update = opt.step if update is None else update

        def step(s):
            x, y = minibatch(s)
            value = loss(p, mcfg, x, y)
            opt.zero_grad(set_to_none=True)
            value.backward()
            update()

        return step

    def copy(src):
        return {k: v.detach().contiguous().clone().requires_grad_(k in names) for k, v in src.items()}

    # mechgrok: the functional forward over the parameter dict, as mechgrok.trainer runs it
    names = trainable_names(params, tcfg.frozen)
    ours = copy(params)
    opt_ours = make_optimizer(ours, names, tcfg)
    step_ours = step_of(ours, opt_ours)

    # the same step with torch's fused AdamW (one kernel per tensor) instead of the trainer's
    # foreach one, which on a CPU is a Python-level loop of per-tensor kernels: what that costs
    fused = copy(ours)
    opt_fused = torch.optim.AdamW([fused[k] for k in names], lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                                  betas=tcfg.betas, fused=True) if dev.type in ("cpu", "cuda") else None
    step_fused = step_of(fused, opt_fused)

    # train.compile's step: the same step through torch.compile, built as the trainer builds it
    if compiled:
        comp = copy(ours)
        opt_comp = make_optimizer(comp, names, tcfg)
        whole = compile_train_step(comp, names, opt_comp, mcfg)
        assert whole is not None, "the presets train with AdamW, which has a one-graph step"

        def step_compiled(s):
            whole(*minibatch(s))

        sync()
        t, c = time.perf_counter(), time.process_time()
        step_compiled(0)  # compiles the graph
        sync()
        compile_s = (time.perf_counter() - t, time.process_time() - c)

        # the step as two graphs (forward + loss + backward, and the update), as train.compile
        # builds it for an optimizer without a functional form: what the one graph saves
        two = copy(ours)
        opt_two = make_optimizer(two, names, tcfg)
        step_two_graphs = step_of(two, opt_two, compile_loss(loss_fn), compile_step(opt_two))

        # the same through a plain torch.compile of the loss: its partition saves a ReLU's
        # bool mask for the backward, which inductor's CPU kernels store slowly (compile_loss).
        # Through a function of its own: dynamo keeps compiled code per code object, and the
        # functorch setting is not among its guards, so loss_fn itself would reuse compile_loss's graph
        def loss_fn_plain(*args):
            return loss_fn(*args)

        plain = copy(ours)
        opt_plain = make_optimizer(plain, names, tcfg)
        step_plain_compile = step_of(plain, opt_plain, torch.compile(loss_fn_plain), compile_step(opt_plain))

    # baseline: the TL 4 model users get, trained the plain way (logits at the last position),
    # with the same parameters frozen
    model = mg.to_tl_model(params, mcfg, device=dev)
    model.train()
    # TL names of what the preset freezes: attention biases (nanda); the bridge's head has no bias
    frozen_tl = [re.compile(r"layers\.\d+\.attn\.[qkvo]\.bias")] if "blocks.*.attn.b_*" in tcfg.frozen else []
    tl_params = []
    for n, p in model.named_parameters():
        train_it = not any(f.fullmatch(n.replace("._original_component", "")) for f in frozen_tl)
        p.requires_grad_(train_it)
        if train_it:
            tl_params.append(p)
    opt_tl = torch.optim.AdamW(tl_params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=tcfg.betas,
                               foreach=True)

    def step_tl(step):
        x, y = minibatch(step)
        loss = F.cross_entropy(model(x)[:, -1].double(), y)
        opt_tl.zero_grad(set_to_none=True)
        loss.backward()
        opt_tl.step()

    # both start from the same weights: their first losses must agree
    with torch.no_grad():
        x0, y0 = minibatch(0)
        l_ours = loss_fn(ours, mcfg, x0, y0).item()
        l_tl = F.cross_entropy(model(x0)[:, -1].double(), y0).item()
    assert abs(l_ours - l_tl) < 1e-5, (name, l_ours, l_tl)

    every, fewer = matmul_shapes(mcfg, batch, False), matmul_shapes(mcfg, batch, True)
    floor_every, floor_fewer = floor_fn(every, dev), floor_fn(fewer, dev)
    timings = {"mechgrok": step_ours, "transformer_lens": step_tl, "floor": lambda s: floor_every(),
               "floor_fewer": lambda s: floor_fewer(), "fused_adamw": step_fused}
    if compiled:
        timings["compiled"] = step_compiled
        timings["two_graphs"] = step_two_graphs
        timings["plain_compile"] = step_plain_compile
    # wall and CPU (process) time: on a shared machine the CPU seconds of a 1-thread run are the
    # work done, whatever share of a core the process got; the wall clock counts the waiting too
    times = {k: [] for k in timings}
    cpu = {k: [] for k in timings}
    for s in range(3):
        for fn in timings.values():
            fn(s)
    for s in range(3, 3 + repeats):
        for k, fn in timings.items():
            sync()
            t, c = time.perf_counter(), time.process_time()
            fn(s)
            sync()
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    med = {f"{k}_ms": statistics.median(v) * 1e3 for k, v in times.items()}
    med_cpu = {f"{k}_cpu_ms": statistics.median(v) * 1e3 for k, v in cpu.items()}
    return {"name": name, "preset": CONFIGS[name], "batch": batch, "n_layers": mcfg.n_layers,
            "n_params": sum(v.numel() for v in params.values()), "gflop": gflop(every),
            "gflop_fewer": gflop(fewer)} | med | med_cpu | (
                {"compile_s": compile_s[0], "compile_cpu_s": compile_s[1]} if compiled else {})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="also time train.compile's step (torch.compile)")
    args = ap.parse_args(argv)
    wanted = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in wanted:
        if c not in CONFIGS:
            raise SystemExit(f"--configs: unknown config {c!r}; choose from {', '.join(CONFIGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    print(f"device {dev}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"median of {args.repeats} alternated steps")
    rows = []
    for c in wanted:
        r = bench_config(c, args.repeats, dev, args.compile)
        rows.append(r)
        print(f"{c} ({r['preset']} preset, {r['n_layers']} layers, batch {r['batch']}, {r['n_params']:,} params); "
              f"ms per step, wall clock | CPU time", flush=True)

        def line(label, key, ratio):
            print(f"  {label:34s} {r[key + '_ms']:8.1f} | {r[key + '_cpu_ms']:8.1f}   {ratio}", flush=True)

        def ratio(a, b, text):
            return f"{text} {r[a + '_ms'] / r[b + '_ms']:.2f}x | {r[a + '_cpu_ms'] / r[b + '_cpu_ms']:.2f}x"

        line("TL 4 model + AdamW", "transformer_lens", "")
        line("mechgrok trainer step", "mechgrok", ratio("transformer_lens", "mechgrok", "TL / mechgrok"))
        line(f"floor: matmuls ({r['gflop']:.2f} GFLOP)", "floor",
             ratio("mechgrok", "floor", "step / floor") + "   (target <= 1.5x)")
        line(f"floor, fewer rows ({r['gflop_fewer']:.2f} GFLOP)", "floor_fewer",
             ratio("mechgrok", "floor_fewer", "step / it"))
        line("step with fused AdamW (not used)", "fused_adamw", ratio("fused_adamw", "floor", "/ floor"))
        if args.compile:
            line("compiled (train.compile)", "compiled", ratio("mechgrok", "compiled", "eager / compiled") + "   "
                 + ratio("compiled", "floor", "/ floor"))
            line("  as two graphs (loss, update)", "two_graphs",
                 ratio("two_graphs", "compiled", "/ compiled") + "   " + ratio("two_graphs", "floor", "/ floor"))
            line("  plain torch.compile (mask saved)", "plain_compile",
                 ratio("plain_compile", "two_graphs", "/ two graphs") + "   " + ratio("plain_compile", "floor", "/ floor"))
            print(f"  compile time (first step)          {r['compile_s']:8.1f} | {r['compile_cpu_s']:8.1f} s", flush=True)
    return rows


if __name__ == "__main__":
    main()
