"""Child-process lifecycle for the local servers: ports, start, readiness, stop, faults."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"

# Enough to hold the last few dozen lines of any server's log without reading a
# multi-megabyte log into memory just to report why it died.
_TAIL_BYTES = 64 * 1024


class ServiceStartError(RuntimeError):
    """A local server could not be started or never became ready."""


def free_port() -> int:
    """Return a TCP port on the loopback interface that is free right now.

    The port is released before returning, so another process could grab it
    before the caller binds it; on a dev machine or CI runner that race is rare
    enough that retrying the whole start is the better trade than port ranges.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds within ``timeout``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until ``host:port`` accepts TCP connections, or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"nothing accepted TCP connections on {host}:{port} within {timeout:.1f}s"
                f" (last error: {last_error or 'none'})"
            )
        try:
            with socket.create_connection((host, port), timeout=min(0.5, remaining)):
                return
        except OSError as exc:
            last_error = exc
        time.sleep(min(0.05, max(remaining, 0)))


def _reap_if_running(popen: subprocess.Popen[bytes]) -> None:
    # Last-resort cleanup when a ManagedProcess is garbage-collected or the
    # interpreter exits without stop(): a leaked broker would hold its port and
    # keep CI runners busy forever.
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)


class ManagedProcess:
    """One long-running child process whose output goes to a log file.

    The child runs in its own session (and so its own process group): a Ctrl-C
    in the parent's terminal then reaches only the parent, which can shut the
    servers down in order instead of having them die mid-write. Signals are sent
    to the whole group so helpers a server spawns go away with it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        if not argv:
            raise ValueError("argv must not be empty")
        self.argv: list[str] = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env: dict[str, str] | None = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self._popen: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], ManagedProcess] | None = None

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        return f"<ManagedProcess {self.name} pid={self.pid} {state} log={self.log_path}>"

    # -- state ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def alive(self) -> bool:
        """True while the process has not exited (a paused process is alive)."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        if self._popen is None:
            return None
        return self._popen.poll()

    # -- start ---------------------------------------------------------------

    def start(
        self,
        *,
        ready: Callable[[], bool] | None = None,
        timeout: float = 20.0,
        settle: float = 0.2,
    ) -> Self:
        """Spawn the process and wait until it is usable.

        With ``ready``, poll it until it returns True; without it, just make sure
        the process survives ``settle`` seconds (enough to catch a bad flag).
        If the process exits first, or ``ready`` never succeeds within
        ``timeout``, the process is killed and ``ServiceStartError`` carries the
        end of its log, which is nearly always the real reason.
        """
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append, so the log of a restarted server still shows why it went down.
        with self.log_path.open("ab") as log:
            log.write(f"\n--- devstack: starting {shlex.join(self.argv)}\n".encode())
            log.flush()
            try:
                popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ServiceStartError(f"could not execute {self.argv[0]}: {exc}") from exc
        self._popen = popen
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _reap_if_running, popen)

        try:
            self._await_ready(popen, ready, timeout, settle)
        except BaseException:
            # Whatever went wrong (a dead child, a timeout, Ctrl-C, a probe
            # bug), do not leave a half-started server behind.
            self.kill()
            raise
        return self

    def _await_ready(
        self,
        popen: subprocess.Popen[bytes],
        ready: Callable[[], bool] | None,
        timeout: float,
        settle: float,
    ) -> None:
        deadline = time.monotonic() + (timeout if ready is not None else settle)
        while True:
            if popen.poll() is not None:
                raise self._start_error(f"exited with code {popen.returncode} during startup")
            if ready is not None and ready():
                return
            if time.monotonic() >= deadline:
                if ready is None:
                    return
                raise self._start_error(f"was not ready within {timeout:.1f}s")
            time.sleep(0.05)

    def _start_error(self, what: str) -> ServiceStartError:
        return ServiceStartError(
            f"{self.name} {what}. Command: {shlex.join(self.argv)}\n"
            f"Last lines of {self.log_path}:\n{self.tail(30)}"
        )

    # -- signals -------------------------------------------------------------

    def _signal_group(self, sig: signal.Signals) -> bool:
        # Only while the leader is unreaped: once reaped its pid may be reused,
        # and signalling a recycled group could hit an unrelated process.
        if self._popen is None or self._popen.poll() is not None:
            return False
        try:
            os.killpg(self._popen.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; return the exit code.

        Returns None if the process was never started.
        """
        popen = self._popen
        if popen is None:
            return None
        if self._signal_group(signal.SIGTERM):
            # A SIGSTOPped process would sit on the pending SIGTERM forever.
            self._signal_group(signal.SIGCONT)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                popen.wait()
        return self._finish(popen)

    def kill(self) -> int | None:
        """SIGKILL the process (the crash we inject in fault tests) and reap it."""
        popen = self._popen
        if popen is None:
            return None
        self._signal_group(signal.SIGKILL)
        popen.wait()
        return self._finish(popen)

    def _finish(self, popen: subprocess.Popen[bytes]) -> int:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        code = popen.returncode
        assert code is not None
        return code

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing."""
        if not self._signal_group(signal.SIGSTOP):
            raise RuntimeError(f"{self.name} is not running")

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if not self._signal_group(signal.SIGCONT):
            raise RuntimeError(f"{self.name} is not running")

    # -- logs ----------------------------------------------------------------

    def tail(self, n_lines: int = 40) -> str:
        """The last ``n_lines`` lines of the log (empty if there is no log yet)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(0, size - _TAIL_BYTES))
                data = log.read()
        except FileNotFoundError:
            return ""
        lines = data.decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n_lines:]) if n_lines > 0 else ""

    # -- context manager -----------------------------------------------------

    def __enter__(self) -> Self:
        if self._popen is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ManagedServer:
    """Lifecycle shared by the servers in this package: one process plus a readiness probe.

    Subclasses build ``self.process`` and ``self.start_timeout`` and say when the
    server is usable in ``_ready``.
    """

    process: ManagedProcess
    start_timeout: float

    def _ready(self) -> bool:
        raise NotImplementedError

    def _before_start(self) -> None:
        """Hook for preparing files and directories before each (re)start."""

    @property
    def alive(self) -> bool:
        return self.process.alive

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def start(self) -> Self:
        self._before_start()
        self.process.start(ready=self._ready, timeout=self.start_timeout)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.process.stop(timeout)

    def kill(self) -> int | None:
        """SIGKILL: a crash with no chance to flush anything."""
        return self.process.kill()

    def restart(self) -> Self:
        """Start again on the same port and state (stopping it first if up)."""
        if self.process.alive:
            self.process.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open, requests time out (a hung server)."""
        self.process.pause()

    def resume(self) -> None:
        self.process.resume()

    def __enter__(self) -> Self:
        # Already started (``with X(...).start() as x:``) is fine too.
        return self if self.alive else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
