"""A record above ``source.max_record_chars`` is one rejection (``record.too_large``) counted in the
stats and the card, with its raw text cut short, before any op spends memory on it; a record over the
default bound (1,000,000 characters) is rejected without the recipe saying anything."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import yaml
from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()


def _conv(cid: str, turns: list[str]) -> dict:
    return {"id": cid, "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": t}
                                         for i, t in enumerate(turns)]}


def _build(recipe: Path) -> Path:
    result = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert result.exit_code == 0, result.output
    return Path(yaml.safe_load(recipe.read_text())["run_root"]) / "t" / "curate"


def test_records_above_the_declared_size_are_rejected_and_counted(make_recipe, tmp_path):
    many_turns = _conv("many", ["a short turn of text. "] * 600)  # 13,200 characters in 600 turns
    one_long = _conv("long", ["word " * 3000, "ok"])  # 15,002 characters in 2 turns
    src = tmp_path / "sizes.jsonl"
    rows = [_conv("a", ["Hello there, how are you?", "Fine."]), many_turns, one_long,
            _conv("b", ["What is Rust?", "A language."])]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = make_recipe(src, fmt="sharegpt", filters=[{"op": "split", "max_tokens": 256}])
    doc = yaml.safe_load(recipe.read_text())
    doc["steps"]["curate"]["source"]["max_record_chars"] = 10_000
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    folder = _build(recipe)
    assert pl.read_parquet(folder / "data")["conversation_id"].unique(maintain_order=True).to_list() == ["a", "b"]
    rejected = pl.read_parquet(folder / "rejected").sort("source_index")
    assert rejected["reason"].to_list() == ["record.too_large"] * 2 and rejected["rule"].to_list() == ["source"] * 2
    assert "13,200 characters of text in 600 turns, above source.max_record_chars (10,000)" in rejected["detail"][0]
    assert all(len(raw) < 2_100 for raw in rejected["raw"].to_list())  # not the whole record again
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["balanced"] and stats["rejected_by_reason"] == {"record.too_large": 2}
    assert stats["rules"][0]["counters"] == {"record.too_large": 2}
    assert "record.too_large" in (folder / "README.md").read_text()  # the card counts it


def test_the_default_bound_rejects_a_megabyte_record(make_recipe, tmp_path):
    src = tmp_path / "huge.jsonl"
    src.write_text(json.dumps(_conv("huge", ["x" * 1_000_001, "ok"])) + "\n"
                   + json.dumps(_conv("fine", ["Hello?", "Hi."])) + "\n")
    folder = _build(make_recipe(src, fmt="sharegpt"))
    assert pl.read_parquet(folder / "data")["conversation_id"].to_list() == ["fine"]
    assert pl.read_parquet(folder / "rejected")["reason"].to_list() == ["record.too_large"]
