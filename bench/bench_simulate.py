"""Benchmark: simulation throughput of the local backend — one conversation at a time (the paper's
way), waves of a batch run to their end (RealChat before the refill), and the batch refilled as
conversations finish (today) — and, for the same prompts, raw ``generate`` at the same batch.

Same models (SmolLM2-135M-Instruct as simulator, in Magpie mode, and as answerer), same sampling,
same conversations. Conversations differ in length (half start with one seeded round; stop rules end
some early), which is where waves wait for their slowest member. Prints generated tokens per second
for each. Targets: batched >= 5x one at a time on a 2-core machine (issue 5); on a GPU >= 50 % of raw
``generate`` at the same batch (issue 12). Not a test: figures vary with the machine.

    python bench/bench_simulate.py [--conversations 48] [--rounds 3] [--batch 16] [--single]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--single", action="store_true", help="also run one conversation at a time (slow)")
    ap.add_argument("--model", default=None, help="a model folder or Hub id (default: the shipped SmolLM2)")
    args = ap.parse_args()

    import torch

    from realchat.models import materialize_model
    from realchat.models.backends import LocalModel
    from realchat.recipe.base import DEFAULT_MODEL, SamplingParams
    from realchat.simulation.simulator import Session, Simulation, SimulationSettings

    path = args.model or materialize_model(DEFAULT_MODEL)
    sampling = SamplingParams(temperature=0.7, max_new_tokens=args.max_new_tokens)
    cfg = SimulationSettings(simulator="magpie", max_rounds=args.rounds, user_sampling=sampling,
                             assistant_sampling=sampling, max_resamples=0)
    seed = [{"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."}]

    def sessions() -> list[Session]:
        return [Session(f"s{i}", "free", None, [dict(m) for m in seed] if i % 2 else [], rounds=i % 2,
                        finish_reasons=[None] if i % 2 else []) for i in range(args.conversations)]

    model = LocalModel(path, batch_size=args.batch)
    device = model.device + (f" ({torch.cuda.get_device_name()})" if model.device == "cuda" else
                             f" ({torch.get_num_threads()} threads)")
    print(f"model {path} on {device}; {args.conversations} conversations, <= {args.rounds} rounds, "
          f"{args.max_new_tokens} new tokens per turn, batch {args.batch}")
    results: dict[str, float] = {}

    def measure(label: str, drive) -> None:  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        done: list[Session] = []
        sim = Simulation(cfg, model, model, None, None, done.append)
        t0 = time.perf_counter()
        drive(sim, sessions())
        seconds = time.perf_counter() - t0
        results[label] = sim.generated_tokens / seconds
        print(f"{label:>22}: {sum(s.rounds for s in done):4d} rounds, {sim.generated_tokens:7,} tokens in "
              f"{seconds:6.1f} s = {results[label]:7.1f} tokens/s")

    if args.single:
        model.batch_size = 1
        measure("one at a time", lambda sim, ss: [sim.run([s]) for s in ss])
        model.batch_size = args.batch
    measure("waves of a batch", lambda sim, ss: [sim.run(ss[k: k + args.batch])
                                                 for k in range(0, len(ss), args.batch)])
    measure("refilled batch", lambda sim, ss: sim.run(ss, capacity=args.batch))

    # raw generate at the same batch: the simulator's first prompts, max_new_tokens each, no stop rules
    sim = Simulation(cfg, model, model, None, None, lambda s: None)
    prompts = [sim.simulator_prompt(s) for s in sessions()][: args.batch]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    gens = model.generate(prompts, sampling)
    raw = sum(g.tokens for g in gens) / (time.perf_counter() - t0)
    print(f"{'raw generate':>22}: {raw:7.1f} tokens/s (one batch of {len(prompts)})")
    print(f"refilled / waves: {results['refilled batch'] / results['waves of a batch']:.2f}x; "
          f"refilled / raw generate: {results['refilled batch'] / raw:.0%}"
          + (f"; batched / one at a time: {results['refilled batch'] / results['one at a time']:.1f}x (target >= 5x)"
             if "one at a time" in results else ""))


if __name__ == "__main__":
    main()
