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

from realchat.curation.conversations import UniqueIds, normalize
from realchat.curation.ops import REGISTRY
from realchat.curation.ops.base import MESSAGES_DTYPE
from realchat.curation.reference import read_reference
from realchat.curation.scores import plot_scores, score_report
from realchat.curation.sources import DEFAULT_ROLES, SourceConfig, open_source, source_revision
from realchat.data import split_of
from realchat.engine.context import StepContext
from realchat.errors import RecipeError
from realchat.recipe.base import DEFAULT_MODEL, PACKAGE_PREFIX_HINT, StepConfig
from realchat.recipe.refs import ModelRef, input_problem, resolve_local
from realchat.steps.base import StepKind, StepResult, data_configs

#: Any curation op's parameters, chosen by ``op``.
FilterParams = Annotated[Union[tuple(cls.Params for cls in REGISTRY.values())], Field(discriminator="op")]  # type: ignore[valid-type]

BASE_SCHEMA = {
    "conversation_id": pl.String,
    "source_index": pl.Int64,
    "segment": pl.Int32,
    "messages": MESSAGES_DTYPE,
}
REJECT_COLUMNS = {
    "reason": pl.String,
    "rule": pl.String,
    "scope": pl.String,
    "score": pl.Float64,
    "detail": pl.String,
    "raw": pl.String,
}


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
    records, report = open_source(cfg.source, ctx.base_dir)
    report.revision = report.revision or source_revision(cfg.source, ctx.base_dir)
    id_prefix = Path(cfg.source.path).stem or "record"

    rows: list[dict[str, Any]] = []
    read_rejects: list[dict[str, Any]] = []
    n_read = 0
    unique = UniqueIds()
    for rec in ctx.progress(records, "read"):
        n_read += 1
        row, rej = normalize(rec, cfg.roles, cfg.source.id_field, id_prefix)
        if row is not None:
            row["conversation_id"] = unique(row["conversation_id"])
            rows.append(row)
        else:
            assert rej is not None
            read_rejects.append(
                {"conversation_id": rej.conversation_id or f"{id_prefix}-{rec.index}", "source_index": rec.index,
                 "segment": 0, "messages": None, "reason": rej.reason, "rule": "source",
                 "scope": None, "score": None, "detail": rej.detail, "raw": rej.raw}
            )
    if unique.renamed:
        many = unique.renamed != 1
        report.warnings.append(f"{unique.renamed:,} record{'s' if many else ''} repeat{'' if many else 's'} an "
                               "earlier record's conversation id; the later ones were renamed <id>~2, <id>~3, ... (ids compare as strings: 1 and \"1\" are one id)")
    for w in report.warnings:
        ctx.console.print(f"[yellow]warning:[/yellow] {w}")
    table = pl.DataFrame(rows, schema=BASE_SCHEMA)
    rejected = [pl.DataFrame(read_rejects, schema=BASE_SCHEMA | REJECT_COLUMNS)]
    rules: list[dict[str, Any]] = [{
        "rule": "source", "op": "read", "in": n_read, "out": table.height,
        "rejected": len(read_rejects), "seconds": round(time.perf_counter() - started, 3),
        "counters": _count_by(read_rejects, "reason")
        | ({"renamed_duplicate_ids": unique.renamed} if unique.renamed else {}),
    }]

    tokens = lambda: ctx.token_counter(cfg.tokenizer, "tokenizer")  # noqa: E731 - loaded on first use
    references = {i: read_reference(ctx, f"filters[{i}].reference")  # earlier releases to dedup against
                  for i, params in enumerate(cfg.filters) if getattr(params, "reference", None) is not None}
    executor = ctx.loaded.recipe.executor
    if executor.kind == "ray":
        from realchat.curation.ray_executor import run_ops_on_ray

        table, op_rejected, op_rules = run_ops_on_ray(ctx, cfg, table, executor, references)
        for i, rej in op_rejected:
            op = cfg.filters[i].op
            rejected.append(rej.with_columns(pl.lit(op).alias("reason"), pl.lit(f"filters[{i}].{op}").alias("rule"),
                                             pl.lit(None, dtype=pl.String).alias("raw")))
        rules += op_rules
    for i, params in enumerate(cfg.filters if executor.kind == "local" else []):
        t0 = time.perf_counter()
        inputs = {"reference": references[i]} if i in references else None
        op = REGISTRY[params.op](params, tokens, ctx.progress, inputs)
        n_in = table.height
        # a line when the op starts and one when it ends in a job log; a bar on a terminal
        with ctx.progress_counter(f"filters[{i}] {params.op}", n_in, "rows") as shown:
            result = op.apply(table)
            shown.update(completed=n_in, kept=result.kept.height)
        rule = f"filters[{i}].{params.op}"
        n_rej = 0
        if result.rejected is not None and result.rejected.height:
            rej = result.rejected.with_columns(
                pl.lit(params.op).alias("reason"), pl.lit(rule).alias("rule"),
                pl.lit(None, dtype=pl.String).alias("raw"),
            )
            rejected.append(rej)
            n_rej = rej.height
        table = result.kept
        rules.append({"rule": rule, "op": params.op, "in": n_in, "out": table.height,
                      "rejected": n_rej, "seconds": round(time.perf_counter() - t0, 3),
                      "counters": result.counters})

    rejected_df = pl.concat([r for r in rejected if r.height] or [rejected[0]], how="diagonal_relaxed")
    # scope: "piece" when some other part of the same source record is kept (split, or dedup after
    # split), else "conversation". A record is rejected exactly when none of it is kept.
    kept_index = table["source_index"].unique()
    rejected_df = rejected_df.with_columns(
        pl.when(pl.col("source_index").is_in(kept_index.implode()))
        .then(pl.lit("piece")).otherwise(pl.lit("conversation")).alias("scope")
    )
    share = cfg.held_out_share
    table = table.with_columns(
        pl.col("conversation_id").map_elements(lambda c: split_of(c, share), return_dtype=pl.String).alias("split"))
    n_rejected = rejected_df.filter(pl.col("scope") == "conversation")["source_index"].n_unique()
    stats = _stats(table, rejected_df, n_read, kept_index.len(), n_rejected, rules, report,
                   time.perf_counter() - started)
    stats["held_out_share"] = share
    stats["scores"] = score_report(table, rejected_df, list(cfg.filters))
    if cfg.score_plot and stats["scores"]:
        plot_scores(stats["scores"], out / "scores.png")
        stats["score_plot"] = "scores.png"
    stats["split_rows"] = dict(sorted(table.group_by("split").len().iter_rows())) if table.height else {}
    _write_shards(table, out / "data", cfg.shard_rows)
    _write_shards(rejected_df, out / "rejected", cfg.shard_rows)
    return stats


