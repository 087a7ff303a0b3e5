"""The tiny Qwen2.5-VL checkpoint loads through the Auto classes and vLLM like a real one."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
)

from verl.toy.tiny_model import FORMAT_PROMPT, SPECIAL_TOKENS, TinyModelSpec, build_tiny_model, override_spec

IMAGE_QUESTION = [
    {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "How many red circles are in the image?"}],
    }
]
TEXT_QUESTION = [{"role": "user", "content": "What color is the square at the top?"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: str) -> Qwen2Tokenizer:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def processor(tiny_model_dir: str) -> Qwen2_5_VLProcessor:
    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir: str) -> Qwen2_5_VLForConditionalGeneration:
    return AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def hf_greedy(model, processor, messages, images, max_new_tokens: int) -> list[int]:
    """Greedy completion ids from transformers' ``generate``, eos ignored so lengths are fixed."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=images, return_tensors="pt")
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False
    )
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def test_loads_through_auto_classes_with_consistent_ids(tokenizer, processor, model):
    assert isinstance(tokenizer, Qwen2Tokenizer)
    assert isinstance(processor, Qwen2_5_VLProcessor)
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    assert model.dtype == torch.float32
    # Special tokens follow the BPE vocabulary in Qwen's order, as in the real tokenizer.
    vocab_size = len(tokenizer)
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(
        range(vocab_size - len(SPECIAL_TOKENS), vocab_size)
    )
    assert 300 <= vocab_size <= 1100
    config = model.config
    assert config.text_config.vocab_size == vocab_size
    token_id = tokenizer.convert_tokens_to_ids
    assert config.text_config.eos_token_id == tokenizer.eos_token_id == token_id("<|im_end|>")
    assert config.text_config.pad_token_id == tokenizer.pad_token_id == token_id("<|endoftext|>")
    assert config.image_token_id == processor.image_token_id == token_id("<|image_pad|>")
    assert config.video_token_id == token_id("<|video_pad|>")
    assert config.vision_start_token_id == token_id("<|vision_start|>")
    assert config.vision_end_token_id == token_id("<|vision_end|>")
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert sum(config.text_config.rope_parameters["mrope_section"]) == 64 // 2
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_parameter_count_matches_hand_computed_sizes(tokenizer, model):
    # text layer: q 128x128+128, k and v 128x64+64, o 128x128, gate/up/down 3x128x256, 2 norms of 128
    text_layer = (128 * 128 + 128) + 2 * (128 * 64 + 64) + 128 * 128 + 3 * 128 * 256 + 2 * 128
    text = len(tokenizer) * 128 + 2 * text_layer + 128  # tied embedding, 2 layers, final norm
    # vision: patch conv 32x3x2x14x14; block: 2 norms, qkv 32->96, proj 32->32, gate/up 32->64,
    # down 64->32 (all with bias); merger: norm 32, 128->128->128 with bias
    vision_block = 2 * 32 + (32 * 96 + 96) + (32 * 32 + 32) + 2 * (32 * 64 + 64) + (64 * 32 + 32)
    vision = 32 * 3 * 2 * 14 * 14 + vision_block + 32 + 2 * (128 * 128 + 128)
    assert sum(p.numel() for p in model.parameters()) == text + vision


def test_text_rotary_tells_image_columns_apart_and_keeps_slow_pairs(model):
    """Multimodal RoPE gives an image's width the slowest pair range of the text rotary. Its fastest
    width pair must turn a key by >= 0.1 rad per merged-token column, or on a 3-token-wide image left
    and right look alike (Qwen's (8, 12, 12) at base 1e6: 1.8e-4 rad); and the slowest pair must turn
    by <= 0.01 rad per token, so a token still matches one ~100 tokens back (base 10: 0.11 rad)."""
    inv_freq = model.model.language_model.rotary_emb.inv_freq
    temporal, height, width = model.config.text_config.rope_parameters["mrope_section"]
    assert inv_freq.numel() == temporal + height + width
    assert inv_freq[temporal + height :].max().item() >= 0.1
    assert inv_freq.min().item() <= 0.01


