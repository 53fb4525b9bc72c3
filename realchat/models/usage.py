"""Tokens and money per served role: what each model of a step read and wrote, what it cost, and the
budget that stops the step.

Every generation a backend returns carries its prompt and completion tokens: an OpenAI-compatible
server's own ``usage`` figures (never counted again here), a local or vLLM model's token ids. A step
records them per *role* (``simulator``, ``answerer``, ``intent_summarizer``, ``judge``, a benchmark
model's answers) in a :class:`Meter`, which

* prices them with the recipe's ``prices`` table (per 1M tokens, by the model name the backend
  names; a Batch API request at ``batch_share`` of the price), where the table names the model;
* stops the step (:class:`BudgetReached`) before the next request once ``max_cost`` or
  ``max_tokens_total`` is spent: the step's part file stays, the rerun resumes it;
* keeps what was spent in ``usage.json`` in the step's work folder (atomically, at most a second
  behind, and up to date before each request or batch goes out: a kill while a Batch API batch is
  pending forgets nothing spent before it), so budgets count across resumes: a rerun with a higher budget goes on from what the
  stopped runs spent, and the step's stats give the total of all its runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from realchat.errors import RealChatError
from realchat.recipe.base import Strict


class ModelPrice(Strict):
    """One model's price per million tokens."""

    #: Price of 1M prompt (input) tokens.
    input: float = Field(ge=0)
    #: Price of 1M completion (output) tokens.
    output: float = Field(ge=0)


class PriceTable(Strict):
    """What served models cost, to turn the tokens of each role into money (cards and budgets)."""

    #: The currency of every price (a label written beside each cost, e.g. `USD`, `EUR`).
    currency: str = "USD"
    #: Model name, as a backend's `model` key writes it (`gpt-4o-mini`, or a local model's reference)
    #: → its price per 1M tokens. A model not named here costs nothing (its tokens are still counted).
    models: dict[str, ModelPrice] = Field(default_factory=dict)
    #: What a Batch API request (`batch: true`) costs as a share of the listed price (OpenAI: half).
    batch_share: float = Field(0.5, gt=0, le=1)


class ServedBudget(Strict):
    """Limits on what a step's served models may spend; reaching one stops the step, resumably.

    Not part of the step's fingerprint: raising a budget and rerunning resumes the same work."""

    #: Stop the step once its models cost this much (in `prices.currency`, all roles, every run of the
    #: step counted); the part file is kept and a rerun with a higher limit resumes. Needs `prices`
    #: for every `openai` backend of the step. null = no limit.
    max_cost: float | None = Field(None, gt=0)
    #: Stop the step once its models read and wrote this many tokens (prompt + completion, all roles,
    #: every run of the step counted); resumable like `max_cost`. null = no limit.
    max_tokens_total: int | None = Field(None, ge=1)

    #: Keys left out of the fingerprint: they bound the work, they do not change it.
    not_fingerprinted: ClassVar[frozenset[str]] = frozenset({"max_cost", "max_tokens_total"})


class BudgetReached(RealChatError):
    """The step spent its budget: stopped before the next request, its finished work kept."""

    #: Not bad input (2) nor a signal (130/143): the step stopped on purpose and a rerun resumes it.
    exit_code = 3
    label = "stopped"


@dataclass
class RoleUsage:
    """What one role read and wrote (all runs of the step)."""

    model: str
    batch: bool = False
    calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def role_cost(u: RoleUsage, prices: PriceTable | None) -> float | None:
    """``u``'s cost by ``prices``, None when the table does not name its model."""
    price = prices.models.get(u.model) if prices else None
    if price is None or prices is None:
        return None
    share = prices.batch_share if u.batch else 1.0
    return (u.prompt_tokens * price.input + u.completion_tokens * price.output) * share / 1_000_000


def unpriced_served_models(backends: Iterable[Any], prices: PriceTable | None) -> list[str]:
    """The served (``openai``) models among ``backends`` that ``prices`` does not name: with them a
    ``max_cost`` could never be reached, so the recipe is refused."""
    named = set(prices.models) if prices else set()
    return sorted({str(b.model) for b in backends if getattr(b, "kind", None) == "openai" and str(b.model) not in named})


