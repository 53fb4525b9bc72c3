"""The simulation loop: a user simulator asks, an answerer replies, many conversations in lockstep.

At each step every live conversation that needs a question is batched for the simulator, then every
conversation that needs an answer is batched for the answerer: one ``generate`` (or one burst of
concurrent requests) per step and batch, not one conversation at a time as in the paper's scripts.

Three ways to write the user's turn (same loop, chosen in the recipe):

* ``usergpt``: the trained simulator continues the conversation in a **user** turn opened after the
  conversation so far (its own system prompt in front);
* ``roleplay``: an assistant model told to play the user sees the conversation with the roles swapped
  and answers as "assistant" (the Baize / role-play baseline);
* ``magpie``: an instruct model's chat template is opened at the user slot and sampled (Magpie), with
  the assistant's system prompt, not a simulator's.

Stop rules, each recorded as the conversation's ``stop_reason``: ``max_rounds``, ``context_budget``
(the simulator's context plus its next generation would exceed its budget: the paper's rule),
``end_marker`` (the simulator wrote its end-of-conversation marker), ``empty_question``,
``repeated_question``, ``copied_answer``, ``seed_too_long``, ``failed`` (a backend error, kept in
``error``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from realchat.recipe.base import SamplingParams, Strict


class SimulationSettings(Strict):
    """How the conversation loop runs: who writes the user turn, decoding, stop rules."""

    #: ``usergpt``: the trained simulator; ``roleplay``: an assistant model prompted to play the user
    #: (Baize-style); ``magpie``: sampling from the chat template's user slot of an instruct model.
    simulator: Literal["usergpt", "roleplay", "magpie"] = "usergpt"
    #: Maximum rounds (a round = one user turn + one answer); null = no limit (the paper's way).
    max_rounds: int | None = Field(5, ge=1)
    #: The simulator's context budget in tokens: stop when its context plus its next generation would
    #: exceed it (the paper's rule, 2,048).
    context_budget: int = Field(2048, ge=16)
    #: Stop when the simulator writes the end marker as its turn.
    stop_on_end_marker: bool = True
    #: Stop on an empty question, a repeat of an earlier question, or a copy of the last answer.
    stop_on_degenerate: bool = True
    #: Decoding of the simulator's (user) turns.
    user_sampling: SamplingParams = SamplingParams()
    #: Decoding of the answerer's turns.
    assistant_sampling: SamplingParams = SamplingParams(max_new_tokens=256)
    #: System prompt of the answerer; null = none.
    assistant_system_prompt: str | None = "You are a helpful AI assistant."
    #: ``roleplay`` baseline: the instruction given to the assistant model playing the user.
    roleplay_prompt: str = (
        "You are a curious person talking to an AI assistant. Reply with your next message to the "
        "assistant only: a follow-up question or a new question. Do not answer questions yourself."
    )


@dataclass
class Session:
    session_id: str
    mode: str
    seed_id: str | None
    messages: list[dict[str, str]] = field(default_factory=list)
    rounds: int = 0
    stop_reason: str | None = None
    error: str | None = None
    user_tokens: list[int] = field(default_factory=list)
    assistant_tokens: list[int] = field(default_factory=list)

    def record(self, settings_id: str) -> dict[str, Any]:
        return {"session_id": self.session_id, "mode": self.mode, "seed_id": self.seed_id,
                "messages": self.messages, "rounds": self.rounds, "stop_reason": self.stop_reason,
                "error": self.error, "settings_id": settings_id}


def user_turn_opener(render: Callable[..., str]) -> str:
    """The text a chat template puts before a user message's content (e.g. ``<|im_start|>user\\n``)."""
    sentinel = "\u2063RC\u2063"
    base = render([{"role": "system", "content": "s"}], add_generation_prompt=False)
    full = render([{"role": "system", "content": "s"}, {"role": "user", "content": sentinel}],
                  add_generation_prompt=False)
    if not full.startswith(base) or sentinel not in full:
        raise ValueError("the chat template does not render incrementally; cannot open a user turn")
    return full[len(base): full.index(sentinel)]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


