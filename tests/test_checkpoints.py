"""Torn training checkpoints (kill -9 or a full disk while ``checkpoint-N`` is written): a rerun
resumes from the newest complete one, and ``--force`` starts clean."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app
from realchat.training.checkpoints import newest_complete, why_incomplete

runner = CliRunner()


@pytest.fixture
def sft_recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir) -> Path:
    src = write_json_array(sharegpt_records[:60])
    path = make_recipe(src, filters=[{"op": "shape"}, {"op": "split", "max_tokens": 256}], name="ck")
    doc = yaml.safe_load(path.read_text())
    doc["steps"]["usergpt"] = {
        "kind": "sft", "loss_on": "user", "base_model": str(tiny_model_dir), "dataset": "curate",
        "max_length": 256, "max_steps": 6, "per_device_train_batch_size": 2, "learning_rate": 5e-3,
        "warmup_ratio": 0.0, "lr_scheduler_type": "constant", "save_steps": 2,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _interrupted_at_step_3(recipe: Path):
    """Train until step 3 (checkpoint-2 written whole), then stop as Ctrl-C would; the plan entry."""
    from transformers import TrainerCallback

    from realchat.engine.build import build_step, graph_of, plan
    from realchat.engine.context import StepContext
    from realchat.recipe.load import load_recipe
    from realchat.steps import registry

    assert runner.invoke(app, ["build", str(recipe), "--only", "curate", "--no-progress", "--no-push"]).exit_code == 0
    loaded = load_recipe(recipe)
    graph = graph_of(loaded)
    p = next(x for x in plan(loaded, graph) if x.name == "usergpt")

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    sft = registry.get("sft")
    original = sft.run
    ctx = StepContext(loaded, p.node, p.fingerprint, show_progress=False)
    try:
        sft.run = lambda ctx, out, **k: original(ctx, out, callbacks=[Interrupt()])
        with pytest.raises(KeyboardInterrupt):
            build_step(loaded, graph, p, ctx)
    finally:
        del sft.run
    return p, ctx.work_dir() / "checkpoints"


def _tear(checkpoints: Path) -> tuple[Path, Path]:
    """Two torn checkpoints made by hand beside the complete checkpoint-2:
    checkpoint-4 as a full disk leaves it (everything but trainer_state.json), checkpoint-6 as kill -9
    during the first file leaves it (config files only)."""
    good = checkpoints / "checkpoint-2"
    assert why_incomplete(good) is None
    full_disk = checkpoints / "checkpoint-4"
    shutil.copytree(good, full_disk)
    (full_disk / "trainer_state.json").unlink()
    killed = checkpoints / "checkpoint-6"
    killed.mkdir()
    shutil.copy(good / "config.json", killed / "config.json")
    assert why_incomplete(full_disk) == "no trainer_state.json" and why_incomplete(killed) == "no trainer_state.json"
    return full_disk, killed


def test_rerun_resumes_from_newest_complete_checkpoint_and_drops_torn_ones(sft_recipe):
    p, checkpoints = _interrupted_at_step_3(sft_recipe)
    full_disk, killed = _tear(checkpoints)

    result = runner.invoke(app, ["build", str(sft_recipe), "--no-progress", "--no-push"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "dropping torn checkpoint" in out and "checkpoint-6 (no trainer_state.json)" in out
    stats = json.loads((p.output / "stats.json").read_text())
    assert stats["resumed_from"].endswith("checkpoint-2") and stats["steps"] == 6


def test_force_starts_clean_despite_torn_checkpoints(sft_recipe):
    p, checkpoints = _interrupted_at_step_3(sft_recipe)
    _tear(checkpoints)
    result = runner.invoke(app, ["build", str(sft_recipe), "--only", "usergpt", "--force", "--no-progress", "--no-push"])
    assert result.exit_code == 0, result.output
    stats = json.loads((p.output / "stats.json").read_text())
    assert stats["resumed_from"] is None and stats["steps"] == 6


def test_complete_means_state_weights_and_optimizer(tmp_path):
    ck = tmp_path / "checkpoint-8"
    ck.mkdir()
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 8}))
    assert why_incomplete(ck) == "no model weights"
    (ck / "model.safetensors").write_bytes(b"x" * 16)
    assert why_incomplete(ck) == "no optimizer state"
    (ck / "optimizer.pt").write_bytes(b"x")
    assert why_incomplete(ck) is None
    (ck / "trainer_state.json").write_text('{"global_step": 8, "log_hi')  # torn mid-write
    assert why_incomplete(ck) == "trainer_state.json unreadable (JSONDecodeError)"
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
    assert why_incomplete(ck) == "trainer_state.json is not for step 8"
    assert newest_complete(tmp_path) is None and not ck.exists()  # the torn one is gone
    assert newest_complete(tmp_path / "missing") is None


def test_full_disk_while_a_checkpoint_is_written_is_one_line_and_the_rerun_resumes(sft_recipe, monkeypatch):
    """The optimizer state of checkpoint-4 goes to /dev/full, a real device that fails every write
    with ENOSPC (what a full disk does to torch.save): one line and exit 2, then a rerun resumes."""
    import torch
    from transformers import Trainer

    original = Trainer._save_optimizer_and_scheduler

    def save_to_full_disk(self, output_dir):
        if self.state.global_step == 4:
            torch.save(self.optimizer.state_dict(), "/dev/full")
        return original(self, output_dir)

    assert runner.invoke(app, ["build", str(sft_recipe), "--only", "curate", "--no-progress", "--no-push"]).exit_code == 0
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save_to_full_disk)
    result = runner.invoke(app, ["build", str(sft_recipe), "--no-progress", "--no-push"])
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "writing training checkpoint" in out and "checkpoint-4 failed (RuntimeError:" in out
    assert "resumes from the newest complete checkpoint" in out and "Traceback" not in out
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", original)

    result = runner.invoke(app, ["build", str(sft_recipe), "--no-progress", "--no-push"])
    assert result.exit_code == 0, result.output
    assert "dropping torn checkpoint" in " ".join(result.output.split())
    out_dir = Path(yaml.safe_load(sft_recipe.read_text())["run_root"]) / "ck" / "usergpt"
    stats = json.loads((out_dir / "stats.json").read_text())
    assert stats["resumed_from"].endswith("checkpoint-2") and stats["steps"] == 6


def _state(ck: Path, step: int) -> None:
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_fsdp_sharded_checkpoint_written_by_torch_distributed_checkpoint_counts_once_its_metadata_is_there(tmp_path):
    """FSDP's sharded state dict: accelerate writes ``pytorch_model_fsdp_0/`` and ``optimizer_0/`` with
    ``torch.distributed.checkpoint`` (real writes here, one process); ``.metadata`` is written last, so a
    folder without it is torn."""
    import torch
    import torch.distributed.checkpoint as dcp

    ck = tmp_path / "checkpoint-4"
    ck.mkdir()
    _state(ck, 4)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    assert why_incomplete(ck) == "no model weights"
    dcp.save({"model": model.state_dict()}, checkpoint_id=ck / "pytorch_model_fsdp_0")
    assert why_incomplete(ck) == "no optimizer state"
    dcp.save({"optimizer": optimizer.state_dict()}, checkpoint_id=ck / "optimizer_0")
    assert (ck / "optimizer_0" / ".metadata").is_file() and any((ck / "optimizer_0").glob("*.distcp"))
    assert why_incomplete(ck) is None
    (ck / "optimizer_0" / ".metadata").unlink()  # killed before the coordinator finished
    assert why_incomplete(ck) == "no optimizer state"
    (ck / "pytorch_model_fsdp_0" / ".metadata").unlink()
    assert why_incomplete(ck) == "no model weights"


def test_fsdp_full_and_deepspeed_layouts(tmp_path):
    """FSDP with a full state dict: accelerate's ``pytorch_model_fsdp.bin`` and ``optimizer.bin``
    (real torch.save files; the 2-process launch in tests/test_fsdp.py writes and resumes them for real);
    DeepSpeed's ``global_step<N>/`` folder, names as DeepSpeed's save_checkpoint writes them (DeepSpeed
    is not installable without CUDA here, so this layout is made by hand)."""
    import torch

    full = tmp_path / "checkpoint-2"
    full.mkdir()
    _state(full, 2)
    torch.save({"w": torch.ones(2)}, full / "pytorch_model_fsdp.bin")
    assert why_incomplete(full) == "no optimizer state"
    torch.save({"state": {}}, full / "optimizer.bin")
    assert why_incomplete(full) is None
    (full / "optimizer.bin").write_bytes(b"")  # created, never written
    assert why_incomplete(full) == "no optimizer state"
    torch.save({"state": {}}, full / "optimizer.bin")

    ds = tmp_path / "checkpoint-6"
    (ds / "global_step6").mkdir(parents=True)
    _state(ds, 6)
    (ds / "latest").write_text("global_step6")
    torch.save({"module": {}}, ds / "global_step6" / "mp_rank_00_model_states.pt")
    assert why_incomplete(ds) == "no optimizer state"
    torch.save({"optimizer_state_dict": {}}, ds / "global_step6" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert why_incomplete(ds) is None
    assert newest_complete(tmp_path) == ds

    (ds / "global_step6" / "mp_rank_00_model_states.pt").unlink()  # ZeRO-3 with no weights written: torn
    assert why_incomplete(ds) == "no model weights"
    assert newest_complete(tmp_path) == full and not ds.exists()
