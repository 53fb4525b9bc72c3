"""A model folder without a tokenizer, or with a safetensors file cut short, fails at ``plan`` with one
line naming the recipe key (exit 2), not with a traceback from transformers once a build reaches it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app
from realchat.models.folder_check import TOKENIZER_FILES

runner = CliRunner()


@pytest.fixture
def sft_recipe(tmp_path, tiny_tokenizer_dir, sharegpt_records):
    import json

    data = tmp_path / "data.json"
    data.write_text(json.dumps(sharegpt_records[:20]))

    def make(base_model: Path) -> Path:
        doc = {"name": "m", "run_root": str(tmp_path / "runs"),
               "steps": {"curate": {"kind": "curate", "source": {"path": str(data)},
                                    "tokenizer": str(tiny_tokenizer_dir)},
                         "sft": {"kind": "sft", "base_model": str(base_model), "dataset": "curate",
                                 "loss_on": "user"}}}
        recipe = tmp_path / "m.yaml"
        recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
        return recipe

    return make


def _plan(recipe: Path) -> str:
    result = runner.invoke(app, ["plan", str(recipe)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert "Traceback" not in text and "error:" in text
    return text


def test_a_model_folder_without_a_tokenizer_fails_at_plan(sft_recipe, tiny_model_dir, tmp_path):
    bare = tmp_path / "weights-only"
    shutil.copytree(tiny_model_dir, bare)
    for name in TOKENIZER_FILES + ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (bare / name).unlink(missing_ok=True)
    text = _plan(sft_recipe(bare))
    assert "steps.sft.base_model:" in text and "no tokenizer in the model folder" in text


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_safetensors_file_fails_at_plan(sft_recipe, tiny_model_dir, tmp_path, keep):
    cut = tmp_path / "cut"
    shutil.copytree(tiny_model_dir, cut)
    weights = cut / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    text = _plan(sft_recipe(cut))
    assert "steps.sft.base_model:" in text and "model.safetensors: truncated" in text


def test_the_whole_model_folder_plans(sft_recipe, tiny_model_dir):
    result = runner.invoke(app, ["plan", str(sft_recipe(tiny_model_dir))])
    assert result.exit_code == 0, result.output
