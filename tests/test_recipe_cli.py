"""Recipe validation and the CLI's error contract: one clear message, exit code 2, no traceback."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app
from realchat.errors import RecipeError
from realchat.recipe import Recipe, load_recipe

runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.fixture
def recipe(make_recipe, write_json_array):
    src = write_json_array([{"id": "a", "conversations": [{"from": "human", "value": "hi"}]}])
    return make_recipe(src, filters=[{"op": "shape"}, {"op": "language", "allowed": ["en"]}])


def edit(path, fn):
    doc = yaml.safe_load(path.read_text())
    fn(doc)
    path.write_text(yaml.safe_dump(doc))
    return path


def test_shipped_recipes_validate():
    loaded = load_recipe("recipes/realchat.yaml")
    assert loaded.stage_names() == ["curate", "train_user", "simulate", "train_assistant", "evaluate"]
    assert [f.op for f in loaded.recipe.stages.curate.filters][-1] == "split"
    paper = load_recipe("recipes/paper/platolm-7b.yaml")  # validates here; runs on GPUs with the Hub
    assert paper.recipe.stages.train_user.base_model == "huggyllama/llama-7b"
    assert paper.recipe.stages.train_user.learning_rate == 2e-5 and paper.recipe.stages.train_user.num_train_epochs == 3
    from realchat.pipeline import plan

    assert [p.name for p in plan(paper)] == ["curate", "train_user", "simulate", "train_assistant", "evaluate"]


def test_stage_reading_a_later_or_missing_stage_is_a_clear_error(tmp_path):
    doc = yaml.safe_load(open("recipes/realchat.yaml"))
    del doc["stages"]["train_user"]
    del doc["stages"]["evaluate"]  # its paths are relative to recipes/
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    from realchat.errors import RecipeError
    from realchat.pipeline import plan

    with pytest.raises(RecipeError, match="simulate reads stage 'train_user', which is not in the recipe"):
        plan(load_recipe(path))


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["stages"]["curate"]["filters"][1].update(min_confidnce=0.3),
         "stages.curate.filters[1].min_confidnce: unknown key; did you mean 'min_confidence'?"),
        (lambda d: d["stages"]["curate"]["filters"][1].update(min_confidence="high"),
         "stages.curate.filters[1].min_confidence: Input should be a valid number"),
        (lambda d: d["stages"]["curate"]["filters"][1].update(min_confidence=3),
         "stages.curate.filters[1].min_confidence: Input should be less than or equal to 1"),
        (lambda d: d["stages"]["curate"]["filters"].append({"op": "langauge"}),
         "stages.curate.filters[2]: unknown op 'langauge'; expected one of:"),
        (lambda d: d["stages"]["curate"].update(sorce={}),
         "stages.curate.sorce: unknown key; did you mean 'source'?"),
        (lambda d: d.pop("name"), "name: required key is missing"),
        (lambda d: d["stages"]["curate"]["source"].update(path="nope/missing.json"),
         "stages.curate.source.path: file not found"),
        (lambda d: d["stages"]["curate"].update(tokenizer="/no/such/model"),
         "stages.curate.tokenizer: model not found"),
    ],
)
def test_bad_recipes_name_file_key_and_expectation(recipe, mutate, expected):
    edit(recipe, mutate)
    code, out = cli("plan", str(recipe))
    assert code == 2
    flat = " ".join(out.split())
    assert str(recipe.name) in flat
    assert " ".join(expected.split()) in flat
    assert "Traceback" not in out


def test_yaml_syntax_error_and_missing_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: [curate\n")
    code, out = cli("build", str(bad))
    assert code == 2 and "bad.yaml" in out and "line" in out and "Traceback" not in out
    code, out = cli("plan", str(tmp_path / "none.yaml"))
    assert code == 2 and "recipe file not found" in out


def test_set_overrides_and_unknown_stage(recipe):
    loaded = load_recipe(recipe, ["stages.curate.filters[1].min_confidence=0.9"])
    assert loaded.recipe.stages.curate.filters[1].min_confidence == 0.9
    with pytest.raises(RecipeError, match="min_confidence"):
        load_recipe(recipe, ["stages.curate.filters[1].min_confidence=oops"])
    code, out = cli("build", str(recipe), "--only", "train")
    assert code == 2 and "no such stage" in out


def test_schema_is_json_schema_of_the_recipe():
    code, out = cli("schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["title"] == "RealChat recipe"
    assert schema["additionalProperties"] is False
    ops = {v["properties"]["op"].get("const") or v["properties"]["op"].get("default")
           for k, v in schema["$defs"].items() if "op" in v.get("properties", {})}
    assert {"language", "near_dedup", "split"} <= ops
    assert Recipe.model_json_schema()["required"] == ["name", "stages"]


@pytest.mark.parametrize("override, expected", [
    ("stages.train_assistant.data_format=sharegpt", "stages.train_assistant.dataset: file not found"),
    ("stages.simulate.answerer.kind=openai", "stages.simulate.answerer.base_url: required key is missing"),
])
def test_later_stage_inputs_named_in_errors(override, expected):
    from realchat.errors import RecipeError

    with pytest.raises(RecipeError) as err:
        load_recipe("recipes/realchat.yaml", [override])
    assert expected in " ".join(str(err.value).split())
