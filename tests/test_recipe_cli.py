"""Recipe validation and the CLI's error contract: one clear message, exit code 2, no traceback."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app
from realchat.errors import RecipeError
from realchat.recipe.load import load_recipe
from realchat.recipe.schema import Recipe

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


DEFAULT_STEPS = ["curate", "usergpt", "sim_usergpt", "sim_roleplay", "realm_usergpt", "realm_roleplay", "evaluate"]


def test_shipped_recipes_validate():
    from realchat.engine.build import plan

    loaded = load_recipe("recipes/realchat.yaml")
    assert loaded.step_names() == DEFAULT_STEPS
    assert [f.op for f in loaded.recipe.steps["curate"].filters][-1] == "split"
    assert [p.name for p in plan(loaded)] == DEFAULT_STEPS
    paper = load_recipe("recipes/paper/platolm-7b.yaml")  # validates here; runs on GPUs with the Hub
    usergpt = paper.recipe.steps["usergpt"]
    assert usergpt.kind == "sft" and usergpt.loss_on == "user"
    assert usergpt.base_model == "huggyllama/llama-7b"
    assert usergpt.learning_rate == 2e-5 and usergpt.num_train_epochs == 3
    plans = {p.name: p for p in plan(paper)}
    assert list(plans) == ["curate", "usergpt", "sim_free", "sim_seeded", "sim_roleplay", "sim_magpie", "realm_free",
                           "realm_seeded", "realm_roleplay", "realm_magpie", "realm_sharegpt", "evaluate"]
    assert plans["usergpt"].parents == ["curate"]
    assert plans["sim_seeded"].parents == ["usergpt", "curate"]
    assert plans["realm_sharegpt"].parents == ["curate"]
    assert set(plans["evaluate"].parents) == {"curate", "sim_free", "sim_seeded", "sim_roleplay", "sim_magpie",
                                              "usergpt", "realm_free", "realm_seeded", "realm_roleplay",
                                              "realm_magpie", "realm_sharegpt"}


def test_step_reading_a_later_step_is_fine_and_a_missing_one_is_a_clear_error(tmp_path):
    from realchat.engine.build import plan

    doc = yaml.safe_load(open("recipes/realchat.yaml"))
    del doc["steps"]["evaluate"]  # its paths are relative to recipes/
    # written before the steps it reads: the graph, not the file order, decides the build order
    doc["steps"] = {"realm_usergpt": doc["steps"].pop("realm_usergpt"), **doc["steps"]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    order = [p.name for p in plan(load_recipe(path))]
    assert order.index("curate") < order.index("usergpt") < order.index("sim_usergpt") < order.index("realm_usergpt")

    del doc["steps"]["usergpt"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(RecipeError) as err:
        plan(load_recipe(path))
    flat = " ".join(str(err.value).split())
    assert f"{path}: steps.sim_usergpt.simulator_backend.model: model not found" in flat
    assert "neither a step of this recipe" in flat

    doc["steps"]["realm_usergpt"]["dataset"] = {"step": "usergpt", "split": "held_out"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out = cli("plan", str(path))
    flat = " ".join(out.split())
    assert code == 2 and "Traceback" not in out
    assert f"{path}: steps." in flat and ("no step named 'usergpt'" in flat or "model not found" in flat)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["steps"]["curate"]["filters"][1].update(min_confidnce=0.3),
         "steps.curate.filters[1].min_confidnce: unknown key; did you mean 'min_confidence'?"),
        (lambda d: d["steps"]["curate"]["filters"][1].update(min_confidence="high"),
         "steps.curate.filters[1].min_confidence: Input should be a valid number"),
        (lambda d: d["steps"]["curate"]["filters"][1].update(min_confidence=3),
         "steps.curate.filters[1].min_confidence: Input should be less than or equal to 1"),
        (lambda d: d["steps"]["curate"]["filters"].append({"op": "langauge"}),
         "steps.curate.filters[2]: unknown op 'langauge'; expected one of: 'clean_html',"),
        (lambda d: d["steps"]["curate"]["filters"].append({"opp": "shape"}), "steps.curate.filters[2]: missing 'op'"),
        (lambda d: d["steps"]["curate"].update(sorce={}),
         "steps.curate.sorce: unknown key; did you mean 'source'?"),
        (lambda d: d.pop("name"), "name: required key is missing"),
        (lambda d: d["steps"]["curate"]["source"].update(path="nope/missing.json"),
         "steps.curate.source.path: file not found"),
        (lambda d: d["steps"]["curate"].update(tokenizer="/no/such/model"),
         "steps.curate.tokenizer: model not found"),
        (lambda d: d["steps"]["curate"].update(kind="curation"),
         "steps.curate.kind: unknown kind 'curation'; expected one of: curate, sft, simulate, evaluate"),
        (lambda d: d["steps"]["curate"].pop("kind"), "steps.curate.kind: missing kind"),
        (lambda d: d.update(steps={}), "steps: a recipe needs at least one step"),
        (lambda d: d.update(stages=d.pop("steps")), "stages: the fixed chain of stages is gone: declare `steps:`"),
        (lambda d: d["steps"].update({"bad name!": d["steps"]["curate"]}),
         "steps.bad name!: bad step name: must be a slug"),
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
    assert "should have at least 1 item" not in flat  # one error, said once: no knock-on lines


def test_yaml_syntax_error_and_missing_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps: [curate\n")
    code, out = cli("build", str(bad))
    assert code == 2 and "bad.yaml" in out and "line" in out and "Traceback" not in out
    code, out = cli("plan", str(tmp_path / "none.yaml"))
    assert code == 2 and "recipe file not found" in out


def test_set_overrides_and_unknown_step(recipe):
    loaded = load_recipe(recipe, ["steps.curate.filters[1].min_confidence=0.9"])
    assert loaded.recipe.steps["curate"].filters[1].min_confidence == 0.9
    assert loaded.overrides == ["steps.curate.filters[1].min_confidence=0.9"]
    with pytest.raises(RecipeError, match=r"steps\.curate\.filters\[1\]\.min_confidence"):
        load_recipe(recipe, ["steps.curate.filters[1].min_confidence=oops"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe(recipe, ["steps.curate.held_out_share"])
    code, out = cli("build", str(recipe), "--only", "train")
    flat = " ".join(out.split())
    assert code == 2 and "--only 'train': no such step in the recipe (steps: curate)" in flat
    code, out = cli("build", str(recipe), "--from", "train")
    flat = " ".join(out.split())
    assert code == 2 and "--from 'train': no such step in the recipe (steps: curate)" in flat
    code, out = cli("push", str(recipe), "--step", "train")
    flat = " ".join(out.split())
    assert code == 2 and "--step 'train': no such step in the recipe" in flat
    assert not (recipe.parent / "runs" / "t" / "curate").exists()  # nothing was built by any of these


def test_schema_is_json_schema_of_the_recipe():
    code, out = cli("schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["title"] == "RealChat recipe"
    assert schema["additionalProperties"] is False
    ops = {v["properties"]["op"].get("const") or v["properties"]["op"].get("default")
           for k, v in schema["$defs"].items() if "op" in v.get("properties", {})}
    assert {"language", "near_dedup", "split"} <= ops
    steps = schema["properties"]["steps"]
    assert steps["type"] == "object" and steps["minProperties"] == 1
    step_kinds = steps["additionalProperties"]["discriminator"]["mapping"]
    assert set(step_kinds) == {"curate", "sft", "simulate", "evaluate"}
    sft = schema["$defs"][step_kinds["sft"].split("/")[-1]]
    assert sft["properties"]["loss_on"]["enum"] == ["user", "assistant"] and "loss_on" in sft["required"]
    assert Recipe.model_json_schema()["required"] == ["name", "steps"]


@pytest.mark.parametrize("override, expected", [
    ("steps.realm_usergpt.dataset={path: nope.json, format: sharegpt}", "steps.realm_usergpt.dataset.path: file not found"),
    ("steps.realm_usergpt.dataset=nope", "steps.realm_usergpt.dataset: 'nope' is neither a step of this recipe nor a "
                                         "Hub dataset id"),
    ("steps.sim_usergpt.answerer.kind=openai", "steps.sim_usergpt.answerer.base_url: required key is missing"),
    ("steps.usergpt.loss_on=both", "steps.usergpt.loss_on: Input should be 'user' or 'assistant'"),
    ("steps.usergpt.train_user=true", "steps.usergpt.train_user: unknown key"),
])
def test_later_step_inputs_named_in_errors(override, expected):
    from realchat.engine.build import plan

    with pytest.raises(RecipeError) as err:
        plan(load_recipe("recipes/realchat.yaml", [override]))
    assert "recipes/realchat.yaml" in str(err.value)
    assert expected in " ".join(str(err.value).split())
