"""Benchmark: training tokens per second on SmolLM2, packing (padding-free batches) vs TRL's padded batching.

Same conversations (real ShareGPT, UserGPT's user-turn loss mask), same model, same steps and batch
size; prints non-padding tokens trained per second for both and their ratio. Target (issue 4): >= 1.5x.
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
    from realchat.recipe import DEFAULT_MODEL, DEFAULT_ROLES, DEFAULT_USER_SYSTEM_PROMPT, SourceConfig
    from realchat.curation.sources import open_source
    from realchat.training.trainer import micro_batches

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
        # as the training stages do: without varlen attention a packed micro-batch is one row
        micro, accumulation = micro_batches(packing, args.batch, 1, model.config._attn_implementation)
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
        name = f"packed {micro}x{accumulation}" if packing else f"padded (TRL default) {micro}x{accumulation}"
        results[packing] = tokens / seconds
        print(f"{name:24s} {tokens:>8,} tokens in {seconds:6.1f} s = {tokens / seconds:7.1f} tokens/s")
    if len(results) == 2:
        print(f"ratio packed / padded: {results[True] / results[False]:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
