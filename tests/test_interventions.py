"""Interventions: frequency ablation, neuron transplantation, freezing, embedding transfer.

The session's shared grokked run (conftest: a+b mod 23, 400 steps) carries the ablation tests;
the training interventions use tiny runs of a few steps.
"""

import fnmatch
import math

import pandas as pd
import pytest
import torch

import mechgrok as mg
from mechgrok import fourier
from mechgrok import interventions as iv

torch.set_num_threads(1)


def tiny_cfg(n_layers=1, steps=20, p=7, batch_size=8, **train):
    return mg.RunConfig(
        task=mg.TaskConfig(op="add", p=p, frac=0.6, seed=0),
        model=mg.ModelConfig(n_layers=n_layers, d_model=16, n_heads=2, d_head=8, d_mlp=32,
                             act_fn="gelu", normalization="LN" if n_layers > 1 else "none"),
        train=mg.TrainConfig(**(dict(steps=steps, lr=1e-2, weight_decay=1.0, warmup_steps=0,
                                     batch_size=batch_size, eval_every=5, checkpoint_every=10,
                                     device="cpu") | train)))


@pytest.fixture(scope="module")
def grokked(grokked_run):
    assert grokked_run.metrics["test_acc"].iloc[-1] > 0.99, f"shared run did not grok:\n{grokked_run.metrics.tail()}"
    return grokked_run


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    return mg.train(tiny_cfg(n_layers=4), tmp_path_factory.mktemp("t4") / "run", progress=False)


# --- frequency ablation ----------------------------------------------------------------------


@pytest.mark.parametrize("where", iv.WHERE)
def test_removing_key_frequencies_destroys_and_keeping_them_does_not(grokked, where):
    task = grokked.task
    key = fourier.key_frequencies(grokked.params(), task, cfg=grokked.model_cfg)
    assert 1 <= len(key) <= 6, key
    rm = iv.ablate_frequencies(grokked, task, key, mode="remove", where=where)
    keep = iv.ablate_frequencies(grokked, task, key, mode="keep", where=where)  # = remove all others
    assert rm.before["test_acc"] > 0.99 and rm.before["test_loss"] < 0.1
    assert rm.after["test_acc"] < 0.3 and rm.after["test_loss"] > 1.0, rm.after
    assert keep.after["test_acc"] > 0.97 and keep.after["test_loss"] < 0.2, keep.after
    others = [k for k in iv.valid_frequencies(task) if k not in key]
    # removing all other frequencies is the same operation as keeping only the key ones
    rm_others = iv.ablate_frequencies(grokked, task, others, mode="remove", where=where)
    if where == "embed":  # the constant survives either way on the token axis
        assert rm_others.after["test_loss"] == pytest.approx(keep.after["test_loss"], rel=1e-3, abs=1e-5)
    assert rm_others.after["test_acc"] > 0.97


def test_hooks_run_on_tl_and_fast_path_and_leave_the_model_unchanged(grokked):
    task, params, cfg = grokked.task, grokked.params(), grokked.model_cfg
    saved = {k: v.clone() for k, v in params.items()}
    model = grokked.model()
    tl_saved = {k: v.clone() for k, v in model.state_dict().items()}
    plain = model(task.inputs)[:, -1]
    for where in iv.WHERE:
        name, fn = iv.frequency_hook(task, [1, 2, 5], "remove", where)
        tl = model.run_with_hooks(task.inputs, fwd_hooks=[(name, fn)])[:, -1]
        fast = mg.forward(params, cfg, task.inputs, fwd_hooks=[(name, fn)])
        assert torch.allclose(tl, fast, atol=1e-3), where
        assert (fast - plain).abs().max() > 1e-2, f"{where}: the hook changed nothing"
        iv.ablate_frequencies((params, cfg), task, [1, 2], where=where)
    assert all(torch.equal(params[k], saved[k]) for k in saved)
    assert all(torch.equal(v, tl_saved[k]) for k, v in model.state_dict().items())
    assert torch.allclose(model(task.inputs)[:, -1], plain)


