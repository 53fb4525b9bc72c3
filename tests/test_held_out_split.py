"""The held-out conversations are a split of their own in the published curate dataset: a consumer who
trains on ``load_dataset(...)["train"]`` never trains on them, and RealChat's own steps read the same
rows (``{step: curate, split: held_out}``) as the published ``held_out`` split holds. Checked with the
real ``datasets.load_dataset`` on the local publish folder and on the tests' Hub server."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import yaml
from typer.testing import CliRunner

from realchat.cli import app
from realchat.data import read_step_conversations

runner = CliRunner()


def _recipe(make_recipe, write_json_array, sharegpt_records, publish: dict | None = None) -> Path:
    src = write_json_array(sharegpt_records[:160])
    # split: long conversations become several rows, all of one conversation on one side
    path = make_recipe(src, filters=[{"op": "shape"}, {"op": "split", "max_tokens": 256}], name="ho",
                       held_out_share=0.25, shard_rows=10)
    if publish is not None:
        doc = yaml.safe_load(path.read_text())
        doc["publish"] = publish
        path.write_text(yaml.safe_dump(doc))
    return path


def _check(ds, run: Path) -> None:
    """``ds``: the published default config. Its ``train`` and ``held_out`` splits are the run's rows of
    each split, and nothing else; together they are every kept row."""
    stats = json.loads((run / "stats.json").read_text())
    assert set(ds) == {"train", "held_out"}
    rows = pl.read_parquet(run / "data")
    assert ds["train"].num_rows + ds["held_out"].num_rows == rows.height == stats["kept_rows"]
    assert {k: ds[k].num_rows for k in ds} == stats["split_rows"]
    assert set(ds["train"]["split"]) == {"train"} and set(ds["held_out"]["split"]) == {"held_out"}
    train_convs = set(ds["train"]["conversation_id"])
    held_convs = set(ds["held_out"]["conversation_id"])
    assert held_convs and not train_convs & held_convs  # no conversation on both sides
    # RealChat's own consumers ({step: curate, split: held_out}) read exactly the published split
    assert {c["base_id"] for c in read_step_conversations(run, "held_out")} == held_convs
    assert {c["base_id"] for c in read_step_conversations(run, "train")} == train_convs
    # shards per split (shard_rows) and the Hub's naming
    names = sorted(p.name for p in (run / "data").glob("*.parquet"))
    assert any(n.startswith("held_out-00000-of-") for n in names) and "train-00001-of-" in " ".join(names)


def test_local_publish_has_train_and_held_out_splits(make_recipe, write_json_array, sharegpt_records, tmp_path):
    from datasets import load_dataset

    recipe = _recipe(make_recipe, write_json_array, sharegpt_records)
    r = runner.invoke(app, ["build", str(recipe), "--no-progress"])
    assert r.exit_code == 0, r.output
    repo = tmp_path / "hub" / "datasets" / "realchat" / "ho-curate"
    _check(load_dataset(str(repo)), tmp_path / "runs" / "ho" / "curate")
    card = (repo / "README.md").read_text()
    assert 'ds["held_out"]' in card and "separate splits" in card
    meta = yaml.safe_load(card.split("---")[1])
    default = next(c for c in meta["configs"] if c["config_name"] == "default")
    assert [f["split"] for f in default["data_files"]] == ["train", "held_out"]


def test_hub_publish_has_train_and_held_out_splits(hub, make_recipe, write_json_array, sharegpt_records, tmp_path):
    from datasets import load_dataset

    recipe = _recipe(make_recipe, write_json_array, sharegpt_records, {"target": "hub", "namespace": "realchat-org"})
    r = runner.invoke(app, ["build", str(recipe), "--no-progress"])
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "runs" / "ho" / "published" / "curate.json").read_text())
    _check(load_dataset("realchat-org/ho-curate", revision=record["revision"]), tmp_path / "runs" / "ho" / "curate")


def test_no_held_out_share_publishes_train_only(make_recipe, write_json_array, sharegpt_records, tmp_path):
    from datasets import load_dataset

    recipe = make_recipe(write_json_array(sharegpt_records[:40]), filters=[{"op": "shape"}], name="nh",
                         held_out_share=0)
    r = runner.invoke(app, ["build", str(recipe), "--no-progress"])
    assert r.exit_code == 0, r.output
    ds = load_dataset(str(tmp_path / "hub" / "datasets" / "realchat" / "nh-curate"))
    assert set(ds) == {"train"} and ds["train"].num_rows == json.loads(
        (tmp_path / "runs" / "nh" / "curate" / "stats.json").read_text())["kept_rows"]
