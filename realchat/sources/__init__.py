"""Sources of raw conversations. :func:`open_source` picks the reader the recipe declares."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from realchat.recipe import SourceConfig, resolve_local
from realchat.sources.base import RawRecord, ReadReport
from realchat.sources.json_stream import iter_json_records
from realchat.sources.tables import iter_datasets, iter_parquet


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def source_revision(cfg: SourceConfig, base_dir: Path) -> str:
    """A revision identifying the exact input: the file's sha256, or the Hub revision asked for."""
    if cfg.format == "hub":
        return cfg.revision or "main"
    path = resolve_local(cfg.path, base_dir)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode())
                h.update(file_sha256(p).encode())
        return "sha256:" + h.hexdigest()
    return "sha256:" + file_sha256(path)


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


__all__ = ["RawRecord", "ReadReport", "open_source", "source_revision", "file_sha256"]
