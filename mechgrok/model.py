"""The model: a TransformerLens 4 model for users, and a functional forward for speed.

Parameters live in one representation everywhere: a dict of tensors keyed like a
HookedTransformer state dict (``embed.W_E``, ``blocks.0.attn.W_Q``, ``unembed.W_U``, ...) with
HookedTransformer's per-head shapes. Checkpoints store that dict; the trainer optimises it;
``to_tl_model`` turns it into the TransformerLens 4 ``TransformerBridge`` (HookedTransformer
hook names, ``W_E``/``W_U`` properties, ``run_with_hooks``, ``run_with_cache``) that users hook
into.

``forward`` is a plain-PyTorch implementation over the same dict that computes only what the
loss needs (the final block at the last position only). It is what makes training and
analyses over hundreds of checkpoints cheap; tests pin it to the TL forward. It accepts TL-style
forward hooks ``fn(activation, hook) -> activation | None`` on TL hook names, so an
intervention written once runs on both.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass, replace
from collections.abc import Callable, Iterable, Sequence

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from . import choices
from .fieldtypes import check_field_types

Params = dict[str, Tensor]
Hook = tuple[str | Callable[[str], bool], Callable]  # (hook name or TL name filter, fn)

ACT_FNS = choices.ACT_FNS
_SMALL_CTX = 8
NORMALIZATIONS = choices.NORMALIZATIONS


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. ``d_vocab``, ``d_vocab_out`` and ``n_ctx`` come from the task
    (``resolve(task)``); everything else is chosen by the user."""

    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    act_fn: str = "relu"
    normalization: str = "none"  # "LN": pre-LN blocks and a final LN
    seed: int = 0
    d_vocab: int | None = None
    d_vocab_out: int | None = None
    n_ctx: int | None = None

    def __post_init__(self):
        if self.normalization is None:  # HookedTransformerConfig's spelling of no normalisation
            object.__setattr__(self, "normalization", "none")
        check_field_types(self)
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {v!r}")
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"ModelConfig.act_fn must be one of {ACT_FNS}, got {self.act_fn!r}")
        norm = {"ln": "LN", "none": "none", None: "none"}.get(
            self.normalization.lower() if isinstance(self.normalization, str) else None, self.normalization)
        object.__setattr__(self, "normalization", norm)
        if norm not in NORMALIZATIONS:
            raise ValueError(f"ModelConfig.normalization must be one of {NORMALIZATIONS}, "
                             f"got {self.normalization!r}")

    def resolve(self, task) -> "ModelConfig":
        return replace(self, d_vocab=task.d_vocab, d_vocab_out=task.d_vocab_out, n_ctx=task.n_ctx)

    @property
    def resolved(self) -> bool:
        return None not in (self.d_vocab, self.d_vocab_out, self.n_ctx)

    def to_dict(self) -> dict:
        return asdict(self)


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the HookedTransformer-format state dict with its shape."""
    _check_resolved(cfg)
    d, h, k, m = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    ln = cfg.normalization == "LN"
    shapes: dict[str, tuple[int, ...]] = {"embed.W_E": (cfg.d_vocab, d), "pos_embed.W_pos": (cfg.n_ctx, d)}
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        if ln:
            shapes |= {f"{b}.ln1.w": (d,), f"{b}.ln1.b": (d,)}
        shapes |= {f"{b}.attn.W_Q": (h, d, k), f"{b}.attn.W_K": (h, d, k), f"{b}.attn.W_V": (h, d, k),
                   f"{b}.attn.W_O": (h, k, d), f"{b}.attn.b_Q": (h, k), f"{b}.attn.b_K": (h, k),
                   f"{b}.attn.b_V": (h, k), f"{b}.attn.b_O": (d,)}
        if ln:
            shapes |= {f"{b}.ln2.w": (d,), f"{b}.ln2.b": (d,)}
        shapes |= {f"{b}.mlp.W_in": (d, m), f"{b}.mlp.b_in": (m,), f"{b}.mlp.W_out": (m, d),
                   f"{b}.mlp.b_out": (d,)}
    if ln:
        shapes |= {"ln_final.w": (d,), "ln_final.b": (d,)}
    shapes |= {"unembed.W_U": (d, cfg.d_vocab_out), "unembed.b_U": (cfg.d_vocab_out,)}
    return shapes


def _check_resolved(cfg: ModelConfig):
    if not cfg.resolved:
        raise ValueError("ModelConfig has no vocabulary sizes yet: call cfg.resolve(task) first")


# --- the TransformerLens 4 model ----------------------------------------------------------


def tl_config(cfg: ModelConfig):
    from transformer_lens.config import TransformerBridgeConfig

    _check_resolved(cfg)
    return TransformerBridgeConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
        d_mlp=cfg.d_mlp, d_vocab=cfg.d_vocab, d_vocab_out=cfg.d_vocab_out, n_ctx=cfg.n_ctx,
        act_fn=cfg.act_fn, normalization_type="LN" if cfg.normalization == "LN" else None,
        positional_embedding_type="standard", default_prepend_bos=False, seed=cfg.seed,
    )


def _boot(cfg: ModelConfig, device=None):
    import transformer_lens.model_bridge.sources  # noqa: F401  (attaches boot_native)
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_native(tl_config(cfg), device=device)
    # no_processing: the default folds/centres weights (W_U centring changes every Fourier
    # spectrum), so the model users hook into must hold exactly the trained weights.
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    return bridge


def to_tl_model(params: Params, cfg: ModelConfig, device=None):
    """A TransformerLens 4 ``TransformerBridge`` holding exactly ``params``."""
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    check_params(params, cfg)
    bridge = _boot(cfg, device=device)
    converted = convert_tl_checkpoint({k: v.detach() for k, v in params.items()}, tl_config(cfg))
    bridge.load_state_dict(converted, strict=True)
    bridge.eval()
    return bridge


def params_from_tl(model, cfg: ModelConfig) -> Params:
    """Read a TL 4 bridge's weights back into the HookedTransformer-format dict (the inverse
    of ``convert_tl_checkpoint`` for the architectures mechgrok builds)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    h = cfg.n_heads
    out: Params = {"embed.W_E": sd["embed.weight"], "pos_embed.W_pos": sd["pos_embed.weight"]}
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        for name in ("ln1", "ln2"):
            if f"{b}.{name}.weight" in sd:
                out[f"{b}.{name}.w"] = sd[f"{b}.{name}.weight"]
                out[f"{b}.{name}.b"] = sd[f"{b}.{name}.bias"]
        for x in "QKV":
            w = sd[f"{b}.attn.{x.lower()}.weight"]
            out[f"{b}.attn.W_{x}"] = einops.rearrange(w, "(h k) d -> h d k", h=h)
            out[f"{b}.attn.b_{x}"] = einops.rearrange(sd[f"{b}.attn.{x.lower()}.bias"], "(h k) -> h k", h=h)
        out[f"{b}.attn.W_O"] = einops.rearrange(sd[f"{b}.attn.o.weight"], "d (h k) -> h k d", h=h)
        out[f"{b}.attn.b_O"] = sd[f"{b}.attn.o.bias"]
        out[f"{b}.mlp.W_in"] = sd[f"{b}.mlp.in.weight"].T.contiguous()
        out[f"{b}.mlp.b_in"] = sd[f"{b}.mlp.in.bias"]
        out[f"{b}.mlp.W_out"] = sd[f"{b}.mlp.out.weight"].T.contiguous()
        out[f"{b}.mlp.b_out"] = sd[f"{b}.mlp.out.bias"]
    if "ln_final.weight" in sd:
        out["ln_final.w"], out["ln_final.b"] = sd["ln_final.weight"], sd["ln_final.bias"]
    out["unembed.W_U"] = sd["unembed.weight"].T.contiguous()
    out["unembed.b_U"] = sd["unembed.bias"]
    return {k: out[k] for k in param_shapes(cfg)}


