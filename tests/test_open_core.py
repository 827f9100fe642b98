"""The openings of the core: a task from any operation table, a named or user optimizer, a user
loss; and the layering that keeps them open (no import cycle, storage below the trainers)."""

import ast
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import mechgrok as mg
from mechgrok.tasks import permutation_group_table

OPTIMIZER_CASES = {
    "adamw": {},
    "adam": {},
    "sgd": {"momentum": 0.9, "nesterov": True},
    "muon": {"momentum": 0.95, "adamw_lr": 3e-3},
}


def s3_cfg(optimizer="adamw", args=None, steps=30, **train):
    kw = dict(steps=steps, lr={"sgd": 0.3, "muon": 0.02}.get(optimizer, 3e-3), weight_decay=0.1, eval_every=5,
              checkpoint_every=10, warmup_steps=5, batch_size=12, seed=3, optimizer=optimizer,
              optimizer_args=args or {}) | train
    return mg.RunConfig(task=mg.TaskConfig(op="table", table=permutation_group_table(3), frac=0.6, seed=2),
                        model=mg.ModelConfig(n_layers=1, d_model=24, n_heads=2, d_head=12, d_mlp=48, seed=4),
                        train=mg.TrainConfig(**kw))


def _weights(run):
    return run.params(run.steps[-1])


@pytest.mark.parametrize("optimizer", list(OPTIMIZER_CASES))
def test_s3_table_trains_and_resumes_bit_identically_with_each_named_optimizer(optimizer, tmp_path):
    args = OPTIMIZER_CASES[optimizer]
    whole = mg.train(s3_cfg(optimizer, args, steps=30), tmp_path / "whole", progress=False)
    mg.train(s3_cfg(optimizer, args, steps=20), tmp_path / "part", progress=False)
    resumed = mg.resume(tmp_path / "part", s3_cfg(optimizer, args, steps=30), progress=False)
    a, b = _weights(whole), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resume must replay the uninterrupted run exactly"
    assert whole.metrics.equals(resumed.metrics)
    # the optimizer actually moved the weights, and its state went into the resume file
    first = whole.params(0)
    assert any(not torch.equal(first[k], a[k]) for k in a)
    state = mg.runs.read_resume_state(tmp_path / "part").optimizer
    expected_key = {"adamw": "exp_avg", "adam": "exp_avg", "sgd": "momentum_buffer", "muon": "momentum_buffer"}
    assert expected_key[optimizer] in state["blocks.0.mlp.W_in"]
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["train"]["optimizer"] == optimizer


def test_muon_takes_the_mlp_matrices_and_adamw_the_rest(tmp_path):
    run = mg.train(s3_cfg("muon", steps=10), tmp_path / "m", progress=False)
    state = mg.runs.read_resume_state(run.path).optimizer
    muon = {k for k, st in state.items() if set(st) == {"momentum_buffer"}}
    adamw = {k for k, st in state.items() if "exp_avg" in st}
    assert muon == {"blocks.0.mlp.W_in", "blocks.0.mlp.W_out"}
    assert adamw == set(state) - muon and "blocks.0.attn.W_Q" in adamw and "embed.W_E" in adamw


def _autograd_grad(params, cfg, task, idx):
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    # the fast path is pinned to the TL forward in test_model.py; the loss here is torch's own
    logits = mg.forward(p, cfg, task.train_inputs[idx])
    loss = torch.nn.functional.cross_entropy(logits.double(), task.train_labels[idx])
    return dict(zip(p, torch.autograd.grad(loss, list(p.values()))))


def test_one_sgd_step_is_the_closed_form_update(tmp_path):
    # SGD, momentum 0.9 from a zero buffer: the first buffer is the gradient of (loss + L2), so
    # p1 = p0 - lr * warmup(0) * (g + wd * p0).
    cfg = s3_cfg("sgd", {"momentum": 0.9}, steps=1, eval_every=1, checkpoint_every=1, batch_size=None)
    run = mg.train(cfg, tmp_path / "sgd", progress=False)
    p0, p1 = run.params(0), run.params(1)
    g = _autograd_grad(p0, run.model_cfg, run.task, slice(None))
    lr = cfg.train.lr / cfg.train.warmup_steps
    for k in p0:
        expected = p0[k] - lr * (g[k].float() + cfg.train.weight_decay * p0[k])
        assert torch.allclose(p1[k], expected, atol=1e-6, rtol=1e-4), k


