"""Driver host memory and start-up time as the RL data grows (verl/data/rl_dataset.py).

Writes parquet files of 2K, 10K and 40K rows in the Vision-SR1-47K layout (`problem` with
`<image>`, `answer`, `images` as {bytes, path} structs) holding generated photo-size JPEGs
(640x480, smooth colour fields with grain, ~83 KiB each: 256 distinct images cycled, stored
without parquet dictionary encoding so every row carries its own bytes, as a real file does).
For each file, in a fresh process (so one size's heap does not flatter the next):

- the start-up: interpreter and imports, processor load, the dataset build (Arrow conversion,
  the header + tokenise + image-token-check pass, the decode-every-image pass), then the first
  batch drawn through the trainer's data loader (`make_rl_dataloader`, 128 prompts at the GPU
  recipe's pixel range). A GRPO step itself (Ray, workers, the model) is NOT run: on this shared
  2-core machine it would measure the model, not the data; "to step 1" here means to the first
  batch in the driver's hands;
- driver RSS after the dataset is built and after 5 batches, split into anonymous memory (the
  heap: what would grow with decoded pixels) and file-backed memory (pages of the memory-mapped
  Arrow cache, shared and reclaimable by the kernel: grows at most with the data's own bytes);
- the slope per 1,000 rows between consecutive sizes, against the parquet's bytes and the
  decoded pixels per 1,000 rows;
- the start-up prompt check's own cost (issue 32): counting image tokens in each row's
  tokenised prompt, a pass that tokenises every row anyway (for the max_prompt_length filter).

The cores are shared with other work: timings are indicative only; memory figures are not
load-dependent. Writes benchmarks/results/data_scale.json.

    python3 benchmarks/data_scale.py [--rows 2000 10000 40000] [--model_path models/tiny_qwen25vl]
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH, HEIGHT = 640, 480
DISTINCT_IMAGES = 256
BATCH_SIZE = 128
BATCHES = 5
FULL_SIZE = 47_000
# The GPU recipe's image range (configs/qwen2_5_vl_7b_selfReward.yaml): a 640x480 photo stays ~its size.
MIN_PIXELS, MAX_PIXELS = 262144, 4194304


def photo_jpeg(seed: int) -> bytes:
    """A 640x480 JPEG that compresses like a photo: a smooth random colour field plus grain."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.normal(0, 12, size=field.shape)
    pixels = np.clip(field + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def write_parquet(path: str, rows: int) -> None:
    """`rows` rows, written in row groups of 1,000 so the writer never holds the whole file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [photo_jpeg(seed) for seed in range(DISTINCT_IMAGES)]
    schema = pa.schema([
        ("problem", pa.string()), ("answer", pa.string()),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
    ])
    with pq.ParquetWriter(path, schema, use_dictionary=["problem", "answer"]) as writer:
        for start in range(0, rows, 1000):
            ids = range(start, min(rows, start + 1000))
            writer.write_table(pa.table({
                "problem": [f"<image>Question {i}: which colour covers most of the picture?" for i in ids],
                "answer": ["A"] * len(ids),
                "images": [[{"bytes": images[i % DISTINCT_IMAGES], "path": None}] for i in ids],
            }, schema=schema))


def memory_mib() -> dict[str, float]:
    """This process's resident memory from /proc/self/status: anonymous, file-backed, peak."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem", "VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return {"rss": fields["VmRSS"], "anon": fields["RssAnon"], "file": fields["RssFile"] + fields["RssShmem"],
            "peak": fields["VmHWM"]}


def directory_mib(path: str) -> float:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names) / 2**20


