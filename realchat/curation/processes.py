"""Worker processes for curation: started, fed and stopped so that none outlives or hangs the build.

Two users: the local executor's pool for the ``row`` ops (:mod:`realchat.curation.local_executor`) and
language ID's helper on a second core (:mod:`realchat.curation.langid`). Both are CPython's
``ProcessPoolExecutor`` with what a build that may be stopped at any moment needs around it:

* processes are *spawned*, not forked (the parent may hold tokenizer, polars and torch threads that a
  fork would copy half-way);
* a process starts with SIGINT and SIGTERM blocked (:func:`~realchat.interrupts.signals_held` around
  the submit that starts it) until its initializer leaves both to the parent and asks to die with it
  (:func:`~realchat.interrupts.follow_parent`), so Ctrl-C prints one message and kill -9 leaves no
  orphan;
* each process keeps to one thread per library: the processes are the parallelism;
* stopping kills the processes and then ends the answer pipe (:func:`_end_of_answers`), so a process
  killed half-way through an answer cannot leave the pool waiting for the rest.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from realchat.errors import RealChatError
from realchat.interrupts import follow_parent, signals_held


def spawn_pool(processes: int, warm_up: Callable[..., Any] | None = None, *args: Any
               ) -> tuple[ProcessPoolExecutor, list[Future]]:
    """A pool of ``processes`` spawned workers and, when ``warm_up`` is given, one ``warm_up(*args)``
    task each (a worker's imports and models loaded before its first real task; the futures are done
    when that is)."""
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_process_start, initargs=(os.getpid(),))
    warming = [submit(pool, warm_up, *args) for _ in range(processes)] if warm_up is not None else []
    return pool, warming


def submit(pool: ProcessPoolExecutor, fn: Callable[..., Any], *args: Any) -> Future:
    """``pool.submit``, with SIGINT and SIGTERM held: a submit may start a worker process, which starts
    with them blocked until its initializer leaves them to this process."""
    with signals_held():
        return pool.submit(fn, *args)


def answer_of(future: Future) -> Any:
    """A worker's answer; a worker that died is one message, not a traceback."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise RealChatError(
            "a curation worker process died (out of memory, killed, or a script without a main guard)",
            hint="executor.workers=1 runs every op in this process; a Python script that builds must guard "
                 "its top level with `if __name__ == \"__main__\":` (worker processes are spawned and "
                 "import it)") from None


def close_pool(pool: ProcessPoolExecutor, stop: bool = False) -> None:
    """Wait for the workers to finish and leave; ``stop`` (an error, Ctrl-C, SIGTERM): kill them now,
    their work is of no use any more and a worker busy with a large task may take a while."""
    if stop and hasattr(pool, "kill_workers"):  # Python 3.14
        pool.kill_workers()
    elif stop:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
    if stop:
        _end_of_answers(pool)
    pool.shutdown(wait=True, cancel_futures=True)


def _end_of_answers(pool: ProcessPoolExecutor) -> None:
    """After killing the workers: close this process's write end of the pool's answer pipe.

    A worker killed while writing its answer leaves half a message in the pipe, and the pool's reader
    thread waits for the rest for ever: this process holds a write end too, so no end-of-file comes,
    and ``shutdown`` (and the interpreter's exit) wait for that thread. With the last write end closed
    the read ends in end-of-file, the pool counts itself broken and its threads leave, as CPython does
    for the other pipe (gh-94777). Seen as a build that never exited on SIGTERM, one run in three on a
    loaded machine."""
    answers = getattr(pool, "_result_queue", None)
    writer = getattr(answers, "_writer", None)
    if writer is not None:
        writer.close()


def _process_start(parent_pid: int) -> None:
    """In a worker, first: leave SIGINT and SIGTERM to the parent and die with it (so Ctrl-C to the
    process group prints one message, and no worker outlives a killed build), then one thread each."""
    follow_parent(parent_pid)
    _one_thread_each()


def _one_thread_each() -> None:
    """In a worker: the processes are the parallelism, so the tokenizer (Rust, rayon), polars and BLAS
    keep to one thread each instead of each starting one per CPU and fighting over the cores. (Set
    before any of them is imported in the worker: each reads it once.)"""
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["POLARS_MAX_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"
