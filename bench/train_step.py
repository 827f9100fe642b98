"""One full-batch training step of the nanda config: mechgrok's trainer vs a plain loop
through the TransformerLens 4 model, same weights, same optimiser, measured in one run.

    python bench/train_step.py [--device cpu|cuda] [--repeats 20] [--threads N]

Prints milliseconds per step for each and the ratio (TL / mechgrok). Steps alternate between
the two so that whatever else the machine is doing slows both alike; the median is reported.
A third timing, alternated with them, is the floor: the step's own matrix products alone, with
the same shapes and nothing else (the attention output W_O, the MLP's W_in and W_out and the
unembedding W_U at the last position, each forward and its two backward products: 12 matmuls).
The gap between the step and that floor is what is left to optimise (cross-entropy, softmax,
element-wise ops, the optimiser, allocation).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import mechgrok as mg
from mechgrok.optim import make_optimizer
from mechgrok.trainer import loss_fn


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    cfg = mg.get_preset("nanda")
    task = mg.Task(cfg.task)
    mcfg = cfg.model.resolve(task)
    tcfg = cfg.train
    params = {k: v.to(dev) for k, v in mg.init_params(mcfg).items()}
    x, y = task.train_inputs.to(dev), task.train_labels.to(dev)

    # mechgrok: the functional forward over the parameter dict, as mechgrok.train runs it
    ours = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    names = list(ours)
    opt_ours = make_optimizer(ours, names, tcfg)

    def step_ours():
        loss, _ = loss_fn(ours, mcfg, x, y)
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    # baseline: the TL 4 model users get, trained the plain way (logits at the last position)
    model = mg.to_tl_model(params, mcfg, device=dev)
    model.train()
    opt_tl = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                               betas=tcfg.betas, foreach=True)

    def step_tl():
        logits = model(x)[:, -1]
        loss = F.cross_entropy(logits.double(), y)
        opt_tl.zero_grad(set_to_none=True)
        loss.backward()
        opt_tl.step()

    # both start from the same weights: their first losses must agree
    with torch.no_grad():
        l_ours = loss_fn(ours, mcfg, x, y)[0].item()
        l_tl = F.cross_entropy(model(x)[:, -1].double(), y).item()
    assert abs(l_ours - l_tl) < 1e-5, (l_ours, l_tl)

    # the floor: the same matmuls with the same shapes and nothing around them
    n, d, m, v = len(y), mcfg.d_model, mcfg.d_mlp, mcfg.d_vocab_out
    g = torch.Generator(device="cpu").manual_seed(0)
    A = {name: torch.randn(*shape, generator=g).to(dev) for name, shape in
         (("z", (n, d)), ("W_O", (d, d)), ("x", (n, d)), ("W_in", (d, m)), ("post", (n, m)), ("W_out", (m, d)),
          ("r", (n, d)), ("W_U", (d, v)), ("dlogits", (n, v)), ("dr", (n, d)), ("dpre", (n, m)), ("dx", (n, d)))}

    def matmuls_only():
        a = A
        a["z"] @ a["W_O"], a["x"] @ a["W_in"], a["post"] @ a["W_out"], a["r"] @ a["W_U"]  # forward
        a["dlogits"] @ a["W_U"].T, a["r"].T @ a["dlogits"]  # unembed: d input, d weight
        a["dr"] @ a["W_out"].T, a["post"].T @ a["dr"]  # W_out
        a["dpre"] @ a["W_in"].T, a["x"].T @ a["dpre"]  # W_in
        a["dx"] @ a["W_O"].T, a["z"].T @ a["dx"]  # W_O

    times = {"mechgrok": [], "transformer_lens": [], "floor": []}
    for _ in range(3):
        step_ours(), step_tl(), matmuls_only()
    for _ in range(args.repeats):
        for name, fn in (("mechgrok", step_ours), ("transformer_lens", step_tl), ("floor", matmuls_only)):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"nanda config (p=113, batch {len(y)}, {sum(v.numel() for v in params.values()):,} params), "
          f"device {dev}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  TL 4 model + AdamW      {med['transformer_lens']:8.1f} ms/step")
    print(f"  mechgrok trainer step   {med['mechgrok']:8.1f} ms/step")
    print(f"  speed-up (TL / mechgrok) {med['transformer_lens'] / med['mechgrok']:7.1f}x   (target >= 10x)")
    print(f"  floor: the step's 12 matmuls alone {med['floor']:6.1f} ms; mechgrok step / floor "
          f"{med['mechgrok'] / med['floor']:.2f}x   (target <= 1.25x)")


if __name__ == "__main__":
    main()
