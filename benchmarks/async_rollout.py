"""Colocated vs one-step-off rollout at equal work, back to back on an idle machine, and a cost
model that scales the measured stage times to a GPU node.

    .venv/bin/python benchmarks/async_rollout.py --shape tiny [--rounds 2]
    .venv/bin/python benchmarks/async_rollout.py --shape compute

Arms (all through the real CLI, the tiny self-reward config's defaults, HF engine unless
`--engine`, 2 CPU cores in all):
- colocated: 2 hybrid ranks (FSDP actor + engine in each), generation then training;
- one_step_off: 1 FSDP rank on one core, 1 standalone engine on the other; step k+1 generates
  while step k trains;
- both again with the self-reward on (`whole_response`, so the random model's re-answer pass
  really runs): the ratio one_step_off(self-reward) / one_step_off(without) is the issue's
  "the pass runs in the rollout's shadow" check.
Equal work: the same prompts, P prompts x G generations, completions forced to L tokens
(`min_response_length`), no reference model. Step time is wall clock between consecutive metric
records, the first `--warmup` steps and the last (it saves) dropped. The one-step-off runs also
report the share of generation hidden behind training (`async/generation_hidden_share`).

Shapes are vs_trl.py's: tiny (0.46 M model, 16 x 8 x 32) and compute (~7.5 M model, ~95-token
image prompts, 8 x 8 x 64). Before every run the script waits for idle cores and prints the load
average; every round is printed. Writes benchmarks/results/async_rollout_<shape>.json.

The cost model (`predict_speedup`) is printed after the measurement: it takes the colocated run's
measured generation and training times and predicts one_step_off's step on an N-GPU node under
stated assumptions, see its docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vs_trl import prepare_inputs, run_measured, stats, wait_for_idle, write_summary  # noqa: E402

ARMS = {
    "colocated": ["trainer.rollout_mode=colocated", "trainer.n_gpus_per_node=2"],
    "one_step_off": ["trainer.rollout_mode=one_step_off", "trainer.n_gpus_per_node=1", "trainer.rollout_n_gpus_per_node=1"],
}
GENERATION_STAGES = ("timing_s/gen", "timing_s/self_reward", "timing_s/reward")
TRAINING_STAGES = ("timing_s/old_log_prob", "timing_s/update_actor", "timing_s/adv")


def run_arm(args, model_path: str, data_dir: str, work: str, arm: str, self_reward: bool) -> dict:
    label = f"{arm}{' + self-reward' if self_reward else ''}"
    ckpt = tempfile.mkdtemp(dir=work)
    pixels = 224 * 224 if args.shape == "compute" else None
    command = [
        sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu_selfReward.yaml",
        f"worker.actor.model.model_path={model_path}",
        f"data.train_files={data_dir}/train.parquet", f"data.val_files={data_dir}/val.parquet", "data.format_prompt=null",
        f"data.rollout_batch_size={args.prompts}", f"worker.actor.global_batch_size={args.prompts}",
        f"worker.rollout.n={args.generations}", f"worker.actor.micro_batch_size_per_device_for_update={args.generations}",
        f"data.max_response_length={args.response_length}", f"worker.rollout.min_response_length={args.response_length}",
        "worker.actor.use_kl_loss=false", "algorithm.kl_coef=0.0",
        f"trainer.max_steps={args.steps}", "trainer.total_epochs=1000", "trainer.val_before_train=false",
        "trainer.val_freq=-1", "trainer.save_freq=-1", f"trainer.save_checkpoint_path={ckpt}",
        "trainer.find_last_checkpoint=false", "trainer.logger=[file]", *ARMS[arm],
    ]
    if args.engine:
        command.append(f"worker.rollout.name={args.engine}")
    if pixels:
        command += [f"data.min_pixels={pixels}", f"data.max_pixels={pixels}"]
    if self_reward:
        command += ["self_reward.enable=true", "self_reward.missing_description=whole_response",
                    f"self_reward.max_response_length={args.response_length}"]
    else:
        command += ["self_reward.enable=false", "reward.reward_function=see_think"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", RAY_DEDUP_LOGS="0")
    peak = run_measured(command, env, label)
    with open(os.path.join(ckpt, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    wall = [b["time"] - a["time"] for a, b in zip(records, records[1:])][:-1]
    steady = records[args.warmup : -1]

    def median(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in steady)

    return {
        "step_s": stats(wall[max(0, args.warmup - 1) :]),
        "generation_s": sum(median(key) for key in GENERATION_STAGES),
        "training_s": sum(median(key) for key in TRAINING_STAGES),
        "wait_s": median("timing_s/wait_rollout"),
        "hidden_share": median("async/generation_hidden_share") if arm == "one_step_off" else 0.0,
        "stage_median_s": {k: median(k) for k in sorted(records[-1]) if k.startswith("timing_s/")},
        "peak_rss_mib": peak,
    }


def predict_speedup(generation_s: float, training_s: float, gpus: int, decode_scaling: float, handoff_s: float,
                    colocated_overhead_s: float) -> tuple[float, int]:
    """One-step-off's predicted speed-up over colocated on a node of `gpus` GPUs, and the best
    number of rollout GPUs. Assumptions, each stated:

    - Colocated, every GPU generates (`generation_s`, self-reward pass included), then every GPU
      trains (`training_s`), plus `colocated_overhead_s` a step for what sharing the devices costs
      (engine sleep/wake, KV-cache re-allocation, resharding the weights into the engine's layout).
    - One-step-off puts r GPUs on the rollout and gpus - r on training. Training is compute-bound
      and scales linearly: training_s * gpus / (gpus - r). Decode is memory-bandwidth-bound, so a
      larger batch per GPU costs less than linearly: generation_s * (gpus / r) ** decode_scaling
      (1.0 = linear, no gain from the split; 0.5-0.7 = what batch-size scaling of decode gives).
    - The step is the slower side plus the weight hand-off (`handoff_s`: publish + load), which
      does not overlap.
    """
    colocated = generation_s + training_s + colocated_overhead_s
    best = (0.0, 1)
    for rollout_gpus in range(1, gpus):
        generation = generation_s * (gpus / rollout_gpus) ** decode_scaling
        training = training_s * gpus / (gpus - rollout_gpus)
        speedup = colocated / (max(generation, training) + handoff_s)
        best = max(best, (speedup, rollout_gpus))
    return best


def summarize(rounds: list[dict], work_line: str) -> dict:
    """Prints the speed-ups over the valid rounds and the cost model; returns the JSON summary."""
    valid = [r for r in rounds if not r["void"]]
    summary: dict = {"work": work_line, "rounds": rounds, "valid_rounds": len(valid)}
    if valid:
        def ratio(a: str, b: str) -> float:
            return statistics.median(r[a]["step_s"]["median"] / r[b]["step_s"]["median"] for r in valid)

        summary["one_step_off_speedup"] = ratio("colocated", "one_step_off")
        summary["one_step_off_speedup_self_reward"] = ratio("colocated+self_reward", "one_step_off+self_reward")
        summary["self_reward_ratio_one_step_off"] = ratio("one_step_off+self_reward", "one_step_off")
        summary["self_reward_ratio_colocated"] = ratio("colocated+self_reward", "colocated")
        print(f"one_step_off vs colocated (median over {len(valid)} valid rounds): "
              f"{summary['one_step_off_speedup']:.2f}x; with the self-reward {summary['one_step_off_speedup_self_reward']:.2f}x")
        print(f"self-reward step / step without: one_step_off {summary['self_reward_ratio_one_step_off']:.3f}x, "
              f"colocated {summary['self_reward_ratio_colocated']:.3f}x")
        measured = valid[-1]["colocated+self_reward"]
        stages = measured["stage_median_s"]
        handoff = valid[-1]["one_step_off+self_reward"]["stage_median_s"]
        handoff_s = handoff.get("timing_s/publish", 0.0) + handoff.get("timing_s/sync", 0.0)
        overhead_s = stages.get("timing_s/rollout_sleep", 0.0) + stages.get("timing_s/sync", 0.0)
        print("\ncost model (predict_speedup): this run's colocated self-reward step scaled to an 8-GPU node")
        print(f"  measured: generation {measured['generation_s']:.3f} s, training {measured['training_s']:.3f} s, "
              f"colocated overhead (sleep + sync) {overhead_s:.3f} s, one-step-off hand-off {handoff_s:.3f} s")
        model = []
        for decode_scaling in (1.0, 0.7, 0.5):
            speedup, rollout_gpus = predict_speedup(
                measured["generation_s"], measured["training_s"], 8, decode_scaling, handoff_s, overhead_s
            )
            model.append({"decode_scaling": decode_scaling, "speedup": speedup, "rollout_gpus": rollout_gpus})
            print(f"  decode scaling {decode_scaling:.1f}: best split {rollout_gpus} rollout + {8 - rollout_gpus} training "
                  f"GPUs, predicted {speedup:.2f}x")
        summary["cost_model_8_gpus"] = model
    else:
        print("no valid round: the machine was never idle; nothing to report")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=["tiny", "compute"])
    parser.add_argument("--model_path", default=None, help="default: build the shape's random model (seed 0)")
    parser.add_argument("--engine", default=None, choices=["vllm", "hf"], help="default: the config's (hf)")
    parser.add_argument("--prompts", type=int, default=None, help="default: 16 (tiny), 8 (compute)")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--response_length", type=int, default=None, help="default: 32 (tiny), 64 (compute)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="first steps dropped from the statistics")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle_wait", type=float, default=180.0)
    parser.add_argument("--busy_limit", type=float, default=15.0, help="percent of all cores")
    parser.add_argument("--format_prompt", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.prompts = args.prompts or (8 if args.shape == "compute" else 16)
    args.response_length = args.response_length or (64 if args.shape == "compute" else 32)
    out = args.out or os.path.join(REPO_ROOT, f"benchmarks/results/async_rollout_{args.shape}.json")
    sides = [(arm, self_reward) for self_reward in (False, True) for arm in ARMS]
    rounds = []
    with tempfile.TemporaryDirectory() as work:
        model_path, data_dir, _ = prepare_inputs(args, work)
        for index in range(args.rounds):
            entry = {}
            for arm, self_reward in sides:
                name = f"{arm}{'+self_reward' if self_reward else ''}"
                check = wait_for_idle(f"round {index + 1} {name}", args.idle_wait, args.busy_limit)
                entry[name] = {**run_arm(args, model_path, data_dir, work, arm, self_reward), **check}
                print(f"[round {index + 1} {name}] median {entry[name]['step_s']['median']:.3f} s/step", flush=True)
            entry["void"] = any(side["void"] for side in entry.values())
            rounds.append(entry)
    work_line = (f"{args.shape}: {args.prompts} prompts x {args.generations} x {args.response_length} tokens, fp32, "
                 f"2 cores (colocated: 2 ranks; one_step_off: 1 rank + 1 engine), engine={args.engine or 'hf'}, "
                 f"{args.steps} steps (first {args.warmup} and the last dropped)")
    print(f"\n{work_line}")
    print(f"{'round':>5s} {'arm':26s} {'s/step min':>10s} {'median':>8s} {'max':>8s} {'gen s':>7s} {'train s':>8s} "
          f"{'wait s':>7s} {'hidden':>7s} {'load before':>12s}")
    for index, entry in enumerate(rounds, 1):
        for name, r in ((k, v) for k, v in entry.items() if isinstance(v, dict)):
            s = r["step_s"]
            print(f"{index:5d} {name:26s} {s['min']:10.3f} {s['median']:8.3f} {s['max']:8.3f} {r['generation_s']:7.3f} "
                  f"{r['training_s']:8.3f} {r['wait_s']:7.3f} {r['hidden_share']:7.2f} {r['load_average_before']:12.2f}"
                  + ("  VOID (machine busy)" if r["void"] else ""))
    summary = summarize(rounds, work_line)
    write_summary(summary, out)


if __name__ == "__main__":
    main()
