"""How a RealChat process stops when it is told to: SIGINT (Ctrl-C), SIGTERM (a job scheduler), kill -9.

One stop for both signals. SIGINT raises :class:`KeyboardInterrupt` in the main thread (Python's
own handler); :func:`terminate_as_interrupt` makes SIGTERM raise :class:`Terminated`, a
``KeyboardInterrupt``, so a scheduler's stop unwinds through exactly the code that already makes
Ctrl-C safe (atomic outputs removed, part files and checkpoints kept for a resume, worker processes
stopped) instead of Python's default for SIGTERM: dying on the spot with no message. The CLI then
prints one line and exits with the shell's convention for a death by that signal, 128 + its number:
130 for SIGINT, 143 for SIGTERM (:func:`exit_code`).

Worker processes follow their parent (:func:`follow_parent`, their initializer): they ignore SIGINT
and SIGTERM, because Ctrl-C in a terminal and many schedulers signal the whole process group and the
parent alone decides (one message, not a traceback per worker); and the kernel kills them when the
parent dies, however it dies, kill -9 included (Linux ``PR_SET_PDEATHSIG``; elsewhere a thread that
watches the parent's pid). :func:`signals_held` closes the window between a worker's start and its
initializer: a worker is started with both signals blocked, the way :mod:`multiprocessing`'s own
resource tracker is started.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: The signals a worker leaves to its parent.
PARENT_HANDLES = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt so both unwind alike."""

    signal_number = signal.SIGTERM


def exit_code(interrupt: BaseException) -> int:
    """128 + the signal's number, the shell's code for a death by it: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + int(getattr(interrupt, "signal_number", signal.SIGINT))


def signal_name(interrupt: BaseException) -> str:
    return signal.Signals(getattr(interrupt, "signal_number", signal.SIGINT)).name


#: Python code that a native extension calls back into without passing errors on: polars unwraps the
#: result of its Python callbacks (a dtype lookup, for one), so an exception raised inside one is a
#: Rust panic that aborts the process with a backtrace instead of a clean stop (seen under SIGTERM).
_NATIVE_CALLBACKS = (f"{os.sep}polars{os.sep}",)
#: How soon a signal that arrived inside such code is delivered again.
_AGAIN_AFTER_S = 0.05


def _inside_native_callback(frame: Any) -> bool:
    """Whether the interrupted code runs inside one of :data:`_NATIVE_CALLBACKS` (anywhere on the stack:
    the callback may have called further Python code)."""
    while frame is not None:
        name = frame.f_code.co_filename
        if any(part in name for part in _NATIVE_CALLBACKS):
            return True
        frame = frame.f_back
    return False


def _deliver_again_soon(signum: int) -> None:
    """The same signal to this process a moment later, when the main thread has left the library."""
    timer = threading.Timer(_AGAIN_AFTER_S, os.kill, args=(os.getpid(), signum))
    timer.daemon = True
    timer.start()


def _raising(interrupt: type[KeyboardInterrupt]) -> Callable[[int, Any], None]:
    """A handler that raises ``interrupt`` in the main thread, as Python's own SIGINT handler raises
    KeyboardInterrupt, but never inside a native library's Python callback: there the signal is
    delivered again a moment later."""

    def handler(signum: int, frame: Any) -> None:
        if _inside_native_callback(frame):
            _deliver_again_soon(signum)
            return
        raise interrupt()

    return handler


_raise_terminated = _raising(Terminated)
_raise_interrupt = _raising(KeyboardInterrupt)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside: SIGTERM raises :class:`Terminated` in the main thread, and SIGINT (where Python's
    own handler is in place) ``KeyboardInterrupt``; either waits while the main thread is inside a
    native library's Python callback (:data:`_NATIVE_CALLBACKS`). The previous handlers come back
    after (a test runner or an embedding program keeps its own). Outside the main thread Python cannot
    install handlers, and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)


@contextmanager
def keep_terminate_handler() -> Iterator[None]:
    """Around a library call that installs its own SIGTERM handler (``ray.init``: ``sys.exit(15)``, or
    exit 1 after killing a local Ray node's processes, no message): this process's handler comes back,
    so SIGTERM still stops the step as Ctrl-C does and the library is shut down on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, ours)


@contextmanager
def signals_held() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread while inside: a process started here inherits the mask,
    so it cannot die of either before :func:`follow_parent` ignores them. A signal that arrives in the
    meantime waits and is handled on the way out."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, PARENT_HANDLES)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def follow_parent(parent_pid: int) -> None:
    """In a worker process, first thing: leave SIGINT and SIGTERM to the parent, and die with it."""
    for sig in PARENT_HANDLES:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PARENT_HANDLES)  # blocked by signals_held at the start
    if not _kill_on_parent_death():
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="realchat-parent-watch").start()
    if os.getppid() != parent_pid:  # the parent died before the kernel was told: nobody left to work for
        os._exit(1)


def _kill_on_parent_death() -> bool:
    """Ask the kernel (Linux) to SIGKILL this process when the thread that started it exits: the main
    thread of the parent, which runs the whole build. False where that cannot be asked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """Elsewhere: once a second, is the parent still ours? (an orphan is adopted by another pid)."""
    while os.getppid() == parent_pid:
        time.sleep(every_s)
    os._exit(1)
