"""Issue 24, item 1: silently wrong results become errors (or rejected records with their reason).

Benchmark models whose names map to one answers file; two steps (or two recipes) publishing to one
repo; a publish root at or inside the run root; a step named like the publish-records folder; a source
replaced after it was planned; a parquet source without a conversations column; a JSON record with a
key given twice; judgment scores that are not FastChat grades."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()
EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"
RECORD = {"id": "a", "conversations": [{"from": "human", "value": "Hello there, how are you today?"},
                                       {"from": "gpt", "value": "I am fine, thank you."}]}


def cli(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, " ".join(r.output.split())


def one_line_error(code: int, out: str, *expected: str) -> None:
    assert code == 2, out
    assert "Traceback" not in out and "error:" in out, out
    for piece in expected:
        assert piece in out, (piece, out)


def edit(recipe: Path, fn) -> Path:
    doc = yaml.safe_load(recipe.read_text())
    fn(doc)
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    return recipe


@pytest.fixture
def recipe(make_recipe, write_json_array):
    return make_recipe(write_json_array([RECORD, {**RECORD, "id": "b"}]))


# -- benchmark model names --------------------------------------------------------------------------


def test_benchmark_models_sharing_one_answers_file_are_refused():
    from pydantic import ValidationError

    from realchat.evaluation.benchmarks import BenchmarkConfig
    from realchat.steps.evaluate import EvaluateConfig

    local = {"kind": "local", "model": "x"}
    for a, b in (("realm usergpt", "realm_usergpt"), ("ReaLM", "realm"), ("m/1", "m_1")):
        bench = BenchmarkConfig(questions=str(EVAL), models=[{"name": a, "backend": local}, {"name": b, "backend": local}])
        with pytest.raises(ValidationError, match="differ only in characters a file name drops"):
            EvaluateConfig(fidelity=None, benchmark=bench)
    ok = BenchmarkConfig(questions=str(EVAL), models=[{"name": "realm-a", "backend": local},
                                                      {"name": "realm-b", "backend": local}])
    EvaluateConfig(fidelity=None, benchmark=ok)


# -- publish places ---------------------------------------------------------------------------------


def _two_curates(doc: dict) -> None:
    doc["steps"]["other"] = {**doc["steps"]["curate"]}


def test_two_steps_publishing_to_one_repo_are_refused_at_plan_time(recipe):
    edit(recipe, lambda d: (_two_curates(d), d.update(publish={"repos": {"curate": "shared", "other": "shared"}})))
    one_line_error(*cli("plan", str(recipe)), "steps curate and other both publish to the dataset repo realchat/shared")
    # a default name (<recipe>-<step>) equal to another step's mapped name; Hub names ignore case
    edit(recipe, lambda d: d.update(publish={"repos": {"other": "T-Curate"}}))
    one_line_error(*cli("plan", str(recipe)), "both publish to the dataset repo realchat/T-Curate")
    edit(recipe, lambda d: d.update(publish={"repos": {"other": "t-other-data"}}))
    assert cli("plan", str(recipe))[0] == 0


def test_a_step_named_like_the_publish_records_folder_is_refused(recipe):
    edit(recipe, lambda d: d["steps"].update(published=d["steps"].pop("curate")))
    one_line_error(*cli("plan", str(recipe)), "the step name 'published' is reserved")


def test_a_publish_root_at_or_inside_the_run_root_is_refused(recipe, tmp_path):
    run = tmp_path / "runs"
    for root in (run, run / "hub"):
        edit(recipe, lambda d: d.update(publish={"local_root": str(root)}))
        one_line_error(*cli("plan", str(recipe)), "publish.local_root", "the run root")
    # a namespace that makes a model or dataset folder the recipe's run folder
    edit(recipe, lambda d: d.update(run_root=str(tmp_path / "pub" / "datasets" / "ns"),
                                    publish={"local_root": str(tmp_path / "pub"), "namespace": "ns",
                                             "repos": {"curate": "t"}}))
    one_line_error(*cli("plan", str(recipe)), "overlaps this recipe's run folder")


def test_a_second_recipe_naming_the_same_repo_is_refused_before_anything_changes(make_recipe, write_json_array,
                                                                                  tmp_path):
    src = write_json_array([RECORD])
    first = edit(make_recipe(src, name="first"), lambda d: d.update(publish={"repos": {"curate": "shared"}}))
    second = edit(make_recipe(src, name="second", filters=[{"op": "shape"}]),
                  lambda d: d.update(publish={"repos": {"curate": "shared"}}))
    assert cli("build", str(first), "--no-progress")[0] == 0
    repo = tmp_path / "hub" / "datasets" / "realchat" / "shared"
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    one_line_error(*cli("build", str(second), "--no-progress"), "holds step curate of recipe first",
                   "step curate of recipe second", "nothing was changed")
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    assert cli("build", str(first), "--no-progress")[0] == 0  # the owner republishes as before


def test_a_second_recipe_naming_the_same_hub_repo_is_refused(make_recipe, write_json_array, hub):
    src = write_json_array([RECORD])
    hub_publish = {"target": "hub", "namespace": "tester", "repos": {"curate": "shared-hub"}}
    first = edit(make_recipe(src, name="first-h"), lambda d: d.update(publish=hub_publish))
    second = edit(make_recipe(src, name="second-h", filters=[{"op": "shape"}]), lambda d: d.update(publish=hub_publish))
    code, out = cli("build", str(first), "--no-progress")
    assert code == 0, out
    one_line_error(*cli("build", str(second), "--no-progress"), "dataset repo tester/shared-hub holds step curate "
                   "of recipe first-h")


# -- sources ----------------------------------------------------------------------------------------


def test_a_source_replaced_after_planning_fails_instead_of_naming_other_data(recipe, tmp_path, monkeypatch):
    from realchat.steps.curate import Curate

    src = Path(yaml.safe_load(recipe.read_text())["steps"]["curate"]["source"]["path"])
    original = Curate.run

    def replaced_then_read(self, ctx, out):
        new = src.with_name("new.json")
        new.write_text(json.dumps([{**RECORD, "id": "replaced"}]))
        os.replace(new, src)  # as an editor or a sync tool saves: a new file under the old name
        return original(self, ctx, out)

    monkeypatch.setattr(Curate, "run", replaced_then_read)
    one_line_error(*cli("build", str(recipe), "--no-progress"), f"{src} changed while step curate ran",
                   "nothing was written", "steps.curate.source")
    assert not (tmp_path / "runs" / "t" / "curate").exists()
    assert not list((tmp_path / "runs" / "t" / ".work").glob("curate-*"))
    monkeypatch.setattr(Curate, "run", original)
    assert cli("build", str(recipe), "--no-progress")[0] == 0
    manifest = json.loads((tmp_path / "runs" / "t" / "curate" / "manifest.json").read_text())
    import hashlib

    assert manifest["parents"][0]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_a_parquet_source_without_a_conversations_column_is_one_error(make_recipe, tmp_path):
    path = tmp_path / "chats.parquet"
    pl.DataFrame({"id": ["a", "b"], "dialogue": ["hi", "hello"]}).write_parquet(path)
    recipe = make_recipe(path, fmt="parquet")
    one_line_error(*cli("build", str(recipe), "--no-progress"), str(path),
                   "no 'conversations' or 'messages' column; the columns are: id, dialogue")
    assert not (tmp_path / "runs" / "t" / "curate").exists() and not (tmp_path / "hub").exists()


def test_a_record_with_a_key_given_twice_is_rejected_with_its_reason(make_recipe, tmp_path):
    good = json.dumps(RECORD)
    twice = ('{"id": "dup", "conversations": [{"from": "human", "value": "first question, lost?"}], '
             '"conversations": [{"from": "human", "value": "second"}, {"from": "gpt", "value": "ok then"}]}')
    inner = ('{"id": "dup2", "conversations": [{"from": "human", "from": "gpt", "value": "who said this?"}, '
             '{"from": "gpt", "value": "fine"}]}')
    for name, text in (("array.json", f"[{good},\n{twice},\n{inner}]"), ("lines.jsonl", f"{good}\n{twice}\n{inner}\n")):
        src = tmp_path / name
        src.write_text(text)
        recipe = make_recipe(src, name="t")
        code, out = cli("build", str(recipe), "--no-progress", "--force")
        assert code == 0, out
        run = tmp_path / "runs" / "t" / "curate"
        assert pl.read_parquet(run / "data" / "*.parquet")["conversation_id"].to_list() == ["a"]
        rejected = pl.read_parquet(run / "rejected" / "*.parquet").select("reason", "detail").rows()
        assert [r[0] for r in rejected] == ["read.duplicate_key"] * 2, rejected
        assert "'conversations' is given twice" in rejected[0][1] and "'from' is given twice" in rejected[1][1]
        assert "read.duplicate_key" in (run / "README.md").read_text()  # the card counts it


# -- judgment scores --------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["Infinity", "-Infinity", "NaN", "1e9", "0", "11", "-2"])
def test_eval_show_refuses_scores_that_are_not_grades(tmp_path, score):
    path = tmp_path / "judge_single.jsonl"
    good = {"question_id": 1, "model": "m", "judge": ["j", "single-v1"], "turn": 1, "score": 7}
    path.write_text(json.dumps(good) + "\n" + json.dumps(good)[:-1].replace('"score": 7', f'"score": {score}') + "}\n")
    one_line_error(*cli("eval", "show", str(path)), str(path), "record line 2", "score",
                   "expected a grade from 1 to 10 (-1 for an unparsable verdict)")


def test_eval_show_reads_grades_and_unparsable_verdicts(tmp_path):
    path = tmp_path / "judge_single.jsonl"
    rows = [{"question_id": 1, "model": "m", "turn": 1, "score": s} for s in (1, 10, 7.5, -1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = cli("eval", "show", str(path), "--json")
    assert code == 0, out
    assert json.loads(out)["single"]["m"]["turn_1"] == pytest.approx(6.1667, abs=1e-3)


def test_a_judge_grade_outside_one_to_ten_counts_as_unparsable():
    from realchat.evaluation.judge import parse_score

    assert parse_score("Rating: [[85]]") == -1.0 and parse_score("Rating: [[0]]") == -1.0
    assert parse_score("Rating: [[10]]") == 10.0
