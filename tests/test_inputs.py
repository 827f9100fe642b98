"""Inputs the machine cannot take: runs too large for its memory, a full disk or a directory
that cannot be written, a truncated plotly.min.js, Ctrl-C, the process umask, and a latent
statistics cache whose members were retrained in place."""

import errno
import json
import os
import shutil
from dataclasses import replace

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok import budget, files, latent, plots
from mechgrok.cli import app

runner = CliRunner()
MODEL = ["--p", "13", "--frac", "0.6", "--d-model", "16", "--n-heads", "2", "--d-mlp", "32", "--eval-every", "10",
         "--checkpoint-every", "10", "--no-progress", "--no-png"]
GB = 10 ** 9


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_line(r) -> str:
    """The CLI's one error line (and nothing else: no traceback)."""
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert "Traceback" not in r.output, r.output
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, r.output
    return errors[0]


@pytest.fixture
def memory(monkeypatch):
    """Pretend the machine has this many bytes available (8 GB unless set)."""
    monkeypatch.delenv(budget.ENV, raising=False)
    state = {"free": 8 * GB}
    monkeypatch.setattr(budget, "available_memory", lambda: state["free"])
    monkeypatch.setattr(budget, "_gpu_free", lambda device: None)
    return state


# --- 1. the memory budget ---------------------------------------------------------------------


def test_the_estimate_counts_the_table_the_model_with_its_optimizer_state_and_the_activations():
    big = mg.TaskConfig(op="add", p=20011)
    est = budget.memory_estimate(big)
    assert est.table >= big.n_examples * (3 + 1) * 8 * 2  # inputs + labels, and a copy beside them
    cfg = mg.ModelConfig(d_model=60000, d_mlp=60000, d_head=15000)
    est = budget.memory_estimate(mg.TaskConfig(), cfg, mg.TrainConfig())
    assert est.model == 4 * mg.model.n_params(cfg.resolve(mg.TaskConfig())) * 4
    assert est.activations > 0 and est.total == est.table + est.model + est.activations
    # TaskConfig knows the sizes a Task would have without building one
    for t in (mg.TaskConfig(p=23), mg.TaskConfig(op="div", p=7), mg.TaskConfig(op="parity", n_bits=6)):
        task = mg.Task(t)
        assert (t.n_ctx, t.d_vocab, t.d_vocab_out) == (task.n_ctx, task.d_vocab, task.d_vocab_out)


def test_the_limit_is_the_memory_available_now_times_the_safety_factor(monkeypatch):
    with open("/proc/meminfo") as f:
        avail = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    assert abs(budget.available_memory() - avail) < 0.2 * avail
    monkeypatch.setattr(budget, "available_memory", lambda: 10 * GB)
    monkeypatch.delenv(budget.ENV, raising=False)
    fits = mg.TaskConfig(op="add", p=8191)  # about 5.4 GB of table: under 80% of 10 GB
    assert budget.memory_estimate(fits).total < budget.SAFETY * 10 * GB < budget.memory_estimate(
        mg.TaskConfig(op="add", p=10007)).total
    budget.check_memory(fits)
    with pytest.raises(budget.MemoryBudgetError, match=r"more than the limit of 8\.0 GB \(80% of the 10\.0 GB"):
        budget.check_memory(mg.TaskConfig(op="add", p=10007))


def test_a_task_too_large_is_refused_before_its_table_is_allocated(memory, monkeypatch):
    def allocated(*a, **k):
        raise AssertionError("the example table was allocated before the size check")

    with monkeypatch.context() as m:
        m.setattr(torch, "arange", allocated)
        with pytest.raises(budget.MemoryBudgetError,
                           match=r"p=20011 \(400,440,121 examples\) needs about 32\.0 GB"):
            mg.Task(mg.TaskConfig(op="add", p=20011))
    memory["free"] = 10 ** 4  # too little even for a+b mod 23: the overrides let it through
    with pytest.raises(budget.MemoryBudgetError):
        mg.Task(mg.TaskConfig(p=23))
    assert len(mg.Task(mg.TaskConfig(p=23), allow_large=True).labels) == 23 * 23
    with budget.allowing_large():
        mg.Task(mg.TaskConfig(p=23))
    monkeypatch.setenv(budget.ENV, "1")
    mg.Task(mg.TaskConfig(p=23))


