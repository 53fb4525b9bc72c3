"""The curate step on Ray: the source read as shards on the workers, per-conversation ops as batch maps,
dedup as shuffles by key.

:func:`run_on_ray` is the whole data path of the step (the curate step hands it a sink):

* **reading** (workers): the driver plans the shards (:mod:`realchat.curation.sources.shards`: byte
  ranges of JSONL, record ranges of a JSON array found by a numpy scan, row groups of parquet files; a
  shard ends after ``executor.shard_rows`` records or :data:`SHARD_BYTES`), one Ray task per shard
  reads and normalises it, keeping the read rejections. A ``datasets`` folder or a Hub dataset is read
  on the driver (``datasets`` resolves and caches it there) and handed to the workers in slices of
  ``shard_rows`` records to normalise.
* **unique ids** (driver, ids only): each shard sends back its ``(source_index, conversation_id)``
  pairs; the driver runs :class:`~realchat.curation.conversations.UniqueIds` over them in shard order
  (a repeated id becomes ``<id>~2`` …, exactly as a single read) and the renames go with the shard's
  next task.
* consecutive **per-conversation ops** (everything but dedup: each decides a row from that row alone)
  run as one Ray task per shard: a batch map, the ops chained inside it;
* **exact dedup** is a shuffle by key: each shard's rows become ``(order, id, key)`` with the key's
  64-bit hash as the partition key; the reduce side keeps, per key, the first row in source order and
  rejects the others naming it;
* **near dedup** is MinHash LSH done as a shuffle: each shard computes the signatures (datasketch, the
  same seed, hence the same permutations, as the local op) and emits one row per LSH band; a shuffle
  on the band's hash brings the rows of one bucket together, where every pair is verified by its
  estimated Jaccard; the driver joins the verified pairs into connected components (the earliest row
  as the root) and the verdicts go back to the shards.
* **out**: rejected rows are fetched one shard and one op at a time and handed to ``sink.rejected``
  (read rejections first, then op by op, each in source order); the kept shards, one at a time in
  source order, to ``sink.kept``. The driver holds one shard of rows at a time, never the table.

Shuffles are :func:`shuffle`: Ray tasks that hash-partition (map) and group (reduce), the pattern Ray
Data's ``groupby().map_groups()`` implements, without its per-shuffle start-up cost.

``order`` is ``source_index * 2**16 + segment``: sorting by it is the local table's order (reading
keeps source order, ops keep row order, ``split`` emits a conversation's segments in place), so "first
in source order" means the same row on both executors, and so do the kept ids, the rejection reasons
and the details (``tests/test_ray_executor.py``, ``tests/test_ray_streaming.py`` check it). A dedup
reference (an earlier release) enters with negative orders, ahead of every new row, as it does locally.

What stays on the driver: planning the shards (one cheap pass over a JSON/JSONL file, footers of
parquet), the ids (for uniqueness), the union-find over verified near-duplicate pairs (edges, not
rows), and one shard of output at a time. :func:`run_ops_on_ray` is the earlier entry point for a
table read on the driver; it shares the op loop.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from realchat.curation.ops.base import OpParams
from realchat.curation.ops.exact_dedup import normalised_user_text
from realchat.curation.pipeline import (BASE_SCHEMA, REJECT_COLUMNS, label_rejected, normalised, run_row_ops,
                                        source_rule, tokenizer_spec)
from realchat.curation.ops.near_dedup import clusters, signatures
from realchat.errors import RealChatError, RecipeError
from realchat.interrupts import keep_terminate_handler

if TYPE_CHECKING:
    from realchat.curation.pipeline import ExecutorRun
    from realchat.curation.reference import Reference
    from realchat.curation.sources.base import RawRecord
    from realchat.curation.sources.shards import ShardSpec
    from realchat.engine.context import StepContext
    from realchat.recipe.executor import ExecutorConfig

GLOBAL_OPS = {"exact_dedup", "near_dedup"}
_SEGMENT_BITS = 16
#: Bytes of source file per read shard at most (a shard also ends after ``executor.shard_rows`` records).
SHARD_BYTES = 64 << 20
_ENV = ("REALCHAT_CACHE", "HF_HOME", "HF_ENDPOINT", "PYTHONPATH")


def _order(df: pl.DataFrame) -> pl.Expr:
    return (pl.col("source_index").cast(pl.Int64) * (1 << _SEGMENT_BITS) + pl.col("segment").cast(pl.Int64)).alias("_order")


# -- worker side --------------------------------------------------------------------------------------

def _exact_keys(shard: pl.DataFrame, p: OpParams, ref: bool) -> Any:
    """``(order, id, key, hash, ref)`` per row, as an Arrow table for Ray Data."""
    cols = [pl.col("_order") if ref else _order(shard), pl.col("conversation_id").alias("_id")]
    df = shard.select(*cols, normalised_user_text(shard, p.lowercase, p.strip_punctuation).alias("_key"))  # type: ignore[attr-defined]
    return df.with_columns(pl.col("_key").hash(seed=0).alias("_h"), pl.lit(ref).alias("_ref")).to_arrow()


def _exact_group(batch: Any) -> Any:
    """One hash partition: per key, the first row in order survives (a reference row beats all)."""
    df = pl.from_arrow(batch).sort("_order")
    out = []
    for key_rows in df.partition_by("_key", maintain_order=True):
        refs = key_rows.filter(pl.col("_ref"))
        rows = key_rows.filter(~pl.col("_ref"))
        if rows.height == 0:
            continue
        first_id = rows["_id"][0]
        cluster = rows["_order"][0] if rows.height > 1 else None
        for k, (order, _id) in enumerate(zip(rows["_order"], rows["_id"])):
            if refs.height:
                out.append((order, f"duplicate of {refs['_id'][0]} in reference ", True, cluster))
            elif k:
                out.append((order, f"duplicate of {first_id}", False, cluster))
            elif cluster is not None:
                out.append((order, None, False, cluster))  # the survivor: counted for the clusters only
    return pl.DataFrame(out, schema={"_order": pl.Int64, "detail": pl.String, "_in_ref": pl.Boolean,
                                     "_cluster": pl.Int64}, orient="row").to_arrow()


def _band_rows(shard: pl.DataFrame, p: OpParams, bands: int, rows: int, ref: bool) -> Any:
    """One row per (conversation, LSH band): the band's hash, its bytes, and the whole signature."""
    orders = (shard["_order"] if ref else shard.select(_order(shard))["_order"]).to_list()
    texts = shard.select(normalised_user_text(shard, True, False).alias("t"))["t"].to_list()
    sigs = signatures(texts, p)  # datasketch's values, the whole shard at once
    out_order, out_h, out_band, out_sig = [], [], [], []
    for order, hv in zip(orders, sigs):
        sig = hv.astype(np.uint64).tobytes()
        for b in range(bands):
            band = b.to_bytes(2, "little") + hv[b * rows:(b + 1) * rows].astype(np.uint64).tobytes()
            out_order.append(order)
            out_band.append(band)
            out_h.append(int.from_bytes(hashlib.blake2b(band, digest_size=8).digest(), "little", signed=True))
            out_sig.append(sig)
    return pl.DataFrame({"_order": out_order, "_h": out_h, "_band": out_band, "_sig": out_sig},
                        schema={"_order": pl.Int64, "_h": pl.Int64, "_band": pl.Binary, "_sig": pl.Binary}).to_arrow()


