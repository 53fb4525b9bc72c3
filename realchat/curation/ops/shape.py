"""shape: the conversation has the structure a chat model trains on.

Rules, each declared: the non-system turns alternate user/assistant; the first non-system turn is the
user's; at least ``min_user_turns`` user turns; no empty turn. ShareGPT V3 was already cut into pieces
by its publishers, and about a third of its records start with an assistant turn (the tail of an
earlier piece). ``leading_assistant: trim`` drops those leading assistant turns (counted) so the
conversation opens with a question; ``reject`` sends the record to the rejected set instead.
System turns are kept where they are and never count as user or assistant turns.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field

from realchat.curation.ops._text import explode_messages, implode_messages
from realchat.curation.ops.base import Filter, OpParams, OpResult


class Params(OpParams):
    op: Literal["shape"] = "shape"
    #: Non-system turns must alternate user / assistant.
    require_alternation: bool = True
    #: `user`: the first non-system turn must be the user's; `any`: no rule.
    first_role: Literal["user", "any"] = "user"
    #: Leading assistant turns (the tail of an earlier piece): `trim` drops them, `reject` rejects
    #: the record.
    leading_assistant: Literal["trim", "reject"] = "trim"
    #: At least this many user turns.
    min_user_turns: int = Field(1, ge=0)
    #: Reject a conversation with an empty (whitespace-only) turn.
    reject_empty_turns: bool = True


class Shape(Filter):
    Params = Params

    def apply(self, table: pl.DataFrame) -> OpResult:
        p: Params = self.params  # type: ignore[assignment]
        keep: list[bool] = []
        detail: list[str | None] = []
        score: list[float | None] = []
        drops: list[tuple[int, int]] = []  # (row, message position) of trimmed leading turns
        trimmed = 0
        roles_lists = table.select(
            pl.col("messages").list.eval(pl.element().struct.field("role")).alias("r"),
            pl.col("messages").list.eval(
                pl.element().struct.field("content").str.strip_chars().str.len_chars() == 0).alias("e"),
        )
        for row, (roles, empties) in enumerate(roles_lists.iter_rows()):
            msgs = [{"role": r, "content": "" if e else "x", "pos": i}
                    for i, (r, e) in enumerate(zip(roles, empties))]
            reason = None
            if p.first_role == "user":
                non_system = [i for i, m in enumerate(msgs) if m["role"] != "system"]
                lead = 0
                for i in non_system:
                    if msgs[i]["role"] == "assistant":
                        lead += 1
                    else:
                        break
                if lead:
                    if p.leading_assistant == "trim":
                        drop = set(non_system[:lead])
                        drops.extend((row, i) for i in drop)
                        msgs = [m for i, m in enumerate(msgs) if i not in drop]
                        trimmed += lead
                    else:
                        reason = "first non-system turn is the assistant's"
            dialog = [m for m in msgs if m["role"] != "system"]
            n_user = sum(m["role"] == "user" for m in dialog)
            if reason is None and p.reject_empty_turns:
                for i, m in enumerate(dialog):
                    if not m["content"]:
                        reason = f"empty {m['role']} turn at position {i}"
                        break
            if reason is None and p.require_alternation:
                for i in range(1, len(dialog)):
                    if dialog[i]["role"] == dialog[i - 1]["role"]:
                        reason = f"two {dialog[i]['role']} turns in a row at position {i}"
                        break
            if reason is None and n_user < p.min_user_turns:
                reason = f"{n_user} user turns < min_user_turns={p.min_user_turns}"
            keep.append(reason is None)
            detail.append(reason)
            score.append(float(n_user))
        if drops:
            long = explode_messages(table).with_columns(
                pl.int_range(pl.len()).over("__row").alias("pos"))
            gone = pl.DataFrame(drops, schema={"__row": pl.UInt32, "pos": pl.Int64}, orient="row")
            long = long.join(gone, on=["__row", "pos"], how="anti", maintain_order="left").drop("pos")
            table = implode_messages(table, long)
        return self.partition(
            table, keep, score, detail, counters={"leading_assistant_turns_trimmed": trimmed}
        )
