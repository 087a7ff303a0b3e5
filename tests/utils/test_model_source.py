"""check_model_path: a model path that cannot load fails in one line that says what to do."""

import pytest

from verl.utils import model_source
from verl.utils.model_source import ModelPathError, check_model_path


def test_existing_folder_passes(tmp_path):
    check_model_path(str(tmp_path), "worker.actor.model.model_path")


def test_missing_tiny_model_names_the_build_command(tmp_path):
    path = str(tmp_path / "models" / "tiny_qwen25vl")
    with pytest.raises(ModelPathError) as error:
        check_model_path(path, "worker.actor.model.model_path")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"worker.actor.model.model_path={path}: no such model folder")
    assert f"python3 scripts/make_tiny_model.py --out {path}" in message


def test_relative_tiny_path_is_local_not_a_hub_id(monkeypatch, tmp_path):
    # models/tiny_qwen25vl has the org/name shape of a hub id; it must not reach the hub.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(model_source, "hub_offline", lambda: pytest.fail("the hub was probed"))
    with pytest.raises(ModelPathError, match="make_tiny_model.py --out models/tiny_qwen25vl"):
        check_model_path("models/tiny_qwen25vl", "k")


def test_missing_checkpoint_says_train_or_merge(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelPathError, match="train it first.*model_merger.py"):
        check_model_path("checkpoints/sft/qwen2_5_vl_7b_cold_start", "worker.actor.model.model_path")


def test_hub_id_offline_and_not_cached_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(ModelPathError) as error:
        check_model_path("Qwen/Qwen2.5-VL-7B-Instruct", "worker.actor.model.model_path")
    message = str(error.value)
    assert "offline" in message and "worker.actor.model.model_path=DIR" in message and "\n" not in message


def test_hub_id_reachable_passes(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(model_source, "_in_hub_cache", lambda repo: False)
    monkeypatch.setattr(model_source, "hub_offline", lambda: False)
    check_model_path("Qwen/Qwen2.5-VL-7B-Instruct", "k")


def test_a_file_is_not_a_model_folder(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    with pytest.raises(ModelPathError, match="is a file, not a model folder"):
        check_model_path(str(file), "k")
