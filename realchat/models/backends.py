"""Text generation backends for simulation and benchmarks: local transformers, OpenAI-compatible
endpoints, vLLM's offline engine.

All three take a *batch* of requests and return one result per request, so the simulator can advance
many conversations together: local models run one left-padded ``generate`` per batch (KV cache on),
endpoints get concurrent requests (bounded), vLLM schedules the whole batch itself.

A result is ``Generation(text, tokens, error, finish_reason)``: a request that failed after its retries
carries the (redacted) error instead of raising, so one bad endpoint answer fails one conversation,
not the step; ``finish_reason`` says whether the model ended its turn or was cut at the token limit.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import Field

from realchat.errors import ModelError, RealChatError
from realchat.recipe.base import DEFAULT_MODEL, SamplingParams, Strict
from realchat.recipe.refs import ModelRef
from realchat.redact import redact


# -- configs (what a recipe writes under answerer:, simulator_backend:, judge:, backend:) ---------------


class LocalBackend(Strict):
    """A transformers model on this machine: left-padded batched ``generate`` with KV cache."""

    #: Which backend: `local` (transformers on this machine), `openai` (an endpoint) or `vllm`.
    kind: Literal["local"] = "local"
    #: A step name (an sft step's model), a folder, a ``.gguf`` file, ``pkg://`` or a Hub id.
    model: ModelRef = DEFAULT_MODEL
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
    #: Name of the environment variable holding the key (the key itself never enters the recipe).
    api_key_env: str = "OPENAI_API_KEY"
    #: The served model's tokenizer (a step, folder or Hub id): renders the simulator's prompt and
    #: counts its context. Required when this backend plays the simulator.
    tokenizer: ModelRef | None = None
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


class VLLMBackend(Strict):
    """vLLM's offline engine (the ``vllm`` extra; GPU)."""

    #: Which backend: `local` (transformers on this machine), `openai` (an endpoint) or `vllm`.
    kind: Literal["vllm"] = "vllm"
    #: A step name (an sft step's model), a folder or a Hub id.
    model: ModelRef
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


#: Per prompt, strings the model must not write (e.g. the simulator's end marker before its first
#: question); ``None`` or an empty list = nothing banned.
BadWords = list[list[str]] | None


class TemplateModel:
    """A model whose prompts this process renders with its tokenizer's chat template (local, vLLM,
    or a served model whose tokenizer the recipe names)."""

    tokenizer: Any
    #: Whether ``generate`` enforces ``bad_words`` while decoding (else callers resample).
    bans_words = True

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: list[str], sampling: SamplingParams, bad_words: BadWords = None) -> list[Generation]:
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


def _groups(n: int, bad_words: BadWords) -> dict[tuple[str, ...], list[int]]:
    """Prompt indices grouped by their banned strings (one decode call per group)."""
    out: dict[tuple[str, ...], list[int]] = {}
    for i in range(n):
        key = tuple(sorted(set(bad_words[i]))) if bad_words and bad_words[i] else ()
        out.setdefault(key, []).append(i)
    return out


