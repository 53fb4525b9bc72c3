"""One build at a time per run folder: an advisory file lock on ``<run_root>/<recipe>/.lock``.

Two builds (or a build and a push) of one recipe on one run root would otherwise race on the same
part files, checkpoints and outputs. The lock is the kernel's (``flock``): it is released when the
process ends, however it ends, so a crashed build never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from realchat.errors import RealChatError

LOCK_FILE = ".lock"


class LockedError(RealChatError):
    """Another process is building this recipe in this run folder."""


@contextmanager
def run_lock(folder: Path, wait_s: float = 0.0, log=None) -> Iterator[None]:
    """Hold the run folder's lock; wait up to ``wait_s`` seconds for it, then exit 2 with who holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"another build holds {path} ({holder}); nothing was changed",
                        hint="wait for it to finish, or pass --wait SECONDS to wait for the lock") from None
                if log and not told:
                    log(f"waiting for the lock on {path} ({holder})")
                    told = True
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
