"""Text generation backends for simulation and benchmarks: local transformers, OpenAI-compatible
endpoints, vLLM's offline engine.

All three take a *batch* of requests and return one result per request, so the simulator can advance
many conversations together: local models run one left-padded ``generate`` per batch (KV cache on),
endpoints get concurrent requests (bounded), vLLM schedules the whole batch itself.

A result is ``Generation(text, tokens, error, finish_reason, stop, prompt_tokens)``: a request that failed after its retries
carries the (redacted) error instead of raising, so one bad endpoint answer fails one conversation,
not the step; ``finish_reason`` says whether the model ended its turn or was cut at the token limit.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import Field

from realchat.errors import ModelError, RealChatError
from realchat.models.chat_formats import ChatFormat, apply_template
from realchat.recipe.base import DEFAULT_MODEL, SamplingParams, Strict
from realchat.recipe.refs import ChatTemplateRef, ModelRef
from realchat.redact import redact, register_secret_env, scrub


# -- configs (what a recipe writes under answerer:, simulator_backend:, judge:, backend:) ---------------


class LocalBackend(Strict):
    """A transformers model on this machine: left-padded batched ``generate`` with KV cache."""

    #: Which backend: `local` (transformers on this machine), `openai` (an endpoint) or `vllm`.
    kind: Literal["local"] = "local"
    #: A step name (an sft step's model), a folder, a ``.gguf`` file, ``pkg://`` or a Hub id.
    model: ModelRef = DEFAULT_MODEL
    #: The model's chat format: a built-in name (`vicuna`, `chatml`, `llama-2`, `llama-3`, `mistral`,
    #: `gemma`, `phi-3`) or a Jinja file; null = the tokenizer's own (required when it has none).
    chat_template: ChatTemplateRef | None = None
    #: Conversations advanced together per generate call.
    batch_size: int = Field(16, ge=1)


class OpenAIBackend(Strict):
    """Any OpenAI-compatible server (OpenAI, vLLM, TGI, llama.cpp, ``transformers serve``).

    As answerer or judge it gets chat completions. As the simulator it gets *text* completions of the
    prompt RealChat renders with ``tokenizer``'s chat template (the flipped conversation opened at a
    user turn), since a chat endpoint cannot be asked to write the user's turn.
    """

    #: Which backend: `local` (transformers on this machine), `openai` (an endpoint) or `vllm`.
    kind: Literal["openai"] = "openai"
    #: The endpoint's base URL, e.g. `https://api.openai.com/v1` or `http://localhost:8000/v1`.
    base_url: str
    #: The model name the server knows (not a reference: the server owns the weights).
    model: str
    #: Name of the environment variable holding the key (the key itself never enters the recipe; its
    #: value is redacted from everything RealChat writes or prints, model answers included).
    api_key_env: str = "OPENAI_API_KEY"
    #: The served model's tokenizer (a step, folder or Hub id): renders the simulator's prompt and
    #: counts its context. Required when this backend plays the simulator.
    tokenizer: ModelRef | None = None
    #: The served model's chat format for prompts rendered here (with `tokenizer`): a built-in name or
    #: a Jinja file; null = the tokenizer's own. Chat completions use the server's template.
    chat_template: ChatTemplateRef | None = None
    #: Send prompts rendered here as token ids (a token list as `prompt` on `/v1/completions`: vLLM,
    #: llama.cpp and OpenAI servers take one), exactly what the model must see. false: as text, with a
    #: BOS the template writes left out, since the server adds its own (`transformers serve` takes text
    #: only).
    prompt_token_ids: bool = False
    #: Requests in flight at once.
    max_concurrency: int = Field(8, ge=1)
    #: The most one attempt of a request may take, seconds: connecting to the answer's last byte (a
    #: server that sends a byte now and then is cut there, not only one that goes silent); each retry
    #: has a deadline of its own.
    timeout_s: float = Field(60, gt=0)
    #: Connect timeout, seconds.
    connect_timeout_s: float = Field(10, gt=0)
    #: Retries of a failed request (connection errors, 408/409/429/5xx), by the ``openai`` client,
    #: which waits as the server's ``Retry-After`` says, else backs off exponentially.
    max_retries: int = Field(3, ge=0)
    #: Extra request fields the server understands (e.g. vLLM's ``top_k``, ``transformers serve``'s
    #: ``generation_config``), sent as they are.
    extra_body: dict[str, Any] = Field(default_factory=dict)
    #: Send chat completions (answerer, intent summariser, judge) through OpenAI's Batch API: each
    #: batch of requests uploaded as one file, polled until done, at the Batch API's price (see
    #: `prices.batch_share`). The batch's id is kept in the step's work folder, so a rerun after a
    #: crash re-attaches to it instead of paying again. Text completions (a served simulator) are sent
    #: as usual.
    batch: bool = False
    #: With `batch`: seconds between two looks at a submitted batch.
    batch_poll_s: float = Field(30, gt=0)
    #: With `batch`: the Batch API's completion window.
    batch_window: Literal["24h"] = "24h"


class VLLMBackend(Strict):
    """vLLM's offline engine (the ``vllm`` extra; GPU)."""

    #: Which backend: `local` (transformers on this machine), `openai` (an endpoint) or `vllm`.
    kind: Literal["vllm"] = "vllm"
    #: A step name (an sft step's model), a folder or a Hub id.
    model: ModelRef
    #: The model's chat format: a built-in name or a Jinja file; null = the tokenizer's own.
    chat_template: ChatTemplateRef | None = None
    #: GPUs the model is split over.
    tensor_parallel_size: int = Field(1, ge=1)
    #: Share of GPU memory vLLM may take (0-1).
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    #: Weights' dtype as vLLM takes it (`auto`, `bfloat16`, `float16`).
    dtype: str = "auto"


