"""Cost of decoding every image once when the RL dataset is built (verl/data/rl_dataset.py).

Writes a parquet in the Vision-SR1-47K layout (`problem` with `<image>`, `answer`, `images` as
{bytes, path} structs) with JPEG and PNG photos-sized images (640x480 and 1024x768 noise, which
compresses least and so decodes slowest), then builds `RLDataset` on it twice, interleaved:
with the full decode (the default) and with only the header pass it replaced (the decode pass
switched off). Prints wall and CPU ms per row (CPU time, all threads, is the figure that does
not depend on a shared machine's load) and the extrapolation to 47,000 rows; writes
benchmarks/results/image_check.json.

    python3 benchmarks/image_check.py [--rows 4700] [--model_path models/tiny_qwen25vl] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time

import numpy as np
import pandas as pd
from PIL import Image
from transformers import AutoProcessor

from verl.data.rl_dataset import RLDataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_SIZE = 47_000
SIZES = ((640, 480, "JPEG"), (1024, 768, "JPEG"), (640, 480, "PNG"))


def encoded(width: int, height: int, fmt: str, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write_layout(path: str, rows: int) -> dict[str, float]:
    """`rows` rows cycling through 30 distinct images (10 per size/format): decode work per row is
    what it would be for distinct images, the file stays small enough to write quickly."""
    images = [encoded(w, h, fmt, seed) for seed in range(10) for (w, h, fmt) in SIZES]
    pd.DataFrame({
        "problem": [f"<image>Question {i}: what is shown?" for i in range(rows)],
        "answer": ["A"] * rows,
        "images": [[{"bytes": images[i % len(images)], "path": None}] for i in range(rows)],
    }).to_parquet(path)
    return {"mean_image_kib": float(np.mean([len(b) for b in images]) / 1024), "file_mib": os.path.getsize(path) / 2**20}


def build_seconds(path: str, processor, decode: bool) -> tuple[float, float]:
    """(wall s, CPU s of this process, all threads) of one RLDataset build."""
    original = RLDataset._check_images_decode
    if not decode:
        RLDataset._check_images_decode = lambda self, skip_bad_rows: None  # the header-only pass that was
    try:
        start, cpu_start = time.perf_counter(), time.process_time()
        RLDataset(path, processor.tokenizer, processor, max_prompt_length=1 << 20, min_pixels=262144,
                  max_pixels=4194304, format_prompt=None)
        return time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        RLDataset._check_images_decode = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4700)
    parser.add_argument("--model_path", default="models/tiny_qwen25vl")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks/results/image_check.json"))
    args = parser.parse_args()
    processor = AutoProcessor.from_pretrained(args.model_path)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "layout.parquet")
        layout = write_layout(path, args.rows)
        build_seconds(path, processor, decode=False)  # warm-up: datasets converts the parquet once, cached
        wall: dict[str, list[float]] = {"header_only": [], "full_decode": []}
        cpu: dict[str, list[float]] = {"header_only": [], "full_decode": []}
        for _ in range(args.repeats):  # interleaved: machine load drifts
            for key, decode in (("header_only", False), ("full_decode", True)):
                wall_s, cpu_s = build_seconds(path, processor, decode)
                wall[key].append(wall_s)
                cpu[key].append(cpu_s)
    # CPU time is the load-robust figure on a shared machine; wall time depends on the load.
    per_row = {
        measure: {k: statistics.median(v) / args.rows * 1000 for k, v in times.items()}
        for measure, times in (("wall_ms", wall), ("cpu_ms", cpu))
    }
    extra_cpu_ms = per_row["cpu_ms"]["full_decode"] - per_row["cpu_ms"]["header_only"]
    threads = min(8, os.cpu_count() or 1)  # what RLDataset's decode pass uses
    result = {
        "rows": args.rows, "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], **layout,
        "wall_s": wall, "cpu_s": cpu, "per_row": per_row, "decode_extra_cpu_ms_per_row": extra_cpu_ms,
        "decode_extra_cpu_s_47k": extra_cpu_ms * FULL_SIZE / 1000,
        "decode_extra_wall_s_47k_idle_8_threads": extra_cpu_ms * FULL_SIZE / 1000 / 8,
    }
    print(f"{args.rows} rows, mean image {layout['mean_image_kib']:.0f} KiB, {os.cpu_count()} CPUs "
          f"({threads} decode threads), load {result['load_avg_1m']:.1f}")
    print(f"{'pass':<13} {'wall ms/row':>12} {'CPU ms/row':>11}")
    for key in ("header_only", "full_decode"):
        print(f"{key:<13} {per_row['wall_ms'][key]:>12.2f} {per_row['cpu_ms'][key]:>11.2f}")
    print(f"decode adds {extra_cpu_ms:.2f} CPU ms/row = {result['decode_extra_cpu_s_47k']:.0f} CPU s for 47K rows "
          f"(~{result['decode_extra_wall_s_47k_idle_8_threads']:.0f} s wall on an idle machine with 8+ cores)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
