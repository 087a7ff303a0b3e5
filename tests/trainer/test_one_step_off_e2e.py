"""trainer.rollout_mode=one_step_off through the real CLI: one FSDP rank and one standalone HF
rollout engine (one CPU each). Batches are one update old from step 2 on, generation of step k+1
overlaps step k's update on the timeline, and a driver stopped mid-stream resumes to the
uninterrupted run's metrics and weights (the in-flight batch regenerated from the saved weights)."""

import json
import os
import signal
import subprocess

import pytest
import torch

from tests.cli_driver import CLI_ENV, REPO_ROOT, BackgroundDriver
from tests.trainer.test_main_e2e import cli_command, common, read_metrics, run_cli
from verl.utils.model_merger import load_shard
from verl.workers.rollout_worker import rollout_weights_path

pytestmark = pytest.mark.e2e

STEPS = 3


def one_step_off_args(model: str, data: str, ckpt: str) -> list[str]:
    return [
        *common(model, data, ckpt), "trainer.rollout_mode=one_step_off", "trainer.n_gpus_per_node=1",
        f"trainer.max_steps={STEPS}", "trainer.save_freq=1", "trainer.val_freq=-1", "trainer.val_before_train=false",
        "trainer.seed=2", "worker.rollout.seed=2", "data.seed=2",
    ]


def spans(root: str) -> list[dict]:
    with open(os.path.join(root, "timeline.json")) as f:
        return [event for event in json.load(f)["traceEvents"] if event.get("ph") == "X"]


def stop_when_step_saved(command: list[str], ckpt: str, step: int, timeout_s: float = 420) -> str:
    """Starts the CLI and sends its driver SIGTERM (a scheduler's pre-emption) as soon as
    checkpoint `step` is published, while the next batch is being generated; returns the output."""
    latest = os.path.join(ckpt, "latest_global_step.txt")
    with BackgroundDriver(command) as driver:
        driver.wait_until(lambda: os.path.isfile(latest) and open(latest).read().strip() == str(step), timeout_s)
        returncode = driver.sigterm()
    assert returncode == 128 + signal.SIGTERM, driver.output()[-4000:]
    return driver.output()


def test_one_step_off_overlaps_and_resumes_mid_stream_to_the_uninterrupted_run(
    tiny_model_dir, synthetic_data_dir, tmp_path
):
    straight = str(tmp_path / "straight")
    output = run_cli("configs/tiny_cpu_selfReward.yaml", *one_step_off_args(tiny_model_dir, synthetic_data_dir, straight))
    assert "one-step-off rollout: engines on the actor's weights (update 0)" in output, output[-3000:]
    metrics = read_metrics(straight)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    # Step 1 trains on-policy; every later batch came from the weights one update old.
    assert [m["async/weights_staleness"] for m in metrics] == [0.0] + [1.0] * (STEPS - 1)
    # On-policy, engine and trainer log-probs agree to float noise; a batch from the weights one
    # update old differs by that update (step 2's moved the weights by Adam's lr-sized steps).
    assert metrics[0]["rollout/logprob_gap_max"] < 1e-4 < metrics[-1]["rollout/logprob_gap_max"]
    for step in metrics[1:]:
        assert 0.0 <= step["async/generation_hidden_share"] <= 1.0
        assert step["train/self_reward/engine_calls_per_rank"] <= 1.0
        for key in ("timing_s/gen", "timing_s/old_log_prob", "timing_s/update_actor", "timing_s/publish",
                    "timing_s/sync", "timing_s/wait_rollout", "perf/sync_bytes"):
            assert key in step, key
    # The picture: step k+1's generation runs while step k trains (its log-prob passes and update).
    events = spans(straight)

    def window(step: int, side: str) -> tuple[int, int]:
        chosen = [e for e in events if e["cat"] == side and e["args"]["step"] == step]
        return min(e["ts"] for e in chosen), max(e["ts"] + e["dur"] for e in chosen)

    for k in range(1, STEPS):
        (gen_start, gen_end), (train_start, train_end) = window(k + 1, "generation"), window(k, "training")
        assert gen_start < train_end and train_start < gen_end, (k, gen_start, gen_end, train_start, train_end)
    # Each checkpoint holds the weights its in-flight batch is generated from.
    for k in range(1, STEPS + 1):
        assert os.path.isfile(rollout_weights_path(os.path.join(straight, f"global_step_{k}")))

    ckpt = str(tmp_path / "ckpt")
    args = one_step_off_args(tiny_model_dir, synthetic_data_dir, ckpt)
    stop_when_step_saved(cli_command("configs/tiny_cpu_selfReward.yaml", *args), ckpt, step=2)
    resumed_output = run_cli("configs/tiny_cpu_selfReward.yaml", *args)
    assert f"resumed from {ckpt}/global_step_2 (step 2)" in resumed_output, resumed_output[-3000:]
    assert "engines resume on the weights of update 1 (the in-flight batch's)" in resumed_output
    resumed = read_metrics(ckpt)
    assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))
    # Steps 1-2 (before the stop: same seed, same metrics) and step 3 (regenerated after the resume).
    for before, after in zip(metrics, resumed):
        for key in ("train/reward/overall", "actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "actor/entropy",
                    "train/response_length/mean", "rollout/logprob_gap_mean", "async/weights_staleness"):
            assert after[key] == before[key], (before["step"], key)
    shard = f"global_step_{STEPS}/actor/model_world_size_1_rank_0.pt"
    resumed_weights, straight_weights = load_shard(os.path.join(ckpt, shard)), load_shard(os.path.join(straight, shard))
    assert resumed_weights.keys() == straight_weights.keys()
    for name, weight in straight_weights.items():
        assert torch.equal(resumed_weights[name], weight), name


def test_training_ranks_and_engines_that_do_not_fit_together_stop_at_start_naming_both(
    tiny_model_dir, synthetic_data_dir, tmp_path
):
    """2 training ranks + 1 engine on a 2-CPU Ray: each group alone fits, together they do not;
    without the joint check the engines' placement would wait for resources the ranks hold."""
    result = subprocess.run(
        cli_command("configs/tiny_cpu.yaml", *common(tiny_model_dir, synthetic_data_dir, str(tmp_path / "ckpt")),
                    "trainer.rollout_mode=one_step_off", "trainer.n_gpus_per_node=2", "trainer.max_steps=1"),
        cwd=REPO_ROOT, env=CLI_ENV, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: trainer.rollout_mode=one_step_off needs 3 CPU (2 training ranks + 1 rollout engines, "
        "trainer.rollout_nnodes x trainer.rollout_n_gpus_per_node); the Ray cluster has 2 (trainer.ray_num_cpus, "
        "or the nodes' resources)"
    ), result.stderr[-3000:]
