"""Publishing finished stages: to the Hugging Face Hub, or to a local folder laid out like it.

Each stage's run folder (``runs/<recipe>/<stage>/``) is already what a Hub repo should hold: parquet
shards or safetensors, ``README.md`` (the card), ``stats.json`` and ``manifest.json``. Publishing
re-renders the card with the lineage resolved to published parents (repo id + commit revision) and
sends the folder as **one commit** whose message names the stage and fingerprint.

* Idempotent: when the target already holds this fingerprint with the same card, nothing is sent and
  no commit is made; the existing revision is recorded.
* Atomic: on the Hub a commit either lands whole or not at all (an interrupted upload leaves the
  previous revision as it was); locally the new folder replaces the old one in one rename.
* The token comes from ``HF_TOKEN`` or ``hf auth login`` (huggingface_hub's ``get_token``) and is
  handed to the client only: never written to a card, a record, a log or the console.

What was published is recorded in ``runs/<recipe>/published/<stage>.json`` (target, repo id, repo
type, revision, fingerprint, url); the next stage's card names its parent by that record, so a rebuild
can fetch the exact parent revision.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from realchat.errors import RealChatError
from realchat.recipe import STAGE_KIND, STAGE_ORDER, LoadedRecipe, PublishConfig
from realchat.runs import MANIFEST, atomic_output, read_manifest, read_stats, stage_dir, write_json

DEFAULT_ENDPOINT = "https://huggingface.co"


class PublishError(RealChatError):
    """Publishing failed for a reason the user can fix (token, rights, names, card metadata)."""


# -- names ---------------------------------------------------------------------------------------


def repo_id(loaded: LoadedRecipe, stage: str) -> str:
    cfg = loaded.recipe.publish
    return f"{cfg.namespace}/{cfg.repos.get(stage) or f'{loaded.name}-{stage}'}"


def endpoint(cfg: PublishConfig) -> str:
    return (cfg.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def repo_url(cfg: PublishConfig, repo: str, kind: str, revision: str | None = None,
             run_root: str = "runs") -> str:
    """Web address of a repo (Hub) or its folder (local target)."""
    if cfg.target == "local":
        return str(local_repo_dir(cfg, repo, kind, run_root).resolve())
    base = f"{endpoint(cfg)}/{'datasets/' if kind == 'dataset' else ''}{repo}"
    return f"{base}/tree/{revision}" if revision else base


def local_repo_dir(cfg: PublishConfig, repo: str, kind: str, run_root: str = "runs") -> Path:
    """``<root>/datasets/<ns>/<name>`` for datasets, ``<root>/<ns>/<name>`` for models (as on the Hub)."""
    root = Path(cfg.local_root).expanduser() if cfg.local_root else Path(run_root).parent / "hub"
    return (root / "datasets" / repo) if kind == "dataset" else (root / repo)


def record_path(loaded: LoadedRecipe, stage: str) -> Path:
    return Path(loaded.recipe.run_root) / loaded.name / "published" / f"{stage}.json"


def published_record(loaded: LoadedRecipe, stage: str, fingerprint: str | None = None) -> dict[str, Any] | None:
    """The record of the last publish of ``stage``; None if absent or of another fingerprint."""
    try:
        rec = json.loads(record_path(loaded, stage).read_text())
    except (OSError, ValueError):
        return None
    if fingerprint is not None and rec.get("fingerprint") != fingerprint:
        return None
    return rec


# -- lineage ------------------------------------------------------------------------------------


def resolve_parents(loaded: LoadedRecipe, parents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parents as written by a stage (``stage`` + ``fingerprint``, or a raw ``source``), completed with
    the repo id and commit revision they were published at, when they were."""
    out = []
    for p in parents:
        p = dict(p)
        if "stage" in p:
            rec = published_record(loaded, p["stage"], p.get("fingerprint"))
            if rec is not None:
                p.update(repo=rec["repo_id"], repo_type=rec["repo_type"], revision=rec["revision"],
                         target=rec["target"], url=rec["url"])
        out.append(p)
    return out


