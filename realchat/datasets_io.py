"""Reading conversation datasets for the stages after curation.

A training or simulation stage reads conversations from a parent stage's output (its parquet
``data/``, a ``messages`` column of ``{role, content}``) or from any conversation dataset the recipe
names (ShareGPT JSON/JSONL, OpenAI ``messages`` JSONL, parquet, a ``datasets`` folder, a Hub id),
through the same readers and role table as curation.

The held-out split is a pure function of the conversation id (a hash), so every stage that needs
"held-out real conversations" (UserGPT's eval loss, seeded simulation's first questions, the fidelity
metrics) agrees on it without passing files around.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl

from realchat.errors import RealChatError

Conversation = dict[str, Any]  # {"id": str, "messages": [{"role", "content"}]}


def is_held_out(conversation_id: str, share: float) -> bool:
    if share <= 0:
        return False
    h = int(hashlib.sha256(conversation_id.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < share


def read_stage_conversations(folder: Path) -> list[Conversation]:
    files = sorted((folder / "data").glob("*.parquet"))
    if not files:
        raise RealChatError(f"{folder}: no data/*.parquet (is the stage built?)")
    df = pl.read_parquet(files)
    id_col = "conversation_id" if "conversation_id" in df.columns else "session_id"
    out = []
    seg = df["segment"].to_list() if "segment" in df.columns else [0] * df.height
    for cid, s, msgs in zip(df[id_col].to_list(), seg, df["messages"].to_list()):
        out.append({"id": f"{cid}" if not s else f"{cid}#{s}", "base_id": str(cid),
                    "messages": [{"role": m["role"], "content": m["content"]} for m in msgs]})
    return out


def read_conversations(ref: str, data_format: str, base_dir: Path, stage_output: Any) -> list[Conversation]:
    """Conversations from a stage (``data_format: stage``) or any supported source."""
    if data_format == "stage":
        return read_stage_conversations(stage_output(ref))
    from realchat.conversations import normalize
    from realchat.recipe import DEFAULT_ROLES, SourceConfig
    from realchat.sources import open_source

    records, _ = open_source(SourceConfig(format=data_format, path=ref), base_dir)  # type: ignore[arg-type]
    out = []
    for rec in records:
        row, _rej = normalize(rec, dict(DEFAULT_ROLES), "id", Path(ref).stem or "record")
        if row is not None:
            out.append({"id": row["conversation_id"], "base_id": row["conversation_id"],
                        "messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]})
    return out


def split_held_out(convs: list[Conversation], share: float) -> tuple[list[Conversation], list[Conversation]]:
    train, held = [], []
    for c in convs:
        (held if is_held_out(c.get("base_id", c["id"]), share) else train).append(c)
    return train, held
