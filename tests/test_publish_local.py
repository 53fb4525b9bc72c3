"""Local publishing that never loses data: only RealChat's own files are replaced, a user's file in the
repo folder and a sibling folder named like a temporary one survive, files are hard-linked from the
run folder (copied across filesystems), and the previous revision stays until the new one is in place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app
from realchat.files import TEMP_MARK, atomic_folder, clean_stale
from realchat.hub.publish import OWNED, PublishError, _publish_local

runner = CliRunner()


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


@pytest.fixture
def pub_recipe(make_recipe, write_json_array, sharegpt_records):
    def make(filters=None, publish=None) -> Path:
        src = write_json_array(sharegpt_records[:80])
        path = make_recipe(src, filters=filters or [{"op": "shape"}], name="pl")
        doc = yaml.safe_load(path.read_text())
        if publish:
            doc["publish"] = publish
        path.write_text(yaml.safe_dump(doc))
        return path

    return make


def build(recipe: Path) -> str:
    r = runner.invoke(app, ["build", str(recipe), "--no-progress"])
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


def test_user_files_and_lookalike_temp_folders_survive_a_republish(pub_recipe, tmp_path):
    from datasets import load_dataset

    out = build(pub_recipe())
    run = tmp_path / "runs" / "pl" / "curate"
    repo = tmp_path / "hub" / "datasets" / "realchat" / "pl-curate"
    shard = next((run / "data").glob("*.parquet"))
    published = repo / shard.relative_to(run)
    assert os.stat(published).st_ino == os.stat(shard).st_ino  # hard-linked, not a second copy
    assert "hard-linked" in out and "0 copied" in out
    owned = json.loads((repo / OWNED).read_text())
    assert "README.md" in owned["files"] and shard.relative_to(run).as_posix() in owned["files"]

    (repo / "NOTES.md").write_text("my notes")  # a user's files inside the repo folder
    (repo / "mine").mkdir()
    (repo / "mine" / "eval.txt").write_text("mine")
    (repo / "empty").mkdir()
    dead = _dead_pid()
    lookalikes = [repo.parent / f".pl-curate.tmp-{dead}-0123abcd", repo.parent / f".pl-curate.old-{dead}-89abcdef"]
    for d in lookalikes:  # a user's folders named like RealChat's temporary folders, of a dead process
        d.mkdir()
        (d / "keep.txt").write_text("keep")

    out = build(pub_recipe(filters=[{"op": "shape"}, {"op": "exact_dedup"}]))  # a new fingerprint
    assert "kept 2 file(s) RealChat did not write (NOTES.md, mine/eval.txt)" in out
    assert (repo / "NOTES.md").read_text() == "my notes" and (repo / "mine" / "eval.txt").read_text() == "mine"
    assert (repo / "empty").is_dir()
    assert all((d / "keep.txt").read_text() == "keep" for d in lookalikes)
    manifest = json.loads((repo / "manifest.json").read_text())
    assert manifest == json.loads((run / "manifest.json").read_text())
    assert json.loads((repo / OWNED).read_text())["fingerprint"] == manifest["fingerprint"]
    assert "NOTES.md" not in json.loads((repo / OWNED).read_text())["files"]
    assert not (repo / TEMP_MARK).exists()
    stats = json.loads((repo / "stats.json").read_text())
    assert load_dataset(str(repo), split="train").num_rows == stats["split_rows"]["train"]  # user files do not disturb it
    # nothing else appeared or stayed beside the repo folder
    assert sorted(p.name for p in repo.parent.iterdir()) == sorted(["pl-curate", *(d.name for d in lookalikes)])


def test_across_filesystems_files_are_copied(pub_recipe, tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the tests' temporary folder")
    root = shm / f"realchat-test-{os.getpid()}"
    try:
        out = build(pub_recipe(publish={"local_root": str(root)}))
        assert "0 file(s) hard-linked" in out
        repo = root / "datasets" / "realchat" / "pl-curate"
        assert json.loads((repo / "manifest.json").read_text())["step"] == "curate"
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def _step_folder(path: Path, fp: str, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"step": "s", "fingerprint": fp}))
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


def test_a_users_file_where_realchat_publishes_is_an_error_and_nothing_changes(tmp_path):
    dest = tmp_path / "hub" / "datasets" / "ns" / "x"
    _publish_local(dest, _step_folder(tmp_path / "r1", "a", {"data/a.parquet": "1"}), "card a", "a", log=lambda m: None)
    (dest / "data" / "b.parquet").write_text("the user's")  # not RealChat's ...
    second = _step_folder(tmp_path / "r2", "b", {"data/a.parquet": "1", "data/b.parquet": "2"})  # ... but it writes it now
    with pytest.raises(PublishError, match=r"data/b.parquet: a file RealChat did not write"):
        _publish_local(dest, second, "card b", "b", log=lambda m: None)
    assert (dest / "data" / "b.parquet").read_text() == "the user's" and (dest / "README.md").read_text() == "card a"
    # files RealChat wrote before and no longer writes go; the unchanged publish makes no new revision
    third = _step_folder(tmp_path / "r3", "c", {"data/c.parquet": "3"})
    (dest / "data" / "b.parquet").unlink()
    assert _publish_local(dest, third, "card c", "c", log=lambda m: None) == ("c", True)
    assert sorted(p.name for p in (dest / "data").iterdir()) == ["c.parquet"]
    assert _publish_local(dest, third, "card c", "c", log=lambda m: None) == ("c", False)


def test_only_realchats_own_stale_temp_folders_are_swept_and_a_torn_swap_is_undone(tmp_path):
    dest = tmp_path / "repo"
    dead = _dead_pid()
    ours_tmp = tmp_path / f".repo.tmp-{dead}-00000000"
    ours_tmp.mkdir()
    (ours_tmp / TEMP_MARK).write_text(str(dead))
    # kill -9 between the two renames: the previous folder sits aside, marked, and the repo is missing
    ours_old = tmp_path / f".repo.old-{dead}-11111111"
    ours_old.mkdir()
    (ours_old / "README.md").write_text("previous")
    (ours_old / TEMP_MARK).write_text(str(dead))
    theirs = tmp_path / f".repo.tmp-{dead}-22222222"
    theirs.mkdir()
    alive = tmp_path / f".repo.tmp-{os.getpid()}-33333333"
    alive.mkdir()
    (alive / TEMP_MARK).write_text(str(os.getpid()))
    clean_stale(dest)
    assert not ours_tmp.exists() and not ours_old.exists() and theirs.is_dir() and alive.is_dir()
    assert (dest / "README.md").read_text() == "previous" and not (dest / TEMP_MARK).exists()

    with pytest.raises(RuntimeError):  # a failure while the new one is assembled keeps the old one
        with atomic_folder(dest) as tmp:
            (tmp / "README.md").write_text("new")
            raise RuntimeError("disk full")
    assert (dest / "README.md").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["repo", theirs.name, alive.name])


def test_changing_publish_settings_of_a_finished_step_publishes_to_the_new_place(pub_recipe, tmp_path):
    recipe = pub_recipe()
    build(recipe)
    first = tmp_path / "hub" / "datasets" / "realchat" / "pl-curate"
    assert (first / "manifest.json").is_file()
    out = build(recipe)
    assert "up to date" in out and "published" not in out  # nothing changed: nothing to do

    doc = yaml.safe_load(recipe.read_text())
    doc["publish"] = {"namespace": "someone", "local_root": str(tmp_path / "elsewhere")}
    recipe.write_text(yaml.safe_dump(doc))
    out = build(recipe)
    assert "up to date" in out and "curate: published" in out  # not rebuilt, but published anew
    moved = tmp_path / "elsewhere" / "datasets" / "someone" / "pl-curate"
    assert json.loads((moved / "manifest.json").read_text()) == json.loads((first / "manifest.json").read_text())
    record = json.loads((tmp_path / "runs" / "pl" / "published" / "curate.json").read_text())
    assert record["repo_id"] == "someone/pl-curate" and record["destination"]["folder"] == str(moved.resolve())
    assert "published" not in build(recipe)

    doc["publish"]["repos"] = {"curate": "renamed"}
    recipe.write_text(yaml.safe_dump(doc))
    assert "curate: published" in build(recipe)
    renamed = tmp_path / "elsewhere" / "datasets" / "someone" / "renamed"
    import shutil

    shutil.rmtree(renamed)  # the published folder deleted by hand: the next build puts it back
    assert "curate: published" in build(recipe) and (renamed / "README.md").is_file()


def test_hub_publish_deletes_only_files_realchat_wrote(hub, tmp_path):
    """On the Hub too: a file someone added to the repo stays; RealChat's own stale shard goes."""
    from huggingface_hub import HfApi

    from realchat.hub.publish import HubPublisher
    from realchat.recipe.schema import PublishConfig

    card = "---\nlicense: apache-2.0\nrealchat:\n  step: s\n  kind: curate\n---\n# s\n"
    api = HfApi()
    first = _step_folder(tmp_path / "r1", "a", {"data/a.parquet": "1"})
    HubPublisher(PublishConfig(target="hub", namespace="tester")).publish("tester/owned", "dataset", first, card, "s", "a")
    api.upload_file(path_or_fileobj=b"my notes", path_in_repo="NOTES.md", repo_id="tester/owned", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"mine", path_in_repo="extra/eval.txt", repo_id="tester/owned", repo_type="dataset")
    second = _step_folder(tmp_path / "r2", "b", {"data/b.parquet": "2"})
    sha, changed = HubPublisher(PublishConfig(target="hub", namespace="tester")).publish(
        "tester/owned", "dataset", second, card, "s", "b")
    files = set(api.list_repo_files("tester/owned", repo_type="dataset", revision=sha))
    assert changed and {"NOTES.md", "extra/eval.txt", "data/b.parquet", OWNED} <= files
    assert "data/a.parquet" not in files