def init_params(cfg: ModelConfig) -> Params:
    """Fresh weights from TransformerLens's own seeded initialisation (``cfg.seed``)."""
    return params_from_tl(_boot(cfg), cfg)


def check_params(params: Params, cfg: ModelConfig, source: str = "params"):
    """Fail with the offending key when ``params`` does not fit ``cfg``."""
    expected = param_shapes(cfg)
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing or extra:
        raise ValueError(f"{source}: keys do not match the model config "
                         f"(missing {missing[:5]}, unexpected {extra[:5]})")
    for k, shape in expected.items():
        if tuple(params[k].shape) != shape:
            raise ValueError(f"{source}: {k!r} has shape {tuple(params[k].shape)}, "
                             f"the config says {shape}")


def infer_config(params: Params, act_fn: str = "relu") -> ModelConfig:
    """The resolved ``ModelConfig`` that a HookedTransformer-format dict's shapes imply
    (``act_fn`` leaves no trace in the weights: pass it)."""
    import re

    n_layers = 1 + max(int(m.group(1)) for k in params if (m := re.match(r"blocks\.(\d+)\.", k)))
    n_heads, d_model, d_head = params["blocks.0.attn.W_Q"].shape
    return ModelConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head,
        d_mlp=params["blocks.0.mlp.W_in"].shape[1], act_fn=act_fn,
        normalization="LN" if "blocks.0.ln1.w" in params else "none",
        d_vocab=params["embed.W_E"].shape[0], d_vocab_out=params["unembed.W_U"].shape[1],
        n_ctx=params["pos_embed.W_pos"].shape[0])


def n_params(cfg: ModelConfig) -> int:
    return sum(math.prod(s) for s in param_shapes(cfg).values())


def config_from_tl(tl_cfg) -> ModelConfig:
    """The ``ModelConfig`` of a TransformerLens config (the inverse of ``tl_config``)."""
    return ModelConfig(n_layers=tl_cfg.n_layers, d_model=tl_cfg.d_model, n_heads=tl_cfg.n_heads,
                       d_head=tl_cfg.d_head, d_mlp=tl_cfg.d_mlp, act_fn=tl_cfg.act_fn,
                       normalization=tl_cfg.normalization_type or "none", d_vocab=tl_cfg.d_vocab,
                       d_vocab_out=tl_cfg.d_vocab_out, n_ctx=tl_cfg.n_ctx)


def is_tl_model(model) -> bool:
    """Whether ``model`` is a TransformerLens model (anything with a TL config and weights)."""
    return hasattr(model, "cfg") and hasattr(model, "state_dict") and hasattr(model, "run_with_hooks")


def as_params(model, cfg: ModelConfig | None = None, step: int | None = None) -> tuple[Params, ModelConfig]:
    """``(params, cfg)`` of anything that names one checkpoint -- the one place that does this.

    ``model`` may be a ``Run`` (``step``: which checkpoint, default the last), a TL model
    (``run.model(step)``), a ``(params, cfg)`` pair, or a params dict (its shapes give the
    config; pass ``cfg`` for GELU, which leaves no trace in the weights). A dict is not copied.
    """
    if hasattr(model, "model_cfg") and hasattr(model, "params"):  # a Run (duck-typed: runs imports us)
        return model.params(step), model.model_cfg
    if step is not None:
        raise ValueError("step= only applies to a Run; a model or params dict is one checkpoint")
    if isinstance(model, tuple):
        if len(model) != 2 or not isinstance(model[0], dict):
            raise TypeError("a model given as a tuple must be (params, cfg)")
        params, cfg = model
    elif isinstance(model, dict):
        params, cfg = model, cfg or infer_config(model)
    elif is_tl_model(model):
        cfg = cfg or config_from_tl(model.cfg)
        params = params_from_tl(model, cfg)
    else:
        raise TypeError(f"expected a Run, a TL model, a params dict or (params, cfg), got {type(model).__name__}")
    check_params(params, cfg)
    return {k: v.detach() for k, v in params.items()}, cfg


