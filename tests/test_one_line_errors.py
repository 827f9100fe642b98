"""User mistakes end as one line that says what to do, before anything is written (issue 18,
items 8 and 9): a GPU that is not there, a run without checkpoints, a bad --probe, a run killed
before its first checkpoint, and Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app
from mechgrok.runs import CONFIG_FILE, checkpoint_path

MODEL = ["--p", "13", "--frac", "0.6", "--d-model", "16", "--n-heads", "2", "--d-mlp", "32", "--eval-every", "10",
         "--checkpoint-every", "10", "--no-progress", "--no-png"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(r, *needles):
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    for n in needles:
        assert n in r.output, r.output


def never_checkpointed(tmp_path, name="killed") -> Path:
    """What a run killed while it started leaves: its config.json and nothing else (a real
    config, written by a real run, copied without the files training writes)."""
    ok = invoke("train", "--out", tmp_path / "donor", *MODEL, "--steps", "10")
    assert ok.exit_code == 0, ok.output
    d = tmp_path / name
    (d / "checkpoints").mkdir(parents=True)
    (d / CONFIG_FILE).write_text((tmp_path / "donor" / CONFIG_FILE).read_text())
    return d


def test_device_cuda_without_a_gpu_is_one_line_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = invoke("train", "--out", tmp_path / "x", *MODEL, "--steps", "10", "--device", "cuda")
    one_line_error(r, "device 'cuda'", "no CUDA GPU", "--device cpu")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="no CUDA GPU"):
        mg.config.resolve_device("cuda:0")
    assert mg.config.resolve_device("auto") == torch.device("cpu")  # auto falls back, as before


def test_spectrum_of_a_run_without_checkpoints_is_one_line(tmp_path):
    r = invoke("spectrum", never_checkpointed(tmp_path))
    one_line_error(r, "no checkpoints")


@pytest.mark.parametrize("spec, msg", [("every=10,iters=0", "iters must be an integer >= 1"),
                                       ("every=10,rank_n=0", "rank_n must be an integer >= 1"),
                                       ("every=ten", "every must be an integer >= 1"),
                                       ("iters=2", "needs every=N")])
def test_a_bad_probe_is_refused_before_the_run_directory_is_made(tmp_path, spec, msg):
    r = invoke("train", "--out", tmp_path / "x", *MODEL, "--steps", "30", "--probe", spec)
    one_line_error(r, msg)
    assert not (tmp_path / "x").exists()


def test_a_bad_probe_count_fails_in_the_api_before_training(tmp_path, tiny_cfg):
    with pytest.raises(ValueError, match="iters must be an integer >= 1"):
        mg.train(tiny_cfg, tmp_path / "x", progress=False, measures=[mg.measures.dynamics_measure(hessian_iters=0)])
    assert not (tmp_path / "x").exists()


def test_a_run_killed_before_its_first_checkpoint_is_started_afresh_in_place(tmp_path):
    d = never_checkpointed(tmp_path)
    r = invoke("train", "--resume", d, "--no-progress", "--no-png")
    one_line_error(r, "no resume.safetensors", f"train it again with --out {d}")
    r = invoke("train", "--out", d, *MODEL, "--steps", "20")
    assert r.exit_code == 0, r.output
    # the same run as one trained into a new directory
    fresh = invoke("train", "--out", tmp_path / "fresh", *MODEL, "--steps", "20")
    assert fresh.exit_code == 0, fresh.output
    a, b = mg.load_run(d), mg.load_run(tmp_path / "fresh")
    assert a.steps == b.steps == [0, 10, 20]
    assert all(torch.equal(a.params()[k], b.params()[k]) for k in b.params())
    # now it has checkpoints: refused again
    one_line_error(invoke("train", "--out", d, *MODEL, "--steps", "20"), "already holds a run")


def test_a_never_checkpointed_run_with_other_files_is_refused_naming_them(tmp_path):
    d = never_checkpointed(tmp_path)
    (d / "notes.txt").write_text("mine")
    one_line_error(invoke("train", "--out", d, *MODEL, "--steps", "20"), "notes.txt", "never reached its first")
    assert (d / "notes.txt").read_text() == "mine"
    assert json.loads((d / CONFIG_FILE).read_text())["train"]["steps"] == 10  # left as it was


def _cli(out, *args):
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(mg.__file__).parents[1])}
    cmd = [sys.executable, "-m", "mechgrok.cli", "train", *([] if out is None else ["--out", str(out)]), *args]
    return cmd, env


def _sigint_as_in_a_terminal():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_says_where_it_stopped_and_the_resume_command_it_prints_finishes_the_run(tmp_path):
    out = tmp_path / "run"
    # a measure at every step that sleeps: steps 40-400 take ~18 s, time to stop it on a loaded machine
    slow = tmp_path / "slow.py"
    slow.write_text("import time\n\ndef slow(ctx):\n    time.sleep(0.05)\n    return {}\n")
    cmd, env = _cli(out, *MODEL, "--steps", "400", "--measure", f"{slow}:slow", "--measure-every", "1")
    # the child starts as from a terminal: SIGINT unblocked and at its default (in the full suite a
    # child once inherited a state in which SIGINT did nothing; a user's shell never passes that on)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)
    end = time.monotonic() + 120
    # a file event, not a clock: a checkpoint writes its step file before its resume state
    # (RunWriter.checkpoint), so step 40's file means step 30's resume state is committed
    while not checkpoint_path(out, 40).exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "safety net: no checkpoint at step 40 within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    step = int(mg.runs.read_resume_state(out).step)
    assert 30 <= step < 400, "it should have stopped part-way"
    assert f"stopped at step {step}; resume with `mechgrok train --resume {out}`" in err
    assert "Traceback" not in err
    printed = err.split("`")[1].split()
    assert printed[:3] == ["mechgrok", "train", "--resume"]
    cmd, env = _cli(None, *printed[2:], "--no-progress", "--no-png")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resuming {out} from step {step} to step 400" in done.stdout
    run = mg.load_run(out)
    assert run.steps[-1] == 400 and run.metrics.step.tolist() == list(range(0, 401, 10))


def test_ctrl_c_in_a_sweep_counts_the_finished_members_and_names_the_resume_command(tmp_path, monkeypatch):
    import mechgrok.population as population

    def interrupted(sweep, out, **kw):  # a sweep stopped after one member: sweep.json and one manifest line
        out.mkdir(parents=True)
        (out / population.SWEEP_FILE).write_text("{}")
        (out / population.MANIFEST_FILE).write_text(json.dumps({"id": "m0"}) + "\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(population, "run_sweep", interrupted)
    r = invoke("sweep", "--out", tmp_path / "s", "--set", "steps=10", "--no-progress")
    assert r.exit_code != 0
    assert f"stopped with 1 member(s) finished; resume with `mechgrok sweep --resume {tmp_path / 's'}`" in r.output
