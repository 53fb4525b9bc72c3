"""The curate step in this process, streaming: memory bounded by a chunk, whatever the input's size.

Records are read and normalised ``shard_rows`` at a time (:class:`~realchat.curation.pipeline.ChunkReader`)
and every chunk goes through the recipe's ops in order, by each op's ``scope``:

* ``row`` and ``ordered`` ops (everything but near dedup) take the chunk and pass on what they keep;
  exact dedup remembers the keys it has seen, in source order, from chunk to chunk;
* a ``global`` op (near dedup) cuts the pipeline into passes: the chunks that reach it are observed
  (their MinHash signatures taken) and spilled to parquet parts inside the step's output folder; once
  the last chunk is in, the op decides, and a new pass reads the spilled parts back, one at a time,
  through that op and the ops after it.

Kept rows leave through the sink in source order, rejected rows as they happen, so rows held at any
moment are about two chunks plus what the ops remember (keys, band hashes, ids: bytes per row, not
text). The result is row for row what one pass over the whole table would give: ops see the same rows
in the same order, and the dedup ops' state is what makes chunking invisible to them
(``tests/test_streaming.py`` checks it).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from realchat.curation.ops import REGISTRY
from realchat.curation.ops.base import Filter
from realchat.curation.parts import CurateSink, ShardWriter
from realchat.curation.pipeline import ChunkReader, ExecutorRun, RuleTally, label_rejected
from realchat.curation.sources import open_source

if TYPE_CHECKING:
    from realchat.curation.reference import Reference
    from realchat.engine.context import StepContext

_SPILL = ".spill"


class RowsHeld:
    """The most conversation rows held in memory at once (the chunk in hand, the spill and output
    buffers): what the streaming bound is about, counted rather than inferred from process memory."""

    def __init__(self) -> None:
        self.peak = 0

    def sample(self, rows: int) -> None:
        self.peak = max(self.peak, rows)


def run_local(ctx: "StepContext", cfg: Any, sink: CurateSink, references: dict[int, "Reference"],
              out: Path, held: RowsHeld | None = None) -> ExecutorRun:
    held = held or RowsHeld()
    records, report = open_source(cfg.source, ctx.base_dir)
    chunk_rows = ctx.loaded.recipe.executor.shard_rows
    reader = ChunkReader(cfg.roles, cfg.source.id_field, Path(cfg.source.path).stem or "record", chunk_rows)
    tokens = lambda: ctx.token_counter(cfg.tokenizer, "tokenizer")  # noqa: E731 - loaded on first use
    ops: list[Filter] = [REGISTRY[p.op](p, tokens, None, {"reference": references[i]} if i in references else None)
                         for i, p in enumerate(cfg.filters)]
    tallies = [RuleTally(f"filters[{i}].{p.op}", p.op) for i, p in enumerate(cfg.filters)]
    # passes: ops[start:stop], each but the last ending with a global op that is observed, not applied
    stops = [i + 1 for i, op in enumerate(ops) if op.scope == "global"]
    bounds = list(zip([0] + stops, stops + [len(ops)]))
    spill_root = out / _SPILL
    kept_read = 0
    read_seconds = 0.0

    def source_chunks() -> Iterator[pl.DataFrame]:
        nonlocal kept_read, read_seconds
        it = reader.chunks(ctx.progress(records, "read", unit="items"))
        while True:
            t0 = time.perf_counter()
            got = next(it, None)
            read_seconds += time.perf_counter() - t0
            if got is None:
                return
            rows, rejected = got
            sink.rejected(rejected)
            kept_read += rows.height
            yield rows

    chunks: Iterator[pl.DataFrame] = source_chunks()
    for number, (start, stop) in enumerate(bounds):
        barrier = ops[stop - 1] if stop > start and ops[stop - 1].scope == "global" else None
        # a pass that starts after a global op applies it first (it has decided by now)
        first = start - 1 if start and ops[start - 1].scope == "global" else start
        spill = ShardWriter(spill_root / f"pass-{number}", chunk_rows, compression="lz4") if barrier else None
        with ExitStack() as stack:
            shown = [stack.enter_context(ctx.progress_counter(f"filters[{i}] {cfg.filters[i].op}", None, "rows"))
                     for i in range(first, stop - (barrier is not None))]
            for chunk in chunks:
                n_chunk = chunk.height
                for k, i in enumerate(range(first, stop)):
                    if ops[i] is barrier:
                        if chunk.height:
                            t0 = time.perf_counter()
                            barrier.observe(chunk)
                            tallies[i].seconds += time.perf_counter() - t0
                        break
                    chunk = _apply(ops[i], i, chunk, tallies[i], sink)
                    shown[k].update(completed=tallies[i].rows_in, kept=tallies[i].rows_out)
                if spill is not None:
                    spill.write(chunk)
                else:
                    sink.kept(chunk)
                held.sample(n_chunk + (spill.buffered if spill is not None else 0) + sink.buffered())
        if spill is not None:
            spill.close()
            chunks = _read_back(spill.files)
    for i, op in enumerate(ops):
        tallies[i].counters.update(op.totals())
    shutil.rmtree(spill_root, ignore_errors=True)
    for w in report.warnings:
        ctx.console.print(f"[yellow]warning:[/yellow] {w}")
    if (warning := reader.renamed_warning()) is not None:
        ctx.console.print(f"[yellow]warning:[/yellow] {warning}")
        report.warnings.append(warning)
    rules = [reader.source_rule(kept_read, read_seconds)] + [t.record() for t in tallies]
    return ExecutorRun(rules=rules, read=reader.read, renamed=reader.unique.renamed, report=report,
                       figures={"shard_rows": chunk_rows, "passes": len(bounds), "rows_held_peak": held.peak})


def _apply(op: Filter, index: int, chunk: pl.DataFrame, tally: RuleTally, sink: CurateSink) -> pl.DataFrame:
    """One op on one chunk: the rejected rows to the sink, the figures to the rule's tally."""
    if not chunk.height:
        return chunk
    t0 = time.perf_counter()
    result = op.apply(chunk)
    tally.add(chunk.height, result, time.perf_counter() - t0)
    if result.rejected is not None and result.rejected.height:
        sink.rejected(label_rejected(result.rejected, index, op.params.op))
    return result.kept


def _read_back(files: list[Path]) -> Iterator[pl.DataFrame]:
    """Spilled parts in the order they were written, each deleted once read."""
    for path in files:
        df = pl.read_parquet(path)
        path.unlink()
        yield df
