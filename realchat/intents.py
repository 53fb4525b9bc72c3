"""Intent conditioning (UserLM, arXiv 2510.06552): a one-sentence goal per conversation in the
simulator's system prompt, at training time (sft, ``loss_on: user``) and at simulation time.

A simulator trained only on "act as the user" has no reason to pursue anything: it drifts, repeats,
or leaves. Given the goal of the real user whose turns it learns, it learns to reveal that goal turn
by turn; at simulation time a goal per session steers it (and evaluate's intent decomposition can
then say how gradually it reveals the goal).

Where intents come from:

* ``column``: the conversations' ``intent`` field (a step output's ``intent`` column, or an
  ``intent`` key of the records of a file the recipe names);
* ``model``: a backend (local, vLLM, endpoint) that summarises each conversation's user goal in one
  sentence with :data:`SUMMARY_PROMPT`, greedy, in batches. Each summary is keyed by its *request*
  (the summarising model, its length limit and the prompt with the conversation in it), not by the
  step, and appended as it comes to ``intents/summaries.jsonl`` in RealChat's cache folder
  (``$REALCHAT_CACHE``), which outlives any work folder: a rerun, a crash, a changed training key
  (``fsdp``), or another step summarising the same held-out conversations (usergpt, sim_free and
  sim_seeded all read them) asks for none again. Each step also keeps the intents it used in its
  output (``intents/intents.jsonl``: id, intent, request key), so they can be audited and reused;
* in simulation also ``file``: one intent per line (``.txt``) or JSONL records with an ``intent`` key.

The template that puts the intent into the system prompt is one string, the same at training and
simulation time: the sft step writes it to its stats (``intent_template``) and simulate reads it
there, as it reads the end marker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from realchat.errors import RealChatError
from realchat.models.backends import Backend
from realchat.recipe.base import SamplingParams, Strict
from realchat.recipe.refs import DatasetRef, FileRef

#: The simulator's system prompt with the conversation's goal; ``{system_prompt}`` and ``{intent}``
#: are replaced (plain replacement: other braces in either text stay as they are).
DEFAULT_INTENT_TEMPLATE = "{system_prompt}\n\nYour goal in this conversation: {intent}"

#: What the summarising model is asked (``{conversation}`` is replaced by the conversation's turns).
SUMMARY_PROMPT = (
    "Here is a conversation between a user and an AI assistant.\n\n{conversation}\n\n"
    "In one sentence, state what the user wants to achieve in this conversation, addressing the user as "
    "\"you\" (for example: \"You want to fix a Python error in your web scraper.\"). Write only that sentence."
)

#: Longest intent kept (characters); a model that rambles is cut here.
MAX_INTENT_CHARS = 300


class IntentSummarizer(Strict):
    """A model that writes each conversation's user goal in one sentence."""

    #: The summarising model: any backend (``local``, ``vllm``, an ``openai`` endpoint).
    backend: Backend
    #: The request; ``{conversation}`` is replaced by the conversation (``User:`` / ``Assistant:`` lines).
    prompt: str = SUMMARY_PROMPT
    #: Longest summary, tokens.
    max_new_tokens: int = Field(48, ge=1)
    #: The conversation is cut to this many characters in the request (fits small context windows).
    max_chars: int = Field(4000, ge=100)
    #: Conversations summarised per batch (each batch is cached before the next starts).
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _has_slot(self) -> "IntentSummarizer":
        if "{conversation}" not in self.prompt:
            raise ValueError("prompt needs a {conversation} slot")
        return self


class IntentTemplate(Strict):
    #: The simulator's system prompt with the intent; ``{system_prompt}`` and ``{intent}`` are replaced.
    template: str = DEFAULT_INTENT_TEMPLATE

    @model_validator(mode="after")
    def _has_intent(self) -> "IntentTemplate":
        if "{intent}" not in self.template:
            raise ValueError("template needs an {intent} slot")
        return self


