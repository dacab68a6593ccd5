"""Charges on SQLite and PostgreSQL: requests, results, retries, the CLI, and the whole path
through the real Tansu broker (charge service <-> funds stand-in).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson
import pytest
import sqlalchemy
from aiokafka import AIOKafkaProducer
from sqlalchemy import Connection, Engine

from billing_batch import charge_service
from billing_batch.charge_service import ChargeService
from billing_batch.charges import (
    IGNORED,
    Charge,
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
from contracts.topics import CHARGE_REQUESTS_TOPIC, CHARGE_RESULTS_TOPIC
from devstack.funds import FailurePlan, FundsStandIn
from devstack.kafka_admin import read_topic
from devstack.stack import LocalStack
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


def test_a_large_batch_is_requested_whole_and_only_the_new_orders(
        ledger_engine: Engine) -> None:
    # PostgreSQL: one JSON parameter for the batch, whatever its size (not 9 per row).
    with ledger_engine.begin() as conn:
        assert request_charges(conn, [first(f"o{n:04d}", n) for n in range(0, 3000, 2)]) == 1500
    batch = [first(f"o{n:04d}", n + 1) for n in range(3000)] + [first("o0001", 7)]
    with ledger_engine.begin() as conn:
        assert request_charges(conn, batch) == 1500
    requests = outbox_requests(ledger_engine)
    assert requests[:1500] == [first(f"o{n:04d}", n) for n in range(0, 3000, 2)]
    assert requests[1500:] == [first(f"o{n:04d}", n + 1) for n in range(1, 3000, 2)]
    with ledger_engine.connect() as conn:
        charges = load_charges(conn, [f"o{n:04d}" for n in range(3000)])
    assert len(charges) == 3000
    assert charges["o0001"] == Charge("o0001", "o0001:1", "s1", 2, ChargeState.PENDING, 1, None,
                                      T0, T0)
    assert charges["o2998"].amount_minor == 2998  # requested first: the later ask is skipped


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


# -- the whole path through the broker ----------------------------------------------------

@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalStack]:
    topics = {CHARGE_REQUESTS_TOPIC: 2, CHARGE_RESULTS_TOPIC: 2}
    with LocalStack(tmp_path / "stack", topics=topics) as stack:
        yield stack


async def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def charge_of(engine: Engine, order_id: str) -> Charge:
    with engine.connect() as conn:
        return load_charges(conn, [order_id])[order_id]


def cli(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    code = charge_service.main(["--database-url", url, "charges", *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_charges_through_the_broker_and_the_funds_stand_in(
        ledger_engine: Engine, ledger_url: str, broker: LocalStack,
        capsys: pytest.CaptureFixture[str]) -> None:
    bootstrap = broker.broker.bootstrap
    paid = [f"o{n}" for n in range(1, 9)] + ["flaky", "broke"]
    with ledger_engine.begin() as conn:
        assert request_charges(conn, [first(o) for o in paid]) == 10
    service = ChargeService(ledger_engine, bootstrap, max_attempts=3, poll_ms=50)
    funds = FundsStandIn(bootstrap, plan=FailurePlan(orders=frozenset({"broke"}),
                                                     flaky=frozenset({"flaky"})),
                         delay_s=2.0, delay_orders={"flaky"})
    await service.start()
    await funds.start()
    try:
        await wait_for(lambda: charge_of(ledger_engine, "flaky").attempts == 2,
                       "the flaky order's retry")
        assert charge_of(ledger_engine, "flaky").status is ChargeState.PENDING, \
            "pending-retry: its answer is delayed"
        await wait_for(lambda: statuses(ledger_engine, *paid) == {
            **{o: "charged" for o in paid}, "broke": "failed"}, "every charge decided")
        broke = charge_of(ledger_engine, "broke")
        assert (broke.attempts, broke.charge_id) == (3, "broke:3")
        assert broke.reason == "insufficient funds (stand-in: failing order)"
        assert charge_of(ledger_engine, "flaky").attempts == 2

        # Every answer again, and one unreadable record: nothing changes.
        before = sum(service.counts.values())
        with ledger_engine.connect() as conn:
            outbox_rows = conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(
                schema.outbox)).scalar_one()
        replay = [(r.order_id.encode(), r.to_json()) for r in funds.answers.values()]
        await produce(bootstrap, [*replay, (b"o1", b"{not json")])
        await wait_for(lambda: sum(service.counts.values()) - before == len(replay)
                       and service.dead_lettered == 1, "the replay applied")
        assert statuses(ledger_engine, *paid) == {**{o: "charged" for o in paid},
                                                  "broke": "failed"}
        assert set(service.counts) <= IGNORED | {Effect.CHARGED, Effect.RETRIED,
                                                 Effect.FAILED}
        assert service.counts[Effect.CHARGED] == 9, "each order charged once"
        with ledger_engine.connect() as conn:
            assert conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(
                schema.outbox)).scalar_one() == outbox_rows, "no request from a replay"
            letter = conn.execute(sqlalchemy.select(schema.dead_letters)).one()
        assert (letter.source, letter.raw, letter.field) == (
            CHARGE_RESULTS_TOPIC, b"{not json", "(message)")
        assert letter.reason.startswith("(message): not JSON")

        # The operator's view, and one more attempt that fails: failed again, not retried.
        code, out, _ = cli(capsys, ledger_url, "list", "--failed", "--json")
        assert code == 0
        assert [c["order_id"] for c in json.loads(out)] == ["broke"]
        code, out, _ = cli(capsys, ledger_url, "retry", "broke")
        assert (code, "charge broke:4 of order broke requested" in out) == (0, True)
        service.publisher.wake()
        await wait_for(lambda: charge_of(ledger_engine, "broke").charge_id == "broke:4"
                       and charge_of(ledger_engine, "broke").status is ChargeState.FAILED,
                       "the extra attempt answered")
    finally:
        await funds.stop()
        await service.stop()
    requests = [ChargeRequest.from_json(r.value)
                for r in await read_topic(bootstrap, CHARGE_REQUESTS_TOPIC, timeout=20)]
    assert sorted(r.charge_id for r in requests) == sorted(
        [f"{o}:1" for o in paid] + ["flaky:2", "broke:2", "broke:3", "broke:4"]), \
        "each request on the topic once"


async def produce(bootstrap: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(CHARGE_RESULTS_TOPIC, value, key=key)
    finally:
        await producer.stop()


def test_the_cli_reports_bad_input_without_a_traceback(
        ledger_engine: Engine, ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with ledger_engine.begin() as conn:
        request_charges(conn, [first("o1")])
    assert cli(capsys, ledger_url, "retry", "o1")[::2] == (
        2, "cps-billing charges retry: the charge of order 'o1' is pending; only a failed "
           "charge is retried\n")
    assert cli(capsys, ledger_url, "retry", "nope")[0] == 2
    assert cli(capsys, "mysql://x/y", "list")[::2] == (
        2, "cps-billing charges list: unsupported database 'mysql' (sqlite or "
           "postgresql+psycopg)\n")
    code, out, err = cli(capsys, ledger_url, "list")
    assert code == 0
    assert out.split()[:4] == ["o1", "pending", "attempt", "1"]
    assert err == "1 charge\n"
