"""Moving the trainer's weights into a rollout engine after each update.

Two naming schemes meet here. transformers 5 builds Qwen2.5-VL with the language model and the
vision tower under one `model` module, so `model.named_parameters()` yields
`model.language_model.layers.0...`, `model.visual.blocks.0...` and (untied heads only)
`lm_head.weight`. Checkpoint files keep the older layout (`model.layers.0...`, `visual.blocks...`,
`lm_head.weight`), which is what every vLLM release loads. `hf_to_checkpoint_name` converts.
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

from verl.workers.rollout.base import RolloutEngine

# In-memory prefix -> checkpoint prefix; checked in this order (the first match wins).
_IN_MEMORY_TO_CHECKPOINT_PREFIXES = (
    ("model.language_model.", "model."),
    ("model.visual.", "visual."),
    ("lm_head.", "lm_head."),
)


def hf_to_checkpoint_name(name: str) -> str:
    """Checkpoint-file name of an in-memory (transformers 5) Qwen2.5-VL parameter name.

    `model.language_model.X` -> `model.X`, `model.visual.X` -> `visual.X`, `lm_head.X` unchanged.
    Any other name (a checkpoint-style name included) is an error: silently passing it through
    would load it into the wrong tensor or nowhere.
    """
    for in_memory_prefix, checkpoint_prefix in _IN_MEMORY_TO_CHECKPOINT_PREFIXES:
        if name.startswith(in_memory_prefix):
            return checkpoint_prefix + name[len(in_memory_prefix) :]
    raise ValueError(
        f"parameter {name!r} is not an in-memory Qwen2.5-VL name: expected a prefix in "
        f"{[prefix for prefix, _ in _IN_MEMORY_TO_CHECKPOINT_PREFIXES]}"
    )


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


def iter_full_state_dict(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields `(in-memory name, full tensor)` for every parameter of `model`, one at a time.

    FSDP2-sharded parameters (DTensors) are all-gathered one by one (`full_tensor()`), so peak
    extra memory is one parameter, not the whole state dict. That all-gather is a collective:
    every rank must consume this generator to the end, in the same order (`named_parameters`
    order is the module order, identical on all ranks). Tied weights appear once, under their
    first name. Tensors are detached and on the parameter's device.
    """
    for name, parameter in model.named_parameters():
        tensor = parameter.detach()
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        yield name, tensor


def sync_weights(model: nn.Module, engine: RolloutEngine) -> dict[str, float]:
    """Streams `model`'s parameters into `engine`; returns `{"time_s", "bytes"}` for logging.

    Collective when `model` is FSDP-sharded: call it on every rank.
    """
    start = time.perf_counter()
    with torch.no_grad():
        loaded_bytes = engine.load_weights(iter_full_state_dict(model))
    return {"time_s": time.perf_counter() - start, "bytes": float(loaded_bytes)}
