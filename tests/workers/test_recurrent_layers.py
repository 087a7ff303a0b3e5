"""Qwen3.5's hybrid decoder on the training path: most layers are a gated delta rule (a causal
conv1d and a recurrent state, `linear_attention`), the others full attention. Every training-side
forward (log-probs, the update's gradients, a critic's values) of padded, trimmed and
token-budgeted batches equals one unpadded row at a time, for each layer type; shared-prompt
packing, which a recurrent state would leak through, is proven to leak and is planned off."""

import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from verl.data.rl_dataset import RLDataset, collate_rl
from verl.models.qwen_vl import recurrent_layers
from verl.models.value_head import attach_value_head
from verl.protocol import DataProto
from verl.toy.tiny_model import QWEN3_5_MOE_SPEC, QWEN3_5_SPEC, build_tiny_model
from verl.workers.actor import compute_log_probs, forward_response_log_probs
from verl.workers.critic import forward_response_values
from verl.workers.engine.micro_batch import trim_padding
from verl.workers.engine.shared_prefix import plan_attention, prompt_group_labels

MAX_PROMPT = 512
WIDTH = 16
# (dataset row or text prompt, samples): two image prompts and a text-only one, two samples each.
LAYOUT = [(0, 2), (1, 2), ("What colour is the square?", 2)]
# Qwen3.5's pixel range at toy size: 32-pixel merged tokens, 2x2 to 4x4 of them.
PIXELS = {"min_pixels": 64 * 64, "max_pixels": 128 * 128}
# The tiny preset (linear, full, linear) and the two pure decoders: each layer type alone.
LAYER_PATTERNS = {
    "hybrid": QWEN3_5_SPEC.text_layer_types,
    "linear_only": ("linear_attention",) * 3,
    "full_only": ("full_attention",) * 3,
}


@pytest.fixture(scope="module")
def model_dirs(tiny_qwen3_5_dir, tmp_path_factory) -> dict[str, str]:
    dirs = {"hybrid": tiny_qwen3_5_dir}
    for name in ("linear_only", "full_only"):
        spec = dataclasses.replace(QWEN3_5_SPEC, text_layer_types=LAYER_PATTERNS[name])
        dirs[name] = build_tiny_model(str(tmp_path_factory.mktemp(f"tiny_qwen3_5_{name}")), seed=0, spec=spec)
    return dirs


def load(model_dir: str):
    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")


