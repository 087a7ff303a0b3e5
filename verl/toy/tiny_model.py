"""A tiny, randomly initialised Qwen2.5-VL (or Qwen3-VL, Qwen3.5, Qwen3.5-MoE) checkpoint built
locally for tests and smoke runs.

No model hub is reachable from the test machines, so the test suite builds its own checkpoint:
a byte-level BPE tokenizer trained on a small corpus (the synthetic shapes task and the
Vision-SR1 prompts), a real ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` and a random
``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration`` (~0.4-0.5 M
parameters). The folder is a normal Hugging Face checkpoint: ``AutoTokenizer``,
``AutoProcessor``, ``AutoModelForImageTextToText`` and vLLM load it exactly like the real model,
so the code under test takes the same path as on GPU nodes. ``QWEN3_VL_SPEC`` is the Qwen3-VL
preset (patch 16, so 32-pixel merged tokens; a deepstack merger; q/k norms in the decoder).
``QWEN3_5_SPEC`` is Qwen3.5: the Qwen3-VL vision tower without deepstack, and a hybrid decoder
whose ``layer_types`` mix ``linear_attention`` (a gated delta rule behind a causal conv1d, a
recurrent state instead of a KV cache) with ``full_attention`` (gated-output attention with
partial rotary). ``QWEN3_5_MOE_SPEC`` is the same with sparse-expert MLPs (Qwen3.5-MoE).
"""

import dataclasses
import json
import os
from dataclasses import dataclass

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
)
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX

from verl.data.format_prompt import build_reprompt

PAD_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"
IMAGE_PAD_TOKEN = "<|image_pad|>"
VIDEO_PAD_TOKEN = "<|video_pad|>"
SPECIAL_TOKENS = (
    PAD_TOKEN,
    IM_START_TOKEN,
    EOS_TOKEN,
    VISION_START_TOKEN,
    VISION_END_TOKEN,
    IMAGE_PAD_TOKEN,
    VIDEO_PAD_TOKEN,
)


