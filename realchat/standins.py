"""Tiny random-weight stand-ins for the paper's models, so the paper recipe builds on a CPU.

``recipes/paper/cpu-standin.yaml`` swaps the paper's models for these (and nothing else that matters):

* ``base``: a LLaMA-architecture model whose tokenizer has **no chat template**, like LLaMA-7B and
  Llama-2-7B (the recipe must declare the format it trains them in: issue 22's ``chat_template``);
* ``llama-2-chat``: the same architecture with Llama-2-chat's own template (``[INST]``, ``<<SYS>>``,
  the strict role alternation that raises on anything else), like ``meta-llama/Llama-2-7b-chat-hf``;
* ``served``: a ChatML model that ``transformers serve`` runs for the OpenAI-compatible roles (intent
  summariser, answerer, judge); its generation config samples, so the request's temperature counts.

The tokenizer is a byte-level BPE trained in a second on a few sentences; the weights are random
(seeded): the build exercises every step and file, not the quality of what the models write.

``python -m realchat.standins recipes/paper/stand-ins`` writes them where the overlay expects them.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: Llama-2-chat's chat template (meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json).
LLAMA_2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

STANDINS = ("base", "llama-2-chat", "served")

_CORPUS = ["Hello, how are you today? I am fine, thank you.", "Write a Python function that sorts a list.",
           "The quick brown fox jumps over the lazy dog.", "Rating: [[5]] Verdict: [[A]] [[B]] [[C]]",
           "[INST] <<SYS>> You are a helpful assistant. <</SYS>> [/INST]"] * 40


def _tokenizer(special: list[str], bos: str, eos: str, pad: str, template: str | None):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)
    if template is not None:
        fast.chat_template = template
    return fast


def make_standin(kind: str, out: Path, seed: int = 0) -> Path:
    """Write one stand-in model folder (``kind`` one of :data:`STANDINS`) and return it."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if kind == "served":
        tok = _tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_start|>", "<|im_end|>",
                         "<|endoftext|>", CHATML_TEMPLATE)
    elif kind in ("base", "llama-2-chat"):
        tok = _tokenizer(["<unk>", "<s>", "</s>"], "<s>", "</s>", "<unk>",
                         LLAMA_2_CHAT_TEMPLATE if kind == "llama-2-chat" else None)
    else:
        raise ValueError(f"unknown stand-in {kind!r}; one of {', '.join(STANDINS)}")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # sampling on by default: a server that reads the generation config (transformers serve) then
    # honours the request's temperature instead of decoding greedily
    model.generation_config = GenerationConfig(do_sample=True, bos_token_id=tok.bos_token_id,
                                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_standins(folder: Path) -> dict[str, Path]:
    """Every stand-in under ``folder`` (``folder/base``, …); folders already there are kept."""
    return {k: (folder / k if (folder / k / "config.json").is_file() else make_standin(k, folder / k, seed=i))
            for i, k in enumerate(STANDINS)}


if __name__ == "__main__":  # pragma: no cover - a one-line helper for users
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "recipes/paper/stand-ins")
    for name, path in make_standins(target).items():
        print(f"{name}: {path}")
