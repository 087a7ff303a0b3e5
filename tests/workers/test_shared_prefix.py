"""Shared-prompt packing on the tiny models: the rows of one prompt computed as one sequence
[prompt | response 1 | ... | response k] give the same log-probs, entropies and gradients as
one row each, with fewer tokens and one vision-tower pass per prompt."""

from collections import defaultdict

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from verl.data.rl_dataset import RLDataset, collate_rl
from verl.protocol import DataProto
from verl.trainer.config import ActorConfig
from verl.workers.actor import PPOActor, compute_log_probs, forward_response_log_probs, micro_batches, split_micro_batches
from verl.workers.engine.micro_batch import balanced_rank_order, padded_tokens, plan_micro_batches, trim_padding
from verl.models import block_sparse_attention
from verl.models.block_sparse_attention import text_attention_implementation
from verl.workers.engine.shared_prefix import (
    FLEX_BLOCK_SIZE,
    allowed_keys,
    flex_block_mask,
    pack_shared_prefix,
    plan_attention,
    prompt_group_labels,
)

MAX_PROMPT = 512
WIDTH = 16
# (dataset row or text prompt, samples): three image prompts with 3, 4 and 2 samples, one
# text-only prompt with 2, and dataset row 0's prompt again at the end (not next to its group).
LAYOUT = [(0, 3), (1, 4), ("What colour is the square?", 2), (2, 2), (0, 1)]


@pytest.fixture(scope="module")
def grouped_batch(make_rollout_rows, make_text_prompt, synthetic_data_dir):
    """The rows of LAYOUT for a model folder (its processor sizes the images), random responses
    of 1..WIDTH tokens, made-up old/ref log-probs."""

    def build(model_dir: str, min_pixels: int = 3136, max_pixels: int = 12544) -> DataProto:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dataset = RLDataset(
            f"{synthetic_data_dir}/val.parquet", tokenizer, AutoProcessor.from_pretrained(model_dir),
            max_prompt_length=MAX_PROMPT, min_pixels=min_pixels, max_pixels=max_pixels,
            format_prompt="configs/format_prompt/r1v.jinja",
        )
        prompts, masks, images = [], [], []
        for source, samples in LAYOUT:
            if isinstance(source, int):
                tensors, non_tensors = collate_rl([dataset[source]], tokenizer.pad_token_id, MAX_PROMPT)
                ids, mask, image = tensors["input_ids"], tensors["attention_mask"], non_tensors["multi_modal_inputs"][0]
            else:
                (ids, mask), image = make_text_prompt(tokenizer, source, MAX_PROMPT), {}
            for _ in range(samples):
                prompts.append(ids)
                masks.append(mask)
                # A copy (as after a Ray round trip): equal images, not the same tensors.
                images.append({k: v.clone() for k, v in image.items()})
        generator = torch.Generator().manual_seed(0)
        lengths = torch.randint(1, WIDTH + 1, (len(prompts),), generator=generator)
        data = make_rollout_rows(
            torch.cat(prompts), torch.cat(masks), images, lengths, WIDTH, tokenizer.pad_token_id, generator
        )
        response_mask = data.batch["response_mask"]
        for key in ("old_log_probs", "ref_log_probs"):
            data.batch[key] = (0.3 * torch.randn(response_mask.shape, generator=generator) - 6.0) * response_mask
        return data

    return build


@pytest.fixture(scope="module")
def batch(tiny_model_dir, grouped_batch) -> DataProto:
    return grouped_batch(tiny_model_dir)


def load(model_dir, attn="sdpa"):
    """`segments`/`flex`: the language model on the block-sparse attention, the vision tower on
    sdpa, as `plan_attention` loads it."""
    attn = text_attention_implementation(attn, "sdpa") if attn in ("segments", "flex") else attn
    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)


def test_labels_group_rows_with_the_same_prompt_and_image(batch):
    labels = prompt_group_labels(batch)
    assert labels.tolist() == [0] * 3 + [1] * 4 + [2] * 2 + [3] * 2 + [0]
    # Same prompt tokens, a different image: not the same prompt.
    other = batch[[0, 1]]
    pixels = other.non_tensor_batch["multi_modal_inputs"][1]["pixel_values"]
    other.non_tensor_batch["multi_modal_inputs"][1] = {
        "pixel_values": pixels + 1.0, "image_grid_thw": other.non_tensor_batch["multi_modal_inputs"][1]["image_grid_thw"],
    }
    assert prompt_group_labels(other).tolist() == [0, 1]