def as_model(model, cfg: ModelConfig | None = None, step: int | None = None) -> tuple[object, ModelConfig]:
    """``(target, cfg)`` for a measure that runs the model: a TL model stays itself (its own
    forward runs, so hooks attached to it with ``model.add_hook`` take effect); anything else
    ``as_params`` accepts becomes ``(params, cfg)`` for the fast path."""
    if is_tl_model(model) and not isinstance(model, (dict, tuple)):
        if step is not None:
            raise ValueError("step= only applies to a Run; a model or params dict is one checkpoint")
        return model, cfg or config_from_tl(model.cfg)
    params, cfg = as_params(model, cfg, step)
    return (params, cfg), cfg


def run_target(target, tokens: Int[Tensor, "batch pos"], fwd_hooks: Sequence[Hook] = (),
               last_only: bool = False) -> Float[Tensor, "batch pos_out d_vocab_out"]:
    """Logits of an ``as_model`` target with ``fwd_hooks``: the TL model's ``run_with_hooks``
    for a TL model, the fast path for ``(params, cfg)``. ``last_only``: the last position only
    (``[batch, 1, d_vocab_out]``; the fast path then computes the final block there only)."""
    if isinstance(target, tuple):
        params, cfg = target
        tokens = tokens.to(next(iter(params.values())).device)
        if last_only:
            return forward(params, cfg, tokens, fwd_hooks)[:, None]
        return run_with_hooks(params, cfg, tokens, fwd_hooks)
    tokens = tokens.to(next(target.parameters()).device)
    logits = target.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))
    return logits[:, -1:] if last_only else logits


def layer_index(cfg: ModelConfig, layer: int | None = None) -> int:
    """A layer argument as an index: None is the last layer, negatives count from the end
    (-1 .. -n_layers); anything else out of range fails instead of wrapping."""
    if layer is None:
        return cfg.n_layers - 1
    if not -cfg.n_layers <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} out of range for a {cfg.n_layers}-layer model "
                         f"(0..{cfg.n_layers - 1}, or -1..-{cfg.n_layers})")
    return layer % cfg.n_layers


# --- hook names ---------------------------------------------------------------------------

# The hook points of the TL model (a TransformerBridge in compatibility mode) for the models
# mechgrok builds, in the order its run_with_cache lists them. Several are aliases of one
# HookPoint (``hook_embed`` and ``embed.hook_out``): a hook on either name acts at the same
# point. ``_ALIASES`` maps each second name onto the one the fast path computes.
_ALIASES = {
    "embed.hook_out": "hook_embed", "pos_embed.hook_out": "hook_pos_embed", "hook_unembed": "unembed.hook_out",
    "hook_in": "hook_resid_pre", "hook_out": "hook_resid_post", "ln2.hook_in": "hook_resid_mid",
    "attn.hook_out": "hook_attn_out", "mlp.hook_out": "hook_mlp_out", "attn.q.hook_out": "attn.hook_q",
    "attn.k.hook_out": "attn.hook_k", "attn.v.hook_out": "attn.hook_v", "attn.o.hook_in": "attn.hook_z",
    "mlp.in.hook_out": "mlp.hook_pre", "mlp.out.hook_in": "mlp.hook_post",
}
_BLOCK_LN = ("hook_in", "hook_scale", "hook_normalized", "hook_out")
# Hook points the TL model has but gates off for these models (use_split_qkv_input,
# use_attn_result, use_hook_mlp_in are False): run_with_cache never lists them and
# run_with_hooks refuses them; the fast path does the same.
_GATED = ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in", "attn.hook_attn_in",
          "attn.hook_q_input", "attn.hook_k_input", "attn.hook_v_input", "attn.hook_result",
          "attn.hook_hidden_states")


def _ln_names(prefix: str, ln: bool) -> list[str]:
    return [f"{prefix}.{h}" for h in (_BLOCK_LN if ln else ("hook_in", "hook_out"))]


@functools.lru_cache(maxsize=64)
def _hook_names(n_layers: int, ln: bool) -> tuple[str, ...]:
    names = ["embed.hook_in", "hook_embed", "embed.hook_out", "pos_embed.hook_in", "hook_pos_embed",
             "pos_embed.hook_out"]
    for layer in range(n_layers):
        b = f"blocks.{layer}"
        names += [f"{b}.hook_in", f"{b}.hook_resid_pre", *_ln_names(f"{b}.ln1", ln), f"{b}.attn.hook_in"]
        for x in "qkv":
            names += [f"{b}.attn.{x}.hook_in", f"{b}.attn.hook_{x}", f"{b}.attn.{x}.hook_out"]
        names += [f"{b}.attn.hook_pattern", f"{b}.attn.hook_z", f"{b}.attn.o.hook_in", f"{b}.attn.o.hook_out",
                  f"{b}.hook_attn_out", f"{b}.attn.hook_out", f"{b}.attn.hook_attn_scores", f"{b}.hook_resid_mid",
                  *_ln_names(f"{b}.ln2", ln), f"{b}.mlp.hook_in", f"{b}.mlp.in.hook_in", f"{b}.mlp.hook_pre",
                  f"{b}.mlp.in.hook_out", f"{b}.mlp.hook_post", f"{b}.mlp.out.hook_in", f"{b}.mlp.out.hook_out",
                  f"{b}.hook_mlp_out", f"{b}.mlp.hook_out", f"{b}.hook_out", f"{b}.hook_resid_post"]
    names += [*_ln_names("ln_final", ln), "unembed.hook_in", "hook_unembed", "unembed.hook_out"]
    return tuple(names)


def hook_names(cfg: ModelConfig) -> tuple[str, ...]:
    """Every hook name the TL model's ``run_with_cache`` lists for ``cfg``, in its order
    (aliases included: ``hook_embed`` and ``embed.hook_out`` name one hook point)."""
    return _hook_names(cfg.n_layers, cfg.normalization == "LN")


def _canonical_name(name: str) -> str:
    """The name the fast path computes a hook point under (aliases mapped onto it)."""
    if name.startswith("blocks."):
        _, layer, rest = name.split(".", 2)
        return f"blocks.{layer}.{_ALIASES.get(rest, rest)}"
    return _ALIASES.get(name, name)


