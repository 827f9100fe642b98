"""Optimizer-dynamics measures, each pinned to a closed form or a second computation
written from the definition (never the measure's own code path)."""

import math
from pathlib import Path
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import mechgrok as mg
from mechgrok import cycles as cy
from mechgrok import dynamics as dy
from mechgrok import measures as ms


@pytest.fixture(scope="module")
def small():
    """A tiny 2-layer model on a+b mod 7 with seeded random float64 weights (so
    that two differentiation paths agree to rounding): (params, cfg, task)."""
    task = mg.make_task("add", p=7, frac=0.6, seed=0)
    cfg = mg.ModelConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, seed=0).resolve(task)
    g = torch.Generator().manual_seed(0)
    params = {k: 0.5 * torch.randn(s, generator=g, dtype=torch.float64) for k, s in mg.model.param_shapes(cfg).items()}
    return params, cfg, task


def _orthonormal(n, k, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q[:, :k]


# --- Hessian top eigenvalue ---------------------------------------------------------------


@pytest.mark.parametrize("c, expected", [(3.0, 5.0), (7.0, 7.0)])
def test_power_iteration_finds_top_eigenvalue_of_planted_quadratic(c, expected):
    # loss = 1/2 w^T A w + c/2 |M|^2: Hessian blocks A (eigenvalues 5, 2, 1, .5, .1) and c I
    q = _orthonormal(5, 5, 0)
    A = q @ torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)) @ q.T

    def loss(p, x, y):
        w = p["w"].double()
        return 0.5 * w @ A @ w + 0.5 * c * (p["M"].double() ** 2).sum()

    params = {"w": torch.randn(5, dtype=torch.float64), "M": torch.randn(2, 3, dtype=torch.float64)}
    no_data = torch.empty(0)
    lam, v, _ = dy.top_eigenvalue_of(loss, params, no_data, no_data, iters=500, tol=1e-10)
    assert lam == pytest.approx(expected, rel=1e-6)
    # the vector is an eigenvector: H v = lam v, with H v written out by hand
    hv = torch.cat([A @ v["w"], c * v["M"].flatten()])
    assert torch.allclose(hv, expected * torch.cat([v["w"], v["M"].flatten()]), atol=1e-3)


def test_hvp_of_model_matches_double_backward(small):
    params, cfg, task = small
    x, y = dy.examples(task)
    v = dy._random_like(params, seed=3)
    hv = dy.hvp_fn(lambda p: dy.model_loss(cfg)(p, x, y), {k: t.detach() for k, t in params.items()})(v)
    # reverse-over-reverse with torch.autograd: a different differentiation path
    p = {k: t.clone().requires_grad_(True) for k, t in params.items()}
    logits = mg.forward(p, cfg, x)
    loss = torch.nn.functional.cross_entropy(logits.double(), y)
    g = torch.autograd.grad(loss, list(p.values()), create_graph=True)
    ref = torch.autograd.grad(g, list(p.values()), grad_outputs=[v[k] for k in p])
    for k, r in zip(p, ref):
        torch.testing.assert_close(hv[k], r, rtol=1e-4, atol=1e-6)


def test_hessian_top_eigenvalue_matches_dense_hessian(small):
    params, cfg, task = small
    names = ["blocks.1.mlp.W_out", "unembed.W_U"]  # a subset keeps the dense Hessian small
    x, y = dy.examples(task)
    fixed = {k: v for k, v in params.items() if k not in names}
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]

    def flat_loss(theta):
        parts = dict(zip(names, (t.view(s) for t, s in zip(theta.split(sizes), shapes))))
        return torch.nn.functional.cross_entropy(mg.forward({**fixed, **parts}, cfg, x).double(), y)

    theta = torch.cat([params[k].flatten() for k in names])
    H = torch.autograd.functional.hessian(flat_loss, theta).double()
    eig = torch.linalg.eigvalsh((H + H.T) / 2)
    top = float(eig[eig.abs().argmax()])
    lam = dy.hessian_top_eigenvalue(params, cfg, task, iters=300, tol=1e-7, names=names)
    assert lam == pytest.approx(top, rel=1e-3)


# --- gradient agreement -------------------------------------------------------------------


def _linear_loss(p, x, y):
    # per-example loss x_i . w: the gradient of a half is the mean of its rows
    return (x @ p["w"]).mean()


