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

import json
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
    #: Hub metadata the kind knows (``StepKind.card_metadata``: creators, languages, extra tags).
    metadata: dict[str, Any] = field(default_factory=dict)


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
            what = f"{p.get('role')} `{p.get('package') or p.get('source')}`" + (f" ({p['format']})" if p.get("format") else "")
            where = (f"`{p['repo']}`" if p.get("repo") else f"served at `{p['endpoint']}`" if p.get("endpoint")
                     else f"local copy of `{p['upstream']}`" if p.get("upstream") else "–")
            ident = (f"commit `{p['revision']}`" if p.get("revision") else f"sha256 `{p['sha256']}`" if p.get("sha256")
                     else "commit unknown (offline, not cached)" if p.get("repo") else "–")
        rows.append(f"| `{p.get('key')}` | {what} | {where} | {ident} |")
    return "\n".join(rows)


#: ``license_name`` of a card whose licence is ``other`` and whose step names none.
OTHER_LICENSE_NAME = "other-see-sources"


def license_fields(ci: CardInput) -> dict[str, Any]:
    """``license``, and with ``other`` the ``license_name`` / ``license_link`` the Hub's spec asks for
    (the link defaults to ``LICENSE.md``, which the engine writes beside the card)."""
    if ci.license != "other":
        return {"license": ci.license}
    return {"license": "other", "license_name": ci.metadata.get("license_name") or OTHER_LICENSE_NAME,
            "license_link": ci.metadata.get("license_link") or "LICENSE.md"}


def license_text(recipe: str, step: str, parents: list[dict[str, Any]]) -> str:
    """``LICENSE.md`` of an artifact under ``license: other``: no licence of its own is claimed; the
    terms of every input apply (a simulation's text is the output of the models that wrote it)."""
    lines = [f"# Licence of `{recipe}: {step}`", "",
             "RealChat claims no licence of its own for this artifact. It was made from the inputs below, "
             "and their terms apply to it (for generated text: the terms of the models that wrote it; for "
             "curated data: the terms of the source). Set `license` (a Hub licence id), or `license_name` and "
             "`license_link`, in the step's recipe config to state one.", ""]
    for p in parents:
        what = f"step `{p['step']}`" if p.get("step") else f"{p.get('role')} `{p.get('source')}`"
        lines.append(f"- `{p.get('key')}`: {what}")
    return "\n".join(lines) + "\n"


def _short(value: Any, chars: int = 160, items: int = 4) -> Any:
    """A record cut down for a card: long strings end in an ellipsis, long lists keep their head."""
    if isinstance(value, str):
        return value if len(value) <= chars else value[:chars] + "…"
    if isinstance(value, list):
        return [_short(v, chars, items) for v in value[:items]] + (["…"] if len(value) > items else [])
    if isinstance(value, dict):
        return {k: _short(v, chars, items) for k, v in value.items()}
    return value