def test_packing_computes_each_prompt_once(batch):
    micro = trim_padding(batch)
    prompt_width = micro.batch["input_ids"].shape[1] - micro.batch["responses"].shape[1]
    positions = lambda ids, mask, grid: torch.zeros(3, *ids.shape, dtype=torch.long)  # noqa: E731
    packed = pack_shared_prefix(micro, prompt_group_labels(micro), positions)
    ids = packed.inputs["input_ids"]
    assert ids.shape[1] == prompt_width + 4 * micro.batch["responses"].shape[1]  # the largest group: 4 rows
    assert ids.shape[0] == 4  # four distinct prompts (the last row joins the first prompt's group)
    assert ids.numel() < micro.batch["input_ids"].numel() / 2
    assert packed.inputs["image_grid_thw"].shape[0] == 3  # one image per image prompt, not one per row


@pytest.mark.parametrize(
    "family, attn",
    [("qwen2_5_vl", "sdpa"), ("qwen2_5_vl", "eager"), ("qwen2_5_vl", "segments"), ("qwen2_5_vl", "flex"),
     ("qwen3_vl", "sdpa"), ("qwen3_vl", "segments"), ("qwen3_vl", "flex")],
)
def test_packed_log_probs_equal_one_row_each(request, monkeypatch, grouped_batch, family, attn):
    if family == "qwen2_5_vl":
        model_dir, data = request.getfixturevalue("tiny_model_dir"), request.getfixturevalue("batch")
    else:  # Qwen3-VL's 32-pixel tokens: 64x64 .. 128x128 images
        model_dir = request.getfixturevalue("tiny_qwen3_vl_dir")
        data = grouped_batch(model_dir, min_pixels=4096, max_pixels=16384)
    model = load(model_dir, attn)
    # flex: the GPU kernel's forward, which CPU torch runs unfused (it has no flex backward).
    kernel_calls = []
    for name in ("flex_attention", "segments_attention"):
        original = getattr(block_sparse_attention, name)
        monkeypatch.setattr(
            block_sparse_attention, name,
            lambda *a, _name=name, _original=original, **k: kernel_calls.append(_name) or _original(*a, **k),
        )
    micro = trim_padding(data)
    mask = micro.batch["response_mask"].bool()
    with torch.no_grad():
        expected_lp, expected_ent = forward_response_log_probs(model, micro, 1.0, True)
        log_probs, entropy = forward_response_log_probs(model, micro, 1.0, True, prompt_group_labels(micro))
    torch.testing.assert_close(log_probs[mask], expected_lp[mask], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(entropy[mask], expected_ent[mask], atol=2e-5, rtol=1e-5)
    # The block-sparse kernel ran in every decoder layer of the packed forward (and only there:
    # the unpacked forward is plain sdpa).
    layers = model.config.get_text_config().num_hidden_layers
    expected = {"flex": ["flex_attention"] * layers, "segments": ["segments_attention"] * layers}.get(attn, [])
    assert kernel_calls == expected
    # The whole log-prob pass, by token budget, packed: the same values.
    budgeted, _ = compute_log_probs(model, data, 99, 1.0, False, max_token_len=300, share_prefix=True)
    torch.testing.assert_close(budgeted[data.batch["response_mask"].bool()], expected_lp[mask], atol=2e-5, rtol=1e-5)


def packed_layout(prompt: int, slots: int, response: int, left_pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(segment (L,), real (2, L)) of two packed groups; the second has `left_pad` padding
    prompt columns and a last slot half empty (right padding)."""
    length = prompt + slots * response
    segment = torch.full((length,), -1)
    segment[prompt:] = torch.arange(slots).repeat_interleave(response)
    real = torch.ones(2, length, dtype=torch.bool)
    real[1, :left_pad] = False
    real[1, length - response // 2 :] = False
    return segment, real


def test_flex_block_mask_is_the_dense_mask_and_skips_other_responses_tiles():
    from torch.nn.attention.flex_attention import flex_attention

    segment, real = packed_layout(prompt=200, slots=4, response=300, left_pad=37)
    length = segment.shape[0]
    block_mask = flex_block_mask(segment, real)
    index = torch.arange(length)
    dense = allowed_keys(index[None, :, None], index[None, None, :], segment, real[:, None, :])
    # Element-wise, the BlockMask (its tiles and mask_mod) allows exactly the dense mask's pairs.
    torch.testing.assert_close(block_mask.to_dense().repeat_interleave(FLEX_BLOCK_SIZE, -1).repeat_interleave(
        FLEX_BLOCK_SIZE, -2)[:, 0, :length, :length] >= dense.long(), torch.ones_like(dense))
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 2, length, 32, generator=generator) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=dense[:, None])
    torch.testing.assert_close(flex_attention(query, key, value, block_mask=block_mask), expected, atol=1e-5, rtol=1e-5)
    # Block-sparse: response slots never visit each other's tiles, so far fewer tiles than causal.
    tiles = -(-length // FLEX_BLOCK_SIZE)
    visited = int((block_mask.kv_num_blocks + block_mask.full_kv_num_blocks)[0].sum())
    assert visited < 0.7 * tiles * (tiles + 1) / 2


def test_attention_plan_packs_with_flash_attention_installed_and_says_why():
    gpu = plan_attention("flash_attention_2", True, "auto", "cuda")
    assert gpu.packing == "flex" and "flex_attention tiles" in gpu.reason
    assert gpu.model_attention == {"text_config": "flex_or_sdpa", "vision_config": "flash_attention_2"}
    segments_on_gpu = plan_attention("flash_attention_2", True, "segments", "cuda")
    assert segments_on_gpu.model_attention == {"text_config": "segments_or_sdpa", "vision_config": "flash_attention_2"}
    cpu = plan_attention("sdpa", True, "auto", "cpu")
    assert cpu.packing == "segments" and "one sdpa per response slot" in cpu.reason
    assert plan_attention("sdpa", True, "dense", "cpu").model_attention == "sdpa"
    dense_flash = plan_attention("flash_attention_2", True, "dense", "cuda")
    assert dense_flash.packing is None and "packing_attention=segments or flex" in dense_flash.reason
    assert plan_attention("sdpa", False, "auto", "cuda").packing is None
    with pytest.raises(ValueError, match="no flex_attention backward on cpu"):
        plan_attention("sdpa", True, "flex", "cpu")
    with pytest.raises(ValueError, match="packing_attention must be auto or one of"):
        plan_attention("sdpa", True, "sparse", "cpu")


@pytest.mark.parametrize("attn", ["sdpa", "segments"])
def test_packed_update_gradients_equal_one_row_each(tiny_model_dir, batch, attn):
    def update_gradients(share_prefix: bool) -> dict[str, torch.Tensor]:
        model = load(tiny_model_dir, attn if share_prefix else "sdpa")
        config = ActorConfig(loss_agg_mode="token-mean", use_kl_loss=True, kl_loss_coef=0.1, entropy_coeff=0.01)
        actor = PPOActor(model, config, 1, 1.0, max_token_len=400, share_prefix=share_prefix)
        metrics = defaultdict(list)
        assert actor.backward_mini_batch(batch, metrics) == 0
        assert metrics["actor/micro_batches"][0] >= 2
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    expected, packed = update_gradients(False), update_gradients(True)
    assert packed.keys() == expected.keys() and any("visual" in name for name in packed)
    for name, grad in expected.items():
        torch.testing.assert_close(packed[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_micro_batch_plan_keeps_groups_together_under_the_packed_budget(batch):
    labels = prompt_group_labels(batch)
    from verl.workers.engine.micro_batch import row_lengths

    prompt, response = row_lengths(batch)
    budget = 320
    plans = plan_micro_batches(prompt, response, budget, groups=labels)
    assert sorted(np.concatenate(plans).tolist()) == list(range(len(batch)))
    for plan in plans:
        assert padded_tokens(prompt[plan], response[plan], labels[plan]) <= budget or len(plan) == 1
    # Packed, the rows fit in fewer micro-batches than one row each.
    assert len(plans) < len(plan_micro_batches(prompt, response, budget))
    # Every rank the same count: halving splits the largest.
    assert len(plan_micro_batches(prompt, response, budget, min_count=len(plans) + 2, groups=labels)) == len(plans) + 2
    assert split_micro_batches(batch, 99, budget, labels)[0].tolist() == plans[0].tolist()
    # The worker's pairs: the same plans, each with its rows' labels.
    pairs = micro_batches(batch, 99, budget, share_prefix=True)
    assert [indices.tolist() for indices, _ in pairs] == [plan.tolist() for plan in plans]
    assert all(np.array_equal(groups, labels[indices]) for indices, groups in pairs)
    assert all(groups is None for _, groups in micro_batches(batch, 99, budget, share_prefix=False))


def test_rank_order_keeps_a_group_on_one_rank_where_it_fits():
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3])
    costs = np.array([10] * 4 + [8] * 4 + [30, 30, 1, 1])
    order = balanced_rank_order(costs, world_size=2, groups=groups)
    ranks = [set(groups[order[:6]].tolist()), set(groups[order[6:]].tolist())]
    assert sorted(order.tolist()) == list(range(12))
    # Groups of 4 can't share a rank of 6 rows with each other: 0 and 1 on different ranks,
    # each completed by a group of 2.
    assert {frozenset(r) for r in ranks} in ({frozenset({0, 2}), frozenset({1, 3})}, {frozenset({0, 3}), frozenset({1, 2})})
    # A group larger than a rank's share is split, row counts stay equal.
    order = balanced_rank_order(np.ones(8, dtype=np.int64), world_size=2, groups=np.zeros(8, dtype=np.int64))
    assert sorted(order.tolist()) == list(range(8))
    # Mini-batches keep their rows.
    order = balanced_rank_order(costs, world_size=2, num_mini_batches=2, groups=groups)
    for rank in range(2):
        first_mini = order[rank * 6 : rank * 6 + 3]
        assert set(first_mini.tolist()) <= set(range(6))
