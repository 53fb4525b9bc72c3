"""The precision rule (fp32 master weights with bf16 compute by default on bf16 GPUs), the bf16 save of
a model trained that way, and the one-process guard for ``fsdp:`` / ``deepspeed:``."""

from __future__ import annotations

import json

import pytest

from realchat.errors import RealChatError, RecipeError
from realchat.training.launch import check_launch
from realchat.training.precision import Precision, choose_precision

GPU = dict(device_type="cuda", bf16_available=True)
OLD_GPU = dict(device_type="cuda", bf16_available=False)  # a V100 / T4
CPU = dict(device_type="cpu", bf16_available=False)


@pytest.mark.parametrize("precision, bf16, machine, expected", [
    ("auto", "auto", GPU, Precision("bf16-mixed", "float32", True, "bfloat16")),  # the default on an H100
    ("auto", "auto", OLD_GPU, Precision("fp32", "float32", False, "float32")),
    ("auto", "auto", CPU, Precision("fp32", "float32", False, "float32")),      # CPUs: nothing changes
    ("bf16-pure", "auto", GPU, Precision("bf16-pure", "bfloat16", True, "bfloat16")),
    ("fp32", "auto", GPU, Precision("fp32", "float32", False, "float32")),
    ("auto", True, GPU, Precision("bf16-mixed", "float32", True, "bfloat16")),   # bf16: true (old recipes)
    ("auto", "yes", GPU, Precision("bf16-mixed", "float32", True, "bfloat16")),
    ("auto", False, GPU, Precision("fp32", "float32", False, "float32")),       # bf16: false
    ("fp32", "no", GPU, Precision("fp32", "float32", False, "float32")),        # the same thing said twice
    ("bf16-mixed", True, GPU, Precision("bf16-mixed", "float32", True, "bfloat16")),
])
def test_precision_rule(precision, bf16, machine, expected):
    assert choose_precision(precision, bf16, **machine) == expected


@pytest.mark.parametrize("precision, bf16, machine, field, words", [
    ("bf16-mixed", "auto", CPU, "precision", "needs a GPU with bf16"),
    ("bf16-pure", "auto", OLD_GPU, "precision", "needs a GPU with bf16"),
    ("auto", True, CPU, "bf16", "needs a GPU with bf16"),
    ("bf16-pure", False, GPU, "precision", "say different things"),
    ("fp32", True, GPU, "precision", "say different things"),
])
def test_precision_errors(precision, bf16, machine, field, words):
    with pytest.raises(RealChatError) as e:
        choose_precision(precision, bf16, **machine)
    assert e.value.field == field and words in e.value.message and e.value.hint


def test_bf16_mixed_save_casts_float32_master_weights_to_bf16(tiny_model_dir, tmp_path):
    """What a bf16-mixed run saves: its float32 weights rewritten in bf16, the config saying so, the model
    loading in bf16 with each weight the bf16 rounding of the trained float32 one."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from realchat.training.saving import cast_weights

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    trained = load_file(folder / "model.safetensors")
    assert cast_weights(folder, "float32") is False  # already float32: nothing rewritten
    assert cast_weights(folder, "bfloat16") is True
    saved = load_file(folder / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in saved.values())
    assert all(torch.equal(saved[k], trained[k].to(torch.bfloat16)) for k in trained)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not list(folder.glob(".*.tmp"))


def test_sharding_keys_need_a_multi_process_launch():
    with pytest.raises(RecipeError) as e:
        check_launch("full_shard auto_wrap", None, 1, "r.yaml")
    assert e.value.field == "fsdp" and "torchrun --nproc_per_node N -m realchat.cli build r.yaml" in e.value.hint
    with pytest.raises(RecipeError) as e:
        check_launch(None, "ds.json", 1, "r.yaml")
    assert e.value.field == "deepspeed" and "accelerate launch --num_processes N" in e.value.hint
    check_launch("full_shard auto_wrap", None, 2, "r.yaml")  # a launch of 2: fine
    check_launch(None, None, 1, "r.yaml")
