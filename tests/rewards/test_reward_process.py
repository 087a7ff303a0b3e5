"""User reward functions run in a process of their own, killed at reward.timeout_s whatever they do."""

import logging
import os
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from verl.rewards import RewardInput
from verl.rewards.loader import RewardFunctionError, RewardTimeoutError, load_reward_function


def _inputs(count: int) -> list[RewardInput]:
    return [
        RewardInput(response=f"response {i}", ground_truth=str(i), problem=f"problem {i}", response_length=i + 1)
        for i in range(count)
    ]


def _write(directory: Path, source: str) -> str:
    path = directory / "user_reward.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def _gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.timeout(60)
def test_a_c_level_sleep_under_a_bare_except_is_killed_at_the_timeout_with_a_notice_at_half(tmp_path, caplog):
    """libc sleep() never returns to the interpreter, and a bare `except:` swallows anything raised
    into it: only killing its process stops it."""
    path = _write(tmp_path, """
        import ctypes

        def stuck(reward_inputs):
            while True:
                try:
                    ctypes.CDLL(None).sleep(3600)
                except:  # noqa: E722 - the user code under test swallows everything
                    pass
        """)
    reward = load_reward_function(f"{path}:stuck", {}, timeout_s=2.0)
    caplog.set_level(logging.WARNING, logger="verl.rewards.reward_process")
    start = time.monotonic()
    with pytest.raises(RewardTimeoutError) as raised:
        reward(_inputs(4), batch="training step 3")
    elapsed = time.monotonic() - start
    message = str(raised.value)
    assert f"reward function '{path}:stuck' on training step 3 (4 responses) did not return within 2 s" in message
    assert "reward.timeout_s" in message and "was killed" in message
    assert 2.0 <= elapsed < 6.0
    notices = [record.getMessage() for record in caplog.records]
    assert len(notices) == 1, notices
    assert f"'{path}:stuck' on training step 3 (4 responses) is still running after 1 s" in notices[0]
    assert "killed at 2 s" in notices[0]
    pid = int(message.split("(pid ")[1].split(")")[0])
    assert _gone(pid)


def test_one_process_serves_every_call_and_a_killed_one_is_replaced(tmp_path):
    path = _write(tmp_path, """
        import os, time

        def pid_or_stall(reward_inputs):
            if reward_inputs[0].ground_truth == "stall":
                time.sleep(3600)
            return [{"overall": float(os.getpid())} for _ in reward_inputs]
        """)
    reward = load_reward_function(f"{path}:pid_or_stall", {}, timeout_s=1.0)
    first = reward(_inputs(2))[0]["overall"]
    assert reward(_inputs(3))[0]["overall"] == first != os.getpid()
    stall = RewardInput(response="r", ground_truth="stall", problem="p", response_length=1)
    with pytest.raises(RewardTimeoutError):
        reward([stall])
    assert _gone(int(first))
    replaced = reward(_inputs(1))[0]["overall"]
    assert replaced not in (first, os.getpid())
    reward.close()
    assert _gone(int(replaced))


def test_a_function_that_ends_its_process_is_an_error_naming_it_and_the_exit(tmp_path):
    path = _write(tmp_path, """
        import os

        def exits(reward_inputs):
            os._exit(3)
        """)
    reward = load_reward_function(f"{path}:exits", {}, timeout_s=10.0)
    with pytest.raises(RewardFunctionError, match=r"'.*:exits' on validation step 2 \(2 responses\) ended its process "
                                                  r"without an answer \(exit code 3\)"):
        reward(_inputs(2), batch="validation step 2")


def test_exceptions_come_back_with_their_type_and_results_that_cannot_be_sent_are_errors(tmp_path):
    path = _write(tmp_path, """
        class GraderBug(Exception):
            pass

        def raises(reward_inputs):
            raise GraderBug("no grader for this answer")

        def unpicklable(reward_inputs):
            return [{"overall": lambda: 1.0} for _ in reward_inputs]
        """)
    with pytest.raises(RewardFunctionError, match=r"raised GraderBug: no grader for this answer \(on a batch\)"
                                                  r"\nfirst failing sample: index 0 of 2") as raised:
        load_reward_function(f"{path}:raises", {}, timeout_s=10.0)(_inputs(2))
    # The function's own traceback travels with the error (for the run's log file).
    assert any("in raises" in note for note in raised.value.__cause__.__notes__)
    with pytest.raises(RewardFunctionError, match="result cannot be sent back"):
        load_reward_function(f"{path}:unpicklable", {}, timeout_s=10.0)(_inputs(1))


def test_a_relative_spec_keeps_working_after_the_working_directory_changes(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text("def score(reward_inputs):\n    return [{'overall': 2.0} for _ in reward_inputs]\n")
    monkeypatch.chdir(tmp_path)
    reward = load_reward_function("mine.py:score", {}, timeout_s=10.0)
    monkeypatch.chdir("/")  # the process starts at the first call
    assert reward(_inputs(1)) == [{"overall": 2.0}]
