"""Loading a recipe: YAML → ``--overlay`` files → ``--set`` overrides → each step validated by its kind's config.

An overlay is "the same recipe, smaller" (or bigger): a YAML mapping of ``--set``-style key paths to
values, kept in a file beside the recipe (``recipes/paper/cpu-standin.yaml``). It may only change
what the base recipe already has (a key path whose parent does not exist in the base is an error
naming the overlay file and the key), so an overlay cannot silently add a step or drift from a
renamed one; the values are applied in the file's order, before any ``--set``.

Validation is strict: an unknown key, a wrong type, a bad value, an unknown kind or a missing file is
reported as one :class:`~realchat.errors.RecipeError` naming the recipe file, the key path
(``steps.curate.filters[2].min_confidence``) and what was expected; the CLI prints it and exits 2.
References between steps are checked when the engine builds the graph (:mod:`realchat.engine.graph`).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from realchat.errors import RecipeError, user_file
from realchat.recipe.base import StepConfig
from realchat.recipe.messages import _short_repr, describe, format_errors
from realchat.recipe.schema import LoadedRecipe, Recipe
from realchat.recipe.yaml_loader import AliasBombError, DuplicateKeyError, load_yaml
from realchat.steps import registry


def load_recipe(path: str | Path, overrides: list[str] | None = None,
                overlays: list[str | Path] | None = None) -> LoadedRecipe:
    """Read, overlay (``--overlay FILE``), override (``--set key.path=value``) and validate a recipe;
    raise RecipeError if bad."""
    path = Path(path)
    overrides = list(overrides or [])
    if not path.is_file():
        raise RecipeError("recipe file not found", file=str(path))
    with user_file(path, doing="cannot read the recipe"):
        text = path.read_text(encoding="utf-8")
    try:
        with user_file(path, doing="cannot read the recipe"):  # RecursionError on deep nesting
            data = load_yaml(text)
    except AliasBombError as e:
        raise RecipeError(f"not a usable recipe: {e}", file=str(path)) from None
    except DuplicateKeyError as e:
        raise RecipeError(f"line {e.line}: duplicate key {e.key!r} (first at line {e.first_line}); a repeated "
                          "key would silently replace the first", file=str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(f"{where}not valid YAML ({getattr(e, 'problem', e)})", file=str(path)) from None
    if not isinstance(data, dict):
        raise RecipeError("expected a mapping at the top level (name:, steps:)", file=str(path))
    from_overlays: list[str] = []
    sources: dict[tuple[str | int, ...], str] = {}
    for overlay in overlays or []:
        data, items = apply_overlay(data, Path(overlay), str(path))
        from_overlays += items
        for item in items:
            sources[tuple(parse_key_path(item.partition("=")[0]))] = str(overlay)
    given: dict[tuple[str | int, ...], str] = {}
    for item in overrides:
        key = tuple(parse_key_path(item.partition("=")[0].strip()))
        if key in given:  # the same key twice: which one was meant is a guess, so say so
            raise RecipeError(f"--set {item!r}: the key path was already set by --set {given[key]!r}",
                              file=str(path))
        given[key] = item
        data = apply_override(data, item, str(path))
    try:
        recipe = validate(data, str(path))
    except RecipeError as e:
        if sources:
            raise name_overlay_keys(e, sources) from None
        raise
    return LoadedRecipe(recipe, path, text, from_overlays + overrides, data)


def apply_overlay(data: dict[str, Any], overlay: Path, recipe: str) -> tuple[dict[str, Any], list[str]]:
    """(the recipe with the overlay's values, the overlay as ``key=value`` items for lineage).

    The file is a mapping of key paths (``steps.usergpt.base_model``) to YAML values. Each key path's
    parent must exist in the recipe (the last key may be new: ``steps.curate.source.limit``); errors
    name the overlay file and the key path."""
    if not overlay.is_file():
        raise RecipeError("overlay file not found", file=str(overlay), hint=f"--overlay of {recipe}")
    with user_file(overlay, doing="cannot read the overlay"):
        text = overlay.read_text(encoding="utf-8")
    try:
        with user_file(overlay, doing="cannot read the overlay"):
            doc = load_yaml(text)
    except DuplicateKeyError as e:
        raise RecipeError(f"line {e.line}: duplicate key {e.key!r} (first at line {e.first_line})",
                          file=str(overlay)) from None
    except (yaml.YAMLError, AliasBombError) as e:
        raise RecipeError(f"not valid YAML ({getattr(e, 'problem', e)})", file=str(overlay)) from None
    if doc is None:
        return data, []
    data = unshared(data)
    if not isinstance(doc, dict):
        raise RecipeError("expected a mapping of key paths to values (steps.usergpt.base_model: …)",
                          file=str(overlay))
    items = []
    for key, value in doc.items():
        parts = parse_key_path(str(key))
        if not parts or ".".join(str(p) for p in parts) != str(key).replace("[", ".").replace("]", ""):
            raise RecipeError("not a key path (name.name[0].name)", file=str(overlay), field=str(key))
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            ok = (isinstance(node, dict) and isinstance(part, str) and part in node) or (
                isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
            if not ok:
                where = ".".join(str(p) for p in parts[: i + 1])
                raise RecipeError(f"the recipe {recipe} has no {where}: an overlay changes what the recipe has "
                                  "(it cannot add steps or sections)", file=str(overlay), field=str(key))
            node = node[part]
        last = parts[-1]
        if not (isinstance(node, dict) and isinstance(last, str)) and not (
                isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node)):
            raise RecipeError(f"the recipe {recipe} has nothing to set there", file=str(overlay), field=str(key))
        node[last] = copy.deepcopy(value)
        items.append(f"{key}={json.dumps(value, ensure_ascii=False, default=str)}")
    return data, items


def unshared(node: Any) -> Any:
    """A copy in which no two places are one object. A YAML alias (``*answerer``) loads as the anchor's
    very object, and ``copy.deepcopy`` keeps that sharing; a key path names one place, so setting it
    must not change the other places the alias was written."""
    if isinstance(node, dict):
        return {k: unshared(v) for k, v in node.items()}
    if isinstance(node, list):
        return [unshared(v) for v in node]
    return copy.deepcopy(node)


def name_overlay_keys(error: RecipeError, sources: dict[tuple[str | int, ...], str]) -> RecipeError:
    """The validation error, each line whose key path an overlay set (or lies under one) naming that
    overlay file: the mistake is there, not in the recipe."""
    lines = error.message.split("\n")
    out = []
    for line in lines:
        key = line.strip().split(":", 1)[0]
        parts = tuple(parse_key_path(key))
        owner = next((f for k, f in sources.items() if parts[: len(k)] == k), None)
        out.append(f"{line} (set by the overlay {owner})" if owner and line.startswith("  ") else line)
    return RecipeError("\n".join(out), file=error.file, field=error.field, hint=error.hint)


def validate(data: dict[str, Any], file: str) -> Recipe:
    """The recipe model, each step validated by the config of its ``kind``; all errors at once."""
    lines: list[str] = []
    raw_steps = data.get("steps")
    typed: dict[str, StepConfig] = {}
    if isinstance(raw_steps, dict):
        for name, raw in raw_steps.items():
            where = f"steps.{name}"
            if not isinstance(raw, dict):
                lines.append(f"{where}: expected a mapping with a kind (got {raw!r})")
                continue
            kind = raw.get("kind")
            if not isinstance(kind, str) or kind not in registry.KINDS:
                said = "missing kind" if kind is None else f"unknown kind {_short_repr(kind)}"
                lines.append(f"{where}.kind: {said}; expected one of: {', '.join(registry.KINDS)}")
                continue
            config_cls = registry.get(kind).Config
            try:
                typed[str(name)] = config_cls.model_validate(raw)
            except ValidationError as e:
                lines += [describe(config_cls, err, where) for err in e.errors()]
    if isinstance(raw_steps, dict) and not raw_steps:
        lines.append("steps: a recipe needs at least one step")
    shell = dict(data)
    if "steps" in data:
        shell["steps"] = typed if isinstance(raw_steps, dict) else raw_steps
    elif "stages" in data:
        raise RecipeError(format_errors(["stages: the fixed chain of stages is gone: declare `steps:`, each with a "
                                         "`kind:` (curate, sft, simulate, evaluate) and its inputs by step name "
                                         "(see recipes/realchat.yaml)"]), file=file)
    try:
        recipe = Recipe.model_validate(shell)
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(err["loc"])
            if isinstance(raw_steps, dict) and loc[:1] == ("steps",):
                if len(loc) == 3 and loc[2] == "[key]":  # a step name that is not a slug
                    lines.append(f"steps.{loc[1]}: bad step name: {str(err['msg']).removeprefix('Value error, ')}")
                # else: the steps' own errors are above; ``steps`` itself is only short of the steps
                # that failed (or empty, said above)
                continue
            lines.append(describe(Recipe, err))
    if lines:
        raise RecipeError(format_errors(lines), file=file)
    return recipe


_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_key_path(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for name, index in _PATH_TOKEN.findall(key):
        parts.append(int(index) if index else name)
    return parts


def apply_override(data: dict, item: str, file: str) -> dict:
    """Apply one ``key.path[2].leaf=value`` override; the value is parsed as YAML."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected key.path=value", file=file)
    key, raw = item.split("=", 1)
    parts = parse_key_path(key.strip())
    if not parts:
        raise RecipeError(f"--set {item!r}: empty key path", file=file)
    try:
        with user_file(file, doing=f"--set {item!r}"):
            value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise RecipeError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', e)})",
                          file=file, field=key) from None
    data = unshared(data)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        try:
            if isinstance(part, int):
                node = node[part]
            else:
                if node.get(part) is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
        except (IndexError, KeyError, TypeError, AttributeError):
            raise RecipeError(f"--set {item!r}: no such key path", file=file, field=key) from None
    last = parts[-1]
    try:
        node[last] = value
    except (IndexError, TypeError):
        raise RecipeError(f"--set {item!r}: no such key path", file=file, field=key) from None
    return data


def json_schema() -> dict[str, Any]:
    """JSON Schema of recipes: the top level, and each registered kind's config under ``steps``."""
    from typing import Annotated, Union

    from pydantic import Field

    configs = [registry.get(k).Config for k in registry.KINDS]
    step_union = Annotated[Union[tuple(configs)], Field(discriminator="kind")]  # type: ignore[valid-type]
    steps_schema = TypeAdapter(step_union).json_schema(ref_template="#/$defs/{model}")
    schema = Recipe.model_json_schema()
    defs = schema.setdefault("$defs", {})
    defs.update(steps_schema.pop("$defs", {}))
    schema["properties"]["steps"] = {"type": "object", "minProperties": 1, "additionalProperties": steps_schema,
                                     "description": "Step name → its config; `kind` picks what the step does."}
    defs.pop("StepConfig", None)
    from realchat.recipe.docs import describe, models_reachable

    describe(schema, models_reachable(Recipe, *configs))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "RealChat recipe"
    json.dumps(schema)  # fails loudly here if anything is not serialisable
    return schema
