"""Supervised fine-tuning with TRL's SFTTrainer, the loss on one role's turns.

One trainer for both models of the method: UserGPT (loss on the user turns: the model learns to speak
as the human) and ReaLM (loss on the assistant turns). Conversations are tokenised here with a loss
mask (:mod:`realchat.training.chat_format`) and handed to SFTTrainer as a pre-tokenised dataset
(``input_ids`` + ``assistant_masks``), so TRL builds the labels, truncates, packs (best-fit
decreasing, padding-free batches) and trains; LoRA through peft; FSDP/DeepSpeed through accelerate
when launched with ``accelerate launch`` / ``torchrun``. Packed conversations never see each other:
how a micro-batch is laid out for the attention at hand is one rule, :func:`choose_batching`, and the
stats say which layout trained (``batching``, ``attn_implementation``).

Checkpoints go to the step's work folder (``.work/<step>-<fingerprint>``): an interrupted step
resumes from its last checkpoint on the rerun; the engine removes the folder once the step's output
is in place.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from realchat.errors import RealChatError
from realchat.recipe.base import Strict
from realchat.training.chat_format import tokenize_with_mask


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
    #: Checkpoint every N steps; an interrupted step resumes from the last one.
    save_steps: int = Field(50, ge=1)
    #: Multi-GPU: an FSDP spec as TrainingArguments takes it (e.g. "full_shard auto_wrap") or a
    #: DeepSpeed config file; run under ``accelerate launch`` / ``torchrun``.
    fsdp: str | None = None
    deepspeed: str | None = None


class TrainingDataError(RealChatError):
    """The training data cannot train this step (no turns of the loss role, turns longer than max_length)."""


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


#: How a micro-batch is laid out (recorded in the step's stats as ``batching``):
#: ``packed-varlen``: TRL's padding-free rows, documents kept apart by the varlen kernel's
#: ``cu_seq_lens``; ``packed-block-diagonal``: the same rows, documents kept apart by a block-diagonal
#: causal mask that transformers builds from the restarting ``position_ids``; ``padded``: one
#: conversation per row, TRL's padded collator.
Batching = Literal["packed-varlen", "packed-block-diagonal", "padded"]

#: Attention implementations that read the packed sequence boundaries (``cu_seq_lens``) themselves:
#: flash-attention 2/3/4 (also paged) and their Hub kernels (``kernels-community/flash-attn2``,
#: ``.../vllm-flash-attn3``, ``.../aiter-flash-attn``), which transformers uses as fallbacks for them.
_VARLEN_PREFIXES = ("flash_attention", "paged|flash_attention")

#: The layout for a CPU with SDPA/eager attention. bench/bench_train.py (SmolLM2-135M, real ShareGPT,
#: max length 512, 3 steps of 2 rows, documents kept apart in both) measured packed / padded at 0.84x and
#: then 1.24x on a shared, loaded 2-core machine: no clear winner, so packing (no padding computed,
#: TRL's default layout for the recipe's ``packing: true``) is kept. Re-measure before changing it.
_CPU_NON_VARLEN: Batching = "packed-block-diagonal"


def is_varlen_attention(attn_implementation: str | None) -> bool:
    """True when the attention kernel keeps packed documents apart from ``cu_seq_lens`` on its own."""
    name = attn_implementation or ""
    return name.startswith(_VARLEN_PREFIXES) or (name.startswith("kernels-community/") and "flash-attn" in name)


def choose_batching(packing: bool, device_type: str, attn_implementation: str | None) -> Batching:
    """The one rule for how a training micro-batch is laid out; pure, so it is tested directly.

    TRL's packing (best-fit decreasing) hands the model padding-free rows: one flattened sequence with
    ``position_ids`` restarting at every conversation and no attention mask. A varlen kernel
    (flash-attention, on CUDA) keeps the conversations apart from ``cu_seq_lens``. SDPA and eager
    attention (every CPU, CUDA without flash-attn) read neither: there the conversations are kept apart
    by the block-diagonal causal mask that transformers' ``create_causal_mask`` derives from the
    restarting ``position_ids`` (when no 2-D mask and no cache are given, which is how TRL calls the
    model); ``train_sft`` checks on the loaded model that this mask is really there
    (:func:`packed_documents_separate`) and pads otherwise. Such a mask is dense: the attention costs
    the square of the packed length whatever the documents, where padded rows cost the square of each
    conversation plus their padding, so on CPUs the layout is whichever bench/bench_train.py measured
    faster (``_CPU_NON_VARLEN``); on CUDA without flash-attn packing is kept (not measured here: no GPU).
    """
    if not packing:
        return "padded"
    if is_varlen_attention(attn_implementation):
        return "packed-varlen"
    if device_type == "cpu":
        return _CPU_NON_VARLEN
    return "packed-block-diagonal"


def micro_batches(packing: bool, batch: int, accumulation: int, attn_implementation: str | None) -> tuple[int, int]:
    """(rows per forward pass, accumulation steps) for the recipe's batch.

    TRL's padding-free packing flattens a micro-batch into one sequence; varlen attention kernels
    (flash-attention, on GPUs) keep its documents apart at no cost, but with other attention (SDPA, eager:
    CPUs) the block-diagonal mask spans the whole flattened length, quadratic in the micro-batch, and
    packing ends up slower than padding. There, a packed micro-batch is one row and the batch is made up
    by gradient accumulation: the same rows and tokens per optimiser step."""
    if packing and batch > 1 and not is_varlen_attention(attn_implementation):
        return 1, batch * accumulation
    return batch, accumulation


def packed_documents_separate(model: Any) -> bool:
    """Whether this model, as loaded, keeps two packed documents apart without a varlen kernel.

    The block-diagonal mask is transformers' doing (``masking_utils`` detects the restarting
    ``position_ids``), not TRL's, and only for models whose forward builds its mask with
    ``create_causal_mask`` and only while no cache is passed; a model or version that does not would
    silently let each conversation attend to the ones packed before it. So one forward on two 3-token
    documents, called as TRL calls it (``use_cache=False``, ``position_ids``, no attention mask), with the
    4-D mask the decoder layers receive captured: separate when a query of the second document is
    masked from every key of the first. No 4-D mask at all means plain causal attention: not separate.
    """
    import torch

    masks: list[torch.Tensor] = []

    def grab(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            masks.append(mask)

    hooks = [m.register_forward_pre_hook(grab, with_kwargs=True) for m in model.modules()]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(input_ids=torch.ones(1, 6, dtype=torch.long, device=device),
                  position_ids=torch.tensor([[0, 1, 2, 0, 1, 2]], device=device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not masks:
        return False
    mask = masks[-1][0, 0, 3:, :3]  # queries of the second document, keys of the first
    blocked = ~mask if mask.dtype == torch.bool else mask <= torch.finfo(mask.dtype).min / 2
    return bool(blocked.all())


def last_checkpoint(work: Path) -> str | None:
    """The newest *complete* checkpoint (:mod:`realchat.training.checkpoints`); torn ones are dropped."""
    from realchat.training.checkpoints import newest_complete

    ck = newest_complete(work / "checkpoints")
    return str(ck) if ck else None


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
    attn = getattr(model.config, "_attn_implementation", None)
    batching = choose_batching(cfg.packing, "cuda" if torch.cuda.is_available() else "cpu", attn)
    if batching == "packed-block-diagonal" and not packed_documents_separate(model):
        log(f"{attn} attention: this model does not keep packed conversations apart without flash-attention; "
            "training on padded batches instead")
        batching = "padded"
    packed = batching != "padded"
    micro, accumulation = micro_batches(packed, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, attn)
    args = SFTConfig(
        output_dir=str(work / "checkpoints"),
        max_length=cfg.max_length,
        packing=packed,
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
        "batching": batching,
        "attn_implementation": attn,
        "micro_batch": [micro, accumulation],
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

