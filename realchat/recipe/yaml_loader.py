"""The YAML loader for recipes and ``--set`` values: PyYAML's safe loader that refuses duplicate keys.

YAML says keys of a mapping are unique, but PyYAML keeps the last of two silently: a second
``curate:`` block replaced the first and dropped all its filters without a word. Here a duplicate is
an error naming both lines. Merge keys (``<<: *base``) may still be overridden, as YAML intends.
Being the safe loader, it never builds Python objects from tags (``!!python/object`` is an error).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping holds the same key twice; ``first_line`` and ``line`` are 1-based."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        self.key, self.first_line, self.line = key, first.line + 1, again.line + 1
        super().__init__(None, None, f"duplicate key {key!r} at line {self.line} (first at line "
                         f"{self.first_line}); a repeated key would silently replace the first", again)


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`DuplicateKeyError` on a repeated mapping key."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
                if first is not key_node.start_mark:
                    raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


#: Values a recipe may hold once its aliases are expanded; far above any real recipe.
MAX_EXPANDED_VALUES = 1_000_000


class AliasBombError(yaml.YAMLError):
    """Aliases that expand to more values than any recipe has ("billion laughs")."""


def expanded_size(value: Any, limit: int = MAX_EXPANDED_VALUES) -> int:
    """How many values ``value`` holds with every alias expanded, counted without expanding (each
    shared list or mapping is sized once); stops counting past ``limit``."""
    memo: dict[int, int] = {}

    def size(v: Any) -> int:
        if not isinstance(v, (list, dict)):
            return 1
        if id(v) not in memo:
            memo[id(v)] = 0  # a cycle (an alias inside its own anchor) counts once
            children = list(v.keys()) + list(v.values()) if isinstance(v, dict) else v
            total = 1
            for c in children:
                total += size(c)
                if total > limit:
                    break
            memo[id(v)] = total
        return memo[id(v)]

    return size(value)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`UniqueKeyLoader`; refuse aliases that expand past
    :data:`MAX_EXPANDED_VALUES` values (every later step — error messages, fingerprints, the copy of
    the recipe beside each output — would expand them)."""
    data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    if expanded_size(data) > MAX_EXPANDED_VALUES:
        raise AliasBombError(f"its aliases (*name) expand to more than {MAX_EXPANDED_VALUES:,} values")
    return data
