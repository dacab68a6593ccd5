"""Alembic environment of the ledger: ``ledger_db.migrate`` hands it an open connection.

Run from the ``alembic`` command line instead, it connects to ``sqlalchemy.url`` of the
ini file or, without one, to ``CPS_DATABASE_URL``.  SQLite gets batch mode, so that later
migrations can alter tables (SQLite's ALTER TABLE cannot drop or change columns).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from ledger_db.engine import connect
from ledger_db.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = connect(context.config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("ledger_db migrations run online only (ledger_db.migrate)")
_main()
