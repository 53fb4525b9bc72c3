"""Saving a trained model so that it loads, under every launch (one process, DDP, FSDP, DeepSpeed).

Under FSDP or DeepSpeed ZeRO-3 no process holds the whole model: each has a shard (a DTensor, a
partitioned parameter). ``save_pretrained`` on rank 0 alone would write shards, or fail, and the
others would never join the gather. So the save goes through the trainer **on every rank**:
``Trainer.save_model`` gathers the full state dict (FSDP's ``get_model_state_dict`` with
``full_state_dict``, ZeRO-3's 16-bit consolidation) in a collective and the main process writes it.
Under FSDP that needs the plugin's ``FULL_STATE_DICT`` (transformers' default; a recipe that asked for
``SHARDED_STATE_DICT`` checkpoints gets it switched for the final save, since ``save_model`` writes
nothing at all with a sharded one). Then the main process alone finishes the folder:

* LoRA: ``save_model`` wrote the adapter; it is merged into a fresh float32 copy of the base model
  (``merge_and_unload``) there, since a sharded peft model cannot be merged in place;
* the weights in the dtype the run's precision saves (bf16 after bf16 compute, even though the master
  weights were float32: :mod:`realchat.training.precision`), rewritten file by file;
* the generation config (the tokenizer's end-of-turn and pad tokens) and the tokenizer.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from realchat.errors import RealChatError

#: Weight files a loadable model folder has (one of them).
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def save_trained(trainer: Any, out: Path, *, method: str, base_model: str, save_dtype: str, tokenizer: Any,
                 scratch: Path, eos_token_id: int | list[int] | None = None) -> None:
    """Write the trained model to ``out``; called on **every** rank (the gather is a collective), only
    the main process writes. ``scratch`` holds the LoRA adapter on its way to the merge."""
    if trainer.is_fsdp_enabled:
        plugin = trainer.accelerator.state.fsdp_plugin
        if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            plugin.set_state_dict_type("FULL_STATE_DICT")
    target = scratch / "adapter" if method == "lora" else out
    if trainer.is_world_process_zero() and method == "lora":
        shutil.rmtree(target, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(target))
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return
    if method == "lora":
        merge_adapter(base_model, target, out, save_dtype)
        shutil.rmtree(target, ignore_errors=True)
    elif not any((out / w).is_file() for w in MODEL_WEIGHTS):
        raise RealChatError(
            "the trainer saved no model weights (" + ", ".join(sorted(p.name for p in out.iterdir())) + ")",
            field="deepspeed" if trainer.is_deepspeed_enabled else "fsdp",
            hint="with DeepSpeed ZeRO-3 set zero_optimization.stage3_gather_16bit_weights_on_model_save: true "
                 "in the config file")
    else:
        cast_weights(out, save_dtype)
    (out / "training_args.bin").unlink(missing_ok=True)  # a pickle of the run's arguments: not part of a model
    write_generation_config(out, tokenizer, eos_token_id)
    tokenizer.save_pretrained(out)


def merge_adapter(base_model: str, adapter: Path, out: Path, save_dtype: str) -> None:
    """Base model + LoRA adapter → one plain model folder in ``save_dtype`` (merged in float32)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.to(getattr(torch, save_dtype)).save_pretrained(out, safe_serialization=True)


def cast_weights(folder: Path, dtype_name: str) -> bool:
    """Rewrite ``folder``'s safetensors files with every floating tensor in ``dtype_name`` (each file
    replaced in one rename, never half-written); the config says the new dtype. False when nothing
    needed it (the usual one-process float32 run)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = getattr(torch, dtype_name)
    changed = False
    sizes: dict[str, int] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as g:
            meta = g.metadata()
            tensors = {k: g.get_tensor(k) for k in g.keys()}  # noqa: SIM118 -- safe_open has no items()
        if any(t.is_floating_point() and t.dtype != target for t in tensors.values()):
            tensors = {k: t.to(target) if t.is_floating_point() else t for k, t in tensors.items()}
            tmp = f.with_name(f".{f.name}.tmp")
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, f)
            changed = True
        sizes[f.name] = sum(t.numel() * t.element_size() for t in tensors.values())
    if not changed:
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        doc = json.loads(index.read_text(encoding="utf-8"))
        doc.setdefault("metadata", {})["total_size"] = sum(sizes.values())
        _write_json(index, doc)
    config = folder / "config.json"
    if config.is_file():
        doc = json.loads(config.read_text(encoding="utf-8"))
        for key in ("dtype", "torch_dtype"):
            if key in doc:
                doc[key] = dtype_name
        doc.setdefault("dtype", dtype_name)
        _write_json(config, doc)
    return True


def write_generation_config(folder: Path, tokenizer: Any, eos_token_id: int | list[int] | None = None) -> None:
    """The saved model stops at its turns' ends (``eos_token_id``: EOS and each turn end that is one
    token; default the tokenizer's EOS) and pads with its pad token."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(folder)
    except OSError:
        from transformers import AutoConfig

        gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(folder))
    gen.eos_token_id = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(folder)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    from realchat.files import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
