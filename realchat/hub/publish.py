"""Publishing finished steps: to the Hugging Face Hub, or to a local folder laid out like it.

Each step's run folder (``runs/<recipe>/<step>/``) is already what a Hub repo should hold: parquet
shards or safetensors, ``README.md`` (the card), ``recipe.yaml``, ``stats.json`` and
``manifest.json``. Publishing re-renders the card with the lineage resolved to published parents (repo
id + commit revision on the Hub; a path relative to the publish root locally, so a copied or moved
folder still resolves) and sends the folder as **one commit** whose message names the step and
fingerprint.

* Idempotent: when the target already holds this fingerprint with the same card, nothing is sent and
  no commit is made; the existing revision is recorded.
* Atomic: on the Hub a commit either lands whole or not at all (an interrupted upload leaves the
  previous revision as it was); locally the new folder is assembled beside the old one (files
  hard-linked from the run folder, copied across filesystems) and replaces it in one rename.
* Never loses data: locally, only the files in RealChat's own list (``.realchat-files.json``) are
  replaced; a user's file in the repo folder is carried over, and only temporary folders RealChat
  marked as its own are ever swept.
* The token comes from ``HF_TOKEN`` or ``hf auth login`` (huggingface_hub's ``get_token``) and is
  handed to the client only: never written to a card, a record, a log or the console.

What was published is recorded in ``runs/<recipe>/published/<step>.json`` (target, repo id, repo
type, revision, fingerprint, url, repo_path); a child step's card names its parents by those records,
so a rebuild can fetch the exact parent revisions.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from realchat.errors import RealChatError, user_file
from realchat.files import read_json, write_json
from realchat.recipe.schema import PUBLISHED_RECORDS, LoadedRecipe, PublishConfig

MANIFEST = "manifest.json"

DEFAULT_ENDPOINT = "https://huggingface.co"


class PublishError(RealChatError):
    """Publishing failed for a reason the user can fix (token, rights, names, card metadata)."""


# -- names ---------------------------------------------------------------------------------------


def repo_id(loaded: LoadedRecipe, step: str) -> str:
    cfg = loaded.recipe.publish
    return f"{cfg.namespace}/{cfg.repo_name(loaded.name, step)}"


def repo_type(loaded: LoadedRecipe, step: str) -> str:
    """``model`` for steps that make a model, ``dataset`` for the rest (data, reports)."""
    return "model" if type(loaded.config(step)).produces == "model" else "dataset"


def repo_path(repo: str, kind: str) -> str:
    """Where a repo lives below a local publish root, as on the Hub: ``datasets/<ns>/<name>`` or ``<ns>/<name>``."""
    return f"datasets/{repo}" if kind == "dataset" else repo


def local_root(cfg: PublishConfig, run_root: str = "runs") -> Path:
    return cfg.root(run_root)


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
    return local_root(cfg, run_root) / repo_path(repo, kind)


def record_path(loaded: LoadedRecipe, step: str) -> Path:
    return Path(loaded.recipe.run_root) / loaded.name / PUBLISHED_RECORDS / f"{step}.json"


def published_record(loaded: LoadedRecipe, step: str, fingerprint: str | None = None) -> dict[str, Any] | None:
    """The record of the last publish of ``step``; None if absent or of another fingerprint."""
    rec = read_json(record_path(loaded, step))
    if not isinstance(rec, dict):
        return None
    if fingerprint is not None and rec.get("fingerprint") != fingerprint:
        return None
    return rec


def destination(loaded: LoadedRecipe, step: str) -> dict[str, Any]:
    """Where ``step`` is published under the recipe's current ``publish`` settings: target, repo,
    type, and the local folder (resolved) or the Hub endpoint and branch. Recorded with each publish,
    so that changing the settings of a finished step publishes it to the new place."""
    cfg = loaded.recipe.publish
    kind = repo_type(loaded, step)
    repo = repo_id(loaded, step)
    if cfg.target == "local":
        where = {"folder": str(local_repo_dir(cfg, repo, kind, loaded.recipe.run_root).resolve())}
    else:
        where = {"endpoint": endpoint(cfg), "branch": cfg.revision}
    return {"target": cfg.target, "repo_id": repo, "repo_type": kind, **where}


def needs_publish(loaded: LoadedRecipe, step: str, fingerprint: str, parents: list[str]) -> bool:
    """Whether a finished step must be published: never published at this fingerprint, published to
    another place than the current settings say, a parent since published elsewhere (the card names
    it), or (locally) the published folder no longer holds this fingerprint."""
    rec = published_record(loaded, step, fingerprint)
    if rec is None:
        return True
    here = destination(loaded, step)
    went = rec.get("destination") or _legacy_destination(rec, here)
    if went != here:
        return True
    if "parents" in rec and rec["parents"] != _parent_places(loaded, parents):
        return True
    if here["target"] == "local":
        owned = _owned(Path(here["folder"]))
        if owned is None and "destination" not in rec:  # published before RealChat kept its file list
            return not isinstance(read_json(Path(here["folder"]) / MANIFEST), dict)
        return not owned or owned.get("fingerprint") != fingerprint
    return False


def _legacy_destination(rec: dict[str, Any], here: dict[str, Any]) -> dict[str, Any]:
    """The destination of a record written before records kept one, from the fields it has (a Hub
    branch it did not record is taken to be the current one: no network call to find out)."""
    went = {"target": rec.get("target"), "repo_id": rec.get("repo_id"), "repo_type": rec.get("repo_type")}
    if rec.get("target") == "local":
        return {**went, "folder": rec.get("url")}
    return {**went, "endpoint": rec.get("endpoint"), "branch": here.get("branch")}


def _parent_places(loaded: LoadedRecipe, parents: list[str]) -> dict[str, str | None]:
    """Each parent step's published place (the child's card names it): target, repo and where (not the
    Hub commit: a parent whose card was only refreshed keeps its place, so its children are not
    published again)."""
    out: dict[str, str | None] = {}
    for parent in sorted(parents):
        rec = published_record(loaded, parent)
        out[parent] = (f"{rec.get('target')}:{rec.get('repo_type')}:{rec.get('repo_id')}@"
                       f"{rec.get('endpoint') or rec.get('url')}" if rec else None)
    return out


# -- lineage ------------------------------------------------------------------------------------


def resolve_parents(loaded: LoadedRecipe, parents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parents as a step's manifest lists them (``step`` + ``fingerprint``, or a ``source``), completed
    with the repo id and revision they were published at (and, locally, their path below the root)."""
    out = []
    for p in parents:
        p = dict(p)
        if p.get("step"):
            rec = published_record(loaded, p["step"], p.get("fingerprint"))
            if rec is not None:
                p.update(repo=rec["repo_id"], repo_type=rec["repo_type"], revision=rec["revision"],
                         target=rec["target"], url=rec["url"] if rec["target"] == "hub" else None,
                         repo_path=rec.get("repo_path"))
        out.append(p)
    return out


