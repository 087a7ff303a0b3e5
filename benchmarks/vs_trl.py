"""This project's GRPO step vs TRL's GRPOTrainer, same model, data and work, back to back on an idle machine.

    .venv/bin/python benchmarks/vs_trl.py --shape tiny --response_length 32 [--rounds 2]
    .venv/bin/python benchmarks/vs_trl.py --shape tiny --response_length 128
    .venv/bin/python benchmarks/vs_trl.py --shape compute        # 8 prompts x 8 x 64 on the ~7.5 M model

Shapes:
- tiny: the tiny random Qwen2.5-VL (0.46 M), 112 x 112 images, 16 prompts x 8 generations;
  Python overhead dominates both sides.
- compute: the ~7.5 M Qwen2.5-VL of benchmarks/training_shapes.py (text 384 x 4, vision 128 x
  2), 224 x 224 images (64 visual tokens, a ~95-token prompt), 8 prompts x 8 x 64 tokens: the
  prompt is most of each row, as in a real run, and matmuls set the time.

Equal work on both sides: the same model folder, the same synthetic prompts (the plain question,
one image; `--format_prompt` renders a jinja file for both), P prompts x G generations, completions
forced to L tokens, no reference model, fp32 on CPU, 2 threads in all (TRL: one process with 2
threads; this project: 2 FSDP worker processes with 1 thread each, as the tiny config runs it).
This project runs the tiny self-reward config's defaults (its default engine, `hf`, unless
`--engine`; micro-batch sizes; shared-prompt packing), with the self-reward off and only the sizes
above overridden; `--with_self_reward` adds a run with it on (`whole_response`, so the random
model's re-prompt pass really runs) for the self-reward step-time ratio.

A race is only valid on an idle machine (a second job slows either side 2-4x on 2 cores). Each
round runs TRL and then this project; before every run the script waits (up to `--idle_wait` s)
until the cores are idle (under `--busy_limit` % busy over 3 s) and prints the load average; a
run that never found the machine idle is kept but marked void and left out of the medians. Every
round is printed. Step time is wall clock per step (TRL: a callback around each step; here:
between consecutive metric records, the whole loop iteration); the first `--warmup` steps and
this project's last step (which also writes the checkpoint) are dropped. Peak RSS is the largest
sum over the process tree (Ray's processes included), sampled every 0.2 s.

TRL runs in its own virtualenv (benchmarks/requirements-trl.txt). Writes
benchmarks/results/vs_trl_<shape>_<L>.json.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from training_shapes import COMPUTE_SPEC  # noqa: E402


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


def write_summary(summary: dict, out: str) -> None:
    """The benchmark's JSON result file (its folder made if absent)."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {out}")


def wait_for_idle(label: str, max_wait: float, busy_limit: float) -> dict:
    """Waits until the cores are idle (under `busy_limit` % busy over 3 s), at most `max_wait` s;
    prints and returns the load average and the busy share it saw last."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = psutil.cpu_percent(interval=3.0)
        idle = busy < busy_limit
        if idle or time.monotonic() >= deadline:
            break
    load = os.getloadavg()[0]
    state = "idle" if idle else f"NOT IDLE after {max_wait:.0f} s: this run is void"
    print(f"[{label}] load average {load:.2f}, cores {busy:.0f}% busy: {state}", flush=True)
    return {"load_average_before": load, "busy_percent_before": busy, "void": not idle}


def run_measured(command: list[str], env: dict, label: str, timeout: int = 3600) -> float:
    """Runs `command`, returns the peak tree RSS in MiB; exits with its output on failure."""
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


def prepare_inputs(args, work: str) -> tuple[str, str, str]:
    """Model folder, synthetic data folder, and TRL's prompt file (same text and images)."""
    import pyarrow.parquet as pq

    from training_shapes import COMPUTE_IMAGE_SIZE, build_model, write_data
    from verl.toy.tiny_model import TinyModelSpec

    model_path = args.model_path
    if model_path is None:
        spec = COMPUTE_SPEC if args.shape == "compute" else TinyModelSpec()
        model_path = build_model(os.path.join(work, "model"), spec)
    image_size = COMPUTE_IMAGE_SIZE if args.shape == "compute" else 84
    data_dir = write_data(os.path.join(work, "data"), args.prompts * (args.steps + 2), image_size)
    template = None
    if args.format_prompt:
        import jinja2

        template = jinja2.Template(open(os.path.join(REPO_ROOT, args.format_prompt)).read())
    table = pq.read_table(os.path.join(data_dir, "train.parquet")).to_pylist()
    prompt_file = os.path.join(work, "trl_prompts.jsonl")
    os.makedirs(os.path.join(work, "images"), exist_ok=True)
    with open(prompt_file, "w") as f:
        for index, row in enumerate(table):
            image_path = os.path.join(work, "images", f"{index}.png")
            with open(image_path, "wb") as image_file:
                image_file.write(row["images"][0]["bytes"])
            # TRL places the image block itself; the text is the same prompt without the placeholder.
            text = template.render(content=row["problem"]) if template else row["problem"]
            f.write(json.dumps({"text": text.replace("<image>", "").strip(), "image": image_path}) + "\n")
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
        "completion_mean_length": statistics.mean(result["completion_mean_length"]),
        "vision_tower_calls": result["vision_tower_calls"],
        "peak_rss_mib": peak,
        "torch": result["torch"],
    }


