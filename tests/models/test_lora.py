"""LoRA adapters (verl.models.lora) on the tiny Qwen2.5-VL: a fresh adapter is the base model,
switched-off adapters are the base model, and the merged weights streamed to rollout engines
compute what base + adapter computes; adapter-only checkpoints resume and merge onto the base
folder. The FSDP2 run, resume and merger through the CLI are in tests/trainer/test_lora_e2e.py."""

import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from verl.data.rl_dataset import RLDataset, collate_rl
from verl.models.lora import (
    LORA_CONFIG_FILE,
    LoRAConfig,
    adapters_disabled,
    apply_lora,
    fold_adapters,
    is_adapter_name,
    lora_modules,
    save_lora_config,
)
from verl.protocol import DataProto
from verl.utils.checkpoint import load_rank_state, save_hf_metadata, save_rank_state
from verl.utils.model_merger import merge_checkpoint
from verl.workers.actor import forward_response_log_probs
from verl.workers.engine.model import build_policy
from verl.workers.weight_sync import iter_full_state_dict

CPU = torch.device("cpu")
LORA = LoRAConfig(rank=4, alpha=8.0)


@pytest.fixture(scope="module")
def batch(tiny_model_dir, synthetic_data_dir) -> DataProto:
    """3 image prompts with 8 random response tokens each."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset = RLDataset(
        f"{synthetic_data_dir}/val.parquet", tokenizer, AutoProcessor.from_pretrained(tiny_model_dir),
        max_prompt_length=512, min_pixels=3136, max_pixels=12544, format_prompt="configs/format_prompt/r1v.jinja",
    )
    tensors, non_tensors = collate_rl([dataset[i] for i in range(3)], tokenizer.pad_token_id, 512)
    responses = torch.randint(0, 600, (3, 8), generator=torch.Generator().manual_seed(0))
    return DataProto.from_dict(
        tensors={
            "input_ids": torch.cat([tensors["input_ids"], responses], 1),
            "attention_mask": torch.cat([tensors["attention_mask"], torch.ones_like(responses)], 1),
            "responses": responses,
        },
        non_tensors={"multi_modal_inputs": non_tensors["multi_modal_inputs"]},
    )


def log_probs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return forward_response_log_probs(model, batch, 1.0, False)[0]


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return build_policy(tiny_model_dir, CPU, attn_implementation="sdpa", trainable=False)


def randomise_adapters(model) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_B.copy_(0.05 * torch.randn(module.lora_B.shape, generator=generator))


def test_only_language_model_adapters_train_and_fresh_ones_change_nothing(tiny_model_dir, base, batch):
    model = build_policy(tiny_model_dir, CPU, attn_implementation="sdpa", lora=LORA)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith((".lora_A", ".lora_B")) for name in trainable)
    adapted = lora_modules(model)
    # 2 layers x 7 projections; the vision tower (its MLP has gate/up/down_proj too) is excluded.
    assert len(adapted) == 14 and not any("visual" in name for name in adapted)
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in dict(model.named_parameters())  # names kept
    assert torch.equal(log_probs(model, batch), log_probs(base, batch))


def test_disabled_adapters_are_the_base_and_merged_weights_are_base_plus_adapter(tiny_model_dir, base, batch):
    model = build_policy(tiny_model_dir, CPU, attn_implementation="sdpa", lora=LORA)
    randomise_adapters(model)
    adapted = log_probs(model, batch)
    assert (adapted - log_probs(base, batch)).abs().max() > 1e-2  # the adapters do change the policy
    with adapters_disabled(model):
        assert torch.equal(log_probs(model, batch), log_probs(base, batch))
    # What rollout engines receive: plain names, adapters merged into their weights.
    streamed = dict(iter_full_state_dict(model))
    plain = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    assert set(streamed) == {name for name, _ in plain.named_parameters()}
    plain.load_state_dict(streamed, strict=False)
    torch.testing.assert_close(log_probs(plain, batch), adapted, atol=1e-5, rtol=0)
    # The merger's fold of a saved state dict gives the same weights.
    folded = fold_adapters(model.state_dict(), LORA.alpha / LORA.rank)
    for name, tensor in streamed.items():
        assert torch.equal(folded[name], tensor), name


def test_bad_lora_configs_name_the_key(tiny_model_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"worker.actor.model.lora.target_modules=\['qproj'\] matched no linear"):
        apply_lora(model, LoRAConfig(rank=2, target_modules=["qproj"]), "worker.actor.model.lora")
    with pytest.raises(ValueError, match=r"lora.rank=-1: must be >= 0"):
        LoRAConfig(rank=-1).check("lora")
    with pytest.raises(KeyError, match="has no matching"):
        fold_adapters({"m.lora_A": torch.zeros(1, 2), "m.weight": torch.zeros(2, 2)}, 1.0)


def test_adapter_only_checkpoint_resumes_and_merges_onto_the_base_folder(tiny_model_dir, tmp_path):
    model = build_policy(tiny_model_dir, CPU, attn_implementation="sdpa", lora=LORA)
    randomise_adapters(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    actor_dir = tmp_path / "global_step_1" / "actor"
    save_rank_state(str(actor_dir), 1, 0, model, torch.optim.AdamW(trainable), {}, keep=is_adapter_name)
    save_hf_metadata(tiny_model_dir, str(actor_dir / "huggingface"))
    save_lora_config(str(actor_dir), LORA, tiny_model_dir)
    shard = torch.load(actor_dir / "model_world_size_1_rank_0.pt", weights_only=True)
    assert set(shard) == {name for name in model.state_dict() if is_adapter_name(name)} and len(shard) == 2 * 14

    # Resume: a fresh LoRA model (B = 0) gets the adapters back over the base it loaded itself.
    resumed = build_policy(tiny_model_dir, CPU, attn_implementation="sdpa", lora=LORA)
    resumed_optimizer = torch.optim.AdamW([p for p in resumed.parameters() if p.requires_grad])
    load_rank_state(str(actor_dir), 1, 0, resumed, resumed_optimizer, keep=is_adapter_name)
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name

    # Merge: the adapters folded into the base read from the recorded folder, bit for bit what
    # folding the live model's weights gives.
    expected = fold_adapters(model.state_dict(), LORA.alpha / LORA.rank)
    # save_rank_state alone writes no manifest (the trainer adds it): merged unverified on purpose.
    merged = merge_checkpoint(str(actor_dir), str(tmp_path / "merged"), allow_unverified=True)
    merged_state = AutoModelForImageTextToText.from_pretrained(merged.target_dir, dtype=torch.float32).state_dict()
    assert set(merged_state) == set(expected)
    for name, tensor in merged_state.items():
        assert torch.equal(tensor, expected[name]), name

    # A base folder that has moved: an error naming the option, which then finds it.
    moved = shutil.copytree(tiny_model_dir, tmp_path / "moved_base")
    save_lora_config(str(actor_dir), LORA, str(tmp_path / "deleted_base"))
    with pytest.raises(FileNotFoundError, match="deleted_base.*--base_model_dir"):
        merge_checkpoint(str(actor_dir), str(tmp_path / "merged_again"), allow_unverified=True)
    again = merge_checkpoint(
        str(actor_dir), str(tmp_path / "merged_again"), base_model_dir=str(moved), allow_unverified=True
    )
    again_state = AutoModelForImageTextToText.from_pretrained(again.target_dir, dtype=torch.float32).state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in again_state.items())


def test_checkpoints_with_base_weights_in_their_shards_still_merge(tiny_model_dir, tmp_path):
    """LoRA checkpoints written before adapter-only saving hold every weight and no `shards` key."""
    model = build_policy(tiny_model_dir, CPU, attn_implementation="sdpa", lora=LORA)
    randomise_adapters(model)
    actor_dir = tmp_path / "actor"
    save_rank_state(str(actor_dir), 1, 0, model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]), {})
    save_hf_metadata(tiny_model_dir, str(actor_dir / "huggingface"))
    (actor_dir / LORA_CONFIG_FILE).write_text(json.dumps({**asdict(LORA), "base_model": str(tmp_path / "gone")}))
    # The base is in the shards, not read; no manifest (save_rank_state alone): merged unverified on purpose.
    merged = merge_checkpoint(str(actor_dir), str(tmp_path / "merged"), allow_unverified=True)
    expected = fold_adapters(model.state_dict(), LORA.alpha / LORA.rank)
    merged_state = AutoModelForImageTextToText.from_pretrained(merged.target_dir, dtype=torch.float32).state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in merged_state.items())


def test_qwen3_5_adapters_cover_the_delta_rule_projections_and_merge_like_any_other(tiny_qwen3_5_dir):
    """Qwen3.5 (linear, full, linear attention): the delta rule's in_proj_qkv, in_proj_z and
    out_proj get adapters, its per-head in_proj_a / in_proj_b do not (`LANGUAGE_MODEL_LINEARS`);
    the merged weights streamed to the rollout engine compute what base + adapters computes."""
    ids = torch.randint(0, 600, (2, 24), generator=torch.Generator().manual_seed(0))
    batch = DataProto.from_dict(
        tensors={"input_ids": ids, "attention_mask": torch.ones_like(ids), "responses": ids[:, 16:]},
        non_tensors={"multi_modal_inputs": np.array([{}, {}], dtype=object)},
    )
    base = build_policy(tiny_qwen3_5_dir, CPU, attn_implementation="sdpa", trainable=False)
    model = build_policy(tiny_qwen3_5_dir, CPU, attn_implementation="sdpa", lora=LORA)
    adapted = {name.removeprefix("model.language_model.layers.") for name in lora_modules(model)}
    delta_rule = {"in_proj_qkv", "in_proj_z", "out_proj"}
    mlp = {f"mlp.{name}" for name in ("gate_proj", "up_proj", "down_proj")}
    assert adapted == (
        {f"{layer}.linear_attn.{name}" for layer in (0, 2) for name in delta_rule}
        | {f"1.self_attn.{name}" for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
        | {f"{layer}.{name}" for layer in range(3) for name in mlp}
    )
    assert torch.equal(log_probs(model, batch), log_probs(base, batch))  # a fresh adapter changes nothing
    randomise_adapters(model)
    with_adapters = log_probs(model, batch)
    assert (with_adapters - log_probs(base, batch)).abs().max() > 1e-2
    plain = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_5_dir, dtype=torch.float32, attn_implementation="sdpa")
    plain.load_state_dict(dict(iter_full_state_dict(model)), strict=False)
    torch.testing.assert_close(log_probs(plain, batch), with_adapters, atol=1e-5, rtol=0)