def test_agreement_is_one_for_identical_halves_and_minus_one_for_opposite():
    w = {"w": torch.zeros(4, dtype=torch.float64)}
    row = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    same = row.repeat(10, 1)
    assert dy.agreement_of(_linear_loss, w, same, torch.zeros(10), seed=3) == pytest.approx(1.0, abs=1e-12)
    opposite = torch.cat([row.repeat(5, 1), -row.repeat(5, 1)])
    rows = (torch.arange(5), torch.arange(5, 10))
    assert dy.agreement_of(_linear_loss, w, opposite, torch.zeros(10), split_rows=rows) == pytest.approx(-1.0, abs=1e-12)


def test_agreement_is_cosine_of_half_means_of_the_seeded_split():
    x = torch.randn(11, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = dy.halves(11, seed=4)
    assert (len(a), len(b)) == (5, 6) and sorted(a.tolist() + b.tolist()) == list(range(11))
    ma, mb = x[a].mean(0).numpy(), x[b].mean(0).numpy()
    expected = ma @ mb / (np.linalg.norm(ma) * np.linalg.norm(mb))
    got = dy.agreement_of(_linear_loss, {"w": torch.zeros(6, dtype=torch.float64)}, x, torch.zeros(11), seed=4)
    assert got == pytest.approx(expected, abs=1e-12)


def test_agreement_of_the_model_on_the_same_rows_twice_is_one(small):
    params, cfg, task = small
    x, y = dy.examples(task)
    rows = torch.arange(len(y) // 2)
    assert dy.agreement_of(dy.model_loss(cfg), params, x, y, split_rows=(rows, rows)) == pytest.approx(1.0, abs=1e-6)
    # gradient_agreement by its definition: cosine of autograd gradients of the two seeded halves
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    ga = _autograd_gradient(params, cfg, x[perm[:len(y) // 2]], y[perm[:len(y) // 2]])
    gb = _autograd_gradient(params, cfg, x[perm[len(y) // 2:]], y[perm[len(y) // 2:]])
    va, vb = torch.cat([ga[k].flatten() for k in ga]), torch.cat([gb[k].flatten() for k in gb])
    expected = float(va @ vb / (va.norm() * vb.norm()))
    assert abs(expected) < 0.999, "two different halves: not trivially +-1"
    assert dy.gradient_agreement(params, cfg, task) == pytest.approx(expected, abs=1e-6)


# --- effective rank -----------------------------------------------------------------------


@pytest.mark.parametrize("singular", [[1.0, 1.0, 1.0], [3.0, 1.0], [5.0, 2.0, 0.5, 0.1]])
def test_effective_rank_of_planted_per_sample_gradients(singular):
    # rows x_i of X = U diag(s) V^T are the per-sample gradients of x_i . w
    n, d, k = 8, 12, len(singular)
    X = _orthonormal(n, k, 1) @ torch.diag(torch.tensor(singular, dtype=torch.float64)) @ _orthonormal(d, k, 2).T
    G = dy.per_sample_gradients(_linear_loss, {"w": torch.zeros(d, dtype=torch.float64)}, X, torch.zeros(n), chunk=3)
    torch.testing.assert_close(G, X)
    p = np.array(singular) / sum(singular)
    assert dy.effective_rank(G) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)


def test_effective_rank_extremes():
    assert dy.effective_rank(torch.ones(5, 7)) == pytest.approx(1.0)  # all gradients parallel
    assert dy.effective_rank(torch.eye(6)) == pytest.approx(6.0)  # all orthogonal, equal size


def test_per_sample_gradients_of_model_match_a_loop_of_backward_passes(small):
    params, cfg, task = small
    x, y = dy.examples(task, batch=4, seed=2)
    G = dy.per_sample_gradients(dy.model_loss(cfg), params, x, y, chunk=3)
    for i in range(4):
        p = {k: t.clone().requires_grad_(True) for k, t in params.items()}
        loss = torch.nn.functional.cross_entropy(mg.forward(p, cfg, x[i:i + 1]).double(), y[i:i + 1])
        g = torch.autograd.grad(loss, list(p.values()))
        torch.testing.assert_close(G[i], torch.cat([t.flatten() for t in g]), rtol=1e-4, atol=1e-7)


# --- momentum -----------------------------------------------------------------------------


def _autograd_gradient(params, cfg, x, y):
    p = {k: t.clone().requires_grad_(True) for k, t in params.items()}
    loss = torch.nn.functional.cross_entropy(mg.forward(p, cfg, x).double(), y)
    return dict(zip(p, torch.autograd.grad(loss, list(p.values()))))


def test_momentum_cosine_against_planted_moments(small):
    params, cfg, task = small
    g = _autograd_gradient(params, cfg, *dy.examples(task))
    assert dy.momentum_cosine(params, g, cfg, task) == pytest.approx(1.0, abs=1e-5)
    assert dy.momentum_cosine(params, {k: -3 * v for k, v in g.items()}, cfg, task) == pytest.approx(-1.0, abs=1e-5)
    # a moment orthogonal to the gradient within one tensor: cosine 0
    k = "unembed.W_U"
    other = torch.randn(g[k].shape, generator=torch.Generator().manual_seed(0))
    other -= (other * g[k]).sum() / (g[k] ** 2).sum() * g[k]
    assert dy.momentum_cosine(params, {k: other}, cfg, task) == pytest.approx(0.0, abs=1e-5)


def test_probe_columns_warm_start_and_momentum(small):
    params, cfg, task = small
    probe = dy.make_probe(cfg, task, measures=dy.MEASURES, hessian_iters=3, rank_n=16)
    first = probe(0, params, None)
    assert math.isnan(first["momentum_cos"])
    cold = dy.hessian_top_eigenvalue(params, cfg, task, iters=20)
    assert first["hessian_top"] == pytest.approx(cold, rel=1e-6)  # the first probe is a cold 20-iteration run
    g = _autograd_gradient(params, cfg, *dy.examples(task))
    second = probe(10, params, g)
    assert second["hessian_iters"] <= 3
    assert second["hessian_top"] == pytest.approx(first["hessian_top"], rel=1e-2)
    assert second["momentum_cos"] == pytest.approx(1.0, abs=1e-5)
    assert second["agreement"] == pytest.approx(dy.gradient_agreement(params, cfg, task), abs=1e-9)
    assert second["grad_erank"] == pytest.approx(dy.gradient_effective_rank(params, cfg, task, n=16), rel=1e-9)


def test_parse_probe_spec():
    assert ms.parse_probe("every=10") == {"every": 10}
    assert ms.parse_probe("every=5,measures=hessian+rank,iters=2") == {
        "every": 5, "measures": ("hessian", "rank"), "hessian_iters": 2}
    with pytest.raises(ValueError, match="measures"):
        ms.parse_probe("every=5,measures=curvature")
    with pytest.raises(ValueError, match="every"):
        ms.parse_probe("measures=hessian")
    for bad in ("every=0", "every=10,iters=0", "every=10,rank_n=-1", "every=10,iters=two"):
        with pytest.raises(ValueError, match=r"must be an integer >= 1"):
            ms.parse_probe(bad)


# --- limit cycle --------------------------------------------------------------------------


def _metrics(test_acc, weight_norm, steps):
    return pd.DataFrame({"step": steps, "train_loss": 0.0, "test_loss": 0.0,
                         "train_acc": np.where(steps >= 100, 1.0, 0.5), "test_acc": test_acc,
                         "weight_sq": np.asarray(weight_norm) ** 2})


def test_limit_cycle_finds_planted_period_and_amplitude():
    steps = np.arange(0, 3001, 10)
    phase = 2 * np.pi * steps / 150
    acc = np.where(steps < 500, 0.01, 0.95 + 0.03 * np.sin(phase))
    norm = np.where(steps < 500, 40.0, 30.0 + 2.0 * np.cos(phase)) - steps / 1000  # plus a slow decay
    lc = cy.limit_cycle(_metrics(acc, norm, steps))
    assert lc.verdict == "oscillation" and lc.grokked_step == 500 and lc.collapses == 0
    assert lc.test_acc.period == pytest.approx(150, rel=0.07)
    assert lc.weight_norm.period == pytest.approx(150, rel=0.07)
    assert lc.test_acc.amplitude == pytest.approx(0.03, rel=0.15)
    assert lc.weight_norm.amplitude == pytest.approx(2.0, rel=0.15)


def test_limit_cycle_says_none_for_flat_or_noisy_series():
    steps = np.arange(0, 3001, 10)
    rng = np.random.default_rng(0)
    acc = np.where(steps < 500, 0.01, 0.99)
    norm = 30 * np.exp(-steps / 5000)
    assert cy.limit_cycle(_metrics(acc, norm, steps)).verdict == "none"
    noisy = np.where(steps < 500, 0.01, 0.99 + 0.002 * rng.standard_normal(len(steps)))
    lc = cy.limit_cycle(_metrics(noisy, norm, steps))
    assert lc.verdict == "none" and lc.test_acc.period is None
    assert cy.limit_cycle(_metrics(np.zeros(len(steps)), norm, steps)).verdict == "not grokked"


def test_limit_cycle_says_too_short_when_the_run_ends_soon_after_grokking():
    steps = np.arange(0, 701, 10)  # grokked at 500: 200 steps after it, under two periods of 150
    phase = 2 * np.pi * steps / 150
    acc = np.where(steps < 500, 0.01, 0.95 + 0.03 * np.sin(phase))
    lc = cy.limit_cycle(_metrics(acc, np.full(len(steps), 30.0), steps))
    assert lc.verdict == "too short" and lc.window == (500, 700)
    assert cy.limit_cycle(_metrics(acc, np.full(len(steps), 30.0), steps), min_window=150).verdict == "none"


def test_limit_cycle_counts_collapses():
    steps = np.arange(0, 3001, 10)
    acc = np.where(steps < 500, 0.01, 0.97)
    acc = np.where((steps >= 1000) & (steps < 1100), 0.25, acc)
    acc = np.where((steps >= 2000) & (steps < 2050), 0.3, acc)
    lc = cy.limit_cycle(_metrics(acc, np.full(len(steps), 30.0), steps), collapse_below=0.5)
    assert lc.verdict == "collapses" and lc.collapses == 2


# --- agreement dips and correlation -------------------------------------------------------


def test_agreement_dips_on_planted_series():
    steps = np.arange(0, 2000, 10)
    a = 0.5 + 0.02 * np.sin(steps / 7)  # wiggles far below the prominence
    planted = [300, 900, 1500]
    for s in planted:
        a = a - 0.3 * np.exp(-((steps - s) / 20.0) ** 2)
    dips = cy.agreement_dips(steps, a, prominence=0.1)
    assert len(dips) == 3 and all(abs(d - s) <= 10 for d, s in zip(dips, planted))
    assert cy.agreement_dips(steps, a, prominence=0.1, until=1000) == dips[:2]
    assert cy.agreement_dips(steps, a, prominence=0.1, since=500, until=1200) == dips[1:2]


def test_run_summary_counts_dips_on_the_plateau_and_their_rate():
    from types import SimpleNamespace

    steps = np.arange(0, 1001, 10)  # memorised at 100, grokked at 500
    metrics = _metrics(np.where(steps >= 500, 0.95, 0.1), np.full(len(steps), 30.0), steps)
    metrics["train_acc"] = np.where(steps >= 100, 1.0, 0.5)
    a = np.full(len(steps), 0.5)
    for s in (50, 250, 400, 800):  # one before memorisation, two on the plateau, one after grokking
        a = a - 0.3 * np.exp(-((steps - s) / 15.0) ** 2)
    run = SimpleNamespace(metrics=metrics, path=Path("planted"),
                          config=SimpleNamespace(train=SimpleNamespace(weight_decay=1.0, betas=(0.9, 0.98))))
    row = cy.run_summary(run, pd.DataFrame({"step": steps, "agreement": a}))
    assert (row["memorised_step"], row["grokked_step"]) == (100, 500)
    assert row["agreement_dips"] == 4 and row["agreement_dips_plateau"] == 2
    assert row["agreement_dips_per_100_steps"] == pytest.approx(0.4)
    assert row["agreement_dips_plateau_per_100_steps"] == pytest.approx(0.5)  # 2 dips in 400 steps


def test_dip_rate_separates_window_length_from_the_gap():
    # dips at one per 100 steps of the window, the window as long as the gap: the count tracks
    # the gap exactly, the rate not at all
    gap = np.array([40.0, 80, 150, 220, 330, 420])
    rng = np.random.default_rng(0)
    rate = 1.0 + 0.1 * rng.standard_normal(len(gap))
    table = pd.DataFrame({"delay": gap, "agreement_dips": gap / 100, "agreement_dips_plateau": gap / 100,
                          "agreement_dips_per_100_steps": rate, "agreement_dips_plateau_per_100_steps": rate})
    c = cy.dips_vs_gap_all(table)
    assert c["agreement_dips"].r == pytest.approx(1.0) and c["agreement_dips_plateau"].r == pytest.approx(1.0)
    assert c["agreement_dips_per_100_steps"].r == pytest.approx(np.corrcoef(rate, gap)[0, 1])
    assert c["agreement_dips_per_100_steps"].p > 0.05


def test_pearson_with_too_few_pairs_or_no_variation_says_why_naming_n():
    for n in (0, 1, 2):
        c = cy.pearson(np.arange(n, dtype=float), np.arange(n, dtype=float) ** 2)
        assert c.n == n and np.isnan(c.r) and np.isnan(c.p)
        assert c.describe() == f"r: n too small (n={n}; needs at least 3 runs with both values)"
    c = cy.pearson([1.0, 2.0, np.nan, 4.0], [5.0, 5.0, 1.0, 5.0])  # 3 finite pairs, y constant on them
    assert c.n == 3 and c.describe() == "r: none, the second variable is the same in all 3 runs"
    ok = cy.pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert ok.note == "" and ok.describe() == f"r = 0.500, n = 3, p = {ok.p:.3g}"


def test_pearson_matches_closed_form():
    rng = np.random.default_rng(1)
    x = rng.normal(size=20)
    y = 2 * x + rng.normal(size=20)
    c = cy.pearson(np.append(x, np.nan), np.append(y, 1.0))  # the NaN pair is dropped
    xc, yc = x - x.mean(), y - y.mean()
    r = (xc @ yc) / np.sqrt((xc @ xc) * (yc @ yc))
    assert c.n == 20 and c.r == pytest.approx(r, abs=1e-12)
    from scipy.stats import t as student_t
    tstat = r * np.sqrt(18 / (1 - r * r))
    assert c.p == pytest.approx(2 * student_t.sf(abs(tstat), 18), rel=1e-6)


# --- probes in the trainer and the `mechgrok dynamics` command ---------------------------


def _tiny_cfg(seed, wd=1.0, steps=40):
    return mg.RunConfig(task=mg.TaskConfig(op="add", p=13, frac=0.6, seed=seed),
                        model=mg.ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=seed),
                        train=mg.TrainConfig(steps=steps, lr=3e-3, weight_decay=wd, eval_every=10,
                                             checkpoint_every=20, seed=seed, device="cpu"))


def _random_init(cfg, seed):
    task = mg.Task(cfg.task)
    g = torch.Generator().manual_seed(seed)
    return {k: 0.3 * torch.randn(s, generator=g) for k, s in mg.model.param_shapes(cfg.model.resolve(task)).items()}


@pytest.fixture(scope="module")
def probed_population(tmp_path_factory):
    """Two probed runs (every 10 steps, every measure) and one unprobed run, 40 steps each; the
    weights start from seeded random draws (no TransformerLens boot)."""
    from mechgrok.trainer import train as train_run

    root = tmp_path_factory.mktemp("dyn")
    runs = []
    for seed in (0, 1):
        cfg = _tiny_cfg(seed)
        probe = dy.make_probe(cfg, measures=dy.MEASURES, rank_n=8, first_iters=5)
        runs.append(train_run(cfg, root / "sweep" / f"m{seed}", progress=False, init=_random_init(cfg, seed),
                              probe=probe, probe_every=10))
    cfg = replace(_tiny_cfg(2), train=replace(_tiny_cfg(2).train, checkpoint_every=40))  # checkpoints 0 and 40
    plain = train_run(cfg, root / "plain", progress=False, init=_random_init(cfg, 2))
    return root, runs, plain


def test_trainer_probe_rows_and_momentum_from_resume_state(probed_population):
    _, runs, _ = probed_population
    dyn = pd.read_csv(runs[0].path / "dynamics.csv")
    assert dyn["step"].tolist() == [10, 20, 30, 40]
    assert {"hessian_top", "agreement", "momentum_cos", "grad_erank"} <= set(dyn.columns)
    # the probe's momentum cosine at the last step (live AdamW state, half-gradient mean) equals the
    # one recomputed afterwards from resume.safetensors (stored moments, full-batch gradient)
    assert dy.momentum_alignment(runs[0], 40) == pytest.approx(float(dyn["momentum_cos"].iloc[-1]), abs=1e-4)
    with pytest.raises(ValueError, match="no AdamW moments"):
        dy.momentum_alignment(runs[0], 20)


def test_dynamics_command_on_a_population_and_on_an_unprobed_run(probed_population):
    from typer.testing import CliRunner

    from mechgrok.cli import app

    root, runs, plain = probed_population
    res = CliRunner().invoke(app, ["dynamics", str(root / "sweep"), "--no-png", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "Pearson r" in res.output and "dips per 100 probed steps" in res.output
    # two runs: too few for a correlation, and the lines say so instead of printing nan
    lines = [line for line in res.output.splitlines() if "gap: " in line]
    n = int(pd.read_csv(root / "sweep" / "dynamics_summary.csv")[["agreement_dips", "delay"]].notna().all(1).sum())
    assert lines[0] == f"agreement dips vs grokking gap: Pearson r: n too small (n={n}; needs at least 3 runs with both values)"
    assert len(lines) == 4 and not any("nan" in line.lower() for line in lines)
    table = pd.read_csv(root / "sweep" / "dynamics_summary.csv")
    assert len(table) == 2
    for run, row in zip(runs, table.itertuples()):
        h = pd.read_csv(run.path / "dynamics.csv")["hessian_top"]
        assert row.hessian_rise == pytest.approx(h.max() / h.iloc[0], rel=1e-5)
        assert "Hessian top eigenvalue" in (run.path / "dynamics.html").read_text()
    assert (root / "sweep" / "dynamics_dips_vs_gap.html").exists()

    res = CliRunner().invoke(app, ["dynamics", str(plain.path), "--no-png", "--no-progress"])
    assert res.exit_code == 0, res.output
    ckpt = pd.read_csv(plain.path / "dynamics_checkpoints.csv")
    assert ckpt["step"].tolist() == plain.steps
    last = dy.hessian_top_eigenvalue(plain.params(40), plain.model_cfg, plain.task, iters=100, tol=1e-6)
    assert ckpt["hessian_top"].iloc[-1] == pytest.approx(last, rel=2e-2)
    assert ckpt["momentum_cos"].iloc[-1] == pytest.approx(dy.momentum_alignment(plain), abs=1e-6)


def test_series_summary_on_planted_series():
    steps = np.arange(10, 1001, 10)
    hessian = np.where(steps <= 100, steps / 10.0, 10.0 * np.exp(-(steps - 100) / 200))  # 1 -> 10, then decays
    erank = np.where((steps >= 400) & (steps <= 500), 15.0, 20.0)  # plateau 20, dip to 15 after grokking
    erank = np.where(steps == 200, 24.0, erank)
    momentum = np.where((steps >= 100) & (steps <= 300), -0.2, 0.5)
    dyn = pd.DataFrame({"step": steps, "hessian_top": hessian, "agreement": np.linspace(-0.8, 0.2, len(steps)),
                        "momentum_cos": momentum, "grad_erank": erank})
    out = cy.series_summary(dyn, memorised=100, grokked=300)
    assert out["hessian_rise"] == pytest.approx(10.0) and out["hessian_peak_step"] == 100
    assert out["hessian_lag"] == 300 - 100
    assert cy.series_summary(dyn, memorised=100, grokked=None)["hessian_lag"] is None
    assert out["agreement_first"] == pytest.approx(-0.8)
    assert out["momentum_cos_plateau"] == pytest.approx(-0.2)
    # window after grokking: [300, 500] (one gap); plateau [100, 300] has median 20
    assert out["erank_plateau"] == pytest.approx(20.0) and out["erank_drop"] == pytest.approx(0.25)
    assert out["erank_min_step"] == 400


def test_momentum_alignment_reads_kept_moments_files(probed_population, tmp_path):
    import shutil

    from mechgrok.files import save_tensors

    _, _, plain = probed_population
    run_dir = tmp_path / "copy"
    shutil.copytree(plain.path, run_dir)
    run = mg.load_run(run_dir)
    g = _autograd_gradient({k: v.double() for k, v in run.params(0).items()}, run.model_cfg,
                           *dy.examples(run.task))
    save_tensors(mg.runs.moments_path(run_dir, 0), {f"opt.{k}.exp_avg": -v.float() for k, v in g.items()}
                 | {f"opt.{k}.exp_avg_sq": (v * v).float() for k, v in g.items()})
    assert dy.momentum_alignment(run, 0) == pytest.approx(-1.0, abs=1e-5)


def test_the_erank_window_is_full_only_for_runs_that_went_one_gap_past_grokking():
    t = pd.DataFrame({"memorised_step": [100, 100, 100, None], "grokked_step": [300, 300, None, 300],
                      "last_step": [500, 490, 3000, 600]})
    # window [300, 500]: the first ran it all, the second stopped at 490, the third never grokked
    assert cy.erank_window_full(t).tolist() == [True, False, False, False]
    assert cy.erank_window_full(t.drop(columns="last_step")).tolist() == [False] * 4
