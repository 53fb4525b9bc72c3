"""The recipe: a name, named steps (each with a ``kind``), and where to publish.

A recipe is the single source of truth for a build (in the manner of alignment-handbook's recipes/):
each step's resolved config is hashed into its fingerprint and written into its card, and the whole
recipe is uploaded beside every artifact, so an artifact can always be traced to the settings that
made it. Steps name their inputs by step name; the engine builds the graph from those references.

This module holds the top-level shape only; each kind's config lives beside its ``run`` in
``realchat/steps`` and is chosen by ``kind`` when the recipe is loaded (:mod:`realchat.recipe.load`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SerializeAsAny, field_validator, model_validator

from realchat.errors import RecipeError
from realchat.recipe.base import SLUG, Slug, StepConfig, Strict
from realchat.recipe.executor import ExecutorConfig
from realchat.models.usage import PriceTable

#: The folder of publish records in a recipe's run folder (``<run_root>/<recipe>/published/``): no
#: step may take this name, or its output and the records would be one folder (``--force`` would
#: delete the other steps' records).
PUBLISHED_RECORDS = "published"


class PublishConfig(Strict):
    """Where finished steps are published: the Hugging Face Hub, or a local folder laid out like it.

    The token is never part of the recipe: it comes from ``HF_TOKEN`` or ``hf auth login``.
    """

    #: `local`: a folder laid out like the Hub; `hub`: the Hugging Face Hub (needs a token).
    target: Literal["local", "hub"] = "local"
    #: For ``target: local``: root folder; datasets go to ``<root>/datasets/<ns>/<name>``, models to
    #: ``<root>/<ns>/<name>``. Default: ``hub`` beside the run root (``runs`` → ``hub``). It must not be
    #: the run root or inside it.
    local_root: str | None = None
    #: User or organisation that owns the repos.
    namespace: str = "realchat"
    #: Repo name per step; the default is ``<recipe name>-<step>``. No two steps may publish to one
    #: repo (checked when the recipe is loaded; a repo holding another recipe's step is refused when
    #: publishing).
    repos: dict[str, str] = Field(default_factory=dict)
    #: Create Hub repos as private.
    private: bool = False
    #: Branch to commit to (created from main if missing).
    revision: str = "main"
    #: Hub endpoint; default ``$HF_ENDPOINT`` or https://huggingface.co.
    endpoint: str | None = None
    #: Publish each step right after it is built (``realchat build --no-push`` turns it off).
    push: bool = True

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        if not SLUG.fullmatch(v):
            raise ValueError("must be a Hub user or organisation name")
        return v

    @field_validator("repos")
    @classmethod
    def _repos(cls, v: dict[str, str]) -> dict[str, str]:
        for step, name in v.items():
            if not SLUG.fullmatch(name):
                raise ValueError(f"repo name {name!r} for {step}: letters, digits, '.', '_' or '-'")
        return v

    def repo_name(self, recipe: str, step: str) -> str:
        """The repo a step publishes to (without the namespace): ``repos``' name, else ``<recipe>-<step>``."""
        return self.repos.get(step) or f"{recipe}-{step}"

    def root(self, run_root: str) -> Path:
        """The local publish root: ``local_root``, else ``hub`` beside the run root."""
        return Path(self.local_root).expanduser() if self.local_root else Path(run_root).parent / "hub"


