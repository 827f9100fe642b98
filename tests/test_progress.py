import math

import numpy as np
import pandas as pd
import pytest
import torch

import mechgrok as mg
from mechgrok import fourier, progress
from mechgrok.model import ModelConfig, loss_and_accuracy, run_with_hooks, to_tl_model
from mechgrok.tasks import make_task


def _random_params(task, seed=0, d_mlp=48):
    cfg = ModelConfig(n_layers=1, d_model=32, n_heads=4, d_head=8, d_mlp=d_mlp).resolve(task)
    g = torch.Generator().manual_seed(seed)
    params = {k: torch.randn(*s, generator=g) * (0.3 if len(s) > 1 else 0.1)
              for k, s in mg.model.param_shapes(cfg).items()}
    return params, cfg


def test_gini_of_one_hot_constant_and_a_known_vector():
    assert progress.gini(torch.tensor([0.0, 0, 0, 5.0])) == pytest.approx(3 / 4)
    assert progress.gini(torch.ones(57)) == pytest.approx(0.0, abs=1e-12)
    assert progress.gini(torch.tensor([0.0, 0, 1, 1])) == pytest.approx(0.5)
    assert progress.gini(torch.tensor([3.0, 1, 2])) == progress.gini(torch.tensor([1.0, 2, 3]))  # order-free
    with pytest.raises(ValueError):
        progress.gini(torch.tensor([-1.0, 2.0]))


def test_key_directions_are_two_per_frequency_and_orthonormal():
    task = make_task("add", p=13, frac=0.5)
    q, active = progress.key_directions(task, [2, 5, 6])
    assert q.shape == (169, 7) and active.all()
    assert torch.allclose(q.T @ q, torch.eye(7), atol=1e-5)


