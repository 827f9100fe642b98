import math

import pytest
import torch

from mechgrok import fourier
from mechgrok.model import ModelConfig, to_tl_model
from mechgrok.tasks import make_task


def test_basis_is_orthonormal_in_nandas_order():
    for n in (3, 7, 23, 113, 6, 22):  # primes, and the even orders of multiplicative groups
        basis, labels = fourier.fourier_basis(n)
        assert basis.shape == (n, n) and len(labels) == n
        assert torch.allclose(basis @ basis.T, torch.eye(n), atol=1e-5), n
    basis, labels = fourier.fourier_basis(7)
    assert labels == ["const", "cos 1", "sin 1", "cos 2", "sin 2", "cos 3", "sin 3"]
    x = torch.arange(7, dtype=torch.float64)
    k = 2
    cos_row, sin_row = fourier.freq_rows(k)
    assert (cos_row, sin_row) == (3, 4)
    assert torch.allclose(basis[cos_row].double(), torch.cos(2 * math.pi * k * x / 7) * math.sqrt(2 / 7), atol=1e-6)
    assert torch.allclose(basis[sin_row].double(), torch.sin(2 * math.pi * k * x / 7) * math.sqrt(2 / 7), atol=1e-6)
    assert torch.allclose(basis[0], torch.full((7,), 1 / math.sqrt(7)))
    assert fourier.fourier_basis(6)[1][-1] == "cos 3"  # even n: the lone Nyquist row
    assert fourier.freq_index(7).tolist() == [0, 1, 1, 2, 2, 3, 3]


def test_primitive_root_generates_the_group():
    for p in (3, 5, 23, 97, 113):
        g = fourier.primitive_root(p)
        assert sorted(pow(g, j, p) for j in range(p - 1)) == list(range(1, p))
    assert fourier.primitive_root(23) == 5


def _waves(x: torch.Tensor, n: int, freqs) -> torch.Tensor:
    """Columns cos k, sin k of each frequency, evaluated at group coordinates x."""
    cols = []
    for k in freqs:
        cols += [torch.cos(2 * math.pi * k * x / n), torch.sin(2 * math.pi * k * x / n)]
    return torch.stack(cols, dim=1).float()


def planted_model(task, freqs, coord=None, n=None, d_model=32):
    """A 1-layer model whose embedding holds only cos/sin of ``freqs``, whose attention
    averages the three positions (W_Q = 0), and whose neurons each read one wave: neuron j
    reads wave j mod 2K plus a large bias, so ReLU is the identity and its activation is
    (u(a) + u(b)) / 3 + const, all in one frequency's 3x3 block. Neurons 60..63 read two
    frequencies at once (unclustered). W_U holds the same waves, so W_L = W_out W_U does too."""
    p = task.p
    n = n or p
    coord = torch.arange(p) if coord is None else coord
    cfg = ModelConfig(n_layers=1, d_model=d_model, n_heads=4, d_head=8, d_mlp=64).resolve(task)
    waves = _waves(coord.double(), n, freqs)  # [p, 2K]
    if (coord < 0).any():
        waves[coord < 0] = 0.0  # residues outside the group carry nothing
    W_E = torch.zeros(p + 1, d_model)
    W_E[:p, : waves.shape[1]] = waves
    eye = torch.eye(d_model)
    P = {
        "embed.W_E": W_E, "pos_embed.W_pos": torch.zeros(3, d_model),
        "blocks.0.attn.W_Q": torch.zeros(4, d_model, 8), "blocks.0.attn.W_K": torch.randn(4, d_model, 8),
        "blocks.0.attn.W_V": torch.stack([eye[:, 8 * h: 8 * h + 8] for h in range(4)]),
        "blocks.0.attn.W_O": torch.stack([eye[8 * h: 8 * h + 8] for h in range(4)]),
        "blocks.0.attn.b_Q": torch.zeros(4, 8), "blocks.0.attn.b_K": torch.zeros(4, 8),
        "blocks.0.attn.b_V": torch.zeros(4, 8), "blocks.0.attn.b_O": torch.zeros(d_model),
        "blocks.0.mlp.b_in": torch.full((64,), 10.0), "blocks.0.mlp.b_out": torch.zeros(d_model),
        "unembed.b_U": torch.zeros(p),
    }
    W_in = torch.zeros(d_model, 64)
    n_waves = waves.shape[1]
    for j in range(60):
        W_in[j % n_waves, j] = 1.0
    for j in range(60, 64):  # cos of the first and of the last frequency together
        W_in[0, j] = W_in[n_waves - 2, j] = 1.0
    P["blocks.0.mlp.W_in"] = W_in
    P["blocks.0.mlp.W_out"] = W_in.T.contiguous()
    P["unembed.W_U"] = W_E[:p].T.contiguous()
    return P, cfg


