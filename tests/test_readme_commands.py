"""Every command the README names exists and answers `--help`; on a fresh checkout (no tiny model, no data,
no checkpoints) the ones that need those fail in one line that says what to do."""

import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _readme_commands() -> list[str]:
    """Commands in the README's bash blocks and inline `bash ...` / `python3 ...` spans, one per && part."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL):
        lines += [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    prose = re.sub(r"```.*?```", "", README, flags=re.DOTALL).replace("\n", " ")
    lines += re.findall(r"`((?:bash|python3|torchrun) [^`]+)`", prose)
    commands = []
    for line in lines:
        line = line.split(" # ")[0]
        line = re.sub(r"\[[^\]]*\]", "", line)  # optional arguments written as [--flag X]
        commands += [part.strip() for part in line.split("&&") if part.strip()]
    return sorted(set(commands))


def _entry_point(command: str) -> tuple[str, str] | None:
    """("script", path) or ("module", name) a README command runs; None for pytest."""
    words = shlex.split(command)
    while re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # environment assignments before the command
        words = words[1:]
    if words[0] == "bash":
        return "script", words[1]
    if "-m" in words:
        module = words[words.index("-m") + 1]
        return None if module == "pytest" else ("module", module)
    python_script = next((word for word in words if word.endswith(".py")), None)
    assert python_script is not None, f"README command runs neither a script nor a module: {command}"
    return "script", python_script


COMMANDS = _readme_commands()
ENTRY_POINTS = sorted({entry for entry in map(_entry_point, COMMANDS) if entry is not None})


def _env() -> dict[str, str]:
    """A shell without an activated venv (no .venv/bin on PATH, no PYTHON): the entry points find the
    project's .venv themselves (scripts/find_python.sh)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHON", "VIRTUAL_ENV")}
    return dict(env, PATH="/usr/local/bin:/usr/bin:/bin", PYTHONPATH=str(REPO))


def test_the_readme_names_its_main_commands():
    names = {Path(name).name for _, name in ENTRY_POINTS}
    assert {"setup.sh", "0-tiny_cpu_selfReward.sh", "2-7b_selfReward_train.sh", "verl.trainer.main",
            "verl.trainer.sft", "model_merger.py", "2-seethink_format_eval.sh"} <= names, names


@pytest.mark.parametrize(("kind", "name"), ENTRY_POINTS, ids=[name for _, name in ENTRY_POINTS])
def test_readme_entry_point_exists_and_answers_help(kind, name, monkeypatch, capsys):
    if kind == "script" and name.endswith(".sh"):
        assert (REPO / name).is_file(), f"the README names {name}, which does not exist"
        done = subprocess.run(["bash", name, "--help"], cwd=REPO, env=_env(), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip(), f"{name} --help printed nothing"
        return
    # Python entry points run in this process (importing torch again per command would cost seconds).
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    code = 0
    try:
        if kind == "script":
            assert (REPO / name).is_file(), f"the README names {name}, which does not exist"
            runpy.run_path(str(REPO / name), run_name="__main__")
        else:
            runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit as exit_info:  # argparse exits after --help; verl.trainer.main returns
        code = exit_info.code
    assert code in (0, None)
    assert capsys.readouterr().out.strip(), f"{name} --help printed nothing"


def _fresh_checkout(tmp_path: Path) -> Path:
    """The tracked files a clone has plus the .venv `bash setup.sh` builds, without the built
    models, data, outputs and checkpoints."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("configs", "scripts", "train_examples", "validation_examples", "verl", ".venv"):
        (checkout / name).symlink_to(REPO / name)
    return checkout


def test_readme_gpu_launcher_dry_runs_on_a_fresh_checkout_without_an_activated_venv(tmp_path):
    command = next(c for c in COMMANDS if c.startswith("bash train_examples/2-7b_selfReward_train.sh"))
    assert shlex.split(command)[:2] == ["bash", "train_examples/2-7b_selfReward_train.sh"]
    done = subprocess.run(["bash", "train_examples/2-7b_selfReward_train.sh", "trainer.dry_run=true"],
                          cwd=_fresh_checkout(tmp_path), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Qwen2.5-VL-7B" in done.stdout and "(fits)" in done.stdout


def _cli_argv(prefix: str) -> list[str]:
    return shlex.split(next(c for c in COMMANDS if c.startswith(prefix)))


def _main_error(monkeypatch, tmp_path, capsys, extra: list[str], code: int = 1) -> str:
    """The one-line error the CLI example ends with (exit code `code`: 2 for a config error); its
    traceback is in the log file."""
    from verl.trainer.main import main

    monkeypatch.chdir(_fresh_checkout(tmp_path))
    argv = _cli_argv("python3 -m verl.trainer.main")[3:] + extra
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    pointer, message = capsys.readouterr().err.splitlines()
    assert pointer.startswith("(traceback of this error: ") and "Traceback" not in message
    return message


def test_readme_cli_example_on_a_fresh_checkout_says_to_build_the_tiny_model(monkeypatch, tmp_path, capsys):
    assert _main_error(monkeypatch, tmp_path, capsys, []) == (
        "error: worker.actor.model.model_path=models/tiny_qwen25vl: no such model folder: build it with "
        "`python3 scripts/make_tiny_model.py --out models/tiny_qwen25vl` (a few seconds)"
    )


def test_readme_cli_example_without_data_says_to_build_it(monkeypatch, tmp_path, capsys, tiny_model_dir):
    message = _main_error(monkeypatch, tmp_path, capsys, [f"worker.actor.model.model_path={tiny_model_dir}"], code=2)
    assert message.startswith("error: data file not found: data/tiny_shapes/train.parquet")
    assert "python3 scripts/make_synthetic_dataset.py --out data/tiny_shapes" in message


def test_readme_eval_of_an_unmerged_model_fails_in_one_line_from_the_shell(tmp_path):
    command = next(c for c in COMMANDS if c.startswith("bash validation_examples/tiny_cpu.sh"))
    done = subprocess.run(command, shell=True, cwd=_fresh_checkout(tmp_path), env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --model_path=outputs/merged: no such model folder: merge a checkpoint into it "
        "(scripts/model_merger.py --target_dir outputs/merged) or pass --model_path=DIR"
    )


def test_readme_merge_of_a_missing_checkpoint_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(_fresh_checkout(tmp_path))
    monkeypatch.setattr(sys, "argv", _cli_argv("python3 scripts/model_merger.py")[1:])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "scripts/model_merger.py"), run_name="__main__")
    assert exit_info.value.code == 1
    pointer, message = capsys.readouterr().err.splitlines()
    assert pointer.startswith("(traceback of this error: ") and "Traceback" not in message
    assert message.startswith("error: checkpoint directory ")
    assert message.endswith("checkpoints/run/global_step_30/actor does not exist")


def test_readme_suite_command_on_a_missing_model_says_to_merge_it(monkeypatch, tmp_path):
    from verl.eval.suite import main
    from verl.utils.model_source import ModelPathError

    command = next(c for c in COMMANDS if c.startswith("bash validation_examples/2-seethink_format_eval.sh"))
    monkeypatch.chdir(_fresh_checkout(tmp_path))
    with pytest.raises(ModelPathError, match=r"^--model_path=outputs/merged: no such model folder: merge a checkpoint"):
        main(["--model_path", shlex.split(command)[2], "--engine", "hf"])
