"""`mechgrok import DIR`: a folder of per-step HookedTransformer state dicts (.pt/.pth/.safetensors)
becomes one run with a checkpoint per file, each file read as a single-file import reads it."""

import json

import pytest
import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app
from mechgrok.files import save_tensors

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


class Blocked:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.path}",))


def write_folder(run, folder):
    """The run's checkpoints as a folder in both formats, under names other tools use."""
    folder.mkdir()
    names = {}
    for i, s in enumerate(run.steps):
        sd = run.params(s)
        if i % 2:
            names[s] = f"step_{s}.pt"
            torch.save(sd, folder / names[s])
        else:
            names[s] = f"model_step_{s:06d}.safetensors"
            save_tensors(folder / names[s], sd)
    (folder / "notes.txt").write_text("not a checkpoint: left alone")
    (folder / "split.json").write_text(json.dumps(run.task.train_idx.tolist()))
    return names


def test_folder_import_has_every_step_with_the_original_weights(tiny_run, tmp_path):
    src = tmp_path / "ckpts"
    names = write_folder(tiny_run, src)
    assert len(tiny_run.steps) >= 3 and {n.rsplit(".", 1)[1] for n in names.values()} == {"pt", "safetensors"}
    r = invoke("import", src, "--out", tmp_path / "imp", "--op", "add", "--split", src / "split.json",
               "--no-progress", "--no-png")
    assert r.exit_code == 0, r.output
    imp = mg.load_run(tmp_path / "imp")
    assert imp.steps == tiny_run.steps
    for s in tiny_run.steps:
        want, got = tiny_run.params(s), imp.params(s)
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    # evaluated on the original split: the original run's accuracies at its checkpoints
    ours = imp.metrics.set_index("step")
    theirs = tiny_run.metrics.set_index("step").loc[tiny_run.steps]
    assert ours["test_acc"].to_numpy() == pytest.approx(theirs["test_acc"].to_numpy(), abs=1e-6)
    assert ours["train_loss"].to_numpy() == pytest.approx(theirs["train_loss"].to_numpy(), rel=1e-4)
    meta = json.loads((tmp_path / "imp" / "config.json").read_text())
    assert meta["imported"]["format"] == "folder of HookedTransformer state dicts"


def test_folder_import_refuses_clearly(tiny_run, tmp_path):
    src = tmp_path / "ckpts"
    write_folder(tiny_run, src)
    s = tiny_run.steps[0]

    def refused(folder, *what, extra=()):
        out = tmp_path / f"out_{folder.name}"
        r = invoke("import", folder, "--out", out, "--op", "add", *extra)
        assert r.exit_code == 1, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
        assert all(w in r.output for w in what), r.output
        assert not out.exists()

    refused(src, "--step", extra=("--step", "5"))  # steps come from the names
    dup = tmp_path / "dup"
    dup.mkdir()
    save_tensors(dup / f"step_{s}.safetensors", tiny_run.params(s))
    torch.save(tiny_run.params(s), dup / f"ckpt_{s:05d}.pth")
    refused(dup, f"step_{s}.safetensors", f"ckpt_{s:05d}.pth", f"step {s}")
    nameless = tmp_path / "nameless"
    nameless.mkdir()
    torch.save(tiny_run.params(s), nameless / "final.pt")
    refused(nameless, "final.pt", "no step")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, "empty", "no .pt/.pth/.safetensors")
    # each file is read as a single-file import reads it: a missing tensor, a pickle calling os
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({k: v for k, v in tiny_run.params(s).items() if k != "unembed.W_U"}, bad / "step_1.pt")
    refused(bad, "step_1.pt", "unembed.W_U")
    sneaky = tmp_path / "sneaky"
    sneaky.mkdir()
    target = tmp_path / "created_by_unpickling"
    torch.save(tiny_run.params(s) | {"x": Blocked(target)}, sneaky / "step_1.pt")
    refused(sneaky, "step_1.pt", "nothing was run")
    assert not target.exists()
