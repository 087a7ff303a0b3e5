"""The perception-objective comparison's tables (train_examples/0-tiny_cpu_perception_sweep.sh): the
shared cold-start SFT model's row and one row per arm after GRPO, each metric as mean +- population
std over seeds, with GRPO's median seconds per step; then every arm's change against the `none` arm
in language-shortcut rate and vision reliance with its standard error; then every run's own numbers.
Markdown; also ROOT/perception.json with the per-seed numbers and the table.

    python3 scripts/perception_table.py outputs/perception
        # reads ROOT/<arm>_seed<N>/summary.json and ROOT/<arm>_seed<N>/grpo/metrics.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep_table import GRPO_STAGE, METRICS, SFT_STAGE, cell, read_runs  # noqa: E402  (the recipe's table)

ARM_ORDER = ("none", "sr_summed", "sr_paper_v2", "papo", "sr_papo")
BASELINE = "none"
# The two numbers the comparison is about: lower shortcut (-1) and higher vision reliance (+1).
COMPARED = (("language_shortcut", -1), ("vision_reliance", +1))


def median_step_seconds(run_dir: str) -> float | None:
    """Median of `timing_s/step` over the GRPO stage's metrics.jsonl (None without one)."""
    path = os.path.join(run_dir, "grpo", "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        steps = [record["timing_s/step"] for record in map(json.loads, filter(str.strip, f)) if "timing_s/step" in record]
    return float(np.median(steps)) if steps else None


def difference(arm: list[float], baseline: list[float]) -> tuple[float | None, float | None]:
    """(mean(arm) - mean(baseline), the standard error of that difference: sqrt(s_a^2/n_a + s_b^2/n_b)
    with sample variances); the difference is None when a side has no value, the SE when a side
    has fewer than 2 seeds."""
    if not arm or not baseline:
        return None, None
    delta = float(np.mean(arm) - np.mean(baseline))
    if len(arm) < 2 or len(baseline) < 2:
        return delta, None
    return delta, float(np.sqrt(np.var(arm, ddof=1) / len(arm) + np.var(baseline, ddof=1) / len(baseline)))


def collect(root: str) -> dict[str, dict[int, dict]]:
    """arm -> seed -> {metric: value after GRPO, ..., "median_step_s": s} for each finished run."""
    finished: dict[str, dict[int, dict]] = {}
    for arm, by_seed in read_runs(root).items():
        for seed, stages in sorted(by_seed.items()):
            if GRPO_STAGE not in stages:
                continue
            row = {key: stages[GRPO_STAGE].get(key) for key, _ in METRICS}
            row["median_step_s"] = median_step_seconds(os.path.join(root, f"{arm}_seed{seed}"))
            finished.setdefault(arm, {})[seed] = row
    return finished


def sft_row(root: str) -> dict | None:
    """The shared SFT model's metrics (every run reports the same ones)."""
    for by_seed in read_runs(root).values():
        for stages in by_seed.values():
            if SFT_STAGE in stages:
                return {key: stages[SFT_STAGE].get(key) for key, _ in METRICS}
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    args = parser.parse_args()
    runs = collect(args.root)
    arms = [a for a in ARM_ORDER if a in runs] + sorted(a for a in runs if a not in ARM_ORDER)
    columns = [*METRICS, ("median_step_s", "GRPO s/step")]

    header = "| run (seeds) | " + " | ".join(title for _, title in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    sft = sft_row(args.root)
    if sft is not None:
        lines.append("| cold-start SFT (shared) | " + " | ".join(cell([sft[k]]) for k, _ in METRICS) + " | - |")
    table: dict[str, dict[str, list[float]]] = {}
    for arm in arms:
        seeds = runs[arm]
        table[arm] = {key: [row[key] for row in seeds.values() if row[key] is not None] for key, _ in columns}
        cells = [cell(table[arm][key], scale=1.0 if key == "median_step_s" else 100.0) for key, _ in columns]
        lines.append(f"| {arm} ({', '.join(map(str, sorted(seeds)))}) | " + " | ".join(cells) + " |")
    print("\n".join(lines))

    comparison: dict[str, dict[str, dict]] = {}
    if BASELINE in table:
        titles = dict(METRICS)
        print(f"\n| arm vs {BASELINE} | " + " | ".join(f"Δ {titles[k]} (± SE)" for k, _ in COMPARED) + " | both beyond 2 SE |")
        print("|" + "---|" * (len(COMPARED) + 2))
        for arm in arms:
            if arm == BASELINE:
                continue
            comparison[arm] = {}
            cells = []
            for key, better in COMPARED:
                delta, se = difference(table[arm][key], table[BASELINE][key])
                beyond = se is not None and better * delta > 2 * se
                comparison[arm][key] = {"delta": delta, "se": se, "beyond_2se_in_better_direction": beyond}
                shown = "-" if delta is None else f"{100 * delta:+.1f}" + ("" if se is None else f" ± {100 * se:.1f}")
                cells.append(shown)
            both = all(comparison[arm][key]["beyond_2se_in_better_direction"] for key, _ in COMPARED)
            print(f"| {arm} | " + " | ".join(cells) + f" | {'yes' if both else 'no'} |")

    print("\n| arm | seed | " + " | ".join(title for _, title in columns) + " |")
    print("|" + "---|" * (len(columns) + 2))
    for arm in arms:
        for seed, row in sorted(runs[arm].items()):
            cells = ["-" if row[k] is None else (f"{row[k]:.2f}" if k == "median_step_s" else f"{100 * row[k]:.1f}")
                     for k, _ in columns]
            print(f"| {arm} | {seed} | " + " | ".join(cells) + " |")

    out = os.path.join(args.root, "perception.json")
    with open(out, "w") as f:
        json.dump({"sft": sft, "runs": {arm: {str(s): row for s, row in runs[arm].items()} for arm in arms},
                   "table": table, f"vs_{BASELINE}": comparison}, f, indent=2)
    print(f"\nwrote {out} (fractions; table cells in %, mean ± population std over seeds; SE from sample std)")


if __name__ == "__main__":
    main()
