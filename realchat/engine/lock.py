"""One build at a time per run folder: a file lock on ``<run_root>/<recipe>/.lock``.

Two builds (or a build and a push) of one recipe on one run root would otherwise race on the same
part files, checkpoints and outputs. The lock is ``filelock``'s (the kernel's ``flock`` on POSIX,
``msvcrt`` locking on Windows): it is released when the process ends, however it ends, so a crashed
build never leaves a stale lock behind. Who holds it is written into the lock file, so a second build
can say whom it is waiting for (where the platform lets a locked file be read; otherwise "another
process").
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from realchat.errors import RealChatError

LOCK_FILE = ".lock"


class LockedError(RealChatError):
    """Another process is building this recipe in this run folder."""


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()[:200] or "another process"
    except OSError:
        return "another process"


@contextmanager
def run_lock(folder: Path, wait_s: float = 0.0, log=None) -> Iterator[None]:
    """Hold the run folder's lock; wait up to ``wait_s`` seconds for it, then exit 2 with who holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    lock = FileLock(str(path))
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            lock.acquire(timeout=0)
            break
        except Timeout:
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"another build holds {path} ({_holder(path)}); nothing was changed",
                    hint="wait for it to finish, or pass --wait SECONDS to wait for the lock") from None
            if log and not told:
                log(f"waiting for the lock on {path} ({_holder(path)})")
                told = True
            time.sleep(0.5)
    try:
        try:
            with open(path, "r+", encoding="utf-8") as f:  # the lock's own descriptor is filelock's
                f.truncate(0)
                f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        except OSError:
            pass  # who holds it is a courtesy to the next build; the lock itself is what counts
        yield
    finally:
        lock.release()
