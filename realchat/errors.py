"""Errors a user can act on.

Every failure that comes from the user's input (a recipe, a data file, a model path) is raised as a
:class:`RealChatError` that names *where* the problem is (file, record, field) and *what* was
expected. The CLI turns these into one clear message and exit code 2 instead of a traceback, so a
user never has to read our stack to find their typo.
"""

from __future__ import annotations


class RealChatError(Exception):
    """A problem with the user's input, reported without a traceback."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        record: str | int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.record = record
        self.field = field
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field is not None:
            where.append(self.field)
        text = (": ".join(where) + ": " if where else "") + self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class RecipeError(RealChatError):
    """The recipe file is invalid (unknown key, wrong type, bad value, missing file)."""


class SourceError(RealChatError):
    """A data source cannot be read at all (as opposed to one bad record, which is rejected)."""


class ModelError(RealChatError):
    """A model or tokenizer reference cannot be resolved or loaded."""
