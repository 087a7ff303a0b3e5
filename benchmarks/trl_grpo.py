"""TRL's GRPOTrainer on prepared prompts: the reference side of benchmarks/vs_trl.py.

Runs in TRL's own virtualenv (benchmarks/requirements-trl.txt), never in the project's:

    .venv-trl/bin/python benchmarks/trl_grpo.py --model_path DIR --prompts FILE.jsonl --out FILE.json \
        --prompts_per_step 16 --generations 8 --response_length 32 --steps 12 --threads 2

Equal work with the project's GRPO step: completions forced to `response_length` tokens
(`min_new_tokens`), no reference model (`beta=0`), one generation and one optimizer step per
step (`num_iterations=1`, `steps_per_generation=1`, `gradient_accumulation_steps=1`), fp32 on
CPU without gradient checkpointing. Writes per-step wall times, vision-tower calls, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from datasets import Dataset
from PIL import Image
from transformers import AutoProcessor, TrainerCallback
from trl import GRPOConfig, GRPOTrainer


class StepTimer(TrainerCallback):
    def __init__(self):
        self.starts: list[float] = []
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.starts.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.starts[-1])


def length_reward(completions, **kwargs):
    """Cheap and non-constant (so advantages are not all zero): characters of the completion."""
    return [float(len(c if isinstance(c, str) else c[-1]["content"])) / 100.0 for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--prompts", required=True, help="jsonl rows {text, image}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--prompts_per_step", type=int, default=16)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--response_length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with open(args.prompts) as f:
        rows = [json.loads(line) for line in f]
    dataset = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": row["text"]}] for row in rows],
        "images": [[Image.open(row["image"]).convert("RGB")] for row in rows],
    })
    processor = AutoProcessor.from_pretrained(args.model_path)
    rows_per_step = args.prompts_per_step * args.generations
    config = GRPOConfig(
        output_dir=args.out + ".trainer",
        per_device_train_batch_size=rows_per_step,  # counts completions, not prompts
        num_generations=args.generations,
        max_completion_length=args.response_length,
        generation_kwargs={"min_new_tokens": args.response_length},
        temperature=1.0,
        top_p=1.0,
        beta=0.0,
        num_iterations=1,
        steps_per_generation=1,
        gradient_accumulation_steps=1,
        learning_rate=1e-5,
        max_steps=args.steps,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=args.model_path, reward_funcs=length_reward, args=config, train_dataset=dataset,
        processing_class=processor, callbacks=[timer],
    )
    vision_calls = [0]
    trainer.model.model.visual.register_forward_hook(lambda *_: vision_calls.__setitem__(0, vision_calls[0] + 1))
    trainer.train()
    completion_lengths = [entry["completions/mean_length"] for entry in trainer.state.log_history
                          if "completions/mean_length" in entry]
    result = {
        "step_seconds": timer.seconds,
        "completion_mean_length": completion_lengths,
        "rows_per_step": rows_per_step,
        "vision_tower_calls": vision_calls[0],
        "peak_rss_mib_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
