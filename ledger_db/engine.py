"""Opening the ledger database and migrating it.

``CPS_DATABASE_URL`` names the database (default ``sqlite:///var/ledger.db``, relative to
the working directory, its directory created on first use):

* **SQLite**, the embedded default: every connection runs in WAL mode (readers never
  block the writer), enforces foreign keys and waits up to ``SQLITE_BUSY_TIMEOUT_MS``
  for a lock instead of failing at once.  pysqlite's own transaction handling is
  switched off so that ``BEGIN`` is sent when SQLAlchemy begins (reads and writes of a
  transaction see one snapshot, and DDL in migrations is transactional); a connection
  with the execution option ``ledger_begin="IMMEDIATE"`` takes the write lock at BEGIN,
  which writers that read first use to avoid SQLITE_BUSY on the lock upgrade.
* **PostgreSQL** in production, through psycopg 3: ``postgresql+psycopg://user@host/db``
  (a bare ``postgresql://`` URL is read as psycopg 3 too; psycopg2 is not installed).
  Sessions run with ``plan_cache_mode = force_custom_plan`` (see ``_postgres_session``).

``migrate(url)`` is ``alembic upgrade head`` with the migrations shipped inside this
package (no alembic.ini needed); ``schema_diffs(engine)`` is ``alembic check``: what
differs between the tables in ``ledger_db.schema`` and the database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import alembic.command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError

from contracts.settings import load_settings
from ledger_db.schema import metadata

DEFAULT_DATABASE_URL = "sqlite:///var/ledger.db"
SQLITE_BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class DatabaseUrlError(ValueError):
    """A database URL this package cannot use; the message says why."""


class LedgerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CPS_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL

    @field_validator("database_url")
    @classmethod
    def _usable(cls, value: str) -> str:
        parse_url(value)
        return value


def database_problem(err: Exception) -> str:
    """The first line of what the database driver said (for one-line CLI errors)."""
    return str(getattr(err, "orig", None) or err).strip().splitlines()[0]


def database_url() -> str:
    """``CPS_DATABASE_URL`` or the default; raises ``contracts.settings.ConfigError``."""
    return load_settings(LedgerSettings).database_url


def parse_url(url: str | URL) -> URL:
    """The SQLAlchemy URL for ``url``, or ``DatabaseUrlError`` naming the problem."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError("not a database URL (expected sqlite:///PATH or "
                               "postgresql+psycopg://USER@HOST:PORT/DB)") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise DatabaseUrlError(f"unsupported database {parsed.drivername!r} (sqlite or "
                               "postgresql+psycopg)")
    return parsed


def connect(url: str | URL | None = None, **engine_options: Any) -> Engine:
    """An engine on ``url`` (default: ``CPS_DATABASE_URL``), set up as described above."""
    parsed = parse_url(database_url() if url is None else url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, engine_options)
    engine_options.setdefault("pool_pre_ping", True)
    engine = create_engine(parsed, **engine_options)
    event.listen(engine, "connect", _postgres_session)
    return engine


def _postgres_session(dbapi_connection: Any, _record: object) -> None:
    # psycopg prepares a statement run 5 times on a connection, and PostgreSQL then
    # switches to a generic plan chosen without the parameters' values.  For
    # ``order_id = ANY($1)`` that plan is often a sequential scan comparing every row
    # with every array element (measured: 65 ms instead of 1 ms per 1,000 ids), and it
    # sticks for the connection's life, however much the table grows.  Custom plans cost
    # ~0.1 ms of planning per statement and always see the real ids.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_custom_plan")
    dbapi_connection.commit()


def _sqlite_engine(url: URL, engine_options: dict[str, Any]) -> Engine:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **engine_options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None  # we send BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # WAL + NORMAL: a commit is durable at the next checkpoint; a power cut can lose
        # the last transactions but never corrupts the database.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("ledger_begin", "")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")

    return engine


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


# pg_advisory_xact_lock key held while migrating ("CPSMIGRA").
MIGRATION_LOCK_KEY = 0x4350534D49475241


def migrate(url: str | URL | Engine | None = None, revision: str = "head") -> str | None:
    """``alembic upgrade <revision>`` on ``url`` (default ``CPS_DATABASE_URL``).

    Returns the database's revision afterwards.
    """
    engine = url if isinstance(url, Engine) else connect(url)
    try:
        with engine.connect() as conn:
            # Several processes starting at once on a fresh database: one migrates,
            # the others wait for its commit and then find nothing to do.
            conn.execution_options(ledger_begin="IMMEDIATE")
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)",
                                         {"key": MIGRATION_LOCK_KEY})
                alembic.command.upgrade(_alembic_config(conn), revision)
        return current_revision(engine)
    finally:
        if engine is not url:
            engine.dispose()


def downgrade(engine: Engine, revision: str) -> None:
    """``alembic downgrade <revision>`` (tests and operators rolling back a release)."""
    with engine.begin() as conn:
        alembic.command.downgrade(_alembic_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def schema_diffs(engine: Engine) -> list[Any]:
    """What ``alembic check`` would complain about: differences between
    ``ledger_db.schema`` and the database (types included); empty when they agree."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))