# Qwen2.5-VL's chat template: string or list content, image/video items become vision placeholders
# that the processor later expands to one pad token per merged patch.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Vision-SR1 prompts (rollout format prompt and the self-reward re-prompt): training BPE on them
# keeps tokenised prompts short, as they are for the real tokenizer.
FORMAT_PROMPT = (
    "You are tasked with analyzing an image/video to generate a detailed description to help you "
    "answer the question. First analyze the image/video and produce a self-contained description"
    "\u2014detailed enough that can lead to the correct answer. Wrap the entire description in "
    "<description> </description> tags.\n Next, engage in an internal dialogue and include "
    "self-reflection or verification in your reasoning process. Provide your detailed, step-by-step "
    "reasoning based on the image/video description information and image/video, and enclose this "
    "part within <think> </think> tags.\n Finally, provide a single word or phrase answer to the "
    "question in \\boxed{}.\nThe output format should be: <description> image/video description "
    "here </description> <think> reasoning process here </think> \\boxed{FINAL ANSWER here}."
)
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "center")


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of the tiny checkpoint; `family` is the model type (`FAMILIES`).

    Text head_dim is hidden / heads = 64: vLLM's CPU attention kernel rejects 16, and the
    multimodal rotary sections (temporal, height, width) must sum to head_dim / 2.
    """

    family: str = "qwen2_5_vl"

    text_hidden_size: int = 128
    text_intermediate_size: int = 256
    text_num_layers: int = 2
    text_num_heads: int = 2
    text_num_kv_heads: int = 1
    # The text rotary. Qwen2.5-VL gives the (temporal, height, width) sections contiguous pair ranges,
    # width the slowest. Two needs pull apart: the width section must turn a key by >= 0.1 rad per
    # image column (Qwen's own (8, 12, 12) at base 1e6: 2e-4..2e-6 rad, and after SFT on centred
    # shapes the model placed the shapes of 3-shape scenes right 36% of the time, chance 33%), and
    # some pairs must turn slowly over the ~100-token reply so a token can find a matching one far
    # back (the answer copying the colour its own description gave a kind). (8, 12, 12) at base 10
    # met the first and not the second (every pair >= 0.11 rad per token). (2, 2, 28) at base 1e4:
    # width pairs turn 0.32..1.3e-4 rad per column/token. Measured on the recipe (3 seeds, SFT -> GRPO
    # mean accuracy, docs/results.md): base 10 76.0 -> 80.2%, this 76.5 -> 82.2%, with fewer answers that
    # contradict their own description (48 -> 40 of 200 after SFT) at a price: a lone middle shape
    # is placed worse (position questions 80 -> 62% after SFT). Text-only tokens see RoPE at 1e4.
    mrope_section: tuple[int, int, int] = (2, 2, 28)
    rope_theta: float = 1.0e4
    vision_depth: int = 1
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_num_heads: int = 2
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    tokenizer_vocab_size: int = 1024
    # 0.02 (Qwen's default) makes a random toy model greedily repeat one token; 0.1 gives
    # varied greedy text and images that visibly change the output, which tests can observe.
    initializer_range: float = 0.1
    # Qwen3.5 only: the decoder's layer pattern (`layer_types`, one entry per layer), the gated
    # delta rule's heads and causal-conv width, the share of each head's dimensions that rotate
    # (the real model's 0.25), and for Qwen3.5-MoE the experts (0: a dense MLP). The delta rule's
    # head dim is the real model's 128: vLLM's CPU kernel (chunk_gated_delta_rule_cpu) rejects 32;
    # one key head and two value heads keep the real model's value/key head ratio (2).
    text_layer_types: tuple[str, ...] = ()
    linear_num_key_heads: int = 1
    linear_num_value_heads: int = 2
    linear_head_dim: int = 128
    linear_conv_kernel: int = 4
    partial_rotary_factor: float = 1.0
    num_experts: int = 0
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 64

    @property
    def text_head_dim(self) -> int:
        return self.text_hidden_size // self.text_num_heads

    @property
    def rotary_half_dim(self) -> int:
        """Rotated pairs per head: the mrope sections must sum to this."""
        return int(self.text_head_dim * self.partial_rotary_factor) // 2


# Qwen3-VL at toy size: patch 16 (the real model's), so the pixel range is in 32-pixel tokens.
# Qwen3-VL interleaves the sections pair by pair (t, h, w, t, h, w, ...), so its width gets fast and slow
# pairs from any section sizes; it keeps the sections and base it was built and tested with.
QWEN3_VL_SPEC = TinyModelSpec(
    family="qwen3_vl", patch_size=16, min_pixels=64 * 64, max_pixels=128 * 128, mrope_section=(8, 12, 12), rope_theta=10.0
)
# Qwen3.5 at toy size: Qwen3-VL's patching and interleaved mrope, three layers in the real
# model's pattern (every few layers full attention, the rest the gated delta rule), partial
# rotary 0.25 as in the real config, so 8 rotated pairs per 64-dim head in sections (2, 3, 3)
# (the real (11, 11, 10) scaled down).
QWEN3_5_SPEC = TinyModelSpec(
    family="qwen3_5", patch_size=16, min_pixels=64 * 64, max_pixels=128 * 128, mrope_section=(2, 3, 3),
    rope_theta=10.0, text_num_layers=3, text_layer_types=("linear_attention", "full_attention", "linear_attention"),
    partial_rotary_factor=0.25,
)
QWEN3_5_MOE_SPEC = TinyModelSpec(**{**QWEN3_5_SPEC.__dict__, "family": "qwen3_5_moe", "num_experts": 4})
FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_5", "qwen3_5_moe")
SPECS = {"qwen2_5_vl": TinyModelSpec(), "qwen3_vl": QWEN3_VL_SPEC, "qwen3_5": QWEN3_5_SPEC, "qwen3_5_moe": QWEN3_5_MOE_SPEC}


def override_spec(spec: TinyModelSpec, assignments: list[str]) -> TinyModelSpec:
    """`spec` with fields replaced from "field=value" strings, each value parsed as that field's type
    (a tuple as comma-separated items), e.g. ["vision_depth=2", "mrope_section=2,2,28"]."""
    fields = {field.name: getattr(spec, field.name) for field in dataclasses.fields(spec)}
    changes = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"tiny model override {assignment!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        current = fields[name]
        try:
            if isinstance(current, tuple):
                item_type = type(current[0]) if current else str
                changes[name] = tuple(item_type(item) for item in text.split(",") if item)
            else:
                changes[name] = type(current)(text)
        except ValueError as error:
            raise ValueError(f"tiny model override {assignment!r}: {error}") from None
    return dataclasses.replace(spec, **changes)


def _training_corpus() -> list[str]:
    """Shapes-task questions, answers and descriptions with the Vision-SR1 prompts, in a fixed order.

    Lines are chat turns as the chat template renders them (role name, newline, content), each
    question carrying the format prompt and each description the re-prompt, as in real rollouts,
    so BPE merges the role names and the prompts' words into single tokens.
    """
    lines = []
    for color in COLORS:
        for shape in SHAPES:
            for count in range(10):
                position = POSITIONS[count % len(POSITIONS)]
                question = f"How many {color} {shape}s are in the image?"
                description = (
                    f"The image shows {count} {color} {shape}s at the {position}; "
                    f"the {shape} on the left is {color}."
                )
                reprompt = build_reprompt(description, question)
                lines.append("system\nYou are a helpful assistant.")
                lines.append(f"user\n{question}\n{FORMAT_PROMPT}")
                lines.append(
                    f"assistant\n<description> {description} </description> <think> Count the {color} "
                    f"{shape}s: there are {count}. </think> \\boxed{{{count}}}"
                )
                lines.append(f"user\n{reprompt}")
            lines.append(f"user\nWhat color is the {shape} at the top?")
            lines.append(f"assistant\nThe answer is {color}. \\boxed{{{color}}}")
            lines.append("user\nWhat shape is at the bottom of the image?")
            lines.append(f"assistant\nThe answer is {shape}. \\boxed{{{shape}}}")
    return lines


def build_tokenizer(spec: TinyModelSpec) -> Qwen2Tokenizer:
    """Trains a byte-level BPE on the local corpus and wraps it in ``Qwen2Tokenizer``.

    The BPE is trained with Qwen2's own pre-tokenizer and normaliser (those ``Qwen2Tokenizer``
    rebuilds on load), so the saved files reload to the same encoding. All 256 byte symbols are
    in the alphabet: any text, real datasets included, encodes. Training is deterministic: the
    BPE trainer breaks count ties by token id.
    """
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.tokenizer_vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_corpus(), trainer=trainer)
    bpe = json.loads(backend.to_str())["model"]
    # Special tokens sit after the BPE vocabulary, in Qwen's order, as in the real checkpoint.
    vocab = dict(bpe["vocab"])
    vocab.update({token: len(bpe["vocab"]) + i for i, token in enumerate(SPECIAL_TOKENS)})
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(merge) for merge in bpe["merges"]],
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(spec: TinyModelSpec, tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLProcessor | Qwen3VLProcessor:
    """The family's processor with a small pixel budget: images become 2x2 to 4x4 merged patches."""
    if spec.family != "qwen2_5_vl":
        # Qwen3-VL's own processor config (Qwen3.5's too: its processor class is Qwen3VLProcessor): patch 16, mean/std 0.5, a pixel range given as `size`.
        size = {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}
        patches = {"patch_size": spec.patch_size, "temporal_patch_size": spec.temporal_patch_size,
                   "merge_size": spec.spatial_merge_size}
        return Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3, **patches),
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(size=size, **patches),
            chat_template=CHAT_TEMPLATE,
        )
    image_processor = Qwen2VLImageProcessor(
        min_pixels=spec.min_pixels,
        max_pixels=spec.max_pixels,
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.spatial_merge_size,
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=spec.min_pixels,
        max_pixels=spec.max_pixels,
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.spatial_merge_size,
        cap_pixels_per_frame=True,
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(spec: TinyModelSpec, tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig | Qwen3VLConfig | Qwen3_5Config | Qwen3_5MoeConfig:
    """The family's config at toy size; every special token id comes from ``tokenizer``."""
    if spec.family not in FAMILIES:
        raise ValueError(f"TinyModelSpec.family={spec.family!r}: expected one of {FAMILIES}")
    if spec.text_hidden_size % spec.text_num_heads != 0:
        raise ValueError(
            f"text_hidden_size {spec.text_hidden_size} is not divisible by "
            f"text_num_heads {spec.text_num_heads}"
        )
    if sum(spec.mrope_section) != spec.rotary_half_dim:
        raise ValueError(
            f"mrope_section {spec.mrope_section} sums to {sum(spec.mrope_section)}, but must sum to "
            f"head_dim x partial_rotary_factor / 2 = {spec.rotary_half_dim}"
        )
    token_id = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.text_hidden_size,
        "intermediate_size": spec.text_intermediate_size,
        "num_hidden_layers": spec.text_num_layers,
        "num_attention_heads": spec.text_num_heads,
        "num_key_value_heads": spec.text_num_kv_heads,
        "max_position_embeddings": tokenizer.model_max_length,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": list(spec.mrope_section),
        },
        "tie_word_embeddings": True,
        "initializer_range": spec.initializer_range,
        "bos_token_id": token_id(PAD_TOKEN),
        "eos_token_id": token_id(EOS_TOKEN),
        "pad_token_id": token_id(PAD_TOKEN),
    }
    token_ids = {
        "image_token_id": token_id(IMAGE_PAD_TOKEN),
        "video_token_id": token_id(VIDEO_PAD_TOKEN),
        "vision_start_token_id": token_id(VISION_START_TOKEN),
        "vision_end_token_id": token_id(VISION_END_TOKEN),
    }
    vision_common = {  # the vision tower's shape, the same keys in both families
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_heads": spec.vision_num_heads,
        "out_hidden_size": spec.text_hidden_size,
        "patch_size": spec.patch_size,
        "spatial_merge_size": spec.spatial_merge_size,
        "temporal_patch_size": spec.temporal_patch_size,
        "initializer_range": spec.initializer_range,
    }
    if spec.family in ("qwen3_5", "qwen3_5_moe"):
        return _qwen3_5_config(spec, text_config, vision_common, token_ids)
    if spec.family == "qwen3_vl":
        text_config["head_dim"] = spec.text_head_dim
        text_config["rope_parameters"]["mrope_interleaved"] = True  # Qwen3-VL's own layout
        vision_config = {
            **vision_common,
            # 8x8 learned position grid (interpolated to each image's patch grid).
            "num_position_embeddings": 64,
            # One deepstack merger fed from the last vision block, injected into decoder layer 0.
            "deepstack_visual_indexes": [spec.vision_depth - 1],
        }
        return Qwen3VLConfig(
            text_config=text_config, vision_config=vision_config, tie_word_embeddings=True, dtype="float32", **token_ids
        )
    vision_config = {**vision_common, "fullatt_block_indexes": []}
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=True,
        dtype="float32",
        **token_ids,
    )


