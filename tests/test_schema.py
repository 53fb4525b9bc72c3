"""The recipe JSON Schema: every key documented, and the shipped ``realchat.schema.json`` (the file the
recipes' ``# yaml-language-server: $schema=`` line points at) equal to what ``realchat schema`` prints.

Generic on purpose: a field added to any step kind, op, backend or the top level is walked too."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from realchat.cli import app
from realchat.recipe.load import json_schema

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "realchat.schema.json"
REGENERATE = "regenerate it: PYTHONPATH=. python -m realchat.cli schema > realchat.schema.json"


def properties(node, path=""):
    """Every (key path, property schema) of every object in the schema."""
    if isinstance(node, dict):
        for key, prop in (node.get("properties") or {}).items():
            if isinstance(prop, dict):
                yield f"{path}.{key}", prop
        for key, value in node.items():
            yield from properties(value, f"{path}/{key}")
    elif isinstance(node, list):
        for value in node:
            yield from properties(value, path)


def test_every_field_has_a_description():
    schema = json_schema()
    props = list(properties(schema))
    assert len(props) > 150  # the whole recipe: top level, four kinds, ten ops, backends, refs
    missing = [p for p, prop in props if not str(prop.get("description") or "").strip()]
    assert not missing, ("fields without a description (add a `#:` comment above the field): "
                         + ", ".join(missing))
    # the `#:` comments are what the schema says
    assert "held_out" in schema["$defs"]["CurateConfig"]["properties"]["held_out_share"]["description"]
    assert schema["properties"]["name"]["description"].startswith("Slug used for the run folder")
    # references carry examples of each form
    base = schema["$defs"]["SftConfig"]["properties"]["base_model"]
    assert "usergpt" in base["examples"] and {"step": "curate", "split": "held_out"} in \
        schema["$defs"]["SftConfig"]["properties"]["dataset"]["examples"]


def test_shipped_schema_is_what_realchat_schema_prints():
    r = CliRunner().invoke(app, ["schema"])
    assert r.exit_code == 0, r.output
    assert SHIPPED.is_file(), f"{SHIPPED} is missing; {REGENERATE}"
    assert json.loads(SHIPPED.read_text()) == json.loads(r.stdout), f"{SHIPPED.name} is stale; {REGENERATE}"


def test_recipes_point_at_the_shipped_schema():
    import yaml

    # overlays (`realchat build RECIPE --overlay FILE`) are key paths, not recipes: the schema is not theirs
    recipes = [r for r in sorted((ROOT / "recipes").rglob("*.yaml")) if "steps" in (yaml.safe_load(r.read_text()) or {})]
    assert recipes
    for recipe in recipes:
        first = recipe.read_text().splitlines()[0]
        m = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert m, f"{recipe}: first line should name the schema"
        assert (recipe.parent / m.group(1)).resolve() == SHIPPED.resolve(), recipe
