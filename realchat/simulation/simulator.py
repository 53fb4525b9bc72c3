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
``repeated_question``, ``copied_answer``, ``truncated_answer`` (``truncated_answers: drop``),
``seed_too_long``, ``failed`` (a backend error, kept in ``error``).

Behaviour as UserLM asks of a user simulator: the end marker is banned until ``min_rounds`` rounds
are complete (while decoding where the backend can ban strings, else by resampling), and a question
that repeats an earlier one (verbatim or nearly) is resampled, at most ``max_resamples`` times, before
the ``repeated_question`` stop rule applies. Each session counts its resamples.

With a ``capacity``, conversations are pulled from the input as others finish, so a batch stays full
instead of draining to the slowest conversation of a wave (what a launch-bound GPU needs; the step
chooses, see ``simulation_batching``).
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from realchat.intents import with_intent
from realchat.recipe.base import SamplingParams, Strict



def failed_by(role: str, error: str | None) -> str | None:
    """A backend error as stored: opened by the role (the recipe key) that failed, ``simulator_backend``
    or ``answerer``, so a failed step blames the backend that failed, not always the answerer."""
    return None if error is None else f"{role}: {error}"


class SimulationSettings(Strict):
    """How the conversation loop runs: who writes the user turn, decoding, stop rules."""

    #: ``usergpt``: the trained simulator; ``roleplay``: an assistant model prompted to play the user
    #: (Baize-style); ``magpie``: sampling from the chat template's user slot of an instruct model.
    simulator: Literal["usergpt", "roleplay", "magpie"] = "usergpt"
    #: Maximum rounds (a round = one user turn + one answer); null = no limit (the paper's way).
    max_rounds: int | None = Field(5, ge=1)
    #: The end marker is banned until this many rounds are complete (never end before a question).
    min_rounds: int = Field(1, ge=0)
    #: The simulator's context budget in tokens: stop when its context plus its next generation would
    #: exceed it (the paper's rule, 2,048).
    context_budget: int = Field(2048, ge=16)
    #: Stop when the simulator writes the end marker as its turn.
    stop_on_end_marker: bool = True
    #: Stop on an empty question, a repeat of an earlier question, or a copy of the last answer.
    stop_on_degenerate: bool = True
    #: A question at least this similar (difflib ratio of the normalised texts, 1 = verbatim) to an
    #: earlier user turn is a repeat.
    repeat_similarity: float = Field(0.9, gt=0, le=1)
    #: Resamples of one question (a repeat, or an end marker before ``min_rounds``) before the stop
    #: rule applies; only with sampling (temperature > 0).
    max_resamples: int = Field(2, ge=0)
    #: Answers cut at ``assistant_sampling.max_new_tokens``: ``keep`` them, ``trim`` them back to
    #: their last complete sentence, or ``drop`` the round (the conversation ends before it).
    truncated_answers: Literal["keep", "trim", "drop"] = "keep"
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
    #: One per assistant turn: ``stop``, ``length`` (cut at the token limit), ``trimmed`` (cut, then
    #: trimmed to its last sentence), None (a seed's answer, or a backend that does not say).
    finish_reasons: list[str | None] = field(default_factory=list)
    #: Questions resampled because they repeated an earlier one / wrote the end marker too early.
    repeat_resamples: int = 0
    end_marker_resamples: int = 0
    #: Answers cut at the token limit (whatever was done with them).
    truncated_answers: int = 0
    #: The session's goal in the simulator's system prompt (intent conditioning); None = none.
    intent: str | None = None
    #: One per user turn the simulator wrote: ``stop`` (it ended its turn) or ``length`` (cut).
    user_finish_reasons: list[str | None] = field(default_factory=list)
    #: One per message: what ended that turn as generated (the turn end: ``[/INST]``, ``<|im_end|>``,
    #: ``</s>``, …), None for seed turns and where the backend does not say.
    turn_stops: list[str | None] = field(default_factory=list)

    def add_turn(self, role: str, content: str, stop: str | None) -> None:
        self.turn_stops.extend([None] * (len(self.messages) - len(self.turn_stops)))  # seed turns
        self.messages.append({"role": role, "content": content})
        self.turn_stops.append(stop)

    def drop_question(self) -> None:
        """Take back the last (unanswered) question, and what was recorded of it."""
        self.messages.pop()
        del self.turn_stops[len(self.messages):]
        if self.user_finish_reasons:
            self.user_finish_reasons.pop()

    def record(self, settings_id: str) -> dict[str, Any]:
        return {"session_id": self.session_id, "mode": self.mode, "seed_id": self.seed_id,
                "messages": self.messages, "rounds": self.rounds, "stop_reason": self.stop_reason,
                "error": self.error, "settings_id": settings_id, "finish_reasons": self.finish_reasons,
                "repeat_resamples": self.repeat_resamples, "end_marker_resamples": self.end_marker_resamples,
                "truncated_answers": self.truncated_answers, "intent": self.intent,
                "user_finish_reasons": self.user_finish_reasons,
                "turn_stops": self.turn_stops + [None] * (len(self.messages) - len(self.turn_stops))}


