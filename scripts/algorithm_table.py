"""The algorithm comparison's table (train_examples/0-tiny_cpu_algorithm_sweep.sh): validation
accuracy of each arm at every validation step, mean +- population std over seeds, as Markdown;
also the last step's distractor-free accuracy pieces and the seconds per step. Writes
ROOT/algorithms.json with every run's numbers.

    python3 scripts/algorithm_table.py outputs/algorithms    # reads ROOT/<arm>_seed<N>/metrics.jsonl
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep_table import cell  # noqa: E402  (mean ± sd over seeds, as the recipe's table)

RUN_NAME = re.compile(r"^(?P<arm>.+)_seed(?P<seed>\d+)$")
ARM_ORDER = ("grpo", "grpo_tis", "dapo", "gspo")
LAST_STEP_METRICS = (
    ("val/reward/perception_sufficient", "perception sufficient"),
    ("val/vision/vision_reliance", "vision reliance"),
)


def read_run(path: str) -> dict:
    """Validation accuracy by step, the last validation's other metrics, median step seconds."""
    with open(path) as f:
        records = [json.loads(line) for line in f]
    accuracy = {int(r["step"]): r["val/reward/accuracy"] for r in records if "val/reward/accuracy" in r}
    last_val = [r for r in records if "val/reward/accuracy" in r][-1]
    steps = [r["timing_s/step"] for r in records if "timing_s/step" in r]
    return {
        "val_accuracy": accuracy,
        "last": {key: last_val.get(key) for key, _ in LAST_STEP_METRICS},
        "median_step_s": float(np.median(steps)) if steps else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    args = parser.parse_args()
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(glob.glob(os.path.join(args.root, "*", "metrics.jsonl"))):
        match = RUN_NAME.match(os.path.basename(os.path.dirname(path)))
        if match is None or not os.path.exists(os.path.join(os.path.dirname(path), "done")):
            continue
        runs.setdefault(match["arm"], {})[int(match["seed"])] = read_run(path)
    if not runs:
        raise SystemExit(f"no finished <arm>_seed<N>/metrics.jsonl under {args.root}")
    arms = [a for a in ARM_ORDER if a in runs] + sorted(a for a in runs if a not in ARM_ORDER)
    steps = sorted({s for arm in runs.values() for run in arm.values() for s in run["val_accuracy"]})
    header = ["arm (seeds)", *[f"val acc @ {s}" for s in steps], "last - first",
              *[name for _, name in LAST_STEP_METRICS], "s/step"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for arm in arms:
        seeds = runs[arm]
        gains = [run["val_accuracy"][steps[-1]] - run["val_accuracy"][steps[0]] for run in seeds.values()
                 if steps[0] in run["val_accuracy"] and steps[-1] in run["val_accuracy"]]
        row = [f"{arm} ({', '.join(map(str, sorted(seeds)))})"]
        row += [cell([run["val_accuracy"].get(s) for run in seeds.values()]) for s in steps]
        row.append(cell(gains))
        row += [cell([run["last"][key] for run in seeds.values()]) for key, _ in LAST_STEP_METRICS]
        row.append(cell([run["median_step_s"] for run in seeds.values()], scale=1.0))
        print("| " + " | ".join(row) + " |")
    with open(os.path.join(args.root, "algorithms.json"), "w") as f:
        json.dump({arm: {str(seed): run for seed, run in seeds.items()} for arm, seeds in runs.items()}, f, indent=2)
    print(f"wrote {os.path.join(args.root, 'algorithms.json')}")


if __name__ == "__main__":
    main()
