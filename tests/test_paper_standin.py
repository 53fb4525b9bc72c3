"""The paper recipe builds, not only plans (issue 27): ``recipes/paper/platolm-7b.yaml`` with the CPU
stand-in overlay, all twelve steps end to end, as a person following the overlay's header would run it
from a clean clone with ``../shared`` beside it: the stand-in models written by ``realchat.standins``,
the summariser, answerer and judge served by a real ``transformers serve`` on 127.0.0.1 (a free port,
set by one more overlay), and the report holding the paper's table."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from serving import transformers_serve
from realchat.cli import app
from realchat.data import opens_conversation, read_step_conversations

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "recipes" / "paper"
STEPS = ["curate", "usergpt", "sim_free", "sim_seeded", "sim_roleplay", "sim_magpie", "realm_free", "realm_seeded",
         "realm_roleplay", "realm_magpie", "realm_sharegpt", "evaluate"]
DATASETS = ["sharegpt", "usergpt-free", "usergpt-seeded", "roleplay", "magpie"]
MODELS = ["realm-free", "realm-seeded", "realm-roleplay", "realm-magpie", "realm-sharegpt", "llama-2-7b-chat"]
#: every key of the overlay that points at the served roles' endpoint
SERVED_KEYS = ["steps.usergpt.intent.summarizer.backend", "steps.sim_free.answerer",
               "steps.sim_free.intent.summarizer.backend", "steps.sim_seeded.answerer",
               "steps.sim_seeded.intent.summarizer.backend", "steps.sim_roleplay.answerer",
               "steps.sim_magpie.answerer", "steps.evaluate.benchmark.judge"]


@pytest.fixture(scope="module")
def clone(paper_clone) -> Path:
    """recipes/paper/ of a clean clone (``paper_clone`` in conftest: ../shared beside it, stand-ins made)."""
    return paper_clone / "recipes" / "paper"


@pytest.fixture(scope="module")
def served(clone, tmp_path_factory):
    """``transformers serve`` of the ``served`` stand-in, started as the overlay's header says."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with transformers_serve(log, "stand-ins/served", cwd=clone) as base:
        yield base, log