def _bucket_pairs(batch: Any, threshold: float) -> Any:
    """Rows of one hash partition: every pair in the same band bucket, kept when its Jaccard passes."""
    df = pl.from_arrow(batch)
    out_a, out_b, out_j = [], [], []
    for bucket in df.partition_by("_band"):
        if bucket.height < 2:
            continue
        orders = bucket["_order"].to_list()
        sigs = np.stack([np.frombuffer(s, dtype=np.uint64) for s in bucket["_sig"].to_list()])
        for x in range(len(orders)):
            eq = np.count_nonzero(sigs[x + 1:] == sigs[x], axis=1) / sigs.shape[1]
            for y in np.nonzero(eq >= threshold)[0]:
                a, b = orders[x], orders[x + 1 + int(y)]
                out_a.append(min(a, b))
                out_b.append(max(a, b))
                out_j.append(float(eq[y]))
    return pl.DataFrame({"a": out_a, "b": out_b, "jaccard": out_j},
                        schema={"a": pl.Int64, "b": pl.Int64, "jaccard": pl.Float64}).to_arrow()


def _apply_verdicts(shard: pl.DataFrame, verdicts: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a shard by the dedup verdicts (``_order`` → score, detail)."""
    marked = shard.with_columns(_order(shard)).join(verdicts, on="_order", how="left", maintain_order="left")
    kept = marked.filter(pl.col("detail").is_null()).drop("_order", "score", "detail")
    rejected = marked.filter(pl.col("detail").is_not_null()).drop("_order")
    return kept, rejected


# -- worker side: reading ---------------------------------------------------------------------------

#: A read rejection's row: ``BASE_SCHEMA`` and the reject columns but ``scope`` (the sink fills it).
READ_REJECT_SCHEMA = BASE_SCHEMA | REJECT_COLUMNS


def _read_and_normalise(source: "ShardSpec | list[RawRecord]", roles: dict[str, str], id_field: str,
                        id_prefix: str, max_chars: int | None = None
                        ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """One shard read (a :class:`ShardSpec` read here, or records the driver read) and normalised: its
    rows (ids not yet unique across shards), its read rejections, its ``(source_index, id)`` pairs for
    the driver, and the facts of the read (records, warnings, rejections by reason in reading order)."""
    from realchat.curation.sources.base import ReadReport
    from realchat.curation.sources.shards import read_shard

    report = ReadReport(path="", format="")
    records = source if isinstance(source, list) else read_shard(source, report)
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    by_reason: dict[str, int] = {}
    n = 0
    for rec in records:
        n += 1
        row, reject = normalised(rec, roles, id_field, id_prefix, max_chars)
        if row is not None:
            rows.append(row)
        else:
            assert reject is not None
            rejects.append(reject)
            by_reason[reject["reason"]] = by_reason.get(reject["reason"], 0) + 1
    table = pl.DataFrame(rows, schema=BASE_SCHEMA)
    meta = {"read": n, "warnings": report.warnings, "truncated_at_byte": report.truncated_at_byte,
            "by_reason": by_reason}
    return (table, pl.DataFrame(rejects, schema=READ_REJECT_SCHEMA),
            table.select("source_index", "conversation_id"), meta)


def _rename(shard: pl.DataFrame, renames: pl.DataFrame) -> pl.DataFrame:
    """Apply the driver's renames (``source_index`` → new id) to one shard."""
    return shard.join(renames, on="source_index", how="left", maintain_order="left").with_columns(
        pl.coalesce("_new_id", "conversation_id").alias("conversation_id")).drop("_new_id")


def _row_ops_flat(shard: pl.DataFrame, ops: list[OpParams], tokenizer: tuple[str, str] | None) -> tuple[Any, ...]:
    """:func:`~realchat.curation.pipeline.run_row_ops` as ``(kept, meta, rejected of op 0, rejected of op 1, ...)``: one object each,
    so the driver fetches one op's rejections of one shard at a time."""
    kept, rejected, meta = run_row_ops(shard, ops, tokenizer)
    return (kept, meta, *rejected)


# -- driver side --------------------------------------------------------------------------------------


@contextmanager
def _ray_runtime(ctx: "StepContext", executor: "ExecutorConfig") -> Iterator[None]:
    """Ray for the step: the cluster at ``executor.address``, or a runtime started here (and stopped after)."""
    try:
        import ray
    except ImportError:
        raise RecipeError("the Ray executor needs Ray: pip install 'realchat-usersim[ray]'", file=str(ctx.loaded.path),
                          field="executor.kind") from None

    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if executor.address is None:  # a runtime of our own: its workers see this process's caches
            kwargs["runtime_env"] = {"env_vars": {k: os.environ[k] for k in _ENV if os.environ.get(k)}}
            if executor.num_cpus is not None:
                kwargs["num_cpus"] = executor.num_cpus
        try:
            with keep_terminate_handler():  # SIGTERM: our clean stop, which shuts this runtime down
                ray.init(address=executor.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RecipeError(f"cannot reach the Ray cluster: {str(e).splitlines()[0] if str(e) else e}",
                              file=str(ctx.loaded.path), field="executor.address",
                              hint="null starts Ray here; 'auto' needs `ray start --head` on this machine; "
                                   "ray://host:10001 a running Ray Client server") from None
        except Exception as e:  # Ray's own start-up failing (its raylet dying as it starts: a bare Exception)
            if executor.address is not None:
                raise
            ray.shutdown()  # whatever of the runtime did start
            raise RayRuntimeError(f"curate on Ray: could not start a Ray runtime here ({_first_line(e)}); "
                                  "nothing of the step was written",
                                  hint="rerun `realchat build`; Ray's logs (/tmp/ray/session_latest/logs) say "
                                       "what failed") from None
    try:
        yield
    except ray.exceptions.RayError as e:
        failure = ray_failure(e, started_here)
        if failure is None:  # a task's own exception (a bug of ours): with its traceback
            raise
        raise failure from None
    finally:
        if started_here:
            ray.shutdown()


class RayRuntimeError(RealChatError):
    """Ray itself failed under a step (a raylet, a node or a worker process died, an object was lost):
    not the data's fault nor the recipe's, and nothing of the step was kept; a rerun redoes it."""


#: What died, in words, for Ray's system errors (by class name: the classes move between Ray versions).
_WHAT_DIED = {
    "LocalRayletDiedError": "Ray's raylet on this machine died",
    "NodeDiedError": "a Ray node died",
    "WorkerCrashedError": "a Ray worker process died while running a task (after Ray's retries)",
    "ActorDiedError": "a Ray actor died",
    "OwnerDiedError": "the Ray process that owned part of the step's data died",
    "ObjectLostError": "part of the step's data held by Ray was lost (its node died)",
    "ObjectReconstructionFailedError": "part of the step's data held by Ray was lost and could not be rebuilt",
    "ObjectFetchTimedOutError": "part of the step's data held by Ray could not be fetched (its node died?)",
    "OutOfMemoryError": "Ray killed a worker for lack of memory",
    "ObjectStoreFullError": "Ray's object store is full",
    "OutOfDiskError": "Ray's spill folder is out of disk",
    "RaySystemError": "Ray failed",
}


def _first_line(e: BaseException) -> str:
    detail = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")[:200]
    return f"{type(e).__name__}: {detail}" if detail else type(e).__name__


def ray_failure(e: BaseException, started_here: bool) -> RayRuntimeError | None:
    """Ray's system error ``e`` as one line: what died, that the step kept nothing, that a rerun redoes
    it; None for a task's own exception (``RayTaskError``: raised by our code, a bug)."""
    import ray

    if isinstance(e, ray.exceptions.RayTaskError):
        return None
    what = next((_WHAT_DIED[c.__name__] for c in type(e).__mro__ if c.__name__ in _WHAT_DIED),
                "Ray failed")
    stopped = "the Ray runtime started for it was shut down" if started_here else "the cluster was left as it is"
    return RayRuntimeError(
        f"curate on Ray: {what} ({_first_line(e)}); the step stopped, nothing half-written was "
        f"kept, and {stopped}",
        hint="rerun `realchat build`: it redoes this step (finished steps are kept); Ray's logs "
             "(/tmp/ray/session_latest/logs/raylet.out) say why it died, most often memory")


def _get(ref: Any) -> Any:
    """``ray.get``, raising a task's own error (a bad record in a shard: the one-line SourceError the
    local reader raises) rather than Ray's wrapper with the worker's traceback."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, RealChatError):
            raise e.cause from None
        raise


def run_on_ray(ctx: "StepContext", cfg: Any, sink: Any, references: dict[int, "Reference"]) -> "ExecutorRun":
    """The whole curate step's data path on Ray: read the source as shards on the workers, normalise,
    make ids unique, run ``cfg.filters``; hand rows to ``sink`` as they leave (module docstring).

    ``sink.rejected(df)`` gets, in this order, the read rejections (shard by shard, in source order),
    then each op's rejections (op by op, each in source order): the order of today's rejected set.
    ``sink.kept(df)`` then gets the kept rows, one shard at a time, in source order. Empty frames are
    not handed over. Returns the per-rule figures (the ``source`` rule first) and the read's facts."""
    executor = ctx.loaded.recipe.executor
    with _ray_runtime(ctx, executor):
        return _run_streaming(ctx, cfg, sink, executor, references)


def _run_streaming(ctx: "StepContext", cfg: Any, sink: Any, executor: "ExecutorConfig",
                   references: dict[int, "Reference"]) -> "ExecutorRun":
    import ray

    from realchat.curation.conversations import UniqueIds
    from realchat.curation.pipeline import ExecutorRun
    from realchat.curation.sources.base import ReadReport
    from realchat.curation.sources.shards import plan_shards, read_shard
    from realchat.recipe.refs import resolve_local

    started = time.perf_counter()
    src = cfg.source
    specs = plan_shards(src, ctx.base_dir, SHARD_BYTES, executor.shard_rows)
    report = ReadReport(path=src.path if src.format == "hub" else str(resolve_local(src.path, ctx.base_dir)),
                        format=src.format, revision=src.revision if src.format == "hub" else None)
    id_prefix = Path(src.path).stem or "record"
    read_task = ray.remote(num_returns=4)(_read_and_normalise)
    args = (dict(cfg.roles), src.id_field, id_prefix, src.max_record_chars)
    outs = []
    with ctx.console.status(f"reading {len(specs)} shard{'s' if len(specs) != 1 else ''} on Ray"):
        for spec in specs:
            if spec.kind != "dataset":
                outs.append(read_task.remote(spec, *args))
                continue
            # a datasets folder or a Hub dataset: read here (where datasets resolves and caches it),
            # normalised on the workers in slices of shard_rows records
            chunk: list[Any] = []
            for rec in read_shard(spec, report):
                chunk.append(rec)
                if len(chunk) == executor.shard_rows:
                    outs.append(read_task.remote(chunk, *args))
                    chunk = []
            if chunk or not outs:
                outs.append(read_task.remote(chunk, *args))
        # ids only come back to the driver; the first of an id in source order keeps it
        unique = UniqueIds()
        n_read = n_out = n_rej = 0
        by_reason: dict[str, int] = {}
        shards = []
        for table, rejects, ids_ref, meta_ref in outs:
            meta = _get(meta_ref)  # in shard order: the first shard's read error is the one raised
            ids = ray.get(ids_ref)
            n_read += meta["read"]
            n_out += ids.height
            for reason, n in meta["by_reason"].items():
                by_reason[reason] = by_reason.get(reason, 0) + n
                n_rej += n
            report.warnings += meta["warnings"]
            if meta["truncated_at_byte"] is not None:
                report.truncated_at_byte = meta["truncated_at_byte"]
            renamed = [(i, new) for i, old in ids.iter_rows() if (new := unique(old)) != old]
            if renamed:  # sent with the shard's next task
                table = ray.remote(_rename).remote(table, pl.DataFrame(
                    renamed, schema={"source_index": pl.Int64, "_new_id": pl.String}, orient="row"))
            shards.append(table)
            if meta["by_reason"]:
                sink.rejected(ray.get(rejects))
    rules = [source_rule(n_read, n_out, by_reason, unique.renamed, time.perf_counter() - started)]
    shards, op_rules = _ops_on_shards(ctx, cfg, shards, references,
                                      lambda i, rejected: sink.rejected(label_rejected(rejected, i, cfg.filters[i].op)))
    for ref in shards:  # one shard at a time in the driver's memory
        kept = ray.get(ref)
        if kept.height:
            sink.kept(kept)
    return ExecutorRun(rules=rules + op_rules, read=n_read, renamed=unique.renamed, report=report)


def _ops_on_shards(ctx: "StepContext", cfg: Any, shards: list[Any], references: dict[int, "Reference"],
                   emit: Callable[[int, pl.DataFrame], None]) -> tuple[list[Any], list[dict[str, Any]]]:
    """``cfg.filters`` over the shards (object refs, in source order): the kept shards and per-rule
    figures (``seconds`` of a per-conversation op: summed over its shards). Each op's rejected rows go
    to ``emit(op position, rows)``, shard by shard in source order, op after op."""
    import ray

    tokenizer = tokenizer_spec(ctx, cfg)
    apply_task = ray.remote(num_returns=2)(_apply_verdicts)
    rules: list[dict[str, Any]] = []
    filters = list(cfg.filters)
    i = 0
    while i < len(filters):
        if filters[i].op not in GLOBAL_OPS:
            j = i
            while j < len(filters) and filters[j].op not in GLOBAL_OPS:
                j += 1
            chain = filters[i:j]
            row_task = ray.remote(_row_ops_flat).options(num_returns=2 + len(chain))
            t0 = time.perf_counter()
            with ctx.console.status(f"filters[{i}:{j}] on Ray, {len(shards)} shards"):
                outs = [row_task.remote(s, chain, tokenizer) for s in shards]
                shards = [o[0] for o in outs]
                metas = ray.get([o[1] for o in outs])
                n_rej = [0] * len(chain)
                for k in range(len(chain)):
                    for o in outs:
                        rej = ray.get(o[2 + k])
                        if rej is not None:
                            n_rej[k] += rej.height
                            emit(i + k, rej)
            wall = time.perf_counter() - t0
            for k, params in enumerate(chain):
                counters: dict[str, int] = {}
                for m in metas:
                    for name, v in m[k]["counters"].items():
                        counters[name] = counters.get(name, 0) + v
                rules.append({"rule": f"filters[{i + k}].{params.op}", "op": params.op,
                              "in": sum(m[k]["in"] for m in metas), "out": sum(m[k]["out"] for m in metas),
                              "rejected": n_rej[k], "seconds": round(sum(m[k]["seconds"] for m in metas), 3),
                              "counters": counters, "wall_seconds": round(wall, 3)})
            i = j
            continue
        params = filters[i]
        t0 = time.perf_counter()
        n_in = sum(ray.get([ray.remote(lambda s: s.height).remote(s) for s in shards]))
        ref = references.get(i)
        with ctx.console.status(f"filters[{i}] {params.op} on Ray (shuffle by key)"):
            if params.op == "exact_dedup":
                verdicts, counters = _exact_dedup(shards, params, ref)
            else:
                verdicts, counters = _near_dedup(shards, params, ref)
            vref = ray.put(verdicts)
            outs = [apply_task.remote(s, vref) for s in shards]
            shards = [o[0] for o in outs]
            n_rej_g = 0
            for o in outs:
                rej = ray.get(o[1])
                if rej.height:
                    n_rej_g += rej.height
                    emit(i, rej)
        rules.append({"rule": f"filters[{i}].{params.op}", "op": params.op, "in": n_in, "out": n_in - n_rej_g,
                      "rejected": n_rej_g, "seconds": round(time.perf_counter() - t0, 3), "counters": counters})
        i += 1
    return shards, rules


def _ref_frame(ref: "Reference") -> pl.DataFrame:
    """The reference's rows with orders before every new row (-R … -1), in the reference's order."""
    r = ref.table.height
    return ref.table.with_columns(pl.int_range(-r, 0, dtype=pl.Int64).alias("_order"))


def _partition(table: Any, key: str, parts: int) -> Any:
    """Map side of a shuffle: one Arrow table per partition, by the key's hash (an int64 column)."""
    df = pl.from_arrow(table)
    df = df.with_columns((pl.col(key) % parts).alias("_part"))
    out = [df.filter(pl.col("_part") == k).drop("_part").to_arrow() for k in range(parts)]
    return out[0] if parts == 1 else tuple(out)


def _reduce(fn: Callable[..., Any], args: tuple[Any, ...], *tables: Any) -> Any:
    """Reduce side of a shuffle: every row of one partition, whatever map task it came from."""
    import pyarrow as pa

    return fn(pa.concat_tables([t for t in tables if t.num_rows] or [tables[0]]), *args)


def shuffle(refs: list[Any], key: str, fn: Callable[..., Any], *args: Any) -> list[Any]:
    """Hash-partition Arrow tables by ``key`` and apply ``fn`` to each partition (all rows of a key
    meet in one call). Ray tasks, map then reduce: Ray Data's ``groupby().map_groups()`` does the same
    but costs 20–30 s per shuffle at this size (its shuffle operators start 200 partitions), against
    about a second here."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    parts = max(1, min(len(refs), 2 * cpus))
    mapped = [ray.remote(_partition).options(num_returns=parts).remote(r, key, parts) for r in refs]
    if parts == 1:
        mapped = [[m] for m in mapped]
    return [ray.remote(_reduce).remote(fn, args, *[m[k] for m in mapped]) for k in range(parts)]


def _exact_dedup(shards: list[Any], p: OpParams, ref: "Reference | None") -> tuple[pl.DataFrame, dict[str, int]]:
    import ray

    key_task = ray.remote(_exact_keys)
    refs = [key_task.remote(s, p, False) for s in shards]
    if ref is not None:
        refs.append(key_task.remote(_ref_frame(ref), p, True))
    out = [pl.from_arrow(t) for t in ray.get(shuffle(refs, "_h", _exact_group))]
    res = pl.concat(out, how="vertical_relaxed") if out else pl.DataFrame(
        schema={"_order": pl.Int64, "detail": pl.String, "_in_ref": pl.Boolean, "_cluster": pl.Int64})
    counters = {"duplicate_clusters": res["_cluster"].drop_nulls().n_unique()}
    if ref is not None:
        res = res.with_columns(pl.when(pl.col("_in_ref")).then(pl.col("detail") + pl.lit(ref.name))
                               .otherwise(pl.col("detail")).alias("detail"))
        counters["in_reference"] = int(res["_in_ref"].sum())
    verdicts = res.filter(pl.col("detail").is_not_null()).select(
        "_order", pl.lit(1.0).alias("score"), "detail")
    return verdicts, counters


def _near_dedup(shards: list[Any], p: OpParams, ref: "Reference | None") -> tuple[pl.DataFrame, dict[str, int]]:
    import ray
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=p.threshold, num_perm=p.num_perm)  # type: ignore[attr-defined]
    band_task = ray.remote(_band_rows)
    refs = [band_task.remote(s, p, lsh.b, lsh.r, False) for s in shards]
    if ref is not None:
        refs.append(band_task.remote(_ref_frame(ref), p, lsh.b, lsh.r, True))
    ids_task = ray.remote(lambda s: s.select(_order(s), pl.col("conversation_id")))
    ids = pl.concat(ray.get([ids_task.remote(s) for s in shards]))
    if ref is not None:
        ids = pl.concat([_ref_frame(ref).select("_order", "conversation_id"), ids])
    parts = [pl.from_arrow(t) for t in ray.get(shuffle(refs, "_h", _bucket_pairs, p.threshold))]  # type: ignore[attr-defined]
    pairs = (pl.concat(parts) if parts else pl.DataFrame(schema={"a": pl.Int64, "b": pl.Int64, "jaccard": pl.Float64}))
    pairs = pairs.unique(["a", "b"]).sort("b", "a")
    # dense positions in the order the local op visits rows: the reference first, then source order
    orders = ids["_order"].to_list()
    pos = {o: k for k, o in enumerate(orders)}
    cids = ids["conversation_id"].to_list()
    r = ref.table.height if ref is not None else 0
    m = len(orders)
    ia = np.array([pos[a] for a in pairs["a"].to_list()], dtype=np.int64)
    ib = np.array([pos[b] for b in pairs["b"].to_list()], dtype=np.int64)
    root_arr, match_arr, best_arr = clusters(m, ia, ib, pairs["jaccard"].to_numpy())
    roots, match, best = root_arr.tolist(), match_arr.tolist(), best_arr.tolist()
    v_order, v_score, v_detail = [], [], []
    sizes: dict[int, int] = {}
    for k in range(r, m):
        sizes[roots[k]] = sizes.get(roots[k], 0) + 1
        if roots[k] == k:
            continue
        if roots[k] < r:
            d = f"near-duplicate of {cids[roots[k]]} in reference {ref.name} (matched {cids[match[k]]})"  # type: ignore[union-attr]
        else:
            d = f"near-duplicate of {cids[roots[k]]} (matched {cids[match[k]]})"
        v_order.append(orders[k])
        v_score.append(best[k])
        v_detail.append(d)
    multi = [s + (1 if root < r else 0) for root, s in sizes.items() if s > 1 or root < r]
    counters = {"duplicate_clusters": len(multi), "largest_cluster": max(multi, default=1)}
    if ref is not None:
        counters["in_reference"] = sum(1 for k in range(r, m) if roots[k] < r)
    verdicts = pl.DataFrame({"_order": v_order, "score": v_score, "detail": v_detail},
                            schema={"_order": pl.Int64, "score": pl.Float64, "detail": pl.String})
    return verdicts, counters