def _check_hook_name(name: str, cfg: ModelConfig) -> str:
    if name in hook_names(cfg):
        return name
    rest = name.split(".", 2)[2] if name.startswith("blocks.") and name.count(".") >= 2 else name
    if rest in _GATED:
        raise ValueError(f"hook {name!r} is gated off in the TL model of this config (use_split_qkv_input, "
                         f"use_attn_result and use_hook_mlp_in are False) and the fast path does not compute it")
    raise ValueError(f"no hook point {name!r} on a {cfg.n_layers}-layer model "
                     f"(normalization {cfg.normalization}); mechgrok.model.hook_names(cfg) lists them")


# Shorthands for where an intervention or a progress measure acts, each mapped onto a TL hook.
HOOK_POINTS = choices.HOOK_POINTS
_WHERE_FORMS = ("a TL hook name ('blocks.0.mlp.hook_post', 'hook_embed', 'unembed.hook_out'), "
                "a get_act_name shorthand (('post', 0), 'post0', or 'post' with layer=0) "
                f"or one of {HOOK_POINTS}")


def hook_name(where, layer: int | None = None, cfg: ModelConfig | None = None) -> str:
    """The TL hook name that ``where`` means -- the one resolver every ``where=`` goes through.

    ``where`` may be a TL hook name (``"blocks.0.mlp.hook_post"``, ``"hook_embed"``,
    ``"unembed.hook_out"``; returned as it is), a ``transformer_lens.utilities.get_act_name``
    shorthand (``("post", 0)``, ``"post0"``, or ``"post"`` with ``layer=0``; negative layers
    count from the end with ``cfg``), or a mechgrok shorthand: ``"embed"`` -> ``hook_embed``,
    ``"neurons"`` -> ``blocks.{layer}.mlp.hook_post`` (default the last layer, the first without
    ``cfg``), ``"logits"`` -> ``unembed.hook_out``. ``layer`` only applies to shorthands. With
    ``cfg`` the name must be a hook point of that model (``hook_names(cfg)``)."""
    from transformer_lens.utilities import get_act_name

    def idx(layer):
        if cfg is not None:
            return layer_index(cfg, layer)
        if layer is not None and layer < 0:
            raise ValueError("a negative layer needs the model config (cfg=)")
        return 0 if layer is None else layer

    if isinstance(where, tuple) and 1 <= len(where) <= 3 and isinstance(where[0], str):
        parts = list(where)
        if len(parts) > 1 and parts[1] is not None:
            if isinstance(parts[1], bool) or not isinstance(parts[1], int):
                raise ValueError(f"where must be {_WHERE_FORMS}; got {where!r}")
            parts[1] = idx(parts[1])
        name = get_act_name(*parts)
    elif not isinstance(where, str) or not where:
        raise ValueError(f"where must be {_WHERE_FORMS}; got {where!r}")
    elif where == "neurons":
        name = f"blocks.{idx(layer)}.mlp.hook_post"
    elif where in ("embed", "logits"):
        name = {"embed": "hook_embed", "logits": "unembed.hook_out"}[where]
    elif "." in where or where.startswith("hook_"):
        name = where
    else:
        name = get_act_name(where, None if layer is None else idx(layer))
    known = hook_names(cfg) if cfg is not None else _hook_names(1, True)
    generic = name if cfg is not None else re.sub(r"^blocks\.\d+\.", "blocks.0.", name)
    if generic not in known:
        rest = name.split(".", 2)[-1] if name.startswith("blocks.") else name
        if cfg is not None and rest in _GATED:
            _check_hook_name(name, cfg)
        raise ValueError(f"where must be {_WHERE_FORMS}; got {where!r} (no hook point {name!r}"
                         + (f" on this {cfg.n_layers}-layer model)" if cfg is not None else ")"))
    return name


# --- the functional fast path -------------------------------------------------------------


class _HookName:
    """Stands in for a TL HookPoint so hook functions can read ``hook.name``."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


def activation_fn(cfg: ModelConfig) -> Callable[[Tensor], Tensor]:
    return F.relu if cfg.act_fn == "relu" else F.gelu


def attn_scale(cfg: ModelConfig) -> float:
    """What attention scores are divided by (TL: sqrt(d_head))."""
    return math.sqrt(cfg.d_head)


def token_position_table(params: Params, n_pos: int) -> Float[Tensor, "d_vocab pos d_model"]:
    """Embedding + positional embedding of every (token, position) pair: block 0's input for
    any sequence is a gather from this table (the fast path and the grid engine both use it)."""
    return params["embed.W_E"][:, None] + params["pos_embed.W_pos"][None, :n_pos]


_LN_EPS = 1e-5


def _layer_norm(x: Tensor, params: Params, prefix: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], params[f"{prefix}.w"], params[f"{prefix}.b"], eps=_LN_EPS)


def _affine(x: Float[Tensor, "... d_in"], W: Float[Tensor, "d_in d_out"], b: Float[Tensor, " d_out"]):
    # addmm fuses the bias into the matmul (one pass over the output instead of two)
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).view(*x.shape[:-1], W.shape[-1])


def _qkv_weights(params: Params, b: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Block ``b``'s query and key/value projections with the heads flattened (``[d_model,
    n_heads * d_head]``; keys and values side by side): one matmul per projection is far cheaper
    on CPU than per-head batched matmuls for these tiny sequences."""
    W_Q = einops.rearrange(params[f"{b}.attn.W_Q"], "h d k -> d (h k)")
    b_Q = params[f"{b}.attn.b_Q"].flatten()
    W_KV = einops.rearrange(torch.stack([params[f"{b}.attn.W_K"], params[f"{b}.attn.W_V"]]), "two h d k -> d (two h k)")
    b_KV = torch.stack([params[f"{b}.attn.b_K"], params[f"{b}.attn.b_V"]]).flatten()
    return W_Q, b_Q, W_KV, b_KV


def _scores(q: Float[Tensor, "batch head q d_head"], k: Float[Tensor, "batch head k d_head"]
            ) -> Float[Tensor, "batch head q k"]:
    if k.shape[-2] <= _SMALL_CTX:  # broadcast-and-sum beats bmm on thousands of 3x3 problems
        return (q[:, :, :, None, :] * k[:, :, None, :, :]).sum(-1)
    return q @ k.transpose(-1, -2)


