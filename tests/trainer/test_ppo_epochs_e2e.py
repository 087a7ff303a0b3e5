"""Several mini-batches per step and ppo_epochs > 1 through the real CLI (Ray, 2 FSDP ranks):
the old-log-prob pass runs, later updates see an importance ratio != 1 and clipped tokens; with
one mini-batch and one epoch the pass is skipped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def run_steps(model: str, data: str, ckpt: str, *overrides: str) -> dict:
    command = [
        sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu.yaml",
        f"worker.actor.model.model_path={model}", f"data.train_files={data}/train.parquet",
        f"data.val_files={data}/val.parquet", f"trainer.save_checkpoint_path={ckpt}",
        "trainer.logger=[file]", "trainer.max_steps=1", "trainer.val_before_train=false", "trainer.val_freq=-1",
        "data.rollout_batch_size=8", "worker.rollout.n=4", *overrides,
    ]
    env = dict(os.environ, RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    with open(os.path.join(ckpt, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f][-1]


LENGTH_REWARD = """
def length_reward(reward_inputs):
    # The random tiny model never earns format or accuracy: a length score gives GRPO non-zero advantages.
    return [{"overall": item.response_length / 48.0} for item in reward_inputs]
"""


def test_two_mini_batches_two_epochs_are_off_policy(tiny_model_dir, synthetic_data_dir, tmp_path):
    reward_file = tmp_path / "length_reward.py"
    reward_file.write_text(LENGTH_REWARD)
    step = run_steps(
        tiny_model_dir, synthetic_data_dir, str(tmp_path / "ckpt"),
        f"reward.reward_function={reward_file}:length_reward",
        "worker.actor.global_batch_size=4",  # 8 prompts / 4 = 2 mini-batches per step
        "worker.actor.ppo_epochs=2",
        "worker.actor.micro_batch_size_per_device_for_update=4",
        "worker.actor.optim.lr=5e-3",  # big steps so later mini-batches move the ratio visibly
        "worker.actor.clip_ratio_low=0.02", "worker.actor.clip_ratio_high=0.02",
    )
    assert step["actor/optimizer_steps"] == 4  # 2 mini-batches x 2 epochs
    assert "timing_s/old_log_prob" in step  # off-policy updates need the behaviour log-probs
    assert step["actor/ppo_kl"] != 0.0  # mean over the updates: ratio != 1 after the first step
    assert step["actor/pg_clipfrac"] > 0.0
    assert step["actor/grad_norm"] > 0.0


def test_on_policy_step_skips_old_log_prob_pass(tiny_model_dir, synthetic_data_dir, tmp_path):
    step = run_steps(tiny_model_dir, synthetic_data_dir, str(tmp_path / "ckpt"), "worker.actor.global_batch_size=8")
    assert step["actor/optimizer_steps"] == 1
    assert "timing_s/old_log_prob" not in step
    assert step["actor/ppo_kl"] == 0.0 and step["actor/pg_clipfrac"] == 0.0
    # Reported by the update instead of the skipped pass.
    assert step["actor/entropy"] > 0 and step["rollout/logprob_gap_max"] < 1e-3