def lineage_chain(loaded: LoadedRecipe, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Source → … → parent, each link with a display name and, where published, repo and revision.

    Follows ``parents[0]`` through the local run folders' manifests (the first parent is the data
    the stage was made from; a model stage's base model is listed separately in its card)."""
    chain: list[dict[str, Any]] = []
    parents = manifest.get("parents") or []
    seen = 0
    while parents and seen < len(STAGE_ORDER) + 1:
        seen += 1
        first = resolve_parents(loaded, parents[:1])[0]
        if "stage" in first:
            chain.append({"name": first["stage"], **{k: first.get(k) for k in ("repo", "repo_type", "revision", "url")}})
            parent_manifest = read_manifest(stage_dir(Path(loaded.recipe.run_root), loaded.name, first["stage"]))
            parents = (parent_manifest or {}).get("parents") or []
        else:
            chain.append({"name": "source", "repo": first.get("source"), "revision": first.get("revision"),
                          "url": None, "repo_type": "source"})
            break
    return list(reversed(chain))


# -- publishing ---------------------------------------------------------------------------------


def publish_stage(loaded: LoadedRecipe, stage: str, folder: Path, log: Any = print) -> dict[str, Any]:
    """Publish a finished stage folder; returns (and records) where it went."""
    from realchat.cards import render_card

    manifest = read_manifest(folder)
    if manifest is None:
        raise PublishError(f"{folder} is not a finished stage output (no {MANIFEST}); build it first")
    cfg = loaded.recipe.publish
    kind = STAGE_KIND[stage]
    repo = repo_id(loaded, stage)
    stats = read_stats(folder)
    manifest = {**manifest, "parents": resolve_parents(loaded, manifest.get("parents") or [])}
    card = render_card(loaded, stage, manifest, stats, published_as=repo)

    if cfg.target == "local":
        dest = local_repo_dir(cfg, repo, kind, loaded.recipe.run_root)
        revision, changed = _publish_local(dest, folder, card, manifest["fingerprint"])
    else:
        revision, changed = HubPublisher(cfg).publish(repo, kind, folder, card, stage, manifest["fingerprint"])
    record = {
        "stage": stage,
        "target": cfg.target,
        "repo_id": repo,
        "repo_type": kind,
        "revision": revision,
        "fingerprint": manifest["fingerprint"],
        "url": repo_url(cfg, repo, kind, revision if cfg.target == "hub" else None, loaded.recipe.run_root),
        "endpoint": endpoint(cfg) if cfg.target == "hub" else None,
        "changed": changed,
        "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = record_path(loaded, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    write_json(tmp, record)
    os.replace(tmp, path)
    what = "published" if changed else "unchanged, no new commit"
    log(f"{stage}: {what} → {record['url']} @ {revision[:12]}")
    return record


def _publish_local(dest: Path, folder: Path, card: str, fingerprint: str) -> tuple[str, bool]:
    """Copy the folder to the Hub-like local layout; the revision is the stage fingerprint."""
    current = read_manifest(dest)
    readme = dest / "README.md"
    if current and current.get("fingerprint") == fingerprint and readme.exists() and readme.read_text() == card:
        return fingerprint, False
    with atomic_output(dest) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
        (tmp / "README.md").write_text(card)
    return fingerprint, True


class HubPublisher:
    """One commit per changed stage through ``huggingface_hub``'s HfApi, with errors a user can act on."""

    def __init__(self, cfg: PublishConfig) -> None:
        from huggingface_hub import HfApi, get_token

        self.cfg = cfg
        self.endpoint = endpoint(cfg)
        token = get_token()
        if not token:
            raise PublishError(
                "no Hugging Face token: publishing to the Hub needs one with write access",
                hint="set HF_TOKEN or run `hf auth login` (or set publish.target: local, or build --no-push)",
            )
        self.api = HfApi(endpoint=self.endpoint, token=token)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return fn(*args, **kwargs)
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            server = (e.server_message or str(e)).strip().splitlines()[0][:300]
            if status == 401:
                raise PublishError(f"{what}: the token was rejected by {self.endpoint} (401)",
                                   hint="check HF_TOKEN / `hf auth login`") from None
            if status == 403:
                raise PublishError(f"{what}: no rights ({server})",
                                   hint="use a token with write access to publish.namespace, or change it") from None
            if status == 400 and "metadata" in server.lower():
                raise PublishError(f"{what}: the Hub rejected the card metadata: {server}") from None
            raise PublishError(f"{what}: {self.endpoint} answered {status}: {server}") from None
        except RealChatError:
            raise
        except Exception as e:  # connection refused, DNS, TLS, timeouts: the transport's own types
            if isinstance(e, (OSError,)) or "connect" in type(e).__name__.lower() or "timeout" in type(e).__name__.lower():
                raise PublishError(f"{what}: cannot reach {self.endpoint} ({type(e).__name__}: {e})",
                                   hint="check the network, publish.endpoint or HF_ENDPOINT") from None
            raise

    def publish(self, repo: str, kind: str, folder: Path, card: str, stage: str,
                fingerprint: str) -> tuple[str, bool]:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, RepoCard

        api, rev = self.api, self.cfg.revision
        self._call("whoami", api.whoami)
        other = "model" if kind == "dataset" else "dataset"
        if self._call("repo check", api.repo_exists, repo, repo_type=other) and not self._call(
                "repo check", api.repo_exists, repo, repo_type=kind):
            raise PublishError(
                f"{repo} exists on {self.endpoint} as a {other} repo, but stage {stage} publishes a {kind}",
                hint=f"choose another name in publish.repos.{stage}",
            )
        try:
            RepoCard(card).validate(repo_type=kind)
        except ValueError as e:
            raise PublishError(f"card metadata the Hub rejects ({stage}): {e}") from None
        except Exception as e:  # validation endpoint unreachable: the commit below will say so
            if "connect" not in type(e).__name__.lower():
                raise
        self._call(f"create {kind} repo {repo}", api.create_repo, repo, repo_type=kind,
                   private=self.cfg.private, exist_ok=True)
        if rev != "main":
            self._call(f"create branch {rev}", api.create_branch, repo, repo_type=kind, branch=rev, exist_ok=True)
        info = self._call(f"read {repo}", api.repo_info, repo, repo_type=kind, revision=rev, files_metadata=False)
        remote_files = {s.rfilename for s in (info.siblings or [])}
        if self._remote_matches(repo, kind, info.sha, fingerprint, card, remote_files):
            return info.sha, False

        local_files = sorted(p for p in folder.rglob("*") if p.is_file())
        rel = {p.relative_to(folder).as_posix() for p in local_files}
        ops: list[Any] = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode())]
        ops += [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                for p in local_files if p.name != "README.md" or p.parent != folder]
        ops += [CommitOperationDelete(path_in_repo=f) for f in sorted(remote_files - rel - {".gitattributes"})]
        commit = self._call(
            f"commit to {repo}", api.create_commit, repo, ops, repo_type=kind, revision=rev,
            commit_message=f"realchat {stage}: fingerprint {fingerprint}",
            commit_description=f"Published by RealChat; stage `{stage}`, fingerprint `{fingerprint}`.",
            parent_commit=info.sha,
        )
        return commit.oid, True

    def _remote_matches(self, repo: str, kind: str, sha: str, fingerprint: str, card: str,
                        remote_files: set[str]) -> bool:
        if MANIFEST not in remote_files or "README.md" not in remote_files:
            return False
        from huggingface_hub import hf_hub_download

        try:
            m = json.loads(Path(hf_hub_download(repo, MANIFEST, repo_type=kind, revision=sha,
                                                endpoint=self.endpoint, token=self.api.token)).read_text())
            readme = Path(hf_hub_download(repo, "README.md", repo_type=kind, revision=sha,
                                          endpoint=self.endpoint, token=self.api.token)).read_text()
        except Exception:
            return False
        return m.get("fingerprint") == fingerprint and readme == card


