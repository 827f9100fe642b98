"""Tasks from any finite binary operation (``TaskConfig(op="table", table=...)``): the table, its
layout, training and resuming, the CLI, the Fourier refusal and the generic analysis."""

import itertools
import json

import numpy as np
import pytest
import torch

import mechgrok as mg
from mechgrok import fourier, progress, tasks
from mechgrok.tasks import Task, TaskConfig, permutation_group_table, table_from_function


def _s3_by_hand():
    """S_3 composition computed independently: permutations as numpy arrays of images, composed
    by fancy indexing ((a o b)[i] = a[b[i]]), looked up by row equality."""
    perms = np.array(list(itertools.permutations(range(3))))
    table = np.zeros((6, 6), dtype=int)
    for i, a in enumerate(perms):
        for j, b in enumerate(perms):
            composed = a[b]
            table[i, j] = int(np.flatnonzero((perms == composed).all(1))[0])
    return table


S3 = np.array(permutation_group_table(3))
CYCLIC_ERROR = r"Fourier measures need a cyclic group \(add/sub/mul/div mod p\); task table \(n=6\) is not one"


def _cfg(steps=30, table=None):
    return mg.RunConfig(
        task=TaskConfig(op="table", table=S3 if table is None else table, frac=0.5, seed=1),
        model=mg.ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=1),
        train=mg.TrainConfig(steps=steps, lr=3e-3, weight_decay=1.0, eval_every=10, checkpoint_every=10, seed=1),
    )


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory):
    return mg.train(_cfg(), tmp_path_factory.mktemp("table") / "s3", progress=False)


# --- the table ---------------------------------------------------------------------------------


def test_s3_table_matches_an_independent_composition():
    assert S3.shape == (6, 6)
    assert np.array_equal(S3, _s3_by_hand())


def test_s3_satisfies_the_group_axioms_and_is_not_abelian():
    n = 6
    e = [x for x in range(n) if all(S3[x, b] == b and S3[b, x] == b for b in range(n))]
    assert e == [0]  # the identity permutation comes first in lexicographic order
    for a in range(n):
        inv = [b for b in range(n) if S3[a, b] == 0]
        assert len(inv) == 1 and S3[inv[0], a] == 0
    for a, b, c in itertools.product(range(n), repeat=3):
        assert S3[S3[a, b], c] == S3[a, S3[b, c]]
    assert not np.array_equal(S3, S3.T)
    assert np.array_equal(np.array(permutation_group_table(2)), [[0, 1], [1, 0]])


def test_table_from_function_is_f_on_every_pair():
    t = np.array(table_from_function(5, lambda a, b: (2 * a + b * b) % 5))
    a, b = np.meshgrid(np.arange(5), np.arange(5), indexing="ij")
    assert np.array_equal(t, (2 * a + b * b) % 5)


def test_a_table_task_lays_out_pairs_like_the_modular_ops():
    task = Task(TaskConfig(op="table", table=S3, frac=0.5, seed=3))
    assert task.describe() == "table (n=6)" and task.p == 6 and task.cfg.p == 6
    assert (task.d_vocab, task.d_vocab_out, task.n_ctx) == (7, 6, 3)
    a, b = np.divmod(np.arange(36), 6)  # a-major
    assert np.array_equal(task.inputs.numpy(), np.stack([a, b, np.full(36, 6)], 1))
    assert np.array_equal(task.labels.numpy(), _s3_by_hand()[a, b])
    assert len(task.train_idx) == 18 and sorted(task.train_idx.tolist() + task.test_idx.tolist()) == list(range(36))
    other = Task(TaskConfig(op="table", table=S3, frac=0.5, seed=4))
    assert not torch.equal(task.train_idx, other.train_idx)  # the split seed works as for the modular ops
    given = Task(TaskConfig(op="table", table=S3, train_idx=[5, 0, 35]))
    assert given.train_idx.tolist() == [5, 0, 35] and len(given.test_idx) == 33


