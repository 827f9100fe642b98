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
    from mechgrok.trainer import train

    return train(cfg, out, progress=False)


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


# --- foreign checkpoint series (cli helper) -----------------------------------------

from dataclasses import dataclass  # noqa: E402  (this section's own import)


@dataclass
class HookedTransformerConfig:
    """Stands for TransformerLens's config class inside a Grokking-demo bundle; the importer
    must read it as data and never construct it."""

    n_layers: int
    d_model: int
    act_fn: str
    d_vocab: int
    seed: int


@pytest.fixture(scope="session")
def tl_demo_bundle(tmp_path_factory):
    """A TransformerLens Grokking-demo bundle built the way the demo builds one: full-batch AdamW
    on a+b mod 13 (GELU, its own split), train loss before each update and test loss after it,
    a checkpoint (with TL's attention-mask buffer) when (epoch + 1) % 10 == 0, and a pickled
    config object. Returns (directory, bundle dict); the directory also holds single.pth (the
    first checkpoint alone)."""
    import torch

    import mechgrok as mg

    d = tmp_path_factory.mktemp("bundle")
    task = mg.make_task("add", p=13, frac=0.4, seed=5)
    cfg = mg.ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, act_fn="gelu").resolve(task)
    params = {k: v.requires_grad_() for k, v in mg.init_params(cfg).items()}
    opt = torch.optim.AdamW(params.values(), lr=3e-3, weight_decay=1.0)

    def loss(x, y):
        return torch.nn.functional.cross_entropy(mg.forward(params, cfg, x).double(), y)

    train_losses, test_losses, ckpts, epochs = [], [], [], []
    for epoch in range(30):
        train_loss = loss(task.train_inputs, task.train_labels)
        train_loss.backward()
        train_losses.append(train_loss.item())
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            test_losses.append(loss(task.test_inputs, task.test_labels).item())
        if (epoch + 1) % 10 == 0:
            epochs.append(epoch)
            ckpts.append({k: v.detach().clone() for k, v in params.items()} | {"blocks.0.attn.mask": torch.ones(3, 3)})
    bundle = {"model": ckpts[-1], "config": HookedTransformerConfig(1, 16, "gelu", 14, 999), "checkpoints": ckpts,
              "checkpoint_epochs": epochs, "train_losses": train_losses, "test_losses": test_losses,
              "train_indices": task.train_idx, "test_indices": task.test_idx}
    torch.save(bundle, d / "grokking.pth")
    torch.save(ckpts[0], d / "single.pth")
    return d, bundle