def measure(path: str, model_path: str, launched_at: float) -> dict:
    """One size, in this (fresh) process; see the module docstring."""
    from transformers import AutoProcessor

    from verl.data.rl_dataset import RLDataset, make_rl_dataloader

    imported = time.time()
    processor = AutoProcessor.from_pretrained(model_path)
    phases: dict[str, float] = {}

    class TimedDataset(RLDataset):
        """RLDataset with its decode pass timed (the rest of the build is the first pass)."""

        def _check_images_decode(self, skip_bad_rows: bool) -> None:
            start = time.perf_counter()
            super()._check_images_decode(skip_bad_rows)
            phases["decode_pass_s"] = time.perf_counter() - start

    start = time.perf_counter()
    dataset = TimedDataset(
        path, processor.tokenizer, processor, max_prompt_length=6144, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS,
        format_prompt=os.path.join(REPO_ROOT, "configs/format_prompt/sr1.jinja"),
    )
    phases["build_s"] = time.perf_counter() - start
    phases["first_pass_s"] = phases["build_s"] - phases["decode_pass_s"]
    built_at = time.time()
    gc.collect()
    after_build = memory_mib()

    loader = make_rl_dataloader(dataset, BATCH_SIZE, True, 1, True, processor.tokenizer.pad_token_id, 6144)
    batches = iter(loader)
    batch_times = []
    for _ in range(BATCHES):
        start = time.perf_counter()
        batch = next(batches)
        batch_times.append(time.perf_counter() - start)
        if len(batch_times) == 1:
            first_batch_at = time.time()
        del batch  # the trainer holds one batch at a time
    gc.collect()
    after_batches = memory_mib()

    # The prompt check's own cost: count image tokens in prompts the first pass tokenises anyway.
    sample = range(min(len(dataset.rows), 2000))
    questions = [dataset.rows[i][dataset.prompt_key] for i in sample]
    start = time.perf_counter()
    prompts = [dataset._raw_prompt_ids(question) for question in questions]
    tokenise_s = time.perf_counter() - start
    start = time.perf_counter()
    for ids in prompts:
        ids.count(dataset.image_token_id)
    count_s = time.perf_counter() - start
    return {
        "imports_s": imported - launched_at,
        "to_dataset_built_s": built_at - launched_at,
        "to_first_batch_s": first_batch_at - launched_at,
        **phases,
        "batch_s": batch_times,
        "rss_after_build_mib": after_build,
        "rss_after_batches_mib": after_batches,
        "tokenise_ms_per_row": tokenise_s / len(sample) * 1000,
        "image_token_check_us_per_row": count_s / len(sample) * 1e6,
    }


