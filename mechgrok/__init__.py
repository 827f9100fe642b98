"""mechgrok: train small transformers on algorithmic tasks and take grokking apart.

    import mechgrok as mg
    run = mg.train(mg.get_preset("demo"), "runs/demo")
    run = mg.load_run("runs/demo")
    model = run.model(step=run.steps[-1])      # TransformerLens 4 model, HookedTransformer hook names

The names in ``__all__`` are the public surface. Submodules (``mg.fourier``, ``mg.progress``,
``mg.dynamics``, ``mg.measures``, ``mg.report``, ``mg.interventions``, ...) load on first use, so ``import mechgrok`` and the
CLI start without importing what a command does not need.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "TaskConfig": "tasks", "Task": "tasks", "make_task": "tasks",
    "ModelConfig": "model", "init_params": "model", "forward": "model", "run_with_hooks": "model",
    "run_with_cache": "model",    "to_tl_model": "model",
    "TrainConfig": "config", "RunConfig": "config",
    "PRESETS": "presets", "get_preset": "presets", "configure": "presets", "apply_overrides": "presets",
    "Run": "runs", "load_run": "runs", "find_runs": "runs", "is_run_dir": "runs",
    "import_run": "foreign", "load_hooked_transformer": "foreign",
    "train": "trainer", "resume": "trainer", "TrainingDiverged": "trainer",
    "train_ensemble": "ensemble", "resume_ensemble": "ensemble",
    "SweepConfig": "population", "run_sweep": "population", "load_population": "population",
    "draw_figures": "report",
    "evaluate": "evaluation",
    "transition_metrics": "milestones",
    "MeasureContext": "measures", "measure_series": "measures",
    "attention_grids": "fourier", "neuron_grids": "fourier", "compare": "comparison",
}
_SUBMODULES = ("analysis", "budget", "choices", "comparison", "config", "cycles", "dynamics", "ensemble", "evaluation",
               "experiment", "files", "foreign", "fourier", "grokfast", "interventions", "latent", "measures",
               "milestones", "model", "optim", "plots", "population", "presets", "progress", "provenance", "report",
               "runs", "schedule", "tasks", "trainer", "weight_statistics")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mechgrok' has no attribute {name!r}")


def __dir__():
    return __all__
