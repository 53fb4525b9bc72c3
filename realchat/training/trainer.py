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
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from realchat.errors import RealChatError
from realchat.recipe.base import Strict
from realchat.models.chat_formats import ChatFormat, apply_template
from realchat.training.chat_format import tokenize_with_mask
from realchat.training.precision import Bf16Setting, PrecisionSetting, choose_precision
from realchat.training.throughput import throughput


def _steps_not_zero(v: int) -> int:
    if v == 0:
        raise ValueError("0 steps trains nothing: give a positive number, or -1 to train by epochs")
    return v


class LoraParams(Strict):
    #: LoRA rank.
    r: int = Field(16, ge=1)
    #: LoRA scaling (alpha / r multiplies the update).
    alpha: int = Field(32, ge=1)
    #: Dropout on the LoRA branch.
    dropout: float = Field(0.05, ge=0, lt=1)
    #: Modules that get adapters: names, or `all-linear`.
    target_modules: list[str] | str = "all-linear"


class TrainingSettings(Strict):
    """TRL SFTConfig values a recipe sets (paper, LLaMA-7B: max length 2,048, 3 epochs, lr 2e-5 cosine,
    warmup 3 %, effective batch 128, bf16)."""
    #: `full`: full fine-tuning; `lora`: LoRA adapters (peft), merged into the saved model.
    method: Literal["full", "lora"] = "full"
    #: LoRA settings (with `method: lora`).
    lora: LoraParams = LoraParams()
    #: Tokens per training row; a longer conversation is an error (curate's `split` cuts them).
    max_length: int = Field(2048, ge=8)
    #: Pack conversations into rows of max_length (TRL's best-fit-decreasing; padding-free batches).
    packing: bool = True
    #: Recompute activations in the backward pass (less memory, slower).
    gradient_checkpointing: bool = False
    #: How the numbers are kept. ``auto``: ``bf16-mixed`` on a GPU with bf16, else ``fp32``.
    #: ``bf16-mixed``: float32 master weights, gradients and Adam states (16 bytes a parameter), bf16
    #: matmuls under autocast: full-precision updates at bf16 speed. ``bf16-pure``: weights and Adam
    #: states in bf16 (8 bytes a parameter), but updates below 1/256 of a weight round away (at lr
    #: 2e-5 most do). ``fp32``: no bf16 at all (CPUs; slow on tensor cores). A run with bf16 compute
    #: is saved in bf16, an fp32 run in float32 (:mod:`realchat.training.precision`).
    precision: PrecisionSetting = "auto"
    #: Older spelling of `precision`: ``true``/``yes`` = ``bf16-mixed`` (an error without a bf16 GPU),
    #: ``false``/``no`` = ``fp32``, ``auto`` = whatever `precision` says.
    bf16: Bf16Setting = "auto"
    #: Attention to load the model with (``sdpa``, ``eager``, ``flash_attention_2``, a Hub kernel);
    #: null: flash-attention 2 on CUDA in bf16 when ``flash-attn`` is installed, else the model's default.
    attn_implementation: str | None = None
    #: Where transformers reports the run: ``none``, ``wandb``, ``tensorboard``, … or a list (the
    #: integration's package must be installed).
    report_to: str | list[str] = "none"
    #: Passes over the training data (when `max_steps` is -1).
    num_train_epochs: float = Field(1.0, gt=0)
    #: Stop after this many optimiser steps (overrides epochs); -1 = by epochs.
    max_steps: Annotated[int, Field(ge=-1), AfterValidator(_steps_not_zero)] = -1
    #: Rows per device per optimiser step, before accumulation.
    per_device_train_batch_size: int = Field(4, ge=1)
    #: Micro-batches accumulated per optimiser step.
    gradient_accumulation_steps: int = Field(1, ge=1)
    #: Peak learning rate.
    learning_rate: float = Field(2e-5, gt=0, le=1)
    #: Learning-rate schedule as transformers names it (`cosine`, `linear`, `constant`).
    lr_scheduler_type: str = "cosine"
    #: Share of the steps spent warming the learning rate up.
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    #: AdamW weight decay.
    weight_decay: float = Field(0.0, ge=0)
    #: Log the train loss every N steps.
    logging_steps: int = Field(1, ge=1)
    #: Evaluate every N steps (null: at the end only).
    eval_steps: int | None = Field(None, ge=1)
    #: Checkpoint every N steps; an interrupted step resumes from the last one.
    save_steps: int = Field(50, ge=1)
    #: Multi-GPU: an FSDP spec as TrainingArguments takes it (e.g. "full_shard auto_wrap"; FSDP2,
    #: one unit per decoder layer, full state dict saved); needs a launch on N processes
    #: (``torchrun --nproc_per_node N -m realchat.cli build …``), an error in a one-process build.
    fsdp: str | None = None
    #: Multi-GPU: a DeepSpeed config file (ZeRO-3 needs ``stage3_gather_16bit_weights_on_model_save``
    #: for a loadable model); launched as `fsdp` is.
    deepspeed: str | None = None
    #: Any other field of TRL's SFTConfig, passed as written (:mod:`realchat.training.trl_options`).
    trl: dict[str, Any] = Field(default_factory=dict)


