"""The steps of `import_run` that the other import tests leave alone, pinned so that the code
behind them can be rearranged safely: a bundle's structure errors, the name a shape error gives
the weights it is in, missing biases filled with zeros (and noted once), the defaults assumed
(and noted), the bundle's own test_indices, and where a single state dict or a bundle whose
final model is its only weights lands."""

import pytest
import torch

from mechgrok.foreign import ForeignFileError, import_run


def is_bias(key: str) -> bool:
    return key.rsplit(".", 1)[-1].startswith("b_")


def notes(run) -> list[str]:
    return run.meta["imported"]["notes"]


def test_a_bundle_that_is_not_whole_is_one_line_saying_what_is_missing(tl_demo_bundle, tmp_path):
    _, b = tl_demo_bundle
    cases = {"short.pth": (b | {"checkpoint_epochs": b["checkpoint_epochs"][:2]},
                           "'checkpoints' must be a list as long as 'checkpoint_epochs' (2)"),
             "empty.pth": ({"checkpoints": [], "checkpoint_epochs": []}, "the bundle holds no checkpoints")}
    for name, (bundle, what) in cases.items():
        torch.save(bundle, tmp_path / name)
        with pytest.raises(ForeignFileError) as e:
            import_run(tmp_path / name, tmp_path / f"out_{name}", progress=False)
        assert str(e.value) == f"{tmp_path / name}: {what}"
        assert not (tmp_path / f"out_{name}").exists()


@pytest.mark.parametrize("where", ["checkpoints[1]", "model"])
def test_a_shape_error_names_the_weights_it_is_in(tl_demo_bundle, tmp_path, where):
    _, b = tl_demo_bundle
    ckpts, model = [dict(c) for c in b["checkpoints"]], dict(b["model"])
    (ckpts[1] if where != "model" else model)["blocks.0.mlp.W_in"] = torch.zeros(16, 7)
    src = tmp_path / "bad.pth"
    torch.save(b | {"checkpoints": ckpts, "model": model}, src)
    with pytest.raises(ForeignFileError) as e:
        import_run(src, tmp_path / "out", progress=False)
    assert str(e.value).startswith(f"{src}: {src} ({where}): 'blocks.0.mlp.W_in' has shape (16, 7)")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_missing_biases_are_zeros_and_noted_once(tl_demo_bundle, tmp_path):
    _, b = tl_demo_bundle
    folder = tmp_path / "nobias"
    folder.mkdir()
    for e, ckpt in zip(b["checkpoint_epochs"], b["checkpoints"]):
        torch.save({k: v for k, v in ckpt.items() if not is_bias(k)}, folder / f"step_{e + 1}.pt")
    run = import_run(folder, tmp_path / "imp", act_fn="gelu", progress=False)
    assert run.steps == [10, 20, 30]
    for s, full in zip(run.steps, b["checkpoints"]):
        params = run.params(s)
        biases = sorted(k for k in params if is_bias(k))
        assert biases and all(full[k].any() for k in biases)  # the source had trained, non-zero biases
        for k, v in params.items():
            if is_bias(k):
                assert not v.any()  # filled with zeros, never taken from elsewhere
            else:
                torch.testing.assert_close(v, full[k].float(), rtol=0, atol=0)
    filled = [n for n in notes(run) if n.startswith("biases missing in the source, filled with zeros: ")]
    listed = filled[0].split(": ", 1)[1].split(", ") if filled else []
    assert len(filled) == 1 and sorted(listed) == biases  # once for the series, not once per file


def test_the_defaults_assumed_are_noted_and_a_single_state_dict_sits_at_its_step(tl_demo_bundle, tmp_path):
    d, _ = tl_demo_bundle
    run = import_run(d / "single.pth", tmp_path / "imp", step=7, progress=False)
    assert run.steps == [7] and run.config.task.op == "add" and run.config.model.act_fn == "relu"
    said = notes(run)
    assert "op not given: assumed add (the TL Grokking demo's task)" in said
    assert "act_fn not given and not in the file: assumed relu" in said
    assert any(n.startswith("no split given: metrics use mechgrok's seeded split") for n in said)
    assert import_run(d / "single.pth", tmp_path / "at0", progress=False).steps == [0]


def test_test_indices_that_are_not_the_rest_are_noted(tl_demo_bundle, tmp_path):
    _, b = tl_demo_bundle
    torch.save(b | {"test_indices": b["test_indices"][:-3]}, tmp_path / "fewer.pth")
    run = import_run(tmp_path / "fewer.pth", tmp_path / "imp", progress=False)
    n_test = len(b["test_indices"])
    assert len(run.task.test_idx) == n_test  # mechgrok tests on every example outside the split
    assert (f"test_indices in fewer.pth are not all the examples outside train_indices: mechgrok tests on all "
            f"{n_test} others") in notes(run)
    plain = import_run(tl_demo_bundle[0] / "grokking.pth", tmp_path / "plain", progress=False)
    assert not any(n.startswith("test_indices in") for n in notes(plain))


def test_a_bundle_whose_only_weights_are_its_final_model_lands_after_its_last_epoch(tl_demo_bundle, tmp_path):
    _, b = tl_demo_bundle
    torch.save(b | {"checkpoints": [], "checkpoint_epochs": []}, tmp_path / "final.pth")
    run = import_run(tmp_path / "final.pth", tmp_path / "imp", progress=False)
    assert run.steps == [len(b["train_losses"])] and run.meta["imported"]["epoch_convention"] == "after"
    torch.testing.assert_close(run.params(run.steps[0]), {k: v for k, v in b["model"].items()
                                                           if not k.endswith(".mask")})