def test_where_takes_tl_hook_names_and_get_act_name_shorthands(grokked):
    from transformer_lens.utilities import get_act_name

    task = grokked.task
    key = fourier.key_frequencies(grokked.params(), task, cfg=grokked.model_cfg)
    by_shorthand = iv.ablate_frequencies(grokked, task, key, where="neurons")
    for where in ("blocks.0.mlp.hook_post", ("post", 0), ("post", -1), get_act_name("post", 0), "post0"):
        other = iv.ablate_frequencies(grokked, task, key, where=where)
        assert other.after == pytest.approx(by_shorthand.after, rel=1e-6), where
    assert iv.ablate_frequencies(grokked, task, key, where="unembed.hook_out").after == pytest.approx(
        iv.ablate_frequencies(grokked, task, key, where="logits").after, rel=1e-6)
    # a hook point no shorthand names: the residual stream after the block
    resid = iv.ablate_frequencies(grokked, task, key, where=("resid_post", 0))
    assert resid.where == "blocks.0.hook_resid_post" and resid.after["test_acc"] < 0.5


def test_a_hook_attached_to_the_tl_model_takes_effect_in_every_measure(grokked):
    from mechgrok import progress

    task, params, cfg = grokked.task, grokked.params(), grokked.model_cfg
    model = grokked.model()
    name, freqs = "blocks.0.mlp.hook_post", [1, 2]
    # with no hooks attached, the TL model and its params give the same numbers
    assert (fourier.neuron_acts(model, task) - fourier.neuron_acts((params, cfg), task)).abs().max() <= 1e-5
    assert (progress.hooked_logits(model, task) - progress.hooked_logits((params, cfg), task)).abs().max() <= 1e-4
    for where in iv.WHERE:
        a = iv.ablate_frequencies(model, task, freqs, where=where)
        b = iv.ablate_frequencies((params, cfg), task, freqs, where=where)
        assert a.before == pytest.approx(b.before, rel=1e-4, abs=1e-6)
        assert a.after == pytest.approx(b.after, rel=1e-4, abs=1e-6), where
    assert fourier.key_frequencies(model, task) == fourier.key_frequencies(params, task, cfg=cfg)

    def halve_neurons(act, hook):
        return act * 0.5

    expected_logits = mg.forward(params, cfg, task.inputs, [(name, halve_neurons)])
    expected_after = iv.evaluate_with_hooks(params, cfg, task, [(name, halve_neurons),
                                                                iv.frequency_hook(task, freqs, where="logits")])
    model.add_hook(name, halve_neurons)
    try:
        acts = fourier.neuron_acts(model, task)
        assert (acts - 0.5 * fourier.neuron_acts((params, cfg), task)).abs().max() <= 1e-5
        logits = progress.hooked_logits(model, task)
        assert (logits - expected_logits).abs().max() <= 1e-4
        assert (logits - progress.hooked_logits((params, cfg), task)).abs().max() > 1e-2
        ablated = iv.ablate_frequencies(model, task, freqs, where="logits")
        assert ablated.before == pytest.approx(iv.evaluate_with_hooks(params, cfg, task, [(name, halve_neurons)]),
                                               rel=1e-4, abs=1e-6)
        assert ablated.after == pytest.approx(expected_after, rel=1e-4, abs=1e-6)
        # the weight spectra read the weights only
        assert torch.equal(fourier.embedding_spectrum(model, task), fourier.embedding_spectrum(params, task))
    finally:
        model.reset_hooks()


def test_answer_directions_are_cos_sin_of_a_plus_b():
    task = mg.make_task("add", p=11, frac=0.5)
    q, inside = fourier.answer_directions(task, [3])
    D = q[:, 1:].T  # column 0 is the constant
    assert inside.all() and torch.allclose(q.T @ q, torch.eye(3), atol=1e-5)
    s = 2 * math.pi * 3 * (task.a + task.b).double() / 11
    explicit = torch.stack([torch.cos(s), torch.sin(s)]).float()
    explicit = explicit / explicit.norm(dim=1, keepdim=True)
    # same plane: projecting the explicit waves onto D keeps them whole
    assert torch.allclose(D.T @ (D @ explicit.T), explicit.T, atol=1e-5)
    # division lives on the multiplicative group: the p-1 examples with a = 0 are left out; the
    # group has even order 10, so k = 5 is the lone Nyquist wave (const, cos 1, sin 1, cos 5)
    div = mg.make_task("div", p=11, frac=0.5)
    qd, ins = fourier.answer_directions(div, [1, 5])
    assert int((~ins).sum()) == 10 and torch.allclose(qd.T @ qd, torch.eye(4), atol=1e-5)


