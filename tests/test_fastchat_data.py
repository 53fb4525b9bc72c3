"""FastChat's benchmark files for `benchmark.questions: fastchat`: downloaded at `plan` from a real HTTP
server on 127.0.0.1 serving ../shared/eval (FastChat's files), checked by sha256, cached; offline or
with a tampered file, one exit-2 line before any step runs; `realchat fetch-eval --from DIR` for offline
use. Also the package's own surface: a missing extra at `plan`, `--version` and `-h`."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from realchat.cli import app
from realchat.evaluation import fastchat_data

REPO = Path(__file__).resolve().parents[1]
SHARED_EVAL = REPO.parent / "shared" / "eval"
DEFAULT = REPO / "recipes" / "realchat.yaml"
runner = CliRunner()


def text(r) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", r.output).split())


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def served(tmp_path):
    """An HTTP server on 127.0.0.1 serving a copy of FastChat's files; yields (folder, requested paths)."""
    root = tmp_path / "served"
    shutil.copytree(SHARED_EVAL, root)
    root.chmod(0o755)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    seen: list[str] = []

    class Handler(_Handler):
        def do_GET(self) -> None:
            seen.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, seen, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A RealChat cache without FastChat's files; the session cache's other entries (the converted
    GGUF, file digests) are linked in, so `plan` does not convert the default model again."""
    import os

    cache = tmp_path / "cache"
    cache.mkdir()
    session = Path(os.environ["REALCHAT_CACHE"])
    for entry in session.iterdir() if session.is_dir() else []:
        if entry.name != "fastchat":
            (cache / entry.name).symlink_to(entry)
    monkeypatch.setenv("REALCHAT_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("REALCHAT_OFFLINE", raising=False)
    return cache / "fastchat" / fastchat_data.COMMIT


def test_the_pinned_digests_are_those_of_fastchats_files():
    for name, digest in fastchat_data.FILES.items():
        assert hashlib.sha256((SHARED_EVAL / name).read_bytes()).hexdigest() == digest, name
    assert fastchat_data.BASE_URL.endswith(f"/{fastchat_data.COMMIT}/fastchat/llm_judge/data")


def test_plan_downloads_checks_and_caches_them_once(served, empty_cache, monkeypatch):
    _root, seen, url = served
    monkeypatch.setenv("REALCHAT_FASTCHAT_URL", url)
    r = runner.invoke(app, ["plan", str(DEFAULT), "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(seen) == sorted(f"/{n}" for n in fastchat_data.FILES)
    for name in fastchat_data.FILES:
        assert (empty_cache / name).read_bytes() == (SHARED_EVAL / name).read_bytes()
    r = runner.invoke(app, ["plan", str(DEFAULT), "--json"])  # the cache answers: no second download
    assert r.exit_code == 0 and len(seen) == len(fastchat_data.FILES)
    # the evaluate step reads them from the cache, as FastChat's layout
    from realchat.evaluation import benchmarks as bm

    cfg = bm.BenchmarkConfig(models=[{"name": "m", "backend": {"kind": "local", "model": "x"}}])
    questions, refs = bm.load_questions(cfg, "mt_bench", Path("."))
    assert len(questions) == 80 and refs and "single-v1" in bm.load_judge_prompts(cfg, Path("."))


def test_a_tampered_download_is_refused_and_not_cached(served, empty_cache, monkeypatch):
    root, _seen, url = served
    monkeypatch.setenv("REALCHAT_FASTCHAT_URL", url)
    q = root / "mt_bench" / "question.jsonl"
    q.write_text(q.read_text().replace("Compose", "Write", 1))
    r = runner.invoke(app, ["plan", str(DEFAULT)])
    out = text(r)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "steps.evaluate.benchmark.questions" in out and "is not FastChat's mt_bench/question.jsonl" in out
    assert not (empty_cache / "mt_bench" / "question.jsonl").exists()
    assert not list(empty_cache.rglob(".*tmp*"))


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_without_network_or_cache_the_build_stops_before_any_step(how, tmp_path, empty_cache, monkeypatch):
    if how == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # a port nothing listens on
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        monkeypatch.setenv("REALCHAT_FASTCHAT_URL", f"http://127.0.0.1:{port}")
    recipe = tmp_path / "realchat.yaml"
    recipe.write_text(DEFAULT.read_text())
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["build", str(recipe), "--no-push", "--no-progress"])
    out = text(r)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert out.count("error:") == 1 and "steps.evaluate.benchmark.questions" in out
    assert "realchat fetch-eval --from DIR" in out
    assert not (tmp_path / "runs" / "realchat" / "curate").exists()  # no step ran
    # the offline user's fix: the files from a folder that has them, then plan passes
    r = runner.invoke(app, ["fetch-eval", "--from", str(SHARED_EVAL)])
    assert r.exit_code == 0 and str(empty_cache) in text(r)
    assert runner.invoke(app, ["plan", str(recipe)]).exit_code == 0


def test_only_curate_offline_needs_no_benchmark_files(tmp_path, empty_cache, monkeypatch):
    """`build --only curate` checks the steps it builds: offline and without FastChat's files, the
    curate step builds; `plan` and a whole build still stop in one line on the missing files."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "realchat.yaml"
    recipe.write_text(DEFAULT.read_text())
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["build", str(recipe), "--only", "curate", "--no-push", "--no-progress",
                            "--set", "steps.curate.source.limit=200"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "realchat" / "curate" / "manifest.json").is_file()
    assert not empty_cache.exists()  # nothing fetched, nothing needed
    r = runner.invoke(app, ["plan", str(recipe), "--set", "steps.curate.source.limit=200"])
    assert r.exit_code == 2 and "steps.evaluate.benchmark.questions" in text(r), r.output
    r = runner.invoke(app, ["build", str(recipe), "--only", "nosuchstep", "--no-push"])
    assert r.exit_code == 2 and "--only 'nosuchstep': no such step" in text(r), r.output


