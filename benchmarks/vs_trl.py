"""This project's GRPO step vs TRL's GRPOTrainer, same tiny model, data and work, one run.

    .venv/bin/python benchmarks/vs_trl.py [--trl_python .venv-trl/bin/python] [--steps 12] [--engine vllm]

Equal work on both sides: the same random tiny Qwen2.5-VL folder, the same synthetic prompts
(the tiny self-reward config's format prompt, one image each), P prompts x G generations x
completions forced to L tokens, no reference model, fp32 on CPU, 2 threads in all (TRL: one
process with 2 threads; this project: 2 FSDP worker processes with 1 thread each, as the tiny
config runs). This project runs with the tiny config's own defaults (`max_prompt_length` 400,
micro-batch sizes), only the sizes above overridden. It is run twice: without the self-reward
(`see_think` reward, the same rollout) and with it (`whole_response`, so the random model's
re-prompt pass really runs), which gives the self-reward step-time ratio in the same session.

TRL runs in its own virtualenv (benchmarks/requirements-trl.txt). Step time is wall clock per
step (TRL: a callback around each step; here: between consecutive metric records, i.e. the
whole loop iteration); the first `--warmup` steps and this project's last step (which also
writes the checkpoint) are dropped. Peak RSS is the largest sum over the process tree (Ray's
processes included), sampled every 0.2 s. Prints a table, writes benchmarks/results/vs_trl.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


class TreeRSS:
    """Peak of the summed RSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.root = psutil.Process(pid)
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [self.root, *self.root.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def run_measured(command: list[str], env: dict, label: str, timeout: int = 1800) -> float:
    """Runs `command`, returns the peak tree RSS in MiB; exits with its output on failure."""
    print(f"[{label}] load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        monitor = TreeRSS(proc.pid)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            peak = monitor.stop()
        if code != 0:
            log.seek(0)
            sys.exit(f"[{label}] failed ({code}):\n{log.read()[-5000:]}")
    return peak


def stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def prepare_inputs(work: str, model_path: str | None, prompts: int, steps: int) -> tuple[str, str, str]:
    """Model folder, synthetic data folder, and TRL's prompt file (same text and images)."""
    import jinja2
    import pyarrow.parquet as pq

    from verl.data.synthetic import write_synthetic_dataset
    from verl.utils.tiny_model import build_tiny_model

    format_prompt = os.path.join(REPO_ROOT, "configs/format_prompt/sr1.jinja")
    if model_path is None:
        model_path = build_tiny_model(os.path.join(work, "model"), seed=0)
    data_dir = os.path.join(work, "data")
    write_synthetic_dataset(data_dir, format_prompt, seed=0, train_size=prompts * (steps + 2), val_size=16, sft_size=8)
    template = jinja2.Template(open(format_prompt).read())
    table = pq.read_table(os.path.join(data_dir, "train.parquet")).to_pylist()
    prompt_file = os.path.join(work, "trl_prompts.jsonl")
    os.makedirs(os.path.join(work, "images"), exist_ok=True)
    with open(prompt_file, "w") as f:
        for index, row in enumerate(table):
            image_path = os.path.join(work, "images", f"{index}.png")
            with open(image_path, "wb") as image_file:
                image_file.write(row["images"][0]["bytes"])
            # TRL places the image block itself; the text is the same rendered prompt without the placeholder.
            text = template.render(content=row["problem"]).replace("<image>", "").strip()
            f.write(json.dumps({"text": text, "image": image_path}) + "\n")
    return model_path, data_dir, prompt_file


def run_trl(args, model_path: str, prompt_file: str, work: str) -> dict:
    out = os.path.join(work, "trl.json")
    command = [
        args.trl_python, os.path.join(REPO_ROOT, "benchmarks/trl_grpo.py"), "--model_path", model_path,
        "--prompts", prompt_file, "--out", out, "--prompts_per_step", str(args.prompts),
        "--generations", str(args.generations), "--response_length", str(args.response_length),
        "--steps", str(args.steps), "--threads", str(args.threads),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    peak = run_measured(command, env, "TRL")
    result = json.load(open(out))
    timed = result["step_seconds"][args.warmup :]
    return {
        "step_s": stats(timed),
        "completion_tokens_per_s": args.prompts * args.generations * args.response_length / statistics.median(timed),
        "completion_mean_length": statistics.mean(result["completion_mean_length"]),
        "vision_tower_calls": result["vision_tower_calls"],
        "peak_rss_mib": peak,
        "torch": result["torch"],
    }


def run_project(args, model_path: str, data_dir: str, work: str, self_reward: bool) -> dict:
    label = "this project, self-reward" if self_reward else "this project"
    ckpt = tempfile.mkdtemp(dir=work)
    command = [
        sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu_selfReward.yaml",
        f"worker.actor.model.model_path={model_path}",
        f"data.train_files={data_dir}/train.parquet", f"data.val_files={data_dir}/val.parquet",
        f"worker.rollout.name={args.engine}",
        f"data.rollout_batch_size={args.prompts}", f"worker.actor.global_batch_size={args.prompts}",
        f"worker.rollout.n={args.generations}",
        f"data.max_response_length={args.response_length}", f"worker.rollout.min_response_length={args.response_length}",
        "worker.actor.use_kl_loss=false", "algorithm.kl_coef=0.0",
        f"trainer.max_steps={args.steps}", "trainer.total_epochs=1000", "trainer.val_before_train=false",
        "trainer.val_freq=-1", "trainer.save_freq=-1", f"trainer.save_checkpoint_path={ckpt}",
        "trainer.find_last_checkpoint=false", "trainer.logger=[file]",
    ]
    if self_reward:
        command += ["self_reward.enable=true", "self_reward.missing_description=whole_response"]
    else:
        command += ["self_reward.enable=false", "reward.reward_function=see_think"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", RAY_DEDUP_LOGS="0")
    peak = run_measured(command, env, label)
    with open(os.path.join(ckpt, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    # Wall time of step k = time of record k - time of record k-1; the last step also saves a checkpoint.
    wall = [b["time"] - a["time"] for a, b in zip(records, records[1:])][:-1]
    timed = wall[max(0, args.warmup - 1) :]
    stages = sorted(k for k in records[-1] if k.startswith("timing_s/") and k != "timing_s/save_checkpoint")
    steady = records[args.warmup : -1]
    return {
        "step_s": stats(timed),
        "completion_tokens_per_s": args.prompts * args.generations * args.response_length / statistics.median(timed),
        "completion_mean_length": statistics.mean(r["train/response_length/mean"] for r in steady),
        "stage_median_s": {k: statistics.median(r.get(k, 0.0) for r in steady) for k in stages},
        "peak_rss_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl_python", default=os.path.join(REPO_ROOT, ".venv-trl/bin/python"))
    parser.add_argument("--model_path", default=None, help="default: build the tiny random model (seed 0)")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--response_length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="first steps dropped from the statistics")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip_trl", action="store_true", help="only this project's two runs")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks/results/vs_trl.json"))
    args = parser.parse_args()
    if not args.skip_trl and not os.path.exists(args.trl_python):
        sys.exit(f"{args.trl_python} not found: python3.11 -m venv .venv-trl && "
                 ".venv-trl/bin/pip install -r benchmarks/requirements-trl.txt")
    with tempfile.TemporaryDirectory() as work:
        model_path, data_dir, prompt_file = prepare_inputs(work, args.model_path, args.prompts, args.steps)
        results = {}
        if not args.skip_trl:
            results["trl"] = run_trl(args, model_path, prompt_file, work)
        results["project"] = run_project(args, model_path, data_dir, work, self_reward=False)
        results["project_self_reward"] = run_project(args, model_path, data_dir, work, self_reward=True)
    work_line = (f"{args.prompts} prompts x {args.generations} generations x {args.response_length} tokens, "
                 f"fp32, {args.threads} threads, engine={args.engine}, {args.steps} steps (first {args.warmup} dropped)")
    print(f"\n{work_line}")
    print(f"{'system':28s} {'s/step min':>10s} {'median':>8s} {'max':>8s} {'compl tok/s':>12s} {'peak RSS MiB':>13s}")
    for name, r in results.items():
        s = r["step_s"]
        print(f"{name:28s} {s['min']:10.3f} {s['median']:8.3f} {s['max']:8.3f} "
              f"{r['completion_tokens_per_s']:12.0f} {r['peak_rss_mib']:13.0f}")
    summary = {"work": work_line, "load_average_after": os.getloadavg()[0], **results}
    base = results["project"]["step_s"]["median"]
    summary["self_reward_step_ratio"] = results["project_self_reward"]["step_s"]["median"] / base
    print(f"self-reward step / no-self-reward step: {summary['self_reward_step_ratio']:.3f}x")
    if "trl" in results:
        summary["speedup_vs_trl"] = results["trl"]["step_s"]["median"] / base
        print(f"this project vs TRL (completion tokens/s): {summary['speedup_vs_trl']:.2f}x")
    for name in ("project", "project_self_reward"):
        print(f"{name} stage medians: " + ", ".join(
            f"{k.split('/')[-1]} {v:.3f}" for k, v in results[name]["stage_median_s"].items()))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