class LocalModel(TemplateModel):
    """A transformers causal LM on this machine (CPU or one GPU)."""

    def __init__(self, path: str, batch_size: int = 16) -> None:
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

    def generate(self, prompts: list[str], sampling: SamplingParams, bad_words: BadWords = None) -> list[Generation]:
        out: list[Generation | None] = [None] * len(prompts)
        for words, idx in _groups(len(prompts), bad_words).items():
            banned = self.bad_words_ids(words)
            for k in range(0, len(idx), self.batch_size):
                chunk = idx[k : k + self.batch_size]
                for i, g in zip(chunk, self._generate([prompts[i] for i in chunk], sampling, banned)):
                    out[i] = g
        return out  # type: ignore[return-value]

    def _generate(self, chunk: list[str], sampling: SamplingParams,
                  bad_words_ids: list[list[int]] | None) -> list[Generation]:
        import torch

        enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, use_cache=True,
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id,
                                      repetition_penalty=sampling.repetition_penalty)
        if bad_words_ids:
            kwargs["bad_words_ids"] = bad_words_ids
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        with torch.inference_mode():
            gen = self.model.generate(**enc, **kwargs)
        out = []
        eos = self.tokenizer.eos_token_id
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            if eos in row:  # the model ended its turn; what follows is padding
                ids, reason = row[: row.index(eos)], "stop"
            else:
                ids = [t for t in row if t != self.tokenizer.pad_token_id]
                reason = "length" if len(row) >= sampling.max_new_tokens else "stop"
            out.append(Generation(self.tokenizer.decode(ids, skip_special_tokens=True), len(ids),
                                  finish_reason=reason))
        return out


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

    def __init__(self, cfg: OpenAIBackend, tokenizer_path: str | None = None) -> None:
        self.cfg = cfg
        self.key = os.environ.get(cfg.api_key_env, "")
        self.name = f"{cfg.model} @ {cfg.base_url}"
        self.tokenizer = None
        if tokenizer_path is not None:
            from transformers import AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
            except OSError as e:
                raise ModelError(f"cannot load tokenizer {tokenizer_path}: {e}") from None

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if self.tokenizer is None:
            raise RealChatError("a served simulator needs its model's tokenizer to render its prompt",
                                field="tokenizer", hint="set tokenizer: <the served model's folder or Hub id>")
        return super().render(messages, add_generation_prompt)

    def count(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text.split())
        return super().count(text)

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
        retried = not isinstance(e, openai.APIStatusError) or e.status_code >= 500 or e.status_code in (408, 409, 429)
        if retried and isinstance(e, openai.APIError) and self.cfg.max_retries:
            text = f"failed after {self.cfg.max_retries + 1} attempts: {text}"
        return redact(text, [self.key]) or ""

    async def _run(self, make: Any, items: list[Any]) -> list[Generation]:
        sem = asyncio.Semaphore(self.cfg.max_concurrency)
        client = self._client()

        async def one(item: Any) -> Generation:
            async with sem:
                try:
                    return await make(client, item)
                except Exception as e:  # noqa: BLE001 -- one failed request fails one conversation
                    return Generation("", error=self._error(e))

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

        async def make(client: Any, messages: list[dict[str, str]]) -> Generation:
            r = await client.chat.completions.create(messages=messages, **self._body(sampling))
            choice = r.choices[0]
            if not isinstance(choice.message.content, str):
                raise TypeError("the answer has no text content")
            return Generation(choice.message.content, _completion_tokens(r), finish_reason=choice.finish_reason)

        return _run_async(self._run(make, conversations))

    def generate(self, prompts: list[str], sampling: SamplingParams, bad_words: BadWords = None) -> list[Generation]:
        async def make(client: Any, prompt: str) -> Generation:
            r = await client.completions.create(prompt=prompt, **self._body(sampling))
            choice = r.choices[0]
            if not isinstance(choice.text, str):
                raise TypeError("the completion has no text")
            return Generation(choice.text, _completion_tokens(r), finish_reason=choice.finish_reason)

        return _run_async(self._run(make, prompts))


def _completion_tokens(response: Any) -> int:
    usage = getattr(response, "usage", None)
    return int(getattr(usage, "completion_tokens", 0) or 0)


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
    """vLLM's offline engine (``pip install realchat[vllm]``; a GPU)."""

    def __init__(self, cfg: VLLMBackend, path: str) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise RealChatError("backend kind: vllm needs the vllm package (pip install 'realchat[vllm]')",
                                field="kind") from None
        self.llm = LLM(model=path, tensor_parallel_size=cfg.tensor_parallel_size,
                       gpu_memory_utilization=cfg.gpu_memory_utilization, dtype=cfg.dtype)
        self.tokenizer = self.llm.get_tokenizer()
        self.name = path

    def generate(self, prompts: list[str], sampling: SamplingParams, bad_words: BadWords = None) -> list[Generation]:
        from vllm import SamplingParams as VSampling

        out: list[Generation | None] = [None] * len(prompts)
        for words, idx in _groups(len(prompts), bad_words).items():
            params = VSampling(temperature=sampling.temperature, top_p=sampling.top_p,
                               max_tokens=sampling.max_new_tokens, repetition_penalty=sampling.repetition_penalty,
                               bad_words=list(words) or None)
            for i, o in zip(idx, self.llm.generate([prompts[i] for i in idx], params, use_tqdm=False)):
                c = o.outputs[0]
                out[i] = Generation(c.text, len(c.token_ids), finish_reason=c.finish_reason)
        return out  # type: ignore[return-value]
