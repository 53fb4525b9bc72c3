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


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`UniqueKeyLoader`."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
