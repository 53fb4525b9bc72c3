"""Earlier releases as dedup references: the conversations a new curation must not repeat.

A team adds a new month of logs without training again on the old ones by pointing ``exact_dedup`` /
``near_dedup`` at what it already released: ``reference:`` is any dataset reference (a previous curate
step of the recipe, a published folder, a Hub dataset). This module reads it into one table of
``conversation_id`` and ``messages`` per conversation, whatever the form:

* a curate output (a step, a local publish folder, a Hub dataset RealChat published) is read from its
  ``data/*.parquet`` directly, keeping its ``conversation_id``; the segments ``split`` made are joined
  back into one conversation (segments overlap by an assistant turn only, so the user turns, which is
  what dedup compares, come out whole and once);
* anything else (a ShareGPT file, a dataset without RealChat's columns) goes through the step's usual
  reader, :meth:`~realchat.engine.context.StepContext.conversations`.

The reference's name (step, path or Hub id with revision) goes into every rejection it causes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from realchat.curation.ops.base import MESSAGES_DTYPE
from realchat.recipe.refs import FileData, HubData, StepData, resolve_local

if TYPE_CHECKING:
    from realchat.engine.context import StepContext


@dataclass
class Reference:
    """An earlier release: its name for rejection details, and its conversations."""

    name: str
    #: ``conversation_id`` (str) and ``messages`` (list of ``{role, content}``), one row per conversation.
    table: pl.DataFrame


def read_reference(ctx: "StepContext", key: str) -> Reference:
    """The dataset reference at ``key`` of the step's config (e.g. ``filters[7].reference``)."""
    edge = ctx.node.edge(key)
    data = edge.data
    folder: Path | None = None
    split = "all"
    with ctx.blame(key):
        if isinstance(data, StepData):
            folder, split, name = ctx.output_of(data.step), data.split, data.step
            if split != "all":
                name = f"{data.step} ({split})"
        elif isinstance(data, FileData):
            name = data.path
            p = resolve_local(data.path, ctx.base_dir)
            folder = p if (p / "data").is_dir() else None
        else:
            assert isinstance(data, HubData)
            name = f"{data.hub}@{data.revision}" if data.revision else data.hub
            folder = _hub_snapshot(data)
        table = _curated_folder(folder, split) if folder is not None else None
        if table is None:
            convs = ctx.conversations(key)
            table = pl.DataFrame(
                {"conversation_id": [c["base_id"] for c in convs], "segment": [0] * len(convs),
                 "messages": [c["messages"] for c in convs]},
                schema={"conversation_id": pl.String, "segment": pl.Int32, "messages": MESSAGES_DTYPE})
            table = _join_segments(table)
    return Reference(name, table)


def _curated_folder(folder: Path, split: str) -> pl.DataFrame | None:
    """A curate output's rows, or None when the folder holds no RealChat curate shards."""
    files = sorted((folder / "data").glob("*.parquet"))
    if not files:
        return None
    lf = pl.scan_parquet(files)
    names = lf.collect_schema().names()
    if not {"conversation_id", "messages"} <= set(names):
        return None
    if split != "all" and "split" in names:
        lf = lf.filter(pl.col("split") == split)
    cols = ["conversation_id", "messages"] + (["segment"] if "segment" in names else [])
    df = lf.select(cols).collect()
    if "segment" not in df.columns:
        df = df.with_columns(pl.lit(0, dtype=pl.Int32).alias("segment"))
    return _join_segments(df.with_columns(pl.col("conversation_id").cast(pl.String)))


def _join_segments(df: pl.DataFrame) -> pl.DataFrame:
    """One row per conversation id: its segments' messages in segment order."""
    if df.height == df["conversation_id"].n_unique():
        return df.select("conversation_id", "messages")
    return (df.group_by("conversation_id", maintain_order=True)  # conversations in the release's order
            .agg(pl.col("messages").sort_by("segment").list.explode(keep_nulls=False, empty_as_null=False))
            .select("conversation_id", "messages"))


def _hub_snapshot(data: HubData) -> Path | None:
    """The parquet shards of a Hub dataset (``data/`` of a RealChat release), downloaded to the cache."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(data.hub, repo_type="dataset", revision=data.revision,
                                      allow_patterns=["data/*.parquet"]))
    except Exception:  # not a RealChat layout, or no network: the generic reader reports it
        return None
