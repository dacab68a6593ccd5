"""Writers to the webhook outbox: attribution decisions and order sync, then a receiver.

An attributed order's events reach its promoter's and its channel's endpoints signed;
an unattributed order, or one whose promoter has no endpoint, writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy
from sqlalchemy import Engine

from attribution_worker import pending
from attribution_worker.order_store import IncomingMessage
from attribution_worker.order_sync import store_batch
from contracts.attribution import AttributionDecision, AttributionType, Evidence
from ledger_db import master_data, schema
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)
from tests.integration.push_harness import Receiver, WorkerThread, add_endpoint, wait_for

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
ITEMS = [{"item_id": "i-1", "product_id": "p-1", "category_id": "c-1", "quantity": 1,
          "paid_amount": 10_000}]


@pytest.fixture
def db(ledger_engine: Engine) -> Engine:  # noqa: F811
    with ledger_engine.begin() as conn:
        master_data.add_shop(conn, "s-1", now_ms=T0)
        master_data.add_channel(conn, "live", now_ms=T0)
    return ledger_engine


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver("ok")
    yield made
    made.close()


def _order(order_id: str, status: str, ts: int, **more: Any) -> IncomingMessage:
    obj: dict[str, Any] = {
        "version": 1, "order_id": order_id, "shop_id": "s-1", "buyer_key": "visitor-1",
        "buyer_account": "acct-1239", "created_at": T0, "status": status, "event_ts": ts,
        "channel_id": "live", "items": ITEMS}
    if status != "created":
        obj["paid_at"] = T0 + 60_000
    obj.update(more)
    return IncomingMessage(orjson.dumps(obj), partition=0, offset=ts - T0,
                           key=order_id.encode())


def _decide(engine: Engine, order_id: str, kind: AttributionType,
            promoter: str | None = "p-1") -> None:
    decision = AttributionDecision(order_id, kind, promoter, "live", None, Evidence.CLICK,
                                   "test", T0, T0 + 1)
    with engine.begin() as conn:
        pending.decide_many(conn, [decision])


def _types(engine: Engine) -> list[str]:
    table = schema.webhook_events
    with engine.connect() as conn:
        return list(conn.scalars(sqlalchemy.select(table.c.event_type)
                                 .order_by(table.c.occurred_at, table.c.event_type)))


def test_attributed_orders_push_their_statuses(db: Engine, receiver: Receiver) -> None:
    created = add_endpoint(db, "p-1", receiver.url)
    add_endpoint(db, "live", receiver.url, owner_kind="channel")
    receiver.secret = created.secret  # both endpoints' secrets differ: verify the first
    store_batch(db, [_order("o-1", "created", T0), _order("o-1", "paid", T0 + 60_000)])
    assert _types(db) == []  # nothing before the decision
    _decide(db, "o-1", AttributionType.CPS)
    assert _types(db) == ["order.created", "order.paid"]
    store_batch(db, [_order("o-1", "received", T0 + 120_000, received_at=T0 + 120_000)])
    store_batch(db, [_order("o-1", "received", T0 + 120_000, received_at=T0 + 120_000)])
    assert _types(db) == ["order.created", "order.paid", "order.received"]
    with db.connect() as conn:
        deliveries = conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(
            schema.webhook_deliveries)).scalar_one()
    assert deliveries == 6  # three events to the promoter and to the channel
    worker = WorkerThread(db)
    try:
        wait_for(lambda: len(receiver.received) >= 6, what="six pushes")
    finally:
        worker.stop()
    bodies = [orjson.loads(r.body) for r in receiver.received]
    assert {b["data"]["buyer_account"] for b in bodies} == {"a***9"}
    assert b"acct-1239" not in b"".join(r.body for r in receiver.received)
    assert receiver.verified == 3  # the promoter's three verified with its secret


def test_unattributed_or_unsubscribed_orders_write_nothing(db: Engine) -> None:
    add_endpoint(db, "p-other", "http://127.0.0.1:9/x")
    store_batch(db, [_order("o-1", "paid", T0), _order("o-2", "paid", T0)])
    _decide(db, "o-1", AttributionType.NONE, promoter=None)
    _decide(db, "o-2", AttributionType.CPS)
    store_batch(db, [_order("o-2", "received", T0 + 1, received_at=T0 + 1)])
    assert _types(db) == []


def test_a_replayed_dead_letter_pushes_the_status_it_applies(db: Engine) -> None:
    from attribution_worker.order_store import replay_dead_letters

    add_endpoint(db, "p-1", "http://127.0.0.1:9/x")
    store_batch(db, [_order("o-1", "paid", T0)])
    _decide(db, "o-1", AttributionType.CPS)
    store_batch(db, [_order("o-1", "received", T0 + 5, received_at=T0 + 5,
                            channel_id="unknown")])
    assert _types(db) == ["order.created", "order.paid"]  # dead-lettered: unknown channel
    with db.begin() as conn:
        master_data.add_channel(conn, "unknown", now_ms=T0)
    replay_dead_letters(db)
    assert sorted(_types(db)) == ["order.created", "order.paid", "order.received"]
