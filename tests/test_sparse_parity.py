"""Sampled parity tables (``TaskConfig.n_samples`` / ``data_seed``) and the ``sparse_parity``
preset (n = 40, k = 3): each table is checked against bits and XORs computed from scratch in
numpy/itertools, never through ``Task``'s own construction."""

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app
from mechgrok.presets import configure

SMALL_MODEL = mg.ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=0)


def sampled(n_bits=40, k_bits=3, n_samples=600, data_seed=0, seed=0, frac=0.5) -> mg.Task:
    return mg.Task(mg.TaskConfig(op="parity", n_bits=n_bits, k_bits=k_bits, n_samples=n_samples,
                                 data_seed=data_seed, seed=seed, frac=frac))


def bits_of(task: mg.Task) -> np.ndarray:
    return task.inputs[:, :task.cfg.n_bits].numpy()


# --- the table --------------------------------------------------------------------------------


def test_labels_are_the_xor_of_the_first_k_bits_and_inputs_end_with_the_equals_token():
    task = sampled(n_bits=40, k_bits=3, n_samples=600)
    x = task.inputs.numpy()
    assert x.shape == (600, 41)
    assert set(np.unique(x[:, :40])) <= {0, 1} and (x[:, 40] == 2).all()
    want = np.bitwise_xor.reduce(x[:, :3], axis=1)
    np.testing.assert_array_equal(task.labels.numpy(), want)
    assert task.cfg.n_examples == len(task.labels) == 600


def test_rows_are_distinct_and_a_draw_of_every_string_is_the_whole_cube():
    task = sampled(n_bits=40, n_samples=2000)
    assert len({tuple(r) for r in bits_of(task).tolist()}) == 2000
    whole = sampled(n_bits=5, k_bits=2, n_samples=32, frac=0.5)  # all 2^5 strings, in drawn order
    assert sorted(map(tuple, bits_of(whole).tolist())) == list(itertools.product((0, 1), repeat=5))


def test_the_draw_is_uniform_each_bit_and_the_label_balanced():
    x = bits_of(sampled(n_bits=40, n_samples=4000))
    # each bit is a fair coin: mean 0.5, sd 0.5 / sqrt(4000) = 0.0079; allow 5 sd
    assert np.abs(x.mean(0) - 0.5).max() < 0.04
    # bits independent of each other: adjacent pairs agree half the time
    assert abs((x[:, 1:] == x[:, :-1]).mean() - 0.5) < 0.01


def test_data_seed_picks_the_table_and_the_split_seed_only_the_split():
    a, same = sampled(data_seed=0, seed=0), sampled(data_seed=0, seed=0)
    torch.testing.assert_close(a.inputs, same.inputs, rtol=0, atol=0)
    assert not torch.equal(a.inputs, sampled(data_seed=1, seed=0).inputs)
    resplit = sampled(data_seed=0, seed=1)
    torch.testing.assert_close(resplit.inputs, a.inputs, rtol=0, atol=0)
    torch.testing.assert_close(resplit.labels, a.labels, rtol=0, atol=0)
    assert set(resplit.train_idx.tolist()) != set(a.train_idx.tolist())
    assert len(resplit.train_idx) == len(a.train_idx) == 300


def test_enumerated_parity_is_unchanged_every_string_in_order_and_the_seeded_split():
    task = mg.Task(mg.TaskConfig(op="parity", n_bits=10, frac=0.1, seed=0))
    rows = np.array(list(itertools.product((0, 1), repeat=10)))  # most significant bit first
    np.testing.assert_array_equal(bits_of(task), rows)
    np.testing.assert_array_equal(task.labels.numpy(), rows.sum(1) % 2)
    perm = torch.randperm(1024, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(task.train_idx, perm[:102], rtol=0, atol=0)
    assert "drawn" not in repr(task) and "600 strings drawn (data seed 3)" in repr(sampled(data_seed=3))


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, field", [
    (dict(op="parity", n_bits=40), "n_bits"),  # above the enumerable limit without n_samples
    (dict(op="parity", n_bits=63, n_samples=100), "n_bits"),  # beyond an int64 code
    (dict(op="parity", n_bits=4, n_samples=17), "n_samples"),  # more than 2^4 distinct strings
    (dict(op="parity", n_bits=10, n_samples=1), "n_samples"),
    (dict(op="add", p=13, n_samples=50), "n_samples"),  # modular tasks enumerate every pair
])
def test_bad_settings_fail_at_construction_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=rf"TaskConfig\.{field}"):
        mg.TaskConfig(**kw)


def test_the_n_bits_error_above_20_says_that_n_samples_lifts_the_limit():
    with pytest.raises(ValueError, match="n_samples"):
        mg.TaskConfig(op="parity", n_bits=21)


