"""What a step gets from the engine: its config, its resolved inputs, a console, progress, models.

A step never reads another step's config: it reads other steps' *outputs*, through the references
the engine resolved when it built the graph (:class:`~realchat.engine.graph.Edge`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from realchat.data import Conversation, read_conversations
from realchat.engine.graph import Node
from realchat.engine.outputs import read_manifest, read_stats, step_dir
from realchat.errors import ModelError, RealChatError, RecipeError
from realchat.models import TokenCounter, token_counter
from realchat.progress import Counter, Reporter
from realchat.recipe.base import DEFAULT_USER_SYSTEM_PROMPT, StepConfig
from realchat.recipe.schema import LoadedRecipe

T = TypeVar("T")


@dataclass
class StepContext:
    loaded: LoadedRecipe
    node: Node
    fingerprint: str
    console: Console = field(default_factory=lambda: Console(stderr=True))
    show_progress: bool = True
    #: Seconds between two plain progress lines when the console is not a terminal (None: the default).
    progress_interval_s: float | None = None
    _reporter: Reporter | None = field(default=None, repr=False)
    #: The step's vLLM engines (:mod:`realchat.models.engines`) and every backend it opened.
    _engines: Any = field(default=None, repr=False)
    _opened: list[Any] = field(default_factory=list, repr=False)
    _meter: Any = field(default=None, repr=False)

    # -- who am I ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def config(self) -> StepConfig:
        return self.node.config

    @property
    def base_dir(self) -> Path:
        return self.loaded.base_dir

    @property
    def seed(self) -> int:
        return self.loaded.recipe.seed

    def key(self, path: str) -> str:
        """The full key path of one of this step's keys, for messages."""
        return f"steps.{self.name}.{path}"

    def work_dir(self) -> Path:
        """Checkpoints and other resumable state of this step's run (kept across interruptions)."""
        from realchat.engine.outputs import work_dir

        return work_dir(self.loaded.run_root, self.loaded.name, self.name, self.fingerprint)

    # -- other steps' outputs ----------------------------------------------------------------------

    def output_of(self, step: str) -> Path:
        """The finished output folder of ``step`` (an error if it is not built)."""
        folder = step_dir(self.loaded.run_root, self.loaded.name, step)
        if read_manifest(folder) is None:
            raise RecipeError(f"step {step} is not built; `realchat build` builds it before {self.name}",
                              file=str(self.loaded.path), field=f"steps.{self.name}")
        return folder

    def stats_of(self, step: str) -> dict[str, Any]:
        return read_stats(self.output_of(step))

    def conversations(self, key: str) -> list[Conversation]:
        """The conversations of this step's dataset reference at ``key`` (e.g. ``dataset``)."""
        edge = self.node.edge(key)
        with self.blame(key):
            return read_conversations(edge.data, self.base_dir, self.output_of, self.key(key))  # type: ignore[arg-type]

    def step_of(self, key: str) -> str | None:
        """The step a reference at ``key`` names, or None for a file, folder, Hub id or a key that is
        no reference (an endpoint's model name)."""
        edge = next((e for e in self.node.inputs if e.key == key), None)
        return edge.step if edge else None

    # -- models -----------------------------------------------------------------------------------

    def resolve_model(self, ref: str, key: str) -> str:
        """A model reference → a loadable folder or Hub id (a step's name → that step's output)."""
        from realchat.models import materialize_model

        if ref in self.loaded.recipe.steps:
            return str(self.output_of(ref))
        with self.blame(key):
            return materialize_model(ref, self.base_dir)

    def chat_template(self, ref: str | None, key: str) -> str | None:
        """A ``chat_template:`` value (a built-in name or a Jinja file) → the template's text; None
        when the recipe names none (the model's own applies)."""
        from realchat.models.chat_formats import template_text

        if not ref:
            return None
        with self.blame(key):
            return template_text(ref, self.base_dir)

    def token_counter(self, ref: str, key: str) -> TokenCounter:
        path = self.resolve_model(ref, key) if ref in self.loaded.recipe.steps else ref
        with self.blame(key):
            return token_counter(path, str(self.base_dir))

    def trained_simulator(self, ref: str) -> tuple[str, str | None]:
        """(system prompt, end marker) a simulator model was trained with: from its sft step's stats
        when ``ref`` names a step, else RealChat's default prompt and no marker."""
        stats = self.stats_of(ref) if ref in self.loaded.recipe.steps else {}
        return stats.get("system_prompt") or DEFAULT_USER_SYSTEM_PROMPT, stats.get("end_marker")

    @contextmanager
    def blame(self, key: str) -> Iterator[None]:
        """An input that cannot be resolved or read is reported against the recipe key that named it."""
        try:
            yield
        except RealChatError as e:
            if isinstance(e, ModelError) or e.file is None:
                e.file = str(self.loaded.path)
                if not e.field:
                    e.field = self.key(key)
                elif not e.field.startswith("steps."):
                    e.field = self.key(e.field)
            raise

    def open_backend(self, backend: Any, key: str) -> Any:
        """A recipe backend (local / openai / vllm) → an object with ``chat`` (and ``generate``)."""
        from realchat.models.backends import LocalModel, OpenAIChat, VLLMModel

        template = self.chat_template(backend.chat_template, f"{key}.chat_template")
        log = self.console.print
        if backend.kind == "openai":
            tok = self.resolve_model(backend.tokenizer, f"{key}.tokenizer") if backend.tokenizer else None
            with self.blame(f"{key}.tokenizer"):
                # batch: true keeps its batches' ids in the work folder, so a rerun re-attaches to them
                return OpenAIChat(backend, tok, template, log, batch_dir=self.work_dir() / "batches")
        path = self.resolve_model(backend.model, f"{key}.model")
        with self.blame(f"{key}.model"):
            if backend.kind == "vllm":
                opened: Any = VLLMModel(backend, path, template, log, engines=self.engines(), seed=self.seed)
            else:
                opened = LocalModel(path, backend.batch_size, template, log)
        self._opened.append(opened)
        return opened

    def engines(self) -> Any:
        """The step's vLLM engines; on first use, the vLLM backends among the step's own keys (its
        roles, up together) are declared, so the first engine already leaves room for the others."""
        from realchat.models.backends import VLLMBackend
        from realchat.models.engines import Engines, EngineSpec

        if self._engines is None:
            self._engines = Engines()
            roles = [(name, v) for name, v in self.config if isinstance(v, VLLMBackend)]
            self._engines.expect(EngineSpec(self.resolve_model(v.model, f"{name}.model"), v.tensor_parallel_size,
                                            v.dtype, v.gpu_memory_utilization, self.seed) for name, v in roles)
        return self._engines

    def close_backend(self, backend: Any) -> None:
        """A measure is done with ``backend``: its engine stops when nothing else uses it."""
        close = getattr(backend, "close", None)
        if callable(close):
            close()
        if backend in self._opened:
            self._opened.remove(backend)

    def close(self) -> None:
        """The step ended (or failed): every backend it opened is closed, its engines stopped and the GPU
        freed, the newest first."""
        for backend in reversed(list(self._opened)):
            self.close_backend(backend)
        if self._engines is not None:
            self._engines.close()

    def meter(self) -> Any:
        """The step's token and cost tally (:class:`~realchat.models.usage.Meter`): the recipe's
        ``prices``, the step's ``max_cost`` / ``max_tokens_total``, and what earlier runs of this step
        spent (``usage.json`` in its work folder), so budgets count across resumes."""
        from realchat.models.usage import Meter

        if self._meter is None:
            cfg = self.config
            self._meter = Meter(self.loaded.recipe.prices, getattr(cfg, "max_cost", None),
                                getattr(cfg, "max_tokens_total", None), self.work_dir() / "usage.json")
        return self._meter

    # -- progress ---------------------------------------------------------------------------------

    @property
    def reporter(self) -> Reporter:
        """The step's progress display (:mod:`realchat.progress`): bars on a terminal, timed plain
        lines in a job log, nothing with ``--no-progress``."""
        if self._reporter is None:
            self._reporter = Reporter(self.console, enabled=self.show_progress, interval_s=self.progress_interval_s,
                                      prefix=self.name)
        return self._reporter

    def progress(self, items: Iterable[T], description: str, total: int | None = None,
                 unit: str = "items") -> Iterator[T]:
        """Iterate, counting what passes: a bar on a terminal, a plain line every interval elsewhere."""
        return self.reporter.track(items, description, total, unit)

    def progress_counter(self, description: str, total: int | None = None, unit: str = "items",
                         completed: int = 0) -> AbstractContextManager[Counter]:
        """A counter for loops that are not one iterator: ``with ctx.progress_counter("simulate", 64,
        "sessions") as c: c.advance(8, tokens_per_s=412.0)``."""
        return self.reporter.counter(description, total, unit, completed)