def _count_by(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r[key]] = out.get(r[key], 0) + 1
    return out


def _write_shards(df: pl.DataFrame, folder: Path, shard_rows: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = max(1, -(-df.height // shard_rows))
    for k in range(n):
        part = df.slice(k * shard_rows, shard_rows)
        part.write_parquet(folder / f"train-{k:05d}-of-{n:05d}.parquet", compression="zstd")


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


def _stats(kept: pl.DataFrame, rejected: pl.DataFrame, n_read: int, kept_conversations: int,
           rejected_conversations: int, rules: list[dict[str, Any]], report: Any,
           seconds: float) -> dict[str, Any]:
    roles = kept.select(
        pl.col("messages").list.eval(pl.element().struct.field("role") == "user").list.sum().alias("u"),
        pl.col("messages").list.len().alias("n"),
    )
    user_text = kept.select(pl.col("messages").explode().struct.field("content").alias("c"),
                            pl.col("messages").explode().struct.field("role").alias("r")).filter(
        pl.col("r") == "user")
    stats: dict[str, Any] = {
        "read": n_read,
        "kept_conversations": kept_conversations,
        "rejected_conversations": rejected_conversations,
        "balanced": n_read == kept_conversations + rejected_conversations,
        "kept_rows": kept.height,
        "rejected_rows": rejected.height,
        "rejected_by_reason": dict(sorted(
            rejected.group_by("reason").len().iter_rows(), key=lambda kv: -kv[1])) if rejected.height else {},
        "rules": rules,
        "source": {"path": report.path, "format": report.format, "revision": report.revision,
                   "warnings": report.warnings, "truncated_at_byte": report.truncated_at_byte},
        "user_turns_per_row": _histogram(roles["u"].to_list(), [0, 1, 2, 3, 4, 5, 9, 17]),
        "messages_per_row": _quantiles(roles["n"]),
        "user_turn_chars": _quantiles(user_text["c"].str.len_chars()),
        "seconds": round(seconds, 2),
    }
    if "user_lang" in kept.columns:
        langs = kept.select(pl.col("user_lang").explode()).drop_nulls()["user_lang"].value_counts(sort=True)
        stats["languages"] = {k: int(v) for k, v in langs.iter_rows()}
    if "user_tokens" in kept.columns:
        stats["user_turn_tokens"] = _quantiles(kept.select(pl.col("user_tokens").explode()).drop_nulls()["user_tokens"])
    pii: dict[str, int] = {}
    for r in rules:  # findings of every redact_pii rule, per kind, for the card
        if r["op"] == "redact_pii":
            for k, v in r["counters"].items():
                pii[k] = pii.get(k, 0) + v
    if pii:
        stats["pii"] = pii
    return stats
