"""The ``mechgrok`` command line. Each command is a thin shell over the Python API: the rules
live in the API, the choices come from the API's own lists, and every user error ends in one
place (``_Commands.invoke``) as one red line and exit code 1."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

# At import only typer, the standard library and choices.py (plain tuples): `mechgrok --help`
# must not pay for torch, scipy, pandas or plotly (4-16 s). Every command imports what it needs
# inside its function.
from .choices import (ACT_FNS, BASES, DEMO_TIME, GROKFAST_MODES, GROKKED_TEST_ACC, HOOK_POINTS as WHERE,
                      INTERVENTIONS, LEVELS, MEMORISED_TRAIN_ACC, NORMALIZATIONS, OPS, OPTIMIZER_STATES, OPTIMIZERS,
                      PROJECTION_MODES)


# Errors a user can cause (a bad value, a missing or occupied path, a diverging run, a full disk
# or a directory they may not write, a run too large for the memory) end as one line and exit
# code 1; anything else is a bug and keeps its traceback. MECHGROK_TRACEBACK=1 shows the
# traceback of user errors too.
USER_ERRORS = (ValueError, OSError, MemoryError)


def _is_user_error(e: BaseException) -> bool:
    """USER_ERRORS, or trainer.TrainingDiverged (a diverging run), looked up only when the
    trainer is loaded: were it not, nothing could have raised it, and cli.py stays free of torch."""
    trainer = sys.modules.get("mechgrok.trainer")
    return isinstance(e, USER_ERRORS) or (trainer is not None and isinstance(e, trainer.TrainingDiverged))


# files.atomic_write's temp file: ".NAME.PID.HEX12.tmp" beside NAME
_TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.\d+\.[0-9a-f]{12}\.tmp$")
_OS_HINTS = {errno.ENOSPC: "the disk is full; free some space and run it again",
             errno.EDQUOT: "the disk quota is used up; free some space and run it again",
             errno.EROFS: "the file system is read-only; choose another directory",
             errno.EACCES: "check the permissions of the file and its directory",
             errno.EPERM: "check the permissions of the file and its directory"}


def _file_name(name) -> str:
    """The file a user knows: the target of an atomic write rather than its temp file."""
    path = Path(os.fsdecode(name))
    m = _TEMP_FILE.match(path.name)
    return str(path.with_name(m["name"]) if m else path)


def _os_error(e: OSError) -> str:
    """One line naming the file (``OSError.filename``), the reason and what to do."""
    if e.strerror is None:  # raised by mechgrok with its own message
        return str(e)
    where = "" if e.filename is None else _file_name(e.filename)
    if e.filename2 is not None:
        where += f" -> {_file_name(e.filename2)}"
    hint = _OS_HINTS.get(e.errno)
    return f"{where + ': ' if where else ''}{e.strerror}" + (f" ({hint})" if hint else "")


def _fail(msg: str):
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


class _Commands(TyperGroup):
    """The one error handler of the CLI: every command's user errors end here."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            if not _is_user_error(e) or os.environ.get("MECHGROK_TRACEBACK"):
                raise
            if isinstance(e, OSError) and e.errno == errno.EPIPE:
                raise  # a closed pipe (`mechgrok info RUN | head`): typer exits quietly
            if isinstance(e, MemoryError):  # past the estimate (--allow-large, or memory taken meanwhile)
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                _fail(f"out of memory{': ' + first if first else ''} (try a smaller task, model or --batch-size)")
            _fail(_os_error(e) if isinstance(e, OSError) else str(e))


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Train small transformers on algorithmic tasks and take grokking apart.")