def test_projection_is_one_hook_for_every_op_including_quad():
    # quad's answers are not spread evenly over the group: the directions are still orthonormal
    # and the hook is a projection (applying it twice changes nothing)
    task = mg.make_task("quad", p=11, frac=0.5)
    acts = torch.randn(121, 3, 5)
    for mode in iv.MODES:
        name, fn = iv.frequency_hook(task, [1, 4], mode, "neurons")
        once = fn(acts)
        assert name == "blocks.0.mlp.hook_post"
        assert torch.allclose(fn(once), once, atol=1e-5) and not torch.allclose(once, acts, atol=1e-3)
    kept = iv.frequency_hook(task, [1, 4], "keep", "logits")[1](acts)[:, -1]
    removed = iv.frequency_hook(task, [1, 4], "remove", "logits")[1](acts)[:, -1]
    assert torch.allclose(kept + removed - acts[:, -1].mean(0), acts[:, -1], atol=1e-5)  # mean counted once


def test_hooks_remove_exactly_the_named_directions():
    task = mg.make_task("add", p=13, frac=0.5)
    g = torch.Generator().manual_seed(0)
    W_E = torch.randn(14, 8, generator=g)
    act = W_E[task.inputs]
    _, fn = iv.frequency_hook(task, [2, 5], "remove", "embed")
    out = fn(act)
    F = fourier.fourier_basis(13)[0]
    before, after = F @ act[::13, 0], F @ out[::13, 0]  # position 0 over a = 0..12 (b = 0)
    removed = [3, 4, 9, 10]  # rows cos 2, sin 2, cos 5, sin 5
    kept = [r for r in range(13) if r not in removed]
    assert after[removed].abs().max() < 1e-5 and torch.allclose(after[kept], before[kept], atol=1e-5)
    assert torch.equal(out[:, 2], act[:, 2])  # the "=" position is not a residue
    _, keep_fn = iv.frequency_hook(task, [2, 5], "keep", "embed")
    kept_out = F @ keep_fn(act)[:13, 1]  # position 1 over b = 0..12 (a = 0)
    assert kept_out[[1, 2, 5, 6, 7, 8, 11, 12]].abs().max() < 1e-5
    assert torch.allclose(kept_out[[0] + removed], (F @ act[:13, 1])[[0] + removed], atol=1e-5)

    # division: frequencies of the multiplicative group, in discrete-log order
    div = mg.make_task("div", p=11, frac=0.5)
    c = fourier.coords(div)
    act_d = torch.randn(12, 8, generator=g)[div.inputs]
    out_d = iv.frequency_hook(div, [2], "remove", "embed")[1](act_d)
    rows_b = c.elements - 1  # a = 0 rows hold b = 1 .. 10 in order
    coef, coef0 = c.basis @ out_d[rows_b, 1], c.basis @ act_d[rows_b, 1]
    assert coef[[3, 4]].abs().max() < 1e-5 and torch.allclose(coef[[0, 1, 2, 5]], coef0[[0, 1, 2, 5]], atol=1e-5)
    assert torch.equal(out_d[div.a == 0, 0], act_d[div.a == 0, 0])  # token 0 is outside the group

    neurons = torch.randn(169, 3, 6, generator=g)
    q, _ = fourier.answer_directions(task, [2, 5])
    _, fn = iv.frequency_hook(task, [2, 5], "remove", "neurons")
    rm = fn(neurons)
    assert (q[:, 1:].T @ rm[:, -1]).abs().max() < 1e-4 and torch.equal(rm[:, :2], neurons[:, :2])
    _, fn = iv.frequency_hook(task, [2, 5], "keep", "logits")
    kp = fn(neurons)[:, -1]
    assert torch.allclose(q @ (q.T @ kp), kp, atol=1e-4)


