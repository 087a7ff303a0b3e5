"""GRPO step time per stage, with and without the Vision-SR1 self-reward, through the real CLI.

Runs `python3 -m verl.trainer.main` twice on the same config, engine and data (self_reward on /
off; `see_think` reward when off, so the rollout pass is identical), drops the first step (warm-up),
and prints the median time of every stage, tokens/s, and the self-reward overhead ratio. Writes
benchmarks/results/step_time.json.

    python3 benchmarks/step_time.py --model_path models/tiny_qwen25vl --data_dir data/tiny_shapes \
        [--engine hf|vllm] [--steps 6] [--missing_description zero|whole_response]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(label: str, overrides: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as ckpt:
        command = [
            sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu_selfReward.yaml",
            f"trainer.save_checkpoint_path={ckpt}", "trainer.save_freq=1000", "trainer.val_freq=-1",
            "trainer.val_before_train=false", "trainer.logger=[file]", *overrides,
        ]
        print(f"[{label}] {' '.join(command[3:])}", flush=True)
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"[{label}] failed:\n{(result.stdout + result.stderr)[-4000:]}")
        with open(os.path.join(ckpt, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f]


def medians(records: list[dict]) -> dict[str, float]:
    timed = records[1:] if len(records) > 1 else records  # step 1 pays one-off warm-up costs
    keys = sorted({k for r in timed for k in r if k.startswith(("timing_s/", "perf/tokens_per_s"))})
    return {k: statistics.median(r[k] for r in timed if k in r) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="models/tiny_qwen25vl")
    parser.add_argument("--data_dir", default="data/tiny_shapes")
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--missing_description", default="zero", choices=["zero", "whole_response"],
                        help="whole_response forces the re-prompt pass for a model that writes no <description>")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks/results/step_time.json"))
    args = parser.parse_args()
    common = [
        f"worker.actor.model.model_path={args.model_path}",
        f"data.train_files={args.data_dir}/train.parquet",
        f"data.val_files={args.data_dir}/val.parquet",
        f"worker.rollout.name={args.engine}",
        f"trainer.max_steps={args.steps}",
    ]
    baseline = medians(run("without self-reward", common + ["self_reward.enable=false", "reward.reward_function=see_think"]))
    with_sr = medians(run("with self-reward", common + [
        "self_reward.enable=true", f"self_reward.missing_description={args.missing_description}",
    ]))
    stages = sorted(set(baseline) | set(with_sr))
    print(f"\nengine={args.engine} steps={args.steps} (median of steps 2..{args.steps})")
    print(f"{'stage':32s} {'no self-reward':>15s} {'self-reward':>12s}")
    for stage in stages:
        print(f"{stage:32s} {baseline.get(stage, float('nan')):15.3f} {with_sr.get(stage, float('nan')):12.3f}")
    ratio = with_sr["timing_s/step"] / baseline["timing_s/step"]
    print(f"\nself-reward step-time ratio: {ratio:.3f}x")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"engine": args.engine, "steps": args.steps, "model_path": args.model_path,
                   "missing_description": args.missing_description, "without_self_reward": baseline,
                   "with_self_reward": with_sr, "step_time_ratio": ratio}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
