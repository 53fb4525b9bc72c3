"""Benchmark: simulation with both roles served — the lock-step loop (every question of a batch, then
every answer) against the pipelined one (each session asks and is answered as soon as its own turn is
done), side by side, on the same server, sessions and sampling.

Starts ``transformers serve`` on 127.0.0.1 with the shipped SmolLM2-135M-Instruct (or ``--model``) for
both roles (the simulator through text completions rendered here, the answerer through chat
completions) — one server for both, or with ``--two-servers`` one per role, as a simulator and an
answerer usually are —, seeds each session with a different real first question from the shipped
ShareGPT, and prints generated tokens per second for each loop and their ratio. Not a test: figures
vary with the machine and the server's batching (``--continuous-batching`` passes it on to the server).

    python bench/bench_simulate_served.py [--conversations 16] [--rounds 2] [--concurrency 8] [--two-servers]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--continuous-batching", action="store_true")
    ap.add_argument("--two-servers", action="store_true", help="one server per role")
    ap.add_argument("--model", default=None, help="a model folder (default: the shipped SmolLM2)")
    args = ap.parse_args()

    import json

    from realchat.curation.sources import SourceConfig, open_source
    from realchat.models import materialize_model
    from realchat.models.backends import OpenAIBackend, OpenAIChat
    from realchat.recipe.base import DEFAULT_MODEL, SamplingParams
    from realchat.simulation.simulator import Session, Simulation, SimulationSettings

    path = args.model or materialize_model(DEFAULT_MODEL)
    exe = Path(sys.executable).parent / "transformers"
    servers, ports = [], []
    for _ in range(2 if args.two_servers else 1):
        port = free_port()
        cmd = [str(exe), "serve", path, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
        if args.continuous_batching:
            cmd.append("--continuous-batching")
        # two servers: a core (thread) each, as two machines would give them
        threads = {"OMP_NUM_THREADS": "1"} if args.two_servers else {}
        servers.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1", **threads}))
        ports.append(port)
    try:
        for port, server in zip(ports, servers):
            deadline = time.time() + 300
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                        break
                except OSError:
                    if time.time() > deadline or server.poll() is not None:
                        raise SystemExit("transformers serve did not come up")
                    time.sleep(0.5)
        sample = {"generation_config": json.dumps({"do_sample": True, "temperature": 0.7})}
        roles = [OpenAIChat(OpenAIBackend(base_url=f"http://127.0.0.1:{port}/v1", model=path, tokenizer=path,
                                          max_concurrency=args.concurrency, timeout_s=600, max_retries=0,
                                          extra_body=sample), path) for port in ports]
        simulator, answerer = roles[0], roles[-1]
        sampling = SamplingParams(temperature=0.7, max_new_tokens=args.max_new_tokens)
        cfg = SimulationSettings(simulator="magpie", max_rounds=args.rounds, user_sampling=sampling,
                                 assistant_sampling=sampling, max_resamples=0, stop_on_degenerate=False)
        it, _ = open_source(SourceConfig(limit=4 * args.conversations), Path("."))
        firsts = [r.data["conversations"][0]["value"][:300] for r in it
                  if r.data.get("conversations") and r.data["conversations"][0].get("from") == "human"]

        def sessions() -> list[Session]:
            return [Session(f"s{i}", "seeded", None, [{"role": "user", "content": firsts[i % len(firsts)]}])
                    for i in range(args.conversations)]

        print(f"model {path} served by transformers serve on 127.0.0.1 ({len(ports)} server(s); continuous batching "
              f"{'on' if args.continuous_batching else 'off'}); {args.conversations} sessions, <= {args.rounds} "
              f"rounds, {args.max_new_tokens} new tokens per turn, {args.concurrency} requests in flight")
        results: dict[str, float] = {}
        for label, drive in (("lock-step", lambda sim, ss: sim.run(ss, capacity=args.concurrency)),
                             ("pipelined", lambda sim, ss: sim.run_pipelined(ss, args.concurrency))):
            done: list[Session] = []
            sim = Simulation(cfg, simulator, answerer, None, None, done.append)
            t0 = time.perf_counter()
            drive(sim, sessions())
            seconds = time.perf_counter() - t0
            results[label] = sim.generated_tokens / seconds
            failed = sum(1 for s in done if s.stop_reason == "failed")
            print(f"{label:>10}: {sum(s.rounds for s in done):4d} rounds, {sim.generated_tokens:7,} tokens in "
                  f"{seconds:6.1f} s = {results[label]:6.1f} tokens/s ({failed} failed)")
        print(f"pipelined / lock-step: {results['pipelined'] / results['lock-step']:.2f}x")
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