#: Any backend, chosen by ``kind``.
Backend = Annotated[Union[LocalBackend, OpenAIBackend, VLLMBackend], Field(discriminator="kind")]
#: Backends that can play the simulator (it needs its own prompt): local and vLLM render it here, an
#: OpenAI-compatible server gets it rendered with ``tokenizer`` as a text completion.
TemplateBackend = Backend


@dataclass
class Generation:
    text: str
    tokens: int = 0
    error: str | None = None
    #: ``stop`` (the model ended its turn) or ``length`` (cut at ``max_new_tokens``); None when unknown.
    finish_reason: str | None = None
    #: What ended the turn, where known: the turn end (``[/INST]``, ``<|im_end|>``, ``</s>``, …).
    stop: str | None = None
    #: Tokens of the prompt the model read: the server's ``usage.prompt_tokens``, or the ids fed to a
    #: local or vLLM model (``tokens`` is the completion's). Counted per role by
    #: :class:`~realchat.models.usage.Meter`.
    prompt_tokens: int = 0

    def __post_init__(self) -> None:
        # every model's words enter RealChat here: a server echoing its API key (or any known secret)
        # into an answer must not carry it into the data, the exports or the card
        self.text = scrub(self.text) if isinstance(self.text, str) else self.text
        self.error = redact(self.error)


#: Per prompt, strings the model must not write (e.g. the simulator's end marker before its first
#: question); ``None`` or an empty list = nothing banned.
BadWords = list[list[str]] | None


class TemplateModel:
    """A model whose prompts this process renders with its chat template (local, vLLM, or a served
    model whose tokenizer the recipe names), through its :class:`ChatFormat`: conversations laid out
    so the template accepts them, turns opened without fake messages, generation stopped at the turn
    end of the role being written, prompts encoded with exactly one BOS."""

    tokenizer: Any
    format: ChatFormat
    #: Whether ``generate`` enforces ``bad_words`` while decoding (else callers resample).
    bans_words = True
    #: Called with the number of tokens generated as they are (a decode step of a local batch, a
    #: finished request of a served one): the step's progress while a long generation runs.
    on_tokens: Callable[[int], None] | None = None

    def _use_format(self, template: str | None, what: str, log: Any = None) -> None:
        apply_template(self.tokenizer, template, what)
        self.format = ChatFormat.of(self.tokenizer, log)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.format.render(messages, add_generation_prompt)

    def open_turn(self, messages: list[dict[str, str]], role: str = "user") -> str:
        """The prompt that has the model write the next ``role`` turn after ``messages``."""
        return self.format.open_turn(messages, role)

    def count(self, text: str) -> int:
        """Tokens of a text alone (no BOS): a turn's length."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens of a rendered prompt as the model sees it (one BOS included): the context budget."""
        return len(self.format.encode(prompt))

    def generate(self, prompts: list[str], sampling: SamplingParams, bad_words: BadWords = None,
                 role: str = "assistant") -> list[Generation]:
        """Continue each prompt with a ``role`` turn, stopped at that role's turn end."""
        raise NotImplementedError

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingParams,
             answer_prefix: str = "") -> list[Generation]:
        """Answer each conversation; ``answer_prefix`` opens the answer (the model continues it, and
        the returned text starts with it): a small local judge can be made to give its verdict in
        FastChat's format right away."""
        gens = self.generate([self.render(c) + answer_prefix for c in conversations], sampling)
        if answer_prefix:
            for g in gens:
                g.text = answer_prefix + g.text
        return gens

    def finish(self, text: str, role: str, finish_reason: str | None, tokens: int,
               stopped_by: str | None = None, prompt_tokens: int = 0) -> Generation:
        """A generated turn cut at its turn end (only the stop and what follows it go)."""
        text, found = self.format.end_of_turn(text, role)
        stop = found or stopped_by
        if stop is not None:
            finish_reason = "stop"
        return Generation(text, tokens, finish_reason=finish_reason, stop=stop, prompt_tokens=prompt_tokens)


