"""Optimizers: the named ones a config can ask for, a user's own from Python, and their state
by parameter name (the form the resume file stores).

``TrainConfig.optimizer`` names one of ``OPTIMIZERS``; ``TrainConfig.optimizer_args`` holds its
arguments beyond ``lr``, ``weight_decay`` and ``betas`` (allowed keys and defaults in
``OPTIMIZER_ARGS``):

- ``adamw`` (the default): ``torch.optim.AdamW``, decoupled weight decay.
- ``adam``: ``torch.optim.Adam``; its ``weight_decay`` is an L2 penalty added to the gradient,
  not AdamW's decoupled decay.
- ``sgd``: ``torch.optim.SGD`` with ``momentum`` (default 0.9), ``dampening`` and ``nesterov``.
- ``muon``: ``torch.optim.Muon`` on the hidden 2-D weight matrices (each MLP's ``W_in`` and
  ``W_out``), as Muon is meant to be used, and AdamW (lr ``adamw_lr``, default ``lr``; the
  run's betas and weight decay) on everything else: the embeddings and unembedding, biases and
  LayerNorm weights, and the attention weights. Those are stored per head as 3-D tensors
  (``W_Q`` ``[n_heads, d_model, d_head]``), which Muon refuses; they stay with AdamW rather than
  be reshaped into one matrix, so the Muon update is applied exactly where torch defines it.

A user's own optimizer: ``mg.train(cfg, out, optimizer=factory)`` with
``factory(named_params: dict[str, Tensor]) -> torch.optim.Optimizer`` (or a list of optimizers
over disjoint parameters). Its ``lr`` is scaled by the run's warm-up like the named ones.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import choices

OPTIMIZERS = choices.OPTIMIZERS
OPTIMIZER_ARGS = {
    "adamw": {"eps": 1e-8},
    "adam": {"eps": 1e-8},
    "sgd": {"momentum": 0.9, "dampening": 0.0, "nesterov": False},
    "muon": {"momentum": 0.95, "nesterov": True, "ns_steps": 5, "eps": 1e-7, "adjust_lr_fn": None,
             "adamw_lr": None},
}
MUON_MATRICES = ("blocks.*.mlp.W_in", "blocks.*.mlp.W_out")

OptimizerFactory = Callable[[dict[str, Tensor]], "torch.optim.Optimizer | Sequence[torch.optim.Optimizer]"]


def check_optimizer(name: str, args: dict) -> dict:
    """The arguments of optimizer ``name`` with defaults filled in; one line naming any unknown key."""
    if name not in OPTIMIZERS:
        raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {name!r}")
    allowed = OPTIMIZER_ARGS[name]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ValueError(f"TrainConfig.optimizer_args: {unknown} not an argument of {name} "
                         f"(allowed: {sorted(allowed)}; lr, weight_decay and betas are TrainConfig fields)")
    return allowed | dict(args)


class Optimizers:
    """Several optimizers over disjoint parameters, stepped as one (Muon + AdamW, or a user's
    list). ``param_groups`` is every group of every optimizer."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self):
        for o in self.optimizers:
            o.step()


def _named_optimizer(named: dict[str, Tensor], tcfg) -> list[torch.optim.Optimizer]:
    args = check_optimizer(tcfg.optimizer, dict(tcfg.optimizer_args))
    ps = list(named.values())
    if tcfg.optimizer == "adamw":
        # foreach: one fused kernel per op across all tensors, several times faster than the
        # per-tensor loop for the many small tensors of these models.
        return [torch.optim.AdamW(ps, lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=tcfg.betas,
                                  eps=args["eps"], foreach=True)]
    if tcfg.optimizer == "adam":
        return [torch.optim.Adam(ps, lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=tcfg.betas,
                                 eps=args["eps"], foreach=True)]
    if tcfg.optimizer == "sgd":
        return [torch.optim.SGD(ps, lr=tcfg.lr, weight_decay=tcfg.weight_decay, momentum=args["momentum"],
                                dampening=args["dampening"], nesterov=args["nesterov"], foreach=True)]
    matrices = [k for k in named if any(fnmatch.fnmatchcase(k, pat) for pat in MUON_MATRICES)]
    rest = [k for k in named if k not in matrices]
    out = []
    if matrices:
        out.append(torch.optim.Muon([named[k] for k in matrices], lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                                    momentum=args["momentum"], nesterov=args["nesterov"], ns_steps=args["ns_steps"],
                                    eps=args["eps"], adjust_lr_fn=args["adjust_lr_fn"]))
    if rest:
        lr = tcfg.lr if args["adamw_lr"] is None else args["adamw_lr"]
        out.append(torch.optim.AdamW([named[k] for k in rest], lr=lr, weight_decay=tcfg.weight_decay,
                                     betas=tcfg.betas, foreach=True))
    return out


def make_optimizer(params: dict[str, Tensor], names: list[str], tcfg, factory: OptimizerFactory | None = None):
    """The optimizer over the trainable ``names`` of ``params``: the one ``tcfg`` names, or
    ``factory``'s. Each param group remembers its starting lr as ``base_lr`` (``set_lr``)."""
    named = {k: params[k] for k in names}
    made = _named_optimizer(named, tcfg) if factory is None else factory(named)
    opts = [made] if isinstance(made, torch.optim.Optimizer) else list(made)
    if not opts or not all(isinstance(o, torch.optim.Optimizer) for o in opts):
        raise ValueError(f"the optimizer factory must return a torch.optim.Optimizer or a list of them, "
                         f"got {type(made).__name__}")
    covered = [id(p) for o in opts for g in o.param_groups for p in g["params"]]
    if len(covered) != len(set(covered)):
        raise ValueError("the optimizer factory gave one parameter to two optimizers")
    for o in opts:
        for g in o.param_groups:
            g.setdefault("base_lr", g["lr"])
    return opts[0] if len(opts) == 1 else Optimizers(opts)


