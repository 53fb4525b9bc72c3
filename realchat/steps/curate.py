"""Step kind ``curate``: raw chat logs → curated conversations + rejected set + stats.

Data flows one way: source records → canonical conversations (:mod:`realchat.curation.conversations`)
→ the recipe's ops in the recipe's order (:mod:`realchat.curation.ops`) → parquet. Every record read
ends in exactly one of two places:

* ``data/``: kept conversations (or their segments, after ``split``), each with a ``split`` column:
  ``train`` or ``held_out`` by the hash of its conversation id (``held_out_share`` of them), so every
  later step that needs conversations a model never saw asks for ``{step: <this>, split: held_out}``;
* ``rejected/``: rows with ``reason`` (the op or read error), ``rule`` (its key path in the recipe),
  ``score`` and ``detail``; ``scope`` is ``conversation`` when the whole conversation left, ``piece``
  for a part that ``split`` could not place (the rest of that conversation is kept).

``stats.json`` checks the books: ``read == kept_conversations + rejected_conversations``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import polars as pl
from pydantic import Field

from realchat.curation.local_executor import run_local
from realchat.curation.ops import REGISTRY
from realchat.curation.parts import CurateSink, SinkFigures
from realchat.curation.pipeline import BASE_SCHEMA, ExecutorRun, renamed_warning  # noqa: F401 - BASE_SCHEMA: the table ops take
from realchat.curation.reference import read_reference
from realchat.curation.scores import plot_scores, score_report
from realchat.curation.sources import DEFAULT_ROLES, SourceConfig, source_revision
from realchat.curation.sources.base import ReadReport
from realchat.data import fastchat_conversation, split_of
from realchat.engine.context import StepContext
from realchat.errors import RecipeError
from realchat.models.provenance import package_label
from realchat.recipe.base import DEFAULT_MODEL, PACKAGE_PREFIX_HINT, StepConfig
from realchat.recipe.refs import ModelRef, input_problem, resolve_local
from realchat.steps.base import StepKind, StepResult, data_configs

#: Any curation op's parameters, chosen by ``op``.
FilterParams = Annotated[Union[tuple(cls.Params for cls in REGISTRY.values())], Field(discriminator="op")]  # type: ignore[valid-type]

class CurateConfig(StepConfig):
    """Raw chat logs → conversations whose user turns are fit to train a user simulator."""

    kind: Literal["curate"] = "curate"
    #: Where the raw conversations come from (format, path, revision, limit).
    source: SourceConfig = SourceConfig()
    #: Source role name → canonical role. Roles not in the table are a counted rejection reason.
    roles: dict[str, Literal["user", "assistant", "system"]] = Field(default_factory=lambda: dict(DEFAULT_ROLES))
    #: Tokenizer for token limits and splitting: the model trained next (HF id, folder, ``.gguf`` file
    #: or ``pkg://`` reference).
    tokenizer: ModelRef = DEFAULT_MODEL
    #: Applied in this order; each rejected conversation records the first rule that removed it.
    filters: list[FilterParams] = Field(default_factory=list)  # type: ignore[valid-type]
    #: Share of conversations (by the hash of their id; every segment of one goes the same way) marked
    #: ``held_out`` in the ``split`` column: what no model trains on, for held-out loss and fidelity.
    held_out_share: float = Field(0.02, ge=0, lt=1)
    #: The source's records are already segments: ids ``<conversation>_<k>`` from FastChat's
    #: ``split_long_conversation`` (ShareGPT_V3_unfiltered_cleaned_split.json: 8,088 of its 17,672
    #: shipped records are later segments). On: the segments of one conversation are one conversation
    #: (``base_conversation_id``; held-out split, sampling, seeds, evaluation), and a later segment is
    #: marked as opening with a follow-up whose answer is elsewhere. Off: every record is a conversation.
    fastchat_segment_ids: bool = False
    #: Rows per parquet shard of the output.
    shard_rows: int = Field(50_000, ge=1)
    #: Also draw the score distributions (``scores.png``, linked from the card); the figures are always
    #: in ``stats.json`` and the card. Off by default: matplotlib costs about a second.
    score_plot: bool = False


class Curate(StepKind):
    name = "curate"
    Config = CurateConfig
    summary = "raw chat logs → curated conversations (train / held_out) + rejected set"

    def external_inputs(self, config: StepConfig, base_dir: Path) -> list[Any]:
        src = config.source  # type: ignore[attr-defined]
        from realchat.models import upstream_dataset

        return [{"key": "source", "role": "dataset", "source": src.path, "format": src.format,
                 "revision": source_revision(src, base_dir), "repo": upstream_dataset(src.path, src.format)}]

    def check(self, config: StepConfig, base_dir: Path) -> None:
        src = config.source  # type: ignore[attr-defined]
        if src.format == "hub":
            return
        try:
            path = resolve_local(src.path, base_dir)
        except RecipeError as e:
            e.field = "source.path"
            raise
        problem = input_problem(path, src.format)
        if problem == "not found":
            raise RecipeError(f"file not found: {path}", field="source.path", hint=PACKAGE_PREFIX_HINT)
        if problem is not None:
            raise RecipeError(f"{path}: {problem}", field="source.path")

    def card_metadata(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Real logs: people wrote the user turns, a model the assistant turns; nothing is annotated
        (the per-turn scores are computed)."""
        return {"annotations_creators": ["no-annotation"], "language_creators": ["found", "machine-generated"]}

    def run(self, ctx: StepContext, out: Path) -> StepResult:
        return StepResult(stats=curate(ctx, ctx.config, out), manifest={"configs": data_configs(out)})  # type: ignore[arg-type]


