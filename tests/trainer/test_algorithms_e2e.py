"""Two CLI steps of each added algorithm on the tiny model (Ray, 2 FSDP ranks, HF engine): DAPO
(clip-higher, token-mean, overlong shaping, dynamic sampling) with sequence-level MIS, GSPO with
the ReMax baseline, and GAE with its critic and the CISPO loss under the default token-level TIS
(step 2 after a resume that restores actor and critic). The maths is tested by hand in
tests/algorithms/; these runs check that the config selects it and the controller wires it."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e

VARIANTS = {
    "dapo_mis": [
        "worker.actor.clip_ratio_low=0.2", "worker.actor.clip_ratio_high=0.28",
        "worker.actor.loss_agg_mode=token-mean",
        "algorithm.overlong.buffer_length=8",
        "algorithm.dynamic_sampling.enable=true", "algorithm.dynamic_sampling.max_tries=2",
        "algorithm.dynamic_sampling.metric=accuracy", "algorithm.dynamic_sampling.fill_after_max_tries=true",
        "worker.actor.rollout_correction.mode=mis", "worker.actor.rollout_correction.level=sequence",
    ],
    "gspo_remax": [
        "worker.actor.policy_loss=gspo", "worker.actor.loss_agg_mode=seq-mean-token-mean",
        "worker.actor.clip_ratio_low=3e-4", "worker.actor.clip_ratio_high=4e-4",
        "algorithm.adv_estimator=remax",
    ],
    # GAE with the CISPO loss (estimator and loss are independent choices; one run fewer): step
    # 1, then a second run resumes actor and critic from its checkpoint for step 2.
    "gae_cispo": [
        "algorithm.adv_estimator=gae", "algorithm.lam=0.95", "worker.critic.optim.lr=1e-3",
        "worker.actor.policy_loss=cispo", "worker.actor.clip_ratio_high=2.0",
    ],
}


REWARD = """
def length_reward(reward_inputs):
    # The random tiny model earns no format or accuracy; the length gives every group spread, and
    # "stopped before the limit" (some groups all yes or all no) gives dynamic sampling work.
    return [{"overall": item.response_length / 24.0, "accuracy": float(item.response_length < 24)}
            for item in reward_inputs]
"""


# One driver process, one Ray session, the variants one after another: the CLI's start-up
# (imports, Ray) is paid once instead of once per variant.
DRIVER = """
import json, sys
from verl.trainer.config import PPOConfig, load_config
from verl.trainer.main import run
for overrides in json.loads(sys.argv[1]):
    run(load_config(PPOConfig, "configs/tiny_cpu.yaml", overrides))
"""


def run_two_steps_each(model: str, data: str, root: Path) -> dict[str, list[dict]]:
    reward_file = root / "length_reward.py"
    reward_file.write_text(REWARD)
    common = [
        f"worker.actor.model.model_path={model}", f"data.train_files={data}/train.parquet",
        f"data.val_files={data}/val.parquet", "trainer.logger=[file]", "trainer.max_steps=2",
        "trainer.val_before_train=false", "trainer.val_freq=-1", "data.rollout_batch_size=8",
        "worker.actor.global_batch_size=8", "worker.rollout.n=4", f"reward.reward_function={reward_file}:length_reward",
        "data.max_response_length=24",  # half the recipe's 48: the wiring, not the lengths, is under test
    ]
    runs = [common + [f"trainer.save_checkpoint_path={root / name}"] + overrides for name, overrides in VARIANTS.items()]
    runs[-1] = runs[-1] + ["trainer.max_steps=1"]  # gae_cispo: step 1 ...
    runs.append(runs[-1][:-1])  # ... and step 2 after resuming
    env = dict(os.environ, RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(runs)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert f"resumed from {root / 'gae_cispo'}/global_step_1 (step 1)" in result.stdout
    critic_shards = os.listdir(root / "gae_cispo" / "global_step_2" / "critic")
    assert {"model_world_size_2_rank_1.pt", "optim_world_size_2_rank_1.pt", "value_head.json"} <= set(critic_shards)
    metrics = {}
    for name in VARIANTS:
        with open(root / name / "metrics.jsonl") as f:
            metrics[name] = [json.loads(line) for line in f]
    return metrics


def test_two_steps_each_of_dapo_gspo_cispo_remax_gae_with_tis_mis(tiny_model_dir, synthetic_data_dir, tmp_path):
    for variant, steps in run_two_steps_each(tiny_model_dir, synthetic_data_dir, tmp_path).items():
        check_variant(variant, steps)


def check_variant(variant: str, steps: list[dict]) -> None:
    assert [m["step"] for m in steps] == [1, 2], variant
    if variant == "gae_cispo":
        # The value head starts at zero; step 2 runs in a new process, so non-zero values there
        # mean the critic's trained weights came back from the checkpoint.
        assert steps[0]["critic/values_mean"] == 0.0 and steps[1]["critic/values_mean"] != 0.0
    for step in steps:
        assert math.isfinite(step["actor/pg_loss"]) and step["actor/grad_norm"] > 0.0
        # fp32 HF engine and fp32 FSDP actor: the importance ratio is 1 up to numerics
        assert abs(step["rollout_corr/ratio_mean"] - 1.0) < 1e-3 and step["rollout_corr/ratio_max"] < 1.01
        # PPO reports its dual-clip fraction; GSPO and CISPO have no dual clip
        assert ("actor/pg_clipfrac_lower" in step) == (variant == "dapo_mis")
        if variant == "dapo_mis":
            assert step["rollout_corr/masked_frac"] == 0.0
            batches = step["dynamic_sampling/generation_batches"]
            assert batches in (1.0, 2.0) and step["dynamic_sampling/prompts_drawn"] == 8 * batches
            assert step["dynamic_sampling/informative_prompts"] + step["dynamic_sampling/filler_prompts"] == 8
            assert batches == 2.0 or step["dynamic_sampling/informative_prompts"] == 8
            assert -1.0 <= step["train/reward/overlong_penalty"] <= 0.0
        if variant == "gspo_remax":
            assert step["timing_s/remax_greedy"] > 0.0
        if variant == "gae_cispo":
            assert step["rollout_corr/truncated_frac"] == 0.0
            assert step["critic/vf_loss"] > 0.0 and step["critic/grad_norm"] > 0.0
            assert "timing_s/values" in step and "timing_s/update_critic" in step
