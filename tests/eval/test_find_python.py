"""The evaluation scripts find the project's venv themselves (as the training recipes do), from any
working directory and without an activated venv."""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bash(script: str, cwd: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    clean["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # no venv on PATH
    return subprocess.run(["bash", "-c", script], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_find_python_picks_the_repo_venv_unless_python_is_set(tmp_path):
    source = f"source {REPO}/scripts/find_python.sh && echo $PYTHON"
    assert _bash(source, str(tmp_path)).stdout.strip() == f"{REPO}/.venv/bin/python"
    assert _bash(source, str(tmp_path), PYTHON="/opt/custom/python").stdout.strip() == "/opt/custom/python"


@pytest.mark.timeout(150)
def test_eval_script_runs_the_venv_python_from_another_directory(tmp_path):
    missing = str(tmp_path / "no_such_model")
    result = _bash(f"bash {REPO}/validation_examples/tiny_cpu.sh {missing} {tmp_path}/out", str(tmp_path),
                   PYTHONPATH=str(REPO))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "No module named" not in output, output[-2000:]
    assert "no_such_model" in output, output[-2000:]  # the project's own one-line error, from its venv


ENTRY_POINTS = sorted([*REPO.glob("train_examples/*.sh"), *REPO.glob("validation_examples/*.sh")])


@pytest.mark.parametrize("script", ENTRY_POINTS, ids=[path.name for path in ENTRY_POINTS])
def test_every_shell_entry_point_runs_the_python_find_python_picks(script):
    """Each script sources scripts/find_python.sh or hands over to one that does, and never runs a
    bare python3 / ray (which, without an activated venv, lack the project's packages)."""
    text = script.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    delegates = re.search(r'exec bash "\$\(dirname [^)]*\)/(run_grpo|0-tiny_cpu_selfReward|0-tiny_cpu_seed_sweep)\.sh"', code)
    assert "scripts/find_python.sh" in code or delegates, f"{script.name} neither finds the venv nor delegates"
    assert not re.search(r"(^|[\s;(|&])(python3?|ray) ", code), f"{script.name} runs a bare python3 or ray"
