"""The CLI as a background driver process, for end-to-end tests that act on it mid-run: kill one of
its workers, or send it SIGTERM as a scheduler's pre-emption does."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI_ENV = dict(os.environ, RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")


class BackgroundDriver:
    """`command` started in its own session (its process group is killed on leaving the `with`
    block if it is still alive, so a failed test leaves no Ray cluster behind); a thread collects
    its output into `lines`."""

    def __init__(self, command: list[str]):
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return "".join(self.lines)

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> None:
        """Polls `ready()` until it holds; fails with the output's tail if the driver exits first or
        `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert self.process.poll() is None and time.monotonic() < deadline, self.output()[-4000:]
            time.sleep(poll_s)

    def wait(self, timeout_s: float = 60) -> int:
        return self.process.wait(timeout=timeout_s)

    def sigterm(self, timeout_s: float = 60) -> int:
        """SIGTERM to the driver (not its group: the driver must stop its own workers); its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def __enter__(self) -> BackgroundDriver:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:  # only on failure: stop this test's own process group
            os.killpg(self.process.pid, signal.SIGKILL)
        self._reader.join(timeout=10)
