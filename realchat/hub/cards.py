"""Dataset and model cards, rendered from the templates in ``cards/`` with huggingface_hub's card API.

A card is where a downstream user learns what an artifact is: its YAML header carries the metadata
the Hub indexes (license, language, task, size, configs so ``load_dataset`` finds both the kept and
the rejected data) plus a ``realchat`` block with the lineage a machine can follow (recipe hash, step,
kind, fingerprint, package version, and every parent: a step's repo and revision, or a source's
identity); its body shows the step's config as it ran and its statistics, and says the one command
that rebuilds it from the ``recipe.yaml`` uploaded beside it (distilabel uploads its pipeline the same
way).

Dataset kinds share one template (``cards/dataset_card.md``) with a section per kind
(``cards/sections/<kind>.md``); models use ``cards/model_card.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

@dataclass
class CardInput:
    """Everything a card shows, gathered by the engine."""

    recipe_name: str
    description: str
    step: str
    kind: str
    #: ``dataset`` or ``model``: which template family.
    card: str
    license: str
    manifest: dict[str, Any]
    stats: dict[str, Any]
    excerpt: str
    #: Sections of steps that evaluated this one (markdown), or "".
    evaluation: str
    #: The repo id it is (or will be) published as, and, for a local target, its path below the root.
    repo: str
    repo_path: str | None = None
    #: Anything else a kind's section wants (the evaluation report's markdown and plots).
    extra: dict[str, Any] = field(default_factory=dict)


def templates_dir() -> Path:
    """``cards/`` of the source tree, or its copy inside the installed wheel (``realchat/_cards``)."""
    packaged = Path(str(resources.files("realchat"))) / "_cards"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "cards"


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


def parents_table(parents: list[dict[str, Any]]) -> str:
    """Every input of the step: the key that named it, what it is, where it was published."""
    rows = ["| input (key) | what | on the Hub / published as | identity |", "| --- | --- | --- | --- |"]
    for p in parents:
        if p.get("step"):
            what = f"step `{p['step']}`" + (f" (split `{p['split']}`)" if p.get("split") else "")
            where = f"`{p['repo']}`" if p.get("repo") else "not published"
            ident = f"revision `{str(p['revision'])[:12]}`" if p.get("revision") else f"fingerprint `{str(p.get('fingerprint'))[:12]}`"
        else:
            what = f"{p.get('role')} `{p.get('source')}`"
            where = f"`{p['repo']}`" if p.get("repo") else "–"
            ident = f"`{str(p.get('revision'))[:24]}`" if p.get("revision") else "–"
        rows.append(f"| `{p.get('key')}` | {what} | {where} | {ident} |")
    return "\n".join(rows)


def _dataset_repos(parents: list[dict[str, Any]]) -> list[str]:
    """Parents published as Hub datasets (the metadata the Hub links datasets and models by)."""
    return [p["repo"] for p in parents if p.get("repo") and p.get("repo_type") == "dataset"]


def realchat_block(ci: CardInput) -> dict[str, Any]:
    """The machine-readable lineage in every card's YAML header (``realchat lineage`` follows it)."""
    keep = ("key", "role", "step", "split", "fingerprint", "repo", "repo_type", "revision", "target", "repo_path",
            "url", "source", "format")
    return {
        "step": ci.step,
        "kind": ci.kind,
        "recipe": ci.recipe_name,
        "recipe_sha256": ci.manifest["recipe_sha256"],
        "fingerprint": ci.manifest["fingerprint"],
        "version": ci.manifest["realchat_version"],
        "repo": ci.repo,
        "repo_path": ci.repo_path,
        "parents": [{k: p[k] for k in keep if p.get(k) is not None} for p in ci.manifest.get("parents") or []],
    }


#: Characters that open a markdown block when they start a line (heading, quote, list, table, rule).
_BLOCK_START = re.compile(r"^([ \t]*)([#>+*=|_~-]|\d+(?=[.)]))", re.MULTILINE)


def markdown_text(text: str) -> str:
    """A recipe's free text as plain text inside a card: raw HTML (``<script>``) is shown, not run, and a
    line starting with ``#``, ``>``, ``-``, ``|``... is not a heading, quote, list, table or rule of the
    card; backticks cannot open a code fence that swallows the rest of it."""
    text = str(markupsafe.escape(text))
    text = text.replace("`", "\\`")

    def neutral(m: re.Match[str]) -> str:  # "\# title"; "1\. item" (a digit cannot be escaped, its dot can)
        mark = m.group(2)
        return m.group(1) + (mark + "\\" if mark.isdigit() else "\\" + mark)

    return _BLOCK_START.sub(neutral, text)


def _context(ci: CardInput) -> dict[str, Any]:
    return dict(recipe_name=ci.recipe_name, description=markdown_text(ci.description), step=ci.step, kind=ci.kind,
                manifest=ci.manifest, stats=ci.stats, excerpt=ci.excerpt, repo=ci.repo,
                evaluation=ci.evaluation, parents_table=parents_table(ci.manifest.get("parents") or []),
                extra=ci.extra)


def render_card(ci: CardInput) -> str:
    if ci.card == "model":
        return _model_card(ci)
    return _dataset_card(ci)


def _dataset_card(ci: CardInput) -> str:
    parents = ci.manifest.get("parents") or []
    sources = [p["source"] for p in parents if p.get("source") and p.get("role") == "dataset"]
    dataset_repos = _dataset_repos(parents)
    context = _context(ci)
    section_file = templates_dir() / "sections" / f"{ci.kind}.md"
    if not section_file.exists():  # a kind without a section of its own (a plug-in): its figures
        section_file = templates_dir() / "sections" / "default.md"
    section = ""
    if section_file.exists():
        env = jinja2.Environment(undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)
        section = env.from_string(section_file.read_text(encoding="utf-8")).render(**context)
    card_data = DatasetCardData(
        pretty_name=f"{ci.recipe_name}: {ci.step}",
        license=ci.license,
        language=_languages(ci.stats) or None,
        task_categories=["text-generation"],
        size_categories=[size_category(ci.stats.get("kept_rows", ci.stats.get("rows", 0)) or 0)],
        source_datasets=(sources + dataset_repos) or None,
        tags=["realchat", "conversational", "user-simulator", ci.kind],
        configs=ci.manifest.get("configs") or None,
        realchat=realchat_block(ci),
    )
    card = DatasetCard.from_template(card_data, template_path=str(templates_dir() / "dataset_card.md"),
                                     section=section, **context)
    return str(card)


def _model_card(ci: CardInput) -> str:
    parents = ci.manifest.get("parents") or []
    base = next((p for p in parents if p.get("key") == "base_model"), {})
    card_data = ModelCardData(
        license=ci.license,
        base_model=base.get("repo") or None,
        datasets=_dataset_repos(parents) or None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["realchat", "trl", "sft", ci.kind],
        realchat=realchat_block(ci),
    )
    card = ModelCard.from_template(card_data, template_path=str(templates_dir() / "model_card.md"), **_context(ci))
    return str(card)
