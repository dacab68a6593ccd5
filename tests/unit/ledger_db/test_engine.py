"""ledger_db.engine on embedded SQLite: URL setting, connection set-up, programmatic migrations."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import sqlalchemy

import ledger_db
from contracts.settings import ConfigError
from ledger_db.engine import DatabaseUrlError, parse_url


def test_default_url_is_sqlite_under_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CPS_DATABASE_URL", raising=False)
    assert ledger_db.database_url() == "sqlite:///var/ledger.db"


def test_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPS_DATABASE_URL", "postgresql+psycopg://u@db.example/ledger")
    assert ledger_db.database_url() == "postgresql+psycopg://u@db.example/ledger"


@pytest.mark.parametrize(("url", "problem"), [
    ("not a url", "not a database URL"),
    ("mysql://u@h/db", "unsupported database 'mysql'"),
    ("postgresql+psycopg2://u@h/db", "unsupported database 'postgresql+psycopg2'"),
])
def test_a_bad_url_names_the_variable(monkeypatch: pytest.MonkeyPatch, url: str,
                                      problem: str) -> None:
    monkeypatch.setenv("CPS_DATABASE_URL", url)
    with pytest.raises(ConfigError, match="CPS_DATABASE_URL") as err:
        ledger_db.database_url()
    assert problem in str(err.value)
    with pytest.raises(DatabaseUrlError, match=re.escape(problem)):
        parse_url(url)


def test_bare_postgresql_means_psycopg_3() -> None:
    assert parse_url("postgresql://u@h:5432/db").drivername == "postgresql+psycopg"


def test_connect_creates_the_directory_and_sets_up_sqlite(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CPS_DATABASE_URL", raising=False)
    assert ledger_db.migrate() == ledger_db.head_revision()  # the default URL
    assert (tmp_path / "var" / "ledger.db").is_file()
    engine = ledger_db.connect()
    with engine.connect() as conn:
        pragmas = [conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                   for name in ("journal_mode", "foreign_keys", "busy_timeout")]
    assert pragmas == ["wal", 1, ledger_db.engine.SQLITE_BUSY_TIMEOUT_MS]
    assert ledger_db.schema_diffs(engine) == []
    engine.dispose()


def test_transactions_see_one_snapshot_and_immediate_takes_the_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger_db.migrate(url)
    engine = ledger_db.connect(url)
    shops = ledger_db.schema.shops
    with engine.connect() as reader, engine.begin() as writer:
        reader.begin()
        assert reader.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(
            shops)).scalar() == 0
        writer.execute(shops.insert().values(shop_id="s-1", created_at=1))
        writer.commit()
        # BEGIN was sent: the reader's snapshot predates the writer's commit.
        assert reader.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(
            shops)).scalar() == 0
        reader.rollback()
    with engine.connect() as holder:
        holder.execution_options(ledger_begin="IMMEDIATE")
        holder.begin()  # holds the write lock until rollback, without writing anything
        holder.execute(sqlalchemy.select(1))
        blocked: list[BaseException] = []

        def write() -> None:
            other = sqlalchemy.create_engine(url, connect_args={"timeout": 0.1})
            try:
                with other.begin() as conn:
                    conn.exec_driver_sql("INSERT INTO channels VALUES ('c', '', 1)")
            except sqlalchemy.exc.OperationalError as err:
                blocked.append(err)
            finally:
                other.dispose()

        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
        holder.rollback()
    assert blocked, "BEGIN IMMEDIATE did not take the write lock"
    engine.dispose()
