"""A migrated ledger database for integration tests, on SQLite and on PostgreSQL.

    from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)

* ``ledger_url`` (module scope, parametrized ``sqlite`` / ``postgresql``): the URL of a
  database migrated to head: a temporary SQLite file, or a fresh PostgreSQL database
  ``cps_test_<random>`` created on ``CPS_TEST_POSTGRES_URL`` (default 127.0.0.1:5432,
  user postgres) and dropped after the module.  No PostgreSQL server: skipped, which
  under ``CI=true`` fails (tests/conftest.py).
* ``ledger_engine`` (function scope): an engine on it; every table is emptied after
  the test, so tests of one module do not see each other's rows.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy
from sqlalchemy import Engine, make_url

import ledger_db
from ledger_db.schema import metadata

POSTGRES_URL = os.environ.get("CPS_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _postgres_admin() -> Engine:
    engine = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT",
                                      connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as err:
        engine.dispose()
        pytest.skip(f"no PostgreSQL server at {make_url(POSTGRES_URL).host}: {err.orig}")
    return engine


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
        ledger_db.migrate(url)
        yield url
        return
    admin = _postgres_admin()
    name = f"cps_test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        ledger_db.migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def ledger_engine(ledger_url: str) -> Iterator[Engine]:
    engine = ledger_db.connect(ledger_url)
    yield engine
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()
