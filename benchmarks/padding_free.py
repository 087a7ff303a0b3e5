"""Padded vs padding-free vs shared-prompt training path on one process, interleaved rounds
(robust to a busy machine).

The same rollout-like batch (GRPO groups: `--rows / --group_size` sr1 format prompts with one
image, each with `--group_size` different random responses of `--response_length` tokens; prompts
left-padded to the tiny config's max_prompt_length 400) goes through the actor's log-prob pass
and one update, three ways per round:

- padded: what the code did first: fixed micro-batches of `--micro_batch_size` rows, every
  row as wide as max_prompt_length + max_response_length (trimming switched off);
- padding_free: micro-batches cut to their longest row, formed by the token budget
  (the default: micro_batch_size x (max_prompt_length + max_response_length)), one row each;
- shared_prompt: as padding_free, and a prompt's responses packed into one sequence that
  computes the prompt and its image once (`worker.actor.model.share_prompt_prefix`, the default).

Rounds alternate the three so all see the same background load; prints median seconds per
pass and the speed-ups over padded, writes benchmarks/results/padding_free.json.

    python3 benchmarks/padding_free.py [--rows 64] [--group_size 8] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from verl.protocol import DataProto  # noqa: E402
from verl.workers import actor as actor_module  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402
from verl.workers.engine.micro_batch import trim_padding  # noqa: E402

MAX_PROMPT = 400


def build_batch(work: str, rows: int, group_size: int, response_length: int) -> tuple[str, DataProto]:
    from transformers import AutoProcessor, AutoTokenizer

    from verl.data.rl_dataset import RLDataset, collate_rl
    from verl.toy.synthetic import write_synthetic_dataset
    from verl.toy.tiny_model import build_tiny_model

    model_dir = build_tiny_model(os.path.join(work, "model"), seed=0)
    format_prompt = os.path.join(REPO_ROOT, "configs/format_prompt/sr1.jinja")
    write_synthetic_dataset(os.path.join(work, "data"), format_prompt, seed=0, train_size=rows, val_size=8, sft_size=8)
    tokenizer, processor = AutoTokenizer.from_pretrained(model_dir), AutoProcessor.from_pretrained(model_dir)
    dataset = RLDataset(os.path.join(work, "data/train.parquet"), tokenizer, processor, max_prompt_length=MAX_PROMPT,
                        min_pixels=3136, max_pixels=12544, format_prompt=format_prompt)
    # rows // group_size prompts, each repeated for its group's responses (as rollout.n does).
    tensors, non_tensors = collate_rl(
        [dataset[i // group_size] for i in range(rows)], tokenizer.pad_token_id, MAX_PROMPT
    )
    generator = torch.Generator().manual_seed(0)
    responses = torch.randint(0, 500, (rows, response_length), generator=generator)
    mask = torch.ones(rows, response_length, dtype=torch.long)
    data = DataProto.from_dict(
        tensors={
            "input_ids": torch.cat([tensors["input_ids"], responses], 1),
            "attention_mask": torch.cat([tensors["attention_mask"], mask], 1),
            "responses": responses, "response_mask": mask,
            "advantages": torch.randn(rows, 1, generator=generator) * mask,
        },
        non_tensors={"multi_modal_inputs": non_tensors["multi_modal_inputs"]},
    )
    return model_dir, data


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64, help="rows on the device (64 = the tiny config's per rank)")
    parser.add_argument("--group_size", type=int, default=8, help="responses per prompt (rollout.n)")
    parser.add_argument("--response_length", type=int, default=32)
    parser.add_argument("--micro_batch_size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks/results/padding_free.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from verl.workers.engine.model import build_policy

    with tempfile.TemporaryDirectory() as work:
        model_dir, data = build_batch(work, args.rows, args.group_size, args.response_length)
        model = build_policy(model_dir, torch.device("cpu"))
    config = ActorConfig(use_kl_loss=False)
    config.micro_batch_size_per_device_for_update = config.micro_batch_size_per_device_for_experience = args.micro_batch_size
    budget = args.micro_batch_size * (MAX_PROMPT + args.response_length)
    padded_width = data.batch["input_ids"].shape[1]
    trimmed_width = trim_padding(data).batch["input_ids"].shape[1]

    def run(arm: str) -> tuple[float, float]:
        # The padded arm: no trimming and fixed row counts, i.e. the first path.
        padding_free = arm != "padded"
        actor_module.trim_padding = trim_padding if padding_free else (lambda d: d)
        actor = actor_module.PPOActor(model, config, 1000, 1.0, max_token_len=budget if padding_free else None,
                                      max_token_len_for_experience=budget if padding_free else None,
                                      share_prefix=arm == "shared_prompt")
        log_prob_s = timed(lambda: actor.compute_log_probs(data))
        update_s = timed(lambda: actor.update_policy(data, 1, 1))
        return log_prob_s, update_s

    arms = ("padded", "padding_free", "shared_prompt")
    run("shared_prompt")  # warm-up
    results = {arm: [] for arm in arms}
    for _ in range(args.rounds):
        for arm in arms:
            results[arm].append(run(arm))
    actor_module.trim_padding = trim_padding
    summary = {
        "rows": args.rows, "group_size": args.group_size, "threads": args.threads, "rounds": args.rounds,
        "padded_width": padded_width, "trimmed_width": trimmed_width, "load_average": os.getloadavg()[0],
    }
    print(f"{args.rows} rows = {args.rows // args.group_size} prompts x {args.group_size} responses, prompt padded "
          f"to {MAX_PROMPT}, responses {args.response_length} tokens; widths {padded_width} -> {trimmed_width}; "
          f"{args.threads} thread(s); median of {args.rounds} rounds")
    print(f"{'pass':12s} {'padded s':>9s} {'padding-free s':>15s} {'shared-prompt s':>16s} {'speed-ups vs padded':>20s}")
    for index, name in enumerate(("log_probs", "update")):
        padded, free, shared = (statistics.median(r[index] for r in results[arm]) for arm in arms)
        summary[name] = {"padded_s": padded, "padding_free_s": free, "shared_prompt_s": shared,
                         "speedup_padding_free": padded / free, "speedup_shared_prompt": padded / shared}
        print(f"{name:12s} {padded:9.3f} {free:15.3f} {shared:16.3f} {padded / free:9.2f}x {padded / shared:8.2f}x")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {args.out} (load average {summary['load_average']:.2f})")


if __name__ == "__main__":
    main()
