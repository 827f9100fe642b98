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


def _keep(task, freqs):
    return fourier.FrequencyProjection(task, freqs, "keep")


def _remove(task, freqs):
    return fourier.FrequencyProjection(task, freqs, "remove")


def test_answer_directions_are_two_per_frequency_and_orthonormal():
    task = make_task("add", p=13, frac=0.5)
    q, active = fourier.answer_directions(task, [2, 5, 6])
    assert q.shape == (169, 7) and active.all()
    assert torch.allclose(q.T @ q, torch.eye(7), atol=1e-5)


def test_projection_keeps_only_the_sum_directions_not_the_cross_frequency_block():
    p, k = 13, 3
    task = make_task("add", p=p, frac=0.5)
    a, b = task.a.double(), task.b.double()
    w = 2 * math.pi * k / p
    # cos(wa) cos(wb) = (cos w(a+b) + cos w(a-b)) / 2: "keep" keeps only the first half
    x = (torch.cos(w * a) * torch.cos(w * b)).float()[:, None, None]
    kept = _keep(task, [k])(x, None)[:, -1, 0]
    assert torch.allclose(kept, (0.5 * torch.cos(w * (a + b))).float(), atol=1e-5)
    removed = _remove(task, [k])(x, None)[:, -1, 0]
    assert torch.allclose(removed, (0.5 * torch.cos(w * (a - b))).float(), atol=1e-5)
    # with every frequency, any function of a + b (plus its mean) is kept exactly
    g = torch.Generator().manual_seed(11)
    f = torch.randn(p, generator=g)[(task.a + task.b) % p][:, None, None] + 4.0
    everything = list(range(1, p // 2 + 1))
    assert torch.allclose(_keep(task, everything)(f, None), f, atol=1e-5)
    # and removing every frequency leaves only its mean
    assert torch.allclose(_remove(task, everything)(f, None), f.mean().expand_as(f), atol=1e-5)
    # the hooks touch the last position only
    x3 = torch.randn(169, 3, 5, generator=g)
    out = _keep(task, [k])(x3, None)
    assert torch.equal(out[:, :2], x3[:, :2]) and not torch.allclose(out[:, 2], x3[:, 2])


def test_dlog_projection_passes_zero_answers_through():
    task = make_task("mul", p=11, frac=0.5)
    c = fourier.coords(task)
    z = c.coord[task.labels]
    f = torch.randn(10, generator=torch.Generator().manual_seed(12))[z.clamp_min(0)] * (z >= 0) + 100.0 * (z < 0)
    x = f.float()[:, None, None]
    out = _keep(task, list(range(1, 6)))(x, None)
    assert torch.allclose(out, x, atol=1e-4)
    out = _remove(task, [1, 2])(x, None)[:, -1, 0]
    assert torch.equal(out[z < 0], x[z < 0, -1, 0])


def test_hooks_refuse_a_batch_that_is_not_the_whole_task():
    task = make_task("add", p=11, frac=0.5)
    with pytest.raises(ValueError, match="all 121 examples"):
        _keep(task, [1])(torch.zeros(10, 1, 4), None)


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
        r_tl = progress.restricted_loss(tl, task, [1, 4], level=level)
        r_fast = progress.restricted_loss(params, task, [1, 4], level=level, cfg=cfg)
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
    logits = run_with_hooks(params, cfg, task.inputs)[:, -1].double()
    s = (task.a + task.b) % p
    mean_by_sum = torch.zeros(p, p, dtype=torch.float64).index_add_(0, s, logits) / p
    expected = float(loss_and_accuracy(mean_by_sum[s], task.labels)[0])
    everything = list(range(1, p // 2 + 1))
    got = progress.restricted_loss(params, task, everything, level="logits", cfg=cfg)
    assert got == pytest.approx(expected, rel=1e-5)
    # fewer frequencies change it (the random model's logits are spread over all of them)
    assert abs(progress.restricted_loss(params, task, [1], level="logits", cfg=cfg) - got) > 1e-3


# --- the two published definitions, each against a second implementation written from it ------


def _grid_vectors(task, freqs):
    """Nanda's key directions over the p*p grid, built the way the papers describe them: a
    constant, then cos and sin of w_k (a + b), each normalised on its own (they are orthogonal
    for an odd prime p). Plain numpy loops: nothing shared with mechgrok's QR construction."""
    p = task.p
    vecs = [np.full(p * p, 1 / p)]
    for k in freqs:
        for trig in (np.cos, np.sin):
            v = np.array([trig(2 * np.pi * k * ((a + b) % p) / p) for a in range(p) for b in range(p)])
            vecs.append(v / np.linalg.norm(v))
    return vecs


def _cross_entropy(logits, labels):
    logits = logits - logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def test_restricted_loss_at_the_logits_is_nandas_definition():
    task = make_task("add", p=13, frac=0.4, seed=3)
    params, cfg = _random_params(task, seed=5)
    tl = to_tl_model(params, cfg)
    logits = tl(task.inputs)[:, -1].detach().double().numpy()
    freqs = [2, 5]
    restricted = sum(np.outer(v, v @ logits) for v in _grid_vectors(task, freqs))
    expected = _cross_entropy(restricted, task.labels.numpy())  # all p^2 pairs
    assert progress.restricted_loss(tl, task, freqs) == pytest.approx(expected, rel=1e-5)
    assert progress.restricted_loss(params, task, freqs, cfg=cfg) == pytest.approx(expected, rel=1e-5)
    excluded = logits - sum(np.outer(v, v @ logits) for v in _grid_vectors(task, freqs)[1:])
    tr = task.train_idx.numpy()
    assert progress.excluded_loss(tl, task, freqs) == pytest.approx(
        _cross_entropy(excluded[tr], task.labels.numpy()[tr]), rel=1e-5)


def test_restricted_loss_at_the_neurons_is_the_tl_demos_definition_and_drops_the_direct_path():
    task = make_task("add", p=13, frac=0.4, seed=3)
    params, cfg = _random_params(task, seed=6)  # random biases and a strong direct path
    params["blocks.0.mlp.W_out"] = params["blocks.0.mlp.W_out"] * 0.2
    tl = to_tl_model(params, cfg)
    logits, cache = tl.run_with_cache(task.inputs)
    logits = logits[:, -1].detach().double().numpy()
    acts = cache["blocks.0.mlp.hook_post"][:, -1].detach().double().numpy()
    freqs = [2, 5]
    # the demo: mean neuron plus its projections, through W_out W_U only, shifted to the mean of
    # the full logits; loss on the test pairs
    approx = sum(np.outer(v, v @ acts) for v in _grid_vectors(task, freqs))
    W_L = (params["blocks.0.mlp.W_out"] @ params["unembed.W_U"]).double().numpy()
    restricted = approx @ W_L
    restricted += logits.mean(0, keepdims=True) - restricted.mean(0, keepdims=True)
    te = task.test_idx.numpy()
    expected = _cross_entropy(restricted[te], task.labels.numpy()[te])
    got = progress.restricted_loss(tl, task, freqs, level="neurons")
    assert got == pytest.approx(expected, rel=1e-5)
    assert progress.restricted_loss(params, task, freqs, level="neurons", cfg=cfg) == pytest.approx(expected, rel=1e-5)
    # a hook on the neurons alone lets the per-example direct path through: a different, higher number here
    leaky = progress.hooked_logits(tl, task, [("blocks.0.mlp.hook_post", _keep(task, freqs))])
    leaky_loss = mg.evaluation.split_metrics(leaky, task, ("test",))["test_loss"]
    assert leaky_loss - got > 0.1  # 0.17 here: the direct path carries non-key content


def test_restricted_loss_at_the_neurons_of_a_model_without_neurons_is_the_loss_of_the_mean_logits():
    # planted: W_out = 0, so nothing in the key directions reaches the logits and every example's
    # restricted logits are the mean logits over all examples
    task = make_task("add", p=11, frac=0.5, seed=2)
    params, cfg = _random_params(task, seed=7)
    params["blocks.0.mlp.W_out"] = torch.zeros_like(params["blocks.0.mlp.W_out"])
    logits = to_tl_model(params, cfg)(task.inputs)[:, -1].detach().double().numpy()
    te = task.test_idx.numpy()
    mean = np.repeat(logits.mean(0, keepdims=True), len(te), 0)
    expected = _cross_entropy(mean, task.labels.numpy()[te])
    assert progress.restricted_loss(params, task, [1, 3], level="neurons", cfg=cfg) == pytest.approx(expected, rel=1e-6)


def test_one_gini_convention_drops_the_constant():
    # over k >= 1 only: [big k=0, 1, 0, 0] is a one-hot over three frequencies
    assert progress.spectrum_gini(torch.tensor([100.0, 1.0, 0.0, 0.0])) == pytest.approx(2 / 3)
    task = make_task("add", p=13, frac=0.5)
    params, cfg = _random_params(task, seed=8)
    e = fourier.embedding_spectrum(params, task, cfg=cfg)
    assert progress.weight_measures(params, cfg, task)["gini_W_E"] == progress.spectrum_gini(e)
    assert progress.spectrum_gini(e) == pytest.approx(progress.gini(e[1:]))


def test_transition_metrics_read_the_evaluation_grid_with_uneven_spacing():
    # test accuracy is flat, then rises with slope 0.02 from step 30: its curvature is at 30.
    steps = [0, 10, 20, 30, 35, 40, 60, 80]
    test_acc = [0, 0, 0, 0, 0.1, 0.2, 0.6, 0.95]
    train_acc = [0.1, 0.5, 0.995, 1, 1, 1, 1, 1]
    m = pd.DataFrame({"step": steps, "train_acc": train_acc, "test_acc": test_acc})
    tr = progress.transition_metrics(m)
    assert (tr.memorised_step, tr.grokked_step, tr.delay) == (20, 80, 60)
    assert tr.grokked and tr.final_gap == pytest.approx(0.05) and tr.last_step == 80
    # the plain second difference would pick 40, where the spacing jumps from 5 to 20
    assert tr.max_acceleration_step == 30
    assert int(np.argmax(np.diff(test_acc, 2))) + 1 == steps.index(40)
    never = progress.transition_metrics(m.assign(test_acc=0.1))
    assert never.grokked_step is None and not never.grokked and never.delay is None


@pytest.mark.parametrize("op", ["add", "div"])
def test_grid_engine_equals_the_hooked_forward(op):
    task = make_task(op, p=13, frac=0.5)
    params, cfg = _random_params(task, seed=2)
    base, post = progress.grid_forward(params, cfg, task)
    logits, cache = to_tl_model(params, cfg).run_with_cache(task.inputs, names_filter="blocks.0.mlp.hook_post")
    assert torch.allclose(post, cache["blocks.0.mlp.hook_post"][:, -1], atol=1e-4)
    assert torch.allclose(base + post @ fourier.W_L(params, cfg), logits[:, -1], atol=1e-4)
    freqs = [1, 3]
    projections = (_keep(task, freqs), _remove(task, freqs))
    for level in progress.LEVELS:
        fast = progress.measure_grid(params, cfg, task, projections, level)
        slow = progress.measure_checkpoint(params, task, freqs, level, cfg=cfg)
        assert fast.keys() == slow.keys()
        for key in fast:
            assert fast[key] == pytest.approx(slow[key], rel=1e-4, abs=1e-7), (level, key)


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
    # one milestone definition: what `info` reports is what the phases carry
    ph = progress.phases(table, run.metrics)
    # pinned to the definition by hand (first evaluation strictly above 0.99 / 0.9), not to the same function
    m = run.metrics.sort_values("step")
    mem = next((int(s) for s, a in zip(m["step"], m["train_acc"]) if a > 0.99), None)
    grok = next((int(s) for s, a in zip(m["step"], m["test_acc"]) if a > 0.9), None)
    assert (ph.transitions.memorised_step, ph.transitions.grokked_step) == (mem, grok)
    assert ph.transitions.last_step == run.steps[-1] == int(m["step"].iloc[-1])
    assert run.summary()["memorised_step"] == mem
    if ph.transitions.memorised_step is not None and ph.circuit_start is not None:
        assert ph.circuit_start >= ph.transitions.memorised_step


def test_report_analysis_writes_the_table_and_figures(tmp_path, tiny_run):
    run = tiny_run
    from mechgrok import report

    res, written = report.analysis(run, tmp_path / "out", progress_bar=False, png=False)
    table, ph = res.table, res.phases
    names = {p.name for p in written}
    assert {"progress.csv", "phases.json", "neurons.csv", "progress_losses.html", "spectrum.html",
            "neuron_frequencies.html", "spectrum_evolution.html", "gini_weight_norm.html"} <= names
    assert all(p.exists() for p in written)
    back = pd.read_csv(tmp_path / "out" / "progress.csv")
    assert np.allclose(back["restricted_loss"], table["restricted_loss"], rtol=1e-6)
    saved = __import__("json").loads((tmp_path / "out" / "phases.json").read_text())
    assert saved["grokked_step"] == ph.transitions.grokked_step and saved["level"] == "logits"


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
    tr = ph.transitions
    assert tr.memorised_step == 1000
    assert tr.grokked_step == 7700  # first test acc > 0.9: 7000 + 300 ln 9 = 7659
    assert tr.delay == 6700
    assert 6000 <= tr.max_acceleration_step <= 7000
    assert ph.circuit_start == 1500
    # half maximum of the logistic's slope: 7000 +- 500 ln(3 + 2 sqrt 2) = 7000 +- 881
    assert abs(ph.cleanup_start - 6119) <= 150 and abs(ph.cleanup_end - 7881) <= 150
    assert ph.intervals()["circuit formation"] == (1500, ph.cleanup_start)
    # a series that never groks has no cleanup, however its test loss wanders
    flat = table.assign(test_acc=0.05, test_loss=30 + np.sin(steps / 300))
    ph = progress.phases(flat)
    assert ph.transitions.grokked_step is None and ph.cleanup_start is None and ph.intervals()["cleanup"] is None
    assert ph.circuit_start == 1500 and ph.intervals()["circuit formation"] == (1500, 10_000)
    # the memorisation phase never ends before the run has memorised
    early_min = table.assign(excluded_loss=np.where(steps < 500, 0.1, 2.0))
    assert progress.phases(early_min).circuit_start >= 1000


def test_markdown_table_and_provenance_for_analyses():
    md = mg.plots.markdown_table([{"seed": 0, "grokked": None, "loss": 0.000123456}, {"seed": 1, "grokked": 250, "loss": 2.0}],
                                 columns=["seed", "grokked", "loss"])
    assert md.splitlines() == ["| seed | grokked | loss |", "|---|---|---|", "| 0 | - | 0.000123 |", "| 1 | 250 | 2 |"]
    prov = mg.provenance.provenance()
    assert prov["torch"] == torch.__version__ and prov["torch_threads"] == torch.get_num_threads()
