"""Text generation backends for simulation and benchmarks: local transformers, OpenAI-compatible
endpoints, vLLM's offline engine.

All three take a *batch* of requests and return one result per request, so the simulator can advance
many conversations together: local models run one left-padded ``generate`` per batch (KV cache on),
endpoints get concurrent requests (bounded), vLLM schedules the whole batch itself.

A result is ``Generation(text, tokens, error)``: a request that failed after its retries carries the
error instead of raising, so one bad endpoint answer fails one conversation, not the step.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import Field

from realchat.errors import ModelError, RealChatError
from realchat.recipe.base import DEFAULT_MODEL, SamplingParams, Strict
from realchat.recipe.refs import ModelRef


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
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI, llama.cpp server)."""

    #: Which backend: `local` (transformers on this machine), `openai` (an endpoint) or `vllm`.
    kind: Literal["openai"] = "openai"
    #: The endpoint's base URL, e.g. `https://api.openai.com/v1` or `http://localhost:8000/v1`.
    base_url: str
    #: The model name the server knows (not a reference: the server owns the weights).
    model: str
    #: Name of the environment variable holding the key (the key itself never enters the recipe).
    api_key_env: str = "OPENAI_API_KEY"
    #: Requests in flight at once.
    max_concurrency: int = Field(8, ge=1)
    #: Seconds before a request is abandoned (and retried).
    timeout_s: float = Field(60, gt=0)
    #: Retries of a failed request, with exponential backoff.
    max_retries: int = Field(3, ge=0)


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
#: Backends that run a model this process renders prompts for (a simulator needs its own prompt).
TemplateBackend = Annotated[Union[LocalBackend, VLLMBackend], Field(discriminator="kind")]


@dataclass
class Generation:
    text: str
    tokens: int = 0
    error: str | None = None


class TemplateModel:
    """A model whose prompts this process renders with its tokenizer's chat template (local, vLLM)."""

    tokenizer: Any

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: list[str], sampling: SamplingParams) -> list[Generation]:
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

    def generate(self, prompts: list[str], sampling: SamplingParams) -> list[Generation]:
        import torch

        out: list[Generation] = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i : i + self.batch_size]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, use_cache=True,
                                          pad_token_id=self.tokenizer.pad_token_id,
                                          eos_token_id=self.tokenizer.eos_token_id,
                                          repetition_penalty=sampling.repetition_penalty)
            if sampling.temperature > 0:
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            else:
                kwargs.update(do_sample=False)
            with torch.inference_mode():
                gen = self.model.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1]:]
            for row in new:
                ids = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
                if self.tokenizer.eos_token_id in ids:
                    ids = ids[: ids.index(self.tokenizer.eos_token_id)]
                out.append(Generation(self.tokenizer.decode(ids, skip_special_tokens=True), len(ids)))
        return out


class OpenAIChat:
    """An OpenAI-compatible ``/chat/completions`` endpoint: concurrent requests, retries, backoff.

    The API key is read from the environment variable the recipe names and only ever sent in the
    ``Authorization`` header; errors are reported without it.
    """

    def __init__(self, cfg: OpenAIBackend) -> None:
        self.cfg = cfg
        self.key = os.environ.get(cfg.api_key_env, "")
        self.name = f"{cfg.model} @ {cfg.base_url}"
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"

    def _one(self, messages: list[dict[str, str]], sampling: SamplingParams) -> Generation:
        import requests

        body = {"model": self.cfg.model, "messages": messages, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens}
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        error = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random()))
            try:
                r = requests.post(self.url, json=body, headers=headers, timeout=self.cfg.timeout_s)
            except requests.RequestException as e:
                error = f"{type(e).__name__}: {str(e)[:200]}"
                continue
            if r.status_code in (429,) or r.status_code >= 500:
                error = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code != 200:
                return Generation("", error=f"HTTP {r.status_code}: {r.text[:200]}")
            try:
                data = r.json()
                text = data["choices"][0]["message"]["content"]
                if not isinstance(text, str):
                    raise TypeError("content is not a string")
            except (ValueError, KeyError, IndexError, TypeError) as e:
                error = f"unusable answer ({type(e).__name__}: {e}): {r.text[:200]}"
                continue
            tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
            return Generation(text, tokens)
        return Generation("", error=f"failed after {self.cfg.max_retries + 1} attempts: {error}")

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingParams) -> list[Generation]:
        with ThreadPoolExecutor(max_workers=self.cfg.max_concurrency) as pool:
            return list(pool.map(lambda c: self._one(c, sampling), conversations))


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

    def generate(self, prompts: list[str], sampling: SamplingParams) -> list[Generation]:
        from vllm import SamplingParams as VSampling

        params = VSampling(temperature=sampling.temperature, top_p=sampling.top_p,
                           max_tokens=sampling.max_new_tokens, repetition_penalty=sampling.repetition_penalty)
        return [Generation(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in self.llm.generate(prompts, params)]
