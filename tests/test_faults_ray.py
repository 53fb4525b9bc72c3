"""Ray's raylet dying under a Ray curate: one clear error, nothing kept, nothing left running.

The build runs as its own process (the test must not share its Ray runtime); once a task of the step
is running on a Ray worker, the test SIGKILLs the raylet (as the OOM killer would). The build must
stop with one line saying what died, that nothing half-written was kept and that a rerun redoes the
step (exit 2, no traceback), every process Ray started for it must be gone, and the rerun must build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[1]


def _build(recipe: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "realchat.cli", "build", str(recipe), "--no-progress", "--no-push"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _kill_raylet_once_a_task_runs(build: subprocess.Popen, seen: set[int]) -> bool:
    """Poll the build's processes (recording them in ``seen``); SIGKILL the raylet as soon as a worker
    runs one of the step's tasks (Ray titles it ``ray::<function>``). Whether it was killed."""
    deadline = time.monotonic() + 240
    while build.poll() is None and time.monotonic() < deadline:
        try:
            kids = psutil.Process(build.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return False
        cmds = {}
        for k in kids:
            seen.add(k.pid)
            try:
                cmds[k] = k.cmdline()
            except psutil.Error:
                continue
        if any(c and c[0].startswith("ray::_") for c in cmds.values()):
            raylet = [k for k, c in cmds.items() if c and Path(c[0]).name == "raylet"]
            if raylet:
                raylet[0].kill()
                return True
        time.sleep(0.05)
    return False


def test_raylet_killed_mid_curate_is_one_error_and_a_rerun_builds(write_json_array, sharegpt_records,
                                                                  tiny_tokenizer_dir, tmp_path):
    source = write_json_array(sharegpt_records[:400])
    doc = {"name": "raydie", "run_root": str(tmp_path / "runs"),
           "executor": {"kind": "ray", "num_cpus": 2, "shard_rows": 50},
           "steps": {"curate": {"kind": "curate", "source": {"path": str(source)},
                                "tokenizer": str(tiny_tokenizer_dir),
                                "filters": [{"op": "shape"}, {"op": "exact_dedup"}, {"op": "near_dedup"}]}}}
    recipe = tmp_path / "raydie.yaml"
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))

    seen: set[int] = set()
    build = _build(recipe)
    try:
        killed = _kill_raylet_once_a_task_runs(build, seen)
        out = build.communicate(timeout=240)[0].decode(errors="replace")
    finally:
        if build.poll() is None:
            os.killpg(build.pid, 9)
    assert killed, out[-3000:]
    assert build.returncode == 2, out[-3000:]
    assert "Traceback" not in out and "╭" not in out, out[-3000:]  # neither Python's nor rich's
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out[-3000:]
    assert "raylet" in errors[0] and "died" in errors[0] and "nothing half-written was kept" in errors[0]
    assert "rerun `realchat build`" in out

    # nothing kept: no finished step, no part or temporary folder in the run folder
    step = tmp_path / "runs" / "raydie" / "curate"
    assert not (step / "manifest.json").exists()
    left_files = [p.name for p in (tmp_path / "runs" / "raydie").iterdir() if p.name != ".lock"]
    assert left_files == [], left_files
    # nothing left running: every process Ray started for the build is gone (ray.shutdown)
    deadline = time.monotonic() + 30
    while (alive := [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, [(p, psutil.Process(p).cmdline()[:2]) for p in alive if psutil.pid_exists(p)]

    rerun = _build(recipe)
    out = rerun.communicate(timeout=300)[0].decode(errors="replace")
    assert rerun.returncode == 0, out[-3000:]
    assert json.loads((step / "manifest.json").read_text())["fingerprint"]
    assert (step / "stats.json").is_file()
