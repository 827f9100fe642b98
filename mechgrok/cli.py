"""The ``mechgrok`` command line. Each command is a thin shell over the Python API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Train small transformers on algorithmic tasks and take grokking apart.")


def _fail(msg: str):
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _train(cfg, out: Path, resume: bool, progress: bool):
    from .train import TrainingDiverged, train

    try:
        run = train(cfg, out, resume=resume, progress=progress)
    except (ValueError, FileExistsError, FileNotFoundError, TrainingDiverged, RuntimeError) as e:
        _fail(str(e))
    _print_summary(run)


def _print_summary(run):
    s = run.summary()
    typer.echo(f"run: {run.path}  ({run.task.describe()}, preset {run.config.preset or '-'})")
    typer.echo(f"checkpoints: {s['n_checkpoints']} (steps {s['first_step']}..{s['last_step']})")
    typer.echo(f"final: train acc {s['train_acc']:.4f}, test acc {s['test_acc']:.4f}, "
               f"train loss {s['train_loss']:.3e}, test loss {s['test_loss']:.3e}")
    typer.echo(f"memorised (train acc > 0.99) at step: {s['memorisation_step']}")
    typer.echo(f"grokked (test acc > 0.9) at step: {s['grokking_step']}")
    fig = run.path / "training_curve.html"
    if fig.exists():
        typer.echo(f"figure: {fig}" + (" (+ .png)" if fig.with_suffix(".png").exists() else ""))


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="run directory to create"),
         device: str = typer.Option("auto", help="auto, cpu or cuda"),
         progress: bool = typer.Option(True, help="show a progress bar")):
    """Train the embedded demo (a+b mod 53) until it groks: about two minutes on 2 CPU cores."""
    from .presets import get_preset, with_overrides

    _train(with_overrides(get_preset("demo"), {}, {}, {"device": device}), out, False, progress)


@app.command()
def train(
    out: Optional[Path] = typer.Option(None, help="run directory to create"),
    preset: str = typer.Option("demo", help="starting configuration; see `mechgrok presets`"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the stopped run in this directory"),
    op: Optional[str] = typer.Option(None, help="add, sub, mul, div, quad (a^2+ab+b^2), parity"),
    p: Optional[int] = typer.Option(None, help="prime modulus"),
    frac: Optional[float] = typer.Option(None, help="fraction of all examples used for training"),
    n_bits: Optional[int] = typer.Option(None, help="parity: number of bits"),
    k_bits: Optional[int] = typer.Option(None, help="parity: XOR of the first k bits (sparse parity)"),
    n_layers: Optional[int] = typer.Option(None),
    d_model: Optional[int] = typer.Option(None),
    n_heads: Optional[int] = typer.Option(None),
    d_head: Optional[int] = typer.Option(None),
    d_mlp: Optional[int] = typer.Option(None),
    act_fn: Optional[str] = typer.Option(None, help="relu or gelu"),
    normalization: Optional[str] = typer.Option(None, help="none or LN"),
    steps: Optional[int] = typer.Option(None, help="total optimiser steps"),
    lr: Optional[float] = typer.Option(None),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", "--wd"),
    beta1: Optional[float] = typer.Option(None),
    beta2: Optional[float] = typer.Option(None),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", "--warmup"),
    batch_size: Optional[int] = typer.Option(None, help="minibatch size (default: the preset's; 0 = full batch)"),
    eval_every: Optional[int] = typer.Option(None),
    checkpoint_every: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None, help="sets the split, init and batch-order seeds at once"),
    task_seed: Optional[int] = typer.Option(None),
    model_seed: Optional[int] = typer.Option(None),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda"),
    progress: bool = typer.Option(True, help="show a progress bar"),
):
    """Train a run (a preset with any field overridden), or --resume a stopped one."""
    from .presets import get_preset, with_overrides

    if resume is not None:
        _train(None, resume, True, progress)
        return
    if out is None:
        _fail("give --out DIR for a new run (or --resume DIR to continue one)")
    try:
        base = get_preset(preset)
        betas = None
        if beta1 is not None or beta2 is not None:
            betas = (beta1 if beta1 is not None else base.train.betas[0],
                     beta2 if beta2 is not None else base.train.betas[1])
        cfg = with_overrides(
            base,
            dict(op=op, p=p, frac=frac, n_bits=n_bits, k_bits=k_bits,
                 seed=task_seed if task_seed is not None else seed),
            dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp,
                 act_fn=act_fn, normalization=normalization,
                 seed=model_seed if model_seed is not None else seed),
            dict(steps=steps, lr=lr, weight_decay=weight_decay, betas=betas, warmup_steps=warmup_steps,
                 eval_every=eval_every, checkpoint_every=checkpoint_every, seed=seed, device=device),
        )
        if batch_size is not None:
            from dataclasses import replace
            cfg = replace(cfg, train=replace(cfg.train, batch_size=batch_size or None))
        if (d_model is not None or n_heads is not None) and d_head is None:
            from dataclasses import replace  # keep d_model = n_heads * d_head unless told otherwise
            cfg = replace(cfg, model=replace(cfg.model, d_head=max(1, cfg.model.d_model // cfg.model.n_heads)))
    except ValueError as e:
        _fail(str(e))
    _train(cfg, out, False, progress)


@app.command()
def info(run_dir: Path = typer.Argument(..., help="a run directory"),
         as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Steps, final train/test accuracy, memorisation and grokking steps of a run."""
    from .runs import load_run

    try:
        run = load_run(run_dir)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
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
            level: str = typer.Option("neurons", help="restricted/excluded loss at: neurons or logits"),
            basis: str = typer.Option("auto", help="auto, add or dlog (dlog: mul/div runs; auto picks it)"),
            every: int = typer.Option(1, help="measure every N-th checkpoint"),
            progress: bool = typer.Option(True, help="show a progress bar")):
    """Progress measures at every checkpoint -> progress.csv, phases.json and figures."""
    from .progress import analyze_run
    from .runs import load_run

    try:
        run = load_run(run_dir)
        keys = [int(k) for k in freqs.split(",")] if freqs else None
        steps = run.steps[::every] if every > 1 else None
        if steps and steps[-1] != run.steps[-1]:
            steps.append(run.steps[-1])
        table, written = analyze_run(run, out, freqs=keys, steps=steps, level=level, basis=basis,
                                     progress=progress)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    ph = json.loads((Path(out or run.path) / "phases.json").read_text())
    typer.echo(f"run: {run.path}  ({run.task.describe()}, {len(table)} checkpoints)")
    typer.echo(f"key frequencies ({ph['basis']} basis): {ph['key_freqs']}")
    last = table.iloc[-1]
    typer.echo(f"final: train loss {last['train_loss']:.3e}, test loss {last['test_loss']:.3e}, "
               f"restricted {last['restricted_loss']:.3e}, excluded {last['excluded_loss']:.3e}")
    typer.echo(f"memorisation {ph['memorisation']}, grokking {ph['grokking']}, delay {ph['delay']}, "
               f"max acceleration {ph['max_acceleration']}")
    from dataclasses import fields

    from .progress import Phases

    bounds = Phases(**{f.name: ph[f.name] for f in fields(Phases)}).boundaries()
    typer.echo("phases: " + ", ".join(f"{name} {b[0]}-{b[1]}" if b else f"{name} not reached"
                                      for name, b in bounds.items()))
    for f in written:
        typer.echo(f"wrote {f}")


