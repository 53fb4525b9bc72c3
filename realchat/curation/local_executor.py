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

import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from realchat.curation.ops import REGISTRY
from realchat.curation.ops.base import Filter
from realchat.curation.langid import open_helper
from realchat.curation.parts import CurateSink, ShardWriter
from realchat.curation.processes import answer_of, close_pool, spawn_pool, submit
from realchat.curation.pipeline import (ChunkReader, ExecutorRun, RuleTally, token_getter, label_rejected,
                                        run_row_ops, source_rule, tokenizer_spec)
from realchat.curation.sources import open_source

if TYPE_CHECKING:
    from realchat.curation.reference import Reference
    from realchat.engine.context import StepContext

_SPILL = ".spill"
#: When the worker processes start: at the ``_START_AFTER``-th chunk (an input of a few chunks stays in
#: one process). Chunks go on being processed here until every worker has started (imported the ops,
#: loaded the Rust tokenizer from its JSON, no transformers import), so a start never leaves the cores
#: idle. Starting them at the second chunk of an input over 5,000 rows was measured on a loaded machine
#: (load average 8-11, bench_vs_others, 3 pairs; docs/benchmarks.md) at 1.36x the wall time, 1.54x
#: the CPU time and 3.5x the summed RSS of one process: the rule stays until a quiet machine says otherwise.
_START_AFTER = 4

def run_local(ctx: "StepContext", cfg: Any, sink: CurateSink, references: dict[int, "Reference"],
              out: Path) -> ExecutorRun:
    executor = ctx.loaded.recipe.executor
    records, report = open_source(cfg.source, ctx.base_dir)
    chunk_rows = executor.shard_rows
    reader = ChunkReader(cfg.roles, cfg.source.id_field, Path(cfg.source.path).stem or "record", chunk_rows,
                         cfg.source.max_record_chars)
    tokens = lambda: ctx.token_counter(cfg.tokenizer, "tokenizer")  # noqa: E731 - loaded on first use
    ops: list[Filter] = [REGISTRY[p.op](p, tokens, None, {"reference": references[i]} if i in references else None)
                         for i, p in enumerate(cfg.filters)]
    tallies = [RuleTally(f"filters[{i}].{p.op}", p.op) for i, p in enumerate(cfg.filters)]
    # passes: ops[start:stop], each but the last ending with a global op that is observed, not applied
    stops = [i + 1 for i, op in enumerate(ops) if op.scope == "global"]
    bounds = list(zip([0] + stops, stops + [len(ops)]))
    spill_root = out / _SPILL
    workers = _Workers(executor.workers or os.cpu_count() or 1, lambda: _portable_tokenizer(ctx, cfg))
    kept_read = 0
    read_seconds = 0.0
    entering = [0]  # rows of the chunks that last entered the pass (read, with the one read ahead, or read back)
    # the most conversation rows held at once (the chunk that entered the pass, the chunks in worker
    # processes, the chunk in hand; the writers hold none): the streaming bound, counted rather than
    # inferred from process memory
    rows_held_peak = 0

    def read() -> tuple[pl.DataFrame, pl.DataFrame] | None:
        nonlocal read_seconds
        t0 = time.perf_counter()
        got = next(it, None)
        read_seconds += time.perf_counter() - t0
        return got

    def source_chunks() -> Iterator[pl.DataFrame]:
        """The source's chunks. While they are processed here, each is announced to the ops as soon as
        it is read (:meth:`~realchat.curation.ops.base.Filter.prefetch`: language ID's helper process
        starts on it), and the source is read one chunk ahead, so the helper works on the next chunk
        while this one goes through the pipeline. A chunk's rejected records still reach the sink just
        before the chunk goes on: the rejected set's order is what it was without the read-ahead."""
        nonlocal kept_read
        pending: deque[tuple[pl.DataFrame, pl.DataFrame]] = deque()

        def take() -> bool:
            got = read()
            if got is None:
                return False
            pending.append(got)
            if workers.pool is None:  # once worker processes run, they apply the ops: nothing to announce
                for op in ops:
                    op.prefetch(got[0])
            return True

        while True:
            if not pending and not take():
                return
            if workers.pool is None and len(pending) == 1:
                take()
            rows, rejected = pending.popleft()
            sink.rejected(rejected)
            kept_read += rows.height
            entering[0] = sum(r.height + j.height for r, j in (*pending, (rows, rejected)))
            yield rows

    it = reader.chunks(ctx.progress(records, "read", unit="items"))
    chunks: Iterator[pl.DataFrame] = source_chunks()
    # language ID's helper process, for the chunks processed here (the worker processes are the second
    # core once they run)
    language_helper = open_helper(allowed=workers.processes > 1)
    stopped = True  # until the passes finish: an error or a signal stops the workers, not waits for them
    try:
        for number, (start, stop) in enumerate(bounds):
            barrier = ops[stop - 1] if stop > start and ops[stop - 1].scope == "global" else None
            # a pass that starts after a global op applies it first (it has decided by now)
            first = start - 1 if start and ops[start - 1].scope == "global" else start
            applied = list(range(first, stop - (barrier is not None)))
            spill = ShardWriter(spill_root / f"pass-{number}", chunk_rows, compression="lz4") if barrier else None
            with ExitStack() as stack:
                # a line per op when the pass starts and one when it ends, both in the recipe's order
                counters = [ctx.progress_counter(f"filters[{i}] {cfg.filters[i].op}", None, "rows") for i in applied]
                shown = {i: cm.__enter__() for i, cm in zip(applied, counters)}
                for cm in reversed(counters):  # the stack unwinds last in, first out
                    stack.push(cm)
                stream = chunks
                for group in _groups(ops, applied):  # row ops in worker processes, the others here
                    if ops[group[0]].scope == "row":
                        stream = workers.stream(stream, group, ops, tallies, sink, shown)
                    else:
                        stream = _here(stream, group[0], ops[group[0]], tallies[group[0]], sink, shown[group[0]])
                prepared = workers.prepared(stream, barrier) if barrier is not None else ((c, None) for c in stream)
                for chunk, payload in prepared:
                    if barrier is not None and chunk.height:
                        t0 = time.perf_counter()
                        barrier.observe(chunk, payload)
                        tallies[stop - 1].seconds += time.perf_counter() - t0 + workers.prepare_seconds
                        workers.prepare_seconds = 0.0
                    if spill is not None:
                        spill.write(chunk)
                    else:
                        sink.kept(chunk)
                    rows_held_peak = max(rows_held_peak, entering[0] + workers.rows_in_flight + chunk.height)
            if spill is not None:
                spill.close()
                chunks = _read_back(spill.files, entering)
        stopped = False
    finally:
        workers.close(stop=stopped)
        language_helper.close(stop=stopped)
    for i, op in enumerate(ops):
        tallies[i].counters.update(op.totals())
    shutil.rmtree(spill_root, ignore_errors=True)
    rules = [source_rule(reader.read, kept_read, reader.rejected_by_reason, reader.unique.renamed, read_seconds)]
    rules += [t.record() for t in tallies]
    return ExecutorRun(rules=rules, read=reader.read, renamed=reader.unique.renamed, report=report,
                       figures={"shard_rows": chunk_rows, "passes": len(bounds), "rows_held_peak": rows_held_peak,
                                "worker_processes": workers.started,
                                "language_helper_processes": language_helper.started})


