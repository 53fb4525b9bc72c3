"""What every reader yields: raw records with their position, or the reason they could not be read.

Readers do not judge content; they only turn bytes into Python objects and say where each came
from. A record that cannot be parsed is still yielded (``error`` set, ``raw`` holding its text) so it
reaches the rejected set instead of vanishing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RawRecord:
    index: int
    data: Any = None
    #: Where the record starts: byte offset (JSON), line number (JSONL) or row number (tables).
    position: str = ""
    raw: str | None = None
    error: str | None = None
    detail: str | None = None


@dataclass
class ReadReport:
    """Facts about one read of a source, for the summary and the card's lineage."""

    path: str
    format: str
    revision: str | None = None
    warnings: list[str] = field(default_factory=list)
    truncated_at_byte: int | None = None


#: A lone surrogate that is not an undecodable byte (those are U+DC80-U+DCFF, ``surrogateescape``'s):
#: JSON's ``"\ud800"`` escape decodes to one, and no UTF-8 encoder takes it.
_LONE_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def printable(text: str) -> str:
    """Text safe to store (parquet needs valid UTF-8): undecodable bytes become ``\\xNN``, lone
    surrogates (JSON ``"\\ud800"``) ``\\ud800``, so a record that carries them can be rejected with
    its raw text instead of stopping the read."""
    text = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
