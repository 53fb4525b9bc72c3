"""Conversations → token ids with a loss mask on one role's turns.

UserGPT learns to speak as the human, ReaLM as the assistant: the same model family, the loss on
different turns. TRL's ``assistant_only_loss`` needs ``{% generation %}`` markers in the chat template,
which most templates (SmolLM2's, Llama-2's) lack, so the mask is built here instead, for any template,
from the model's :class:`~realchat.models.chat_formats.ChatFormat`:

1. lay the conversation out for the template (:meth:`ChatFormat.fit`: Llama-2 and Gemma refuse what
   ChatML renders) and render it one message at a time, checking that each rendering extends the
   previous one;
2. mark the characters of the loss role's turns: the turn's own *content* and its **turn end**
   (``<|im_end|>``, `` [/INST]``, ``</s>``, ``<|eot_id|>``, Vicuna's next ``ASSISTANT:``), so the model
   learns to stop where the backends stop it; not the role header, not a folded system prompt;
3. tokenize the whole text once with offsets (one BOS, as :meth:`ChatFormat.encode` gives the
   backends); a token carries loss when its first character that is not a space is marked (a
   SentencePiece piece such as ``▁Hi`` carries the space before the word).

The result (``input_ids``, ``assistant_masks``) is what TRL's SFTTrainer takes as a pre-tokenised
dataset: it turns the mask into ``labels``, truncates, drops fully masked rows, packs.
"""

from __future__ import annotations

from typing import Any

from realchat.models.chat_formats import ChatFormat
from realchat.models.chat_formats import loss_spans as _format_loss_spans

#: Written by the simulator after a conversation's last assistant turn when trained with it
#: (UserLM-style end of conversation); plain text, so any tokenizer can learn it.
DEFAULT_END_MARKER = "<|endconversation|>"

def loss_spans(tokenizer: Any, messages: list[dict[str, str]], loss_role: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans ``[start, end)`` that carry loss."""
    return _format_loss_spans(ChatFormat.of(tokenizer), messages, loss_role)


def tokenize_with_mask(tokenizer: Any, messages: list[dict[str, str]], loss_role: str) -> dict[str, list[int]]:
    """``input_ids`` and ``assistant_masks`` (1 = carries loss) for one conversation."""
    fmt = ChatFormat.of(tokenizer)
    text, spans = _format_loss_spans(fmt, messages, loss_role)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = []
    k = 0
    for start, end in enc["offset_mapping"]:
        piece = text[start:end]
        # where the token's text starts, past the space SentencePiece folds into it ("▁Hi" is " Hi")
        start += len(piece) - len(piece.lstrip()) if piece.strip() else 0
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        mask.append(1 if k < len(spans) and spans[k][0] <= start < spans[k][1] else 0)
    if fmt.bos_id is not None and (not ids or ids[0] != fmt.bos_id):  # one BOS, as the backends send it
        ids.insert(0, fmt.bos_id)
        mask.insert(0, 0)
    return {"input_ids": ids, "assistant_masks": mask}


def decode_loss_tokens(tokenizer: Any, row: dict[str, list[int]]) -> list[str]:
    """The runs of tokens that carry loss, decoded (for tests and for the card's example)."""
    runs: list[list[int]] = []
    current: list[int] = []
    for tok, bit in zip(row["input_ids"], row["assistant_masks"]):
        if bit:
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


def as_user_simulator(messages: list[dict[str, str]], system_prompt: str | None,
                      end_marker: str | None, ended: bool = True) -> list[dict[str, str]]:
    """The conversation as UserGPT sees it: its own system prompt instead of the original one, and,
    when trained with one, the end-of-conversation marker as a final user turn — only when the
    conversation really ended there (``ended``): a segment that ``split`` cut out of a longer
    conversation goes on after its last turn, and teaching the marker there teaches the simulator
    to leave early."""
    body = [m for m in messages if m["role"] != "system"]
    out = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + body
    if end_marker and ended and body and body[-1]["role"] == "assistant":
        out.append({"role": "user", "content": end_marker})
    return out