def test_a_table_is_normalised_hashable_and_round_trips_through_config_json():
    as_list = TaskConfig(op="table", table=S3.tolist())
    for form in (S3, torch.tensor(S3), tuple(map(tuple, S3.tolist())), [np.array(r) for r in S3]):
        assert TaskConfig(op="table", table=form) == as_list
    assert isinstance(as_list.table, tuple) and all(isinstance(r, tuple) for r in as_list.table)
    assert hash(as_list) == hash(TaskConfig(op="table", table=S3))
    cfg = mg.RunConfig(task=as_list)
    back = mg.RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.task.table == as_list.table


@pytest.mark.parametrize("table,msg", [
    ([[0, 1], [1]], r"TaskConfig\.table must be square: 2 rows but row 1 has 1 entries"),
    ([[0, 1, 0], [1, 0, 1]], r"TaskConfig\.table must be square"),
    ([[0, 2], [1, 0]], r"TaskConfig\.table entries must be in \[0, 2\).*T\[0\]\[1\] = 2"),
    ([[0, -1], [1, 0]], r"TaskConfig\.table entries must be in \[0, 2\)"),
    ([[0, 1.5], [1, 0]], r"TaskConfig\.table entries must be integers: T\[0\]\[1\] = 1.5"),
    ([[0, "1"], [1, 0]], r"TaskConfig\.table entries must be integers"),
    ([[0, True], [1, 0]], r"TaskConfig\.table entries must be integers"),
    ([[0]], r"TaskConfig\.table must have n >= 2"),
    (None, r"TaskConfig\.table is required"),
    ("0110", r"TaskConfig\.table must be an n x n list"),
])
def test_a_bad_table_fails_naming_the_field(table, msg):
    with pytest.raises(ValueError, match=msg):
        TaskConfig(op="table", table=table)


