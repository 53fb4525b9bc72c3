"""exact_dedup: drop conversations whose normalised user turns repeat an earlier conversation's.

The paper de-duplicated on the concatenated turns. RealChat keys on the *user* turns only (the side
the simulator learns), normalised: case-folded, whitespace collapsed and, optionally, punctuation
removed. The first occurrence in source order is kept; each duplicate is rejected with the id of the
conversation it repeats, so clusters can be inspected.

The op streams (``scope = "ordered"``): chunks arrive in source order and it remembers, per key, a
16-byte digest and the first conversation's id; memory grows with the number of distinct keys (about
150 bytes each), never with the text.

With ``reference`` (an earlier release: a previous curate step, a published folder or Hub dataset),
every conversation whose key the reference already holds is rejected too, its detail naming the
reference and the conversation there (``duplicate of OlhSVrJ_0 in reference curate_2023``).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

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


def _digests(table: pl.DataFrame, p: Params) -> list[bytes]:
    keys = table.select(normalised_user_text(table, p.lowercase, p.strip_punctuation).alias("k"))["k"]
    return [hashlib.blake2b(k.encode("utf-8", "surrogatepass"), digest_size=16).digest() for k in keys]


class ExactDedup(Filter):
    Params = Params
    scope = "ordered"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first: dict[bytes, str] = {}  # key digest → the id of its first conversation
        self.clustered: set[bytes] = set()  # keys met at least twice
        self.held: dict[bytes, str] = {}  # key digest → the reference's conversation holding it
        ref = self.inputs.get("reference")
        if ref is not None:
            for d, cid in zip(_digests(ref.table, self.params), ref.table["conversation_id"].to_list()):  # type: ignore[arg-type]
                self.held.setdefault(d, cid)

    def apply(self, table: pl.DataFrame) -> OpResult:
        ref = self.inputs.get("reference")
        keep: list[bool] = []
        detail: list[str | None] = []
        in_reference = 0
        for d, cid in zip(_digests(table, self.params), table["conversation_id"].to_list()):  # type: ignore[arg-type]
            first = self.first.get(d)
            if first is None:
                self.first[d] = cid
            else:
                self.clustered.add(d)
            held = self.held.get(d)
            if held is not None:
                in_reference += 1
                keep.append(False)
                detail.append(f"duplicate of {held} in reference {ref.name}")  # type: ignore[union-attr]
            elif first is not None:
                keep.append(False)
                detail.append(f"duplicate of {first}")
            else:
                keep.append(True)
                detail.append(None)
        score = [0.0 if k else 1.0 for k in keep]
        result = self.partition(table, keep, score, detail)
        if ref is not None:
            result.counters["in_reference"] = in_reference
        return result

    def totals(self) -> dict[str, int]:
        return {"duplicate_clusters": len(self.clustered)}
