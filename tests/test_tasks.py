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
