"""Bad input, made up on the spot: one line naming the file (and record or key), exit 2, no traceback.

Each case is a file an adversarial user or a broken disk could hand RealChat (issue 16): a recipe that
is not UTF-8, duplicate keys, JSON nested 100,000 deep, a parquet file with a corrupt data page, a
source that is a folder, a symlink loop or /dev/zero, hostile ``pkg://`` references, a run or publish
root that is a file, a card with broken YAML, a judgment file with a word for a score. Silently wrong
results (a BOM, one pretty-printed JSON object, repeated conversation ids, ``limit: true``) are either
read right or refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app
from realchat.errors import RecipeError
from realchat.recipe.refs import resolve_package_path

runner = CliRunner()

RECORD = {"id": "a", "conversations": [{"from": "human", "value": "Hello there, how are you today?"},
                                       {"from": "gpt", "value": "I am fine, thank you."}]}


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    text = result.output + (result.stderr if result.stderr_bytes else "")
    return result.exit_code, " ".join(text.split())


def one_line_error(code: int, out: str, *expected: str) -> None:
    """Exit 2, no traceback, and every expected piece in the (whitespace-flattened) message."""
    assert code == 2, out
    assert "Traceback" not in out and "error:" in out, out
    for piece in expected:
        assert " ".join(piece.split()) in out, (piece, out)


def set_doc(recipe: Path, fn) -> Path:
    doc = yaml.safe_load(recipe.read_text())
    fn(doc)
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    return recipe


@pytest.fixture
def good(make_recipe, write_json_array):
    return make_recipe(write_json_array([RECORD]))


def kept_ids(recipe: Path) -> list[str]:
    run = yaml.safe_load(recipe.read_text())["run_root"]
    return pl.read_parquet(Path(run) / "t" / "curate" / "data" / "*.parquet")["conversation_id"].to_list()


def rejected(recipe: Path) -> list[tuple[str, str]]:
    run = yaml.safe_load(recipe.read_text())["run_root"]
    files = list((Path(run) / "t" / "curate" / "rejected").glob("*.parquet"))
    return pl.read_parquet(files).select("reason", "detail").rows() if files else []


# -- the recipe and --set ---------------------------------------------------------------------------


def test_recipe_that_is_not_utf8(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\nsteps: {}\n".encode("latin-1"))
    one_line_error(*cli("plan", str(bad)), "latin1.yaml: cannot read the recipe: not valid UTF-8 text (byte 9")


def test_duplicate_keys_are_errors_with_both_lines(good):
    text = good.read_text()
    curate_block = text[text.index("  curate:"):]
    good.write_text(text + curate_block.replace("filters: []", "filters: [{op: shape}]"))
    first = text[:text.index("  curate:")].count("\n") + 1
    second = text.count("\n") + 1
    one_line_error(*cli("plan", str(good)),
                   f"{good.name}: line {second}: duplicate key 'curate' (first at line {first})")


def test_alias_bomb_and_deep_nesting_in_a_recipe(good, tmp_path):
    lines = ["name: t", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]  # 9^9 values
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines + ["steps: {c: {kind: curate, held_out_share: *a8}}"]) + "\n")
    one_line_error(*cli("plan", str(bomb)), "bomb.yaml: not a usable recipe: its aliases (*name) expand to more "
                                            "than 1,000,000 values")
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: t\nsteps: " + "[" * 100_000 + "]" * 100_000 + "\n")
    one_line_error(*cli("plan", str(deep)), "deep.yaml: cannot read the recipe: nested too deeply to read")
    # aliases a recipe really uses still work
    text = good.read_text().replace("filters: []", "filters: [&s {op: shape}, *s]")
    good.write_text(text)
    assert cli("plan", str(good))[0] == 0


@pytest.mark.parametrize("override, expected", [
    ("steps.curate.source.limit=[1", "the value is not valid YAML (expected ',' or ']'"),
    ('steps.curate.source.limit=!!python/object/apply:os.system ["echo hi"]',
     "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    ("steps.curate.source={path: a.json, path: b.json}", "duplicate key 'path' at line 1"),
])
def test_bad_set_values(good, override, expected):
    one_line_error(*cli("plan", str(good), "--set", override), good.name, expected)


def test_the_same_set_key_twice_is_an_error(good):
    one_line_error(*cli("plan", str(good), "--set", "steps.curate.source.limit=2", "--set",
                        "steps.curate.source.limit=3"),
                   "--set 'steps.curate.source.limit=3': the key path was already set by --set "
                   "'steps.curate.source.limit=2'")


@pytest.mark.parametrize("override, expected", [
    ("steps.curate.source.limit=true", "steps.curate.source.limit: a number is expected here, not true/false"),
    ("steps.curate.source.limit=-3", "steps.curate.source.limit: Input should be greater than or equal to 1"),
    ("steps.curate.held_out_share=1.5", "steps.curate.held_out_share: Input should be less than 1"),
    ("steps.curate.held_out_share=.nan", "steps.curate.held_out_share: Input should be a finite number"),
    ("steps.curate.shard_rows=false", "steps.curate.shard_rows: Input should be greater than or equal to 1 (got False)"),
    ("steps.curate.held_out_share=false", "steps.curate.held_out_share: a number is expected here, not true/false"),
    ("seed=-1", "seed: Input should be greater than or equal to 0"),
    ("steps.curate.filters=[{op: language, min_share: true}]",
     "steps.curate.filters[0].min_share: a number is expected here, not true/false"),
    ("steps.curate.filters=[{op: quality, min_alpha_ratio: 2}]",
     "steps.curate.filters[0].min_alpha_ratio: Input should be less than or equal to 1"),
    ("steps.curate.filters=[{op: near_dedup, seed: -1}]", "steps.curate.filters[0].seed: Input should be greater"),
])
def test_out_of_range_values(good, override, expected):
    one_line_error(*cli("plan", str(good), "--set", override), good.name, expected)


@pytest.mark.parametrize("settings, expected", [
    ({"max_steps": -5}, "steps.usergpt.max_steps: Input should be greater than or equal to -1"),
    ({"max_steps": 0}, "steps.usergpt.max_steps: 0 steps trains nothing"),
    ({"learning_rate": "1e9"}, "steps.usergpt.learning_rate: Input should be less than or equal to 1"),
    ({"per_device_train_batch_size": True}, "steps.usergpt.per_device_train_batch_size: a number is expected"),
    ({"lora": {"dropout": False}}, "steps.usergpt.lora.dropout: a number is expected"),
    ({"lora": {"dropout": True}}, "steps.usergpt.lora.dropout: Input should be less than 1 (got True)"),
])
def test_out_of_range_training_values(good, tiny_model_dir, settings, expected):
    set_doc(good, lambda d: d["steps"].update(usergpt={"kind": "sft", "loss_on": "user", "dataset": "curate",
                                                       "base_model": str(tiny_model_dir), **settings}))
    one_line_error(*cli("plan", str(good)), good.name, expected)


def test_booleans_still_work_where_booleans_are_meant(good, tiny_model_dir):
    set_doc(good, lambda d: d["steps"].update(usergpt={"kind": "sft", "loss_on": "user", "dataset": "curate",
                                                       "base_model": str(tiny_model_dir), "packing": False,
                                                       "max_steps": 3, "learning_rate": 1.0e-4}))
    code, out = cli("plan", str(good))
    assert code == 0, out


# -- sources ----------------------------------------------------------------------------------------


def test_json_array_nested_100000_deep(make_recipe, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" + json.dumps(RECORD) + ", " + "[" * 100_000 + "]" * 100_000 + "]")
    one_line_error(*cli("build", str(make_recipe(deep)), "--no-progress", "--no-push"),
                   "deep.json: record 1: nested too deeply to read")


def test_jsonl_line_nested_100000_deep_is_rejected_and_the_rest_read(make_recipe, tmp_path):
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps(RECORD) + "\n" + '{"id": "x", "conversations": ' + "[" * 100_000
                    + "]" * 100_000 + "}\n" + json.dumps(RECORD | {"id": "b"}) + "\n")
    recipe = make_recipe(deep, fmt="openai_messages")
    code, out = cli("build", str(recipe), "--no-progress", "--no-push")
    assert code == 0, out
    assert kept_ids(recipe) == ["a", "b"]
    assert [r[0] for r in rejected(recipe)] == ["read.too_deep"]
    assert "line 2: nested too deeply" in rejected(recipe)[0][1]


def test_parquet_with_a_corrupt_data_page(make_recipe, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "corrupt.parquet"
    n = 2000
    pq.write_table(pa.table({"id": [str(i) for i in range(n)],
                             "conversations": [[{"from": "human", "value": f"hello number {i} " * 20}]
                                               for i in range(n)]}), path, compression="none")
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 4, len(data) // 2):  # the middle of the data pages; the footer stays intact
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    one_line_error(*cli("build", str(make_recipe(path, fmt="parquet")), "--no-progress", "--no-push"),
                   "corrupt.parquet: record 0: corrupt parquet data:")


def test_bom_at_the_start_of_a_jsonl_file_is_accepted(make_recipe, tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(RECORD) + "\n" + json.dumps(RECORD | {"id": "b"}) + "\n").encode())
    recipe = make_recipe(path, fmt="openai_messages")
    code, out = cli("build", str(recipe), "--no-progress", "--no-push")
    assert code == 0, out
    assert kept_ids(recipe) == ["a", "b"] and rejected(recipe) == []


@pytest.mark.parametrize("text", [json.dumps(RECORD, indent=2),
                                  "\n" + json.dumps(RECORD, indent=None)[:-1] + ',\n"x": 1}'])
def test_one_pretty_printed_json_object_is_said_to_be_one(make_recipe, tmp_path, text):
    path = tmp_path / "one.json"
    path.write_text(text)
    one_line_error(*cli("build", str(make_recipe(path)), "--no-progress", "--no-push"),
                   "one.json: the file is one JSON object (spread over several lines), not a JSON array of "
                   "records nor JSON lines")


def test_repeated_conversation_ids_get_distinct_ids_and_are_counted(make_recipe, tmp_path):
    path = tmp_path / "dup.jsonl"
    rows = [RECORD | {"id": 1}, RECORD | {"id": "1"}, RECORD | {"id": "1~2"}, RECORD | {"id": "2"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = make_recipe(path, fmt="openai_messages")
    code, out = cli("build", str(recipe), "--no-progress", "--no-push")
    assert code == 0, out
    assert "2 records repeat an earlier record's conversation id" in out
    ids = kept_ids(recipe)
    assert sorted(ids) == sorted(["1", "1~2", "1~2~2", "2"]) and len(set(ids)) == len(ids)
    stats = json.loads((Path(yaml.safe_load(recipe.read_text())["run_root"]) / "t" / "curate" / "stats.json")
                       .read_text())
    assert stats["rules"][0]["counters"]["renamed_duplicate_ids"] == 2
    assert stats["read"] == stats["kept_conversations"] + stats["rejected_conversations"] == 4


def test_source_that_is_a_folder_a_symlink_loop_or_a_device(make_recipe, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    one_line_error(*cli("plan", str(make_recipe(folder))),
                   "steps.curate.source.path:", "is a folder, but format 'sharegpt' reads one JSON or JSONL file")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    one_line_error(*cli("plan", str(make_recipe(tmp_path / "loop1"))),
                   "steps.curate.source.path:", "loop1: cannot read: too many levels of symbolic links")
    one_line_error(*cli("plan", str(make_recipe("/dev/zero"))),  # hashed for ever before
                   "/dev/zero: not a regular file or a folder of them (a character device)")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(*cli("plan", str(make_recipe(fifo))), "fifo: not a regular file or a folder of them (a named pipe)")


def test_a_model_or_file_reference_to_a_device_is_refused(good):
    set_doc(good, lambda d: d["steps"]["curate"].update(tokenizer="/dev/zero"))
    one_line_error(*cli("plan", str(good)), "steps.curate.tokenizer: /dev/zero: not a regular file or a folder")


# -- hostile pkg:// references ----------------------------------------------------------------------


@pytest.mark.parametrize("ref, expected", [
    ("pkg://../x", "pkg://../x: '..' is not a package name"),
    ("pkg://.os/x", "pkg://.os/x: '.os' is not a package name"),
    ("pkg://json/../../etc/passwd", "a pkg:// path must stay inside its package"),
    ("pkg://json//etc/passwd", "a pkg:// path must stay inside its package"),
])
def test_hostile_package_references(make_recipe, ref, expected):
    one_line_error(*cli("plan", str(make_recipe(ref))), "steps.curate.source.path:", expected)


def test_package_references_never_import_the_package(tmp_path):
    pkg = tmp_path / "site" / "noisy_pkg"
    (pkg / "sub").mkdir(parents=True)
    marker = tmp_path / "imported"
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (pkg / "sub" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (pkg / "sub" / "data.json").write_text("[]")
    code = ("from realchat.recipe.refs import resolve_package_path as r\n"
            "print(r('pkg://noisy_pkg.sub/data.json'))\n"
            "print(r('pkg://this.x/data.json'))\n"
            "import sys; print('this' in sys.modules, 'noisy_pkg' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.getcwd()])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == str(pkg / "sub" / "data.json")
    assert lines[2] == "False False"
    assert not marker.exists()  # the package's top-level code never ran
    with pytest.raises(RecipeError, match="must stay inside its package"):
        resolve_package_path("pkg://json/../../etc/passwd")


# -- where RealChat writes ------------------------------------------------------------------------


def test_run_root_or_publish_root_that_is_a_file_or_cannot_be_made(good, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    set_doc(good, lambda d: d.update(run_root=str(a_file)))
    one_line_error(*cli("build", str(good), "--no-progress"), f"{a_file}/t: not a directory")
    set_doc(good, lambda d: d.update(run_root="/proc/realchat-cannot-be-here"))  # unwritable, even for root
    one_line_error(*cli("build", str(good), "--no-progress"), "/proc/realchat-cannot-be-here")
    set_doc(good, lambda d: d.update(run_root=str(tmp_path / "runs"), publish={"target": "local",
                                                                              "local_root": str(a_file)}))
    one_line_error(*cli("build", str(good), "--no-progress"), f"{a_file}/datasets", "not a directory")


# -- reading what RealChat wrote ------------------------------------------------------------------


@pytest.mark.parametrize("header, expected", [
    ("foo: [1\n", "README.md: card metadata is not readable: line 1, column 8: expected ',' or ']'"),
    ("- a list\n", "README.md: card metadata is not readable: repo card metadata block should be a dict"),
    ("realchat: 5\n", "the card's `realchat` block is not RealChat's lineage"),
    ("realchat: {parents: [1]}\n", "the card's `realchat` block is not RealChat's lineage"),
])
def test_lineage_of_a_card_with_broken_yaml(tmp_path, header, expected):
    (tmp_path / "README.md").write_text(f"---\n{header}---\nbody\n")
    one_line_error(*cli("lineage", str(tmp_path)), expected)


@pytest.mark.parametrize("row, expected", [
    ({"model": "m", "score": "high", "turn": 1}, "line 2: score: expected a number (-1 for an unparsable verdict), "
                                                 "got 'high'"),
    ({"model": "m", "score": 5, "turn": "two"}, "line 2: turn: expected an integer turn"),
    ({"model_1": "a", "model_2": "b", "g1_winner": 3}, "line 2: g1_winner: expected a string, got 3"),
    (7, "line 2: expected a JSON object (a FastChat judgment), got 7"),
])
def test_eval_show_with_a_bad_judgment(tmp_path, row, expected):
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps({"model": "m", "score": 7, "turn": 1}) + "\n" + json.dumps(row) + "\n")
    one_line_error(*cli("eval", "show", str(path)), "j.jsonl: record", expected)


def test_eval_show_with_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"model": "m", "score": 7}\n\xff\xfe\n')
    one_line_error(*cli("eval", "show", str(path)), "j.jsonl: cannot read: not valid UTF-8 text")


def test_a_bug_keeps_its_traceback(monkeypatch, good):
    """The boundary converts errors about the user's files only; RealChat's own bugs stay visible."""
    import realchat.engine.build as build

    def broken(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(build, "plan", broken)
    result = runner.invoke(app, ["plan", str(good)])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


# -- cards --------------------------------------------------------------------------------------------


def test_description_html_and_headings_are_escaped_in_cards(good):
    set_doc(good, lambda d: d.update(description="Nice data <script>alert('x')</script>\n# Not a heading\n"
                                                 "```\nfence"))
    code, out = cli("build", str(good), "--no-progress", "--no-push")
    assert code == 0, out
    card = (Path(yaml.safe_load(good.read_text())["run_root"]) / "t" / "curate" / "README.md").read_text()
    assert "<script>" not in card and "&lt;script&gt;" in card
    assert "\n# Not a heading" not in card and "\\# Not a heading" in card
    assert "\n```\nfence" not in card


def test_a_full_disk_is_one_line_whoever_writes():
    """polars writes through its own Rust I/O and reports ENOSPC inside its ComputeError; /dev/full is a
    real device that answers every write with ENOSPC."""
    from realchat.errors import boundary_error

    with pytest.raises(Exception) as polars_error:
        pl.DataFrame({"a": list(range(100_000))}).write_parquet("/dev/full")
    with pytest.raises(OSError) as os_error:
        with open("/dev/full", "w") as f:
            f.write("x" * 100_000)
    for exc in (polars_error.value, os_error.value):
        err = boundary_error(exc)
        assert err is not None and err.exit_code == 2
        assert "no space left on device" in err.render()
    assert boundary_error(KeyError("a bug")) is None


def test_model_files_that_are_not_models(good, tmp_path, tiny_model_dir):
    import shutil

    from realchat.errors import UserFileError
    from realchat.models import materialize_model

    set_doc(good, lambda d: d["steps"]["curate"].update(tokenizer=str(tmp_path / "data.json"),
                                                        filters=[{"op": "length", "max_tokens": 100}]))
    one_line_error(*cli("build", str(good), "--no-progress", "--no-push"),
                   "steps.curate.tokenizer:", "data.json is a file, but a tokenizer is a model folder, a .gguf file")
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(config | {"hidden_size": "wide"}))
    set_doc(good, lambda d: d["steps"]["curate"].update(tokenizer=str(broken)))
    one_line_error(*cli("build", str(good), "--no-progress", "--no-push"),
                   "steps.curate.tokenizer: cannot load tokenizer", "hidden_size")
    with pytest.raises(UserFileError, match="config.json: not a usable model config: .*hidden_size"):
        materialize_model(str(broken))
    assert materialize_model(str(tiny_model_dir)) == str(tiny_model_dir)
