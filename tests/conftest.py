"""Shared fixtures: slices of the shipped ShareGPT file, a tokenizer trained on the spot, recipes."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

# The tests' Hub is a local server (tests/hub_server.py). huggingface_hub and datasets read
# HF_ENDPOINT when they are imported, so it is fixed here, before anything imports them.
sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer, free_port  # noqa: E402

HUB_PORT = free_port()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="realchat-tests-hf-home-")  # no stored login, own cache

import pytest  # noqa: E402
import yaml  # noqa: E402

from realchat.recipe.base import DEFAULT_SHAREGPT
from realchat.recipe.refs import resolve_package_path

SHAREGPT = resolve_package_path(DEFAULT_SHAREGPT)


#: FastChat's benchmark files beside the clone (CI has ../shared); never copied into the repo.
SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own RealChat cache (converted tokenizers) and fastText cache. The
    benchmark files that ``questions: fastchat`` reads are put into it the way an offline user does
    (``realchat fetch-eval --from ../shared/eval``): the tests never reach the network."""
    from realchat.evaluation import fastchat_data

    cache = tmp_path_factory.getbasetemp() / "realchat-cache"
    monkeypatch.setenv("REALCHAT_CACHE", str(cache))
    if not (cache / "fastchat" / fastchat_data.COMMIT).is_dir():
        fastchat_data.fetch(source=SHARED_EVAL)


@pytest.fixture(scope="session")
def hub_server():
    """The tests' Hub-compatible server on 127.0.0.1, at the HF_ENDPOINT set above."""
    server = HubServer(HUB_PORT).start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server, monkeypatch):
    """The server, with a write token in HF_TOKEN."""
    monkeypatch.setenv("HF_TOKEN", "hf_write")
    return hub_server


@pytest.fixture(scope="session")
def sharegpt_records() -> list[dict]:
    """The first 600 complete records of the shipped ShareGPT V3 file (real data, real mess)."""
    from realchat.curation.sources import SourceConfig, open_source

    it, _ = open_source(SourceConfig(limit=600), Path("."))
    return [r.data for r in it]


@pytest.fixture
def write_json_array(tmp_path):
    def write(records, name="data.json") -> Path:
        p = tmp_path / name
        p.write_text(json.dumps(records, ensure_ascii=False, indent=1))
        return p

    return write


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer trained in a second on a few sentences, with a ChatML template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["Hello, how are you today? I am fine, thank you.",
              "Write a Python function that sorts a list.", "The quick brown fox jumps over the lazy dog."] * 50
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    out = tmp_path_factory.mktemp("tiny-tokenizer")
    fast.save_pretrained(out)
    return out


@pytest.fixture
def make_recipe(tmp_path, tiny_tokenizer_dir):
    """Write a recipe with one curate step named ``curate``; defaults to a tiny tokenizer and a tmp
    run root. Tests add further steps to ``doc["steps"]``."""

    def make(source_path, filters=None, tokenizer=None, fmt="sharegpt", name="t", **curate) -> Path:
        doc = {
            "name": name,
            "run_root": str(tmp_path / "runs"),
            "steps": {"curate": {
                "kind": "curate",
                "source": {"format": fmt, "path": str(source_path)},
                "tokenizer": str(tokenizer or tiny_tokenizer_dir),
                "filters": filters if filters is not None else [],
                **curate,
            }},
        }
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(doc, sort_keys=False))
        return p

    return make


def pytest_report_header(config):
    return f"shipped ShareGPT: {SHAREGPT} ({os.path.getsize(SHAREGPT):,} bytes)"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A 2-layer Llama with the tiny tokenizer: trains and generates in seconds on a CPU."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def family_models(tmp_path_factory, sharegpt_records):
    """``family_models(name)`` → the folder of a tiny random model of that chat-model family
    (tests/families.py), built once per test session."""
    from families import build_model

    corpus = [t["value"] for r in sharegpt_records[:200] for t in r.get("conversations", [])
              if isinstance(t.get("value"), str)][:2000]
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = build_model(family, tmp_path_factory.mktemp(f"family-{family}"), corpus)
        return made[family]

    return get


@pytest.fixture(scope="session")
def paper_clone(tmp_path_factory) -> Path:
    """A clean clone's layout for the paper recipe: ``<root>/clone/recipes/paper/`` holding the recipe,
    the CPU stand-in overlay and the stand-in models (``realchat.standins``, as the overlay's header
    says), with ``<root>/shared`` beside the clone as CI has it (the recipe's benchmark path is
    ``../../../shared/eval``). Returns ``<root>/clone``. The repo's own tree is never written to."""
    import shutil

    from realchat.standins import make_standins

    repo = Path(__file__).resolve().parents[1]
    shared = repo.parent / "shared"
    assert (shared / "eval" / "judge_prompts.jsonl").is_file(), "../shared/eval is beside the clone in CI"
    root = tmp_path_factory.mktemp("paper")
    paper = root / "clone" / "recipes" / "paper"
    paper.mkdir(parents=True)
    for name in ("platolm-7b.yaml", "cpu-standin.yaml"):
        shutil.copy(repo / "recipes" / "paper" / name, paper / name)
    (root / "shared").symlink_to(shared.resolve())
    make_standins(paper / "stand-ins")
    return root / "clone"
