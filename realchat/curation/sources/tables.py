"""Readers for tabular sources: parquet files, ``datasets`` folders, and Hub dataset ids.

Hub ids go through ``datasets.load_dataset`` (with the recipe's revision), which needs network; the
resolved commit is recorded for lineage when the Hub reports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from realchat.errors import SourceError, user_file
from realchat.curation.sources.base import RawRecord, ReadReport


def iter_parquet(path: Path, report: ReadReport) -> Iterator[RawRecord]:
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise SourceError("no .parquet files found", file=str(path))
    index = 0
    for file in files:
        for rec in parquet_records(file, index):
            yield rec
            index += 1


#: The columns a tabular source's conversations can be in (ShareGPT's, or OpenAI's messages).
CONVERSATION_COLUMNS = ("conversations", "messages")


def require_conversations(columns: list[str], where: str) -> None:
    """A table without a conversations column holds no conversation in any row: one error naming the
    file and the columns it has, not every row rejected and an empty dataset published."""
    if not any(c in columns for c in CONVERSATION_COLUMNS):
        shown = ", ".join(columns[:20]) + (f", … ({len(columns)} in all)" if len(columns) > 20 else "")
        raise SourceError(f"no 'conversations' or 'messages' column; the columns are: {shown or 'none'}",
                          file=where, hint="a column of ShareGPT turns ({from, value}) or OpenAI messages "
                                           "({role, content}) per row")


def parquet_records(file: Path, first_index: int, row_groups: list[int] | None = None,
                    first_row: int = 0) -> Iterator[RawRecord]:
    """One parquet file's rows (or those of ``row_groups``, whose first row is ``first_row``) as
    records numbered from ``first_index``; a corrupt file or data page names the file and the row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise SourceError(f"not a readable parquet file: {e}", file=str(file)) from None
    require_conversations(pf.schema_arrow.names, str(file))
    index, row = first_index, first_row
    batches = pf.iter_batches(batch_size=4096, row_groups=row_groups)
    while True:
        # a corrupt data page fails inside pyarrow: name the file and the first row not read
        with user_file(file, record=row, doing="corrupt parquet data", also=(pa.ArrowException,)):
            batch = next(batches, None)
            objs = batch.to_pylist() if batch is not None else []
        if batch is None:
            return
        for obj in objs:
            yield RawRecord(index=index, data=obj, position=f"{file.name} row {row}")
            index += 1
            row += 1


def iter_datasets(path_or_id: str, split: str, revision: str | None, from_hub: bool,
                  report: ReadReport) -> Iterator[RawRecord]:
    import datasets

    try:
        if from_hub:
            ds = datasets.load_dataset(path_or_id, split=split, revision=revision)
        else:
            ds = datasets.load_from_disk(path_or_id)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
    except Exception as e:  # network, missing split, wrong folder: all reported the same way
        raise SourceError(f"cannot load dataset: {e}", file=path_or_id) from None
    require_conversations(list(ds.column_names or []), path_or_id)
    fingerprint = getattr(ds, "_fingerprint", None)
    if from_hub and report.revision is None:
        report.revision = revision or fingerprint
    for i, obj in enumerate(ds):
        yield RawRecord(index=i, data=obj, position=f"row {i}")