def _groups(n: int, bad_words: BadWords) -> dict[tuple[str, ...], list[int]]:
    """Prompt indices grouped by their banned strings (one decode call per group)."""
    out: dict[tuple[str, ...], list[int]] = {}
    for i in range(n):
        key = tuple(sorted(set(bad_words[i]))) if bad_words and bad_words[i] else ()
        out.setdefault(key, []).append(i)
    return out


class LocalModel(TemplateModel):
    """A transformers causal LM on this machine (CPU or one GPU)."""

    def __init__(self, path: str, batch_size: int = 16, chat_template: str | None = None, log: Any = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        except OSError as e:
            raise ModelError(f"cannot load model {path}: {e}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._use_format(chat_template, path, log)
        self.batch_size = batch_size
        self.name = path

    def bad_words_ids(self, words: tuple[str, ...]) -> list[list[int]] | None:
        """Token sequences of each banned string as it may appear after text or at a turn's start
        (tokenizers merge a leading space or newline into the first piece)."""
        seqs: list[list[int]] = []
        for w in words:
            for variant in (w, " " + w, "\n" + w):
                ids = self.tokenizer(variant, add_special_tokens=False)["input_ids"]
                if ids and ids not in seqs:
                    seqs.append(ids)
        return seqs or None

    def generate(self, prompts: list[str], sampling: SamplingParams, bad_words: BadWords = None,
                 role: str = "assistant") -> list[Generation]:
        out: list[Generation | None] = [None] * len(prompts)
        for words, idx in _groups(len(prompts), bad_words).items():
            banned = self.bad_words_ids(words)
            for k in range(0, len(idx), self.batch_size):
                chunk = idx[k : k + self.batch_size]
                for i, g in zip(chunk, self._generate([prompts[i] for i in chunk], sampling, banned, role)):
                    out[i] = g
        return out  # type: ignore[return-value]

    def encode_batch(self, prompts: list[str]) -> dict[str, Any]:
        """Left-padded ``input_ids`` and ``attention_mask`` of rendered prompts, each encoded as the
        model must see it (:meth:`ChatFormat.encode`: one BOS, the template's special tokens)."""
        return self.tokenizer.pad({"input_ids": [self.format.encode(p) for p in prompts]}, padding=True,
                                  return_tensors="pt")

    def _generate(self, chunk: list[str], sampling: SamplingParams, bad_words_ids: list[list[int]] | None,
                  role: str) -> list[Generation]:
        import torch

        enc = self.encode_batch(chunk).to(self.device)
        stop_ids = self.format.stop_token_ids(role)
        stop_texts = self.format.multi_token_stops(role)
        kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, use_cache=True,
                                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=stop_ids,
                                      repetition_penalty=sampling.repetition_penalty)
        if stop_texts:  # a turn end that is several tokens (Llama-2's "[/INST]" on LLaMA's vocabulary)
            kwargs.update(stop_strings=stop_texts, tokenizer=self.tokenizer)
        if bad_words_ids:
            kwargs["bad_words_ids"] = bad_words_ids
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        if self.on_tokens is not None:
            kwargs["streamer"] = _DecodeTicker(self.on_tokens)
        with torch.inference_mode():
            gen = self.model.generate(**enc, **kwargs)
        out = []
        prompt_lengths = enc["attention_mask"].sum(dim=1).tolist()  # the prompt's ids, padding left out
        for row, read in zip(gen[:, enc["input_ids"].shape[1]:].tolist(), prompt_lengths):
            end = next((j for j, t in enumerate(row) if t in stop_ids), None)
            if end is not None:  # the model ended its turn; what follows is padding
                ids, reason = row[:end], "stop"
                stopped_by = self.tokenizer.convert_ids_to_tokens(row[end])
            else:
                ids = [t for t in row if t != self.tokenizer.pad_token_id]
                reason, stopped_by = ("length" if len(row) >= sampling.max_new_tokens else "stop"), None
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            out.append(self.finish(text, role, reason, len(ids), stopped_by, prompt_tokens=int(read)))
        return out


class _DecodeTicker:
    """A ``generate`` streamer that only counts: each decode step hands it one new token per row (the
    first call is the prompt). Rows that already stopped count too: a heartbeat, not a tally."""

    def __init__(self, on_tokens: Callable[[int], None]) -> None:
        self.on_tokens = on_tokens
        self.prompt = True

    def put(self, value: Any) -> None:
        if self.prompt:
            self.prompt = False
            return
        self.on_tokens(int(value.numel()))

    def end(self) -> None:
        pass


class OpenAIChat(TemplateModel):
    """An OpenAI-compatible server through the ``openai`` client (``AsyncOpenAI``).

    ``chat`` sends chat completions (answerer, judge); ``generate`` sends text completions of prompts
    rendered here (the simulator), which needs the served model's tokenizer. A batch runs as
    concurrent requests, at most ``max_concurrency`` in flight; the client retries what is worth
    retrying (honouring ``Retry-After``) with connect and read timeouts. A request that still fails
    returns a :class:`Generation` carrying the error, redacted: the API key and anything
    credential-shaped never reach a stored or printed error.
    """

    bans_words = False  # no portable way to ban a multi-token string on a server: callers resample

    def __init__(self, cfg: OpenAIBackend, tokenizer_path: str | None = None, chat_template: str | None = None,
                 log: Any = None, batch_dir: Path | None = None) -> None:
        """``batch_dir``: where ``batch: true`` keeps the ids of its batches (the step's work folder)."""
        self.cfg = cfg
        self.log = log or (lambda s: None)
        self.batch_dir = batch_dir
        register_secret_env(cfg.api_key_env)
        self.key = os.environ.get(cfg.api_key_env, "")
        self.name = f"{cfg.model} @ {cfg.base_url}"
        self.tokenizer = None
        if tokenizer_path is not None:
            from transformers import AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
            except OSError as e:
                raise ModelError(f"cannot load tokenizer {tokenizer_path}: {e}") from None
            self._use_format(chat_template, tokenizer_path, log)

    def _needs_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise RealChatError("a served simulator needs its model's tokenizer to render its prompt",
                                field="tokenizer", hint="set tokenizer: <the served model's folder or Hub id>")

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        self._needs_tokenizer()
        return super().render(messages, add_generation_prompt)

    def open_turn(self, messages: list[dict[str, str]], role: str = "user") -> str:
        self._needs_tokenizer()
        return super().open_turn(messages, role)

    def count(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text.split())
        return super().count(text)

    def prompt_tokens(self, prompt: str) -> int:
        if self.tokenizer is None:
            return len(prompt.split())
        return super().prompt_tokens(prompt)

    # -- requests ---------------------------------------------------------------------------------

    def _client(self) -> Any:
        from openai import AsyncOpenAI, Timeout

        from realchat.models.deadline import deadline_client

        timeout = Timeout(self.cfg.timeout_s, connect=self.cfg.connect_timeout_s)
        # timeout_s is each attempt's total: httpx's read timeout alone bounds each chunk, not the answer
        return AsyncOpenAI(base_url=self.cfg.base_url, api_key=self.key or "none",
                           max_retries=self.cfg.max_retries, timeout=timeout,
                           http_client=deadline_client(self.cfg.timeout_s, timeout=timeout))

    def _error(self, e: BaseException) -> str:
        import openai

        if isinstance(e, openai.APIStatusError):
            body = e.response.text if e.response is not None else str(e)
            text = f"HTTP {e.status_code}: {body[:300]}"
        elif isinstance(e, openai.APITimeoutError):
            text = f"timed out after {self.cfg.timeout_s:g} s (read) / {self.cfg.connect_timeout_s:g} s (connect)"
        elif isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e
            text = f"cannot connect to {self.cfg.base_url}: {type(cause).__name__}: {str(cause)[:200]}"
        else:
            text = f"unusable answer ({type(e).__name__}: {str(e)[:300]})"
        if isinstance(e, openai.APIError) and self.cfg.max_retries:
            refused = _retry_after_refused(e.response) if isinstance(e, openai.APIStatusError) else None
            if refused is not None:
                text = (f"not retried (the server asked to wait {refused:g} s, longer than the client waits): "
                        f"{text}")
            elif _retried(e):
                text = f"failed after {self.cfg.max_retries + 1} attempts: {text}"
        return redact(text, [self.key]) or ""

    async def _run(self, make: Any, items: list[Any]) -> list[Generation]:
        sem = asyncio.Semaphore(self.cfg.max_concurrency)
        client = self._client()

        async def one(item: Any) -> Generation:
            async with sem:
                try:
                    g = await make(client, item)
                except Exception as e:  # noqa: BLE001 -- one failed request fails one conversation
                    return Generation("", error=self._error(e))
                if self.on_tokens is not None:
                    self.on_tokens(g.tokens)
                return g

        try:
            return list(await asyncio.gather(*(one(it) for it in items)))
        finally:
            await client.close()

    def _body(self, sampling: SamplingParams) -> dict[str, Any]:
        return dict(model=self.cfg.model, temperature=sampling.temperature, top_p=sampling.top_p,
                    max_tokens=sampling.max_new_tokens, extra_body=self.cfg.extra_body or None)

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingParams,
             answer_prefix: str = "") -> list[Generation]:
        """Chat completions. An ``answer_prefix`` needs the answer opened for the model, which chat
        endpoints do not offer: with ``tokenizer`` set it becomes a text completion of the rendered
        conversation plus the prefix; without, the prefix is not used (the model writes it)."""
        if answer_prefix and self.tokenizer is not None:
            return super().chat(conversations, sampling, answer_prefix)
        if self.cfg.batch:
            return self._batch_chat(conversations, sampling)

        async def make(client: Any, messages: list[dict[str, str]]) -> Generation:
            r = await client.chat.completions.create(messages=messages, **self._body(sampling))
            choice = r.choices[0]
            if not isinstance(choice.message.content, str):
                raise TypeError("the answer has no text content")
            return Generation(choice.message.content, _usage(r)[1], finish_reason=choice.finish_reason,
                              prompt_tokens=_usage(r)[0])

        return _run_async(self._run(make, conversations))

    def _batch_chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingParams) -> list[Generation]:
        """Chat completions through the Batch API (:mod:`realchat.models.batch_api`), one batch for the list."""
        from openai import OpenAI, Timeout

        from realchat.models import cache_dir
        from realchat.models.batch_api import run_batch

        if not conversations:
            return []
        body = {k: v for k, v in self._body(sampling).items() if k != "extra_body"}
        bodies = [{**body, **(self.cfg.extra_body or {}), "messages": c} for c in conversations]
        client = OpenAI(base_url=self.cfg.base_url, api_key=self.key or "none", max_retries=self.cfg.max_retries,
                        timeout=Timeout(self.cfg.timeout_s, connect=self.cfg.connect_timeout_s))
        try:
            outcomes = run_batch(client, bodies, self.batch_dir or cache_dir() / "batches", self.cfg.base_url,
                                 self.cfg.batch_window, self.cfg.batch_poll_s, self.log)
        except Exception as e:  # noqa: BLE001 -- the batch could not be submitted or read: every request failed
            return [Generation("", error=self._error(e)) for _ in conversations]
        finally:
            client.close()
        out = []
        for o in outcomes:
            if "error" in o:
                out.append(Generation("", error=redact(o["error"], [self.key]) or ""))
                continue
            choice = (o["body"].get("choices") or [{}])[0]
            text = (choice.get("message") or {}).get("content")
            usage = o["body"].get("usage") or {}
            out.append(Generation(text, int(usage.get("completion_tokens") or 0), finish_reason=choice.get("finish_reason"),
                                  prompt_tokens=int(usage.get("prompt_tokens") or 0)) if isinstance(text, str)
                       else Generation("", error="unusable answer (the answer has no text content)"))
        if self.on_tokens is not None:
            self.on_tokens(sum(g.tokens for g in out))
        return out

    def generate(self, prompts: list[str], sampling: SamplingParams, bad_words: BadWords = None,
                 role: str = "assistant") -> list[Generation]:
        """Text completions of prompts rendered here, stopped at ``role``'s turn end (``stop``; at most
        four strings, as OpenAI's API allows), each prompt sent as token ids or as text with the BOS
        the server adds left out (``prompt_token_ids``), so the model sees one BOS either way."""
        self._needs_tokenizer()
        stops = self.format.stop_strings(role)[:4]
        payloads: list[Any] = [self.format.encode(p) if self.cfg.prompt_token_ids else self.format.text_for_server(p)
                               for p in prompts]

        async def make(client: Any, prompt: Any) -> Generation:
            r = await client.completions.create(prompt=prompt, stop=stops, **self._body(sampling))
            choice = r.choices[0]
            if not isinstance(choice.text, str):
                raise TypeError("the completion has no text")
            read, wrote = _usage(r)
            return self.finish(choice.text, role, choice.finish_reason, wrote, prompt_tokens=read)

        return _run_async(self._run(make, payloads))


