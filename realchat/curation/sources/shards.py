"""A source cut into shards that workers read on their own: :func:`plan_shards`, then :func:`read_shard`.

The concatenation of ``read_shard`` over ``plan_shards`` is exactly the record stream of
:func:`~realchat.curation.sources.open_source` (same ``index``, ``data``, ``position``, ``error`` and
``detail``, ``limit`` included), so a record keeps its index, and what is derived from it (default ids,
"first in source order"), whichever executor reads it.

How each format is cut, and what planning costs on the driver (figures: the shipped 125 MB ShareGPT file,
2-core CPU; ``bench/bench_shards.py``):

* **JSON array** (ShareGPT): a shard starts at a record's first byte. Finding records without decoding
  them is one pass of numpy over the bytes in 32 MB blocks (:func:`_scan_array`): unescaped quotes
  (a quote after an even run of backslashes) delimit strings, and the brackets outside strings give the
  depth; a record starts where an opening bracket takes the depth from 1 to 2. 0.45-0.95 s for the
  125 MB file against 0.7-1.1 s to decode it all with the reader (whose offsets would do too): a
  little faster, and it builds no Python objects (memory: a few 32 MB blocks). If anything other than an
  object or array sits at the array's top level (a bare string or number: no ShareGPT file has one),
  the array is one shard rather than risk a wrong count. A shard's reader
  (:func:`~realchat.curation.sources.json_stream._iter_array`) starts at its first record and reads
  every record that *begins* before the next shard's start, so the cut-off last record, the
  unclosed-array warning and a syntax error mid-file come out exactly as from one whole read (a
  shard's error is raised when the driver asks for that shard, in order, so the first one wins).
* **JSON lines**: a shard is a byte range cut at line starts; its first record index is the number of
  non-blank lines before it (a line is blank when ``str.strip`` leaves nothing, as for the reader).
  One numpy pass finds the newlines; only lines that start with a whitespace-like byte are decoded to
  check them (none in a usual JSONL file).
* **parquet**: runs of row groups of one file (a row group is never split); planning reads only the
  footers.
* **a ``datasets`` folder or a Hub dataset**: one shard, read where it is asked for (the Ray executor
  reads it on the driver and hands records to the workers in slices): ``datasets`` resolves, downloads
  and caches it on the machine that loads it, which a worker of a remote cluster need not share.

A shard ends after ``target_bytes`` of source or ``max_records`` records (whichever comes first; a
single record larger than ``target_bytes`` is a shard of its own).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from realchat.curation.sources import SourceConfig
from realchat.curation.sources.base import RawRecord, ReadReport
from realchat.curation.sources.json_stream import (
    _first_char, _iter_array, _line_records, _refuse_single_object)
from realchat.curation.sources.tables import iter_datasets, parquet_records
from realchat.errors import SourceError
from realchat.recipe.refs import resolve_local

_BLOCK = 32 << 20


@dataclass(frozen=True)
class ShardSpec:
    """One shard of a source: small, picklable, self-contained (a worker needs nothing else)."""

    #: ``json_array``, ``jsonl``, ``parquet`` (ranges of a file) or ``dataset`` (the whole source).
    kind: Literal["json_array", "jsonl", "parquet", "dataset"]
    #: The file (a dataset's folder or Hub id for ``dataset``).
    path: str
    #: Byte offset of the first record (json kinds) or first row group (parquet).
    start: int
    #: Where the next shard starts (``None``: the end of the file).
    stop: int | None
    #: Index of the shard's first record in the whole source.
    first_index: int
    #: JSONL: line number of the line at ``start``; parquet: the file's row number of its first row.
    first_position: int = 0
    #: The source's ``limit``: records from this index on are not read.
    limit: int | None = None
    #: ``dataset`` only: the split, revision and whether ``path`` is a Hub id.
    split: str = "train"
    revision: str | None = None
    hub: bool = False


def plan_shards(cfg: SourceConfig, base_dir: Path, target_bytes: int,
                max_records: int | None = None) -> list[ShardSpec]:
    """The shards of ``cfg``'s source, in source order. Raises what :func:`open_source` raises for a
    file that is not what its format says (before anything is read)."""
    if cfg.format == "hub":
        return [ShardSpec("dataset", cfg.path, 0, None, 0, limit=cfg.limit, split=cfg.split,
                          revision=cfg.revision, hub=True)]
    path = resolve_local(cfg.path, base_dir)
    if cfg.format == "datasets_folder":
        return [ShardSpec("dataset", str(path), 0, None, 0, limit=cfg.limit, split=cfg.split)]
    if cfg.format == "parquet":
        shards = _plan_parquet(path, target_bytes, max_records, cfg.limit)
    else:
        first = _first_char(path)
        if first == "[":
            shards = _plan_array(path, target_bytes, max_records, cfg.limit)
        elif first == "{" or first == "":
            _refuse_single_object(path)
            shards = _plan_lines(path, target_bytes, max_records, cfg.limit)
        else:
            raise SourceError(f"expected a JSON array ('[') or JSON lines ('{{'), found {first!r}", file=str(path))
    # a shard whose first record is the limit still runs: the whole read also reads that record (and
    # records the warnings its reader gives on the way) before it stops
    return [replace(s, limit=cfg.limit) for s in shards if cfg.limit is None or s.first_index <= cfg.limit]


def read_shard(spec: ShardSpec, report: ReadReport | None = None) -> Iterator[RawRecord]:
    """The records of one shard (honouring ``limit``); warnings and ``truncated_at_byte`` go to ``report``."""
    path = Path(spec.path)
    report = report if report is not None else ReadReport(path=spec.path, format=spec.kind)
    if spec.kind == "json_array":
        def records() -> Iterator[RawRecord]:
            with path.open("rb") as f:
                f.seek(spec.start)
                yield from _iter_array(f, path, report, spec.start, spec.stop, spec.first_index)
    elif spec.kind == "jsonl":
        def records() -> Iterator[RawRecord]:
            with path.open("rb") as f:
                f.seek(spec.start)
                data = f.read() if spec.stop is None else f.read(spec.stop - spec.start)
            yield from _line_records(io.BytesIO(data).readlines(), path, report, spec.first_position,
                                     spec.first_index)
    elif spec.kind == "parquet":
        records = lambda: _read_row_groups(spec)  # noqa: E731
    else:
        records = lambda: iter_datasets(spec.path, spec.split, spec.revision, spec.hub, report)  # noqa: E731
    for rec in records():
        if spec.limit is not None and rec.index >= spec.limit:
            return
        yield rec


# -- JSON lines -------------------------------------------------------------------------------------

#: Bytes that can be part of a whitespace character's UTF-8 form (str.isspace: ASCII whitespace,
#: \x1c-\x1f, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028/9, U+202F, U+205F, U+3000). A line that
#: starts with one of these is decoded to check; any other first byte makes it non-blank.
_WS_LIKE = np.zeros(256, dtype=bool)
_WS_LIKE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0xC2, 0xE1, 0xE2, 0xE3]] = True
_WS_LIKE[0x80:0xC0] = True


def _plan_lines(path: Path, target_bytes: int, max_records: int | None, limit: int | None) -> list[ShardSpec]:
    shards: list[ShardSpec] = []
    cap = max_records or (1 << 62)
    shard_start, shard_index, shard_line = 0, 0, 1
    index, lineno = 0, 1  # of the next line
    base = 0  # file offset of buf[0]
    buf = b""
    with path.open("rb") as f:
        while True:
            data = f.read(_BLOCK)
            buf += data
            if data:
                end = buf.rfind(b"\n") + 1
                if end == 0:
                    continue  # no whole line yet
            else:
                end = len(buf)  # the last line, without its newline
                if end == 0:
                    break
            a = np.frombuffer(buf, dtype=np.uint8, count=end)
            nl = np.flatnonzero(a == 10)
            starts = np.concatenate(([0], nl + 1))
            if starts[-1] >= end:
                starts = starts[:-1]
            # a line is [starts[k], starts[k+1]) (its newline included); a line whose first byte is
            # not whitespace-like holds a record; the others (rare: blank or indented) are decoded
            blank = np.zeros(len(starts), dtype=bool)
            check = np.flatnonzero(_WS_LIKE[a[starts]])
            if base == 0 and buf.startswith(b"\xef\xbb\xbf"):  # a byte-order mark: line 1 may still be blank
                check = np.union1d(check, [0])
            for k in check:
                lo, hi = int(starts[k]), int(starts[k + 1]) if k + 1 < len(starts) else end
                text = buf[lo:hi].decode("utf-8", "surrogateescape")
                blank[k] = not (text.removeprefix("\ufeff") if base + lo == 0 else text).strip()
            records_before = index + np.concatenate(([0], np.cumsum(~blank)))  # per line start, and at end
            # cut at line starts: after target_bytes of source or max_records records
            while True:
                by_bytes = int(np.searchsorted(starts, shard_start + target_bytes - base, side="left"))
                by_records = int(np.searchsorted(records_before[:-1], shard_index + cap, side="left"))
                k = min(by_bytes, by_records)
                if k >= len(starts):
                    break
                at = base + int(starts[k])  # after shard_start: target_bytes and cap are at least 1
                shards.append(ShardSpec("jsonl", str(path), shard_start, at, shard_index, shard_line))
                shard_start, shard_index, shard_line = at, int(records_before[k]), lineno + k
            index = int(records_before[-1])
            lineno += len(starts)
            base += end
            buf = buf[end:]
            if not data or (limit is not None and index > limit):
                break  # past the limit: the last shard reads up to it
    shards.append(ShardSpec("jsonl", str(path), shard_start, None, shard_index, shard_line))
    return shards


# -- JSON array -------------------------------------------------------------------------------------

#: What may sit between records at the array's top level (what the reader skips).
_GAP_OK = np.zeros(256, dtype=bool)
_GAP_OK[[ord(c) for c in " \t\r\n,"]] = True


def _escaped(a: np.ndarray, q: np.ndarray, carry_bs: int) -> np.ndarray:
    """For each quote position in ``q``: whether an odd run of backslashes precedes it (``carry_bs``:
    the backslashes that ended the previous block)."""
    run = np.zeros(len(q), dtype=np.int64)
    cand = np.flatnonzero((q == 0) | (a[np.maximum(q - 1, 0)] == 92))
    k = 1
    active = cand
    while len(active):
        idx = q[active] - k
        before = idx < 0
        run[active[before]] += carry_bs  # the run reaches back into the previous block
        active, idx = active[~before], idx[~before]
        is_bs = a[idx] == 92
        active = active[is_bs]
        run[active] += 1
        k += 1
    return (run % 2) == 1


def _scan_array(path: Path, target_bytes: int, max_records: int | None,
                limit: int | None = None) -> list[tuple[int, int]] | None:
    """``(byte offset, index)`` of the first record of every shard after the first, or None when the
    array holds something other than objects and arrays at its top level."""
    cap = max_records or (1 << 62)
    cuts: list[tuple[int, int]] = []
    in_string, depth, carry_bs = 0, 0, 0
    gap_dirty = False
    n_records = 0
    shard_start, shard_index = 0, 0
    base = 0
    with path.open("rb") as f:
        while True:
            block = f.read(_BLOCK)
            if not block:
                break
            a = np.frombuffer(block, dtype=np.uint8)
            q = np.flatnonzero(a == 34)
            uq = q[~_escaped(a, q, carry_bs)] if len(q) else q
            folded = a & 0xDF  # '{' -> '[' and '}' -> ']' (4 cheap passes beat a lookup table 2x)
            s = np.flatnonzero((folded == 91) | (folded == 93))
            s = s[(np.searchsorted(uq, s) + in_string) % 2 == 0]  # brackets outside strings
            delta = np.where(folded[s] == 91, 1, -1)
            after = depth + np.cumsum(delta)
            before = after - delta
            # the top-level array closes: nothing after it is read
            closed = np.flatnonzero(after <= 0)
            closed = closed[before[closed] >= 1] if len(closed) else closed
            kept = int(closed[0]) + 1 if len(closed) else len(s)
            s, delta, after, before = s[:kept], delta[:kept], after[:kept], before[:kept]
            # bytes at the top level between brackets must be whitespace or commas (else a bare string
            # or number is a record there): gather the bytes of the depth-1 gaps and look
            lo = s[after == 1] + 1
            hi_idx = np.flatnonzero(after == 1) + 1
            hi = np.where(hi_idx < len(s), s[np.minimum(hi_idx, len(s) - 1)], len(a)) if len(s) else hi_idx
            if depth == 1:  # the block starts inside a top-level gap
                lo = np.concatenate(([0], lo))
                hi = np.concatenate(([s[0] if len(s) else len(a)], hi))
            if len(closed):  # ends at the closing bracket
                hi = np.minimum(hi, s[-1]) if len(hi) else hi
            lengths = hi - lo
            if lengths.sum():
                first = np.cumsum(lengths) - lengths
                idx = np.arange(int(lengths.sum())) + np.repeat(lo - first, lengths)
                gap_dirty = not _GAP_OK[a[idx]].all()
            if gap_dirty or (base == 0 and (not len(s) or a[s[0]] != ord("["))):
                return None
            starts = s[(delta == 1) & (before == 1)] + base  # records begin here
            rec_idx = n_records + np.arange(len(starts))
            while len(starts):
                k = min(int(np.searchsorted(starts, shard_start + target_bytes, side="left")),
                        int(np.searchsorted(rec_idx, shard_index + cap, side="left")))
                if k < len(starts) and starts[k] <= shard_start:
                    k += 1
                if k >= len(starts):
                    break
                shard_start, shard_index = int(starts[k]), int(rec_idx[k])
                if shard_index > 0:
                    cuts.append((shard_start, shard_index))
            n_records += len(starts)
            if len(closed) or (limit is not None and n_records > limit):
                break
            if len(s):
                depth = int(after[-1])
            in_string = (in_string + len(uq)) % 2
            tail = len(a) - len(block.rstrip(b"\\"))
            carry_bs = tail + carry_bs if tail == len(a) else tail
            base += len(a)
    return cuts


def _plan_array(path: Path, target_bytes: int, max_records: int | None, limit: int | None) -> list[ShardSpec]:
    cuts = _scan_array(path, target_bytes, max_records, limit)
    if not cuts:
        return [ShardSpec("json_array", str(path), 0, None, 0)]
    starts = [(0, 0), *cuts]
    return [ShardSpec("json_array", str(path), off, starts[k + 1][0] if k + 1 < len(starts) else None, idx)
            for k, (off, idx) in enumerate(starts)]


# -- parquet ----------------------------------------------------------------------------------------

def _plan_parquet(path: Path, target_bytes: int, max_records: int | None, limit: int | None) -> list[ShardSpec]:
    import pyarrow.parquet as pq

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise SourceError("no .parquet files found", file=str(path))
    cap = max_records or (1 << 62)
    shards: list[ShardSpec] = []
    index = 0
    for file in files:
        if limit is not None and index > limit:
            break  # the whole read stops before opening this file
        try:
            meta = pq.ParquetFile(file).metadata
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise SourceError(f"not a readable parquet file: {e}", file=str(file)) from None
        row, first_rg, first_row, first_index, size, rows = 0, 0, 0, index, 0, 0
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            if rows and (size + rg.total_byte_size > target_bytes or rows + rg.num_rows > cap):
                shards.append(ShardSpec("parquet", str(file), first_rg, g, first_index, first_row))
                first_rg, first_row, first_index, size, rows = g, row, index, 0, 0
            size += rg.total_byte_size
            rows += rg.num_rows
            row += rg.num_rows
            index += rg.num_rows
        if meta.num_row_groups:
            shards.append(ShardSpec("parquet", str(file), first_rg, meta.num_row_groups, first_index, first_row))
    return shards


def _read_row_groups(spec: ShardSpec) -> Iterator[RawRecord]:
    assert spec.stop is not None
    return parquet_records(Path(spec.path), spec.first_index, list(range(spec.start, spec.stop)),
                           spec.first_position)


__all__ = ["ShardSpec", "plan_shards", "read_shard"]
