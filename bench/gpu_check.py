"""One command that measures the GPU path: training and simulation figures in one table, offline.

On a machine with a GPU, in under 8 minutes and with no network (the default model is shipped in the
package, ``HF_HUB_OFFLINE=1`` is set):

1. **train** an sft step on SmolLM2-135M (the default model), real ShareGPT conversations, through the
   step's own ``train_sft``: TRL's padded batches, then the step's choice (``choose_batching``);
   non-padding tokens/s after one warm-up step, MFU (bf16 peak of the GPU), GPU busy %;
2. **simulate** with the local backend (transformers, batch refilled as conversations finish):
   generated tokens/s and GPU busy %;
3. **simulate with vLLM** when it is importable, through RealChat's engine bookkeeping (one engine,
   shut down after): the same figures.

GPU busy % is sampled every 0.2 s in a thread (``nvidia-smi``, else ``torch.cuda.utilization``). Each
phase runs only if the time left allows; whatever is skipped is said, with the reason. Without a GPU,
``--cpu-smoke`` runs the same code small on the CPU (a tiny model may be given with ``--model``) so the
script itself is tested; figures from it mean nothing. Not a test: figures vary with the machine.

    python bench/gpu_check.py [--model REF] [--budget-s 480] [--steps 6] [--conversations 64] [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network: everything this needs is on the machine
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


class BusySampler:
    """Mean GPU utilisation (%) while the block runs; None without a way to read it."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5)
                return float(out.stdout.strip().splitlines()[0])
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return None
        try:
            import torch

            return float(torch.cuda.utilization())
        except Exception:  # noqa: BLE001 -- no pynvml: no figure
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "BusySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def busy(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def conversations(n: int, loss_on: str = "user") -> list[list[dict[str, str]]]:
    """The first ``n`` usable conversations of the shipped ShareGPT file, laid out as the sft step trains."""
    from realchat.curation.conversations import normalize
    from realchat.curation.sources import DEFAULT_ROLES, SourceConfig, open_source
    from realchat.recipe.base import DEFAULT_SHAREGPT, DEFAULT_USER_SYSTEM_PROMPT
    from realchat.training.chat_format import as_user_simulator

    records, _ = open_source(SourceConfig(path=DEFAULT_SHAREGPT, limit=n * 3), Path.cwd())
    out = []
    for rec in records:
        row, _ = normalize(rec, dict(DEFAULT_ROLES), "id", "gpu-check")
        if row is None or not any(m["role"] == loss_on for m in row["messages"]):
            continue
        out.append(as_user_simulator(row["messages"], DEFAULT_USER_SYSTEM_PROMPT, None))
        if len(out) >= n:
            break
    return out


def train(path: str, convs: list[list[dict[str, str]]], packing: bool, steps: int, max_length: int,
          batch: int) -> dict[str, Any]:
    """One timed sft run through the step's code; tokens/s after the warm-up step, MFU, GPU busy."""
    import torch
    from transformers import AutoConfig, TrainerCallback

    from bench_train import _n_params
    from realchat.training.throughput import throughput
    from realchat.training.trainer import TrainingSettings, train_sft

    class Steady(TrainerCallback):
        t0, tokens0, seconds, tokens = 0.0, 0, 0.0, 0

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 1:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.t0, self.tokens0 = time.perf_counter(), int(state.num_input_tokens_seen)

        def on_train_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.t0
            self.tokens = int(state.num_input_tokens_seen) - self.tokens0

    cfg = TrainingSettings(packing=packing, max_length=max_length, max_steps=steps + 1, per_device_train_batch_size=batch,
                           learning_rate=1e-5, warmup_ratio=0.0, lr_scheduler_type="constant", save_steps=10**6)
    steady = Steady()
    with tempfile.TemporaryDirectory() as tmp, BusySampler() as sampler:
        stats = train_sft(cfg, base_model=path, train_convs=convs, eval_convs=[], loss_role="user",
                          out=Path(tmp) / "out", work=Path(tmp) / "work", seed=0, show_progress=False,
                          callbacks=[steady], log=lambda m: None)
    model_cfg = AutoConfig.from_pretrained(path)
    cuda = torch.cuda.is_available()
    speed = throughput(steady.tokens, steady.seconds, n_params=_n_params(path), n_layers=model_cfg.num_hidden_layers,
                       hidden=model_cfg.hidden_size, seq_len=stats["dataset_tokens"] / stats["train_conversations"],
                       device_type="cuda" if cuda else "cpu", device_name=torch.cuda.get_device_name() if cuda else None,
                       bf16=stats["bf16"])
    return {"setting": f"{stats['batching']} ({stats['attn_implementation']}, {stats['precision']})",
            "tokens_per_s": speed["tokens_per_s"], "mfu": speed["mfu"], "busy": sampler.busy}


