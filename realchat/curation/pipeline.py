"""What both curation executors share: reading records into conversation chunks, and the books of each rule.

An executor (:mod:`realchat.curation.local_executor` in this process, :mod:`realchat.curation.ray_executor`
on Ray) takes the source and the recipe's ops and hands every row that leaves the pipeline to a sink
(:class:`realchat.curation.parts.CurateSink`): kept rows in source order, rejected rows with their
reason and rule. What it returns is an :class:`ExecutorRun`: the per-rule figures and the read's facts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from realchat.curation.conversations import UniqueIds, normalize
from realchat.curation.ops import REGISTRY
from realchat.curation.ops.base import MESSAGES_DTYPE, OpParams, OpResult
from realchat.curation.sources.base import RawRecord, ReadReport

if TYPE_CHECKING:
    from realchat.engine.context import StepContext

BASE_SCHEMA = {
    "conversation_id": pl.String,
    "source_index": pl.Int64,
    "segment": pl.Int32,
    "messages": MESSAGES_DTYPE,
}
REJECT_COLUMNS = {
    "reason": pl.String,
    "rule": pl.String,
    "score": pl.Float64,
    "detail": pl.String,
    "raw": pl.String,
}


@dataclass
class ExecutorRun:
    rules: list[dict]
    read: int
    renamed: int
    report: ReadReport
    #: What the executor says of itself for ``stats.json`` (the local one: its peak of rows held).
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class RuleTally:
    """One rule's figures summed over the chunks it saw: rows in, out, rejected, seconds, counters."""

    rule: str
    op: str
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    seconds: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)

    def add(self, n_in: int, result: OpResult, seconds: float) -> None:
        self.rows_in += n_in
        self.rows_out += result.kept.height
        self.rejected += result.rejected.height if result.rejected is not None else 0
        self.seconds += seconds
        for k, v in result.counters.items():
            self.counters[k] = self.counters.get(k, 0) + v

    def add_figures(self, n_in: int, n_out: int, n_rejected: int, seconds: float, counters: dict[str, int]) -> None:
        """What a worker reported for one chunk."""
        self.rows_in += n_in
        self.rows_out += n_out
        self.rejected += n_rejected
        self.seconds += seconds
        for k, v in counters.items():
            self.counters[k] = self.counters.get(k, 0) + v

    def record(self) -> dict[str, Any]:
        return {"rule": self.rule, "op": self.op, "in": self.rows_in, "out": self.rows_out,
                "rejected": self.rejected, "seconds": round(self.seconds, 3), "counters": self.counters}


def label_rejected(rejected: pl.DataFrame, index: int, op: str) -> pl.DataFrame:
    """An op's rejected rows with the books' columns: the op as reason, its key path as rule."""
    return rejected.with_columns(pl.lit(op).alias("reason"), pl.lit(f"filters[{index}].{op}").alias("rule"),
                                 pl.lit(None, dtype=pl.String).alias("raw"))


