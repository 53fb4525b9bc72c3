"""vLLM engines of one step: one per model, shared between roles, GPU memory split, shut down at the end.

A vLLM engine takes a fixed share of the GPU when it starts (``gpu_memory_utilization``: weights, then
as much KV cache as fits). So the bookkeeping a step needs is:

* **one engine per model**: two roles (simulator and answerer) or two backends naming the same model
  (same folder, tensor parallelism and dtype) get the same engine, counted by reference;
* **a split** when different engines must be up together: each gets its requested share divided by the
  number of engines that coexist (:func:`split_memory`; two at the default 0.9 get 0.45 each), so the
  second never finds the GPU already taken by the first;
* **shutdown** when the last user lets go (a measure ends, or the step does): the engine is stopped
  (``LLM.shutdown()`` where vLLM has it, else its V1 engine core's ``shutdown()``), dropped, and once no
  engine is left, vLLM's ``cleanup_dist_env_and_memory()`` (model-parallel groups, ``gc.collect()``,
  ``torch.cuda.empty_cache()``) frees the GPU for the next step, a training step or a benchmark model;
* the **seed**: every engine starts with the recipe's seed (``LLM(seed=...)``).

vLLM itself is imported only when an engine is made (``factory``), so this is tested with a fake engine.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from realchat.errors import RealChatError


@dataclass(frozen=True)
class EngineSpec:
    """One engine as a step asks for it."""

    #: The resolved model folder or Hub id.
    model: str
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    #: The share of GPU memory the recipe asked for (before any split).
    gpu_memory_utilization: float = 0.9
    seed: int | None = None

    @property
    def key(self) -> tuple[str, int, str]:
        """What makes two requests the same engine (memory share and seed do not)."""
        return (self.model, self.tensor_parallel_size, self.dtype)


def split_memory(requested: dict[Any, float]) -> dict[Any, float]:
    """Each engine's share when these engines (key → requested share) are up together: its request
    divided by their number, so the shares add up to at most the largest request. Pure."""
    n = max(len(requested), 1)
    return {k: round(v / n, 4) for k, v in requested.items()}


def vllm_factory(**kwargs: Any) -> Any:
    """vLLM's offline engine (``pip install 'realchat-usersim[vllm]'``; a GPU)."""
    try:
        from vllm import LLM
    except ImportError:
        raise RealChatError("backend kind: vllm needs the vllm package (pip install 'realchat-usersim[vllm]')",
                            field="kind") from None
    return LLM(**kwargs)


def shutdown_engine(llm: Any) -> None:
    """Stop one engine's workers (its engine-core process, its KV cache)."""
    stop = getattr(llm, "shutdown", None)
    if callable(stop):
        stop()
        return
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and callable(getattr(core, "shutdown", None)):
        core.shutdown()


def free_gpu_memory() -> None:
    """After the last engine: vLLM's own cleanup (model-parallel groups, distributed env, caches), else
    torch's cache; both after a ``gc.collect()`` so the dropped engine's tensors are really gone."""
    gc.collect()
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    except ImportError:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return
    cleanup_dist_env_and_memory()


@dataclass
class _Live:
    engine: Any
    users: int
    requested: float
    share: float


@dataclass
class Engines:
    """The engines of one step (or one measure), with their users counted."""

    # looked up when the pool is made (not when this module is imported), so a test can swap in a fake
    factory: Callable[..., Any] = field(default_factory=lambda: vllm_factory)
    shutdown: Callable[[Any], None] = field(default_factory=lambda: shutdown_engine)
    free: Callable[[], None] = field(default_factory=lambda: free_gpu_memory)
    _live: dict[tuple[str, int, str], _Live] = field(default_factory=dict)
    _expected: dict[tuple[str, int, str], float] = field(default_factory=dict)
    #: What happened, in order (``start``/``share``/``stop``/``free``): the step's stats and the tests read it.
    events: list[tuple[str, Any]] = field(default_factory=list)

    def expect(self, specs: Iterable[EngineSpec]) -> None:
        """Engines the step will hold at the same time (its roles): the split counts them from the
        first engine on, before any of them has taken its memory."""
        for s in specs:
            self._expected[s.key] = max(self._expected.get(s.key, 0.0), s.gpu_memory_utilization)

    def share_for(self, spec: EngineSpec) -> float:
        """The memory share a new engine for ``spec`` gets: its request split over every engine up or
        expected alongside it (an engine already up keeps the share it started with)."""
        requested = dict(self._expected)
        for k, live in self._live.items():
            requested[k] = max(requested.get(k, 0.0), live.requested)
        requested[spec.key] = max(requested.get(spec.key, 0.0), spec.gpu_memory_utilization)
        return split_memory(requested)[spec.key]

    def acquire(self, spec: EngineSpec) -> Any:
        """The engine for ``spec``: the running one for the same model, else a new one with its share."""
        live = self._live.get(spec.key)
        if live is not None:
            live.users += 1
            self.events.append(("share", spec.model))
            return live.engine
        share = self.share_for(spec)
        engine = self.factory(model=spec.model, tensor_parallel_size=spec.tensor_parallel_size, dtype=spec.dtype,
                              gpu_memory_utilization=share, seed=spec.seed)
        self._live[spec.key] = _Live(engine, 1, spec.gpu_memory_utilization, share)
        self.events.append(("start", (spec.model, share)))
        return engine

    def release(self, spec: EngineSpec) -> None:
        """One user is done; the last one stops the engine, and with no engine left the GPU is freed."""
        live = self._live.get(spec.key)
        if live is None:
            return
        live.users -= 1
        if live.users > 0:
            return
        del self._live[spec.key]
        self._expected.pop(spec.key, None)
        try:
            self.shutdown(live.engine)
        finally:
            self.events.append(("stop", spec.model))
            live.engine = None
            if not self._live:
                self.free()
                self.events.append(("free", None))

    def close(self) -> None:
        """The step ended: every engine stops (the newest first), then the GPU is freed."""
        for key in reversed(list(self._live)):
            live = self._live[key]
            live.users = 1
            self.release(EngineSpec(*key))
        self._expected.clear()

    @property
    def running(self) -> int:
        return len(self._live)
