"""Every model family a user names: loss masks, turn ends, prompts and stops on real tokenizers with each
family's chat template (tests/families.py), through sft and simulate, local and served.

What this guards: a base model needs a declared template (and plan says so); the loss span of a role is
its content and its turn end, nothing else (token by token, decoded); generation stops at the turn end
(a simulator trained on one question reproduces it and stops at ``[/INST]`` / ``ASSISTANT:``); strict
templates (Llama-2, Mistral, Gemma) render the roleplay and magpie prompts; one BOS reaches the model,
locally and through a real ``transformers serve``.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from families import DECLARED, FAMILIES, TEMPLATE_TEXT
from serving import transformers_serve
from typer.testing import CliRunner

from realchat.cli import app
from realchat.models.chat_formats import BUILTIN_TEMPLATES, ChatFormat
from realchat.training.chat_format import decode_loss_tokens, tokenize_with_mask

runner = CliRunner()

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Write a Python function that sorts a list."},
    {"role": "assistant", "content": "Use sorted(xs) and return it."},
    {"role": "user", "content": "Hello, how are you today?"},
    {"role": "assistant", "content": "I am fine, thank you."},
]

#: What closes each role's turn in each family, as the published formats write it: the loss span ends
#: with it, and generation stops there.
TURN_END = {
    "llama-base": {"user": " ASSISTANT:", "assistant": "</s>"},  # vicuna: the user's turn ends at the next header
    "llama-2": {"user": " [/INST]", "assistant": " </s>"},
    "mistral": {"user": "[/INST]", "assistant": "</s>"},
    "chatml": {"user": "<|im_end|>\n", "assistant": "<|im_end|>\n"},
    "llama-3": {"user": "<|eot_id|>", "assistant": "<|eot_id|>"},
    "gemma": {"user": "<end_of_turn>\n", "assistant": "<end_of_turn>\n"},
}


def tokenizer_of(family_models, family: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family_models(family))
    if family in DECLARED:
        tok.chat_template = BUILTIN_TEMPLATES[DECLARED[family]]
    return tok


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("role", ["user", "assistant"])
def test_loss_mask_is_each_turns_content_and_its_turn_end(family, role, family_models):
    tok = tokenizer_of(family_models, family)
    row = tokenize_with_mask(tok, CONV, role)
    assert len(row["input_ids"]) == len(row["assistant_masks"])
    runs = decode_loss_tokens(tok, row)
    assert runs == [m["content"] + TURN_END[family][role] for m in CONV if m["role"] == role]
    assert "Be brief." not in "".join(runs)  # the system prompt, folded into a user turn or not, never trains
    fmt = ChatFormat.of(tok)
    if fmt.bos_id is not None:  # one BOS at the start, never two
        assert row["input_ids"][0] == fmt.bos_id and row["input_ids"][1] != fmt.bos_id


@pytest.mark.parametrize("family", FAMILIES)
def test_turn_ends_are_stops_as_tokens_where_the_vocabulary_has_them(family, family_models):
    tok = tokenizer_of(family_models, family)
    fmt = ChatFormat.of(tok)
    for role in ("user", "assistant"):
        stop = TURN_END[family][role].strip()
        assert fmt.stop_strings(role)[0] == stop
        ids = tok(stop, add_special_tokens=False)["input_ids"]
        expected = ids[0] if len(ids) == 1 else None  # "[/INST]" is one token for Mistral, three for LLaMA
        assert fmt.turn_ends[role].token_id == expected
        assert tok.eos_token_id in fmt.stop_token_ids(role)
        if expected is not None:
            assert expected in fmt.stop_token_ids(role)
    assert fmt.end_of_turn("What is 2+2?" + TURN_END[family]["user"] + " junk", "user") == (
        "What is 2+2?" + (" " if TURN_END[family]["user"].startswith(" ") else ""), TURN_END[family]["user"].strip())


def test_strict_templates_get_prompts_they_accept(family_models):
    """Llama-2: the roleplay prompt alternates from the first question on (the opener folded in as the
    first user turn), magpie opens the user slot after the real system prompt, never a fake "s"; Gemma,
    which has no system role, gets the system text in the first user turn, said once."""
    from realchat.models.backends import LocalModel
    from realchat.simulation.simulator import ROLEPLAY_OPENER, Session, Simulation, SimulationSettings

    rounds = [{"role": "user", "content": "What is Rust?"}, {"role": "assistant", "content": "A language."},
              {"role": "user", "content": "Is it fast?"}, {"role": "assistant", "content": "Yes."}]
    said: list[str] = []
    llama2 = LocalModel(str(family_models("llama-2")), log=said.append)
    roleplay = Simulation(SimulationSettings(simulator="roleplay", roleplay_prompt="Play a curious user."),
                          llama2, llama2, None, None, lambda s: None)
    for k in (0, 2, 4):  # the simulator asks when the conversation is empty or ends with an answer
        prompt = roleplay.simulator_prompt(Session("s", "free", None, rounds[:k]))
        assert prompt.startswith("<s>[INST] <<SYS>>\nPlay a curious user.\n<</SYS>>\n\n" + ROLEPLAY_OPENER)
        assert prompt.endswith(" [/INST]")  # the roleplayer writes its question as the "assistant"
    magpie = Simulation(SimulationSettings(simulator="magpie", assistant_system_prompt="You help."), llama2, llama2,
                        None, None, lambda s: None)
    first = magpie.simulator_prompt(Session("s", "free", None, []))
    assert first == "<s>[INST] <<SYS>>\nYou help.\n<</SYS>>\n\n"
    later = magpie.simulator_prompt(Session("s", "free", None, rounds[:2]))
    assert later.endswith("A language. </s><s>[INST]") and later.count("<<SYS>>") == 1
    assert said == []  # Llama-2 has a system role and these alternate: nothing to lay out differently

    gemma = LocalModel(str(family_models("gemma")), log=said.append)
    usergpt = Simulation(SimulationSettings(simulator="usergpt"), gemma, gemma, "Ask like a human.", None,
                         lambda s: None)
    assert usergpt.simulator_prompt(Session("s", "free", None, [])) == (
        "<bos><start_of_turn>user\nAsk like a human.\n\n")
    usergpt.simulator_prompt(Session("s", "free", None, rounds[:2]))
    assert len(said) == 1 and "no system role" in said[0] and gemma.format.notes["system_folded"] == 2


def _curate(tmp_path: Path, sharegpt_records, tiny_tokenizer_dir, name: str) -> dict:
    src = tmp_path / "data.json"
    src.write_text(json.dumps(sharegpt_records[:30]))
    return {"name": name, "run_root": str(tmp_path / "runs"), "steps": {"curate": {
        "kind": "curate", "source": {"format": "sharegpt", "path": str(src)}, "tokenizer": str(tiny_tokenizer_dir),
        "filters": [{"op": "shape"}, {"op": "split", "max_tokens": 200}]}}}


def test_plan_names_the_missing_chat_template_of_a_base_model(family_models, sharegpt_records, tiny_tokenizer_dir,
                                                              tmp_path):
    base = str(family_models("llama-base"))
    doc = _curate(tmp_path, sharegpt_records, tiny_tokenizer_dir, "plan")
    doc["steps"]["usergpt"] = {"kind": "sft", "loss_on": "user", "base_model": base, "dataset": "curate"}
    recipe = tmp_path / "plan.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["plan", str(recipe)])
    assert r.exit_code == 2, r.output
    line = " ".join(r.output.split())
    assert "steps.usergpt.chat_template" in line and "has no chat template" in line and "vicuna" in line
    assert "Traceback" not in r.output

    doc["steps"]["usergpt"]["chat_template"] = "vicuna"
    doc["steps"]["sim"] = {"kind": "simulate", "simulator": "roleplay", "simulator_backend": {"kind": "local",
                                                                                                "model": base}}
    recipe.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["plan", str(recipe)])
    assert r.exit_code == 2 and "steps.sim.simulator_backend.chat_template" in " ".join(r.output.split())

    doc["steps"]["sim"]["simulator_backend"]["chat_template"] = "llama-2"
    doc["steps"]["sim"]["answerer"] = {"kind": "local", "model": base, "chat_template": str(tmp_path / "none.jinja")}
    recipe.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["plan", str(recipe)])
    assert r.exit_code == 2 and "steps.sim.answerer.chat_template" in " ".join(r.output.split())

    (tmp_path / "none.jinja").write_text(BUILTIN_TEMPLATES["vicuna"])
    recipe.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["plan", str(recipe)])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_both_roles_and_simulates_three_ways(family, family_models, sharegpt_records,
                                                                tiny_tokenizer_dir, tmp_path, monkeypatch):
    """sft (``loss_on: user`` and ``assistant``) and simulate with usergpt, roleplay and magpie on the local
    backend: every step builds, no template text inside a stored turn, one BOS in every prompt the
    model got, the trained model's tokenizer carries the format and its generation stops at the turn
    ends."""
    from transformers import AutoTokenizer, GenerationConfig

    from realchat.models.backends import LocalModel

    prompts: list[list[int]] = []
    encode = LocalModel.encode_batch

    def spy(self, chunk):
        enc = encode(self, chunk)
        prompts.extend([[t for t, keep in zip(ids, mask) if keep] for ids, mask in
                        zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist())])
        return enc

    monkeypatch.setattr(LocalModel, "encode_batch", spy)
    model = str(family_models(family))
    declared = {"chat_template": DECLARED[family]} if family in DECLARED else {}
    local = {"kind": "local", "model": model, "batch_size": 4, **declared}
    small = {"conversations": 3, "max_rounds": 2, "context_budget": 1024, "user_sampling": {"max_new_tokens": 8},
             "assistant_sampling": {"max_new_tokens": 8}}
    train = {"kind": "sft", "base_model": model, "dataset": "curate", "max_length": 256, "max_steps": 1,
             "per_device_train_batch_size": 2, "save_steps": 100, **declared}
    doc = _curate(tmp_path, sharegpt_records, tiny_tokenizer_dir, "fam")
    doc["steps"].update({
        "usergpt": {**train, "loss_on": "user"},
        "realm": {**train, "loss_on": "assistant"},
        "sim_usergpt": {"kind": "simulate", "simulator": "usergpt", "simulator_backend": {"kind": "local",
                        "model": "usergpt"}, "answerer": local, **small},
        "sim_roleplay": {"kind": "simulate", "simulator": "roleplay", "simulator_backend": local, "answerer": local,
                         **small},
        "sim_magpie": {"kind": "simulate", "simulator": "magpie", "simulator_backend": local, "answerer": local,
                       **small},
    })
    recipe = tmp_path / "fam.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert r.exit_code == 0, r.output

    runs = tmp_path / "runs" / "fam"
    for step in ("sim_usergpt", "sim_roleplay", "sim_magpie"):
        kept = pl.read_parquet(runs / step / "data")
        assert kept.height >= 1
        for msgs in kept["messages"].to_list():
            for m in msgs:
                assert not any(t in m["content"] for t in TEMPLATE_TEXT), (step, m)
        stats = json.loads((runs / step / "stats.json").read_text())
        writes = "assistant" if step == "sim_roleplay" else "user"
        assert stats["chat_formats"]["simulator"]["writes"] == writes
        assert stats["chat_formats"]["simulator"]["stop_strings"][0] == TURN_END[family][writes].strip()
        assert set(stats["turn_stops"]) == {"user", "assistant"}

    fmt = ChatFormat.of(AutoTokenizer.from_pretrained(model) if family not in DECLARED else tokenizer_of(
        family_models, family))
    assert prompts and all(p[:2] != [fmt.bos_id, fmt.bos_id] for p in prompts)
    if fmt.bos_id is not None:
        assert all(p[0] == fmt.bos_id for p in prompts)

    saved = AutoTokenizer.from_pretrained(runs / "usergpt").chat_template  # the format travels with the model
    assert saved == (BUILTIN_TEMPLATES["vicuna"] if family == "llama-base" else tokenizer_of(family_models,
                                                                                            family).chat_template)
    eos = GenerationConfig.from_pretrained(runs / "usergpt").eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    for role in ("user", "assistant"):
        if fmt.turn_ends[role].token_id is not None:
            assert fmt.turn_ends[role].token_id in eos
    stats = json.loads((runs / "usergpt" / "stats.json").read_text())
    assert stats["chat_template"] == DECLARED.get(family, "the base model's own")


@pytest.mark.parametrize("family,stop", [("llama-2", "[/INST]"), ("llama-base", "ASSISTANT:")])
def test_a_trained_simulator_stops_at_its_turn_end(family, stop, family_models, tmp_path):
    """UserGPT trained on one question (the loss span ends with the turn end) asks it back, greedy,
    and stops there: the stored question is the question, the stop is recorded."""
    model = str(family_models(family))
    declared = {"chat_template": DECLARED[family]} if family in DECLARED else {}
    question = "How do I sort a list in Python?"
    data = tmp_path / "one.json"
    data.write_text(json.dumps([{"id": f"c{i}", "conversations": [{"from": "human", "value": question},
                                                                    {"from": "gpt", "value": "Use sorted(xs)."}]}
                                for i in range(16)]))
    doc = {"name": "stop", "run_root": str(tmp_path / "runs"), "steps": {
        "usergpt": {"kind": "sft", "loss_on": "user", "base_model": model, "dataset": {"path": str(data)},
                    "max_length": 128, "max_steps": 24, "per_device_train_batch_size": 4, "learning_rate": 1e-2,
                    "warmup_ratio": 0.0, "lr_scheduler_type": "constant", "save_steps": 1000, "packing": False,
                    **declared},
        "sim": {"kind": "simulate", "simulator": "usergpt", "simulator_backend": {"kind": "local", "model": "usergpt"},
                "answerer": {"kind": "local", "model": model, **declared}, "conversations": 1, "max_rounds": 1,
                "user_sampling": {"temperature": 0, "max_new_tokens": 24},
                "assistant_sampling": {"temperature": 0, "max_new_tokens": 4}}}}
    recipe = tmp_path / "stop.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert r.exit_code == 0, r.output
    row = pl.read_parquet(tmp_path / "runs" / "stop" / "sim" / "data").to_dicts()[0]
    assert row["messages"][0] == {"role": "user", "content": question}
    assert row["user_finish_reasons"] == ["stop"] and row["turn_stops"][0] == stop
    stats = json.loads((tmp_path / "runs" / "stop" / "sim" / "stats.json").read_text())
    assert stats["user_finish_reasons"] == {"stop": 1} and stats["turn_stops"]["user"] == {stop: 1}


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """An unpinned ``transformers serve`` on 127.0.0.1: it loads the folder each request names."""
    with transformers_serve(tmp_path_factory.mktemp("serve-families") / "serve.log") as base:
        yield base


@pytest.mark.parametrize("family", ["llama-2", "chatml"])
def test_served_simulator_sends_one_bos_and_stops_at_the_turn_end(family, family_models, serve, tmp_path,
                                                                 sharegpt_records, tiny_tokenizer_dir):
    """Through a real server: the prompt text RealChat sends is counted by the server as exactly the
    tokens the model must see (one BOS: the server adds it, the text no longer carries the template's),
    and a simulate step with the served simulator (usergpt, roleplay) builds with clean turns."""
    from openai import OpenAI

    model = str(family_models(family))
    tok = tokenizer_of(family_models, family)
    fmt = ChatFormat.of(tok)
    prompt = fmt.open_turn([{"role": "system", "content": "Ask."}, *CONV[1:3]], "user")
    usage = OpenAI(base_url=serve, api_key="none").completions.create(
        model=model, prompt=fmt.text_for_server(prompt), max_tokens=1).usage
    assert usage.prompt_tokens == len(fmt.encode(prompt))
    if fmt.bos_id is not None:
        assert prompt.startswith(tok.bos_token) and not fmt.text_for_server(prompt).startswith(tok.bos_token)

    served = {"kind": "openai", "base_url": serve, "model": model, "tokenizer": model, "max_concurrency": 2,
              "max_retries": 0, "timeout_s": 60}
    doc = _curate(tmp_path, sharegpt_records, tiny_tokenizer_dir, "served")
    small = {"conversations": 2, "max_rounds": 2, "context_budget": 1024, "user_sampling": {"max_new_tokens": 6},
             "assistant_sampling": {"max_new_tokens": 6}, "answerer": {"kind": "local", "model": model}}
    doc["steps"].update({"sim_usergpt": {"kind": "simulate", "simulator": "usergpt", "simulator_backend": served,
                                         **small},
                         "sim_roleplay": {"kind": "simulate", "simulator": "roleplay", "simulator_backend": served,
                                          **small}})
    recipe = tmp_path / "served.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert r.exit_code == 0, r.output
    for step in ("sim_usergpt", "sim_roleplay"):
        kept = pl.read_parquet(tmp_path / "runs" / "served" / step / "data")
        for msgs in kept["messages"].to_list():
            assert not any(t in m["content"] for m in msgs for t in TEMPLATE_TEXT)
