"""How a command-line run ends when it does not finish: one message on stderr and an exit code.

- An error: ``error: <message>`` and exit code 1 (2 for a configuration error). The traceback is
  appended to the run's log file (``<run folder>/error.log``), which the message names; with
  ``VERL_DEBUG=1`` it is printed as well. A user error (config, data, reward function, checkpoint,
  model) says what to fix; a traceback in front of it only buries the message.
- SIGTERM (``kill``, a scheduler's pre-emption): one line and exit code 143, wherever the driver
  was waiting. Ray's C++ wait turns the handler's ``SystemExit(143)`` into ``SystemExit(1)``, and
  ``ray.init`` installs handlers of its own, so a record that SIGTERM came decides the exit code,
  not the exception that arrives.
- Ctrl-C: one line and exit code 130.

`finally` blocks inside (Ray shutdown, worker and reward processes) run before the message.
"""

from __future__ import annotations

import datetime
import faulthandler
import io
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

DEBUG_ENV = "VERL_DEBUG"
"""Set to 1 to print the traceback of an error on the console too."""
ERROR_LOG = "error.log"
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM
INTERRUPT_EXIT_CODE = 128 + signal.SIGINT


def prepare_driver() -> None:
    """For a driver process, before Ray is first imported: Ray's C++ handler would print a stack
    dump on SIGTERM, which `exit_cleanly` reports in one line (it reads this variable on import;
    workers get it back as "0" through the runtime env). Python's own report of a crash (SIGSEGV,
    SIGABRT) takes its place in the driver."""
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        faulthandler.enable()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # a stderr without a file (captured)
        pass


@contextmanager
def exit_cleanly(log_dir: str, usage_errors: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Runs the body; an exception out of it becomes the message and exit code above (SystemExit).
    ``log_dir``: the run's folder, where ``error.log`` goes; ``usage_errors``: exit code 2."""
    global _watch
    watch = _watch = _SigtermWatch()
    try:
        yield
    except BaseException as error:  # noqa: BLE001 - every way out is reported in one line
        if watch.received():
            log = _append_traceback(log_dir, error, "stopped by SIGTERM")
            _say(f"stopped by SIGTERM: the run and the processes it started are shut down (where it was: {log})", error)
            raise SystemExit(SIGTERM_EXIT_CODE) from None
        if isinstance(error, KeyboardInterrupt):
            _say("interrupted (Ctrl-C): the run and the processes it started are shut down", error)
            raise SystemExit(INTERRUPT_EXIT_CODE) from None
        if isinstance(error, SystemExit):
            raise
        log = _append_traceback(log_dir, error, "error")
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exception(error, file=sys.stderr)
        # The message last, where it is seen; the line before says where its traceback is.
        _say(f"(traceback of this error: {log}; {DEBUG_ENV}=1 prints it here too)\nerror: {describe(error)}", error)
        raise SystemExit(2 if isinstance(error, usage_errors) else 1) from None
    finally:
        _watch = None
        watch.close()


def reclaim_sigterm() -> None:
    """Puts `exit_cleanly`'s SIGTERM handler back after code that installs its own: `ray.init`
    does (one that exits with code 1 and no message)."""
    if _watch is not None:
        _watch.install()


class _SigtermWatch:
    """SIGTERM raises SystemExit(143) in the main thread, so `finally` blocks clean up as for
    Ctrl-C; a second SIGTERM during that clean-up is ignored. Whether SIGTERM came is also read
    from a wakeup pipe, which Python's C-level handler writes each signal's number to whoever's
    Python handler runs: `ray.init` replaces the handler while it starts the cluster."""

    def __init__(self):
        self.main_thread = threading.current_thread() is threading.main_thread()
        self.terminated = False
        self.previous_handler = signal.getsignal(signal.SIGTERM)
        self.reader = self.writer = self.previous_wakeup_fd = None
        if self.main_thread:  # signals are handled in the main thread only
            self.reader, self.writer = os.pipe()
            os.set_blocking(self.reader, False)
            os.set_blocking(self.writer, False)
            self.previous_wakeup_fd = signal.set_wakeup_fd(self.writer, warn_on_full_buffer=False)
            self.install()

    def install(self) -> None:
        if self.main_thread:
            signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame) -> None:
        if not self.terminated:
            self.terminated = True
            raise SystemExit(SIGTERM_EXIT_CODE)

    def received(self) -> bool:
        while not self.terminated and self.reader is not None:
            try:
                numbers = os.read(self.reader, 4096)
            except BlockingIOError:
                break
            self.terminated = signal.SIGTERM in numbers
        return self.terminated

    def close(self) -> None:
        if self.main_thread:
            signal.signal(signal.SIGTERM, self.previous_handler)
            signal.set_wakeup_fd(self.previous_wakeup_fd, warn_on_full_buffer=False)
            os.close(self.reader)
            os.close(self.writer)


_watch: _SigtermWatch | None = None


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def describe(error: BaseException) -> str:
    """The message of an error the project raised (written for the user); the type and message of
    one raised inside a library (``KeyError: 'x'`` needs its type to mean anything)."""
    frames = traceback.extract_tb(error.__traceback__)
    raised_here = bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)
    if raised_here and str(error):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _append_traceback(log_dir: str, error: BaseException, what: str) -> str:
    """Appends the traceback to ``log_dir/error.log`` (a temporary file if that cannot be written)
    and returns the file's path."""
    header = f"==== {datetime.datetime.now().isoformat(timespec='seconds')} {what} in {' '.join(sys.argv)} (pid {os.getpid()})\n"
    text = header + "".join(traceback.format_exception(error))
    for path in (os.path.join(log_dir, ERROR_LOG), os.path.join(tempfile.gettempdir(), f"verl-error-{os.getpid()}.log")):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as log:
                log.write(text)
            return path
        except OSError:
            continue
    return "not written: neither the run folder nor the temporary folder is writable"


def _say(line: str, error: BaseException) -> None:
    """Prints the verdict last: the run's own output first, including what its objects print
    when the error's frames let go of them (a progress bar closes and redraws itself)."""
    traceback.clear_frames(error.__traceback__)
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