def set_lr(opt, factor: float):
    """Every group's lr = its ``base_lr`` times ``factor`` (the warm-up); written into the
    group's lr tensor in place where ``compile_step`` made it one."""
    for g in opt.param_groups:
        if isinstance(g["lr"], Tensor):
            g["lr"].fill_(g["base_lr"] * factor)
        else:
            g["lr"] = g["base_lr"] * factor


def compile_step(opt) -> Callable[[], None]:
    """``opt.step`` compiled with torch.compile (inductor): the foreach update's per-tensor
    kernels fused into a few loops. It rounds differently from the eager step.

    A compiled step guards on a float lr, so every warm-up step would recompile (and past
    dynamo's cache limit fall back to eager): where the optimizer can take it (Adam, AdamW:
    groups with ``capturable``), each group's lr becomes a 0-d tensor that ``set_lr`` fills
    in place, which torch accepts only with ``capturable=True`` (the step count kept as a
    tensor on the parameters' device). Other optimizers keep a float lr and recompile
    during warm-up."""
    _capturable_groups(opt)
    return torch.compile(opt.step)


def _capturable_groups(opt):
    """Each group that can take it capturable, with its lr a 0-d tensor ``set_lr`` fills."""
    for g in opt.param_groups:
        if "capturable" in g:
            g["capturable"] = True
            if not isinstance(g["lr"], Tensor):
                g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float64, device=g["params"][0].device)


class FunctionalUpdate:
    """An optimizer's update as a function of the gradients by parameter name, for torch's own
    Adam and AdamW: the functional form their ``step`` calls (``torch.optim.adam.adam``), with
    the arguments it passes, on the state it keeps, so that the update can be traced into one
    graph with the gradient's computation (``trainer.compile_train_step``) without a graph
    break: ``Optimizer.step`` breaks the graph on purpose around itself.

    ``FunctionalUpdate.of(opt, params)`` is None for any other optimizer (or a fused or
    differentiable group), which then steps as ``compile_step`` compiles it. ``start(names)``
    creates the state of the parameters that will be stepped, as the step's lazy initialisation
    does for a parameter with a gradient (a parameter never stepped keeps no state), before the
    first call; a call steps the parameters named in ``grads``."""

    def __init__(self, opt, params: dict[str, Tensor]):
        self.opt, self.name_of = opt, {id(v): k for k, v in params.items()}
        _capturable_groups(opt)

    @classmethod
    def of(cls, opt, params: dict[str, Tensor]) -> "FunctionalUpdate | None":
        if type(opt) not in (torch.optim.Adam, torch.optim.AdamW) or any(
                g["fused"] or g["differentiable"] for g in opt.param_groups):
            return None
        return cls(opt, params)

    def start(self, names):
        from torch.optim.optimizer import _get_scalar_dtype

        names = set(names)
        for g in self.opt.param_groups:
            for p in g["params"]:
                st = self.opt.state[p]
                if self.name_of[id(p)] not in names:
                    continue
                if not st:
                    st["step"] = torch.zeros((), dtype=_get_scalar_dtype(), device=p.device)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if g["amsgrad"]:
                        st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                else:  # a loaded state: a capturable step's count lives on the parameter's device
                    st["step"] = st["step"].to(device=p.device, dtype=_get_scalar_dtype()).reshape(())

    def __call__(self, grads: dict[str, Tensor]):
        from torch.optim.adam import adam

        for g in self.opt.param_groups:
            ps = [p for p in g["params"] if self.name_of[id(p)] in grads]
            state = [self.opt.state[p] for p in ps]
            beta1, beta2 = g["betas"]
            with torch.no_grad():
                adam([p.detach() for p in ps], [grads[self.name_of[id(p)]] for p in ps],
                     [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state],
                     [s["max_exp_avg_sq"] for s in state] if g["amsgrad"] else [], [s["step"] for s in state],
                     amsgrad=g["amsgrad"], has_complex=any(torch.is_complex(p) for p in ps), beta1=beta1,
                     beta2=beta2, lr=g["lr"], weight_decay=g["weight_decay"], eps=g["eps"], maximize=g["maximize"],
                     foreach=g["foreach"], capturable=True, differentiable=False, fused=None,
                     decoupled_weight_decay=g["decoupled_weight_decay"])


def _each(opt) -> list[torch.optim.Optimizer]:
    return opt.optimizers if isinstance(opt, Optimizers) else [opt]


def state_by_name(opt, params: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """The optimizer's per-parameter state keyed by parameter name and torch's own keys (AdamW:
    step, exp_avg, exp_avg_sq; SGD and Muon: momentum_buffer). Parameters without state yet
    (before the first step) are left out."""
    name_of = {id(v): k for k, v in params.items()}
    out = {}
    for o in _each(opt):
        for g in o.param_groups:
            for p in g["params"]:
                st = {k: v for k, v in o.state.get(p, {}).items() if isinstance(v, Tensor)}
                if st:
                    out[name_of[id(p)]] = st
    return out


def load_state_by_name(opt, params: dict[str, Tensor], state: dict[str, dict[str, Tensor]]):
    """Put ``state`` (as ``state_by_name`` gives it) into ``opt``; names it lacks start fresh."""
    name_of = {id(v): k for k, v in params.items()}
    for o in _each(opt):
        ordered = [p for g in o.param_groups for p in g["params"]]  # state_dict's numbering
        sd = o.state_dict()
        sd["state"] = {i: {k: v.clone() for k, v in state[name_of[id(p)]].items()}
                       for i, p in enumerate(ordered) if name_of[id(p)] in state}
        o.load_state_dict(sd)
