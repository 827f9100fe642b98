"""Latent-state training maps: statistics pinned to hand-computed values, HMM model
selection and detour regression pinned to planted synthetic sequences, population errors."""

import numpy as np
import pandas as pd
import pytest
import torch

import mechgrok as mg
from mechgrok import latent
from mechgrok import weight_statistics as ws


# --- statistics against closed forms ------------------------------------------------------


def _rect_diag(values, rows, cols):
    m = torch.zeros(rows, cols, dtype=torch.float64)
    for i, v in enumerate(values):
        m[i, i] = v
    return m


def test_matrix_statistics_match_known_singular_values_of_a_rotated_matrix():
    # W = U diag(3, 2, 1e-7) V^T: singular values known; the tiny one must count as 0.
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    W = U @ _rect_diag([3.0, 2.0, 1e-7], 3, 5) @ V.T
    s = ws.matrix_statistics(W)
    assert s["spectral"].item() == pytest.approx(3.0, rel=1e-9)
    assert s["l2"].item() == pytest.approx(np.sqrt(13.0), rel=1e-9)  # Frobenius = sqrt(sum s^2)
    assert s["mean_lambda"].item() == pytest.approx(5.0 / 3, rel=1e-9)
    assert s["variance_lambda"].item() == pytest.approx(((3 - 5 / 3) ** 2 + (2 - 5 / 3) ** 2 + (5 / 3) ** 2) / 2, rel=1e-9)


def test_matrix_statistics_of_a_rectangular_diagonal_matrix():
    W = _rect_diag([2.0, -0.5], 4, 2)  # trace over the min(4, 2) = 2 diagonal entries
    s = ws.matrix_statistics(W)
    assert s["l1"].item() == pytest.approx(2.5)
    assert s["l2"].item() == pytest.approx(np.sqrt(4.25))
    assert s["trace"].item() == pytest.approx(1.5)
    assert s["spectral"].item() == pytest.approx(2.0)
    assert s["code_sparsity"].item() == pytest.approx(2.5 / np.sqrt(4.25))
    assert s["computational_sparsity"].item() == pytest.approx(0.75)


def test_weight_statistics_average_over_heads_wo_and_mlp_matrices():
    # d_model 4, 2 heads of d_head 2, d_mlp 3; every matrix diagonal with planted values.
    q = [[1.0, 2.0], [3.0, 4.0]]
    k = [[0.5, 0.5], [1.0, -1.0]]
    v = [[2.0, 0.0], [1.0, 1.0]]
    o = [1.0, 2.0, 3.0, 4.0]  # W_O as one (2*2) x 4 matrix = diag(o)
    w_in, w_out = [1.0, 1.0, 2.0], [3.0, 0.5, 0.5]
    W_O = torch.zeros(2, 2, 4, dtype=torch.float64)
    W_O[0, 0, 0], W_O[0, 1, 1], W_O[1, 0, 2], W_O[1, 1, 3] = o
    params = {
        "blocks.0.attn.W_Q": torch.stack([_rect_diag(x, 4, 2) for x in q]),
        "blocks.0.attn.W_K": torch.stack([_rect_diag(x, 4, 2) for x in k]),
        "blocks.0.attn.W_V": torch.stack([_rect_diag(x, 4, 2) for x in v]),
        "blocks.0.attn.W_O": W_O,
        "blocks.0.mlp.W_in": _rect_diag(w_in, 4, 3), "blocks.0.mlp.W_out": _rect_diag(w_out, 3, 4),
        "blocks.0.mlp.b_in": torch.tensor([1.0, -1.0, 3.0], dtype=torch.float64),
        "blocks.0.mlp.b_out": torch.tensor([0.0, 2.0, 2.0, 5.0], dtype=torch.float64),
    }
    stacked = {key: torch.stack([t, 2 * t]) for key, t in params.items()}  # two checkpoints
    table = ws.weight_statistics(stacked, n_layers=1)

    diags = q + k + v + [o, w_in, w_out]  # 9 matrices
    n_entries = 6 * 8 + 16 + 12 + 12
    for row, c in ((0, 1.0), (1, 2.0)):
        d = [[c * x for x in m] for m in diags]
        exp = {
            "l1": np.mean([sum(abs(x) for x in m) for m in d]),
            "l2": np.mean([np.sqrt(sum(x * x for x in m)) for m in d]),
            "trace": np.mean([sum(m) for m in d]),
            "spectral": np.mean([max(abs(x) for x in m) for m in d]),
            "computational_sparsity": np.mean([sum(m) / max(abs(x) for x in m) for m in d]),
            "mean_lambda": np.mean([np.mean([abs(x) for x in m] + [0] * (len(m) < 2)) for m in d]),
        }
        flat = [x for m in d for x in m] + [0.0] * (n_entries - sum(len(m) for m in d))
        exp |= {"mean_w": np.mean(flat), "median_w": np.median(flat), "var_w": np.var(flat, ddof=1)}
        b = [c * x for x in [1.0, -1.0, 3.0, 0.0, 2.0, 2.0, 5.0]]
        exp |= {"mean_b": np.mean(b), "median_b": np.median(b), "var_b": np.var(b, ddof=1)}
        for key, val in exp.items():
            assert table.loc[row, key] == pytest.approx(val, rel=1e-9, abs=1e-12), key


