"""A worker process killed mid-step, inside the actor update (as the OOM killer or a node failure
would): the driver must exit non-zero within a bound, naming the dead rank and the stage, and
leave no process behind - neither workers nor the Ray helpers its ray.init started. The same
holds when the driver itself gets SIGTERM."""

import signal
import sys
import time

import psutil
import pytest

from tests.cli_driver import BackgroundDriver

pytestmark = pytest.mark.e2e


def _rank_of(process: psutil.Process) -> str | None:
    try:
        if "FSDPWorker" not in " ".join(process.cmdline()):
            return None
        return process.environ().get("RANK")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def start_driver(model: str, data: str, tmp_path, *overrides: str) -> BackgroundDriver:
    """The CLI on the tiny config in its own session; its output is collected by a thread."""
    command = [
        sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu.yaml",
        f"worker.actor.model.model_path={model}",
        f"data.train_files={data}/train.parquet",
        f"data.val_files={data}/val.parquet",
        f"trainer.save_checkpoint_path={tmp_path / 'ckpt'}",
        "trainer.max_steps=2", "trainer.val_before_train=false", "trainer.val_freq=-1",
        "data.rollout_batch_size=8", "worker.actor.global_batch_size=8", "worker.rollout.n=4", *overrides,
    ]
    return BackgroundDriver(command)


def assert_all_gone(tree: list[psutil.Process], within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while (alive := [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, [(p.pid, p.name()) for p in alive]


@pytest.mark.timeout(600)
def test_killed_worker_fails_the_run_naming_rank_and_stage_and_leaves_no_processes(
    tiny_model_dir, synthetic_data_dir, tmp_path
):
    victim: list[psutil.Process] = []

    def rank_1_in_update() -> bool:
        # Killed inside the update: rank 0 is then in an FSDP collective with it (a plain
        # ray.get of both ranks would wait on rank 0, or name rank 0's lost-peer error).
        if not victim:
            victim.extend(p for p in psutil.Process(driver.pid).children(recursive=True) if _rank_of(p) == "1")
        return bool(victim) and "update_actor" in " ".join(victim[0].cmdline())

    with start_driver(tiny_model_dir, synthetic_data_dir, tmp_path) as driver:
        driver.wait_until(rank_1_in_update, timeout_s=480, poll_s=0.02)  # start-up and the first rollout, busy machine
        tree = psutil.Process(driver.pid).children(recursive=True)
        victim[0].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        returncode = driver.wait(timeout_s=60)
        exit_s = time.monotonic() - killed_at
    output = driver.output()
    assert returncode != 0, output[-4000:]
    assert "worker rank 1 died during 'update_actor'" in output, output[-4000:]
    assert exit_s < 60
    # Workers, raylet, GCS, dashboard and runtime-env agents: everything ray.init started is gone.
    assert_all_gone(tree)


@pytest.mark.timeout(600)
def test_sigterm_while_a_reward_function_hangs_stops_the_run_and_its_ray_cluster(
    tiny_model_dir, synthetic_data_dir, tmp_path
):
    """SIGTERM (a scheduler's pre-emption, `kill`) used to end the driver at once, leaving Ray's
    raylet, GCS and agents running; now it unwinds like Ctrl-C, stops the cluster it started and
    the reward process, and says so in one line with exit code 143. The reward function is stuck
    in a C call under a bare `except:`, which nothing raised inside its process could stop."""
    marker = tmp_path / "reward_called"
    reward_file = tmp_path / "stuck_reward.py"
    reward_file.write_text(
        "import ctypes, pathlib\n\n"
        "def stuck(reward_inputs):\n"
        f"    pathlib.Path({str(marker)!r}).touch()\n"
        "    while True:\n"
        "        try:\n"
        "            ctypes.CDLL(None).sleep(3600)\n"
        "        except:  # noqa: E722\n"
        "            pass\n"
    )
    with start_driver(tiny_model_dir, synthetic_data_dir, tmp_path, f"reward.reward_function={reward_file}:stuck") as driver:
        # The driver is inside the reward stage (start-up and the first rollout on a busy machine).
        driver.wait_until(marker.exists, timeout_s=480, poll_s=0.2)
        tree = psutil.Process(driver.pid).children(recursive=True)
        assert any(_rank_of(p) is not None for p in tree) and len(tree) > 2
        lines_before = len(driver.lines)
        returncode = driver.sigterm()
    assert returncode == 128 + signal.SIGTERM, driver.output()[-4000:]
    # The one line comes last; before it only the progress bar, which redraws itself as it closes.
    after = [line for line in driver.lines[lines_before:] if line.strip()]
    assert after[-1].startswith("stopped by SIGTERM") and all(line.startswith("GRPO:") for line in after[:-1]), after
    assert_all_gone(tree)  # the reward process included