def push(loaded: LoadedRecipe, stages: list[str] | None = None, log: Any = print) -> list[dict[str, Any]]:
    """Publish finished stages (all that are finished, or those named)."""
    from realchat.pipeline import plan

    plans = {p.name: p for p in plan(loaded)}
    names = stages or [n for n in loaded.stage_names() if plans[n].done]
    for n in names:
        if n not in plans:
            raise PublishError(f"--stage {n!r}: no such stage in the recipe (stages: {', '.join(plans)})")
        if not plans[n].done:
            raise PublishError(f"stage {n} is not built (or its recipe changed): run `realchat build` first")
    return [publish_stage(loaded, n, plans[n].output, log) for n in names]


# -- reading lineage back -----------------------------------------------------------------------


def _load_card_meta(ref: str, repo_type: str | None, revision: str | None, hub_endpoint: str | None) -> tuple[dict[str, Any], str]:
    """YAML metadata of a card: from a folder (or README.md path), else a Hub repo at a revision."""
    from huggingface_hub import RepoCard, hf_hub_download

    p = Path(ref).expanduser()
    if p.is_dir():
        p = p / "README.md"
    if p.is_file():
        return RepoCard.load(p).data.to_dict(), str(p.parent)
    if p.exists() or ref.startswith((".", "/", "~")):
        raise PublishError(f"{ref}: no README.md card there")
    errors = []
    for kind in [repo_type] if repo_type else ["dataset", "model"]:
        try:
            path = hf_hub_download(ref, "README.md", repo_type=kind, revision=revision, endpoint=hub_endpoint)
            return RepoCard.load(path).data.to_dict(), f"{kind} {ref}@{revision or 'main'}"
        except Exception as e:  # not found as this type: try the other
            errors.append(f"{kind}: {type(e).__name__}")
    raise PublishError(f"{ref}: not a folder with a card, nor a readable Hub repo ({'; '.join(errors)})")


def follow_lineage(ref: str, repo_type: str | None = None, revision: str | None = None,
                   hub_endpoint: str | None = None) -> list[dict[str, Any]]:
    """The chain from ``ref`` back to the raw source, read card by card (newest first)."""
    chain: list[dict[str, Any]] = []
    current: tuple[str, str | None, str | None] | None = (ref, repo_type, revision)
    while current is not None and len(chain) < 16:
        meta, where = _load_card_meta(*current, hub_endpoint)
        block = meta.get("realchat") or {}
        chain.append({"where": where, "stage": block.get("stage"), "repo": block.get("repo"),
                      "fingerprint": block.get("fingerprint"), "version": block.get("version"),
                      "recipe_sha256": block.get("recipe_sha256"), "revision": current[2]})
        parents = block.get("parents") or []
        current = None
        for parent in parents:
            if "source" in parent:
                chain.append({"where": parent["source"], "stage": "source", "repo": parent["source"],
                              "revision": parent.get("revision"), "fingerprint": None})
                break
            if parent.get("target") == "local" and parent.get("url"):
                current = (parent["url"], None, None)
                break
            if parent.get("repo"):
                current = (parent["repo"], parent.get("repo_type"), parent.get("revision"))
                break
            chain.append({"where": parent.get("path", "?"), "stage": parent.get("stage"), "repo": None,
                          "revision": None, "fingerprint": parent.get("fingerprint"),
                          "note": "parent not published: lineage ends here"})
            break
    return chain
