"""Supervised fine-tuning with TRL's SFTTrainer, the loss on one role's turns.

One trainer for both models of the method: UserGPT (loss on the user turns: the model learns to speak
as the human) and ReaLM (loss on the assistant turns). Conversations are tokenised here with a loss
mask (:mod:`realchat.training.chat_format`) and handed to SFTTrainer as a pre-tokenised dataset
(``input_ids`` + ``assistant_masks``), so TRL builds the labels, truncates, packs (best-fit
decreasing, padding-free batches) and trains; LoRA through peft; FSDP/DeepSpeed through accelerate
when launched with ``accelerate launch`` / ``torchrun``.

Checkpoints go to the stage's work folder (``.work/<stage>-<fingerprint>``): an interrupted stage
resumes from its last checkpoint on the rerun; the engine removes the folder once the stage's output
is in place.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from realchat.training.chat_format import tokenize_with_mask
from realchat.errors import RealChatError
from typing import Literal

from pydantic import Field

from realchat.recipe.base import Strict


class LoraParams(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class TrainingSettings(Strict):
    """TRL SFTConfig values a recipe sets (paper, LLaMA-7B: max length 2,048, 3 epochs, lr 2e-5 cosine,
    warmup 3 %, effective batch 128, bf16)."""
    method: Literal["full", "lora"] = "full"
    lora: LoraParams = LoraParams()
    max_length: int = Field(2048, ge=8)
    #: Pack conversations into rows of max_length (TRL's best-fit-decreasing; padding-free batches).
    packing: bool = True
    gradient_checkpointing: bool = False
    #: bf16 where the hardware has it (CUDA with bf16 support); "auto" decides.
    bf16: Literal["auto", "yes", "no"] = "auto"
    num_train_epochs: float = Field(1.0, gt=0)
    #: Stop after this many optimiser steps (overrides epochs); -1 = by epochs.
    max_steps: int = -1
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    logging_steps: int = Field(1, ge=1)
    #: Evaluate every N steps (null: at the end only).
    eval_steps: int | None = Field(None, ge=1)
    #: Checkpoint every N steps; an interrupted stage resumes from the last one.
    save_steps: int = Field(50, ge=1)
    #: Multi-GPU: an FSDP spec as TrainingArguments takes it (e.g. "full_shard auto_wrap") or a
    #: DeepSpeed config file; run under ``accelerate launch`` / ``torchrun``.
    fsdp: str | None = None
    deepspeed: str | None = None


class TrainingDataError(RealChatError):
    """The training data cannot train this stage (no turns of the loss role, turns longer than max_length)."""


def tokenize_conversations(tokenizer: Any, convs: list[list[dict[str, str]]], loss_role: str,
                           max_length: int, what: str) -> list[dict[str, list[int]]]:
    """Tokenise with masks; refuse data that would train on nothing, with a reason."""
    rows = [tokenize_with_mask(tokenizer, msgs, loss_role) for msgs in convs]
    with_loss = [r for r in rows if any(r["assistant_masks"])]
    if not with_loss:
        raise TrainingDataError(
            f"{what}: no {loss_role} turns to train on ({len(rows)} conversations, none with a "
            f"'{loss_role}' message)", hint="check the dataset's roles (user / assistant)")
    first_loss = [r["assistant_masks"].index(1) for r in with_loss]
    if min(first_loss) >= max_length:
        raise TrainingDataError(
            f"{what}: max_length {max_length} is smaller than one turn: the earliest {loss_role} turn "
            f"starts at token {min(first_loss)}, so every row would be cut before anything to learn",
            field="max_length", hint=f"raise max_length above {min(first_loss) + 16}")
    return with_loss


def _bf16(setting: str) -> bool:
    import torch

    if setting == "no":
        return False
    available = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if setting == "yes" and not available:
        raise RealChatError("bf16: yes, but this machine has no GPU with bf16", field="bf16",
                            hint="use bf16: auto")
    return available


def _checkpointing_kwarg(config_cls: Any, on: bool) -> dict[str, bool]:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing."""
    fields = getattr(config_cls, "__dataclass_fields__", {})
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": on}


def micro_batches(packing: bool, batch: int, accumulation: int, attn_implementation: str | None) -> tuple[int, int]:
    """(rows per forward pass, accumulation steps) for the recipe's batch.

    TRL's padding-free packing flattens a micro-batch into one sequence; varlen attention kernels
    (flash-attention, on GPUs) keep its documents apart at no cost, but other attention (SDPA, eager:
    CPUs) then attends over the whole flattened length, quadratic in the micro-batch, and packing ends
    up slower than padding. There, a packed micro-batch is one row and the batch is made up by gradient
    accumulation: the same rows and tokens per optimiser step."""
    if packing and batch > 1 and not (attn_implementation or "").startswith(("flash", "kernels")):
        return 1, batch * accumulation
    return batch, accumulation


