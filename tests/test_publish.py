"""Publishing for real: huggingface_hub against the tests' Hub server, and the local-folder target.

Each test pushes an artifact, reads it back with the libraries downstream users use
(``datasets.load_dataset``, ``transformers.from_pretrained``, ``DatasetCard.load``) at the recorded
revision, and follows the lineage in the cards.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app
from realchat.hub.publish import follow_lineage

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def small_recipe(make_recipe, write_json_array, sharegpt_records):
    """A curate recipe on 120 real records, with a given publish section."""

    def make(publish: dict | None = None) -> Path:
        src = write_json_array(sharegpt_records[:120])
        path = make_recipe(src, filters=[{"op": "shape"}, {"op": "exact_dedup"}], name="pub")
        doc = yaml.safe_load(path.read_text())
        if publish is not None:
            doc["publish"] = publish
        path.write_text(yaml.safe_dump(doc))
        return path

    return make


def test_default_target_is_a_local_hub_layout(small_recipe, tmp_path, tiny_tokenizer_dir):
    recipe = small_recipe()
    code, out = invoke("build", str(recipe), "--no-progress")
    assert code == 0, out
    repo = tmp_path / "hub" / "datasets" / "realchat" / "pub-curate"
    assert (repo / "README.md").is_file() and list((repo / "data").glob("*.parquet"))
    record = json.loads((tmp_path / "runs" / "pub" / "published" / "curate.json").read_text())
    assert record["target"] == "local" and record["repo_id"] == "realchat/pub-curate"
    assert record["repo_type"] == "dataset" and record["repo_path"] == "datasets/realchat/pub-curate"
    assert record["revision"] == json.loads((repo / "manifest.json").read_text())["fingerprint"]

    from datasets import load_dataset

    kept = load_dataset(str(repo))  # the card's `configs` point datasets at data/, a split per file set
    rejected = load_dataset(str(repo), "rejected", split="train")
    stats = json.loads((repo / "stats.json").read_text())
    assert {k: v.num_rows for k, v in kept.items()} == stats["split_rows"]
    assert sum(v.num_rows for v in kept.values()) == stats["kept_rows"] and rejected.num_rows == stats["rejected_rows"]

    code, out = invoke("build", str(recipe), "--no-progress")
    assert code == 0 and "published" not in out  # up to date and already published: nothing to do
    code, out = invoke("push", str(recipe))
    assert code == 0 and "unchanged, no new commit" in out

    chain = follow_lineage(str(repo))
    assert [(c["depth"], c["key"], c["step"], c["kind"]) for c in chain] == [
        (0, None, "curate", "curate"), (1, "source", None, "source"), (1, "tokenizer", None, "model")]
    # a local input: its name, digest and format, and no Hub revision it never had
    assert chain[2]["where"] == str(tiny_tokenizer_dir) and re.fullmatch(r"[0-9a-f]{64}", chain[2]["sha256"])
    assert chain[2]["revision"] is None and chain[2]["format"] == "folder"
    assert chain[0]["repo"] == "realchat/pub-curate" and chain[0]["where"] == str(repo)
    assert chain[0]["fingerprint"] == record["fingerprint"]
    assert chain[1]["key"] == "source" and chain[1]["repo"] == str(recipe.parent / "data.json")
    assert re.fullmatch(r"[0-9a-f]{64}", chain[1]["sha256"]) and chain[1]["format"] == "sharegpt"
    from huggingface_hub import DatasetCard

    block = DatasetCard.load(repo / "README.md").data.to_dict()["realchat"]
    assert block["step"] == "curate" and block["kind"] == "curate" and block["repo_path"] == record["repo_path"]


def test_hub_push_read_back_at_recorded_revision(hub, small_recipe, tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard, HfApi

    recipe = small_recipe({"target": "hub", "namespace": "realchat-org"})
    code, out = invoke("build", str(recipe), "--no-progress")
    assert code == 0, out
    record = json.loads((tmp_path / "runs" / "pub" / "published" / "curate.json").read_text())
    repo = "realchat-org/pub-curate"
    assert record["repo_id"] == repo and record["revision"] == hub.head("dataset", repo)
    history = hub.history("dataset", repo)
    assert history[0].title.startswith(f"realchat curate: fingerprint {record['fingerprint']}")

    kept = load_dataset(repo, split="train", revision=record["revision"])
    rejected = load_dataset(repo, "rejected", split="train", revision=record["revision"])
    stats = json.loads((tmp_path / "runs" / "pub" / "curate" / "stats.json").read_text())
    assert (kept.num_rows, rejected.num_rows) == (stats["split_rows"]["train"], stats["rejected_rows"])
    assert kept.num_rows + rejected.num_rows > 0 and kept[0]["messages"][0]["role"] in ("user", "system")

    card = DatasetCard.load(repo, repo_type="dataset")
    block = card.data.to_dict()["realchat"]
    assert block["fingerprint"] == record["fingerprint"] and block["step"] == "curate" and block["kind"] == "curate"
    assert block["repo"] == repo and re.fullmatch(r"[0-9a-f]{64}", block["parents"][0]["sha256"])
    assert "revision" not in block["parents"][0]
    assert [p["key"] for p in block["parents"]] == ["source", "tokenizer"]
    assert block["repo_path"] is None  # a path below the publish root: local targets only
    card.validate(repo_type="dataset")  # huggingface_hub's own metadata validation (server-side rules)

    # unchanged: no new commit; the token never reaches a file or the output
    code, out = invoke("push", str(recipe))
    assert code == 0 and "unchanged" in out and len(hub.history("dataset", repo)) == len(history)
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.stat().st_size < 5_000_000:
            assert b"hf_write" not in f.read_bytes(), f
    assert "hf_write" not in out

    files = set(HfApi().list_repo_files(repo, repo_type="dataset"))
    assert {"README.md", "manifest.json", "stats.json"} <= files and any(f.startswith("data/") for f in files)


def test_changed_step_one_commit_and_interrupted_upload_keeps_head(hub, small_recipe, tmp_path):
    recipe = small_recipe({"target": "hub", "namespace": "tester", "repos": {"curate": "chat"}})
    assert invoke("build", str(recipe), "--no-progress")[0] == 0
    repo = "tester/chat"
    first = hub.head("dataset", repo)
    n = len(hub.history("dataset", repo))

    hub.state.fail_next_commit = True  # uploads go through, then the commit fails (as a dropped upload)
    code, out = invoke("build", str(recipe), "--no-progress", "--set", "steps.curate.filters[1].op=near_dedup")
    assert code == 2 and "500" in out
    assert hub.head("dataset", repo) == first  # previous revision intact
    code, out = invoke("push", str(recipe), "--set", "steps.curate.filters[1].op=near_dedup")
    assert code == 0, out
    assert len(hub.history("dataset", repo)) == n + 1 and hub.head("dataset", repo) != first


def test_model_folder_push_and_from_pretrained(hub, tiny_tokenizer_dir, tmp_path):
    """A model artifact (safetensors, tokenizer, chat template, generation config) goes up and loads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from realchat.hub.publish import HubPublisher
    from realchat.recipe.schema import PublishConfig

    folder = tmp_path / "model"
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": "f" * 32}))
    card = "---\nlicense: apache-2.0\nlibrary_name: transformers\nrealchat:\n  step: usergpt\n  kind: sft\n---\n# m\n"
    sha, changed = HubPublisher(PublishConfig(target="hub", namespace="tester")).publish(
        "tester/tiny", "model", folder, card, "usergpt", "f" * 32)
    assert changed and sha == hub.head("model", "tester/tiny")
    loaded = AutoModelForCausalLM.from_pretrained("tester/tiny", revision=sha)
    loaded_tok = AutoTokenizer.from_pretrained("tester/tiny", revision=sha)
    assert loaded_tok.chat_template == tok.chat_template
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    sha2, changed = HubPublisher(PublishConfig(target="hub", namespace="tester")).publish(
        "tester/tiny", "model", folder, card, "usergpt", "f" * 32)
    assert not changed and sha2 == sha


