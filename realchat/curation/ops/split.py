"""split: cut long conversations into segments that fit the next step's context budget.

The paper's rule (PAPER.md §1), declared here: count each turn's tokens with the tokenizer of the
model that trains next, including the chat template's per-turn markup; a segment never ends on a user
turn; the next segment starts at the previous segment's last assistant turn (segments overlap by one
assistant turn, so the simulator always sees what it is answering). Leading system turns are repeated
in every segment.

Nothing is silently lost: a user turn whose answer alone cannot fit the budget, and a final user turn
that was never answered, leave the kept set as rejected *pieces* (rows whose ``segment`` is -1), with
their token count as score. The per-user-turn ``user_*`` columns are sliced along with the segments. Token counting is the
expensive part, so conversations that provably fit (by a byte bound) are not tokenized.

Every kept row gets ``ends_conversation``: True when the segment ends at the conversation's real last
assistant turn (the conversation really ended there), False when ``split`` cut it. A simulator learns
its end-of-conversation marker only where a conversation really ended, and the evaluation's ending
measure scores only conversations that were not cut.
"""

from __future__ import annotations

from typing import Any, Literal

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
        all_msgs = table["messages"].to_list()
        # Shortcut: a token covers at least one byte (plus at most one dummy-prefix token per text,
        # as SentencePiece adds), so UTF-8 bytes + 1 bound each turn's tokens from above. Conversations
        # that fit by that bound need no tokenizing; only the others are counted exactly.
        flat_bytes: list[int] = []
        exact: list[bool] = []
        for msgs in all_msgs:
            sizes = [len(m["content"].encode("utf-8")) + 1 for m in msgs]
            bound = sum(sizes) + counter.base_overhead + counter.turn_overhead * len(msgs)
            flat_bytes.extend(sizes)
            exact.extend([bound > p.max_tokens] * len(msgs))
        to_count = [m["content"] for msgs in all_msgs for m in msgs]
        to_count = [t for t, e in zip(to_count, exact) if e]
        counted = iter(counter.count(to_count))
        flat_counts = [next(counted) if e else b for b, e in zip(flat_bytes, exact)]
        user_cols = [c for c in table.columns if c.startswith("user_")]
        rows = table.to_dicts()
        kept: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        pos = 0
        n_split = 0
        for row, msgs in zip(rows, all_msgs):
            counts = [c + counter.turn_overhead for c in flat_counts[pos : pos + len(msgs)]]
            pos += len(msgs)
            n_sys = 0
            while n_sys < len(msgs) and msgs[n_sys]["role"] == "system":
                n_sys += 1
            system, body = msgs[:n_sys], msgs[n_sys:]
            budget = p.max_tokens - counter.base_overhead - sum(counts[:n_sys])
            segments, pieces = plan_segments(
                [m["role"] for m in body], counts[n_sys:], budget, p.overlap_assistant_turn
            )
            n_split += len(segments) > 1
            user_ordinal = _user_ordinals(body)
            last_answer = max((i for i, m in enumerate(body) if m["role"] == "assistant"), default=-1)
            for k, seg in enumerate(segments):
                r = _slice(row, system, body, seg, user_ordinal, user_cols, k)
                r["ends_conversation"] = seg[-1] == last_answer
                kept.append(r)
            for piece, why in pieces:
                r = _slice(row, [], body, piece, user_ordinal, user_cols, -1)
                r["ends_conversation"] = False
                r["score"] = float(sum(counts[n_sys + i] for i in piece))
                r["detail"] = why
                rejected.append(r)
        schema = dict(table.schema) | {"ends_conversation": pl.Boolean}
        kept_df = pl.DataFrame(kept, schema=schema) if kept else pl.DataFrame(schema=schema)
        rej_schema = schema | {"score": pl.Float64, "detail": pl.String}
        rej_df = pl.DataFrame(rejected, schema=rej_schema)
        return OpResult(
            kept=kept_df,
            rejected=rej_df,
            counters={
                "conversations_split": n_split,
                "segments": kept_df.height,
                "pieces_rejected": rej_df.height,
            },
        )


def _user_ordinals(body: list[dict]) -> list[int | None]:
    out, k = [], 0
    for m in body:
        if m["role"] == "user":
            out.append(k)
            k += 1
        else:
            out.append(None)
    return out


def _slice(row, system, body, idx, user_ordinal, user_cols, segment) -> dict[str, Any]:
    new = dict(row)
    new["messages"] = list(system) + [body[i] for i in idx]
    new["segment"] = segment
    ordinals = [user_ordinal[i] for i in idx if user_ordinal[i] is not None]
    for col in user_cols:
        values = row[col] or []
        new[col] = [values[o] for o in ordinals if o < len(values)]
    return new
