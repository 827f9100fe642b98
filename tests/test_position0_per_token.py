"""The fast forward computes position 0 of the blocks before the last once per token id (with
causal attention it depends on the first token alone): same logits and gradients as the
per-example computation, on fewer rows."""

import pytest
import torch

import mechgrok.model as model_mod
from mechgrok.model import ModelConfig, forward, param_shapes, per_example_loss, to_tl_model
from mechgrok.tasks import make_task


def _random_params(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * (0.5 if k.endswith((".w", ".b")) or "b_" in k else 0.1)
            + (1.0 if k.endswith(".w") else 0.0) for k, s in param_shapes(cfg).items()}


def _rows_seen_by_the_activation(monkeypatch, cfg, params, tokens):
    """The number of rows each MLP activation call gets during one forward."""
    seen, real = [], model_mod.activation_fn(cfg)

    def recording(c):
        def act(x):
            seen.append(x.reshape(-1, x.shape[-1]).shape[0])
            return real(x)
        return act

    monkeypatch.setattr(model_mod, "activation_fn", recording)
    logits = forward(params, cfg, tokens)
    monkeypatch.undo()
    return seen, logits


def _per_example(params, cfg, tokens):
    # a do-nothing hook on block 0 makes the forward take the per-example path (hooks see TL's shapes)
    return forward(params, cfg, tokens, [("blocks.0.hook_resid_post", lambda act, hook: None)])


@pytest.mark.parametrize("n_layers,normalization,act_fn", [(2, "none", "relu"), (3, "LN", "gelu")])
def test_position0_is_computed_per_token_with_the_same_logits_and_gradients(monkeypatch, n_layers, normalization,
                                                                           act_fn):
    task = make_task("add", p=17, frac=0.5)
    cfg = ModelConfig(n_layers=n_layers, d_model=32, n_heads=4, d_head=8, d_mlp=64, act_fn=act_fn,
                      normalization=normalization).resolve(task)
    params = _random_params(cfg, seed=n_layers)
    tokens, labels = task.inputs, task.labels  # 289 examples, 18 token ids
    batch, n = tokens.shape

    seen, logits = _rows_seen_by_the_activation(monkeypatch, cfg, params, tokens)
    # blocks before the last: 18 rows for position 0 + 2 per example; the last: the last position
    assert seen == [cfg.d_vocab + batch * (n - 1)] * (n_layers - 1) + [batch]
    assert (logits - to_tl_model(params, cfg)(tokens)[:, -1]).abs().max() <= 1e-5

    def grads(fn):
        ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        per_example_loss(fn(ps, cfg, tokens), labels).mean().backward()
        return {k: v.grad for k, v in ps.items()}

    ours, reference = grads(forward), grads(_per_example)
    assert set(ours) == set(reference)
    for k in reference:
        assert (ours[k] - reference[k]).abs().max() <= 1e-6 * max(1.0, reference[k].abs().max().item()), k


def test_a_minibatch_smaller_than_the_vocabulary_keeps_the_per_example_rows(monkeypatch):
    task = make_task("add", p=17, frac=0.5)
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64).resolve(task)
    params = _random_params(cfg, seed=0)
    tokens = task.inputs[:16]  # fewer examples than the 18 token ids: per token would cost more
    seen, logits = _rows_seen_by_the_activation(monkeypatch, cfg, params, tokens)
    assert seen == [16 * 3, 16]
    assert torch.equal(logits, _per_example(params, cfg, tokens))
