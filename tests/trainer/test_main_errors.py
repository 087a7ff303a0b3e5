"""User errors end the CLI with one message on stderr and exit code 1 or 2, before Ray starts; the
traceback goes to the run folder's error.log (and to the console too with VERL_DEBUG=1)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from verl.trainer.main import main

REPO_ROOT = Path(__file__).resolve().parents[2]


def _fail(capsys, tmp_path, *overrides: str) -> tuple[int, list[str], str]:
    """(exit code, stderr lines, error.log text) of the CLI on the tiny config with `overrides`."""
    argv = ["config=configs/tiny_cpu.yaml", f"trainer.save_checkpoint_path={tmp_path / 'run'}", *overrides]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    log = tmp_path / "run" / "error.log"
    return exit_info.value.code, capsys.readouterr().err.splitlines(), log.read_text() if log.exists() else ""


def _assert_one_message(lines: list[str], message: str, log: str, tmp_path) -> None:
    """stderr ends with where the traceback is and the message (data loading may print progress
    bars before them), and holds no traceback."""
    assert not any("Traceback" in line for line in lines), lines
    assert lines[-2] == f"(traceback of this error: {tmp_path / 'run' / 'error.log'}; VERL_DEBUG=1 prints it here too)"
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert "Traceback (most recent call last)" in log and message in log


@pytest.fixture(autouse=True)
def _from_the_repo_root(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.delenv("VERL_DEBUG", raising=False)


def test_config_error(capsys, tmp_path):
    code, lines, _ = _fail(capsys, tmp_path, "worker.actor.optim.lr=-1e-5")
    assert code == 2
    assert lines == ["config error: worker.actor.optim.lr=-1e-05 must be > 0"]


def test_missing_model(capsys, tmp_path):
    code, lines, log = _fail(capsys, tmp_path, f"worker.actor.model.model_path={tmp_path / 'no_model'}")
    assert code == 1
    _assert_one_message(lines, f"worker.actor.model.model_path={tmp_path / 'no_model'}: no such model folder", log, tmp_path)


def test_missing_checkpoint_fails_before_data_and_ray(capsys, tmp_path, tiny_model_dir):
    code, lines, log = _fail(
        capsys, tmp_path, f"worker.actor.model.model_path={tiny_model_dir}", "data.train_files=/nowhere/train.parquet",
        f"trainer.load_checkpoint_path={tmp_path / 'global_step_9'}",
    )
    assert code == 1
    _assert_one_message(
        lines, f"trainer.load_checkpoint_path={tmp_path / 'global_step_9'}: no such checkpoint folder", log, tmp_path
    )


def test_unreadable_data_file(capsys, tmp_path, tiny_model_dir):
    broken = tmp_path / "train.parquet"
    broken.write_bytes(b"not a parquet file")
    code, lines, log = _fail(
        capsys, tmp_path, f"worker.actor.model.model_path={tiny_model_dir}", f"data.train_files={broken}",
    )
    assert code in (1, 2)
    _assert_one_message(lines, str(broken), log, tmp_path)


def test_reward_function_error_with_the_traceback_on_the_console_only_under_verl_debug(
    capsys, tmp_path, tiny_model_dir, synthetic_data_dir, monkeypatch
):
    reward_file = tmp_path / "broken_reward.py"
    reward_file.write_text("def score(reward_inputs):\n    return [\n")  # a syntax error
    overrides = (
        f"worker.actor.model.model_path={tiny_model_dir}", f"data.train_files={synthetic_data_dir}/train.parquet",
        f"data.val_files={synthetic_data_dir}/val.parquet", f"reward.reward_function={reward_file}:score",
    )
    code, lines, log = _fail(capsys, tmp_path, *overrides)
    assert code == 1
    _assert_one_message(lines, f"importing reward function file {reward_file} failed: SyntaxError", log, tmp_path)
    monkeypatch.setenv("VERL_DEBUG", "1")
    code, lines, _ = _fail(capsys, tmp_path, *overrides)
    assert code == 1 and "Traceback (most recent call last):" in lines
    assert lines[-1].startswith(f"error: importing reward function file {reward_file} failed")


@pytest.mark.timeout(120)
def test_the_cli_process_prints_no_traceback(tmp_path):
    """The same path in a real `python -m verl.trainer.main` process, as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu.yaml",
         f"worker.actor.model.model_path={tmp_path / 'no_model'}", f"trainer.save_checkpoint_path={tmp_path / 'run'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=110,
        env={key: value for key, value in os.environ.items() if key != "VERL_DEBUG"},
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(f"error: worker.actor.model.model_path={tmp_path / 'no_model'}")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 2, result.stderr
    assert "ModelPathError" in (tmp_path / "run" / "error.log").read_text()