def test_chat_template_renders_qwen_turns(tokenizer, processor):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape?"}]},
        {"role": "assistant", "content": "A circle."},
    ]
    assert tokenizer.apply_chat_template(conversation, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What shape?<|im_end|>\n"
        "<|im_start|>assistant\nA circle.<|im_end|>\n"
    )
    assert processor.apply_chat_template(TEXT_QUESTION, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat color is the square at the top?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_tokenizer_merges_task_words_and_round_trips(tokenizer):
    task_words = ("red", "purple", "triangle", "circles", "left", "bottom", "image", "question", "description")
    for word in task_words:
        assert tokenizer.tokenize(" " + word) == ["Ġ" + word], word
    assert tokenizer.tokenize("<think>") == ["<", "think", ">"]
    assert tokenizer.tokenize(" </description>") == ["Ġ</", "description", ">"]
    assert tokenizer.tokenize("\\boxed{12}") == ["\\", "boxed", "{", "1", "2", "}"]
    # Format prompt words are merged: about one token per word, not per character.
    assert len(tokenizer(FORMAT_PROMPT)["input_ids"]) < 1.5 * len(FORMAT_PROMPT.split())
    text = "Ünïcode ☺ text, numbers 3.14 and <think> tags </think> \\boxed{x}<|im_end|>"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


@pytest.mark.parametrize(
    ("width", "height", "grid"),
    # smart_resize to multiples of 28 within [56*56, 112*112] pixels: 300x100 -> 168x56
    [(56, 56, [1, 4, 4]), (112, 112, [1, 8, 8]), (300, 100, [1, 4, 12])],
)
def test_processor_expands_image_placeholder_per_merged_patch(processor, width, height, grid):
    text = processor.apply_chat_template(IMAGE_QUESTION, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[noise_image(width, height, seed=0)], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [grid]
    num_image_tokens = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert num_image_tokens == int(inputs["image_grid_thw"].prod()) // 4
    assert inputs["pixel_values"].shape == (int(inputs["image_grid_thw"].prod()), 3 * 2 * 14 * 14)
    assert "mm_token_type_ids" in inputs


def test_greedy_generation_from_image_prompt_depends_on_the_image(model, processor):
    text = processor.apply_chat_template(IMAGE_QUESTION, add_generation_prompt=True, tokenize=False)
    red = processor(text=[text], images=[Image.new("RGB", (56, 56), (255, 0, 0))], return_tensors="pt")
    blue = processor(text=[text], images=[Image.new("RGB", (56, 56), (0, 0, 255))], return_tensors="pt")
    with torch.no_grad():
        red_logits = model(**red).logits[0, -1]
        blue_logits = model(**blue).logits[0, -1]
    assert not torch.allclose(red_logits, blue_logits, atol=1e-3)

    completion = hf_greedy(model, processor, IMAGE_QUESTION, [Image.new("RGB", (56, 56), (255, 0, 0))], 8)
    assert len(completion) == 8
    assert completion[0] == int(red_logits.argmax())
    # Random weights with initializer_range 0.1 give varied text, not one repeated token.
    assert len(set(completion)) > 1


def test_build_is_deterministic_for_a_seed(tmp_path: Path):
    first = build_tiny_model(str(tmp_path / "first"), seed=0)
    second = build_tiny_model(str(tmp_path / "second"), seed=0)
    other_seed = build_tiny_model(str(tmp_path / "other_seed"), seed=1)
    names = sorted(os.listdir(first))
    expected = {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja"}
    assert expected <= set(names)
    assert sorted(os.listdir(second)) == names
    for name in names:
        assert Path(first, name).read_bytes() == Path(second, name).read_bytes(), name
    assert Path(first, "tokenizer.json").read_bytes() == Path(other_seed, "tokenizer.json").read_bytes()
    assert Path(first, "model.safetensors").read_bytes() != Path(other_seed, "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir: str, vllm_engine_on):
    """An in-process vLLM engine on the tiny model; process-global side effects undone after."""
    with vllm_engine_on(tiny_model_dir) as llm:
        yield llm


@pytest.mark.vllm
def test_vllm_image_prompt_matches_transformers(vllm_engine, processor, model):
    import vllm

    image = noise_image(90, 70, seed=1)
    text = processor.apply_chat_template(IMAGE_QUESTION, add_generation_prompt=True, tokenize=False)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    (output,) = vllm_engine.generate([{"prompt": text, "multi_modal_data": {"image": image}}], params)
    # Same processor configuration in both engines: identical expanded prompt.
    hf_inputs = processor(text=[text], images=[image], return_tensors="pt")
    assert list(output.prompt_token_ids) == hf_inputs["input_ids"][0].tolist()
    assert list(output.outputs[0].token_ids) == hf_greedy(model, processor, IMAGE_QUESTION, [image], 12)


@pytest.mark.vllm
def test_vllm_text_prompt_greedy_equals_transformers(vllm_engine, processor, model):
    import vllm

    text = processor.apply_chat_template(TEXT_QUESTION, add_generation_prompt=True, tokenize=False)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    (output,) = vllm_engine.generate([text], params)
    assert list(output.outputs[0].token_ids) == hf_greedy(model, processor, TEXT_QUESTION, None, 16)


def test_spec_overrides_parse_each_field_as_its_type_and_name_the_bad_one():
    spec = override_spec(TinyModelSpec(), ["vision_depth=2", "rope_theta=10", "mrope_section=4,4,24"])
    assert (spec.vision_depth, spec.rope_theta, spec.mrope_section) == (2, 10.0, (4, 4, 24))
    assert spec.text_hidden_size == TinyModelSpec().text_hidden_size
    with pytest.raises(ValueError, match="'vision_dpth=2': expected FIELD=VALUE"):
        override_spec(TinyModelSpec(), ["vision_dpth=2"])
    with pytest.raises(ValueError, match="'vision_depth=two'"):
        override_spec(TinyModelSpec(), ["vision_depth=two"])