def _retry_after_refused(response: Any) -> float | None:
    """The wait a server asked for (``Retry-After``/``Retry-After-Ms``) when it is longer than the
    ``openai`` client waits, which then makes no second attempt; None otherwise."""
    from openai._constants import MAX_RETRY_AFTER_DELAY

    headers = getattr(response, "headers", None) or {}
    for header, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            wait = float(headers.get(header)) / divisor
        except (TypeError, ValueError):
            continue
        return wait if wait > MAX_RETRY_AFTER_DELAY else None
    return None


def _retried(e: BaseException) -> bool:
    """Whether the ``openai`` client retried the failed request (its rules: connection errors and
    timeouts, 408/409/429/5xx unless the server's ``x-should-retry`` says otherwise)."""
    import openai

    if not isinstance(e, openai.APIStatusError):
        return True
    should = (getattr(e.response, "headers", None) or {}).get("x-should-retry")
    if should in ("true", "false"):
        return should == "true"
    return e.status_code >= 500 or e.status_code in (408, 409, 429)


def _usage(response: Any) -> tuple[int, int]:
    """(prompt, completion) tokens as the server reports them in ``usage`` (0 where it does not)."""
    usage = getattr(response, "usage", None)
    return int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)


def _run_async(coro: Any) -> Any:
    """Run a coroutine to its end from synchronous code (also when a loop is already running, as in
    a notebook: then on a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class VLLMModel(TemplateModel):
    """vLLM's offline engine (``pip install 'realchat-usersim[vllm]'``; a GPU). Prompts go in as token ids
    (``TokensPrompt``), never as text vLLM would tokenize again with a second BOS."""

    def __init__(self, cfg: VLLMBackend, path: str, chat_template: str | None = None, log: Any = None,
                 engines: Any = None, seed: int | None = None) -> None:
        """The engine comes from the step's :class:`~realchat.models.engines.Engines` (one per model,
        memory split, shut down with the step); alone (no ``engines``), from a pool of its own."""
        from realchat.models.engines import Engines, EngineSpec

        self.engines = engines if engines is not None else Engines()
        self.spec = EngineSpec(path, cfg.tensor_parallel_size, cfg.dtype, cfg.gpu_memory_utilization, seed)
        #: The recipe's seed: the engine starts with it. Not per request: identical prompts (free-mode first
        #: questions) would then all draw the same sample.
        self.seed = seed
        self.llm = self.engines.acquire(self.spec)
        self.tokenizer = self.llm.get_tokenizer()
        self._use_format(chat_template, path, log)
        self.name = path

    def close(self) -> None:
        """This backend is done with its engine (the last user of an engine stops it)."""
        if self.llm is not None:
            self.llm = None
            self.engines.release(self.spec)

    def generate(self, prompts: list[str], sampling: SamplingParams, bad_words: BadWords = None,
                 role: str = "assistant") -> list[Generation]:
        from vllm import SamplingParams as VSampling

        out: list[Generation | None] = [None] * len(prompts)
        for words, idx in _groups(len(prompts), bad_words).items():
            params = VSampling(temperature=sampling.temperature, top_p=sampling.top_p,
                               max_tokens=sampling.max_new_tokens, repetition_penalty=sampling.repetition_penalty,
                               bad_words=list(words) or None, stop=self.format.stop_strings(role),
                               stop_token_ids=self.format.stop_token_ids(role))
            requests = [{"prompt_token_ids": self.format.encode(prompts[i])} for i in idx]
            for i, o in zip(idx, self.llm.generate(requests, params, use_tqdm=False)):
                c = o.outputs[0]
                reason = c.stop_reason  # the stop string, the stop token id, or None (EOS / length)
                stopped_by = (reason if isinstance(reason, str) else
                              self.tokenizer.convert_ids_to_tokens(reason) if isinstance(reason, int) else None)
                out[i] = self.finish(c.text, role, c.finish_reason, len(c.token_ids), stopped_by,
                                     prompt_tokens=len(o.prompt_token_ids or []))
        return out  # type: ignore[return-value]
