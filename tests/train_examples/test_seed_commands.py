"""The reference's command names exist, answer --help, and run their recipe (a 3B twin dry-runs on CPU)."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The reference's train_examples/ names -> the config each one runs.
SEED_COMMANDS = {
    "1-7b_visionR1_train.sh": "configs/qwen2_5_vl_7b_visionR1.yaml",
    "1-3b_visionR1_train.sh": "configs/qwen2_5_vl_7b_visionR1.yaml",
    "1-7b_cot_train.sh": "configs/qwen2_5_vl_7b_cot.yaml",
    "1-3b_cot_train.sh": "configs/qwen2_5_vl_7b_cot.yaml",
    "2-7b_selfReward_train.sh": "configs/qwen2_5_vl_7b_selfReward.yaml",
    "2-3b_selfReward_train.sh": "configs/qwen2_5_vl_3b_selfReward.yaml",
    "3-7b_seethink_noSelfReward.sh": "configs/qwen2_5_vl_7b_seeThink.yaml",
    "3-3b_seethink_noSelfReward.sh": "configs/qwen2_5_vl_7b_seeThink.yaml",
}


def _env():
    """No activated venv: the launchers find the project's .venv themselves (scripts/find_python.sh)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHON", "VIRTUAL_ENV")}
    return dict(env, PATH="/usr/local/bin:/usr/bin:/bin", PYTHONPATH=str(REPO))


@pytest.mark.parametrize("script", sorted(SEED_COMMANDS))
def test_seed_command_answers_help_and_names_its_config(script):
    path = REPO / "train_examples" / script
    text = path.read_text()
    assert f"CONFIG=${{CONFIG:-{SEED_COMMANDS[script]}}}" in text
    assert "run_grpo.sh" in text and "python3 -m" not in text  # a thin entry: the launcher holds the logic
    done = subprocess.run(["bash", str(path), "--help"], env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"train_examples/{script}" in done.stdout and SEED_COMMANDS[script] in done.stdout


def test_a_3b_twin_dry_runs_the_3b_model_on_one_gpu_per_engine():
    """Also the launcher chain (twin -> run_grpo.sh) without an activated venv: bare python3 has no omegaconf."""
    done = subprocess.run(
        ["bash", "train_examples/1-3b_visionR1_train.sh", "trainer.dry_run=true"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "Qwen2.5-VL-3B" in out and "3.75 B parameters" in out
    assert "tensor_parallel_size: 1" in out and "experiment_name: qwen2_5_vl_3b_visionR1" in out
    assert "format_weight: 0.1" in out and "(fits)" in out


def test_the_eval_suite_command_without_a_model_prints_usage():
    done = subprocess.run(["bash", "validation_examples/2-seethink_format_eval.sh"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("usage: bash validation_examples/2-seethink_format_eval.sh MODEL")