def test_frequency_sweep_and_figure(grokked):
    task = grokked.task
    sweep = iv.frequency_sweep(grokked, task, where="logits")
    assert list(sweep["freq"]) == list(range(1, 12))
    key = sweep.attrs["key_freqs"]
    assert set(sweep.loc[sweep["is_key"], "freq"]) == set(key)
    # one key frequency alone matters more than any non-key one, which barely matter at all
    assert sweep.loc[sweep["is_key"], "test_loss"].max() > 10 * sweep.loc[~sweep["is_key"], "test_loss"].max()
    assert sweep.loc[~sweep["is_key"], "test_acc"].min() > 0.97
    fig = mg.plots.frequency_ablation(sweep)
    assert fig.layout.yaxis.type == "log" and len(fig.data[0].x) == 11
    table = iv.ablation_table(grokked, task, where="neurons")
    assert list(table.index) == ["baseline", "remove key", "keep only key"]


def test_ablation_errors(grokked):
    task = grokked.task
    with pytest.raises(ValueError, match="frequency 12 does not exist.*1..11"):
        iv.ablate_frequencies(grokked, task, [3, 12])
    with pytest.raises(ValueError, match="frequency 0 does not exist"):
        iv.frequency_hook(task, [0], "remove", "logits")
    with pytest.raises(ValueError, match="no checkpoint at step 13"):
        iv.ablate_frequencies(grokked, task, [3], step=13)
    with pytest.raises(ValueError, match="where must be a TL hook name"):
        iv.frequency_hook(task, [3], "remove", "attention")
    with pytest.raises(ValueError, match="acts on \\[batch, pos, ...\\] activations"):
        iv.frequency_hook(task, [3], "remove", ("pattern", 0))
    with pytest.raises(ValueError, match="mode must be one of"):
        iv.frequency_hook(task, [3], "drop", "embed")
    _, fn = iv.frequency_hook(task, [3], "remove", "neurons")
    with pytest.raises(ValueError, match="run the model on task.inputs"):
        fn(torch.zeros(10, 3, 256))


# --- transplantation ---------------------------------------------------------------------------


