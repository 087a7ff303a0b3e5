"""Session-wide fixtures: the tiny Qwen2.5-VL checkpoint every model-facing test loads."""

from pathlib import Path

import pytest
import torch

from verl.data.synthetic import write_synthetic_dataset
from verl.utils.tiny_model import build_tiny_model

# The tiny model gains nothing from more threads, and test machines share their cores.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of the tiny random Qwen2.5-VL (seed 0), built once per test session."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_qwen2_5_vl")), seed=0)


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small synthetic shapes dataset (RL train/val parquet + sharegpt SFT file), built once."""
    out_dir = str(tmp_path_factory.mktemp("tiny_shapes"))
    write_synthetic_dataset(
        out_dir, str(REPO_ROOT / "configs/format_prompt/sr1.jinja"), seed=0, train_size=64, val_size=16, sft_size=32
    )
    return out_dir
