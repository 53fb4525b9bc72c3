"""length: limits on the length of user turns, in characters and in tokens.

Characters catch pasted logs and 5 MB dumps before anything expensive runs; tokens (of the tokenizer
of the model the next step trains, ``tokenizer`` in the curate step's config) are what matters for the
context budget. Per-turn columns added: ``user_chars`` and, when a token limit is set,
``user_tokens``.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field, model_validator

from realchat.curation.ops.base import (
    Filter,
    OpParams,
    OpResult,
    TurnPolicy,
    conversation_verdict,
    per_row_lists,
    user_turns,
)


class Params(OpParams, TurnPolicy):
    op: Literal["length"] = "length"
    #: Minimum characters of a user turn; null = no limit.
    min_chars: int | None = Field(1, ge=0)
    #: Maximum characters of a user turn (pasted logs, dumps); null = no limit.
    max_chars: int | None = Field(None, ge=1)
    #: Minimum tokens of a user turn (the curate step's `tokenizer`); null = no limit.
    min_tokens: int | None = Field(None, ge=0)
    #: Maximum tokens of a user turn (the curate step's `tokenizer`); null = no limit.
    max_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "Params":
        for lo, hi in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo}={a} is greater than {hi}={b}")
        return self


class Length(Filter):
    Params = Params

    @property
    def needs_tokenizer(self) -> bool:  # type: ignore[override]
        p: Params = self.params  # type: ignore[assignment]
        return p.min_tokens is not None or p.max_tokens is not None

    def apply(self, table: pl.DataFrame) -> OpResult:
        p: Params = self.params  # type: ignore[assignment]
        turns = user_turns(table).with_columns(pl.col("content").str.len_chars().alias("chars"))
        ok = pl.lit(True)
        if p.min_chars is not None:
            ok = ok & (pl.col("chars") >= p.min_chars)
        if p.max_chars is not None:
            ok = ok & (pl.col("chars") <= p.max_chars)
        columns = {"user_chars": pl.col("chars")}
        if self.needs_tokenizer:
            # Cap what is tokenised: a 5 MB turn is over any sane limit long before its end.
            cap = (p.max_tokens or 0) * 16 + 1024
            texts = [t[:cap] for t in turns["content"].to_list()]
            counts = self.tokens().count(texts)
            turns = turns.with_columns(pl.Series("tokens", counts, dtype=pl.Int64))
            if p.min_tokens is not None:
                ok = ok & (pl.col("tokens") >= p.min_tokens)
            if p.max_tokens is not None:
                ok = ok & (pl.col("tokens") <= p.max_tokens)
            columns["user_tokens"] = pl.col("tokens")
        turns = turns.with_columns(ok.alias("passes"))
        columns["passes"] = pl.col("passes")
        lists = per_row_lists(turns, table.height, columns)
        keep, share = conversation_verdict(lists, p)
        detail = _details(lists, keep, p)
        table = table.with_columns([lists[c] for c in columns if c != "passes"])
        return self.partition(table, keep, share, detail)


def _details(lists: pl.DataFrame, keep: pl.Series, p: Params) -> list[str | None]:
    out: list[str | None] = []
    chars = lists["user_chars"].to_list()
    tokens = lists["user_tokens"].to_list() if "user_tokens" in lists.columns else None
    for i, k in enumerate(keep.to_list()):
        if k:
            out.append(None)
            continue
        c = chars[i]
        bits = [f"chars min={min(c)} max={max(c)}"] if c else []
        if tokens is not None and tokens[i]:
            bits.append(f"tokens min={min(tokens[i])} max={max(tokens[i])}")
        out.append("; ".join(bits))
    return out
