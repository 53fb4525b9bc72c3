"""Benchmark: training throughput of the sft step's batching choice against TRL's padded batching.

Trains through the step's own code (``realchat.training.trainer.train_sft``) twice on the same
conversations, model, batch and steps: once with ``packing: false`` (TRL's padded collator, one
conversation per row) and once as the step chooses on this device (``choose_batching``: packed rows
with flash-attention's varlen kernel; padded on CUDA without it; on CPU packed rows kept apart by a
block-diagonal mask, one row per pass). Prints non-padding tokens per second after ``--warmup`` steps
and, on CUDA in bf16, the model FLOPs utilisation (``realchat.training.throughput``). If the step's
choice is padded, there is one run. Reads any conversation file the curate step reads (ShareGPT or
OpenAI-messages JSON/JSONL, parquet, a ``save_to_disk`` folder); defaults: the shipped ShareGPT and
SmolLM2-135M-Instruct. Not a test: figures vary with the machine.

    python bench/bench_train.py [--data FILE --format sharegpt] [--model REF] [--loss-on user]
                                [--steps 4] [--warmup 1] [--batch 2] [--max-length 2048] [--conversations 400]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    from realchat.recipe.base import DEFAULT_MODEL, DEFAULT_SHAREGPT

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DEFAULT_SHAREGPT, help="conversation file or folder (default: shipped ShareGPT)")
    ap.add_argument("--format", default="sharegpt", choices=["sharegpt", "openai_messages", "parquet", "datasets_folder"])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model folder, .gguf, pkg:// path or Hub id")
    ap.add_argument("--loss-on", default="user", choices=["user", "assistant"])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1, help="optimiser steps not timed (allocation, kernel choice)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--conversations", type=int, default=400)
    ap.add_argument("--only", choices=["padded", "choice"], default=None, help="run one side only")
    args = ap.parse_args()

    import torch
    from transformers import TrainerCallback

    from realchat.curation.conversations import normalize
    from realchat.curation.sources import DEFAULT_ROLES, SourceConfig, open_source
    from realchat.models import materialize_model
    from realchat.recipe.base import DEFAULT_USER_SYSTEM_PROMPT
    from realchat.training.chat_format import as_user_simulator
    from realchat.training.throughput import throughput
    from realchat.training.trainer import TrainingSettings, train_sft

    path = materialize_model(args.model, Path.cwd())
    records, _ = open_source(SourceConfig(format=args.format, path=args.data, limit=args.conversations * 3), Path.cwd())
    convs = []
    for rec in records:
        row, _ = normalize(rec, dict(DEFAULT_ROLES), "id", "bench")
        if row is None or not any(m["role"] == args.loss_on for m in row["messages"]):
            continue
        msgs = row["messages"]
        convs.append(as_user_simulator(msgs, DEFAULT_USER_SYSTEM_PROMPT, None) if args.loss_on == "user" else msgs)
        if len(convs) >= args.conversations:
            break
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"data {args.data} ({args.format}): {len(convs)} conversations, loss on {args.loss_on}; model {args.model}; "
          f"device {device}; {torch.get_num_threads()} CPU threads")

    class Steady(TrainerCallback):
        """Tokens and seconds after the warm-up steps."""

        def __init__(self) -> None:
            self.t0, self.tokens0, self.seconds, self.tokens = 0.0, 0, 0.0, 0

        def _sync(self) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_step_end(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                self._sync()
                self.t0, self.tokens0 = time.perf_counter(), int(state.num_input_tokens_seen)

        def on_train_end(self, a, state, control, **kw):
            self._sync()
            self.seconds = time.perf_counter() - self.t0
            self.tokens = int(state.num_input_tokens_seen) - self.tokens0

    results = {}
    sides = [("padded", False), ("choice", True)]
    for side, packing in [s for s in sides if args.only in (None, s[0])]:
        cfg = TrainingSettings(packing=packing, max_length=args.max_length, max_steps=args.steps + args.warmup,
                               per_device_train_batch_size=args.batch, learning_rate=1e-5, warmup_ratio=0.0,
                               lr_scheduler_type="constant", save_steps=10**6, logging_steps=1)
        steady = Steady()
        with tempfile.TemporaryDirectory() as tmp:
            stats = train_sft(cfg, base_model=path, train_convs=convs, eval_convs=[], loss_role=args.loss_on,
                              out=Path(tmp) / "out", work=Path(tmp) / "work", seed=0, show_progress=False,
                              callbacks=[steady], log=lambda m: print(f"  note: {m}"))
        if side == "choice" and stats["batching"] == "padded" and "padded" in results:
            print(f"the step's choice on {device} is padded: same as above")
            break
        import transformers

        model_cfg = transformers.AutoConfig.from_pretrained(path)
        speed = throughput(steady.tokens, steady.seconds, n_params=_n_params(path), n_layers=model_cfg.num_hidden_layers,
                           hidden=model_cfg.hidden_size, seq_len=stats["dataset_tokens"] / stats["train_conversations"],
                           device_type="cuda" if torch.cuda.is_available() else "cpu",
                           device_name=device if torch.cuda.is_available() else None, bf16=stats["bf16"])
        results[side] = speed["tokens_per_s"]
        micro, acc = stats["micro_batch"]
        mfu = f"{100 * speed['mfu']:.1f} %" if speed["mfu"] is not None else "-"
        label = f"{stats['batching']} ({stats['attn_implementation']})" + (" = the step's choice" if packing else "")
        print(f"{label:52s} {micro}x{acc:<3d} {speed['tokens']:>9,} tokens in {speed['seconds']:7.1f} s = "
              f"{speed['tokens_per_s']:9.1f} tokens/s  MFU {mfu}  ({'bf16' if stats['bf16'] else 'float32'})")
    if len(results) == 2:
        print(f"ratio step's choice / padded: {results['choice'] / results['padded']:.2f}x")


def _n_params(path: str) -> int:
    """Parameters of the model at ``path`` (tied weights once), without loading it onto a device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return model.num_parameters()


if __name__ == "__main__":
    main()
