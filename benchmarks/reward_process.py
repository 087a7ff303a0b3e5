"""What running the reward function in its own process (verl.rewards.reward_process) costs per
call batch: the built-in `sr1` reward on one step's batch, called in the caller's process (no time
limit) and through the reward process (a time limit), on the same inputs.

The inputs have the shape of a Vision-SR1 step: responses of ~1,500 characters with a
description, a think block and a boxed answer, each with `n` re-answers. Prints a table and
writes JSON; the first call through the process includes starting it.

    python benchmarks/reward_process.py [--batch 256 --reanswers 1 --calls 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from verl.rewards import RewardInput
from verl.rewards.loader import load_reward_function


def make_inputs(batch: int, reanswers: int) -> list[RewardInput]:
    filler = "The figure shows shapes of several colours arranged on a grid. " * 20
    return [
        RewardInput(
            response=f"<description>{filler}</description><think>{filler}</think> \\boxed{{{i % 7}}}",
            ground_truth=str(i % 5), problem=f"How many red shapes are in figure {i}?", response_length=400,
            reanswers=[f"<think>{filler}</think> \\boxed{{{(i + k) % 5}}}" for k in range(reanswers)],
            description=filler,
        )
        for i in range(batch)
    ]


def time_calls(reward, inputs: list[RewardInput], calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        reward(inputs, batch="benchmark")
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256, help="responses per call (one step's batch)")
    parser.add_argument("--reanswers", type=int, default=1, help="re-answers per response")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--out", default="benchmarks/results/reward_process.json")
    args = parser.parse_args()
    inputs = make_inputs(args.batch, args.reanswers)
    in_process = load_reward_function("sr1", {}, timeout_s=None)
    time_calls(in_process, inputs, 2)  # warm: grader caches, imports
    in_process_s = time_calls(in_process, inputs, args.calls)
    isolated = load_reward_function("sr1", {}, timeout_s=900.0)
    first_s = time_calls(isolated, inputs, 1)[0]
    isolated_s = time_calls(isolated, inputs, args.calls)
    isolated.close()
    result = {
        "batch": args.batch, "reanswers": args.reanswers, "calls": args.calls, "machine": platform.platform(),
        "in_process_median_ms": 1e3 * statistics.median(in_process_s),
        "reward_process_median_ms": 1e3 * statistics.median(isolated_s),
        "overhead_median_ms": 1e3 * (statistics.median(isolated_s) - statistics.median(in_process_s)),
        "first_call_with_start_ms": 1e3 * first_s,
    }
    print("| path | median ms per call batch |\n|---|---|")
    print(f"| in the caller's process | {result['in_process_median_ms']:.1f} |")
    print(f"| reward process | {result['reward_process_median_ms']:.1f} |")
    print(f"| overhead | {result['overhead_median_ms']:.1f} |")
    print(f"| first call through the process (includes its start) | {result['first_call_with_start_ms']:.1f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
