"""Per question type: does GRPO fall below its SFT start? (issue 30's transfer check)

For every run folder ROOT/<arm>_seed<N> of a seed sweep (the recipe's layout: eval_sft/ and
eval_grpo/ hold verl.eval.score summaries, grouped by the data's `question_type` column), prints
one Markdown row per arm and question type: SFT accuracy, GRPO accuracy (mean over seeds), the
difference and its standard error, and whether GRPO is below SFT by more than 2 SE.

The standard error of the difference is
    sqrt( p_sft (1 - p_sft) / n  +  p_grpo (1 - p_grpo) / n  +  var_seeds(p_grpo) / seeds )
with p_grpo the mean over seeds and n the prompts of that type: the binomial noise of each side's
n items, plus the seed-to-seed spread of the GRPO mean. It is conservative: both sides are scored
on the same items, whose noise partly cancels in the difference.

    python3 scripts/per_type_table.py outputs/perception [--group question_type]   # writes ROOT/per_type.json
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep_table import RUN_NAME  # noqa: E402  (the <arm>_seed<N> folder names of every sweep)

SUMMARY = os.path.join("{stage}", "val.summary.json")


def group_accuracy(summary_path: str, group: str) -> dict[str, tuple[float, int]]:
    """{group value: (accuracy, prompts)} from one verl.eval.score summary."""
    with open(summary_path) as f:
        groups = json.load(f).get("groups", {})
    if group not in groups:
        raise SystemExit(f"{summary_path} has no '{group}' groups (its groups: {sorted(groups)})")
    return {value: (row["accuracy"], int(row["n_prompts"])) for value, row in groups[group].items()}


def read_sweep(root: str, group: str) -> dict[str, dict]:
    """arm -> {"sft": {type: (acc, n)}, "grpo": {seed: {type: (acc, n)}}} for finished runs."""
    arms: dict[str, dict] = {}
    for run_dir in sorted(glob.glob(os.path.join(root, "*_seed*"))):
        match = RUN_NAME.match(os.path.basename(run_dir))
        grpo_path = os.path.join(run_dir, SUMMARY.format(stage="eval_grpo"))
        if match is None or not os.path.isfile(grpo_path):
            continue
        arm = arms.setdefault(match["variant"], {"sft": None, "grpo": {}})
        arm["sft"] = arm["sft"] or group_accuracy(os.path.join(run_dir, SUMMARY.format(stage="eval_sft")), group)
        arm["grpo"][int(match["seed"])] = group_accuracy(grpo_path, group)
    if not arms:
        raise SystemExit(f"no finished <arm>_seed<N>/eval_grpo under {root}")
    return arms


def compare(sft: tuple[float, int], grpo_by_seed: list[tuple[float, int]]) -> dict[str, float]:
    """SFT vs the seeds' GRPO accuracy on one question type: the difference, its SE, and z."""
    p_sft, n = sft
    accuracies = np.array([accuracy for accuracy, _ in grpo_by_seed])
    p_grpo = float(accuracies.mean())
    seed_var = float(accuracies.var(ddof=1)) if len(accuracies) > 1 else 0.0
    se = math.sqrt(p_sft * (1 - p_sft) / n + p_grpo * (1 - p_grpo) / n + seed_var / len(accuracies))
    difference = p_grpo - p_sft
    return {"sft": p_sft, "grpo": p_grpo, "difference": difference, "se": se, "n": n, "seeds": len(accuracies),
            "z": difference / se if se > 0 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--group", default="question_type", help="the data column the eval grouped by")
    args = parser.parse_args()
    arms = read_sweep(args.root, args.group)
    table: dict[str, dict[str, dict[str, float]]] = {}
    lines = [f"| arm | {args.group} | SFT | GRPO (mean over seeds) | GRPO - SFT | SE | below SFT by > 2 SE |",
             "|---|---|---|---|---|---|---|"]
    for arm, runs in sorted(arms.items()):
        seeds = sorted(runs["grpo"])
        for value in sorted(runs["sft"]):
            row = compare(runs["sft"][value], [runs["grpo"][seed][value] for seed in seeds])
            table.setdefault(arm, {})[value] = row
            lines.append(
                f"| {arm} ({row['seeds']} seeds) | {value} (n={row['n']}) | {100 * row['sft']:.1f} | {100 * row['grpo']:.1f} | "
                f"{100 * row['difference']:+.1f} | {100 * row['se']:.1f} | {'**yes**' if row['z'] < -2 else 'no'} |"
            )
    print("\n".join(lines))
    out = os.path.join(args.root, "per_type.json")
    with open(out, "w") as f:
        json.dump({"group": args.group, "table": table}, f, indent=2)
    print(f"\nwrote {out} (accuracies as fractions)")


if __name__ == "__main__":
    main()
