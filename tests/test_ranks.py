"""Rank-safe launches: ``torchrun --nproc_per_node 2`` (gloo, CPU) of a tiny sft step. Both ranks
train together, only the main one writes the output, its card and manifest and publishes; both exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app


@pytest.fixture
def curated(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, tmp_path) -> Path:
    """A recipe with curate built and a tiny sft step to launch."""
    src = write_json_array(sharegpt_records[:60])
    path = make_recipe(src, filters=[{"op": "shape"}, {"op": "split", "max_tokens": 256}], name="rk")
    doc = yaml.safe_load(path.read_text())
    doc["steps"]["usergpt"] = {
        "kind": "sft", "loss_on": "user", "base_model": str(tiny_model_dir), "dataset": "curate",
        "max_length": 256, "max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 5e-3,
        "warmup_ratio": 0.0, "save_steps": 2, "eval_share": 0.1, "eval_steps": 2,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert CliRunner().invoke(app, ["build", str(path), "--only", "curate", "--no-progress"]).exit_code == 0
    return path


def launch(path: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1]),
           "REALCHAT_PROGRESS_INTERVAL": "3600"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "realchat.cli", "build", str(path), "--only", "usergpt", *extra],
        capture_output=True, text=True, env=env, timeout=900, cwd=cwd)


def test_torchrun_two_ranks_train_one_output_one_publish(curated, tmp_path):
    proc = launch(curated, tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]  # torchrun exits 0 only when every rank did
    assert "Traceback" not in log and "error:" not in log.lower(), log[-4000:]

    runs = tmp_path / "runs" / "rk"
    out = runs / "usergpt"
    stats = json.loads((out / "stats.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert stats["steps"] == 4 and stats["world_size"] == 2  # both ranks trained the same 4 steps
    assert manifest["step"] == "usergpt" and (out / "model.safetensors").exists() and (out / "README.md").exists()
    # one output, nothing half-written or left behind by either rank
    assert sorted(p.name for p in runs.iterdir() if p.name.startswith(".usergpt")) == []
    assert not (runs / ".work").exists() or not any((runs / ".work").iterdir())
    # one publish, by the main process
    publishes = [line for line in log.splitlines() if line.startswith("publish usergpt:")]
    assert len(publishes) == 1, log[-4000:]
    assert (tmp_path / "hub" / "realchat" / "rk-usergpt" / "model.safetensors").exists()
    assert log.count("step usergpt (sft)") == 1  # the other rank printed no step of its own


def test_a_held_lock_stops_the_launch_without_a_hang(curated, tmp_path):
    """Only the main process takes the run folder's lock; when another build holds it, the main exits 2
    with the holder named, and the other rank (which never waits for the lock) is stopped with it."""
    from realchat.engine.lock import run_lock

    with run_lock(tmp_path / "runs" / "rk"):
        proc = launch(curated, tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert log.count("another build holds") == 1, log[-4000:]
    assert not (tmp_path / "runs" / "rk" / "usergpt").exists()
