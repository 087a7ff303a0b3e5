"""One-screen summary of a tiny CPU recipe run: validation metrics before SFT, after SFT and
after GRPO (from the eval summaries verl.eval.score wrote), the learning targets of the recipe
checked against them, and the same as JSON (OUT_DIR/summary.json).

    python3 scripts/recipe_summary.py OUT_DIR     # reads OUT_DIR/eval_{base,sft,grpo}/*.summary.json

The targets say whether the run shows a model that uses its image (the blank-image control) and
GRPO improving on the cold start; a missed target is printed as MISSED, never hidden, and never
fails the script (a run's numbers are its result).
"""

from __future__ import annotations

import argparse
import glob
import json
import os

STAGES = (("base", "random init"), ("sft", "after cold-start SFT"), ("grpo", "after GRPO"))
COLUMNS = (
    ("accuracy", "accuracy"),
    ("accuracy_on_distractors", "distractors"),
    ("format", "format"),
    ("perception_sufficient", "perception"),
    ("language_shortcut", "shortcut"),
    ("accuracy_blank_image", "blank-image acc"),
    ("vision_reliance", "vision reliance"),
)


def load_summary(out_dir: str, stage: str) -> dict | None:
    paths = glob.glob(os.path.join(out_dir, f"eval_{stage}", "*.summary.json"))
    if not paths:
        return None
    with open(paths[0]) as f:
        return json.load(f)


def stage_row(summary: dict) -> dict[str, float | None]:
    """The recipe's metrics of one eval summary (None where the eval did not measure one)."""
    overall = summary["overall"]
    row = {key: overall.get(key) for key, _ in COLUMNS if key != "accuracy_on_distractors"}
    distractor = summary.get("groups", {}).get("distractor", {}).get("true")
    row["accuracy_on_distractors"] = distractor["accuracy"] if distractor else None
    return row


def targets(rows: dict[str, dict]) -> list[tuple[str, bool | None, str]]:
    """(target, met?, measured) for each learning target the available stages allow checking;
    met is None when a number it needs was not measured."""
    checks: list[tuple[str, bool | None, str]] = []
    sft, grpo = rows.get("sft"), rows.get("grpo")

    def check(name: str, values: list[float | None], rule, shown: str) -> None:
        if any(value is None for value in values):
            checks.append((name, None, "not measured"))
        else:
            checks.append((name, bool(rule(*values)), shown.format(*(100 * v for v in values))))

    if sft is not None:
        check("SFT sees: vision reliance >= 50%", [sft["vision_reliance"]], lambda r: r >= 0.5, "{:.1f}%")
        check(
            "SFT sees: blank-image accuracy >= 25 points below",
            [sft["accuracy"], sft["accuracy_blank_image"]],
            lambda a, b: a - b >= 0.25,
            "{:.1f}% vs {:.1f}%",
        )
        check("SFT leaves room: accuracy in [45%, 85%]", [sft["accuracy"]], lambda a: 0.45 <= a <= 0.85, "{:.1f}%")
    if sft is not None and grpo is not None:
        check(
            "GRPO: accuracy >= SFT + 10 points",
            [sft["accuracy"], grpo["accuracy"]],
            lambda s, g: g - s >= 0.10,
            "{:.1f}% -> {:.1f}%",
        )
        check(
            "GRPO: distractor accuracy >= SFT + 10 points",
            [sft["accuracy_on_distractors"], grpo["accuracy_on_distractors"]],
            lambda s, g: g - s >= 0.10,
            "{:.1f}% -> {:.1f}%",
        )
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    args = parser.parse_args()
    summaries = {stage: load_summary(args.out_dir, stage) for stage, _ in STAGES}
    summaries = {stage: summary for stage, summary in summaries.items() if summary is not None}
    rows = {stage: stage_row(summary) for stage, summary in summaries.items()}
    if not rows:
        raise SystemExit(f"no eval_*/ summaries under {args.out_dir}")
    titles = dict(STAGES)
    datasets = {stage: summary.get("data") for stage, summary in summaries.items()}
    width = max(len(titles[stage]) for stage in rows) + 2
    if len(set(datasets.values())) == 1:
        print(f"\nvalidation data: {next(iter(datasets.values())) or 'not recorded'}")
    else:  # stages evaluated on different data are not comparable: say so, per stage
        print("\nvalidation data DIFFERS between stages: " + ", ".join(f"{titles[s]}: {d}" for s, d in datasets.items()))
    print(f"{'stage':{width}s}" + "".join(f"{title:>17s}" for _, title in COLUMNS))
    for stage, row in rows.items():
        cells = "".join(f"{'-' if row[k] is None else f'{100 * row[k]:.1f}%':>17s}" for k, _ in COLUMNS)
        print(f"{titles[stage]:{width}s}{cells}")
    checks = targets(rows)
    if checks:
        print("\nlearning targets")
        for name, met, measured in checks:
            verdict = "not checked" if met is None else ("met" if met else "MISSED")
            print(f"  {verdict:12s}{name}: {measured}")
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
        json.dump(
            {
                "data": datasets,
                "stages": {titles[stage]: row for stage, row in rows.items()},
                "targets": [{"target": name, "met": met, "measured": measured} for name, met, measured in checks],
            },
            f,
            indent=2,
        )
    print(f"\nwrote {os.path.join(args.out_dir, 'summary.json')}")


if __name__ == "__main__":
    main()