@pytest.mark.parametrize("case", ["no_token", "read_only", "other_namespace", "unreachable", "bad_card",
                                  "other_type"])
def test_publish_errors_are_clear(case, hub, small_recipe, monkeypatch, tmp_path):
    publish = {"target": "hub", "namespace": "tester"}
    expect = {
        "no_token": "no Hugging Face token",
        "read_only": "no rights",
        "other_namespace": "no rights",
        "unreachable": "cannot reach",
        "bad_card": "card metadata the Hub rejects",
        "other_type": "exists on",
    }[case]
    if case == "no_token":
        monkeypatch.delenv("HF_TOKEN")
    if case == "read_only":
        monkeypatch.setenv("HF_TOKEN", "hf_read")
    if case == "other_namespace":
        publish["namespace"] = "someone-else"
    if case == "unreachable":
        from hub_server import free_port

        publish["endpoint"] = f"http://127.0.0.1:{free_port()}"
    recipe = small_recipe(publish)
    if case == "bad_card":
        doc = yaml.safe_load(recipe.read_text())
        doc["steps"]["curate"]["license"] = "my-own-licence"
        recipe.write_text(yaml.safe_dump(doc))
    if case == "other_type":
        from huggingface_hub import HfApi

        HfApi().create_repo("tester/pub-curate", repo_type="model")
    code, out = invoke("build", str(recipe), "--no-progress")
    assert code == 2, out
    assert expect in out and "Traceback" not in out
    assert (tmp_path / "runs" / "pub" / "curate" / "manifest.json").exists()  # the build itself is kept
    assert not (tmp_path / "runs" / "pub" / "published" / "curate.json").exists()


def test_lineage_cli_on_hub_repo(hub, small_recipe, tiny_tokenizer_dir):
    recipe = small_recipe({"target": "hub", "namespace": "tester", "repos": {"curate": "lin"}})
    assert invoke("build", str(recipe), "--no-progress")[0] == 0
    code, out = invoke("lineage", "tester/lin", "--json")
    assert code == 0, out
    chain = json.loads(out)
    assert [(c["depth"], c["key"], c["step"], c["kind"]) for c in chain] == [
        (0, None, "curate", "curate"), (1, "source", None, "source"), (1, "tokenizer", None, "model")]
    assert chain[2]["where"] == str(tiny_tokenizer_dir)
    assert chain[0]["repo"] == "tester/lin" and chain[0]["where"] == "dataset tester/lin@main"
    assert chain[1]["repo"] == str(recipe.parent / "data.json") and re.fullmatch(r"[0-9a-f]{64}", chain[1]["sha256"])
    code, out = invoke("lineage", "tester/lin")
    assert code == 0 and "curate" in out and "tester/lin" in out and "data.json" in out
    code, out = invoke("lineage", "tester/does-not-exist")
    assert code == 2 and "not a folder with a card" in out
