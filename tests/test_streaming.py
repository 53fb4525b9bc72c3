"""The local executor streams: chunk by chunk, the same books as one pass over the whole table, with a
bounded number of rows in memory.

The input is real: shipped ShareGPT conversations, each also copied verbatim (exact dedup's work) and
with one word of every user turn changed (near dedup's), written as JSON lines.
"""

from __future__ import annotations

import copy
import json

import polars as pl
import pytest
from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()
FILTERS = [
    {"op": "shape", "first_role": "user", "leading_assistant": "trim", "min_user_turns": 1},
    {"op": "length", "min_chars": 1, "max_chars": 20000},
    {"op": "exact_dedup"},
    {"op": "near_dedup", "threshold": 0.8},
    {"op": "split", "max_tokens": 1024},
]


@pytest.fixture(scope="module")
def copies(sharegpt_records, tmp_path_factory):
    """1,800 records: the 600 shipped ones, a verbatim copy and a one-word-per-user-turn edit of each."""
    out = []
    for k, rec in enumerate(sharegpt_records):
        out.append(rec)
        twin = copy.deepcopy(rec)
        twin["id"] = f"{rec.get('id')}-copy"
        near = copy.deepcopy(rec)
        near["id"] = f"{rec.get('id')}-near"
        for turn in near.get("conversations") or []:
            words = turn["value"].split(" ") if turn.get("from") == "human" and isinstance(turn.get("value"), str) else None
            if words and len(words) > 30:
                words[k % len(words)] = "zebra"
                turn["value"] = " ".join(words)
        out += [twin, near]
    path = tmp_path_factory.mktemp("stream") / "copies.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    return path


def _curate(make_recipe, path, name, chunk, shard):
    recipe = make_recipe(path, FILTERS, name=name, shard_rows=shard)
    result = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push",
                                 "--set", f"executor.shard_rows={chunk}", "--set", "executor.workers=2"])
    assert result.exit_code == 0, result.output
    folder = recipe.parent / "runs" / name / "curate"
    return (pl.read_parquet(folder / "data"), pl.read_parquet(folder / "rejected"),
            json.loads((folder / "stats.json").read_text()), folder)


def test_chunks_give_the_books_of_one_pass_and_hold_a_bounded_number_of_rows(copies, make_recipe):
    kept_1, rej_1, stats_1, _ = _curate(make_recipe, copies, "whole", chunk=100_000, shard=100_000)
    kept_c, rej_c, stats_c, folder = _curate(make_recipe, copies, "chunks", chunk=97, shard=250)

    assert stats_1["read"] == stats_c["read"] == 1800 and stats_c["balanced"]
    assert kept_c.equals(kept_1)  # row for row, in source order
    key = ["source_index", "segment", "rule", "detail"]
    assert rej_c.sort(key, nulls_last=True).equals(rej_1.sort(key, nulls_last=True))
    rules_1 = [(r["rule"], r["in"], r["out"], r["counters"]) for r in stats_1["rules"]]
    assert [(r["rule"], r["in"], r["out"], r["counters"]) for r in stats_c["rules"]] == rules_1
    by_rule = {r["rule"]: r for r in stats_c["rules"]}
    assert by_rule["filters[2].exact_dedup"]["rejected"] >= 500  # the verbatim copies
    assert by_rule["filters[3].near_dedup"]["rejected"] >= 200  # the edited ones (short ones stay exact copies)
    assert {k: v for k, v in stats_c.items() if k not in ("rules", "seconds", "executor")} == \
        {k: v for k, v in stats_1.items() if k not in ("rules", "seconds", "executor")}

    # the bound: the chunk entering, the chunks in worker processes (workers + 1) and the chunk in hand,
    # whatever the input's size (the writers hold nothing back); one chunk of everything held it all
    assert stats_c["executor"]["passes"] == 2
    workers = stats_c["executor"]["worker_processes"]
    assert workers >= 2 and stats_1["executor"]["worker_processes"] == 0  # one chunk: no processes started
    assert stats_c["executor"]["rows_held_peak"] <= (workers + 3) * 97 < 1800
    assert stats_1["executor"]["rows_held_peak"] >= 1800
    assert len(list((folder / "data").glob("train-*-of-*.parquet"))) == -(-kept_c.height // 250)
    assert not (folder / ".spill").exists() and not (folder / ".parts").exists()