def _mix(pattern: Float[Tensor, "batch head q k"], v: Float[Tensor, "batch head k d_head"]
         ) -> Float[Tensor, "batch head q d_head"]:
    if v.shape[-2] <= _SMALL_CTX:
        return (pattern[..., None] * v[:, :, None, :, :]).sum(-2)
    return pattern @ v


def last_position_hook(fn: Callable) -> Callable:
    """Mark a hook function as reading and writing only the last position (``act[:, -1]``),
    whatever the length of the position axis it is given. The fast path may then compute the
    final block at the last position only; unmarked hooks always see TL's full shapes."""
    fn.last_position_only = True
    return fn


def _final_block_point(name: str, cfg: ModelConfig) -> bool:
    return _canonical_name(name).startswith((f"blocks.{cfg.n_layers - 1}.", "ln_final", "unembed"))


NamesFilter = str | Sequence[str] | Callable[[str], bool] | None


def _cache_names(cfg: ModelConfig, names_filter: NamesFilter) -> list[str]:
    """The names ``run_with_cache`` stores, as TL's ``names_filter`` selects them: None is every
    hook point; a name (or a list) is that hook point under each of its names; a callable
    selects by name."""
    every = hook_names(cfg)
    if names_filter is None:
        return list(every)
    if callable(names_filter) and not isinstance(names_filter, str):
        return [n for n in every if names_filter(n)]
    requested = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    points = {_canonical_name(_check_hook_name(n, cfg)) for n in requested}
    return [n for n in every if _canonical_name(n) in points]


def _resolve_hooks(cfg: ModelConfig, fwd_hooks: Sequence[Hook]) -> list[Hook]:
    """``fwd_hooks`` on the names the fast path computes; a callable name (TL: a name filter)
    becomes one hook per hook point it selects."""
    out = []
    for name, fn in fwd_hooks:
        if callable(name) and not isinstance(name, str):
            seen = []
            for n in hook_names(cfg):
                if name(n) and _canonical_name(n) not in seen:
                    seen.append(_canonical_name(n))
            out += [(n, fn) for n in seen]
        else:
            out.append((_canonical_name(_check_hook_name(name, cfg)), fn))
    return out


def run_with_hooks(
    params: Params,
    cfg: ModelConfig,
    tokens: Int[Tensor, "batch pos"],
    fwd_hooks: Sequence[Hook] = (),
) -> Float[Tensor, "batch pos d_vocab_out"]:
    """Functional forward with TL hook names and TL's shapes, like the TL model's
    ``run_with_hooks``: logits ``[batch, pos, d_vocab_out]``. Every hooked activation is shaped
    as in the TL model (``blocks.0.mlp.hook_post``: ``[batch, pos, d_mlp]``), so a hook written
    for the TL model runs here unchanged. Hook names are those of ``hook_names(cfg)`` (aliases
    act at the same point) or a callable name filter. ``forward`` is the cheaper call when only
    the last position's logits are needed; ``run_with_cache`` also returns activations."""
    return _run(params, cfg, tokens, fwd_hooks, last_only=False)[0]


def run_with_cache(
    params: Params,
    cfg: ModelConfig,
    tokens: Int[Tensor, "batch pos"],
    names_filter: NamesFilter = None,
    fwd_hooks: Sequence[Hook] = (),
) -> tuple[Float[Tensor, "batch pos d_vocab_out"], object]:
    """The TL model's ``run_with_cache`` on the fast path: ``(logits, cache)``, logits
    ``[batch, pos, d_vocab_out]`` and ``cache`` a ``transformer_lens.ActivationCache``
    (``cache["post", 0]``, ``cache.accumulated_resid()``, ``cache.decompose_resid()``).

    ``names_filter`` as in TL: None (every hook point in ``hook_names(cfg)``), a name, a list
    of names, or a callable ``name -> bool``. ``fwd_hooks`` run first; the cache holds what they
    leave. Activations are detached, as TL's are. Every value equals the TL model's cache but
    one: ``blocks.L.attn.hook_attn_scores`` holds HookedTransformer's scores (scaled, masked
    to -inf above the diagonal, before the softmax), where the TL 4 bridge stores the pattern
    again (and discards edits there); a hook editing the scores here changes the pattern.

    The cache's model (what ``apply_ln``, ``logit_attrs`` and head or neuron results read) is
    the TL model of ``params``, built the first time a cache method needs more than its config.
    """
    from transformer_lens import ActivationCache

    names = _cache_names(cfg, names_filter)
    logits, computed = _run(params, cfg, tokens, fwd_hooks, {_canonical_name(n) for n in names}, last_only=False)
    cache = {n: computed[_canonical_name(n)].detach() for n in names}
    return logits, ActivationCache(cache, _CacheModel(params, cfg))


class _CacheModel:
    """What an ``ActivationCache`` of the fast path holds as its model: the TL config at once
    (indexing, ``accumulated_resid`` and ``decompose_resid`` read only that), and for anything
    else the TL model of the same weights, built on first use."""

    def __init__(self, params: Params, cfg: ModelConfig):
        self._params, self._cfg, self._model = params, cfg, None
        self.cfg = tl_config(cfg)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._model is None:
            device = next(iter(self._params.values())).device
            self._model = to_tl_model(self._params, self._cfg, device=device)
        return getattr(self._model, name)


def _can_skip_positions(cfg: ModelConfig, fwd_hooks: Sequence[Hook]) -> bool:
    # The final block may run at the last position only when no hook there could tell.
    return all(getattr(fn, "last_position_only", False) for n, fn in _resolve_hooks(cfg, fwd_hooks)
               if _final_block_point(n, cfg))


# Hook points the block-0 token table never materialises: hooking or caching one of them
# runs the plain computation instead.
_TABLE_POINTS = frozenset(
    ["embed.hook_in", "hook_embed", "pos_embed.hook_in", "hook_pos_embed", "blocks.0.hook_resid_pre",
     "blocks.0.attn.hook_in"] + _ln_names("blocks.0.ln1", True)
    + [f"blocks.0.attn.{x}.hook_in" for x in "qkv"] + [f"blocks.0.attn.hook_{x}" for x in "qkv"])