@app.command()
def spectrum(run_dir: Path = typer.Argument(..., help="a run directory"),
             step: Optional[int] = typer.Option(None, help="checkpoint step (default: the last)"),
             out: Optional[Path] = typer.Option(None, help="where to write (default: the run directory)"),
             basis: str = typer.Option("auto", help="auto, add or dlog")):
    """Fourier spectrum of W_E and W_L at one checkpoint, with the key frequencies of each rule."""
    from .progress import analyze_spectrum
    from .runs import load_run

    try:
        table, written = analyze_spectrum(load_run(run_dir), step, out, basis=basis)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"step {table.attrs['step']}, {table.attrs['basis']} basis")
    for rule, ks in table.attrs["key_freqs"].items():
        typer.echo(f"key frequencies ({rule} rule): {ks}")
    top = table.sort_values("W_E_norm", ascending=False).head(10)
    typer.echo("largest W_E frequencies: " + ", ".join(f"{int(r.k)} ({r.W_E_norm:.2f})" for r in top.itertuples()))
    for f in written:
        typer.echo(f"wrote {f}")



# --- interventions (issue 4) ---------------------------------------------------------------


def _ints(text: Optional[str]) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"expected comma-separated integers, got {text!r}")


@app.command()
def ablate(run_dir: Path = typer.Argument(..., help="a run directory"),
           step: Optional[int] = typer.Option(None, help="checkpoint step (default: the last)"),
           freqs: Optional[str] = typer.Option(None, help="frequencies, comma-separated (default: the key ones)"),
           mode: Optional[str] = typer.Option(None, help="remove or keep; default: both, plus each frequency alone"),
           where: str = typer.Option("embed", help="embed, neurons or logits"),
           layer: Optional[int] = typer.Option(None, help="MLP layer for --where neurons (default: the last)"),
           basis: str = typer.Option("auto", help="auto, add or dlog"),
           out: Optional[Path] = typer.Option(None, help="where the sweep figure goes (default: the run directory)"),
           as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Remove frequencies from an activation (or keep only them) and measure loss and accuracy."""
    from . import interventions as iv
    from .runs import load_run

    try:
        run = load_run(run_dir)
        step = run.resolve_step(step)
        keys = _ints(freqs)
        if mode is not None:
            res = iv.ablate_frequencies(run, run.task, keys, mode=mode, where=where, layer=layer, step=step,
                                        basis=basis)
            if as_json:
                typer.echo(json.dumps(res.to_dict() | {"step": step}, indent=2))
            else:
                typer.echo(f"step {step}: {mode} frequencies {list(res.freqs)} at {where}")
                typer.echo(res.to_frame().to_string(float_format=lambda v: f"{v:.4g}"))
            return
        table = iv.ablation_table(run, run.task, keys, where=where, layer=layer, step=step, basis=basis)
        sweep = iv.frequency_sweep(run, run.task, where=where, key_freqs=table.attrs["freqs"], layer=layer,
                                   step=step, basis=basis)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    from .plots import frequency_ablation, save_figure

    stem = Path(out or run.path) / f"ablation_{where}_step{step}"
    written = save_figure(frequency_ablation(sweep, title=f"{run.path} step {step}: test loss with one "
                                                          f"frequency removed at {where}"), stem)
    if as_json:
        typer.echo(json.dumps({"step": step, "where": where, "freqs": table.attrs["freqs"],
                               "table": table.to_dict("index"), "sweep": sweep.to_dict("records"),
                               "baseline": sweep.attrs["baseline"], "figures": [str(w) for w in written]}, indent=2))
        return
    typer.echo(f"run: {run.path}  step {step}, key frequencies {table.attrs['freqs']}, ablation at {where}")
    typer.echo(table.to_string(float_format=lambda v: f"{v:.4g}"))
    typer.echo("each frequency removed alone (test loss): " + ", ".join(
        f"{int(r.freq)}{'*' if r.is_key else ''}={r.test_loss:.3g}" for r in sweep.itertuples()))
    for w in written:
        typer.echo(f"wrote {w}")


@app.command()
def freeze(run_dir: Path = typer.Argument(..., help="a run directory"),
           from_step: str = typer.Option(..., help="checkpoint step(s), comma-separated"),
           steps: int = typer.Option(..., help="steps to train on after freezing"),
           interventions: str = typer.Option("all", help="all, or comma-separated names (see the error for the list)"),
           out: Optional[Path] = typer.Option(None, help="directory for the new runs (default: RUN/interventions/freeze)"),
           optimizer: str = typer.Option("fresh", help="fresh AdamW state, or carry the moments of resume.safetensors"),
           as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
           progress: bool = typer.Option(False, help="show a progress bar per continuation")):
    """Seed 000's freeze-and-continue: freeze a component at a checkpoint, train on, did it grok?"""
    from . import interventions as iv
    from .runs import load_run

    def show(res):
        if not as_json:
            typer.echo(f"from {res.from_step} {res.name:16s} trainable {res.trainable_params}/{res.total_params}  "
                       f"final test acc {res.final_test_acc:.3f} (max {res.max_test_acc:.3f})  "
                       f"grokked at {res.grokking_step}")

    try:
        run = load_run(run_dir)
        table = iv.freeze_sweep(run, _ints(from_step), interventions, steps,
                                out_dir=out or run.path / "interventions" / "freeze", optimizer=optimizer,
                                progress=progress, on_result=show)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        _fail(str(e))
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
               out: Optional[Path] = typer.Option(None, help="directory for both arms "
                                                  "(default: RECIPIENT/interventions/transplant_STEP)"),
               as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Copy a donor's neurons into a recipient checkpoint, train on, compare with an untouched control."""
    from . import interventions as iv
    from .runs import load_run

    try:
        d, r = load_run(donor), load_run(recipient)
        d_step = d.resolve_step(donor_step)
        res = iv.transplant_experiment(d, d_step, r, recipient_step, steps, neurons=_ints(neurons),
                                       freqs=_ints(freqs), layer=layer,
                                       out_dir=out or r.path / "interventions" / f"transplant_{recipient_step}")
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(f"moved {res['n_neurons']} neurons from {d.path} step {d_step} into {r.path} step {recipient_step}")
    typer.echo(f"right after: train acc {res['after_transplant']['train_acc']:.3f}, "
               f"test acc {res['after_transplant']['test_acc']:.3f}")
    for arm in ("transplant", "control"):
        a = res[arm]
        typer.echo(f"{arm:10s} grokked at {a['grokking_step']}, final test acc {a['final_test_acc']:.3f} ({a['path']})")


if __name__ == "__main__":
    app()
