"""The critic of GAE/PPO: the policy's model family with its LM head replaced by a scalar value
head, so the same loading, sharding, forward and checkpoint code serves both.

``model(...).logits`` of a value model is (bs, L, 1): the value of the state at each position.
A folder holding a value model (FSDP shards, or the merged Hugging Face folder) carries
``VALUE_HEAD_MARKER``, so that the merger and ``load_value_model`` rebuild the same architecture.
"""

from __future__ import annotations

import json
import os

import glob

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, PreTrainedModel

from verl.models.qwen_vl import checkpoint_weight_name

VALUE_HEAD_MARKER = "value_head.json"


def attach_value_head(model: nn.Module) -> nn.Module:
    """Replaces ``model.lm_head`` (hidden -> vocab) by a zero-initialised ``Linear(hidden, 1)``
    in the LM head's dtype and device, untied from the input embeddings (the config says so too,
    so ``tie_weights`` and ``save_pretrained`` keep it separate). Zero init: every value starts
    at 0, the return's scale is learned rather than guessed. Returns ``model``."""
    head = model.lm_head
    value_head = nn.Linear(head.in_features, 1, bias=True, dtype=head.weight.dtype, device=head.weight.device)
    if value_head.weight.device.type != "meta":
        with torch.no_grad():
            value_head.weight.zero_()
            value_head.bias.zero_()
    model.lm_head = value_head
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None and hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
    return model


def mark_value_checkpoint(directory: str) -> None:
    """Records in a checkpoint folder that its shards are a value model (read by the merger)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, VALUE_HEAD_MARKER), "w") as f:
        json.dump({"head": "lm_head", "out_features": 1}, f)


def is_value_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, VALUE_HEAD_MARKER))


def load_value_model(model_dir: str, dtype: torch.dtype, attn_implementation: str | dict[str, str]) -> PreTrainedModel:
    """A merged value model (a folder the merger wrote from a critic checkpoint): the config's
    architecture with a value head, weights read by their checkpoint-file names."""
    if not is_value_checkpoint(model_dir):
        raise ValueError(f"{model_dir} is not a value model: it lacks {VALUE_HEAD_MARKER}")
    config = AutoConfig.from_pretrained(model_dir)
    model = attach_value_head(
        AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    )
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"value model {model_dir} has no *.safetensors")
    saved: dict[str, torch.Tensor] = {}
    for path in files:
        saved.update(load_file(path))
    names = {name: checkpoint_weight_name(name, config.model_type) for name in model.state_dict()}
    missing = sorted(file_name for file_name in names.values() if file_name not in saved)
    if missing:
        raise KeyError(f"value model {model_dir} lacks weights: {missing[:5]}")
    model.load_state_dict({name: saved[file_name] for name, file_name in names.items()}, strict=True)
    return model