#: What the roleplaying model hears first (as the user, roles swapped), so the conversation it sees
#: starts with a user turn and alternates, as strict templates (Llama-2, Mistral, Gemma) demand.
ROLEPLAY_OPENER = "Hello! What would you like to ask me?"


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def similar(a: str, b: str, threshold: float) -> bool:
    """Whether two normalised texts are (near-)verbatim copies: difflib's ratio ≥ ``threshold``."""
    if a == b:
        return True
    if threshold >= 1 or not a or not b:
        return False
    m = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return m.real_quick_ratio() >= threshold and m.quick_ratio() >= threshold and m.ratio() >= threshold


#: A sentence ends at . ! ? (not a list number's "2.") before a space or the end, or at a line break.
_SENTENCE_END = re.compile(r"(?:(?<![0-9])\.|[!?…。！？])(?:[\"')\]]*)(?=\s|$)|\n")


def trim_to_sentence(text: str) -> str:
    """``text`` up to its last complete sentence (or line); empty when there is none."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].rstrip() if ends else ""


class Simulation:
    """Runs sessions to their end; calls ``on_finish(session)`` as each one ends."""

    def __init__(self, cfg: SimulationSettings, simulator: Any, answerer: Any, user_system_prompt: str | None,
                 end_marker: str | None, on_finish: Callable[[Session], None],
                 intent_template: str | None = None, meter: Any = None) -> None:
        self.cfg = cfg
        #: Tokens per role and the step's budget (:class:`~realchat.models.usage.Meter`); None = not counted.
        self.meter = meter
        self.sim = simulator
        self.ans = answerer
        self.user_system_prompt = user_system_prompt
        self.end_marker = end_marker
        self.on_finish = on_finish
        #: With a session's ``intent``: its system prompt is this template filled (as in training).
        self.intent_template = intent_template
        #: The role the simulator writes in its own prompt: a user turn, except for the roleplaying
        #: assistant model, which answers as "assistant" in the swapped conversation.
        self.simulator_role = "assistant" if cfg.simulator == "roleplay" else "user"
        self.generated_tokens = 0
        self._tokens_lock = threading.Lock()

    # -- prompts ----------------------------------------------------------------------------------

    def simulator_prompt(self, s: Session) -> str:
        """The simulator's prompt, valid for its template (laid out by its chat format): a user turn
        opened after the conversation (``usergpt``: its own system prompt in front; ``magpie``: the
        assistant's, as the Magpie method samples an instruct model's user slot, never a fake one), or
        for ``roleplay`` the swapped conversation, opened by :data:`ROLEPLAY_OPENER` so that it starts
        with a user turn and alternates."""
        cfg = self.cfg
        if cfg.simulator == "usergpt":
            system = (with_intent(self.intent_template, self.user_system_prompt, s.intent) if self.intent_template
                      else self.user_system_prompt)
            head = [{"role": "system", "content": system}] if system else []
            return self.sim.open_turn(head + s.messages, "user")
        if cfg.simulator == "magpie":
            head = [{"role": "system", "content": cfg.assistant_system_prompt}] if cfg.assistant_system_prompt else []
            return self.sim.open_turn(head + s.messages, "user")
        # roleplay: the simulator is an assistant model; the real assistant's answers reach it as user turns
        swapped = [{"role": "assistant" if m["role"] == "user" else "user", "content": m["content"]} for m in s.messages]
        return self.sim.render([{"role": "system", "content": cfg.roleplay_prompt},
                                {"role": "user", "content": ROLEPLAY_OPENER}, *swapped], add_generation_prompt=True)

    def answerer_messages(self, s: Session) -> list[dict[str, str]]:
        sys = self.cfg.assistant_system_prompt
        return ([{"role": "system", "content": sys}] if sys else []) + s.messages

    # -- the loop ---------------------------------------------------------------------------------

    def finish(self, s: Session, reason: str, error: str | None = None) -> None:
        s.stop_reason, s.error = reason, error
        self.on_finish(s)

    def too_long(self, s: Session, prompt: str | None = None) -> bool:
        prompt = prompt if prompt is not None else self.simulator_prompt(s)
        return self.sim.prompt_tokens(prompt) + self.cfg.user_sampling.max_new_tokens > self.cfg.context_budget

    def run_pipelined(self, sessions: Iterable[Session], workers: int) -> None:
        """Every session on its own, ``workers`` at a time: a session asks as soon as its own answer is
        in and is answered as soon as its own question is, so neither side waits for the slowest
        conversation of a batch (lock-step :meth:`run` makes the simulator idle while every answer of
        the step is generated, and the answerer while every question is). For served roles (requests
        are independent; the server batches what arrives); local models keep :meth:`run`'s batches."""
        from concurrent.futures import ThreadPoolExecutor

        finish, lock = self.on_finish, threading.Lock()

        def finished(s: Session) -> None:
            with lock:  # the part file and the progress display are written by one thread at a time
                finish(s)

        self.on_finish = finished
        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for done in [pool.submit(self.run, [s]) for s in sessions]:
                    done.result()
        finally:
            self.on_finish = finish

    def run(self, sessions: Iterable[Session], capacity: int | None = None) -> None:
        """Simulate every session; at most ``capacity`` in flight, refilled as sessions finish."""
        pending = iter(sessions)
        live: list[Session] = []
        exhausted = False
        while True:
            while not exhausted and (capacity is None or len(live) < capacity):
                s = next(pending, None)
                if s is None:
                    exhausted = True
                elif s.messages and self.too_long(s):
                    self.finish(s, "seed_too_long")  # the seed alone fills the budget (as in the paper)
                else:
                    live.append(s)
            if not live:
                return
            self.step(live)

    def step(self, live: list[Session]) -> None:
        """One question for every live session that needs one, then one answer for each."""
        cfg = self.cfg
        if self.meter is not None:
            self.meter.check()  # a spent budget stops here, between rounds: finished sessions are kept
        prompts, asking = [], []
        for s in [s for s in live if not s.messages or s.messages[-1]["role"] == "assistant"]:
            prompt = self.simulator_prompt(s)
            if s.messages and self.too_long(s, prompt):
                live.remove(s)
                self.finish(s, "context_budget")
                continue
            prompts.append(prompt)
            asking.append(s)
        for s, g in zip(asking, self.ask(asking, prompts)):
            text = g.text
            if self.early_end(s, text):  # still there after the resamples: cut it off
                text = text.split(self.end_marker)[0]  # type: ignore[arg-type]
            reason = self.judge_question(s, text, g.error)
            if reason:
                live.remove(s)
                self.finish(s, reason, failed_by("simulator_backend", g.error))
                continue
            s.add_turn("user", text.strip(), g.stop)
            s.user_tokens.append(g.tokens)
            s.user_finish_reasons.append(g.finish_reason)
        # every live session now ends on a user turn: answer all of them in one batch
        answering = [s for s in live if s.messages and s.messages[-1]["role"] == "user"]
        if not answering:
            return
        gens = self.ans.chat([self.answerer_messages(s) for s in answering], cfg.assistant_sampling)
        if self.meter is not None:
            self.meter.record("answerer", gens)
        for s, g in zip(answering, gens):
            self.count_tokens(g.tokens)
            if g.error is not None:
                s.drop_question()  # the question stays unanswered: drop it, keep what is complete
                live.remove(s)
                self.finish(s, "failed", failed_by("answerer", g.error))
                continue
            text, reason = g.text.strip(), g.finish_reason
            if reason == "length":
                s.truncated_answers += 1
                if cfg.truncated_answers == "trim":
                    text, reason = trim_to_sentence(text), "trimmed"
                if cfg.truncated_answers == "drop" or not text:
                    s.drop_question()
                    live.remove(s)
                    self.finish(s, "truncated_answer")
                    continue
            s.add_turn("assistant", text, g.stop)
            s.assistant_tokens.append(g.tokens)
            s.finish_reasons.append(reason)
            s.rounds += 1
            if cfg.max_rounds is not None and s.rounds >= cfg.max_rounds:
                live.remove(s)
                self.finish(s, "max_rounds")

    def count_tokens(self, n: int) -> None:
        with self._tokens_lock:  # pipelined sessions count from several threads
            self.generated_tokens += n

    # -- questions --------------------------------------------------------------------------------

    def banned(self, s: Session) -> list[str]:
        """Strings this session's next question must not contain (the end marker, too early)."""
        if self.end_marker and self.cfg.stop_on_end_marker and s.rounds < self.cfg.min_rounds:
            return [self.end_marker]
        return []

    def early_end(self, s: Session, text: str) -> bool:
        return bool(self.banned(s)) and self.end_marker in text  # type: ignore[operator]

    def repeats(self, s: Session, text: str) -> bool:
        q = _norm(text)
        return bool(q) and any(similar(_norm(m["content"]), q, self.cfg.repeat_similarity)
                               for m in s.messages if m["role"] == "user")

    def ask(self, asking: list[Session], prompts: list[str]) -> list[Any]:
        """The simulator's questions; one that repeats an earlier question, or writes the end marker
        before ``min_rounds``, is resampled (all such in one batch), at most ``max_resamples`` times."""
        cfg = self.cfg
        results: list[Any] = [None] * len(asking)
        todo = list(range(len(asking)))
        tries = cfg.max_resamples if cfg.user_sampling.temperature > 0 else 0
        for attempt in range(tries + 1):
            bad = [self.banned(asking[i]) for i in todo] if getattr(self.sim, "bans_words", False) else None
            gens = (self.sim.generate([prompts[i] for i in todo], cfg.user_sampling, bad_words=bad,
                                      role=self.simulator_role) if todo else [])
            if self.meter is not None:
                self.meter.record("simulator", gens)
            again = []
            for i, g in zip(todo, gens):
                self.count_tokens(g.tokens)
                results[i] = g
                s = asking[i]
                if g.error is not None or attempt == tries:
                    continue
                if self.early_end(s, g.text):
                    s.end_marker_resamples += 1
                    again.append(i)
                elif cfg.stop_on_degenerate and self.repeats(s, g.text):
                    s.repeat_resamples += 1
                    again.append(i)
            todo = again
            if not todo:
                break
        return results

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
        if self.repeats(s, text):
            return "repeated_question"
        if s.messages and s.messages[-1]["role"] == "assistant" and _norm(s.messages[-1]["content"]) == q:
            return "copied_answer"
        return None