def run_size(workdir: str, rows: int, model_path: str) -> dict:
    path = os.path.join(workdir, f"photos_{rows}.parquet")
    if not os.path.exists(path):
        start = time.perf_counter()
        write_parquet(path, rows)
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", flush=True)
    cache = os.path.join(workdir, f"hf_cache_{rows}")
    shutil.rmtree(cache, ignore_errors=True)  # every size pays its own Arrow conversion, as a first run does
    env = dict(os.environ, HF_DATASETS_CACHE=cache, HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    launched_at = time.time()
    child = subprocess.run(
        [sys.executable, __file__, "--child", path, "--model_path", model_path, "--launched_at", repr(launched_at)],
        env=env, capture_output=True, text=True, check=False,
    )
    if child.returncode != 0:
        raise SystemExit(f"measuring {rows} rows failed:\n{child.stderr[-3000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(rows=rows, parquet_mib=os.path.getsize(path) / 2**20, arrow_cache_mib=directory_mib(cache))
    shutil.rmtree(cache, ignore_errors=True)
    return result


def slopes(results: list[dict]) -> list[dict]:
    """Per 1,000 rows between consecutive sizes: RSS growth against the data's bytes and pixels."""
    out = []
    for small, large in zip(results, results[1:]):
        per_k = (large["rows"] - small["rows"]) / 1000
        entry = {"from_rows": small["rows"], "to_rows": large["rows"],
                 "parquet_mib_per_1k_rows": (large["parquet_mib"] - small["parquet_mib"]) / per_k,
                 "decoded_pixels_mib_per_1k_rows": 1000 * WIDTH * HEIGHT * 3 / 2**20}
        for stage in ("rss_after_build_mib", "rss_after_batches_mib"):
            for kind in ("anon", "file"):
                entry[f"{stage}_{kind}_per_1k_rows"] = (large[stage][kind] - small[stage][kind]) / per_k
        out.append(entry)
    return out


def print_table(results: list[dict], slope_rows: list[dict]) -> None:
    header = (f"{'rows':>6} {'parquet':>8} {'arrow cache':>11} {'to built':>9} {'to batch 1':>10} "
              f"{'1st pass':>8} {'decode':>7} | {'built anon':>10} {'built file':>10} {'5 batches anon':>14} "
              f"{'file':>6} {'peak':>6}")
    print(header)
    print("-" * len(header))
    for r in results:
        built, batches = r["rss_after_build_mib"], r["rss_after_batches_mib"]
        print(f"{r['rows']:>6} {r['parquet_mib']:>6.0f}Mi {r['arrow_cache_mib']:>9.0f}Mi {r['to_dataset_built_s']:>8.1f}s "
              f"{r['to_first_batch_s']:>9.1f}s {r['first_pass_s']:>7.1f}s {r['decode_pass_s']:>6.1f}s | "
              f"{built['anon']:>8.0f}Mi {built['file']:>8.0f}Mi {batches['anon']:>12.0f}Mi {batches['file']:>4.0f}Mi "
              f"{batches['peak']:>4.0f}Mi")
    for s in slope_rows:
        print(f"per 1,000 rows ({s['from_rows']} -> {s['to_rows']}): parquet {s['parquet_mib_per_1k_rows']:.1f} MiB, "
              f"decoded pixels {s['decoded_pixels_mib_per_1k_rows']:.0f} MiB; driver anon "
              f"{s['rss_after_build_mib_anon_per_1k_rows']:+.2f} MiB (built) "
              f"{s['rss_after_batches_mib_anon_per_1k_rows']:+.2f} MiB (after batches), file-backed "
              f"{s['rss_after_build_mib_file_per_1k_rows']:+.1f} MiB (built)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 10000, 40000])
    parser.add_argument("--model_path", default=os.path.join(REPO_ROOT, "models/tiny_qwen25vl"))
    parser.add_argument("--workdir", default=None, help="where the parquet files go (default: a temp folder)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks/results/data_scale.json"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--launched_at", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.model_path, args.launched_at)))
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="data_scale_")
    os.makedirs(workdir, exist_ok=True)
    results = []
    for rows in sorted(args.rows):
        results.append(run_size(workdir, rows, args.model_path))
        print(f"{rows} rows measured (load {os.getloadavg()[0]:.1f})", flush=True)
    slope_rows = slopes(results)
    print_table(results, slope_rows)
    check = results[-1]
    result = {
        "note": "timings are indicative only: measured on a machine whose 2 cores were shared with other work; "
                "memory figures do not depend on load. 'to_first_batch_s' is start-up to the first batch drawn by "
                "the driver's data loader; no GRPO step (Ray, workers, model) is run.",
        "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
        "image": f"{WIDTH}x{HEIGHT} JPEG q85, {DISTINCT_IMAGES} distinct cycled", "batch_size": BATCH_SIZE,
        "batches": BATCHES, "pixel_range": [MIN_PIXELS, MAX_PIXELS], "sizes": results, "slopes": slope_rows,
        "image_token_check": {
            "us_per_row": check["image_token_check_us_per_row"],
            "s_for_47k_rows": check["image_token_check_us_per_row"] * FULL_SIZE / 1e6,
            "tokenise_ms_per_row_already_paid": check["tokenise_ms_per_row"],
        },
    }
    print(f"image-token check: {check['image_token_check_us_per_row']:.1f} us/row "
          f"({result['image_token_check']['s_for_47k_rows']:.2f} s for 47K rows) on prompts the first pass "
          f"tokenises anyway ({check['tokenise_ms_per_row']:.2f} ms/row)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
