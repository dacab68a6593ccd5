"""The Cloud Bigtable emulator (``cbtemulator``) on a free loopback port.

In-memory and up within milliseconds: each test module or benchmark gets a
fresh one.  Clients reach it through ``BIGTABLE_EMULATOR_HOST=127.0.0.1:PORT``
(``emulator_host``); no credentials, any project and instance name.

The binary ships with the Google Cloud SDK (Debian package
``google-cloud-cli-bigtable-emulator``, or ``gcloud components install
bigtable``); ``CPS_DEV_BIGTABLE_EMULATOR`` names one explicitly.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from devstack.processes import (
    LOOPBACK,
    ManagedProcess,
    ManagedServer,
    ServiceStartError,
    free_port,
    port_accepts,
)

_SDK_ROOTS = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk",
              "/opt/google-cloud-sdk", "~/google-cloud-sdk")
_RELATIVE = "platform/bigtable-emulator/cbtemulator"
INSTALL_HINT = ("install the Bigtable emulator (Debian/Ubuntu: `apt-get install"
                " google-cloud-cli-bigtable-emulator`, or `gcloud components install bigtable`),"
                " or set CPS_DEV_BIGTABLE_EMULATOR to its cbtemulator binary")


def find_emulator_binary() -> Path | None:
    """``cbtemulator``: ``CPS_DEV_BIGTABLE_EMULATOR``, then PATH, then the usual SDK roots."""
    explicit = os.environ.get("CPS_DEV_BIGTABLE_EMULATOR")
    if explicit:
        return Path(explicit)
    on_path = shutil.which("cbtemulator")
    if on_path is not None:
        return Path(on_path)
    for root in _SDK_ROOTS:
        candidate = Path(root).expanduser() / _RELATIVE
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def emulator_binary() -> Path:
    found = find_emulator_binary()
    if found is None:
        raise ServiceStartError(f"the Bigtable emulator (cbtemulator) is missing: {INSTALL_HINT}")
    return found


class BigtableEmulator(ManagedServer):
    """``cbtemulator -host 127.0.0.1 -port N``; its data lives and dies with the process."""

    def __init__(self, port: int | None = None, *, log_dir: Path,
                 start_timeout: float = 20.0) -> None:
        self.port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.process = ManagedProcess(
            [str(emulator_binary()), "-host", LOOPBACK, "-port", str(self.port)],
            log_path=Path(log_dir) / f"bigtable-{self.port}.log",
            name=f"cbtemulator:{self.port}",
        )

    @property
    def emulator_host(self) -> str:
        """``HOST:PORT`` for ``BIGTABLE_EMULATOR_HOST``."""
        return f"{LOOPBACK}:{self.port}"

    def _ready(self) -> bool:
        # The emulator binds its gRPC port only once it serves.
        return port_accepts(LOOPBACK, self.port, timeout=0.2)
