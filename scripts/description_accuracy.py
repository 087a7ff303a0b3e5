"""How much of each scene a model's descriptions get right, on a synthetic task's val split (shapes:
verl/toy/synthetic.py, scenes: verl/toy/scenes.py): the object count, the colours, the kinds, the
(colour, kind) pairs, the whole objects with their slot (shapes) or size word (scenes), and the exact
list in order, as % of prompts, per evaluation file. The perceptions themselves, measured on every
prompt whatever its question: a perception GRPO unlearns shows here even where no question asks it.

    python scripts/description_accuracy.py --task scenes --seed 0 --val 200 outputs/scenes/*/eval_grpo/val.jsonl

--task, --seed and --val are the ones the val split was built with (make_synthetic_dataset.py, whose
other flags at their defaults); each response is matched to its scene by dataset_index, and a
question that differs is an error naming the file and line.
"""

from __future__ import annotations

import argparse
import json

from verl.toy import scenes, synthetic
from verl.toy.synthetic import DESCRIPTION_CHECKS

TASKS = {"shapes": synthetic, "scenes": scenes}


def file_accuracy(path: str, samples: list, description_accuracy) -> dict[str, float]:
    totals = dict.fromkeys(DESCRIPTION_CHECKS, 0)
    rows = 0
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            row = json.loads(line)
            sample = samples[row["dataset_index"]]
            if row["problem"] != sample.question:
                raise SystemExit(f"{path}:{line_number}: question {row['problem']!r} is not the split's "
                                 f"{sample.question!r} (another --task, --seed or --val?)")
            for check, right in description_accuracy(row["response"], sample).items():
                totals[check] += right
            rows += 1
    return {"n": rows, **{check: 100.0 * totals[check] / rows for check in DESCRIPTION_CHECKS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True, help="which synthetic task built the split")
    parser.add_argument("--seed", type=int, required=True, help="the val split's dataset seed")
    parser.add_argument("--val", type=int, required=True, help="the val split's rows")
    parser.add_argument("files", nargs="+", help="evaluation response files (validation_examples/tiny_cpu.sh's NAME.jsonl)")
    args = parser.parse_args()
    task = TASKS[args.task]
    samples = task.generate_split(args.val, args.seed, "val")
    print("| file | n | " + " | ".join(DESCRIPTION_CHECKS) + " |")
    print("|---|---|" + "---|" * len(DESCRIPTION_CHECKS))
    for path in args.files:
        result = file_accuracy(path, samples, task.description_accuracy)
        print(f"| {path} | {result['n']} | " + " | ".join(f"{result[c]:.1f}" for c in DESCRIPTION_CHECKS) + " |")


if __name__ == "__main__":
    main()
