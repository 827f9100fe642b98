"""`mechgrok import` of a Grokking-demo bundle reads the file as what it is, or says it cannot:
it finds where the bundle's checkpoints sit (saved after or before their epoch's update) from
the bundle's own losses, refuses weights that do not reproduce those losses (a wrong --op,
--p or split) unless told to accept them, and fails in one line on a split that is not a list
of integers or a pickle that contains itself."""

import json

import pytest
import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app
from mechgrok.foreign import ForeignFileError, import_run


def demo_bundle(before: bool) -> dict:
    """A bundle trained as the TL Grokking demo trains (full-batch AdamW on a+b mod 13, train
    loss before each update, test loss after it, a checkpoint when (epoch + 1) % 10 == 0), its
    checkpoints copied either after their epoch's update (the demo) or ``before`` it."""
    task = mg.make_task("add", p=13, frac=0.4, seed=5)
    cfg = mg.ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, act_fn="gelu").resolve(task)
    params = {k: v.requires_grad_() for k, v in mg.init_params(cfg).items()}
    opt = torch.optim.AdamW(params.values(), lr=1e-2, weight_decay=1.0)

    def loss(x, y):
        return torch.nn.functional.cross_entropy(mg.forward(params, cfg, x).double(), y)

    def snapshot():
        return {k: v.detach().clone() for k, v in params.items()}

    train_losses, test_losses, ckpts, epochs = [], [], [], []
    for epoch in range(30):
        if before and (epoch + 1) % 10 == 0:
            epochs.append(epoch)
            ckpts.append(snapshot())
        train_loss = loss(task.train_inputs, task.train_labels)
        train_loss.backward()
        train_losses.append(train_loss.item())
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            test_losses.append(loss(task.test_inputs, task.test_labels).item())
        if not before and (epoch + 1) % 10 == 0:
            epochs.append(epoch)
            ckpts.append(snapshot())
    return {"model": snapshot(), "checkpoints": ckpts, "checkpoint_epochs": epochs, "config": {"act_fn": "gelu"},
            "train_losses": train_losses, "test_losses": test_losses, "train_indices": task.train_idx,
            "test_indices": task.test_idx}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("conventions")
    out = {}
    for name, before in (("after", False), ("before", True)):
        out[name] = demo_bundle(before)
        torch.save(out[name], d / f"{name}.pth")
    return d, out


def notes(run) -> list[str]:
    return run.meta["imported"]["notes"]


@pytest.mark.parametrize("convention, steps", [("after", [10, 20, 30]), ("before", [9, 19, 29, 30])])
def test_the_epoch_convention_comes_from_the_bundles_own_losses(bundles, tmp_path, convention, steps):
    d, b = bundles
    run = import_run(d / f"{convention}.pth", tmp_path / "imp", progress=False)
    assert run.steps == steps  # "before": epoch e is step e, and the final model (step 30) is new
    assert run.meta["imported"]["epoch_convention"] == convention
    said = next(n for n in notes(run) if n.startswith("checkpoints saved"))
    assert said.startswith(f"checkpoints saved {convention} their epoch's update")
    # the faithful file now agrees with its own losses: train_losses[s] was computed on the
    # weights of step s, test_losses[s - 1] on those of step s (after the update of epoch s - 1)
    m = run.metrics.set_index("step")
    for s in steps:
        assert m.loc[s, "test_loss"] == pytest.approx(b[convention]["test_losses"][s - 1], rel=1e-6)
        if s < 30:
            assert m.loc[s, "train_loss"] == pytest.approx(b[convention]["train_losses"][s], rel=1e-6)
    chosen, other = said.split("(the other convention:")
    assert float(chosen.split("train ")[1].split(",")[0]) < 1e-6  # a small difference, as it should be
    assert float(other.split("train ")[1].split(",")[0]) > 1e-3  # the other reading is visibly off
    torch.testing.assert_close(run.params(steps[0]), b[convention]["checkpoints"][0])


def test_a_wrong_op_is_an_error_naming_the_likely_cause_unless_accepted(bundles, tmp_path):
    d, _ = bundles
    r = CliRunner().invoke(app, ["import", str(d / "after.pth"), "--out", str(tmp_path / "mul"), "--op", "mul",
                                 "--no-progress", "--no-png"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "do not reproduce the bundle's own losses" in r.output and "--op" in r.output
    assert "--accept-mismatch" in r.output
    assert not (tmp_path / "mul").exists()  # nothing written
    r = CliRunner().invoke(app, ["import", str(d / "after.pth"), "--out", str(tmp_path / "mul"), "--op", "mul",
                                 "--accept-mismatch", "--no-progress", "--no-png"])
    assert r.exit_code == 0, r.output
    run = mg.load_run(tmp_path / "mul")
    assert run.config.task.op == "mul" and any("despite a loss mismatch" in n for n in notes(run))


def test_a_wrong_split_is_an_error(bundles, tmp_path):
    d, b = bundles
    other = mg.make_task("add", p=13, frac=0.4, seed=6).train_idx  # another seed's split
    assert set(other.tolist()) != set(b["after"]["train_indices"].tolist())
    with pytest.raises(ForeignFileError, match=r"do not reproduce the bundle's own losses .*--split"):
        import_run(d / "after.pth", tmp_path / "split", split=other, progress=False)
    assert not (tmp_path / "split").exists()


def test_a_bundle_without_losses_assumes_the_demos_convention_and_says_so(bundles, tmp_path):
    d, b = bundles
    torch.save({k: v for k, v in b["before"].items() if not k.endswith("_losses")}, tmp_path / "quiet.pth")
    run = import_run(tmp_path / "quiet.pth", tmp_path / "imp", progress=False)
    assert run.steps == [10, 20, 30] and run.meta["imported"]["epoch_convention"] == "after"
    assert any(n.startswith("no losses in the bundle") for n in notes(run))


class Indices:
    """A pickled object of a class mechgrok never imports, where a list of integers belongs."""

    def __init__(self, values):
        self.values = values


def test_a_split_or_pickle_that_is_not_data_fails_in_one_line(bundles, tmp_path):
    d, b = bundles
    looped = [1]
    looped.append(looped)
    selfish = Indices(None)
    selfish.values = selfish
    cases = {"object_split.pth": (b["after"] | {"train_indices": Indices([1, 2])}, "train_indices holds a"),
             "float_split.pth": (b["after"] | {"train_indices": [0.5, 1.5]}, "train_indices must be a list of integers"),
             "looped.pth": (b["after"] | {"config": looped}, "holds a list that contains itself"),
             "selfish.pth": (b["after"] | {"config": selfish}, "Indices that contains itself")}
    for name, (bundle, what) in cases.items():
        torch.save(bundle, tmp_path / name)
        r = CliRunner().invoke(app, ["import", str(tmp_path / name), "--out", str(tmp_path / f"o_{name}"),
                                     "--no-progress", "--no-png"])
        assert r.exit_code == 1, r.output
        assert len(r.output.strip().splitlines()) == 1 and name in r.output and what in r.output, r.output
        assert not (tmp_path / f"o_{name}").exists()
