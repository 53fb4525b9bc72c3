"""``run_on_ray``: the source read as shards on Ray's workers gives the in-memory op path's result.

The reference is the local path as the curate step runs it: ``open_source`` read on one process,
normalised, ids made unique in reading order, then each op of the recipe applied to the whole table in
order. Ray runs locally (``num_cpus: 2``); shards are small so that ids repeat across shards and
dedup clusters span them.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from realchat.curation.conversations import UniqueIds, normalize
from realchat.curation.ops import REGISTRY
from realchat.curation.sources import open_source

from conftest import SHAREGPT
from test_ray_executor import FILTERS, _perturbed

pytest.importorskip("ray")


class ListSink:
    """The smallest sink: collects the frames the executor hands over, in order."""

    def __init__(self):
        self.kept_frames: list[pl.DataFrame] = []
        self.rejected_frames: list[pl.DataFrame] = []

    def kept(self, df: pl.DataFrame) -> None:
        self.kept_frames.append(df)

    def rejected(self, df: pl.DataFrame) -> None:
        self.rejected_frames.append(df)


def _context(tmp_path, source: dict, filters, tokenizer, shard_rows):
    from realchat.engine.build import graph_of, plan
    from realchat.engine.context import StepContext
    from realchat.recipe.load import load_recipe

    doc = {"name": "stream", "run_root": str(tmp_path / "runs"),
           "executor": {"kind": "ray", "num_cpus": 2, "shard_rows": shard_rows},
           "steps": {"curate": {"kind": "curate", "source": source, "tokenizer": str(tokenizer), "filters": filters}}}
    recipe = tmp_path / "stream.yaml"
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    loaded = load_recipe(recipe)
    p = next(x for x in plan(loaded, graph_of(loaded)) if x.name == "curate")
    return StepContext(loaded, p.node, p.fingerprint, show_progress=False)


def _in_memory(ctx, cfg):
    """Today's local path: whole source, one table, each op in order."""
    from realchat.curation.ray_executor import BASE_SCHEMA, READ_REJECT_SCHEMA

    records, report = open_source(cfg.source, ctx.base_dir)
    prefix = Path(cfg.source.path).stem
    unique = UniqueIds()
    rows, rejects, n = [], [], 0
    for rec in records:
        n += 1
        row, rej = normalize(rec, cfg.roles, cfg.source.id_field, prefix)
        if row is not None:
            row["conversation_id"] = unique(row["conversation_id"])
            rows.append(row)
        else:
            rejects.append({"conversation_id": rej.conversation_id or f"{prefix}-{rec.index}",
                            "source_index": rec.index, "segment": 0, "messages": None, "reason": rej.reason,
                            "rule": "source", "score": None, "detail": rej.detail, "raw": rej.raw})
    table = pl.DataFrame(rows, schema=BASE_SCHEMA)
    rejected = [pl.DataFrame(rejects, schema=READ_REJECT_SCHEMA)]
    rules = [(n, table.height, len(rejects))]
    tokens = lambda: ctx.token_counter(cfg.tokenizer, "tokenizer")  # noqa: E731
    for i, params in enumerate(cfg.filters):
        op = REGISTRY[params.op](params, tokens, ctx.progress, None)
        result = op.apply(table)
        result.counters.update(op.totals())  # as the executors do after the last chunk
        n_in = table.height
        n_rej = result.rejected.height if result.rejected is not None else 0
        if n_rej:
            rejected.append(result.rejected.with_columns(
                pl.lit(params.op).alias("reason"), pl.lit(f"filters[{i}].{params.op}").alias("rule"),
                pl.lit(None, dtype=pl.String).alias("raw")))
        table = result.kept
        rules.append((n_in, table.height, n_rej, result.counters))
    return table, pl.concat([r for r in rejected if r.height], how="diagonal_relaxed"), rules, report, unique.renamed


