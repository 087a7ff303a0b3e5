"""Building the trainable (or frozen reference) policy: one place for SFT and the RL workers."""

from __future__ import annotations

import torch
from torch import nn

from verl.models.qwen_vl import load_policy, resolve_attn_implementation


def freeze_vision(model: nn.Module, vision_tower: bool, projector: bool) -> None:
    """`vision_tower`: fix the patch embedding and the vision blocks; `projector`: fix the
    vision-to-language merger. The language model always stays trainable."""
    visual = model.model.visual
    if vision_tower:
        visual.patch_embed.requires_grad_(False)
        visual.blocks.requires_grad_(False)
    if projector:
        visual.merger.requires_grad_(False)


def build_policy(
    model_path: str,
    device: torch.device,
    attn_implementation: str = "auto",
    gradient_checkpointing: bool = False,
    freeze_vision_tower: bool = False,
    freeze_multi_modal_projector: bool = False,
    dtype: torch.dtype = torch.float32,
    trainable: bool = True,
    move_to_device: bool = True,
) -> nn.Module:
    """`from_pretrained` in `dtype` (fp32 master weights for training; FSDP's mixed-precision
    policy casts for compute), no KV cache, optional freezing and activation checkpointing;
    `trainable=False` freezes everything (a reference model). Moved to `device` unless
    `move_to_device` is False (FSDP parameter offload streams it there itself)."""
    model = load_policy(model_path, dtype, resolve_attn_implementation(attn_implementation, device))
    model.config.use_cache = False
    if trainable:
        freeze_vision(model, freeze_vision_tower, freeze_multi_modal_projector)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.requires_grad_(False)
    return model.to(device) if move_to_device else model
