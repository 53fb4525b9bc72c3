"""split: cut long conversations into segments that fit the next step's context budget.

The paper's rule (PAPER.md §1), declared here: count each turn's tokens with the tokenizer of the
model that trains next, including the chat template's per-turn markup; a segment never ends on a user
turn; the next segment starts at the previous segment's last assistant turn (segments overlap by one
assistant turn, so the simulator always sees what it is answering). Leading system turns are repeated
in every segment.

Nothing is silently lost: a user turn whose answer alone cannot fit the budget, and a final user turn
that was never answered, leave the kept set as rejected *pieces* (rows whose ``segment`` is -1), with
their token count as score. The per-user-turn ``user_*`` columns are sliced along with the segments. Token counting is the
expensive part, so conversations that provably fit (by a byte bound) are not tokenized, and the user
turns ``length`` already counted are looked up in the token counter's memo (only the answers are
tokenized here).

Every kept row gets ``ends_conversation``: True when the segment ends at the conversation's real last
assistant turn (the conversation really ended there), False when ``split`` cut it. A simulator learns
its end-of-conversation marker only where a conversation really ended, and the evaluation's ending
measure scores only conversations that were not cut.

The overlap is kept whenever it fits. When the previous segment's last answer is too long to start the
next segment with (it and the next round together pass the budget), or the round before was rejected,
the next segment starts with a user turn whose answer-before is not in it: a follow-up ("ok write
it", "continue") without what it follows. Such rows get ``follows_unseen_answer`` True (counted as
``segments_without_overlap``): a user simulator must not learn to ask them out of nowhere (sft
``loss_on: user`` drops them, with a count), and they are never a conversation's first question
(seeds and evaluate take segment 0). An assistant (``loss_on: assistant``) still learns from them.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field

from realchat.curation.ops.base import Filter, OpParams, OpResult


class Params(OpParams):
    op: Literal["split"] = "split"
    #: Token budget of a segment (the paper's 2,048), chat-template markup included.
    max_tokens: int = Field(2048, ge=16)
    #: Start each new segment at the previous segment's last assistant turn (the paper's overlap).
    overlap_assistant_turn: bool = True


Piece = list[int]  # indices into the conversation's messages


def plan_segments(
    roles: list[str], counts: list[int], budget: int, overlap: bool
) -> tuple[list[Piece], list[tuple[Piece, str]]]:
    """Decide segments (lists of message indices) and rejected pieces with their reason.

    ``roles``/``counts`` cover the messages after the leading system turns; ``budget`` is what is left
    for them. Pure function: the unit tests check it on hand-made token counts.
    """
    n = len(roles)
    rejected: list[tuple[Piece, str]] = []
    end = n
    if end and roles[end - 1] == "user":
        rejected.append(([end - 1], "final user turn was never answered"))
        end -= 1
    if sum(counts[:end]) <= budget:
        return ([list(range(end))] if end else []), rejected
    segments: list[Piece] = []
    s = 0
    overlapped = False  # True when body[s] is the previous segment's last turn
    while s < end:
        acc, best = 0, None
        seen_user = False
        for e in range(s, end):
            acc += counts[e]
            if acc > budget:
                break
            seen_user |= roles[e] == "user"
            if roles[e] == "assistant" and seen_user:
                best = e
        if best is None:
            if roles[s] != "user":
                if not overlapped:
                    rejected.append(([s], "assistant turn without a question fits no segment"))
                s += 1
            else:
                piece = [s] + ([s + 1] if s + 1 < end else [])
                rejected.append((piece, f"turn pair longer than max_tokens={budget}"))
                s += len(piece)
            overlapped = False
            continue
        segments.append(list(range(s, best + 1)))
        if best == end - 1:
            break
        s, overlapped = (best, True) if overlap else (best + 1, False)
    return segments, rejected


class Split(Filter):
    Params = Params
    needs_tokenizer = True

    def apply(self, table: pl.DataFrame) -> OpResult:
        p: Params = self.params  # type: ignore[assignment]
        counter = self.tokens()
        msgs = table["messages"]
        roles: list[list[str]] = msgs.list.eval(pl.element().struct.field("role")).to_list()
        # Shortcut: a token covers at least one byte (plus at most one dummy-prefix token per text,
        # as SentencePiece adds), so UTF-8 bytes + 1 bound each turn's tokens from above. Conversations
        # that fit by that bound need no tokenizing; only the others are counted exactly.
        sizes = msgs.list.eval(pl.element().struct.field("content").str.len_bytes() + 1).to_list()
        exact = [
            bool(r) and sum(b) + counter.base_overhead + counter.turn_overhead * len(r) > p.max_tokens
            for r, b in zip(roles, sizes)
        ]
        texts = msgs.filter(pl.Series(exact, dtype=pl.Boolean)).explode().struct.field("content").to_list()
        # remember=False: no later op counts these turns again (length's user turns are looked up)
        counted = iter(counter.count(texts, remember=False))
        kept, rejected = _Rows(), _Rows()
        n_split = n_bare = 0
        for r, (rs, bounds, e) in enumerate(zip(roles, sizes, exact)):
            counts = [(next(counted) if e else b) + counter.turn_overhead for b in bounds]
            n_sys = 0
            while n_sys < len(rs) and rs[n_sys] == "system":
                n_sys += 1
            body = rs[n_sys:]
            budget = p.max_tokens - counter.base_overhead - sum(counts[:n_sys])
            segments, pieces = plan_segments(body, counts[n_sys:], budget, p.overlap_assistant_turn)
            n_split += len(segments) > 1
            users_before = _users_before(body)
            last_answer = max((i for i, role in enumerate(body) if role == "assistant"), default=-1)
            for k, seg in enumerate(segments):
                bare = seg[0] > 0 and body[seg[0]] == "user"
                n_bare += bare
                kept.add(r, n_sys, n_sys, seg, users_before, k, seg[-1] == last_answer, bare)
            for piece, why in pieces:
                rejected.add(r, 0, n_sys, piece, users_before, -1, False, False)
                rejected.score.append(float(sum(counts[n_sys + i] for i in piece)))
                rejected.detail.append(why)
        kept_df = kept.frame(table)
        rej_df = rejected.frame(table).with_columns(
            pl.Series("score", rejected.score, dtype=pl.Float64),
            pl.Series("detail", rejected.detail, dtype=pl.String),
        )
        return OpResult(
            kept=kept_df,
            rejected=rej_df,
            counters={
                "conversations_split": n_split,
                "segments": kept_df.height,
                # later segments that start with a bare user turn (the overlap answer did not fit)
                "segments_without_overlap": n_bare,
                "pieces_rejected": rej_df.height,
            },
        )


class _Rows:
    """The output rows of ``split`` as integer columns: which input row, how many leading system turns
    it repeats, which run of its messages and of its per-user-turn values; :meth:`frame` slices them
    out of the input with polars' list slices (a Python dict per row cost more than the tokenizing).

    Every segment and piece :func:`plan_segments` makes is a run of consecutive turns, so a start and
    a length describe it, and the user turns in it are a run of consecutive user ordinals.
    """

    def __init__(self) -> None:
        self.cols: dict[str, list[int]] = {k: [] for k in ("row", "head", "start", "len", "ord", "n_ord", "segment")}
        self.ends: list[bool] = []
        self.bare: list[bool] = []
        self.score: list[float] = []
        self.detail: list[str] = []

    def add(self, row: int, head: int, n_sys: int, piece: Piece, users_before: list[int],
            segment: int, ends: bool, bare: bool) -> None:
        first, last = piece[0], piece[-1]
        assert last - first + 1 == len(piece), "split's segments and pieces are runs of turns"
        c = self.cols
        c["row"].append(row)
        c["head"].append(head)
        c["start"].append(n_sys + first)
        c["len"].append(len(piece))
        c["ord"].append(users_before[first])
        c["n_ord"].append(users_before[last + 1] - users_before[first])
        c["segment"].append(segment)
        self.ends.append(ends)
        self.bare.append(bare)

    def frame(self, table: pl.DataFrame) -> pl.DataFrame:
        plan = pl.DataFrame(self.cols, schema={k: pl.Int64 for k in self.cols})
        out = table[plan["row"]].with_columns(
            pl.concat_list(
                pl.col("messages").list.head(pl.lit(plan["head"])),
                pl.col("messages").list.slice(pl.lit(plan["start"]), pl.lit(plan["len"])),
            ).alias("messages")
        )
        if "segment" in table.columns:
            out = out.with_columns(plan["segment"].cast(table.schema["segment"]))
        for col in (c for c in table.columns if c.startswith("user_")):
            # a value list shorter than the ordinals (or null) gives what it has: a slice does that
            out = out.with_columns(
                pl.col(col).list.slice(pl.lit(plan["ord"]), pl.lit(plan["n_ord"])).fill_null(pl.lit([], dtype=out.schema[col]))
            )
        return out.with_columns(pl.Series("ends_conversation", self.ends, dtype=pl.Boolean),
                                pl.Series("follows_unseen_answer", self.bare, dtype=pl.Boolean))


def _users_before(body: list[str]) -> list[int]:
    """``out[i]``: how many user turns come before turn ``i`` (``out[len(body)]``: all of them)."""
    out = [0]
    for role in body:
        out.append(out[-1] + (role == "user"))
    return out
