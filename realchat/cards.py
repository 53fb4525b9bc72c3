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


#: ``configs`` of a dataset card: the kept rows as the default config, what was removed as ``rejected``.
DATA_CONFIGS = [
    {"config_name": "default", "default": True, "data_files": [{"split": "train", "path": "data/*.parquet"}]},
    {"config_name": "rejected", "data_files": [{"split": "train", "path": "rejected/*.parquet"}]},
]


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


def chain_markdown(chain: list[dict[str, Any]], this: str) -> str:
    """``source → curate → … → **this**`` with links to the published revisions."""
    links = []
    for link in chain:
        label = f"{link['name']}: `{link.get('repo') or '?'}`"
        if link.get("revision"):
            label += f" @ `{str(link['revision'])[:12]}`"
        url = link.get("url")
        links.append(f"[{label}]({url})" if url and str(url).startswith("http") else label)
    return " → ".join(links + [f"**{this}**"])


def realchat_block(loaded: LoadedRecipe, stage: str, manifest: dict[str, Any],
                   published_as: str | None) -> dict[str, Any]:
    """The machine-readable lineage in every card's YAML header (``realchat lineage`` follows it)."""
    return {
        "stage": stage,
        "recipe": loaded.name,
        "recipe_sha256": manifest["recipe_sha256"],
        "fingerprint": manifest["fingerprint"],
        "version": manifest["realchat_version"],
        "repo": published_as,
        "parents": manifest.get("parents") or [],
    }


def render_card(loaded: LoadedRecipe, stage: str, manifest: dict[str, Any], stats: dict[str, Any],
                published_as: str | None = None) -> str:
    """The card of a stage's artifact, from ``cards/<stage>_{dataset,model}_card.md``."""
    from realchat.publish import lineage_chain, repo_id
    from realchat.recipe import STAGE_KIND

    published_as = published_as or repo_id(loaded, stage)
    chain = chain_markdown(lineage_chain(loaded, manifest), f"{stage}: {published_as}")
    common = dict(recipe=loaded, stage=stage, manifest=manifest, stats=stats,
                  excerpt=loaded.stage_excerpt(stage), chain=chain, repo=published_as,
                  evaluation=evaluation_section(loaded, stage, manifest))
    if stage == "evaluate":
        from realchat.report import report_markdown

        results = stats.get("report") or {}
        common.update(report=report_markdown(results), plots=results.get("plots") or [])
    block = realchat_block(loaded, stage, manifest, published_as)
    if STAGE_KIND[stage] == "dataset":
        return render_dataset_card(loaded, stage, manifest, stats, block, common)
    return render_model_card(loaded, stage, manifest, stats, block, common)


def evaluation_section(loaded: LoadedRecipe, stage: str, manifest: dict[str, Any]) -> str:
    """The evaluation figures for the card of ``simulate`` (RealChat) or ``train_assistant`` (ReaLM):
    present once the recipe's evaluate stage has been built on exactly this output (same fingerprint)."""
    from realchat.publish import repo_id
    from realchat.report import card_section
    from realchat.runs import read_manifest, read_stats, stage_dir

    if stage not in ("simulate", "train_assistant") or loaded.recipe.stages.evaluate is None:
        return ""
    folder = stage_dir(Path(loaded.recipe.run_root), loaded.name, "evaluate")
    ev = read_manifest(folder)
    if ev is None or not any(p.get("stage") == stage and p.get("fingerprint") == manifest.get("fingerprint")
                             for p in ev.get("parents") or []):
        return ""
    return card_section(read_stats(folder).get("report") or {}, stage, repo_id(loaded, "evaluate"))


def _dataset_parents(manifest: dict[str, Any]) -> list[str]:
    return [p["repo"] for p in manifest.get("parents") or [] if p.get("repo") and p.get("repo_type") == "dataset"]


def render_dataset_card(loaded: LoadedRecipe, stage: str, manifest: dict[str, Any],
                        stats: dict[str, Any], block: dict[str, Any], context: dict[str, Any]) -> str:
    sources = [p["source"] for p in manifest.get("parents") or [] if "source" in p]
    card_data = DatasetCardData(
        pretty_name=f"{loaded.name}: {stage}",
        license=getattr(loaded.stage_config(stage), "license", "other"),
        language=_languages(stats) or None,
        task_categories=["text-generation"],
        size_categories=[size_category(stats.get("kept_rows", stats.get("rows", 0)) or 0)],
        source_datasets=(sources + _dataset_parents(manifest)) or None,
        tags=["realchat", "conversational", "user-simulator", stage],
        configs=manifest.get("configs") or DATA_CONFIGS[:1],
        realchat=block,
    )
    card = DatasetCard.from_template(
        card_data, template_path=str(templates_dir() / f"{stage}_dataset_card.md"), **context)
    return str(card)


def render_model_card(loaded: LoadedRecipe, stage: str, manifest: dict[str, Any],
                      stats: dict[str, Any], block: dict[str, Any], context: dict[str, Any]) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    base = manifest.get("base_model") or {}
    card_data = ModelCardData(
        license=getattr(loaded.stage_config(stage), "license", "apache-2.0"),
        base_model=base.get("repo") or None,
        datasets=_dataset_parents(manifest) or None,
        library_name="transformers",
        pipeline_tag="text-generation",
        language=None,
        tags=["realchat", "trl", "sft", stage],
        realchat=block,
    )
    template = templates_dir() / f"{stage}_model_card.md"
    if not template.exists():
        template = templates_dir() / "model_card.md"
    card = ModelCard.from_template(card_data, template_path=str(template), **context)
    return str(card)
