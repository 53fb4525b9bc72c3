"""Writing files so that a crash, Ctrl-C or kill -9 leaves the old content or the new, never half.

Every module that persists something a later run trusts (digest caches, JSON records, step outputs,
published folders) writes through here. A temporary folder carries its creator's process id, and only
folders whose process is gone are swept, so two processes never delete each other's work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """Replace a file in one rename (a crash leaves the old or the new one, never half of one)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Pretty JSON, replaced atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


_TEMP = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: Path) -> None:
    """Remove temporary folders of ``folder`` left by processes that are gone (crash, kill -9)."""
    if not folder.parent.exists():
        return
    for p in folder.parent.glob(f".{folder.name}.*-*"):
        m = _TEMP.fullmatch(p.name)
        if m and m["name"] == folder.name and not _alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)


def _temp_name(folder: Path, what: str) -> Path:
    return folder.parent / f".{folder.name}.{what}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``folder`` in one rename, else it is removed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(folder)
    tmp = _temp_name(folder, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if folder.exists():
            old = _temp_name(folder, "old")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
