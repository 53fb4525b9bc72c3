"""A lone surrogate (JSON ``"\\ud800"``: valid JSON, no UTF-8 encoder takes it) in one record's id or
text is that record's rejection with its reason, in curate and in ``realchat stats``, not the end of
the read with "surrogates not allowed" and no file or record named."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()


def _records() -> list[dict]:
    def rec(cid: str, text: str) -> dict:
        return {"id": cid, "conversations": [{"from": "human", "value": text},
                                             {"from": "gpt", "value": "Fine, and you?"}]}

    return [rec("a", "Hello there, how are you today?"), rec("\ud800x", "A lone surrogate in my id."),
            rec("b", "Broken \udfff text in this turn."), rec("c", "The last one is fine too.")]


@pytest.mark.parametrize("fmt, name", [("sharegpt", "lone.json"), ("openai_messages", "lone.jsonl")])
def test_curate_rejects_the_record_and_keeps_the_rest(make_recipe, tmp_path, fmt, name):
    path = tmp_path / name
    recs = _records()
    # json.dumps writes the surrogates as \\ud800 escapes (ASCII): the file itself is valid UTF-8
    path.write_text(json.dumps(recs) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in recs))
    recipe = make_recipe(path, fmt=fmt)
    result = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert result.exit_code == 0, result.output
    folder = Path(yaml.safe_load(recipe.read_text())["run_root"]) / "t" / "curate"
    assert pl.read_parquet(folder / "data")["conversation_id"].to_list() == ["a", "c"]
    rejected = pl.read_parquet(folder / "rejected").sort("source_index")
    assert rejected["reason"].to_list() == ["record.invalid_utf8"] * 2
    assert rejected["conversation_id"].to_list() == ["\\ud800x", "b"]  # the id, printable
    assert ": id: not valid UTF-8" in rejected["detail"][0] and "conversations[0].value" in rejected["detail"][1]
    assert "\\udfff" in rejected["raw"][1]  # the raw record is kept, the surrogate written out
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["balanced"] and stats["rejected_by_reason"] == {"record.invalid_utf8": 2}


def test_stats_counts_the_record_and_names_the_file_and_record(tmp_path, tiny_tokenizer_dir):
    path = tmp_path / "lone.json"
    path.write_text(json.dumps(_records()))
    result = runner.invoke(app, ["stats", str(path), "--json", "--no-embeddings", "--tokenizer", str(tiny_tokenizer_dir)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "surrogates not allowed" not in result.output
    text = " ".join(result.output.split())
    assert f"warning: {path}: record \\ud800x: byte 140: id: not valid UTF-8 (record.invalid_utf8; 2 records" in text
    figures = json.loads(result.stdout)
    assert figures["records_read"] == 4 and figures["available"] == 2
    assert figures["unusable_records"] == {"record.invalid_utf8": 2}