def test_projection_keeps_only_the_sum_directions_not_the_cross_frequency_block():
    p, k = 13, 3
    task = make_task("add", p=p, frac=0.5)
    a, b = task.a.double(), task.b.double()
    w = 2 * math.pi * k / p
    # cos(wa) cos(wb) = (cos w(a+b) + cos w(a-b)) / 2: the restricted hook keeps only the first half
    x = (torch.cos(w * a) * torch.cos(w * b)).float()[:, None, None]
    kept = progress.restricted_hook(task, [k])(x, None)[:, -1, 0]
    assert torch.allclose(kept, (0.5 * torch.cos(w * (a + b))).float(), atol=1e-5)
    removed = progress.excluded_hook(task, [k])(x, None)[:, -1, 0]
    assert torch.allclose(removed, (0.5 * torch.cos(w * (a - b))).float(), atol=1e-5)
    # with every frequency, any function of a + b (plus its mean) is kept exactly
    f = torch.randn(p)[(task.a + task.b) % p][:, None, None] + 4.0
    everything = list(range(1, p // 2 + 1))
    assert torch.allclose(progress.restricted_hook(task, everything)(f, None), f, atol=1e-5)
    # and excluding every frequency leaves only its mean
    assert torch.allclose(progress.excluded_hook(task, everything)(f, None), f.mean().expand_as(f), atol=1e-5)
    # the hooks touch the last position only
    x3 = torch.randn(169, 3, 5)
    out = progress.restricted_hook(task, [k])(x3, None)
    assert torch.equal(out[:, :2], x3[:, :2]) and not torch.allclose(out[:, 2], x3[:, 2])


def test_dlog_projection_passes_zero_answers_through():
    task = make_task("mul", p=11, frac=0.5)
    c = fourier.coords(task)
    z = c.coord[task.labels]
    f = torch.randn(10)[z.clamp_min(0)] * (z >= 0) + 100.0 * (z < 0)
    x = f.float()[:, None, None]
    out = progress.restricted_hook(task, list(range(1, 6)))(x, None)
    assert torch.allclose(out, x, atol=1e-4)
    out = progress.excluded_hook(task, [1, 2])(x, None)[:, -1, 0]
    assert torch.equal(out[z < 0], x[z < 0, -1, 0])


def test_hooks_refuse_a_batch_that_is_not_the_whole_task():
    task = make_task("add", p=11, frac=0.5)
    with pytest.raises(ValueError, match="every example"):
        progress.restricted_hook(task, [1])(torch.randn(10, 1, 4), None)


def test_excluded_loss_without_frequencies_is_the_train_loss_and_hooks_leave_the_model_unchanged():
    task = make_task("add", p=13, frac=0.5)
    params, cfg = _random_params(task)
    tl = to_tl_model(params, cfg)
    before = {k: v.clone() for k, v in tl.state_dict().items()}
    logits_before = tl(task.inputs)[:, -1].detach()
    train_loss = float(loss_and_accuracy(logits_before[task.train_idx], task.train_labels)[0])
    for level in progress.LEVELS:
        assert progress.excluded_loss(tl, task, [], level=level) == pytest.approx(train_loss, rel=1e-6)
        assert progress.excluded_loss(params, task, [], level=level, cfg=cfg) == pytest.approx(train_loss, rel=1e-5)
    r_tl = progress.restricted_loss(tl, task, [1, 4])
    r_fast = progress.restricted_loss(params, task, [1, 4], cfg=cfg)
    assert r_tl == pytest.approx(r_fast, rel=1e-5)
    after = tl.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(tl(task.inputs)[:, -1].detach(), logits_before)  # no hook left behind


def test_restricted_loss_with_every_frequency_is_the_loss_of_the_a_plus_b_average():
    # With all frequencies the logit-level restriction keeps every function of a + b: the
    # restricted logits are the average of the logits over the pairs with the same a + b.
    p = 13
    task = make_task("add", p=p, frac=0.5)
    params, cfg = _random_params(task, seed=1)
    logits = run_with_hooks(params, cfg, task.inputs)[0][:, -1].double()
    s = (task.a + task.b) % p
    mean_by_sum = torch.zeros(p, p, dtype=torch.float64).index_add_(0, s, logits) / p
    expected = float(loss_and_accuracy(mean_by_sum[s], task.labels)[0])
    everything = list(range(1, p // 2 + 1))
    got = progress.restricted_loss(params, task, everything, level="logits", cfg=cfg)
    assert got == pytest.approx(expected, rel=1e-5)
    # a model whose logits depend on a + b alone: restricted loss = full loss
    def only_sum(x, hook):
        return mean_by_sum[s][:, None].float().expand_as(x).clone()
    full = progress.split_loss(progress.hooked_logits(params, task, [("unembed.hook_out", only_sum)], cfg), task)[0]
    both = [("unembed.hook_out", only_sum), ("unembed.hook_out", progress.restricted_hook(task, everything))]
    restricted = progress.split_loss(progress.hooked_logits(params, task, both, cfg), task)[0]
    assert restricted == pytest.approx(full, rel=1e-5)
    # fewer frequencies change it (the random model's logits are spread over all of them)
    assert abs(progress.restricted_loss(params, task, [1], level="logits", cfg=cfg) - got) > 1e-3


@pytest.mark.parametrize("op", ["add", "div"])
def test_grid_engine_equals_the_hooked_forward(op):
    task = make_task(op, p=13, frac=0.5)
    params, cfg = _random_params(task, seed=2)
    base, post = progress.grid_forward(params, cfg, task)
    logits, cache = run_with_hooks(params, cfg, task.inputs, cache_names=["blocks.0.mlp.hook_post"])
    assert torch.allclose(post, cache["blocks.0.mlp.hook_post"][:, -1], atol=1e-4)
    assert torch.allclose(base + post @ fourier.W_L(params), logits[:, -1], atol=1e-4)
    freqs = [1, 3]
    hooks = (progress.restricted_hook(task, freqs), progress.excluded_hook(task, freqs))
    for level in progress.LEVELS:
        fast = progress.measure_grid(params, cfg, task, hooks, level)
        slow = progress.measure_checkpoint(params, task, freqs, level, cfg=cfg)
        assert fast.keys() == slow.keys()
        for key in fast:
            assert fast[key] == pytest.approx(slow[key], rel=1e-4, abs=1e-7), (level, key)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    # the conftest's tiny config, trained once for this module (a few seconds)
    cfg = mg.RunConfig(
        task=mg.TaskConfig(op="add", p=23, frac=0.6, seed=1),
        model=mg.ModelConfig(n_layers=1, d_model=32, n_heads=4, d_head=8, d_mlp=64, seed=1),
        train=mg.TrainConfig(steps=60, lr=3e-3, weight_decay=1.0, eval_every=10, checkpoint_every=20, seed=1))
    return mg.train.train(cfg, tmp_path_factory.mktemp("progress") / "run", progress=False, figure=False)


def test_measure_run_on_a_tiny_run(tiny_run):
    run = tiny_run
    table = progress.measure_run(run, progress=False)
    assert table["step"].tolist() == run.steps
    for col in ("train_loss", "test_loss", "train_acc", "test_acc", "restricted_loss", "excluded_loss",
                "gini_W_E", "gini_W_L", "weight_sq", "W_E_k0", "W_L_k11"):
        assert col in table and table[col].notna().all(), col
    assert table.attrs["key_freqs"] == fourier.key_frequencies(run.params(), run.task)
    metrics = run.metrics.set_index("step").loc[table["step"]]
    for col in ("train_loss", "test_loss", "train_acc", "test_acc", "weight_sq"):
        assert np.allclose(table[col], metrics[col], rtol=1e-4), col
    # the hooks engine gives the same table
    slow = progress.measure_run(run, freqs=table.attrs["key_freqs"], engine="hooks", progress=False)
    assert np.allclose(slow["excluded_loss"], table["excluded_loss"], rtol=1e-4)
    assert np.allclose(slow["restricted_loss"], table["restricted_loss"], rtol=1e-4)
    ph = progress.phases(table)
    assert ph.memorisation is None or ph.memorisation in run.steps


def test_analyze_run_writes_the_table_and_figures(tmp_path, tiny_run):
    run = tiny_run
    table, written = progress.analyze_run(run, tmp_path / "out", progress=False, png=False)
    names = {p.name for p in written}
    assert {"progress.csv", "phases.json", "neurons.csv", "progress_losses.html", "spectrum.html",
            "neuron_frequencies.html", "spectrum_evolution.html", "gini_weight_norm.html"} <= names
    assert all(p.exists() for p in written)
    assert len(pd.read_csv(tmp_path / "out" / "progress.csv")) == len(run.steps)


def test_phases_follow_the_documented_rule_on_a_synthetic_series():
    steps = np.arange(0, 10_001, 100)
    train_acc = np.where(steps >= 1000, 1.0, steps / 1100)
    test_acc = 1 / (1 + np.exp(-(steps - 7000) / 300))
    # log test loss falls fastest around step 7000, over a window of about +-1000
    test_loss = np.exp(3 - 20 / (1 + np.exp(-(steps - 7000) / 500)))
    excluded = np.where(steps < 1500, 3 - steps / 1000, 1.5 + (steps - 1500) / 1000)
    table = pd.DataFrame({"step": steps, "train_acc": train_acc, "test_acc": test_acc, "test_loss": test_loss,
                          "excluded_loss": excluded})
    ph = progress.phases(table)
    assert ph.memorisation == 1000
    assert ph.grokking == 7700  # first test acc > 0.9: 7000 + 300 ln 9 = 7659
    assert ph.delay == 6700
    assert 6000 <= ph.max_acceleration <= 7000
    assert ph.circuit_start == 1500
    # half maximum of the logistic's slope: 7000 +- 500 ln(3 + 2 sqrt 2) = 7000 +- 881
    assert abs(ph.cleanup_start - 6119) <= 150 and abs(ph.cleanup_end - 7881) <= 150
    assert ph.boundaries()["circuit formation"] == (1500, ph.cleanup_start)
    # a series that never groks has no cleanup, however its test loss wanders
    flat = table.assign(test_acc=0.05, test_loss=30 + np.sin(steps / 300))
    ph = progress.phases(flat)
    assert ph.grokking is None and ph.cleanup_start is None and ph.boundaries()["cleanup"] is None
    assert ph.circuit_start == 1500 and ph.boundaries()["circuit formation"] == (1500, 10_000)
