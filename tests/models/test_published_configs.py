"""The written-down Qwen2.5-VL, Qwen3-VL and Qwen3.5 architectures build the released models' parameter counts."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from verl.models.published_configs import config_for_model_path, published_config


@pytest.mark.parametrize(
    "size, billions",
    # The sizes the Hugging Face model pages show for the released checkpoints.
    [("3b", 3.75), ("7b", 8.29), ("4b", 4.44), ("8b", 8.77)],
)
def test_meta_model_has_the_released_parameter_count(size, billions):
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(published_config(size))
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == billions


def test_qwen3_5_9b_meta_model_is_the_released_checkpoint_byte_for_byte():
    """Qwen3.5-9B's safetensors index gives total_size 19,306,216,416 bytes (as quoted with its
    config, see `_QWEN3_5`). The meta model built from the written-down numbers, plus the files'
    multi-token-prediction head (one full-attention decoder layer, fc 2h -> h, three h-norms), in
    bf16 with the delta rule's A_log and gated-norm weights in fp32, is exactly that."""
    config = published_config("9b")
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    text = config.get_text_config()
    layers = model.model.language_model.layers
    assert text.layer_types.count("linear_attention") == 24 and text.layer_types.count("full_attention") == 8
    parameters = sum(p.numel() for p in model.parameters())
    full_layer = sum(p.numel() for p in layers[text.layer_types.index("full_attention")].parameters())
    hidden = text.hidden_size
    mtp = full_layer + 2 * hidden * hidden + 3 * hidden
    fp32 = sum(
        layer.linear_attn.A_log.numel() + layer.linear_attn.norm.weight.numel()
        for layer in layers if hasattr(layer, "linear_attn")
    )
    assert 2 * (parameters + mtp) + 2 * fp32 == 19_306_216_416
    assert round(parameters / 1e9, 2) == 9.41  # what the dry run counts (no MTP head)


def test_model_path_resolution(tiny_model_dir, tmp_path):
    config, source = config_for_model_path(tiny_model_dir)
    assert source.endswith("config.json") and config.get_text_config().hidden_size < 1024
    config, source = config_for_model_path("checkpoints/sft/qwen2_5_vl_7b_cold_start")
    assert "7B" in source and config.get_text_config().hidden_size == 3584
    assert config_for_model_path("Qwen/Qwen2.5-VL-3B-Instruct")[0].get_text_config().num_hidden_layers == 36
    config, source = config_for_model_path("Qwen/Qwen3-VL-8B-Instruct")
    assert "Qwen3-VL-8B" in source and config.model_type == "qwen3_vl"
    config, source = config_for_model_path("Qwen/Qwen3.5-9B")
    assert "Qwen3.5-9B" in source and config.model_type == "qwen3_5"
    with pytest.raises(FileNotFoundError, match="no config.json there"):
        config_for_model_path(str(tmp_path / "my_policy"))
