"""mechgrok: train small transformers on algorithmic tasks and take grokking apart.

    import mechgrok as mg
    run = mg.load_run("runs/demo")
    model = run.model(step=run.steps[-1])      # TransformerLens 4 model, HookedTransformer hook names
"""

from . import model, plots, presets, runs, tasks, train
from . import fourier, progress
from . import interventions
from . import latent  # latent-state training maps (issue 11)
from .model import ModelConfig, forward, init_params, run_with_cache, run_with_hooks, to_tl_model
from .presets import PRESETS, get_preset
from .runs import Run, RunConfig, TrainConfig, import_run, load_hooked_transformer, load_run
from .tasks import Task, TaskConfig, make_task
from .train import TrainingDiverged, resume_run, train_run  # mg.train is the module; train_run the entry point
from . import population  # sweeps and population tables (issue 9)
from .population import SweepConfig, load_population, run_sweep

__version__ = "0.1.0"
