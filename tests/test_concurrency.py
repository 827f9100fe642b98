"""One writer per run directory and per sweep (locks.py), and nothing lost when a writer is
killed or a file is tampered with.

The two-process tests run real ``mechgrok`` processes. They synchronise on file events: the
first process is stopped (SIGSTOP) once its pid is in the directory's lock file, the second runs
to its end against it, then the first is let go (SIGCONT). No wall-clock sleeps decide anything;
the polling loops only have a safety timeout."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import mechgrok as mg
from mechgrok import population as popm
from mechgrok.ensemble import member_status, train_ensemble
from mechgrok.files import read_tensors
from mechgrok.locks import LOCK_FILE, RunLocked, holder, lock_dir
from mechgrok.model import init_params
from mechgrok.presets import configure

REPO = Path(__file__).resolve().parents[1]
TINY = dict(p=11, frac=0.6, d_model=16, n_heads=2, d_head=8, d_mlp=32, lr=3e-3, warmup_steps=0, device="cpu")
TINY_TRAIN = ["--p", "11", "--frac", "0.6", "--d-model", "16", "--n-heads", "2", "--d-head", "8", "--d-mlp", "32",
              "--warmup-steps", "0", "--device", "cpu", "--eval-every", "10", "--checkpoint-every", "20"]
TIMEOUT = int(os.environ.get("MECHGROK_TEST_TIMEOUT", 180))  # safety only


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MECHGROK_TRACEBACK="")


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "mechgrok.cli", *map(str, args)]


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


def _wait_until_holds(proc: subprocess.Popen, d: Path):
    """Until ``proc``'s pid is in ``d``'s lock file (it holds the lock: it writes its pid only
    after taking it), then stop it there."""
    deadline = time.time() + TIMEOUT
    while (holder(d) or {}).get("pid") != proc.pid:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the first process ended (rc {proc.returncode}) before it held {d}'s lock:\n{out}\n{err}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"the first process never held {d}'s lock")
        time.sleep(0.01)
    proc.send_signal(signal.SIGSTOP)


def _finish(proc: subprocess.Popen):
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"the first process failed:\n{out}\n{err}"


def _error_lines(res: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


def _assert_refused(res, pid: int, d: Path):
    lines = _error_lines(res)
    assert res.returncode == 1, f"the second writer must fail: rc {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"one line, got {lines}"
    assert f"{d} is in use" in lines[0] and f"pid {pid}" in lines[0], lines[0]


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != LOCK_FILE}  # the holder rewrites it


def _consistent(run_dir: Path, steps: int | None = None):
    """config.json, the checkpoints and metrics.csv tell one story."""
    run = mg.load_run(run_dir)
    assert run.config.train.steps == run.steps[-1] == int(run.metrics["step"].iloc[-1]), (
        f"{run_dir}: config steps {run.config.train.steps}, last checkpoint {run.steps[-1]}, "
        f"last metrics row {run.metrics['step'].iloc[-1]}")
    assert int(read_tensors(run_dir / "resume.safetensors")["meta.step"]) == run.steps[-1]
    if steps is not None:
        assert run.config.train.steps == steps
    return run


# --- 1. two new runs on one --out ---------------------------------------------------------


def test_two_trains_on_one_new_out_the_second_fails_naming_the_first_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    a = _start("train", "--out", out, *TINY_TRAIN, "--steps", "60", "--seed", "0", "--no-progress", "--no-png")
    _wait_until_holds(a, out)
    before = _snapshot(out)
    b = _run("train", "--out", out, *TINY_TRAIN, "--steps", "60", "--seed", "1", "--no-progress", "--no-png")
    _assert_refused(b, a.pid, out)
    assert _snapshot(out) == before, "the second writer changed the directory"
    _finish(a)
    run = _consistent(out, 60)
    assert run.config.model.seed == 0
    init = init_params(run.model_cfg)
    assert all(torch.equal(run.params(0)[k], init[k]) for k in init), "step 0 is not the config's seed's init"


def test_a_new_run_in_a_directory_whose_lock_is_held_fails_before_config_json(tmp_path, tiny_cfg):
    holder_proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mechgrok.locks import lock_dir; lock_dir(sys.argv[1], create=True); "
                               "print('held', flush=True); sys.stdin.read()", str(tmp_path / "r")],
        env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder_proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"pid {holder_proc.pid}"):
            mg.train(tiny_cfg, tmp_path / "r", progress=False)
        assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [LOCK_FILE]
        # a reader needs no lock (nothing to read yet, but it must not block or take it)
        with pytest.raises(FileNotFoundError):
            mg.load_run(tmp_path / "r")
    finally:
        holder_proc.send_signal(signal.SIGKILL)
        holder_proc.wait()
    # killed: the kernel dropped the lock, nothing stale is left
    assert mg.train(tiny_cfg, tmp_path / "r", progress=False).steps[-1] == 60


# --- 2. two sweep --resume on one sweep ---------------------------------------------------


def test_two_sweep_resumes_the_second_fails_on_the_sweep_lock_and_the_sweep_ends_whole(tmp_path, monkeypatch):
    sweep = popm.SweepConfig(configure("demo", **TINY, steps=60, eval_every=10, checkpoint_every=20),
                             grid={"lr": (3e-3, 1e-3)}, seeds=1, chunk_size=2)

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(popm, "train_chunk", stop)
    with pytest.raises(KeyboardInterrupt):  # sweep.json written, nothing trained
        popm.run_sweep(sweep, tmp_path / "s", progress=False)
    monkeypatch.undo()
    s = tmp_path / "s"
    a = _start("sweep", "--resume", s, "--no-progress")
    deadline = time.time() + TIMEOUT
    while not any((holder(m) or {}).get("pid") == a.pid for m in (s / popm.MEMBERS_DIR).glob("*")):
        assert a.poll() is None and time.time() < deadline, "the first sweep never started a member"
        time.sleep(0.01)
    _wait_until_holds(a, s)  # it holds the sweep's lock (and a member's: its chunk is in flight)
    before = _snapshot(s)
    b = _run("sweep", "--resume", s, "--no-progress")
    _assert_refused(b, a.pid, s)  # the sweep directory itself, not one of its members
    assert _snapshot(s) == before, "the second driver changed the sweep"
    _finish(a)
    pop = popm.load_population(s)
    assert sorted(pop.ids) == sorted(m.id for m in sweep.members())
    assert len(popm.read_jsonl(s / popm.MANIFEST_FILE)) == 2, "each member finished once"
    for i in pop.ids:
        _consistent(s / popm.MEMBERS_DIR / i, 60)


# --- 3. two train --resume with different --steps -----------------------------------------


def test_two_resumes_with_different_steps_the_second_fails_before_config_json(tmp_path):
    cfg = configure("demo", **TINY, steps=100, eval_every=10, checkpoint_every=20)
    mg.train(cfg, tmp_path / "r", progress=False)
    r = tmp_path / "r"
    a = _start("train", "--resume", r, "--steps", "200", "--no-progress", "--no-png")
    _wait_until_holds(a, r)
    before = _snapshot(r)
    # more steps than either, so that the CLI's own settings check (it reads config.json before
    # training) passes whether or not the first has already written its 200 there
    b = _run("train", "--resume", r, "--steps", "300", "--no-progress", "--no-png")
    _assert_refused(b, a.pid, r)
    assert _snapshot(r) == before, "the second resume changed the run (config.json?)"
    _finish(a)
    _consistent(r, 200)


# --- 4. resuming a chunk deletes nothing it can keep ---------------------------------------


def _members(tmp_path, n=2, **kw):
    base = configure("demo", **(TINY | dict(steps=30, eval_every=10, checkpoint_every=10) | kw))
    cfgs = [replace(base, train=replace(base.train, lr=lr)) for lr in (3e-3, 1e-3, 2e-3)[:n]]
    return cfgs, [tmp_path / f"m{i}" for i in range(n)]


def test_resuming_a_chunk_keeps_finished_members_and_restarts_only_one_that_never_checkpointed(tmp_path, capfd):
    cfgs, outs = _members(tmp_path, 3)
    train_ensemble(cfgs[:1], outs[:1], progress=False)  # finished
    assert member_status(outs[0])["status"] == "done"
    kept = _snapshot(outs[0])
    train_ensemble(cfgs[1:2], outs[1:2], progress=False)
    (outs[1] / "resume.safetensors").unlink()  # as if killed before its first checkpoint committed
    (outs[1] / "member.json").write_text(json.dumps({"status": "running", "last_step": 0}))
    # outs[2]: never created (killed before the chunk reached it)
    popm._train_members(cfgs, outs, progress=False)
    assert _snapshot(outs[0]) == kept, "a finished member was touched"
    err = capfd.readouterr().err
    assert f"{outs[1]}: starting this member over: it never reached its first checkpoint" in err
    for o in outs:
        _consistent(o, 30)
        assert member_status(o)["status"] == "done"


def test_resuming_a_chunk_whose_resume_state_is_unreadable_raises_and_deletes_nothing(tmp_path):
    cfgs, outs = _members(tmp_path, 2)
    train_ensemble(cfgs, outs, progress=False)
    for o in outs:
        (o / "member.json").write_text(json.dumps({"status": "running", "last_step": 20}))
    (outs[1] / "resume.safetensors").write_bytes(b"not a safetensors file")
    before = {o: _snapshot(o) for o in outs}
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        popm._train_members(cfgs, outs, progress=False)
    assert {o: _snapshot(o) for o in outs} == before


def test_an_interrupted_ensemble_resumes_from_its_checkpoints_and_ends_bit_identical(tmp_path, monkeypatch):
    import mechgrok.ensemble as ens

    cfgs, whole = _members(tmp_path / "whole", 2)
    train_ensemble(cfgs, whole, progress=False)
    _, outs = _members(tmp_path / "cut", 2)
    real = ens.adamw_

    def interrupt_at_step_25(p, g, m, v, t, *a):
        if t == 25:  # between the checkpoints at 20 and 30
            raise KeyboardInterrupt
        return real(p, g, m, v, t, *a)

    monkeypatch.setattr(ens, "adamw_", interrupt_at_step_25)
    with pytest.raises(KeyboardInterrupt):
        popm._train_members(cfgs, outs, progress=False)
    monkeypatch.undo()
    assert all(int(read_tensors(o / "resume.safetensors")["meta.step"]) == 20 for o in outs)
    early = {o: _snapshot(o / "checkpoints") for o in outs}
    popm._train_members(cfgs, outs, progress=False)
    for w, o in zip(whole, outs):
        a, b = mg.load_run(w), mg.load_run(o)
        now = _snapshot(o / "checkpoints")
        assert all(now[f] == early[o][f] for f in early[o]), "checkpoints up to step 20 were rewritten: " \
                                                             "the resume started over"
        assert a.steps == b.steps and b.steps[-1] == 30
        pa, pb = a.params(), b.params()
        assert all(torch.equal(pa[k], pb[k]) for k in pa), "weights differ after the resume"
        assert a.metrics.equals(b.metrics)


# --- 5. a diverging member keeps its last good checkpoint -----------------------------------


def test_a_diverging_member_never_checkpoints_nonfinite_weights(tmp_path):
    cfgs, outs = _members(tmp_path, 2, steps=20, eval_every=10, checkpoint_every=5)
    cfgs[1] = replace(cfgs[1], train=replace(cfgs[1].train, lr=1e6))
    train_ensemble(cfgs, outs, progress=False)
    assert member_status(outs[0])["status"] == "done"
    st = member_status(outs[1])
    assert st["status"] == "diverged"
    run = mg.load_run(outs[1])
    for s in run.steps:
        assert all(torch.isfinite(v).all() for v in run.params(s).values()), f"checkpoint {s} is not finite"
    resume = read_tensors(outs[1] / "resume.safetensors")
    assert all(torch.isfinite(v).all() for v in resume.values())
    assert st["last_step"] == run.steps[-1] == int(resume["meta.step"])


# --- 6. temp files a killed writer left -----------------------------------------------------


def test_the_next_writer_removes_temp_files_of_dead_processes_only(tmp_path, tiny_cfg):
    cfg = replace(tiny_cfg, train=replace(tiny_cfg.train, steps=20))
    mg.train(cfg, tmp_path / "r", progress=False)
    r = tmp_path / "r"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [r / f".resume.safetensors.{dead.pid}.0123456789ab.tmp",
             r / "checkpoints" / f".step_0000040.safetensors.{dead.pid}.0123456789ab.tmp"]
    live = r / f".figure.html.{os.getpid()}.ba9876543210.tmp"  # a reader writing into the run now
    for f in stale + [live]:
        f.write_bytes(b"x" * 1000)
    mg.resume(r, replace(cfg, train=replace(cfg.train, steps=40)), progress=False)
    assert not any(f.exists() for f in stale)
    assert live.exists()


# --- 7. ids read from sweep.json -----------------------------------------------------------


def _planted_sweep(tmp_path) -> Path:
    sweep = popm.SweepConfig(configure("demo", **TINY, steps=20), grid={"lr": (3e-3, 1e-3)}, seeds=1, chunk_size=2)
    s = tmp_path / "s"
    s.mkdir()
    ms = sweep.members()
    (s / popm.SWEEP_FILE).write_text(json.dumps(sweep.to_dict() | {
        "fields": sweep.fields, "chunks": popm.plan_chunks(ms, 2),
        "members": [{"id": m.id, "settings": m.settings, "seed": m.seed} for m in ms]}))
    return s


def _tamper(s: Path, edit):
    spec = json.loads((s / popm.SWEEP_FILE).read_text())
    edit(spec)
    (s / popm.SWEEP_FILE).write_text(json.dumps(spec))


def test_a_member_id_that_leaves_the_sweep_directory_is_refused(tmp_path):
    s = _planted_sweep(tmp_path)
    _tamper(s, lambda spec: spec["members"][0].update(id="../../../x"))
    (s / popm.MANIFEST_FILE).write_text(json.dumps({"id": "../../../x"}) + "\n")
    with pytest.raises(ValueError, match=r"member id '\.\./\.\./\.\./x' is not a plain directory name"):
        popm.load_population(s)
    res = _run("population", s)
    lines = _error_lines(res)
    assert res.returncode == 1 and len(lines) == 1 and "not a plain directory name" in lines[0], res.stderr
    with pytest.raises(ValueError, match="not a plain directory name"):
        popm.run_sweep(None, s, resume=True, progress=False)


def test_a_chunk_naming_no_member_is_refused_before_training(tmp_path):
    s = _planted_sweep(tmp_path)
    _tamper(s, lambda spec: spec["chunks"][0].append("lr=5_seed=0"))
    with pytest.raises(ValueError, match=r"chunk 0 names 'lr=5_seed=0', not a member"):
        popm.run_sweep(None, s, resume=True, progress=False)
    assert not (s / popm.MEMBERS_DIR).exists()
    res = _run("sweep", "--resume", s, "--no-progress")
    assert res.returncode == 1 and len(_error_lines(res)) == 1 and "not a member" in res.stderr, res.stderr


# --- readers never lock --------------------------------------------------------------------


def test_readers_work_while_a_writer_holds_the_lock(tiny_cfg, tmp_path):
    tiny_run = mg.train(replace(tiny_cfg, train=replace(tiny_cfg.train, steps=20)), tmp_path / "r", progress=False)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mechgrok.locks import lock_dir; lock_dir(sys.argv[1]); "
                               "print('held', flush=True); sys.stdin.read()", str(tiny_run.path)],
        env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert mg.load_run(tiny_run.path).steps == tiny_run.steps
        res = _run("info", tiny_run.path, "--json")
        assert res.returncode == 0 and json.loads(res.stdout)["last_step"] == 20
        with pytest.raises(RunLocked):
            lock_dir(tiny_run.path)
    finally:
        proc.kill()
        proc.wait()
