"""GRPO throughput of a real-size Qwen2.5-VL on the GPUs present: tokens/s/GPU and MFU.

No download: the model is the published Qwen2.5-VL-3B (or 7B) architecture
(`verl/models/published_configs.py`) with random weights, the tokenizer and processor are the
tiny model's (its special-token ids are written into the config; the vocabulary keeps the real
size, so the logits cost what they cost in a real run; sampled ids the stand-in tokenizer lacks
decode to nothing, which the rewards score as wrong - only speed is measured), the data are the synthetic shapes
prompts with the sr1 format, images resized to the recipes' 512x512 floor. Responses are forced
to `--response_length` tokens (`worker.rollout.min_response_length`), so every step does the
same work. The run is `python3 -m verl.trainer.main` on `configs/tiny_cpu.yaml` with the
overrides printed below (vLLM, bf16, FSDP over `--gpus` ranks, KL loss with a reference model,
no checkpoint).

Figures (first `--warmup` steps dropped): step time, completion tokens/s/GPU, all tokens/s/GPU,
and model FLOPs utilisation: 2 P FLOPs per token for each forward (generation, reference
log-probs, old log-probs when computed) and 6 P for the update's forward + backward, P the
non-embedding parameters, attention FLOPs left out (small at these lengths), activation
recomputation not counted (the MFU convention); divided by step time x GPUs x `--peak_tflops`.

    python3 benchmarks/gpu_throughput.py [--size 3b] [--gpus N] [--steps 5] [--prompts 64] [--n 8]
    python3 benchmarks/gpu_throughput.py --size tiny --device cpu --steps 2 --prompts 4 --n 2   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from verl.models.published_configs import published_config  # noqa: E402
from verl.toy.tiny_model import (  # noqa: E402
    EOS_TOKEN,
    IMAGE_PAD_TOKEN,
    PAD_TOKEN,
    VIDEO_PAD_TOKEN,
    VISION_END_TOKEN,
    VISION_START_TOKEN,
    TinyModelSpec,
    build_config,
    build_processor,
    build_tokenizer,
)

# Dense bf16 peak of the cards this is likely to meet (TFLOP/s, no sparsity).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}


def build_model(size: str, out_dir: str, device: str) -> str:
    """Random-weight model folder: real architecture (or the tiny one with the real vocabulary)."""
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    spec = TinyModelSpec()
    tokenizer = build_tokenizer(spec)
    processor = build_processor(spec, tokenizer)
    if size == "tiny":
        config = build_config(spec, tokenizer)
        config.text_config.vocab_size = published_config("3b").text_config.vocab_size
    else:
        config = published_config(size)
    token_id = tokenizer.convert_tokens_to_ids
    config.image_token_id, config.video_token_id = token_id(IMAGE_PAD_TOKEN), token_id(VIDEO_PAD_TOKEN)
    config.vision_start_token_id, config.vision_end_token_id = token_id(VISION_START_TOKEN), token_id(VISION_END_TOKEN)
    text = config.text_config
    text.bos_token_id, text.eos_token_id, text.pad_token_id = token_id(PAD_TOKEN), token_id(EOS_TOKEN), token_id(PAD_TOKEN)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id, eos_token_id=[text.eos_token_id, text.pad_token_id], pad_token_id=text.pad_token_id
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def gpu_name_and_peak(args) -> tuple[str, float | None]:
    if args.device != "cuda":
        return "cpu", args.peak_tflops
    name = torch.cuda.get_device_name(0)
    if args.peak_tflops is not None:
        return name, args.peak_tflops
    return name, next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def non_embedding_parameters(model_dir: str) -> int:
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir))
    embeddings = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def run_training(args, model_dir: str, data_dir: str, work: str) -> list[dict]:
    log_dir = os.path.join(work, "run")
    micro_batch = math.gcd(args.micro_batch, args.prompts * args.n // args.gpus)  # must divide the rows per rank
    command = [
        sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu.yaml",
        f"worker.actor.model.model_path={model_dir}",
        f"data.train_files={data_dir}/train.parquet", "data.val_files=''",
        "data.format_prompt=configs/format_prompt/sr1.jinja",
        f"data.min_pixels={args.min_pixels}", f"data.max_pixels={args.min_pixels}",
        f"data.max_prompt_length={args.max_prompt_length}", f"data.max_response_length={args.response_length}",
        f"worker.rollout.min_response_length={args.response_length}",
        f"data.rollout_batch_size={args.prompts}", f"worker.actor.global_batch_size={args.prompts}",
        f"worker.rollout.n={args.n}", f"worker.rollout.name={args.engine}",
        f"worker.rollout.max_model_len={args.max_prompt_length + args.response_length}",
        f"worker.actor.micro_batch_size_per_device_for_update={micro_batch}",
        f"worker.actor.micro_batch_size_per_device_for_experience={micro_batch}",
        f"worker.ref.micro_batch_size_per_device_for_experience={micro_batch}",
        f"worker.actor.model.enable_gradient_checkpointing={str(args.device == 'cuda').lower()}",
        f"trainer.device={args.device}", f"trainer.n_gpus_per_node={args.gpus}", "trainer.ray_num_cpus=null",
        f"trainer.max_steps={args.steps}", "trainer.total_epochs=1000", "trainer.val_before_train=false",
        "trainer.val_freq=-1", "trainer.save_freq=0", f"trainer.save_checkpoint_path={log_dir}",
        "trainer.find_last_checkpoint=false", "trainer.logger=[file]",
    ]
    print("  " + " \\\n    ".join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=REPO_ROOT, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if done.returncode != 0:
        sys.exit(f"training run failed ({done.returncode})")
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def summarise(args, records: list[dict], parameters: int, gpu: str, peak_tflops: float | None) -> dict:
    steady = records[args.warmup :] or records[-1:]
    step_s = statistics.median(r["timing_s/step"] for r in steady)
    completion_tokens = args.prompts * args.n * args.response_length
    all_tokens = statistics.median(r["perf/tokens_per_s"] * r["timing_s/step"] for r in steady)
    forwards = 1 + 1 + (1 if "timing_s/old_log_prob" in steady[0] else 0)  # generation, reference, old log-probs
    flops = parameters * all_tokens * (2 * forwards + 6)
    result = {
        "gpu": gpu,
        "gpus": args.gpus,
        "size": args.size,
        "non_embedding_parameters": parameters,
        "prompts_x_n": f"{args.prompts}x{args.n}",
        "response_length": args.response_length,
        "steps_timed": len(steady),
        "step_s": step_s,
        "stage_median_s": {
            k: statistics.median(r.get(k, 0.0) for r in steady) for k in sorted(steady[0]) if k.startswith("timing_s/")
        },
        "completion_tokens_per_s_per_gpu": completion_tokens / step_s / args.gpus,
        "tokens_per_s_per_gpu": all_tokens / step_s / args.gpus,
        "mfu": flops / (step_s * args.gpus * peak_tflops * 1e12) if peak_tflops else None,
        "peak_tflops": peak_tflops,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="3b", choices=["3b", "7b", "tiny"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--gpus", type=int, default=None, help="ranks (default: every visible GPU; 2 on CPU)")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--response_length", type=int, default=512)
    parser.add_argument("--max_prompt_length", type=int, default=1024)
    parser.add_argument("--min_pixels", type=int, default=262144, help="images are resized to this area")
    parser.add_argument("--micro_batch", type=int, default=8)
    parser.add_argument("--peak_tflops", type=float, default=None, help="per GPU; default from the GPU's name")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks/results/gpu_throughput.json"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible: this benchmark measures GPUs (a CPU smoke test: --size tiny --device cpu)")
    args.gpus = args.gpus or (torch.cuda.device_count() if args.device == "cuda" else 2)
    gpu, peak_tflops = gpu_name_and_peak(args)

    from verl.toy.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as work:
        model_dir = build_model(args.size, os.path.join(work, "model"), args.device)
        data_dir = os.path.join(work, "data")
        write_synthetic_dataset(
            data_dir, os.path.join(REPO_ROOT, "configs/format_prompt/sr1.jinja"), seed=0,
            train_size=args.prompts * (args.steps + 1), val_size=8, sft_size=8,
        )
        records = run_training(args, model_dir, data_dir, work)
        result = summarise(args, records, non_embedding_parameters(model_dir), gpu, peak_tflops)
    print(f"\n{gpu} x {args.gpus}, Qwen2.5-VL-{args.size} random weights, {args.prompts} prompts x {args.n}, "
          f"{args.response_length} response tokens, median of {result['steps_timed']} steps")
    rows = [
        ("step (s)", f"{result['step_s']:.2f}"),
        ("completion tokens/s/GPU", f"{result['completion_tokens_per_s_per_gpu']:.0f}"),
        ("all tokens/s/GPU", f"{result['tokens_per_s_per_gpu']:.0f}"),
        ("MFU", f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a (--peak_tflops unknown)"),
    ] + [(name.removeprefix("timing_s/"), f"{value:.2f}") for name, value in result["stage_median_s"].items()]
    for name, value in rows:
        print(f"  {name:<26}{value:>12}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