class Simulation:
    """Runs sessions to their end; calls ``on_finish(session)`` as each one ends."""

    def __init__(self, cfg: SimulationSettings, simulator: Any, answerer: Any, user_system_prompt: str | None,
                 end_marker: str | None, on_finish: Callable[[Session], None]) -> None:
        self.cfg = cfg
        self.sim = simulator
        self.ans = answerer
        self.user_system_prompt = user_system_prompt
        self.end_marker = end_marker
        self.on_finish = on_finish
        self.opener = user_turn_opener(simulator.render) if cfg.simulator in ("usergpt", "magpie") else ""
        self.generated_tokens = 0

    # -- prompts ----------------------------------------------------------------------------------

    def simulator_prompt(self, s: Session) -> str:
        cfg = self.cfg
        if cfg.simulator == "usergpt":
            head = [{"role": "system", "content": self.user_system_prompt}] if self.user_system_prompt else []
            return self.sim.render(head + s.messages, add_generation_prompt=False) + self.opener
        if cfg.simulator == "magpie":
            head = [{"role": "system", "content": cfg.assistant_system_prompt}] if cfg.assistant_system_prompt else []
            return self.sim.render(head + s.messages, add_generation_prompt=False) + self.opener
        # roleplay: the simulator is an assistant model; the real assistant's answers reach it as user turns
        swapped = [{"role": "assistant" if m["role"] == "user" else "user", "content": m["content"]} for m in s.messages]
        if not swapped:
            swapped = [{"role": "user", "content": "Hello! What would you like to ask me?"}]
        return self.sim.render([{"role": "system", "content": cfg.roleplay_prompt}] + swapped,
                               add_generation_prompt=True)

    def answerer_messages(self, s: Session) -> list[dict[str, str]]:
        sys = self.cfg.assistant_system_prompt
        return ([{"role": "system", "content": sys}] if sys else []) + s.messages

    # -- the loop ---------------------------------------------------------------------------------

    def finish(self, s: Session, reason: str, error: str | None = None) -> None:
        s.stop_reason, s.error = reason, error
        self.on_finish(s)

    def run(self, sessions: Iterable[Session]) -> None:
        cfg = self.cfg
        live = [s for s in sessions]
        # seeds whose question alone fills the simulator's budget are skipped (as in the paper)
        for s in list(live):
            if s.messages and self.sim.count(self.simulator_prompt(s)) + cfg.user_sampling.max_new_tokens > cfg.context_budget:
                live.remove(s)
                self.finish(s, "seed_too_long")
        while live:
            # 1. sessions whose last turn is the assistant's (or empty) need a question
            ask = [s for s in live if not s.messages or s.messages[-1]["role"] == "assistant"]
            prompts, asking = [], []
            for s in ask:
                prompt = self.simulator_prompt(s)
                if s.messages and self.sim.count(prompt) + cfg.user_sampling.max_new_tokens > cfg.context_budget:
                    live.remove(s)
                    self.finish(s, "context_budget")
                    continue
                prompts.append(prompt)
                asking.append(s)
            for s, g in zip(asking, self.sim.generate(prompts, cfg.user_sampling) if prompts else []):
                self.generated_tokens += g.tokens
                reason = self.judge_question(s, g.text, g.error)
                if reason:
                    live.remove(s)
                    self.finish(s, reason, g.error)
                    continue
                s.messages.append({"role": "user", "content": g.text.strip()})
                s.user_tokens.append(g.tokens)
            # 2. every live session now ends on a user turn: answer all of them in one batch
            answering = [s for s in live if s.messages and s.messages[-1]["role"] == "user"]
            if answering:
                gens = self.ans.chat([self.answerer_messages(s) for s in answering], cfg.assistant_sampling)
                for s, g in zip(answering, gens):
                    self.generated_tokens += g.tokens
                    if g.error is not None:
                        s.messages.pop()  # the question stays unanswered: drop it, keep what is complete
                        live.remove(s)
                        self.finish(s, "failed", g.error)
                        continue
                    s.messages.append({"role": "assistant", "content": g.text.strip()})
                    s.assistant_tokens.append(g.tokens)
                    s.rounds += 1
                    if cfg.max_rounds is not None and s.rounds >= cfg.max_rounds:
                        live.remove(s)
                        self.finish(s, "max_rounds")

    def judge_question(self, s: Session, text: str, error: str | None) -> str | None:
        """Why this question ends the conversation, or None to go on."""
        if error is not None:
            return "failed"
        if self.end_marker and self.cfg.stop_on_end_marker and self.end_marker in text:
            return "end_marker"
        if not self.cfg.stop_on_degenerate:
            return None
        q = _norm(text)
        if not q:
            return "empty_question"
        if any(_norm(m["content"]) == q for m in s.messages if m["role"] == "user"):
            return "repeated_question"
        if s.messages and s.messages[-1]["role"] == "assistant" and _norm(s.messages[-1]["content"]) == q:
            return "copied_answer"
        return None
