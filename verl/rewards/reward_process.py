"""A user reward function run in a child process of its own, so that a call past its time limit
can be ended for certain.

A timeout raised inside the caller's process cannot stop arbitrary user code: a long C call
does not return to the interpreter, and a bare ``except:`` swallows whatever is raised into it
(SIGTERM's ``SystemExit`` included). A separate process is ended with SIGKILL, which nothing in
it can catch. The process is started once and serves call after call over a socket; only a
kill, or its death, makes the next call start a new one. It is a fresh interpreter that imports
only this module and the reward function: none of the caller's threads, Ray connections or CUDA
state, and not the caller's ``__main__`` either (multiprocessing's spawn would re-import it, which
for ``verl.trainer.main`` means torch: ~2 s and ~700 MiB). It dies with its parent
(PR_SET_PDEATHSIG), so a driver that is itself killed leaves no reward process behind.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import traceback
import weakref
from multiprocessing.connection import Connection
from typing import Any

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class RewardProcessError(RuntimeError):
    """The reward process ended without answering (a crash, an ``os._exit``, the OOM killer)."""


class RewardProcessTimeout(RuntimeError):
    """A call did not return within its limit; the process running it (``pid``) was killed."""

    def __init__(self, message: str, pid: int):
        super().__init__(message)
        self.pid = pid


class RaisedInRewardProcess(Exception):
    """An exception of the reward function, re-raised in the caller. ``type_name`` is its class
    (the class itself may not exist, or unpickle, here); its traceback is attached as a note."""

    def __init__(self, type_name: str, message: str, remote_traceback: str):
        super().__init__(message)
        self.type_name = type_name
        self.add_note(f"in the reward process:\n{remote_traceback.rstrip()}")


class RewardProcess:
    """Runs ``function(inputs, **kwargs)`` for the function that ``resolve(spec)`` names, one call
    at a time, in a child process; ``call`` waits at most ``timeout_s`` for each.

    ``resolve`` must be importable by reference (a module-level function): the child is a fresh
    interpreter and looks the function up itself, since a function imported from a user's file
    cannot be pickled by reference.
    """

    def __init__(self, resolve: Any, spec: str, kwargs: dict[str, Any]):
        self.resolve = resolve
        self.spec = spec
        self.kwargs = kwargs
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._stop = None  # kills the process: at close(), at exit, or when this object is collected
        self._lock = threading.Lock()

    def call(self, inputs: Any, timeout_s: float, what: str) -> Any:
        """The function's result for ``inputs``. ``what`` names the call in messages. Raises
        RewardProcessTimeout (the process is killed), RewardProcessError (it died) or
        RaisedInRewardProcess (the function raised). After half of ``timeout_s`` a warning says
        what is still running, so a long limit is not a long silence."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            try:
                self._connection.send(inputs)
                reply = self._wait(timeout_s, what)
            except BaseException:
                # A timeout, SIGTERM or Ctrl-C in the caller: the child may still be inside the call,
                # and its late reply must not answer the next one.
                self.close()
                raise
        if reply[0] == "raised":
            raise RaisedInRewardProcess(*reply[1:])
        return reply[1]

    def _wait(self, timeout_s: float, what: str) -> tuple:
        half = timeout_s / 2
        if not self._connection.poll(half):
            logger.warning(
                "%s is still running after %.3g s (reward process pid %d); it is killed at %g s",
                what, half, self._process.pid, timeout_s,
            )
            if not self._connection.poll(timeout_s - half):  # the caller kills the process
                raise RewardProcessTimeout(f"{what} did not return within {timeout_s:g} s", self._process.pid)
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                pass
            raise RewardProcessError(
                f"{what} ended its process without an answer ({_describe_exit(self._process.returncode)})"
            ) from None

    def _start(self) -> None:
        self.close()
        parent_end, child_end = socket.socketpair()
        # The caller's import path, so the child finds this package and what the function imports.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        process = subprocess.Popen(
            [sys.executable, "-c", f"from verl.rewards.reward_process import serve; serve({child_end.fileno()})"],
            pass_fds=(child_end.fileno(),), env=env,
        )
        child_end.close()
        connection = Connection(parent_end.detach())
        self._process, self._connection = process, connection
        self._stop = weakref.finalize(self, _kill, process, connection)
        _RUNNING.add(self)
        connection.send((self.resolve, self.spec, self.kwargs, os.getpid()))

    def close(self) -> None:
        """Kills the process (if any); the next call starts a new one."""
        if self._stop is not None:
            self._stop()
        self._process = self._connection = self._stop = None


_RUNNING: weakref.WeakSet[RewardProcess] = weakref.WeakSet()


def _close_all() -> None:
    for running in list(_RUNNING):
        running.close()


atexit.register(_close_all)  # a process still running at exit is killed, not left in a stuck call


def _kill(process: subprocess.Popen, connection: Connection) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    connection.close()


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def serve(fd: int) -> None:
    """The child's loop on the socket ``fd``: the function to load first, then one call per
    message until the parent closes its end."""
    connection = Connection(fd)
    resolve, spec, kwargs, parent_pid = connection.recv()
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the parent handles it and kills this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        function, load_error = resolve(spec), None
    except BaseException as error:  # reported on the first call
        function, load_error = None, error
    while True:
        try:
            inputs = connection.recv()
        except EOFError:
            return
        try:
            if load_error is not None:
                raise load_error
            reply: tuple = ("ok", function(inputs, **kwargs))
        except BaseException as error:  # a reward function's SystemExit is its failure too
            reply = ("raised", type(error).__name__, str(error), traceback.format_exc())
        try:
            connection.send(reply)
        except Exception as error:  # a result that cannot be pickled
            connection.send((
                "raised", type(error).__name__, f"its result cannot be sent back to the trainer: {error}",
                traceback.format_exc(),
            ))
