"""FSDP2 sharding of a Qwen2.5-VL policy, shared by the RL workers and the SFT trainer."""

from __future__ import annotations

import torch
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

from verl.models.qwen_vl import decoder_layers


def shard_model(
    model: torch.nn.Module, mesh, mp_policy: MixedPrecisionPolicy, param_offload: bool = False
) -> torch.nn.Module:
    """FSDP2: each vision block and decoder layer is its own unit, then the root (embeddings,
    merger, norm, tied lm_head). `param_offload` keeps sharded parameters, gradients and hence
    the optimizer step on CPU, streaming each unit to the GPU for its forward/backward."""
    offload = {"offload_policy": CPUOffloadPolicy()} if param_offload and mesh.device_type == "cuda" else {}
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp_policy, **offload)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, **offload)
    return model
