"""What README says about TransformerLens, pinned: what works as in TL (hook names, run_with_cache's
ActivationCache, the weight properties) and what does not (no HookedTransformer class in TL 4; the
bridge's state_dict keys), and the TL 3 users' way to a HookedTransformer-keyed state dict."""

import pytest
import torch
from safetensors.torch import load_file

import mechgrok as mg
from mechgrok.runs import checkpoint_path


def test_tl4_has_no_hooked_transformer_class():
    with pytest.raises(ImportError):
        from transformer_lens import HookedTransformer  # noqa: F401


def test_the_bridges_state_dict_has_its_own_keys_and_the_checkpoint_holds_hookedtransformers(tiny_run):
    step = tiny_run.steps[-1]
    model, sd = tiny_run.model(step), tiny_run.params(step)
    bridge_keys = set(model.state_dict())
    assert "embed.weight" in bridge_keys and "embed.W_E" not in bridge_keys
    # the checkpoint file is the HookedTransformer-keyed dict, tensor for tensor
    on_disk = load_file(checkpoint_path(tiny_run.path, step))
    assert set(on_disk) == set(sd) and {"embed.W_E", "blocks.0.attn.W_Q", "blocks.0.mlp.W_in", "unembed.W_U"} <= set(sd)
    assert all(torch.equal(on_disk[k], sd[k]) for k in sd)
    cfg = tiny_run.model_cfg
    assert sd["blocks.0.attn.W_Q"].shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    back = mg.model.params_from_tl(model, cfg)  # README's way back from a bridge
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_hook_names_cache_and_weight_properties_work_as_in_tl(tiny_run):
    model, sd = tiny_run.model(), tiny_run.params()
    assert torch.equal(model.W_E, sd["embed.W_E"]) and torch.equal(model.W_U, sd["unembed.W_U"])
    assert torch.equal(model.blocks[0].mlp.W_out, sd["blocks.0.mlp.W_out"])
    assert torch.equal(model.blocks[0].attn.W_Q, sd["blocks.0.attn.W_Q"])
    tokens = tiny_run.task.inputs[:5]
    logits, cache = model.run_with_cache(tokens)
    assert cache["post", 0].shape == cache["blocks.0.mlp.hook_post"].shape == (5, tokens.shape[1], tiny_run.model_cfg.d_mlp)
    zeroed = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_post", lambda act, hook: act * 0)])
    assert not torch.allclose(zeroed, logits)  # the hook by its HookedTransformer name took effect