class Meter:
    """The step's tally per role, its budget, and its ``usage.json``. Thread-safe: pipelined sessions
    record from several threads."""

    def __init__(self, prices: PriceTable | None = None, max_cost: float | None = None,
                 max_tokens_total: int | None = None, path: Path | None = None, save_every_s: float = 1.0) -> None:
        self.prices = prices
        self.max_cost = max_cost
        self.max_tokens_total = max_tokens_total
        self.path = path
        self.save_every_s = save_every_s
        self.roles: dict[str, RoleUsage] = {}
        self._before: dict[str, RoleUsage] = {}
        self._lock = threading.Lock()
        self._saved_at = 0.0
        self._unsaved = False
        if path is not None:
            from realchat.files import read_json

            saved = read_json(path) or {}
            for role, u in (saved.get("roles") or {}).items():
                try:
                    self.roles[role] = RoleUsage(**u)
                    self._before[role] = RoleUsage(**u)
                except TypeError:  # a file of another version: start counting afresh
                    continue

    # -- recording --------------------------------------------------------------------------------

    def role(self, role: str, backend: Any) -> None:
        """Declare ``role`` and the backend config playing it (its model names its price)."""
        with self._lock:
            u = self.roles.setdefault(role, RoleUsage(str(backend.model)))
            u.model, u.batch = str(backend.model), bool(getattr(backend, "batch", False))

    def record(self, role: str, generations: Iterable[Any]) -> None:
        """Count the tokens of generations ``role`` returned (prompt and completion, failed calls apart)."""
        with self._lock:
            u = self.roles.setdefault(role, RoleUsage("?"))
            for g in generations:
                u.calls += 1
                u.failed_calls += g.error is not None
                u.prompt_tokens += int(getattr(g, "prompt_tokens", 0) or 0)
                u.completion_tokens += int(g.tokens or 0)
            self._unsaved = True
            due = time.monotonic() - self._saved_at >= self.save_every_s
        if due:
            self.save()

    # -- figures ----------------------------------------------------------------------------------

    @property
    def tokens(self) -> int:
        return sum(u.tokens for u in self.roles.values())

    @property
    def cost(self) -> float:
        return sum(role_cost(u, self.prices) or 0.0 for u in self.roles.values())

    def check(self, kept: str = "the conversations and answers finished so far are kept") -> None:
        """Raise :class:`BudgetReached` when a limit is spent (called before each request or batch).
        What was recorded is saved first: the request about to go out may be a batch that takes hours.
        ``kept``: what the stopped step keeps, for the message."""
        if self._unsaved:
            self.save()
        if self.max_tokens_total is not None and self.tokens >= self.max_tokens_total:
            spent, key, limit = f"{self.tokens:,} tokens", "max_tokens_total", f"{self.max_tokens_total:,}"
        elif self.max_cost is not None and self.cost >= self.max_cost:
            cur = self.prices.currency if self.prices else ""
            spent, key, limit = f"{self.cost:.4f} {cur}", "max_cost", f"{self.max_cost:g} {cur}"
        else:
            return
        self.save()
        raise BudgetReached(f"budget reached: {spent} spent (limit {key} {limit}); {kept}", field=key,
                            hint=f"raise {key} (e.g. --set steps.<step>.{key}=...) and rerun: the step resumes "
                                 "where it stopped, counting what was already spent")

    def report(self) -> dict[str, Any]:
        """Per role and in total: calls, tokens, and cost where priced (all runs of the step), and what
        this run alone spent."""
        with self._lock:
            roles = {}
            for role, u in self.roles.items():
                cost = role_cost(u, self.prices)
                roles[role] = {**asdict(u), "tokens": u.tokens,
                               **({"cost": round(cost, 6)} if cost is not None else {})}
            before = sum(u.tokens for u in self._before.values())
            out: dict[str, Any] = {
                "roles": roles,
                "total_tokens": self.tokens,
                "prompt_tokens": sum(u.prompt_tokens for u in self.roles.values()),
                "completion_tokens": sum(u.completion_tokens for u in self.roles.values()),
                "tokens_this_run": self.tokens - before,
            }
        if self.prices is not None:
            out.update(cost=round(self.cost, 6), currency=self.prices.currency)
        if self.max_cost is not None or self.max_tokens_total is not None:
            out["budget"] = {"max_cost": self.max_cost, "max_tokens_total": self.max_tokens_total}
        return out

    def save(self) -> None:
        """``usage.json`` in the work folder, replaced atomically (a kill -9 leaves the last one)."""
        if self.path is None:
            return
        from realchat.files import write_json

        with self._lock:
            data = {"roles": {r: asdict(u) for r, u in self.roles.items()}}
            self._saved_at, self._unsaved = time.monotonic(), False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, data)


# -- plan estimates -------------------------------------------------------------------------------


#: Characters per token for estimates made before any tokenizer is loaded (English prose, BPE).
CHARS_PER_TOKEN = 4


def rough_tokens(text: str | None) -> int:
    """A text's tokens, roughly (``realchat plan`` loads no tokenizer)."""
    return -(-len(text or "") // CHARS_PER_TOKEN)


@dataclass
class RoleEstimate:
    """What ``realchat plan`` expects one role of a step to ask for: an estimate from the recipe's
    sizes (completions at their token limit, so rather high), never a measurement."""

    role: str
    backend: Any
    #: None where the count depends on data not built yet (said in ``note``).
    calls: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    note: str = ""

    def as_json(self, prices: PriceTable | None) -> dict[str, Any]:
        usage = RoleUsage(str(self.backend.model), bool(getattr(self.backend, "batch", False)), self.calls or 0, 0,
                          self.prompt_tokens or 0, self.completion_tokens or 0)
        cost = role_cost(usage, prices) if self.calls is not None else None
        return {"role": self.role, "model": usage.model, "kind": self.backend.kind, "batch": usage.batch,
                "calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "note": self.note,
                **({"cost": round(cost, 4), "currency": prices.currency} if cost is not None and prices else {})}
