"""vendor_mention: drop conversations that name the vendor's model.

The paper dropped sessions mentioning the model by name so that neither the simulator nor the
assistant learns to claim another vendor's identity. Patterns are case-insensitive regular
expressions (Rust regex syntax, matched by polars over all turns at once); by default only assistant turns are checked, because a *user* asking about ChatGPT is
real user behaviour worth keeping (set ``roles`` to include ``user`` to follow the paper strictly).
"""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import field_validator

from realchat.curation.ops._text import explode_messages
from realchat.curation.ops.base import Filter, OpParams, OpResult


class Params(OpParams):
    op: Literal["vendor_mention"] = "vendor_mention"
    #: Case-insensitive regular expressions (Rust regex syntax) naming the vendor's model.
    patterns: list[str] = [r"\bChatGPT\b", r"\bOpenAI\b", r"\bGPT-?[34]\b"]
    #: Roles whose turns are searched (add `user` to follow the paper strictly).
    roles: list[str] = ["assistant"]

    @field_validator("patterns")
    @classmethod
    def _compile(cls, v: list[str]) -> list[str]:
        for pat in v:
            try:
                pl.Series([""]).str.contains(pat)
            except pl.exceptions.ComputeError as e:
                raise ValueError(f"invalid regular expression {pat!r}: {e}") from None
        return v


class VendorMention(Filter):
    Params = Params

    def apply(self, table: pl.DataFrame) -> OpResult:
        p: Params = self.params  # type: ignore[assignment]
        if not p.patterns:
            return OpResult(kept=table)
        rx = "(?i)" + "|".join(f"(?:{x})" for x in p.patterns)
        long = explode_messages(table).with_columns(pl.int_range(pl.len()).over("__row").alias("pos"))
        hits = (
            long.filter(pl.col("role").is_in(p.roles) & pl.col("content").str.contains(rx))
            .group_by("__row", maintain_order=True)
            .first()
            .with_columns(pl.col("content").str.extract(f"({rx})", 1).alias("match"))
        )
        detail: list[str | None] = [None] * table.height
        for row, pos, role, match in hits.select("__row", "pos", "role", "match").iter_rows():
            detail[row] = f"turn {pos} ({role}): {match!r}"
        keep = [d is None for d in detail]
        return self.partition(table, keep, [0.0 if k else 1.0 for k in keep], detail)