def test_a_table_caps_n_and_p_is_derived_from_it(monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(tasks, "MAX_TABLE_N", 4)
        TaskConfig(op="table", table=table_from_function(4, lambda a, b: a))
        with pytest.raises(ValueError, match=r"TaskConfig\.table has n=5 elements; at most 4"):
            TaskConfig(op="table", table=table_from_function(5, lambda a, b: a))
    with pytest.raises(ValueError, match=r"TaskConfig\.p is derived from the table \(n = 6\).*got p=7"):
        TaskConfig(op="table", table=S3, p=7)
    assert TaskConfig(op="table", table=S3, p=6).p == 6
    with pytest.raises(ValueError, match=r"TaskConfig\.table applies to op='table' only"):
        TaskConfig(op="add", p=7, table=S3)
    assert TaskConfig().p == 113 and TaskConfig(op="parity").p == 113  # the modular default is unchanged


# --- training, checkpoints, resume ----------------------------------------------------------------


def test_a_table_run_reloads_with_its_task(s3_run):
    run = mg.load_run(s3_run.path)
    cfg = json.loads((s3_run.path / "config.json").read_text())
    assert cfg["task"]["op"] == "table" and cfg["task"]["table"] == S3.tolist()
    assert run.config.task == _cfg().task
    assert torch.equal(run.task.labels, torch.tensor(_s3_by_hand()).flatten())
    assert torch.equal(run.task.train_idx, Task(_cfg().task).train_idx)
    assert run.steps == [0, 10, 20, 30]
    assert run.model_cfg.d_vocab == 7 and run.model_cfg.d_vocab_out == 6
    logits = run.model(30)(run.task.inputs)[:, -1]  # the TL model reads it back
    assert logits.shape == (36, 6)


def test_a_table_run_resumed_with_more_steps_is_bit_identical_to_one_uninterrupted_run(tmp_path):
    longer = _cfg(steps=50)
    whole = mg.train(longer, tmp_path / "whole", progress=False)
    mg.train(_cfg(steps=30), tmp_path / "ext", progress=False)
    extended = mg.resume(tmp_path / "ext", longer, progress=False)
    assert mg.load_run(tmp_path / "ext").config == longer
    assert extended.steps == whole.steps == [0, 10, 20, 30, 40, 50]
    a, b = whole.params(), extended.params()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert whole.metrics.equals(extended.metrics)


# --- Fourier measures refuse a non-cyclic table -----------------------------------------------------


def test_fourier_measures_refuse_a_table_that_is_not_cyclic(s3_run):
    task, params, cfg = s3_run.task, s3_run.params(), s3_run.model_cfg
    from mechgrok import interventions

    calls = [lambda: fourier.resolve_basis(task), lambda: fourier.coords(task), lambda: fourier.coords(task, "add"),
             lambda: fourier.valid_frequencies(task), lambda: fourier.to_grid(task.labels.float(), task),
             lambda: fourier.answer_directions(task, [1]), lambda: fourier.embedding_spectrum(params, task, cfg=cfg),
             lambda: fourier.key_frequencies(params, task, cfg=cfg),
             lambda: progress.restricted_loss(params, task, [1], cfg=cfg),
             lambda: progress.excluded_loss(params, task, [1], cfg=cfg),
             lambda: progress.measure_run(s3_run, progress=False),
             lambda: progress.measure_run(s3_run, freqs=[1], progress=False),
             lambda: mg.analysis.analyze(s3_run, freqs=[1], progress=False),
             lambda: interventions.token_projector(task, [1])]
    for call in calls:
        with pytest.raises(ValueError, match=CYCLIC_ERROR + ": use the non-Fourier measures"):
            call()
    assert fourier.fourier_unsupported(task) is not None


def test_a_table_that_is_addition_mod_n_is_recognised_and_measured_like_the_add_task():
    cyclic = Task(TaskConfig(op="table", table=table_from_function(7, lambda a, b: (a + b) % 7), train_idx=range(0, 49, 3)))
    add = mg.make_task("add", p=7, train_idx=range(0, 49, 3))
    assert torch.equal(cyclic.inputs, add.inputs) and torch.equal(cyclic.labels, add.labels)
    assert fourier.resolve_basis(cyclic) == "add" and fourier.coords(cyclic) == fourier.coords(add)
    assert torch.equal(fourier.answer_directions(cyclic, [1, 3])[0], fourier.answer_directions(add, [1, 3])[0])
    cfg = mg.ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32).resolve(add)
    params = mg.init_params(cfg)
    for level in progress.LEVELS:
        assert progress.restricted_loss(params, cyclic, [1, 2], level=level, cfg=cfg) == \
            progress.restricted_loss(params, add, [1, 2], level=level, cfg=cfg)
    with pytest.raises(ValueError, match=r"addition mod 7: only the add basis applies"):
        fourier.coords(cyclic, "dlog")
    # subtraction is a cyclic group too, but only literal addition is recognised
    sub = Task(TaskConfig(op="table", table=table_from_function(6, lambda a, b: (a - b) % 6)))
    with pytest.raises(ValueError, match=CYCLIC_ERROR):
        fourier.coords(sub)


# --- the generic analysis ----------------------------------------------------------------------


def _l2_by_hand(params):
    """Mean Frobenius norm over each head's W_Q, W_K, W_V, W_O as one matrix, W_in, W_out (numpy)."""
    p = {k: v.double().numpy() for k, v in params.items()}
    mats = [p[f"blocks.0.attn.W_{x}"][h] for x in "QKV" for h in range(p["blocks.0.attn.W_Q"].shape[0])]
    mats += [p["blocks.0.attn.W_O"].reshape(-1, p["blocks.0.attn.W_O"].shape[-1]), p["blocks.0.mlp.W_in"],
             p["blocks.0.mlp.W_out"]]
    return np.mean([np.linalg.norm(m) for m in mats])