# -- publishing ---------------------------------------------------------------------------------


def publish_step(loaded: LoadedRecipe, step: str, folder: Path, render_card: Callable[[str, str | None], str],
                 log: Any = print) -> dict[str, Any]:
    """Publish a finished step folder; returns (and records) where it went.

    ``render_card(repo_id, repo_path)`` gives the card as published (the engine renders it, with the
    parents resolved to where they were published)."""
    manifest = read_json(folder / MANIFEST)
    if not isinstance(manifest, dict):
        raise PublishError(f"{folder} is not a finished step output (no {MANIFEST}); build it first")
    cfg = loaded.recipe.publish
    kind = repo_type(loaded, step)
    repo = repo_id(loaded, step)
    rel = repo_path(repo, kind) if cfg.target == "local" else None
    card = render_card(repo, rel)

    if cfg.target == "local":
        dest = local_repo_dir(cfg, repo, kind, loaded.recipe.run_root)
        revision, changed = _publish_local(dest, folder, card, manifest["fingerprint"], log,
                                           owner=(loaded.name, step))
    else:
        revision, changed = HubPublisher(cfg, log).publish(repo, kind, folder, card, step, manifest["fingerprint"],
                                                           recipe=loaded.name)
    record = {
        "step": step,
        "target": cfg.target,
        "repo_id": repo,
        "repo_type": kind,
        "repo_path": rel,
        "revision": revision,
        "fingerprint": manifest["fingerprint"],
        "url": repo_url(cfg, repo, kind, revision if cfg.target == "hub" else None, loaded.recipe.run_root),
        "endpoint": endpoint(cfg) if cfg.target == "hub" else None,
        "changed": changed,
        "destination": destination(loaded, step),
        "parents": _parent_places(loaded, [p["step"] for p in manifest.get("parents") or [] if p.get("step")]),
        "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = record_path(loaded, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    what = "published" if changed else "unchanged, no new commit"
    log(f"{step}: {what} → {record['url']} @ {revision[:12]}")
    return record


#: RealChat's own list of the files it wrote into a local repo folder (and the fingerprint they are
#: of): publishing replaces those and nothing else, so a user's file in the folder survives.
OWNED = ".realchat-files.json"


def check_owner(published: Any, recipe: str, step: str, where: str) -> None:
    """Refuse to publish over another step's repo: the manifest already there (``published``) names
    the recipe and step it came from. Two steps of one recipe cannot share a repo (the recipe is
    refused when loaded); two recipes naming one repo are caught here, before anything is changed."""
    if not isinstance(published, dict) or not published.get("step"):
        return
    theirs = (published.get("recipe"), published.get("step"))
    if theirs != (recipe, step):
        raise PublishError(f"{where} holds step {theirs[1]} of recipe {theirs[0]}; publishing step {step} of recipe "
                           f"{recipe} there would overwrite it; nothing was changed",
                           hint=f"give step {step} a repo of its own in publish.repos (or remove {where} "
                                "if what it holds is no longer wanted)")


def _owned(dest: Path) -> dict[str, Any] | None:
    rec = read_json(dest / OWNED)
    return rec if isinstance(rec, dict) and isinstance(rec.get("files"), list) else None


def _publish_local(dest: Path, folder: Path, card: str, fingerprint: str,
                   log: Any = print, owner: tuple[str, str] | None = None) -> tuple[str, bool]:
    """Put the step folder in the Hub-like local layout; the revision is the step fingerprint.

    The new revision is assembled beside the old one: the run folder's files hard-linked (copied where
    the filesystem cannot link), the card written, and every file RealChat did not write (by its
    :data:`OWNED` list) linked over from the old folder; then it replaces the old folder in one rename
    and the old one is removed (:func:`realchat.files.atomic_folder`). A user's file at a path RealChat
    writes is an error, never overwritten."""
    from realchat.files import TEMP_MARK, atomic_folder, link_or_copy

    ours = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.name != TEMP_MARK)
    ours = sorted(set(ours) | {"README.md"})
    if owner is not None:
        check_owner(read_json(dest / MANIFEST), *owner, str(dest))
    owned = _owned(dest)
    readme = dest / "README.md"
    if (owned and owned.get("fingerprint") == fingerprint and set(owned["files"]) == set(ours)
            and readme.is_file() and readme.read_text(encoding="utf-8") == card
            and all((dest / f).exists() for f in ours)):
        return fingerprint, False

    legacy = owned is None and isinstance(read_json(dest / MANIFEST), dict)  # before RealChat kept its list
    prior = set(owned["files"]) if owned is not None else set()
    tops = {r.split("/", 1)[0] for r in ours}
    theirs: list[str] = []
    empty_dirs: list[str] = []
    if dest.is_dir():
        for p in sorted(dest.rglob("*")):
            rel = p.relative_to(dest).as_posix()
            if p.is_dir() and not p.is_symlink():
                if not any(p.iterdir()):
                    empty_dirs.append(rel)
            elif legacy and rel.split("/", 1)[0] in tops:
                continue  # RealChat's layout (data/, rejected/, its files): its own, as on the Hub
            elif rel not in prior and rel not in (OWNED, TEMP_MARK):
                theirs.append(rel)
    elif dest.exists() or dest.is_symlink():
        raise PublishError(f"{dest}: exists and is not a folder; RealChat publishes a folder there",
                           hint="move it away or set publish.local_root")
    # a user's file where RealChat needs a folder (their file `data`, our `data/…`), or their empty
    # folder where RealChat writes a file: as much a clash as the same path
    folders = {"/".join(r.split("/")[:i]) for r in ours for i in range(1, r.count("/") + 1)}
    clash = sorted((set(theirs) & (set(ours) | folders)) | (set(empty_dirs) & set(ours)))
    if clash:
        raise PublishError(f"{dest / clash[0]}: a file RealChat did not write is where it publishes "
                           f"{clash[0]}; nothing was changed", hint="move the file away, then publish again")
    linked = copied = 0
    with atomic_folder(dest) as tmp:
        for rel in ours:
            if rel == "README.md":
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            if link_or_copy(folder / rel, tmp / rel):
                linked += 1
            else:
                copied += 1
        (tmp / "README.md").write_text(card, encoding="utf-8")
        for rel in theirs:  # a user's files: carried over (same filesystem: links, no copy)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(dest / rel, tmp / rel)
        for rel in empty_dirs:
            (tmp / rel).mkdir(parents=True, exist_ok=True)
        write_json(tmp / OWNED, {"fingerprint": fingerprint, "files": ours})
    kept = f"; kept {len(theirs)} file(s) RealChat did not write ({', '.join(theirs[:3])}{', …' if len(theirs) > 3 else ''})" if theirs else ""
    log(f"{dest}: {linked} file(s) hard-linked from {folder}, {copied} copied{kept}")
    return fingerprint, True


