"""Cost of decoding every image once when the RL dataset is built (verl/data/rl_dataset.py).

Writes a parquet in the Vision-SR1-47K layout (`problem` with `<image>`, `answer`, `images` as
{bytes, path} structs) with JPEG and PNG photos-sized images (640x480 and 1024x768 noise, which
compresses least and so decodes slowest), then builds `RLDataset` on it twice, interleaved:
with the full decode (the default) and with only the header pass it replaced (the decode pass
switched off). Prints ms per row and the extrapolation to 47,000 rows; writes
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


def build_seconds(path: str, processor, decode: bool) -> float:
    original = RLDataset._check_images_decode
    if not decode:
        RLDataset._check_images_decode = lambda self, skip_bad_rows: None  # the header-only pass that was
    try:
        start = time.perf_counter()
        RLDataset(path, processor.tokenizer, processor, max_prompt_length=1 << 20, min_pixels=262144,
                  max_pixels=4194304, format_prompt=None)
        return time.perf_counter() - start
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
        times: dict[str, list[float]] = {"header_only": [], "full_decode": []}
        for _ in range(args.repeats):  # interleaved: machine load drifts
            times["header_only"].append(build_seconds(path, processor, decode=False))
            times["full_decode"].append(build_seconds(path, processor, decode=True))
    median = {k: statistics.median(v) for k, v in times.items()}
    per_row_ms = {k: v / args.rows * 1000 for k, v in median.items()}
    extra_ms = per_row_ms["full_decode"] - per_row_ms["header_only"]
    result = {
        "rows": args.rows, "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], **layout,
        "seconds": times, "ms_per_row": per_row_ms, "decode_extra_ms_per_row": extra_ms,
        "extrapolated_47k_s": {k: v * FULL_SIZE / 1000 for k, v in per_row_ms.items()},
    }
    print(f"{args.rows} rows, mean image {layout['mean_image_kib']:.0f} KiB, {os.cpu_count()} CPUs, load {result['load_avg_1m']:.1f}")
    print(f"{'pass':<13} {'median s':>9} {'ms/row':>8} {'47K rows, s':>12}")
    for key in ("header_only", "full_decode"):
        print(f"{key:<13} {median[key]:>9.1f} {per_row_ms[key]:>8.2f} {result['extrapolated_47k_s'][key]:>12.0f}")
    print(f"decode adds {extra_ms:.2f} ms/row = {extra_ms * FULL_SIZE / 1000:.0f} s for 47K rows")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
