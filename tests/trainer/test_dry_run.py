"""`trainer.dry_run=true` checks every GPU recipe on this CPU machine."""

import re
from pathlib import Path

import pytest

from verl.trainer.config import ConfigError, PPOConfig, load_config
from verl.trainer.dry_run import dry_run, update_tokens
from verl.trainer.main import run

REPO = Path(__file__).resolve().parents[2]


def gpu_recipe_configs() -> list[str]:
    """Every RL config a GPU launcher under train_examples/ names (the tiny CPU ones excluded)."""
    found = set()
    for script in (REPO / "train_examples").glob("*.sh"):
        found.update(re.findall(r"configs/[\w./-]+\.yaml", script.read_text()))
    return sorted(c for c in found if "tiny" not in c and "sft" not in c)


def test_the_launchers_name_gpu_recipes():
    assert len(gpu_recipe_configs()) >= 5


@pytest.mark.parametrize("config_path", gpu_recipe_configs())
def test_every_gpu_recipe_dry_runs_and_fits_an_80_gib_gpu(config_path):
    config = load_config(PPOConfig, str(REPO / config_path), [])
    report = dry_run(config)
    text = report.text()
    assert "config valid" in text
    # Exactly one released size: Qwen2.5-VL-3B/7B, Qwen3-VL-4B/8B or Qwen3.5-9B.
    assert sum(f"{b} B parameters" in text for b in ("3.75", "8.29", "4.44", "8.77", "9.41")) == 1
    assert "data.train_files" in text and "prompts kept" in text
    assert report.memory.peak > 30 * 1024**3, "a 3B-9B step cannot need under 30 GiB: the estimate lost a term"
    assert report.fits, text


def test_an_oversized_micro_batch_is_reported_as_not_fitting():
    config = load_config(
        PPOConfig,
        str(REPO / "configs/qwen2_5_vl_7b_selfReward.yaml"),
        ["worker.actor.fsdp.param_offload=false", "worker.actor.max_token_len_per_device=262144"],
    )
    report = dry_run(config)
    assert not report.fits and "DOES NOT FIT" in report.text()


def test_dense_packing_masks_are_counted_and_the_block_sparse_path_has_none():
    path = str(REPO / "configs/qwen2_5_vl_7b_selfReward.yaml")
    config = load_config(PPOConfig, path, ["worker.actor.model.packing_attention=dense"])
    packed = dry_run(config)
    budget = update_tokens(config)  # the update micro-batch's tokens
    longest_group = config.data.max_prompt_length + config.worker.rollout.n * config.data.max_response_length
    assert packed.memory.update_packing_mask == budget * min(budget, longest_group) > 0
    assert "packed attention masks (update)" in packed.text()
    assert "training forwards (on GPU): shared-prompt packing, dense" in packed.text()
    # The default on GPU: block-sparse flex, with flash-attn too (packing stays on, no dense mask).
    for attention in ("auto", "flash_attention_2"):
        flex = dry_run(load_config(PPOConfig, path, [f"worker.actor.model.attn_implementation={attention}"]))
        assert "training forwards (on GPU): shared-prompt packing, block-sparse flex" in flex.text()
        assert flex.memory.update_packing_mask == flex.memory.experience_packing_mask == 0
        assert flex.memory.update_phase == packed.memory.update_phase - packed.memory.update_packing_mask


def test_an_entropy_bonus_counts_the_softmax_its_gradient_keeps():
    path = str(REPO / "configs/qwen2_5_vl_7b_selfReward.yaml")
    metric_only = dry_run(load_config(PPOConfig, path, []))
    bonus = dry_run(load_config(PPOConfig, path, ["worker.actor.entropy_coeff=0.001"]))
    assert bonus.memory.update_logits == metric_only.memory.update_logits * 18 / 14


def test_a_local_data_file_is_read_in_full(synthetic_data_dir, tiny_model_dir):
    config = load_config(
        PPOConfig,
        str(REPO / "configs/tiny_cpu.yaml"),
        [f"data.train_files={synthetic_data_dir}/train.parquet", f"data.val_files={synthetic_data_dir}/val.parquet",
         f"worker.actor.model.model_path={tiny_model_dir}"],
    )
    text = dry_run(config).text()
    assert "tokenizer: the model's" in text
    assert f"{synthetic_data_dir}/train.parquet: 64 of 64 prompts kept" in text


def test_a_wrong_column_name_fails_the_dry_run(synthetic_data_dir, tiny_model_dir):
    config = load_config(
        PPOConfig,
        str(REPO / "configs/tiny_cpu.yaml"),
        [f"data.train_files={synthetic_data_dir}/train.parquet", "data.prompt_key=question",
         f"worker.actor.model.model_path={tiny_model_dir}"],
    )
    with pytest.raises(ValueError, match=r"missing column\(s\) \['question'\]"):
        dry_run(config)


def test_an_inconsistent_batch_fails_before_anything_loads():
    config = load_config(
        PPOConfig, str(REPO / "configs/qwen2_5_vl_7b_selfReward.yaml"), ["worker.actor.global_batch_size=100"]
    )
    with pytest.raises(ConfigError, match="not a multiple"):
        run(config)


def test_lora_dry_run_trains_only_adapters_and_keeps_no_reference_copy():
    recipe = str(REPO / "configs/qwen3_vl_8b_selfReward.yaml")
    on_gpu = ["worker.ref.fsdp.param_offload=false", "worker.actor.fsdp.param_offload=false",
              "worker.actor.fsdp.optimizer_offload=false"]  # so both copies count in the estimate
    full = dry_run(load_config(PPOConfig, recipe, on_gpu))
    lora = dry_run(load_config(PPOConfig, recipe, [*on_gpu, "worker.actor.model.lora.rank=64"]))
    # rank 64 x (in + out) of 7 projections x 36 layers of Qwen3-VL-8B: 64 x 75776 x 36 = 174.6 M.
    assert "8.94 B parameters (0.17 B trainable)" in lora.text()
    assert full.memory.reference > 0 and lora.memory.reference == 0
    assert lora.memory.actor_state < full.memory.actor_state / 3


def test_gae_dry_run_names_the_critic_state_it_does_not_count():
    config = load_config(
        PPOConfig, str(REPO / "configs/qwen2_5_vl_7b_selfReward.yaml"),
        ["algorithm.adv_estimator=gae", "self_reward.objective=summed"],
    )
    # 8.29 B parameters x 16 bytes / 8 GPUs
    assert "the GAE critic's state, ~15.4 GiB per GPU" in dry_run(config).text()


def test_qwen3_5_recipe_dry_run_counts_the_published_model_and_trains_unpacked():
    config = load_config(PPOConfig, str(REPO / "configs/qwen3_5_9b_selfReward.yaml"), [])
    text = dry_run(config).text()
    assert "published Qwen3.5-9B architecture (no local config.json): 9.41 B parameters" in text
    assert "training forwards (on GPU): rows unpacked (sdpa): share_prompt_prefix off for this model, its 24 linear-attention layers" in text
