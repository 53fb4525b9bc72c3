"""The recipe as a graph of named steps: reference errors with key paths, fingerprints that change
downstream only, ``--from`` / ``--only``, a step kind registered from outside the engine, the run
folder's lock, ``plan --json`` and lineage of a moved local publish folder."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Literal

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app
from realchat.engine.build import graph_of, plan, select
from realchat.engine.lock import run_lock
from realchat.recipe.base import StepConfig
from realchat.recipe.load import load_recipe
from realchat.recipe.refs import DatasetRef
from realchat.steps import registry
from realchat.steps.base import StepKind, StepResult

runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def flat(text: str) -> str:
    return " ".join(text.split())


def read_doc(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def write_doc(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def source(write_json_array, sharegpt_records) -> Path:
    return write_json_array(sharegpt_records[:80])


@pytest.fixture
def chain_recipe(make_recipe, source, tiny_model_dir):
    """curate → usergpt (sft) → realm (sft on usergpt's model), and an unrelated branch ``other``
    (sft on curate's held-out split, from the tiny model). Plan never trains anything."""
    path = make_recipe(source, filters=[{"op": "shape"}], name="g")
    doc = read_doc(path)
    doc["steps"].update({
        "usergpt": {"kind": "sft", "loss_on": "user", "base_model": str(tiny_model_dir), "dataset": "curate",
                    "max_steps": 2},
        "realm": {"kind": "sft", "loss_on": "assistant", "base_model": "usergpt", "dataset": "curate",
                  "max_steps": 2},
        "other": {"kind": "sft", "loss_on": "assistant", "base_model": str(tiny_model_dir),
                  "dataset": {"step": "curate", "split": "held_out"}, "max_steps": 2},
    })
    return write_doc(path, doc)


def plan_json(recipe: Path, *sets: str) -> list[dict]:
    args = ["plan", str(recipe), "--json"]
    for s in sets:
        args += ["--set", s]
    code, out = cli(*args)
    assert code == 0, out
    return json.loads(out)


def fingerprints(recipe: Path, *sets: str) -> dict[str, str]:
    return {p["name"]: p["fingerprint"] for p in plan_json(recipe, *sets)}


# -- graph errors ---------------------------------------------------------------------------------


def plan_error(recipe: Path) -> str:
    code, out = cli("plan", str(recipe))
    assert code == 2, out
    assert "Traceback" not in out
    text = flat(out)
    assert str(recipe) in text
    return text


def test_cycle_between_two_sft_steps_names_the_key(chain_recipe):
    doc = read_doc(chain_recipe)
    doc["steps"]["usergpt"]["base_model"] = "realm"  # realm's model from usergpt's, usergpt's from realm's
    text = plan_error(write_doc(chain_recipe, doc))
    assert "steps.realm.base_model: steps form a cycle: usergpt → realm → usergpt" in text


def test_cycle_between_simulate_and_sft_names_the_key(chain_recipe, tiny_model_dir):
    doc = read_doc(chain_recipe)
    doc["steps"]["sim"] = {"kind": "simulate", "simulator": "usergpt",
                           "simulator_backend": {"kind": "local", "model": "usergpt"},
                           "answerer": {"kind": "local", "model": str(tiny_model_dir)}, "conversations": 2}
    doc["steps"]["usergpt"]["dataset"] = "sim"  # the simulator trained on its own simulation
    text = plan_error(write_doc(chain_recipe, doc))
    assert "steps.sim.simulator_backend.model: steps form a cycle: usergpt → sim → usergpt" in text


def test_step_reading_itself_is_an_error(chain_recipe):
    doc = read_doc(chain_recipe)
    doc["steps"]["realm"]["base_model"] = "realm"
    text = plan_error(write_doc(chain_recipe, doc))
    assert "steps.realm.base_model: step realm reads its own output" in text


def test_missing_step_reference(chain_recipe):
    doc = read_doc(chain_recipe)
    doc["steps"]["other"]["dataset"] = {"step": "nope", "split": "held_out"}
    text = plan_error(write_doc(chain_recipe, doc))
    assert "steps.other.dataset: no step named 'nope' (steps: curate, usergpt, realm, other)" in text


def test_missing_step_as_a_plain_name(chain_recipe):
    doc = read_doc(chain_recipe)
    doc["steps"]["other"]["dataset"] = "nope"
    text = plan_error(write_doc(chain_recipe, doc))
    assert "steps.other.dataset: 'nope' is neither a step of this recipe nor a Hub dataset id" in text


def test_dataset_step_where_a_model_is_needed(chain_recipe):
    doc = read_doc(chain_recipe)
    doc["steps"]["realm"]["base_model"] = "curate"
    text = plan_error(write_doc(chain_recipe, doc))
    assert ("steps.realm.base_model: 'curate' is a curate step: it makes a dataset of conversations, "
            "but a model is needed here") in text


def test_model_step_where_a_dataset_is_needed(chain_recipe):
    doc = read_doc(chain_recipe)
    doc["steps"]["realm"]["dataset"] = "usergpt"
    text = plan_error(write_doc(chain_recipe, doc))
    assert ("steps.realm.dataset: 'usergpt' is an sft step: it makes a model, "
            "but a dataset of conversations is needed here") in text
    # the explicit form is checked the same way
    doc["steps"]["realm"]["dataset"] = {"step": "usergpt", "split": "train"}
    text = plan_error(write_doc(chain_recipe, doc))
    assert "steps.realm.dataset: 'usergpt' is an sft step: it makes a model" in text


def test_dataset_step_as_a_simulator_model(chain_recipe, tiny_model_dir):
    doc = read_doc(chain_recipe)
    doc["steps"]["sim"] = {"kind": "simulate", "simulator_backend": {"kind": "local", "model": "curate"},
                           "answerer": {"kind": "local", "model": str(tiny_model_dir)}}
    text = plan_error(write_doc(chain_recipe, doc))
    assert "steps.sim.simulator_backend.model: 'curate' is a curate step" in text
    assert "but a model is needed here" in text


def test_unknown_kind(chain_recipe):
    doc = read_doc(chain_recipe)
    doc["steps"]["other"]["kind"] = "finetune"
    text = plan_error(write_doc(chain_recipe, doc))
    assert "steps.other.kind: unknown kind 'finetune'; expected one of: curate, sft, simulate, evaluate" in text


# -- fingerprints ---------------------------------------------------------------------------------


def test_fingerprints_change_for_the_step_and_downstream_only(chain_recipe):
    base = fingerprints(chain_recipe)
    assert list(base) == ["curate", "usergpt", "realm", "other"]
    assert len(set(base.values())) == 4
    assert fingerprints(chain_recipe) == base  # deterministic

    middle = fingerprints(chain_recipe, "steps.usergpt.learning_rate=0.001")
    assert {n for n in base if middle[n] != base[n]} == {"usergpt", "realm"}

    leaf = fingerprints(chain_recipe, "steps.realm.max_steps=3")
    assert {n for n in base if leaf[n] != base[n]} == {"realm"}

    branch = fingerprints(chain_recipe, "steps.other.dataset.split=all")
    assert {n for n in base if branch[n] != base[n]} == {"other"}

    root = fingerprints(chain_recipe, "steps.curate.held_out_share=0.1")
    assert {n for n in base if root[n] != base[n]} == set(base)

    # a key written with its default value is the same config: nothing changes
    same = fingerprints(chain_recipe, "steps.usergpt.eval_share=0.0")
    assert same == base


def test_fingerprint_follows_the_content_of_an_input_file(chain_recipe, source):
    base = fingerprints(chain_recipe)
    records = json.loads(source.read_text())
    source.write_text(json.dumps(records[:-1]))
    changed = fingerprints(chain_recipe)
    assert all(changed[n] != base[n] for n in base)  # curate reads the file; everything descends from it


# -- plan --json, select, --from, --only ----------------------------------------------------------


def test_plan_json_keys_parents_and_outputs(chain_recipe, tmp_path):
    rows = plan_json(chain_recipe)
    assert [set(r) for r in rows] == [{"name", "kind", "parents", "fingerprint", "done", "output", "estimate"}] * 4
    assert all(r["estimate"] == [] for r in rows)  # curate and local sft call no served model: nothing to pay
    by = {r["name"]: r for r in rows}
    assert [r["kind"] for r in rows] == ["curate", "sft", "sft", "sft"]
    assert by["curate"]["parents"] == [] and by["usergpt"]["parents"] == ["curate"]
    assert by["realm"]["parents"] == ["usergpt", "curate"] and by["other"]["parents"] == ["curate"]
    assert all(r["done"] is False for r in rows)
    assert by["realm"]["output"] == str(tmp_path / "runs" / "g" / "realm")
    assert not (tmp_path / "runs").exists()  # plan writes nothing


def test_select_from_and_only(chain_recipe):
    loaded = load_recipe(chain_recipe)
    graph = graph_of(loaded)
    plans = plan(loaded, graph)

    def names(**kw):
        return [p.name for p in select(plans, graph, **kw)]

    assert names() == ["curate", "usergpt", "realm", "other"]
    assert names(start="usergpt") == ["usergpt", "realm"]
    assert names(start="curate") == ["curate", "usergpt", "realm", "other"]
    assert names(start="realm") == ["realm"]
    assert names(start="other") == ["other"]
    assert names(only=["other"]) == ["other"]
    assert names(only=["realm", "curate"]) == ["curate", "realm"]  # build order, not the order asked
    assert names(only=["other", "realm"], start="usergpt") == ["realm"]
    assert graph.downstream("usergpt") == ["usergpt", "realm"]
    assert graph.upstream("realm") == ["curate", "usergpt", "realm"]
    assert graph.children("curate") == ["usergpt", "realm", "other"]
    from realchat.errors import RecipeError

    with pytest.raises(RecipeError, match="--from 'nope': no such step"):
        select(plans, graph, start="nope")


# -- a step kind registered from outside the engine -----------------------------------------------


class CountTurnsConfig(StepConfig):
    """Counts the turns of a dataset, per role."""

    kind: Literal["count_turns"] = "count_turns"
    dataset: DatasetRef
    roles: list[str] = ["user", "assistant"]


class CountTurns(StepKind):
    name = "count_turns"
    Config = CountTurnsConfig
    summary = "count the turns of a dataset"
    #: Every ``stats`` a run returned, for the test to compare with what the engine wrote.
    runs: list[dict] = []

    def run(self, ctx, out: Path) -> StepResult:
        convs = ctx.conversations("dataset")
        cfg: CountTurnsConfig = ctx.config  # type: ignore[assignment]
        stats = {"conversations": len(convs),
                 **{f"{r}_turns": sum(m["role"] == r for c in convs for m in c["messages"]) for r in cfg.roles},
                 "read_from": ctx.step_of("dataset")}
        (out / "counts.json").write_text(json.dumps(stats))
        CountTurns.runs.append(stats)
        return StepResult(stats=stats, manifest={"counted_by": "test"})


@pytest.fixture
def count_kind():
    assert "count_turns" not in registry.KINDS
    registry.register(CountTurns)
    CountTurns.runs = []
    yield CountTurns
    registry.KINDS.pop("count_turns", None)


@pytest.fixture
def count_recipe(make_recipe, source, count_kind):
    path = make_recipe(source, filters=[{"op": "shape"}], name="c", held_out_share=0.2)
    doc = read_doc(path)
    doc["steps"]["count"] = {"kind": "count_turns", "dataset": "curate"}
    return write_doc(path, doc)


def test_registered_kind_builds_through_the_cli(count_recipe, tmp_path):
    rows = plan_json(count_recipe)
    assert [(r["name"], r["kind"], r["parents"]) for r in rows] == [
        ("curate", "curate", []), ("count", "count_turns", ["curate"])]
    code, out = cli("build", str(count_recipe), "--no-progress", "--no-push")
    assert code == 0, out

    run = tmp_path / "runs" / "c"
    folder = run / "count"
    assert {"stats.json", "manifest.json", "README.md", "recipe.yaml", "counts.json"} <= {
        p.name for p in folder.iterdir()}
    assert len(CountTurns.runs) == 1
    stats = json.loads((folder / "stats.json").read_text())
    assert stats == CountTurns.runs[0]
    # it read curate's train split, exactly
    df = pl.read_parquet(sorted((run / "curate" / "data").glob("*.parquet")))
    train = df.filter(pl.col("split") == "train")
    assert stats["conversations"] == train.height > 0 and df.height > train.height
    assert stats["user_turns"] == sum(sum(m["role"] == "user" for m in ms) for ms in train["messages"].to_list())
    assert stats["read_from"] == "curate"

    manifest = json.loads((folder / "manifest.json").read_text())
    fps = {r["name"]: r["fingerprint"] for r in rows}
    curate_manifest = json.loads((run / "curate" / "manifest.json").read_text())
    assert manifest["step"] == "count" and manifest["kind"] == "count_turns"
    assert manifest["fingerprint"] == fps["count"] and manifest["counted_by"] == "test"
    assert curate_manifest["fingerprint"] == fps["curate"]
    assert [(p["key"], p["step"], p["fingerprint"], p.get("split")) for p in manifest["parents"]] == [
        ("dataset", "curate", fps["curate"], "train")]
    assert yaml.safe_load((folder / "recipe.yaml").read_text()) == read_doc(count_recipe)
    card = (folder / "README.md").read_text()
    assert "count_turns" in card and fps["count"] in card
    assert all(p["done"] for p in plan_json(count_recipe))

    # up to date: nothing runs again
    code, out = cli("build", str(count_recipe), "--no-progress", "--no-push")
    assert code == 0 and len(CountTurns.runs) == 1 and "up to date" in out

    # a key of the new kind enters its fingerprint like any other
    code, out = cli("build", str(count_recipe), "--no-progress", "--no-push", "--set", "steps.count.roles=[user]")
    assert code == 0, out
    assert len(CountTurns.runs) == 2 and set(CountTurns.runs[1]) == {"conversations", "user_turns", "read_from"}
    assert json.loads((run / "curate" / "manifest.json").read_text()) == curate_manifest  # curate not rebuilt


def test_registered_kind_reference_errors_name_its_keys(count_recipe):
    doc = read_doc(count_recipe)
    doc["steps"]["count"]["dataset"] = {"step": "missing"}
    text = plan_error(write_doc(count_recipe, doc))
    assert "steps.count.dataset: no step named 'missing'" in text
    doc["steps"]["count"]["dataset"] = {"stepp": "curate"}
    text = plan_error(write_doc(count_recipe, doc))
    assert "steps.count.dataset" in text and "expected a step name" in text


def test_build_only_and_from_through_the_cli(count_recipe, tmp_path):
    run = tmp_path / "runs" / "c"
    code, out = cli("build", str(count_recipe), "--no-progress", "--no-push", "--only", "count")
    assert code == 2 and "step count needs curate built first" in flat(out)
    assert not (run / "count").exists() and not (run / "curate").exists()

    code, out = cli("build", str(count_recipe), "--no-progress", "--no-push", "--only", "curate")
    assert code == 0, out
    assert (run / "curate" / "manifest.json").is_file() and not (run / "count").exists()
    curate_manifest = (run / "curate" / "manifest.json").read_text()
    curate_written = (run / "curate" / "manifest.json").stat().st_mtime_ns

    code, out = cli("build", str(count_recipe), "--no-progress", "--no-push", "--from", "count")
    assert code == 0, out
    assert (run / "count" / "manifest.json").is_file() and len(CountTurns.runs) == 1
    assert "curate: up to date" not in out  # --from count: curate is not even looked at

    code, out = cli("build", str(count_recipe), "--no-progress", "--no-push", "--only", "count", "--force")
    assert code == 0, out
    assert len(CountTurns.runs) == 2
    assert (run / "curate" / "manifest.json").read_text() == curate_manifest  # not rebuilt
    assert (run / "curate" / "manifest.json").stat().st_mtime_ns == curate_written

    code, out = cli("build", str(count_recipe), "--no-progress", "--no-push", "--from", "curate", "--force")
    assert code == 0, out
    assert len(CountTurns.runs) == 3
    assert (run / "curate" / "manifest.json").stat().st_mtime_ns != curate_written  # rebuilt
    assert json.loads((run / "curate" / "manifest.json").read_text())["fingerprint"] == json.loads(
        curate_manifest)["fingerprint"]  # to the same fingerprint

    # a --set on the parent, then --only the child: the message says the parent's fingerprint differs,
    # which key changed, and how to build it
    code, out = cli("build", str(count_recipe), "--no-progress", "--no-push", "--only", "count",
                    "--set", "steps.curate.held_out_share=0.3")
    text = flat(out)
    built = json.loads(curate_manifest)["fingerprint"][:12]
    assert code == 2 and "step count needs curate built first" in text, text
    assert f"curate is built at fingerprint {built}, but this recipe (with its --set overrides) gives" in text
    assert "steps.curate.held_out_share changed" in text and "--from curate" in text and "Traceback" not in text


# -- the run folder's lock ------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def test_second_build_exits_2_while_the_lock_is_held(count_recipe, tmp_path):
    code, out = cli("build", str(count_recipe), "--no-progress", "--no-push")
    assert code == 0, out
    run = tmp_path / "runs" / "c"
    before = snapshot(run)
    assert "count/manifest.json" in before

    with run_lock(run):
        for args in (["build", str(count_recipe), "--no-progress", "--force"],
                     ["build", str(count_recipe), "--no-progress", "--set", "steps.count.roles=[user]"],
                     ["push", str(count_recipe)]):
            code, out = cli(*args)
            text = flat(out)
            assert code == 2, out
            assert f"another build holds {run / '.lock'}" in text and f"pid {os.getpid()}" in text
            assert "nothing was changed" in text and "--wait" in text and "Traceback" not in out
        code, out = cli("build", str(count_recipe), "--no-progress", "--force", "--wait", "0.6")
        assert code == 2 and "waiting for the lock" in flat(out) and "another build holds" in flat(out)
    assert snapshot(run) == before  # nothing deleted, nothing rewritten
    assert len(CountTurns.runs) == 1
    assert not (tmp_path / "hub").exists()  # nor published

    # released: the next build goes through
    code, out = cli("build", str(count_recipe), "--no-progress", "--no-push", "--only", "count", "--force")
    assert code == 0, out
    assert len(CountTurns.runs) == 2


def test_build_waits_for_the_lock_with_wait(count_recipe, tmp_path):
    run = tmp_path / "runs" / "c"
    held, release = threading.Event(), threading.Event()

    def holder():
        with run_lock(run):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(10)
        threading.Timer(1.0, release.set).start()
        started = time.monotonic()
        code, out = cli("build", str(count_recipe), "--no-progress", "--no-push", "--wait", "30")
    finally:
        release.set()
        t.join(10)
    assert code == 0, out
    assert time.monotonic() - started >= 0.9
    assert "waiting for the lock" in flat(out)
    assert (run / "count" / "manifest.json").is_file()


# -- lineage of a moved local publish folder ------------------------------------------------------


def test_lineage_after_moving_the_local_publish_folder(count_recipe, tmp_path, source, tiny_tokenizer_dir):
    code, out = cli("build", str(count_recipe), "--no-progress")
    assert code == 0, out
    hub = tmp_path / "hub"
    assert (hub / "datasets" / "realchat" / "c-curate" / "README.md").is_file()
    assert (hub / "datasets" / "realchat" / "c-count" / "README.md").is_file()
    fps = {p["name"]: p["fingerprint"] for p in plan_json(count_recipe)}

    moved = tmp_path / "elsewhere" / "published-copy"
    moved.parent.mkdir()
    shutil.move(str(hub), str(moved))
    shutil.rmtree(tmp_path / "runs")  # nothing of the build is left where it was made
    assert not hub.exists()

    code, out = cli("lineage", str(moved / "datasets" / "realchat" / "c-curate"), "--json")
    assert code == 0, out
    chain = json.loads(out)
    assert [(c["depth"], c["key"], c["step"], c["kind"]) for c in chain] == [
        (0, None, "curate", "curate"), (1, "source", None, "source"), (1, "tokenizer", None, "model")]
    assert chain[0]["fingerprint"] == fps["curate"] and chain[0]["repo"] == "realchat/c-curate"
    assert chain[1]["repo"] == str(source)

    code, out = cli("lineage", str(moved / "datasets" / "realchat" / "c-count"), "--json")
    assert code == 0, out
    chain = json.loads(out)
    assert [(c["depth"], c["key"], c["step"], c["kind"]) for c in chain] == [
        (0, None, "count", "count_turns"), (1, "dataset", "curate", "curate"),
        (2, "source", None, "source"), (2, "tokenizer", None, "model")]
    assert [c["fingerprint"] for c in chain[:2]] == [fps["count"], fps["curate"]]
    assert chain[1]["where"] == str(moved / "datasets" / "realchat" / "c-curate")
    assert chain[2]["repo"] == str(source) and chain[3]["where"] == str(tiny_tokenizer_dir)
    assert not any(c.get("note") for c in chain)  # every parent was found

    code, out = cli("lineage", str(moved / "datasets" / "realchat" / "c-count"))
    assert code == 0 and "count" in out and "curate" in out and str(source) in flat(out)


def test_registered_kind_is_in_the_schema_and_gone_after(count_kind):
    code, out = cli("schema")
    assert code == 0
    mapping = json.loads(out)["properties"]["steps"]["additionalProperties"]["discriminator"]["mapping"]
    assert set(mapping) == {"curate", "sft", "simulate", "evaluate", "count_turns"}
    registry.KINDS.pop("count_turns")
    try:
        code, out = cli("schema")
        assert "count_turns" not in json.loads(out)["properties"]["steps"]["additionalProperties"]["discriminator"][
            "mapping"]
    finally:
        registry.register(CountTurns)  # the fixture removes it again
