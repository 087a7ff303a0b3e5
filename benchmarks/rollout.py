"""Time the two rollout engines on the same image prompts: start-up, generation throughput and
weight sync (trainer model -> engine), through the `RolloutEngine` interface the trainer uses.

Default workload: 16 image prompts x n=4 samples, 64 new tokens, temperature 1, on the tiny
Qwen2.5-VL (built into a temporary folder) or on `--model-path`. Each engine runs in its own
subprocess: in-process vLLM changes process-wide torch state (on CPU it pins torch to one thread
and disables `torch.set_num_threads`), which would skew whichever engine ran after it.

    python benchmarks/rollout.py [--model-path DIR] [--engines hf vllm] [--prompts 16 --n 4 --max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoTokenizer

from verl.data.vision import resize_image
from verl.utils.tiny_model import COLORS, SHAPES, TinyModelSpec, build_tiny_model
from verl.workers.rollout import GenerationRequest, SamplingConfig, make_rollout_engine
from verl.workers.weight_sync import sync_weights


@dataclass
class EngineResult:
    engine: str
    startup_s: float
    first_generate_s: float  # includes one-off work (kernel selection, caches)
    generate_s: float  # median over repeats
    generate_min_s: float  # best repeat: less sensitive to other load on a shared machine
    generated_tokens: int
    tokens_per_s: float
    finished_fraction: float
    sync_s: float  # median over repeats
    sync_mbytes: float
    torch_threads: int


def shapes_image(index: int) -> Image.Image:
    """Image `index` of a fixed set: one coloured shape on a canvas whose size varies with index."""
    size = (60 + 20 * (index % 5), 50 + 25 * (index % 4))
    image = Image.new("RGB", size, "white")
    box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4)
    color = COLORS[index % len(COLORS)]
    if index % 2:
        ImageDraw.Draw(image).ellipse(box, fill=color)
    else:
        ImageDraw.Draw(image).rectangle(box, fill=color)
    return image


def image_requests(model_path: str, count: int, min_pixels: int, max_pixels: int) -> list[GenerationRequest]:
    """`count` single-image chat prompts, images resized to the shared pixel range."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    requests = []
    for index in range(count):
        question = f"How many {COLORS[index % len(COLORS)]} {SHAPES[index % len(SHAPES)]}s are in the image?"
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt_ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        requests.append(GenerationRequest(prompt_ids, [resize_image(shapes_image(index), min_pixels, max_pixels)]))
    return requests


# "hf" decodes with the project's loop (verl/workers/rollout/decode.py); "hf-generate" is the same
# engine on transformers' `generate`, the loop's reference.
ENGINES = {"hf": "hf", "hf-generate": "hf", "vllm": "vllm"}


def engine_kwargs(name: str, args: argparse.Namespace) -> dict:
    kwargs = {"min_pixels": args.min_pixels, "max_pixels": args.max_pixels, "dtype": args.dtype}
    if name == "hf-generate":
        kwargs["decode_loop"] = False
    if name == "vllm":
        kwargs.update(
            max_model_len=args.max_model_len,
            enforce_eager=not torch.cuda.is_available(),
            max_num_batched_tokens=max(args.max_model_len, 2048),
            gpu_memory_utilization=args.gpu_memory_utilization,
        )
    return kwargs


