"""Progress a person can follow, on a terminal and in a job log.

A build runs for minutes (training, simulation, judging); whoever watches it must see that it moves,
how fast, and when it will end, whether they watch a terminal or read a job log afterwards.

* On a terminal: rich bars with the count, the rate, the elapsed time, the ETA and the step's own
  figures (training: loss, tokens/s). One live display is shared by all open counters, so nested
  counters (an op's loop inside a step's loop) stack instead of fighting for the screen.
* Not on a terminal (job logs, CI, ``| tee``): one plain line when a counter starts, then at most one
  every ``interval_s`` seconds (default 30; ``$REALCHAT_PROGRESS_INTERVAL`` or ``realchat build
  --progress-interval``), and one when it ends, each with the same figures. Never a ``\\r``, never a
  control code: a log reads line by line::

      [usergpt] train: 12/40 steps (30%) | 0.41 steps/s | elapsed 0:00:29 | eta 0:01:08 | loss 2.31 | tokens/s 1,204

The API a step (or anything a step calls) uses, through :class:`~realchat.engine.context.StepContext`:

``ctx.progress(items, "read", total=None)``
    an iterator that counts what passes through it.
``with ctx.progress_counter("simulate", total=64, unit="sessions") as c: c.advance(8, tokens_per_s=412.0)``
    a counter for loops that are not one iterator (batches that finish several items at once, a
    callback): ``advance(n, **figures)`` adds ``n`` done items and replaces the shown figures;
    ``update(completed=..., total=..., **figures)`` sets them. A figure named ``x_per_s`` shows as
    ``x/s``; floats show 4 significant digits, integers with thousands separators.

Everything here is display: nothing a counter shows is recorded anywhere (stats are the step's job),
and a disabled reporter (``--no-progress``) costs one attribute check per item.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")

ENV_INTERVAL = "REALCHAT_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0


def default_interval() -> float:
    """Seconds between two plain progress lines: ``$REALCHAT_PROGRESS_INTERVAL`` or 30."""
    try:
        value = float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return max(value, 0.0)


def format_figures(figures: dict[str, Any]) -> str:
    """``loss 2.31 | tokens/s 1,204``: the figures a counter shows, in the order given."""
    parts = []
    for key, value in figures.items():
        if value is None:
            continue
        name = key[:-6] + "/s" if key.endswith("_per_s") else key
        name = name.replace("_", " ")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            shown = str(value)
        elif isinstance(value, int):
            shown = f"{value:,}"
        elif abs(value) >= 1000:
            shown = f"{value:,.0f}"
        else:
            shown = f"{value:.4g}"
        parts.append(f"{name} {shown}")
    return " | ".join(parts)


def _rate(rate: float) -> str:
    """12,345 / 412 / 3.35 / 0.0412: thousands separators, no exponent down to 0.001/s."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}" if rate >= 0.001 else f"{rate:.2e}"


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _RateColumn(ProgressColumn):
    """Items per second since the counter started (what the ETA uses too)."""

    def render(self, task: Task) -> Text:
        counter: Counter | None = task.fields.get("counter")
        rate = counter.rate() if counter else None
        return Text(f"{_rate(rate)} {counter.unit}/s" if rate else "", style="progress.data.speed")


@dataclass
class Counter:
    """One running count: advanced by its owner, shown by its :class:`Reporter`."""

    reporter: Reporter
    description: str
    total: int | None
    unit: str = "items"
    completed: int = 0
    figures: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    #: The count when the counter started (a resumed training starts at its checkpoint's step): the
    #: rate and ETA count only what this run did.
    start_completed: int = 0
    _last_line: float = field(default_factory=time.monotonic)
    _task: Any = None

    def advance(self, n: int = 1, **figures: Any) -> None:
        """``n`` more items done; ``figures`` replace the shown ones (a key set to None is dropped)."""
        self.update(completed=self.completed + n, **figures)

    def update(self, completed: int | None = None, total: int | None = None, *, show: bool = True,
               **figures: Any) -> None:
        """Set the count, the total and figures; ``show=False`` holds the display back (a figure
        that belongs to this count is about to arrive)."""
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        self.figures.update(figures)
        if show:
            self.reporter._show(self)

    def rate(self) -> float | None:
        seconds = time.monotonic() - self.started
        done = self.completed - self.start_completed
        return done / seconds if seconds > 0 and done > 0 else None

    def eta(self) -> float | None:
        rate = self.rate()
        if not rate or self.total is None:
            return None
        return max(self.total - self.completed, 0) / rate

    def line(self, state: str = "running") -> str:
        """The plain progress line: count, share, rate, elapsed, ETA, figures (``state``: started,
        running or done)."""
        count = f"{self.completed:,}/{self.total:,}" if self.total is not None else f"{self.completed:,}"
        parts = [f"{count} {self.unit}" + (f" ({100 * self.completed / self.total:.0f}%)" if self.total else "")]
        if state == "started":
            parts.append("started")
        else:
            rate = self.rate()
            if rate:
                parts.append(f"{_rate(rate)} {self.unit}/s")
            parts.append(f"elapsed {_clock(time.monotonic() - self.started)}")
            eta = self.eta()
            if state == "done":
                parts.append("done")
            elif eta is not None:
                parts.append(f"eta {_clock(eta)}")
        figures = format_figures(self.figures)
        if figures:
            parts.append(figures)
        prefix = f"[{self.reporter.prefix}] " if self.reporter.prefix else ""
        return f"{prefix}{self.description}: " + " | ".join(parts)


