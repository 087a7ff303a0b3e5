"""Name mapping and the non-distributed weight stream (the FSDP path is tested by the trainer's tests)."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from verl.models.qwen_vl import checkpoint_weight_name
from verl.toy.tiny_model import TinyModelSpec
from verl.workers.rollout import make_rollout_engine
from verl.workers.weight_sync import checkpoint_weight_names, iter_full_state_dict, sync_weights


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
def test_qwen2_5_vl_checkpoint_weight_name(in_memory, checkpoint):
    assert checkpoint_weight_name(in_memory, "qwen2_5_vl") == checkpoint


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("name", ["model.layers.0.mlp.up_proj.weight", "visual.blocks.0.norm1.weight", "weight"])
def test_checkpoint_weight_name_rejects_names_that_are_not_in_memory_names(name, model_type):
    with pytest.raises(ValueError, match=f"not an in-memory {model_type} name"):
        checkpoint_weight_name(name, model_type)


def test_checkpoint_weight_name_names_the_unsupported_model_type():
    with pytest.raises(ValueError, match="model_type 'llava' is not supported"):
        checkpoint_weight_name("model.visual.x", "llava")


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)


@pytest.mark.parametrize("model_dir", ["tiny_model_dir", "tiny_qwen3_vl_dir"])
def test_mapped_in_memory_names_are_exactly_the_saved_checkpoint_keys(model_dir, request):
    model_dir = request.getfixturevalue(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    mapped = {checkpoint_weight_name(name, model.config.model_type) for name, _ in model.named_parameters()}

    assert mapped == checkpoint_weight_names(model_dir)


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
