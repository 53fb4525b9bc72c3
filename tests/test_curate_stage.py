"""The curate stage end to end: books balance on real data, outputs load, reruns skip, Ctrl-C is safe."""

from __future__ import annotations

import re
import json

import polars as pl
import pytest
from typer.testing import CliRunner

from realchat.cli import app
from realchat.engine.build import plan
from realchat.recipe.load import load_recipe

runner = CliRunner()

FILTERS = [
    {"op": "clean_html"}, {"op": "strip_chat_artifacts"}, {"op": "vendor_mention"}, {"op": "shape"},
    {"op": "language", "allowed": ["en"], "policy": "share", "min_share": 0.8},
    {"op": "length", "max_chars": 20000, "max_tokens": 4000},
    {"op": "quality", "min_alpha_ratio": 0.2, "policy": "share", "min_share": 0.8},
    {"op": "exact_dedup"}, {"op": "near_dedup"}, {"op": "split", "max_tokens": 1024},
]


def build(recipe, *extra):
    result = runner.invoke(app, ["build", str(recipe), "--no-progress", *extra])
    return result.exit_code, result.output


@pytest.fixture
def messy_source(write_json_array, sharegpt_records):
    """300 real ShareGPT records plus the kinds of mess the issue lists."""
    records = list(sharegpt_records[:300])
    records += [
        {"id": "empty", "conversations": []},
        {"id": "typed", "conversations": [{"from": "human", "value": 42}]},
        {"id": "role", "conversations": [{"from": "narrator", "value": "Once upon a time"}]},
        {"id": "huge", "conversations": [{"from": "human", "value": "word " * 100_000},  # under max_record_chars
                                          {"from": "gpt", "value": "ok"}]},
        records[0],  # an exact duplicate of a real record
    ]
    return write_json_array(records, "messy.json")


def test_books_balance_on_real_data(make_recipe, messy_source, tmp_path):
    recipe = make_recipe(messy_source, filters=FILTERS)
    code, out = build(recipe)
    assert code == 0, out
    folder = tmp_path / "runs" / "t" / "curate"
    stats = json.loads((folder / "stats.json").read_text())
    kept = pl.read_parquet(folder / "data")
    rejected = pl.read_parquet(folder / "rejected")
    assert stats["read"] == 305
    assert stats["balanced"]
    kept_ids = set(kept["source_index"])
    whole = rejected.filter(pl.col("scope") == "conversation")
    assert not kept_ids & set(whole["source_index"])
    assert kept_ids | set(whole["source_index"]) == set(range(305))
    assert stats["kept_conversations"] + stats["rejected_conversations"] == 305
    reasons = dict(zip(rejected["conversation_id"], rejected["reason"]))
    assert reasons["typed"] == "record.wrong_type"
    assert reasons["role"] == "record.unmapped_role"
    assert reasons["empty"] == "shape"
    assert reasons["huge"] == "length"
    dup = rejected.filter(pl.col("reason") == "exact_dedup")
    assert records_id(dup, 304)
    # every rule's counts add up, in order
    rules = stats["rules"]
    for prev, cur in zip(rules, rules[1:]):
        assert cur["in"] == prev["out"]
    assert sum(r["rejected"] for r in rules) == rejected.height
    # per-turn score columns are aligned with user turns
    for msgs, langs in zip(kept["messages"].to_list(), kept["user_lang"].to_list()):
        assert len(langs) == sum(m["role"] == "user" for m in msgs)


def records_id(df, index):
    return index in set(df["source_index"])


def test_outputs_load_with_datasets_and_card_metadata(make_recipe, messy_source, tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    recipe = make_recipe(messy_source, filters=FILTERS[:5])
    assert build(recipe)[0] == 0
    folder = tmp_path / "runs" / "t" / "curate"
    kept = load_dataset(str(folder), split="train")  # the card's `configs` point at data/*.parquet
    assert kept.num_rows > 0 and set(kept[0]["messages"][0]) == {"role", "content"}
    rejected = load_dataset(str(folder), "rejected", split="train")
    assert {"reason", "rule", "score", "detail"} <= set(rejected.column_names)
    card = DatasetCard.load(folder / "README.md")
    meta = card.data.to_dict()
    assert meta["task_categories"] == ["text-generation"] and meta["language"] == ["en"]
    assert meta["realchat"]["fingerprint"] == json.loads((folder / "manifest.json").read_text())["fingerprint"]
    assert re.fullmatch(r"[0-9a-f]{64}", meta["realchat"]["parents"][0]["sha256"])
    assert "| `filters[4].language` |" in card.text


def test_rerun_skips_then_force_and_changes_rebuild(make_recipe, messy_source, tmp_path):
    recipe = make_recipe(messy_source, filters=FILTERS[:4])
    assert build(recipe)[0] == 0
    loaded = load_recipe(recipe)
    assert plan(loaded)[0].done
    manifest = (tmp_path / "runs" / "t" / "curate" / "manifest.json").read_text()
    code, out = build(recipe)
    assert code == 0 and "up to date" in out
    assert (tmp_path / "runs" / "t" / "curate" / "manifest.json").read_text() == manifest
    changed = load_recipe(recipe, ["steps.curate.filters[3].min_user_turns=2"])
    assert not plan(changed)[0].done
    code, out = build(recipe, "--force")
    assert code == 0 and "up to date" not in out


def test_interrupt_leaves_nothing_half_written_and_rerun_resumes(make_recipe, messy_source, tmp_path, monkeypatch):
    from realchat.curation.ops.shape import Shape

    recipe = make_recipe(messy_source, filters=FILTERS[:4])
    original = Shape.apply

    def interrupted(self, table):
        raise KeyboardInterrupt

    monkeypatch.setattr(Shape, "apply", interrupted)
    code, out = build(recipe)
    assert code == 130 and "interrupted" in out
    run_dir = tmp_path / "runs" / "t"
    assert not (run_dir / "curate").exists()
    assert [p.name for p in run_dir.iterdir()] == [".lock"]  # no temporary folder left behind either
    monkeypatch.setattr(Shape, "apply", original)
    code, out = build(recipe)
    assert code == 0 and (run_dir / "curate" / "manifest.json").exists()