def _run(
    params: Params,
    cfg: ModelConfig,
    tokens: Int[Tensor, "batch pos"],
    fwd_hooks: Sequence[Hook] = (),
    cache_names: Iterable[str] = (),
    last_only: bool = True,
) -> tuple[Float[Tensor, "batch pos_out d_vocab_out"], dict[str, Tensor]]:
    """The forward itself. ``cache_names``: hook points to return, by the names the fast path
    computes them under (``_canonical_name``). With ``last_only`` the final block computes its
    attention query, MLP, unembedding and everything downstream at the last position only:
    those activations have a position axis of length 1. Earlier blocks always see every
    position. Pure in ``params`` (no in-place writes), so ``torch.func.vmap`` can map it over
    stacked checkpoints.
    """
    hooks: dict[str, list[Callable]] = {}
    for name, fn in _resolve_hooks(cfg, fwd_hooks):
        hooks.setdefault(name, []).append(fn)
    wanted = set(cache_names)
    cache: dict[str, Tensor] = {}
    touched = set(hooks) | wanted

    def hook_point(name: str, x: Tensor) -> Tensor:
        for fn in hooks.get(name, ()):
            y = fn(x, _HookName(name))
            x = x if y is None else y
        if name in wanted:
            cache[name] = x
        return x

    ln = cfg.normalization == "LN"

    def norm(x: Tensor, prefix: str, fire_in: bool = True) -> Tensor:
        if fire_in:
            x = hook_point(f"{prefix}.hook_in", x)
        if ln:
            if {f"{prefix}.hook_scale", f"{prefix}.hook_normalized"} & touched:
                xc = x - x.mean(-1, keepdim=True)
                scale = hook_point(f"{prefix}.hook_scale", (xc.pow(2).mean(-1, keepdim=True) + _LN_EPS).sqrt())
                x = hook_point(f"{prefix}.hook_normalized", xc / scale) * params[f"{prefix}.w"] + params[f"{prefix}.b"]
            else:
                x = _layer_norm(x, params, prefix)
        return hook_point(f"{prefix}.hook_out", x)

    if not touched and last_only and _position0_shortcut_pays(cfg, tokens):
        return _run_position0_per_token(params, cfg, tokens), cache
    if not touched and last_only and _score_table_pays(cfg, tokens):
        return _run_one_block_score_table(params, cfg, tokens), cache
    h, n, dk = cfg.n_heads, tokens.shape[1], cfg.d_head
    act = activation_fn(cfg)
    # Block 0 up to attention sees each token through (token id, position) alone, so its
    # residual, LayerNorm, queries, keys and values can be computed once per (token, position)
    # pair (d_vocab * n_ctx rows) and gathered, instead of once per example. Skipped when the
    # caller hooks or caches the activations this shortcut never materialises.
    use_token_table = not (_TABLE_POINTS & touched)
    if use_token_table:
        pair = tokens * n + torch.arange(n, device=tokens.device)  # row of (token, position)
        x_table = einops.rearrange(token_position_table(params, n), "v p d -> (v p) d")
    else:
        tok = hook_point("embed.hook_in", tokens)
        pos = hook_point("pos_embed.hook_in", torch.arange(n, device=tokens.device).expand(tokens.shape[0], n))
        x = hook_point("hook_embed", params["embed.W_E"][tok]) + hook_point("hook_pos_embed", params["pos_embed.W_pos"][pos])
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        last = last_only and layer == cfg.n_layers - 1
        W_Q, b_Q, W_KV, b_KV = _qkv_weights(params, b)
        if layer == 0 and use_token_table:
            xn_table = _layer_norm(x_table, params, f"{b}.ln1") if ln else x_table
            kv = F.embedding(pair, _affine(xn_table, W_KV, b_KV))
            q = F.embedding(pair[:, -1:] if last else pair, _affine(xn_table, W_Q, b_Q))
            x = F.embedding(pair[:, -1:] if last else pair, x_table)
        else:
            x = hook_point(f"{b}.hook_resid_pre", x)
            attn_in = hook_point(f"{b}.attn.hook_in", norm(x, f"{b}.ln1"))
            q_in = hook_point(f"{b}.attn.q.hook_in", attn_in[:, -1:] if last else attn_in)
            k_in = hook_point(f"{b}.attn.k.hook_in", attn_in)
            v_in = hook_point(f"{b}.attn.v.hook_in", attn_in)
            if k_in is v_in:  # keys and values share one matmul
                kv = _affine(k_in, W_KV, b_KV)
            else:
                kv = torch.cat([_affine(k_in, W_KV[:, :h * dk], b_KV[:h * dk]),
                                _affine(v_in, W_KV[:, h * dk:], b_KV[h * dk:])], dim=-1)
            q = _affine(q_in, W_Q, b_Q)
            x = x[:, -1:] if last else x
        q = hook_point(f"{b}.attn.hook_q", q.unflatten(-1, (h, dk))).transpose(1, 2)  # [batch head q d_head]
        k = hook_point(f"{b}.attn.hook_k", kv[..., :h * dk].unflatten(-1, (h, dk))).transpose(1, 2)
        v = hook_point(f"{b}.attn.hook_v", kv[..., h * dk:].unflatten(-1, (h, dk))).transpose(1, 2)
        scores = _scores(q, k) / attn_scale(cfg)
        if not last:  # the last query sees every key, so only full-sequence queries need a mask
            mask = torch.ones(n, n, dtype=torch.bool, device=tokens.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        scores = hook_point(f"{b}.attn.hook_attn_scores", scores)
        pattern = hook_point(f"{b}.attn.hook_pattern", scores.softmax(-1))
        z = _mix(pattern, v)  # [batch head q d_head]
        z = hook_point(f"{b}.attn.hook_z", z.transpose(1, 2)).flatten(-2)
        attn_out = _affine(z, einops.rearrange(params[f"{b}.attn.W_O"], "h k d -> (h k) d"), params[f"{b}.attn.b_O"])
        x = x + hook_point(f"{b}.hook_attn_out", hook_point(f"{b}.attn.o.hook_out", attn_out))
        # As on the TL 4 bridge, hook_resid_mid is the MLP's input (ln2.hook_in): an edit there
        # reaches the MLP, while the skip connection carries the unedited residual.
        mid = hook_point(f"{b}.hook_resid_mid", x)
        mlp_in = hook_point(f"{b}.mlp.in.hook_in", hook_point(f"{b}.mlp.hook_in", norm(mid, f"{b}.ln2", fire_in=False)))
        pre = hook_point(f"{b}.mlp.hook_pre", _affine(mlp_in, params[f"{b}.mlp.W_in"], params[f"{b}.mlp.b_in"]))
        post = hook_point(f"{b}.mlp.hook_post", act(pre))
        mlp_out = hook_point(f"{b}.mlp.out.hook_out", _affine(post, params[f"{b}.mlp.W_out"], params[f"{b}.mlp.b_out"]))
        x = x + hook_point(f"{b}.hook_mlp_out", mlp_out)
        x = hook_point(f"{b}.hook_resid_post", x)
    x = hook_point("unembed.hook_in", norm(x, "ln_final"))
    logits = hook_point("unembed.hook_out", _affine(x, params["unembed.W_U"], params["unembed.b_U"]))
    return logits, cache

def _position0_shortcut_pays(cfg: ModelConfig, tokens: Int[Tensor, "batch pos"]) -> bool:
    # Position 0 per token id: d_vocab rows instead of one per example, worth it when the batch
    # has more examples than the vocabulary has tokens and some block before the last exists.
    return cfg.n_layers > 1 and tokens.shape[1] > 1 and cfg.d_vocab < tokens.shape[0]


def _run_position0_per_token(params: Params, cfg: ModelConfig, tokens: Int[Tensor, "batch pos"]
                             ) -> Float[Tensor, "batch 1 d_vocab_out"]:
    """``_run`` without hooks at the last position only, computing position 0 once per token id.

    With causal attention, position 0 attends to itself alone (its pattern is exactly 1), so
    its residual stream depends on the first token only, through every block. The blocks before
    the last compute it for each of the d_vocab token ids (``rows[:d_vocab]``) rather than for
    each example, and gather it where later positions attend to it; every row-wise operation
    (LayerNorm, projections, W_O, MLP) runs once over the stacked rows ``[d_vocab + batch *
    (pos - 1), d_model]``. The final block runs at the last position only, as in ``_run``.
    """
    batch, n = tokens.shape
    V, h, dk, d = cfg.d_vocab, cfg.n_heads, cfg.d_head, cfg.d_model
    ln = cfg.normalization == "LN"
    act = activation_fn(cfg)
    tok0 = tokens[:, 0]
    pair = tokens * n + torch.arange(n, device=tokens.device)  # row of (token, position) in the table
    table = token_position_table(params, n)
    x_table = einops.rearrange(table, "v p d -> (v p) d")
    # queries at positions 1 .. n-1 see keys 0 .. themselves
    mask = torch.ones(n, n, dtype=torch.bool, device=tokens.device).triu(1)[1:]
    rows = torch.cat([table[:, 0], F.embedding(pair[:, 1:], x_table).flatten(0, 1)])
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        final = layer == cfg.n_layers - 1
        W_Q, b_Q, W_KV, b_KV = _qkv_weights(params, b)
        if layer == 0:  # block 0's queries, keys and values from the (token, position) table, as in _run
            xn_table = _layer_norm(x_table, params, f"{b}.ln1") if ln else x_table
            kv_table = _affine(xn_table, W_KV, b_KV)
            kv0 = kv_table.view(V, n, -1)[:, 0]
            kv = F.embedding(pair, kv_table)
            q = F.embedding(pair[:, 1:], _affine(xn_table, W_Q, b_Q))
        else:
            xn = _layer_norm(rows, params, f"{b}.ln1") if ln else rows
            kv_rows = _affine(xn, W_KV, b_KV)
            kv0 = kv_rows[:V]
            kv = torch.cat([F.embedding(tok0, kv0)[:, None], kv_rows[V:].view(batch, n - 1, -1)], 1)
            q_in = xn[V:].view(batch, n - 1, d)
            q = _affine(q_in[:, -1:] if final else q_in, W_Q, b_Q)
        q = q.unflatten(-1, (h, dk)).transpose(1, 2)  # [batch head q d_head]
        k = kv[..., :h * dk].unflatten(-1, (h, dk)).transpose(1, 2)
        v = kv[..., h * dk:].unflatten(-1, (h, dk)).transpose(1, 2)
        scores = _scores(q, k) / attn_scale(cfg)
        if not final:
            scores = scores.masked_fill(mask, float("-inf"))
        z = _mix(scores.softmax(-1), v).transpose(1, 2).flatten(-2)  # [batch q (head d_head)]
        W_O = einops.rearrange(params[f"{b}.attn.W_O"], "h k d -> (h k) d")
        if final:
            x = rows[V:].view(batch, n - 1, d)[:, -1:]
            x = x + _affine(z, W_O, params[f"{b}.attn.b_O"])
        else:  # position 0's output is its own value (pattern 1)
            x = rows + _affine(torch.cat([kv0[:, h * dk:], z.flatten(0, 1)]), W_O, params[f"{b}.attn.b_O"])
        mlp_in = _layer_norm(x, params, f"{b}.ln2") if ln else x
        post = act(_affine(mlp_in, params[f"{b}.mlp.W_in"], params[f"{b}.mlp.b_in"]))
        x = x + _affine(post, params[f"{b}.mlp.W_out"], params[f"{b}.mlp.b_out"])
        if not final:
            rows = x
    x = _layer_norm(x, params, "ln_final") if ln else x
    return _affine(x, params["unembed.W_U"], params["unembed.b_U"])


def _score_table_pays(cfg: ModelConfig, tokens: Int[Tensor, "batch pos"]) -> bool:
    # One block, queried at the last position: its scores come from a table of d_vocab query
    # tokens x (d_vocab * pos) (token, position) keys per head. Building it is one small bmm
    # (a few MFLOP on the nanda shapes) and its gradient a gather's; the per-example scores
    # it replaces are passes over [batch, pos, head, d_head] forward and backward, so it pays
    # once the batch has more examples than there are (token, position) pairs.
    return cfg.n_layers == 1 and tokens.shape[1] > 1 and tokens.shape[0] > cfg.d_vocab * tokens.shape[1]


def _run_one_block_score_table(params: Params, cfg: ModelConfig, tokens: Int[Tensor, "batch pos"]
                               ) -> Float[Tensor, "batch 1 d_vocab_out"]:
    """``_run`` of a one-block model without hooks at the last position only, with the
    attention scores gathered from a per-head table.

    Block 0's queries and keys depend on (token, position) pairs alone, so every score the last
    position can see is an entry of ``q_table[h] @ k_table[h].T`` (``[d_vocab, d_vocab * pos]``
    per head: query tokens at the last position against every (token, position) row); each
    example's scores are gathered from it instead of being computed from per-example keys.
    Values are gathered from their own table (not sliced out of a joint key/value gather, whose
    backward zero-fills and copies the whole ``[batch, pos, 2 * head * d_head]`` gradient). The
    scores differ from ``_run``'s per-example sums by float32 rounding only.
    """
    batch, n = tokens.shape
    V, h, dk = cfg.d_vocab, cfg.n_heads, cfg.d_head
    ln = cfg.normalization == "LN"
    b = "blocks.0"
    pair = tokens * n + torch.arange(n, device=tokens.device)  # row of (token, position) in the table
    x_table = einops.rearrange(token_position_table(params, n), "v p d -> (v p) d")
    xn_table = _layer_norm(x_table, params, f"{b}.ln1") if ln else x_table
    W_Q, b_Q, W_KV, b_KV = _qkv_weights(params, b)
    kv_table = _affine(xn_table, W_KV, b_KV)  # [(v p), 2 * head * d_head]
    k_table = kv_table[:, :h * dk].unflatten(-1, (h, dk))
    v_table = kv_table[:, h * dk:].contiguous()
    q_table = _affine(xn_table.view(V, n, -1)[:, -1], W_Q, b_Q).unflatten(-1, (h, dk))  # last position
    score_table = einops.einsum(q_table, k_table, "q h e, r h e -> q r h") / attn_scale(cfg)
    # example i, key position j: row (query token of i) * (V * n) + (token, position) row of key j
    rows = tokens[:, -1:] * (V * n) + pair
    scores = F.embedding(rows, score_table.reshape(V * V * n, h))  # [batch pos head]
    pattern = scores.softmax(1)  # the last position attends to every position: no mask
    v = F.embedding(pair, v_table).unflatten(-1, (h, dk))  # [batch pos head d_head]
    z = (pattern[..., None] * v).sum(1).flatten(1)  # [batch (head d_head)]
    x = F.embedding(pair[:, -1], x_table)
    x = x + _affine(z, einops.rearrange(params[f"{b}.attn.W_O"], "h k d -> (h k) d"), params[f"{b}.attn.b_O"])
    mlp_in = _layer_norm(x, params, f"{b}.ln2") if ln else x
    post = activation_fn(cfg)(_affine(mlp_in, params[f"{b}.mlp.W_in"], params[f"{b}.mlp.b_in"]))
    x = x + _affine(post, params[f"{b}.mlp.W_out"], params[f"{b}.mlp.b_out"])
    x = _layer_norm(x, params, "ln_final") if ln else x
    return _affine(x, params["unembed.W_U"], params["unembed.b_U"])[:, None]


def forward(params: Params, cfg: ModelConfig, tokens: Int[Tensor, "batch pos"],
            fwd_hooks: Sequence[Hook] = ()) -> Float[Tensor, "batch d_vocab_out"]:
    """Logits at the last position: everything the loss needs, nothing more. Hooks see TL's
    shapes unless they are marked ``last_position_hook``."""
    last_only = _can_skip_positions(cfg, fwd_hooks)
    return _run(params, cfg, tokens, fwd_hooks, last_only=last_only)[0][:, -1]


def last_position_acts(params: Params, cfg: ModelConfig, tokens: Int[Tensor, "batch pos"], name: str,
                       fwd_hooks: Sequence[Hook] = ()) -> Float[Tensor, "batch d"]:
    """The activation ``name`` at the last position (e.g. every neuron of
    ``blocks.0.mlp.hook_post`` for every example), computing the final block there only."""
    last_only = _can_skip_positions(cfg, fwd_hooks)
    point = _canonical_name(_check_hook_name(name, cfg))
    return _run(params, cfg, tokens, fwd_hooks, cache_names=[point], last_only=last_only)[1][point][:, -1]


# --- the one loss ---------------------------------------------------------------------------


def per_example_loss(logits: Float[Tensor, "batch d_vocab_out"], labels: Int[Tensor, " batch"]
                     ) -> Float[Tensor, " batch"]:
    """Cross-entropy of each example, in float64 as in Nanda et al.: grokked losses reach 1e-7,
    where a float32 log-softmax rounds to zero and hides the cleanup phase. Every loss mechgrok
    reports (training, evaluation, progress measures, interventions) goes through here."""
    return -logits.to(torch.float64).log_softmax(-1).gather(-1, labels[:, None])[:, 0]


def loss_and_accuracy(logits: Float[Tensor, "batch d_vocab_out"], labels: Int[Tensor, " batch"]):
    """Mean cross-entropy (float64, differentiable) and accuracy of a batch."""
    return per_example_loss(logits, labels).mean(), (logits.argmax(-1) == labels).float().mean()


def weight_sq(params: Params, batch_dims: int = 0):
    """Sum of squared weights over every parameter (float64): a float, or with ``batch_dims=1``
    one value per member of stacked parameters (``[N, ...]`` tensors) as a ``[N]`` tensor."""
    total = sum((v.detach().double() ** 2).flatten(batch_dims).sum(-1) for v in params.values())
    return float(total) if batch_dims == 0 else total
