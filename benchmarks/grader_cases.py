"""The three answer graders side by side on a case table: builtin (verl.rewards.grader), mathruler, math-verify.

Each case is (category, given answer, ground truth, expected verdict, problem text or ""); every
grader sees the response ``... \\boxed{given}`` (each extracts the box its own way). The expected
verdicts encode the project's rules: integers are exact (10001 is not 10000), unreduced
fractions are not the reduced one (mathruler's rule), escaped-brace sets equal plain sets in any
order, a percent sign allows both readings, trailing units are dropped, option letters in any
common form name the option, number words equal digits. The grader right on the most cases is
the project's default (verl.rewards.grading.DEFAULT_GRADER).

    python benchmarks/grader_cases.py [--out benchmarks/results/grader_cases.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path

from verl.rewards.grading import DEFAULT_GRADER, GRADERS

OPTIONS = "Which animal is shown?\nA. cat\nB. dog\nC. bird"

CASES: list[tuple[str, str, str, bool, str]] = [
    # category, given, ground truth, expected, problem
    ("integer", "12345", "12345", True, ""),
    ("integer", "12346", "12345", False, ""),
    ("integer", "10001", "10000", False, ""),
    ("integer", "1,000", "1000", True, ""),
    ("integer", "5.0", "5", True, ""),
    ("integer", "0.99999", "1", False, ""),
    ("integer", "-5", "5", False, ""),
    ("integer", "1e3", "1000", True, ""),
    ("fraction", "1/2", "1/2", True, ""),
    ("fraction", r"\frac{1}{2}", "1/2", True, ""),
    ("fraction", r"\dfrac{1}{2}", r"\frac{1}{2}", True, ""),
    ("fraction", "0.5", r"\frac{1}{2}", True, ""),
    ("fraction", "2/4", "1/2", False, ""),
    ("fraction", "1/3", "2/3", False, ""),
    ("fraction", r"-\frac{3}{4}", "-0.75", True, ""),
    ("set", r"\{1,2\}", "{1,2}", True, ""),
    ("set", r"\{2, 1\}", r"\{1,2\}", True, ""),
    ("set", r"\{1,3\}", "{1,2}", False, ""),
    ("set", "(1,2)", "(1, 2)", True, ""),
    ("set", "(2,1)", "(1,2)", False, ""),
    ("percent", "50%", "50", True, ""),
    ("percent", r"50\%", "50", True, ""),
    ("percent", "50", "50%", True, ""),
    ("percent", "40%", "50%", False, ""),
    ("unit", "5 cm", "5", True, ""),
    ("unit", r"5\text{ cm}", "5", True, ""),
    ("unit", r"30^\circ", "30", True, ""),
    ("unit", "30 degrees", "30", True, ""),
    ("unit", "12 square units", "12", True, ""),
    ("unit", "6 cm", "5", False, ""),
    ("option", "B", "B", True, ""),
    ("option", "(B)", "B", True, ""),
    ("option", "B.", "B", True, ""),
    ("option", "B) dog", "B", True, ""),
    ("option", "dog", "B", True, OPTIONS),
    ("option", "C", "B", False, ""),
    ("option", "A cat", "A", False, ""),
    ("option", "AB", "B", False, ""),
    ("number word", "two", "2", True, ""),
    ("number word", "Five", "5", True, ""),
    ("number word", "three", "2", False, ""),
    ("text", "Yes", "yes", True, ""),
    ("text", "The Eiffel Tower.", "eiffel tower", True, ""),
    ("text", "no", "yes", False, ""),
    ("text", "red car", "blue car", False, ""),
    ("expression", "x+1", "1+x", True, ""),
    ("expression", r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}", True, ""),
    ("expression", "2x", "3x", False, ""),
    ("expression", r"2\pi", r"\pi \cdot 2", True, ""),
    ("expression", r"\sqrt{8}", r"2\sqrt{2}", True, ""),
    ("expression", r"3\times10^{3}", "3000", True, ""),
    ("expression", "y=2x+1", "2x+1", True, ""),
    ("expression", r"\frac{\pi}{2}", r"90^\circ", False, ""),
    ("interval", r"(-\infty, 2]", r"(-\infty,2]", True, ""),
    ("interval", "[1,2)", "[1,2]", False, ""),
    ("interval", r"x \in [1, 3]", "[1,3]", True, ""),
    ("text", "1.5 million", "1500000", True, ""),
]


def run(repeats: int = 1) -> dict:
    """Verdict of every grader on every case, per-category and total correct counts, mean time."""
    logging.getLogger("verl.rewards.grading").setLevel(logging.ERROR)
    rows, seconds = [], Counter()
    for category, given, truth, expected, problem in CASES:
        response = f"<think>...</think> \\boxed{{{given}}}"
        verdicts = {}
        for name, grade in GRADERS.items():
            start = time.perf_counter()
            for _ in range(repeats):
                verdict = bool(grade(response, truth, problem or None))
            seconds[name] += (time.perf_counter() - start) / repeats
            verdicts[name] = verdict
        rows.append({"category": category, "given": given, "ground_truth": truth, "problem": problem,
                     "expected": expected, **verdicts})
    totals = {name: sum(row[name] == row["expected"] for row in rows) for name in GRADERS}
    categories = sorted({row["category"] for row in rows}, key=[c for c, *_ in CASES].index)
    per_category = {
        category: {
            "n": sum(row["category"] == category for row in rows),
            **{name: sum(row[name] == row["expected"] for row in rows if row["category"] == category)
               for name in GRADERS},
        }
        for category in categories
    }
    best = max(totals, key=totals.get)
    return {
        "cases": rows,
        "right": totals,
        "n": len(rows),
        "per_category": per_category,
        "mean_ms_per_grade": {name: 1000 * seconds[name] / len(rows) for name in GRADERS},
        "most_right": best,
        "default_grader": DEFAULT_GRADER,
    }


def print_table(result: dict) -> None:
    names = list(GRADERS)
    print(f"{'category':<12} {'given':<20} {'truth':<14} {'expected':<8} " + " ".join(f"{n:<11}" for n in names))
    for row in result["cases"]:
        marks = " ".join(f"{str(row[n]) + ('' if row[n] == row['expected'] else ' X'):<11}" for n in names)
        print(f"{row['category']:<12} {row['given']:<20} {row['ground_truth']:<14} {str(row['expected']):<8} {marks}")
    print()
    print(f"{'category':<12} {'n':>3} " + " ".join(f"{n:>11}" for n in names))
    for category, counts in result["per_category"].items():
        print(f"{category:<12} {counts['n']:>3} " + " ".join(f"{counts[n]:>11}" for n in names))
    print(f"{'total right':<12} {result['n']:>3} " + " ".join(f"{result['right'][n]:>11}" for n in names))
    print(f"{'ms / grade':<16} " + " ".join(f"{result['mean_ms_per_grade'][n]:>11.3f}" for n in names))
    print(f"most right: {result['most_right']}; default grader: {result['default_grader']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "grader_cases.json"))
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats per case (verdicts are from the last)")
    args = parser.parse_args()
    result = run(args.repeats)
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
