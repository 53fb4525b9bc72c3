"""Packed training keeps conversations apart: the batching rule, and the real collator + forward on a tiny model.

TRL packs conversations into padding-free rows (one flattened sequence, ``position_ids`` restarting at
each conversation, no attention mask). Only varlen kernels (flash-attention) read the boundaries; with
SDPA and eager attention (every CPU) the conversations are kept apart only if the model builds a
block-diagonal mask from the ``position_ids``. These tests pack two conversations into one row through
the collator and loss that SFTTrainer uses in training, and check that the second conversation's loss and
log-probabilities are those of the second conversation trained alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from realchat.training.chat_format import tokenize_with_mask
from realchat.training.trainer import choose_batching, is_varlen_attention, micro_batches, packed_documents_separate

FIRST = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Write a Python function that sorts a list."},
    {"role": "assistant", "content": "Use sorted(xs). The quick brown fox jumps over the lazy dog."},
    {"role": "user", "content": "Hello, how are you today? Write a Python function."},
    {"role": "assistant", "content": "I am fine, thank you. The quick brown fox."},
]
SECOND = [
    {"role": "user", "content": "Hello, how are you today?"},
    {"role": "assistant", "content": "I am fine, thank you."},
]


def test_batching_rule():
    # varlen kernels read cu_seq_lens: padding-free packing as TRL does it
    assert choose_batching(True, "cuda", "flash_attention_2") == "packed-varlen"
    assert choose_batching(True, "cuda", "kernels-community/flash-attn2") == "packed-varlen"
    assert choose_batching(True, "cuda", "kernels-community/vllm-flash-attn3") == "packed-varlen"
    # CUDA without varlen: padded batches (never 1-row micro-batches, never cross-document attention);
    # on CPU today's rule (whichever layout measured faster)
    assert choose_batching(True, "cuda", "sdpa") == "padded"
    assert choose_batching(True, "cuda", "eager") == "padded"
    assert choose_batching(True, "cuda", None) == "padded"
    assert choose_batching(True, "cpu", "sdpa") in ("packed-block-diagonal", "padded")
    assert choose_batching(True, "cpu", "sdpa") == choose_batching(True, "cpu", "eager")
    assert choose_batching(True, "cpu", None) == choose_batching(True, "cpu", "sdpa")
    # packing off: padded, whatever the attention
    for device in ("cpu", "cuda"):
        for attn in ("sdpa", "eager", "flash_attention_2", None):
            assert choose_batching(False, device, attn) == "padded"
    assert not is_varlen_attention("flex_attention") and not is_varlen_attention(None)
    # a packed row without varlen attention is one row per forward pass, the batch made up by accumulation
    assert micro_batches(True, 4, 2, "sdpa") == (1, 8)
    assert micro_batches(True, 4, 2, "flash_attention_2") == (4, 2)


def _trainer(model_dir: Path, attn: str, out: Path, rows: list[dict[str, list[int]]]) -> Any:
    """An SFTTrainer as train_sft makes one for a packed stage: TRL builds the packed rows and the collator."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    args = SFTConfig(output_dir=str(out), max_length=256, packing=True, packing_strategy="bfd",
                     per_device_train_batch_size=1, report_to="none", disable_tqdm=True, save_strategy="no",
                     dataloader_pin_memory=False, bf16=False, seed=0)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_second_packed_conversation_sees_only_itself(attn, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    first, second = (tokenize_with_mask(tok, c, "assistant") for c in (FIRST, SECOND))
    assert len(first["input_ids"]) > len(second["input_ids"])  # best-fit decreasing puts the longer one first
    trainer = _trainer(tiny_model_dir, attn, tmp_path, [first, second])
    model = trainer.model
    assert model.config._attn_implementation == attn
    assert not is_varlen_attention(attn) and packed_documents_separate(model)

    packed_rows = list(trainer.train_dataset)
    assert len(packed_rows) == 1, "both conversations fit one packed row"
    row = packed_rows[0]
    n1, n2 = len(first["input_ids"]), len(second["input_ids"])
    assert row["seq_lengths"] == [n1, n2] and row["input_ids"] == first["input_ids"] + second["input_ids"]

    collate = trainer.data_collator  # the collator SFTTrainer trains with: padding-free, position_ids restarting
    packed = collate([row])
    assert "attention_mask" not in packed and packed["input_ids"].shape == (1, n1 + n2)
    assert packed["position_ids"][0, n1] == 0
    alone = collate([{"input_ids": row["input_ids"][n1:], "labels": row["labels"][n1:], "seq_lengths": [n2]}])
    assert int((packed["labels"][0, n1:] != -100).sum()) > 0

    # 1) the training loss, as SFTTrainer.compute_loss computes it, on the second conversation's tokens only
    only_second = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in packed.items()}
    only_second["labels"][0, :n1] = -100
    model.train()
    with torch.no_grad():
        loss_packed = trainer.compute_loss(model, only_second)
        loss_alone = trainer.compute_loss(model, dict(alone))
    assert torch.allclose(loss_packed, loss_alone, atol=1e-4), (loss_packed.item(), loss_alone.item())

    # 2) every per-token log-probability of the second conversation, from the fused forward TRL trains with
    with torch.no_grad():
        lp_packed = model(**packed, use_cache=False, fused_lm_head=True).log_probs[0, n1:]
        lp_alone = model(**alone, use_cache=False, fused_lm_head=True).log_probs[0]
    assert lp_packed.shape == lp_alone.shape
    assert torch.allclose(lp_packed, lp_alone, atol=1e-4), (lp_packed - lp_alone).abs().max().item()

    # the check can fail: the same packed row run with a cache (transformers then skips its packed-sequence
    # mask, plain causal attention) lets the second conversation attend to the first, and the logits move
    with torch.no_grad():
        ids, pos = packed["input_ids"], packed["position_ids"]
        crossed = model(input_ids=ids, position_ids=pos, use_cache=True).logits[0, n1:]
        own = model(input_ids=ids[:, n1:], position_ids=pos[:, n1:], use_cache=True).logits[0]
    assert (crossed - own).abs().max() > 1e-2
