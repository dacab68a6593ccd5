"""The ledger database: one schema shared by attribution, billing and the back-end.

    from ledger_db import connect, migrate, schema
    engine = connect()                  # CPS_DATABASE_URL, default sqlite:///var/ledger.db
    migrate(engine)                     # alembic upgrade head, migrations shipped here
    with engine.begin() as conn:
        conn.execute(schema.shops.insert(), [...])

``ledger_db.schema`` documents the tables, ``ledger_db.engine`` the connection set-up,
``ledger_db.master_data`` the master-data operations and rules (the CPS attribute of a
shop at a time, channel authorisations) that ``cps-admin`` and the services share.
Services import this package and ``contracts``, never each other.
"""

from ledger_db import schema
from ledger_db.engine import (
    DEFAULT_DATABASE_URL,
    DatabaseUrlError,
    LedgerSettings,
    connect,
    current_revision,
    database_problem,
    database_url,
    head_revision,
    migrate,
    parse_url,
    schema_diffs,
)

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DatabaseUrlError",
    "LedgerSettings",
    "connect",
    "current_revision",
    "database_problem",
    "database_url",
    "head_revision",
    "migrate",
    "parse_url",
    "schema",
    "schema_diffs",
]
