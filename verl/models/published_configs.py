"""Architectures of the released Qwen2.5-VL and Qwen3-VL checkpoints, written down so that a CPU machine
without the weights (or the hub) can still build the real model shape: on the meta device for
`trainer.dry_run`'s parameter count and memory estimate, and with random weights for
`benchmarks/gpu_throughput.py`.

The numbers are those of the checkpoints' own config.json (Qwen/Qwen2.5-VL-3B-Instruct and
Qwen/Qwen2.5-VL-7B-Instruct); the vision tower is the same 32-block, 1280-wide ViT in both.
Qwen3-VL-4B/8B-Instruct: Qwen3 language models (q/k norms, head_dim 128, interleaved mrope) with
a patch-16 ViT and deepstack mergers; the meta-device counts equal the released 4.44 B / 8.77 B.
Qwen3.5-9B: a hybrid decoder (3 gated-delta-rule layers to 1 full-attention layer) with Qwen3-VL's
patch-16 ViT (no deepstack); see `_QWEN3_5` for where its numbers come from and how they are checked.
Sizes are unique across the families (3b/7b, 4b/8b, 9b), so a size alone names a model.
"""

from __future__ import annotations

import os
import re

from transformers import AutoConfig, PretrainedConfig, Qwen2_5_VLConfig, Qwen3_5Config, Qwen3VLConfig

_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_chans": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}

_TEXT = {
    "3b": {
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
}

# Qwen3-VL-{4B,8B}-Instruct: (text, vision, tied embeddings) differing between the sizes.
_QWEN3_VL = {
    "4b": (
        {"hidden_size": 2560, "intermediate_size": 9728},
        {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "deepstack_visual_indexes": [5, 11, 17]},
        True,
    ),
    "8b": (
        {"hidden_size": 4096, "intermediate_size": 12288},
        {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "deepstack_visual_indexes": [8, 16, 24]},
        False,
    ),
}

# Qwen/Qwen3.5-9B's config.json, not read from the hub (no hub here) but as third-party code quotes
# it (a test fixture of an RL project, "run against the real Qwen3.5-9B config"). Check of the
# numbers: the meta-device model built from them, plus the 1-layer multi-token-prediction head the
# released files add (`mtp.*`, which transformers skips and the dry run does not count), is exactly the
# checkpoint's size in its safetensors index, total_size 19,306,216,416 bytes, when the 24
# delta-rule layers' A_log (32) and gated-norm weight (128) are stored in fp32 and the rest in bf16
# (tests/models/test_published_configs.py). The other sizes (0.8B/2B/4B/27B, the MoE) are not here:
# no copy of their full config (vision tower included) was at hand to check the same way.
_QWEN3_5 = {
    "9b": (
        {
            "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 32, "num_attention_heads": 16,
            "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 248320, "max_position_embeddings": 262144,
            "layer_types": (["linear_attention"] * 3 + ["full_attention"]) * 8, "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 128, "linear_num_key_heads": 16, "linear_value_head_dim": 128,
            "linear_num_value_heads": 32, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "eos_token_id": 248044,
            "rope_parameters": {
                "rope_type": "default", "rope_theta": 10000000, "mrope_section": [11, 11, 10], "mrope_interleaved": True,
                "partial_rotary_factor": 0.25,
            },
        },
        {
            "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "num_position_embeddings": 2304,
            "out_hidden_size": 4096, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
    ),
}
PUBLISHED_SIZES = tuple(_TEXT) + tuple(_QWEN3_VL) + tuple(_QWEN3_5)


def _qwen3_5_config(size: str) -> Qwen3_5Config:
    text, vision = _QWEN3_5[size]
    return Qwen3_5Config(
        text_config=text, vision_config=vision, tie_word_embeddings=False, image_token_id=248056,
        video_token_id=248057, vision_start_token_id=248053, vision_end_token_id=248054, dtype="bfloat16",
    )


def _qwen3_vl_config(size: str) -> Qwen3VLConfig:
    text, vision, tie = _QWEN3_VL[size]
    return Qwen3VLConfig(
        text_config={
            **text,
            "vocab_size": 151936,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "hidden_act": "silu",
            "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True,
            },
            "tie_word_embeddings": tie,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
        },
        vision_config={
            **vision,
            "num_heads": 16,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 2304,
            "hidden_act": "gelu_pytorch_tanh",
            "out_hidden_size": text["hidden_size"],
        },
        tie_word_embeddings=tie,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        image_token_id=151655,
        video_token_id=151656,
        dtype="bfloat16",
    )


def published_config(size: str) -> Qwen2_5_VLConfig | Qwen3VLConfig | Qwen3_5Config:
    """The Qwen2.5-VL-{3B,7B} / Qwen3-VL-{4B,8B}-Instruct / Qwen3.5-9B architecture (`size` in PUBLISHED_SIZES), bf16."""
    if size in _QWEN3_5:
        return _qwen3_5_config(size)
    if size in _QWEN3_VL:
        return _qwen3_vl_config(size)
    if size not in _TEXT:
        raise ValueError(f"no published Qwen-VL config for size {size!r}; known: {', '.join(PUBLISHED_SIZES)}")
    text = dict(_TEXT[size])
    tie = text.pop("tie_word_embeddings")
    return Qwen2_5_VLConfig(
        text_config={
            **text,
            "hidden_act": "silu",
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        },
        vision_config={**_VISION, "out_hidden_size": text["hidden_size"]},
        tie_word_embeddings=tie,
        bos_token_id=151643,
        eos_token_id=151645,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        image_token_id=151655,
        video_token_id=151656,
        torch_dtype="bfloat16",
    )


def config_for_model_path(model_path: str) -> tuple[PretrainedConfig, str]:
    """(config, where it came from) for a recipe's model path without loading weights: the
    folder's own config.json when it exists locally, else the published architecture whose size
    the path names (`.../qwen2_5_vl_7b_cold_start` -> 7B). Raises naming the path otherwise."""
    if os.path.isfile(os.path.join(os.path.expanduser(model_path), "config.json")):
        return AutoConfig.from_pretrained(model_path), f"{model_path}/config.json"
    sizes = re.findall(r"(?<![0-9.])(\d+)b(?![a-z0-9])", model_path.lower())
    known = [size + "b" for size in sizes if size + "b" in PUBLISHED_SIZES]
    if not known:
        raise FileNotFoundError(
            f"{model_path}: no config.json there, and the path names no published size "
            f"({', '.join(PUBLISHED_SIZES)}); point worker.actor.model.model_path at a folder with config.json"
        )
    family = "Qwen3-VL" if known[-1] in _QWEN3_VL else "Qwen3.5" if known[-1] in _QWEN3_5 else "Qwen2.5-VL"
    return published_config(known[-1]), f"published {family}-{known[-1].upper()} architecture (no local config.json)"
