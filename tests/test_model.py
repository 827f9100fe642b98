import pytest
import torch

from mechgrok.model import (ModelConfig, check_params, init_params, params_from_tl, param_shapes,
                            run_with_cache, run_with_hooks, forward, to_tl_model, n_params)
from mechgrok.tasks import make_task


def _random_params(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    # Random weights at TL's init scale, random biases and LN gains: every term matters.
    return {k: torch.randn(s, generator=g) * (0.5 if k.endswith((".w", ".b")) or "b_" in k else 0.1)
            + (1.0 if k.endswith(".w") else 0.0) for k, s in param_shapes(cfg).items()}


@pytest.mark.parametrize("n_layers", [1, 2, 4])
@pytest.mark.parametrize("normalization", ["none", "LN"])
@pytest.mark.parametrize("act_fn", ["relu", "gelu"])
def test_fast_forward_equals_transformerlens_forward(n_layers, normalization, act_fn):
    task = make_task("add", p=17, frac=0.5)
    cfg = ModelConfig(n_layers=n_layers, d_model=32, n_heads=4, d_head=8, d_mlp=64, act_fn=act_fn,
                      normalization=normalization).resolve(task)
    params = _random_params(cfg, seed=n_layers)
    model = to_tl_model(params, cfg)
    tl_logits = model(task.inputs)
    full = run_with_hooks(params, cfg, task.inputs)
    assert (full - tl_logits).abs().max() <= 1e-5
    assert (forward(params, cfg, task.inputs) - tl_logits[:, -1]).abs().max() <= 1e-5


def test_fast_path_activations_match_the_tl_cache_by_hook_name():
    task = make_task("add", p=13, frac=0.5)
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, normalization="LN").resolve(task)
    params = _random_params(cfg, seed=0)
    _, cache = to_tl_model(params, cfg).run_with_cache(task.inputs)
    names = ["hook_embed", "blocks.0.attn.hook_pattern", "blocks.0.hook_resid_mid", "blocks.1.mlp.hook_post",
             "blocks.1.hook_resid_post"]
    _, ours = run_with_cache(params, cfg, task.inputs, names_filter=names)
    for name in names:
        assert (ours[name] - cache[name]).abs().max() <= 1e-5, name
    # the post-MLP activations of the final block at the last position, in the shape users read
    assert cache["post", 1, "mlp"].shape == (13 * 13, 3, 64)


@pytest.mark.parametrize("n_layers,normalization", [(1, "none"), (2, "LN")])
def test_run_with_cache_of_everything_equals_the_tl_models_own_cache(n_layers, normalization):
    from transformer_lens import ActivationCache

    task = make_task("add", p=13, frac=0.5)
    cfg = ModelConfig(n_layers=n_layers, d_model=32, n_heads=4, d_head=8, d_mlp=64,
                      normalization=normalization).resolve(task)
    params = {k: v.requires_grad_() for k, v in _random_params(cfg, seed=1).items()}
    tl_logits, theirs = to_tl_model(params, cfg).run_with_cache(task.inputs)
    logits, ours = run_with_cache(params, cfg, task.inputs)
    assert isinstance(ours, ActivationCache)
    assert (logits - tl_logits).abs().max() <= 1e-5
    assert list(ours.keys()) == list(theirs.keys())  # every hook name, aliases included, in TL's order
    for name in theirs.keys():
        if name.endswith("hook_attn_scores"):
            # the TL 4 bridge stores the pattern under this name; ours are the scores before it
            assert (ours[name].softmax(-1) - theirs[name]).abs().max() <= 1e-5, name
            continue
        assert ours[name].shape == theirs[name].shape, name
        assert (ours[name].double() - theirs[name].double()).abs().max() <= 1e-5, name
        assert not ours[name].requires_grad
    assert torch.equal(ours["post", -1], ours[f"blocks.{n_layers - 1}.mlp.hook_post"])
    for kw in (dict(), dict(apply_ln=True), dict(incl_mid=True, layer=1), dict(mlp_input=True, layer=0)):
        a, la = ours.accumulated_resid(return_labels=True, **kw)
        b, lb = theirs.accumulated_resid(return_labels=True, **kw)
        assert la == lb and (a - b).abs().max() <= 1e-5, kw
    for kw in (dict(), dict(apply_ln=True), dict(mode="mlp"), dict(layer=n_layers - 1, mlp_input=True)):
        a, la = ours.decompose_resid(return_labels=True, **kw)
        b, lb = theirs.decompose_resid(return_labels=True, **kw)
        assert la == lb and (a - b).abs().max() <= 1e-5, kw


