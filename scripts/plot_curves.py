"""Learning curves of a GRPO run as one PNG: reward components, validation accuracy and visual
reward, language-shortcut rate, KL, response length, entropy, the blank-image control
(accuracy with and without the image, vision reliance) and the PPO clip fraction.

    python3 scripts/plot_curves.py --metrics checkpoints/run/metrics.jsonl --out curves.png
        [--metrics other/metrics.jsonl --label self-reward --label vision-r1]
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("train reward", ["train/reward/overall", "train/reward/accuracy", "train/reward/format", "train/reward/visual"]),
    ("validation", ["val/reward/accuracy", "val/reward/visual", "val/reward/format"]),
    ("language shortcut / perception", ["val/reward/language_shortcut", "val/reward/perception_sufficient",
                                        "train/reward/language_shortcut"]),
    ("KL loss", ["actor/kl_loss"]),
    ("response length", ["train/response_length/mean", "train/self_reward/pass2_response_length"]),
    ("entropy", ["actor/entropy"]),
    ("blank-image control (val subset)", ["val/vision/accuracy", "val/vision/accuracy_blank_image",
                                          "val/vision/vision_reliance"]),
    ("PPO clipping", ["actor/pg_clipfrac", "actor/ppo_kl"]),
]


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot(runs: dict[str, list[dict]], out: str) -> None:
    fig, axes = plt.subplots(2, 4, figsize=(20, 8))
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for label, records in runs.items():
            for key in keys:
                points = [(r["step"], r[key]) for r in records if key in r]
                if points:
                    steps, values = zip(*points)
                    name = key if len(runs) == 1 else f"{label}: {key}"
                    ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", action="append", required=True, help="metrics.jsonl of a run (repeatable)")
    parser.add_argument("--label", action="append", help="legend label per --metrics")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    labels = args.label or [f"run{i}" for i in range(len(args.metrics))]
    if len(labels) != len(args.metrics):
        parser.error("give one --label per --metrics")
    plot({label: read_metrics(path) for label, path in zip(labels, args.metrics)}, args.out)


if __name__ == "__main__":
    main()
