"""Reading conversation datasets named by a recipe's dataset references.

A step reads conversations from another step's output (its parquet ``data/``, a ``messages`` column
of ``{role, content}``, and the ``split`` column that ``curate`` writes) or from any conversation
dataset the recipe names (ShareGPT JSON/JSONL, OpenAI ``messages`` JSONL, parquet, a ``datasets``
folder, a Hub id), through the same readers and role table as curation.

The held-out split is a pure function of the conversation id (a hash), decided once by ``curate`` and
stored in its ``split`` column: consumers ask for ``{step: curate, split: held_out}`` and never read
another step's config.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from realchat.errors import RealChatError
from realchat.recipe.refs import FileData, HubData, ResolvedData, StepData

#: {"id": str, "base_id": str, "messages": [{"role", "content"}]}, plus ``ends_conversation`` and
#: ``intent`` when the step's data has those columns.
Conversation = dict[str, Any]

TRAIN, HELD_OUT = "train", "held_out"


def is_held_out(conversation_id: str, share: float) -> bool:
    """True for about ``share`` of all ids, the same ones on every machine."""
    if share <= 0:
        return False
    h = int(hashlib.sha256(conversation_id.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < share


def split_of(conversation_id: str, share: float) -> str:
    return HELD_OUT if is_held_out(conversation_id, share) else TRAIN


#: curate's column naming the conversation a row belongs to when it differs from ``conversation_id``:
#: a source whose records are already segments (FastChat's ``<id>_<k>``, curate's ``fastchat_segment_ids``)
BASE_COLUMN = "base_conversation_id"

_FASTCHAT_SEGMENT = re.compile(r"(.+)_(\d+)")


def fastchat_conversation(record_id: str) -> str:
    """The conversation a FastChat ``split_long_conversation`` segment belongs to, named by its first
    segment's id: ``hRPPgZT_11`` → ``hRPPgZT_0`` (so the first segment is its own conversation's id,
    and a later one is not); an id without a ``_<k>`` suffix is a conversation of its own."""
    m = _FASTCHAT_SEGMENT.fullmatch(record_id)
    return f"{m.group(1)}_0" if m else record_id


def read_step_conversations(folder: Path, split: str = "all", what: str = "") -> list[Conversation]:
    """Rows of a step's ``data/`` (``split``: train, held_out, or all rows)."""
    files = sorted((folder / "data").glob("*.parquet"))
    if not files:
        raise RealChatError(f"{folder}: no data/*.parquet (is the step built?)", field=what or None)
    df = pl.read_parquet(files)
    if split != "all":
        if "split" in df.columns:
            df = df.filter(pl.col("split") == split)
        if df.height == 0 and split == HELD_OUT:
            raise RealChatError(f"{folder.name} has no held_out rows: only a curate step with "
                                "held_out_share > 0 writes them", field=what or None)
    id_col = "conversation_id" if "conversation_id" in df.columns else "session_id"
    out = []
    seg = df["segment"].to_list() if "segment" in df.columns else [0] * df.height
    # optional columns a consumer may need: a per-conversation goal (``intent``); curate's split marks the
    # segments that end where the real conversation ended (``ends_conversation``; absent = all do)
    # and the later segments that start with a follow-up whose answer-before is not in them
    extra = [c for c in ("ends_conversation", "follows_unseen_answer", "intent") if c in df.columns]
    extras = df.select(extra).to_dicts() if extra else [{}] * df.height
    bases = df[BASE_COLUMN].to_list() if BASE_COLUMN in df.columns else df[id_col].to_list()
    for cid, base, s, msgs, more in zip(df[id_col].to_list(), bases, seg, df["messages"].to_list(), extras):
        out.append({"id": f"{cid}" if not s else f"{cid}#{s}", "base_id": str(base),
                    "messages": [{"role": m["role"], "content": m["content"]} for m in msgs], **more})
    return out


