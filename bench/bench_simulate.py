"""Benchmark: simulation throughput, many conversations batched vs one at a time (the paper's way).

Same models (SmolLM2-135M-Instruct as simulator, in Magpie mode, and as answerer), same sampling, same
number of conversations and rounds; prints generated tokens per second for both and their ratio.
Target (issue 5): >= 5x on a 2-core machine. Not a test: figures vary with the machine.

    python bench/bench_simulate.py [--conversations 32] [--rounds 2] [--batch 32]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()

    import torch

    from realchat.models.backends import LocalModel
    from realchat.models import materialize_model
    from realchat.recipe.base import DEFAULT_MODEL, SamplingParams
    from realchat.simulation.simulator import SimulationSettings
    from realchat.simulation.simulator import Session, Simulation

    path = materialize_model(DEFAULT_MODEL)
    sampling = SamplingParams(temperature=0.7, max_new_tokens=args.max_new_tokens)
    cfg = SimulationSettings(simulator="magpie", max_rounds=args.rounds, user_sampling=sampling,
                        assistant_sampling=sampling, stop_on_degenerate=False)
    results = {}
    for batch in (1, args.batch):
        model = LocalModel(path, batch_size=batch)
        torch.manual_seed(0)
        done: list[Session] = []
        sim = Simulation(cfg, model, model, None, None, done.append)
        sessions = [Session(f"s{i}", "free", None) for i in range(args.conversations)]
        t0 = time.perf_counter()
        if batch == 1:
            for s in sessions:  # one conversation at a time, one request at a time
                sim.run([s])
        else:
            sim.run(sessions)
        seconds = time.perf_counter() - t0
        results[batch] = sim.generated_tokens / seconds
        rounds = sum(s.rounds for s in done)
        print(f"batch {batch:3d}: {args.conversations} conversations, {rounds} rounds, "
              f"{sim.generated_tokens:,} tokens in {seconds:6.1f} s = {results[batch]:6.1f} tokens/s")
    print(f"ratio batched / one at a time: {results[args.batch] / results[1]:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