class TrainingDataError(RealChatError):
    """The training data cannot train this step (no turns of the loss role, turns longer than max_length)."""


def tokenize_conversations(tokenizer: Any, convs: list[list[dict[str, str]]], loss_role: str,
                           max_length: int, what: str, dropped: dict[str, int] | None = None) -> list[dict[str, list[int]]]:
    """Tokenise with masks; refuse data that would train on nothing, with a reason.

    A row with no loss token in its first ``max_length`` tokens (no ``loss_role`` turn, or the first
    one cut off by truncation) is dropped here and counted in ``dropped``: in training it would be a
    micro-batch (or part of one) with nothing to learn, logged as loss 0 and pulling the mean loss down."""
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
    kept = [r for r, first in zip(with_loss, first_loss) if first < max_length]
    if dropped is not None:
        dropped.update(no_loss_turn=len(rows) - len(with_loss), loss_cut_by_max_length=len(with_loss) - len(kept))
    return kept


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
    """The one rule for how a training micro-batch is laid out, per device; pure, so it is tested directly.

    * varlen attention (flash-attention, or a Hub kernel transformers exposes for packed sequences):
      ``packed-varlen``, TRL's padding-free rows with full micro-batches; the kernel keeps the
      conversations apart from ``cu_seq_lens`` at no cost.
    * CUDA without varlen: ``padded``, TRL's padded collator with full micro-batches. A packed row there
      needs a dense block-diagonal mask (quadratic in the packed length) and, to stay affordable, 1-row
      micro-batches: measured on one H100 (SmolLM2-135M, bf16, 2,048 tokens, batch 8), 5,234 tokens/s
      against 15,210 padded and 16,759 packed with flash-attention (issue 12). Never 1-row micro-batches,
      never cross-document attention.
    * CPU: ``_CPU_NON_VARLEN`` (today's rule: packed rows kept apart by the block-diagonal causal mask
      that transformers' ``create_causal_mask`` derives from the restarting ``position_ids``, one row per
      pass, see :func:`micro_batches`); ``train_sft`` checks on the loaded model that this mask is really
      there (:func:`packed_documents_separate`) and pads otherwise.
    """
    if not packing:
        return "padded"
    if is_varlen_attention(attn_implementation):
        return "packed-varlen"
    if device_type == "cpu":
        return _CPU_NON_VARLEN
    return "padded"


def pick_attention(device_type: str, half_precision: bool, flash_attn_installed: bool) -> str | None:
    """The attention to load the model with: flash-attention 2 on CUDA in bf16/fp16 when the
    ``flash-attn`` package is installed (``pip install 'realchat-usersim[gpu]'``), so that packing gets its
    varlen kernel; otherwise None (the model's default, SDPA). Pure: the caller looks at the machine."""
    if device_type == "cuda" and half_precision and flash_attn_installed:
        return "flash_attention_2"
    return None


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


def turn_end_ids(chat_format: ChatFormat) -> int | list[int]:
    """The ids a trained model's generation config stops at: EOS, then each role's turn end where it
    is one token; one id stays an int (what most configs hold)."""
    ids = [*chat_format.stop_token_ids("assistant"), *chat_format.stop_token_ids("user")]
    unique = list(dict.fromkeys(ids))
    return unique[0] if len(unique) == 1 else unique


