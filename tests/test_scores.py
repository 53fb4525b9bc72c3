"""The score report: distributions of what reached each op, and the share each threshold removes."""

from __future__ import annotations

import json

import polars as pl
from typer.testing import CliRunner

from realchat.cli import app


def test_score_report_in_stats_card_and_png(make_recipe, write_json_array, sharegpt_records, tmp_path):
    filters = [{"op": "shape"}, {"op": "length", "max_chars": 2000},
               {"op": "quality", "min_alpha_ratio": 0.6, "max_url_ratio": 0.5, "policy": "all"},
               {"op": "exact_dedup"}]
    recipe = make_recipe(write_json_array(sharegpt_records[:200]), filters=filters, score_plot=True)
    result = CliRunner().invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "t" / "curate"
    stats = json.loads((folder / "stats.json").read_text())
    scores = stats["scores"]
    assert {"user_chars", "user_alpha_ratio", "user_url_ratio"} <= set(scores)
    # recompute one figure from the outputs: turns that reached `quality` = its column's values in
    # kept and rejected rows; the share below min_alpha_ratio
    kept = pl.read_parquet(folder / "data")
    rejected = pl.read_parquet(folder / "rejected")
    vals = pl.concat([df.select(pl.col("user_alpha_ratio").explode()) for df in (kept, rejected)])["user_alpha_ratio"]
    vals = vals.drop_nulls().drop_nans()
    alpha = scores["user_alpha_ratio"]
    assert alpha["turns"] == vals.len() and sum(alpha["histogram"]["counts"]) == vals.len()
    [t] = alpha["thresholds"]
    assert t["param"] == "min_alpha_ratio" and t["share_of_turns_failing"] == round(float((vals < 0.6).mean()), 4)
    assert t["share_of_turns_failing"] > 0  # this threshold does remove turns on real data
    # every turn rejected by that threshold is counted: the rule rejected at least one conversation
    assert any(r["rule"].endswith("quality") and r["rejected"] > 0 for r in stats["rules"])
    card = (folder / "README.md").read_text()
    assert "## Score distributions" in card and "`min_alpha_ratio` 0.6:" in card
    assert "![score distributions](scores.png)" in card
    assert (folder / "scores.png").read_bytes()[:4] == b"\x89PNG"
