"""End to end through the real CLI: Ray, 2 FSDP worker processes on gloo, the rollout engine,
rewards, the update and checkpoints, on the tiny model."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cli_driver import CLI_ENV
from verl.utils.model_merger import load_shard

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def cli_command(config: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "verl.trainer.main", f"config={config}", *overrides]


def run_cli(config: str, *overrides: str, timeout: int = 420) -> str:
    command = cli_command(config, *overrides)
    result = subprocess.run(command, cwd=REPO_ROOT, env=CLI_ENV, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def run_two_at_once(config: str, *overrides: str, timeout: int = 420) -> str:
    """The same run started twice at the same moment on one checkpoint folder (a job resubmitted
    while the first still runs): one trains, the other stops at start-up naming the folder and
    the run that has it. Returns the output of the one that trained."""
    runs = [
        subprocess.Popen(cli_command(config, *overrides), cwd=REPO_ROOT, env=CLI_ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=timeout) for run in runs]
    trained = [i for i, run in enumerate(runs) if run.returncode == 0]
    assert len(trained) == 1, [(run.returncode, err[-3000:]) for run, (_, err) in zip(runs, outputs)]
    winner, loser = runs[trained[0]], runs[1 - trained[0]]
    loser_err = outputs[1 - trained[0]][1]
    assert loser.returncode == 1 and "Traceback" not in loser_err, loser_err[-3000:]
    folder = next(o.split("=", 1)[1] for o in overrides if o.startswith("trainer.save_checkpoint_path="))
    assert loser_err.strip().splitlines()[-1].startswith(
        f"error: checkpoint folder {folder} is in use by another run (pid {winner.pid} on host {socket.gethostname()}, "
    ), loser_err[-3000:]
    return "".join(outputs[trained[0]])


def read_metrics(root: str) -> list[dict]:
    with open(os.path.join(root, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def common(model: str, data: str, ckpt: str) -> list[str]:
    return [
        f"worker.actor.model.model_path={model}",
        f"data.train_files={data}/train.parquet",
        f"data.val_files={data}/val.parquet",
        f"trainer.save_checkpoint_path={ckpt}",
        "trainer.logger=[console,file]",
        # small steps: 8 prompts x 4 responses, one mini-batch (the recipes' sizes are not the point here)
        "data.rollout_batch_size=8",
        "worker.actor.global_batch_size=8",
        "worker.rollout.n=4",
        "worker.actor.micro_batch_size_per_device_for_update=8",
    ]


def test_grpo_two_steps_with_resume(tiny_model_dir, synthetic_data_dir, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    args = common(tiny_model_dir, synthetic_data_dir, ckpt) + ["trainer.save_freq=1", "trainer.val_freq=-1"]
    first = run_two_at_once("configs/tiny_cpu.yaml", *args, "trainer.max_steps=1", "trainer.val_before_train=true")
    assert os.path.isdir(os.path.join(ckpt, "global_step_1", "actor"))
    assert open(os.path.join(ckpt, "latest_global_step.txt")).read() == "1"
    assert "resumed" not in first
    second = run_cli("configs/tiny_cpu.yaml", *args, "trainer.max_steps=2", "trainer.val_before_train=false")
    assert f"resumed from {ckpt}/global_step_1 (step 1)" in second
    assert "resume changes trainer.max_steps: 1 -> 2 (applies from the resumed step on)" in second
    metrics = read_metrics(ckpt)
    steps = [m["step"] for m in metrics]
    assert steps == [0, 1, 2], steps  # validation at 0, step 1, then step 2 after the resume
    step2 = metrics[-1]
    for key in ("train/reward/overall", "actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "actor/lr",
                "actor/entropy", "timing_s/gen", "timing_s/update_actor", "perf/tokens_per_s",
                "rollout/logprob_gap_mean", "train/response_length/mean"):
        assert key in step2, key
    # HF engine and FSDP actor compute the same fp32 model: the log-prob gap is numerical noise.
    assert step2["rollout/logprob_gap_max"] < 1e-3
    assert open(os.path.join(ckpt, "latest_global_step.txt")).read() == "2"
    shards = sorted(os.listdir(os.path.join(ckpt, "global_step_2", "actor")))
    assert "model_world_size_2_rank_1.pt" in shards and "huggingface" in shards

    # The resumed run reproduces the uninterrupted one: same step-2 metrics, same weights.
    straight = str(tmp_path / "straight")
    run_cli("configs/tiny_cpu.yaml", *common(tiny_model_dir, synthetic_data_dir, straight), "trainer.save_freq=1",
            "trainer.val_freq=-1", "trainer.max_steps=2", "trainer.val_before_train=true")
    uninterrupted = read_metrics(straight)[-1]
    for key in ("train/reward/overall", "actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "actor/entropy",
                "train/response_length/mean"):
        assert step2[key] == uninterrupted[key], key
    for rank in (0, 1):
        shard = f"global_step_2/actor/model_world_size_2_rank_{rank}.pt"
        resumed_weights = load_shard(os.path.join(ckpt, shard))
        straight_weights = load_shard(os.path.join(straight, shard))
        assert resumed_weights.keys() == straight_weights.keys()
        for name, weight in straight_weights.items():
            assert torch.equal(resumed_weights[name], weight), f"rank {rank}: {name}"


def test_self_reward_step_runs_second_pass_in_one_engine_call(tiny_model_dir, synthetic_data_dir, tmp_path):
    """The random model writes no <description>, so `whole_response` forces the second pass to run;
    the separate (paper) objective also trains the pass-2 rows."""
    ckpt = str(tmp_path / "ckpt")
    output = run_cli(
        "configs/tiny_cpu_selfReward.yaml",
        *common(tiny_model_dir, synthetic_data_dir, ckpt),
        "trainer.max_steps=1",
        "trainer.val_before_train=false",
        "trainer.val_freq=1",
        "self_reward.missing_description=whole_response",
        "self_reward.objective=separate",
        "self_reward.n=2",
        "data.max_response_length=80",  # the random model never stops: every token of the caps is generated
        "self_reward.max_response_length=48",
    )
    step = read_metrics(ckpt)[-1]
    assert step["train/self_reward/engine_calls_per_rank"] == 1.0, output[-3000:]
    # ... so most responses and re-answers are cut at their cap (a few hit a stop token by chance):
    # counted, and warned about naming the key to raise.
    for key in ("train/response/clip_ratio", "train/self_reward/pass2_clip_ratio", "val/response/clip_ratio",
                "val/self_reward/pass2_clip_ratio"):
        assert 0.5 < step[key] <= 1.0, (key, step[key])
    assert f"training step 1: {100 * step['train/response/clip_ratio']:.1f}% of responses were cut" in output
    assert "raise data.max_response_length" in output and "raise self_reward.max_response_length" in output
    assert step["val/self_reward/engine_calls_per_rank"] == 1.0
    for key in ("train/reward/visual", "train/reward/perception_sufficient", "train/reward/language_shortcut",
                "val/reward/visual", "val/reward/language_shortcut", "train/self_reward/pass2_response_length",
                "timing_s/self_reward", "timing_s/pass2_log_prob"):
        assert key in step, key
    assert step["train/self_reward/pass2_response_length"] > 0
    assert step["actor/pass2_rows"] == 32 * 2  # 8 prompts x n=4 responses x 2 re-answers join the update


def test_paper_v2_objective_logs_its_two_terms(tiny_model_dir, synthetic_data_dir, tmp_path):
    """self_reward.objective=paper_v2 with the paper's tags: the answer rollout and the visual
    re-answer rollout train as two terms, each with its policy and KL loss, logged apart."""
    ckpt = str(tmp_path / "ckpt")
    output = run_cli(
        "configs/tiny_cpu_selfReward.yaml",
        *common(tiny_model_dir, synthetic_data_dir, ckpt),
        "trainer.max_steps=1", "trainer.val_before_train=false", "trainer.val_freq=-1",
        "self_reward.objective=paper_v2", "self_reward.tags=paper_v2", "reward.reward_function_kwargs={tags: paper_v2}",
        "data.format_prompt=configs/format_prompt/sr1_paper_v2.jinja",
        # The random model writes no <visual reasoning>: re-prompt with the whole response.
        "self_reward.missing_description=whole_response",
        "data.max_response_length=32", "self_reward.max_response_length=16",
    )
    step = read_metrics(ckpt)[-1]
    assert step["actor/pass2_rows"] == 32, output[-3000:]
    for term in ("answer", "visual"):
        for loss in ("pg_loss", "kl_loss"):
            assert f"actor/{loss}/{term}" in step, (loss, term)
    # Both terms at lambda 0.5: the logged totals are their weighted sums.
    for loss in ("pg_loss", "kl_loss"):
        weighted = 0.5 * (step[f"actor/{loss}/answer"] + step[f"actor/{loss}/visual"])
        assert step[f"actor/{loss}"] == pytest.approx(weighted, rel=1e-4, abs=1e-7), loss
    assert step["actor/kl_loss/visual"] >= 0.0 and step["actor/grad_norm"] > 0.0


def test_papo_one_step(tiny_model_dir, synthetic_data_dir, tmp_path):
    """worker.actor.papo: the masked-image forward runs beside the update's (packed prompts
    included) and its perception KL and double entropy are logged."""
    ckpt = str(tmp_path / "ckpt")
    output = run_cli(
        "configs/tiny_cpu.yaml", *common(tiny_model_dir, synthetic_data_dir, ckpt),
        "trainer.max_steps=1", "trainer.val_before_train=false", "trainer.val_freq=-1",
        "worker.actor.papo.enable=true", "data.max_response_length=32",
    )
    step = read_metrics(ckpt)[-1]
    assert step["actor/papo_kl"] > 0.0 and step["actor/papo_double_entropy"] > 0.0, output[-3000:]
    assert step["actor/grad_norm"] > 0.0


@pytest.mark.vllm
def test_vllm_rollout_two_steps_with_self_reward(tiny_model_dir, synthetic_data_dir, tmp_path):
    """The hybrid engine with vLLM: generation and the re-prompt pass through vLLM, weights synced
    into the live engine after each update."""
    ckpt = str(tmp_path / "ckpt")
    output = run_cli(
        "configs/tiny_cpu_selfReward.yaml",
        *common(tiny_model_dir, synthetic_data_dir, ckpt),
        "worker.rollout.name=vllm",
        "trainer.max_steps=2",
        "trainer.val_before_train=false",
        "trainer.val_freq=2",
        "self_reward.missing_description=whole_response",
    )
    metrics = read_metrics(ckpt)
    assert [m["step"] for m in metrics] == [1, 2]
    for step in metrics:
        assert step["train/self_reward/engine_calls_per_rank"] == 1.0, output[-3000:]
        assert step["perf/sync_bytes"] > 0
        assert step["actor/pass2_rows"] == 0  # summed objective: only pass-1 tokens are trained
        assert all(0.0 <= step[f"train/group_spread/{name}"] <= 1.0 for name in ("overall", "accuracy", "visual"))
        # vLLM's CPU kernels vs the FSDP actor, same fp32 weights (synced after step 1).
        assert 0 < step["rollout/logprob_gap_max"] < 1e-3
    assert "val/reward/visual" in metrics[-1]


def test_same_seed_same_validation_with_the_hf_engine(tiny_model_dir, synthetic_data_dir, tmp_path):
    """The recipe's reproducibility promise: with the HF engine, two runs of one seeded GRPO step
    give identical rewards and identical validation metrics after the update (blank-image control
    included)."""
    runs = []
    for name in ("first", "second"):
        ckpt = str(tmp_path / name)
        run_cli(
            "configs/tiny_cpu.yaml",
            *common(tiny_model_dir, synthetic_data_dir, ckpt),
            "trainer.max_steps=1",
            "trainer.val_before_train=false",
            "trainer.val_freq=1",
            "trainer.save_freq=-1",
            "trainer.seed=3",
            "worker.rollout.seed=3",
            "data.seed=3",
        )
        (step,) = read_metrics(ckpt)
        runs.append({key: value for key, value in step.items() if key.startswith(("val/", "train/", "actor/"))})
    first, second = runs
    assert "val/vision/vision_reliance" in first and "val/reward/accuracy" in first
    assert first == second


def test_a_file_mixing_text_only_and_image_rows_trains_with_the_self_reward(tiny_model_dir, synthetic_data_dir,
                                                                           tmp_path):
    """Batches holding both text-only rows (no image, no <image>) and image rows, the self-reward on:
    a known hang elsewhere (EasyR1 PR #518). Rows alternate, unshuffled, so every batch mixes them;
    `whole_response` makes every response of the random model go through the re-answer pass, the
    text-only ones included (docs/data.md: how a text-only row's self-reward is scored)."""
    import pandas as pd

    images = pd.read_parquet(os.path.join(synthetic_data_dir, "train.parquet")).head(8)
    text_only = images.copy()
    text_only["problem"] = [f"What is {i} plus {i}?" for i in range(8)]
    text_only["answer"] = [str(2 * i) for i in range(8)]
    text_only["images"] = [[] for _ in range(8)]
    mixed = pd.concat([images, text_only]).sort_index(kind="stable").reset_index(drop=True)  # image, text, ...
    mixed.to_parquet(tmp_path / "mixed.parquet")
    ckpt = str(tmp_path / "ckpt")
    output = run_cli(
        "configs/tiny_cpu_selfReward.yaml",
        f"worker.actor.model.model_path={tiny_model_dir}", f"data.train_files={tmp_path}/mixed.parquet",
        "data.val_files=''", f"trainer.save_checkpoint_path={ckpt}", "trainer.logger=[console,file]",
        "data.shuffle=false", "data.rollout_batch_size=4", "worker.actor.global_batch_size=4", "worker.rollout.n=2",
        "worker.actor.micro_batch_size_per_device_for_update=4", "trainer.max_steps=2", "trainer.save_freq=-1",
        "data.max_response_length=16", "self_reward.max_response_length=8",
        "self_reward.missing_description=whole_response",
    )
    metrics = read_metrics(ckpt)
    assert [m["step"] for m in metrics] == [1, 2], output[-3000:]
    for step in metrics:
        assert step["train/self_reward/engine_calls_per_rank"] == 1.0
        assert step["train/self_reward/missing_description_rate"] == 1.0  # all 8 responses re-asked whole
        assert step["train/self_reward/pass2_response_length"] > 0 and "train/reward/visual" in step
