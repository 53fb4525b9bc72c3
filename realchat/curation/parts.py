"""Where curated rows go as they leave the pipeline: parquet parts on disk, never the whole table in memory.

An executor hands the sink kept rows in source order and rejected rows as they happen. The sink

* marks every kept row's ``split`` (``train`` / ``held_out`` by the hash of its conversation id) and
  writes each split's ``data/`` shards of exactly ``shard_rows`` rows as soon as it has them (one
  writer per split: a held-out row is never in a ``train`` shard, so ``load_dataset(...)["train"]``
  cannot train on the evaluation's conversations);
* keeps rejected rows in scratch parts, because their ``scope`` (``piece`` when some other part of the
  same source record is kept, else ``conversation``) is known only at the end;
* keeps, per row, only the small figures the statistics need (turn counts, user-turn lengths,
  languages, token counts, the per-turn scores), so the step's stats and score report are computed
  without reading the rows back.

:meth:`CurateSink.finish` names the shards ``train-00000-of-00004.parquet`` and
``held_out-00000-of-00001.parquet`` (the count is known only then; every kept shard has one schema), writes ``rejected/`` with every scratch part brought to one schema (``datasets`` needs the same
columns in every file), and removes the scratch folder. Everything is inside the step's output folder,
which the engine publishes only once the step has finished, so a crash leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from realchat.curation.pipeline import BASE_SCHEMA, REJECT_COLUMNS
from realchat.curation.scores import SCORES
from realchat.errors import writing

_SCRATCH = ".parts"
#: The rejected set's columns after the base ones, in this order (then the ops' own columns).
_BOOKS = {c: (REJECT_COLUMNS | {"scope": pl.String})[c] for c in ("reason", "rule", "scope", "score", "detail", "raw")}


def _scope(kept_index: pl.Series) -> pl.Expr:
    """``piece`` when some other part of the same source record is kept, else ``conversation``."""
    return (pl.when(pl.col("source_index").is_in(kept_index.implode()))
            .then(pl.lit("piece")).otherwise(pl.lit("conversation")).alias("scope"))


def _name(files: list[Path], folder: Path, split: str = "train") -> None:
    """Move shards to ``folder`` as ``<split>-KKKKK-of-NNNNN.parquet`` (the Hub's split naming)."""
    n = max(1, len(files))
    for k, path in enumerate(files):
        os.replace(path, folder / f"{split}-{k:05d}-of-{n:05d}.parquet")


class ShardWriter:
    """Frames in, parquet files of at most ``shard_rows`` rows out, written as the frames come (one row
    group per frame, pyarrow's ``ParquetWriter``): nothing waits in memory for a shard to fill. A frame
    whose columns differ from the open file's starts a new file (rejected rows of different ops carry
    different columns; :func:`_name_shards` brings them to one schema at the end)."""

    def __init__(self, folder: Path, shard_rows: int, compression: str = "zstd") -> None:
        self.folder, self.shard_rows, self.compression = folder, shard_rows, compression
        folder.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self.rows = 0
        self._writer: Any = None
        self._schema: Any = None
        self._in_file = 0

    def write(self, df: pl.DataFrame) -> None:
        while df.height:
            table = df.to_arrow()
            if self._writer is not None and (not table.schema.equals(self._schema) or self._in_file >= self.shard_rows):
                self._close_file()
            if self._writer is None:
                path = self.folder / f"part-{len(self.files):05d}.parquet"
                with writing(path):
                    self._writer = pq.ParquetWriter(path, table.schema, compression=self.compression)
                self._schema = table.schema
                self.files.append(path)
            room = self.shard_rows - self._in_file
            head = df.slice(0, room)
            with writing(self.files[-1]):
                self._writer.write_table(head.to_arrow() if head.height < df.height else table)
            self._in_file += head.height
            self.rows += head.height
            df = df.slice(room)

    def close(self) -> None:
        self._close_file()

    def _close_file(self) -> None:
        if self._writer is not None:
            with writing(self.files[-1]):
                self._writer.close()
            self._writer = None
            self._in_file = 0


def _row_figures(df: pl.DataFrame) -> pl.DataFrame:
    """Per row, what the statistics need: user turns, messages, user-turn characters, and the per-turn
    columns of the ops (languages, tokens, scores), but not the text."""
    user = pl.element().struct.field("role") == "user"
    cols = [pl.col("source_index"),
            pl.col("messages").list.eval(user).list.sum().alias("_user_turns"),
            pl.col("messages").list.len().alias("_messages"),
            pl.col("messages").list.eval(pl.element().filter(user).struct.field("content").str.len_chars())
            .alias("_user_chars")]
    cols += [pl.col(c) for c in ("split", "user_lang", "user_tokens") if c in df.columns]
    return df.select(cols)


def _score_figures(df: pl.DataFrame) -> pl.DataFrame:
    return df.select([c for c in SCORES if c in df.columns])


class CurateSink:
    """Kept and rejected rows of one curate run, written as they come (see the module docstring)."""

    def __init__(self, out: Path, shard_rows: int, split_of: Callable[[str], str],
                 conversation_of: Callable[[str], str] | None = None) -> None:
        """``split_of`` gives a conversation id's split (``train`` / ``held_out``): the step's rule.
        ``conversation_of``, for a source whose records are already segments of longer conversations
        (FastChat's ``<id>_<k>``), names the conversation a record belongs to: the split is decided by
        it (no conversation on both sides), it is written as ``base_conversation_id``, and a record
        that is not its conversation's first segment is marked ``follows_unseen_answer`` (it opens with
        a follow-up whose answer is in another record)."""
        self.out = out
        self.split_of = split_of
        self.conversation_of = conversation_of
        self.continuation_rows = 0
        scratch = out / _SCRATCH
        shutil.rmtree(scratch, ignore_errors=True)
        self.scratch = scratch
        #: one writer per split, opened when the split's first row comes (``train`` always exists)
        self.kept_writers: dict[str, ShardWriter] = {"train": ShardWriter(scratch / "kept-train", shard_rows)}
        # scratch parts are read once more: lz4 is cheaper than zstd for that
        self.rejected_writer = ShardWriter(scratch / "rejected", shard_rows, compression="lz4")
        self.shard_rows = shard_rows
        self.kept_figures: list[pl.DataFrame] = []
        self.kept_scores: list[pl.DataFrame] = []
        self.rejected_figures: list[pl.DataFrame] = []
        self.rejected_scores: list[pl.DataFrame] = []

    # -- what executors call ----------------------------------------------------------------------

    def kept(self, df: pl.DataFrame) -> None:
        if not df.height:
            return
        if self.conversation_of is not None:
            from realchat.data import BASE_COLUMN

            df = df.with_columns(pl.col("conversation_id").map_elements(self.conversation_of, return_dtype=pl.String)
                                 .alias(BASE_COLUMN))
            continues = (pl.col(BASE_COLUMN) != pl.col("conversation_id")) & (pl.col("segment") == 0)
            follows = pl.col("follows_unseen_answer") if "follows_unseen_answer" in df.columns else pl.lit(False)
            self.continuation_rows += int(df.select(continues.sum()).item())
            df = df.with_columns((follows | continues).alias("follows_unseen_answer"))
            df = df.with_columns(pl.col(BASE_COLUMN).map_elements(self.split_of, return_dtype=pl.String)
                                 .alias("split"))
        else:
            df = df.with_columns(pl.col("conversation_id").map_elements(self.split_of, return_dtype=pl.String)
                                 .alias("split"))
        self.kept_figures.append(_row_figures(df))
        self.kept_scores.append(_score_figures(df))
        for (split,), part in df.group_by("split", maintain_order=True):
            if split not in self.kept_writers:
                self.kept_writers[split] = ShardWriter(self.scratch / f"kept-{split}", self.shard_rows)
            self.kept_writers[split].write(part)

    def rejected(self, df: pl.DataFrame) -> None:
        if not df.height:
            return
        self.rejected_figures.append(df.select("source_index", "reason"))
        self.rejected_scores.append(_score_figures(df))
        self.rejected_writer.write(df)

    # -- after the run ----------------------------------------------------------------------------

    def finish(self) -> "SinkFigures":
        for w in self.kept_writers.values():
            w.close()
        self.rejected_writer.close()
        kept = _concat(self.kept_figures, {"source_index": pl.Int64, "_user_turns": pl.UInt32,
                                           "_messages": pl.UInt32, "_user_chars": pl.List(pl.UInt32),
                                           "split": pl.String})
        rejected = _concat(self.rejected_figures, {"source_index": pl.Int64, "reason": pl.String})
        kept_index = kept["source_index"].unique()
        rejected = rejected.with_columns(_scope(kept_index))
        every_kept = [pl.read_parquet_schema(f) for w in self.kept_writers.values() for f in w.files]
        for split, w in self.kept_writers.items():
            if w.files or split == "train":  # an empty train split still has its (empty) shard
                _name_shards(w.files, self.out / "data", None, self.shard_rows, split, every_kept)
        _name_shards(self.rejected_writer.files, self.out / "rejected", kept_index, self.shard_rows)
        shutil.rmtree(self.out / _SCRATCH, ignore_errors=True)
        return SinkFigures(kept=kept, rejected=rejected, kept_conversations=kept_index.len(),
                           kept_scores=_concat(self.kept_scores, {}), rejected_scores=_concat(self.rejected_scores, {}))


@dataclass
class SinkFigures:
    """What the statistics read: per kept row and per rejected row, figures without text."""

    kept: pl.DataFrame
    rejected: pl.DataFrame
    kept_conversations: int
    kept_scores: pl.DataFrame
    rejected_scores: pl.DataFrame


def _concat(frames: list[pl.DataFrame], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    frames = [f for f in frames if f.width]
    if not frames:
        return pl.DataFrame(schema=schema)
    return pl.concat(frames, how="diagonal_relaxed")


def _name_shards(parts: list[Path], folder: Path, kept_index: pl.Series | None, shard_rows: int,
                 split: str = "train", schema_of: list[dict[str, Any]] | None = None) -> None:
    """Scratch parts → ``<split>-KKKKK-of-NNNNN.parquet`` in ``folder``, all with one schema (the union
    of the columns of the schemas ``schema_of`` (default: the parts'), in first-seen order, missing ones null: the
    splits of one config share it, as ``datasets`` needs). ``kept_index`` given: the parts are rejected
    rows, and each gets its ``scope``."""
    folder.mkdir(parents=True, exist_ok=True)
    schemas = [pl.read_parquet_schema(p) for p in parts]
    union: dict[str, pl.DataType] = {}
    for s in schema_of if schema_of is not None else schemas:
        for name, dtype in s.items():
            if name not in union or union[name] == pl.Null:
                union[name] = dtype
    if kept_index is not None:  # the books' columns in their fixed order after the base ones
        union = BASE_SCHEMA | _BOOKS | {c: t for c, t in union.items() if c in BASE_SCHEMA or c in _BOOKS} | {
            c: t for c, t in union.items() if c not in BASE_SCHEMA and c not in _BOOKS}
    if not parts:  # an empty set still has one (empty) shard with the base columns
        schema = BASE_SCHEMA | ({"split": pl.String} if kept_index is None else _BOOKS)
        pl.DataFrame(schema=union or schema).write_parquet(folder / f"{split}-00000-of-00001.parquet",
                                                           compression="zstd")
    elif kept_index is None and all(dict(s) == union for s in schemas):  # already shards: rename them
        _name(parts, folder, split)
    else:  # one schema, scope filled, re-cut into shards of shard_rows
        writer = ShardWriter(folder / _SCRATCH, shard_rows)
        for path in parts:
            df = pl.read_parquet(path)
            if kept_index is not None:
                df = df.with_columns(_scope(kept_index))
            writer.write(df.select([pl.col(c).cast(t) if c in df.columns else pl.lit(None, dtype=t).alias(c)
                                    for c, t in union.items()]))
            path.unlink()
        writer.close()
        _name(writer.files, folder, split)
        (folder / _SCRATCH).rmdir()