def _qwen3_5_config(spec: TinyModelSpec, text_config: dict, vision_common: dict, token_ids: dict):
    """Qwen3.5 (or Qwen3.5-MoE): the shared text keys plus the hybrid layer pattern and the
    gated delta rule's sizes; the vision tower is Qwen3-VL's without deepstack mergers."""
    if len(spec.text_layer_types) != spec.text_num_layers:
        raise ValueError(
            f"TinyModelSpec.text_layer_types has {len(spec.text_layer_types)} entries for {spec.text_num_layers} layers"
        )
    text_config = {
        **text_config,
        "head_dim": spec.text_head_dim,
        "layer_types": list(spec.text_layer_types),
        "linear_num_key_heads": spec.linear_num_key_heads,
        "linear_num_value_heads": spec.linear_num_value_heads,
        "linear_key_head_dim": spec.linear_head_dim,
        "linear_value_head_dim": spec.linear_head_dim,
        "linear_conv_kernel_dim": spec.linear_conv_kernel,
    }
    text_config["rope_parameters"] = {
        **text_config["rope_parameters"], "mrope_interleaved": True, "partial_rotary_factor": spec.partial_rotary_factor,
    }
    vision_config = {**vision_common, "num_position_embeddings": 64}
    if spec.family == "qwen3_5_moe":
        text_config.update(
            num_experts=spec.num_experts, num_experts_per_tok=spec.num_experts_per_tok,
            moe_intermediate_size=spec.moe_intermediate_size, shared_expert_intermediate_size=spec.moe_intermediate_size,
        )
        del text_config["intermediate_size"]
        return Qwen3_5MoeConfig(
            text_config=text_config, vision_config=vision_config, tie_word_embeddings=True, dtype="float32", **token_ids
        )
    return Qwen3_5Config(
        text_config=text_config, vision_config=vision_config, tie_word_embeddings=True, dtype="float32", **token_ids
    )


MODEL_CLASSES = {
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen3_vl": Qwen3VLForConditionalGeneration,
    "qwen3_5": Qwen3_5ForConditionalGeneration,
    "qwen3_5_moe": Qwen3_5MoeForConditionalGeneration,
}


def build_tiny_model(out_dir: str, seed: int = 0, spec: TinyModelSpec = TinyModelSpec()) -> str:
    """Builds the tiny checkpoint of ``spec.family`` into ``out_dir`` and returns ``out_dir``.

    Writes tokenizer, processor (with chat template), config, generation config and fp32
    safetensors weights. The same ``seed`` gives byte-identical files. The caller's global torch
    RNG state is left untouched.
    """
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tokenizer(spec)
    processor = build_processor(spec, tokenizer)
    config = build_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODEL_CLASSES[spec.family](config).to(torch.float32)
    # Qwen's own generation config stops on both <|im_end|> and <|endoftext|>.
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.pad_token_id],
        pad_token_id=config.text_config.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