def _groups(ops: list[Filter], indices: list[int]) -> list[list[int]]:
    """Consecutive ``row`` ops together (one trip to a worker), every other op alone."""
    groups: list[list[int]] = []
    for i in indices:
        if groups and ops[i].scope == "row" and ops[groups[-1][-1]].scope == "row":
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _here(stream: Iterator[pl.DataFrame], index: int, op: Filter, tally: RuleTally, sink: CurateSink,
          shown: Any) -> Iterator[pl.DataFrame]:
    """An op that keeps state from chunk to chunk (dedup) runs in this process, chunks in order."""
    for chunk in stream:
        chunk = _apply(op, index, chunk, tally, sink)
        shown.update(completed=tally.rows_in, kept=tally.rows_out)
        yield chunk


class _Workers:
    """Worker processes for the ``row`` ops: chunks go out in order, at most ``processes + 1`` of them
    in flight, and come back in the same order, so the result is the one process's result. The pool
    starts after ``_START_AFTER`` chunks (a small input never pays for starting processes); until every
    worker is ready, chunks are processed here."""

    def __init__(self, processes: int, tokenizer: Any) -> None:
        self.processes = processes
        self.tokenizer = tokenizer  # called once, when the pool starts
        self.pool: ProcessPoolExecutor | None = None
        self.spec: Any = None  # the tokenizer for the workers (PortableCounter or a path), once started
        self.started = 0
        self.rows_in_flight = 0
        self.prepare_seconds = 0.0  # CPU time of global ops' prepare in the workers, for the op's books
        self.warming: list[Any] = []  # one start-up task per worker; all done: the pool takes chunks

    def stream(self, stream: Iterator[pl.DataFrame], group: list[int], ops: list[Filter],
               tallies: list[RuleTally], sink: CurateSink, shown: dict[int, Any]) -> Iterator[pl.DataFrame]:
        """The ``row`` ops of ``group`` on each chunk: in a worker once the pool runs, else here."""
        params = [ops[i].params for i in group]
        for chunk, answer in self._in_order(stream, lambda c: (run_row_ops, c, params, self.spec)):
            if answer is None:  # before the pool starts (or an empty chunk): here
                for i in group:
                    chunk = _apply(ops[i], i, chunk, tallies[i], sink)
                    shown[i].update(completed=tallies[i].rows_in, kept=tallies[i].rows_out)
                yield chunk
                continue
            kept, rejected, meta = answer
            for k, i in enumerate(group):
                m = meta[k]
                tallies[i].add_figures(m["in"], m["out"], m["rejected"], m["seconds"], m["counters"])
                if rejected[k] is not None:
                    sink.rejected(label_rejected(rejected[k], i, ops[i].params.op))
                shown[i].update(completed=tallies[i].rows_in, kept=tallies[i].rows_out)
            yield kept

    def prepared(self, stream: Iterator[pl.DataFrame], op: Filter) -> Iterator[tuple[pl.DataFrame, Any]]:
        """Each chunk with what ``op.prepare`` computed for it in a worker (None before the pool runs:
        ``observe`` computes it here)."""
        for chunk, answer in self._in_order(stream, lambda c: (_prepare, type(op), op.params, c)):
            if answer is None:
                yield chunk, None
                continue
            payload, seconds = answer
            self.prepare_seconds += seconds
            yield chunk, payload

    def _in_order(self, stream: Iterator[pl.DataFrame], task: Callable[[pl.DataFrame], tuple[Any, ...]]
                  ) -> Iterator[tuple[pl.DataFrame, Any]]:
        """Each chunk with its worker's answer to ``task(chunk)`` (a function and its arguments), in
        the chunks' order, at most ``processes + 1`` chunks held; None where no worker ran it (before
        the pool starts, after ``_START_AFTER`` chunks, and for empty chunks)."""
        pending: deque[tuple[Any, pl.DataFrame]] = deque()

        def take() -> tuple[pl.DataFrame, Any]:
            future, chunk = pending.popleft()
            self.rows_in_flight -= chunk.height
            return chunk, (answer_of(future) if future is not None else None)

        for k, chunk in enumerate(stream):
            if k == _START_AFTER and self.processes > 1:
                self._start()  # enough chunks to pay for the processes (no-op when already started)
            self.rows_in_flight += chunk.height
            pending.append((self._submit(task(chunk)) if self._ready() and chunk.height else None, chunk))
            while len(pending) > self.processes or (pending and pending[0][0] is None):
                yield take()
        while pending:
            yield take()

    def _start(self) -> None:
        if self.pool is None:
            self.spec = self.tokenizer()
            self.pool, self.warming = spawn_pool(self.processes, _warm_up, self.spec)
            self.started = self.processes

    def _ready(self) -> bool:
        """The pool runs and has finished starting (a worker that failed to start is an error here)."""
        if self.pool is None or not all(f.done() for f in self.warming):
            return False
        for f in self.warming:
            answer_of(f)
        self.warming = []
        return True

    def _submit(self, task: tuple[Any, ...]) -> Any:
        return submit(self.pool, *task)  # type: ignore[arg-type]

    def close(self, stop: bool = False) -> None:
        """Wait for the workers to finish and leave; ``stop`` (an error, Ctrl-C, SIGTERM): kill them now."""
        if self.pool is not None:
            close_pool(self.pool, stop)


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


def _portable_tokenizer(ctx: "StepContext", cfg: Any) -> Any:
    """What a worker needs to count tokens: the tokenizer as data (no transformers import in the worker)
    where it has a Rust tokenizer, else what :func:`tokenizer_spec` says to load."""
    spec = tokenizer_spec(ctx, cfg)
    if spec is None:
        return None
    portable = ctx.token_counter(cfg.tokenizer, "tokenizer").portable()
    return portable if portable is not None else spec


def _warm_up(tokenizer: Any) -> None:
    """A worker's start: the ops imported and the tokenizer loaded before its first chunk."""
    import realchat.curation.ops  # noqa: F401

    if tokenizer is not None:
        token_getter(tokenizer)()


def _prepare(op: type[Filter], params: Any, chunk: pl.DataFrame) -> tuple[Any, float]:
    """A global op's prepare, in a worker, with the seconds it took (the op's books count them)."""
    t0 = time.perf_counter()
    return op.prepare(params, chunk), time.perf_counter() - t0


def _read_back(files: list[Path], entering: list[int]) -> Iterator[pl.DataFrame]:
    """Spilled parts in the order they were written, each deleted once read."""
    for path in files:
        df = pl.read_parquet(path)
        path.unlink()
        entering[0] = df.height
        yield df
