"""Step kind ``sft``: supervised fine-tuning with TRL, the loss on one role's turns.

``loss_on: user`` trains a user simulator (UserGPT): the conversation gets the simulator's system
prompt and, with ``end_marker``, a last user turn holding the marker, so the simulator learns to end
conversations itself; the loss falls on the user turns only. ``loss_on: assistant`` trains an
assistant (ReaLM) on any conversations: a simulation, curated real logs, a file or a Hub dataset.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from realchat.data import Conversation, sample_conversations, split_held_out
from realchat.engine import ranks
from realchat.engine.context import StepContext
from realchat.intents import TrainIntents, summarize, with_intent, write_intents
from realchat.models import served_identity
from realchat.models.provenance import portable_name
from realchat.models.usage import BudgetReached, ServedBudget
from realchat.recipe.base import DEFAULT_MODEL, DEFAULT_USER_SYSTEM_PROMPT, Produces, StepConfig
from realchat.recipe.refs import ChatTemplateRef, DatasetRef, ModelRef
from realchat.steps.base import StepKind, StepResult
from realchat.training.chat_format import as_user_simulator
from realchat.training.checkpoints import checkpoint_faults
from realchat.training.trainer import TrainingDataError, TrainingSettings, train_sft


class SftConfig(StepConfig, TrainingSettings, ServedBudget):
    """Fine-tune ``base_model`` on ``dataset`` with the loss on the ``loss_on`` role's turns.

    ``max_cost`` / ``max_tokens_total`` bound the intent summariser (``intent.source: model``), the
    step's only served model: a spent budget stops the step before training, the summaries written
    so far kept in RealChat's cache, and a rerun with a higher limit goes on from them."""

    kind: Literal["sft"] = "sft"
    produces: ClassVar[Produces] = "model"
    #: ``user``: a user simulator (UserGPT); ``assistant``: an assistant (ReaLM).
    loss_on: Literal["user", "assistant"]
    #: A step name (an sft step's model), a folder, a ``.gguf`` file, ``pkg://`` or a Hub id.
    base_model: ModelRef = DEFAULT_MODEL
    #: The chat format to train in: a built-in name (`vicuna`: the paper's format; `chatml`, `llama-2`,
    #: `llama-3`, `mistral`, `gemma`, `phi-3`) or a Jinja file. Required when the base model's tokenizer
    #: has none (a base model); replaces its own otherwise. Saved into the trained model's tokenizer, so
    #: every step that loads the model renders this format.
    chat_template: ChatTemplateRef | None = None
    #: Training conversations: a step name (its train split), ``{step, split}``, a file, a Hub id.
    dataset: DatasetRef
    #: Conversations for the held-out loss (e.g. ``{step: curate, split: held_out}``); without it,
    #: ``eval_share`` of ``dataset`` is held out by the hash of the conversation id.
    eval_dataset: DatasetRef | None = None
    #: Without `eval_dataset`: the share of `dataset` held out for the eval loss (by the hash of the
    #: conversation id).
    eval_share: float = Field(0.0, ge=0, lt=1)
    #: ``loss_on: user``: the simulator's system prompt (replaces the conversation's own; default:
    #: the paper's meaning). ``loss_on: assistant``: replaces the data's system prompt when set.
    system_prompt: str | None = None
    #: UserLM-style end-of-conversation marker the simulator learns to write after the last
    #: assistant turn (``loss_on: user`` only; null turns it off).
    end_marker: str | None = None
    #: Use at most this many training conversations (real conversations: all segments ``split`` cut
    #: one into count once), a hash sample by the recipe's seed; null = all.
    max_conversations: int | None = Field(None, ge=1)
    #: ``loss_on: user``: intent conditioning (UserLM): each conversation's one-sentence goal in the
    #: simulator's system prompt, from the data's ``intent`` column or summarised by a model; null = off.
    intent: TrainIntents | None = None
    license: str = "apache-2.0"

    @model_validator(mode="after")
    def _intent_for_user(self) -> "SftConfig":
        if self.intent is not None and self.loss_on != "user":
            raise ValueError("intent conditions a user simulator: it needs loss_on: user")
        return self

    @model_validator(mode="after")
    def _budget_has_a_model(self) -> "SftConfig":
        if (self.max_cost is not None or self.max_tokens_total is not None) and (
                self.intent is None or self.intent.source != "model"):
            key = "max_cost" if self.max_cost is not None else "max_tokens_total"
            raise ValueError(f"{key} bounds the intent summariser, the only model an sft step calls; it needs "
                             "intent: {source: model, summarizer: …} (training itself is not metered)")
        return self