def last_checkpoint(work: Path) -> str | None:
    cks = sorted((work / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(cks[-1]) if cks else None


def train_sft(cfg: TrainingSettings, *, base_model: str, train_convs: list[list[dict[str, str]]],
              eval_convs: list[list[dict[str, str]]], loss_role: str, out: Path, work: Path, seed: int,
              show_progress: bool = True, callbacks: list[Any] | None = None, log: Any = print) -> dict[str, Any]:
    """Train, save a loadable model folder to ``out``; return the figures for the card."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if not show_progress:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise RealChatError(f"{base_model}: the tokenizer has no chat template", field="base_model")
    train_rows = tokenize_conversations(tokenizer, train_convs, loss_role, cfg.max_length, "training data")
    eval_rows = ([r for r in (tokenize_with_mask(tokenizer, m, loss_role) for m in eval_convs) if any(r["assistant_masks"])]
                 if eval_convs else [])
    bf16 = _bf16(cfg.bf16)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16 if bf16 else torch.float32)
    peft_config = None
    if cfg.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                 target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    eval_on = bool(eval_rows)
    micro, accumulation = micro_batches(cfg.packing, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps,
                                        getattr(model.config, "_attn_implementation", None))
    args = SFTConfig(
        output_dir=str(work / "checkpoints"),
        max_length=cfg.max_length,
        packing=cfg.packing,
        packing_strategy="bfd",
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if (eval_on and cfg.eval_steps) else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        bf16=bf16,
        seed=seed,
        data_seed=seed,
        report_to="none",
        disable_tqdm=not show_progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        include_num_input_tokens_seen=True,
        fsdp=cfg.fsdp or "",
        deepspeed=cfg.deepspeed,
        dataset_num_proc=None,
        **_checkpointing_kwarg(SFTConfig, cfg.gradient_checkpointing),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_on else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if not show_progress:  # the per-step log dicts: the card's loss table has them
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    resume = last_checkpoint(work)
    if resume:
        log(f"resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    final_eval = trainer.evaluate() if eval_on else {}
    history = list(trainer.state.log_history)

    trained = trainer.model
    if cfg.method == "lora":
        trained = trained.merge_and_unload()
    trained = trained.to(torch.float32) if not bf16 else trained
    trained.generation_config.eos_token_id = tokenizer.eos_token_id
    trained.generation_config.pad_token_id = tokenizer.pad_token_id
    trained.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)

    losses = _loss_table(history)
    _plot(losses, out / "loss.png")
    n_tokens = sum(min(len(r["input_ids"]), cfg.max_length) for r in train_rows)
    n_loss = sum(sum(r["assistant_masks"][: cfg.max_length]) for r in train_rows)
    epochs = float(trainer.state.epoch or 0)
    return {
        "loss_role": loss_role,
        "base_model": base_model,
        "train_conversations": len(train_rows),
        "eval_conversations": len(eval_rows),
        "dataset_tokens": n_tokens,
        "dataset_loss_tokens": n_loss,
        "tokens_seen": int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0),
        "loss_tokens_trained": int(round(n_loss * epochs)),
        "epochs": round(epochs, 3),
        "steps": int(trainer.state.global_step),
        "train_loss": round(float(result.training_loss), 4) if result.training_loss is not None else None,
        "eval_loss": round(float(final_eval["eval_loss"]), 4) if "eval_loss" in final_eval else None,
        "eval_perplexity": round(math.exp(final_eval["eval_loss"]), 2) if "eval_loss" in final_eval else None,
        "resumed_from": resume,
        "losses": losses,
        "seconds": round(float(result.metrics.get("train_runtime", 0.0)), 1),
        "bf16": bf16,
        "method": cfg.method,
    }


def _loss_table(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for h in history:
        step = int(h.get("step", 0))
        if "loss" in h:
            rows.setdefault(step, {"step": step})["train_loss"] = round(float(h["loss"]), 4)
        if "eval_loss" in h:
            rows.setdefault(step, {"step": step})["eval_loss"] = round(float(h["eval_loss"]), 4)
    return [rows[k] for k in sorted(rows)]


def _plot(losses: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, label in (("train_loss", "train"), ("eval_loss", "eval")):
        pts = [(r["step"], r[key]) for r in losses if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

