"""Building the trainable (or frozen reference) policy: one place for SFT and the RL workers."""

from __future__ import annotations

import torch
from torch import nn

from verl.models.qwen_vl import load_policy, resolve_attn_implementation, vision_parts
from verl.models.lora import LoRAConfig, apply_lora
from verl.models.value_head import attach_value_head, is_value_checkpoint, load_value_model


def freeze_vision(model: nn.Module, vision_tower: bool, projector: bool) -> None:
    """`vision_tower`: fix the patch (and position) embedding and the vision blocks; `projector`:
    fix the vision-to-language merger(s) (see `vision_parts`). The language model always stays
    trainable."""
    tower, projectors = vision_parts(model)
    for module in (tower if vision_tower else []) + (projectors if projector else []):
        module.requires_grad_(False)


def build_policy(
    model_path: str,
    device: torch.device,
    attn_implementation: str | dict[str, str] = "auto",
    gradient_checkpointing: bool = False,
    freeze_vision_tower: bool = False,
    freeze_multi_modal_projector: bool = False,
    dtype: torch.dtype = torch.float32,
    trainable: bool = True,
    move_to_device: bool = True,
    lora: LoRAConfig | None = None,
    lora_key: str = "lora",
    value_model: bool = False,
) -> nn.Module:
    """`from_pretrained` in `dtype` (fp32 master weights for training; FSDP's mixed-precision
    policy casts for compute), no KV cache, optional freezing and activation checkpointing;
    `trainable=False` freezes everything (a reference model). With `lora` enabled only the
    adapters train (`apply_lora`; `lora_key` names the config in errors). Moved to `device` unless
    `move_to_device` is False (FSDP parameter offload streams it there itself). `value_model`:
    a critic (`verl.models.value_head`): a merged value model as saved, or a language model
    with a fresh value head. `attn_implementation`: a name (`auto` resolved for `device`) or a
    per-sub-model dict (`verl.workers.engine.shared_prefix.AttentionPlan`)."""
    if isinstance(attn_implementation, str):
        attn_implementation = resolve_attn_implementation(attn_implementation, device)
    if value_model and is_value_checkpoint(model_path):
        model = load_value_model(model_path, dtype, attn_implementation)
    else:
        model = load_policy(model_path, dtype, attn_implementation)
        if value_model:
            attach_value_head(model)
    model.config.use_cache = False
    if trainable:
        if lora is not None and lora.enabled:
            apply_lora(model, lora, lora_key)  # freezes the base, vision tower included
        else:
            freeze_vision(model, freeze_vision_tower, freeze_multi_modal_projector)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.requires_grad_(False)
    return model.to(device) if move_to_device else model
