"""The response budget (data.max_response_length, in tokens) the tiny recipe gives GRPO and its evals
on a dataset: the longest cold-start SFT answer with its end token, rounded up to a multiple of 32,
and never below the recipe's own 96 (configs/tiny_cpu_selfReward.yaml).

A budget below the SFT targets cuts the longest answers short: on the scenes task (4-object
descriptions, up to 113 tokens) 12% of them would lose their answer and with it every reward.

    python scripts/response_budget.py --model models/tiny_qwen25vl --sft data/tiny_scenes/sft.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from transformers import AutoTokenizer

RECIPE_BUDGET = 96
ROUND_TO = 32


def longest_answer_tokens(sft_file: str, tokenizer) -> int:
    """Tokens of the longest assistant turn in an SFT file (messages format), its end token included."""
    with open(sft_file) as f:
        records = json.load(f)
    longest = 0
    for index, record in enumerate(records):
        turns = [m["content"] for m in record.get("messages", []) if m.get("role") == "assistant"]
        if not turns:
            raise ValueError(f"{sft_file}: record {index} has no assistant turn")
        longest = max(longest, *(len(tokenizer(text).input_ids) + 1 for text in turns))
    return longest


def response_budget(longest: int, floor: int = RECIPE_BUDGET) -> int:
    return max(floor, ROUND_TO * math.ceil(longest / ROUND_TO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder whose tokenizer counts the tokens")
    parser.add_argument("--sft", required=True, help="the cold-start SFT file (messages format)")
    args = parser.parse_args()
    longest = longest_answer_tokens(args.sft, AutoTokenizer.from_pretrained(args.model))
    budget = response_budget(longest)
    print(f"response budget {budget} tokens (longest SFT answer {longest} tokens in {args.sft})", file=sys.stderr)
    print(budget)


if __name__ == "__main__":
    main()
