"""verl.utils.folder_lock: one run per checkpoint folder, with real processes: two started at
once (one gets the folder, the other is told who has it), and a holder killed with SIGKILL
(its lock is taken over with a line naming it)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from verl.utils.folder_lock import LOCK_FILE, CheckpointFolderLock, FolderInUseError, LockHolder

REPO_ROOT = Path(__file__).resolve().parents[2]
# A process that takes the lock, says so, and holds it until its stdin is closed.
HOLDER = textwrap.dedent("""
    import sys
    from verl.utils.folder_lock import CheckpointFolderLock, FolderInUseError
    try:
        with CheckpointFolderLock(sys.argv[1]):
            print("locked", flush=True)
            sys.stdin.read()
    except FolderInUseError as error:
        print(f"refused: {error}", flush=True)
""")


def _holder(root: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


@pytest.mark.timeout(60)
def test_two_runs_started_at_once_only_one_gets_the_folder(tmp_path):
    processes = [_holder(tmp_path) for _ in range(2)]
    # Each says whether it got the folder before either lets go of it.
    outputs = {process.pid: process.stdout.readline().strip() for process in processes}
    for process in processes:
        process.communicate("", timeout=30)
    winners = [pid for pid, out in outputs.items() if out == "locked"]
    losers = [pid for pid, out in outputs.items() if out.startswith("refused")]
    assert len(winners) == 1 and len(losers) == 1, outputs
    message = outputs[losers[0]]
    assert f"checkpoint folder {tmp_path} is in use by another run (pid {winners[0]} on host {socket.gethostname()}, started " in message
    assert "trainer.save_checkpoint_path" in message
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released cleanly by the winner


@pytest.mark.timeout(60)
def test_a_lock_left_by_kill_9_is_taken_over_with_a_line_naming_it(tmp_path, capsys):
    process = _holder(tmp_path)
    assert process.stdout.readline().strip() == "locked"
    left_behind = LockHolder(**json.loads((tmp_path / LOCK_FILE).read_text()))
    assert left_behind.pid == process.pid and left_behind.host == socket.gethostname()
    with pytest.raises(FolderInUseError):  # alive: refused
        CheckpointFolderLock(str(tmp_path)).acquire()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with CheckpointFolderLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert capsys.readouterr().out.strip() == (
        f"checkpoint folder {tmp_path}: taking over the lock of a run that did not release it "
        f"({left_behind.describe()}): that process is no longer running"
    )


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path, capsys):
    # The file names this very process but with another start time: its pid was reused.
    stale = LockHolder(os.getpid(), socket.gethostname(), "2001-01-01 00:00:00", time.time() - 86400)
    (tmp_path / LOCK_FILE).write_text(json.dumps(stale.__dict__))
    with CheckpointFolderLock(str(tmp_path)):
        pass
    assert f"pid {os.getpid()} now belongs to another process" in capsys.readouterr().out


def test_a_cleanly_released_lock_is_taken_without_a_word(tmp_path, capsys):
    with CheckpointFolderLock(str(tmp_path / "new")):
        pass
    with CheckpointFolderLock(str(tmp_path / "new")):
        pass
    assert capsys.readouterr().out == ""