def test_run_with_cache_names_filter_selects_as_tl_does():
    from transformer_lens.utilities import get_act_name

    task = make_task("add", p=11, frac=0.5)
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, normalization="LN").resolve(task)
    params = _random_params(cfg, seed=2)
    tl = to_tl_model(params, cfg)
    for names_filter in ("blocks.0.mlp.hook_post", get_act_name("embed"), ["unembed.hook_out", "blocks.1.hook_resid_mid"],
                         lambda name: name.endswith("hook_scale")):
        _, ours = run_with_cache(params, cfg, task.inputs, names_filter=names_filter)
        _, theirs = tl.run_with_cache(task.inputs, names_filter=names_filter)
        assert sorted(ours.keys()) == sorted(theirs.keys()), names_filter
        for name in theirs.keys():
            assert (ours[name] - theirs[name]).abs().max() <= 1e-5, name
    with pytest.raises(ValueError, match="no hook point 'blocks.0.mlp.hook_nope'"):
        run_with_cache(params, cfg, task.inputs, names_filter="blocks.0.mlp.hook_nope")
    with pytest.raises(ValueError, match="gated off"):
        run_with_hooks(params, cfg, task.inputs, fwd_hooks=[("blocks.0.hook_q_input", lambda x, hook: x)])


def test_a_hook_at_any_hook_point_acts_as_it_does_on_the_tl_model():
    # A hook that rescales (or, for token and position ids, shifts) the activation, at every
    # hook point the TL model lets users edit: same logits, and the cache shows the edit.
    task = make_task("add", p=11, frac=0.5)
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, normalization="LN",
                      act_fn="gelu").resolve(task)
    params = _random_params(cfg, seed=5)
    tl = to_tl_model(params, cfg)
    plain = tl(task.inputs)

    def edit(act, hook):
        if act.dtype == torch.long:  # token or position ids
            return act.flip(1)
        return act * torch.linspace(0.5, 1.5, act.shape[-1])

    from mechgrok.model import hook_names

    for name in hook_names(cfg):
        if name.endswith("hook_attn_scores"):  # read-only on the TL 4 bridge (see run_with_cache)
            continue
        theirs = tl.run_with_hooks(task.inputs, fwd_hooks=[(name, edit)])
        ours = run_with_hooks(params, cfg, task.inputs, fwd_hooks=[(name, edit)])
        assert (theirs - plain).abs().max() > 1e-4, f"{name}: the hook did nothing on the TL model"
        assert (ours - theirs).abs().max() <= 1e-4, name
        assert (forward(params, cfg, task.inputs, [(name, edit)]) - theirs[:, -1]).abs().max() <= 1e-4, name


def test_embedding_table_shortcut_equals_the_plain_computation():
    # The shortcut is taken when nothing hooks the embeddings; a no-op hook there forces the
    # plain path. Both must agree.
    task = make_task("add", p=19, frac=0.5)
    for norm in ("none", "LN"):
        cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, normalization=norm).resolve(task)
        params = _random_params(cfg, seed=3)
        fast = forward(params, cfg, task.inputs)
        plain = forward(params, cfg, task.inputs, fwd_hooks=[("hook_embed", lambda x, hook: x)])
        assert (fast - plain).abs().max() <= 1e-5


