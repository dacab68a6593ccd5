"""One outbox publisher per database at a time, whichever process holds this lock.

PostgreSQL: a session-level advisory lock on a connection kept open for as long as
the process publishes; it is released by the server the moment that connection
(or the process) dies.  SQLite: an ``flock`` on ``<database file>.outbox.lock``,
released by the kernel when the process dies.  Either way a crashed publisher's
successor takes over within one poll interval, with no lease to wait out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

import sqlalchemy
from sqlalchemy import Connection, Engine

# An arbitrary, fixed 64-bit key for pg_try_advisory_lock ("CPSOUTBX").
ADVISORY_KEY = 0x4350534F55544258 & 0x7FFFFFFFFFFFFFFF


class PublisherLock:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._connection is not None or self._fd is not None

    def try_acquire(self) -> bool:
        if self.held:
            return True
        if self._engine.dialect.name == "postgresql":
            connection = self._engine.connect()
            got = bool(connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"),
                                          {"key": ADVISORY_KEY}).scalar())
            connection.commit()
            if got:
                self._connection = connection
            else:
                connection.close()
            return got
        path = self._lock_path()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                self._connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                         {"key": ADVISORY_KEY})
                self._connection.commit()
            self._connection.close()
            self._connection = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _lock_path(self) -> Path:
        database = self._engine.url.database
        if not database or database == ":memory:":
            # An in-memory database belongs to one process: nobody else can publish it.
            return Path(tempfile.gettempdir()) / f"cps-outbox-{os.getpid()}.lock"
        return Path(database + ".outbox.lock")
