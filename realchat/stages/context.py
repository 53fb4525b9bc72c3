"""What a stage gets from the engine: the recipe, a console, progress bars, references to other stages."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from realchat.errors import ModelError, RecipeError
from realchat.models import TokenCounter, token_counter
from realchat.recipe import DEFAULT_USER_SYSTEM_PROMPT, STAGE_REF, LoadedRecipe
from realchat.runs import read_manifest, stage_dir

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

    # -- other stages -----------------------------------------------------------------------------

    def stage_output(self, name: str) -> Path:
        """The finished output folder of stage ``name`` (an error if it is not built)."""
        if name.startswith(STAGE_REF):
            name = name[len(STAGE_REF):]
        folder = stage_dir(Path(self.loaded.recipe.run_root), self.loaded.name, name)
        if read_manifest(folder) is None:
            raise RecipeError(f"stage {name} is not built; `realchat build` builds it before {self.stage}",
                              file=str(self.loaded.path), field=f"stages.{self.stage}")
        return folder

    def parent_ref(self, name: str) -> dict[str, Any]:
        """A parent stage as lineage: stage, fingerprint, local path (publishing adds repo + revision)."""
        if name.startswith(STAGE_REF):
            name = name[len(STAGE_REF):]
        folder = self.stage_output(name)
        return {"stage": name, "fingerprint": (read_manifest(folder) or {}).get("fingerprint"),
                "path": str(folder)}

    def stage_stats(self, name: str) -> dict[str, Any]:
        """The ``stats.json`` of finished stage ``name`` (or ``stage:name``)."""
        from realchat.runs import read_stats

        return read_stats(self.stage_output(name))

    def parent_refs(self) -> list[dict[str, Any]]:
        """Lineage of every stage this stage reads, as the engine finds them in its config."""
        from realchat.pipeline import stage_inputs

        return [self.parent_ref(name) for name in stage_inputs(self.loaded, self.stage)[0]]

    def trained_simulator(self, ref: str) -> tuple[str | None, str | None]:
        """(system prompt, end marker) a simulator model was trained with: from its train stage's
        stats when ``ref`` names a stage, else RealChat's default prompt and no marker."""
        stats = self.stage_stats(ref) if ref.startswith(STAGE_REF) else {}
        return stats.get("system_prompt", DEFAULT_USER_SYSTEM_PROMPT), stats.get("end_marker")

    def resolve_model(self, ref: str, field_path: str) -> str:
        """A model reference → a loadable folder or Hub id (``stage:`` refs → that stage's output)."""
        from realchat.models import materialize_model

        if ref.startswith(STAGE_REF):
            return str(self.stage_output(ref))
        with self.blame(field_path):
            return materialize_model(ref, self.loaded.base_dir)

    @contextmanager
    def blame(self, field_path: str) -> Iterator[None]:
        """A model that cannot be resolved or loaded is reported against the recipe key that named it."""
        try:
            yield
        except ModelError as e:
            e.file, e.field = str(self.loaded.path), field_path
            raise

    def open_backend(self, backend: Any, field_path: str) -> Any:
        """A recipe backend (local / openai / vllm) → an object with ``chat`` (and ``generate``)."""
        from realchat.backends import LocalModel, OpenAIChat, VLLMModel

        if backend.kind == "openai":
            return OpenAIChat(backend)
        path = self.resolve_model(backend.model, f"{field_path}.model")
        with self.blame(f"{field_path}.model"):
            if backend.kind == "vllm":
                return VLLMModel(backend, path)
            return LocalModel(path, backend.batch_size)

    def model_ref_lineage(self, ref: str) -> dict[str, Any]:
        from realchat.models import model_identity

        if ref.startswith(STAGE_REF):
            return self.parent_ref(ref)
        from realchat.models import upstream_repo

        return {"source": ref, **model_identity(ref, self.loaded.base_dir), "repo": upstream_repo(ref)}

    def manifest(self, fingerprint: str, **fields: Any) -> dict[str, Any]:
        """A stage's ``manifest.json``: the lineage header every stage shares, then its own fields."""
        import platform
        from datetime import datetime, timezone

        from realchat import __version__

        return {
            "stage": self.stage,
            "fingerprint": fingerprint,
            "recipe": self.loaded.name,
            "recipe_file": str(self.loaded.path),
            "recipe_sha256": self.loaded.sha256,
            "realchat_version": __version__,
            "python": platform.python_version(),
            **fields,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def work_dir(self, fingerprint: str) -> Path:
        """Checkpoints and other resumable state of this stage's run (kept across interruptions)."""
        return Path(self.loaded.recipe.run_root) / self.loaded.name / ".work" / f"{self.stage}-{fingerprint[:16]}"

    # -- progress ---------------------------------------------------------------------------------

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
