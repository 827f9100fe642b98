"""The CLI starts without the heavy libraries: `mechgrok --help`, `mechgrok CMD --help` and
`mechgrok --version` must not import torch, scipy, plotly or pandas (4-16 s per call), and the
choice lists the option types are built from (choices.py) are the ones the owning modules use."""

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from typer.testing import CliRunner

HEAVY = ("torch", "scipy", "plotly", "pandas", "numpy", "transformer_lens")


def _loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    import mechgrok  # light: the package itself loads its submodules on first use

    env = os.environ | {"PYTHONPATH": str(Path(mechgrok.__file__).parents[1])}  # this checkout's mechgrok
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    return out.stdout.split()


def test_importing_the_cli_loads_none_of_the_heavy_libraries():
    assert _loaded_after("import mechgrok.cli") == []


def test_help_of_the_app_and_of_a_command_load_none_of_them():
    for args in ([], ["train"], ["analyze"], ["ablate"], ["freeze"]):
        code = ("import sys\nfrom typer.testing import CliRunner\nfrom mechgrok.cli import app\n"
                f"r = CliRunner().invoke(app, {args + ['--help']!r})\nassert r.exit_code == 0, r.output")
        assert _loaded_after(code) == [], args


def test_version_prints_the_installed_package_version():
    from mechgrok.cli import app

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"mechgrok {version('mechgrok')}"


def test_the_choice_lists_are_the_owning_modules_lists():
    from mechgrok import choices, fourier, grokfast, interventions, milestones, model, optim, presets, progress, tasks

    assert tasks.OPS == tuple(tasks.MODULAR_OPS) + ("parity", "table") == choices.OPS
    assert (model.ACT_FNS, model.NORMALIZATIONS, model.HOOK_POINTS) == (
        choices.ACT_FNS, choices.NORMALIZATIONS, choices.HOOK_POINTS)
    assert (fourier.BASES, fourier.PROJECTION_MODES, progress.LEVELS) == (
        choices.BASES, choices.PROJECTION_MODES, choices.LEVELS)
    assert (interventions.INTERVENTIONS, interventions.OPTIMIZER_STATES, interventions.WHERE) == (
        choices.INTERVENTIONS, choices.OPTIMIZER_STATES, choices.HOOK_POINTS)
    assert (grokfast.MODES, optim.OPTIMIZERS) == (choices.GROKFAST_MODES, choices.OPTIMIZERS)
    assert (milestones.GROKKED_TEST_ACC, milestones.MEMORISED_TRAIN_ACC, presets.DEMO_TIME) == (
        choices.GROKKED_TEST_ACC, choices.MEMORISED_TRAIN_ACC, choices.DEMO_TIME)


def test_a_diverging_run_is_still_a_user_error_once_the_trainer_is_loaded():
    from mechgrok import cli
    from mechgrok.trainer import TrainingDiverged

    assert cli._is_user_error(TrainingDiverged("loss is nan at step 7"))
    assert cli._is_user_error(ValueError("bad value")) and cli._is_user_error(FileNotFoundError("x"))
    assert not cli._is_user_error(RuntimeError("a bug"))
