"""A one-block model queried at the last position gathers its attention scores from a per-head
table over (token, position) pairs (``model._run_one_block_score_table``): the path is taken
exactly when it pays and nothing could tell (no hooks, last position only, a batch larger than
the table's key rows), and its logits and gradients equal the per-example computation."""

import pytest
import torch

import mechgrok.model as model_mod
from mechgrok.model import ModelConfig, forward, param_shapes, per_example_loss, run_with_hooks, to_tl_model
from mechgrok.tasks import make_task


def _random_params(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * (0.5 if k.endswith((".w", ".b")) or "b_" in k else 0.3)
            + (1.0 if k.endswith(".w") else 0.0) for k, s in param_shapes(cfg).items()}


def _calls_of_the_table_path(monkeypatch):
    calls, real = [], model_mod._run_one_block_score_table

    def spy(params, cfg, tokens):
        calls.append(tuple(tokens.shape))
        return real(params, cfg, tokens)

    monkeypatch.setattr(model_mod, "_run_one_block_score_table", spy)
    return calls


def _per_example(params, cfg, tokens):
    # a do-nothing hook makes the forward take the per-example path (hooks see TL's shapes)
    return forward(params, cfg, tokens, [("blocks.0.hook_resid_post", lambda act, hook: None)])


def _grads(fn, params, cfg, tokens, labels):
    ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    per_example_loss(fn(ps, cfg, tokens), labels).mean().backward()
    return {k: v.grad for k, v in ps.items()}


@pytest.mark.parametrize("normalization,act_fn", [("none", "relu"), ("LN", "gelu")])
def test_one_block_scores_from_the_table_equal_the_per_example_ones(monkeypatch, normalization, act_fn):
    task = make_task("add", p=17, frac=0.5)
    cfg = ModelConfig(n_layers=1, d_model=32, n_heads=4, d_head=8, d_mlp=64, act_fn=act_fn,
                      normalization=normalization).resolve(task)
    params = _random_params(cfg, seed=1)
    tokens, labels = task.inputs, task.labels  # 289 examples > 18 tokens x 3 positions
    calls = _calls_of_the_table_path(monkeypatch)

    logits = forward(params, cfg, tokens)
    assert calls == [tuple(tokens.shape)]
    reference = _per_example(params, cfg, tokens)
    assert len(calls) == 1  # the hooked forward did not take it
    assert logits.shape == reference.shape == (len(tokens), cfg.d_vocab_out)
    assert (logits - reference).abs().max() <= 1e-5 * max(1.0, reference.abs().max().item())
    assert (logits - to_tl_model(params, cfg)(tokens)[:, -1]).abs().max() <= 1e-4

    ours, ref = _grads(forward, params, cfg, tokens, labels), _grads(_per_example, params, cfg, tokens, labels)
    assert len(calls) == 2 and set(ours) == set(ref) == set(params)
    for k in ref:
        assert ref[k].abs().max() > 0 or k.endswith(("b_Q", "b_K")), k  # every weight gets a gradient
        assert (ours[k] - ref[k]).abs().max() <= 1e-6 * max(1.0, ref[k].abs().max().item()), k


def test_the_table_is_skipped_where_it_does_not_pay_or_could_be_seen(monkeypatch):
    task = make_task("add", p=17, frac=0.5)
    cfg = ModelConfig(n_layers=1, d_model=32, n_heads=4, d_head=8, d_mlp=64).resolve(task)
    params = _random_params(cfg, seed=2)
    tokens = task.inputs
    calls = _calls_of_the_table_path(monkeypatch)
    n_rows = cfg.d_vocab * tokens.shape[1]  # (token, position) rows: 54

    forward(params, cfg, tokens[:n_rows])  # a batch no larger than the table's key rows
    run_with_hooks(params, cfg, tokens)  # every position
    seen = []
    forward(params, cfg, tokens, [("blocks.0.attn.hook_pattern", lambda act, hook: seen.append(act.shape))])
    assert seen == [(len(tokens), cfg.n_heads, 3, 3)]  # the hook saw TL's pattern
    two = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64).resolve(task)
    forward(_random_params(two, seed=2), two, tokens)
    assert calls == []
    forward(params, cfg, tokens[:n_rows + 1])
    assert calls == [(n_rows + 1, 3)]