def test_fast_path_hooks_use_the_tl_signature_and_can_edit_activations():
    task = make_task("add", p=11, frac=0.5)
    cfg = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32).resolve(task)
    params = init_params(cfg)
    seen = []

    def zero_neurons(act, hook):
        seen.append(hook.name)
        return torch.zeros_like(act)

    name = "blocks.0.mlp.hook_post"
    ours = forward(params, cfg, task.inputs, fwd_hooks=[(name, zero_neurons)])
    theirs = to_tl_model(params, cfg).run_with_hooks(task.inputs, fwd_hooks=[(name, zero_neurons)])[:, -1]
    assert seen == [name, name]
    assert (ours - theirs).abs().max() <= 1e-5
    assert (ours - forward(params, cfg, task.inputs)).abs().max() > 1e-4  # the hook did something


def test_public_fast_path_gives_tl_shapes_so_a_tl_hook_indexing_a_position_runs_unchanged():
    task = make_task("add", p=11, frac=0.5)
    cfg = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32).resolve(task)
    params = init_params(cfg)
    name = "blocks.0.mlp.hook_post"

    def halve_the_equals_position(act, hook):  # written for the TL model: indexes position 2
        act = act.clone()
        act[:, 2] = act[:, 2] * 0.5
        return act

    tl = to_tl_model(params, cfg)
    tl_logits, tl_cache = tl.run_with_cache(task.inputs)
    logits, cache = run_with_cache(params, cfg, task.inputs, names_filter=name)
    assert logits.shape == tl_logits.shape == (121, 3, 11)
    assert cache[name].shape == tl_cache[name].shape == (121, 3, 32)
    ours = run_with_hooks(params, cfg, task.inputs, fwd_hooks=[(name, halve_the_equals_position)])
    theirs = tl.run_with_hooks(task.inputs, fwd_hooks=[(name, halve_the_equals_position)])
    assert (ours - theirs).abs().max() <= 1e-5
    assert (forward(params, cfg, task.inputs, [(name, halve_the_equals_position)]) - theirs[:, -1]).abs().max() <= 1e-5


def test_last_position_shortcut_is_taken_only_for_marked_hooks_and_gives_the_same_logits():
    from mechgrok.model import last_position_hook

    task = make_task("add", p=11, frac=0.5)
    cfg = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32).resolve(task)
    params = init_params(cfg)
    shapes = []

    def scale_last(act, hook):
        shapes.append(tuple(act.shape))
        out = act.clone()
        out[:, -1] = out[:, -1] * 0.5
        return out

    plain = forward(params, cfg, task.inputs, [("blocks.0.mlp.hook_post", scale_last)])
    marked = forward(params, cfg, task.inputs, [("blocks.0.mlp.hook_post", last_position_hook(scale_last))])
    assert shapes == [(121, 3, 32), (121, 1, 32)]
    assert (plain - marked).abs().max() <= 1e-5


def test_one_adapter_turns_every_model_form_into_the_same_params_and_config(tmp_path):
    from mechgrok.model import as_params, layer_index

    task = make_task("add", p=11, frac=0.5)
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, act_fn="gelu").resolve(task)
    params = _random_params(cfg, seed=4)
    for form in (to_tl_model(params, cfg), (params, cfg)):
        got, got_cfg = as_params(form)
        assert got_cfg == cfg and all(torch.equal(got[k], params[k]) for k in params)
    assert as_params(params)[1].act_fn == "relu"  # a dict carries no act_fn: the default, unless cfg= says
    assert as_params(params, cfg)[1] == cfg
    assert [layer_index(cfg, x) for x in (None, 0, 1, -1, -2)] == [1, 0, 1, 1, 0]
    with pytest.raises(ValueError, match="layer -5 out of range for a 2-layer model"):
        layer_index(cfg, -5)  # never wraps


def test_params_round_trip_through_the_tl_model_exactly():
    task = make_task("div", p=11, frac=0.5)
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, normalization="LN").resolve(task)
    params = _random_params(cfg, seed=7)
    back = params_from_tl(to_tl_model(params, cfg), cfg)
    assert set(back) == set(params) and all(torch.equal(back[k], params[k]) for k in params)


