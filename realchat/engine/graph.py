"""The recipe as a graph: steps are nodes, references that name a step are edges.

The engine finds a step's inputs by the *types* of its config's fields (``ModelRef``, ``DatasetRef``,
``FileRef``, ``ChatTemplateRef``; see :mod:`realchat.recipe.refs`), so any kind's inputs are wired the same way. Building
the graph checks every reference: a missing step, a cycle, a dataset where a model is needed, a file
that is not there — each one error naming the key path, before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from realchat.errors import RecipeError
from realchat.models.chat_formats import is_builtin
from realchat.recipe.base import PACKAGE_PREFIX_HINT, StepConfig
from realchat.recipe.refs import (
    FileData,
    RefRole,
    HubData,
    ResolvedData,
    StepData,
    as_dataset,
    input_problem,
    looks_like_hub_id,
    ref_role,
    resolve_local,
)
from realchat.recipe.schema import LoadedRecipe

NEEDS = {"model": "model", "dataset": "conversations"}


@dataclass
class Edge:
    """One input of a step: where it is written (``key``), what it must be, what it resolved to."""

    key: str
    role: str  # model | dataset | file
    value: Any
    #: The step it names, when it names one.
    step: str | None = None
    #: The explicit dataset reference (datasets only).
    data: ResolvedData | None = None


@dataclass
class Node:
    name: str
    kind: str
    config: StepConfig
    inputs: list[Edge] = field(default_factory=list)

    @property
    def parents(self) -> list[str]:
        """Steps this one reads, in the order its config names them, each once."""
        return list(dict.fromkeys(e.step for e in self.inputs if e.step))

    def edge(self, key: str) -> Edge:
        for e in self.inputs:
            if e.key == key:
                return e
        raise KeyError(f"{self.name} has no input at {key!r}")


@dataclass
class Graph:
    nodes: dict[str, Node]
    #: Steps in an order where every parent comes before its children (ties: recipe order).
    order: list[str]

    def children(self, name: str) -> list[str]:
        return [n for n in self.order if name in self.nodes[n].parents]

    def downstream(self, name: str) -> list[str]:
        """``name`` and every step that depends on it, directly or not, in build order."""
        seen = {name}
        for n in self.order:
            if any(p in seen for p in self.nodes[n].parents):
                seen.add(n)
        return [n for n in self.order if n in seen]

    def upstream(self, name: str) -> list[str]:
        """Every step ``name`` depends on, and ``name``, in build order."""
        need = {name}
        for n in reversed(self.order):
            if n in need:
                need.update(self.nodes[n].parents)
        return [n for n in self.order if n in need]


def references(config: BaseModel, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """(key path, role, value) of every reference field set in ``config``, found by field type."""
    for name, f in type(config).model_fields.items():
        value = getattr(config, name)
        if value is None:
            continue
        key = f"{prefix}{name}"
        role = ref_role(f.annotation) or next((m.role for m in f.metadata if isinstance(m, RefRole)), None)
        if role is not None and not isinstance(value, (list, dict)):
            yield key, role, value
            continue
        yield from _walk_value(value, key)


def _walk_value(value: Any, key: str) -> Iterator[tuple[str, str, Any]]:
    if isinstance(value, BaseModel):
        yield from references(value, f"{key}.")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk_value(v, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_value(v, f"{key}.{k}")


def build_graph(loaded: LoadedRecipe) -> Graph:
    """Resolve every step's references; raise RecipeError (with the key path) on the first bad one."""
    steps = loaded.recipe.steps
    names = set(steps)
    file = str(loaded.path)
    nodes: dict[str, Node] = {}
    for name, cfg in steps.items():
        node = Node(name, cfg.kind, cfg)
        for key, role, value in references(cfg):
            where = f"steps.{name}.{key}"
            edge = Edge(key, role, value)
            if role == "dataset":
                edge.data = as_dataset(value, names)
                if edge.data is None:
                    raise RecipeError(
                        f"{value!r} is neither a step of this recipe nor a Hub dataset id",
                        file=file, field=where,
                        hint=f"steps: {', '.join(steps)}; a file is written {{path: …, format: sharegpt}}")
                if isinstance(edge.data, StepData):
                    edge.step = edge.data.step
                elif isinstance(edge.data, FileData):
                    _must_exist(loaded, edge.data.path, f"{where}.path", "file", edge.data.format)
            elif role == "model":
                if value in names:
                    edge.step = value
                else:
                    _check_model(loaded, value, where)
            elif role == "template":
                if is_builtin(value):
                    continue  # RealChat's own format: its text is versioned with the package
                _must_exist(loaded, value, where, "chat template")
            else:
                _must_exist(loaded, value, where, "file")
            if edge.step is not None:
                _check_target(loaded, name, edge, where)
            node.inputs.append(edge)
        nodes[name] = node
    return Graph(nodes, _order(loaded, nodes))


