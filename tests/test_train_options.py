"""The sft step's device choices as pure functions (batching, attention, MFU) and TRL's own names under
``trl:`` (checked at plan time against the real SFTConfig; used by a real training run)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app
from realchat.training.throughput import flops_per_token, mfu, peak_bf16_tflops, throughput
from realchat.training.trainer import choose_batching, micro_batches, pick_attention

runner = CliRunner()


@pytest.mark.parametrize("device, flash_installed, half, expected_attn, expected", [
    ("cuda", True, True, "flash_attention_2", "packed-varlen"),   # varlen kernel: packed, full micro-batches
    ("cuda", False, True, None, "padded"),                        # CUDA without varlen: padded batches
    ("cuda", True, False, None, "padded"),                        # flash-attn needs bf16/fp16
    ("cpu", True, False, None, "packed-block-diagonal"),          # CPU: today's rule
    ("cpu", False, False, None, "packed-block-diagonal"),
])
def test_batching_per_device(device, flash_installed, half, expected_attn, expected):
    attn = pick_attention(device, half, flash_installed)
    assert attn == expected_attn
    loaded = attn or "sdpa"  # what transformers loads when asked for nothing
    batching = choose_batching(True, device, loaded)
    assert batching == expected
    micro = micro_batches(batching != "padded", 8, 2, loaded)
    # full micro-batches everywhere except packed rows under a dense block-diagonal mask (CPU)
    assert micro == ((1, 16) if batching == "packed-block-diagonal" else (8, 2))


def test_mfu_formula():
    # SmolLM2-135M: 134.5M parameters, 30 layers, width 576; 2,048-token sequences
    fpt = flops_per_token(134_515_008, 30, 576, 2048)
    assert fpt == 6 * 134_515_008 + 12 * 30 * 576 * 2048
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_bf16_tflops("NVIDIA L4") == 121.0 and peak_bf16_tflops("NVIDIA L40S") == 362.0
    assert peak_bf16_tflops("Some Future GPU") is None and peak_bf16_tflops(None) is None
    # 16,759 tokens/s on one H100 (issue 12) is 2.1 % of the peak
    assert mfu(16_759, fpt, 989.0) == pytest.approx(16_759 * fpt / 989e12)
    assert round(mfu(16_759, fpt, 989.0), 3) == 0.021
    assert mfu(16_759, fpt, 989.0, devices=2) == pytest.approx(mfu(16_759, fpt, 989.0) / 2)
    cpu = throughput(1000, 2.0, n_params=10, n_layers=1, hidden=4, seq_len=8, device_type="cpu",
                     device_name=None, bf16=False)
    assert cpu["tokens_per_s"] == 500.0 and cpu["mfu"] is None and cpu["device"] == "cpu"
    fp32 = throughput(1000, 2.0, n_params=10, n_layers=1, hidden=4, seq_len=8, device_type="cuda",
                      device_name="NVIDIA H100 80GB HBM3", bf16=False)
    assert fp32["mfu"] is None  # the table holds bf16 peaks only: no guess for other dtypes


@pytest.fixture
def recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, tmp_path):
    def make(**train):
        src = write_json_array(sharegpt_records[:40])
        path = make_recipe(src, filters=[{"op": "shape"}, {"op": "split", "max_tokens": 256}], name="to")
        doc = yaml.safe_load(path.read_text())
        doc["steps"]["usergpt"] = {
            "kind": "sft", "loss_on": "user", "base_model": str(tiny_model_dir), "dataset": "curate",
            "max_length": 256, "max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 5e-3,
            "warmup_ratio": 0.0, "save_steps": 10, **train,
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path
    return make


@pytest.mark.parametrize("trl, message", [
    ({"lerning_rate_x": 1}, "steps.usergpt.trl.lerning_rate_x: unknown key: not a field of TRL's SFTConfig"),
    ({"optimm": "adamw_torch"}, "did you mean 'optim'?"),
    ({"max_length": 512}, "steps.usergpt.trl.max_length: 'max_length' is a key of the step itself"),
    ({"output_dir": "/tmp/x"}, "steps.usergpt.trl.output_dir: 'output_dir' is set by RealChat"),
])
def test_unknown_or_misplaced_trl_keys_are_exit_2_errors_at_plan_time(recipe, trl, message):
    result = runner.invoke(app, ["plan", str(recipe(trl=trl))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in " ".join(result.output.split()), result.output


def test_report_to_an_integration_that_is_not_installed_is_an_error(recipe):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    result = runner.invoke(app, ["plan", str(recipe(report_to="wandb"))])
    assert result.exit_code == 2 and "steps.usergpt.report_to: report_to wandb" in " ".join(result.output.split())


def test_trl_options_reach_the_trainer_and_stats_record_dtype_and_throughput(recipe, tmp_path):
    """A real (tiny) run: ``trl:`` values reach SFTConfig (max_grad_norm, optim), ``bf16: false`` is
    accepted, the model is saved in the dtype it trained in, and tokens/s is recorded."""
    from transformers import TrainerCallback

    from realchat.steps import registry

    seen = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen.update(max_grad_norm=args.max_grad_norm, optim=getattr(args.optim, "value", args.optim), report_to=args.report_to)

    sft = registry.get("sft")
    original = sft.run
    sft.run = lambda ctx, out, **k: original(ctx, out, callbacks=[Spy()])
    try:
        path = recipe(bf16=False, trl={"max_grad_norm": 0.25, "optim": "adamw_torch", "neftune_noise_alpha": 5})
        result = runner.invoke(app, ["build", str(path), "--no-progress", "--no-push"])
    finally:
        del sft.run
    assert result.exit_code == 0, result.output
    assert seen["max_grad_norm"] == 0.25 and seen["optim"] == "adamw_torch" and seen["report_to"] in ([], "none", ["none"])
    out = tmp_path / "runs" / "to" / "usergpt"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dtype"] == "float32" and stats["bf16"] is False
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert stats["tokens_per_s"] > 0 and stats["mfu"] is None  # CPU: no MFU
    assert stats["throughput"]["tokens"] > 0 and stats["throughput"]["device"] == "cpu"
    card = (out / "README.md").read_text()
    assert "| throughput | " in card and "tokens/s on cpu" in card and "saved in float32" in card