def test_tl_model_exposes_hookedtransformer_weight_properties():
    task = make_task("add", p=13, frac=0.5)
    cfg = ModelConfig(d_model=32, n_heads=4, d_head=8, d_mlp=64).resolve(task)
    params = init_params(cfg)
    model = to_tl_model(params, cfg)
    assert torch.equal(model.W_E, params["embed.W_E"])
    assert torch.equal(model.W_U, params["unembed.W_U"])  # not centred: no weight processing
    assert torch.equal(model.blocks[0].mlp.W_in, params["blocks.0.mlp.W_in"])
    assert torch.equal(model.blocks[0].attn.W_Q, params["blocks.0.attn.W_Q"])


def test_init_is_seeded():
    task = make_task("add", p=13, frac=0.5)
    a = init_params(ModelConfig(seed=1).resolve(task))
    b = init_params(ModelConfig(seed=1).resolve(task))
    c = init_params(ModelConfig(seed=2).resolve(task))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embed.W_E"], c["embed.W_E"])


def test_nanda_config_has_the_published_shape():
    task = make_task("add", p=113, frac=0.3)
    cfg = ModelConfig().resolve(task)
    # W_E 114x128, W_pos 3x128, attention 4*128*128 + biases, MLP 128x512 both ways, W_U 128x113
    assert n_params(cfg) == 114 * 128 + 3 * 128 + 4 * 128 * 128 + 4 * 128 + 2 * 128 * 512 + 512 + 128 + 128 * 113 + 113


def test_shape_mismatch_names_the_key():
    task = make_task("add", p=13, frac=0.5)
    cfg = ModelConfig(d_model=32, n_heads=4, d_head=8, d_mlp=64).resolve(task)
    params = init_params(cfg)
    params["blocks.0.mlp.W_in"] = torch.zeros(32, 65)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.W_in"):
        check_params(params, cfg)


@pytest.mark.parametrize("kwargs,field", [(dict(act_fn="tanh"), "act_fn"), (dict(normalization="RMS"), "normalization"),
                                          (dict(n_layers=0), "n_layers"), (dict(d_mlp=-1), "d_mlp")])
def test_bad_model_config_fails_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}"):
        ModelConfig(**kwargs)


def test_one_resolver_turns_every_form_of_where_into_a_tl_hook_name():
    from transformer_lens.utilities import get_act_name

    from mechgrok.model import hook_name, hook_names

    task = make_task("add", p=11, frac=0.5)
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, normalization="LN").resolve(task)
    cases = {"embed": "hook_embed", "logits": "unembed.hook_out", "neurons": "blocks.1.mlp.hook_post",
             ("post", 0): "blocks.0.mlp.hook_post", ("post", -1): "blocks.1.mlp.hook_post",
             get_act_name("post", 0): "blocks.0.mlp.hook_post", "post0": "blocks.0.mlp.hook_post",
             ("scale", 1, "ln2"): "blocks.1.ln2.hook_scale", "hook_unembed": "hook_unembed",
             "blocks.0.hook_resid_mid": "blocks.0.hook_resid_mid"}
    for where, name in cases.items():
        assert hook_name(where, cfg=cfg) == name, where
        assert name in hook_names(cfg)
    assert hook_name("neurons", 0, cfg) == hook_name("post", 0, cfg) == "blocks.0.mlp.hook_post"
    assert hook_name("neurons") == "blocks.0.mlp.hook_post"  # without a config: layer 0
    for bad in ("attention", "blocks.2.mlp.hook_post", ("post", 2), 3, "hook_nope"):
        with pytest.raises(ValueError) as err:
            hook_name(bad, cfg=cfg)
        assert "\n" not in str(err.value), bad
    with pytest.raises(ValueError, match=r"where must be a TL hook name .*get_act_name.*'embed', 'neurons', 'logits'"):
        hook_name("attention", cfg=cfg)
    with pytest.raises(ValueError, match="gated off"):
        hook_name("blocks.0.hook_q_input", cfg=cfg)
