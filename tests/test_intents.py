"""Intent conditioning (UserLM) through the tiny model: a UserGPT trained with each conversation's goal
in its system prompt (from the data's ``intent`` key), simulated with goals from a file, evaluated
with intent decomposition; goals summarised by a model (the tiny local one), cached, used."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app
from realchat.errors import RealChatError
from realchat.intents import (DEFAULT_INTENT_TEMPLATE, IntentSummarizer, clean_summary, read_intent_file, summarize,
                              with_intent)
from realchat.models.backends import LocalModel
from realchat.recipe.base import DEFAULT_USER_SYSTEM_PROMPT

runner = CliRunner()

SIM_INTENTS = ["You want a Python function that sorts a list of names.",
               "You want to know why the quick brown fox jumps over the lazy dog.",
               "You want advice on greeting a friend you have not seen for years."]


def with_intents(records: list[dict]) -> list[dict]:
    """Real ShareGPT records, each with a goal taken from its own first human turn (as a column would be)."""
    out = []
    for r in records:
        first = next((t["value"] for t in r["conversations"] if t.get("from") == "human"), "")
        out.append({**r, "intent": f"You want help with: {' '.join(first.split()[:12])}"})
    return out


# -- no model -------------------------------------------------------------------------------------


def test_template_file_and_summary_cleaning(tmp_path):
    assert with_intent(DEFAULT_INTENT_TEMPLATE, "Act as the user.", "You want X {y}.") == \
        "Act as the user.\n\nYour goal in this conversation: You want X {y}."
    assert with_intent(DEFAULT_INTENT_TEMPLATE, "Act as the user.", None) == "Act as the user."
    assert clean_summary('\n  "You want to sort a list."\nMore text') == "You want to sort a list."
    txt = tmp_path / "goals.txt"
    txt.write_text("a goal\n\n second goal \n")
    assert read_intent_file(txt) == ["a goal", "second goal"]
    js = tmp_path / "goals.jsonl"
    js.write_text('{"intent": "one"}\n{"intent": ""}\n')
    with pytest.raises(RealChatError) as e:
        read_intent_file(js)
    assert "line 2" in str(e.value) and e.value.file == str(js)


def test_intent_config_errors_name_the_key(make_recipe, write_json_array, sharegpt_records, tiny_model_dir):
    path = make_recipe(write_json_array(sharegpt_records[:5]), name="bad")
    doc = yaml.safe_load(path.read_text())
    doc["steps"]["usergpt"] = {"kind": "sft", "loss_on": "user", "base_model": str(tiny_model_dir),
                               "dataset": "curate", "intent": {"source": "model"}}
    path.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["plan", str(path)])
    assert r.exit_code == 2 and "steps.usergpt.intent" in r.output and "summarizer" in r.output
    doc["steps"]["usergpt"]["intent"] = {"template": "no slot here"}
    path.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["plan", str(path)])
    assert r.exit_code == 2 and "{intent}" in r.output


def test_paper_recipe_conditions_on_intents_from_the_answerers_endpoint():
    from realchat.recipe.load import load_recipe

    paper = load_recipe("recipes/paper/platolm-7b.yaml").recipe.steps
    usergpt = paper["usergpt"]
    assert usergpt.base_model == "huggyllama/llama-7b"  # a base model, not a chat one (UserLM)
    assert usergpt.intent.source == "model" and usergpt.intent.summarizer.backend.kind == "openai"
    assert usergpt.intent.summarizer.backend.model == paper["sim_free"].answerer.model
    for sim in ("sim_free", "sim_seeded"):
        assert paper[sim].intent.source == "dataset" and paper[sim].intent.dataset.split == "held_out"
    default = load_recipe("recipes/realchat.yaml").recipe.steps
    assert default["usergpt"].intent is None and default["sim_usergpt"].intent is None  # off on CPU


# -- the model source -----------------------------------------------------------------------------


def test_model_summaries_are_produced_cached_and_reused(tiny_model_dir, sharegpt_records, tmp_path):
    from realchat.data import read_file_conversations

    src = tmp_path / "c.json"
    src.write_text(json.dumps(sharegpt_records[:5]))
    convs, _, _, _ = read_file_conversations(src, "sharegpt")
    cfg = IntentSummarizer(backend={"kind": "local", "model": str(tiny_model_dir)}, max_new_tokens=8, max_chars=300,
                           batch_size=2)
    model = LocalModel(str(tiny_model_dir), batch_size=4)
    asked: list[int] = []
    chat = model.chat

    def counting_chat(conversations, sampling, answer_prefix=""):
        asked.append(len(conversations))
        assert all(len(c[0]["content"]) <= 300 + len(cfg.prompt) for c in conversations)
        return chat(conversations, sampling, answer_prefix)

    model.chat = counting_chat  # type: ignore[method-assign]
    cache = tmp_path / "work" / "intents.jsonl"
    intents, n = summarize(convs, cfg, lambda: model, cache)
    assert n == len(convs) == 5 and asked == [2, 2, 1]  # in batches, each cached before the next
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    assert [x["id"] for x in lines] == [c["id"] for c in convs]
    assert [x["intent"] for x in lines] == intents and any(intents)
    # a rerun asks nothing (the model is not even opened); a torn last line is only that line lost
    def no_model():
        raise AssertionError("the model was opened although every summary is cached")

    again, n = summarize(convs, cfg, no_model, cache)
    assert again == intents and n == 0
    cache.write_text("\n".join(cache.read_text().splitlines()[:4]) + '\n{"id": "x", "ke')
    again, n = summarize(convs, cfg, lambda: model, cache)
    assert again == intents and n == 1 and asked[-1] == 1  # greedy: the same summary again


def test_sft_with_model_intents(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, tmp_path,
                                monkeypatch):
    import realchat.steps.sft as sft

    seen: list[list[dict]] = []
    real_train = sft.train_sft

    def spy(cfg, **kw):
        seen.extend(kw["train_convs"])
        return real_train(cfg, **kw)

    monkeypatch.setattr(sft, "train_sft", spy)
    path = make_recipe(write_json_array(sharegpt_records[:12]), filters=[{"op": "shape"}], name="im")
    doc = yaml.safe_load(path.read_text())
    tiny = str(tiny_model_dir)
    doc["steps"]["usergpt"] = {
        "kind": "sft", "loss_on": "user", "base_model": tiny, "dataset": "curate", "max_length": 512,
        "max_steps": 1, "per_device_train_batch_size": 2, "save_steps": 1,
        "intent": {"source": "model", "summarizer": {"backend": {"kind": "local", "model": tiny, "batch_size": 4},
                                                     "max_new_tokens": 8, "max_chars": 300}}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = runner.invoke(app, ["build", str(path), "--no-progress", "--no-push"])
    assert r.exit_code == 0, r.output
    stats = json.loads((tmp_path / "runs" / "im" / "usergpt" / "stats.json").read_text())
    it = stats["intents"]
    assert it["source"] == "model" and it["summarized_this_run"] == it["with_intent"] + it["without_intent"] > 0
    assert stats["intent_template"] == DEFAULT_INTENT_TEMPLATE
    # the summaries are in the system prompt the simulator trained on
    systems = [c[0]["content"] for c in seen]
    goal = DEFAULT_USER_SYSTEM_PROMPT + "\n\nYour goal in this conversation: " + it["example"]
    assert goal in systems and sum(s.startswith(DEFAULT_USER_SYSTEM_PROMPT + "\n\nYour goal") for s in systems) \
        == it["with_intent"]


# -- end to end -----------------------------------------------------------------------------------


def test_intent_conditioning_end_to_end(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, tmp_path,
                                        monkeypatch):
    """Train with intents from the data's ``intent`` key, simulate with intents from a file, evaluate."""
    import realchat.steps.sft as sft
    from realchat.simulation.simulator import Simulation
    from realchat.training.chat_format import loss_spans
    from transformers import AutoTokenizer

    trained: list[list[dict]] = []
    real_train = sft.train_sft
    monkeypatch.setattr(sft, "train_sft",
                        lambda cfg, **kw: (trained.extend(kw["train_convs"]), real_train(cfg, **kw))[1])
    prompts: list[str] = []
    real_prompt = Simulation.simulator_prompt
    monkeypatch.setattr(Simulation, "simulator_prompt",
                        lambda self, s: prompts.append(real_prompt(self, s)) or prompts[-1])

    records = with_intents(sharegpt_records[:100])
    train_file = write_json_array(records[:40], "train.json")
    path = make_recipe(write_json_array(records, "all.json"),
                       filters=[{"op": "shape"}, {"op": "split", "max_tokens": 256}], name="it", held_out_share=0.25)
    goals = tmp_path / "goals.txt"
    goals.write_text("\n".join(SIM_INTENTS) + "\n")
    doc = yaml.safe_load(path.read_text())
    tiny = str(tiny_model_dir)
    doc["steps"].update({
        "usergpt": {"kind": "sft", "loss_on": "user", "base_model": tiny, "end_marker": "<|endconversation|>",
                    "dataset": {"path": str(train_file), "format": "sharegpt"}, "intent": {"source": "column"},
                    "max_length": 256, "max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3,
                    "save_steps": 2},
        "sim": {"kind": "simulate", "simulator": "usergpt", "conversations": 8, "max_rounds": 2,
                "simulator_backend": {"kind": "local", "model": "usergpt", "batch_size": 8},
                "answerer": {"kind": "local", "model": tiny, "batch_size": 8}, "stop_on_degenerate": False,
                "user_sampling": {"max_new_tokens": 8}, "assistant_sampling": {"max_new_tokens": 8},
                "context_budget": 512, "intent": {"source": "file", "file": str(goals)}},
        # seeded from the first simulation, whose records carry their goal: each session gets its seed's
        "sim_seeded": {"kind": "simulate", "simulator": "usergpt", "conversations": 4, "max_rounds": 2,
                       "mode": "seeded", "seeds": {"dataset": "sim"},
                       "simulator_backend": {"kind": "local", "model": "usergpt", "batch_size": 8},
                       "answerer": {"kind": "local", "model": tiny, "batch_size": 8}, "stop_on_degenerate": False,
                       "user_sampling": {"max_new_tokens": 8}, "assistant_sampling": {"max_new_tokens": 8},
                       "context_budget": 512, "intent": {"source": "dataset", "dataset": "sim"}},
        "evaluate": {"kind": "evaluate", "tokenizer": tiny, "max_conversations": 30,
                     "datasets": [{"name": "sharegpt", "dataset": {"step": "curate", "split": "held_out"}},
                                  {"name": "usergpt", "dataset": "sim"}],
                     "fidelity": {"simulator_model": "usergpt", "baseline_model": None, "real": "sharegpt",
                                  "simulated": ["usergpt"], "perplexity_conversations": 4, "ending_conversations": 0,
                                  "role_turns": 0, "max_length": 256, "bootstrap": 20, "frechet_dims": 4,
                                  "cv_folds": 2}},
    })
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = runner.invoke(app, ["build", str(path), "--no-progress", "--no-push"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "it"

    # training: every conversation's own goal in its system prompt, in the rendered text, carrying no loss
    by_first = {json.dumps(rec["conversations"][0]["value"]): rec["intent"] for rec in records[:40]}
    assert len(trained) == 40
    tok = AutoTokenizer.from_pretrained(tiny)
    for conv in trained[:5]:
        intent = by_first[json.dumps(conv[1]["content"])]
        assert conv[0] == {"role": "system", "content": with_intent(DEFAULT_INTENT_TEMPLATE, DEFAULT_USER_SYSTEM_PROMPT,
                                                                    intent)}
        text, spans = loss_spans(tok, conv, "user")
        at = text.index("Your goal in this conversation: " + intent)
        assert not any(a <= at < b for a, b in spans)
    stats = json.loads((run / "usergpt" / "stats.json").read_text())
    assert stats["intents"]["with_intent"] == 40 and stats["intent_template"] == DEFAULT_INTENT_TEMPLATE
    assert "intent conditioning" in (run / "usergpt" / "README.md").read_text()

    # simulation: the file's goals in the simulator's prompts (the template as trained), and in the data
    sim_prompts = [p for p in prompts if "Your goal in this conversation" in p]
    assert {g for g in SIM_INTENTS if any(f"Your goal in this conversation: {g}" in p for p in sim_prompts)} == \
        set(SIM_INTENTS)
    data = pl.read_parquet(run / "sim" / "data")
    assert data.height >= 1 and set(data["intent"].to_list()) <= set(SIM_INTENTS) and data["intent"].null_count() == 0
    sim_stats = json.loads((run / "sim" / "stats.json").read_text())
    assert sim_stats["intents"]["source"] == "file" and sim_stats["intents"]["distinct"] == 3
    assert "| intent conditioning: goals (source) / conversations with one | 3 (file) / " in \
        (run / "sim" / "README.md").read_text()

    seeded = pl.read_parquet(run / "sim_seeded" / "data")
    goal_of = dict(zip(data["session_id"].to_list(), data["intent"].to_list()))
    assert seeded.height >= 1 and all(goal_of[s] == g for s, g in zip(seeded["seed_id"], seeded["intent"]))

    # evaluate: intent decomposition of the simulated conversations, in the stats and the report
    rep = json.loads((run / "evaluate" / "stats.json").read_text())["report"]
    dec = rep["fidelity"]["simulated"]["usergpt"]["intent_decomposition"]
    assert 0 <= dec["value"] <= 1 and dec["turns"] >= data.height
    assert "Intent decomposition" in (run / "evaluate" / "report.md").read_text()
