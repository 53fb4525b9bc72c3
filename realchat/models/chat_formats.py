"""Chat formats: which template a model speaks, where each role's turn ends, and prompts that hold.

Every model RealChat trains or talks to is driven through its chat template: training renders
conversations with it (loss masks), the simulator opens a user turn with it, backends render the
answerer's prompt with it and stop where it says a turn ends. Templates differ in ways that matter:

* **base models have none**: a recipe names one (``chat_template: vicuna``, the paper's format) or a
  Jinja file, and the sft step saves it into the trained model's tokenizer, so every later step that
  loads that model renders the same format;
* **turn ends differ**: ChatML closes every turn with ``<|im_end|>``, Llama-2 closes the user's turn
  with ``[/INST]`` and the assistant's with ``</s>``, Llama-3 with ``<|eot_id|>``, Gemma with
  ``<end_of_turn>``, Vicuna's user turn only by the next speaker's ``ASSISTANT:``. The loss span of a
  role ends with its turn end (so a model learns to stop) and every backend stops there;
* **strict templates** refuse what ChatML renders: Llama-2, Mistral and Gemma demand alternating
  roles starting with the user, Gemma has no system role. :meth:`ChatFormat.fit` lays any
  conversation out so that the template accepts it (the system text folded into the first user turn,
  consecutive turns of one role merged, an empty user turn before a leading answer) and says so once;
* **BOS**: a template that writes ``<s>`` itself must not get a second one from the tokenizer;
  :meth:`ChatFormat.encode` gives the token ids the model sees, with exactly one BOS where the
  tokenizer expects one.

Everything is derived by rendering the template itself on sentinel conversations, so a template a
user writes gets the same treatment as the built-in ones. Nothing here imports transformers at module
level: the recipe schema reads :data:`BUILTIN_TEMPLATES` names.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from realchat.errors import RealChatError

# -- built-in templates ---------------------------------------------------------------------------------
# Written from each family's published format (the model cards' prompt formats and the templates their
# tokenizers ship), as Jinja that transformers, vLLM and ``transformers serve`` render alike. Each
# assistant turn's content and turn end sit inside ``{% generation %}…{% endgeneration %}`` (text
# unchanged): a model published with one of them gives ``apply_chat_template(...,
# return_assistant_tokens_mask=True)`` its mask, so TRL's ``assistant_only_loss=True`` trains on it.

_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the user's questions.")

#: The template of each built-in format name.
BUILTIN_TEMPLATES: dict[str, str] = {
    # FastChat's vicuna_v1.1 (the format the paper trained LLaMA on): "SYSTEM USER: q ASSISTANT: a</s>USER: …"
    "vicuna": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] | trim }}{{ ' ' }}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}{{ '" + _VICUNA_SYSTEM.replace("'", "\\'") + " ' }}{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] | trim + ' ' }}"
        "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' }}"
        "{% generation %}{{ message['content'] | trim + eos_token }}{% endgeneration %}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    # ChatML (Qwen, SmolLM, many fine-tunes): every turn closed by <|im_end|>
    "chatml": (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Llama-2-chat: [INST] … [/INST], the system prompt inside the first [INST] as <<SYS>>, strict alternation
    "llama-2": (
        "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set system_message = false %}"
        "{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' }}"
        "{% generation %}{{ content.strip() + ' ' + eos_token }}{% endgeneration %}{% endif %}"
        "{% endfor %}"
    ),
    # Llama-3-instruct: header ids around the role, every turn closed by <|eot_id|>
    "llama-3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    # Mistral-instruct (v0.3 layout): [INST] q[/INST] a</s>, strict alternation, the system prompt before the
    # first question
    "mistral": (
        "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set system_message = false %}"
        "{% set loop_messages = messages %}{% endif %}"
        "{{ bos_token }}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{% if loop.index0 == 0 and system_message %}{{ '[INST] ' + system_message + '\\n\\n' + message['content']"
        " + '[/INST]' }}{% else %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% endif %}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' }}"
        "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{% endif %}"
        "{% endfor %}"
    ),
    # Gemma: <start_of_turn>user / model … <end_of_turn>, no system role, strict alternation
    "gemma": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}"
        "{{ '<start_of_turn>' + role + '\n' }}"
        "{% if role == 'model' %}{% generation %}{{ message['content'] | trim + '<end_of_turn>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] | trim + '<end_of_turn>' }}{% endif %}{{ '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    # Phi-3: <|user|> … <|end|>
    "phi-3": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>' + '\n' }}"
        "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] + '<|end|>' }}{% endif %}{{ '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}

class ChatTemplateError(RealChatError):
    """A chat template that cannot be found, read or used."""


def is_builtin(ref: str) -> bool:
    return ref in BUILTIN_TEMPLATES


def template_text(ref: str, base_dir: Path) -> str:
    """A recipe's ``chat_template:`` value (a built-in name or a Jinja file) → the template's text."""
    if ref in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[ref]
    from realchat.errors import user_file
    from realchat.recipe.refs import resolve_local

    path = resolve_local(ref, base_dir)
    if not path.is_file():
        raise ChatTemplateError(f"chat template {ref!r} is neither a built-in format ({', '.join(BUILTIN_TEMPLATES)}) "
                                f"nor a file (resolved to {path})", field="chat_template")
    with user_file(path, doing="not a readable chat template"):
        text = path.read_text(encoding="utf-8")
    _compile(text, str(path))
    return text


def _compile(text: str, where: str) -> None:
    """A template that does not parse is an error now, not when the first prompt is rendered. Parsed
    as transformers renders it: with its ``{% generation %}`` extension (the assistant-mask markers)."""
    import jinja2
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(text)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"{where}: not a valid Jinja chat template (line {e.lineno}: {e.message})",
                                field="chat_template") from None


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def local_template_state(path: Path) -> bool | None:
    """Whether the tokenizer of a local model (a folder or a ``.gguf`` file) has a chat template: read
    from its files without loading it, so ``plan`` can tell; None when it cannot tell cheaply."""
    if path.is_dir():
        if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
            return True
        config = path / "tokenizer_config.json"
        if not config.is_file():
            return None
        import json

        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return bool(isinstance(data, dict) and data.get("chat_template"))
    if path.is_file() and path.suffix == ".gguf":
        keys = gguf_metadata_keys(path)
        return None if keys is None else "tokenizer.chat_template" in keys
    return None


#: Bytes of GGUF's fixed-size metadata value types (``gguf.GGUFValueType``: 8 is a string, 9 an array).
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_metadata_keys(path: Path) -> set[str] | None:
    """The metadata keys of a GGUF file (versions 2 and 3, either byte order), from its header alone;
    None when the file is not one that can be read.

    Why not ``gguf.GGUFReader``: it parses every value and every tensor's description into numpy
    views, 3.5 s for SmolLM2's file (its 49,152-token vocabulary and 48,900 merges one string at a
    time), and ``plan`` and ``build`` asked it once per step naming the model (eight times in the
    default recipe). Knowing whether a key is there needs only the lengths: each string is skipped by
    its length, each fixed-size array by count x size (``tests/test_gguf_keys.py`` checks the
    keys equal GGUFReader's on the shipped file and on files written by ``gguf.GGUFWriter``)."""
    import mmap
    import struct

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:4] != b"GGUF":
                return None
            order = "<" if struct.unpack_from("<I", data, 4)[0] & 0xFFFF else ">"
            version, _tensors, n_kv = struct.unpack_from(f"{order}IQQ", data, 4)
            if version not in (2, 3):
                return None
            u32, u64 = struct.Struct(f"{order}I").unpack_from, struct.Struct(f"{order}Q").unpack_from

            def skip(offset: int, kind: int) -> int:  # the offset after one value of type ``kind``
                if kind == 8:
                    return offset + 8 + u64(data, offset)[0]
                if kind == 9:
                    item, count = u32(data, offset)[0], u64(data, offset + 4)[0]
                    offset += 12
                    if item in _GGUF_SIZES:
                        return offset + count * _GGUF_SIZES[item]
                    for _ in range(count):
                        offset = skip(offset, item)
                    return offset
                return offset + _GGUF_SIZES[kind]  # KeyError: an unknown type, like GGUFReader's ValueError

            keys: set[str] = set()
            offset = 24
            for _ in range(n_kv):
                length = u64(data, offset)[0]
                keys.add(data[offset + 8 : offset + 8 + length].decode("utf-8"))
                offset = skip(offset + 12 + length, u32(data, offset + 8 + length)[0])
                if offset > len(data):
                    return None
            return keys
    except (OSError, ValueError, KeyError, struct.error, RecursionError):
        return None


