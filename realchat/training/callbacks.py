"""What training tells a person while it runs: a transformers ``TrainerCallback`` over
:mod:`realchat.progress`.

Without it, training is minutes of silence in a job log (tqdm draws on one ``\\r`` line, and only on
a terminal). With it: optimiser steps done / total, the latest loss, learning rate and tokens per
second, as a bar on a terminal and one plain line every interval in a log. Only the main process of a
multi-process launch reports (the others would print the same figures once per rank).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

from transformers import TrainerCallback

from realchat.progress import Counter, Reporter


class TrainingProgress(TrainerCallback):
    """Steps, loss, learning rate, tokens/s and held-out loss on the step's progress display."""

    def __init__(self, reporter: Reporter, description: str = "train") -> None:
        self.reporter = reporter
        self.description = description
        self._stack: ExitStack | None = None
        self._counter: Counter | None = None
        self._tokens0 = 0
        self._t0 = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self._stack = ExitStack()
        self._counter = self._stack.enter_context(
            self.reporter.counter(self.description, state.max_steps or None, "steps", completed=state.global_step))
        self._tokens0 = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        self._t0 = time.monotonic()

    def _tokens_per_s(self, state: Any) -> float | None:
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0) - self._tokens0
        seconds = time.monotonic() - self._t0
        return tokens / seconds if tokens > 0 and seconds > 0 else None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._counter is not None:
            # a step that logs shows its line from on_log, with this step's loss rather than the last one
            every = int(args.logging_steps) if args.logging_steps and args.logging_steps >= 1 else 0
            logs_now = every > 0 and state.global_step % every == 0
            self._counter.update(completed=state.global_step, tokens_per_s=self._tokens_per_s(state),
                                 show=not logs_now)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self._counter is None or not logs:
            return
        figures: dict[str, Any] = {}
        if "loss" in logs:
            figures["loss"] = float(logs["loss"])
        if "learning_rate" in logs:
            figures["lr"] = float(logs["learning_rate"])
        if "eval_loss" in logs:
            figures["eval_loss"] = float(logs["eval_loss"])
        if figures:
            self._counter.update(completed=state.global_step, **figures)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """End the display (also when training raised: a terminal's live bars must stop)."""
        if self._stack is not None:
            self._stack.close()
        self._stack = self._counter = None


class TokensTimed(TrainerCallback):
    """Tokens consumed and seconds spent by this run's ``train()`` (a resumed run: only its own part),
    for :func:`realchat.training.throughput.throughput`."""

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0
        self._tokens0 = 0
        self._t0 = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._tokens0 = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        self._t0 = time.perf_counter()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0) - self._tokens0
        self.seconds = time.perf_counter() - self._t0


def warm_up_from_the_first_step(trainer: Any) -> None:
    """Make the warm-up's first step train.

    transformers' warm-up schedules give step ``s`` the factor ``s / warmup``: the first optimiser
    step runs at learning rate 0, and a run shorter than ``1 / warmup_ratio`` steps (``warmup_ratio``
    rounds up to one warm-up step) trains nothing on its first step, or at all when it has one step.
    Shifted by one, the warm-up's steps run at ``1/W, 2/W, …, W/W`` of the peak and the schedule after
    it is unchanged: the warm-up still ends at the peak, and no step is wasted."""
    create = trainer.create_scheduler

    def create_scheduler(num_training_steps: int, optimizer: Any = None) -> Any:
        made = trainer.lr_scheduler is None
        scheduler = create(num_training_steps, optimizer)
        warmup = trainer.args.get_warmup_steps(num_training_steps)
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if not made or not warmup or lambdas is None:
            return scheduler

        def shifted(f: Any) -> Any:
            return lambda step: f(step + 1) if step < warmup else f(step)

        scheduler.lr_lambdas = [shifted(f) for f in lambdas]
        # the scheduler set the lr of step 0 when it was made: set it again with the shifted factors
        for group, base, f in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * f(scheduler.last_epoch)
        scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
        return scheduler

    trainer.create_scheduler = create_scheduler
