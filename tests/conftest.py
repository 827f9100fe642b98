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


# --- trained runs shared by the whole test session (trained once, read-only for tests) ---------


def _train_shared(cfg, out):
    from mechgrok.train import train

    return train(cfg, out, progress=False, figure=False)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tiny_cfg`` trained once per session (about a second): a run to read, never to modify."""
    import mechgrok as mg

    cfg = mg.RunConfig(
        task=mg.TaskConfig(op="add", p=23, frac=0.6, seed=1),
        model=mg.ModelConfig(n_layers=1, d_model=32, n_heads=4, d_head=8, d_mlp=64, seed=1),
        train=mg.TrainConfig(steps=60, lr=3e-3, weight_decay=1.0, eval_every=10, checkpoint_every=20, seed=1),
    )
    return _train_shared(cfg, tmp_path_factory.mktemp("shared") / "tiny")


@pytest.fixture(scope="session")
def grokked_run(tmp_path_factory):
    """a+b mod 23 trained until it groks (about 10 s on 2 cores): memorises by step ~80,
    generalises (test accuracy > 0.9) by ~250 and reaches 1.0 by 400. Settings from a small
    search: frac 0.7, lr 3e-3 and wd 3. Shared by every test that needs a real grokking run;
    read it, never modify it."""
    import mechgrok as mg

    cfg = mg.RunConfig(
        task=mg.TaskConfig(op="add", p=23, frac=0.7, seed=0),
        model=mg.ModelConfig(n_layers=1, d_model=64, n_heads=4, d_head=16, d_mlp=256, seed=0),
        train=mg.TrainConfig(steps=400, lr=3e-3, weight_decay=3.0, warmup_steps=10, eval_every=10,
                             checkpoint_every=50, seed=0, device="cpu"),
    )
    return _train_shared(cfg, tmp_path_factory.mktemp("shared") / "grokked")
