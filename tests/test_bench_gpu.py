"""bench/gpu.py runs anywhere: on a machine without CUDA it says so and times the CPU alone."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_gpu_bench_without_cuda_times_the_cpu_and_says_so(tmp_path):
    out = tmp_path / "gpu.json"
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--quick", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0].startswith("no CUDA device: timing the CPU only (1 threads)")
    result = json.loads(out.read_text())
    assert result["gpu"] is None and list(result["devices"]) == ["cpu"]
    cpu = result["devices"]["cpu"]
    assert set(cpu) == {"solo_step_ms", "solo_run_s", "ensemble_s", "ensemble_over_solo", "measure_run_s"}
    assert all(math.isfinite(v) and v > 0 for v in cpu.values())
    assert cpu["ensemble_over_solo"] == pytest.approx(cpu["ensemble_s"] / cpu["solo_run_s"])
    assert (result["members"], result["steps"], result["checkpoints"]) == (2, 4, 3)
