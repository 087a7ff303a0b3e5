"""Time the vectorised GRPO advantage against a per-sample Python loop (the shape of the
reference implementations: a dict of lists per group id, then a loop over samples).

Default size = one Vision-SR1 rollout batch: 512 prompts x n=8 responses. Both paths see the
same batch (binary outcome scores on the last valid token, shuffled non-contiguous group ids)
and must agree; the script prints a table and writes JSON.

    python benchmarks/advantages.py [--prompts 512 --n 8 --response-length 2048 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from verl.algorithms.core_algos import compute_grpo_outcome_advantage

EPS = 1e-6


def make_batch(
    prompts: int, n: int, response_length: int, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random rollout batch: (bs, L) rewards, (bs, L) bool mask, (bs,) shuffled group ids."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = prompts * n
    lengths = torch.randint(1, response_length + 1, (batch_size,), generator=generator)
    mask = torch.arange(response_length).unsqueeze(0) < lengths.unsqueeze(1)
    scores = torch.randint(0, 2, (batch_size,), generator=generator).float()
    rewards = torch.zeros(batch_size, response_length)
    rewards[torch.arange(batch_size), lengths - 1] = scores
    # Large, non-contiguous ids in shuffled order, as uid hashes would give.
    prompt_ids = torch.randperm(10 * prompts, generator=generator)[:prompts] * 7 + 3
    group_index = prompt_ids.repeat_interleave(n)[torch.randperm(batch_size, generator=generator)]
    return rewards.to(device), mask.to(device), group_index.to(device)


def naive_grpo(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, group_index: torch.Tensor
) -> torch.Tensor:
    """Per-sample loop reference with the same semantics (unbiased std; no spread -> 0)."""
    scores = (token_level_rewards * response_mask).sum(-1)
    scores_by_group: dict[int, list[torch.Tensor]] = defaultdict(list)
    for sample in range(scores.shape[0]):
        scores_by_group[int(group_index[sample])].append(scores[sample])
    mean_by_group, std_by_group = {}, {}
    for group, group_scores in scores_by_group.items():
        values = torch.stack(group_scores)
        mean_by_group[group] = values.mean()
        std_by_group[group] = values.std() if len(group_scores) > 1 else torch.zeros(())
    advantages = torch.zeros_like(scores)
    for sample in range(scores.shape[0]):
        group = int(group_index[sample])
        if std_by_group[group] > 0:
            advantages[sample] = (scores[sample] - mean_by_group[group]) / (std_by_group[group] + EPS)
    return advantages.unsqueeze(-1) * response_mask


def vectorised_grpo(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, group_index: torch.Tensor
) -> torch.Tensor:
    advantages, _ = compute_grpo_outcome_advantage(token_level_rewards, response_mask, group_index, True, EPS)
    return advantages


def time_ms(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> list[float]:
    fn()  # warm-up: lazy initialisation and allocator
    timings = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append((time.perf_counter() - start) * 1e3)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--n", type=int, default=8, help="responses per prompt")
    parser.add_argument("--response-length", type=int, default=2048, help="padded response length L (Vision-SR1: 2048)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "advantages.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rewards, mask, group_index = make_batch(args.prompts, args.n, args.response_length, device, args.seed)

    max_abs_diff = (vectorised_grpo(rewards, mask, group_index) - naive_grpo(rewards, mask, group_index)).abs().max()
    if max_abs_diff > 1e-5:
        raise SystemExit(f"vectorised and naive GRPO disagree: max |diff| = {max_abs_diff.item():.3g}")

    rows = []
    for name, fn in (("vectorised", vectorised_grpo), ("naive per-sample loop", naive_grpo)):
        timings = time_ms(lambda fn=fn: fn(rewards, mask, group_index), args.repeats, device)
        rows.append({"method": name, "median_ms": statistics.median(timings), "min_ms": min(timings)})
    baseline_ms = rows[-1]["median_ms"]
    for row in rows:
        row["speedup_vs_naive"] = baseline_ms / row["median_ms"]

    batch_size = args.prompts * args.n
    print(
        f"GRPO advantages, {args.prompts} prompts x n={args.n} = {batch_size} responses, L={args.response_length}, "
        f"device={device}, threads={torch.get_num_threads()}, max |diff| = {max_abs_diff.item():.2e}"
    )
    print(f"{'method':<24}{'median ms':>12}{'min ms':>12}{'speed-up':>11}")
    for row in rows:
        print(f"{row['method']:<24}{row['median_ms']:>12.2f}{row['min_ms']:>12.2f}{row['speedup_vs_naive']:>10.1f}x")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "grpo_advantage",
        "prompts": args.prompts,
        "n": args.n,
        "response_length": args.response_length,
        "repeats": args.repeats,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "max_abs_diff": max_abs_diff.item(),
        "results": rows,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
