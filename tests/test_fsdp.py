"""FSDP for real: ``torchrun --nproc_per_node 2`` on CPUs (gloo) of a tiny sft step with
``fsdp: full_shard auto_wrap``. The saved model is the trained one, gathered from both ranks' shards;
a launch killed with SIGKILL after a checkpoint resumes from that checkpoint; a one-process build with
``fsdp:`` stops before anything runs, with the launch command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app

ROOT = Path(__file__).parents[1]


def _recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, **sft) -> Path:
    src = write_json_array(sharegpt_records[:60])
    path = make_recipe(src, filters=[{"op": "shape"}, {"op": "split", "max_tokens": 256}], name="fs")
    doc = yaml.safe_load(path.read_text())
    doc["steps"]["usergpt"] = {
        "kind": "sft", "loss_on": "user", "base_model": str(tiny_model_dir), "dataset": "curate",
        "max_length": 256, "max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 5e-3,
        "warmup_ratio": 0.0, "lr_scheduler_type": "constant", "save_steps": 2, "packing": False,
        "fsdp": "full_shard auto_wrap", **sft,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def fsdp_recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir) -> Path:
    """Checkpoints as FSDP's sharded state dict (torch.distributed.checkpoint folders): the final save
    must still write one loadable model."""
    path = _recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir,
                   trl={"fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT"}})
    assert CliRunner().invoke(app, ["build", str(path), "--only", "curate", "--no-progress", "--no-push"]).exit_code == 0
    return path


def _command(path: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(ROOT / "tests" / "fsdp_probe.py"), "build", str(path), "--only", "usergpt", "--no-push"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "REALCHAT_PROGRESS_INTERVAL": "3600",
            "REALCHAT_PROBE_CPU_FSDP": "1", **extra}


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its ranks in sessions of their own, so a process
    group kill would miss them)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it, children first found, all at once."""
    for victim in [pid, *_descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_fsdp_two_ranks_save_the_gathered_trained_model(fsdp_recipe, tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    gathered_file = tmp_path / "gathered.pt"
    proc = subprocess.run(_command(fsdp_recipe), capture_output=True, text=True, cwd=tmp_path, timeout=900,
                          env=_env(REALCHAT_PROBE_GATHER=str(gathered_file)))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    out = tmp_path / "runs" / "fs" / "usergpt"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["world_size"] == 2 and stats["steps"] == 4 and stats["precision"] == "fp32"

    probe = torch.load(gathered_file)
    # each rank held a shard (DTensors, about half the elements), not a replica
    for held in probe["ranks"]:
        assert held["sharded"] and held["local_elements"] < 0.6 * held["full_elements"], probe["ranks"]
    # the checkpoints were sharded (one distributed-checkpoint folder each for weights and optimizer)
    assert {"checkpoint-4/pytorch_model_fsdp_0", "checkpoint-4/optimizer_0", "checkpoint-4/trainer_state.json"} <= set(
        probe["checkpoint_files"]), probe["checkpoint_files"]
    assert "checkpoint-4/model.safetensors" not in probe["checkpoint_files"]
    gathered = probe["state_dict"]
    saved = load_file(out / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert set(saved) == set(base)
    for name, tensor in saved.items():
        assert torch.equal(tensor, gathered[name]), name  # the file holds exactly the gathered trained weights
    moved = [n for n in saved if not torch.equal(saved[n], base[n])]
    assert len(moved) == len(saved), sorted(set(saved) - set(moved))  # every weight trained, norms included

    # it loads as a model whose forward is the gathered model's
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    reference.load_state_dict(gathered)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert (out / "generation_config.json").exists() and (out / "tokenizer.json").exists()
    assert not (out / "training_args.bin").exists()


def test_fsdp_launch_killed_after_a_checkpoint_resumes_from_it(make_recipe, write_json_array, sharegpt_records,
                                                                 tiny_model_dir, tmp_path):
    from realchat.engine.build import plan
    from realchat.recipe.load import load_recipe
    from realchat.training.checkpoints import why_incomplete

    path = _recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, max_steps=6)
    assert CliRunner().invoke(app, ["build", str(path), "--only", "curate", "--no-progress", "--no-push"]).exit_code == 0
    p = next(x for x in plan(load_recipe(path)) if x.name == "usergpt")
    from realchat.engine.outputs import work_dir

    loaded = load_recipe(path)
    checkpoints = work_dir(loaded.run_root, loaded.name, "usergpt", p.fingerprint) / "checkpoints"
    first = checkpoints / "checkpoint-2"
    launch = subprocess.Popen(_command(path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path, env=_env(REALCHAT_PROBE_SLOW_AFTER="2"), start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (first.is_dir() and why_incomplete(first) is None):
            assert launch.poll() is None, launch.stderr.read()[-6000:]
            assert time.monotonic() < deadline, "no complete checkpoint-2"
            time.sleep(0.2)
        _kill_tree(launch.pid)  # the launcher and both ranks, as a lost node would
    finally:
        _kill_tree(launch.pid)
        launch.wait()
    assert not (p.output / "manifest.json").exists()
    # what FSDP wrote: the full optimizer state as accelerate's optimizer.bin, the weights as the trainer's file
    # and accelerate's pytorch_model_fsdp.bin
    names = {f.name for f in first.iterdir()}
    assert {"optimizer.bin", "pytorch_model_fsdp.bin", "trainer_state.json"} <= names, names
    assert not (checkpoints / "checkpoint-4").exists() or why_incomplete(checkpoints / "checkpoint-4") is not None

    proc = subprocess.run(_command(path), capture_output=True, text=True, cwd=tmp_path, timeout=900, env=_env())
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    stats = json.loads((p.output / "stats.json").read_text())
    # resumed from the checkpoint written before the kill (steps 3 and 4 took a second each, so no later one
    # was complete), its FSDP optimizer.bin accepted, and trained on to step 6
    assert stats["resumed_from"] == str(first), log[-5000:]
    assert stats["steps"] == 6 and stats["world_size"] == 2
    assert f"resuming from {first}" in " ".join(log.split()), log[-5000:]
    assert "checkpoint-2 (" not in log


def test_fsdp_in_a_one_process_build_stops_before_anything_runs(make_recipe, write_json_array, sharegpt_records,
                                                                  tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    path = _recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir)
    result = CliRunner().invoke(app, ["build", str(path), "--no-progress", "--no-push"])
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "steps.usergpt.fsdp" in out and "torchrun --nproc_per_node N -m realchat.cli build" in out
    assert "Traceback" not in out
    assert not (tmp_path / "runs" / "fs" / "curate").exists()  # curate did not run first


def test_lora_in_one_process_saves_the_merged_model(make_recipe, write_json_array, sharegpt_records, tiny_model_dir,
                                                    tmp_path, monkeypatch):
    """LoRA's save path (the adapter through the trainer, merged on the main process): a plain model
    folder, no adapter files, weights moved from the base."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    path = _recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, fsdp=None, method="lora",
                   lora={"r": 4, "alpha": 8, "dropout": 0.0})
    result = CliRunner().invoke(app, ["build", str(path), "--no-progress", "--no-push"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "fs" / "usergpt"
    assert not list(out.glob("adapter_*")) and (out / "model.safetensors").exists()
    saved, base = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert set(saved) == set(base)
    assert not torch.equal(saved["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(saved["model.norm.weight"], base["model.norm.weight"])  # LoRA leaves the norms alone
    AutoModelForCausalLM.from_pretrained(out)


def test_lora_under_fsdp_saves_the_merged_model(make_recipe, write_json_array, sharegpt_records, tiny_model_dir,
                                                tmp_path):
    """LoRA with ``fsdp:`` on 2 ranks: the trainer gathers the adapter, the main process merges it into a
    fresh copy of the base model."""
    import torch
    from safetensors.torch import load_file

    path = _recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, method="lora",
                   lora={"r": 4, "alpha": 8, "dropout": 0.0})
    assert CliRunner().invoke(app, ["build", str(path), "--only", "curate", "--no-progress", "--no-push"]).exit_code == 0
    proc = subprocess.run(_command(path), capture_output=True, text=True, cwd=tmp_path, timeout=900, env=_env())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    out = tmp_path / "runs" / "fs" / "usergpt"
    saved, base = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert set(saved) == set(base) and not list(out.glob("adapter_*"))
    assert not torch.equal(saved["model.layers.1.mlp.down_proj.weight"], base["model.layers.1.mlp.down_proj.weight"])
    assert torch.equal(saved["model.norm.weight"], base["model.norm.weight"])