class TrainIntents(IntentTemplate):
    """Intents of the training conversations (sft ``loss_on: user``)."""

    #: ``column``: the conversations' ``intent`` field; ``model``: summarised by ``summarizer``.
    source: Literal["column", "model"] = "column"
    #: Required for ``source: model``.
    summarizer: IntentSummarizer | None = None

    @model_validator(mode="after")
    def _summarizer_for_model(self) -> "TrainIntents":
        if self.source == "model" and self.summarizer is None:
            raise ValueError("source model needs summarizer: {backend: {kind: …, model: …}}")
        return self


class SimulationIntents(Strict):
    """One intent per simulated session (``simulator: usergpt``), taken in turn from a list."""

    #: ``file``: ``file`` (one per line, or JSONL with an ``intent`` key); ``dataset``: the intents of
    #: real conversations (their ``intent`` field, else summarised by ``summarizer``).
    source: Literal["file", "dataset"] = "file"
    #: Required for ``source: file``: ``.txt`` (one intent per line) or ``.jsonl`` (``{"intent": …}``).
    file: FileRef | None = None
    #: Required for ``source: dataset``, e.g. ``{step: curate, split: held_out}``.
    dataset: DatasetRef | None = None
    #: Summarises the ``dataset`` conversations that carry no intent.
    summarizer: IntentSummarizer | None = None
    #: The template; null = the one the sft step trained with (else the default).
    template: str | None = None

    @model_validator(mode="after")
    def _source_given(self) -> "SimulationIntents":
        if self.source == "file" and self.file is None:
            raise ValueError("source file needs file: a .txt (one intent per line) or .jsonl file")
        if self.source == "dataset" and self.dataset is None:
            raise ValueError("source dataset needs dataset: e.g. {step: curate, split: held_out}")
        if self.template is not None and "{intent}" not in self.template:
            raise ValueError("template needs an {intent} slot")
        return self


def with_intent(template: str, system_prompt: str | None, intent: str | None) -> str | None:
    """The system prompt of one conversation: the template filled, or the plain prompt without an intent."""
    if not intent:
        return system_prompt
    return template.replace("{system_prompt}", system_prompt or "").replace("{intent}", intent).strip()