def user_system_prompt(cfg: SftConfig) -> str:
    return cfg.system_prompt if cfg.system_prompt is not None else DEFAULT_USER_SYSTEM_PROMPT


def prepare(cfg: SftConfig, convs: list[Conversation]) -> list[list[dict[str, str]]]:
    """Conversations as the model trains on them: flipped for a simulator, system prompt swapped."""
    if cfg.loss_on == "user":
        template = cfg.intent.template if cfg.intent else None
        return [as_user_simulator(c["messages"], with_intent(template, user_system_prompt(cfg), c.get("intent"))
                                  if template else user_system_prompt(cfg), cfg.end_marker,
                                  c.get("ends_conversation", True)) for c in convs]
    if cfg.system_prompt is not None:
        return [[{"role": "system", "content": cfg.system_prompt}] + [m for m in c["messages"] if m["role"] != "system"]
                for c in convs]
    return [c["messages"] for c in convs]


class Sft(StepKind):
    name = "sft"
    Config = SftConfig
    card = "model"
    summary = "fine-tune a model with TRL, loss on user (UserGPT) or assistant (ReaLM) turns"
    every_rank = True  # under torchrun / accelerate launch every rank trains; the main one writes

    def check(self, config: SftConfig, base_dir: Path) -> None:  # type: ignore[override]
        """``trl:`` keys against TRL's SFTConfig; ``report_to`` integrations installed."""
        import importlib.util

        from realchat.errors import RecipeError
        from realchat.extras import require
        from realchat.training.trl_options import check_trl_options

        require("train", "sft")  # before TRL is imported below

        check_trl_options(config.trl, SftConfig.model_fields)
        targets = [config.report_to] if isinstance(config.report_to, str) else list(config.report_to)
        for target in targets:
            module = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
                      "trackio": "trackio"}.get(target)
            if module and importlib.util.find_spec(module) is None:
                raise RecipeError(f"report_to {target}: the {module} package is not installed", field="report_to",
                                  hint=f"pip install {module}, or report_to: none")

    def check_launch(self, config: SftConfig, world_size: int, recipe: Path) -> None:  # type: ignore[override]
        """``fsdp:`` / ``deepspeed:`` need a multi-process launch (:mod:`realchat.training.launch`)."""
        from realchat.training.launch import check_launch

        check_launch(config.fsdp, config.deepspeed, world_size, str(recipe))

    def run(self, ctx: StepContext, out: Path, callbacks: list[Any] | None = None) -> StepResult:
        cfg: SftConfig = ctx.config  # type: ignore[assignment]
        started = time.perf_counter()
        with ranks.main_first():  # under torchrun, one process fills the model cache, the others read it
            base = ctx.resolve_model(cfg.base_model, "base_model")
        # the format is settled before anything is paid for (intent summaries) or trained
        template = ctx.chat_template(cfg.chat_template, "chat_template")
        with ctx.blame("chat_template"):
            check_format(base, template)
        convs = ctx.conversations("dataset")
        role = cfg.loss_on
        if not any(m["role"] == role for c in convs for m in c["messages"]):
            raise TrainingDataError(f"no {role} turns to train on ({len(convs)} conversations, none with a "
                                    f"'{role}' message)", file=str(ctx.loaded.path), field=ctx.key("dataset"),
                                    hint="check the dataset's roles")
        if cfg.eval_dataset is not None:
            train, held = convs, ctx.conversations("eval_dataset")
        else:
            train, held = split_held_out(convs, cfg.eval_share)
        counts: dict[str, int] = {}
        if cfg.max_conversations:
            # conversations, not rows: every segment of a hash sample (by the seed) of the conversations
            train = sample_conversations(train, cfg.max_conversations, ctx.seed)
            held = sample_conversations(held, max(1, cfg.max_conversations // 10), ctx.seed) if held else held
        if role == "user":
            # a follow-up whose answer-before split could not keep: the simulator would learn to ask
            # "continue" out of nowhere (realchat/curation/ops/split.py)
            before = len(train) + len(held)
            train = [c for c in train if not c.get("follows_unseen_answer")]
            held = [c for c in held if not c.get("follows_unseen_answer")]
            counts["dropped_follow_ups_without_answer"] = before - len(train) - len(held)
        counts["conversations"] = len({c.get("base_id", c["id"]) for c in train})
        counts["rows"] = len(train)
        intent_stats = attach_intents(ctx, cfg, train + held) if cfg.intent and role == "user" else None
        # conversations (base_id), not rows: a cut conversation is several segments (rows)
        held_convs = len({c.get("base_id", c["id"]) for c in held})
        ctx.console.print(f"{ctx.name}: {counts['conversations']:,} conversations ({len(train):,} rows) to train on, "
                          f"{held_convs:,} ({len(held):,} rows) held out; "
                          f"base {cfg.base_model}; loss on {role} turns")
        with checkpoint_faults(ctx.work_dir(), log=ctx.console.print), ctx.blame("dataset"):
            stats = train_sft(cfg, base_model=base, train_convs=prepare(cfg, train), eval_convs=prepare(cfg, held),
                              loss_role=role, out=out, work=ctx.work_dir(), seed=ctx.seed,
                              show_progress=ctx.show_progress and ctx.console.is_terminal,
                              callbacks=callbacks, log=ctx.console.print, reporter=ctx.reporter,
                              chat_template=template)
        stats["training_data"] = counts
        stats["base_model_ref"] = cfg.base_model
        # as the recipe names it (a pkg:// file by distribution and version), never the resolved path on
        # the builder's disk (its site-packages, its cache of de-quantised GGUFs)
        stats["base_model"] = portable_name(cfg.base_model)
        stats["chat_template"] = cfg.chat_template or "the base model's own"
        stats["system_prompt"] = user_system_prompt(cfg) if role == "user" else cfg.system_prompt
        stats["end_marker"] = cfg.end_marker if role == "user" else None
        # simulate reads the template here, as it reads the end marker: the same prompt at both times
        stats["intent_template"] = cfg.intent.template if intent_stats else None
        if intent_stats:
            stats["intents"] = intent_stats
            written = write_intents(out, train + held, cfg.intent.summarizer if cfg.intent else None)
            stats["intents"]["file"] = str(written.relative_to(out)) if written else None
        stats["versions"] = package_versions()
        stats["seconds_total"] = round(time.perf_counter() - started, 1)
        return StepResult(stats=stats)


def check_format(base: str, template: str | None) -> None:
    """The base model's tokenizer has a chat template, or the recipe gives one (a Hub model is only
    known here, at the step's start); the template renders the probe conversations."""
    from realchat.models import load_tokenizer
    from realchat.models.chat_formats import ChatFormat, apply_template

    ChatFormat.of(apply_template(load_tokenizer(base), template, base))


def attach_intents(ctx: StepContext, cfg: SftConfig, convs: list[Conversation]) -> dict[str, Any]:
    """Give each conversation its ``intent`` (from the data, or summarised by the recipe's model,
    cached in the work folder); conversations left without one train on the plain system prompt."""
    assert cfg.intent is not None
    it = cfg.intent
    asked = 0
    if it.source == "model":
        assert it.summarizer is not None
        summarizer = it.summarizer
        with ranks.main_first():  # under torchrun the main process summarises; the others read its cache
            # keyed by request in RealChat's cache: a rerun, another step or another key asks none again
            meter = ctx.meter()
            meter.role("intent_summarizer", summarizer.backend)
            try:
                intents, asked = summarize(convs, summarizer,
                                           lambda: ctx.open_backend(summarizer.backend, "intent.summarizer.backend"),
                                           log=ctx.console.print, meter=meter)
            except BudgetReached as e:  # the summaries written so far stay cached: the rerun asks only the rest
                e.file, e.field = str(ctx.loaded.path), ctx.key(e.field or "max_cost")
                raise
            finally:
                if ranks.is_main():
                    meter.save()  # what this run spent counts towards the budget of the next
        for c, intent in zip(convs, intents):
            c["intent"] = intent
    have = sum(1 for c in convs if c.get("intent"))
    if not have:
        from realchat.errors import RecipeError

        raise RecipeError(f"intent source {it.source}: none of the {len(convs):,} conversations has an intent"
                          + (" (the data has no 'intent' column or key)" if it.source == "column" else ""),
                          file=str(ctx.loaded.path), field=ctx.key("intent.source"),
                          hint="a step output with an intent column, a file whose records have an 'intent' "
                               "key, or source: model with a summarizer")
    ctx.console.print(f"{ctx.name}: intents for {have:,} of {len(convs):,} conversations ({it.source})")
    return {"source": it.source, "with_intent": have, "without_intent": len(convs) - have,
            **({"usage": ctx.meter().report()} if it.source == "model" else {}),
            "summarized_this_run": asked,
            "summarizer": getattr(it.summarizer.backend, "model", None) if it.summarizer else None,
            "summarizer_model": served_identity(it.summarizer.backend) if it.summarizer else None,
            "example": next(c["intent"] for c in convs if c.get("intent"))}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "huggingface_hub", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