def test_fetch_eval_from_a_folder_checks_every_file(tmp_path, empty_cache):
    copy = tmp_path / "data"
    shutil.copytree(SHARED_EVAL, copy)
    (copy / "judge_prompts.jsonl").chmod(0o644)
    (copy / "judge_prompts.jsonl").write_text('{"name": "mine"}\n')
    r = runner.invoke(app, ["fetch-eval", "--from", str(copy)])
    assert r.exit_code == 2 and f"{copy / 'judge_prompts.jsonl'} is not FastChat's judge_prompts.jsonl" in text(r)
    assert not (empty_cache / "judge_prompts.jsonl").exists()
    (copy / "judge_prompts.jsonl").unlink()
    r = runner.invoke(app, ["fetch-eval", "--from", str(copy)])
    assert r.exit_code == 2 and "not found" in text(r) and "judge_prompts.jsonl" in text(r)


def test_a_folder_named_in_the_recipe_is_read_as_it_is(tmp_path, empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "realchat.yaml"
    recipe.write_text(DEFAULT.read_text())
    r = runner.invoke(app, ["plan", str(recipe), "--set", f"steps.evaluate.benchmark.questions={SHARED_EVAL}"])
    assert r.exit_code == 0, r.output
    assert not empty_cache.exists()  # nothing fetched, nothing cached


BLOCKER = """
import sys, importlib.abc
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hide())
import importlib.util
_find = importlib.util.find_spec
def find_spec(name, package=None):
    return None if name.split(".")[0] == {module!r} else _find(name, package)
importlib.util.find_spec = find_spec
from realchat.cli import app
sys.argv = ["realchat", "plan", {recipe!r}]
app()
"""


@pytest.mark.parametrize("module, step, extra", [("trl", "usergpt", "train"),
                                                 ("sentence_transformers", "evaluate", "eval")])
def test_a_missing_extra_is_one_line_at_plan(module, step, extra, tmp_path):
    r = subprocess.run([sys.executable, "-c", BLOCKER.format(module=module, recipe=str(DEFAULT))],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "Traceback" not in out, out
    assert f"steps.{step}.kind" in out and f"pip install 'realchat-usersim[{extra}]'" in out


def test_version_and_short_help():
    from realchat import __version__

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"realchat {__version__}"
    r = runner.invoke(app, ["-h"])
    assert r.exit_code == 0 and "plan" in r.output and "fetch-eval" in r.output
    r = runner.invoke(app, ["plan", "-h"])
    assert r.exit_code == 0 and "--set" in r.output
