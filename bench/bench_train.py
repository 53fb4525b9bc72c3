"""Benchmark: training tokens per second on SmolLM2, packed rows vs TRL's padded batching, documents kept apart.

Same conversations (real ShareGPT, UserGPT's user-turn loss mask), same model, same steps and batch
size; prints non-padding tokens trained per second for both and their ratio. Both layouts keep every
conversation apart: padded rows hold one conversation each; packed rows (TRL's best-fit decreasing,
padding-free) rely, without flash-attention, on the block-diagonal causal mask transformers builds from
the restarting ``position_ids`` (checked on the loaded model before timing). The packed side is laid out
as training lays it out (``realchat.training.trainer.micro_batches``: one packed row per forward pass without
varlen attention). The faster layout on CPU is what ``realchat.training.trainer.choose_batching`` picks there.
Not a test: figures vary with the machine.

    python bench/bench_train.py [--steps 3] [--batch 2] [--max-length 2048]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--conversations", type=int, default=400)
    ap.add_argument("--only", choices=["padded", "packed"], default=None, help="Run one side only.")
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from realchat.training.chat_format import as_user_simulator, tokenize_with_mask
    from realchat.curation.conversations import normalize
    from realchat.models import materialize_model
    from realchat.recipe.base import DEFAULT_MODEL, DEFAULT_USER_SYSTEM_PROMPT
    from realchat.curation.sources import DEFAULT_ROLES, SourceConfig, open_source
    from realchat.training.trainer import choose_batching, micro_batches, packed_documents_separate

    torch.set_num_threads(torch.get_num_threads())
    path = materialize_model(DEFAULT_MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    records, _ = open_source(SourceConfig(limit=args.conversations * 2), Path("."))
    rows = []
    for rec in records:
        row, _ = normalize(rec, dict(DEFAULT_ROLES), "id", "bench")
        if row is None:
            continue
        msgs = as_user_simulator(row["messages"], DEFAULT_USER_SYSTEM_PROMPT, None)
        r = tokenize_with_mask(tok, msgs, "user")
        if any(r["assistant_masks"]):
            rows.append(r)
        if len(rows) >= args.conversations:
            break
    lengths = sorted(min(len(r["input_ids"]), args.max_length) for r in rows)
    print(f"{len(rows)} conversations, median {lengths[len(lengths) // 2]} tokens (cut at {args.max_length})")

    results = {}
    for packing in [p for p in (False, True) if args.only is None or args.only == ("packed" if p else "padded")]:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        attn = model.config._attn_implementation
        if packing and not packed_documents_separate(model):
            raise SystemExit(f"{attn}: packed conversations would attend to each other; nothing to compare")
        # as the training stages do: without varlen attention a packed micro-batch is one row
        micro, accumulation = micro_batches(packing, args.batch, 1, attn)
        with tempfile.TemporaryDirectory() as out:
            cfg = SFTConfig(output_dir=out, max_length=args.max_length, packing=packing, packing_strategy="bfd",
                            per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
                            max_steps=args.steps, learning_rate=1e-5,
                            logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                            include_num_input_tokens_seen="non_padding", seed=0, shuffle_dataset=True,
                            bf16=torch.cuda.is_available(), dataloader_pin_memory=False)
            trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok)
            t0 = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - t0
            tokens = int(trainer.state.num_input_tokens_seen)
        name = f"packed {micro}x{accumulation} ({attn}, block-diagonal)" if packing else f"padded {micro}x{accumulation} ({attn})"
        results[packing] = tokens / seconds
        print(f"{name:40s} {tokens:>8,} tokens in {seconds:6.1f} s = {tokens / seconds:7.1f} tokens/s")
    if len(results) == 2:
        print(f"ratio packed / padded: {results[True] / results[False]:.2f}x")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"choose_batching(packing, {device}, {attn}) = {choose_batching(True, device, attn)}")


if __name__ == "__main__":
    main()
