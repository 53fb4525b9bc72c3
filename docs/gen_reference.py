"""The reference pages of every recipe key and every curation op, generated at docs build time.

They are written from the JSON Schema that ``realchat schema`` prints (``realchat.recipe.load.json_schema``),
whose descriptions are the ``#:`` comments above each field (``realchat/recipe/docs.py``), and from the
op classes' docstrings (``realchat.curation.ops.REGISTRY``). Nothing here is typed by hand, so the site
cannot say something the code does not: a new key shows up with its comment, a removed one disappears.

Used two ways: as an MkDocs hook (``hooks:`` in ``mkdocs.yml``; :func:`on_files` adds the pages to the
build without writing into the source tree), and by ``tests/test_docs_reference.py``, which checks that
the pages cover every key and every op. ``python docs/gen_reference.py OUT_DIR`` writes them to a folder.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

RECIPE_PAGE = "reference/recipe.md"
OPS_PAGE = "reference/ops.md"


def anchor(def_name: str) -> str:
    """The anchor of a schema definition's section (an op's ``Params`` is its op's section)."""
    op = op_of_def(def_name)
    return f"op-{op}" if op else def_name.lower()


def op_of_def(def_name: str) -> str | None:
    """``realchat__curation__ops__language__Params`` → ``language`` (pydantic's name for a class whose
    simple name is shared); ``None`` for anything that is not an op's parameters."""
    from realchat.curation.ops import REGISTRY

    for op, cls in REGISTRY.items():
        if def_name in (cls.Params.__name__, f"{cls.Params.__module__}.{cls.Params.__qualname__}".replace(".", "__")):
            return op
    return None


def page_of_def(def_name: str) -> str:
    return OPS_PAGE if op_of_def(def_name) else RECIPE_PAGE


def link(def_name: str, here: str) -> str:
    target = page_of_def(def_name)
    name = op_of_def(def_name) or def_name
    prefix = "" if target == here else target.rsplit("/", 1)[-1]
    return f"[`{name}`]({prefix}#{anchor(def_name)})"


def type_of(prop: dict[str, Any], here: str) -> str:
    """A short, readable type of a property (references become links to their section)."""
    if "$ref" in prop:
        return link(prop["$ref"].rsplit("/", 1)[-1], here)
    for union in ("anyOf", "oneOf"):
        if union in prop:
            parts = [type_of(p, here) for p in prop[union]]
            return " or ".join(dict.fromkeys(parts))
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " or ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    kind = prop.get("type")
    if kind == "array":
        return f"list of {type_of(prop.get('items') or {}, here)}"
    if kind == "object":
        extra = prop.get("additionalProperties")
        return f"map of {type_of(extra, here)}" if isinstance(extra, dict) and extra else "mapping"
    if kind == "null":
        return "null"
    return str(kind) if kind else "any"


def cell(text: str) -> str:
    """A table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def default_of(prop: dict[str, Any], required: bool) -> str:
    if required:
        return "**required**"
    if "default" not in prop:
        return ""
    return f"`{cell(json.dumps(prop['default'], ensure_ascii=False))}`"


def table(node: dict[str, Any], here: str) -> str:
    """One row per key of a schema object: key, type, default, description (its ``#:`` comment)."""
    required = set(node.get("required") or [])
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for key, prop in (node.get("properties") or {}).items():
        rows.append(f"| `{key}` | {cell(type_of(prop, here))} | {default_of(prop, key in required)} | "
                    f"{cell(prop.get('description') or '')} |")
    return "\n".join(rows)


def _doc(obj: Any) -> str:
    """A class's docstring, else its module's (each op's module says what the op does and why), with
    reStructuredText's double backticks made markdown's single ones."""
    text = obj.__doc__ or (sys.modules[obj.__module__].__doc__ if hasattr(obj, "__module__") else "") or ""
    return inspect.cleandoc(text).strip().replace("``", "`")


def reference_pages() -> dict[str, str]:
    """``{path below docs/: markdown}`` for the recipe reference and the op reference."""
    from realchat.curation.ops import REGISTRY
    from realchat.recipe.load import json_schema
    from realchat.steps import registry

    schema = json_schema()
    defs = schema.get("$defs") or {}
    kinds = {k: registry.get(k) for k in registry.KINDS}
    kind_defs = {kind.Config.__name__: name for name, kind in kinds.items()}
    op_defs = {d for d in defs if op_of_def(d)}

    here = RECIPE_PAGE
    out = ["# Recipe reference", "",
           "Every key a recipe can hold, with its type, its default and what it means. This page is generated "
           "when the docs are built, from the same `#:` comments above each field that `realchat schema` "
           "writes into `realchat.schema.json` (the schema your editor completes from), so it cannot drift "
           "from the code. Curation ops (the entries of a curate step's `filters`) have "
           f"[their own page](ops.md).", "",
           "## Top level {#recipe}", "", schema.get("description") or "", "", table(schema, here), "",
           "## Step kinds", "",
           "`steps:` maps a name you choose to one step; its `kind` picks which of these configs applies.", ""]
    for name, kind in kinds.items():
        def_name = kind.Config.__name__
        out += [f"### `{name}` {{#{anchor(def_name)}}}", "", f"{kind.summary}." if getattr(kind, "summary", "") else "",
                "", cell(defs.get(def_name, {}).get("description") or _doc(kind.Config)), "",
                table(defs.get(def_name, {}), here), ""]
    out += ["## Shared types", "",
            "Models that several keys above use: backends, sampling, dataset references, and the like.", ""]
    for def_name in sorted(d for d in defs if d not in kind_defs and d not in op_defs):
        node = defs[def_name]
        if not node.get("properties"):
            continue
        out += [f"### `{def_name}` {{#{anchor(def_name)}}}", "", cell(node.get("description") or ""), "",
                table(node, here), ""]
    recipe_md = "\n".join(out)

    here = OPS_PAGE
    ops = ["# Curation op reference", "",
           "Every op a curate step's `filters:` list can run, in the order of the registry, with its "
           "parameters. Generated at build time from the op classes' docstrings and the `#:` comments of "
           "their `Params` (the same text as `realchat schema`); the [curate step](../steps/curate.md) "
           "explains how the ops work together.", ""]
    by_op = {op_of_def(d): d for d in op_defs}
    for op, cls in REGISTRY.items():
        def_name = by_op.get(op)
        ops += [f"## `{op}` {{#op-{op}}}", "", _doc(cls), ""]
        if def_name:
            ops += [table(defs[def_name], here), ""]
    return {RECIPE_PAGE: recipe_md, OPS_PAGE: "\n".join(ops)}


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: add the generated pages to the build (nothing is written into ``docs/``)."""
    from mkdocs.structure.files import File

    for path, text in reference_pages().items():
        files.append(File.generated(config, path, content=text))
    return files


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs-generated")
    for path, text in reference_pages().items():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).write_text(text, encoding="utf-8")
        print(target / path)
