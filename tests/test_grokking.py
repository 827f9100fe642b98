"""End to end: a small run really groks within CI's means (2 CPU cores, about a minute)."""

import mechgrok as mg
from mechgrok.train import train


def test_small_modular_addition_run_groks(tmp_path):
    cfg = mg.RunConfig(
        task=mg.TaskConfig(op="add", p=23, frac=0.7, seed=0),
        model=mg.ModelConfig(n_layers=1, d_model=64, n_heads=4, d_head=16, d_mlp=256, seed=0),
        train=mg.TrainConfig(steps=1500, lr=3e-3, weight_decay=1.0, eval_every=50, checkpoint_every=500, seed=0),
    )
    run = train(cfg, tmp_path / "grok", progress=False, figure=False)
    s = run.summary()
    # memorises first, generalises much later: the grokking signature, not just learning
    assert s["memorisation_step"] is not None and s["grokking_step"] is not None
    assert s["grokking_step"] >= 2 * s["memorisation_step"]
    assert s["train_acc"] == 1.0
    assert s["test_acc"] >= 0.95
