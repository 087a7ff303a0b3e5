"""Session-wide fixtures: the tiny Qwen2.5-VL checkpoint every model-facing test loads."""

import pytest
import torch

from verl.utils.tiny_model import build_tiny_model

# The tiny model gains nothing from more threads, and test machines share their cores.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of the tiny random Qwen2.5-VL (seed 0), built once per test session."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_qwen2_5_vl")), seed=0)
