"""The training path at a long shape: unpacked rows vs shared-prompt packing (dense mask, block-sparse).

The compute-bound model of `training_shapes.py` (7.5 M parameters, 224 x 224 images, a plain
~95-token prompt that is mostly image), one GRPO group: 1 prompt x `--n` responses of
`--responses` tokens each (default 512 and 1024). For each path (`training_shapes.PATHS`) the
actor's log-prob pass (no gradient) and one update (forward + backward + AdamW) run in a fresh
process, so each peak RSS is that path's alone:

- unpacked: one row per response (the prompt and its image computed n times);
- dense: one packed sequence [prompt | r1 | ... | rn] with an (L, L) boolean mask through sdpa
  (every block computed, the (L, L) probabilities kept for backward);
- segments: the same sequence block-sparse, the prompt once and each response slot over
  [prompt keys | its own keys] in one sdpa call (the CPU default);
- flex: the same sequence with a flex_attention BlockMask (the GPU default). CPU torch has a
  flex forward only, so only its log-prob pass is measured here (unfused, eager: the GPU
  kernel's speed is measured by benchmarks/gpu_engine.py).

All paths get the same token budget per micro-batch (n x (P + R), the unpacked group), so each
pass is one micro-batch. Times are the minimum of `--repeats` runs after one warm-up; the load
average is printed before each process and stored: a figure taken on a busy machine says so.
Beside each update: the dry run's estimate of its activations, logits and masks
(`verl.utils.memory_estimate`, bf16 on GPU), for scale.

A second table measures the entropy change: peak RSS of one update at `--entropy_tokens`
response tokens with Qwen's 151,936-token vocabulary, the entropy metric with its autograd
graph (the old path) vs without (`entropy_without_gradient`).

    .venv/bin/python benchmarks/long_sequence.py [--responses 512 1024] [--n 8] [--repeats 2]

Writes benchmarks/results/long_sequence.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import psutil
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from training_shapes import (  # noqa: E402
    PATHS,
    REPO_ROOT,
    actor_for,
    build_model,
    group_batch,
    load_for_path,
    memory_estimate,
    timed,
    write_data,
)

QWEN_VOCAB = 151_936
CPU = torch.device("cpu")


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_pass(args) -> dict:
    """In a fresh process: one path's pass at one shape; seconds (min over repeats), peak RSS."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = group_batch(args.model_dir, args.data_dir, 1, args.n, args.response_length)
    prompt_tokens = int(data.batch["attention_mask"][0, : -args.response_length].sum())
    budget = args.n * (data.batch["input_ids"].shape[1])
    model = load_for_path(args.model_dir, args.path, CPU)
    actor = actor_for(model, args.path, budget)
    baseline = rss_mib()
    if args.which == "log_probs":
        run = lambda: actor.compute_log_probs(data)  # noqa: E731
    else:
        run = lambda: actor.update_policy(data, num_mini_batches=1, step=1)  # noqa: E731
    run()  # warm-up (and the first optimizer state)
    seconds = min(timed(run, CPU) for _ in range(args.repeats))
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline, "prompt_tokens": prompt_tokens}