def test_paper_recipe_builds_end_to_end_on_stand_ins(clone, served, monkeypatch):
    base_url, log = served
    # the one thing a test machine changes on top of the overlay: the server's port
    port_overlay = clone / "port.yaml"
    port_overlay.write_text(yaml.safe_dump({f"{k}.base_url": base_url for k in SERVED_KEYS}))
    monkeypatch.chdir(clone)
    monkeypatch.setenv("STANDIN_API_KEY", "none")
    r = CliRunner().invoke(app, ["build", "platolm-7b.yaml", "--overlay", "cpu-standin.yaml", "--overlay",
                                 str(port_overlay), "--no-push", "--no-progress"])
    assert r.exit_code == 0, r.output[-6000:]
    run = clone / "runs-cpu-standin" / "platolm-7b"
    assert sorted(p.name for p in run.iterdir() if (p / "stats.json").is_file()) == sorted(STEPS)
    stats = {s: json.loads((run / s / "stats.json").read_text()) for s in STEPS}
    recipe = yaml.safe_load((PAPER / "platolm-7b.yaml").read_text())

    # the served roles went through the server: chat requests for intents, answers and grades
    assert log.read_text().count("POST /v1/chat/completions") > 50
    for step in ("sim_free", "sim_seeded", "sim_roleplay", "sim_magpie"):
        assert stats[step]["models"]["answerer"]["base_url"] == base_url
        assert stats[step]["failed"] == 0 and stats[step]["mode"] == recipe["steps"][step]["mode"]
        # the served answerer honours temperature (the stand-in's generation config samples): no warning
        assert not any("warning" in v for v in stats[step]["repeated_contexts"].values()), step

    # the served roles are parents of what they wrote (manifest and card lineage), by key and address
    for step, keys in (("usergpt", ["intent.summarizer.backend"]), ("sim_free", ["answerer", "intent.summarizer.backend"]),
                       ("sim_roleplay", ["answerer"]), ("evaluate", ["benchmark.judge"])):
        manifest = json.loads((run / step / "manifest.json").read_text())
        served_parents = [p for p in manifest["parents"] if p.get("role") == "endpoint"]
        assert [p["key"] for p in served_parents] == keys, step
        assert all(p["endpoint"] == base_url and p["source"] == "stand-ins/served" for p in served_parents)
        assert f"served at `{base_url}`" in (run / step / "README.md").read_text(), step

    # seeded mode is seeded: every session opens with a held-out real conversation's first question
    held = [c for c in read_step_conversations(run / "curate", "held_out") if opens_conversation(c)]
    firsts = {c["id"]: next(m["content"] for m in c["messages"] if m["role"] == "user") for c in held}
    seeded = pl.read_parquet(run / "sim_seeded" / "data").to_dicts()
    assert seeded and all(s["messages"][0]["content"] == firsts[s["seed_id"]] for s in seeded)
    # intents: held-out conversations' goals in the simulated records (free and seeded)
    for step in ("sim_free", "sim_seeded"):
        rows = pl.read_parquet(run / step / "data")
        assert rows["intent"].null_count() == 0 and stats[step]["intents"]["source"] == "dataset"
    assert stats["usergpt"]["chat_template"] == "vicuna"  # the recipe's own, the base stand-in has none

    # the equal-size comparison: real ShareGPT at the simulations' size, in conversations
    assert stats["realm_sharegpt"]["training_data"]["conversations"] == stats["sim_free"]["sessions"]

    # the report: five datasets × statistics and fidelity
    rep = stats["evaluate"]["report"]
    assert list(rep["datasets"]) == DATASETS
    for name in DATASETS:
        d = rep["datasets"][name]
        for key in ("conversations", "mean_rounds", "tokens_per_utterance", "tokens_per_conversation", "mtld_paper",
                    "topic_cosine_paper", "first_turn_diversity"):
            assert d[key] is not None, (name, key)
    sizes = rep["sampling"]["sizes"]
    assert rep["sampling"]["equal_size"] and len({sizes[n] for n in DATASETS[1:]}) == 1
    fid = rep["fidelity"]
    ppl = fid["user_turn_perplexity"]
    assert ppl["simulator"]["model"] == "usergpt" and ppl["simulator"]["perplexity"] > 0
    assert ppl["baseline"]["perplexity"] > 0 and fid["role_classifier"]["accuracy"] is not None
    assert list(fid["simulated"]) == DATASETS[1:]
    for name, row in fid["simulated"].items():
        assert row["frechet"]["distance"] is not None, name
        assert row["classifier"]["accuracy"] is not None, name
        assert row["role"]["role_adherence"] is not None, name
        assert row["rounds"]["total_variation"] is not None and row["stop_reasons"], name

    # … and six models × MT-Bench and Vicuna-Bench, single and pairwise against realm-sharegpt
    b = rep["benchmarks"]["benchmarks"]
    assert sorted(b) == ["mt_bench", "vicuna_bench"]
    for bench, s in b.items():
        turns = 2 if bench == "mt_bench" else 1
        assert sorted(s["single"]) == sorted(MODELS), bench
        for model, v in s["single"].items():
            assert v["n"] + v["invalid"] == s["questions"] * turns, (bench, model)
        assert sorted(s["pairwise"]) == sorted(MODELS), bench
        for model in MODELS[:4] + MODELS[5:]:
            p = s["pairwise"][model]
            assert p["win"] + p["tie"] + p["loss"] + p["unparsable"] == s["questions"] * turns, (bench, model)
        for model in MODELS:
            assert (run / "evaluate" / "benchmarks" / bench / "model_answer" / f"{model}.jsonl").is_file()
    md = (run / "evaluate" / "report.md").read_text()
    for section in ("## Dataset statistics", "## Simulator fidelity", "### mt_bench", "### vicuna_bench"):
        assert section in md
    for bench in ("mt_bench", "vicuna_bench"):
        part = md[md.index(f"### {bench}"):]
        part = part[: part.index("###", 4)] if "###" in part[4:] else part
        assert "| model | turn 1 | turn 2 |" in part and "| model | win | tie | loss |" in part
        assert all(f"| {m} |" in part for m in MODELS), bench
    assert (run / "evaluate" / "plots" / "distributions.png").stat().st_size > 1000