def test_planted_embedding_and_unembedding_frequencies_are_found_exactly():
    task = make_task("add", p=23, frac=0.5)
    params, cfg = planted_model(task, [3, 7])
    e = fourier.embedding_spectrum(params, task)
    assert e.shape == (12,)
    assert set(torch.nonzero(e > 1e-3).flatten().tolist()) == {3, 7}
    assert fourier.key_frequencies(params, task, rule="embedding") == [3, 7]
    wl = fourier.W_L_spectrum(params, task)
    assert set(torch.nonzero(wl > 1e-3).flatten().tolist()) == {3, 7}
    assert fourier.key_frequencies(params, task, rule="W_L") == [3, 7]


def test_planted_neurons_get_their_frequency_and_mixed_ones_are_unclustered():
    task = make_task("add", p=23, frac=0.5)
    params, cfg = planted_model(task, [3, 7])
    nf = fourier.neuron_frequencies(params, task, cfg=cfg)
    expected = torch.tensor([3 if (j % 4) < 2 else 7 for j in range(60)])
    assert torch.equal(nf.freq[:60], expected)
    assert torch.allclose(nf.share[:60], torch.ones(60), atol=1e-4)
    assert (nf.freq[60:] == -1).all() and (nf.share[60:] < 0.6).all()
    assert nf.cluster_sizes() == {-1: 4, 3: 30, 7: 30}
    assert fourier.key_frequencies(params, task, cfg=cfg) == [3, 7]
    # the TL model of the same weights gives the same answer
    tl = to_tl_model(params, cfg)
    assert torch.equal(fourier.neuron_frequencies(tl, task).freq, nf.freq)
    assert fourier.key_frequencies(tl, task) == [3, 7]


def test_shares_count_the_whole_3x3_block_but_not_other_frequencies():
    p = 13
    task = make_task("add", p=p, frac=0.5)
    a, b = task.a.double(), task.b.double()
    w = 2 * math.pi / p
    acts = torch.stack([torch.cos(w * 2 * a) * torch.sin(w * 2 * b),  # cross term: still frequency 2
                        torch.cos(w * 2 * a) + torch.cos(w * 5 * b),  # half 2, half 5
                        torch.cos(w * 4 * (a + b))], dim=1).float()
    coeffs = fourier.fourier_2d(fourier.to_grid(acts, task), fourier.coords(task).basis)
    shares = fourier.frequency_shares(coeffs)
    assert shares[0, 2] == pytest.approx(1.0, abs=1e-5)
    assert shares[1, 2] == pytest.approx(0.5, abs=1e-5) and shares[1, 5] == pytest.approx(0.5, abs=1e-5)
    assert shares[2, 4] == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(shares.sum(1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("op", ["mul", "div"])
def test_discrete_log_basis_makes_multiplicative_circuits_sparse(op):
    task = make_task(op, p=23, frac=0.5)
    c = fourier.coords(task)  # auto -> dlog for mul and div
    assert c.kind == "dlog" and c.n == 22 and c.coord[0] == -1
    assert sorted(c.elements.tolist()) == list(range(1, 23))
    params, cfg = planted_model(task, [2, 5], coord=c.coord, n=22)
    e = fourier.embedding_spectrum(params, task)
    assert e.shape == (12,) and set(torch.nonzero(e > 1e-3).flatten().tolist()) == {2, 5}
    # the same embedding looks dense in the additive basis
    assert (fourier.embedding_spectrum(params, task, basis="add")[1:] > 1e-3).sum() > 5
    nf = fourier.neuron_frequencies(params, task, cfg=cfg)
    assert set(nf.freq[:60].tolist()) == {2, 5} and torch.allclose(nf.share[:60], torch.ones(60), atol=1e-4)
    assert fourier.key_frequencies(params, task, rule="W_L") == [2, 5]


def test_division_grid_in_the_additive_basis_fills_the_missing_column_with_the_mean():
    task = make_task("div", p=7, frac=0.5)
    values = torch.arange(len(task.labels), dtype=torch.float32)[:, None]
    grid = fourier.to_grid(values, task, basis="add")
    assert grid.shape == (7, 7, 1)
    assert (grid[:, 0] == 0).all()  # b = 0: no example, the (centred) mean
    assert grid[1, 1, 0] == pytest.approx(float(values[7 - 1 + 0]) - float(values.mean()))  # (a=1, b=1)


def test_bad_arguments_fail_with_the_allowed_values():
    task = make_task("add", p=11, frac=0.5)
    params, _ = planted_model(task, [1])
    with pytest.raises(ValueError, match="rule must be one of"):
        fourier.key_frequencies(params, task, rule="bogus")
    with pytest.raises(ValueError, match="basis must be one of"):
        fourier.embedding_spectrum(params, task, basis="log")
    with pytest.raises(ValueError, match="modular task"):
        fourier.coords(make_task("parity", n_bits=4, frac=0.5))


def test_clustered_means_more_than_the_threshold_as_in_nanda():
    # shares exactly at 0.85 are not "more than 85%"; just above is
    shares = torch.zeros(3, 4)
    shares[0, 1], shares[1, 2], shares[2, 3] = 0.85, 0.8501, 0.9
    nf = fourier.NeuronFrequencies(shares, 0.85)
    assert nf.clustered.tolist() == [False, True, True]
    assert nf.freq.tolist() == [-1, 2, 3]