@pytest.fixture(scope="module")
def batch(tiny_qwen3_5_dir, synthetic_data_dir, make_rollout_rows, make_text_prompt) -> DataProto:
    """Rows as a rollout returns them: prompts left-padded to 512 (two with an image, one
    text-only), random responses of 1..16 tokens right-padded to 16."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3_5_dir)
    dataset = RLDataset(
        f"{synthetic_data_dir}/val.parquet", tokenizer, AutoProcessor.from_pretrained(tiny_qwen3_5_dir),
        max_prompt_length=MAX_PROMPT, format_prompt="configs/format_prompt/r1v.jinja", **PIXELS,
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
            images.append({k: v.clone() for k, v in image.items()})
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([16, 5, 11, 16, 3, 9])
    return make_rollout_rows(torch.cat(prompts), torch.cat(masks), images, lengths, WIDTH, tokenizer.pad_token_id, generator)


def single_row(data: DataProto, row: int) -> DataProto:
    """Row `row` alone with no padding at all: its real prompt tokens, then its real response."""
    one = data[[row]]
    prompt_width = one.batch["input_ids"].shape[1] - WIDTH
    prompt_real = one.batch["attention_mask"][0, :prompt_width].bool()
    length = int(one.batch["response_mask"][0].sum())
    ids = torch.cat([one.batch["input_ids"][0, :prompt_width][prompt_real], one.batch["responses"][0, :length]])[None]
    return DataProto.from_dict(
        tensors={
            "input_ids": ids, "attention_mask": torch.ones_like(ids),
            "responses": one.batch["responses"][:, :length], "response_mask": one.batch["response_mask"][:, :length],
        },
        non_tensors={"multi_modal_inputs": one.non_tensor_batch["multi_modal_inputs"]},
    )


def one_row_each(model, data: DataProto) -> list[torch.Tensor]:
    with torch.no_grad():
        return [forward_response_log_probs(model, single_row(data, row), 1.0, False)[0][0] for row in range(len(data))]


def assert_rows_equal(batched: torch.Tensor, data: DataProto, expected: list[torch.Tensor]) -> None:
    for row, reference in enumerate(expected):
        torch.testing.assert_close(batched[row, : len(reference)], reference, atol=2e-5, rtol=1e-5)


def test_the_preset_has_both_layer_types_and_is_a_normal_checkpoint(tiny_qwen3_5_dir):
    model = load(tiny_qwen3_5_dir)
    text = model.config.get_text_config()
    assert type(model).__name__ == "Qwen3_5ForConditionalGeneration"
    assert text.layer_types == ["linear_attention", "full_attention", "linear_attention"]
    assert recurrent_layers(text) == [0, 2]
    assert type(model.model.language_model.layers[0].linear_attn).__name__ == "Qwen3_5GatedDeltaNet"
    assert type(model.model.language_model.layers[1].self_attn).__name__ == "Qwen3_5Attention"
    assert type(AutoProcessor.from_pretrained(tiny_qwen3_5_dir)).__name__ == "Qwen3VLProcessor"


@pytest.mark.parametrize("pattern", list(LAYER_PATTERNS))
def test_padded_trimmed_and_budgeted_log_probs_equal_one_unpadded_row(model_dirs, batch, pattern):
    model = load(model_dirs[pattern]).eval()
    expected = one_row_each(model, batch)
    with torch.no_grad():
        padded, _ = forward_response_log_probs(model, batch, 1.0, False)  # prompts left-padded to 512
        trimmed, _ = forward_response_log_probs(model, trim_padding(batch), 1.0, False)
    assert_rows_equal(padded, batch, expected)
    assert_rows_equal(trimmed, batch, expected)
    # The log-prob pass as the worker runs it: token-budgeted micro-batches, unpacked.
    budgeted, _ = compute_log_probs(model, batch, 99, 1.0, False, max_token_len=250, share_prefix=False)
    assert_rows_equal(budgeted, batch, expected)


@pytest.mark.parametrize("pattern", ["hybrid", "linear_only"])
def test_update_gradients_of_a_padded_batch_equal_the_sum_over_single_rows(model_dirs, batch, pattern):
    model = load(model_dirs[pattern]).train()
    weights = torch.linspace(0.5, 1.5, WIDTH)
    micro = trim_padding(batch)
    log_probs, _ = forward_response_log_probs(model, micro, 1.0, False)
    (log_probs * weights[: log_probs.shape[1]] * micro.batch["response_mask"]).sum().backward()
    batched = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for row in range(len(batch)):
        one = single_row(batch, row)
        log_probs, _ = forward_response_log_probs(model, one, 1.0, False)
        (log_probs * weights[: log_probs.shape[1]]).sum().backward()
    # The delta rule's own parameters (A_log, dt_bias, conv1d, in_proj_*) are among those compared.
    assert any("linear_attn.A_log" in name for name in batched)
    for name, grad in batched.items():
        # Relative to the tensor's largest entry: the decay gradients (A_log, dt_bias, in_proj_a)
        # go through exp(G_j - G_i) of within-chunk cumulative decays, and padding moves the
        # 64-token chunk boundaries, so fp32 rounding differs by ~2e-4 of their scale (a leak
        # through the state would be of order 1, as the packing test below shows).
        reference = model.get_parameter(name).grad
        error = (grad - reference).abs().max().item()
        assert error <= 1e-3 * reference.abs().max().item() + 1e-6, (name, error)


def test_critic_values_of_a_padded_batch_equal_one_unpadded_row(tiny_qwen3_5_dir, batch):
    model = attach_value_head(load(tiny_qwen3_5_dir)).eval()
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # a zero head would make every value 0
    with torch.no_grad():
        values = forward_response_values(model, batch)
        for row in range(len(batch)):
            one = forward_response_values(model, single_row(batch, row))[0]
            torch.testing.assert_close(values[row, : len(one)], one, atol=2e-5, rtol=1e-5)


def test_naive_packing_leaks_through_the_recurrent_state_and_is_planned_off(model_dirs, batch):
    """[prompt | r1 | r2] under the block mask is exact for full attention, wrong for the
    delta rule (r2 reads r1 through the state), so the plan trains such a model unpacked."""
    micro = trim_padding(batch)
    labels = prompt_group_labels(micro)
    second_slot = np.array([row for row in range(len(labels)) if (labels[:row] == labels[row]).any()])
    assert len(second_slot) == 3
    for pattern, leaks in (("full_only", False), ("linear_only", True), ("hybrid", True)):
        model = load(model_dirs[pattern]).eval()
        with torch.no_grad():
            expected, _ = forward_response_log_probs(model, micro, 1.0, False)
            packed, _ = forward_response_log_probs(model, micro, 1.0, False, labels)
        mask = micro.batch["response_mask"].bool()
        error = (packed - expected).abs()[mask[:, : packed.shape[1]]].max().item()
        second = (packed - expected)[second_slot].abs().max().item()
        assert (second > 0.1) == leaks, (pattern, second)
        if not leaks:
            assert error < 2e-5
    plan = plan_attention("sdpa", True, "auto", "cpu", recurrent_layers(load(model_dirs["hybrid"]).config.get_text_config()))
    assert plan.packing is None
    assert "its 2 linear-attention layers keep a recurrent state" in plan.reason
    assert plan_attention("sdpa", True, "auto", "cpu", []).packing == "segments"


def test_moe_preset_padded_log_probs_equal_one_unpadded_row(tmp_path, batch):
    model = load(build_tiny_model(str(tmp_path / "moe"), seed=0, spec=QWEN3_5_MOE_SPEC)).eval()
    assert type(model).__name__ == "Qwen3_5MoeForConditionalGeneration"
    expected = one_row_each(model, batch)
    with torch.no_grad():
        padded, _ = forward_response_log_probs(model, batch, 1.0, False)
    assert_rows_equal(padded, batch, expected)
