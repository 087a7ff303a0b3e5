"""Soak test: host memory (RSS) per step and per process over a long run of the tiny recipe.

Runs `python3 -m verl.trainer.main config=configs/tiny_cpu.yaml` for N steps (validation and
checkpoints as the recipe sets them, the newest 2 checkpoints kept) and samples, each time a
step's row lands in metrics.jsonl, the RSS of the driver, of each FSDP worker (by rank) and of
the other Ray processes together (raylet, GCS, agents). Prints RSS at step 10 and at the last
step, the slope of a least-squares line over steps 10..N and over the second half (MiB per 100
steps; a leak shows as a steady positive slope, allocator warm-up as an early rise that levels
off) and writes every sample to benchmarks/results/soak.json. The driver's and the ranks' RSS is
also split into anonymous memory (heap and tensors, where a leak lives) and file-backed pages
(shared libraries paged in as code first runs, e.g. at the first validation or checkpoint).

    python3 benchmarks/soak.py [--steps 200] [--max_minutes M] [--model_path models/tiny_qwen25vl] [--data_dir data/tiny_shapes]
        [key=value ...]   (config overrides, e.g. worker.rollout.name=vllm for the colocated vLLM engine)

--max_minutes stops the run early (SIGTERM to the driver, which shuts its Ray cluster down) and
reports the steps reached; the JSON says how many steps ran.

The model and data are built (scripts/make_tiny_model.py, make_synthetic_dataset.py defaults)
when the folders do not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20
DEFAULT_MODEL, DEFAULT_DATA = "models/tiny_qwen25vl", "data/tiny_shapes"
WARM_UP_STEPS = 10  # one-off allocations (model load, first batches, allocator growth) come first


def process_label(process: psutil.Process, driver_pid: int) -> str | None:
    """driver / rank N / ray (the cluster's own processes); None for a process that is gone."""
    try:
        if process.pid == driver_pid:
            return "driver"
        if "FSDPWorker" in " ".join(process.cmdline()):
            return f"rank {process.environ().get('RANK', '?')}"
        return "ray"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def resident_split(pid: int) -> dict[str, float]:
    """MiB of a process's resident memory that is anonymous (heap, tensors: where a leak shows)
    and file-backed (shared libraries' pages, faulted in as new code paths first run), from
    /proc/PID/status (Linux; empty elsewhere)."""
    split = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile"):
                    split[key[3:].lower()] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return split


def sample_rss(driver: psutil.Process) -> dict[str, float]:
    """MiB of resident memory per label; 'ray' sums the cluster's helper processes. The driver
    and the ranks also get '<label> anon' and '<label> file' (see `resident_split`)."""
    rss: dict[str, float] = {}
    for process in [driver] + driver.children(recursive=True):
        label = process_label(process, driver.pid)
        try:
            if label is not None:
                rss[label] = rss.get(label, 0.0) + process.memory_info().rss / MIB
                if label != "ray":
                    for kind, mib in resident_split(process.pid).items():
                        rss[f"{label} {kind}"] = mib
        except psutil.NoSuchProcess:
            continue
    return rss


def ensure_inputs(model_path: str, data_dir: str) -> None:
    """The recipe's rule: the default folders are the repo's own, built with --reuse (rebuilt when
    their build_stamp.json records other arguments); a folder named on the command line is used as
    it is and built only if absent."""
    for script, out, default, marker in (
        ("scripts/make_tiny_model.py", model_path, DEFAULT_MODEL, "config.json"),
        ("scripts/make_synthetic_dataset.py", data_dir, DEFAULT_DATA, "train.parquet"),
    ):
        if out == default:
            subprocess.run([sys.executable, script, "--out", out, "--reuse"], cwd=REPO_ROOT, check=True)
        elif not os.path.isfile(os.path.join(out, marker)):
            subprocess.run([sys.executable, script, "--out", out], cwd=REPO_ROOT, check=True)


def steps_logged(metrics_path: str) -> list[int]:
    if not os.path.isfile(metrics_path):
        return []
    steps = []
    with open(metrics_path) as f:
        for line in f:
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError):
                continue  # a row being written
    return steps