def last_checkpoint(work: Path) -> str | None:
    """The newest *complete* checkpoint (:mod:`realchat.training.checkpoints`); torn ones are dropped."""
    from realchat.training.checkpoints import newest_complete

    ck = newest_complete(work / "checkpoints")
    return str(ck) if ck else None


def train_sft(cfg: TrainingSettings, *, base_model: str, train_convs: list[list[dict[str, str]]],
              eval_convs: list[list[dict[str, str]]], loss_role: str, out: Path, work: Path, seed: int,
              show_progress: bool = True, callbacks: list[Any] | None = None, log: Any = print,
              reporter: Any = None, chat_template: str | None = None) -> dict[str, Any]:
    """Train, save a loadable model folder to ``out``; return the figures for the card.

    ``chat_template`` (the recipe's, as text) replaces the tokenizer's own and is saved with the model,
    so every later step renders the format it trained on. ``reporter`` (a
    :class:`realchat.progress.Reporter`) shows steps, loss and tokens/s while training runs;
    transformers' own tqdm bar and log printer are off (a ``\\r`` line, or raw dicts, in a log)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if not show_progress:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    tokenizer = apply_template(AutoTokenizer.from_pretrained(base_model), chat_template, base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    chat_format = ChatFormat.of(tokenizer, log)
    dropped: dict[str, int] = {}
    train_rows = tokenize_conversations(tokenizer, train_convs, loss_role, cfg.max_length, "training data", dropped)
    if any(dropped.values()):
        log(f"training data: {sum(dropped.values()):,} row(s) without a {loss_role} token to learn in the first "
            f"{cfg.max_length} tokens left out ({dropped['no_loss_turn']:,} without a {loss_role} turn, "
            f"{dropped['loss_cut_by_max_length']:,} whose first one starts after max_length)")
    # held-out rows likewise: one without a loss token would add a 0 to the held-out loss
    eval_rows = ([r for r in (tokenize_with_mask(tokenizer, m, loss_role) for m in eval_convs)
                  if any(r["assistant_masks"][: cfg.max_length])] if eval_convs else [])
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = choose_precision(cfg.precision, cfg.bf16, device_type=device_type,
                                 bf16_available=device_type == "cuda" and torch.cuda.is_bf16_supported())
    bf16 = precision.bf16_compute
    dtype = getattr(torch, precision.load_dtype)
    import importlib.util

    attn_request = cfg.attn_implementation or pick_attention(device_type, bf16,
                                                             importlib.util.find_spec("flash_attn") is not None)
    model = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=dtype, **({"attn_implementation": attn_request} if attn_request else {}))
    peft_config = None
    if cfg.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                 target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    eval_on = bool(eval_rows)
    attn = getattr(model.config, "_attn_implementation", None)
    batching = choose_batching(cfg.packing, device_type, attn)
    if batching == "packed-block-diagonal" and not packed_documents_separate(model):
        log(f"{attn} attention: this model does not keep packed conversations apart without flash-attention; "
            "training on padded batches instead")
        batching = "padded"
    packed = batching != "padded"
    micro, accumulation = micro_batches(packed, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, attn)
    settings = dict(
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
        report_to=cfg.report_to,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # a launch on CPUs (torchrun, gloo): transformers only sets up DDP there when told to use the CPU
        use_cpu=int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
        # tokens trained on, padding excluded: packed rows are padding-free, so all of theirs; padded
        # batches by their attention mask ("non_padding" would miss every end-of-turn token of a packed
        # row when the pad token is the end-of-turn token, as in SmolLM2)
        include_num_input_tokens_seen="all" if packed else "non_padding",
        fsdp=cfg.fsdp or "",
        deepspeed=cfg.deepspeed,
        dataset_num_proc=None,
        **_checkpointing_kwarg(SFTConfig, cfg.gradient_checkpointing),
    )
    try:  # TRL's own names (``trl:``, checked at plan time by trl_options) win over the values above
        args = SFTConfig(**{**settings, **cfg.trl})
    except (TypeError, ValueError) as e:
        if not cfg.trl:
            raise
        raise RealChatError(f"TRL's SFTConfig refused the values: {e}", field="trl") from None
    from realchat.training.callbacks import TokensTimed, TrainingProgress

    timed = TokensTimed()
    callbacks = [*(callbacks or []), timed]
    progress = None
    if reporter is not None:
        progress = TrainingProgress(reporter)
        callbacks.append(progress)
    tensorboard = tensorboard_dir(args.report_to, out)
    with _environment("TENSORBOARD_LOGGING_DIR", tensorboard):  # read when the callback is made
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_on else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # raw per-step dicts: the progress line and the card have them
    from realchat.training.callbacks import warm_up_from_the_first_step

    warm_up_from_the_first_step(trainer)  # the warm-up's first step trains (lr > 0)
    if cfg.fsdp and not trainer.is_fsdp_enabled:
        log(f"fsdp: {cfg.fsdp!r}: accelerate shards only over GPUs; this {int(args.world_size)}-process launch on "
            f"{device_type.upper()}s trains full replicas (DDP)")
    resume = last_checkpoint(work)
    if resume:
        log(f"resuming from {resume}")
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        if progress is not None:
            progress.close()
    final_eval = trainer.evaluate() if eval_on else {}
    trainer.accelerator.wait_for_everyone()  # every rank is done with the work folder before the main moves on
    history = list(trainer.state.log_history)
    losses = _loss_table(history)

    from realchat.training.saving import save_trained

    # every rank: under FSDP / ZeRO-3 the save gathers the sharded weights; the main process writes
    save_trained(trainer, out, method=cfg.method, base_model=base_model, save_dtype=precision.save_dtype,
                 tokenizer=tokenizer, scratch=work,
                 # generation stops at every turn end of the format it trained on (<|im_end|>, <|eot_id|>, …)
                 eos_token_id=turn_end_ids(chat_format))
    if trainer.is_world_process_zero():  # under torchrun / accelerate launch only the main process writes
        _plot(losses, out / "loss.png")
    n_tokens = sum(min(len(r["input_ids"]), cfg.max_length) for r in train_rows)
    n_loss = sum(sum(r["assistant_masks"][: cfg.max_length]) for r in train_rows)
    epochs = float(trainer.state.epoch or 0)
    speed = throughput(
        timed.tokens, timed.seconds, n_params=model.num_parameters(), n_layers=model.config.num_hidden_layers,
        hidden=model.config.hidden_size, seq_len=n_tokens / max(len(train_rows), 1), device_type=device_type,
        device_name=torch.cuda.get_device_name() if device_type == "cuda" else None, bf16=bf16,
        devices=int(args.world_size))
    return {
        "loss_role": loss_role,
        "base_model": base_model,
        "train_conversations": len(train_rows),
        # rows left out before training for having no loss token within max_length (see tokenize_conversations)
        "rows_without_loss_tokens": dropped,
        # the event files: relative to the model folder when they are in it, else the user's folder
        "tensorboard_logs": (None if tensorboard is None else TENSORBOARD_SUBDIR
                             if Path(tensorboard) == out / TENSORBOARD_SUBDIR else tensorboard),
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
        "precision": precision.name,
        "dtype": precision.save_dtype,  # of the saved model
        "method": cfg.method,
        "batching": batching,
        "attn_implementation": attn,
        "micro_batch": [micro, accumulation],
        "world_size": int(trainer.args.world_size),
        "tokens_per_s": speed["tokens_per_s"],
        "mfu": speed["mfu"],
        "throughput": speed,
    }


#: Where TensorBoard event files go inside the step's output (published with the model).
TENSORBOARD_SUBDIR = "logs"


def tensorboard_dir(report_to: Any, out: Path) -> str | None:
    """With ``report_to`` tensorboard (or ``all``), the folder its event files go to: the user's
    ``TENSORBOARD_LOGGING_DIR`` when set, else ``logs/`` in the step's output. Not the trainer's default
    (``<output_dir>/runs``): that is the work folder, removed once the step is done."""
    targets = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if not {"tensorboard", "all"} & set(targets):
        return None
    return os.environ.get("TENSORBOARD_LOGGING_DIR") or str(out / TENSORBOARD_SUBDIR)


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """``name=value`` in the environment for the block (nothing when ``value`` is None), then as it was."""
    if value is None:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


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

