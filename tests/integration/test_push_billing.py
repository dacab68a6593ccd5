"""A billing run's commission and payout events reach a receiver (end to end), on SQLite
and PostgreSQL; a rerun pushes nothing twice."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
import sqlalchemy
from sqlalchemy import Engine

from ledger_db import schema
from tests.integration.billing_world import DAY0, DAY_MS, BillingWorld
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)
from tests.integration.push_harness import Receiver, WorkerThread, add_endpoint, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def world(ledger_engine: Engine) -> BillingWorld:  # noqa: F811
    world = BillingWorld(ledger_engine)
    world.standard_rates()
    return world


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver("ok")
    yield made
    made.close()


def _events(engine: Engine) -> list[tuple[str, dict[str, object]]]:
    table = schema.webhook_events
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.select(table.c.event_type, table.c.payload)
                            .order_by(table.c.created_at, table.c.event_type)).all()
    return [(kind, orjson.loads(payload)["data"]) for kind, payload in rows]


def test_accrual_refund_settlement_and_payout_are_pushed(world: BillingWorld,
                                                         receiver: Receiver) -> None:
    created = add_endpoint(world.engine, "P1", receiver.url)
    receiver.secret = created.secret
    world.paid_order("O1", [("I1", 10_000)])
    world.run(days=1)
    world.refund("O1", "I1", 5_000)
    world.run(days=2)
    world.receive("O1", at_ms=DAY0 + 2 * DAY_MS + 1)
    world.charge("O1")
    world.run(days=18)
    world.run(days=18)  # a rerun: nothing new
    pushed = [(kind, data["amount"]) for kind, data in _events(world.engine)]
    assert pushed == [("commission.accrued", 1300), ("commission.reduced", -650),
                      ("commission.settled", 650), ("payout.created", 650)]
    worker = WorkerThread(world.engine)
    try:
        wait_for(lambda: len(receiver.ids()) >= 4, what="four pushes")
    finally:
        worker.stop()
    assert receiver.verified == 4
    types = [orjson.loads(r.body)["type"] for r in receiver.received]
    assert types == ["commission.accrued", "commission.reduced", "commission.settled",
                     "payout.created"]


def test_a_run_without_endpoints_writes_no_events(world: BillingWorld) -> None:
    world.paid_order("O1", [("I1", 10_000)])
    world.run(days=1)
    assert _events(world.engine) == []
