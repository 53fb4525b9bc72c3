"""Validation errors as a user reads them: the key path they wrote, what was wrong, what would do.

pydantic reports locations with its own bookkeeping in them (the tag of a discriminated union, such as
``language`` in ``filters.4.language.min_confidnce``). :func:`walk` follows a location through the
model classes, drops those tags, and finds the model that owns the last key, so an unknown key gets a
"did you mean" from the keys that model really has.
"""

from __future__ import annotations

import difflib
import reprlib
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Discriminator, Field, Tag
from pydantic.fields import FieldInfo


def _unwrap(ann: Any) -> tuple[Any, list[Any]]:
    """(bare annotation, metadata) of ``Annotated[...]`` (nested ones flattened)."""
    meta: list[Any] = []
    while get_origin(ann) is Annotated:
        meta += list(ann.__metadata__)
        ann = ann.__origin__
    return ann, meta


def _members(ann: Any) -> list[Any]:
    return [a for a in get_args(ann) if a is not type(None)]


def _tag_member(members: list[Any], meta: list[Any], tag: Any) -> Any | None:
    """The member of a discriminated union chosen by ``tag`` (None when the union is not tagged)."""
    field = next((m.discriminator for m in meta if isinstance(m, FieldInfo) and m.discriminator), None)
    callable_disc = any(isinstance(m, Discriminator) for m in meta)
    for member in members:
        bare, mmeta = _unwrap(member)
        if callable_disc and any(isinstance(m, Tag) and m.tag == tag for m in mmeta):
            return bare
        if isinstance(field, str) and isinstance(bare, type) and issubclass(bare, BaseModel):
            f = bare.model_fields.get(field)
            if f is not None and f.default == tag:
                return bare
    return None


def walk(root: Any, loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """(key path as written, model owning the last key) of a pydantic error location."""
    path = ""
    ann: Any = root
    owner: type[BaseModel] | None = None
    parts = list(loc)
    i = 0
    while i < len(parts):
        part = parts[i]
        bare, meta = _unwrap(ann)
        members = _members(bare) if get_origin(bare) is Union or type(bare).__name__ == "UnionType" else []
        if len(members) == 1:
            ann = members[0]
            continue
        if members:
            chosen = _tag_member(members, meta, part)
            if chosen is not None:  # the union's tag: not a key the user wrote
                ann = chosen
                i += 1
                continue
            ann = next((m for m in members if isinstance(_unwrap(m)[0], type)
                        and issubclass(_unwrap(m)[0], BaseModel)), members[0])
            continue
        if isinstance(bare, type) and issubclass(bare, BaseModel):
            owner = bare
            path += ("." if path else "") + str(part)
            field = bare.model_fields.get(part) if isinstance(part, str) else None
            ann = field.annotation if field is not None else Any
            if field is not None and (field.metadata or field.discriminator):
                # pydantic moves a field's own ``Field(discriminator=...)`` off the annotation: put it
                # back, so the union's tag (``answerer.openai.base_url``) is dropped from the path
                disc = [Field(discriminator=field.discriminator)] if field.discriminator else []
                ann = Annotated[(ann, *field.metadata, *disc)]
        elif get_origin(bare) in (list, tuple) and isinstance(part, int):
            path += f"[{part}]"
            args = get_args(bare)
            ann = args[0] if args else Any
        elif get_origin(bare) is dict:
            path += ("." if path else "") + str(part)
            args = get_args(bare)
            ann = args[1] if len(args) == 2 else Any
        else:
            path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
            ann = Any
        i += 1
    return path, owner


def describe(root: Any, error: dict[str, Any], prefix: str = "") -> str:
    """One line for one pydantic error: ``key.path: what was wrong``."""
    loc = tuple(error["loc"])
    path, owner = walk(root, loc)
    path = ".".join(p for p in (prefix, path) if p) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        known = sorted(owner.model_fields) if owner else []
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        msg = "unknown key"
        if guess:
            msg += f"; did you mean {guess[0]!r}?"
        if known:
            msg += f" (expected one of: {', '.join(known)})"
    elif kind == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        msg = (f"unknown {str(ctx.get('discriminator', 'tag')).strip(chr(39))} {ctx.get('tag')!r}; "
               f"expected one of: {ctx.get('expected_tags')}")
    elif kind == "union_tag_not_found":
        ctx = error.get("ctx") or {}
        msg = f"missing {str(ctx.get('discriminator', 'tag')).strip(chr(39))!r}"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "dataset_ref":
        msg = f"{error['msg']} (got {_short_repr(error.get('input'))})"
    else:
        msg = f"{str(error['msg']).removeprefix('Value error, ')} (got {_short_repr(error.get('input'))})"
    return f"{path}: {msg}"


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 120, 120, 3


def _short_repr(value: Any) -> str:
    """The offending value, cut short: a pasted list or a deep structure never floods the message."""
    return _REPR.repr(value)


def format_errors(lines: list[str]) -> str:
    return "invalid recipe\n  " + "\n  ".join(lines)