def test_a_record_from_before_destinations_were_kept_is_read_without_republishing(pub_recipe, tmp_path):
    recipe = pub_recipe()
    build(recipe)
    path = tmp_path / "runs" / "pl" / "published" / "curate.json"
    record = json.loads(path.read_text())
    for key in ("destination", "parents"):
        del record[key]
    path.write_text(json.dumps(record))
    (tmp_path / "hub" / "datasets" / "realchat" / "pl-curate" / OWNED).unlink()
    assert "published" not in build(recipe)  # same place as recorded: no network, no new revision


def test_a_folder_published_before_realchat_kept_its_list(tmp_path):
    """RealChat's layout there is its own (a stale shard goes); anything else stays."""
    dest = tmp_path / "hub" / "datasets" / "ns" / "x"
    _step_folder(dest, "old", {"data/train-00000-of-00002.parquet": "1", "data/train-00001-of-00002.parquet": "2",
                               "README.md": "old card", "NOTES.md": "mine"})
    new = _step_folder(tmp_path / "r", "new", {"data/train-00000-of-00001.parquet": "3"})
    assert _publish_local(dest, new, "card", "new", log=lambda m: None) == ("new", True)
    assert sorted(p.name for p in (dest / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    assert (dest / "NOTES.md").read_text() == "mine" and (dest / "README.md").read_text() == "card"