def _show_version(value: bool):
    if value:
        from importlib.metadata import version

        typer.echo(f"mechgrok {version('mechgrok')}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="print mechgrok's version and exit")):
    pass


def _choices(name: str, values) -> type[Enum]:
    """A typer choice type built from the API's own tuple of allowed values."""
    return Enum(name, {v: v for v in values}, type=str)


Op = _choices("Op", OPS)
ActFn = _choices("ActFn", ACT_FNS)
Normalization = _choices("Normalization", NORMALIZATIONS)
Level = _choices("Level", LEVELS)
Basis = _choices("Basis", BASES)
Where = _choices("Where", WHERE)
Mode = _choices("Mode", PROJECTION_MODES)
Device = _choices("Device", ("auto", "cpu", "cuda"))
OptimizerState = _choices("OptimizerState", OPTIMIZER_STATES)
Grokfast = _choices("Grokfast", GROKFAST_MODES)
OptimizerName = _choices("OptimizerName", OPTIMIZERS)


def _key_values(texts: Optional[list[str]], option: str) -> Optional[dict]:
    """``["momentum=0.9", "nesterov=true"]`` -> ``{"momentum": 0.9, "nesterov": True}`` (values
    read as JSON where they parse, else kept as strings)."""
    if not texts:
        return None
    out = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ValueError(f"{option}: expected KEY=VALUE, got {text!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _value(choice):
    """The plain value of an enum choice (None stays None)."""
    return choice.value if isinstance(choice, Enum) else choice


def _ints(text: Optional[str]) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def _json_only(as_json: bool):
    """With --json, stdout carries the JSON alone: whatever else is printed goes to stderr."""
    return contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()


def _print_summary(run):
    s = run.summary()
    typer.echo(f"run: {run.path}  ({run.task.describe()}, preset {run.config.preset or '-'})")
    typer.echo(f"checkpoints: {s['n_checkpoints']} (steps {s['first_step']}..{s['last_step']})")
    typer.echo(f"final: train acc {s['train_acc']:.4f}, test acc {s['test_acc']:.4f}, "
               f"train loss {s['train_loss']:.3e}, test loss {s['test_loss']:.3e}")
    typer.echo(f"memorised (train acc > {MEMORISED_TRAIN_ACC}) at step: {s['memorised_step']}")
    typer.echo(f"grokked (test acc > {GROKKED_TEST_ACC}) at step: {s['grokked_step']}"
               + ("" if s["grokked"] else f" (not within the run's {s['last_step']} steps)"))
    if s["final_gap"] is None:
        typer.echo("no evaluations yet")
    else:
        typer.echo(f"delay (grokked - memorised): {s['delay']}, final gap (train - test acc): {s['final_gap']:.4f}")
        # the grokking transition's own bend; over the whole run it is often the memorisation bump
        typer.echo(f"max acceleration of test acc while grokking (memorised..grokked): step "
                   f"{s['grokking_acceleration_step']}; over the whole run: step {s['max_acceleration_step']}")
    fig = run.path / "training_curve.html"
    if fig.exists():
        typer.echo(f"figure: {fig}" + (" (+ .png)" if fig.with_suffix(".png").exists() else ""))


ALLOW_LARGE = typer.Option(False, "--allow-large", help="go ahead even when the memory estimate is over the "
                           "limit (80% of the memory available)")


def _allow_large(ctx: typer.Context, allow: bool):
    """Let ``budget.check_memory`` through for the rest of this command (``--allow-large``)."""
    from .budget import allowing_large

    ctx.with_resource(allowing_large(allow))


def _stoppable(out: Path, fn):
    """``fn()``; on Ctrl-C, say where the run stopped and how to go on, then exit 130."""
    try:
        return fn()
    except KeyboardInterrupt:
        from .runs import read_resume_state

        try:
            step = read_resume_state(out).step  # what --resume starts from
        except (OSError, ValueError):
            typer.echo(f"stopped before the first checkpoint: nothing in {out} to resume; `mechgrok train --out "
                       f"{out}` with the same settings starts it again (a run without a checkpoint counts as empty)",
                       err=True)
        else:
            typer.echo(f"stopped at step {step}; resume with `mechgrok train --resume {out}`", err=True)
        raise


def _train_new(cfg, out: Path, progress: bool, measure_kw: Optional[dict] = None, png: bool = True):
    from .budget import check_run
    from .trainer import train as train_run

    check_run(cfg)  # before the run directory is made: a refused run leaves nothing behind
    _trained(_stoppable(out, lambda: train_run(cfg, out, progress=progress, **(measure_kw or {}))), png)


def _trained(run, png: bool):
    """Draw the training curve of a run just trained, then summarise it."""
    from .report import draw_figures

    draw_figures(run, analysis=False, png=png)
    _print_summary(run)


PNG = typer.Option(True, "--png/--no-png", help="also write PNG figures (needs Chromium; HTML is always written)")


def _measure_kwargs(probe: Optional[str], measures: list[str], every: Optional[int]) -> dict:
    """--probe SPEC and --measure SPEC... --measure-every N -> the trainers' measures= and
    measure_every= (a --probe spec is one more measure, with its own every=N); every spec is
    resolved here, so a bad one fails before training."""
    from .measures import resolve

    specs = ([probe] if probe is not None else []) + list(measures)
    for spec in specs:
        resolve(spec)
    if every is not None and every < 1:
        raise ValueError(f"--measure-every must be >= 1, got {every}")
    return {"measures": specs, "measure_every": every} if specs else {}


MEASURE_HELP = ("a measure taken during training -> dynamics.csv (repeatable): a built-in (hessian, agreement, "
                "momentum, rank, weight_norm, weight_statistics, fourier, losses), pkg.module:function or "
                "file.py:function")


@app.command(help=f"Train the embedded demo (a+b mod 53) until it groks: {DEMO_TIME}.")
def demo(out: Path = typer.Option(Path("runs/demo"), help="run directory to create"),
         device: Device = typer.Option(Device.auto),
         progress: bool = typer.Option(True, help="show a progress bar"), png: bool = PNG):
    from .presets import configure

    _train_new(configure("demo", device=_value(device)), out, progress, png=png)


def _table_settings(path: Optional[Path], op: Optional[str], p: Optional[int]) -> dict:
    """--table FILE -> the task settings op="table", table=..., p=n (p is derived from the table)."""
    if path is None:
        return {}
    if op not in (None, "table"):
        raise ValueError(f"--table gives an operation table: it cannot be combined with --op {op}")
    try:
        rows = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--table {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--table {path}: not a JSON file ({e})") from None
    from .tasks import normalise_table

    try:
        rows = normalise_table(rows)
    except ValueError as e:
        raise ValueError(f"--table {path}: {e}") from None
    return {"op": "table", "table": rows, "p": len(rows) if p is None else p}


@app.command()
def train(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(None, help="run directory to create"),
    preset: Optional[str] = typer.Option(None, help="starting configuration (default: demo); see `mechgrok presets`"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the stopped run in this directory; "
                                          "with --steps N, extend it to N steps, past a --stop-after-grok stop "
                                          "too (no other setting but --stop-after-grok may change)"),
    op: Optional[Op] = typer.Option(None, help="quad is a^2+ab+b^2"),
    p: Optional[int] = typer.Option(None, help="prime modulus"),
    frac: Optional[float] = typer.Option(None, help="fraction of all examples used for training"),
    n_bits: Optional[int] = typer.Option(None, help="parity: number of bits"),
    k_bits: Optional[int] = typer.Option(None, help="parity: XOR of the first k bits (sparse parity)"),
    n_samples: Optional[int] = typer.Option(None, help="parity: a table of this many distinct random strings "
                                            "instead of all 2^n_bits (needed above 20 bits)"),
    data_seed: Optional[int] = typer.Option(None, help="parity: seed of the n_samples draw (--seed leaves the "
                                            "table alone: it sets the split)"),
    table: Optional[Path] = typer.Option(None, "--table", help="op table: a JSON file holding the n x n operation "
                                         "table T[a][b] (a list of n rows of ints in [0, n)); implies --op table"),
    n_layers: Optional[int] = typer.Option(None),
    d_model: Optional[int] = typer.Option(None),
    n_heads: Optional[int] = typer.Option(None),
    d_head: Optional[int] = typer.Option(None, help="default: d_model / n_heads"),
    d_mlp: Optional[int] = typer.Option(None),
    act_fn: Optional[ActFn] = typer.Option(None),
    normalization: Optional[Normalization] = typer.Option(None, case_sensitive=False),
    steps: Optional[int] = typer.Option(None, help="total optimiser steps"),
    lr: Optional[float] = typer.Option(None),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", "--wd"),
    beta1: Optional[float] = typer.Option(None),
    beta2: Optional[float] = typer.Option(None),
    optimizer: Optional[OptimizerName] = typer.Option(None, help="adamw (default), adam, sgd, or muon (Muon on "
                                                      "the MLP matrices, AdamW on the rest)"),
    optimizer_arg: Optional[list[str]] = typer.Option(None, "--optimizer-arg", help="KEY=VALUE, repeatable: the "
                                                      "optimizer's other arguments (sgd: momentum, nesterov, "
                                                      "dampening; muon: momentum, nesterov, ns_steps, adamw_lr)"),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", "--warmup"),
    batch_size: Optional[int] = typer.Option(None, help="minibatch size (default: the preset's; 0 = full batch)"),
    eval_every: Optional[int] = typer.Option(None),
    checkpoint_every: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None, help="sets the split, init and batch-order seeds at once"),
    task_seed: Optional[int] = typer.Option(None, help="the split's seed alone (overrides --seed there)"),
    model_seed: Optional[int] = typer.Option(None, help="the initial weights' seed alone (overrides --seed there)"),
    train_seed: Optional[int] = typer.Option(None, help="the minibatch order's seed alone (overrides --seed there; "
                                             "no effect with a full batch)"),
    device: Optional[Device] = typer.Option(None),
    progress: bool = typer.Option(True, help="show a progress bar"),
    probe: Optional[str] = typer.Option(None, "--probe", help="measure optimizer dynamics while training -> "
                                        "dynamics.csv: every=N[,measures=hessian+agreement+momentum+rank]"
                                        "[,iters=2][,rank_n=16]"),
    measure: list[str] = typer.Option([], "--measure", help=MEASURE_HELP),
    measure_every: Optional[int] = typer.Option(None, "--measure-every", help="steps between measures "
                                                "(default: the measure's own, else 100)"),
    grokfast: Optional[Grokfast] = typer.Option(None, help="Grokfast gradient filter between backward and step"),
    grokfast_alpha: Optional[float] = typer.Option(None, help="ema: decay of the gradient average"),
    grokfast_lambda: Optional[float] = typer.Option(None, help="weight of the filtered gradient (default 2 ema, 5 ma)"),
    grokfast_window: Optional[int] = typer.Option(None, help="ma: window length in steps"),
    stop_after_grok: Optional[int] = typer.Option(None, help=f"stop K evaluations after test accuracy passes {GROKKED_TEST_ACC}"),
    keep_moments: bool = typer.Option(False, "--keep-moments", help="also save AdamW's moments at every "
                                      "checkpoint (checkpoints/moments_*.safetensors)"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the training step (loss, gradient "
                                 "and Adam/AdamW update as one graph): ~1.5x faster on small batches, not "
                                 "bit-identical to an eager run (a run cannot switch on resume)"),
    allow_large: bool = ALLOW_LARGE,
    png: bool = PNG,
):
    """Train a run (a preset with any field overridden), or --resume a stopped one."""
    from .budget import check_run
    from .presets import configure
    from .runs import load_run, read_resume_state

    _allow_large(ctx, allow_large)

    settings = dict(op=_value(op), p=p, frac=frac, n_bits=n_bits, k_bits=k_bits, n_samples=n_samples,
                    data_seed=data_seed, n_layers=n_layers, d_model=d_model,
                    n_heads=n_heads, d_head=d_head, d_mlp=d_mlp, act_fn=_value(act_fn),
                    normalization=_value(normalization), steps=steps, lr=lr, weight_decay=weight_decay,
                    warmup_steps=warmup_steps, eval_every=eval_every, checkpoint_every=checkpoint_every,
                    device=_value(device), seed=seed, task_seed=task_seed, model_seed=model_seed,
                    train_seed=train_seed, beta1=beta1,
                    beta2=beta2, batch_size=batch_size, grokfast=_value(grokfast), grokfast_alpha=grokfast_alpha,
                    grokfast_lambda=grokfast_lambda, grokfast_window=grokfast_window,
                    stop_after_grok=stop_after_grok, keep_moments=keep_moments or None,
                    compile=compile or None, optimizer=_value(optimizer), optimizer_args=_key_values(optimizer_arg, "--optimizer-arg"))
    settings |= _table_settings(table, settings["op"], p)
    if resume is not None:
        if out is not None or preset is not None:
            raise ValueError("--resume continues the run in its own directory with its own settings: "
                             "drop --out/--preset")
        from .trainer import resume as resume_run
        from .trainer import check_resume, resume_config, stopped_after_grok

        run = load_run(resume)
        if "imported" in run.meta:
            raise ValueError(f"{resume} was imported ({run.meta['imported']['format']}): it has no optimizer state "
                             f"to resume; `mechgrok freeze {resume} --from-step S --steps N --interventions baseline` "
                             f"trains on from a checkpoint")
        cfg = resume_config(run.config, configure(run.config, **settings))  # refuses all but more steps
        stopped = stopped_after_grok(resume)
        if stopped is not None and steps is not None and stop_after_grok is None:
            # --steps N on a run its stop rule ended asks for training to N: past the stop
            from dataclasses import replace

            cfg = replace(cfg, train=replace(cfg.train, stop_after_grok=None))
        check_resume(resume, cfg)  # a stop rule that has fired already would train nothing
        if cfg.train.stop_after_grok is None and stopped is not None:
            typer.echo(f"{resume} stopped after grokking at step {stopped} (--stop-after-grok "
                       f"{run.config.train.stop_after_grok}); --steps {steps} trains on with no stop rule "
                       f"(--stop-after-grok K sets a new one)")
        check_run(cfg)
        measure_kw = _measure_kwargs(probe, measure, measure_every)
        # the resume state's step, not the newest checkpoint's: a stop between writing a
        # checkpoint and the resume state leaves the checkpoint one interval ahead of it
        typer.echo(f"resuming {resume} from step {read_resume_state(resume).step} to step {cfg.train.steps}")
        _trained(_stoppable(resume, lambda: resume_run(resume, cfg, progress=progress, **measure_kw)), png)
        return
    if out is None:
        raise ValueError("give --out DIR for a new run (or --resume DIR to continue one)")
    _train_new(configure(preset or "demo", **settings), out, progress, _measure_kwargs(probe, measure, measure_every),
               png)


@app.command()
def info(ctx: typer.Context, run_dir: Path = typer.Argument(..., help="a run directory"),
         as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
         allow_large: bool = ALLOW_LARGE):
    """Steps, final train/test accuracy, memorisation and grokking steps of a run."""
    from .runs import load_run

    _allow_large(ctx, allow_large)

    run = load_run(run_dir)
    if as_json:
        typer.echo(json.dumps(run.summary() | {"config": run.config.to_dict()}, indent=2))
    else:
        _print_summary(run)


@app.command()
def presets():
    """List the presets and their settings."""
    from dataclasses import asdict

    from .presets import PRESETS

    for name, (desc, cfg) in PRESETS.items():
        typer.secho(name, bold=True)
        typer.echo(f"  {desc}")
        for part in ("task", "model", "train"):
            fields = {k: v for k, v in asdict(getattr(cfg, part)).items() if v not in (None, ())}
            typer.echo(f"  {part}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
        typer.echo("")


@app.command()
def analyze(run_dir: Path = typer.Argument(..., help="a run directory"),
            out: Optional[Path] = typer.Option(None, help="where to write (default: the run directory)"),
            freqs: Optional[str] = typer.Option(None, help="key frequencies, comma-separated "
                                                "(default: from the final checkpoint)"),
            level: Level = typer.Option(Level.logits, help="restricted/excluded loss definition: logits "
                                        "(Nanda et al.) or neurons (TransformerLens Grokking demo)"),
            basis: Basis = typer.Option(Basis.auto, help="dlog: mul/div runs; auto picks it"),
            every: int = typer.Option(1, help="measure every N-th checkpoint"),
            measure: list[str] = typer.Option([], "--measure", help="more columns for progress.csv (repeatable): "
                                              "a built-in (weight_norm, weight_statistics, fourier, losses, hessian, "
                                              "agreement, momentum, rank), pkg.module:function or file.py:function"),
            progress: bool = typer.Option(True, help="show a progress bar"), png: bool = PNG):
    """Progress measures at every checkpoint -> progress.csv, phases.json and figures."""
    from .report import analysis
    from .runs import every_nth_step, load_run

    run = load_run(run_dir)
    res, written = analysis(run, out, freqs=_ints(freqs), steps=every_nth_step(run, every), level=_value(level),
                            basis=_value(basis), measures=measure, progress_bar=progress, png=png)
    table, ph = res.table, res.phases
    tr = ph.transitions
    typer.echo(f"run: {run.path}  ({run.task.describe()}, {len(table)} checkpoints)")
    if table.attrs.get("fourier") is False:  # no Fourier basis: the generic measures only
        last = table.iloc[-1]
        typer.echo(f"note: {table.attrs['note']}; phases, key frequencies and the Fourier figures are skipped")
        typer.echo(f"final: train loss {last['train_loss']:.3e}, test loss {last['test_loss']:.3e}, "
                   f"train acc {last['train_acc']:.4f}, test acc {last['test_acc']:.4f}, "
                   f"weight_sq {last['weight_sq']:.4g}")
        typer.echo(f"memorised {tr.memorised_step}, grokked {tr.grokked_step}, delay {tr.delay} "
                   f"(evaluation grid of metrics.csv)")
        for f in written:
            typer.echo(f"wrote {f}")
        return
    typer.echo(f"key frequencies ({table.attrs['basis']} basis): {table.attrs['key_freqs']}")
    last = table.iloc[-1]
    typer.echo(f"final: train loss {last['train_loss']:.3e}, test loss {last['test_loss']:.3e}, "
               f"restricted {last['restricted_loss']:.3e}, excluded {last['excluded_loss']:.3e} "
               f"({table.attrs['level']} level)")
    typer.echo(f"memorised {tr.memorised_step}, grokked {tr.grokked_step}, delay {tr.delay}, "
               f"max acceleration while grokking {tr.grokking_acceleration_step} (over the whole run "
               f"{tr.max_acceleration_step}) (evaluation grid of metrics.csv)")
    typer.echo("phases: " + ", ".join(f"{name} {b[0]}-{b[1]}" if b else f"{name} not reached"
                                      for name, b in ph.intervals().items()))
    for f in written:
        typer.echo(f"wrote {f}")


@app.command()
def spectrum(run_dir: Path = typer.Argument(..., help="a run directory"),
             step: Optional[int] = typer.Option(None, help="checkpoint step (default: the last)"),
             out: Optional[Path] = typer.Option(None, help="where to write (default: the run directory)"),
             basis: Basis = typer.Option(Basis.auto), png: bool = PNG):
    """Fourier spectrum of W_E and W_L at one checkpoint, with the key frequencies of each rule."""
    from .report import spectrum as write_spectrum
    from .runs import load_run

    table, written = write_spectrum(load_run(run_dir), step, out, basis=_value(basis), png=png)
    typer.echo(f"step {table.attrs['step']}, {table.attrs['basis']} basis")
    for rule, ks in table.attrs["key_freqs"].items():
        typer.echo(f"key frequencies ({rule} rule): {ks}")
    top = table.sort_values("W_E_norm", ascending=False).head(10)
    typer.echo("largest W_E frequencies: " + ", ".join(f"{int(r.k)} ({r.W_E_norm:.2f})" for r in top.itertuples()))
    for f in written:
        typer.echo(f"wrote {f}")


# --- interventions ---------------------------------------------------------------


@app.command()
def ablate(run_dir: Path = typer.Argument(..., help="a run directory"),
           step: Optional[int] = typer.Option(None, help="checkpoint step (default: the last)"),
           freqs: Optional[str] = typer.Option(None, help="frequencies, comma-separated (default: the key ones)"),
           mode: Optional[Mode] = typer.Option(None, help="default: both, plus each frequency removed alone"),
           where: Where = typer.Option(Where.embed, help="the hook point: hook_embed, blocks.L.mlp.hook_post "
                                       "or unembed.hook_out"),
           layer: Optional[int] = typer.Option(None, help="MLP layer for --where neurons (default: the last)"),
           basis: Basis = typer.Option(Basis.auto),
           out: Optional[Path] = typer.Option(None, help="where the sweep figure goes (default: the run directory)"),
           as_json: bool = typer.Option(False, "--json", help="machine-readable output (one schema for every mode)"),
           progress: bool = typer.Option(True, help="show a progress bar over the sweep"), png: bool = PNG):
    """Remove frequencies from an activation (or keep only them) and measure loss and accuracy."""
    from . import interventions as iv
    from .plots import frequency_ablation, save_figure
    from .runs import load_run

    run = load_run(run_dir)
    step, where, basis = run.resolve_step(step), _value(where), _value(basis)
    modes = [_value(mode)] if mode is not None else ["remove", "keep"]
    with _json_only(as_json):
        results = [iv.ablate_frequencies(run, run.task, _ints(freqs), mode=m, where=where, layer=layer, step=step,
                                         basis=basis) for m in modes]
        ablated = list(results[0].freqs)
        sweep, written = None, []
        if mode is None:
            sweep = iv.frequency_sweep(run, run.task, where=where, key_freqs=ablated, layer=layer, step=step,
                                       basis=basis, progress=progress)
            fig = frequency_ablation(sweep, title=f"{run.path} step {step}: test loss with one frequency removed "
                                                  f"at {where}")
            written = save_figure(fig, Path(out or run.path) / f"ablation_{where}_step{step}", png=png)
    rows = [{"name": "baseline", "mode": None, "freqs": []} | results[0].before]
    rows += [{"name": f"{r.mode} {list(r.freqs)}", "mode": r.mode, "freqs": list(r.freqs)} | r.after for r in results]
    if as_json:
        typer.echo(json.dumps({"run": str(run.path), "step": step, "where": where, "layer": layer,
                               "freqs": ablated, "results": rows,
                               "sweep": [] if sweep is None else sweep.to_dict("records"),
                               "figures": [str(w) for w in written]}, indent=2))
        return
    import pandas as pd

    typer.echo(f"run: {run.path}  step {step}, frequencies {ablated}, ablation at {where}")
    table = pd.DataFrame(rows).set_index("name").drop(columns=["mode", "freqs"])
    typer.echo(table.to_string(float_format=lambda v: f"{v:.4g}"))
    if sweep is not None:
        typer.echo("each frequency removed alone (test loss; * = ablated above): " + ", ".join(
            f"{int(r.freq)}{'*' if r.is_key else ''}={r.test_loss:.3g}" for r in sweep.itertuples()))
    for w in written:
        typer.echo(f"wrote {w}")


@app.command()
def freeze(run_dir: Path = typer.Argument(..., help="a run directory"),
           from_step: str = typer.Option(..., help="checkpoint step(s), comma-separated"),
           steps: int = typer.Option(..., help="steps to train on after freezing"),
           interventions: str = typer.Option("all", help="all, or comma-separated names: " + ", ".join(INTERVENTIONS)),
           out: Optional[Path] = typer.Option(None, help="directory for the new runs (default: RUN/interventions/freeze)"),
           optimizer: OptimizerState = typer.Option(OptimizerState.fresh, help="fresh AdamW state, or carry the "
                                                    "moments of resume.safetensors"),
           as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
           progress: bool = typer.Option(True, help="show a progress bar per continuation")):
    """Seed 000's freeze-and-continue: freeze a component at a checkpoint, train on, did it grok?"""
    from . import interventions as iv
    from .runs import load_run

    def show(res: dict):  # one finished continuation (freeze_sweep's row)
        if not as_json:
            typer.echo(f"from {res['from_step']} {res['name']:16s} trainable {res['trainable_params']}/"
                       f"{res['total_params']}  final test acc {res['final_test_acc']:.3f} "
                       f"(max {res['max_test_acc']:.3f})  grokked at {res['grokking_step']}")

    run = load_run(run_dir)
    with _json_only(as_json):
        table = iv.freeze_sweep(run, _ints(from_step), interventions, steps,
                                out_dir=out, optimizer=_value(optimizer),
                                progress=progress, on_result=show)
    if as_json:
        typer.echo(json.dumps(table.to_dict("records"), indent=2))


@app.command()
def transplant(donor: Path = typer.Option(..., help="donor run directory"),
               donor_step: Optional[int] = typer.Option(None, help="donor checkpoint (default: the last)"),
               recipient: Path = typer.Option(..., help="recipient run directory"),
               recipient_step: int = typer.Option(..., help="recipient checkpoint to transplant into"),
               steps: int = typer.Option(..., help="steps to train both arms on"),
               neurons: Optional[str] = typer.Option(None, help="neuron indices (default: by frequency cluster)"),
               freqs: Optional[str] = typer.Option(None, help="frequency clusters to move (default: all clustered)"),
               layer: Optional[int] = typer.Option(None, help="MLP layer (default: the last)"),
               out: Optional[Path] = typer.Option(None, help="directory for both arms and transplant.json "
                                                  "(default: RECIPIENT/interventions/transplant_STEP); run again "
                                                  "with the same settings, the result there is reused"),
               as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
               progress: bool = typer.Option(True, help="show a progress bar per arm")):
    """Copy a donor's neurons into a recipient checkpoint, train on, compare with an untouched control."""
    from . import interventions as iv
    from .runs import load_run

    d, r = load_run(donor), load_run(recipient)
    d_step = d.resolve_step(donor_step)
    with _json_only(as_json):
        res = iv.transplant_experiment(d, d_step, r, recipient_step, steps, neurons=_ints(neurons),
                                       freqs=_ints(freqs), layer=layer,
                                       out_dir=out, progress=progress)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(f"moved {res['n_neurons']} neurons from {d.path} step {d_step} into {r.path} step {recipient_step}")
    typer.echo(f"right after: train acc {res['after_transplant']['train_acc']:.3f}, "
               f"test acc {res['after_transplant']['test_acc']:.3f}")
    for arm in ("transplant", "control"):
        a = res[arm]
        typer.echo(f"{arm:10s} grokked at {a['grokking_step']}, final test acc {a['final_test_acc']:.3f} ({a['path']})")


# --- foreign checkpoint series and figures --------------------------------------


@app.command("import")
def import_(src: Path = typer.Argument(..., help="a HookedTransformer state dict (.pth/.pt/.safetensors), a "
                                       "folder of them (one per step, the step in the name: step_100.pt, ...), "
                                       "or a TransformerLens Grokking-demo bundle (.pth)"),
            out: Path = typer.Option(..., help="run directory to create"),
            op: Optional[Op] = typer.Option(None, help="the task the weights were trained on (default: add)"),
            p: Optional[int] = typer.Option(None, help="prime modulus (default: the unembedding's width)"),
            act_fn: Optional[ActFn] = typer.Option(None, help="default: the bundle config's, else relu"),
            split: Optional[Path] = typer.Option(None, help="train indices into mechgrok's a-major example table: "
                                                 "a JSON list, or integers separated by commas/whitespace "
                                                 "(default: the bundle's train_indices)"),
            step: Optional[int] = typer.Option(None, help="a single state dict's step (default: 0; a folder's "
                                               "come from its file names)"),
            accept_mismatch: bool = typer.Option(False, "--accept-mismatch", help="import even when the "
                                                 "re-evaluated losses disagree with the bundle's own (wrong "
                                                 "--op, --p or --split otherwise stops the import)"),
            progress: bool = typer.Option(True, help="show a progress bar"), png: bool = PNG):
    """Turn a checkpoint series trained elsewhere into a run directory; nothing in SRC is executed."""
    from .foreign import import_run
    from .report import draw_figures

    run = import_run(src, out, op=_value(op), p=p, act_fn=_value(act_fn), split=split, step=step,
                     progress=progress, accept_mismatch=accept_mismatch)
    draw_figures(run, analysis=False, png=png)
    for note in run.meta["imported"]["notes"]:
        typer.echo(f"note: {note}")
    _print_summary(run)


@app.command()
def plot(run_dir: Path = typer.Argument(..., help="a run directory"),
         png: bool = PNG, progress: bool = typer.Option(True, help="show a progress bar")):
    """(Re)draw a run's figures: training curve, and analysis figures if analyze wrote progress.csv."""
    from .report import draw_figures, stale_analysis
    from .runs import load_run

    run = load_run(run_dir)
    stale = stale_analysis(run)
    if stale:  # redrawn all the same: the figures are right about the steps they show
        typer.secho(f"warning: {stale}", fg=typer.colors.YELLOW, err=True)
    for f in draw_figures(run, png=png, progress=progress):
        typer.echo(f"wrote {f}")


# --- latent-state training maps ---


@app.command()
def latent(population: Path = typer.Argument(..., help="a sweep directory, or a directory of run directories"),
           states: Optional[int] = typer.Option(None, "--states", help="number of HMM states (default: the one "
                                                "--criterion picks)"),
           features: Optional[str] = typer.Option(None, help="comma-separated features (default: the 14 "
                                                  "statistics), e.g. var_w,l1,l2"),
           max_states: int = typer.Option(8, "--max-states", help="model selection tries 1..max-states states"),
           covariance: str = typer.Option("diag", help="HMM covariance: spherical, diag, full or tied"),
           criterion: str = typer.Option("bic", help="how model selection picks the number of states: bic (lowest "
                                         "BIC), aic (lowest AIC) or heldout (highest held-out log-likelihood)"),
           restarts: int = typer.Option(5, help="random restarts per HMM fit"),
           seed: int = typer.Option(0, help="seed of the fit/held-out split and the restarts"),
           out: Optional[Path] = typer.Option(None, help="output directory (default: POPULATION/latent)"),
           png: bool = typer.Option(True, "--png/--no-png", help="also write PNG figures")):
    """Latent-state training map of a population (Hu et al.): statistics, model selection, map, detours."""
    from .report import latent as write_latent

    out = out or population / "latent"
    try:
        res = write_latent(population, out, n_states=states, features=features, max_states=max_states,
                           covariance=covariance, restarts=restarts, seed=seed, png=png, title=population.name,
                           criterion=criterion)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    sel, tm, det = res["selection"], res["map"], res["detours"]
    table = res["statistics"]
    typer.echo(f"{table.member.nunique()} members, {len(table)} checkpoints; features: {', '.join(sel.features)}")
    typer.echo("states  heldout_ll/ckpt       AIC        BIC  params")
    for r in sel.table.itertuples():
        if r.n_states in sel.ranked():
            typer.echo(f"{r.n_states:6d}  {r.heldout_ll:15.3f}  {r.aic:9.1f}  {r.bic:9.1f}  {int(r.n_params):6d}")
        else:
            typer.echo(f"{r.n_states:6d}  not fitted: every restart emptied a state")
    typer.echo(f"training map with {res['n_states']} states")
    for note in res["notes"]:  # the rule and its values, disagreeing criteria, a population too small
        typer.echo(note)
    for r in det.itertuples():
        flag = "  <- detour" if r.detour else ""
        fit = (f"coef {r.coef:.1f} steps/ckpt (95% CI {r.ci_low:.1f}..{r.ci_high:.1f}, p={r.p_value:.3g}, n={r.n})"
               if not r.note else r.note)
        typer.echo(f"S{r.state} [{tm.occupancy[r.state]} ckpts] {r.label}: {fit}{flag}")
    typer.echo(f"wrote {len(res['written'])} files to {out}")


# --- populations of runs: sweeps and population tables ---


class Backend(str, Enum):
    local = "local"
    ray = "ray"


def _grid(texts: list[str]) -> list[tuple[str, list[str]]]:
    """--grid FIELD=V1,V2,... strings -> (field, [values])."""
    out = []
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"--grid expects FIELD=V1,V2,..., got {text!r}")
        out.append((name.strip(), [v for v in value.split(",") if v.strip()]))
    return out


@app.command()
def sweep(
    out: Optional[Path] = typer.Option(None, help="sweep directory to create"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="finish the sweep in this directory; with "
                                          "--set steps=N, train every member on to N (past a --stop-after-grok "
                                          "stop too: no stop rule unless --stop-after-grok K is given)"),
    preset: str = typer.Option("demo", help="base configuration; see `mechgrok presets`"),
    grid: list[str] = typer.Option([], "--grid", help="FIELD=V1,V2,... (repeat: every combination)"),
    setting: list[str] = typer.Option([], "--setting", help="one explicit setting FIELD=V[,FIELD=V...] "
                                      "(repeatable; added to the grid's points)"),
    set_: list[str] = typer.Option([], "--set", help="FIELD=VALUE for every member, e.g. steps=3000 (repeatable)"),
    seeds: str = typer.Option("1", help="N: seeds 0..N-1 per setting; A-B: seeds A..B; or a,b,c (each sets split, "
                              "init and batch order)"),
    stop_after_grok: Optional[int] = typer.Option(None, help="stop a member K evaluations after it groks"),
    chunk_size: int = typer.Option(8, help="members trained together in one ensemble"),
    backend: Backend = typer.Option(Backend.local, help="local: chunks one after another here; ray: Ray tasks"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (e.g. auto); default: a local Ray"),
    cpus_per_chunk: float = typer.Option(1.0, help="Ray: CPUs per chunk task"),
    gpus_per_chunk: float = typer.Option(0.0, help="Ray: GPUs per chunk task"),
    probe: Optional[str] = typer.Option(None, "--probe", help="optimizer-dynamics probes in every member -> "
                                        "dynamics.csv: every=N[,measures=...] (as for train)"),
    measure: list[str] = typer.Option([], "--measure", help=MEASURE_HELP.replace("during training", "in every member")),
    measure_every: Optional[int] = typer.Option(None, "--measure-every", help="steps between measures"),
    progress: bool = typer.Option(True, help="show a progress bar over members"),
    kept: Optional[Path] = typer.Option(None, "--kept", help="a directory to commit: each finished chunk's configs "
                                        "and metrics are copied there, and restored from there into an empty sweep "
                                        "directory (a fresh machine), so that only the other members train"),
):
    """Train a grid (or list) of settings x seeds as chunks of ensembles; --resume finishes one,
    and with --set steps=N (or --stop-after-grok K) trains every member on past its old end."""
    from .config import parse_seeds
    from .population import SWEEP_FILE, SweepConfig, extend_sweep, run_sweep
    from .presets import get_preset, parse_overrides

    if resume is None and out is None:
        raise ValueError("give --out DIR for a new sweep (or --resume DIR to finish one)")
    sw = None
    backend_kw = dict(backend=_value(backend), ray_address=ray_address, cpus_per_chunk=cpus_per_chunk,
                      gpus_per_chunk=gpus_per_chunk, progress=progress)
    if resume is not None:
        if out is not None:
            raise ValueError("--resume finishes the sweep in its own directory: drop --out")
        fixed = parse_overrides(set_, "--set")
        new_steps = next((fixed.pop(k) for k in ("steps", "train.steps") if k in fixed), None)
        other = [name for name, given in (("--grid", grid), ("--setting", setting), ("--probe", probe),
                                          ("--measure", measure), ("--measure-every", measure_every)) if given]
        other += [f"--set {k}" for k in fixed]
        if other:
            raise ValueError(f"--resume finishes the stored sweep (or extends it with --set steps=N and "
                             f"--stop-after-grok K): {', '.join(other)} cannot change; start a new sweep "
                             f"with --out for other settings")
        if new_steps is not None or stop_after_grok is not None:
            try:
                steps = None if new_steps is None else int(new_steps)
            except ValueError:
                raise ValueError(f"--set steps: {new_steps!r} is not a whole number of steps") from None
            typer.echo(f"extending {resume}: every member trains on to "
                       f"{'its budget' if steps is None else f'step {steps}'} with "
                       + ("no stop rule (--stop-after-grok K sets one)" if stop_after_grok is None
                          else f"--stop-after-grok {stop_after_grok}"))
            try:
                pop = extend_sweep(resume, steps, stop_after_grok, **backend_kw)
            except ImportError as e:
                _fail(str(e))
            _print_population(pop, None)
            return
    if resume is None:
        fixed = parse_overrides(set_, "--set")
        if stop_after_grok is not None:
            fixed["stop_after_grok"] = stop_after_grok
        settings = [parse_overrides(s.split(","), "--setting") for s in setting]
        sw = SweepConfig(get_preset(preset), grid=tuple((n, tuple(v)) for n, v in _grid(grid)),
                         settings=tuple(settings), seeds=parse_seeds(seeds), fixed=fixed, chunk_size=chunk_size, probe=probe,
                         measures=tuple(measure), measure_every=measure_every)
        typer.echo(f"sweep: {len(sw.members())} members ({len(sw.points())} settings x {len(sw.seeds)} seeds) "
                   f"-> {out}")
    where, on_finished = resume or out, None
    if kept is not None:
        from .experiment import keep, restore_sweep

        restore_sweep(sw, kept, where)
        on_finished = lambda records: keep(where, kept, [r["id"] for r in records])  # noqa: E731
    try:
        pop = run_sweep(sw, where, resume=resume is not None or (kept is not None and (where / SWEEP_FILE).exists()), **backend_kw,
                        on_finished=on_finished)
    except ImportError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        from .population import read_manifest

        if (where / SWEEP_FILE).exists():
            typer.echo(f"stopped with {len(read_manifest(where))} member(s) finished; resume with "
                       f"`mechgrok sweep --resume {where}`", err=True)
        else:
            typer.echo(f"stopped before the sweep began: nothing in {where} to resume", err=True)
        raise
    _print_population(pop, None)


def _print_population(pop, field: Optional[str]):
    t = pop.table
    cols = ["id", *pop.fields, "seed", "memorised_step", "grokked_step", "delay", "grokked", "final_test_acc"]
    typer.echo(t[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    fields = [field] if field else pop.fields
    for f in fields:
        typer.echo(f"\nper {f}:")
        s = pop.summary(f)
        typer.echo(s[["n", *(["n_not_started"] if s["n_not_started"].any() else []), "n_grokked", "grok_rate", "delay_median", "delay_q25", "delay_q75", "grokked_step_median",
                      "n_grokked_before_memorising"]].to_string(float_format=lambda v: f"{v:.3g}"))
    return fields


@app.command()
def population(
    paths: list[Path] = typer.Argument(..., help="a sweep directory, a directory of run directories, or run directories"),
    field: Optional[str] = typer.Option(None, help="summarise per value of this field (default: every swept field)"),
    out: Optional[Path] = typer.Option(None, help="where population.csv and the figures go (default: the one "
                                       "PATH given; with several PATHs nothing is written without --out)"),
    png: bool = typer.Option(True, "--png/--no-png", help="also write PNG figures"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """Population table (transition metrics per member) and figure: delay median/IQR and grok rate per value."""
    from .population import load_population
    from .report import population as write_population

    pop = load_population(paths[0] if len(paths) == 1 else paths)
    if not len(pop):
        raise ValueError(f"{paths[0]}: no finished members yet")
    fields = [field] if field else pop.fields
    if as_json:
        typer.echo(json.dumps({"table": json.loads(pop.table.to_json(orient="records")),
                               "summary": {f: json.loads(pop.summary(f).reset_index().to_json(orient="records"))
                                           for f in fields}}, indent=2))
        return
    _print_population(pop, field)
    typer.echo("")
    if out is None and len(paths) > 1:  # no directory of theirs is the obvious home: never the current one
        typer.echo("not written: give --out DIR to write population.csv and the figures")
        return
    out = out or paths[0]
    for w in write_population(pop, out, fields, png=png):
        typer.echo(f"wrote {w}")



# --- optimizer dynamics ---


@app.command()
def dynamics(path: Path = typer.Argument(..., help="a run directory, or a sweep / directory of runs"),
             out: Optional[Path] = typer.Option(None, help="where the table and population figures go "
                                                "(default: PATH)"),
             measure: bool = typer.Option(True, "--measure/--no-measure", help="measure runs trained without "
                                          "--probe at their checkpoints (Hessian, agreement, rank)"),
             prominence: float = typer.Option(0.1, help="an agreement dip: a local minimum at least this "
                                              "prominent (cosine units)"),
             png: bool = typer.Option(True, "--png/--no-png", help="also write PNG figures"),
             progress: bool = typer.Option(True, help="show a progress bar")):
    """Optimizer dynamics of a run or a population: summary table, geometry figure, limit cycle, dips vs gap."""
    from .report import dynamics as write_dynamics

    table, corr, written = write_dynamics(path, out, measure=measure, prominence=prominence, png=png,
                                          progress_bar=progress)
    cols = [c for c in ("run", "weight_decay", "memorised_step", "grokked_step", "delay", "hessian_rise",
                        "hessian_peak_step", "agreement_first", "agreement_at_memorised", "momentum_cos_plateau",
                        "erank_drop", "agreement_dips", "agreement_dips_plateau", "limit_verdict", "limit_test_acc_period",
                        "limit_weight_norm_period", "limit_collapses") if c in table]
    shown = table[cols].assign(run=[Path(r).name for r in table["run"]])
    typer.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if corr is not None:
        from .cycles import DIP_COUNTS, dips_vs_gap_all

        typer.echo(f"agreement dips vs grokking gap: Pearson {corr.describe()}")
        for name, c in list(dips_vs_gap_all(table).items())[1:]:
            typer.echo(f"  {DIP_COUNTS[name]} vs gap: {c.describe()}")
    for f in written:
        typer.echo(f"wrote {f}")


# --- the TL Grokking demo's (a, b) grids, and runs side by side ---


@app.command()
def grids(run_dir: Path = typer.Argument(..., help="a run directory"),
          step: Optional[int] = typer.Option(None, help="checkpoint step (default: the last)"),
          neurons: Optional[str] = typer.Option(None, help="neuron indices, comma-separated (default: 0..5)"),
          layer: Optional[int] = typer.Option(None, help="layer (default: the last)"),
          out: Optional[Path] = typer.Option(None, help="where to write (default: the run directory)"),
          png: bool = PNG):
    """Attention of '=' to a and b per head, and neuron activations, over the (a, b) grid (the TL demo's figures)."""
    from .report import grids as write_grids
    from .runs import load_run

    run = load_run(run_dir)
    res, written = write_grids(run, step, _ints(neurons), layer, out, png=png)
    att = res["attention"]
    typer.echo(f"run: {run.path}  step {res['step']}, layer {res['layer']}, {att.shape[0]} heads, "
               f"neurons {res['neurons']}")
    for h in range(att.shape[0]):  # NaN cells: no example there (div's b = 0)
        typer.echo(f"head {h}: mean attention of '=' to a {float(att[h, 0].nanmean()):.3f}, "
                   f"to b {float(att[h, 1].nanmean()):.3f}")
    for f in written:
        typer.echo(f"wrote {f}")


@app.command()
def compare(runs: list[Path] = typer.Argument(..., help="run directories (a sweep directory gives all its members)"),
            out: Path = typer.Option(Path("."), help="where compare.csv and the figures go"),
            png: bool = PNG):
    """A few runs side by side: overlaid training curves and progress measures, and their transition metrics."""
    from .report import compare as write_compare

    table, written = write_compare(runs, out, png=png)
    fields = table.attrs["fields"]
    typer.echo("settings that differ: " + (", ".join(fields) if fields else "none"))
    cols = ["run", *fields, "memorised_step", "grokked_step", "delay", "final_train_loss", "final_test_loss",
            "final_test_acc"]
    typer.echo(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    missing = table.loc[~table["analysed"], "run"].tolist()
    if missing:
        typer.echo(f"no progress measures for {', '.join(missing)} (run `mechgrok analyze RUN` to add them)")
    for f in written:
        typer.echo(f"wrote {f}")

if __name__ == "__main__":
    app()
