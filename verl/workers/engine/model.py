"""Building the trainable (or frozen reference) policy: one place for SFT and the RL workers."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy

from verl.models.qwen_vl import load_policy, resolve_attn_implementation, resolve_dtype, vision_parts
from verl.models.lora import LoRAConfig, apply_lora
from verl.models.value_head import attach_value_head, is_value_checkpoint, load_value_model
from verl.workers.config import FSDPConfig, ModelConfig
from verl.workers.engine.fsdp import shard_model


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


def build_trained_policy(
    model: ModelConfig,
    fsdp: FSDPConfig,
    device: torch.device,
    mesh,
    attn_implementation: str | dict[str, str],
    lora_key: str,
) -> nn.Module:
    """The policy SFT and the RL actor train, from their `model` and `fsdp` sections: fp32
    master weights (`build_policy` with the section's freezing, activation checkpointing and
    LoRA), then FSDP2 shards computing in `fsdp.torch_dtype` with fp32 gradient reduction, the
    parameters on CPU with `fsdp.param_offload`. One precision path, a one-rank mesh included.
    `lora_key`: the LoRA section's config key, for errors."""
    policy = build_policy(
        model.model_path,
        device,
        attn_implementation,
        gradient_checkpointing=model.enable_gradient_checkpointing,
        freeze_vision_tower=model.freeze_vision_tower,
        freeze_multi_modal_projector=model.freeze_multi_modal_projector,
        move_to_device=not fsdp.param_offload,
        lora=model.lora,
        lora_key=lora_key,
    )
    mixed_precision = MixedPrecisionPolicy(param_dtype=resolve_dtype(fsdp.torch_dtype, device), reduce_dtype=torch.float32)
    return shard_model(policy, mesh, mixed_precision, fsdp.param_offload)
