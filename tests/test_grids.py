"""The TL Grokking demo's figures: attention of '=' to a and b per head, and neuron activations,
over the (a, b) grid (`fourier.attention_grids` / `neuron_grids`, `report.grids`, `mechgrok grids`),
pinned against TransformerLens's own cache read the way the demo reads it."""

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok import fourier
from mechgrok.cli import app

runner = CliRunner()


def tl_cache(params, cfg, inputs):
    model = mg.to_tl_model(params, cfg)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
    return cache


def test_grids_equal_the_tl_demo_reading_of_the_cache(tiny_run):
    step, p, cfg = tiny_run.steps[-1], tiny_run.task.p, tiny_run.model_cfg
    params = tiny_run.params(step)
    cache = tl_cache(params, cfg, tiny_run.task.inputs)
    pattern, post = cache["blocks.0.attn.hook_pattern"], cache["blocks.0.mlp.hook_post"]
    att = fourier.attention_grids(params, tiny_run.task, cfg=cfg)
    assert att.shape == (cfg.n_heads, 3, p, p)
    for h in range(cfg.n_heads):  # the demo: pattern[:, head, -1, 0] over the p x p grid (a-major examples)
        torch.testing.assert_close(att[h, 0], pattern[:, h, -1, 0].reshape(p, p))
        torch.testing.assert_close(att[h, 1], pattern[:, h, -1, 1].reshape(p, p))
    torch.testing.assert_close(att.sum(1), torch.ones(cfg.n_heads, p, p))
    # the TL model's own forward gives the same grids
    torch.testing.assert_close(fourier.attention_grids(tiny_run.model(step), tiny_run.task), att)
    neurons = [0, 5, 63]
    grid = fourier.neuron_grids(params, tiny_run.task, neurons, cfg=cfg)
    for i, n in enumerate(neurons):
        torch.testing.assert_close(grid[i], post[:, -1, n].reshape(p, p))
    assert fourier.neuron_grids(params, tiny_run.task, cfg=cfg).shape == (6, p, p)  # the first 6 by default


def test_division_grid_leaves_b_zero_empty_and_places_every_example():
    task = mg.make_task("div", p=7, frac=0.5)
    cfg = mg.ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=8, seed=3).resolve(task)
    params = mg.init_params(cfg)
    pattern = tl_cache(params, cfg, task.inputs)["blocks.0.attn.hook_pattern"]
    att = fourier.attention_grids(params, task, cfg=cfg)
    assert torch.isnan(att[:, :, :, 0]).all() and not torch.isnan(att[:, :, :, 1:]).any()
    for i in range(len(task.a)):
        a, b = int(task.a[i]), int(task.b[i])
        torch.testing.assert_close(att[:, 1, a, b], pattern[i, :, -1, 1])


def test_grids_command_writes_the_tables_and_figures(tiny_run, tmp_path):
    step, p, cfg = tiny_run.steps[1], tiny_run.task.p, tiny_run.model_cfg
    r = runner.invoke(app, ["grids", str(tiny_run.path), "--step", str(step), "--neurons", "3,7", "--out",
                            str(tmp_path), "--no-png"])
    assert r.exit_code == 0, r.output
    cache = tl_cache(tiny_run.params(step), cfg, tiny_run.task.inputs)
    pattern, post = cache["blocks.0.attn.hook_pattern"], cache["blocks.0.mlp.hook_post"]
    at = pd.read_csv(tmp_path / f"attention_step{step}.csv")
    assert len(at) == cfg.n_heads * 2 * p * p
    row = at[(at["head"] == 1) & (at.position == "b") & (at.a == 4) & (at.b == 9)]
    assert row.attention.item() == pytest.approx(float(pattern[4 * p + 9, 1, -1, 1]), rel=1e-5)
    nt = pd.read_csv(tmp_path / f"neurons_step{step}.csv")
    assert sorted(nt.neuron.unique()) == [3, 7]
    row = nt[(nt.neuron == 7) & (nt.a == 11) & (nt.b == 2)]
    assert row.activation.item() == pytest.approx(float(post[11 * p + 2, -1, 7]), rel=1e-5, abs=1e-7)
    mean_to_a = float(pattern[:, 0, -1, 0].mean())
    assert f"head 0: mean attention of '=' to a {mean_to_a:.3f}" in r.output
    for stem in (f"attention_step{step}", f"neurons_step{step}"):
        assert (tmp_path / f"{stem}.html").exists()
    r = runner.invoke(app, ["grids", str(tiny_run.path), "--neurons", "64", "--no-png", "--out", str(tmp_path)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "0..63" in r.output, r.output


def test_parity_has_no_grid_and_says_so():
    task = mg.make_task("parity", n_bits=4, frac=0.5)
    with pytest.raises(ValueError, match="no \\(a, b\\) grid"):
        fourier.ab_grid(torch.zeros(len(task.labels)), task)


def test_grid_figures_draw_each_panel_under_its_title(tiny_run):
    import numpy as np

    params, cfg = tiny_run.params(), tiny_run.model_cfg
    att = fourier.attention_grids(params, tiny_run.task, cfg=cfg)[:, :2].numpy()
    fig = mg.plots.attention_grid_figure(att)
    titles = [a.text for a in fig.layout.annotations]
    for h in range(cfg.n_heads):
        for j, pos in enumerate("ab"):
            i = titles.index(f"head {h}: '=' -> {pos}")
            np.testing.assert_array_equal(np.asarray(fig.data[i].z), att[h, j])
    grid = fourier.neuron_grids(params, tiny_run.task, [9, 4], cfg=cfg).numpy()
    fig = mg.plots.neuron_grid_figure(grid, [9, 4])
    assert [a.text for a in fig.layout.annotations] == ["neuron 9", "neuron 4"]
    np.testing.assert_array_equal(np.asarray(fig.data[1].z), grid[1])
