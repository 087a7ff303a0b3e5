"""One run per checkpoint folder: the driver holds ROOT/run.lock for the run's lifetime.

    ROOT/run.lock   {"pid": 4242, "host": "node-3", "started": "2025-01-31 10:02:07", "start_time": 1738317727.4}
                    (empty once the run that held it ended cleanly)

The lock is an exclusive `flock` on that file, which the kernel drops when its process dies, even
by SIGKILL; the file's content names the holder. A second run whose `flock` fails stops at
start-up naming the folder and the holder. A run that gets the lock while the file still names
another holder took over from a run that died without releasing it, and says so, naming that
run and why it is known dead: on this host its pid is gone or belongs to a process started at
another time (pid, host and start time together identify a process).

The file is never deleted (a delete between another run's open and its flock would let two runs
each lock a different file); releasing empties it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass

from verl.utils.checkpoint import CheckpointError, naming_write_errors

LOCK_FILE = "run.lock"
# A run that has just taken the lock writes its name into the file right after: a second run
# that finds the file still empty waits this long for it, so its message can name the holder.
HOLDER_WRITE_GRACE_S = 2.0


class FolderInUseError(CheckpointError):
    """Another live run holds the checkpoint folder."""


def process_start_time(pid: int) -> float | None:
    """When process `pid` of this host started (epoch seconds, from /proc); None if none runs."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Field 22, counted after the parenthesised command name (which may hold spaces).
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    started: str  # the process's start, local time, for people
    start_time: float  # the process's start, epoch seconds, to tell a reused pid apart

    @classmethod
    def this_process(cls) -> LockHolder:
        start = process_start_time(os.getpid())
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)), start)

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}"

    def why_dead(self) -> str:
        """Why a holder whose lock the kernel released is known to be gone (for the take-over line)."""
        if self.host != socket.gethostname():
            return f"its lock on host {self.host} was released without the run ending cleanly"
        start = process_start_time(self.pid)
        if start is None:
            return "that process is no longer running"
        if abs(start - self.start_time) > 2.0:  # /proc's btime is whole seconds and jitters
            return f"pid {self.pid} now belongs to another process (started {time.ctime(start)})"
        return "it no longer holds the lock"


def _read_holder(fd: int) -> LockHolder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    if not text:
        return None
    try:
        return LockHolder(**json.loads(text))
    except (ValueError, TypeError):
        return LockHolder(pid=-1, host="?", started=f"unreadable lock content {text[:80]!r}", start_time=0.0)


class CheckpointFolderLock:
    """`with CheckpointFolderLock(root):` holds root/run.lock (see the module docstring)."""

    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        with naming_write_errors(self.path):  # a folder this run may not write to: named, with the OS cause
            os.makedirs(self.root, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._wait_for_holder_name(fd)
            os.close(fd)
            named = holder.describe() if holder is not None else "a process that has not written its name yet"
            raise FolderInUseError(
                f"checkpoint folder {self.root} is in use by another run ({named}); two runs in one folder would "
                f"mix their checkpoints and metrics. Wait for it to end, stop it, or set trainer.save_checkpoint_path "
                "to another folder"
            ) from None
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                print(
                    f"WARNING: {self.path}: this file system does not support locks ({errno.errorcode[error.errno]}): "
                    "a second run on this folder would not be stopped", flush=True,
                )
                return
            raise
        previous = _read_holder(fd)
        if previous is not None:
            print(
                f"checkpoint folder {self.root}: taking over the lock of a run that did not release it "
                f"({previous.describe()}): {previous.why_dead()}", flush=True,
            )
        me = json.dumps(asdict(LockHolder.this_process()))
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        os.fsync(fd)
        self._fd = fd

    @staticmethod
    def _wait_for_holder_name(fd: int) -> LockHolder | None:
        deadline = time.monotonic() + HOLDER_WRITE_GRACE_S
        while (holder := _read_holder(fd)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return holder

    def release(self) -> None:
        """Empties the file (this run ended cleanly) and drops the lock; safe to call twice."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> CheckpointFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