def measure_entropy(args) -> dict:
    """In a fresh process: peak RSS of one update's logits path at Qwen's vocabulary, the
    entropy metric computed with (`graph`) or without (`no_graph`) autograd."""
    from verl.algorithms import core_algos
    from verl.workers.actor import entropy_without_gradient, forward_response_logits

    torch.set_num_threads(args.threads)
    rows = args.entropy_tokens // args.response_length
    data = group_batch(args.model_dir, args.data_dir, 1, rows, args.response_length)
    model = load_for_path(args.model_dir, "dense", CPU)
    model.resize_token_embeddings(QWEN_VOCAB)
    baseline = rss_mib()
    from verl.workers.engine.micro_batch import trim_padding
    from verl.workers.engine.shared_prefix import prompt_group_labels

    micro = trim_padding(data)
    logits = forward_response_logits(model, micro, prompt_group_labels(micro))
    log_probs = core_algos.log_probs_from_logits(logits, micro.batch["responses"])
    entropy = core_algos.entropy_from_logits(logits) if args.mode == "graph" else entropy_without_gradient(logits)
    (log_probs * micro.batch["advantages"]).sum().backward()
    assert entropy.isfinite().all()  # alive through backward, as the update's metric is
    return {"peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline, "tokens": rows * args.response_length}


def subprocess_result(argv: list[str], label: str) -> dict:
    load = os.getloadavg()[0]
    print(f"[{label}] load average before: {load:.2f}", flush=True)
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *argv], capture_output=True, text=True, cwd=REPO_ROOT
    )
    if result.returncode != 0:
        sys.exit(f"[{label}] failed:\n{result.stderr[-4000:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "load_average_before": load}


def dry_run_estimate_mib(model_dir: str, tokens: int, prompt: int, response: int, n: int, path: str) -> float:
    """The dry run's update-phase activations + logits + dense masks for one micro-batch of
    `tokens` tokens (bf16 on GPU)."""
    memory = memory_estimate(model_dir, tokens, prompt, response, n, path)
    return (memory.update_activations + memory.update_logits + memory.update_packing_mask) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--entropy_tokens", type=int, default=2048)
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks/results/long_sequence.json"))
    # One measurement in this process (the parent starts these).
    parser.add_argument("--measure", choices=["pass", "entropy"])
    parser.add_argument("--model_dir")
    parser.add_argument("--data_dir")
    parser.add_argument("--path", choices=PATHS)
    parser.add_argument("--which", choices=["log_probs", "update"])
    parser.add_argument("--mode", choices=["graph", "no_graph"])
    parser.add_argument("--response_length", type=int)
    args = parser.parse_args()
    if args.measure:
        result = measure_pass(args) if args.measure == "pass" else measure_entropy(args)
        print(json.dumps(result))
        return

    rows, summary = [], {"n": args.n, "threads": args.threads, "repeats": args.repeats, "shapes": []}
    with tempfile.TemporaryDirectory() as work:
        model_dir = build_model(os.path.join(work, "model"))
        data_dir = write_data(os.path.join(work, "data"), 4)
        common = ["--model_dir", model_dir, "--data_dir", data_dir, "--n", str(args.n), "--threads", str(args.threads)]
        for response in args.responses:
            for path in PATHS:
                for which in ("log_probs", "update"):
                    label = f"R={response} {path} {which}"
                    if path == "flex" and which == "update":
                        rows.append({"response": response, "path": path, "pass": which, "skipped": "no flex backward on CPU"})
                        continue
                    result = subprocess_result(
                        [*common, "--measure", "pass", "--path", path, "--which", which, "--response_length",
                         str(response), "--repeats", str(args.repeats)], label,
                    )
                    tokens = args.n * (result["prompt_tokens"] + response)
                    result.update(response=response, path=path, **{"pass": which})
                    if which == "update":
                        result["dry_run_estimate_mib"] = dry_run_estimate_mib(
                            model_dir, tokens, result["prompt_tokens"], response, args.n, path
                        )
                    rows.append(result)
                    print(f"  {label}: {result['seconds']:.3f} s, peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
        entropy = {}
        for mode in ("graph", "no_graph"):
            entropy[mode] = subprocess_result(
                [*common, "--measure", "entropy", "--mode", mode, "--response_length", str(min(1024, args.entropy_tokens)),
                 "--entropy_tokens", str(args.entropy_tokens)], f"entropy {mode}",
            )
    summary["rows"], summary["entropy"] = rows, entropy

    print(f"\none group: prompt ~{rows[0]['prompt_tokens']} tokens + {args.n} x R, {args.threads} threads, "
          f"min of {args.repeats} after a warm-up; each pass in its own process")
    print(f"{'R':>5s} {'path':9s} {'pass':10s} {'s':>8s} {'peak RSS MiB':>13s} {'+ over load':>12s} "
          f"{'dry-run est MiB':>16s} {'load':>5s}")
    for row in rows:
        if "skipped" in row:
            print(f"{row['response']:5d} {row['path']:9s} {row['pass']:10s} {'-':>8s}  ({row['skipped']})")
            continue
        estimate = f"{row['dry_run_estimate_mib']:16.0f}" if "dry_run_estimate_mib" in row else f"{'':16s}"
        print(f"{row['response']:5d} {row['path']:9s} {row['pass']:10s} {row['seconds']:8.3f} "
              f"{row['peak_rss_mib']:13.0f} {row['peak_rss_mib'] - row['baseline_rss_mib']:12.0f} {estimate} "
              f"{row['load_average_before']:5.2f}")
    for response in args.responses:
        by = {(r["path"], r["pass"]): r for r in rows if r["response"] == response and "skipped" not in r}
        for which in ("log_probs", "update"):
            unpacked = by[("unpacked", which)]
            entry = {"response": response, "pass": which}
            for path in ("dense", "segments"):
                entry[f"{path}_speedup_vs_unpacked"] = unpacked["seconds"] / by[(path, which)]["seconds"]
                entry[f"{path}_peak_rss_vs_unpacked_mib"] = by[(path, which)]["peak_rss_mib"] - unpacked["peak_rss_mib"]
            summary["shapes"].append(entry)
            print(f"R={response} {which}: dense {entry['dense_speedup_vs_unpacked']:.2f}x unpacked "
                  f"(peak RSS {entry['dense_peak_rss_vs_unpacked_mib']:+.0f} MiB), segments "
                  f"{entry['segments_speedup_vs_unpacked']:.2f}x ({entry['segments_peak_rss_vs_unpacked_mib']:+.0f} MiB)")
    graph, no_graph = entropy["graph"], entropy["no_graph"]
    print(f"\nentropy metric at {graph['tokens']} response tokens, vocab {QWEN_VOCAB}: peak RSS over load "
          f"{graph['peak_rss_mib'] - graph['baseline_rss_mib']:.0f} MiB with its graph, "
          f"{no_graph['peak_rss_mib'] - no_graph['baseline_rss_mib']:.0f} MiB without")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