def test_transplant_copies_exactly_the_chosen_neurons(grokked):
    donor, recipient = grokked.params(), grokked.params(100)
    idx = [0, 5, 17]
    new = iv.transplant_neurons(donor, recipient, idx, cfg=grokked.model_cfg)
    rest = torch.ones(256, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(new["blocks.0.mlp.W_in"][:, idx], donor["blocks.0.mlp.W_in"][:, idx])
    assert torch.equal(new["blocks.0.mlp.b_in"][idx], donor["blocks.0.mlp.b_in"][idx])
    assert torch.equal(new["blocks.0.mlp.W_out"][idx], donor["blocks.0.mlp.W_out"][idx])
    assert torch.equal(new["blocks.0.mlp.W_in"][:, rest], recipient["blocks.0.mlp.W_in"][:, rest])
    assert torch.equal(new["blocks.0.mlp.W_out"][rest], recipient["blocks.0.mlp.W_out"][rest])
    for k in new:
        if ".mlp." not in k or k.endswith("b_out"):
            assert torch.equal(new[k], recipient[k]), k
    assert not torch.equal(recipient["blocks.0.mlp.W_in"][:, idx], donor["blocks.0.mlp.W_in"][:, idx])
    # by frequency cluster: every chosen neuron is clustered on one of the asked frequencies
    nf = fourier.neuron_frequencies(donor, grokked.task, cfg=grokked.model_cfg)
    k = max((c, f) for f, c in nf.cluster_sizes().items() if f > 0)[1]
    chosen = iv.select_neurons(grokked, grokked.task, [k])
    assert chosen and all(int(nf.freq[i]) == k for i in chosen)
    assert len(iv.select_neurons(grokked, grokked.task)) == int((nf.freq > 0).sum())


def test_transplant_shape_and_index_errors(grokked, tiny4):
    with pytest.raises(ValueError, match="donor and recipient have different shapes"):
        iv.transplant_neurons(tiny4, grokked, [0])
    with pytest.raises(ValueError, match=r"neuron indices must be in \[0, 256\)"):
        iv.transplant_neurons(grokked, grokked, [3, 256], donor_step=400, recipient_step=100)


def test_transplant_experiment_trains_treated_and_control(grokked, tmp_path):
    res = iv.transplant_experiment(grokked, 400, grokked, 100, steps=30, out_dir=tmp_path)
    assert res["n_neurons"] > 0
    for arm in ("transplant", "control"):
        assert res[arm]["from_step"] == 100 and res[arm]["steps"] == 30
        assert mg.load_run(tmp_path / arm).steps[0] == 100
    # both arms start at the recipient checkpoint; only the transplant arm starts changed
    control0 = mg.load_run(tmp_path / "control").metrics.iloc[0]
    treated0 = mg.load_run(tmp_path / "transplant").metrics.iloc[0]
    assert control0["test_loss"] == pytest.approx(grokked.metrics.set_index("step").loc[100, "test_loss"], rel=1e-5)
    assert treated0["test_loss"] == pytest.approx(res["after_transplant"]["test_loss"], rel=1e-5)
    assert abs(treated0["test_loss"] - control0["test_loss"]) > 1e-3


# --- freezing ------------------------------------------------------------------------------------


def test_intervention_groups_for_1_2_4_layers():
    for n in (1, 2, 4):
        groups = iv.intervention_groups(n)
        assert ("middle_layers" in groups) == (n >= 3)
        assert set(groups) <= set(iv.INTERVENTIONS) and len(groups) == 11 - (n < 3)
    assert iv.intervention_groups(1)["entry_layer"] == iv.intervention_groups(1)["exit_layer"]
    assert iv.intervention_groups(4)["middle_layers"] == ("blocks.1.*", "blocks.2.*")
    # seed 000's trainable-parameter counts on its 4-layer d_model 128 model (its head had 99
    # outputs and no bias; ours has 97 outputs and a frozen bias, so count without the head)
    cfg = mg.get_preset("division4")
    mcfg = cfg.model.resolve(mg.Task(cfg.task))
    shapes = mg.model.param_shapes(mcfg)
    counts = {n: sum(math.prod(s) for k, s in shapes.items() if not k.startswith("unembed")
                     and any(fnmatch.fnmatchcase(k, p) for p in pats))
              for n, pats in iv.intervention_groups(4).items()}
    seed_total = 820_736
    published_trainable = {"embeddings": 806_016, "exit_layer": 622_464, "exit_attn": 754_688,
                           "exit_mlp": 689_024, "entry_layer": 622_464, "middle_layers": 424_192,
                           "attn_all": 555_520, "mlp_all": 292_864}
    for n, trainable in published_trainable.items():
        frozen = seed_total - trainable
        # the seed's token table had 99 rows and its positional table 16; ours have p + 1 = 98
        # and n_ctx = 3, so (1 + 13) * 128 fewer embedding weights
        assert counts[n] == frozen - (14 * 128 if n == "embeddings" else 0), n


def test_each_intervention_freezes_exactly_its_group(tiny4, tmp_path):
    before = tiny4.params(10)
    for name, patterns in iv.intervention_groups(4).items():
        res = iv.freeze_and_continue(tiny4, 10, name, steps=3, out=tmp_path / name)
        run = mg.load_run(res.path)
        assert run.steps == [10, 13] and list(run.metrics["step"])[0] == 10
        after = run.params(13)
        frozen = {k for k in before if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
        assert bool(frozen) == (name not in ("baseline", "no_weight_decay")), name
        for k in before:
            assert torch.equal(before[k], after[k]) == (k in frozen), (name, k)
        assert res.trainable_params == res.total_params - sum(before[k].numel() for k in frozen)
        assert run.config.train.weight_decay == (0.0 if name == "no_weight_decay" else 1.0)


def test_intervention_errors(tiny4, grokked):
    with pytest.raises(ValueError, match="unknown intervention 'freeze_all'.*allowed: baseline, no_weight_decay"):
        iv.freeze_and_continue(tiny4, 10, "freeze_all", steps=2)
    with pytest.raises(ValueError, match="middle_layers needs a model with at least 3 layers"):
        iv.freeze_and_continue(grokked, 100, "middle_layers", steps=2)
    with pytest.raises(ValueError, match="no checkpoint at step 11"):
        iv.freeze_and_continue(tiny4, 11, "head", steps=2)
    with pytest.raises(ValueError, match="only for its newest checkpoint"):
        iv.freeze_and_continue(tiny4, 10, "baseline", steps=2, optimizer="carry")


def test_continuing_with_carried_optimizer_replays_the_run(tmp_path):
    # the step count, warm-up, minibatch order and AdamW moments all carry over, so training
    # 20 steps and continuing 10 is the same as training 30
    short = mg.train(tiny_cfg(steps=20, warmup_steps=5), tmp_path / "short", progress=False)
    full = mg.train(tiny_cfg(steps=30, warmup_steps=5), tmp_path / "full", progress=False)
    carried = iv.continue_training(short, 20, 10, out=tmp_path / "carry", optimizer="carry")
    fresh = iv.continue_training(short, 20, 10, out=tmp_path / "fresh")
    target = full.params(30)
    got = mg.load_run(carried.path).params(30)
    assert all(torch.allclose(got[k], target[k], atol=1e-6) for k in target)
    fresh_p = mg.load_run(fresh.path).params(30)
    assert not all(torch.allclose(fresh_p[k], target[k], atol=1e-6) for k in target)
    m = mg.load_run(carried.path).metrics.set_index("step")
    assert m.loc[30, "test_loss"] == pytest.approx(full.metrics.set_index("step").loc[30, "test_loss"], rel=1e-5)


# --- embedding transfer -------------------------------------------------------------------------


def test_embedding_transfer_starts_from_the_source_embeddings(tiny4, tmp_path):
    base = tiny_cfg(n_layers=4, steps=5)
    cfg = mg.RunConfig(task=base.task, model=mg.ModelConfig(**(base.model.to_dict() | {"seed": 7})), train=base.train)
    src = tiny4.params(20)
    run = iv.embedding_transfer(tiny4, 20, cfg, tmp_path / "moved", freeze=True)
    start, end = run.params(0), run.params(5)
    fresh = mg.init_params(cfg.model.resolve(run.task))
    for k in start:
        if k in iv.EMBEDDING_KEYS:
            assert torch.equal(start[k], src[k]) and torch.equal(end[k], src[k])
        else:
            assert torch.equal(start[k], fresh[k]), k
    with pytest.raises(ValueError, match="source and target have different shapes"):
        iv.embedding_transfer(tiny4, 20, mg.RunConfig(task=mg.TaskConfig(op="add", p=11, frac=0.5),
                                                       model=cfg.model, train=cfg.train), tmp_path / "bad")


def test_freeze_sweep_resumes_and_skips_finished_continuations(tiny4, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    first = iv.freeze_sweep(tiny4, [10], ["baseline", "head"], steps=5, out_dir=out, progress=False)
    assert list(first["name"]) == ["baseline", "head"] and (out / "results.jsonl").exists()
    # drop "head" from the log as if the process had died during it, then resume: only head trains
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n")
    trained = []
    real = iv.freeze_and_continue

    def counting(run, s, name, steps, **kw):
        trained.append(name)
        return real(run, s, name, steps, **kw)

    monkeypatch.setattr(iv, "freeze_and_continue", counting)
    again = iv.freeze_sweep(tiny4, [10], ["baseline", "head"], steps=5, out_dir=out, progress=False)
    assert trained == ["head"]
    assert again.drop(columns="seconds").equals(first.drop(columns="seconds"))  # deterministic continuation


def test_freeze_and_continue_without_out_leaves_no_temporary_run_behind(tiny4, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile reads TMPDIR again
    kept = iv.freeze_and_continue(tiny4, 10, "head", steps=3, out=tmp_path / "kept")
    res = iv.freeze_and_continue(tiny4, 10, "head", steps=3)  # README's snippet: no out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # no mechgrok-head-* directory
    assert res.path is None and kept.path == str(tmp_path / "kept")
    # the temporary run was trained all the same: same metrics as the kept one
    assert list(res.metrics["step"]) == [10, 13]
    pd.testing.assert_frame_equal(res.metrics.reset_index(drop=True), kept.metrics.reset_index(drop=True))
    assert (res.grokking_step, res.final_test_acc) == (kept.grokking_step, kept.final_test_acc)
