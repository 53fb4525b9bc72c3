"""Secrets out of everything RealChat stores or prints.

Two kinds of secret are removed:

* **Known secrets**: the values of the environment variables that hold credentials (``HF_TOKEN``,
  ``HUGGING_FACE_HUB_TOKEN``, ``OPENAI_API_KEY``, and every backend's ``api_key_env``, registered when
  the backend is opened) and the Hub token ``hf auth login`` stored. These are replaced wherever they
  occur, in content too: a model's answer (:class:`realchat.models.backends.Generation`, the one type
  every backend returns, scrubs its text and error) and everything the CLI prints (every command runs
  with its standard streams passed through :func:`redacted_streams`). An answerer that echoes its key
  into a conversation therefore writes ``[redacted]`` into the parquet, the ShareGPT export, the
  manifest samples and the card.
* **Credential-shaped text** in error texts (:func:`redact`): a ``Bearer`` value, an
  ``Authorization``/``api_key``/``token`` field's value, and the prefixed key formats of common
  providers (``sk-…``, ``hf_…``, ``ghp_…``, ``xox…``, ``AKIA…``). Only errors get this: a conversation
  about "Bearer tokens" keeps its words.

A value shorter than :data:`MIN_SECRET_CHARS` is not taken for a secret (``OPENAI_API_KEY=EMPTY``, as
vLLM's docs suggest, must not blank the word "EMPTY" out of every conversation).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

REDACTED = "[redacted]"

#: Environment variables whose values are credentials, whatever the recipe says.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")
#: Shorter values are placeholders (``EMPTY``, ``none``), not secrets.
MIN_SECRET_CHARS = 8

_secret_env: set[str] = set(SECRET_ENV)

_PATTERNS = [
    # "Authorization: Bearer abc", "'authorization': 'Basic abc'", "Bearer abc"
    re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=\-]{6,}"),
    # key: value / "key": "value" pairs whose name says secret
    re.compile(r"(?i)([\"']?(?:authorization|api[_-]?key|x-api-key|access[_-]?token|secret|password|token)"
               r"[\"']?\s*[:=]\s*[\"']?)([^\"'\s,}]{4,})"),
    # provider key formats
    re.compile(r"\b(?:sk|pk|rk)-(?:proj-|ant-)?[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{8,}"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{12,}"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{8,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
]


def register_secret_env(name: str) -> None:
    """Treat the value of environment variable ``name`` as a secret from now on (a backend's
    ``api_key_env``, when the backend is opened)."""
    _secret_env.add(name)


def _stored_hub_token() -> str | None:
    """The token ``hf auth login`` stored, where huggingface_hub is in use (only then can it be sent,
    and so echoed)."""
    if "huggingface_hub" not in sys.modules:
        return None
    try:
        from huggingface_hub import constants

        with open(constants.HF_TOKEN_PATH, encoding="utf-8") as f:
            return f.read().strip() or None
    except (OSError, ImportError, AttributeError, UnicodeError):
        return None


def known_secrets() -> list[str]:
    """Every known secret value, longest first (so a key that contains another is replaced whole)."""
    values = {os.environ.get(name, "") for name in _secret_env}
    values.add(_stored_hub_token() or "")
    return sorted((v for v in values if len(v) >= MIN_SECRET_CHARS), key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the known secrets (and ``secrets``) replaced; nothing else changed. For content
    (a model's answer, a printed line): credential-shaped words that are nobody's key stay."""
    if not text:
        return text
    for s in sorted({*known_secrets(), *(s for s in secrets if s and len(s) >= 4)}, key=len, reverse=True):
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def redact(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    """An error text without the known secrets, the given ``secrets`` (exact values, 4+ characters)
    and credential-shaped substrings. ``None`` stays ``None`` so it can wrap optional error fields."""
    if text is None:
        return None
    text = scrub(text, secrets)
    for i, pat in enumerate(_PATTERNS):
        if i == 1:  # keep the field name, drop its value
            text = pat.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pat.sub(lambda m: (m.group(1) + " " + REDACTED) if m.lastindex else REDACTED, text)
    return text


class RedactedStream:
    """A text stream that writes through to another with the known secrets scrubbed; everything else
    (``isatty``, ``fileno``, ``encoding``) is the wrapped stream's, so terminals and progress bars
    behave as before."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(scrub(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def redacted_streams() -> Iterator[None]:
    """Run with ``sys.stdout`` and ``sys.stderr`` scrubbed of known secrets (the CLI runs every
    command inside this: print, rich consoles and warnings all write through these streams)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactedStream(saved[0]), RedactedStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
