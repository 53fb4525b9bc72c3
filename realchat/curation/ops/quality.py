"""quality: per-turn quality scores on user turns, each with optional thresholds.

Scores (stored as list columns aligned with the user turns, so downstream users can re-threshold
without re-running the step):

* ``user_alpha_ratio``: alphabetic characters / characters (low: tables of numbers, binary junk);
* ``user_dup_line_ratio``: share of non-empty lines that repeat an earlier line of the turn;
* ``user_ngram_repetition``: share of word 3-grams that repeat an earlier 3-gram (spam, loops);
* ``user_symbol_ratio``: characters that are neither alphanumeric nor whitespace / characters;
* ``user_url_ratio``: characters inside URLs / characters;
* ``user_mean_word_length``: mean length of whitespace-separated words (very long: hashes, base64).

Thresholds default to off; the default recipe sets loose ones that drop only evident junk, because
real users paste code and the simulator should learn that too.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Literal

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

_URL = r"https?://\S+|www\.\S+"


class Params(OpParams, TurnPolicy):
    op: Literal["quality"] = "quality"
    #: Fail a user turn whose alphabetic characters / characters is below this; null = off.
    min_alpha_ratio: float | None = Field(None, ge=0, le=1)
    #: Fail a user turn whose share of repeated non-empty lines is above this; null = off.
    max_dup_line_ratio: float | None = Field(None, ge=0, le=1)
    #: Fail a user turn whose share of repeated word 3-grams is above this (spam, loops); null =
    #: off.
    max_ngram_repetition: float | None = Field(None, ge=0, le=1)
    #: Fail a user turn whose non-alphanumeric, non-space characters / characters is above this;
    #: null = off.
    max_symbol_ratio: float | None = Field(None, ge=0, le=1)
    #: Fail a user turn whose characters inside URLs / characters is above this; null = off.
    max_url_ratio: float | None = Field(None, ge=0, le=1)
    #: Fail a user turn whose mean word length is below this; null = off.
    min_mean_word_length: float | None = Field(None, ge=0)
    #: Fail a user turn whose mean word length is above this (hashes, base64); null = off.
    max_mean_word_length: float | None = Field(None, ge=0)
    #: Turns shorter than this (characters) are scored but not judged: ratios on "ok?" are noise.
    min_chars_to_judge: int = Field(10, ge=0)


def _ngram_repetition(text: str, n: int = 3) -> float:
    words = text.split()
    if len(words) < n + 1:
        return 0.0
    grams = len(words) - n + 1
    return 1.0 - len(set(zip(*(words[k:] for k in range(n))))) / grams


def _ngram_repetitions(texts: list[str]) -> list[float]:
    return [_ngram_repetition(t[:200_000]) for t in texts]


def score_turns(turns: pl.DataFrame) -> pl.DataFrame:
    """Add the quality score columns to a long table of turns (column ``content``)."""
    content = pl.col("content")
    chars = content.str.len_chars().cast(pl.Float64)
    safe = pl.when(chars > 0).then(chars).otherwise(1.0)
    lines = content.str.split("\n").list.eval(pl.element().filter(pl.element().str.strip_chars() != ""))
    words = content.str.count_matches(r"\S+")
    # the 3-gram repetition is Python (tuples of words, as it always was); it runs in a thread while
    # polars computes the other scores without the GIL
    with ThreadPoolExecutor(1) as thread:
        reps = thread.submit(_ngram_repetitions, turns["content"].to_list())
        out = turns.with_columns(
            (content.str.count_matches(r"\p{Alphabetic}") / safe).alias("alpha_ratio"),
            pl.when(lines.list.len() > 0)
            .then(1.0 - lines.list.n_unique() / lines.list.len())
            .otherwise(0.0)
            .alias("dup_line_ratio"),
            (content.str.count_matches(r"[^\p{Alphabetic}\p{Nd}\s]") / safe).alias("symbol_ratio"),
            (
                content.str.extract_all(_URL).list.eval(pl.element().str.len_chars()).list.sum().fill_null(0)
                / safe
            ).alias("url_ratio"),
            # the words' characters are the characters that are not white space: one count each,
            # instead of a list of words per turn (the same sum over the same count)
            pl.when(words > 0)
            .then((content.str.len_chars() - content.str.count_matches(r"\s")) / words)
            .otherwise(0.0)
            .alias("mean_word_length"),
        )
    return out.with_columns(pl.Series("ngram_repetition", reps.result(), dtype=pl.Float64))


_CHECKS = (
    ("alpha_ratio", "min_alpha_ratio", ">="),
    ("dup_line_ratio", "max_dup_line_ratio", "<="),
    ("ngram_repetition", "max_ngram_repetition", "<="),
    ("symbol_ratio", "max_symbol_ratio", "<="),
    ("url_ratio", "max_url_ratio", "<="),
    ("mean_word_length", "min_mean_word_length", ">="),
    ("mean_word_length", "max_mean_word_length", "<="),
)
SCORE_COLUMNS = ("alpha_ratio", "dup_line_ratio", "ngram_repetition", "symbol_ratio", "url_ratio",
                 "mean_word_length")


class Quality(Filter):
    Params = Params

    def apply(self, table: pl.DataFrame) -> OpResult:
        p: Params = self.params  # type: ignore[assignment]
        turns = score_turns(user_turns(table))
        ok = pl.lit(True)
        first_fail = pl.lit(None, dtype=pl.String)
        for metric, param, op in reversed(_CHECKS):
            limit = getattr(p, param)
            if limit is None:
                continue
            cond = pl.col(metric) >= limit if op == ">=" else pl.col(metric) <= limit
            ok = ok & cond
            first_fail = pl.when(~cond).then(
                pl.format(f"{metric}={{}} fails {param}={limit}", pl.col(metric).round(3))
            ).otherwise(first_fail)
        judged = pl.col("content").str.len_chars() >= p.min_chars_to_judge
        turns = turns.with_columns(
            (ok | ~judged).alias("passes"), pl.when(judged).then(first_fail).alias("why")
        )
        columns = {f"user_{m}": pl.col(m) for m in SCORE_COLUMNS}
        columns["passes"] = pl.col("passes").filter(judged)
        columns["why"] = pl.col("why").drop_nulls()
        lists = per_row_lists(turns, table.height, columns)
        keep, share = conversation_verdict(lists, p)
        detail = [None if k else (w[0] if w else None) for k, w in
                  zip(keep.to_list(), lists["why"].to_list())]
        table = table.with_columns([lists[f"user_{m}"] for m in SCORE_COLUMNS])
        return self.partition(table, keep, share, detail)