def test_on_a_gpu_the_model_is_held_against_its_free_memory_and_the_table_against_the_host(memory, monkeypatch):
    monkeypatch.setattr(budget, "_gpu_free", lambda device: GB)
    big_model = mg.ModelConfig(d_model=1024, d_mlp=16384, d_head=256)  # about 3 GB: 0.6 GB of weights and state, 2.4 of activations
    with pytest.raises(budget.MemoryBudgetError, match=r"of GPU memory, more than the limit of 0\.8 GB \(80% of "
                                                       r"the 1\.0 GB of GPU memory"):
        budget.check_memory(mg.TaskConfig(), big_model, mg.TrainConfig(device="cuda"))
    budget.check_memory(mg.TaskConfig(), big_model, mg.TrainConfig(device="cpu"))  # 8 GB of host memory
    with pytest.raises(budget.MemoryBudgetError, match=r"8\.0 GB of memory available"):
        budget.check_memory(mg.TaskConfig(p=20011), mg.ModelConfig(), mg.TrainConfig(device="cuda"))


@pytest.mark.parametrize("args, says", [
    (["--p", "20011"], "examples table 32.0 GB"),
    (["--d-model", "60000", "--d-mlp", "60000"], "(21,606,960,053 parameters) needs about 355.8 GB"),
])
def test_a_run_that_will_not_fit_is_refused_in_one_line_and_leaves_no_directory(tmp_path, memory, monkeypatch,
                                                                               args, says):
    import mechgrok.trainer

    monkeypatch.setattr(mechgrok.trainer, "init_params", lambda cfg: pytest.fail("the model was allocated"))
    out = tmp_path / "big"
    r = invoke("train", "--out", out, "--steps", "10", "--no-progress", "--no-png", *args)
    assert r.exit_code == 1
    line = error_line(r)
    assert says in line and "more than the limit of 6.4 GB (80% of the 8.0 GB" in line and "--allow-large" in line
    assert not out.exists()


def test_allow_large_trains_what_the_estimate_refuses(tmp_path, memory):
    memory["free"] = 10 ** 4
    r = invoke("train", "--out", tmp_path / "refused", "--steps", "10", *MODEL)
    assert r.exit_code == 1 and "--allow-large" in error_line(r) and not (tmp_path / "refused").exists()
    r = invoke("train", "--out", tmp_path / "run", "--steps", "10", "--allow-large", *MODEL)
    assert r.exit_code == 0, r.output
    assert not budget._allow_large  # the flag ends with the command
    with pytest.raises(budget.MemoryBudgetError):
        mg.load_run(tmp_path / "run")
    memory["free"] = 8 * GB
    assert mg.load_run(tmp_path / "run").steps == [0, 10]


def test_info_on_a_config_too_large_refuses_in_one_line(tiny_run, tmp_path, memory, monkeypatch):
    run = tmp_path / "big"
    run.mkdir()
    meta = json.loads((tiny_run.path / "config.json").read_text())
    meta["task"]["p"] = 20011
    (run / "config.json").write_text(json.dumps(meta))
    monkeypatch.setattr(torch, "arange", lambda *a, **k: pytest.fail("the example table was allocated"))
    r = invoke("info", run)
    assert r.exit_code == 1 and "p=20011" in error_line(r) and "needs about 32.0 GB" in error_line(r)
    with pytest.raises(budget.MemoryBudgetError):
        mg.load_run(run)