class Recipe(Strict):
    """A RealChat build: named steps of any kinds, wired by the references between them."""

    #: Slug used for the run folder and default repo names.
    name: Slug
    #: What the build is for; written to every card.
    description: str = ""
    #: Folder holding run outputs: ``<run_root>/<name>/<step>/``. Relative paths are relative to the
    #: current directory.
    run_root: str = "runs"
    #: Seed of every random choice (sampling, shuffles, training); a step may override it.
    seed: int = Field(42, ge=0, lt=2**32)
    #: Step name (a slug you choose) → its config; ``kind`` picks what the step does. ``published``
    #: is reserved (the folder of publish records).
    steps: dict[Slug, SerializeAsAny[StepConfig]] = Field(min_length=1)
    #: Where finished steps are published (a local Hub-like folder by default, or the Hub).
    publish: PublishConfig = PublishConfig()
    #: Where curation runs: ``{kind: local}`` or ``{kind: ray, address: null | auto | ray://…}``.
    executor: ExecutorConfig = ExecutorConfig()
    #: What served models cost per 1M tokens, by model name: turns each role's tokens into money in
    #: stats, cards and `realchat plan`, and lets a step's `max_cost` stop it; null = tokens only.
    #: Not part of any fingerprint.
    prices: PriceTable | None = None

    @model_validator(mode="after")
    def _repos_name_steps(self) -> "Recipe":
        unknown = sorted(set(self.publish.repos) - set(self.steps))
        if unknown:
            raise ValueError(f"publish.repos names no step of the recipe: {', '.join(unknown)} "
                             f"(steps: {', '.join(self.steps)})")
        return self

    @model_validator(mode="after")
    def _costs_priced(self) -> "Recipe":
        """A ``max_cost`` can stop a step only when every endpoint it calls has a price."""
        from realchat.models.usage import unpriced_served_models

        for step, cfg in self.steps.items():
            if getattr(cfg, "max_cost", None) is None:
                continue
            missing = unpriced_served_models(backends_of(cfg), self.prices)
            if missing:
                raise ValueError(f"steps.{step}.max_cost: prices.models names no price for {', '.join(missing)} "
                                 "(served by this step): its spending could not be counted; add "
                                 f"prices: {{models: {{{missing[0]}: {{input: …, output: …}}}}}}")
        return self

    @model_validator(mode="after")
    def _places_apart(self) -> "Recipe":
        """Every output has a place of its own: no step is named like the publish-records folder, no two
        steps publish to one repo (Hub names are case-insensitive), and locally no repo folder is the
        run folder or inside it (publishing would replace a step's output and its manifest)."""
        reserved = [s for s in self.steps if s.lower() == PUBLISHED_RECORDS]
        if reserved:
            raise ValueError(f"steps: the step name {reserved[0]!r} is reserved: <run_root>/{self.name}/"
                             f"{PUBLISHED_RECORDS}/ holds the publish records; rename the step")
        seen: dict[tuple[str, str], str] = {}
        places: list[tuple[str, str, str]] = []
        for step, cfg in self.steps.items():
            kind = "model" if type(cfg).produces == "model" else "dataset"
            repo = f"{self.publish.namespace}/{self.publish.repo_name(self.name, step)}"
            other = seen.setdefault((kind, repo.lower()), step)
            if other != step:
                raise ValueError(f"publish.repos: steps {other} and {step} both publish to the {kind} repo "
                                 f"{repo}: each would overwrite the other; give one its own name in publish.repos")
            places.append((step, kind, repo))
        if self.publish.target == "local":
            run = Path(self.run_root).expanduser().resolve()
            root = self.publish.root(self.run_root).resolve()
            if root == run or run in root.parents:
                raise ValueError(f"publish.local_root: the publish root {root} is "
                                 f"{'the run root' if root == run else 'inside the run root'} {run}: published "
                                 "repos would land in run folders; choose a folder outside the run root")
            mine = run / self.name
            for step, kind, repo in places:
                folder = root / (f"datasets/{repo}" if kind == "dataset" else repo)
                if folder == mine or mine in folder.parents or folder in mine.parents:
                    raise ValueError(f"publish: step {step} would publish to {folder}, which overlaps this "
                                     f"recipe's run folder {mine}; change publish.local_root or publish.namespace")
        return self


def backends_of(config: Any) -> list[Any]:
    """Every model backend (a config with ``kind`` and ``model`` among local/openai/vllm) a step config
    holds, at any depth (its roles, an intent summariser, a judge, benchmark models)."""
    from pydantic import BaseModel

    from realchat.models.backends import LocalBackend, OpenAIBackend, VLLMBackend

    found: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, (LocalBackend, OpenAIBackend, VLLMBackend)):
            found.append(v)
        elif isinstance(v, BaseModel):
            for name in type(v).model_fields:
                walk(getattr(v, name))
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    walk(config)
    return found


class LoadedRecipe:
    """A validated recipe with where it came from (path, text, overrides, hash) for lineage."""

    def __init__(self, recipe: Recipe, path: Path, text: str, overrides: list[str], data: dict) -> None:
        self.recipe = recipe
        self.path = path
        self.base_dir = path.parent
        self.text = text
        self.overrides = overrides
        #: The recipe as a mapping after ``--set`` overrides (what ``recipe.yaml`` beside outputs holds).
        self.data = data
        self.sha256 = hashlib.sha256(
            (text + "".join(f"\n#set {o}" for o in overrides)).encode()
        ).hexdigest()

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def run_root(self) -> Path:
        return Path(self.recipe.run_root)

    def step_names(self) -> list[str]:
        return list(self.recipe.steps)

    def config(self, step: str) -> StepConfig:
        try:
            return self.recipe.steps[step]
        except KeyError:
            raise RecipeError(f"the recipe has no step {step!r} (steps: {', '.join(self.recipe.steps)})",
                              file=str(self.path)) from None

    def excerpt(self, step: str) -> str:
        """The step's resolved config as YAML, for cards (defaults filled in, overrides applied)."""
        data = {"steps": {step: self.config(step).model_dump(mode="json")}}
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    def as_published(self) -> str:
        """The recipe that rebuilds this build: its own text, or with overrides applied."""
        if not self.overrides:
            return self.text
        head = "".join(f"# --set {o}\n" for o in self.overrides)
        return head + yaml.safe_dump(self.data, sort_keys=False, allow_unicode=True)
