"""Moving the trainer's weights into a rollout engine after each update.

The trainer streams in-memory (transformers 5) parameter names; an engine that loads checkpoint
files (vLLM) converts them with `verl.models.qwen_vl.checkpoint_weight_name` (Qwen2.5-VL files
use an older layout than its in-memory names, Qwen3-VL files the same names) and checks them
against `checkpoint_weight_names` of its checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from typing import Iterator

import torch
from safetensors import safe_open
from torch import nn
from torch.distributed.tensor import DTensor

from verl.models.lora import LORA_A, LORA_B, is_adapter_name, lora_modules, merged_weight
from verl.workers.rollout.base import RolloutEngine


def checkpoint_weight_names(model_path: str) -> set[str]:
    """Tensor names stored in the safetensors checkpoint at `model_path` (sharded or not)."""
    index_path = os.path.join(model_path, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path) as index_file:
            return set(json.load(index_file)["weight_map"])
    single_path = os.path.join(model_path, "model.safetensors")
    if not os.path.isfile(single_path):
        raise FileNotFoundError(
            f"{model_path}: neither model.safetensors.index.json nor model.safetensors found"
        )
    with safe_open(single_path, framework="pt") as checkpoint:
        return set(checkpoint.keys())


def _full(parameter: torch.Tensor) -> torch.Tensor:
    tensor = parameter.detach()
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def iter_full_state_dict(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields `(in-memory name, full tensor)` for every parameter of `model`, one at a time.

    FSDP2-sharded parameters (DTensors) are all-gathered one by one (`full_tensor()`), so peak
    extra memory is one parameter, not the whole state dict. That all-gather is a collective:
    every rank must consume this generator to the end, in the same order (`named_parameters`
    order is the module order, identical on all ranks). Tied weights appear once, under their
    first name. Tensors are detached and on the parameter's device.

    With LoRA adapters (`verl.models.lora`) the engine gets the plain model: each adapted
    weight is streamed merged (W + scale B A) under its own name, the adapter matrices are not
    streamed. Merged weights leave the engine's kernels, its memory and its checks unchanged
    (the alternative, a vLLM LoRA adapter, is compared in benchmarks/lora.py).
    """
    adapted = {f"{name}.weight": module for name, module in lora_modules(model).items()}
    for name, parameter in model.named_parameters():
        if is_adapter_name(name):
            continue
        tensor = _full(parameter)
        module = adapted.get(name)
        if module is not None:
            lora_a, lora_b = _full(getattr(module, LORA_A)), _full(getattr(module, LORA_B))
            tensor = merged_weight(tensor, lora_a, lora_b, module.lora_scale)
        yield name, tensor


def sync_weights(model: nn.Module, engine: RolloutEngine) -> dict[str, float]:
    """Streams `model`'s parameters into `engine`; returns `{"time_s", "bytes"}` for logging.

    Collective when `model` is FSDP-sharded: call it on every rank.
    """
    start = time.perf_counter()
    with torch.no_grad():
        loaded_bytes = engine.load_weights(iter_full_state_dict(model))
    return {"time_s": time.perf_counter() - start, "bytes": float(loaded_bytes)}


def gather_policy_weights(model: nn.Module, dtype: torch.dtype, keep: bool) -> dict[str, torch.Tensor]:
    """`model`'s weights as an engine loads them (`iter_full_state_dict`: LoRA merged), cast to
    `dtype` and copied to the CPU, for engines in other processes (trainer.rollout_mode=
    one_step_off). Collective when `model` is FSDP-sharded: every rank calls it and gathers one
    parameter at a time; only a rank with `keep` holds the result (the others return {})."""
    weights: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, tensor in iter_full_state_dict(model):
            if keep:
                weights[name] = tensor.to(device="cpu", dtype=dtype).contiguous()
    return weights
