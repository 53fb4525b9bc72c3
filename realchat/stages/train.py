"""Stages ``train_user`` (UserGPT) and ``train_assistant`` (ReaLM): conversations → a model folder.

The output folder is a normal transformers model (safetensors, tokenizer with chat template,
generation config) plus ``loss.png``, ``stats.json``, the model card and ``manifest.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from realchat.cards import render_card
from realchat.chat_format import as_user_simulator
from realchat.datasets_io import read_conversations, split_held_out
from realchat.recipe import DEFAULT_USER_SYSTEM_PROMPT, TrainStage
from realchat.runs import MANIFEST, write_json
from realchat.stages.context import StageContext
from realchat.trainers import TrainingDataError, train_sft

LOSS_ROLE = {"train_user": "user", "train_assistant": "assistant"}


def user_system_prompt(cfg: TrainStage) -> str:
    return cfg.system_prompt if cfg.system_prompt is not None else DEFAULT_USER_SYSTEM_PROMPT


def prepare(stage: str, cfg: TrainStage, convs: list[dict[str, Any]]) -> list[list[dict[str, str]]]:
    if stage == "train_user":
        return [as_user_simulator(c["messages"], user_system_prompt(cfg), cfg.end_marker) for c in convs]
    if cfg.system_prompt is not None:
        return [[{"role": "system", "content": cfg.system_prompt}] + [m for m in c["messages"] if m["role"] != "system"]
                for c in convs]
    return [c["messages"] for c in convs]


def run(ctx: StageContext, out: Path, fingerprint: str, input_fingerprint: str,
        callbacks: list[Any] | None = None) -> dict[str, Any]:
    stage = ctx.stage
    cfg: TrainStage = ctx.loaded.stage_config(stage)  # type: ignore[assignment]
    started = time.perf_counter()
    base = ctx.resolve_model(cfg.base_model, f"stages.{stage}.base_model")
    convs = read_conversations(cfg.dataset, cfg.data_format, ctx.loaded.base_dir, ctx.stage_output)
    role = LOSS_ROLE[stage]
    if not any(m["role"] == role for c in convs for m in c["messages"]):
        raise TrainingDataError(f"{cfg.dataset}: no {role} turns to train on ({len(convs)} conversations, "
                                f"none with a '{role}' message)", file=str(ctx.loaded.path),
                                field=f"stages.{stage}.dataset", hint="check the dataset's roles")
    train, held = split_held_out(convs, cfg.eval_share)
    if cfg.max_conversations:
        train = train[: cfg.max_conversations]
        held = held[: max(1, cfg.max_conversations // 10)] if held else held
    work = ctx.work_dir(fingerprint)
    ctx.console.print(f"{stage}: {len(train):,} conversations to train on, {len(held):,} held out; "
                      f"base {cfg.base_model}")
    stats = train_sft(cfg, base_model=base, train_convs=prepare(stage, cfg, train),
                      eval_convs=prepare(stage, cfg, held), loss_role=LOSS_ROLE[stage], out=out, work=work,
                      seed=ctx.loaded.recipe.seed, show_progress=ctx.show_progress and ctx.console.is_terminal,
                      callbacks=callbacks, log=ctx.console.print)
    stats["base_model_ref"] = cfg.base_model
    stats["system_prompt"] = user_system_prompt(cfg) if stage == "train_user" else cfg.system_prompt
    stats["end_marker"] = cfg.end_marker if stage == "train_user" else None
    stats["seconds_total"] = round(time.perf_counter() - started, 1)
    write_json(out / "stats.json", stats)
    parents = [ctx.parent_ref(cfg.dataset)] if cfg.data_format == "stage" else [
        {"source": cfg.dataset, "format": cfg.data_format, "revision": None}]
    manifest = ctx.manifest(fingerprint, versions=package_versions(), parents=parents,
                            base_model=ctx.model_ref_lineage(cfg.base_model))
    (out / "README.md").write_text(render_card(ctx.loaded, stage, manifest, stats))
    write_json(out / MANIFEST, manifest)
    return stats


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "huggingface_hub", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