#: ``huggingface_hub``'s words for an LFS upload that failed after its retries (``_commit_api``).
_UPLOAD_FAILED = re.compile(r"^Error while uploading '(?P<path>.+)' to the Hub\.?$")


def _failed_upload(e: BaseException) -> tuple[str, BaseException | None] | None:
    """``(path in repo, cause)`` when ``e`` is huggingface_hub's wrapper of a failed LFS upload."""
    m = _UPLOAD_FAILED.match(str(e)) if type(e) is RuntimeError else None
    return (m["path"], e.__cause__) if m else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


class HubPublisher:
    """One commit per changed step through ``huggingface_hub``'s HfApi, with errors a user can act on."""

    #: After this many seconds without an answer, say what is being waited for.
    SAY_WAITING_AFTER_S = 5.0

    def __init__(self, cfg: PublishConfig, log: Any = print) -> None:
        from huggingface_hub import HfApi, get_token

        from realchat.hub.http import install_timeouts

        self.cfg = cfg
        self.endpoint = endpoint(cfg)
        self.log = log
        self.timeouts = install_timeouts()
        token = get_token()
        if not token:
            raise PublishError(
                "no Hugging Face token: publishing to the Hub needs one with write access",
                hint="set HF_TOKEN or run `hf auth login` (or set publish.target: local, or build --no-push)",
            )
        self.api = HfApi(endpoint=self.endpoint, token=token)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import threading

        t = self.timeouts
        waiting = threading.Timer(self.SAY_WAITING_AFTER_S, self.log, args=(
            f"waiting for {self.endpoint} to answer: {what} (gives up after {t.read:g} s without an answer; "
            f"REALCHAT_HUB_TIMEOUT sets it)",))
        waiting.daemon = True
        waiting.start()
        try:
            return fn(*args, **kwargs)
        except RealChatError:
            raise
        except Exception as e:
            err = self._explain(what, e)
            if err is None:  # not the Hub's answer nor the network: a bug, with its traceback
                raise
            raise err from None
        finally:
            waiting.cancel()

    def _explain(self, what: str, e: BaseException) -> PublishError | None:
        """A Hub call's failure as one line naming what was being done; None for a bug of our own.

        ``huggingface_hub`` wraps a failed LFS upload (after its own retries) in a bare
        ``RuntimeError("Error while uploading '<path>' to the Hub.")`` whose cause is the HTTP or
        transport error: the file is named from it and the cause explained as any other."""
        from huggingface_hub.errors import HfHubHTTPError

        from realchat.hub.http import is_timeout

        t = self.timeouts
        upload = _failed_upload(e)
        if upload is not None:
            path, cause = upload
            doing = f"{what}: uploading {path} failed"
            inner = self._explain(doing, cause) if cause is not None else None
            return inner or PublishError(f"{doing} ({_first_line(cause) if cause is not None else 'no detail'})")
        if isinstance(e, HfHubHTTPError):
            status = e.response.status_code if e.response is not None else None
            server = (e.server_message or str(e)).strip().splitlines()[0][:300]
            if status == 401:
                return PublishError(f"{what}: the token was rejected by {self.endpoint} (401)",
                                    hint="check HF_TOKEN / `hf auth login`")
            if status == 403:
                return PublishError(f"{what}: no rights ({server})",
                                    hint="use a token with write access to publish.namespace, or change it")
            if status == 400 and "metadata" in server.lower():
                return PublishError(f"{what}: the Hub rejected the card metadata: {server}")
            return PublishError(f"{what}: {self.endpoint} answered {status}: {server}")
        # connection refused or reset, DNS, TLS, timeouts: the transport's own types
        timeout = is_timeout(e)
        if timeout == "read":
            return PublishError(f"{what}: {self.endpoint} accepted the connection but sent no answer within "
                                f"{t.read:g} s", hint="check publish.endpoint / HF_ENDPOINT; "
                                "REALCHAT_HUB_TIMEOUT sets how long to wait")
        if timeout == "connect":
            return PublishError(f"{what}: could not connect to {self.endpoint} within {t.connect:g} s",
                                hint="check the network, publish.endpoint or HF_ENDPOINT; "
                                "REALCHAT_HUB_CONNECT_TIMEOUT sets how long to wait")
        name = type(e).__name__.lower()
        if name in ("readerror", "writeerror") or "connection reset" in str(e).lower():
            return PublishError(f"{what}: {self.endpoint} dropped the connection ({_first_line(e)})",
                                hint="check the network, publish.endpoint or HF_ENDPOINT, then publish again")
        if isinstance(e, OSError) or "connect" in name or "network" in name:
            return PublishError(f"{what}: cannot reach {self.endpoint} ({type(e).__name__}: {e})",
                                hint="check the network, publish.endpoint or HF_ENDPOINT")
        if isinstance(e, json.JSONDecodeError) or "protocol" in name or "decod" in name:
            return PublishError(f"{what}: {self.endpoint} did not answer like a Hugging Face Hub "
                                f"({_first_line(e)[:160]})",
                                hint="check publish.endpoint / HF_ENDPOINT: it must be a Hub's address, "
                                "not a web page or a proxy's login page")
        return None

    def publish(self, repo: str, kind: str, folder: Path, card: str, step: str,
                fingerprint: str, recipe: str | None = None) -> tuple[str, bool]:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, RepoCard

        api, rev = self.api, self.cfg.revision
        self._call("whoami", api.whoami)
        other = "model" if kind == "dataset" else "dataset"
        if self._call("repo check", api.repo_exists, repo, repo_type=other) and not self._call(
                "repo check", api.repo_exists, repo, repo_type=kind):
            raise PublishError(
                f"{repo} exists on {self.endpoint} as a {other} repo, but step {step} publishes a {kind}",
                hint=f"choose another name in publish.repos.{step}",
            )
        try:
            RepoCard(card).validate(repo_type=kind)
        except ValueError as e:
            raise PublishError(f"card metadata the Hub rejects ({step}): {e}") from None
        except Exception as e:  # validation endpoint unreachable or silent: the commit below will say so
            from realchat.hub.http import is_timeout

            if "connect" not in type(e).__name__.lower() and not is_timeout(e):
                raise
        self._call(f"create {kind} repo {repo}", api.create_repo, repo, repo_type=kind,
                   private=self.cfg.private, exist_ok=True)
        if rev != "main":
            self._call(f"create branch {rev}", api.create_branch, repo, repo_type=kind, branch=rev, exist_ok=True)
        info = self._call(f"read {repo}", api.repo_info, repo, repo_type=kind, revision=rev, files_metadata=False)
        remote_files = {s.rfilename for s in (info.siblings or [])}
        published = self._remote_manifest(repo, kind, info.sha, remote_files)
        if recipe is not None:
            check_owner(published, recipe, step, f"{self.endpoint}: {kind} repo {repo}")
        if self._remote_matches(repo, kind, info.sha, fingerprint, card, remote_files, published):
            return info.sha, False

        from realchat.files import TEMP_MARK

        local_files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != TEMP_MARK)
        rel = {p.relative_to(folder).as_posix() for p in local_files} | {"README.md", OWNED}
        ops: list[Any] = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()),
                          CommitOperationAdd(path_in_repo=OWNED, path_or_fileobj=(json.dumps(
                              {"fingerprint": fingerprint, "files": sorted(rel - {OWNED})}, indent=2) + "\n").encode())]
        ops += [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                for p in local_files if p.name != "README.md" or p.parent != folder]
        owned = self._remote_owned(repo, kind, info.sha, remote_files, rel)
        ops += [CommitOperationDelete(path_in_repo=f) for f in sorted((remote_files & owned) - rel - {".gitattributes"})]
        try:
            commit = self._call(
                f"step {step}: commit to {kind} repo {repo}", api.create_commit, repo, ops, repo_type=kind,
                revision=rev, commit_message=f"realchat {step}: fingerprint {fingerprint}",
                commit_description=f"Published by RealChat; step `{step}`, fingerprint `{fingerprint}`.",
                parent_commit=info.sha,
            )
        except PublishError as e:
            # LFS files uploaded before the failure are only stored objects: no commit names them, so
            # the repo's branch still points at the revision it had (a commit lands whole or not at all)
            raise PublishError(
                f"{e.message}; nothing was published: {repo}@{rev} is still at {info.sha[:12]}",
                hint=(f"{e.hint}; " if e.hint else "") + f"the built step is kept: `realchat push` on the recipe "
                     f"(or `realchat build`) publishes step {step}",
            ) from None
        return commit.oid, True

    def _remote_owned(self, repo: str, kind: str, sha: str, remote_files: set[str], rel: set[str]) -> set[str]:
        """The remote files RealChat wrote (only those may be deleted): its :data:`OWNED` list there, or,
        for a repo published before RealChat kept one, the files under the top-level names it writes."""
        if OWNED in remote_files:
            try:
                return set(json.loads(self._read(repo, kind, sha, OWNED))["files"]) | {OWNED}
            except RealChatError:
                raise
            except Exception:  # unreadable list: fall back to the layout rule below
                pass
        tops = {r.split("/", 1)[0] for r in rel}
        return {f for f in remote_files if f.split("/", 1)[0] in tops}

    def _remote_manifest(self, repo: str, kind: str, sha: str, remote_files: set[str]) -> Any:
        """The repo's ``manifest.json`` at ``sha`` (None when it has none or it is unreadable)."""
        if MANIFEST not in remote_files:
            return None
        try:
            return json.loads(self._read(repo, kind, sha, MANIFEST))
        except RealChatError:
            raise
        except Exception:
            return None

    def _remote_matches(self, repo: str, kind: str, sha: str, fingerprint: str, card: str,
                        remote_files: set[str], m: Any) -> bool:
        if not isinstance(m, dict) or m.get("fingerprint") != fingerprint or "README.md" not in remote_files:
            return False
        try:
            readme = self._read(repo, kind, sha, "README.md")
        except RealChatError:
            raise
        except Exception:
            return False
        return readme == card

    def _read(self, repo: str, kind: str, sha: str, filename: str) -> str:
        """One file of the repo at ``sha``: one request with RealChat's timeouts (``hf_hub_download``
        would retry a silent endpoint for minutes)."""
        from huggingface_hub import hf_hub_url

        from realchat.hub.http import get_text

        url = hf_hub_url(repo, filename, repo_type=kind, revision=sha, endpoint=self.endpoint)
        return get_text(url, f"read {repo}/{filename}", token=self.api.token)