def apply_template(tokenizer: Any, template: str | None, what: str) -> Any:
    """Give ``tokenizer`` the recipe's template (which wins over its own); without one, it must have
    its own. ``what`` names the model in the error."""
    if template:
        tokenizer.chat_template = template
    elif not has_template(tokenizer):
        raise ChatTemplateError(
            f"{what}: the tokenizer has no chat template (a base model), so its conversations cannot be laid out",
            field="chat_template",
            hint=f"set chat_template: one of {', '.join(BUILTIN_TEMPLATES)} (vicuna is the paper's format), or a "
                 "Jinja file")
    return tokenizer


#: Recipe keys that declare a chat format, and the keys of the model each one is for (a served
#: backend's ``model`` is a name the server knows, not a reference: its ``tokenizer`` renders).
TEMPLATE_KEYS = {"chat_template": ("base_model", "tokenizer", "model"), "baseline_chat_template": ("baseline_model",)}


def check_chat_templates(config: Any, base_dir: Path, steps: set[str], prefix: str = "") -> None:
    """Plan-time check of every model a step config names with a ``chat_template`` beside it (an sft
    step's ``base_model``, a backend's ``model``, a served backend's ``tokenizer``): a named template
    must parse, and a local model whose tokenizer has no template needs one. A step's model gets the
    template its sft step saved; a Hub model is checked when its step starts, before any paid call."""
    from pydantic import BaseModel

    from realchat.errors import RecipeError
    from realchat.recipe.refs import resolve_local

    if isinstance(config, list):
        for i, item in enumerate(config):
            check_chat_templates(item, base_dir, steps, f"{prefix}[{i}]")
        return
    if not isinstance(config, BaseModel):
        return
    dot = f"{prefix}." if prefix else ""
    fields = type(config).model_fields
    for key, models in TEMPLATE_KEYS.items():
        if key not in fields:
            continue
        template = getattr(config, key)
        model = next((getattr(config, k) for k in models
                      if k in fields and isinstance(getattr(config, k), str)
                      and not (k == "model" and getattr(config, "kind", None) == "openai")), None)
        if template:
            try:
                template_text(template, base_dir)
            except ChatTemplateError as e:
                raise RecipeError(e.message, field=f"{dot}{key}", hint=e.hint) from None
        elif model and model not in steps and local_template_state(resolve_local(model, base_dir)) is False:
            raise RecipeError(
                f"{model} has no chat template (a base model): set {key}: to one of "
                f"{', '.join(BUILTIN_TEMPLATES)} (vicuna is the paper's format) or a Jinja file",
                field=f"{dot}{key}")
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, (BaseModel, list)):
            check_chat_templates(value, base_dir, steps, f"{dot}{name}")


