"""``realchat stats``: the §4 statistics of any conversation file, on a slice of the shipped ShareGPT."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from lexicalrichness import LexicalRichness
from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()


def _paper_mtld(texts):
    """PlatoLM's lexical-diversity.py, restated: mean of per-question MTLD, ZeroDivisionError skipped."""
    values = []
    for t in texts:
        try:
            values.append(LexicalRichness(t).mtld(threshold=0.72))
        except ZeroDivisionError:
            continue
    return sum(values) / len(values)


@pytest.fixture
def slice_records(sharegpt_records):
    """30 real ShareGPT records that have a human turn (the stats count conversations with a user turn)."""
    return [r for r in sharegpt_records if any(t["from"] == "human" for t in r["conversations"])][:30]


def test_stats_json_on_sharegpt_openai_and_parquet_agree(slice_records, tmp_path, tiny_tokenizer_dir):
    sharegpt = tmp_path / "slice.json"
    sharegpt.write_text(json.dumps(slice_records, ensure_ascii=False))
    role = {"human": "user", "gpt": "assistant", "system": "system"}
    as_messages = [{"id": r["id"], "messages": [{"role": role[t["from"]], "content": t["value"]}
                                                for t in r["conversations"]]} for r in slice_records]
    openai = tmp_path / "slice.jsonl"
    openai.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in as_messages))
    parquet = tmp_path / "slice.parquet"
    pl.DataFrame(as_messages).write_parquet(parquet)

    results = []
    for path, fmt in ((sharegpt, None), (openai, "openai_messages"), (parquet, None)):
        args = ["stats", str(path), "--json", "--tokenizer", str(tiny_tokenizer_dir)]
        r = runner.invoke(app, args + (["--format", fmt] if fmt else []))
        assert r.exit_code == 0, r.output
        results.append(json.loads(r.stdout))
    got = results[0]
    for key in ("conversations", "mean_rounds", "tokens_per_utterance", "tokens_per_conversation",
                "mtld_paper", "mtld_joined", "topic_cosine_paper", "topic_cosine_pairs", "first_turn_diversity"):
        assert got[key] is not None, key
        assert all(r[key] == got[key] for r in results[1:]), key  # one reader path, three formats
    humans = [[t["value"] for t in r["conversations"] if t["from"] == "human"] for r in slice_records]
    assert got["conversations"] == 30 and got["records_read"] == 30
    assert got["mean_rounds"] == round(float(np.mean([len(h) for h in humans])), 1)
    assert got["mtld_paper"] == round(_paper_mtld([t for h in humans for t in h]), 2)
    assert got["mtld_paper"] != got["mtld_joined"]
    assert got["topic_cosine_pairs"] <= got["topic_cosine_paper"]
    assert got["first_turn_diversity_ci95"][0] <= got["first_turn_diversity"] <= got["first_turn_diversity_ci95"][1]

    r = runner.invoke(app, ["stats", str(sharegpt), "--tokenizer", str(tiny_tokenizer_dir), "--no-embeddings",
                            "--max-conversations", "10"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert "10 of 30 conversations" in text and "MTLD, mean over user turns (paper)" in text
    assert "topic cosine" not in text  # no embeddings asked for


def test_stats_bad_files_are_one_line_errors(tmp_path, tiny_tokenizer_dir):
    bad = tmp_path / "bad.json"
    bad.write_text("this is not json")
    missing = tmp_path / "missing.json"
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text('{"id": "a", "messages": "not a list"}\n')
    for path, words in ((bad, "expected a JSON array"), (missing, "file not found"),
                        (nothing, "no conversation with a user turn")):
        r = runner.invoke(app, ["stats", str(path), "--tokenizer", str(tiny_tokenizer_dir), "--no-embeddings"])
        assert r.exit_code == 2, r.output
        text = " ".join(r.output.split())  # rich wraps long lines
        assert words in text and path.name in "".join(r.output.split()) and "Traceback" not in text
    r = runner.invoke(app, ["stats", str(bad), "--format", "csv"])
    assert r.exit_code == 2 and "unknown format" in " ".join(r.output.split())
