"""A run's timeline.json (every stage call, verl/utils/timeline.py) as a Gantt chart: one lane per
side (generation, training, driver, sync, waiting, checkpoint), each bar a stage call labelled
with its step. With trainer.rollout_mode=one_step_off, step k+1's generation bars lie under step
k's training bars; colocated, they alternate.

    python3 scripts/plot_timeline.py --timeline checkpoints/run/timeline.json --out timeline.png [--steps 10 13]
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LANE_ORDER = ("generation", "driver", "sync", "training", "waiting", "checkpoint", "other")
COLOURS = {"generation": "tab:blue", "driver": "tab:gray", "sync": "tab:purple", "training": "tab:orange",
           "waiting": "tab:red", "checkpoint": "tab:green", "other": "tab:brown"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeline", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, nargs=2, default=None, metavar=("FIRST", "LAST"),
                        help="draw only the stages of these steps (inclusive)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    with open(args.timeline) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    if args.steps:
        events = [e for e in events if args.steps[0] <= e["args"]["step"] <= args.steps[1]]
    if not events:
        raise SystemExit(f"{args.timeline}: no stage calls{' in steps %d-%d' % tuple(args.steps) if args.steps else ''}")
    origin = min(e["ts"] for e in events)
    lanes = [lane for lane in LANE_ORDER if any(e["cat"] == lane for e in events)]
    fig, ax = plt.subplots(figsize=(12, 0.6 * len(lanes) + 1.5))
    for e in events:
        y = lanes.index(e["cat"])
        start, width = (e["ts"] - origin) / 1e6, e["dur"] / 1e6
        ax.barh(y, width, left=start, height=0.6, color=COLOURS[e["cat"]], edgecolor="black", linewidth=0.3)
        if width > 0.04 * max((x["ts"] + x["dur"] - origin) / 1e6 for x in events) / 10:
            ax.text(start + width / 2, y, f"{e['name']}\n{e['args']['step']}", ha="center", va="center", fontsize=6)
    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(args.title or args.timeline)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
