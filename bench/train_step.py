"""One full-batch training step of the nanda config: mechgrok's trainer vs a plain loop
through the TransformerLens 4 model, same weights, same optimiser, measured in one run.

    python bench/train_step.py [--device cpu|cuda] [--repeats 20] [--threads N]

Prints milliseconds per step for each and the ratio (TL / mechgrok). Steps alternate between
the two so that whatever else the machine is doing slows both alike; the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import mechgrok as mg
from mechgrok.train import loss_fn, make_optimizer


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

    # mechgrok: the functional forward over the parameter dict, as mechgrok.train.train runs it
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

    times = {"mechgrok": [], "transformer_lens": []}
    for _ in range(3):
        step_ours(), step_tl()
    for _ in range(args.repeats):
        for name, fn in (("mechgrok", step_ours), ("transformer_lens", step_tl)):
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


if __name__ == "__main__":
    main()
