"""Errors a user can act on.

Every failure that comes from the user's input (a recipe, a data file, a model path) is raised as a
:class:`RealChatError` that names *where* the problem is (file, record, field) and *what* was
expected. The CLI turns these into one clear message and exit code 2 instead of a traceback, so a
user never has to read our stack to find their typo.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


class UserFileError(RealChatError):
    """A file or folder the user named cannot be read or written (OS error, bad encoding, bad format)."""


#: What a user reads for exceptions that carry no words of their own.
_PLAIN_CAUSES = {
    RecursionError: "nested too deeply to read (deeper than Python's recursion limit)",
    MemoryError: "too large to read into memory",
}


def cause(exc: BaseException) -> str:
    """One line saying why reading failed, without the exception's machinery (no repr, no traceback)."""
    for kind, text in _PLAIN_CAUSES.items():
        if isinstance(exc, kind):
            return text
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid {exc.encoding.upper()} text (byte {exc.start}: {exc.object[exc.start:exc.start + 4]!r})"
    mark = getattr(exc, "problem_mark", None)  # PyYAML's errors: where, and what
    if mark is not None and getattr(exc, "problem", None):
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"  # type: ignore[attr-defined]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def from_os_error(exc: OSError, doing: str = "") -> UserFileError:
    """An OS error on a path (missing, a folder, a symlink loop, read-only, full disk) as one line."""
    path = exc.filename if exc.filename is not None else None
    extra = f" (and {exc.filename2})" if exc.filename2 is not None else ""
    return UserFileError((f"{doing}: " if doing else "") + cause(exc) + extra,
                         file=str(path) if path is not None else None)


@contextmanager
def user_file(path: str | Path, record: str | int | None = None, doing: str = "cannot read",
              also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Run a read of a user's file inside a library and report its failure with the file (and record).

    Libraries fail on bad input with their own exceptions and a deep traceback (``json`` raises
    RecursionError on deep nesting, pyarrow ``ArrowInvalid`` on a corrupt page, PyYAML ``YAMLError``);
    wrapping only the read of the user's file, not whole programs, keeps our own bugs visible while
    the user's bad file becomes one line naming it. ``also`` adds a library's own error types.
    """
    try:
        yield
    except RealChatError:
        raise
    except (OSError, UnicodeError, ValueError, RecursionError, MemoryError, *also) as e:
        raise UserFileError(f"{doing}: {cause(e)}", file=str(path), record=record) from None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """A write to ``path`` whose failure on a full, read-only or over-quota disk names the file: a
    plain write on an open file, pyarrow's and polars' own I/O report the condition without a path."""
    try:
        yield
    except RealChatError:
        raise
    except Exception as e:
        disk = _disk_condition(e)
        if disk is None:
            raise
        raise UserFileError(f"cannot write: {disk}", file=str(path),
                            hint="free space (or make the run root writable) and rerun: finished steps "
                                 "and finished parts are kept") from None


def boundary_error(exc: BaseException) -> RealChatError | None:
    """The CLI's one mechanism: an exception that is about the user's files, as a one-line error.

    OS errors (a path that is a file where a folder is needed, a symlink loop, a read-only or full
    disk) name their path themselves; decode errors that escaped a :func:`user_file` wrapper are still
    reported in one line. Anything else is a bug in RealChat and keeps its traceback.
    """
    if isinstance(exc, RealChatError):
        return exc
    if isinstance(exc, OSError):
        return from_os_error(exc)
    if isinstance(exc, (UnicodeError, RecursionError, MemoryError)):
        return UserFileError(f"cannot read input: {cause(exc)}")
    disk = _disk_condition(exc)
    if disk is not None:
        return UserFileError(f"{disk} (while writing: {cause(exc)})",
                             hint="free space (or make the run root writable) and rerun: finished steps are kept")
    return None


#: The OS's own words for a disk that cannot take a write; libraries that write through their own I/O
#: (polars' Rust writer, torch's zip writer) report them inside their own exception types.
_DISK_ERRNOS = [errno.ENOSPC, errno.EROFS, errno.EDQUOT]


def _disk_condition(exc: BaseException) -> str | None:
    """The disk condition (full, read-only, over quota) an exception from a library writer reports."""
    seen = 0
    while exc is not None and seen < 8:
        text = str(exc)
        for code in _DISK_ERRNOS:
            if os.strerror(code) in text:
                return os.strerror(code).lower()
        exc, seen = exc.__cause__ or exc.__context__, seen + 1  # type: ignore[assignment]
    return None