def _compare(ctx):
    from realchat.curation.ray_executor import run_on_ray

    cfg = ctx.config
    kept_l, rej_l, rules_l, report_l, renamed_l = _in_memory(ctx, cfg)
    sink = ListSink()
    run = run_on_ray(ctx, cfg, sink, {})
    kept_r = pl.concat(sink.kept_frames, how="diagonal_relaxed")
    rej_r = pl.concat(sink.rejected_frames, how="diagonal_relaxed")
    assert len(sink.kept_frames) > 1  # several shards reached the sink
    assert kept_r.equals(kept_l)  # same rows, same order, same columns and values
    cols = ["conversation_id", "source_index", "segment", "reason", "rule", "score", "detail", "raw"]
    assert rej_r.select(cols).equals(rej_l.select(cols))
    assert "scope" not in rej_r.columns
    assert run.read == rules_l[0][0] and run.renamed == renamed_l
    src = run.rules[0]
    assert (src["rule"], src["in"], src["out"], src["rejected"]) == ("source", *rules_l[0])
    for r, (n_in, n_out, n_rej, counters) in zip(run.rules[1:], rules_l[1:], strict=True):
        assert (r["in"], r["out"], r["rejected"], r["counters"]) == (n_in, n_out, n_rej, counters)
    assert run.report.warnings == report_l.warnings  # the step adds the renamed-ids warning, for both executors
    assert run.report.truncated_at_byte == report_l.truncated_at_byte
    return run, kept_r, rej_r


def test_shipped_slice_read_on_workers_equals_in_memory(tmp_path, tiny_tokenizer_dir):
    """`head -c` of the shipped file (its cut-off tail included), every op of the Ray test's recipe."""
    source = tmp_path / "slice.json"
    with SHAREGPT.open("rb") as f:
        source.write_bytes(f.read(1_500_000))
    ctx = _context(tmp_path, {"path": str(source)}, FILTERS, tiny_tokenizer_dir, 25)
    run, kept, rejected = _compare(ctx)
    assert run.report.truncated_at_byte is not None
    assert rejected.filter(pl.col("reason") == "read.truncated").height == 1


def test_jsonl_with_repeated_ids_and_bad_lines_equals_in_memory(tmp_path, tiny_tokenizer_dir, sharegpt_records):
    records = _perturbed(sharegpt_records[:240])
    for k in range(0, len(records), 17):  # ids repeated across shards: renamed <id>~2 in source order
        records[k] = {**records[k], "id": records[0]["id"]}
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines.insert(50, "{broken")
    lines.insert(90, "")
    text = "\n".join(lines) + "\n" + lines[10][:40]  # a cut last line
    source = tmp_path / "logs.jsonl"
    source.write_text(text)
    filters = [{"op": "shape"}, {"op": "exact_dedup"}, {"op": "near_dedup"}, {"op": "length", "max_chars": 8000}]
    ctx = _context(tmp_path, {"path": str(source)}, filters, tiny_tokenizer_dir, 30)
    run, kept, rejected = _compare(ctx)
    assert run.renamed >= 10 and run.rules[0]["counters"]["renamed_duplicate_ids"] == run.renamed
    assert kept["conversation_id"].is_unique().all()
    assert {"read.invalid_json", "read.truncated"} <= set(rejected["reason"].to_list())
    by_rule = {r["rule"]: r for r in run.rules}
    assert by_rule["filters[1].exact_dedup"]["rejected"] >= 5 and by_rule["filters[2].near_dedup"]["rejected"] >= 3


def test_a_syntax_error_in_a_shard_is_the_readers_error(tmp_path, tiny_tokenizer_dir, sharegpt_records):
    from realchat.curation.ray_executor import run_on_ray
    from realchat.errors import SourceError

    text = json.dumps(sharegpt_records[:60], indent=1)
    cut = text.index('"id": "' + sharegpt_records[45]["id"])
    source = tmp_path / "bad.json"
    source.write_text(text[:cut] + "?" + text[cut:])
    ctx = _context(tmp_path, {"path": str(source)}, [], tiny_tokenizer_dir, 10)
    with pytest.raises(SourceError) as local:
        list(open_source(ctx.config.source, ctx.base_dir)[0])
    with pytest.raises(SourceError) as on_ray:
        run_on_ray(ctx, ctx.config, ListSink(), {})
    assert str(on_ray.value) == str(local.value)
