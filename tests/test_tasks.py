import pytest
import torch

from mechgrok.tasks import Task, TaskConfig, make_task


@pytest.mark.parametrize("op,fn", [
    ("add", lambda a, b, p: (a + b) % p),
    ("sub", lambda a, b, p: (a - b) % p),
    ("mul", lambda a, b, p: (a * b) % p),
    ("quad", lambda a, b, p: (a * a + a * b + b * b) % p),
])
def test_labels_match_the_operation_on_every_pair(op, fn):
    t = make_task(op, p=13, frac=0.5)
    assert len(t.labels) == 13 * 13
    a, b = t.inputs[:, 0], t.inputs[:, 1]
    assert torch.equal(t.labels, fn(a, b, 13))
    assert (t.inputs[:, 2] == 13).all()  # the '=' token is id p


def test_division_skips_zero_and_inverts_multiplication():
    t = make_task("div", p=11, frac=0.5)
    assert len(t.labels) == 11 * 10 and (t.inputs[:, 1] != 0).all()
    a, b, c = t.inputs[:, 0], t.inputs[:, 1], t.labels
    assert torch.equal((c * b) % 11, a)
    assert t.grid_shape == (11, 10)


def test_pairs_enumerate_a_major_so_vectors_reshape_to_the_grid():
    t = make_task("add", p=7, frac=0.5)
    assert torch.equal(t.inputs[:, 0].view(7, 7), torch.arange(7)[:, None].expand(7, 7))
    assert torch.equal(t.inputs[:, 1].view(7, 7), torch.arange(7)[None, :].expand(7, 7))


def test_split_is_seeded_disjoint_and_sized_by_frac():
    t1, t2 = make_task("add", p=113, frac=0.3, seed=5), make_task("add", p=113, frac=0.3, seed=5)
    assert torch.equal(t1.train_idx, t2.train_idx)
    assert len(t1.train_idx) == 3830  # Nanda's 30% of 113^2
    assert len(set(t1.train_idx.tolist()) & set(t1.test_idx.tolist())) == 0
    assert len(t1.train_idx) + len(t1.test_idx) == 113 * 113
    assert not torch.equal(t1.train_idx, make_task("add", p=113, frac=0.3, seed=6).train_idx)


def test_parity_labels_are_xor_of_bits():
    t = Task(TaskConfig(op="parity", n_bits=6, frac=0.5))
    bits = t.inputs[:, :6]
    assert torch.equal(t.labels, bits.sum(1) % 2)
    assert t.d_vocab == 3 and t.d_vocab_out == 2 and t.n_ctx == 7
    sparse = Task(TaskConfig(op="parity", n_bits=6, k_bits=2, frac=0.5))
    assert torch.equal(sparse.labels, sparse.inputs[:, :2].sum(1) % 2)


def test_symbol_aliases_name_the_same_op():
    assert TaskConfig(op="/").op == "div" and TaskConfig(op="+").op == "add"


@pytest.mark.parametrize("kwargs,field", [
    (dict(p=4), "p"), (dict(p=2), "p"), (dict(p=1), "p"), (dict(frac=0.0), "frac"), (dict(frac=1.0), "frac"),
    (dict(op="pow"), "op"), (dict(op="parity", n_bits=1), "n_bits"), (dict(op="parity", n_bits=40), "n_bits"),
    (dict(op="parity", n_bits=5, k_bits=6), "k_bits"),
])
def test_bad_config_fails_early_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"TaskConfig\.{field}"):
        TaskConfig(**kwargs)


def test_an_explicit_split_is_kept_in_order_and_the_test_set_is_the_rest():
    task = make_task("add", p=7, train_idx=[40, 3, 17, 0])
    assert task.train_idx.tolist() == [40, 3, 17, 0]
    assert task.test_idx.tolist() == [i for i in range(49) if i not in (40, 3, 17, 0)]
    assert task.cfg.frac == pytest.approx(4 / 49)
    assert "explicit split" in repr(task)


def test_an_explicit_split_round_trips_through_the_run_config():
    import json

    import mechgrok as mg

    cfg = mg.RunConfig(task=mg.TaskConfig(op="sub", p=7, train_idx=(5, 1, 2)))
    back = mg.RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.task == cfg.task and mg.Task(back.task).train_idx.tolist() == [5, 1, 2]


@pytest.mark.parametrize("idx,msg", [([0, 0], "twice"), ([49], "out of range 0..48"), (list(range(49)), "non-empty")])
def test_a_bad_explicit_split_fails_naming_the_field(idx, msg):
    with pytest.raises(ValueError, match=rf"TaskConfig\.train_idx.*{msg}|{msg}"):
        make_task("add", p=7, train_idx=idx)


def test_measures_honour_an_explicit_split():
    # excluded loss and the train/test metrics read the task's own split, not a seeded one
    import torch

    import mechgrok as mg
    from mechgrok import progress

    seeded = make_task("add", p=11, frac=0.5, seed=0)
    given = make_task("add", p=11, train_idx=seeded.test_idx[:40])
    cfg = mg.ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32).resolve(given)
    params = mg.init_params(cfg)
    logits = mg.forward(params, cfg, given.inputs).double()
    by_hand = -logits.log_softmax(-1)[seeded.test_idx[:40], given.labels[seeded.test_idx[:40]]].mean()
    assert progress.excluded_loss(params, given, [], cfg=cfg) == pytest.approx(float(by_hand), rel=1e-9)
    m = mg.evaluation.split_metrics(logits, given)
    rest = torch.tensor([i for i in range(121) if i not in set(seeded.test_idx[:40].tolist())])
    assert m["test_loss"] == pytest.approx(float(-logits.log_softmax(-1)[rest, given.labels[rest]].mean()), rel=1e-9)

