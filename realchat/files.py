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
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """Replace a file in one rename (a crash leaves the old or the new one, never half of one)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write_text` for bytes (a downloaded file kept byte for byte)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
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


_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")

#: Written into every temporary folder RealChat makes (and removed once the folder is in place): only
#: folders holding it are ever swept, so a user's folder that merely has a temporary-looking name,
#: or one of another tool, is never deleted.
TEMP_MARK = ".realchat-temp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: Path) -> None:
    """Tidy what a crashed (kill -9) RealChat process left beside ``folder``: its temporary folders
    (only those RealChat marked as its own, of a process that is gone) are removed, and when
    ``folder`` itself is missing because the crash fell between the two renames of
    :func:`atomic_folder`, the previous content is put back."""
    if not folder.parent.exists():
        return
    stale = []
    for p in folder.parent.glob(f".{folder.name}.*-*"):
        m = _TEMP.fullmatch(p.name)
        if (m and m["name"] == folder.name and p.is_dir() and not p.is_symlink()
                and (p / TEMP_MARK).is_file() and not _alive(int(m["pid"]))):
            stale.append((m["what"], p))
    for what, p in sorted(stale, key=lambda x: x[0] != "old"):
        if what == "old" and not folder.exists() and not folder.is_symlink():
            os.replace(p, folder)
            (folder / TEMP_MARK).unlink(missing_ok=True)
        else:
            remove_marked(p)


def remove_marked(folder: Path) -> None:
    """Remove a temporary folder RealChat marked, its mark last: a removal cut off part-way (kill -9)
    leaves a folder that is still marked, so a later :func:`clean_stale` sweeps it (only a kill between
    the last two calls can leave the folder, empty)."""
    for child in folder.iterdir():
        if child.name == TEMP_MARK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (folder / TEMP_MARK).unlink(missing_ok=True)
    with suppress(OSError):
        folder.rmdir()


def _temp_name(folder: Path, what: str) -> Path:
    return folder.parent / f".{folder.name}.{what}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``folder`` in one rename, else it is removed.

    The previous content stays (renamed aside) until the new folder is in place, and is removed only
    then; temporary folders carry :data:`TEMP_MARK` so that only RealChat's own are ever swept."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(folder)
    tmp = _temp_name(folder, "tmp")
    tmp.mkdir()
    (tmp / TEMP_MARK).write_text(f"{os.getpid()}\n")
    old: Path | None = None
    try:
        yield tmp
        if folder.exists():
            old = _temp_name(folder, "old")
            (folder / TEMP_MARK).write_text(f"{os.getpid()}\n")
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        if old is not None and old.exists() and not folder.exists():
            os.replace(old, folder)  # the previous content back where it was
        if folder.is_dir():
            (folder / TEMP_MARK).unlink(missing_ok=True)
        if tmp.is_dir():
            remove_marked(tmp)
        raise
    (folder / TEMP_MARK).unlink(missing_ok=True)
    if old is not None:
        remove_marked(old)


def link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` at ``dst`` where the filesystem allows (no second copy on disk), else copy
    it; True when linked. RealChat replaces files (never writes into them), so a link stays a faithful
    copy of what was published."""
    try:
        os.link(src, dst, follow_symlinks=False)
        return True
    except OSError:  # another filesystem (EXDEV), no hard links (EPERM), too many links (EMLINK)
        shutil.copy2(src, dst, follow_symlinks=False)
        return False
