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
from realchat.recipe import LoadedRecipe
from realchat.runs import atomic_output, fingerprint, is_done, read_manifest, stage_dir
from realchat.sources import source_revision
from realchat.stages import curate
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
RUNNERS: dict[str, Runner] = {"curate": curate.run}


def plan(loaded: LoadedRecipe) -> list[StagePlan]:
    run_root = Path(loaded.recipe.run_root)
    plans: list[StagePlan] = []
    parent_fp: str | None = None
    for name in loaded.stage_names():
        cfg = loaded.stage_config(name)
        if name == "curate":
            inputs = f"{cfg.source.format}: {cfg.source.path}"  # type: ignore[attr-defined]
            input_fp = source_revision(cfg.source, loaded.base_dir)  # type: ignore[attr-defined]
        else:
            inputs = plans[-1].name if plans else "?"
            input_fp = parent_fp or ""
        fp = fingerprint(name, cfg.model_dump(mode="json"), [input_fp])
        out = stage_dir(run_root, loaded.name, name)
        plans.append(StagePlan(name, inputs, out, fp, is_done(out, fp), input_fp))
        parent_fp = fp
    return plans


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
    with atomic_output(p.output) as tmp:
        return RUNNERS[p.name](ctx, tmp, p.fingerprint, p.input_fingerprint)


def finished_stats(p: StagePlan) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((p.output / "stats.json").read_text())
    except (OSError, ValueError):
        return None


__all__ = ["StagePlan", "plan", "select", "build_stage", "finished_stats", "read_manifest"]
