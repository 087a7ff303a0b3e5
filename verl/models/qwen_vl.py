"""What the trainer needs to know about the Qwen-VL models it trains (Qwen2.5-VL, Qwen3-VL, Qwen3.5):
loading, checkpoint weight names, which modules are the vision tower, mrope position ids, and how
the per-sample multi-modal tensors of a batch are put together for one forward. Everything that
differs between the two lives in `QwenVLFamily`; the rest of the code asks this module."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from transformers import AutoModelForImageTextToText, PreTrainedModel


@dataclass(frozen=True)
class QwenVLFamily:
    """The per-model-type facts the trainer needs.

    checkpoint_prefixes: (in-memory prefix, checkpoint-file prefix) pairs, first match wins.
        transformers 5 keeps both models under `model.language_model.*` / `model.visual.*` in
        memory; Qwen2.5-VL checkpoint files (and vLLM's loader) use the older `model.*` /
        `visual.*` layout, Qwen3-VL files use the in-memory names.
    projector_modules: children of `model.visual` that map vision features into the language
        model (trainable with `freeze_vision_tower`); every other child is the tower. Qwen3-VL
        adds `deepstack_merger_list` (features of inner vision blocks injected into early
        decoder layers).
    """

    checkpoint_prefixes: tuple[tuple[str, str], ...]
    projector_modules: tuple[str, ...]


FAMILIES = {
    "qwen2_5_vl": QwenVLFamily(
        checkpoint_prefixes=(("model.language_model.", "model."), ("model.visual.", "visual."), ("lm_head.", "lm_head.")),
        projector_modules=("merger",),
    ),
    "qwen3_vl": QwenVLFamily(
        checkpoint_prefixes=(
            ("model.language_model.", "model.language_model."),
            ("model.visual.", "model.visual."),
            ("lm_head.", "lm_head."),
        ),
        projector_modules=("merger", "deepstack_merger_list"),
    ),
}
# Qwen3.5 (and its MoE): Qwen3-VL's checkpoint layout (the released files add `mtp.*`
# multi-token-prediction weights, which transformers skips on load and the merger never writes)
# and Qwen3-VL's merger without deepstack.
FAMILIES["qwen3_5"] = FAMILIES["qwen3_5_moe"] = QwenVLFamily(
    checkpoint_prefixes=FAMILIES["qwen3_vl"].checkpoint_prefixes, projector_modules=("merger",)
)

# Decoder layer types whose token mixing is a recurrence (a state carried from token to token)
# rather than attention over a mask: Qwen3.5's gated delta rule (`linear_attention`).
RECURRENT_LAYER_TYPES = ("linear_attention",)


def recurrent_layers(text_config) -> list[int]:
    """Indices of the decoder layers of `text_config` (a language model's config) that carry a
    recurrent state (`RECURRENT_LAYER_TYPES` in its `layer_types`); [] for attention-only models."""
    return [i for i, kind in enumerate(getattr(text_config, "layer_types", None) or ()) if kind in RECURRENT_LAYER_TYPES]


def family_of(model_type: str) -> QwenVLFamily:
    """The `QwenVLFamily` of a config's `model_type`; a clear error for models not supported."""
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported; supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def checkpoint_weight_name(name: str, model_type: str) -> str:
    """Checkpoint-file name of an in-memory (transformers 5) parameter name of `model_type`.

    Qwen2.5-VL: `model.language_model.X` -> `model.X`, `model.visual.X` -> `visual.X`,
    `lm_head.X` unchanged; Qwen3-VL: unchanged. Any other name (a checkpoint-style name
    included) is an error: silently passing it through would load it into the wrong tensor or
    nowhere.
    """
    prefixes = family_of(model_type).checkpoint_prefixes
    for in_memory_prefix, checkpoint_prefix in prefixes:
        if name.startswith(in_memory_prefix):
            return checkpoint_prefix + name[len(in_memory_prefix) :]
    raise ValueError(
        f"parameter {name!r} is not an in-memory {model_type} name: expected a prefix in "
        f"{[prefix for prefix, _ in prefixes]}"
    )


def vision_parts(model: PreTrainedModel) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """(tower modules, projector modules): the children of `model.model.visual` split by
    `QwenVLFamily.projector_modules`."""
    projector_names = family_of(model.config.model_type).projector_modules
    tower, projector = [], []
    for name, child in model.model.visual.named_children():
        (projector if name in projector_names else tower).append(child)
    return tower, projector


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` = bf16 on GPU, fp32 on CPU (CPU bf16 matmuls are slow and lossy)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[name]


def resolve_attn_implementation(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            return "sdpa"
    return "sdpa"


def load_policy(model_path: str, dtype: torch.dtype, attn_implementation: str | dict[str, str]) -> PreTrainedModel:
    """Loads the policy exactly as a user's checkpoint is loaded (`from_pretrained`)."""
    return AutoModelForImageTextToText.from_pretrained(
        model_path, dtype=dtype, attn_implementation=attn_implementation
    )


def merge_multi_modal_inputs(per_sample: np.ndarray | list) -> dict[str, torch.Tensor]:
    """Concatenates per-sample `{pixel_values, image_grid_thw}` dicts (empty for text-only rows)
    into the batch-level tensors the model takes; {} when no row has an image."""
    pixel_values = [s["pixel_values"] for s in per_sample if s and "pixel_values" in s]
    if not pixel_values:
        return {}
    grids = [s["image_grid_thw"] for s in per_sample if s and "pixel_values" in s]
    return {"pixel_values": torch.cat(pixel_values, dim=0), "image_grid_thw": torch.cat(grids, dim=0)}


def position_ids_for(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
) -> torch.Tensor:
    """mrope position ids (3, bs, L) for a left/right padded batch. Computed explicitly because
    transformers 5 caches `rope_deltas` between calls and otherwise infers text positions
    without looking at the padding."""
    config = model.config
    mm_token_type_ids = (input_ids == config.image_token_id).int()
    position_ids, _ = model.model.get_rope_index(
        input_ids,
        mm_token_type_ids=mm_token_type_ids,
        image_grid_thw=image_grid_thw,
        attention_mask=attention_mask,
    )
    return position_ids


def _blank_image_anchor(model: PreTrainedModel) -> torch.Tensor:
    """The vision tower run on one blank image of one merged token, reduced to a scalar 0 that
    still depends on every vision parameter (Qwen3-VL's deepstack mergers included)."""
    visual = model.model.visual
    vision = model.config.vision_config
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    merge = vision.spatial_merge_size
    grid_thw = torch.tensor([[1, merge, merge]], device=next(visual.parameters()).device)
    pixel_values = torch.zeros(merge * merge, patch_dim, dtype=visual.dtype, device=grid_thw.device)
    output = visual(pixel_values, grid_thw=grid_thw)
    total = output.pooler_output.sum()
    for feature in getattr(output, "deepstack_features", None) or ():
        total = total + feature.sum()
    return total * 0.0


def forward_in_step(model: PreTrainedModel, **inputs: torch.Tensor):
    """`model(**inputs)` that keeps sharded ranks in lockstep. FSDP runs collectives per module
    in execution order, so every rank must run the same modules in the same order. A rank whose
    micro-batch is text-only would skip the vision tower while another rank runs it; instead it
    runs the tower on a blank image at the point where images are encoded (just before the
    language model) and adds a zero that carries gradient, so all-gathers and gradient
    reduce-scatters pair up across ranks."""
    if "pixel_values" in inputs or not dist.is_initialized():
        return model(**inputs)

    def add_anchor(module, args, kwargs):
        kwargs["inputs_embeds"] = kwargs["inputs_embeds"] + _blank_image_anchor(model).to(kwargs["inputs_embeds"].dtype)
        return args, kwargs

    handle = model.model.language_model.register_forward_pre_hook(add_anchor, with_kwargs=True)
    try:
        return model(**inputs)
    finally:
        handle.remove()


def decoder_layers(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The blocks FSDP shards one by one: vision blocks and language decoder layers."""
    inner = model.model
    return list(inner.visual.blocks) + list(inner.language_model.layers)
