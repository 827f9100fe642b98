"""Grokfast's gradient filters (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying
Slow Gradients"), applied between backward and the optimizer step, by the solo trainer and
(with one value per member) by the ensemble trainer."""

from __future__ import annotations

import torch
from torch import Tensor

from . import choices

MODES = choices.GROKFAST_MODES


class GradientFilter:
    """The filter, applied to a dict of gradients:

    - ``ema``: e <- alpha * e + (1 - alpha) * g, then g <- g + lambda * e. e starts as the first
      gradient (so the first filtered gradient is (1 + lambda) * g), not as zero, which would
      shrink the early filter by (1 - alpha^t).
    - ``ma``: keep the last ``window`` gradients; once the window is full,
      g <- g + lambda * mean(window); before that g passes unchanged.

    ``alpha`` and ``lam`` are numbers, or tensors that broadcast against the gradients (the
    ensemble trainer passes one value per member). The state (``state_tensors``) goes into the
    resume file, so a resumed run filters exactly as an uninterrupted one."""

    def __init__(self, mode: str, alpha=0.98, lam=2.0, window: int = 100):
        if mode not in ("ema", "ma"):
            raise ValueError(f"Grokfast mode must be ema or ma, got {mode!r}")
        self.mode, self.alpha, self.lam, self.window = mode, alpha, lam, window
        self.state: dict[str, Tensor] = {}
        self.count = 0  # gradients seen

    @classmethod
    def from_config(cls, tcfg) -> "GradientFilter | None":
        if tcfg.grokfast == "none":
            return None
        return cls(tcfg.grokfast, tcfg.grokfast_alpha, tcfg.grokfast_lambda, tcfg.grokfast_window)

    @torch.no_grad()
    def __call__(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        if self.mode == "ema":
            for k, g in grads.items():
                e = self.state.get(f"{k}.ema")
                a = self.alpha
                if isinstance(a, Tensor):
                    # 1 - alpha in float64, then cast: float32(1 - 0.98) is what a solo run's
                    # Python float gives; 1 - float32(0.98) is off by 1e-6 relative every step
                    e = g.clone() if e is None else e * a.to(g.dtype) + g * (1 - a).to(g.dtype)
                else:
                    e = g.clone() if e is None else e * a + g * (1 - a)
                self.state[f"{k}.ema"] = e
                out[k] = g + self.lam * e
        else:
            slot = self.count % self.window
            for k, g in grads.items():
                buf = self.state.get(f"{k}.window")
                if buf is None:
                    buf = self.state[f"{k}.window"] = g.new_zeros((self.window, *g.shape))
                buf[slot] = g
                out[k] = g + self.lam * buf.mean(0) if self.count + 1 >= self.window else g
        self.count += 1
        return out

    def state_tensors(self) -> dict[str, Tensor]:
        return self.state | {"count": torch.tensor(self.count)}

    def load(self, tensors: dict[str, Tensor], device=None):
        self.state = {k: v.to(device) for k, v in tensors.items() if k != "count"}
        self.count = int(tensors["count"]) if "count" in tensors else 0