def clean_summary(text: str) -> str:
    """The summary's first non-empty line, unquoted, at most :data:`MAX_INTENT_CHARS` characters."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return line.strip("\"'").strip()[:MAX_INTENT_CHARS]


def conversation_text(messages: Sequence[dict[str, str]], max_chars: int) -> str:
    lines = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {' '.join(m['content'].split())}"
             for m in messages if m["role"] in ("user", "assistant")]
    return "\n".join(lines)[:max_chars]


def _read_cache(path: Path) -> dict[str, str]:
    """Cached summaries by request key; a torn last line (a crash mid-write) is ignored."""
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
                out[item["key"]] = item["intent"]
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash: that summary is asked again
    return out


def cache_path() -> Path:
    """The summaries of every build on this machine, by request key (see the module doc)."""
    from realchat.models import cache_dir

    return cache_dir() / "intents" / "summaries.jsonl"


def request_key(cfg: IntentSummarizer, request: str) -> str:
    """What makes a summary the same summary: the model that writes it (kind and name; an endpoint's
    address is where it is served, not what it is), its length limit, and the request's text (the
    prompt with the conversation in it). Greedy decoding: the same request gives the same answer."""
    b = cfg.backend
    ident = {"kind": b.kind, "model": str(b.model), "max_new_tokens": cfg.max_new_tokens, "request": request}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def summarize(convs: list[dict[str, Any]], cfg: IntentSummarizer, open_model: Callable[[], Any],
              cache: Path | None = None, log: Callable[[str], None] = lambda s: None,
              meter: Any = None) -> tuple[list[str], int]:
    """(one intent per conversation, summaries written this run). Each request is keyed by
    :func:`request_key`; keys already in ``cache`` (default :func:`cache_path`) are not asked again;
    the model is opened only when some are missing. A request that failed gives an empty intent
    (that conversation goes without). Each conversation gets its ``intent_key``. ``meter``
    (:class:`~realchat.models.usage.Meter`) counts the tokens as ``intent_summarizer`` and may stop
    the summaries between batches on a spent budget (those written stay cached)."""
    cache = cache or cache_path()
    requests = [cfg.prompt.replace("{conversation}", conversation_text(c["messages"], cfg.max_chars)) for c in convs]
    keys = [request_key(cfg, r) for r in requests]
    for c, k in zip(convs, keys):
        c["intent_key"] = k
    done = _read_cache(cache)
    todo = sorted({k: i for i, k in enumerate(keys) if k not in done}.values())
    if todo:
        log(f"intents: summarising {len(todo):,} conversations ({len(convs) - len(todo):,} cached)")
        model = open_model()
        sampling = SamplingParams(temperature=0, max_new_tokens=cfg.max_new_tokens)
        cache.parent.mkdir(parents=True, exist_ok=True)
        if cache.exists() and not cache.read_bytes().endswith(b"\n") and cache.stat().st_size:
            with cache.open("a", encoding="utf-8") as f:  # a torn last line: start on a clean one
                f.write("\n")
        with cache.open("a", encoding="utf-8") as f:
            for k in range(0, len(todo), cfg.batch_size):
                chunk = todo[k : k + cfg.batch_size]
                if meter is not None:
                    meter.check("the intent summaries written so far are kept (cached: a rerun asks only the rest)")
                gens = model.chat([[{"role": "user", "content": requests[i]}] for i in chunk], sampling)
                if meter is not None:
                    meter.record("intent_summarizer", gens)
                for i, g in zip(chunk, gens):
                    if g.error is not None:
                        continue  # not cached: a rerun asks again
                    done[keys[i]] = clean_summary(g.text)
                    f.write(json.dumps({"id": convs[i]["id"], "key": keys[i], "intent": done[keys[i]]},
                                       ensure_ascii=False) + "\n")
                f.flush()
    return [done.get(k, "") for k in keys], len(todo)


def write_intents(out: Path, convs: list[dict[str, Any]], summarizer: IntentSummarizer | None) -> Path | None:
    """``out/intents/intents.jsonl``: the intent each conversation got (id, intent, and the request key
    for summarised ones), the step's auditable record of them; None when no conversation has one."""
    rows = [{"id": c["id"], "intent": c["intent"], **({"key": c["intent_key"]} if c.get("intent_key") else {})}
            for c in convs if c.get("intent")]
    if not rows:
        return None
    path = out / "intents" / "intents.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if summarizer is not None:
        b = summarizer.backend
        meta = {"model": str(b.model), "kind": b.kind, "prompt": summarizer.prompt,
                "max_new_tokens": summarizer.max_new_tokens, "max_chars": summarizer.max_chars}
        (path.parent / "summarizer.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n",
                                                     encoding="utf-8")
    return path


def read_intent_file(path: Path) -> list[str]:
    """Intents of a file: JSONL records with an ``intent`` key (``.jsonl``/``.json``), else one per
    line; blank lines are skipped. A bad record is an error naming the file and line."""
    if not path.is_file():
        raise RealChatError("intent file not found", file=str(path))
    out = []
    jsonl = path.suffix in (".jsonl", ".json")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if not jsonl:
            out.append(line.strip())
            continue
        try:
            item = json.loads(line)
        except ValueError as e:
            raise RealChatError(f"line {n}: not JSON ({e})", file=str(path), field="intent") from None
        if not isinstance(item, dict) or not isinstance(item.get("intent"), str) or not item["intent"].strip():
            raise RealChatError(f"line {n}: expected an object with a non-empty string 'intent'", file=str(path),
                                field="intent")
        out.append(item["intent"].strip())
    if not out:
        raise RealChatError("no intents in the file", file=str(path))
    return out