def test_report_analysis_on_a_table_run_writes_the_generic_measures(s3_run, tmp_path):
    from mechgrok import report

    res, written = report.analysis(s3_run, tmp_path, progress_bar=False, png=False)
    table, ph = res.table, res.phases
    assert table["step"].tolist() == s3_run.steps
    assert table.attrs["fourier"] is False and "cyclic group" in table.attrs["note"]
    task = s3_run.task
    for i, step in enumerate(s3_run.steps):
        params = s3_run.params(step)
        with torch.no_grad():  # through the TL model: a second forward
            logits = s3_run.model(step)(task.inputs)[:, -1].double()
        for split, idx in (("train", task.train_idx), ("test", task.test_idx)):
            by_hand = torch.nn.functional.cross_entropy(logits[idx], task.labels[idx])
            assert table[f"{split}_loss"].iloc[i] == pytest.approx(float(by_hand), rel=1e-4)
            acc = (logits[idx].argmax(-1) == task.labels[idx]).double().mean()
            assert table[f"{split}_acc"].iloc[i] == pytest.approx(float(acc))
        assert table["weight_sq"].iloc[i] == pytest.approx(sum(float((v.double() ** 2).sum()) for v in params.values()))
        assert table["l2"].iloc[i] == pytest.approx(_l2_by_hand(params), rel=1e-9)
    assert ph.transitions == progress.transition_metrics(s3_run.metrics)
    assert (ph.circuit_start, ph.cleanup_start, ph.cleanup_end) == (None, None, None)
    names = sorted(p.name for p in written)
    assert names == ["progress.csv", "progress_losses.html", "weight_statistics.html"]
    assert all(p.exists() for p in written) and not (tmp_path / "phases.json").exists()
    import pandas as pd

    back = pd.read_csv(tmp_path / "progress.csv")
    assert np.allclose(back["l2"], table["l2"]) and "restricted_loss" not in back


# --- the CLI -------------------------------------------------------------------------------------


TINY = ["--frac", "0.5", "--d-model", "16", "--n-heads", "2", "--d-mlp", "32", "--steps", "20", "--eval-every", "10",
        "--checkpoint-every", "10", "--device", "cpu", "--no-progress", "--no-png"]


def _invoke(*args):
    from typer.testing import CliRunner

    from mechgrok.cli import app

    return CliRunner().invoke(app, list(args))


def test_train_table_from_a_json_file_then_analyze(tmp_path):
    f = tmp_path / "s3.json"
    f.write_text(json.dumps(_s3_by_hand().tolist()))
    res = _invoke("train", "--out", str(tmp_path / "run"), "--table", str(f), *TINY)
    assert res.exit_code == 0, res.output
    run = mg.load_run(tmp_path / "run")
    assert run.config.task.op == "table" and np.array_equal(np.array(run.config.task.table), _s3_by_hand())
    assert run.task.describe() == "table (n=6)" and run.steps == [0, 10, 20]
    res = _invoke("train", "--out", str(tmp_path / "run2"), "--op", "table", "--table", str(f), *TINY)
    assert res.exit_code == 0, res.output

    res = _invoke("analyze", str(tmp_path / "run"), "--no-progress", "--no-png")
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.output.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "Fourier measures need a cyclic group" in notes[0] and "skipped" in notes[0]
    assert f"wrote {tmp_path / 'run' / 'progress.csv'}" in res.output
    assert "final: train loss" in res.output and "key frequencies (" not in res.output


@pytest.mark.parametrize("content,extra,msg", [
    (None, [], "no such file"),
    ("[[0, 1], [1, 0", [], "not a JSON file"),
    ("[[0, 1], [1]]", [], "TaskConfig.table must be square"),
    ("[[0, 2], [1, 0]]", [], "entries must be in [0, 2)"),
    ('{"a": 1}', [], "must be an n x n list"),
    ("[[0, 1], [1, 0]]", ["--op", "add"], "cannot be combined with --op add"),
    ("[[0, 1], [1, 0]]", ["--p", "3"], "TaskConfig.p is derived from the table"),
])
def test_train_table_refuses_a_bad_file_in_one_line(tmp_path, content, extra, msg):
    f = tmp_path / "t.json"
    if content is not None:
        f.write_text(content)
    res = _invoke("train", "--out", str(tmp_path / "run"), "--table", str(f), *extra, *TINY)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert msg in lines[0]
    assert not (tmp_path / "run").exists()
