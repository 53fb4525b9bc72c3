"""What a stage gets from the engine: the recipe, a console, progress bars, a lazily loaded tokenizer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from realchat.models import TokenCounter, token_counter
from realchat.recipe import LoadedRecipe

T = TypeVar("T")


@dataclass
class StageContext:
    loaded: LoadedRecipe
    stage: str
    console: Console = field(default_factory=lambda: Console(stderr=True))
    show_progress: bool = True

    def token_counter(self) -> TokenCounter:
        cfg = self.loaded.stage_config(self.stage)
        return token_counter(getattr(cfg, "tokenizer"), str(self.loaded.base_dir))

    def progress(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        """Iterate with a progress bar on the console (transient; nothing when output is not a TTY)."""
        if not self.show_progress or not self.console.is_terminal:
            yield from items
            return
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)
