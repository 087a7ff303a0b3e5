"""The written-down Qwen2.5-VL architectures build the released models' parameter counts."""

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


def test_model_path_resolution(tiny_model_dir, tmp_path):
    config, source = config_for_model_path(tiny_model_dir)
    assert source.endswith("config.json") and config.get_text_config().hidden_size < 1024
    config, source = config_for_model_path("checkpoints/sft/qwen2_5_vl_7b_cold_start")
    assert "7B" in source and config.get_text_config().hidden_size == 3584
    assert config_for_model_path("Qwen/Qwen2.5-VL-3B-Instruct")[0].get_text_config().num_hidden_layers == 36
    config, source = config_for_model_path("Qwen/Qwen3-VL-8B-Instruct")
    assert "Qwen3-VL-8B" in source and config.model_type == "qwen3_vl"
    with pytest.raises(FileNotFoundError, match="no config.json there"):
        config_for_model_path(str(tmp_path / "my_policy"))
