"""Weights no analysis can use are refused where they are read, naming the file and the tensor:
NaN/inf (a byte flipped on disk) in a run's checkpoint or an imported file, and integer tensors
offered as weights."""

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app
from mechgrok.runs import checkpoint_path

NAN32 = b"\xff\xff\xff\x7f"  # a float32 NaN, little-endian


def flip_bytes(path, tensor: str, raw: bytes = NAN32, at: int = 0):
    """Overwrite the first bytes of ``tensor``'s data in the safetensors file ``path`` (the
    damage a bad disk or a broken copy does: the header still parses)."""
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    start = 8 + n + json.loads(data[8:8 + n])[tensor]["data_offsets"][0] + at
    data[start:start + len(raw)] = raw
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_flipped_bytes_is_refused_and_a_clean_one_still_loads(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.path, run_dir)
    bad = checkpoint_path(run_dir, 40)
    flip_bytes(bad, "blocks.0.attn.W_Q", at=8)
    assert load_file(str(bad))["blocks.0.attn.W_Q"].isnan().sum() == 1  # the damage decodes as one NaN
    run = mg.load_run(run_dir)
    with pytest.raises(ValueError, match=r"step_0000040.safetensors: tensor 'blocks.0.attn.W_Q' holds 1 NaN value"):
        run.params(40)
    for s in (20, 60):  # the others are whole and load exactly as written
        assert torch.equal(run.params(s)["blocks.0.attn.W_Q"], tiny_run.params(s)["blocks.0.attn.W_Q"])
    r = CliRunner().invoke(app, ["spectrum", str(run_dir), "--step", "40"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "step_0000040.safetensors" in r.output and "blocks.0.attn.W_Q" in r.output and "NaN" in r.output
    assert "key frequencies" not in r.output


def test_inf_is_refused_as_well(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.path, run_dir)
    flip_bytes(checkpoint_path(run_dir, 60), "unembed.W_U", raw=struct.pack("<f", float("inf")))
    with pytest.raises(ValueError, match=r"tensor 'unembed.W_U' holds 1 inf value"):
        mg.load_run(run_dir).params()


def _import(src, out):
    return CliRunner().invoke(app, ["import", str(src), "--out", str(out), "--p", "23", "--no-progress", "--no-png"])


def test_importing_nan_or_integer_weights_fails_naming_the_tensor(tiny_run, tmp_path):
    params = tiny_run.params()
    save_file(params, str(tmp_path / "clean.safetensors"))
    r = _import(tmp_path / "clean.safetensors", tmp_path / "clean")
    assert r.exit_code == 0, r.output  # the same file, whole, imports

    nan = dict(params) | {"embed.W_E": params["embed.W_E"].clone().index_put_((torch.tensor([3]),), torch.tensor(float("nan")))}
    save_file(nan, str(tmp_path / "nan.safetensors"))
    torch.save(nan, tmp_path / "nan.pth")
    ints = dict(params) | {"blocks.0.mlp.W_in": (params["blocks.0.mlp.W_in"] * 100).round().to(torch.int32)}
    save_file(ints, str(tmp_path / "ints.safetensors"))
    for name, what in (("nan.safetensors", "'embed.W_E' holds 32 NaN"), ("nan.pth", "'embed.W_E' holds 32 NaN"),
                       ("ints.safetensors", "'blocks.0.mlp.W_in' holds int32 values")):
        r = _import(tmp_path / name, tmp_path / f"out_{name}")
        assert r.exit_code == 1, r.output
        assert len(r.output.strip().splitlines()) == 1 and name in r.output and what in r.output, r.output
        assert not (tmp_path / f"out_{name}").exists()
    with pytest.raises(ValueError, match="'embed.W_E' holds 32 NaN"):
        mg.load_hooked_transformer(tmp_path / "nan.pth", act_fn="relu")