def simulate(backend: Any, n: int, rounds: int, max_new_tokens: int, batch: int) -> dict[str, Any]:
    """A Magpie-mode simulation (no trained simulator needed) with ``backend`` in both roles."""
    import torch

    from realchat.recipe.base import SamplingParams
    from realchat.simulation.simulator import Session, Simulation, SimulationSettings

    sampling = SamplingParams(temperature=0.7, max_new_tokens=max_new_tokens)
    cfg = SimulationSettings(simulator="magpie", max_rounds=rounds, user_sampling=sampling,
                             assistant_sampling=sampling, max_resamples=0)
    torch.manual_seed(0)
    sim = Simulation(cfg, backend, backend, None, None, lambda s: None)
    sessions = [Session(f"s{i}", "free", None, [], rounds=0, finish_reasons=[]) for i in range(n)]
    with BusySampler() as sampler:
        t0 = time.perf_counter()
        sim.run(sessions, capacity=batch)
        seconds = time.perf_counter() - t0
    return {"tokens_per_s": sim.generated_tokens / seconds, "busy": sampler.busy, "tokens": sim.generated_tokens}


def main(argv: list[str] | None = None) -> int:
    from realchat.recipe.base import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model folder, .gguf, pkg:// path or Hub id")
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting phases after this many seconds")
    ap.add_argument("--steps", type=int, default=6, help="timed optimiser steps per training run")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--conversations", type=int, default=64, help="simulated conversations per backend")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU: run every phase small on the CPU")
    args = ap.parse_args(argv)

    import importlib.util

    import torch

    from realchat.models import materialize_model

    started = time.perf_counter()
    gpu = torch.cuda.is_available()
    rows: list[tuple[str, str, str, str, str]] = []
    skipped: list[str] = []
    if not gpu and not args.cpu_smoke:
        print("no GPU: skipped training, local simulation and vLLM (run with --cpu-smoke to exercise this "
              "script small on the CPU)")
        return 0
    if not gpu:
        args.steps, args.max_length, args.batch = 1, 256, 2
        args.conversations, args.rounds, args.max_new_tokens = 4, 1, 8
        skipped += ["no GPU: skipped MFU and GPU busy % (CPU smoke run; its figures mean nothing)",
                    "no GPU: skipped vLLM (it needs a GPU)"]
    device = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    path = materialize_model(args.model, Path.cwd())
    print(f"gpu_check: {device}; model {args.model}; budget {args.budget_s:.0f} s")

    def left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    def fmt(value: float | None, spec: str, unit: str = "") -> str:
        return "-" if value is None else f"{value:{spec}}{unit}"

    convs = conversations(max(args.batch * (args.steps + 1) * 2, 16))
    for label, packing in (("train, padded", False), ("train, step's choice", True)):
        if left() < 60:
            skipped.append(f"{label}: skipped, {left():.0f} s of the budget left")
            continue
        r = train(path, convs, packing, args.steps, args.max_length, args.batch)
        rows.append((label, r["setting"], fmt(r["tokens_per_s"], ",.0f"),
                     fmt(None if r["mfu"] is None else 100 * r["mfu"], ".1f", " %"), fmt(r["busy"], ".0f", " %")))

    from realchat.models.backends import LocalModel

    if left() < 30:
        skipped.append(f"simulate, local: skipped, {left():.0f} s of the budget left")
    else:
        local = LocalModel(path, batch_size=args.batch)
        r = simulate(local, args.conversations, args.rounds, args.max_new_tokens, args.batch)
        rows.append(("simulate, local", f"batch {args.batch}, {args.conversations} conversations",
                     fmt(r["tokens_per_s"], ",.0f"), "-", fmt(r["busy"], ".0f", " %")))
        del local
        if gpu:
            torch.cuda.empty_cache()

    if gpu:
        if importlib.util.find_spec("vllm") is None:
            skipped.append("simulate, vLLM: skipped, vllm is not installed (pip install 'realchat-usersim[vllm]')")
        elif left() < 90:
            skipped.append(f"simulate, vLLM: skipped, {left():.0f} s of the budget left")
        else:
            from realchat.models.backends import VLLMBackend, VLLMModel
            from realchat.models.engines import Engines

            engines = Engines()
            try:
                model = VLLMModel(VLLMBackend(model=path), path, engines=engines, seed=0)
                r = simulate(model, args.conversations, args.rounds, args.max_new_tokens, args.conversations)
                rows.append(("simulate, vLLM", f"{args.conversations} conversations at once",
                             fmt(r["tokens_per_s"], ",.0f"), "-", fmt(r["busy"], ".0f", " %")))
            finally:
                engines.close()

    header = ("phase", "setting", "tokens/s", "MFU", "GPU busy")
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(5)]
    print()
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    for s in skipped:
        print(s)
    print(f"total {time.perf_counter() - started:.0f} s on {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
