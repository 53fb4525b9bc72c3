"""Sources of raw conversations. :func:`open_source` picks the reader the recipe declares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from realchat.models import content_digest, files_digest
from realchat.recipe.base import DEFAULT_SHAREGPT, Strict
from realchat.recipe.refs import resolve_local
from realchat.curation.sources.base import RawRecord, ReadReport
from realchat.curation.sources.json_stream import iter_json_records
from realchat.curation.sources.tables import iter_datasets, iter_parquet


class SourceConfig(Strict):
    """Where the raw conversations come from.

    ``path`` is a local file or folder (relative to the recipe file), ``pkg://<package>/<file>`` for
    data shipped inside an installed Python package, or a Hub dataset id for ``format: hub``.
    """

    #: How the source is read: ShareGPT JSON/JSONL, OpenAI `messages` JSONL, parquet, a
    #: `save_to_disk` folder, or a Hub dataset. A JSON record in which one object gives a key twice is
    #: rejected (`read.duplicate_key`, counted on the card), never read with the first value lost; a
    #: table without a `conversations` or `messages` column is an error.
    format: Literal["sharegpt", "openai_messages", "parquet", "datasets_folder", "hub"] = "sharegpt"
    #: A file or folder (relative to the recipe), `pkg://<package>/<file>`, or a Hub dataset id for
    #: `format: hub`.
    path: str = DEFAULT_SHAREGPT
    #: Hub revision (commit, tag or branch) for ``format: hub``; recorded in the lineage.
    revision: str | None = None
    #: Split read with `format: hub` or `datasets_folder`.
    split: str = "train"
    #: Read only the first N records (smoke runs, tests). ``null`` reads everything.
    limit: int | None = Field(None, ge=1)
    #: Field holding the conversation id; records without one get ``<file-stem>-<index>``.
    id_field: str = "id"
    #: A record whose text (all its turns together) is longer, in characters, is rejected as
    #: ``record.too_large`` (counted in the stats and the card) before any op sees it: the ops' memory
    #: grows with a record's size (tokenizer offsets, shingles, split's search), so one 50 MB turn
    #: would take gigabytes. The shipped ShareGPT's longest conversation has 394,565. ``null``: no bound.
    max_record_chars: int | None = Field(1_000_000, ge=1)


#: Source role name → canonical role (a recipe's ``roles`` table extends or replaces it).
DEFAULT_ROLES: dict[str, Literal["user", "assistant", "system"]] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def source_revision(cfg: SourceConfig, base_dir: Path) -> str:
    """A revision identifying the exact input: the file's sha256 (read once, then remembered per path,
    inode, size, mtime and ctime by :func:`~realchat.models.content_digest`), or the Hub revision asked for."""
    if cfg.format == "hub":
        return cfg.revision or "main"
    path = resolve_local(cfg.path, base_dir)
    if path.is_dir():
        return "sha256:" + files_digest(path, sorted(p for p in path.rglob("*") if p.is_file()))
    return "sha256:" + content_digest(path)


def open_source(cfg: SourceConfig, base_dir: Path) -> tuple[Iterator[RawRecord], ReadReport]:
    """An iterator over the source's raw records (honouring ``limit``) and its read report."""
    if cfg.format == "hub":
        report = ReadReport(path=cfg.path, format=cfg.format, revision=cfg.revision)
        it = iter_datasets(cfg.path, cfg.split, cfg.revision, True, report)
    else:
        path = resolve_local(cfg.path, base_dir)
        report = ReadReport(path=str(path), format=cfg.format)
        if cfg.format in ("sharegpt", "openai_messages"):
            it = iter_json_records(path, report)
        elif cfg.format == "parquet":
            it = iter_parquet(path, report)
        else:
            it = iter_datasets(str(path), cfg.split, None, False, report)

    def limited() -> Iterator[RawRecord]:
        for rec in it:
            if cfg.limit is not None and rec.index >= cfg.limit:
                return
            yield rec

    return limited(), report


__all__ = ["DEFAULT_ROLES", "RawRecord", "ReadReport", "SourceConfig", "open_source", "source_revision"]