def sample_records(folder: Path, configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first record of each config's files (parquet or JSON lines), shortened: what a card shows."""
    import pyarrow.parquet as pq

    out: dict[str, Any] = {}
    for c in configs:
        for spec in c.get("data_files") or []:
            for path in sorted(folder.glob(spec["path"])):
                row = None
                if path.suffix == ".parquet":
                    pf = pq.ParquetFile(path)
                    if pf.metadata.num_rows:
                        row = next(pf.iter_batches(batch_size=1)).to_pylist()[0]
                elif path.suffix in (".jsonl", ".json"):
                    with path.open(encoding="utf-8") as f:
                        first = next((line for line in f if line.strip()), None)
                    row = json.loads(first) if first else None
                if row is not None:
                    out[c["config_name"]] = _short(row)
                    break
            if c["config_name"] in out:
                break
    return out


def to_json(value: Any, indent: int | None = None) -> str:
    """JSON for a card's text: unlike jinja's ``tojson`` it keeps quotes and non-ASCII as they are
    (no ``\\u0027``), so the card reads as written and a Python string stays valid."""
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


def _dataset_repos(parents: list[dict[str, Any]]) -> list[str]:
    """Parents published as Hub datasets (the metadata the Hub links datasets and models by)."""
    # once each: two inputs may read one repo (usergpt's dataset and eval_dataset, both of curate)
    return list(dict.fromkeys(p["repo"] for p in parents if p.get("repo") and p.get("repo_type") == "dataset"))


def realchat_block(ci: CardInput) -> dict[str, Any]:
    """The machine-readable lineage in every card's YAML header (``realchat lineage`` follows it)."""
    keep = ("key", "role", "step", "split", "fingerprint", "repo", "repo_type", "revision", "requested_revision",
            "target", "repo_path", "url", "source", "package", "sha256", "format", "upstream", "endpoint")
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
    configs = [c["config_name"] for c in ci.manifest.get("configs") or []]
    return dict(recipe_name=ci.recipe_name, description=markdown_text(ci.description), step=ci.step, kind=ci.kind,
                manifest=ci.manifest, stats=ci.stats, excerpt=ci.excerpt, repo=ci.repo,
                evaluation=ci.evaluation, parents_table=parents_table(ci.manifest.get("parents") or []),
                extra=ci.extra, configs=configs, samples=ci.manifest.get("samples") or {}, json=to_json,
                local_path=ci.repo_path, sources=_source_lines(ci.manifest.get("parents") or []))


def _source_lines(parents: list[dict[str, Any]]) -> list[str]:
    """The raw sources (files, packages) in words: the Hub's ``source_datasets`` holds Hub ids only."""
    return [f"`{p.get('package') or p['source']}`" + (f" ({p['format']})" if p.get("format") else "")
            + (f", the Hub dataset `{p['repo']}` at commit `{p['revision']}`" if p.get("repo") and p.get("revision")
               else f", the Hub dataset `{p['repo']}`" if p.get("repo") else "")
            + (f", a copy of the Hub dataset `{p['upstream']}`" if p.get("upstream") else "")
            + (f", sha256 `{str(p['sha256'])[:16]}…`" if p.get("sha256") else "")
            for p in parents if p.get("source") and p.get("role") == "dataset"]


def render_card(ci: CardInput) -> str:
    if ci.card == "model":
        return _model_card(ci)
    return _dataset_card(ci)


def _dataset_card(ci: CardInput) -> str:
    parents = ci.manifest.get("parents") or []
    # Hub ids only: a source's Hub dataset where it has one (a pkg:// file is described in the body)
    sources = [p.get("repo") or p["upstream"] for p in parents
               if p.get("source") and p.get("role") == "dataset" and (p.get("repo") or p.get("upstream"))]
    dataset_repos = _dataset_repos(parents)
    meta = {k: v for k, v in ci.metadata.items() if k not in ("license_name", "license_link")}
    langs = _languages({"languages": meta.pop("languages", None) or ci.stats.get("languages") or {}})
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
        **license_fields(ci),
        language=langs or ["und"],  # ISO 639-2 "undetermined" when no language ID ran on it
        annotations_creators=meta.pop("annotations_creators", None),
        language_creators=meta.pop("language_creators", None),
        task_categories=["text-generation"],
        size_categories=[size_category(ci.stats.get("kept_rows", ci.stats.get("rows", 0)) or 0)],
        source_datasets=list(dict.fromkeys(sources + dataset_repos)) or None,
        tags=["realchat", "conversational", "user-simulator", ci.kind, *meta.pop("tags", [])],
        configs=ci.manifest.get("configs") or None,
        realchat=realchat_block(ci),
        **meta,
    )
    card = DatasetCard.from_template(card_data, template_path=str(templates_dir() / "dataset_card.md"),
                                     section=section, **context)
    return str(card)


def _model_card(ci: CardInput) -> str:
    parents = ci.manifest.get("parents") or []
    base = next((p for p in parents if p.get("key") == "base_model"), {})
    base_repo = base.get("repo") or base.get("upstream")
    card_data = ModelCardData(
        **license_fields(ci),
        base_model=base_repo or None,
        # fine-tuned from it (from a GGUF copy, de-quantised first: the card's body says so)
        base_model_relation="finetune" if base_repo else None,
        datasets=_dataset_repos(parents) or None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["realchat", "trl", "sft", ci.kind],
        realchat=realchat_block(ci),
    )
    context = _context(ci)
    source = str(base.get("source") or "")
    context["base_gguf"] = (base.get("package") or source) if source.endswith(".gguf") else None
    card = ModelCard.from_template(card_data, template_path=str(templates_dir() / "model_card.md"), **context)
    return str(card)