def read_conversations(ref: ResolvedData, base_dir: Path, step_folder: Callable[[str], Path],
                       what: str = "") -> list[Conversation]:
    """Conversations of a dataset reference; ``step_folder`` finds a finished step's output."""
    if isinstance(ref, StepData):
        return read_step_conversations(step_folder(ref.step), ref.split, what)
    from realchat.curation.conversations import UniqueIds, normalize
    from realchat.curation.sources import DEFAULT_ROLES, SourceConfig, open_source

    if isinstance(ref, HubData):
        cfg = SourceConfig(format="hub", path=ref.hub, revision=ref.revision, split=ref.split)
    else:
        assert isinstance(ref, FileData)
        cfg = SourceConfig(format=ref.format, path=ref.path)
    records, _ = open_source(cfg, base_dir)
    out = []
    unique = UniqueIds()
    for rec in records:
        row, _rej = normalize(rec, dict(DEFAULT_ROLES), "id", Path(cfg.path).stem or "record", cfg.max_record_chars)
        if row is not None:
            cid = unique(row["conversation_id"])
            out.append({"id": cid, "base_id": cid,
                        "messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]],
                        **record_intent(rec.data)})
    return out


def record_intent(data: Any) -> dict[str, str]:
    """``{"intent": …}`` when a file's record carries a non-empty string ``intent`` (a one-sentence
    goal, for intent conditioning), else nothing."""
    intent = data.get("intent") if isinstance(data, dict) else None
    return {"intent": intent.strip()} if isinstance(intent, str) and intent.strip() else {}


def opens_conversation(conv: Conversation) -> bool:
    """True for a real conversation's start: its first segment (``split`` numbers the later ones
    ``<id>#<k>``), and not one that begins with a follow-up whose answer-before ``split`` could not
    keep. Its first user turn is the real first question; a file's or a simulation's rows all are."""
    return conv["id"] == conv.get("base_id", conv["id"]) and not conv.get("follows_unseen_answer")


def conversation_order(convs: list[Conversation], seed: int) -> list[str]:
    """The distinct conversation ids (``base_id``: all segments of one conversation share it) in a
    fixed pseudo-random order: the sha256 of seed and id. The same on every run and machine, and a
    sample of the first ``n`` is a sample of conversations, not the file's head."""
    ids = {str(c.get("base_id", c["id"])) for c in convs}
    return sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())


def sample_conversations(convs: list[Conversation], n: int | None, seed: int) -> list[Conversation]:
    """Every row (segment) of ``n`` conversations drawn by :func:`conversation_order`, in their
    original order; all rows when ``n`` is None or not smaller than the conversations there are."""
    order = conversation_order(convs, seed)
    if n is None or n >= len(order):
        return list(convs)
    chosen = set(order[:n])
    return [c for c in convs if str(c.get("base_id", c["id"])) in chosen]


def split_held_out(convs: list[Conversation], share: float) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held out) of conversations by the hash of their base id."""
    train, held = [], []
    for c in convs:
        (held if is_held_out(c.get("base_id", c["id"]), share) else train).append(c)
    return train, held


def read_file_conversations(path: Path, fmt: str, limit: int | None = None
                            ) -> tuple[list[Conversation], int, dict[str, int], dict[str, str]]:
    """(usable conversations, records read, unusable records by reason, the first unusable record of
    each reason: its id and place) of one conversation file, through curation's readers and role
    table: ShareGPT JSON/JSONL, OpenAI ``messages`` JSONL, parquet (a step's ``data/`` folder too). A
    file that cannot be read at all raises one error naming it; a bad record is counted, not fatal."""
    from realchat.curation.conversations import normalize
    from realchat.curation.sources import DEFAULT_ROLES, SourceConfig, open_source

    if not path.exists():
        raise RealChatError("file not found", file=str(path))
    records, _ = open_source(SourceConfig(format=fmt, path=str(path.resolve()), limit=limit), Path("."))
    out: list[Conversation] = []
    rejected: dict[str, int] = {}
    first: dict[str, str] = {}
    n = 0
    for rec in records:
        n += 1
        row, rej = normalize(rec, dict(DEFAULT_ROLES), "id", path.stem or "record",
                             SourceConfig().max_record_chars)
        if row is None:
            assert rej is not None
            rejected[rej.reason] = rejected.get(rej.reason, 0) + 1
            first.setdefault(rej.reason, (f"record {rej.conversation_id}: " if rej.conversation_id else "")
                             + rej.detail)
            continue
        out.append({"id": row["conversation_id"], "base_id": row["conversation_id"],
                    "messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]})
    return out, n, rejected, first
