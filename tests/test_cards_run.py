"""Cards a downstream user can trust as copied: on a tiny build of the paper's comparison, published
locally, every fenced Python block of every card runs (its repo id mapped to the local folder, as the
card itself says), and every card's metadata passes huggingface_hub's card data classes and the Hub's
validation endpoint (the tests' Hub), with what the Hub's dataset and model card specs ask for."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from realchat.cli import app
from test_evaluate import eval_recipe, judge_url  # noqa: F401  (fixtures: the tiny comparison)

runner = CliRunner()
CODE = re.compile(r"```python\n(.*?)```", re.S)
#: What the Hub's dataset card spec allows for the creators fields.
ANNOTATIONS = {"crowdsourced", "expert-generated", "found", "machine-generated", "no-annotation", "other"}
LANGUAGE_CREATORS = {"crowdsourced", "expert-generated", "found", "machine-generated", "other"}
RELATIONS = {"adapter", "merge", "quantized", "finetune"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _build(eval_recipe, tmp_path) -> Path:
    r = runner.invoke(app, ["build", str(eval_recipe()), "--no-progress"])
    assert r.exit_code == 0, r.output
    return tmp_path / "hub"


def _cards(root: Path) -> list[Path]:
    cards = sorted(root.rglob("README.md"))
    assert len(cards) == 7  # curate, usergpt, two simulations, two ReaLMs, evaluate
    return cards


def test_every_code_block_of_every_card_runs(eval_recipe, tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import RepoCard

    root = _build(eval_recipe, tmp_path)
    monkeypatch.chdir(tmp_path)  # nothing may depend on the working directory
    ran = {}
    for card_path in _cards(root):
        card = RepoCard.load(card_path)
        block = card.data.to_dict()["realchat"]
        repo, local = block["repo"], block["repo_path"]
        # the mapping the local card documents: its repo id → the folder below the publish root
        assert f"`{local}` below the publish root" in card.text and f'"{repo}"' in card.text
        blocks = CODE.findall(card.text)
        assert blocks, f"{card_path}: no Python block"
        for code in blocks:
            assert f'"{repo}"' in code, code
            namespace: dict = {}
            exec(compile(code.replace(f'"{repo}"', repr(str(root / local))), str(card_path), "exec"), namespace)
            ran[block["step"]] = namespace
    # what the blocks made: every dataset config loads with rows, the models generated
    for step in ("curate", "sim_usergpt", "sim_roleplay", "evaluate"):
        loaded = [v for v in ran[step].values() if isinstance(v, datasets.Dataset)]
        assert loaded and all(d.num_rows > 0 for d in loaded), step
    assert {"train", "rejected"} <= set(ran["curate"])  # curation rejected some: its config is offered
    if "held_out" in ran["curate"]:  # the held-out conversations are a split of their own, not in train
        assert not set(ran["curate"]["held_out"]["conversation_id"]) & set(ran["curate"]["train"]["conversation_id"])
    assert "sharegpt" in ran["sim_usergpt"] and ran["sim_usergpt"]["sharegpt"].num_rows == ran["sim_usergpt"]["ds"].num_rows
    answers = ran["evaluate"]["answers"]
    assert set(answers["benchmark"]) == {"mt_bench", "vicuna_bench"}
    for step in ("usergpt", "realm_usergpt", "realm_roleplay"):
        out, inputs = ran[step]["out"], ran[step]["inputs"]
        assert out.shape[1] > inputs["input_ids"].shape[1]  # it generated after the prompt


def test_card_metadata_by_the_hubs_specs(eval_recipe, tmp_path, hub_server):
    from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData, RepoCard

    root = _build(eval_recipe, tmp_path)
    for card_path in _cards(root):
        folder = card_path.parent
        is_model = not folder.relative_to(root).parts[0] == "datasets"
        card = (ModelCard if is_model else DatasetCard).load(card_path)
        data = card.data
        assert isinstance(data, ModelCardData if is_model else DatasetCardData)
        RepoCard(card_path.read_text()).validate(repo_type="model" if is_model else "dataset")  # the Hub's check
        step = data.to_dict()["realchat"]["step"]
        text = card_path.read_text()
        assert "\\u0027" not in text and "pkg://" not in str(data.to_dict().get("source_datasets")), step
        # nothing of the builder's machine: no site-packages path (a pkg:// file is named by its package)
        assert "site-packages" not in text and sys.prefix not in text, step
        if data.license == "other":
            assert data.license_name and data.license_link, step
            assert (folder / data.license_link).is_file(), step
        if is_model:
            if data.base_model:
                assert HUB_ID.fullmatch(data.base_model) and data.base_model_relation in RELATIONS, step
            continue
        assert data.language, f"{step}: no language"
        assert set(data.annotations_creators) <= ANNOTATIONS and data.annotations_creators, step
        assert set(data.language_creators) <= LANGUAGE_CREATORS and data.language_creators, step
        for source in data.source_datasets or []:
            assert HUB_ID.fullmatch(source), f"{step}: source_datasets {source!r} is not a Hub id"
        if step.startswith("sim_"):
            assert "synthetic" in data.tags and data.language_creators == ["machine-generated"]
            assert text.count("Languages of user turns") == 1 and "languages (top 3)" not in text
            assert "rejected" not in [c["config_name"] for c in data.configs]  # every session had a round
        configs = [c["config_name"] for c in data.configs]
        for name in configs:  # a sample record per config
            assert f"`{name}`:\n\n```json" in text, (step, name)


def test_an_empty_rejected_set_is_no_config_but_a_readable_file(tmp_path):
    """The rejected shard is still written (it documents the columns) and reads as 0 rows; the card's
    configs leave it out, since ``load_dataset`` refuses a split of 0 rows."""
    import polars as pl

    from realchat.steps.base import data_configs

    (tmp_path / "data").mkdir()
    (tmp_path / "rejected").mkdir()
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet")
    pl.DataFrame({"a": []}, schema={"a": pl.Int64}).write_parquet(tmp_path / "rejected" / "train-00000-of-00001.parquet")
    assert [c["config_name"] for c in data_configs(tmp_path)] == ["default"]
    assert pl.read_parquet(tmp_path / "rejected").height == 0
    pl.DataFrame({"a": [2]}).write_parquet(tmp_path / "rejected" / "train-00000-of-00001.parquet")
    assert [c["config_name"] for c in data_configs(tmp_path)] == ["default", "rejected"]
