"""The contract of a step kind (in the manner of datatrove's blocks: one subclass, the base does the rest).

A kind is one module in ``realchat/steps`` with

* a pydantic ``Config`` (a :class:`~realchat.recipe.base.StepConfig` with ``kind: Literal[...]``):
  its inputs are fields typed ``ModelRef`` / ``DatasetRef`` / ``FileRef``, which is all the engine
  needs to wire the graph, check references and chain fingerprints;
* a ``run(ctx, out)`` that writes the payload (data shards, a model folder, a report) into ``out``
  and returns a :class:`StepResult`.

The engine owns everything after the payload: ``stats.json``, ``manifest.json`` (lineage over all
parents), ``recipe.yaml``, the card, the atomic rename and publishing. Adding a kind is one module
and one :func:`~realchat.steps.registry.register` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from realchat.recipe.base import StepConfig

if TYPE_CHECKING:  # the engine hands each run a context; steps never import the engine's build
    from realchat.engine.context import StepContext

#: ``configs`` of a conversation dataset's card: the kept rows, and what was removed as ``rejected``.
DATA_CONFIGS = [
    {"config_name": "default", "default": True, "data_files": [{"split": "train", "path": "data/*.parquet"}]},
    {"config_name": "rejected", "data_files": [{"split": "train", "path": "rejected/*.parquet"}]},
]


def data_configs(out: Path) -> list[dict[str, Any]]:
    """:data:`DATA_CONFIGS` less the ``rejected`` config when nothing was rejected: ``datasets`` cannot
    load a split of 0 rows ("Instruction 'train' corresponds to no data"), so a card must not offer it.
    The empty shard stays in ``rejected/`` (it documents the columns)."""
    import pyarrow.parquet as pq

    rejected = sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((out / "rejected").glob("*.parquet")))
    configs = [c for c in DATA_CONFIGS if c["config_name"] != "rejected" or rejected > 0]
    splits = data_splits(out)
    if splits != ["train"]:  # curate's train and held_out shards: real splits of the default config
        configs[0] = {**configs[0], "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits]}
    shared = sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((out / "sharegpt").glob("*.parquet")))
    if shared:  # a simulation's ShareGPT export (also as sharegpt/realchat.jsonl, the paper's file)
        configs.append({"config_name": "sharegpt", "data_files": [{"split": "train", "path": "sharegpt/*.parquet"}]})
    if (out / "intents" / "intents.jsonl").is_file():  # the goals the step used (realchat.intents.write_intents)
        configs.append({"config_name": "intents", "data_files": [{"split": "train", "path": "intents/intents.jsonl"}]})
    return configs


def data_splits(out: Path) -> list[str]:
    """The splits of ``data/`` by its shard names (``<split>-00000-of-00002.parquet``, as curate writes
    them): ``train`` first; ``["train"]`` for a folder whose shards are named otherwise."""
    import re

    found = {m.group(1) for f in (out / "data").glob("*.parquet")
             if (m := re.fullmatch(r"(\w+)-\d{5}-of-\d{5}\.parquet", f.name))}
    return ["train", *sorted(found - {"train"})] if "train" in found else ["train"]


@dataclass
class StepResult:
    """What a step's payload left for the engine to record."""

    #: Every figure of the run: written to ``stats.json`` and shown in the card.
    stats: dict[str, Any]
    #: Extra manifest fields (dataset ``configs``, the models a simulation used, …).
    manifest: dict[str, Any] = field(default_factory=dict)


class StepKind:
    """One kind of step. Subclasses set ``name``, ``Config`` and ``card``, and implement :meth:`run`."""

    name: ClassVar[str]
    Config: ClassVar[type[StepConfig]]
    #: Card template family: ``dataset`` (the shared dataset card, with this kind's section from
    #: ``cards/sections/<name>.md``) or ``model``.
    card: ClassVar[str] = "dataset"
    #: One-line description for ``realchat plan`` and the schema.
    summary: ClassVar[str] = ""
    #: True when this kind's figures belong in its parents' cards (an evaluation): the engine then
    #: re-renders (and republishes) those cards after building it, with :meth:`section_for_parent`.
    shows_in_parent_cards: ClassVar[bool] = False
    #: True when every process of a multi-process launch (torchrun, accelerate launch) must run this
    #: kind together (training); otherwise only the main process runs it and the others wait
    #: (:mod:`realchat.engine.ranks`). Either way only the main process writes and publishes.
    every_rank: ClassVar[bool] = False

    def external_inputs(self, config: StepConfig, base_dir: Path) -> list[Any]:
        """Inputs not written as references (curate's source file): their identity enters the
        fingerprint and the lineage. Default: none."""
        return []

    def check(self, config: StepConfig, base_dir: Path) -> None:
        """Checks of the config against the files it names, before anything runs (raise RecipeError
        with ``field`` relative to the step); the engine adds the file and the step's key path."""

    def check_launch(self, config: StepConfig, world_size: int, recipe: Path) -> None:
        """Checks of the config against how this build of ``recipe`` was launched (``world_size`` processes), made
        at build time for the steps that will run, before any of them starts (raise RecipeError with
        ``field`` relative to the step); default none."""

    def section_for_parent(self, stats: dict[str, Any], parent: str, repo: str) -> str:
        """Markdown this step adds to the card of ``parent`` (one of its inputs); default none."""
        return ""

    def card_metadata(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Hub card metadata this kind knows better than the defaults (a dataset card's
        ``annotations_creators`` / ``language_creators`` / ``language``, extra ``tags``); default none."""
        return {}

    def card_context(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Extra values this kind's card section uses (``extra`` in the template); default none."""
        return {}

    def estimate(self, config: StepConfig) -> list[Any]:
        """``realchat plan``'s estimate of the calls and tokens of each model role of this step
        (:class:`~realchat.models.usage.RoleEstimate`), from the recipe's sizes alone; default none."""
        return []

    def run(self, ctx: "StepContext", out: Path) -> StepResult:  # pragma: no cover - abstract
        raise NotImplementedError
