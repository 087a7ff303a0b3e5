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
import torch

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


# ---- the README's "How to extend" examples, run against the code --------------------------------

PYTHON_EXAMPLES = re.findall(r"```python\n(.*?)```", README, re.DOTALL)


def _example(name: str) -> str:
    """The README's python block that defines `name`."""
    found = [block for block in PYTHON_EXAMPLES if f"def {name}(" in block]
    assert len(found) == 1, f"the README has no (or more than one) python example defining {name}"
    return found[0]


def test_the_readme_has_an_extension_example_for_a_reward_an_estimator_and_a_policy_loss():
    assert len(PYTHON_EXAMPLES) == 3
    for name in ("length_penalised", "mean_centred", "reinforce"):
        _example(name)


def test_readme_reward_example_loads_as_the_readme_says_and_scores(tmp_path, monkeypatch):
    from verl.rewards import RewardInput
    from verl.rewards.loader import load_reward_function

    (tmp_path / "my_reward.py").write_text(_example("length_penalised"))
    spec = re.search(r"`reward\.reward_function=([^`]+)`", README).group(1)
    monkeypatch.chdir(tmp_path)
    reward = load_reward_function(spec, {"per_token": 0.01})
    right = RewardInput(response="so \\boxed{4}", ground_truth="4", problem="2 + 2?", response_length=10)
    wrong = RewardInput(response="so \\boxed{5}", ground_truth="4", problem="2 + 2?", response_length=20)
    assert reward([right, wrong]) == [{"overall": 0.9, "accuracy": 1.0}, {"overall": -0.2, "accuracy": 0.0}]


@pytest.fixture
def registries():
    """The estimator and policy-loss tables as they were, restored after an example adds to them."""
    from verl.algorithms import core_algos

    before = dict(core_algos.ADVANTAGE_ESTIMATORS), dict(core_algos.POLICY_LOSSES)
    yield core_algos
    for table, saved in zip((core_algos.ADVANTAGE_ESTIMATORS, core_algos.POLICY_LOSSES), before):
        table.clear()
        table.update(saved)


def _config(*overrides: str):
    from verl.trainer.config import PPOConfig, load_config

    return load_config(PPOConfig, None, ["worker.actor.model.model_path=m", "data.train_files=t.parquet", *overrides])


def test_readme_estimator_example_registers_a_valid_choice_equal_to_dr_grpo(registries):
    exec(_example("mean_centred"), {})
    _config("algorithm.adv_estimator=mean_centred").validate()  # the config accepts the new key
    rewards = torch.zeros(6, 4)
    rewards[torch.arange(6), torch.tensor([3, 1, 2, 3, 0, 2])] = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0, 2.0])
    mask = (torch.arange(4)[None, :] <= torch.tensor([3, 1, 2, 3, 0, 2])[:, None]).float()
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    advantages, _ = registries.compute_advantages("mean_centred", rewards, mask, groups)
    dr_grpo, _ = registries.compute_advantages("grpo", rewards, mask, groups, norm_adv_by_std=False)
    torch.testing.assert_close(advantages, dr_grpo)


def test_readme_policy_loss_example_registers_a_valid_choice_with_the_reinforce_gradient(registries):
    exec(_example("reinforce"), {})
    _config("worker.actor.policy_loss=reinforce").validate()
    log_probs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, float("-inf"), -9.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, metrics = registries.compute_policy_loss_by_name(
        "reinforce", log_probs.detach(), log_probs, advantages, mask, 0.2, 0.3, 3.0, "token-mean"
    )
    loss.backward()
    assert metrics == {}
    torch.testing.assert_close(loss, torch.tensor((3.5 - 0.6) / 4))  # -mean(A * log pi) over 4 tokens
    torch.testing.assert_close(log_probs.grad, -advantages * mask / 4)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = next(c for c in COMMANDS if "pytest" in c)
    assert "bash setup.sh && " + test_command in (REPO / ".ci/run").read_text()
