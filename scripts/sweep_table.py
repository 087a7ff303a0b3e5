"""The tiny recipe's results table from a seed sweep (train_examples/0-tiny_cpu_seed_sweep.sh):
one row for the shared cold-start SFT model and one per variant after GRPO, each metric as
mean +- std over seeds (population std), as Markdown; also ROOT/sweep.json with every run's numbers.

    python3 scripts/sweep_table.py outputs/sweep     # reads ROOT/<variant>_seed<N>/summary.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

import numpy as np

METRICS = (
    ("accuracy", "accuracy"),
    ("accuracy_on_distractors", "distractor acc"),
    ("perception_sufficient", "perception sufficient"),
    ("language_shortcut", "language shortcut"),
    ("accuracy_blank_image", "blank-image acc"),
    ("vision_reliance", "vision reliance"),
)
SFT_STAGE, GRPO_STAGE = "after cold-start SFT", "after GRPO"
RUN_NAME = re.compile(r"^(?P<variant>.+)_seed(?P<seed>\d+)$")


def read_runs(root: str) -> dict[str, dict[int, dict]]:
    """variant -> seed -> that run's summary.json stages."""
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(glob.glob(os.path.join(root, "*", "summary.json"))):
        match = RUN_NAME.match(os.path.basename(os.path.dirname(path)))
        if match is None:
            continue
        with open(path) as f:
            stages = json.load(f)["stages"]
        runs.setdefault(match["variant"], {})[int(match["seed"])] = stages
    if not runs:
        raise SystemExit(f"no <variant>_seed<N>/summary.json under {root}")
    return runs


def cell(values: list[float | None], scale: float = 100.0) -> str:
    """mean ± population sd of the values present, times `scale` (100: fractions as percent)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{scale * values[0]:.1f}"
    return f"{scale * np.mean(values):.1f} ± {scale * np.std(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    args = parser.parse_args()
    runs = read_runs(args.root)
    rows: list[tuple[str, dict[str, list[float]]]] = []
    # The SFT model is shared: every run reports the same SFT numbers; show them once.
    any_run = next(iter(next(iter(runs.values())).values()))
    sft = any_run.get(SFT_STAGE)
    if sft is not None:
        rows.append(("cold-start SFT (shared)", {key: [sft[key]] for key, _ in METRICS if sft.get(key) is not None}))
    for variant, by_seed in sorted(runs.items()):
        finished = [stages[GRPO_STAGE] for _, stages in sorted(by_seed.items()) if GRPO_STAGE in stages]
        if finished:
            values = {key: [row[key] for row in finished if row.get(key) is not None] for key, _ in METRICS}
            rows.append((f"GRPO {variant} ({len(finished)} seeds)", values))
    header = "| run | " + " | ".join(title for _, title in METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 1)]
    for name, values in rows:
        lines.append(f"| {name} | " + " | ".join(cell(values[key]) if values.get(key) else "-" for key, _ in METRICS) + " |")
    print("\n".join(lines))
    out = os.path.join(args.root, "sweep.json")
    with open(out, "w") as f:
        json.dump({"runs": {v: {str(s): st for s, st in by_seed.items()} for v, by_seed in runs.items()},
                   "table": {name: values for name, values in rows}}, f, indent=2)
    print(f"\nwrote {out} (values in %, mean ± population std over seeds)")


if __name__ == "__main__":
    main()
