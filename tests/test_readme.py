"""README's code runs as written: its Python blocks (in order, in one namespace, as a reader
would paste them) and its cheap `mechgrok` shell lines, on a demo-like run at the path README
uses (runs/demo). The run is the session's grokked a+b mod 23 run, copied: training the real demo
takes minutes; a block marked `<!-- readme-test: skip (why) -->` is left out with its reason."""

import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mechgrok as mg
from mechgrok.cli import app
from mechgrok.presets import DEMO_TIME

README = Path(__file__).resolve().parent.parent / "README.md"
# Shell commands run by the test; the others train for minutes (demo, train, freeze, transplant,
# sweep) and are covered by tests/test_cli.py and the population tests through the same code.
CHEAP_COMMANDS = {"info", "presets", "analyze", "spectrum", "ablate", "plot", "import", "grids", "compare"}


def readme_blocks() -> list[tuple[str, str, bool]]:
    """(language, code, marked skip) of every fenced block of README, in order."""
    pattern = r"(<!-- readme-test: skip[^>]*-->\n)?```(\w*)\n(.*?)```"
    return [(m.group(2), m.group(3), m.group(1) is not None) for m in re.finditer(pattern, README.read_text(), re.S)]


def test_readme_states_the_measured_demo_time():
    assert DEMO_TIME in " ".join(README.read_text().split())


def test_readme_code_runs_as_written(grokked_run, tl_demo_bundle, tmp_path, monkeypatch):
    import plotly.graph_objects as go

    def no_browser(self, *a, **k):  # PNG export starts Chromium: seconds per figure
        raise RuntimeError("PNG export switched off in the README test")

    monkeypatch.setattr(go.Figure, "write_image", no_browser)
    shutil.copytree(grokked_run.path, tmp_path / "runs" / "demo")
    shutil.copy(tl_demo_bundle[0] / "grokking.pth", tmp_path / "grokking_demo.pth")
    monkeypatch.chdir(tmp_path)

    runner, namespace, ran = CliRunner(), {}, {"python": 0, "shell": 0}
    blocks = readme_blocks()
    assert sum(lang == "python" for lang, _, _ in blocks) >= 4
    for lang, code, skipped in blocks:
        if skipped:
            continue
        if lang == "python":
            exec(compile(code, str(README), "exec"), namespace)
            ran["python"] += 1
        elif lang == "bash":
            for line in code.splitlines():
                args = shlex.split(line, comments=True)
                if len(args) >= 2 and args[0] == "mechgrok" and args[1] in CHEAP_COMMANDS:
                    r = runner.invoke(app, args[1:])
                    assert r.exit_code == 0, f"README line {line!r} failed:\n{r.output}"
                    ran["shell"] += 1
    assert ran["python"] >= 4 and ran["shell"] >= 8, ran

    run, short, imported = namespace["run"], namespace["short"], namespace["imported"]
    assert short.steps[-1] == 50 and short.config.task.p == 53  # the demo preset, shortened
    last = run.metrics.iloc[-1]
    assert imported.metrics["test_acc"].item() == pytest.approx(last["test_acc"], abs=1e-6)
    tl_demo = mg.load_run("runs/tl_demo")
    assert tl_demo.config.task.train_idx == tuple(tl_demo_bundle[1]["train_indices"].tolist())
    assert (Path("runs/demo") / "progress.csv").exists() and (Path("runs/transfer") / "config.json").exists()


def test_every_skip_marker_stands_right_before_a_code_block():
    # a marker left behind when its block moved would silently skip whatever block came next
    lines = README.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("<!-- readme-test: skip"):
            assert i + 1 < len(lines) and lines[i + 1].startswith("```"), f"README line {i + 1}: marker without a block"