def test_a_user_loss_is_minimised_and_metrics_stay_cross_entropy(tmp_path):
    # plain SGD (no momentum, no decay): minimising 2 * CE at lr is the same step as CE at 2 * lr
    cfg = s3_cfg("sgd", {"momentum": 0.0}, steps=3, weight_decay=0.0, warmup_steps=0, batch_size=None,
                 eval_every=1, checkpoint_every=1)
    doubled = mg.train(cfg, tmp_path / "double", progress=False,
                       loss=lambda logits, y: 2 * mg.trainer.cross_entropy(logits, y))
    scaled = mg.train(replace(cfg, train=replace(cfg.train, lr=2 * cfg.train.lr)), tmp_path / "lr", progress=False)
    a, b = _weights(doubled), _weights(scaled)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert doubled.metrics["train_loss"].to_numpy() == pytest.approx(scaled.metrics["train_loss"].to_numpy(), rel=1e-5)
    assert "test_open_core" in doubled.meta["loss"]
    with pytest.raises(ValueError, match="own loss"):
        mg.resume(tmp_path / "double", replace(cfg, train=replace(cfg.train, steps=5)), progress=False)


def test_a_user_optimizer_factory_trains_and_resumes_with_the_same_factory(tmp_path):
    def rmsprop(named):
        return torch.optim.RMSprop(named.values(), lr=1e-3, alpha=0.9)

    cfg = s3_cfg(steps=20)
    whole = mg.train(replace(cfg, train=replace(cfg.train, steps=30)), tmp_path / "whole", progress=False,
                     optimizer=rmsprop)
    mg.train(cfg, tmp_path / "part", progress=False, optimizer=rmsprop)
    with pytest.raises(ValueError, match="own optimizer"):
        mg.resume(tmp_path / "part", replace(cfg, train=replace(cfg.train, steps=30)), progress=False)
    resumed = mg.resume(tmp_path / "part", replace(cfg, train=replace(cfg.train, steps=30)), progress=False,
                        optimizer=rmsprop)
    a, b = _weights(whole), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "square_avg" in mg.runs.read_resume_state(tmp_path / "part").optimizer["embed.W_E"]


def test_optimizer_settings_are_validated_in_one_line():
    with pytest.raises(ValueError, match="must be one of"):
        mg.TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match=r"\['betas2'\] not an argument of sgd"):
        mg.TrainConfig(optimizer="sgd", optimizer_args={"betas2": 0.9})
    cfg = mg.TrainConfig(optimizer="sgd", optimizer_args={"nesterov": True, "momentum": 0.5})
    assert cfg.optimizer_args == (("momentum", 0.5), ("nesterov", True))
    assert mg.RunConfig.from_dict(mg.RunConfig(train=cfg).to_dict()).train == cfg


def test_an_ensemble_refuses_an_optimizer_it_cannot_run(tmp_path):
    cfgs = [s3_cfg("sgd", seed=s) for s in (0, 1)]
    with pytest.raises(ValueError, match="AdamW only"):
        mg.train_ensemble(cfgs, [tmp_path / "a", tmp_path / "b"], progress=False)
    assert not (tmp_path / "a").exists()


def test_cli_trains_an_s3_table_with_muon_and_analyzes_it(tmp_path):
    from typer.testing import CliRunner

    from mechgrok.cli import app

    table = tmp_path / "s3.json"
    table.write_text(json.dumps([list(r) for r in permutation_group_table(3)]))
    r = CliRunner().invoke(app, ["train", "--table", str(table), "--optimizer", "muon", "--optimizer-arg",
                                 "adamw_lr=0.003", "--optimizer-arg", "nesterov=false", "--lr", "0.02",
                                 "--steps", "20", "--eval-every", "5", "--checkpoint-every", "10", "--d-model", "24",
                                 "--n-heads", "2", "--d-mlp", "48", "--device", "cpu", "--no-progress", "--no-png",
                                 "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    run = mg.load_run(tmp_path / "run")
    assert run.config.train.optimizer == "muon"
    assert dict(run.config.train.optimizer_args) == {"adamw_lr": 0.003, "nesterov": False}
    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "run"), "--no-png"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "progress.csv").exists()
    r = CliRunner().invoke(app, ["train", "--optimizer-arg", "momentum", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "KEY=VALUE" in r.output


# --- the layering ------------------------------------------------------------------------------


def _imports() -> dict[str, set[str]]:
    """module -> the mechgrok modules it imports anywhere in its file (function-level too)."""
    pkg = Path(mg.__file__).parent
    graph = {}
    for f in pkg.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps |= {a.name for a in node.names}
        graph[f.stem] = deps - {f.stem}
    return graph


def test_the_package_has_no_import_cycle():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(path + [m])}")
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if d in graph:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m != "__init__":
            visit(m, [])


def test_run_storage_imports_no_trainer_measure_or_figure_module():
    assert _imports()["runs"] <= {"config", "files", "locks", "milestones", "model", "provenance", "tasks"}
    assert _imports()["locks"] <= {"files"}, "the write lock is storage: it knows files.py only"
    assert _imports()["milestones"] <= {"choices"}, "the milestones read rows; they import only plain constants"
    assert _imports()["choices"] == set(), "the CLI's choices are plain tuples: nothing of mechgrok, nothing heavy"


def test_every_public_name_resolves():
    for name in mg.__all__:
        assert getattr(mg, name) is not None, name
