"""The contract every curation op follows (in the manner of data-juicer's ops and datatrove's blocks).

An op is one module with:

* a ``Params`` pydantic model: its declared parameters, with ``op`` as the discriminator the recipe
  uses (``{op: language, allowed: [en]}``). Unknown keys are errors, so a typo in a recipe can never
  silently fall back to a default.
* a :class:`Filter` subclass whose :meth:`Filter.apply` takes the table of conversations still alive
  and returns an :class:`OpResult`: the rows it keeps (possibly rewritten), the rows it rejects with a
  per-row score and detail, and named counters for everything it changed or dropped.

The curate step (``realchat.steps.curate``) owns the bookkeeping: it labels rejected rows with the op's
position in the recipe, so every conversation read ends either in the kept set or in the rejected set
with the first rule that removed it.

The conversation table has one row per conversation (or, after ``split``, per segment):

``conversation_id`` (str), ``source_index`` (int, position in the source file), ``segment`` (int),
``messages`` (list of ``{role, content}``), plus any per-user-turn columns named ``user_*`` that ops
add (lists aligned with the user turns of ``messages``, in order).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import ConfigDict, Field

from realchat.models import TokenCounter
from realchat.recipe.base import Strict

MESSAGE_DTYPE = pl.Struct({"role": pl.String, "content": pl.String})
MESSAGES_DTYPE = pl.List(MESSAGE_DTYPE)


class OpParams(Strict):
    """Base of every op's declared parameters: strict, so typos are errors."""

    model_config = ConfigDict(extra="forbid")
    #: The op's name: which curation rule this entry of `filters` runs.
    op: str


class TurnPolicy(Strict):
    """How per-turn verdicts become a conversation verdict.

    ``all``: every judged user turn must pass (the strict reading of the paper's rules).
    ``share``: at least ``min_share`` of the judged user turns must pass; useful for rules that are
    noisy on short turns ("continue", "thanks").
    """

    model_config = ConfigDict(extra="forbid")
    #: `all`: every judged user turn must pass; `share`: at least `min_share` of them must.
    policy: Literal["all", "share"] = "all"
    #: With `policy: share`: the share of judged user turns that must pass (0-1).
    min_share: float = Field(1.0, ge=0.0, le=1.0)


@dataclass
class OpResult:
    """What one op did to the table."""

    kept: pl.DataFrame
    rejected: pl.DataFrame | None = None  # same columns as kept + score (f64) + detail (str)
    counters: dict[str, int] = field(default_factory=dict)


