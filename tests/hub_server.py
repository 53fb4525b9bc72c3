"""A small Hugging Face Hub-compatible HTTP server, for the tests only.

It speaks the parts of the Hub's HTTP protocol that ``huggingface_hub`` (with ``HF_HUB_DISABLE_XET=1``)
and ``datasets`` use to publish and load repos: whoami, repo create/info, tree and paths-info listings,
preupload, the git-LFS batch API with basic uploads, NDJSON commits, ``resolve`` downloads with the
revision headers (``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``, ``X-Linked-Size``) and ranges, commit
history, branches, and YAML metadata validation. Repos live in memory as real commit chains (git
blob ids for regular files, sha256 for LFS objects), so revisions behave like the Hub's.

Tokens: ``hf_write`` (user ``tester``, member of org ``realchat-org``) can write to ``tester/*`` and
``realchat-org/*``; ``hf_read`` can only read. Faults for tests: ``fail_next_commit`` makes the next
commit answer 500 after the LFS uploads went through (an interrupted publish); ``fail_lfs_upload``
(``(n, "500")`` or ``(n, "reset")``) makes the n-th LFS upload from now on (1-based) answer 500, or drop
the connection without an answer, and every upload after it too while ``fail_lfs_upload_sticky`` is
set (a storage backend that stays down for the rest of the commit); uploads before it go through.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

TOKENS = {
    "hf_write": {"name": "tester", "orgs": ["realchat-org"], "write": True},
    "hf_read": {"name": "reader", "orgs": [], "write": False},
}
LFS_EXTENSIONS = (".parquet", ".safetensors", ".bin", ".png", ".gguf", ".arrow")
KNOWN_LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "other", "unknown",
                  "llama2", "odc-by", "cc0-1.0", "openrail"}
SIZE_CATEGORIES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M",
                   "100M<n<1B", "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T"}
TASK_CATEGORIES = {"text-generation", "question-answering", "text-classification", "conversational",
                   "summarization", "translation"}


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Entry:
    size: int
    blob_oid: str
    lfs_oid: str | None = None  # sha256 for LFS files
    data: bytes | None = None    # regular files only


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    files: dict[str, Entry]
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)


class HubState:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.fail_next_commit = False
        self.fail_lfs_upload: tuple[int, str] | None = None
        self.fail_lfs_upload_sticky = True
        self.lfs_uploads_seen = 0
        self.requests: list[tuple[str, str]] = []

    def new_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type, repo_id, private)
        init = Commit(uuid.uuid4().hex + uuid.uuid4().hex[:8], None, "initial commit", "", {
            ".gitattributes": _regular(b"*.parquet filter=lfs diff=lfs merge=lfs -text\n")}, _now())
        repo.commits[init.sha] = init
        repo.refs["main"] = init.sha
        self.repos[(repo_type, repo_id)] = repo
        return repo


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _regular(data: bytes) -> Entry:
    return Entry(size=len(data), blob_oid=git_blob_oid(data), data=data)


TYPE_FROM_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
REPO = r"(?P<repo>[^/]+/[^/]+?)"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState  # set by serve()

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _user(self) -> dict | None:
        auth = self.headers.get("Authorization", "")
        return TOKENS.get(auth.removeprefix("Bearer ").strip()) if auth.startswith("Bearer ") else None

    def _can_write(self, repo_id: str) -> bool:
        user = self._user()
        if not user or not user["write"]:
            return False
        ns = repo_id.split("/")[0]
        return ns == user["name"] or ns in user["orgs"]

    def _repo(self, repo_type: str, repo_id: str) -> Repo | None:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._can_write(repo_id) and not self._user()):
            self._error(404, f"Repository Not Found for url: {self.path}.", "RepoNotFound")
            return None
        return repo

    def _commit(self, repo: Repo, rev: str) -> Commit | None:
        rev = unquote(rev)
        sha = repo.refs.get(rev, rev)
        commit = repo.commits.get(sha)
        if commit is None:
            self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # -- routing ----------------------------------------------------------------------------
    ROUTES = [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"/api/(?P<t>models|datasets)/{REPO}(?:/revision/(?P<rev>[^/]+))?", "info"),
        ("GET", rf"/api/(?P<t>models|datasets)/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("POST", rf"/api/(?P<t>models|datasets)/{REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("POST", rf"/api/(?P<t>models|datasets)/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"/api/(?P<t>models|datasets)/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
        ("GET", rf"/api/(?P<t>models|datasets)/{REPO}/commits/(?P<rev>[^/]+)", "commits"),
        ("GET", rf"/api/(?P<t>models|datasets)/{REPO}/refs", "refs"),
        ("POST", rf"/api/(?P<t>models|datasets)/{REPO}/branch/(?P<branch>[^/]+)", "branch"),
        ("POST", rf"/(?P<prefix>datasets/)?{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        ("GET", rf"/(?P<prefix>datasets/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/(?P<prefix>datasets/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]

    def _route(self) -> None:
        parsed = urlparse(self.path)
        self.query = parse_qs(parsed.query)
        self.state.requests.append((self.command, parsed.path))
        for method, pattern, name in self.ROUTES:
            if method == self.command:
                m = re.fullmatch(pattern, parsed.path)
                if m:
                    with self.state.lock:
                        return getattr(self, "h_" + name)(**{k: v for k, v in m.groupdict().items()})
        self._error(404, f"no route for {self.command} {parsed.path}")

    do_GET = do_POST = do_PUT = do_HEAD = _route

    # -- handlers ---------------------------------------------------------------------------
    def h_whoami(self) -> None:
        user = self._user()
        if not user:
            return self._error(401, "Invalid credentials in Authorization header")
        self._json(200, {"type": "user", "name": user["name"],
                         "orgs": [{"name": o, "type": "org"} for o in user["orgs"]],
                         "auth": {"accessToken": {"role": "write" if user["write"] else "read"}}})

    def h_create(self) -> None:
        body = json.loads(self._body() or b"{}")
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or (self._user() or {}).get('name')}/{body['name']}"
        if not self._user():
            return self._error(401, "Invalid credentials in Authorization header")
        if not self._can_write(repo_id):
            return self._error(403, f"You don't have the rights to create a {repo_type} under the namespace "
                                    f"\"{repo_id.split('/')[0]}\".")
        url = f"http://{self.headers['Host']}/{PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.state.repos:
            return self._json(409, {"error": "You already created this repo", "url": url},
                              {"X-Error-Message": "You already created this repo"})
        self.state.new_repo(repo_type, repo_id, bool(body.get("private")) or body.get("visibility") == "private")
        self._json(200, {"url": url, "name": repo_id})

    def h_validate_yaml(self) -> None:
        body = json.loads(self._body() or b"{}")
        errors = metadata_errors(body.get("content", ""))
        if errors:
            return self._json(400, {"errors": [{"message": e} for e in errors]})
        self._json(200, {"warnings": []})

    def h_info(self, t: str, repo: str, rev: str | None = None) -> None:
        r = self._repo(TYPE_FROM_PLURAL[t], repo)
        if r is None:
            return
        c = self._commit(r, rev or "main")
        if c is None:
            return
        card = _card_data(c)
        self._json(200, {"id": repo, "_id": repo, "author": repo.split("/")[0], "sha": c.sha,
                         "private": r.private, "gated": False, "disabled": False, "downloads": 0,
                         "likes": 0, "tags": [], "lastModified": c.date, "createdAt": c.date,
                         "cardData": card, "siblings": [{"rfilename": p} for p in sorted(c.files)]})

    def _entry_json(self, path: str, e: Entry) -> dict:
        out = {"type": "file", "path": path, "size": e.size, "oid": e.blob_oid}
        if e.lfs_oid:
            out["lfs"] = {"oid": e.lfs_oid, "size": e.size, "pointerSize": 134}
        return out

    def _listing(self, c: Commit, base: str, recursive: bool) -> list[dict]:
        base = base.strip("/")
        prefix = base + "/" if base else ""
        out, dirs = [], set()
        for path in sorted(c.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest:
                top = prefix + rest.split("/")[0]
                if top not in dirs:
                    dirs.add(top)
                    out.append({"type": "directory", "path": top, "size": 0, "oid": git_blob_oid(top.encode())})
                if recursive:
                    out.append(self._entry_json(path, c.files[path]))
            else:
                out.append(self._entry_json(path, c.files[path]))
        if recursive:  # nested directories too
            for path in sorted(c.files):
                if path.startswith(prefix):
                    parts = path[len(prefix):].split("/")[:-1]
                    for i in range(2, len(parts) + 1):
                        d = prefix + "/".join(parts[:i])
                        if d not in dirs:
                            dirs.add(d)
                            out.append({"type": "directory", "path": d, "size": 0,
                                        "oid": git_blob_oid(d.encode())})
        return out

    def h_tree(self, t: str, repo: str, rev: str, path: str | None = None) -> None:
        r = self._repo(TYPE_FROM_PLURAL[t], repo)
        c = r and self._commit(r, rev)
        if c is None:
            return
        path = unquote(path or "")
        if path and path in c.files:
            return self._json(200, [self._entry_json(path, c.files[path])])
        if path and not any(p.startswith(path.rstrip("/") + "/") for p in c.files):
            return self._error(404, f"path {path} not found", "EntryNotFound")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        self._json(200, self._listing(c, path, recursive))

    def h_paths_info(self, t: str, repo: str, rev: str) -> None:
        r = self._repo(TYPE_FROM_PLURAL[t], repo)
        c = r and self._commit(r, rev)
        if c is None:
            return
        raw = self._body()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(raw).get("paths", [])
        else:
            paths = parse_qs(raw.decode()).get("paths", [])
        out = []
        for p in paths:
            p = p.strip("/")
            if p in c.files:
                out.append(self._entry_json(p, c.files[p]))
            elif p == "" or any(f.startswith(p + "/") for f in c.files):
                out.append({"type": "directory", "path": p, "size": 0, "oid": git_blob_oid(p.encode())})
        self._json(200, out)

    def h_preupload(self, t: str, repo: str, rev: str) -> None:
        r = self._repo(TYPE_FROM_PLURAL[t], repo)
        if r is None:
            return
        if not self._can_write(repo):
            return self._error(403, "You don't have the rights to write to this repo")
        body = json.loads(self._body())
        head = r.commits.get(r.refs.get(unquote(rev), ""), None)
        files = []
        for f in body.get("files", []):
            path = f["path"]
            sample = base64.b64decode(f.get("sample", ""))
            lfs = path.endswith(LFS_EXTENSIONS) or f.get("size", 0) > 10_000_000 or b"\0" in sample
            entry = head.files.get(path) if head else None
            oid = None
            if entry is not None:
                oid = entry.lfs_oid if lfs else entry.blob_oid
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        self._json(200, {"files": files, "commitOid": head.sha if head else None})

    def h_lfs_batch(self, repo: str, prefix: str | None = None) -> None:
        repo_type = "dataset" if prefix else "model"
        if (repo_type, repo) not in self.state.repos:
            return self._error(404, "Repository not found", "RepoNotFound")
        if not self._can_write(repo):
            return self._error(403, "You don't have the rights to write to this repo")
        body = json.loads(self._body())
        host = self.headers["Host"]
        objects = []
        for obj in body.get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:
                item["actions"] = {"upload": {"href": f"http://{host}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(item)
        self._json(200, {"transfer": "basic", "objects": objects},
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def h_lfs_put(self, oid: str) -> None:
        data = self._body()
        fault = self.state.fail_lfs_upload
        if fault is not None:
            self.state.lfs_uploads_seen += 1
            n, how = fault
            if self.state.lfs_uploads_seen >= n:
                if not self.state.fail_lfs_upload_sticky:
                    self.state.fail_lfs_upload = None
                if how == "reset":  # the storage backend drops the connection mid-upload
                    self.close_connection = True
                    import socket
                    import struct

                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                return self._error(500, "Internal Error - We're working hard to fix this as soon as possible!")
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "sha256 of the uploaded content does not match the oid")
        self.state.lfs[oid] = data
        self._send(200, b"")

    def h_commit(self, t: str, repo: str, rev: str) -> None:
        repo_type = TYPE_FROM_PLURAL[t]
        r = self._repo(repo_type, repo)
        if r is None:
            return
        if not self._can_write(repo):
            return self._error(403, "You don't have the rights to write to this repo")
        if self.state.fail_next_commit:
            self.state.fail_next_commit = False
            self._body()
            return self._error(500, "Internal Error - We're working hard to fix this as soon as possible!")
        branch = unquote(rev)
        if branch not in r.refs:
            return self._error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        head = r.commits[r.refs[branch]]
        files = dict(head.files)
        header = {}
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else value["content"].encode()
                files[value["path"]] = _regular(data)
            elif key == "lfsFile":
                oid = value["oid"]
                if oid not in self.state.lfs:
                    return self._error(400, f"LFS object {oid} of {value['path']} was never uploaded")
                data = self.state.lfs[oid]
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()
                files[value["path"]] = Entry(size=len(data), blob_oid=git_blob_oid(pointer), lfs_oid=oid)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                for p in [p for p in files if p.startswith(folder)]:
                    files.pop(p)
        if header.get("parentCommit") and header["parentCommit"] != head.sha:
            return self._error(412, "A commit has happened since. Please refresh and try again.")
        if "README.md" in files and files["README.md"].data is not None:
            errors = metadata_errors(files["README.md"].data.decode())
            if errors:
                return self._error(400, "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors))
        sha = hashlib.sha1(json.dumps([head.sha, sorted((p, e.blob_oid) for p, e in files.items()),
                                       header.get("summary"), time.time_ns()]).encode()).hexdigest()
        r.commits[sha] = Commit(sha, head.sha, header.get("summary", ""), header.get("description", ""),
                                files, _now())
        r.refs[branch] = sha
        host = self.headers["Host"]
        self._json(200, {"commitUrl": f"http://{host}/{PREFIX[repo_type]}{repo}/commit/{sha}",
                         "commitOid": sha, "success": True, "pullRequestUrl": None})

    def h_commits(self, t: str, repo: str, rev: str) -> None:
        r = self._repo(TYPE_FROM_PLURAL[t], repo)
        c = r and self._commit(r, rev)
        if c is None:
            return
        out = []
        while c is not None:
            out.append({"id": c.sha, "title": c.title, "message": c.message, "date": c.date,
                        "authors": [{"user": "tester"}]})
            c = r.commits.get(c.parent) if c.parent else None
        self._json(200, out)

    def h_refs(self, t: str, repo: str) -> None:
        r = self._repo(TYPE_FROM_PLURAL[t], repo)
        if r is None:
            return
        self._json(200, {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s}
                                      for b, s in r.refs.items()], "tags": [], "converts": []})

    def h_branch(self, t: str, repo: str, branch: str) -> None:
        r = self._repo(TYPE_FROM_PLURAL[t], repo)
        if r is None:
            return
        if not self._can_write(repo):
            return self._error(403, "You don't have the rights to write to this repo")
        body = json.loads(self._body() or b"{}")
        branch = unquote(branch)
        if branch in r.refs:
            return self._error(409, f"Reference already exists: refs/heads/{branch}")
        start = body.get("startingPoint") or r.refs["main"]
        r.refs[branch] = r.refs.get(start, start)
        self._json(200, {})

    def h_resolve(self, repo: str, rev: str, path: str, prefix: str | None = None) -> None:
        repo_type = "dataset" if prefix else "model"
        r = self._repo(repo_type, repo)
        c = r and self._commit(r, rev)
        if c is None:
            return
        path = unquote(path)
        e = c.files.get(path)
        if e is None:
            return self._error(404, f"Entry not found: {path}", "EntryNotFound")
        data = self.state.lfs[e.lfs_oid] if e.lfs_oid else e.data
        headers = {"X-Repo-Commit": c.sha, "ETag": f'"{e.blob_oid}"', "Accept-Ranges": "bytes"}
        if e.lfs_oid:
            headers.update({"X-Linked-Etag": f'"{e.lfs_oid}"', "X-Linked-Size": str(e.size)})
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng or "")
        if m and self.command == "GET":
            start = int(m.group(1)) if m.group(1) else max(len(data) - int(m.group(2)), 0)
            end = int(m.group(2)) if m.group(1) and m.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            chunk = data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, chunk, headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")


def metadata_errors(content: str) -> list[str]:
    """The checks the Hub makes on a card's YAML header (a subset: licence, size, task, language)."""
    errors = []
    if content.startswith("---") and not re.match(r"^---\n.*?\n---", content, re.S):
        return ["unterminated YAML front matter"]
    m = re.match(r"^---\n(.*?)\n---", content, re.S)
    meta = {}
    if m:
        try:
            meta = yaml.safe_load(m.group(1)) or {}
        except yaml.YAMLError as e:
            return [f"YAML front matter does not parse: {e}"]
    lic = meta.get("license")
    for value in ([lic] if isinstance(lic, str) else lic or []):
        if value not in KNOWN_LICENSES:
            errors.append(f'"license" must be one of the Hub\'s license ids, got "{value}"')
    for value in meta.get("size_categories") or []:
        if value not in SIZE_CATEGORIES:
            errors.append(f'"size_categories" must be one of {sorted(SIZE_CATEGORIES)}, got "{value}"')
    for value in meta.get("task_categories") or []:
        if value not in TASK_CATEGORIES:
            errors.append(f'"task_categories" has an unknown task "{value}"')
    for value in meta.get("language") or []:
        if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]+)*", str(value)):
            errors.append(f'"language" must be ISO 639 codes, got "{value}"')
    return errors


def _card_data(c: Commit) -> dict | None:
    e = c.files.get("README.md")
    if e is None or e.data is None:
        return None
    m = re.match(r"^---\n(.*?)\n---", e.data.decode(), re.S)
    try:
        return yaml.safe_load(m.group(1)) if m else None
    except yaml.YAMLError:
        return None


class HubServer:
    """Start with :meth:`start`; ``url`` is the endpoint to give ``HF_ENDPOINT``."""

    def __init__(self, port: int = 0) -> None:
        self.state = HubState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "HubServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def head(self, repo_type: str, repo_id: str, branch: str = "main") -> str:
        return self.state.repos[(repo_type, repo_id)].refs[branch]

    def history(self, repo_type: str, repo_id: str, branch: str = "main") -> list[Commit]:
        r = self.state.repos[(repo_type, repo_id)]
        out, sha = [], r.refs[branch]
        while sha:
            c = r.commits[sha]
            out.append(c)
            sha = c.parent
        return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
