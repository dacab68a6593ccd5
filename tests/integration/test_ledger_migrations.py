"""The ledger schema's migrations against SQLite and PostgreSQL: they build exactly the
tables of ledger_db.schema (alembic check), go down and up again, and the database
enforces what the schema declares."""

from __future__ import annotations

import pytest
import sqlalchemy
from sqlalchemy import Engine

import ledger_db
from ledger_db.engine import downgrade
from ledger_db.schema import metadata, order_items, orders, shop_cps_periods, shops
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


def test_models_and_migrations_agree(ledger_engine: Engine) -> None:  # noqa: F811
    assert ledger_db.schema_diffs(ledger_engine) == []
    assert ledger_db.current_revision(ledger_engine) == ledger_db.head_revision()
    tables = set(sqlalchemy.inspect(ledger_engine).get_table_names())
    assert tables == set(metadata.tables) | {"alembic_version"}


def test_down_to_nothing_and_up_again(ledger_engine: Engine) -> None:  # noqa: F811
    downgrade(ledger_engine, "base")
    assert sqlalchemy.inspect(ledger_engine).get_table_names() == ["alembic_version"]
    assert ledger_db.current_revision(ledger_engine) is None
    assert ledger_db.migrate(ledger_engine) == ledger_db.head_revision()
    assert ledger_db.migrate(ledger_engine) == ledger_db.head_revision()  # a no-op
    assert ledger_db.schema_diffs(ledger_engine) == []


def test_the_database_enforces_keys_and_checks(ledger_engine: Engine) -> None:  # noqa: F811
    with pytest.raises(sqlalchemy.exc.IntegrityError), ledger_engine.begin() as conn:
        # Master data refers to master data by foreign key (order tables do not: see
        # ledger_db.schema).
        conn.execute(shop_cps_periods.insert().values(shop_id="nowhere", joined_at=1))
    with ledger_engine.begin() as conn:
        conn.execute(shops.insert().values(shop_id="s-1", created_at=1))
        conn.execute(orders.insert().values(order_id="o-1", shop_id="s-1", status="created",
                                            created_at=1, event_ts=1, updated_at=1))
    with pytest.raises(sqlalchemy.exc.IntegrityError), ledger_engine.begin() as conn:
        conn.execute(shop_cps_periods.insert().values(shop_id="s-1", joined_at=5, exited_at=4))
    with pytest.raises(sqlalchemy.exc.IntegrityError), ledger_engine.begin() as conn:
        conn.execute(orders.update().values(status="lost"))  # check constraint
    with pytest.raises(sqlalchemy.exc.IntegrityError), ledger_engine.begin() as conn:
        conn.execute(order_items.insert().values(
            order_id="o-1", item_id="i-1", product_id="p", category_id="c", quantity=1,
            paid_amount=100, refunded_amount=80, refund_pending_amount=30))
    # Minor units and ms timestamps beyond 32 bits round-trip exactly.
    big = 10**15
    with ledger_engine.begin() as conn:
        conn.execute(order_items.insert().values(
            order_id="o-1", item_id="i-1", product_id="p", category_id="c", quantity=1,
            paid_amount=big))
        conn.execute(orders.update().values(created_at=9_999_999_999_999))
    with ledger_engine.connect() as conn:
        assert conn.execute(sqlalchemy.select(order_items.c.paid_amount)).scalar() == big
        assert conn.execute(sqlalchemy.select(orders.c.created_at)).scalar() == 9_999_999_999_999


def test_processes_migrating_at_once_all_succeed(ledger_engine: Engine) -> None:  # noqa: F811
    """Services migrate at start; several starting together on an empty database."""
    import concurrent.futures

    downgrade(ledger_engine, "base")
    url = ledger_engine.url.render_as_string(hide_password=False)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        revisions = list(pool.map(lambda _: ledger_db.migrate(url), range(4)))
    assert revisions == [ledger_db.head_revision()] * 4
    assert ledger_db.schema_diffs(ledger_engine) == []