class Filter(ABC):
    """One curation op. Subclasses set ``Params`` and implement :meth:`apply`."""

    Params: ClassVar[type[OpParams]]
    #: True when the op needs the step's tokenizer (token limits, split): lets the engine load it lazily.
    needs_tokenizer: ClassVar[bool] = False
    #: How much of the data one decision needs; the executors stream by it. ``row``: each row alone
    #: (applied chunk by chunk). ``ordered``: state carried from chunk to chunk in source order (exact
    #: dedup remembers the keys it has seen). ``global``: every row seen before any is decided (near
    #: dedup's clusters): :meth:`observe` each chunk, then :meth:`apply` each chunk again, same order.
    scope: ClassVar[Literal["row", "ordered", "global"]] = "row"

    def __init__(self, params: OpParams, tokens: Callable[[], TokenCounter],
                 progress: Callable[[Iterable[Any], str, int | None], Iterator[Any]] | None = None,
                 inputs: dict[str, Any] | None = None) -> None:
        """``tokens`` gives the step's token counter, loaded only when an op first asks for it;
        ``progress`` wraps long loops in the engine's progress display (identity by default);
        ``inputs`` holds what the step read for the op's dataset references, by field name (a
        :class:`~realchat.curation.reference.Reference` for dedup's ``reference``)."""
        self.params = params
        self.tokens = tokens
        self.progress = progress or (lambda items, description, total=None: iter(items))
        self.inputs = inputs or {}

    @abstractmethod
    def apply(self, table: pl.DataFrame) -> OpResult:
        """Return the rows kept and rejected by this op. Called once per chunk, chunks in source
        order; the whole table is one chunk."""

    def prefetch(self, table: pl.DataFrame) -> None:
        """A chunk as read from the source, before it reaches this op (the ops before this one have not
        seen it yet; the local executor reads one chunk ahead, so it is usually the chunk after the one
        about to be applied). An op that can work ahead on another core starts here (language ID's
        helper process); :meth:`apply` must still give the same answer for whatever reaches it. Called
        by the local executor for chunks it processes in this process; nothing by default."""

    def observe(self, table: pl.DataFrame, prepared: Any = None) -> None:
        """``global`` ops: take in one chunk before anything is decided; ``prepared`` is what
        :meth:`prepare` computed for it, possibly in another process (None: compute it here)."""
        raise NotImplementedError(f"{type(self).__name__} is not a global op")

    @classmethod
    def prepare(cls, params: OpParams, table: pl.DataFrame) -> Any:
        """``global`` ops: the costly part of observing a chunk, a pure function of the chunk and the
        parameters, so the local executor runs it in a worker process (near dedup: the signatures)."""
        return None

    def totals(self) -> dict[str, int]:
        """Counters of the whole run that are not sums over chunks (the largest cluster): read after
        the last chunk."""
        return {}

    # -- helpers shared by ops -------------------------------------------------------------

    @staticmethod
    def partition(
        table: pl.DataFrame,
        keep: pl.Series | list[bool],
        score: pl.Series | list[float | None] | None = None,
        detail: pl.Series | list[str | None] | None = None,
        counters: dict[str, int] | None = None,
    ) -> OpResult:
        """Split ``table`` by a boolean mask, attaching score/detail to the rejected rows."""
        n = table.height
        keep_s = pl.Series("keep", keep, dtype=pl.Boolean)
        score_s = pl.Series("score", score if score is not None else [None] * n, dtype=pl.Float64)
        detail_s = pl.Series("detail", detail if detail is not None else [None] * n, dtype=pl.String)
        marked = table.with_columns(keep_s, score_s, detail_s)
        kept = marked.filter(pl.col("keep")).drop("keep", "score", "detail")
        rejected = marked.filter(~pl.col("keep")).drop("keep")
        return OpResult(kept=kept, rejected=rejected, counters=dict(counters or {}))


def user_turns(table: pl.DataFrame) -> pl.DataFrame:
    """Explode the table into one row per *user* turn: ``row``, ``turn`` (0-based), ``content``.

    ``row`` is the position of the conversation in ``table``; ops compute per-turn scores on this
    long table with vectorised polars expressions, then aggregate back with :func:`per_row_lists`.
    """
    return (
        table.select(pl.col("messages"))
        .with_row_index("row")
        .explode("messages")
        .unnest("messages")
        .filter(pl.col("role") == "user")
        .with_columns(pl.int_range(pl.len()).over("row").alias("turn"))
        .select("row", "turn", "content")
    )


def per_row_lists(
    turns: pl.DataFrame, n_rows: int, columns: dict[str, pl.Expr]
) -> pl.DataFrame:
    """Aggregate per-turn expressions back into list columns, one row per conversation.

    Conversations with no user turn get empty lists, so the result always has ``n_rows`` rows in
    table order.
    """
    agg = turns.sort("row", "turn").group_by("row", maintain_order=True).agg(
        **{name: expr for name, expr in columns.items()}
    )
    frame = pl.DataFrame({"row": pl.arange(0, n_rows, eager=True).cast(pl.UInt32)})
    out = frame.join(agg, on="row", how="left", maintain_order="left")
    fills = []
    for name in columns:
        dtype = out.schema[name]
        fills.append(pl.col(name).fill_null(pl.lit([], dtype=dtype)))
    return out.with_columns(fills).drop("row")


def conversation_verdict(
    passes: pl.DataFrame, policy: TurnPolicy, column: str = "passes"
) -> tuple[pl.Series, pl.Series]:
    """Turn a list[bool] column of per-turn verdicts into (keep, share_passing) per conversation.

    A conversation with no judged turn passes with share 1.0: there is nothing to hold against it
    (the shape rule is where "too few user turns" is decided).
    """
    share = passes.select(
        pl.when(pl.col(column).list.len() == 0)
        .then(1.0)
        .otherwise(pl.col(column).list.eval(pl.element().cast(pl.Float64)).list.mean())
        .alias("share")
    )["share"]
    if policy.policy == "all":
        keep = share >= 1.0
    else:
        keep = share >= policy.min_share
    return keep, share


def describe(value: Any) -> str:
    """Short, stable rendering of a score for the ``detail`` column."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
