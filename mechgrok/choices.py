"""The named values the command line offers as choices and shows in its help, in a module that
imports nothing heavy: ``mechgrok --help`` builds every option type from these tuples without
loading torch, scipy, pandas or plotly (that took 4-16 s per call).

Each tuple still belongs to the module that uses it, which re-exports it under its own name
(``tasks.OPS``, ``fourier.BASES``, ``milestones.GROKKED_TEST_ACC``, ...) and checks there that it
matches what it implements; code outside the CLI keeps importing it from that owner.
"""

from __future__ import annotations

# tasks: the modular operations (tasks.MODULAR_OPS, in this order), then the non-modular tasks
MODULAR_OPS = ("add", "sub", "mul", "div", "quad")
OPS = MODULAR_OPS + ("parity", "table")

# model
ACT_FNS = ("relu", "gelu")
NORMALIZATIONS = ("none", "LN")
HOOK_POINTS = ("embed", "neurons", "logits")

# fourier
BASES = ("auto", "add", "dlog")
PROJECTION_MODES = ("keep", "remove")

# progress: the two definitions of restricted/excluded loss
LEVELS = ("logits", "neurons")

# interventions
OPTIMIZER_STATES = ("fresh", "carry")
INTERVENTIONS = ("baseline", "no_weight_decay", "head", "embeddings", "exit_layer", "exit_attn",
                 "exit_mlp", "entry_layer", "middle_layers", "attn_all", "mlp_all")

# training
GROKFAST_MODES = ("none", "ema", "ma")
OPTIMIZERS = ("adamw", "adam", "sgd", "muon")

# milestones: the thresholds of Brenndoerfer's transition metrics (strictly above)
MEMORISED_TRAIN_ACC = 0.99
GROKKED_TEST_ACC = 0.90

# presets: what `mechgrok demo` costs: 1 min 38 s wall measured on an idle 2-core AMD EPYC VM, torch
# CPU, default threads (figures/README.md). README and `mechgrok demo --help` quote this string.
DEMO_TIME = "about 1 min 40 s on 2 idle CPU cores"
