"""The Ray executor gives the local executor's result: same kept rows, same rejections and reasons.

Ray runs locally (``num_cpus: 2``, no dashboard); no cluster is needed.
"""

from __future__ import annotations

import copy
import json

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app

from test_curate_stage import FILTERS as CURATE_FILTERS

pytest.importorskip("ray")

runner = CliRunner()

# the curate stage's rules with redact_pii before the dedup ops, and a global op after split (segments are rows)
FILTERS = (CURATE_FILTERS[:7] + [{"op": "redact_pii"}] + CURATE_FILTERS[7:]
           + [{"op": "exact_dedup", "strip_punctuation": True}])


def _perturbed(records):
    """Exact copies and one-word edits of real records, spread through the file (dedup's real work)."""
    out = list(records)
    for k, i in enumerate(range(0, 240, 12)):
        copy_ = copy.deepcopy(records[i])
        copy_["id"] = f"copy{k}"
        if k % 2:  # one word of the first user turn changed: a near duplicate
            turn = copy_["conversations"][0] if copy_["conversations"] else None
            if turn and turn.get("from") == "human" and isinstance(turn.get("value"), str):
                words = turn["value"].split()
                turn["value"] = " ".join(words[:-1] + ["please"]) if len(words) > 30 else turn["value"]
        out.insert(min(len(out), i + 100 + k), copy_)
    return out


def _build(recipe, *extra):
    result = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push", *extra])
    assert result.exit_code == 0, result.output
    return result.output


def _outputs(folder):
    kept = pl.read_parquet(folder / "data")
    rejected = pl.read_parquet(folder / "rejected")
    stats = json.loads((folder / "stats.json").read_text())
    return kept, rejected, stats


def _local_and_ray(recipe, tmp_path, step, shard_rows):
    """Build ``recipe`` with each executor (run roots ``local`` and ``ray``): each one's outputs of ``step``."""
    _build(recipe)
    _build(recipe, "--set", f"run_root={tmp_path / 'ray'}", "--set", "executor.kind=ray",
           "--set", "executor.num_cpus=2", "--set", f"executor.shard_rows={shard_rows}")
    name = yaml.safe_load(recipe.read_text())["name"]
    return (_outputs(tmp_path / "local" / name / step), _outputs(tmp_path / "ray" / name / step))


def test_ray_executor_equals_local_on_a_slice(write_json_array, sharegpt_records, tmp_path, tiny_tokenizer_dir):
    source = write_json_array(_perturbed(sharegpt_records[:400]), "slice.json")
    doc = {"name": "exec", "run_root": str(tmp_path / "local"),
           "steps": {"curate": {"kind": "curate", "source": {"path": str(source)},
                                "tokenizer": str(tiny_tokenizer_dir), "filters": FILTERS}}}
    recipe = tmp_path / "exec.yaml"
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    (kept_l, rej_l, stats_l), (kept_r, rej_r, stats_r) = _local_and_ray(recipe, tmp_path, "curate", 64)

    assert stats_l["balanced"] and stats_r["balanced"]
    # the slice gives dedup real work: both kinds of duplicates are found
    by_op = {r["rule"]: r for r in stats_l["rules"]}
    assert by_op["filters[8].exact_dedup"]["rejected"] >= 10 and by_op["filters[9].near_dedup"]["rejected"] >= 3
    # same kept rows, in the same order, with the same content
    assert kept_r.columns == kept_l.columns
    assert kept_r.equals(kept_l)
    # same rejected rows: id, piece, reason, rule, score and detail (survivors of clusters: first in order)
    cols = ["conversation_id", "source_index", "segment", "reason", "rule", "scope", "score", "detail"]
    assert rej_r.select(cols).equals(rej_l.select(cols))
    # the same books, rule by rule (the Ray executor adds the wall time of each shard pass)
    for a, b in zip(stats_l["rules"], stats_r["rules"]):
        assert (a["rule"], a["in"], a["out"], a["rejected"], a["counters"]) == \
               (b["rule"], b["in"], b["out"], b["rejected"], b["counters"])
    assert stats_r["rejected_by_reason"] == stats_l["rejected_by_reason"]


def test_an_unreachable_cluster_is_one_error_naming_the_key(write_json_array, sharegpt_records, tmp_path,
                                                              tiny_tokenizer_dir, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    source = write_json_array(sharegpt_records[:5], "five.json")
    doc = {"name": "nocluster", "run_root": str(tmp_path / "runs"),
           "executor": {"kind": "ray", "address": "auto"},
           "steps": {"curate": {"kind": "curate", "source": {"path": str(source)},
                                "tokenizer": str(tiny_tokenizer_dir)}}}
    recipe = tmp_path / "nocluster.yaml"
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert result.exit_code == 2
    assert "executor.address: cannot reach the Ray cluster" in " ".join(result.output.split())
    assert not (tmp_path / "runs" / "nocluster" / "curate").exists()


def test_ray_dedup_against_a_reference_equals_local(write_json_array, sharegpt_records, tmp_path,
                                                    tiny_tokenizer_dir):
    records = _perturbed(sharegpt_records[:300])
    old = write_json_array(records[:150], "old.json")
    new = write_json_array(records[100:], "new.json")
    ref = {"step": "old", "split": "all"}
    doc = {"name": "months", "run_root": str(tmp_path / "local"),
           "steps": {"old": {"kind": "curate", "source": {"path": str(old)}, "tokenizer": str(tiny_tokenizer_dir)},
                     "new": {"kind": "curate", "source": {"path": str(new)}, "tokenizer": str(tiny_tokenizer_dir),
                             "filters": [{"op": "exact_dedup", "reference": ref},
                                         {"op": "near_dedup", "reference": ref}]}}}
    recipe = tmp_path / "months.yaml"
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    (kept_l, rej_l, stats_l), (kept_r, rej_r, stats_r) = _local_and_ray(recipe, tmp_path, "new", 40)
    assert rej_l.filter(pl.col("detail").str.contains("in reference old")).height >= 50
    assert kept_r.equals(kept_l)
    cols = ["conversation_id", "source_index", "reason", "rule", "score", "detail"]
    assert rej_r.select(cols).equals(rej_l.select(cols))
    assert [r["counters"] for r in stats_r["rules"]] == [r["counters"] for r in stats_l["rules"]]