# --- real runs -----------------------------------------------------------------------------


def _tiny(seed: int, steps: int = 60, every: int = 10):
    return mg.RunConfig(
        task=mg.TaskConfig(op="add", p=23, frac=0.6, seed=seed),
        model=mg.ModelConfig(n_layers=1, d_model=32, n_heads=4, d_head=8, d_mlp=64, seed=seed),
        train=mg.TrainConfig(steps=steps, lr=3e-3, weight_decay=1.0, eval_every=10, checkpoint_every=every, seed=seed))


@pytest.fixture(scope="session")
def tiny_population(tmp_path_factory):
    from mechgrok.trainer import train

    root = tmp_path_factory.mktemp("latent_pop")
    for s in range(4):
        train(_tiny(s), root / "pop" / f"seed{s}", progress=False)
    train(_tiny(9, steps=60, every=20), root / "few", progress=False)
    train(_tiny(8, steps=60, every=12), root / "other_spacing", progress=False)
    return root


def test_checkpoint_statistics_match_a_numpy_loop_over_matrices(tiny_population):
    run = mg.load_run(tiny_population / "pop" / "seed0")
    table = latent.checkpoint_statistics(run)
    assert table.step.tolist() == run.steps
    step = run.steps[3]
    p = {key: val.double().numpy() for key, val in run.params(step).items()}
    mats = [p[f"blocks.0.attn.W_{x}"][h] for x in "QKV" for h in range(4)]
    mats += [p["blocks.0.attn.W_O"].reshape(32, 32), p["blocks.0.mlp.W_in"], p["blocks.0.mlp.W_out"]]
    svs = [np.linalg.svd(m, compute_uv=False) for m in mats]
    row = table.loc[table.step == step].iloc[0]
    assert row.spectral == pytest.approx(np.mean([s[0] for s in svs]), rel=1e-6)
    assert row.variance_lambda == pytest.approx(np.mean([np.var(s, ddof=1) for s in svs]), rel=1e-6)
    assert row.trace == pytest.approx(np.mean([np.trace(m) for m in mats]), rel=1e-6)
    assert row.var_w == pytest.approx(np.var(np.concatenate([m.ravel() for m in mats]), ddof=1), rel=1e-6)
    m = run.metrics.set_index("step").loc[step]
    assert row.test_acc == m.test_acc and row.train_loss == m.train_loss


def test_population_rejects_too_few_checkpoints(tiny_population):
    runs = [tiny_population / "pop" / "seed0", tiny_population / "few"]
    with pytest.raises(ValueError, match="4 checkpoints; latent-state models need at least 5"):
        latent.population_statistics(runs, progress=False)


def test_population_rejects_mixed_checkpoint_spacing(tiny_population):
    runs = [tiny_population / "pop" / "seed0", tiny_population / "other_spacing"]
    with pytest.raises(ValueError, match="differ in checkpoint spacing"):
        latent.population_statistics(runs, progress=False)


# --- HMMs on planted sequences -------------------------------------------------------------


