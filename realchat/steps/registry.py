"""The step kinds a recipe can use: ``kind:`` in a step → its :class:`~realchat.steps.base.StepKind`.

Built-in kinds register below; a plug-in (or a test) registers its own with :func:`register`, and
recipes, the JSON Schema, the engine and the cards take it from there.
"""

from __future__ import annotations

from realchat.steps.base import StepKind

KINDS: dict[str, StepKind] = {}


def register(kind: type[StepKind]) -> type[StepKind]:
    """Make ``kind`` usable as ``kind: <name>`` in recipes (usable as a class decorator)."""
    KINDS[kind.name] = kind()
    return kind


def get(name: str) -> StepKind:
    return KINDS[name]


def _builtin() -> None:
    from realchat.steps.curate import Curate
    from realchat.steps.evaluate import Evaluate
    from realchat.steps.sft import Sft
    from realchat.steps.simulate import Simulate

    for kind in (Curate, Sft, Simulate, Evaluate):
        register(kind)


_builtin()
