"""Name mapping and the non-distributed weight stream (the FSDP path is tested by the trainer's tests)."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from verl.utils.tiny_model import TinyModelSpec
from verl.workers.rollout import make_rollout_engine
from verl.workers.weight_sync import (
    checkpoint_weight_names,
    hf_to_checkpoint_name,
    iter_full_state_dict,
    sync_weights,
)


@pytest.mark.parametrize(
    ("in_memory", "checkpoint"),
    [
        ("model.language_model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("model.language_model.embed_tokens.weight", "model.embed_tokens.weight"),
        ("model.visual.blocks.0.attn.qkv.weight", "visual.blocks.0.attn.qkv.weight"),
        ("model.visual.merger.mlp.0.bias", "visual.merger.mlp.0.bias"),
        ("lm_head.weight", "lm_head.weight"),
    ],
)
def test_hf_to_checkpoint_name(in_memory, checkpoint):
    assert hf_to_checkpoint_name(in_memory) == checkpoint


@pytest.mark.parametrize("name", ["model.layers.0.mlp.up_proj.weight", "visual.blocks.0.norm1.weight", "weight"])
def test_hf_to_checkpoint_name_rejects_names_that_are_not_in_memory_names(name):
    with pytest.raises(ValueError, match="not an in-memory Qwen2.5-VL name"):
        hf_to_checkpoint_name(name)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)


def test_mapped_in_memory_names_are_exactly_the_saved_checkpoint_keys(tiny_model_dir, tiny_model):
    mapped = {hf_to_checkpoint_name(name) for name, _ in tiny_model.named_parameters()}

    assert mapped == checkpoint_weight_names(tiny_model_dir)


def test_checkpoint_weight_names_reports_a_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        checkpoint_weight_names(str(tmp_path))


def test_iter_full_state_dict_streams_every_parameter_once_in_module_order(tiny_model):
    streamed = list(iter_full_state_dict(tiny_model))

    assert [name for name, _ in streamed] == [name for name, _ in tiny_model.named_parameters()]
    for (_, tensor), parameter in zip(streamed, tiny_model.parameters()):
        assert not tensor.requires_grad
        assert tensor.data_ptr() == parameter.data_ptr()  # unsharded: a view, no copy


def test_sync_weights_loads_the_model_into_an_engine(tiny_model_dir):
    spec = TinyModelSpec()
    engine = make_rollout_engine("hf", tiny_model_dir, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
    trained = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(1.0)

    stats = sync_weights(trained, engine)

    assert stats["bytes"] == sum(parameter.numel() * 4 for parameter in trained.parameters())
    assert stats["time_s"] > 0
    engine_parameters = dict(engine.model.named_parameters())
    for name, parameter in trained.named_parameters():
        assert torch.equal(engine_parameters[name], parameter)