def _check_target(loaded: LoadedRecipe, name: str, edge: Edge, where: str) -> None:
    target = edge.step
    assert target is not None
    if target not in loaded.recipe.steps:
        raise RecipeError(f"no step named {target!r} (steps: {', '.join(loaded.recipe.steps)})",
                          file=str(loaded.path), field=where)
    if target == name:
        raise RecipeError(f"step {name} reads its own output", file=str(loaded.path), field=where)
    produces = type(loaded.recipe.steps[target]).produces
    needed = NEEDS[edge.role]
    if produces != needed:
        what = {"model": "a model", "conversations": "a dataset of conversations", "report": "a report"}
        raise RecipeError(
            f"{target!r} is {_article(loaded.recipe.steps[target].kind)} {loaded.recipe.steps[target].kind} step: it makes {what[produces]}, "
            f"but {what[needed]} is needed here", file=str(loaded.path), field=where)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeios" else "a"


def _resolve(loaded: LoadedRecipe, ref: str, where: str) -> Path:
    try:
        return resolve_local(ref, loaded.base_dir)
    except RecipeError as e:  # a pkg:// reference that cannot name a package file
        e.file, e.field = str(loaded.path), where
        raise


def _check_model(loaded: LoadedRecipe, ref: str, where: str) -> None:
    p = _resolve(loaded, ref, where)
    problem = input_problem(p)
    if problem == "not found" and not looks_like_hub_id(ref):
        raise RecipeError(f"model not found: {p} (neither a step of this recipe, a file, a folder nor a Hub "
                          "model id)", file=str(loaded.path), field=where, hint=PACKAGE_PREFIX_HINT)
    if problem not in (None, "not found"):
        raise RecipeError(f"{p}: {problem}", file=str(loaded.path), field=where)
    if problem is None and (p / "config.json").is_file():  # a model folder: what loading it needs is there
        from realchat.models.folder_check import model_folder_problem

        broken = model_folder_problem(p)
        if broken:
            raise RecipeError(f"{p}: {broken}", file=str(loaded.path), field=where)


def _must_exist(loaded: LoadedRecipe, ref: str, where: str, what: str, fmt: str | None = None) -> None:
    p = _resolve(loaded, ref, where)
    problem = input_problem(p, fmt)
    if problem == "not found":
        raise RecipeError(f"{what} not found: {p}", file=str(loaded.path), field=where, hint=PACKAGE_PREFIX_HINT)
    if problem is not None:
        raise RecipeError(f"{p}: {problem}", file=str(loaded.path), field=where)


def _order(loaded: LoadedRecipe, nodes: dict[str, Node]) -> list[str]:
    """Topological order (parents first, ties in recipe order); a cycle is an error naming it."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            edge = next(e for e in nodes[cycle[-2]].inputs if e.step == name)
            raise RecipeError(f"steps form a cycle: {' → '.join(reversed(cycle))}", file=str(loaded.path),
                              field=f"steps.{cycle[-2]}.{edge.key}")
        state[name] = 1
        for parent in nodes[name].parents:
            visit(parent, path + [name])
        state[name] = 2
        order.append(name)

    for name in nodes:
        visit(name, [])
    return order


__all__ = ["Edge", "Graph", "HubData", "Node", "build_graph", "references"]
