"""Warm-up never spends a step at learning rate 0 (issue 27): with ``warmup_ratio`` and few steps,
transformers' schedule gives the first optimiser step the factor 0 (a one-step run trained nothing).
Read from the optimiser at each step of a real tiny run, and from the weights it saved."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from realchat.training.trainer import TrainingSettings, train_sft

CONVS = [[{"role": "user", "content": f"Write a Python function number {i}."},
          {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog. " * 3}] for i in range(8)]


class LearningRates(TrainerCallback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_step_begin(self, args, state, control, optimizer=None, **kw):  # type: ignore[no-untyped-def]
        self.lrs.append(optimizer.param_groups[0]["lr"])


def _train(tiny_model_dir, tmp_path, name: str, **settings) -> tuple[list[float], dict]:
    rates = LearningRates()
    cfg = TrainingSettings(learning_rate=1e-2, per_device_train_batch_size=4, save_steps=100, bf16=False,
                           packing=False, **settings)
    stats = train_sft(cfg, base_model=str(tiny_model_dir), train_convs=CONVS, eval_convs=[], loss_role="assistant",
                      out=tmp_path / name, work=tmp_path / f"{name}-work", seed=0, show_progress=False,
                      callbacks=[rates], log=lambda *_: None)
    return rates.lrs, stats


def test_one_step_with_warmup_ratio_trains(tiny_model_dir, tmp_path):
    lrs, stats = _train(tiny_model_dir, tmp_path, "one", max_steps=1, warmup_ratio=0.03, lr_scheduler_type="cosine")
    assert stats["steps"] == 1 and lrs[0] > 0  # was 0: ceil(0.03 x 1) = 1 warm-up step at factor 0/1
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    assert any(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in before)


def test_warmup_rises_to_the_peak_without_a_zero_step(tiny_model_dir, tmp_path):
    lrs, _ = _train(tiny_model_dir, tmp_path, "four", max_steps=4, warmup_ratio=0.5, lr_scheduler_type="linear")
    # 2 warm-up steps at 1/2 and 2/2 of the peak, then the linear decay as before
    assert [round(x / 1e-2, 4) for x in lrs] == [0.5, 1.0, 1.0, 0.5]