class ChunkReader:
    """Raw records → frames of canonical conversations, ``chunk_rows`` at a time, in source order.

    Records that cannot become a conversation come out as rejected rows (rule ``source``) in the frame
    of the chunk they were read in; ids are made unique in reading order (:class:`UniqueIds`). The
    tally (records read, rejections by reason, ids renamed) is complete once the iterator is exhausted.
    """

    def __init__(self, roles: dict[str, str], id_field: str, id_prefix: str, chunk_rows: int,
                 max_chars: int | None = None) -> None:
        self.roles, self.id_field, self.id_prefix, self.chunk_rows = roles, id_field, id_prefix, chunk_rows
        self.max_chars = max_chars
        self.read = 0
        self.rejected_by_reason: dict[str, int] = {}
        self.unique = UniqueIds()

    def chunks(self, records: Iterable[RawRecord]) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
        rows: list[dict[str, Any]] = []
        rejects: list[dict[str, Any]] = []
        for rec in records:
            self.read += 1
            row, reject = normalised(rec, self.roles, self.id_field, self.id_prefix, self.max_chars)
            if row is not None:
                row["conversation_id"] = self.unique(row["conversation_id"])
                rows.append(row)
            else:
                assert reject is not None
                self.rejected_by_reason[reject["reason"]] = self.rejected_by_reason.get(reject["reason"], 0) + 1
                rejects.append(reject)
            if len(rows) + len(rejects) >= self.chunk_rows:
                yield self._frames(rows, rejects)
                rows, rejects = [], []
        if rows or rejects or not self.read:
            yield self._frames(rows, rejects)

    @staticmethod
    def _frames(rows: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> tuple[pl.DataFrame, pl.DataFrame]:
        return (pl.DataFrame(rows, schema=BASE_SCHEMA),
                pl.DataFrame(rejects, schema=BASE_SCHEMA | REJECT_COLUMNS))


def normalised(rec: RawRecord, roles: dict[str, str], id_field: str, id_prefix: str, max_chars: int | None = None
               ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One record as a conversation row, or as a rejected row (rule ``source``, its raw text kept)."""
    row, rej = normalize(rec, roles, id_field, id_prefix, max_chars)
    if row is not None:
        return row, None
    assert rej is not None
    return None, {"conversation_id": rej.conversation_id or f"{id_prefix}-{rec.index}",
                  "source_index": rec.index, "segment": 0, "messages": None, "reason": rej.reason,
                  "rule": "source", "score": None, "detail": rej.detail, "raw": rej.raw}


def source_rule(read: int, kept: int, rejected_by_reason: dict[str, int], renamed: int,
                seconds: float) -> dict[str, Any]:
    """The ``source`` entry of the rules list: records read, kept, rejected by reason, ids renamed."""
    return {"rule": "source", "op": "read", "in": read, "out": kept, "rejected": read - kept,
            "seconds": round(seconds, 3), "counters": dict(sorted(rejected_by_reason.items()))
            | ({"renamed_duplicate_ids": renamed} if renamed else {})}


def renamed_warning(n: int) -> str | None:
    """What the build log and the card say when ``n`` records repeated an earlier record's id."""
    if not n:
        return None
    many = n != 1
    return (f"{n:,} record{'s' if many else ''} repeat{'' if many else 's'} an earlier record's "
            "conversation id; the later ones were renamed <id>~2, <id>~3, ... (ids compare as strings: "
            "1 and \"1\" are one id)")


# -- a chain of per-conversation ops, where the rows are (a worker process, a Ray task) -------------

#: Token counters of this process, by :func:`tokenizer_spec`: loaded once per worker.
_TOKENS: dict[tuple[str, str], Any] = {}


def tokenizer_spec(ctx: "StepContext", cfg: Any) -> tuple[str, str] | None:
    """What a worker needs to load the step's tokenizer (a path or id, the base folder), converted once
    here into the shared cache; None when no op counts tokens."""
    if not any(REGISTRY[p.op].needs_tokenizer for p in cfg.filters):
        return None
    ctx.token_counter(cfg.tokenizer, "tokenizer")
    path = ctx.resolve_model(cfg.tokenizer, "tokenizer") if cfg.tokenizer in ctx.loaded.recipe.steps else cfg.tokenizer
    return (str(path), str(ctx.base_dir))


def token_getter(tokenizer: Any) -> Callable[[], Any]:
    """``tokenizer``: a :class:`~realchat.models.PortableCounter` (local workers) or what
    :func:`tokenizer_spec` gives (a path or id and a base folder: Ray's workers load it)."""
    def get() -> Any:
        from realchat.models import PortableCounter, token_counter

        assert tokenizer is not None
        if tokenizer not in _TOKENS:  # once per worker process
            _TOKENS[tokenizer] = tokenizer.load() if isinstance(tokenizer, PortableCounter) else token_counter(*tokenizer)
        return _TOKENS[tokenizer]
    return get


def run_row_ops(shard: pl.DataFrame, ops: list[OpParams], tokenizer: Any
                ) -> tuple[pl.DataFrame, list[pl.DataFrame | None], list[dict[str, Any]]]:
    """``row`` ops chained on one shard, in a worker: kept rows, each op's rejected rows (None when
    none) and figures (``in``, ``out``, ``counters``, ``seconds``)."""
    rejected: list[pl.DataFrame | None] = []
    meta: list[dict[str, Any]] = []
    for params in ops:
        t0 = time.perf_counter()
        n_in = shard.height
        result = REGISTRY[params.op](params, token_getter(tokenizer)).apply(shard)
        rej = result.rejected if result.rejected is not None and result.rejected.height else None
        rejected.append(rej)
        shard = result.kept
        meta.append({"in": n_in, "out": shard.height, "rejected": rej.height if rej is not None else 0,
                     "counters": result.counters, "seconds": time.perf_counter() - t0})
    return shard, rejected, meta
