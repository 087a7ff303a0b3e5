"""One-screen summary of a tiny CPU recipe run: validation metrics before SFT, after SFT and
after GRPO (from the eval summaries verl.eval.score wrote), also as JSON.

    python3 scripts/recipe_summary.py OUT_DIR     # reads OUT_DIR/eval_{base,sft,grpo}/*.summary.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os

STAGES = (("base", "random init"), ("sft", "after cold-start SFT"), ("grpo", "after GRPO"))
COLUMNS = (
    ("accuracy", "accuracy"),
    ("format", "format"),
    ("perception_sufficient", "perception sufficient"),
    ("language_shortcut", "language shortcut"),
)


def load_summary(out_dir: str, stage: str) -> dict | None:
    paths = glob.glob(os.path.join(out_dir, f"eval_{stage}", "*.summary.json"))
    if not paths:
        return None
    with open(paths[0]) as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    args = parser.parse_args()
    rows = {}
    for stage, title in STAGES:
        summary = load_summary(args.out_dir, stage)
        if summary is None:
            continue
        overall = summary["overall"]
        row = {key: overall.get(key) for key, _ in COLUMNS}
        distractor = summary.get("groups", {}).get("distractor", {}).get("true")
        row["accuracy_on_distractors"] = distractor["accuracy"] if distractor else None
        rows[title] = row
    if not rows:
        raise SystemExit(f"no eval_*/ summaries under {args.out_dir}")
    headers = [title for _, title in COLUMNS] + ["accuracy on distractors"]
    keys = [key for key, _ in COLUMNS] + ["accuracy_on_distractors"]
    width = max(len(t) for t in rows) + 2
    print(f"\n{'validation (synthetic shapes)':{width}s}" + "".join(f"{h:>24s}" for h in headers))
    for title, row in rows.items():
        cells = "".join(f"{'-' if row[k] is None else f'{100 * row[k]:.1f}%':>24s}" for k in keys)
        print(f"{title:{width}s}{cells}")
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(f"\nwrote {os.path.join(args.out_dir, 'summary.json')}")


if __name__ == "__main__":
    main()
