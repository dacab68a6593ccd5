"""Charges on SQLite and PostgreSQL: requests, results, retries, the CLI, and the whole path
through the real Tansu broker (charge service <-> funds stand-in).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest
import sqlalchemy
from sqlalchemy import Connection, Engine

from billing_batch.charges import (
    ChargeError,
    ChargeState,
    Effect,
    apply_results,
    charge_statuses,
    list_charges,
    load_charges,
    request_charges,
    retry_failed,
)
from contracts.charges import ChargeRequest, ChargeResult, ChargeStatus
from contracts.topics import CHARGE_REQUESTS_TOPIC
from ledger_db import schema

pytestmark = pytest.mark.integration

T0 = 1_764_000_000_000


def first(order_id: str, amount: int = 2000) -> ChargeRequest:
    return ChargeRequest.first(order_id, "s1", amount, T0)


def outcome(order_id: str, status: str, attempt: int = 1, reason: str = "") -> ChargeResult:
    return ChargeResult(f"{order_id}:{attempt}", order_id, ChargeStatus(status),
                        reason or ("" if status == "charged" else "insufficient funds"),
                        T0 + 100)


def outbox_requests(engine: Engine) -> list[ChargeRequest]:
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.select(schema.outbox.c.topic, schema.outbox.c.key,
                                              schema.outbox.c.payload)
                            .order_by(schema.outbox.c.id)).all()
    assert all(topic == CHARGE_REQUESTS_TOPIC for topic, _, _ in rows)
    requests = [ChargeRequest.from_json(payload) for _, _, payload in rows]
    assert [key for _, key, _ in rows] == [r.order_id.encode() for r in requests]
    return requests


def apply(engine: Engine, results: Sequence[ChargeResult], now_ms: int = T0 + 1000,
          max_attempts: int = 3) -> dict[Effect, int]:
    with engine.connect() as conn:
        conn.execution_options(ledger_begin="IMMEDIATE")
        with conn.begin():
            return dict(apply_results(conn, results, now_ms, max_attempts=max_attempts).counts)


def statuses(conn: Connection | Engine, *order_ids: str) -> dict[str, str]:
    if isinstance(conn, Engine):
        with conn.connect() as connection:
            return charge_statuses(connection, order_ids)
    return charge_statuses(conn, order_ids)


def test_requests_are_written_with_their_outbox_messages_once(ledger_engine: Engine) -> None:
    with ledger_engine.begin() as conn:
        assert request_charges(conn, [first("o1"), first("o2", 0), first("o1", 99)]) == 2
    with ledger_engine.begin() as conn:
        assert request_charges(conn, [first("o2"), first("o3")]) == 1, "o2 has a charge"
        assert request_charges(conn, []) == 0
    assert outbox_requests(ledger_engine) == [first("o1"), first("o2", 0), first("o3")]
    assert statuses(ledger_engine, "o1", "o2", "o3", "o9") == {
        "o1": "pending", "o2": "pending", "o3": "pending"}
    with ledger_engine.connect() as conn:
        charge = load_charges(conn, ["o1"])["o1"]
    assert (charge.charge_id, charge.amount_minor, charge.attempts) == ("o1:1", 2000, 1)


def test_a_rolled_back_payment_requests_nothing(ledger_engine: Engine) -> None:
    with ledger_engine.connect() as conn, conn.begin() as transaction:
        request_charges(conn, [first("o1")])
        transaction.rollback()
    assert statuses(ledger_engine, "o1") == {}
    assert outbox_requests(ledger_engine) == []


def test_results_charge_retry_and_fail_and_replays_change_nothing(
        ledger_engine: Engine) -> None:
    with ledger_engine.begin() as conn:
        request_charges(conn, [first(f"o{n}") for n in range(1, 5)])
    batch = [outcome("o1", "charged"), outcome("o2", "failed"), outcome("o3", "failed"),
             outcome("o9", "charged"), outcome("o4", "charged", attempt=7)]
    assert apply(ledger_engine, batch, max_attempts=2) == {
        Effect.CHARGED: 1, Effect.RETRIED: 2, Effect.UNKNOWN: 1, Effect.SUPERSEDED: 1}
    assert apply(ledger_engine, batch, max_attempts=2) == {
        Effect.DUPLICATE: 1, Effect.SUPERSEDED: 3, Effect.UNKNOWN: 1}, "a replay"
    second = [outcome("o2", "charged", 2), outcome("o3", "failed", 2, "account frozen")]
    assert apply(ledger_engine, second + second, max_attempts=2) == {
        Effect.CHARGED: 1, Effect.FAILED: 1, Effect.DUPLICATE: 2}
    assert statuses(ledger_engine, "o1", "o2", "o3", "o4") == {
        "o1": "charged", "o2": "charged", "o3": "failed", "o4": "pending"}
    retries = [r for r in outbox_requests(ledger_engine) if r.attempt > 1]
    assert [(r.charge_id, r.requested_at) for r in retries] == [("o2:2", T0 + 1000),
                                                                 ("o3:2", T0 + 1000)]
    with ledger_engine.connect() as conn:
        failed = list_charges(conn, status=ChargeState.FAILED)
    assert [(c.order_id, c.attempts, c.reason) for c in failed] == [("o3", 2, "account frozen")]
    assert apply(ledger_engine, [outcome("o3", "charged", 2)]) == {Effect.CONFLICT: 1}
    assert statuses(ledger_engine, "o3") == {"o3": "failed"}, "failed stays failed"


def test_several_results_of_one_order_in_one_batch_fold_in_order(
        ledger_engine: Engine) -> None:
    with ledger_engine.begin() as conn:
        request_charges(conn, [first("o1")])
    assert apply(ledger_engine, [outcome("o1", "failed"), outcome("o1", "failed", 2),
                                 outcome("o1", "failed", 1)]) == {
        Effect.RETRIED: 2, Effect.SUPERSEDED: 1}
    requests = outbox_requests(ledger_engine)
    assert [r.charge_id for r in requests] == ["o1:1", "o1:3"], "only the latest attempt"


def test_retry_failed_asks_once_more(ledger_engine: Engine) -> None:
    with ledger_engine.begin() as conn:
        request_charges(conn, [first("o1"), first("o2")])
    apply(ledger_engine, [outcome("o1", "failed")], max_attempts=1)
    with ledger_engine.begin() as conn:
        request = retry_failed(conn, "o1", T0 + 9000)
        with pytest.raises(ChargeError, match="is pending; only a failed charge"):
            retry_failed(conn, "o2", T0 + 9000)
        with pytest.raises(ChargeError, match="has no charge"):
            retry_failed(conn, "o7", T0 + 9000)
    assert request == ChargeRequest("o1:2", "o1", "s1", 2000, T0 + 9000, 2)
    assert outbox_requests(ledger_engine)[-1] == request
    assert apply(ledger_engine, [outcome("o1", "failed", 2)], max_attempts=1) == {
        Effect.FAILED: 1}, "the extra attempt failed too: failed again, not retried"
    with ledger_engine.connect() as conn:
        assert orjson.loads(orjson.dumps(list_charges(conn)[0].to_dict()))["attempts"] == 2
