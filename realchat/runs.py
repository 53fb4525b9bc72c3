"""Run folders, stage fingerprints, and atomic outputs.

Layout: ``<run_root>/<recipe-name>/<stage>/``. A stage's output appears in one ``rename`` from a
temporary sibling folder, and only after ``manifest.json`` (its fingerprint) was written inside it, so
a crash or Ctrl-C leaves either the previous complete output or nothing; never a half-written folder
that a later run would take for done. Leftover temporary folders are removed on the next run.

The fingerprint of a stage is the hash of its resolved config, its inputs' fingerprints (the source
file's sha256, or the parent stage's fingerprint) and the package version: same fingerprint, same
output, so a matching finished stage is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from realchat import __version__

MANIFEST = "manifest.json"
STATS = "stats.json"


def fingerprint(stage: str, config: dict[str, Any], inputs: list[str]) -> str:
    payload = json.dumps(
        {"stage": stage, "config": config, "inputs": inputs, "realchat": __version__},
        sort_keys=True,
        ensure_ascii=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def stage_dir(run_root: Path, recipe_name: str, stage: str) -> Path:
    return run_root / recipe_name / stage


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def read_stats(folder: Path) -> dict[str, Any]:
    """A finished stage's ``stats.json`` ({} when it has none)."""
    try:
        return json.loads((folder / STATS).read_text())
    except (OSError, ValueError):
        return {}


def is_done(folder: Path, fp: str) -> bool:
    m = read_manifest(folder)
    return m is not None and m.get("fingerprint") == fp


def clean_stale(folder: Path) -> None:
    """Remove temporary folders left by an interrupted run of this stage."""
    if folder.parent.exists():
        for p in folder.parent.glob(f".{folder.name}.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in folder.parent.glob(f".{folder.name}.old-*"):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def atomic_output(folder: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``folder`` in one rename, else it is removed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if not (tmp / MANIFEST).exists():
            raise RuntimeError(f"stage wrote no {MANIFEST}; refusing to publish {folder}")
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Replace a file in one rename (a crash leaves the old or the new one, never half of one)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