# --- run directories --------------------------------------------------------------------------


def _tiny_run(task_cfg, out):
    cfg = mg.RunConfig(task=task_cfg, model=SMALL_MODEL,
                       train=mg.TrainConfig(steps=4, lr=1e-3, eval_every=2, checkpoint_every=4, device="cpu"))
    return cfg, mg.train(cfg, out, progress=False)


def test_a_sampled_config_round_trips_through_config_json(tmp_path):
    task_cfg = mg.TaskConfig(op="parity", n_bits=40, k_bits=3, n_samples=300, data_seed=7, frac=0.5, seed=2)
    cfg, _ = _tiny_run(task_cfg, tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["task"]
    assert stored["n_samples"] == 300 and stored["data_seed"] == 7
    run = mg.load_run(tmp_path / "run")
    assert run.config == cfg
    torch.testing.assert_close(run.task.inputs, mg.Task(task_cfg).inputs, rtol=0, atol=0)
    torch.testing.assert_close(run.task.train_idx, mg.Task(task_cfg).train_idx, rtol=0, atol=0)


def test_a_run_written_before_sampled_tables_existed_still_loads(tmp_path):
    task_cfg = mg.TaskConfig(op="parity", n_bits=8, frac=0.5, seed=1)
    cfg, _ = _tiny_run(task_cfg, tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("n_samples", "data_seed"):
        del meta["task"][key]
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    run = mg.load_run(tmp_path / "old")
    assert run.config == cfg and run.task.cfg.n_samples is None and len(run.task.labels) == 256


# --- the preset -------------------------------------------------------------------------------


def test_the_preset_is_40_bit_3_sparse_parity_on_a_sampled_table():
    cfg = mg.get_preset("sparse_parity")
    assert (cfg.task.op, cfg.task.n_bits, cfg.task.k_bits) == ("parity", 40, 3)
    assert cfg.task.n_samples is not None and cfg.preset == "sparse_parity"


def test_the_preset_trains_through_the_cli_and_its_metrics_match_the_checkpoint(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    monkeypatch.setattr(go.Figure, "write_image", lambda *a, **k: None)  # no Chromium in a unit test
    out = tmp_path / "sp"
    r = CliRunner().invoke(app, ["train", "--preset", "sparse_parity", "--steps", "3", "--eval-every", "3",
                                 "--checkpoint-every", "3", "--out", str(out), "--no-progress", "--no-png"])
    assert r.exit_code == 0, r.output
    run = mg.load_run(out)
    assert run.config.preset == "sparse_parity" and run.steps == [0, 3]
    with torch.no_grad():
        logits = mg.forward(run.params(3), run.model_cfg, run.task.test_inputs)
    want = torch.as_tensor(np.bitwise_xor.reduce(bits_of(run.task)[run.task.test_idx.numpy(), :3], axis=1))
    acc = float((logits.argmax(-1) == want).float().mean())
    assert run.metrics["test_acc"].iloc[-1] == pytest.approx(acc, abs=1e-6)


def test_an_ensemble_of_two_split_seeds_shares_the_table_and_evaluates_each_on_its_own_split(tmp_path):
    base = configure("sparse_parity", steps=2, eval_every=2, checkpoint_every=2, device="cpu")
    cfgs = [replace(base, task=replace(base.task, seed=s)) for s in (0, 1)]
    members = mg.ensemble.train_ensemble(cfgs, [tmp_path / f"m{s}" for s in (0, 1)], progress=False)
    torch.testing.assert_close(members[0].task.inputs, members[1].task.inputs, rtol=0, atol=0)
    assert set(members[0].task.train_idx.tolist()) != set(members[1].task.train_idx.tolist())
    torch.testing.assert_close(members[1].params(0), members[0].params(0), rtol=0, atol=0)
    # Same init (same model seed), so the step-0 losses differ only through the split: each
    # member's recorded loss must be its own split's, closer to it than to the other member's.
    def ce(m, idx):
        with torch.no_grad():
            logits = mg.forward(members[0].params(0), m.model_cfg, m.task.inputs[idx]).double()
        return float(torch.nn.functional.cross_entropy(logits, m.task.labels[idx]))

    for m, other in zip(members, members[::-1]):
        for col, own, theirs in (("train_loss", m.task.train_idx, other.task.train_idx),
                                 ("test_loss", m.task.test_idx, other.task.test_idx)):
            got, want, wrong = m.metrics[col].iloc[0], ce(m, own), ce(m, theirs)
            assert abs(got - want) < 0.1 * abs(want - wrong), (col, got, want, wrong)