def slope_per_100_steps(steps: list[int], values: list[float]) -> float | None:
    points = [(s, v) for s, v in zip(steps, values) if s >= WARM_UP_STEPS]
    if len(points) < 3:
        return None
    x, y = np.array(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0] * 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--model_path", default=DEFAULT_MODEL)
    parser.add_argument("--data_dir", default=DEFAULT_DATA)
    parser.add_argument("--max_minutes", type=float, default=None, help="stop early after this much wall time")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks/results/soak.json"))
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value) appended to the run's command")
    args = parser.parse_args()
    ensure_inputs(args.model_path, args.data_dir)
    series: dict[str, dict[int, float]] = {}  # label -> step -> MiB (a label may miss a sample, e.g.
    # the workers are already stopped when the last step's row lands)
    sampled_steps: list[int] = []
    with tempfile.TemporaryDirectory() as ckpt:
        command = [
            sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu.yaml",
            f"worker.actor.model.model_path={args.model_path}",
            f"data.train_files={args.data_dir}/train.parquet", f"data.val_files={args.data_dir}/val.parquet",
            f"trainer.max_steps={args.steps}", f"trainer.save_checkpoint_path={ckpt}", "trainer.save_limit=2",
            "trainer.logger=[file]", *args.overrides,
        ]
        print(" ".join(command[2:]), flush=True)
        start = time.monotonic()
        with open(os.path.join(ckpt, "driver.log"), "w") as log:
            run = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
            driver = psutil.Process(run.pid)
            metrics_path = os.path.join(ckpt, "metrics.jsonl")
            stopped_early = False
            while run.poll() is None:
                if args.max_minutes is not None and time.monotonic() - start > args.max_minutes * 60 and not stopped_early:
                    print(f"--max_minutes={args.max_minutes} reached: stopping the run", flush=True)
                    run.terminate()
                    stopped_early = True
                done = [s for s in steps_logged(metrics_path) if s > 0]
                if done and (not sampled_steps or done[-1] > sampled_steps[-1]):
                    rss = sample_rss(driver)
                    sampled_steps.append(done[-1])
                    for label, mib in rss.items():
                        series.setdefault(label, {})[done[-1]] = mib
                    if done[-1] % 10 == 0:
                        totals = {k: v for k, v in rss.items() if not k.endswith((" anon", " file"))}
                        print(f"step {done[-1]}: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in sorted(totals.items())), flush=True)
                time.sleep(0.25)
        if run.returncode != 0 and not stopped_early:
            sys.exit(f"training run failed (exit {run.returncode}):\n" + open(os.path.join(ckpt, "driver.log")).read()[-4000:])
    wall_s = time.monotonic() - start
    last = sampled_steps[-1]
    rows = []
    for label in sorted(series):
        points = sorted(series[label].items())
        steps, values = [s for s, _ in points], [v for _, v in points]
        first = next((s for s in steps if s >= WARM_UP_STEPS), steps[0])
        half = steps[-1] // 2
        rows.append({
            "process": label, "first_step": first, "rss_mib_first": series[label][first],
            "last_step": steps[-1], "rss_mib_last": values[-1], "max_rss_mib": max(values),
            "slope_mib_per_100_steps": slope_per_100_steps(steps, values),
            "slope_mib_per_100_steps_second_half": slope_per_100_steps(
                [s for s in steps if s >= half], [v for s, v in points if s >= half]
            ),
        })
    print(f"\n{len(sampled_steps)} steps sampled of {args.steps} (last {last}), {wall_s:.0f} s")
    print(f"{'process':<13} {'step':>5} {'MiB':>8} {'step':>5} {'MiB':>8} {'max':>8} {'MiB/100 st':>11} {'2nd half':>9}")
    fmt = lambda slope: "n/a" if slope is None else f"{slope:+.2f}"  # noqa: E731
    for row in rows:
        print(f"{row['process']:<13} {row['first_step']:>5} {row['rss_mib_first']:>8.1f} {row['last_step']:>5} "
              f"{row['rss_mib_last']:>8.1f} {row['max_rss_mib']:>8.1f} {fmt(row['slope_mib_per_100_steps']):>11} "
              f"{fmt(row['slope_mib_per_100_steps_second_half']):>9}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({
            "config": "configs/tiny_cpu.yaml", "overrides": args.overrides, "steps_requested": args.steps, "steps_run": last,
            "stopped_early": stopped_early, "nice": os.nice(0), "load_avg_1m_at_end": os.getloadavg()[0],
            "wall_s": wall_s, "warm_up_steps": WARM_UP_STEPS, "summary": rows,
            "rss_mib": {label: {str(step): mib for step, mib in sorted(values.items())} for label, values in series.items()},
        }, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
