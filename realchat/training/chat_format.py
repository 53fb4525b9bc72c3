"""Conversations → token ids with a loss mask on one role's turns.

UserGPT learns to speak as the human, ReaLM as the assistant: the same model family, the loss on
different turns. TRL's ``assistant_only_loss`` needs ``{% generation %}`` markers in the chat template,
which most templates (SmolLM2's, Llama-2's) lack, so the mask is built here instead, for any template:

1. render the conversation with the tokenizer's chat template, one message at a time, checking that
   each rendering extends the previous one (true of ChatML, Llama-2, Zephyr …; anything else is an
   error, not a silent mis-mask);
2. mark the characters of the loss role's turns: from the start of the turn's *content* to the end of
   the turn as rendered (so the end-of-turn token carries loss and the role header does not);
3. tokenize the whole text once with offsets; a token carries loss when its first character is marked.

The result (``input_ids``, ``assistant_masks``) is what TRL's SFTTrainer takes as a pre-tokenised
dataset: it turns the mask into ``labels``, truncates, drops fully masked rows, packs.
"""

from __future__ import annotations

from typing import Any

from realchat.errors import RealChatError

#: Written by the simulator after a conversation's last assistant turn when trained with it
#: (UserLM-style end of conversation); plain text, so any tokenizer can learn it.
DEFAULT_END_MARKER = "<|endconversation|>"


class ChatFormatError(RealChatError):
    """The chat template cannot be used to build loss masks."""


def render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False)


def loss_spans(tokenizer: Any, messages: list[dict[str, str]], loss_role: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans ``[start, end)`` that carry loss."""
    spans: list[tuple[int, int]] = []
    prev = ""
    text = ""
    for i, m in enumerate(messages):
        text = render(tokenizer, messages[: i + 1])
        if not text.startswith(prev):
            raise ChatFormatError(
                "the chat template does not render conversations incrementally (message "
                f"{i} changes what came before), so turn masks cannot be built from it",
                hint="use a ChatML/Llama-style template, or set the tokenizer's chat_template",
            )
        if m["role"] == loss_role:
            new = text[len(prev):]
            offset = new.rfind(m["content"]) if m["content"] else -1
            start = len(prev) + (offset if offset >= 0 else 0)
            spans.append((start, len(text)))
        prev = text
    return text, spans


def tokenize_with_mask(tokenizer: Any, messages: list[dict[str, str]], loss_role: str) -> dict[str, list[int]]:
    """``input_ids`` and ``assistant_masks`` (1 = carries loss) for one conversation."""
    text, spans = loss_spans(tokenizer, messages, loss_role)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = []
    k = 0
    for start, _end in enc["offset_mapping"]:
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        mask.append(1 if k < len(spans) and spans[k][0] <= start < spans[k][1] else 0)
    return {"input_ids": list(enc["input_ids"]), "assistant_masks": mask}


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
