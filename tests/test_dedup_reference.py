"""Dedup against an earlier release: a new month of logs loses what the old release already holds."""

from __future__ import annotations

import copy
import json

import polars as pl
import yaml
from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()


def build(recipe, *extra):
    result = runner.invoke(app, ["build", str(recipe), "--no-progress", *extra])
    return result.exit_code, result.output


def _long_user_record(records, start):
    """The first record from ``start`` whose first user turn has 60+ words (near-dup material)."""
    for i in range(start, len(records)):
        turns = records[i]["conversations"]
        if turns and turns[0]["from"] == "human" and len(turns[0]["value"].split()) >= 60:
            return i
    raise AssertionError("no long record")


def test_new_month_dedups_against_the_old_release(write_json_array, sharegpt_records, tmp_path,
                                                    tiny_tokenizer_dir):
    records = sharegpt_records[:300]
    old = write_json_array(records[:200], "old.json")
    j = _long_user_record(records, 0)
    near = copy.deepcopy(records[j])
    near["id"] = "near-copy"
    words = near["conversations"][0]["value"].split()
    near["conversations"][0]["value"] = " ".join(words[:-1] + ["indeed"])  # one word changed
    new = write_json_array(records[100:] + [near], "new.json")
    doc = {
        "name": "months", "run_root": str(tmp_path / "runs"),
        "steps": {
            "old": {"kind": "curate", "source": {"path": str(old)}, "tokenizer": str(tiny_tokenizer_dir)},
            "new": {"kind": "curate", "source": {"path": str(new)}, "tokenizer": str(tiny_tokenizer_dir),
                    "filters": [{"op": "exact_dedup", "reference": {"step": "old", "split": "all"}},
                                {"op": "near_dedup", "reference": {"step": "old", "split": "all"}}]},
        },
    }
    recipe = tmp_path / "months.yaml"
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = runner.invoke(app, ["plan", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    plan = {p["name"]: p for p in json.loads(result.output)}
    assert plan["new"]["parents"] == ["old"]  # the reference is an input: a graph edge and in the fingerprint

    code, out = build(recipe, "--no-push")
    assert code == 0, out
    folder = tmp_path / "runs" / "months"
    old_ids = set(pl.read_parquet(folder / "old" / "data")["conversation_id"])
    kept = pl.read_parquet(folder / "new" / "data")
    rejected = pl.read_parquet(folder / "new" / "rejected")
    stats = json.loads((folder / "new" / "stats.json").read_text())
    assert stats["balanced"] and stats["read"] == 201
    # every record the old release holds is gone, naming the reference and the conversation there
    overlap = rejected.filter(pl.col("source_index") < 100)
    assert overlap.height == 100 and set(overlap["reason"]) == {"exact_dedup"}
    for d in overlap["detail"]:
        assert d.startswith("duplicate of ") and d.endswith(" in reference old")
        assert d.removeprefix("duplicate of ").removesuffix(" in reference old") in old_ids
    assert not set(kept["conversation_id"]) & old_ids - {None}
    # the copy with one word changed is caught by near_dedup, against the old release
    row = rejected.filter(pl.col("conversation_id") == "near-copy")
    assert row["reason"].to_list() == ["near_dedup"]
    assert f"near-duplicate of {records[j]['id']} in reference old" in row["detail"][0]
    rules = {r["op"]: r for r in stats["rules"]}
    assert rules["exact_dedup"]["counters"]["in_reference"] >= 100
    assert rules["near_dedup"]["counters"]["in_reference"] >= 1

    # without the reference the same records are kept: the rejections above are the reference's doing
    doc["steps"]["new"]["filters"] = [{"op": "exact_dedup"}, {"op": "near_dedup"}]
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out = build(recipe, "--no-push", "--only", "new")
    assert code == 0, out
    kept2 = pl.read_parquet(folder / "new" / "data")
    assert kept2.height >= kept.height + 90  # the 100 shared records, less their own duplicates
    assert "near-copy" not in set(pl.read_parquet(folder / "new" / "rejected")["conversation_id"])


def test_reference_to_a_published_folder(write_json_array, sharegpt_records, tmp_path, tiny_tokenizer_dir):
    """A release published earlier (a local Hub-like folder) is read with its conversation ids."""
    records = list(sharegpt_records[:60])
    # two long made-up conversations that split cuts into several segments without dropping a piece
    for k in range(2):
        turns = []
        for t in range(12):
            turns += [{"from": "human", "value": f"question {k}.{t}: " + "please explain this part again " * 12},
                      {"from": "gpt", "value": "Here is the explanation of that part. " * 12}]
        records.insert(20 + k, {"id": f"long{k}", "conversations": turns})
    base = {"run_root": str(tmp_path / "runs"), "publish": {"local_root": str(tmp_path / "hub")}}
    first = tmp_path / "r1.yaml"
    first.write_text(yaml.safe_dump({**base, "name": "r1", "steps": {"curate": {
        "kind": "curate", "source": {"path": str(write_json_array(records[:40], "a.json"))},
        "tokenizer": str(tiny_tokenizer_dir), "filters": [{"op": "split", "max_tokens": 1024}]}}}))
    code, out = build(first)
    assert code == 0, out
    published = tmp_path / "hub" / "datasets" / "realchat" / "r1-curate"
    assert (published / "data").is_dir()
    second = tmp_path / "r2.yaml"
    second.write_text(yaml.safe_dump({**base, "name": "r2", "steps": {"curate": {
        "kind": "curate", "source": {"path": str(write_json_array(records[20:], "b.json"))},
        "tokenizer": str(tiny_tokenizer_dir),
        "filters": [{"op": "exact_dedup", "reference": {"path": str(published), "format": "parquet"}}]}}}))
    code, out = build(second, "--no-push")
    assert code == 0, out
    rejected = pl.read_parquet(tmp_path / "runs" / "r2" / "curate" / "rejected")
    ref_rows = rejected.filter(pl.col("detail").str.contains(f"in reference {published}", literal=True))
    # the shared records whose every user turn the release kept (split dropped no piece of them) are
    # all recognised, the ones split into several segments there included (joined back here)
    first_run = tmp_path / "runs" / "r1" / "curate"
    pieces = set(pl.read_parquet(first_run / "rejected")["source_index"])
    kept1 = pl.read_parquet(first_run / "data")
    whole = set(range(20, 40)) - pieces  # records 20..39 of the first file are 0..19 of the second
    segmented = set(kept1.filter(pl.col("segment") > 0)["source_index"]) & whole
    assert {20, 21} <= segmented
    assert set(ref_rows["source_index"]) >= {i - 20 for i in whole}
    ids = set(kept1["conversation_id"])
    for d in ref_rows["detail"]:
        assert d.removeprefix("duplicate of ").split(" in reference")[0] in ids


def test_reference_to_a_hub_dataset(hub, write_json_array, sharegpt_records, tmp_path, tiny_tokenizer_dir):
    """A release on the Hub (the tests' Hub server, through huggingface_hub) as the reference."""
    records = sharegpt_records[:50]
    base = {"run_root": str(tmp_path / "runs")}
    first = tmp_path / "h1.yaml"
    first.write_text(yaml.safe_dump({**base, "name": "h1", "publish": {"target": "hub", "namespace": "realchat-org"},
                                     "steps": {"curate": {
        "kind": "curate", "source": {"path": str(write_json_array(records[:30], "a.json"))},
        "tokenizer": str(tiny_tokenizer_dir)}}}))
    code, out = build(first)
    assert code == 0, out
    record = json.loads((tmp_path / "runs" / "h1" / "published" / "curate.json").read_text())
    second = tmp_path / "h2.yaml"
    second.write_text(yaml.safe_dump({**base, "name": "h2", "steps": {"curate": {
        "kind": "curate", "source": {"path": str(write_json_array(records[20:], "b.json"))},
        "tokenizer": str(tiny_tokenizer_dir),
        "filters": [{"op": "exact_dedup",
                     "reference": {"hub": "realchat-org/h1-curate", "revision": record["revision"]}}]}}}))
    code, out = build(second, "--no-push")
    assert code == 0, out
    rejected = pl.read_parquet(tmp_path / "runs" / "h2" / "curate" / "rejected")
    ref = rejected.filter(pl.col("detail").str.contains(f"in reference realchat-org/h1-curate@{record['revision']}",
                                                         literal=True))
    assert set(ref["source_index"]) == set(range(10))  # records 20..29 of the release
    assert set(d.split()[2] for d in ref["detail"]) == {r["id"] for r in records[20:30]}
