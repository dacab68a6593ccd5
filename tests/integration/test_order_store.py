"""Order sync storage (attribution_worker.order_store) against SQLite and PostgreSQL:
batches of order records into orders/items/refunds, dead letters and their replay."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from attribution_worker.order_state import OrderState, decide, state_of
from attribution_worker.order_store import (
    DeadLetterNotFound,
    IncomingMessage,
    OutcomeKind,
    _load_states,
    apply_batch,
    get_dead_letter,
    list_dead_letters,
    replay_dead_letters,
)
from contracts.orders import OrderMessage, OrderStatus
from ledger_db import master_data
from ledger_db.schema import dead_letters, order_items, order_refunds, orders
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)
from tests.unit.attribution_worker.test_order_state import histories

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
MINUTE = 60_000
NOW = T0 + 86_400_000
ITEMS = [{"item_id": "i-1", "product_id": "p-1", "category_id": "c-1", "quantity": 1,
          "paid_amount": 10_000},
         {"item_id": "i-2", "product_id": "p-2", "category_id": "c-2", "quantity": 2,
          "paid_amount": 3_000}]
PAID_AT = {"paid_at": T0 + MINUTE}


def order(order_id: str = "o-1", status: str = "created", event_ts: int = T0,
          **fields: Any) -> dict[str, Any]:
    obj = {"version": 1, "order_id": order_id, "shop_id": "s-1", "buyer_key": "visitor-1",
           "buyer_account": "acct-1", "created_at": T0, "status": status,
           "event_ts": event_ts, "channel_id": "live", "items": ITEMS}
    if status != "created" and status != "cancelled":
        obj.update(PAID_AT)
    obj.update(fields)
    return obj


class Topic:
    """Hands out records with increasing offsets, like one partition of the order topic."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self, *objs: dict[str, Any] | bytes) -> list[IncomingMessage]:
        records = []
        for obj in objs:
            raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
            records.append(IncomingMessage(raw, partition=0, offset=self.offset,
                                           key=b"o" if isinstance(obj, bytes)
                                           else obj["order_id"].encode()))
            self.offset += 1
        return records


@pytest.fixture
def db(ledger_engine: Engine) -> Engine:  # noqa: F811 (the fixture imported above)
    with ledger_engine.begin() as conn:
        master_data.add_shop(conn, "s-1", now_ms=T0)
        master_data.add_channel(conn, "live", now_ms=T0)
    return ledger_engine


@pytest.fixture
def topic() -> Topic:
    return Topic()


def dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the order tables and dead letters, for before/after comparisons."""
    with engine.connect() as conn:
        return {table.name: sorted(tuple(row) for row in conn.execute(sqlalchemy.select(table)))
                for table in (orders, order_items, order_refunds, dead_letters)}


def rows(engine: Engine, table: sqlalchemy.Table) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(sqlalchemy.select(table)).mappings()]


def test_new_orders_with_items_and_refunds(db: Engine, topic: Topic) -> None:
    refunds = [{"refund_id": "r-1", "item_id": "i-2", "amount": 1_000, "status": "completed",
                "requested_at": T0 + 2 * MINUTE},
               {"refund_id": "r-2", "item_id": "i-2", "amount": 500, "status": "pending",
                "requested_at": T0 + 3 * MINUTE}]
    outcomes = apply_batch(db, topic(order("o-1"), order("o-2", "paid", T0 + 4 * MINUTE,
                                                         refunds=refunds, channel_id=None,
                                                         fanstype="fan")), now_ms=NOW)
    assert [(o.kind, o.order_id, o.created, o.previous_status, o.status) for o in outcomes] == [
        (OutcomeKind.APPLIED, "o-1", True, None, OrderStatus.CREATED),
        (OutcomeKind.APPLIED, "o-2", True, None, OrderStatus.PAID)]
    assert (outcomes[0].shop_id, outcomes[0].created_at) == ("s-1", T0)
    stored = {row["order_id"]: row for row in rows(db, orders)}
    assert stored["o-2"] == {
        "order_id": "o-2", "shop_id": "s-1", "buyer_key": "visitor-1",
        "buyer_account": "acct-1", "channel_id": None, "fanstype": "fan",
        "attribution_token": None, "status": "paid", "created_at": T0, "paid_at": T0 + MINUTE,
        "received_at": None, "final_at": None, "event_ts": T0 + 4 * MINUTE, "updated_at": NOW}
    items = {(r["order_id"], r["item_id"]): r for r in rows(db, order_items)}
    assert len(items) == 4
    assert (items["o-2", "i-2"]["refunded_amount"],
            items["o-2", "i-2"]["refund_pending_amount"]) == (1_000, 500)
    assert items["o-2", "i-1"]["paid_amount"] == 10_000
    assert sorted((r["refund_id"], r["status"]) for r in rows(db, order_refunds)) == [
        ("r-1", "completed"), ("r-2", "pending")]


def test_status_moves_forward_across_batches_and_never_back(db: Engine, topic: Topic) -> None:
    apply_batch(db, topic(order("o-1", "paid", T0 + MINUTE)), now_ms=NOW)
    late_created = apply_batch(db, topic(order("o-1")), now_ms=NOW + 1)
    assert late_created[0].kind is OutcomeKind.IGNORED
    assert late_created[0].status is OrderStatus.PAID
    received = order("o-1", "received", T0 + 5 * MINUTE, received_at=T0 + 5 * MINUTE)
    out = apply_batch(db, topic(received), now_ms=NOW + 2)
    assert (out[0].kind, out[0].previous_status, out[0].status, out[0].created) == (
        OutcomeKind.APPLIED, OrderStatus.PAID, OrderStatus.RECEIVED, False)
    assert out[0].status_changed
    [row] = rows(db, orders)
    assert (row["status"], row["received_at"], row["updated_at"]) == (
        "received", T0 + 5 * MINUTE, NOW + 2)


def test_messages_of_one_order_in_one_batch_apply_in_order(db: Engine, topic: Topic) -> None:
    batch = topic(order("o-1"), order("o-1", "paid", T0 + MINUTE), order("o-1"),
                  order("o-1", "received", T0 + 2 * MINUTE, received_at=T0 + 2 * MINUTE),
                  order("o-1", "paid", T0 + MINUTE))
    outcomes = apply_batch(db, batch, now_ms=NOW)
    assert [(o.kind.value, o.status) for o in outcomes] == [
        ("applied", OrderStatus.CREATED), ("applied", OrderStatus.PAID),
        ("ignored", OrderStatus.PAID), ("applied", OrderStatus.RECEIVED),
        ("ignored", OrderStatus.RECEIVED)]
    assert [o.created for o in outcomes] == [True, False, False, False, False]
    assert [row["status"] for row in rows(db, orders)] == ["received"]


def test_the_same_batch_twice_changes_nothing(db: Engine, topic: Topic) -> None:
    batch = topic(order("o-1"), order("o-2", "paid", T0 + MINUTE), b"{not json",
                  order("o-3", shop_id="s-unknown"),
                  order("o-2", "cancelled", T0 + 2 * MINUTE, paid_at=None))
    first = apply_batch(db, batch, now_ms=NOW)
    assert [o.kind.value for o in first] == ["applied", "applied", "dead_lettered",
                                            "dead_lettered", "dead_lettered"]
    before = dump(db)
    assert len(before["dead_letters"]) == 3
    second = apply_batch(db, batch, now_ms=NOW + 1000)  # a redelivery after a rebalance
    assert [o.kind.value for o in second] == ["ignored", "ignored", "dead_lettered",
                                             "dead_lettered", "dead_lettered"]
    assert dump(db) == before


def test_schema_failures_are_dead_lettered_with_the_field(db: Engine, topic: Topic) -> None:
    bad_amount = order("o-9", items=[dict(ITEMS[0], paid_amount=-1)])
    batch = topic(b"\xff not json", bad_amount, order("o-1"), order("o-8", version=2))
    outcomes = apply_batch(db, batch, now_ms=NOW)
    assert [o.kind.value for o in outcomes] == ["dead_lettered", "dead_lettered", "applied",
                                                "dead_lettered"]
    assert outcomes[1].field == "items[0].paid_amount (minor units)"
    letters = list_dead_letters(db)
    assert [(d.field, d.order_id, d.offset) for d in letters] == [
        ("(message)", None, 0), ("items[0].paid_amount (minor units)", "o-9", 1),
        ("version", "o-8", 3)]
    assert letters[0].raw == b"\xff not json"
    assert letters[0].reason.startswith("schema: (message): not JSON")
    assert letters[1].key == b"o-9"
    assert (letters[1].source, letters[1].partition, letters[1].received_at) == (
        "cps.orders.v1", 0, NOW)
    assert all(d.open and d.replayed_at is None for d in letters)


def test_nul_characters_are_dead_lettered_not_retried_forever(db: Engine, topic: Topic) -> None:
    """PostgreSQL text cannot hold NUL: such a message would fail its batch on every retry."""
    nul_order_id = b'{"version": 1, "order_id": "o-\\u0000"}'
    outcomes = apply_batch(db, topic(order("o-1", buyer_key="visitor\x00x"), nul_order_id,
                                     order("o-2")), now_ms=NOW)
    assert [(o.kind.value, o.field) for o in outcomes] == [
        ("dead_lettered", "buyer_key"), ("dead_lettered", "status"), ("applied", None)]
    assert [d.order_id for d in list_dead_letters(db)] == ["o-1", None]


def test_unknown_master_data_then_replay(db: Engine, topic: Topic) -> None:
    batch = topic(order("o-1", shop_id="s-2"), order("o-2", channel_id="chat"),
                  order("o-1", "paid", T0 + MINUTE, shop_id="s-2"), order("o-3"))
    outcomes = apply_batch(db, batch, now_ms=NOW)
    assert [(o.kind.value, o.field, o.reason) for o in outcomes[:3]] == [
        ("dead_lettered", "shop_id", "unknown shop 's-2'"),
        ("dead_lettered", "channel_id", "unknown channel 'chat'"),
        ("dead_lettered", "shop_id", "unknown shop 's-2'")]
    assert outcomes[3].kind is OutcomeKind.APPLIED
    letters = list_dead_letters(db)
    assert [d.order_id for d in letters] == ["o-1", "o-2", "o-1"]

    # Only the channel is fixed: the shop's letters fail again and stay open.
    with db.begin() as conn:
        master_data.add_channel(conn, "chat", now_ms=NOW)
    results = replay_dead_letters(db, now_ms=NOW + 1)
    assert [(r.dead_letter_id, r.outcome.kind.value) for r in results] == [
        (letters[0].id, "dead_lettered"), (letters[1].id, "applied"),
        (letters[2].id, "dead_lettered")]
    assert [d.id for d in list_dead_letters(db)] == [letters[0].id, letters[2].id]
    assert len(list_dead_letters(db, include_replayed=True)) == 3  # no new letters

    with db.begin() as conn:
        master_data.add_shop(conn, "s-2", now_ms=NOW)
    results = replay_dead_letters(db, now_ms=NOW + 2)
    assert [(r.outcome.kind.value, r.outcome.status, r.outcome.created)
            for r in results] == [("applied", OrderStatus.CREATED, True),
                                  ("applied", OrderStatus.PAID, False)]
    assert list_dead_letters(db) == []
    replayed = get_dead_letter(db, letters[2].id)
    assert replayed is not None
    assert (replayed.replayed_at, replayed.replay_result, replayed.replay_reason) == (
        NOW + 2, "applied", "created -> paid")
    assert replayed.reason == "unknown shop 's-2'"  # the original reason is kept
    assert {row["order_id"]: row["status"] for row in rows(db, orders)} == {
        "o-1": "paid", "o-2": "created", "o-3": "created"}
    # Replaying a resolved letter by id is harmless: the order has it already.
    [again] = replay_dead_letters(db, [letters[1].id], now_ms=NOW + 3)
    assert again.outcome.kind is OutcomeKind.IGNORED


def test_replay_of_unknown_ids_replays_nothing(db: Engine, topic: Topic) -> None:
    apply_batch(db, topic(order("o-1", shop_id="s-2")), now_ms=NOW)
    [letter] = list_dead_letters(db)
    with pytest.raises(DeadLetterNotFound, match="no dead letter with id 999"):
        replay_dead_letters(db, [letter.id, 999])
    assert get_dead_letter(db, letter.id).replayed_at is None  # type: ignore[union-attr]
    assert get_dead_letter(db, 999) is None


def test_status_machine_violations_are_dead_lettered(db: Engine, topic: Topic) -> None:
    apply_batch(db, topic(order("o-1", "paid", T0 + MINUTE)), now_ms=NOW)
    outcomes = apply_batch(db, topic(
        order("o-1", "cancelled", T0 + 2 * MINUTE, paid_at=None),
        order("o-1", "received", T0 + 3 * MINUTE, received_at=T0 + 3 * MINUTE,
              items=ITEMS[:1]),
        order("o-1", "paid", T0 + 4 * MINUTE, buyer_key="someone-else")), now_ms=NOW)
    assert [(o.kind.value, o.field) for o in outcomes] == [
        ("dead_lettered", "status"), ("dead_lettered", "items"),
        ("dead_lettered", "buyer_key")]
    assert outcomes[0].reason == ("status machine: status cancelled cannot happen to an "
                                  "order that is paid")
    assert [d.field for d in list_dead_letters(db)] == ["status", "items", "buyer_key"]
    [row] = rows(db, orders)
    assert (row["status"], row["event_ts"]) == ("paid", T0 + MINUTE)


def test_partial_refunds_move_forward(db: Engine, topic: Topic) -> None:
    def refund(status: str, amount: int = 2_500) -> dict[str, Any]:
        return {"refund_id": "r-1", "item_id": "i-1", "amount": amount, "status": status,
                "requested_at": T0 + 2 * MINUTE}

    apply_batch(db, topic(order("o-1", "paid", T0 + MINUTE)), now_ms=NOW)
    apply_batch(db, topic(order("o-1", "paid", T0 + 3 * MINUTE, refunds=[refund("pending")])),
                now_ms=NOW)
    item = next(r for r in rows(db, order_items) if r["item_id"] == "i-1")
    assert (item["refunded_amount"], item["refund_pending_amount"]) == (0, 2_500)
    apply_batch(db, topic(order("o-1", "paid", T0 + 4 * MINUTE,
                                refunds=[refund("completed")])), now_ms=NOW)
    late = apply_batch(db, topic(order("o-1", "paid", T0 + 3 * MINUTE,
                                       refunds=[refund("pending")])), now_ms=NOW)
    assert late[0].kind is OutcomeKind.IGNORED
    item = next(r for r in rows(db, order_items) if r["item_id"] == "i-1")
    assert (item["refunded_amount"], item["refund_pending_amount"]) == (2_500, 0)
    assert [r["status"] for r in rows(db, order_refunds)] == ["completed"]


def test_items_dropped_before_payment_are_deleted(db: Engine, topic: Topic) -> None:
    apply_batch(db, topic(order("o-1")), now_ms=NOW)
    apply_batch(db, topic(order("o-1", event_ts=T0 + MINUTE, items=ITEMS[1:])), now_ms=NOW)
    assert [r["item_id"] for r in rows(db, order_items)] == ["i-2"]


def test_a_callers_transaction_holds_the_writes(db: Engine, topic: Topic) -> None:
    with db.connect() as conn:
        conn.begin()
        outcomes = apply_batch(conn, topic(order("o-1")), now_ms=NOW)
        assert outcomes[0].kind is OutcomeKind.APPLIED
        assert conn.execute(sqlalchemy.select(orders.c.order_id)).scalars().all() == ["o-1"]
        conn.rollback()
    assert rows(db, orders) == []
    with db.connect() as conn:  # a connection outside a transaction: committed
        apply_batch(conn, topic(order("o-2")), now_ms=NOW)
    assert [r["order_id"] for r in rows(db, orders)] == ["o-2"]


def test_a_thousand_message_batch(db: Engine, topic: Topic) -> None:
    created = [order(f"o-{n}") for n in range(600)]
    paid = [order(f"o-{n}", "paid", T0 + MINUTE) for n in range(400)]
    outcomes = apply_batch(db, topic(*created, *paid), now_ms=NOW)
    assert sum(o.created for o in outcomes) == 600
    outcomes = apply_batch(db, topic(*paid, *created[:600]), now_ms=NOW)  # > IN_CHUNK ids
    assert [o.kind for o in outcomes].count(OutcomeKind.IGNORED) == 1000
    with db.connect() as conn:
        query = sqlalchemy.select(orders.c.status, sqlalchemy.func.count()).group_by(
            orders.c.status)
        counts = {status: count for status, count in conn.execute(query)}
    assert counts == {"created": 200, "paid": 400}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(histories(), min_size=1, max_size=3), st.randoms(use_true_random=False))
def test_shuffled_batches_converge_to_the_in_order_state(
        db: Engine, histories_: list[list[OrderMessage]], rng: random.Random) -> None:
    messages = []
    expected: dict[str, OrderState] = {}
    for n, history in enumerate(histories_):
        renamed = [orjson.dumps({**msg.to_dict(), "order_id": f"h-{n}",
                                 "channel_id": "live"}) for msg in history]
        messages.extend(renamed)
        final = None
        for raw in renamed:
            decision = decide(final, OrderMessage.from_json(raw))
            final = getattr(decision, "state", final)
        assert final is not None
        expected[f"h-{n}"] = final
    shuffled = messages + [rng.choice(messages) for _ in range(len(messages) // 3)]
    rng.shuffle(shuffled)
    records = [IncomingMessage(raw) for raw in shuffled]
    cuts = sorted(rng.sample(range(1, len(records)), min(3, len(records) - 1)))
    for start, end in zip([0, *cuts], [*cuts, len(records)], strict=True):
        outcomes = apply_batch(db, records[start:end], now_ms=NOW)
        assert OutcomeKind.DEAD_LETTERED not in {o.kind for o in outcomes}
    try:
        for order_id, state in expected.items():
            stored = _stored_state(db, order_id)
            assert stored == state
            assert state == state_of(OrderMessage.from_json(
                next(m for m in reversed(messages) if f'"{order_id}"'.encode() in m)))
    finally:
        with db.begin() as conn:
            for table in (order_refunds, order_items, orders):
                conn.execute(table.delete())


def _stored_state(engine: Engine, order_id: str) -> OrderState:
    with engine.connect() as conn:
        return _load_states(conn, {order_id})[order_id]
