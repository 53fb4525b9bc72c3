"""Dataset and model cards, rendered from the templates in ``cards/`` with huggingface_hub's card API.

A card is where a downstream user learns what an artifact is: its YAML header carries the metadata
the Hub indexes (license, language, task, size, configs so ``load_dataset`` finds both the kept and
the rejected data) plus a ``realchat`` block with the lineage a machine can follow (recipe hash, stage,
fingerprint, package version, source and revision); its body shows the stage's config as it ran (in
the manner of distilabel, which serialises the pipeline into the card) and its statistics.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from realchat.recipe import LoadedRecipe


def templates_dir() -> Path:
    """``cards/`` of the source tree, or its copy inside the installed wheel (``realchat/_cards``)."""
    packaged = Path(str(resources.files("realchat"))) / "_cards"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "cards"


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
              (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]
    for limit, label in bounds:
        if n < limit:
            return label
    return "10M<n<100M"


def _languages(stats: dict[str, Any], min_share: float = 0.005) -> list[str]:
    langs = stats.get("languages") or {}
    total = sum(langs.values()) or 1
    return [k for k, v in langs.items() if v / total >= min_share and k != "und"]


def render_dataset_card(loaded: LoadedRecipe, stage: str, manifest: dict[str, Any],
                        stats: dict[str, Any]) -> str:
    source = manifest["source"]
    card_data = DatasetCardData(
        pretty_name=f"{loaded.name}: {stage}",
        license=getattr(loaded.stage_config(stage), "license", "other"),
        language=_languages(stats) or None,
        task_categories=["text-generation"],
        size_categories=[size_category(stats["kept_rows"])],
        source_datasets=[source["path"]],
        tags=["realchat", "conversational", "user-simulator", stage],
        configs=[
            {"config_name": "default", "default": True,
             "data_files": [{"split": "train", "path": "data/*.parquet"}]},
            {"config_name": "rejected", "data_files": [{"split": "train", "path": "rejected/*.parquet"}]},
        ],
        realchat={
            "stage": stage,
            "recipe": loaded.name,
            "recipe_sha256": manifest["recipe_sha256"],
            "fingerprint": manifest["fingerprint"],
            "version": manifest["realchat_version"],
            "parents": [{"source": source["path"], "format": source["format"],
                         "revision": source["revision"]}],
        },
    )
    card = DatasetCard.from_template(
        card_data,
        template_path=str(templates_dir() / f"{stage}_dataset_card.md"),
        recipe=loaded,
        stage=stage,
        manifest=manifest,
        stats=stats,
        excerpt=loaded.stage_excerpt(stage),
    )
    return str(card)
