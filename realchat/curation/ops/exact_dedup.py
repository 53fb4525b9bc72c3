"""exact_dedup: drop conversations whose normalised user turns repeat an earlier conversation's.

The paper de-duplicated on the concatenated turns. RealChat keys on the *user* turns only (the side
the simulator learns), normalised: case-folded, whitespace collapsed and, optionally, punctuation
removed. The first occurrence in source order is kept; each duplicate is rejected with the id of the
conversation it repeats, so clusters can be inspected.

With ``reference`` (an earlier release: a previous curate step, a published folder or Hub dataset),
every conversation whose key the reference already holds is rejected too, its detail naming the
reference and the conversation there (``duplicate of OlhSVrJ_0 in reference curate_2023``).
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from realchat.curation.ops.base import Filter, OpParams, OpResult
from realchat.recipe.refs import DatasetRef


class Params(OpParams):
    op: Literal["exact_dedup"] = "exact_dedup"
    #: Compare user turns case-folded.
    lowercase: bool = True
    #: Compare user turns with punctuation removed.
    strip_punctuation: bool = False
    #: An earlier release whose conversations are not to be repeated (``{step: old, split: all}``, a
    #: published folder ``{path: …, format: parquet}`` or a Hub dataset ``{hub: org/name}``).
    reference: DatasetRef | None = None  # type: ignore[valid-type]


def normalised_user_text(table: pl.DataFrame, lowercase: bool, strip_punctuation: bool) -> pl.Expr:
    """Expression: the conversation's user turns, normalised and joined by a separator."""
    text = pl.col("messages").list.eval(
        pl.element().struct.field("content").filter(pl.element().struct.field("role") == "user")
    ).list.join("\u241e")
    if lowercase:
        text = text.str.to_lowercase()
    if strip_punctuation:
        text = text.str.replace_all(r"[^\p{Alphabetic}\p{Nd}\s\u241e]", "")
    return text.str.replace_all(r"\s+", " ").str.strip_chars()


class ExactDedup(Filter):
    Params = Params

    def apply(self, table: pl.DataFrame) -> OpResult:
        p: Params = self.params  # type: ignore[assignment]
        keyed = table.with_columns(
            normalised_user_text(table, p.lowercase, p.strip_punctuation).alias("_key")
        ).with_columns(
            pl.col("_key").is_first_distinct().alias("_first"),
            pl.col("conversation_id").first().over("_key").alias("_orig"),
            pl.len().over("_key").alias("_size"),
        )
        clusters = keyed.filter(pl.col("_size") > 1)["_key"].n_unique()
        ref = self.inputs.get("reference")
        if ref is not None:
            held = (ref.table.select(normalised_user_text(ref.table, p.lowercase, p.strip_punctuation).alias("_key"),
                                     pl.col("conversation_id").alias("_ref"))
                    .unique("_key", keep="first", maintain_order=True))
            keyed = keyed.join(held, on="_key", how="left", maintain_order="left")
        else:
            keyed = keyed.with_columns(pl.lit(None, dtype=pl.String).alias("_ref"))
        keep = keyed["_first"] & keyed["_ref"].is_null()
        detail = pl.Series([None if k else (f"duplicate of {r} in reference {ref.name}" if r is not None
                                            else f"duplicate of {o}")
                            for k, o, r in zip(keep.to_list(), keyed["_orig"].to_list(), keyed["_ref"].to_list())],
                           dtype=pl.String)
        score = (~keep).cast(pl.Float64)
        result = self.partition(table, keep, score, detail)
        result.counters["duplicate_clusters"] = clusters
        if ref is not None:
            result.counters["in_reference"] = int(keyed["_ref"].is_not_null().sum())
        return result