def curate(ctx: StepContext, cfg: CurateConfig, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    references = {i: read_reference(ctx, f"filters[{i}].reference")  # earlier releases to dedup against
                  for i, params in enumerate(cfg.filters) if getattr(params, "reference", None) is not None}
    share = cfg.held_out_share
    sink = CurateSink(out, cfg.shard_rows, lambda cid: split_of(cid, share),
                      fastchat_conversation if cfg.fastchat_segment_ids else None)
    if ctx.loaded.recipe.executor.kind == "ray":
        from realchat.curation.ray_executor import run_on_ray

        run = run_on_ray(ctx, cfg, sink, references)
    else:
        run = run_local(ctx, cfg, sink, references, out)
    run.report.revision = run.report.revision or source_revision(cfg.source, ctx.base_dir)
    _portable_source(run.report, cfg.source.path)
    if (warning := renamed_warning(run.renamed)) is not None:
        run.report.warnings.append(warning)
    for w in run.report.warnings:
        ctx.console.print(f"[yellow]warning:[/yellow] {w}")
    figures = sink.finish()
    stats = _stats(figures, run, time.perf_counter() - started)
    stats["held_out_share"] = cfg.held_out_share
    if cfg.fastchat_segment_ids:
        stats["fastchat_later_segments"] = sink.continuation_rows
    stats["executor"] = {"kind": ctx.loaded.recipe.executor.kind} | run.figures
    stats["scores"] = score_report(figures.kept_scores, figures.rejected_scores, list(cfg.filters))
    if cfg.score_plot and stats["scores"]:
        plot_scores(stats["scores"], out / "scores.png")
        stats["score_plot"] = "scores.png"
    kept = figures.kept
    stats["split_rows"] = dict(sorted(kept.group_by("split").len().iter_rows())) if kept.height else {}
    return stats


def _histogram(values: list[int], edges: list[int]) -> dict[str, int]:
    """Counts in bins [edges[i], edges[i+1]) with a final open bin."""
    labels = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else None
        labels.append((lo, hi, str(lo) if hi == lo + 1 else (f"{lo}-{hi - 1}" if hi else f"{lo}+")))
    out = {label: 0 for _, _, label in labels}
    for v in values:
        for lo, hi, label in labels:
            if v >= lo and (hi is None or v < hi):
                out[label] += 1
                break
    return out


def _quantiles(s: pl.Series) -> dict[str, float]:
    if s.len() == 0:
        return {}
    return {
        "min": float(s.min()), "p10": float(s.quantile(0.1)), "p50": float(s.quantile(0.5)),
        "mean": round(float(s.mean()), 1), "p90": float(s.quantile(0.9)), "max": float(s.max()),
    }


def _portable_source(report: ReadReport, ref: str) -> None:
    """A packaged source (``pkg://``) named by its distribution and version in the stats, the card and
    the warnings, never by the builder's absolute site-packages path (which says nothing on another
    machine and shows where the builder keeps its venv)."""
    shown = package_label(ref)
    if shown is None:  # not a packaged file: the report names it as read
        return
    resolved = report.path
    report.path = shown
    if resolved and resolved != shown:
        report.warnings[:] = [w.replace(resolved, shown) for w in report.warnings]


def _stats(figures: SinkFigures, run: ExecutorRun, seconds: float) -> dict[str, Any]:
    kept, rejected = figures.kept, figures.rejected
    rejected_conversations = rejected.filter(pl.col("scope") == "conversation")["source_index"].n_unique()
    report = run.report
    stats: dict[str, Any] = {
        "read": run.read,
        "kept_conversations": figures.kept_conversations,
        "rejected_conversations": rejected_conversations,
        "balanced": run.read == figures.kept_conversations + rejected_conversations,
        "kept_rows": kept.height,
        "rejected_rows": rejected.height,
        "rejected_by_reason": dict(sorted(
            rejected.group_by("reason").len().iter_rows(), key=lambda kv: -kv[1])) if rejected.height else {},
        "rules": run.rules,
        "source": {"path": report.path, "format": report.format, "revision": report.revision,
                   "warnings": report.warnings, "truncated_at_byte": report.truncated_at_byte},
        "user_turns_per_row": _histogram(kept["_user_turns"].to_list(), [0, 1, 2, 3, 4, 5, 9, 17]),
        "messages_per_row": _quantiles(kept["_messages"]),
        "user_turn_chars": _quantiles(kept["_user_chars"].explode().drop_nulls()),
        "seconds": round(seconds, 2),
    }
    if "user_lang" in kept.columns:
        langs = kept.select(pl.col("user_lang").explode()).drop_nulls()["user_lang"].value_counts(sort=True)
        stats["languages"] = {k: int(v) for k, v in langs.iter_rows()}
    if "user_tokens" in kept.columns:
        stats["user_turn_tokens"] = _quantiles(kept.select(pl.col("user_tokens").explode()).drop_nulls()["user_tokens"])
    pii: dict[str, int] = {}
    for r in run.rules:  # findings of every redact_pii rule, per kind, for the card
        if r["op"] == "redact_pii":
            for k, v in r["counters"].items():
                pii[k] = pii.get(k, 0) + v
    if pii:
        stats["pii"] = pii
    return stats
