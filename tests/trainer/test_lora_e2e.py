"""LoRA GRPO on the tiny Qwen3-VL through the real CLI (Ray, 2 FSDP2 ranks): vLLM rollout on merged
weights, the reference = adapters off, resume, and the merger's folded model and PEFT adapter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from verl.utils.model_merger import merge_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
RANK, ALPHA = 8, 16.0

pytestmark = pytest.mark.e2e

LENGTH_REWARD = """
def length_reward(reward_inputs):
    # The random tiny model never earns format or accuracy: a length score gives GRPO non-zero advantages.
    return [{"overall": item.response_length / 48.0} for item in reward_inputs]
"""


def run_cli(*overrides: str) -> str:
    env = dict(os.environ, RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu.yaml", *overrides]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


@pytest.mark.vllm
def test_qwen3_vl_lora_grpo_moves_only_adapters_resumes_and_merges(tiny_qwen3_vl_dir, synthetic_data_dir, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    reward_file = tmp_path / "length_reward.py"
    reward_file.write_text(LENGTH_REWARD)
    common = [
        f"worker.actor.model.model_path={tiny_qwen3_vl_dir}",
        f"data.train_files={synthetic_data_dir}/train.parquet",
        f"data.val_files={synthetic_data_dir}/val.parquet",
        f"trainer.save_checkpoint_path={ckpt}",
        "trainer.logger=[file]",
        "trainer.val_before_train=false",
        "trainer.val_freq=-1",
        "trainer.save_freq=1",
        f"reward.reward_function={reward_file}:length_reward",
        # Qwen3-VL's 32-pixel tokens: 64x64 .. 128x128 images are 4 to 16 visual tokens.
        "data.min_pixels=4096",
        "data.max_pixels=16384",
        f"worker.actor.model.lora.rank={RANK}",
        f"worker.actor.model.lora.alpha={ALPHA}",
        "worker.actor.optim.lr=2e-2",  # adapters start at B = 0: big steps make step 2's KL visible
        "worker.actor.global_batch_size=8",
        "worker.actor.micro_batch_size_per_device_for_update=8",
    ]
    # Two steps with vLLM (merged weights synced after each update), checkpoints at 1 and 2.
    run_cli(*common, "worker.rollout.name=vllm", "worker.rollout.enforce_eager=true", "trainer.max_steps=2")
    # Resume for a third step, rolled out by the HF engine from the same merged weights.
    resumed = run_cli(*common, "worker.rollout.name=hf", "trainer.max_steps=3")
    assert f"resumed from {ckpt}/global_step_2 (step 2)" in resumed

    with open(os.path.join(ckpt, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for step in metrics:
        # The engine's log-probs (plain model, merged weights) equal the LoRA actor's (base + adapter).
        assert 0 < step["rollout/logprob_gap_max"] < 1e-3, step
        assert step["actor/grad_norm"] > 0
    # Step 1 starts at B = 0 (actor = reference); after an adapter update the KL is non-zero.
    assert metrics[0]["actor/kl_loss"] == 0.0 and metrics[1]["actor/kl_loss"] > 0 and metrics[2]["actor/kl_loss"] > 0
    # Only adapters train: the optimizer state holds them alone (2 x 14 adapted linears, 2 ranks' pieces).
    optim = torch.load(os.path.join(ckpt, "global_step_3/actor/optim_world_size_2_rank_0.pt"), weights_only=False)
    assert len(optim["state"]) == 2 * 14

    merged_dir, adapter_dir = str(tmp_path / "merged"), str(tmp_path / "adapter")
    merge_checkpoint(os.path.join(ckpt, "global_step_3/actor"), merged_dir, adapter_dir=adapter_dir)
    adapter_config = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == RANK and adapter_config["lora_alpha"] == ALPHA
    assert adapter_config["base_model_name_or_path"] == tiny_qwen3_vl_dir  # the adapter applies to the base
    adapter = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    assert len(adapter) == 2 * 14 and not any("visual" in key for key in adapter)

    base = dict(AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl_dir, dtype=torch.float32).named_parameters())
    merged_model = AutoModelForImageTextToText.from_pretrained(merged_dir, dtype=torch.float32)
    merged = dict(merged_model.named_parameters())
    assert set(merged) == set(base)
    delta_norm = 0.0
    for name, weight in merged.items():
        key = f"base_model.model.{name.removesuffix('.weight')}"
        if f"{key}.lora_A.weight" in adapter:
            expected = base[name] + ALPHA / RANK * adapter[f"{key}.lora_B.weight"] @ adapter[f"{key}.lora_A.weight"]
            torch.testing.assert_close(weight, expected, atol=1e-6, rtol=0)
            delta_norm += float((weight - base[name]).detach().norm())
        else:  # every other weight, the vision tower included, is the base's, bit for bit
            assert torch.equal(weight, base[name]), name
    assert delta_norm > 0

    # The merged folder is a plain Qwen3-VL checkpoint: HF generates from it (vLLM ran these weights above).
    processor = AutoProcessor.from_pretrained(merged_dir)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "How many red circles are in the image?"}]}],
        add_generation_prompt=True, tokenize=False,
    )
    inputs = processor(text=[text], return_tensors="pt")
    generated = merged_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
