"""The build engine: resolve each stage's fingerprint, skip what is done, run the rest in order.

Stages form a chain (curate → train_user → simulate → train_assistant → evaluate as they land); a
stage's fingerprint includes its parent's, so changing an early stage invalidates everything after it
and nothing before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realchat.errors import RecipeError
from realchat.recipe import STAGE_REF, LoadedRecipe
from realchat.runs import atomic_output, fingerprint, is_done, read_manifest, stage_dir
from realchat.sources import source_revision
from realchat.stages.context import StageContext


@dataclass
class StagePlan:
    name: str
    inputs: str
    output: Path
    fingerprint: str
    done: bool
    input_fingerprint: str


Runner = Callable[[StageContext, Path, str, str], dict[str, Any]]


def runner(stage: str) -> Runner:
    """The stage's ``run`` function (imported lazily: training pulls in torch and TRL)."""
    if stage == "curate":
        from realchat.stages import curate

        return curate.run
    if stage in ("train_user", "train_assistant"):
        from realchat.stages import train

        return train.run
    if stage == "simulate":
        from realchat.stages import simulate

        return simulate.run
    if stage == "evaluate":
        from realchat.stages import evaluate

        return evaluate.run
    raise RecipeError(f"no runner for stage {stage!r}")


#: Config fields holding model references whose identity (content sha256, or the Hub id) enters the
#: fingerprint when they do not name a stage.
MODEL_FIELDS = ("base_model", "model", "tokenizer", "embedding_model", "simulator_model", "baseline_model")


def stage_inputs(loaded: LoadedRecipe, name: str) -> tuple[list[str], list[str]]:
    """(parent stages, external model and data file references) that stage ``name`` reads."""
    cfg = loaded.stage_config(name).model_dump(mode="json")
    parents: list[str] = []
    models: list[str] = []

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            if node.get("data_format") == "stage" and isinstance(node.get("dataset"), str):
                parents.append(node["dataset"])
            elif node.get("data_format") not in (None, "hub") and isinstance(node.get("dataset"), str):
                models.append(node["dataset"])  # a data file: its content sha256 enters the fingerprint
            if node.get("questions_format") == "fastchat_dir":
                models.append(node["questions"])  # benchmark questions, references and judge prompts
            if node.get("judge_prompts"):
                models.append(node["judge_prompts"])
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str):
            if node.startswith(STAGE_REF):
                parents.append(node[len(STAGE_REF):])
            elif key in MODEL_FIELDS:
                models.append(node)

    walk(cfg)
    if name == "simulate" and cfg.get("mode") != "seeded":
        seeds = cfg.get("seeds", {})
        if seeds.get("data_format") == "stage" and seeds.get("dataset") in parents:
            parents.remove(seeds["dataset"])
    return list(dict.fromkeys(parents)), list(dict.fromkeys(models))


def plan(loaded: LoadedRecipe) -> list[StagePlan]:
    from realchat.models import model_identity

    run_root = Path(loaded.recipe.run_root)
    plans: list[StagePlan] = []
    fps: dict[str, str] = {}
    names = loaded.stage_names()
    for name in names:
        cfg = loaded.stage_config(name)
        if name == "curate":
            inputs = f"{cfg.source.format}: {cfg.source.path}"  # type: ignore[attr-defined]
            input_fp = source_revision(cfg.source, loaded.base_dir)  # type: ignore[attr-defined]
            parts = [input_fp]
        else:
            parents, models = stage_inputs(loaded, name)
            for parent in parents:
                if parent not in fps:
                    why = "is not in the recipe" if parent not in names else f"comes after {name}"
                    raise RecipeError(f"{name} reads stage {parent!r}, which {why}", file=str(loaded.path),
                                      field=f"stages.{name}")
            parts = [fps[p] for p in parents] + [json_key(model_identity(m, loaded.base_dir)) for m in models]
            inputs = ", ".join(parents + [m.rsplit("/", 1)[-1] for m in models]) or "-"
            input_fp = fingerprint(name, {}, parts)
        fp = fingerprint(name, cfg.model_dump(mode="json"), parts)
        out = stage_dir(run_root, loaded.name, name)
        plans.append(StagePlan(name, inputs, out, fp, is_done(out, fp), input_fp))
        fps[name] = fp
    return plans


def json_key(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


def select(plans: list[StagePlan], only: str | None, start: str | None) -> list[StagePlan]:
    names = [p.name for p in plans]
    for flag, value in (("--only", only), ("--from", start)):
        if value is not None and value not in names:
            raise RecipeError(f"{flag} {value!r}: no such stage in the recipe (stages: {', '.join(names)})")
    if only:
        return [p for p in plans if p.name == only]
    if start:
        return plans[names.index(start):]
    return plans


def build_stage(loaded: LoadedRecipe, p: StagePlan, ctx: StageContext) -> dict[str, Any]:
    """Run one stage into its atomic output; its work folder (checkpoints, part files) is kept for a
    resume until the output is in place, then removed."""
    import shutil

    with atomic_output(p.output) as tmp:
        stats = runner(p.name)(ctx, tmp, p.fingerprint, p.input_fingerprint)
    shutil.rmtree(ctx.work_dir(p.fingerprint), ignore_errors=True)
    return stats


__all__ = ["StagePlan", "plan", "select", "build_stage", "read_manifest"]
