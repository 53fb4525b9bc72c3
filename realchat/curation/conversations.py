"""From raw records to the canonical conversation: ``messages`` of ``{role, content}``.

Canonical roles are ``user``, ``assistant`` and ``system``, the names chat templates, TRL and
``datasets`` use, so the curated dataset trains without any conversion. Source role names are mapped
by the recipe's ``roles`` table.

Every way a record can be wrong is a named rejection reason with the field it concerns, e.g.
``record.wrong_type`` at ``conversations[3].value``; the record goes to the rejected set with its raw
text, never silently away.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from realchat.curation.sources.base import RawRecord, printable


@dataclass
class Rejection:
    reason: str
    detail: str
    raw: str | None
    conversation_id: str | None = None


def _raw_text(data: Any) -> str:
    try:
        return printable(json.dumps(data, ensure_ascii=False, default=str))
    except (TypeError, ValueError):
        return printable(repr(data))


def _valid_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: Characters of a too large record's raw text kept in the rejected set (enough to recognise it).
RAW_KEPT_OF_TOO_LARGE = 2_000


def normalize(
    rec: RawRecord, roles: dict[str, str], id_field: str, id_prefix: str, max_chars: int | None = None
) -> tuple[dict[str, Any] | None, Rejection | None]:
    """Return ``(row, None)`` for a usable record or ``(None, Rejection)``; a record with more than
    ``max_chars`` characters of text is rejected (``record.too_large``, its raw text cut short)."""
    if rec.error:
        return None, Rejection(rec.error, f"{rec.position}: {rec.detail}", rec.raw)
    data = rec.data
    where = rec.position

    def reject(reason: str, field: str, why: str, raw: str | None = None) -> tuple[None, Rejection]:
        cid = data.get(id_field) if isinstance(data, dict) else None
        cid = printable(str(cid)) if isinstance(cid, (str, int)) and cid != "" else None
        return None, Rejection(reason, f"{where}: {field}: {why}", raw or _raw_text(data), cid)

    if not isinstance(data, dict):
        return reject("record.wrong_type", "(record)", f"expected an object, got {type(data).__name__}")
    if "conversations" in data:
        key, role_key, text_key = "conversations", "from", "value"
    elif "messages" in data:
        key, role_key, text_key = "messages", "role", "content"
    else:
        return reject("record.missing_field", "conversations", "no 'conversations' or 'messages' field")
    turns = data[key]
    if not isinstance(turns, list):
        return reject("record.wrong_type", key, f"expected a list, got {type(turns).__name__}")
    cid = data.get(id_field)
    if cid is None or cid == "":
        cid = f"{id_prefix}-{rec.index}"
    elif not isinstance(cid, (str, int)):
        return reject("record.wrong_type", id_field, f"expected a string id, got {type(cid).__name__}")
    cid = str(cid)
    if not _valid_text(cid):
        return reject("record.invalid_utf8", id_field, "not valid UTF-8")
    messages = []
    chars = 0
    for i, turn in enumerate(turns):
        field = f"{key}[{i}]"
        if not isinstance(turn, dict):
            return reject("record.wrong_type", field, f"expected an object, got {type(turn).__name__}")
        role = turn.get(role_key)
        text = turn.get(text_key)
        if role is None:
            return reject("record.missing_field", f"{field}.{role_key}", "missing")
        if text is None:
            return reject("record.missing_field", f"{field}.{text_key}", "missing")
        if not isinstance(role, str):
            return reject("record.wrong_type", f"{field}.{role_key}", f"expected a string, got {type(role).__name__}")
        if isinstance(text, list):  # OpenAI content parts: keep the text parts
            parts = [p.get("text") for p in text if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(text) or not all(isinstance(p, str) for p in parts):
                return reject("record.wrong_type", f"{field}.{text_key}", "content parts other than text")
            text = "".join(parts)
        if not isinstance(text, str):
            return reject("record.wrong_type", f"{field}.{text_key}", f"expected a string, got {type(text).__name__}")
        if not _valid_text(text) or not _valid_text(role):
            return reject("record.invalid_utf8", f"{field}.{text_key}", "not valid UTF-8")
        mapped = roles.get(role)
        if mapped is None:
            return reject("record.unmapped_role", f"{field}.{role_key}",
                          f"role {role!r} is not in the recipe's roles table")
        messages.append({"role": mapped, "content": text})
        chars += len(text)
    if max_chars is not None and chars > max_chars:
        head = [{"role": m["role"], "content": m["content"][:RAW_KEPT_OF_TOO_LARGE]} for m in messages[:4]]
        raw = _raw_text({id_field: cid, key: head})[:RAW_KEPT_OF_TOO_LARGE] + f" ... ({chars:,} characters in all)"
        return reject("record.too_large", key, f"{chars:,} characters of text in {len(messages):,} turns, above "
                      f"source.max_record_chars ({max_chars:,})", raw)
    return {"conversation_id": cid, "source_index": rec.index, "segment": 0, "messages": messages}, None


class UniqueIds:
    """Conversation ids made unique in reading order: a repeated id becomes ``<id>~2``, ``<id>~3``, ...

    Ids are compared as the strings they are stored as, so ``1`` and ``"1"`` are the same id. Two
    conversations sharing an id would share a held-out split decision, a dedup "original" and a
    session seed, so the later one is renamed (and counted) rather than rejected: in the shipped
    ShareGPT V3 file 123 ids repeat, and every time the first record is an empty stub and the later
    one the real conversation, which rejecting would lose.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.renamed = 0

    def __call__(self, cid: str) -> str:
        if cid not in self.seen:
            self.seen.add(cid)
            return cid
        n = 2
        while f"{cid}~{n}" in self.seen:
            n += 1
        self.seen.add(f"{cid}~{n}")
        self.renamed += 1
        return f"{cid}~{n}"
