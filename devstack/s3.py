"""A local S3 (moto's standalone server) to hold the Tansu broker's log."""

from __future__ import annotations

import contextlib
import http.client
import sys
from pathlib import Path
from typing import Any

from devstack.processes import LOOPBACK, ManagedProcess, ManagedServer, ServiceStartError, free_port

# moto accepts any credentials; these only have to be the same everywhere.
S3_ACCESS_KEY = "x"
S3_REGION = "us-east-1"


def moto_server_binary() -> Path:
    """``moto_server`` from the running interpreter's environment."""
    # Next to sys.executable rather than on PATH: a global moto of another
    # version on PATH would be a confusing mismatch with the boto3 we import.
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.is_file():
        raise ServiceStartError(
            f"moto_server not found at {binary}; install the dev extras into this"
            " virtualenv: `pip install -e '.[dev]'` (needs moto[server])"
        )
    return binary


def _answers_http(port: int) -> bool:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=1.0)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
    return True


class LocalS3(ManagedServer):
    """``moto_server`` on a loopback port; state lives only in its memory."""

    def __init__(
        self,
        port: int | None = None,
        *,
        log_dir: Path,
        start_timeout: float = 30.0,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.process = ManagedProcess(
            [str(moto_server_binary()), "-H", LOOPBACK, "-p", str(self.port)],
            log_path=Path(log_dir) / f"moto-{self.port}.log",
            name=f"moto_server:{self.port}",
        )

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _ready(self) -> bool:
        # moto's imports take a second or two before it answers HTTP.
        return _answers_http(self.port)

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_ACCESS_KEY,
            region_name=S3_REGION,
            # Path-style: virtual-host style would need DNS for bucket.127.0.0.1.
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        """Create ``name`` (no-op if this server already has it)."""
        s3 = self.client()
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=name)
