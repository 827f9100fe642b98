import pytest


@pytest.fixture
def tiny_cfg():
    """A run config that trains in a second or two: a+b mod 23 on a small model."""
    import mechgrok as mg

    return mg.RunConfig(
        task=mg.TaskConfig(op="add", p=23, frac=0.6, seed=1),
        model=mg.ModelConfig(n_layers=1, d_model=32, n_heads=4, d_head=8, d_mlp=64, seed=1),
        train=mg.TrainConfig(steps=60, lr=3e-3, weight_decay=1.0, eval_every=10, checkpoint_every=20, seed=1),
    )