# -- what a template does, derived by rendering it ----------------------------------------------------

_S1, _S2, _S3 = "\u27e6rc-1\u27e7", "\u27e6rc-2\u27e7", "\u27e6rc-3\u27e7"  # sentinels no template alters


@dataclass(frozen=True)
class TurnEnd:
    """What closes one role's turn in a template.

    ``rendered``: the text the template writes right after the turn's content (``<|im_end|>\\n``,
    `` [/INST]``, `` </s>``); it carries loss with the content. ``stop``: that text stripped, where
    generation stops (``<|im_end|>``, ``[/INST]``). When the template writes nothing after a turn
    (Vicuna's user turn), the turn ends where the next speaker's header starts: ``stop`` is that header
    (``ASSISTANT:``) and ``by_next_header`` is set. ``token_id``: the stop as one token where the
    vocabulary has it as one (a special token), else None (a stop string).
    """

    role: str
    rendered: str
    stop: str
    by_next_header: bool
    token_id: int | None
    #: The other speaker's header that follows this turn (``[INST]`` after a Llama-2 answer,
    #: ``<|im_start|>user``), BOS left out; empty where none (Llama-2's answer follows ``[/INST]`` directly).
    next_header: str = ""


@dataclass
class Fitted:
    """A conversation laid out for a template: the messages it renders, and for each one whether it
    may carry loss (a turn inserted by the layout never does) and the text of its own content (after a
    folded system prompt), where its loss span starts."""

    messages: list[dict[str, str]]
    trainable: list[bool]
    own_text: list[str]


