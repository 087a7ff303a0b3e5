"""LoRA vs full fine-tuning on the tiny recipe, and how LoRA weights reach vLLM on CPU.

Part 1 (`train`): the tiny GRPO recipe (configs/tiny_cpu.yaml, 2 FSDP2 ranks, HF rollout) through
the real CLI, full fine-tuning vs `worker.actor.model.lora.rank=R`; the first step (warm-up) is
dropped; reports the median step / update / reference times and the peak summed RSS of the whole
process tree (driver, Ray, workers).

Part 2 (`sync`): a LoRA policy (random adapters) handed to an in-process vLLM CPU engine per
"step" in the two possible ways: (a) merged weights streamed into the live engine
(`VLLMRolloutEngine.load_weights`, what training does), (b) the adapter written in PEFT format
and served as a vLLM LoRA adapter (a new `LoRARequest` per step, `enable_lora=True`). Reports the
hand-over time, the generation time of the same batch, and how far (a) and (b) agree on greedy
tokens (same policy; they differ only by rounding).

Part 3 (`estimate`): the dry run's per-GPU memory estimate for Qwen3-VL-8B (no offload) full vs
LoRA rank 64: what the tiny model cannot show; and the size of one checkpoint (fp32 model shards
+ AdamW's two fp32 moments): full fine-tuning 12 bytes per parameter, LoRA 12 bytes per adapter
parameter (the shards hold the adapters alone; the frozen base stays in the model folder).

    nice -n 19 python3 benchmarks/lora.py --model_path models/tiny_qwen25vl --data_dir data/tiny_shapes \
        [--steps 6] [--rank 8] [--parts train,sync,estimate]

Writes benchmarks/results/lora.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks.vs_trl import run_measured  # noqa: E402  (peak summed RSS of a process tree)

SYNC_ROUNDS = 5


def train_run(label: str, common: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as ckpt:
        command = [
            sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu.yaml",
            f"trainer.save_checkpoint_path={ckpt}", "trainer.save_freq=-1", "trainer.val_freq=-1",
            "trainer.val_before_train=false", "trainer.logger=[file]", *common,
        ]
        print(f"[{label}] {' '.join(command[3:])}", flush=True)
        peak_mib = run_measured(command, dict(os.environ, PYTHONUNBUFFERED="1"), label)
        with open(os.path.join(ckpt, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f][1:]  # step 1 pays one-off warm-up costs
    keys = ("timing_s/step", "timing_s/update_actor", "timing_s/ref", "timing_s/sync", "timing_s/gen")
    result = {key: statistics.median(r[key] for r in records) for key in keys if all(key in r for r in records)}
    result["peak_tree_rss_mib"] = peak_mib
    result["steps_timed"] = len(records)
    return result


def part_train(args) -> dict:
    common = [
        f"worker.actor.model.model_path={args.model_path}",
        f"data.train_files={args.data_dir}/train.parquet",
        f"data.val_files={args.data_dir}/val.parquet",
        f"trainer.max_steps={args.steps}",
    ]
    full = train_run("full", common)
    lora = train_run("lora", [*common, f"worker.actor.model.lora.rank={args.rank}", f"worker.actor.model.lora.alpha={2 * args.rank}"])
    return {"full": full, "lora": lora}


def sync_worker(mode: str, model_path: str, rank: int, out_path: str) -> None:
    """One engine in this process (vLLM keeps process-global state): `merged` or `adapter`."""
    import torch
    import vllm

    from verl.models.lora import LoRAConfig, lora_modules, peft_adapter
    from verl.models.qwen_vl import checkpoint_weight_name
    from verl.utils.model_merger import write_peft_adapter
    from verl.workers.engine.model import build_policy
    from verl.workers.weight_sync import iter_full_state_dict

    config = LoRAConfig(rank=rank, alpha=2.0 * rank)
    torch.manual_seed(0)  # A's Kaiming init: both modes (separate processes) must hold the same policy
    policy = build_policy(model_path, torch.device("cpu"), attn_implementation="sdpa", lora=config)
    prompts = [{"prompt_token_ids": [10 + i, 20, 30, 40, 50]} for i in range(16)]
    greedy = vllm.SamplingParams(temperature=0.0, max_tokens=32)
    handover, generation, tokens = [], [], []
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    start = time.perf_counter()
    if mode == "merged":
        from verl.workers.rollout.vllm import VLLMRolloutEngine

        engine = VLLMRolloutEngine(model_path, 3136, 12544, dtype="float32", max_model_len=512, enforce_eager=True,
                                   enable_chunked_prefill=False, free_cache_engine=False)
        llm = engine.llm
    else:
        from verl.workers.rollout.vllm import VisionTokenSuppressor

        # The training engine's sampler settings (vision tokens suppressed, no generation_config), so
        # both modes must produce the same greedy tokens.
        llm = vllm.LLM(model=model_path, dtype="float32", max_model_len=512, enforce_eager=True, seed=0,
                       limit_mm_per_prompt={"image": 1, "video": 0}, generation_config="vllm",
                       logits_processors=[VisionTokenSuppressor], enable_lora=True, max_lora_rank=rank, max_loras=1)
    startup = time.perf_counter() - start
    model_type = policy.config.model_type
    with tempfile.TemporaryDirectory() as work:
        for step in range(SYNC_ROUNDS):
            with torch.no_grad():  # a new policy each "step": fresh random adapters
                generator = torch.Generator().manual_seed(step)
                for module in lora_modules(policy).values():
                    module.lora_B.copy_(0.05 * torch.randn(module.lora_B.shape, generator=generator))
            start = time.perf_counter()
            request = None
            if mode == "merged":
                engine.load_weights(iter_full_state_dict(policy))
            else:
                adapter_dir = os.path.join(work, f"step_{step}")
                write_peft_adapter(adapter_dir, *peft_adapter(
                    policy.state_dict(), config, lambda name: checkpoint_weight_name(name, model_type), model_path))
                request = vllm.lora.request.LoRARequest(f"step_{step}", step + 1, adapter_dir)
            handover.append(time.perf_counter() - start)
            start = time.perf_counter()
            outputs = llm.generate(prompts, greedy, use_tqdm=False, lora_request=request)
            generation.append(time.perf_counter() - start)
            tokens.append([list(o.outputs[0].token_ids) for o in outputs])
    with open(out_path, "w") as f:
        json.dump({"startup_s": startup, "handover_s": handover, "generate_s": generation, "tokens": tokens}, f)


def part_sync(args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for mode in ("merged", "adapter"):
            out = os.path.join(work, f"{mode}.json")
            command = [sys.executable, os.path.abspath(__file__), "--sync_worker", mode,
                       "--model_path", args.model_path, "--rank", str(args.rank), "--out", out]
            print(f"[sync:{mode}]", flush=True)
            done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"[sync:{mode}] failed:\n{(done.stdout + done.stderr)[-4000:]}")
            with open(out) as f:
                results[mode] = json.load(f)
    # Greedy rows of the two modes, round by round: identical rows, and the mean length of the
    # common prefix (fp32 merged weights vs x A^T B^T at run time round differently; a near-tie
    # between two tokens of the random tiny model can then flip and the rows diverge from there).
    pairs = [(m, a) for rm, ra in zip(results["merged"]["tokens"], results["adapter"]["tokens"]) for m, a in zip(rm, ra)]
    prefix = [next((i for i, (x, y) in enumerate(zip(m, a)) if x != y), min(len(m), len(a))) for m, a in pairs]
    summary = {
        mode: {
            "startup_s": r["startup_s"],
            "handover_s_median": statistics.median(r["handover_s"][1:]),
            "generate_s_median": statistics.median(r["generate_s"][1:]),
        }
        for mode, r in results.items()
    }
    summary["identical_greedy_rows"] = f"{sum(m == a for m, a in pairs)}/{len(pairs)}"
    summary["mean_common_prefix_tokens"] = statistics.mean(prefix)
    summary["tokens_per_row"] = max(len(m) for m, _ in pairs)
    return summary


def part_estimate() -> dict:
    from verl.trainer.config import PPOConfig, load_config
    from verl.trainer.dry_run import dry_run

    recipe = os.path.join(REPO_ROOT, "configs/qwen3_vl_8b_selfReward.yaml")
    on_gpu = ["worker.ref.fsdp.param_offload=false", "worker.actor.fsdp.param_offload=false",
              "worker.actor.fsdp.optimizer_offload=false"]
    gib = 1024**3
    out = {}
    for label, extra in (("full", []), ("lora_r64", ["worker.actor.model.lora.rank=64"])):
        report = dry_run(load_config(PPOConfig, recipe, [*on_gpu, *extra]))
        memory, shape = report.memory, report.shape
        out[label] = {"actor_state_gib": memory.actor_state / gib, "reference_gib": memory.reference / gib,
                      "update_phase_gib": memory.update_phase / gib, "peak_gib": memory.peak / gib,
                      "checkpoint_gib": 12.0 * shape.trainable_parameters / gib}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="models/tiny_qwen25vl")
    parser.add_argument("--data_dir", default="data/tiny_shapes")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--parts", default="train,sync,estimate")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks/results/lora.json"))
    parser.add_argument("--sync_worker", choices=["merged", "adapter"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sync_worker:
        sync_worker(args.sync_worker, args.model_path, args.rank, args.out)
        return
    parts = args.parts.split(",")
    report = {"model_path": args.model_path, "rank": args.rank, "load_average_1min": os.getloadavg()[0]}
    if "train" in parts:
        report["train"] = part_train(args)
        print(f"\ntiny recipe, {args.steps} steps (first dropped), medians:")
        print(f"{'':6}{'step s':>9}{'update s':>10}{'ref s':>8}{'sync s':>8}{'peak RSS MiB':>14}")
        for label, r in report["train"].items():
            print(f"{label:6}{r['timing_s/step']:9.2f}{r['timing_s/update_actor']:10.3f}{r.get('timing_s/ref', 0):8.3f}"
                  f"{r.get('timing_s/sync', 0):8.3f}{r['peak_tree_rss_mib']:14.0f}")
    if "sync" in parts:
        report["sync"] = part_sync(args)
        print(f"\nLoRA policy into vLLM (CPU), {SYNC_ROUNDS} rounds (first dropped), medians:")
        print(f"{'':9}{'startup s':>10}{'hand-over s':>12}{'generate s':>11}")
        for mode in ("merged", "adapter"):
            r = report["sync"][mode]
            print(f"{mode:9}{r['startup_s']:10.2f}{r['handover_s_median']:12.3f}{r['generate_s_median']:11.3f}")
        sync = report["sync"]
        print(f"greedy rows identical in both modes: {sync['identical_greedy_rows']}, mean common prefix "
              f"{sync['mean_common_prefix_tokens']:.1f} of {sync['tokens_per_row']} tokens")
    if "estimate" in parts:
        report["estimate_qwen3_vl_8b"] = part_estimate()
        print("\nQwen3-VL-8B recipe, no offload, dry-run estimate per GPU (GiB):")
        for label, r in report["estimate_qwen3_vl_8b"].items():
            print(f"{label:9} actor state {r['actor_state_gib']:6.1f}  reference {r['reference_gib']:5.1f}  "
                  f"update phase {r['update_phase_gib']:6.1f}  peak {r['peak_gib']:6.1f}  "
                  f"checkpoint {r['checkpoint_gib']:6.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