def run_project(args, model_path: str, data_dir: str, work: str, self_reward: bool) -> dict:
    label = "this project, self-reward" if self_reward else "this project"
    ckpt = tempfile.mkdtemp(dir=work)
    pixels = 224 * 224 if args.shape == "compute" else None
    command = [
        sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu_selfReward.yaml",
        f"worker.actor.model.model_path={model_path}",
        f"data.train_files={data_dir}/train.parquet", f"data.val_files={data_dir}/val.parquet",
        f"data.format_prompt={args.format_prompt or 'null'}",
        f"data.rollout_batch_size={args.prompts}", f"worker.actor.global_batch_size={args.prompts}",
        f"worker.rollout.n={args.generations}",
        f"data.max_response_length={args.response_length}", f"worker.rollout.min_response_length={args.response_length}",
        "worker.actor.use_kl_loss=false", "algorithm.kl_coef=0.0",
        f"trainer.max_steps={args.steps}", "trainer.total_epochs=1000", "trainer.val_before_train=false",
        "trainer.val_freq=-1", "trainer.save_freq=-1", f"trainer.save_checkpoint_path={ckpt}",
        "trainer.find_last_checkpoint=false", "trainer.logger=[file]",
    ]
    if args.engine:
        command.append(f"worker.rollout.name={args.engine}")
    if pixels:
        command += [f"data.min_pixels={pixels}", f"data.max_pixels={pixels}"]
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
        "completion_mean_length": statistics.mean(r["train/response_length/mean"] for r in steady),
        "stage_median_s": {k: statistics.median(r.get(k, 0.0) for r in steady) for k in stages},
        "peak_rss_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=["tiny", "compute"])
    parser.add_argument("--trl_python", default=os.path.join(REPO_ROOT, ".venv-trl/bin/python"))
    parser.add_argument("--model_path", default=None, help="default: build the shape's random model (seed 0)")
    parser.add_argument("--engine", default=None, choices=["vllm", "hf"], help="default: the config's (hf)")
    parser.add_argument("--format_prompt", default=None, help="jinja file for both sides (default: the plain question)")
    parser.add_argument("--prompts", type=int, default=None, help="default: 16 (tiny), 8 (compute)")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--response_length", type=int, default=None, help="default: 32 (tiny), 64 (compute)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="first steps dropped from the statistics")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle_wait", type=float, default=180.0)
    parser.add_argument("--busy_limit", type=float, default=15.0, help="percent of all cores")
    parser.add_argument("--with_self_reward", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.prompts = args.prompts or (8 if args.shape == "compute" else 16)
    args.response_length = args.response_length or (64 if args.shape == "compute" else 32)
    out = args.out or os.path.join(REPO_ROOT, f"benchmarks/results/vs_trl_{args.shape}_{args.response_length}.json")
    if not os.path.exists(args.trl_python):
        sys.exit(f"{args.trl_python} not found: python3.11 -m venv .venv-trl && "
                 ".venv-trl/bin/pip install -r benchmarks/requirements-trl.txt")
    rounds = []
    with tempfile.TemporaryDirectory() as work:
        model_path, data_dir, prompt_file = prepare_inputs(args, work)
        for index in range(args.rounds):
            entry = {}
            sides = [("trl", lambda: run_trl(args, model_path, prompt_file, work)),
                     ("project", lambda: run_project(args, model_path, data_dir, work, self_reward=False))]
            if args.with_self_reward:
                sides.append(("project_self_reward", lambda: run_project(args, model_path, data_dir, work, True)))
            for name, run in sides:
                check = wait_for_idle(f"round {index + 1} {name}", args.idle_wait, args.busy_limit)
                entry[name] = {**run(), **check}
                print(f"[round {index + 1} {name}] median {entry[name]['step_s']['median']:.3f} s/step", flush=True)
            entry["speedup_vs_trl"] = entry["trl"]["step_s"]["median"] / entry["project"]["step_s"]["median"]
            entry["void"] = any(entry[name]["void"] for name, _ in sides)
            rounds.append(entry)
    valid = [r for r in rounds if not r["void"]]
    work_line = (f"{args.shape}: {args.prompts} prompts x {args.generations} generations x {args.response_length} "
                 f"tokens, fp32, {args.threads} threads, engine={args.engine or 'hf (config default)'}, "
                 f"{args.steps} steps (first {args.warmup} dropped)")
    print(f"\n{work_line}")
    print(f"{'round':>5s} {'system':22s} {'s/step min':>10s} {'median':>8s} {'max':>8s} {'peak RSS MiB':>13s} "
          f"{'load before':>12s} {'vs TRL':>7s}")
    for index, entry in enumerate(rounds, 1):
        for name in [k for k in entry if isinstance(entry[k], dict)]:
            r, s = entry[name], entry[name]["step_s"]
            ratio = f"{entry['trl']['step_s']['median'] / s['median']:6.2f}x" if name != "trl" else ""
            print(f"{index:5d} {name:22s} {s['min']:10.3f} {s['median']:8.3f} {s['max']:8.3f} "
                  f"{r['peak_rss_mib']:13.0f} {r['load_average_before']:12.2f} {ratio:>7s}"
                  + ("  VOID (machine busy)" if r["void"] else ""))
    summary = {"work": work_line, "rounds": rounds, "valid_rounds": len(valid)}
    if valid:
        summary["speedup_vs_trl_median"] = statistics.median(r["speedup_vs_trl"] for r in valid)
        print(f"this project vs TRL, median over {len(valid)} valid round(s): {summary['speedup_vs_trl_median']:.2f}x")
        last = valid[-1]["project"]["stage_median_s"]
        print("this project's stage medians (last valid round): "
              + ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in last.items()))
        if args.with_self_reward:
            summary["self_reward_step_ratio"] = statistics.median(
                r["project_self_reward"]["step_s"]["median"] / r["project"]["step_s"]["median"] for r in valid
            )
            print(f"self-reward step / no-self-reward step: {summary['self_reward_step_ratio']:.3f}x")
    else:
        print("no valid round: the machine was never idle; nothing to report")
    write_summary(summary, out)


if __name__ == "__main__":
    main()
