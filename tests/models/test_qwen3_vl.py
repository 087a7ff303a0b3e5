"""Qwen3-VL through the model-specific layer: the tiny preset, its processor sizing (32-pixel merged
tokens), the HF rollout engine and the trainer's forward agreeing on it. The vLLM engine, weight
sync and the merger on Qwen3-VL are covered by the CLI run in tests/trainer/test_main_e2e.py."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from verl.data.rl_dataset import RLDataset, collate_rl
from verl.data.vision import resize_factor
from verl.models.qwen_vl import vision_parts
from verl.protocol import DataProto
from verl.toy.tiny_model import QWEN3_VL_SPEC
from verl.workers.actor import forward_response_log_probs
from verl.workers.engine.model import freeze_vision
from verl.workers.rollout import make_rollout_engine
from verl.workers.rollout.base import SamplingConfig
from verl.workers.rollout.batching import build_rollout_batch, requests_from_batch

MAX_PROMPT = 512


@pytest.fixture(scope="module")
def qwen3_model(tiny_qwen3_vl_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl_dir, dtype=torch.float32, attn_implementation="sdpa")


def test_preset_is_a_qwen3_vl_with_32_pixel_tokens_and_a_deepstack_merger(tiny_qwen3_vl_dir, qwen3_model):
    processor = AutoProcessor.from_pretrained(tiny_qwen3_vl_dir)
    assert qwen3_model.config.model_type == "qwen3_vl"
    assert type(processor).__name__ == "Qwen3VLProcessor"
    assert resize_factor(processor.image_processor) == 32
    tower, projectors = vision_parts(qwen3_model)
    assert [type(m).__name__ for m in projectors] == ["Qwen3VLVisionPatchMerger", "ModuleList"]
    assert any(type(m).__name__ == "Qwen3VLVisionPatchEmbed" for m in tower)


def test_freezing_the_tower_keeps_both_mergers_trainable(tiny_qwen3_vl_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl_dir, dtype=torch.float32)
    freeze_vision(model, vision_tower=True, projector=False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad and name.startswith("model.visual.")}
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert trainable and all(n.startswith(("model.visual.merger.", "model.visual.deepstack_merger_list.")) for n in trainable)
    assert "model.visual.pos_embed.weight" in frozen and "model.visual.patch_embed.proj.weight" in frozen


def test_hf_rollout_log_probs_equal_the_trainer_forward(tiny_qwen3_vl_dir, synthetic_data_dir, qwen3_model):
    """Dataset resize (factor 32), the HF engine's own image processing and token expansion, and
    the trainer's padded forward with explicit mrope positions see the same sequence: the
    engine's sampled-token log-probs equal the trainer's recomputation."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3_vl_dir)
    processor = AutoProcessor.from_pretrained(tiny_qwen3_vl_dir)
    dataset = RLDataset(
        f"{synthetic_data_dir}/val.parquet", tokenizer, processor, max_prompt_length=MAX_PROMPT,
        min_pixels=QWEN3_VL_SPEC.min_pixels, max_pixels=QWEN3_VL_SPEC.max_pixels,
        format_prompt="configs/format_prompt/r1v.jinja",
    )
    items = [dataset[i] for i in range(3)]
    for item in items:
        (image,) = item["images"]
        assert image.width % 32 == 0 and image.height % 32 == 0
    tensors, non_tensors = collate_rl(items, tokenizer.pad_token_id, MAX_PROMPT)
    prompts = DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)
    engine = make_rollout_engine(
        "hf", tiny_qwen3_vl_dir, min_pixels=QWEN3_VL_SPEC.min_pixels, max_pixels=QWEN3_VL_SPEC.max_pixels,
        dtype="float32",
    )
    outputs = engine.generate(requests_from_batch(prompts), SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_tokens=12, seed=0))
    batch = build_rollout_batch(prompts, outputs, 12, tokenizer.pad_token_id)
    with torch.no_grad():
        log_probs, _ = forward_response_log_probs(qwen3_model, batch, 1.0, False)
    mask = batch.batch["response_mask"].bool()
    assert mask.sum() > 20
    gap = (log_probs - batch.batch["rollout_log_probs"]).abs()[mask]
    assert gap.max() < 1e-4, gap.max()
