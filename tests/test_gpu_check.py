"""bench/gpu_check.py runs on a machine without a GPU: with --cpu-smoke every phase runs small and the
GPU-only ones are said to be skipped; without it, it says what it skipped and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), *args], capture_output=True,
                          text=True, env=env, timeout=600, cwd=ROOT)


def test_gpu_check_cpu_smoke_prints_one_table_and_what_it_skipped(tiny_model_dir):
    proc = _run("--cpu-smoke", "--model", str(tiny_model_dir))
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("phase"))
    rows = {line.split("  ")[0]: line for line in lines[header + 2: header + 5]}
    assert set(rows) == {"train, padded", "train, step's choice", "simulate, local"}, proc.stdout
    assert "padded (sdpa, fp32)" in rows["train, padded"]
    for row in rows.values():  # a positive tokens/s figure in each row
        assert float(row.split()[-3].replace(",", "")) > 0, row
    assert "no GPU: skipped vLLM" in proc.stdout and "no GPU: skipped MFU and GPU busy %" in proc.stdout


def test_gpu_check_without_a_gpu_says_it_skipped_everything():
    proc = _run()
    assert proc.returncode == 0 and proc.stdout.startswith("no GPU: skipped training, local simulation and vLLM")