# -- reading lineage back -----------------------------------------------------------------------


def _load_card_meta(ref: str, repo_type: str | None, revision: str | None, hub_endpoint: str | None) -> tuple[dict[str, Any], str]:
    """YAML metadata of a card: from a folder (or README.md path), else a Hub repo at a revision."""
    from huggingface_hub import RepoCard, hf_hub_download

    p = Path(ref).expanduser()
    if p.is_dir():
        p = p / "README.md"
    if p.is_file():
        return _card_meta(p), str(p.parent)
    if p.exists() or ref.startswith((".", "/", "~")):
        raise PublishError(f"{ref}: no README.md card there")

    from realchat.hub.http import HubUnreachableError, check_answers

    try:
        check_answers(hub_endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT, f"lineage of {ref}")
    except HubUnreachableError as e:  # most often a mistyped folder, read as a Hub id
        raise PublishError(f"{ref}: no such folder here, and {e.message.split(': ', 1)[1]} to read it as a Hub repo",
                           hint=f"check the spelling of {ref}; for a Hub repo, {e.hint}") from None
    errors = []
    for kind in [repo_type] if repo_type else ["dataset", "model"]:
        try:
            path = hf_hub_download(ref, "README.md", repo_type=kind, revision=revision, endpoint=hub_endpoint)
            return _card_meta(Path(path), f"{kind} {ref}@{revision or 'main'}"), f"{kind} {ref}@{revision or 'main'}"
        except RealChatError:
            raise
        except Exception as e:  # not found as this type: try the other
            errors.append(f"{kind}: {type(e).__name__}")
    raise PublishError(f"{ref}: not a folder with a card, nor a readable Hub repo ({'; '.join(errors)})")


