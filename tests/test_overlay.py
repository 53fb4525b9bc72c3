"""``--overlay FILE``: "the same recipe, smaller" (issue 27). A file of key.path: value overrides
applied before --set; it may only change what the recipe has; its errors name the overlay file and
the key path (exit 2); a key path set under a YAML alias changes that one place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app
from realchat.errors import RecipeError
from realchat.recipe.load import load_recipe

runner = CliRunner()
PAPER = Path("recipes/paper/platolm-7b.yaml")
STANDIN = Path("recipes/paper/cpu-standin.yaml")


@pytest.fixture(autouse=True)
def _in_a_clone(paper_clone, monkeypatch):
    """Run from a clean clone's layout with the stand-ins made: the overlay names ``./stand-ins/…``,
    which are not in the repo (``python -m realchat.standins`` writes them), and planning checks them."""
    monkeypatch.chdir(paper_clone)


def test_paper_recipe_with_the_cpu_standin_overlay_plans_the_same_graph():
    from realchat.engine.build import plan

    base, small = load_recipe(PAPER), load_recipe(PAPER, overlays=[STANDIN])
    assert [(p.name, p.kind, p.parents) for p in plan(small)] == [(p.name, p.kind, p.parents) for p in plan(base)]
    b, s = base.recipe.steps, small.recipe.steps
    # only models, sizes, endpoints and hardware differ; modes, references, intents, seeds stay
    assert s["sim_seeded"].mode == "seeded" and s["sim_seeded"].seeds == b["sim_seeded"].seeds
    assert s["sim_free"].intent.dataset == b["sim_free"].intent.dataset
    assert s["evaluate"].equal_size and s["evaluate"].benchmark.modes == b["evaluate"].benchmark.modes
    assert s["usergpt"].fsdp is None and b["usergpt"].fsdp == "full_shard auto_wrap"
    assert s["sim_free"].answerer.base_url.startswith("http://127.0.0.1:")
    # the aliased answerer of the other simulations is not the overlay's business unless it says so
    assert all(s[k].answerer.base_url == s["sim_free"].answerer.base_url for k in ("sim_seeded", "sim_roleplay"))
    assert b["sim_free"].answerer.base_url == "https://api.openai.com/v1"
    assert any(o.startswith("steps.usergpt.base_model=") for o in small.overrides)  # recorded for lineage
    assert small.sha256 != base.sha256


def test_a_key_path_under_an_alias_changes_one_place(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsteps:\n  a: &shared {kind: curate, source: {format: sharegpt, path: x.json}}\n"
                      "  b: *shared\n")
    overlay = tmp_path / "o.yaml"
    overlay.write_text("steps.b.source.limit: 5\n")
    loaded = load_recipe(recipe, overlays=[overlay])
    assert loaded.data["steps"]["b"]["source"]["limit"] == 5 and "limit" not in loaded.data["steps"]["a"]["source"]


@pytest.mark.parametrize("text, key, said", [
    ("steps.usergtp.base_model: x\n", "steps.usergtp.base_model", "has no steps.usergtp"),
    ("steps.usergpt.intent.summarizer.backend.modle: x\n", "steps.usergpt.intent.summarizer.backend.modle",
     "set by the overlay"),
    ("steps.evaluate.benchmark.models[9].backend: {kind: local}\n", "steps.evaluate.benchmark.models[9].backend",
     "has no steps.evaluate.benchmark.models.9"),
    ("- steps.a\n", None, "expected a mapping of key paths"),
])
def test_overlay_errors_name_the_file_and_key_path(tmp_path, text, key, said):
    overlay = tmp_path / "bad-overlay.yaml"
    overlay.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(PAPER, overlays=[overlay])
    message = err.value.render()
    assert said in message and (key is None or key in message)
    assert "bad-overlay.yaml" in message
    r = runner.invoke(app, ["plan", str(PAPER), "--overlay", str(overlay)])
    assert r.exit_code == 2 and "bad-overlay.yaml" in r.output and "Traceback" not in r.output


def test_set_wins_over_the_overlay_and_plan_json_shows_it(tmp_path):
    r = runner.invoke(app, ["plan", str(PAPER), "--overlay", str(STANDIN), "--set", "steps.sim_free.conversations=7",
                            "--json"])
    assert r.exit_code == 0, r.output
    assert [p["name"] for p in json.loads(r.output)][-1] == "evaluate"
    loaded = load_recipe(PAPER, ["steps.sim_free.conversations=7"], [STANDIN])
    assert loaded.recipe.steps["sim_free"].conversations == 7 and loaded.recipe.steps["sim_seeded"].conversations == 6
    published = yaml.safe_load(loaded.as_published())
    assert published["steps"]["curate"]["source"]["format"] == "sharegpt"