def benchmark_engine(name: str, args: argparse.Namespace) -> EngineResult:
    requests = image_requests(args.model_path, args.prompts, args.min_pixels, args.max_pixels)
    sampling = SamplingConfig(
        n=args.n, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens, min_tokens=args.min_tokens, seed=0
    )

    start = time.perf_counter()
    engine = make_rollout_engine(ENGINES[name], args.model_path, **engine_kwargs(name, args))
    startup_s = time.perf_counter() - start

    start = time.perf_counter()
    engine.generate(requests, sampling)
    first_generate_s = time.perf_counter() - start
    timings, outputs = [], []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        outputs = engine.generate(requests, SamplingConfig(**{**asdict(sampling), "seed": repeat + 1}))
        timings.append(time.perf_counter() - start)
    samples = [sample for per_request in outputs for sample in per_request]
    generated_tokens = sum(len(sample.token_ids) for sample in samples)
    generate_s = statistics.median(timings)

    trainer_model = AutoModelForImageTextToText.from_pretrained(args.model_path, dtype=torch.float32)
    syncs = [sync_weights(trainer_model, engine) for _ in range(args.repeats)]
    return EngineResult(
        engine=name,
        startup_s=startup_s,
        first_generate_s=first_generate_s,
        generate_s=generate_s,
        generate_min_s=min(timings),
        generated_tokens=generated_tokens,
        tokens_per_s=generated_tokens / generate_s,
        finished_fraction=sum(sample.finished for sample in samples) / len(samples),
        sync_s=statistics.median(sync["time_s"] for sync in syncs),
        sync_mbytes=syncs[0]["bytes"] / 2**20,
        torch_threads=torch.get_num_threads(),
    )


def run_in_subprocess(name: str, args: argparse.Namespace) -> EngineResult:
    """Runs this script for one engine in a fresh interpreter and reads its result back."""
    with tempfile.TemporaryDirectory() as scratch:
        result_file = os.path.join(scratch, "result.json")
        command = [sys.executable, __file__, "--single-engine", name, "--result-file", result_file]
        for option in ("model_path", "prompts", "n", "max_tokens", "min_tokens", "repeats", "dtype", "min_pixels",
                       "max_pixels", "max_model_len", "gpu_memory_utilization"):
            command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            raise SystemExit(f"{name} benchmark failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
        return EngineResult(**json.loads(Path(result_file).read_text()))


def main() -> None:
    spec = TinyModelSpec()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="Qwen2.5-VL checkpoint folder (default: the tiny model, built now)")
    parser.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=sorted(ENGINES))
    parser.add_argument("--prompts", type=int, default=16, help="image prompts per generate call")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per sample (at most)")
    parser.add_argument("--min-tokens", type=int, default=0, help="stop tokens suppressed before this many")
    parser.add_argument("--repeats", type=int, default=3, help="timed generate / sync calls (median)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--min-pixels", type=int, default=spec.min_pixels)
    parser.add_argument("--max-pixels", type=int, default=spec.max_pixels)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.6)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rollout.json")
    parser.add_argument("--single-engine", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.single_engine:
        result = benchmark_engine(args.single_engine, args)
        Path(args.result_file).write_text(json.dumps(asdict(result)))
        return

    with tempfile.TemporaryDirectory() as scratch:
        if args.model_path is None:
            args.model_path = build_tiny_model(os.path.join(scratch, "tiny_qwen2_5_vl"), seed=0)
        results = [run_in_subprocess(name, args) for name in args.engines]

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    print(
        f"Rollout, {args.prompts} image prompts x n={args.n}, <= {args.max_tokens} new tokens, temperature 1, "
        f"{args.dtype}, device {device}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'engine':<12}{'start-up s':>12}{'1st gen s':>11}{'gen s':>9}{'min s':>8}{'tokens':>8}{'tokens/s':>10}"
        f"{'finished':>10}{'sync ms':>10}{'sync MB':>9}{'threads':>9}"
    )
    for row in results:
        print(
            f"{row.engine:<12}{row.startup_s:>12.2f}{row.first_generate_s:>11.2f}{row.generate_s:>9.3f}"
            f"{row.generate_min_s:>8.3f}"
            f"{row.generated_tokens:>8}{row.tokens_per_s:>10.0f}{row.finished_fraction:>10.2f}"
            f"{row.sync_s * 1e3:>10.1f}{row.sync_mbytes:>9.2f}{row.torch_threads:>9}"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "rollout_engines",
        "model": "tiny Qwen2.5-VL (verl.utils.tiny_model, seed 0)" if "tiny_qwen2_5_vl" in args.model_path
        else args.model_path,
        "prompts": args.prompts,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "min_tokens": args.min_tokens,
        "repeats": args.repeats,
        "dtype": args.dtype,
        "device": device,
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
        "machine": platform.machine(),
        "results": [asdict(row) for row in results],
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
