"""Secrets out of every error text RealChat stores or prints.

An OpenAI-compatible server may echo the request (its ``Authorization`` header included) in an error
body; RealChat keeps error texts in part files, rejected parquet files and published copies, and
prints the first ones when a step fails. Everything that goes there passes through :func:`redact`,
which removes the keys it knows (the values of the API-key environment variables the recipe names)
and anything shaped like a credential: a ``Bearer`` value, an ``Authorization``/``api_key``/``token``
field's value, and the prefixed key formats of common providers (``sk-…``, ``hf_…``, ``ghp_…``,
``xox…``, ``AKIA…``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"

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


def redact(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    """``text`` without the given ``secrets`` (exact values, 4+ characters) and credential-shaped
    substrings. ``None`` stays ``None`` so it can wrap optional error fields."""
    if text is None:
        return None
    for s in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(s, REDACTED)
    for i, pat in enumerate(_PATTERNS):
        if i == 1:  # keep the field name, drop its value
            text = pat.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pat.sub(lambda m: (m.group(1) + " " + REDACTED) if m.lastindex else REDACTED, text)
    return text