#: What :meth:`ChatFormat.fit` may do to a conversation, as said in a step's log and stats.
FIT_NOTES = {
    "system_folded": "the template has no system role: the system text was put in front of the first user turn",
    "merged_turns": "the template demands alternating roles: consecutive turns of one role were joined",
    "empty_user_turn": "the template demands a user turn first: an empty user turn was put before a leading answer",
}


class ChatFormat:
    """One tokenizer's chat template, probed once: what it accepts, where turns end, how prompts open."""

    def __init__(self, tokenizer: Any, log: Callable[[str], None] | None = None) -> None:
        if not has_template(tokenizer):
            raise ChatTemplateError("the tokenizer has no chat template", field="chat_template")
        self.tokenizer = tokenizer
        self.log = log
        #: How often each :data:`FIT_NOTES` adaptation was made (said once each through ``log``).
        self.notes: dict[str, int] = {}
        self.supports_system = self._accepts([{"role": "system", "content": _S1}, {"role": "user", "content": _S2}],
                                             _S1)
        self.user_first = not self._accepts([{"role": "assistant", "content": _S1}, {"role": "user", "content": _S2}])
        self.alternates = not self._accepts([{"role": "user", "content": _S1}, {"role": "user", "content": _S2}])
        self.turn_ends = {role: self._turn_end(role) for role in ("user", "assistant")}
        bos = getattr(tokenizer, "bos_token_id", None)
        self.bos_id: int | None = bos if bos is not None and self._tokenizer_adds_bos(bos) else None
        self.bos_text: str | None = getattr(tokenizer, "bos_token", None) if self.bos_id is not None else None
        self.open_strips_space = False
        self.open_strips_space = self._space_belongs_to_content()

    @classmethod
    def of(cls, tokenizer: Any, log: Callable[[str], None] | None = None) -> "ChatFormat":
        """The format of ``tokenizer``, probed once and kept on it (a new template is probed anew)."""
        cached = getattr(tokenizer, "_realchat_format", None)
        if cached is not None and cached[0] == tokenizer.chat_template:
            if log is not None and cached[1].log is None:
                cached[1].log = log
            return cached[1]
        fmt = cls(tokenizer, log)
        try:
            tokenizer._realchat_format = (tokenizer.chat_template, fmt)
        except AttributeError:  # a tokenizer that refuses new attributes: probe each time
            pass
        return fmt

    # -- rendering ------------------------------------------------------------------------------------

    def _raw(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _accepts(self, messages: list[dict[str, str]], must_show: str | None = None) -> bool:
        try:
            text = self._raw(messages)
        except Exception:  # noqa: BLE001 -- jinja's TemplateError or raise_exception's; any refusal counts
            return False
        return must_show is None or must_show in text

    def fit(self, messages: list[dict[str, str]]) -> Fitted:
        """The conversation laid out so that this template renders it, nothing dropped."""
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        trainable = [True] * len(msgs)
        own = [m["content"] for m in msgs]
        if self.alternates:  # consecutive turns of one role become one turn
            i = 1
            while i < len(msgs):
                if msgs[i]["role"] == msgs[i - 1]["role"] and msgs[i]["role"] != "system":
                    msgs[i - 1]["content"] += "\n\n" + msgs[i]["content"]
                    own[i - 1] = msgs[i - 1]["content"]
                    del msgs[i], trainable[i], own[i]
                    self._note("merged_turns")
                else:
                    i += 1
        head = 1 if msgs and msgs[0]["role"] == "system" else 0
        if self.user_first and len(msgs) > head and msgs[head]["role"] == "assistant":
            msgs.insert(head, {"role": "user", "content": ""})
            trainable.insert(head, False)
            own.insert(head, "")
            self._note("empty_user_turn")
        if head and not self.supports_system:
            system = msgs.pop(0)["content"]
            trainable.pop(0)
            own.pop(0)
            if msgs and msgs[0]["role"] == "user":
                msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}" if msgs[0]["content"] else system
            else:
                msgs.insert(0, {"role": "user", "content": system})
                trainable.insert(0, False)
                own.insert(0, "")
            self._note("system_folded")
        return Fitted(msgs, trainable, own)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as the model sees it (laid out by :meth:`fit`)."""
        return self._raw(self.fit(messages).messages, add_generation_prompt)

    def open_turn(self, messages: list[dict[str, str]], role: str = "user") -> str:
        """The prompt that opens a turn of ``role`` after ``messages``: the conversation rendered with one
        more ``role`` message, cut where that message's content would start. Right for any template (the
        first question after a system prompt that Llama-2 folds into ``[INST]``, a later one after
        ``</s>``, Gemma's folded system text), with no fake system prompt."""
        text = self.render([*messages, {"role": role, "content": _S3}], add_generation_prompt=False)
        at = text.rfind(_S3)
        if at < 0:
            raise ChatTemplateError("the chat template does not show a message's content; cannot open a turn")
        return text[:at].rstrip(" ") if self.open_strips_space else text[:at]

    def _space_belongs_to_content(self) -> bool:
        """Whether an opened turn must end before its trailing space: Vicuna's ``USER: `` and Llama-2's
        ``[INST] `` end with a space that a SentencePiece vocabulary folds into the content's first
        piece (``▁How``); a prompt ending in a lone ``▁`` is one the model never saw in training. True
        when the prompt's tokens are not a prefix of the rendered turn's, and are without the space."""
        opened = self.open_turn([], "user")
        if not opened.endswith(" "):
            return False
        full = self.encode(self.render([{"role": "user", "content": "Hello"}], add_generation_prompt=False))
        with_space, without = self.encode(opened), self.encode(opened.rstrip(" "))
        return full[: len(with_space)] != with_space and full[: len(without)] == without

    def _note(self, what: str) -> None:
        first = what not in self.notes
        self.notes[what] = self.notes.get(what, 0) + 1
        if first and self.log is not None:
            self.log(f"chat format: {FIT_NOTES[what]} (said once; counted in the stats)")

    # -- turn ends ----------------------------------------------------------------------------------------

    def _turn_end(self, role: str) -> TurnEnd:
        other = "assistant" if role == "user" else "user"
        before = [] if role == "user" else [{"role": "user", "content": _S1}]
        last = self._raw(self.fit([*before, {"role": role, "content": _S2}]).messages)
        then = self._raw(self.fit([*before, {"role": role, "content": _S2}, {"role": other, "content": _S3}]).messages)
        if _S2 not in last or _S2 not in then or _S3 not in then:
            raise ChatTemplateError("the chat template does not show the messages' content; cannot find where turns end")
        after_last = last[last.rindex(_S2) + len(_S2):]
        between = then[then.rindex(_S2) + len(_S2): then.rindex(_S3)]
        rendered = os.path.commonprefix([after_last, between])
        stop, by_header = rendered.strip(), False
        if not stop:  # nothing closes the turn but the next speaker's header (Vicuna's user turn)
            stop, by_header = between.strip(), True
        if not stop:
            raise ChatTemplateError(f"the chat template marks no end of a {role} turn; generation could not stop there")
        header = between[len(rendered):].strip()
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and header.startswith(bos):  # Llama-2 opens each exchange with <s>: not what a model writes
            header = header[len(bos):].strip()
        return TurnEnd(role, rendered, stop, by_header, self._single_token(stop), header if not by_header else "")

    def _single_token(self, text: str) -> int | None:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    def stop_strings(self, role: str) -> list[str]:
        """Texts at which a generated ``role`` turn is over, its own turn end first: then the other
        speaker's header and turn end (a model that writes ``[INST]`` or ``[/INST]`` into an answer has
        left its turn; nothing of the template belongs in a stored turn), and EOS as text. At most four
        (OpenAI's API takes four)."""
        other = self.turn_ends["assistant" if role == "user" else "user"]
        out: list[str] = []
        for text in (self.turn_ends[role].stop, self.turn_ends[role].next_header, other.stop,
                     getattr(self.tokenizer, "eos_token", None)):
            if text and text not in out:
                out.append(text)
        return out[:4]

    def multi_token_stops(self, role: str) -> list[str]:
        """The stops that are several tokens (Llama-2's ``[/INST]`` on LLaMA's vocabulary): matched as
        strings while decoding, where the others are stop token ids."""
        return [t for t in self.stop_strings(role) if self._single_token(t) is None]

    def stop_token_ids(self, role: str) -> list[int]:
        """Token ids that end a generated ``role`` turn: EOS and every stop that is one token."""
        out: list[int] = []
        eos = getattr(self.tokenizer, "eos_token_id", None)
        for tid in ([eos] if isinstance(eos, int) else list(eos or [])) + [
                self._single_token(t) for t in self.stop_strings(role)]:
            if tid is not None and tid not in out:
                out.append(tid)
        return out

    def end_of_turn(self, text: str, role: str) -> tuple[str, str | None]:
        """A generated ``role`` turn cut at its first stop: (the turn's text, the stop found or None).
        Only the stop and what follows it go: the model wrote everything kept."""
        cut, found = len(text), None
        for stop in self.stop_strings(role):
            at = text.find(stop)
            if 0 <= at < cut:
                cut, found = at, stop
        return text[:cut], found

    # -- tokens ----------------------------------------------------------------------------------------

    def _tokenizer_adds_bos(self, bos: int) -> bool:
        ids = self.tokenizer("a")["input_ids"]
        return bool(ids) and ids[0] == bos

    def encode(self, text: str) -> list[int]:
        """The token ids of a rendered prompt as the model must see them: the template's own special
        tokens, and one BOS where the tokenizer expects one (added when the template wrote none, never
        a second)."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def text_for_server(self, text: str) -> str:
        """A rendered prompt sent as text to a server that tokenizes it with special tokens (vLLM's and
        ``transformers serve``'s ``/v1/completions``): the BOS the template wrote is left out, since
        the server adds its own."""
        if self.bos_text and text.startswith(self.bos_text):
            return text[len(self.bos_text):]
        return text


# -- loss spans -------------------------------------------------------------------------------------------


def loss_spans(fmt: ChatFormat, messages: list[dict[str, str]], loss_role: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans ``[start, end)`` that carry loss: each
    ``loss_role`` turn's own content and its turn end (so the model learns to stop), nothing else (not
    the role header, not a folded system prompt, not a turn the layout inserted).

    The conversation is rendered one message at a time, each rendering checked to extend the previous
    one (true of ChatML, Llama-2/3, Mistral, Gemma, Vicuna …; anything else is an error, not a silent
    mis-mask); a turn's content is found in the text its message added."""
    fitted = fmt.fit(messages)
    msgs = fitted.messages
    starts: list[tuple[int, int]] = []  # (content start, content end) of each loss turn
    prev = ""
    for i, m in enumerate(msgs):
        text = fmt._raw(msgs[: i + 1])
        if not text.startswith(prev):
            raise ChatTemplateError(
                "the chat template does not render conversations incrementally (message "
                f"{i} changes what came before), so turn masks cannot be built from it",
                hint="use one of the built-in formats (chat_template: chatml, llama-2, …) or fix the template")
        if m["role"] == loss_role and fitted.trainable[i]:
            new = text[len(prev):]
            own = fitted.own_text[i].strip()
            at = new.rfind(own) if own else -1
            if at >= 0:
                starts.append((len(prev) + at, len(prev) + at + len(own)))
            else:  # the template changed the content: the whole message's text
                starts.append((len(prev), len(text)))
        prev = text
    end = fmt.turn_ends[loss_role]
    spans = []
    next_header = re.compile(r"\s*" + re.escape(end.stop)) if end.by_next_header else None
    for start, content_end in starts:
        found = next_header.match(text, content_end) if next_header else None
        if found:  # the turn ends where the next speaker's header does (Vicuna's "ASSISTANT:")
            stop = found.end()
        elif end.rendered and text.startswith(end.rendered, content_end):
            stop = content_end + len(end.rendered)
        else:  # the last turn of a template that closes a turn only when another follows
            stop = content_end
        spans.append((start, stop))
    return text, spans


__all__ = ["BUILTIN_TEMPLATES", "ChatFormat", "ChatTemplateError", "Fitted", "TurnEnd", "apply_template",
           "gguf_metadata_keys", "has_template", "is_builtin", "local_template_state", "loss_spans", "template_text"]