def _card_meta(path: Path, name: str | None = None) -> dict[str, Any]:
    """A card's YAML header as a dict; a card that is not UTF-8 or whose header is not valid YAML (or
    not a mapping) is a one-line error naming it, not a parser traceback."""
    import yaml
    from huggingface_hub import RepoCard

    with user_file(name or path, doing="card metadata is not readable", also=(yaml.YAMLError,)):
        return RepoCard.load(path).data.to_dict()


def _inside(rel: Any) -> bool:
    """Whether a card's ``repo_path`` stays below the publish root (relative, no ``..``): a card is
    input, and lineage must not be led to read anywhere else on the disk."""
    if not isinstance(rel, str) or not rel or "\\" in rel:
        return False
    parts = Path(rel).parts
    return not Path(rel).is_absolute() and ".." not in parts and bool(parts)


def _local_root_of(folder: Path, block: dict[str, Any]) -> Path | None:
    """The publish root a local card lives under, from its own ``repo_path`` (relative to that root)."""
    rel = block.get("repo_path")
    if not _inside(rel):
        return None
    depth = len(Path(rel).parts)
    return folder.parents[depth - 1] if len(folder.parents) >= depth else None


def follow_lineage(ref: str, repo_type: str | None = None, revision: str | None = None,
                   hub_endpoint: str | None = None) -> list[dict[str, Any]]:
    """The lineage graph of ``ref`` read card by card, as a depth-first list (``depth`` 0 = ``ref``).

    Every parent of every card is visited (an evaluation has several); a node met again is listed with
    ``seen: true`` and not expanded twice. Local cards name their parents by a path relative to the
    publish root, so a copied or moved publish folder still resolves."""
    from realchat.hub.http import install_timeouts

    install_timeouts()
    out: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(target: tuple[str, str | None, str | None], depth: int, key: str | None) -> None:
        meta, where = _load_card_meta(*target, hub_endpoint)
        block = meta.get("realchat") or {}
        parents = block.get("parents") or [] if isinstance(block, dict) else None
        if not isinstance(parents, list) or not all(isinstance(p, dict) for p in parents):
            raise PublishError(f"{where}: the card's `realchat` block is not RealChat's lineage (expected a "
                               "mapping with a list of parents)")
        # a card without repo or fingerprint is known by where it was read (else all such cards would
        # be one node and every one after the first would lose its subtree)
        ident = (f"{block.get('repo')}@{block.get('fingerprint')}" if block.get("repo") and block.get("fingerprint")
                 else f"at {where}")
        node = {"depth": depth, "key": key, "where": where, "step": block.get("step"), "kind": block.get("kind"),
                "repo": block.get("repo"), "fingerprint": block.get("fingerprint"), "revision": target[2],
                "version": block.get("version"), "recipe_sha256": block.get("recipe_sha256")}
        out.append(node)
        if ident in seen:
            node["seen"] = True
            return
        seen.add(ident)
        folder = Path(where) if Path(where).is_dir() else None
        root = _local_root_of(folder, block) if folder is not None else None
        for parent in parents:
            if parent.get("source"):
                out.append({"depth": depth + 1, "key": parent.get("key"), "where": parent["source"],
                            "step": None, "kind": "source" if parent.get("role") == "dataset" else parent.get("role"),
                            # a Hub input: repo + the commit it resolved to; a local one: its name and digest
                            "repo": parent.get("repo") or parent.get("package") or parent["source"],
                            "repo_type": parent.get("repo_type"), "revision": parent.get("revision"),
                            "sha256": parent.get("sha256"), "format": parent.get("format"),
                            "upstream": parent.get("upstream"), "fingerprint": None})
            elif parent.get("repo_path") and root is not None and not _inside(parent["repo_path"]):
                out.append({"depth": depth + 1, "key": parent.get("key"), "where": "?", "step": parent.get("step"),
                            "kind": None, "repo": None, "revision": None, "fingerprint": parent.get("fingerprint"),
                            "note": f"repo_path {parent['repo_path']!r} leaves the publish root: not followed"})
            elif parent.get("repo_path") and root is not None:
                visit((str(root / parent["repo_path"]), None, None), depth + 1, parent.get("key"))
            elif parent.get("repo") and parent.get("target") == "hub":
                visit((parent["repo"], parent.get("repo_type"), parent.get("revision")), depth + 1, parent.get("key"))
            else:
                out.append({"depth": depth + 1, "key": parent.get("key"), "where": "?", "step": parent.get("step"),
                            "kind": None, "repo": None, "revision": None, "fingerprint": parent.get("fingerprint"),
                            "note": "parent not published: lineage ends here"})

    visit((ref, repo_type, revision), 0, None)
    return out
