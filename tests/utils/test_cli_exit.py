"""SIGTERM ends a driver with exit code 143 and one line wherever it waits: on Ray workers (where
Ray's wait used to turn it into a silent exit code 1) and on a stuck reward function's process."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

RAY_DRIVER = """
import sys, time
from verl.utils.cli_exit import exit_cleanly, prepare_driver, reclaim_sigterm
prepare_driver()
import ray
from verl.single_controller.worker_group import RayWorkerGroup, ResourcePool

class Sleeper:
    def master_address(self):
        return "127.0.0.1", 0
    def init_distributed(self, address, port):
        pass
    def nap(self):
        time.sleep(3600)

with exit_cleanly(sys.argv[1]):
    ray.init(num_cpus=1, include_dashboard=False)
    reclaim_sigterm()  # as verl.trainer.main does
    try:
        group = RayWorkerGroup(Sleeper, ResourcePool(nnodes=1, procs_per_node=1, gpus_per_proc=0, cpus_per_proc=1))
        print("WAITING", file=sys.stderr, flush=True)
        group.execute_all("nap")
    finally:
        ray.shutdown()
"""

REWARD_DRIVER = """
import sys
from verl.rewards import RewardInput
from verl.rewards.loader import load_reward_function
from verl.utils.cli_exit import exit_cleanly, prepare_driver
prepare_driver()

reward = load_reward_function(sys.argv[2], {}, timeout_s=900.0)
with exit_cleanly(sys.argv[1]):
    try:
        reward([RewardInput(response="r", ground_truth="1", problem="p", response_length=1)], batch="training step 1")
    finally:
        reward.close()
"""


def _stop_with_sigterm(script: str, tmp_path: Path, *args: str, ready) -> tuple[int, list[str], list[psutil.Process]]:
    """Runs the driver `script`, sends SIGTERM once `ready()` holds; returns (exit code, its
    stderr lines from the SIGTERM on, the processes it had started)."""
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        driver = subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "run"), *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
            stderr=stderr, start_new_session=True, env={k: v for k, v in os.environ.items() if k != "VERL_DEBUG"},
        )
    try:
        deadline = time.monotonic() + 120
        while not ready(stderr_path.read_text()):
            assert driver.poll() is None and time.monotonic() < deadline, stderr_path.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(0.5)  # inside the wait
        children = psutil.Process(driver.pid).children(recursive=True)
        sent_at = len(stderr_path.read_text())
        driver.send_signal(signal.SIGTERM)
        returncode = driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    return returncode, stderr_path.read_text()[sent_at:].splitlines(), children


def _assert_gone(processes: list[psutil.Process], within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while (alive := [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert not alive, [(p.pid, p.name()) for p in alive]


@pytest.mark.timeout(180)
def test_sigterm_while_the_driver_waits_on_ray_workers_exits_143_with_one_line(tmp_path):
    returncode, lines, started = _stop_with_sigterm(RAY_DRIVER, tmp_path, ready=lambda err: "WAITING" in err)
    assert returncode == 143, lines
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM: the run and the processes it started are shut down"), lines
    assert "worker_group.py" in (tmp_path / "run" / "error.log").read_text()  # where it was waiting
    assert len(started) > 2  # raylet, GCS, the worker...
    _assert_gone(started)  # ...all stopped by the clean-up


@pytest.mark.timeout(60)
def test_sigterm_while_a_reward_function_sleeps_in_c_under_a_bare_except_exits_143_and_kills_it(tmp_path):
    marker = tmp_path / "called"
    reward_file = tmp_path / "stuck_reward.py"
    reward_file.write_text(textwrap.dedent(f"""
        import ctypes, pathlib

        def stuck(reward_inputs):
            pathlib.Path({str(marker)!r}).touch()
            while True:
                try:
                    ctypes.CDLL(None).sleep(3600)
                except:  # noqa: E722 - swallows whatever is raised into it
                    pass
        """))
    returncode, lines, started = _stop_with_sigterm(
        REWARD_DRIVER, tmp_path, f"{reward_file}:stuck", ready=lambda err: marker.exists()
    )
    assert returncode == 143
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM"), lines
    assert started  # the reward process
    _assert_gone(started, within_s=5)