def test_running_out_of_memory_past_the_estimate_is_one_line(tmp_path, monkeypatch):
    import mechgrok.trainer

    def oom(*a, **k):
        raise MemoryError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 14400000000 bytes.\n"
                          "Error code 12")

    monkeypatch.setattr(mechgrok.trainer, "train", oom)
    r = invoke("train", "--out", tmp_path / "run", "--allow-large", "--steps", "10", *MODEL)
    assert r.exit_code == 1
    assert error_line(r) == ("error: out of memory: DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                             "14400000000 bytes. (try a smaller task, model or --batch-size)")


# --- 2. OSError: one line naming the file ----------------------------------------------------------


def test_a_directory_that_cannot_be_made_is_one_line_naming_it(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    out = tmp_path / "a_file" / "run"
    r = invoke("train", "--out", out, "--steps", "10", *MODEL)
    assert r.exit_code == 1
    assert error_line(r) == f"error: {out}: Not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o555 directory")
def test_a_read_only_directory_is_one_line_naming_the_file(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = invoke("train", "--out", ro / "run", "--steps", "10", *MODEL)
    finally:
        ro.chmod(0o755)
    assert r.exit_code == 1
    assert error_line(r).startswith(f"error: {ro / 'run'}: Permission denied (check the permissions")


def test_a_full_disk_is_one_line_naming_the_file_not_its_temp_copy(tmp_path, monkeypatch):
    def full(tensors, tmp, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

    monkeypatch.setattr(files, "save_file", full)
    out = tmp_path / "run"
    r = invoke("train", "--out", out, "--steps", "10", *MODEL)
    assert r.exit_code == 1
    ckpt = out / "checkpoints" / "step_0000000.safetensors"
    assert error_line(r) == (f"error: {ckpt}: No space left on device (the disk is full; free some space and "
                             f"run it again)")
    assert not [p for p in out.rglob("*.tmp")]


# --- 3. plotly.min.js -------------------------------------------------------------------------------


def _plotlyjs() -> bytes:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode("utf-8")


def test_a_truncated_plotly_js_is_replaced_with_plotlys_own_copy_atomically(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    through = []
    real = plots.atomic_write
    monkeypatch.setattr(plots, "atomic_write", lambda path, write: through.append(path.name) or real(path, write))
    want = _plotlyjs()
    js = tmp_path / "plotly.min.js"
    fig = go.Figure(go.Scatter(y=[1, 2]))
    for broken in (want[: len(want) // 3], b"x" * len(want), None):  # cut short, same size but wrong, missing
        if broken is None:
            js.unlink()
        else:
            js.write_bytes(broken)
        through.clear()
        assert plots.save_figure(fig, tmp_path / "fig", png=False) == [tmp_path / "fig.html"]
        assert js.read_bytes() == want
        assert through == ["plotly.min.js", "fig.html"]
        assert 'src="plotly.min.js"' in (tmp_path / "fig.html").read_text()
    through.clear()
    plots.save_figure(fig, tmp_path / "fig2", png=False)  # intact: left as it is
    assert through == ["fig2.html"]


def test_png_figures_go_through_the_atomic_writer(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    through = []
    real = plots.atomic_write
    monkeypatch.setattr(plots, "atomic_write", lambda path, write: through.append(path.name) or real(path, write))
    monkeypatch.setattr(go.Figure, "write_image", lambda self, f, **k: open(f, "wb").write(b"\x89PNG"))
    assert plots.save_figure(go.Figure(), tmp_path / "f", plotlyjs="cdn") == [tmp_path / "f.html", tmp_path / "f.png"]
    assert through == ["f.html", "f.png"]


# --- 4. Ctrl-C ----------------------------------------------------------------------------------------


def test_ctrl_c_says_the_step_to_resume_from_and_the_resume_banner_names_that_step(tmp_path, monkeypatch):
    from mechgrok import runs

    real = runs.RunWriter.checkpoint

    def interrupted(self, state, *a, **k):
        if state.step == 40:  # Ctrl-C between the checkpoint file and the resume state
            files.save_tensors(runs.checkpoint_path(self.path, 40), state.params)
            raise KeyboardInterrupt
        return real(self, state, *a, **k)

    monkeypatch.setattr(runs.RunWriter, "checkpoint", interrupted)
    out = tmp_path / "run"
    r = invoke("train", "--out", out, "--steps", "60", *MODEL)
    assert r.exit_code == 130
    assert f"stopped at step 30; resume with `mechgrok train --resume {out}`" in r.output
    assert mg.load_run(out).steps[-1] == 40 and runs.read_resume_state(out).step == 30
    monkeypatch.undo()
    r = invoke("train", "--resume", out, "--no-progress", "--no-png")
    assert r.exit_code == 0, r.output
    assert f"resuming {out} from step 30 to step 60" in r.output
    assert mg.load_run(out).steps == [0, 10, 20, 30, 40, 50, 60]


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, monkeypatch):
    from mechgrok import runs

    def interrupted(self, state, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.RunWriter, "checkpoint", interrupted)
    r = invoke("train", "--out", tmp_path / "run", "--steps", "60", *MODEL)
    assert r.exit_code == 130 and "stopped before the first checkpoint" in r.output


# --- 5. the umask ---------------------------------------------------------------------------------------


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_the_umask_is_read_without_being_set(umask_027, tmp_path, monkeypatch):
    if not os.path.exists("/proc/self/status") or "Umask:" not in open("/proc/self/status").read():
        pytest.skip("no Umask line in /proc/self/status")
    monkeypatch.setattr(os, "umask", lambda mask: pytest.fail(f"os.umask({mask:#o}) called: the umask changed"))
    assert files._umask() == 0o027
    files.write_text(tmp_path / "f.txt", "x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640


def test_without_proc_the_umask_is_set_and_restored(umask_027, monkeypatch):
    def no_proc(*a, **k):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(files, "open", no_proc, raising=False)
    assert files._umask() == 0o027
    monkeypatch.undo()
    assert files._umask() == 0o027


# --- 6. the latent statistics cache -------------------------------------------------------------------------


def test_a_member_retrained_in_place_invalidates_the_cached_statistics(tiny_cfg, tmp_path):
    from mechgrok.trainer import train

    cfg = replace(tiny_cfg, train=replace(tiny_cfg.train, checkpoint_every=10))
    members = [tmp_path / "pop" / f"seed{s}" for s in range(2)]
    for s, path in enumerate(members):
        train(replace(cfg, model=replace(cfg.model, seed=s)), path, progress=False)
    table = latent.population_statistics(members, progress=False)
    files.write_csv(tmp_path / "statistics.csv", table)
    cached = pd.read_csv(tmp_path / "statistics.csv")
    assert latent.cached_statistics(members, cached) is cached
    assert latent.cached_statistics(members, cached.drop(columns=[latent.STAMP])) is None  # an older cache
    assert latent.STAMP not in latent._features(None, table) and "l2" in latent._features("l2", table)

    shutil.rmtree(members[1])  # retrained in place: same path, same steps, other weights
    train(replace(cfg, model=replace(cfg.model, seed=7)), members[1], progress=False)
    assert mg.load_run(members[1]).steps == mg.load_run(members[0]).steps
    assert latent.cached_statistics(members, cached) is None
    fresh = latent.population_statistics(members, progress=False)
    assert not fresh.loc[fresh.member == 1, "l2"].equals(table.loc[table.member == 1, "l2"])
    assert latent.cached_statistics(members, fresh) is fresh


def test_python_train_refuses_a_model_that_will_not_fit_and_writes_nothing(tmp_path, monkeypatch):
    import mechgrok as mg

    monkeypatch.setattr(mg.trainer, "init_params", lambda *a, **k: pytest.fail("allocated before the check"))
    cfg = mg.configure("demo", d_model=60000, d_mlp=60000, n_heads=1)
    with pytest.raises(ValueError, match="GB"):
        mg.train(cfg, tmp_path / "huge", progress=False)
    assert not (tmp_path / "huge").exists()
