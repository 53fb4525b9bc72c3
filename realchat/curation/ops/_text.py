"""Rewriting message contents, shared by the clean-up ops.

Clean-up ops change text but drop nothing; they return how many turns they changed so the step
summary can say what was touched. The work happens on a long table (one row per message) with
polars expressions, so regex rewrites run in Rust over all turns at once; an op that needs Python
(markdownify) applies it only to the rows a vectorised test selected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import polars as pl

_ROW = "__row"


def explode_messages(table: pl.DataFrame) -> pl.DataFrame:
    """One row per message: ``__row`` (conversation position), ``role``, ``content``.

    Conversations without messages may or may not leave a null row (polars versions differ);
    :func:`implode_messages` rebuilds them as empty lists either way.
    """
    return (
        table.select(pl.col("messages"))
        .with_row_index(_ROW)
        .explode("messages")
        .with_columns(
            pl.col("messages").struct.field("role").alias("role"),
            pl.col("messages").struct.field("content").alias("content"),
        )
        .drop("messages")
    )


def implode_messages(table: pl.DataFrame, long: pl.DataFrame) -> pl.DataFrame:
    """Put the (rewritten) long table back as the ``messages`` column of ``table``."""
    rebuilt = (
        long.with_columns(
            pl.when(pl.col("role").is_not_null())
            .then(pl.struct(pl.col("role"), pl.col("content")))
            .alias("messages")
        )
        .group_by(_ROW, maintain_order=True)
        .agg(pl.col("messages").drop_nulls())
    )
    rows = pl.DataFrame({_ROW: pl.arange(0, table.height, eager=True).cast(pl.UInt32)})
    full = rows.join(rebuilt, on=_ROW, how="left", maintain_order="left").with_columns(
        pl.col("messages").fill_null(pl.lit([], dtype=rebuilt.schema["messages"]))
    )
    return table.with_columns(full["messages"].alias("messages"))


def rewrite_contents(
    table: pl.DataFrame,
    expr: Callable[[pl.Expr], pl.Expr] | None,
    roles: Iterable[str],
    python_fn: Callable[[str], str] | None = None,
    candidates: pl.Expr | None = None,
) -> tuple[pl.DataFrame, int]:
    """Rewrite the content of messages whose role is in ``roles``.

    ``expr`` maps the ``content`` expression to its new value (vectorised). ``python_fn`` is applied
    to the rows where ``candidates`` is true (all selected rows if it is None). Returns the new table
    and the number of messages whose content changed.
    """
    long = explode_messages(table)
    selected = pl.col("role").is_in(list(roles)) & pl.col("content").is_not_null()
    new = pl.col("content")
    if expr is not None:
        new = pl.when(selected).then(expr(pl.col("content"))).otherwise(pl.col("content"))
    long = long.with_columns(new.alias("new_content"))
    if python_fn is not None:
        mask = selected if candidates is None else selected & candidates
        hit = long.with_row_index("__i").filter(mask.fill_null(False))
        if hit.height:
            converted = [python_fn(t) for t in hit["new_content"].to_list()]
            idx = hit["__i"]
            values = long["new_content"].scatter(idx, pl.Series(converted, dtype=pl.String))
            long = long.with_columns(values.alias("new_content"))
    changed = long.select((pl.col("new_content") != pl.col("content")).sum()).item() or 0
    long = long.drop("content").rename({"new_content": "content"})
    return implode_messages(table, long), int(changed)
