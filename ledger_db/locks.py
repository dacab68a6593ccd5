"""Process-wide exclusive locks on a ledger database, released when the holder dies.

PostgreSQL: a session-level advisory lock on a connection kept open while the lock is
held; the server releases it the moment that connection (or the process) dies.
SQLite: an ``flock`` on ``<database file>.<name>.lock``, released by the kernel when the
process dies.  Either way a SIGKILLed holder leaves no lease to wait out: its successor
gets the lock on its next try.  Used for one outbox publisher per database and for one
billing run at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from pathlib import Path

import sqlalchemy
from sqlalchemy import Connection, Engine


class DatabaseLock:
    def __init__(self, engine: Engine, name: str, advisory_key: int) -> None:
        self._engine = engine
        self._name = name
        self._key = advisory_key & 0x7FFFFFFFFFFFFFFF
        self._connection: Connection | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._connection is not None or self._fd is not None

    def try_acquire(self) -> bool:
        if self.held:
            return True
        if self._engine.dialect.name == "postgresql":
            return self._try_advisory()
        fd = os.open(self.lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self, timeout_s: float, poll_s: float = 0.2) -> bool:
        """Try until ``timeout_s`` has passed (0: once); whether the lock is now held."""
        deadline = time.monotonic() + timeout_s
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True

    def _try_advisory(self) -> bool:
        connection = self._engine.connect()
        got = bool(connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"),
                                      {"key": self._key}).scalar())
        connection.commit()
        if got:
            self._connection = connection
        else:
            connection.close()
        return got

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                self._connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                         {"key": self._key})
                self._connection.commit()
            self._connection.close()
            self._connection = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def lock_path(self) -> Path:
        database = self._engine.url.database
        if not database or database == ":memory:":
            # An in-memory database belongs to one process: nobody else can reach it.
            return Path(tempfile.gettempdir()) / f"cps-{self._name}-{os.getpid()}.lock"
        return Path(f"{database}.{self._name}.lock")
