"""Rollout on the tiny Qwen3.5 (linear, full, linear attention): the HF engine's samples and
log-probs, the trainer's recompute of them, weight sync into both engines, and vLLM's CPU
engine (bf16 only: its gated-delta-rule kernel refuses fp32)."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoTokenizer, GenerationConfig

from verl.data.vision import resize_image
from verl.protocol import DataProto
from verl.toy.tiny_model import QWEN3_5_SPEC
from verl.workers.actor import forward_response_log_probs
from verl.workers.rollout import GenerationRequest, SamplingConfig, make_rollout_engine
from verl.workers.weight_sync import iter_full_state_dict

SAMPLES = 2  # samples per prompt in the recompute test
PIXELS = {"min_pixels": QWEN3_5_SPEC.min_pixels, "max_pixels": QWEN3_5_SPEC.max_pixels}


def shapes_image(size: tuple[int, int], color: str) -> Image.Image:
    image = Image.new("RGB", size, "white")
    width, height = size
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=color)
    return resize_image(image, **PIXELS)


@pytest.fixture(scope="module")
def requests_(tiny_qwen3_5_dir) -> list[GenerationRequest]:
    """Two image prompts of different sizes (different left padding) and a text prompt."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3_5_dir)
    conversations = [
        ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}]}],
         [shapes_image((100, 80), "red")]),
        ([{"role": "user", "content": "How many red circles are in the image?"}], []),
        ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape is at the left?"}]}],
         [shapes_image((60, 130), "blue")]),
    ]
    return [
        GenerationRequest(tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False), i)
        for m, i in conversations
    ]


@pytest.fixture(scope="module")
def hf_engine(tiny_qwen3_5_dir):
    return make_rollout_engine("hf", tiny_qwen3_5_dir, dtype="float32", **PIXELS)


def test_trainer_recomputes_the_rollout_log_probs(hf_engine, requests_, tiny_qwen3_5_dir):
    """The rollout/trainer gap on the hybrid model is numerics only: the engine's sampled-token
    log-probs (left-padded prompts, cached decoding through the recurrent state) equal the
    training forward's over the same rows (left-padded prompts, right-padded responses). With
    n > 1 samples of an image prompt through generate()'s num_return_sequences the image rows
    were up to 2.5 nats off; the engine now puts each prompt in the batch n times (`recurrent`)."""
    assert hf_engine.recurrent
    sampling = SamplingConfig(n=SAMPLES, max_tokens=10, seed=3)
    outputs = hf_engine.generate(requests_, sampling)
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3_5_dir)
    inputs = hf_engine._model_inputs(requests_)  # left-padded prompts, images expanded
    rows = [(index, sample) for index, samples in enumerate(outputs) for sample in samples]
    width = max(len(sample.token_ids) for _, sample in rows)
    ids = inputs["input_ids"].repeat_interleave(SAMPLES, dim=0)
    mask = inputs["attention_mask"].repeat_interleave(SAMPLES, dim=0)
    responses = torch.full((len(rows), width), tokenizer.pad_token_id)
    response_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for row, (_, sample) in enumerate(rows):
        responses[row, : len(sample.token_ids)] = torch.tensor(sample.token_ids)
        response_mask[row, : len(sample.token_ids)] = 1
    # Each row's own image (requests 0 and 2 have one), as per-sample multi-modal inputs.
    grids = inputs["image_grid_thw"]
    patch_rows = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), grids.prod(-1)]), 0)
    image_of = {0: 0, 2: 1}
    images = [
        {"pixel_values": inputs["pixel_values"][patch_rows[image_of[i]] : patch_rows[image_of[i] + 1]],
         "image_grid_thw": grids[image_of[i] : image_of[i] + 1]} if i in image_of else {}
        for i, _ in rows
    ]
    batch = DataProto.from_dict(
        tensors={
            "input_ids": torch.cat([ids, responses], 1), "attention_mask": torch.cat([mask, response_mask], 1),
            "responses": responses, "response_mask": response_mask,
        },
        non_tensors={"multi_modal_inputs": np.array(images, dtype=object)},
    )
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_5_dir, dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        recomputed, _ = forward_response_log_probs(model, batch, 1.0, False)
    for row, (_, sample) in enumerate(rows):
        torch.testing.assert_close(recomputed[row, : len(sample.logprobs)], torch.tensor(sample.logprobs), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def updated_model(tiny_qwen3_5_dir):
    """The tiny Qwen3.5 with every weight moved, as after an update (delta-rule parameters included)."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_5_dir, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def greedy_of(model, engine, requests_, max_tokens: int) -> list[list[int]]:
    """The model's own `generate` over the engine's inputs (vision tokens forbidden, greedy)."""
    inputs = engine._model_inputs(requests_)
    with torch.no_grad():
        sequences = model.generate(**inputs, generation_config=GenerationConfig(
            do_sample=False, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
            eos_token_id=list(engine.token_ids.stop), pad_token_id=engine.token_ids.pad,
            bad_words_ids=[[token] for token in engine.token_ids.forbidden],
        ))
    return sequences[:, inputs["input_ids"].shape[1] :].tolist()


def test_hf_weight_sync_then_greedy_is_the_updated_model(hf_engine, requests_, updated_model):
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=8, min_tokens=8)
    before = [outputs[0].token_ids for outputs in hf_engine.generate(requests_, greedy)]
    original = [(name, p.detach().clone()) for name, p in hf_engine.model.named_parameters()]
    hf_engine.load_weights(iter_full_state_dict(updated_model))
    after = [outputs[0].token_ids for outputs in hf_engine.generate(requests_, greedy)]
    hf_engine.load_weights(iter(original))
    assert after == greedy_of(updated_model, hf_engine, requests_, 8) and after != before


@pytest.mark.vllm
def test_vllm_cpu_runs_qwen3_5_in_bf16_only_and_syncs_weights(tiny_qwen3_5_dir, requests_, updated_model):
    from tests.conftest import vllm_in_process

    with pytest.raises(ValueError, match="worker.rollout.dtype=bfloat16"):
        make_rollout_engine("vllm", tiny_qwen3_5_dir, dtype="float32", **PIXELS)
    hf_bf16 = make_rollout_engine("hf", tiny_qwen3_5_dir, dtype="bfloat16", **PIXELS)
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=8)
    expected = [outputs[0].token_ids for outputs in hf_bf16.generate(requests_, greedy)]
    with vllm_in_process(lambda: make_rollout_engine(
        "vllm", tiny_qwen3_5_dir, dtype="bfloat16", max_model_len=512, enforce_eager=True,
        max_num_batched_tokens=512, max_num_seqs=8, **PIXELS,
    )) as engine:
        got = [outputs[0].token_ids for outputs in engine.generate(requests_, greedy)]
        # bf16 kernels differ (CPU GDN kernel vs transformers' torch fallback): most greedy tokens agree.
        agree = sum(a == b for g, e in zip(got, expected) for a, b in zip(g, e))
        assert agree >= 0.75 * sum(len(e) for e in expected), (got, expected)
        engine.load_weights(iter_full_state_dict(updated_model.to(torch.bfloat16)))
        synced = [outputs[0].token_ids for outputs in engine.generate(requests_, greedy)]
        assert synced != got