class Reporter:
    """Shows counters: rich bars on a terminal, plain timed lines elsewhere, nothing when disabled."""

    def __init__(self, console: Console, enabled: bool = True, interval_s: float | None = None,
                 prefix: str = "") -> None:
        self.console = console
        self.enabled = enabled
        self.interval_s = default_interval() if interval_s is None else interval_s
        self.prefix = prefix
        self._bars: Progress | None = None
        self._open = 0

    @property
    def live(self) -> bool:
        """Bars (a terminal) rather than lines."""
        return self.console.is_terminal and not self.console.is_dumb_terminal

    def _bars_start(self) -> Progress:
        if self._bars is None:
            self._bars = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(), _RateColumn(),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[shown]}"),
                console=self.console, transient=True)
            self._bars.start()
        self._open += 1
        return self._bars

    def _bars_stop(self) -> None:
        self._open -= 1
        if self._open == 0 and self._bars is not None:
            self._bars.stop()
            self._bars = None

    def _emit(self, text: str) -> None:
        # out(): no markup, no highlighting, no wrapping at the console's width
        self.console.out(text, highlight=False)

    def _show(self, c: Counter) -> None:
        if not self.enabled:
            return
        if c._task is not None and self._bars is not None:
            self._bars.update(c._task, completed=c.completed, total=c.total, shown=format_figures(c.figures))
            return
        now = time.monotonic()
        if now - c._last_line >= self.interval_s:
            c._last_line = now
            self._emit(c.line())

    @contextmanager
    def counter(self, description: str, total: int | None = None, unit: str = "items",
                completed: int = 0) -> Iterator[Counter]:
        """A counter shown while the block runs; a final line (count, rate, elapsed) when it ends."""
        c = Counter(self, description, total, unit, completed=completed, start_completed=completed)
        if not self.enabled:
            yield c
            return
        if self.live:
            bars = self._bars_start()
            c._task = bars.add_task(description, total=total, completed=completed, counter=c, shown="")
        else:
            self._emit(c.line("started"))
        ok = False
        try:
            yield c
            ok = True
        finally:
            if c._task is not None and self._bars is not None:
                self._bars.remove_task(c._task)
                c._task = None
                self._bars_stop()
            if ok:
                self._emit(c.line("done"))

    def track(self, items: Iterable[T], description: str, total: int | None = None,
              unit: str = "items") -> Iterator[T]:
        """Iterate over ``items``, counting them."""
        if not self.enabled:
            yield from items
            return
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        with self.counter(description, total, unit) as c:
            for item in items:
                yield item
                c.advance()


#: The longest line a library's log record may write into a job log; the rest is cut with a count.
LOG_LINE_CHARS = 2_000
#: The libraries whose own progress bars and log lines a build's output carries.
_LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "trl", "accelerate", "peft", "torch")


class _CapLines:
    """A logging filter cutting a record's message to :data:`LOG_LINE_CHARS` per line (a library may
    log a whole config or a 9,000-character warning on one line)."""

    def filter(self, record: "logging.LogRecord") -> bool:
        if getattr(record, "_realchat_cut", False):  # seen by the logger's filter and a handler's: once
            return True
        record._realchat_cut = True
        message = record.getMessage()
        if any(len(line) > LOG_LINE_CHARS for line in message.splitlines()):
            record.msg = "\n".join(line if len(line) <= LOG_LINE_CHARS else
                                   f"{line[:LOG_LINE_CHARS]}… [{len(line) - LOG_LINE_CHARS:,} more characters]"
                                   for line in message.splitlines())
            record.args = None
        return True


def quiet_libraries() -> None:
    """For output that is not a terminal (a job log, CI, ``| tee``) or ``--no-progress``: the progress
    bars of transformers, datasets, huggingface_hub and every tqdm (``\\r`` redraws, one log line
    thousands of characters long) are off, and the libraries' log lines are capped at
    :data:`LOG_LINE_CHARS`. RealChat's own progress lines say what moves."""
    import logging
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"  # any tqdm a library makes itself (tqdm ≥ 4.66 reads it)
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    cap = _CapLines()
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _CapLines) for f in logger.filters):
            logger.addFilter(cap)
        for handler in logger.handlers:  # filters on a logger do not see its children's records
            if not any(isinstance(f, _CapLines) for f in handler.filters):
                handler.addFilter(cap)
