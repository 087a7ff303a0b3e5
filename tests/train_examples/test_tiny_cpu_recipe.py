"""The README's main job, shortened: the whole recipe script (eval -> SFT -> eval -> GRPO with the
self-reward -> merge -> eval -> curves + summary) on the tiny model and a small synthetic set."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_shortened_self_reward_recipe(tiny_model_dir, synthetic_data_dir, tmp_path):
    out = tmp_path / "run"
    env = dict(
        os.environ,
        OUT=str(out), MODEL=tiny_model_dir, DATA=synthetic_data_dir, STEPS="2", ENGINE="hf",
        SFT_ARGS="trainer.max_steps=4", PYTHON=str(REPO_ROOT / ".venv/bin/python"),
    )
    result = subprocess.run(
        [
            "bash", "train_examples/0-tiny_cpu_selfReward.sh", "trainer.val_before_train=false",
            "data.rollout_batch_size=8", "worker.actor.global_batch_size=8", "worker.rollout.n=4",
            "worker.actor.micro_batch_size_per_device_for_update=8",
        ],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert list(stages) == ["random init", "after cold-start SFT", "after GRPO"]
    for row in stages.values():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["language_shortcut"] is not None
        # the blank-image control ran in every eval
        assert 0.0 <= row["accuracy_blank_image"] <= 1.0 and 0.0 <= row["vision_reliance"] <= 1.0
    assert [target["met"] is not None for target in summary["targets"]] == [True] * 5
    # Output names come from the data (val.parquet -> val.*), and the summary names the data.
    assert (out / "eval_grpo" / "val.blank.jsonl").is_file()
    assert set(summary["data"].values()) == {os.path.abspath(os.path.join(synthetic_data_dir, "val.parquet"))}
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "merged" / "config.json").is_file() and (out / "merged" / "model.safetensors").is_file()
    records = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2]
    # validation after the last step carries the trainer's own blank-image control
    assert {"val/vision/accuracy_blank_image", "val/vision/vision_reliance", "val/vision/accuracy_drop"} <= set(records[-1])


@pytest.mark.e2e
def test_self_reward_recipe_on_the_hybrid_qwen3_5(tiny_qwen3_5_dir, synthetic_data_dir, tmp_path):
    """The same recipe on the tiny Qwen3.5 (linear, full, linear attention), HF rollout: GRPO
    steps train unpacked (one logged reason), checkpoint, merge, and the merged folder loads in
    the rollout engine for the last evaluation."""
    out = tmp_path / "run"
    env = dict(
        os.environ,
        OUT=str(out), MODEL=tiny_qwen3_5_dir, DATA=synthetic_data_dir, STEPS="2", ENGINE="hf",
        SFT_ARGS="trainer.max_steps=2", PYTHON=str(REPO_ROOT / ".venv/bin/python"),
        # transformers' torch fallback of the gated delta rule (no fla / causal-conv1d kernels on
        # CPU) decodes slowly: with the recipe's 96-token answers the three evaluations took most
        # of 504-881 s; 24-token answers keep every stage and every check below.
        MAX_RESPONSE_LENGTH="24", REANSWER_MAX_RESPONSE_LENGTH="24",
    )
    result = subprocess.run(
        [
            "bash", "train_examples/0-tiny_cpu_selfReward.sh", "trainer.val_before_train=false",
            "data.rollout_batch_size=4", "worker.actor.global_batch_size=4", "worker.rollout.n=4",
            "worker.actor.micro_batch_size_per_device_for_update=8", "data.max_response_length=32",
        ],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    log = (out / "grpo.log").read_text(errors="replace")
    assert log.count("training forwards: rows unpacked (sdpa): share_prompt_prefix off for this model, its 2 linear-attention layers") == 1
    records = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2]
    # Rollout and trainer agree on the hybrid model's log-probs (numerics only, fp32 on CPU).
    assert max(record["rollout/logprob_gap_max"] for record in records) < 1e-3
    merged = json.loads((out / "merged" / "config.json").read_text())
    assert merged["model_type"] == "qwen3_5" and "linear_attention" in merged["text_config"]["layer_types"]
    assert "after GRPO" in json.loads((out / "summary.json").read_text())["stages"]