def _planted(n_members=12, T=60, seed=0, detour_coef=None):
    """Three states with separated means in 3 features; each member switches at its own
    points. With ``detour_coef``: state 1 is a detour whose length sets the grokking step."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0, 0.0], [0.0, 6.0, 3.0], [6.0, 0.0, 6.0]])
    rows = []
    for m in range(n_members):
        t1 = int(rng.integers(12, 18))
        d = int(rng.integers(4, 16))
        states = np.array([0] * t1 + [1] * d + [2] * (T - t1 - d))
        x = means[states] + rng.normal(0, 1.0, size=(T, 3))
        grok = 1000 + detour_coef * d + rng.normal(0, 5) if detour_coef is not None else np.nan
        for t in range(T):
            rows.append({"member": m, "step": 10 * t, "l1": x[t, 0], "l2": x[t, 1], "var_w": x[t, 2],
                         "test_acc": float(states[t] == 2), "grokking_step": grok})
    return pd.DataFrame(rows)


def test_select_states_recovers_a_planted_number_of_states():
    sel = latent.select_states(_planted(), max_states=5, features="l1,l2,var_w", restarts=2, progress=False)
    assert sel.best == 3
    ll = sel.table.set_index("n_states").heldout_ll
    assert ll[3] > ll[2] > ll[1]  # held-out likelihood improves until the planted number
    assert len(sel.heldout_members) == round(0.2 * 12)


def test_detour_regression_recovers_a_planted_positive_coefficient():
    tm = latent.fit_training_map(_planted(n_members=20, seed=1, detour_coef=40.0), n_states=3,
                                 features=["l1", "l2", "var_w"], restarts=5, progress=False)
    assert tm.means.loc[1, "l2"] > 1  # the detour state is numbered 1 (visited second)
    det = tm.detours().set_index("state")
    assert det.loc[1, "ci_low"] < 40.0 < det.loc[1, "ci_high"]
    assert det.loc[1, "coef"] == pytest.approx(40.0, abs=3.0)
    assert det.detour.tolist() == [False, True, False]
    assert tm.transitions.to_numpy().sum(1) == pytest.approx(np.ones(3))
    assert "high l2" in tm.labels[1]


# --- the command -----------------------------------------------------------------------------


def test_cli_latent_writes_tables_and_figures_for_a_population(tiny_population):
    from typer.testing import CliRunner
    from mechgrok.cli import app

    out = tiny_population / "latent_out"
    res = CliRunner().invoke(app, ["latent", str(tiny_population / "pop"), "--max-states", "3", "--states", "2",
                                   "--features", "var_w,l1,l2", "--restarts", "1", "--no-png", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "4 members, 28 checkpoints; features: var_w, l1, l2" in res.output
    sel = pd.read_csv(out / "model_selection.csv")
    assert sel.n_states.tolist() == [1, 2, 3]
    paths = pd.read_csv(out / "paths.csv")
    assert len(paths) == 28 and set(paths.state) <= {0, 1}
    assert len(pd.read_csv(out / "detours.csv")) == 2
    stats = pd.read_csv(out / "statistics.csv")
    direct = latent.checkpoint_statistics(tiny_population / "pop" / "seed2")
    np.testing.assert_allclose(stats.loc[stats.run.str.endswith("seed2"), "l2"], direct.l2, rtol=1e-6)
    assert (out / "training_map.html").exists() and (out / "ribbons.html").exists()


def test_cli_latent_fails_cleanly_on_a_single_run(tiny_population):
    from typer.testing import CliRunner
    from mechgrok.cli import app

    res = CliRunner().invoke(app, ["latent", str(tiny_population / "pop" / "seed0"), "--no-png"])
    assert res.exit_code == 1 and "is a single run" in res.output


# --- model selection says its rule; small populations and small n say so (issue 18, item 5) ---


def _two_state_hmm(n_members=10, T=40, seed=0):
    """Sequences from a known 2-state left-to-right Gaussian HMM: state 0, then state 1 from a
    step drawn in 18..22 of 40 on, means 4 standard deviations apart in each of 3 features. (The
    switch stays near the middle because the features are z-scored within each member: a member
    that spends most of its time in one state would move both states' z-means.)"""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0, 0.0], [4.0, -4.0, 4.0]])
    rows = []
    for m in range(n_members):
        t1 = int(rng.integers(18, 23))
        states = np.array([0] * t1 + [1] * (T - t1))
        x = means[states] + rng.normal(0, 1.0, size=(T, 3))
        for t in range(T):
            rows.append({"member": m, "step": 10 * t, "l1": x[t, 0], "l2": x[t, 1], "var_w": x[t, 2],
                         "grokking_step": np.nan})
    return pd.DataFrame(rows)


def test_the_stated_rule_picks_the_planted_two_states_and_names_its_values():
    res = latent.analyze_population(_two_state_hmm(), features="l1,l2,var_w", max_states=4, restarts=2,
                                    progress=False)
    sel = res["selection"]
    bic = sel.table.set_index("n_states").bic
    assert res["n_states"] == sel.best == int(bic.idxmin()) == 2  # lowest BIC, and that is the planted 2
    assert sel.rule == "lowest BIC"
    rule = res["notes"][0]
    assert rule.startswith("2 states by the rule lowest BIC of 1..4 (bic per number of states: ")
    for n, v in bic.items():
        assert f"{n}: {v:.4g}" in rule
    assert not any("too small" in n for n in res["notes"])  # 1200 values for 15 parameters is plenty
    assert res["notes"][1:] == []  # BIC, AIC and held-out likelihood all pick 2: no disagreement
    held = latent.select_states(_two_state_hmm(), features="l1,l2,var_w", max_states=4, restarts=2,
                                progress=False, criterion="heldout")
    assert held.best == int(held.table.set_index("n_states").heldout_ll.idxmax())


def test_disagreeing_criteria_are_named_each_with_its_pick():
    table = pd.DataFrame({"n_states": [1, 2, 3, 4], "heldout_ll": [-1.0, -1.5, -2.0, -2.5],
                          "aic": [90.0, 80.0, 70.0, 60.0], "bic": [95.0, 85.0, 80.0, 82.0]})
    sel = latent.ModelSelection(table, ["l1"], [0], [1], "diag")
    assert sel.best == 3 and sel.ranked() == [3, 4, 2, 1]
    assert sel.pick("aic") == 4 and sel.pick("heldout") == 1
    assert sel.disagreement() == ("the criteria disagree: lowest BIC at 3, lowest AIC at 4, "
                                  "highest held-out log-likelihood at 1")
    agree = latent.ModelSelection(table.assign(aic=table.bic, heldout_ll=-table.bic), ["l1"], [0], [1], "diag")
    assert agree.disagreement() is None
    with pytest.raises(ValueError, match="criterion must be one of bic, aic, heldout"):
        latent.select_states(table, criterion="lowest")


@pytest.mark.parametrize("covariance", latent.COVARIANCES)
def test_every_hmmlearn_covariance_fits_and_its_parameters_are_counted(covariance):
    sel = latent.select_states(_two_state_hmm(n_members=6), features="l1,l2,var_w", max_states=3, restarts=1,
                               progress=False, covariance=covariance)
    for r in sel.table.itertuples():  # hmmlearn's own count (what its AIC/BIC use) against the closed form
        assert r.n_params == latent.n_free_parameters(r.n_states, 3, covariance)
    assert sel.best == 2


def test_size_warning_compares_parameters_with_observed_values():
    # 2 states, 3 features, diag: 1 + 2 + 6 + 6 = 15 parameters; 149 values are under 10 each
    assert latent.n_free_parameters(2, 3, "diag") == 15
    w = latent.size_warning(2, 3, "diag", n_checkpoints=49, n_sequences=4)
    assert w.startswith("warning: the population is too small for 2 states (15 free parameters for 147 observed")
    assert latent.size_warning(2, 3, "diag", n_checkpoints=50, n_sequences=4) is None  # 150 = 10 per parameter
    assert "fewer members (2) than states" in latent.size_warning(3, 3, "diag", n_checkpoints=1000, n_sequences=2)


def test_cli_latent_on_a_small_population_warns_and_prints_no_nan(tiny_population):
    from typer.testing import CliRunner
    from mechgrok.cli import app

    out = tiny_population / "latent_small"
    res = CliRunner().invoke(app, ["latent", str(tiny_population / "pop"), "--max-states", "2",
                                   "--features", "var_w,l1,l2", "--restarts", "1", "--no-png", "--out", str(out),
                                   "--covariance", "spherical"])
    assert res.exit_code == 0, res.output
    n = int(res.output.split("training map with ")[1].split()[0])
    sel = pd.read_csv(out / "model_selection.csv")
    assert n == int(sel.loc[sel.bic.idxmin(), "n_states"])  # the stated rule, lowest BIC
    assert f"{n} states by the rule lowest BIC of 1..2" in res.output
    k = latent.n_free_parameters(n, 3, "spherical")
    if 10 * k > 28 * 3:  # 4 members x 7 checkpoints x 3 features
        assert f"too small for {n} states ({k} free parameters for 84 observed values" in res.output
    det = pd.read_csv(out / "detours.csv")
    grokked = int(det.n.iloc[0])
    assert grokked < 3  # 60 steps: not enough members grok for a regression
    assert res.output.count(f"n too small (n={grokked};") == n
    assert "nan" not in res.output.lower()


def test_cli_latent_refuses_an_unknown_covariance_in_one_line(tiny_population):
    from typer.testing import CliRunner
    from mechgrok.cli import app

    res = CliRunner().invoke(app, ["latent", str(tiny_population / "pop"), "--covariance", "round", "--no-png",
                                   "--out", str(tiny_population / "latent_bad")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip() == "error: covariance must be one of spherical, diag, full, tied, got 'round'"
    assert not (tiny_population / "latent_bad").exists()


def test_the_training_map_draws_the_edges_that_carry_a_states_leaving_probability():
    import pandas as pd

    from mechgrok.plots import latent_training_map

    # S0 stays 0.94 and leaves mostly to S1 (0.05: under any fixed cut of 0.05), a little to S2
    T = pd.DataFrame([[0.94, 0.049, 0.011], [0.0, 0.97, 0.03], [0.0, 0.0, 1.0]])
    fig = latent_training_map(T, pd.Series([10, 10, 10]), {0: "a", 1: "b", 2: "c"}, [0.1, 0.5, 0.9], [0.0, 0.5, 1.0])
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    labels = sorted(a.text for a in fig.layout.annotations if not a.showarrow)
    # S0 -> S1 (82% of S0's leaving probability) and S1 -> S2 (all of S1's); S0 -> S2 (18%) too;
    # nothing leaves S2, and no self-loops
    assert len(arrows) == 3 and labels == ["0.011", "0.03", "0.049"]
    fig = latent_training_map(T, pd.Series([10, 10, 10]), {0: "a", 1: "b", 2: "c"}, [0.1, 0.5, 0.9], [0.0, 0.5, 1.0],
                              min_share=0.5)
    assert sorted(a.text for a in fig.layout.annotations if not a.showarrow) == ["0.03", "0.049"]


def test_convergence_spread_is_the_brown_forsythe_test_from_its_definition():
    # one-way ANOVA of each member's absolute deviation from its population's median grokking step
    a = [3000.0, 3150, 3300, 2850, 3000, 3450, 3150, 2700]
    b = [3000.0, 10350, 12150, 3300, 5250, 13500, 4500, 7200, None]
    table = lambda steps: pd.DataFrame({"member": range(len(steps)), "grokking_step": steps})  # noqa: E731
    sp = latent.convergence_spread(table(a), table(b))
    za, zb = (np.abs(np.array(x) - np.median(x)) for x in (a, [v for v in b if v is not None]))
    grand = np.concatenate([za, zb]).mean()
    between = len(za) * (za.mean() - grand) ** 2 + len(zb) * (zb.mean() - grand) ** 2
    within = ((za - za.mean()) ** 2).sum() + ((zb - zb.mean()) ** 2).sum()
    f = between / (within / (len(za) + len(zb) - 2))
    assert sp.statistic == pytest.approx(f, rel=1e-9)
    assert len(sp.a) == 8 and len(sp.b) == 8  # the member that never grokked is left out
    assert latent.convergence_spread(table(a[:2]), table(b)).p is None
