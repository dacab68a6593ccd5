"""The push worker against real local HTTP receivers, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy
from sqlalchemy import Engine

from ledger_db import schema
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)
from tests.integration.push_harness import (
    Receiver,
    WorkerThread,
    add_endpoint,
    delivery_states,
    enqueue,
    events_for,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def db(ledger_engine: Engine) -> Engine:  # noqa: F811
    return ledger_engine


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


def _receiver(made: list[Receiver], *args: object, **kwargs: object) -> Receiver:
    receiver = Receiver(*args, **kwargs)  # type: ignore[arg-type]
    made.append(receiver)
    return receiver


def test_signed_pushes_verify_and_arrive_in_order(db: Engine,
                                                  receivers: list[Receiver]) -> None:
    receiver = _receiver(receivers, "ok")
    created = add_endpoint(db, "p-1", receiver.url)
    receiver.secret = created.secret
    events = events_for("p-1", 30)
    assert enqueue(db, events) == 30
    worker = WorkerThread(db)
    try:
        wait_for(lambda: len(receiver.ids()) >= 30, what="30 verified pushes")
    finally:
        worker.stop()
    assert receiver.verified == 30
    assert receiver.ids() == [e.event_id for e in events]
    assert delivery_states(db) == {"delivered": 30}
    attempts = schema.webhook_attempts
    with db.connect() as conn:
        logged = conn.execute(sqlalchemy.select(attempts.c.status_code,
                                                attempts.c.latency_ms)).all()
    assert len(logged) == 30
    assert {code for code, _ in logged} == {200}


def test_a_rotated_secret_signs_beside_the_old_one(db: Engine,
                                                   receivers: list[Receiver]) -> None:
    from push_worker import endpoints
    from tests.integration.push_harness import SEALER

    old = _receiver(receivers, "ok")
    created = add_endpoint(db, "p-1", old.url)
    with db.begin() as conn:
        rotated = endpoints.rotate_secret(conn, SEALER, created.endpoint_id)
    old.secret = created.secret
    enqueue(db, events_for("p-1", 3))
    worker = WorkerThread(db)
    try:
        wait_for(lambda: len(old.ids()) >= 3, what="pushes")
    finally:
        worker.stop()
    signatures = old.received[0].headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    from standardwebhooks.webhooks import Webhook
    Webhook(rotated.secret).verify(old.received[0].body, old.received[0].headers)
    assert old.verified == 3


def test_a_failing_endpoint_retries_with_the_same_id_then_recovers(
        db: Engine, receivers: list[Receiver]) -> None:
    receiver = _receiver(receivers, "fail_first", failures=2)
    add_endpoint(db, "p-1", receiver.url)
    events = events_for("p-1", 3)
    enqueue(db, events)
    worker = WorkerThread(db)
    try:
        wait_for(lambda: len(receiver.ids()) >= 3, what="recovery")
    finally:
        worker.stop()
    every = [r.webhook_id for r in receiver.received]
    # The first event twice refused, then delivered: in order, the others after it.
    assert every == [events[0].event_id] * 3 + [events[1].event_id, events[2].event_id]
    gaps = [b.at - a.at for a, b in zip(receiver.received[:2], receiver.received[1:3],
                                        strict=True)]
    assert all(gap >= 0.18 for gap in gaps)  # the shortened schedule: 0.2 s (+jitter)
    with db.connect() as conn:
        endpoint = conn.execute(sqlalchemy.select(schema.webhook_endpoints)).one()
    assert endpoint.failing_since is None
    assert endpoint.status == "active"


def test_exhausted_retries_go_dead_and_replay(db: Engine,
                                              receivers: list[Receiver]) -> None:
    from push_worker import store

    receiver = _receiver(receivers, "fail_first", failures=4)
    add_endpoint(db, "p-1", receiver.url)
    events = events_for("p-1", 2)
    enqueue(db, events)
    worker = WorkerThread(db)
    try:
        wait_for(lambda: delivery_states(db) == {"dead": 1, "delivered": 1},
                 what="one dead, the next delivered")
        with db.begin() as conn:
            assert store.replay(conn, all_dead=True) == 1
        wait_for(lambda: delivery_states(db) == {"delivered": 2}, what="replay")
    finally:
        worker.stop()
    with db.connect() as conn:
        log = store.delivery_log(conn, events[0].event_id)
    assert [row["status_code"] for row in log] == [500, 500, 500, 500, 200]


def test_a_hanging_endpoint_delays_nobody(db: Engine,
                                          receivers: list[Receiver]) -> None:
    hanging = _receiver(receivers, "hang", hang_s=10)
    fast = [_receiver(receivers, "ok") for _ in range(3)]
    add_endpoint(db, "p-hang", hanging.url)
    for i, receiver in enumerate(fast):
        add_endpoint(db, f"p-{i}", receiver.url)
    enqueue(db, events_for("p-hang", 5))
    worker = WorkerThread(db, push_timeout_s=4.0)
    try:
        time.sleep(0.3)  # the hanging endpoint's lane is stuck in its first request
        started = time.monotonic()
        for i in range(3):
            enqueue(db, events_for(f"p-{i}", 10))
        wait_for(lambda: all(len(r.ids()) >= 10 for r in fast), timeout_s=10,
                 what="the other endpoints' pushes")
        took = time.monotonic() - started
        wait_for(lambda: _timed_out(db), timeout_s=10, what="the hanging push's timeout")
    finally:
        worker.stop()
    assert took < 3.0  # inside the 4 s timeout the hanging endpoint is waiting out


def _timed_out(engine: Engine) -> bool:
    attempts = schema.webhook_attempts
    with engine.connect() as conn:
        errors = conn.execute(sqlalchemy.select(attempts.c.error)
                              .where(attempts.c.status_code.is_(None))).scalars().all()
    return any("timeout" in (e or "") for e in errors)


def test_410_disables_the_endpoint_and_enable_resumes(db: Engine,
                                                      receivers: list[Receiver]) -> None:
    from push_worker import endpoints

    receiver = _receiver(receivers, "gone")
    created = add_endpoint(db, "p-1", receiver.url)
    enqueue(db, events_for("p-1", 3))
    worker = WorkerThread(db)
    try:
        wait_for(lambda: len(receiver.received) >= 1, what="the first push")
        time.sleep(0.3)
        assert len(receiver.received) == 1  # disabled: nothing more is sent
        with db.connect() as conn:
            endpoint = endpoints.get_endpoint(conn, created.endpoint_id)
        assert endpoint.status == "disabled"
        assert endpoint.disabled_reason == "410 Gone"
        receiver.mode = "ok"
        with db.begin() as conn:
            endpoints.set_status(conn, created.endpoint_id, active=True)
        wait_for(lambda: len(receiver.ids()) >= 3, what="pushes after enable")
    finally:
        worker.stop()
    assert delivery_states(db) == {"delivered": 3}


def test_days_of_failure_disable_the_endpoint(db: Engine,
                                              receivers: list[Receiver]) -> None:
    receiver = _receiver(receivers, "fail_first", failures=1000)
    created = add_endpoint(db, "p-1", receiver.url)
    enqueue(db, events_for("p-1", 1))
    worker = WorkerThread(db, push_disable_after_days=0.3 / 86_400)
    try:
        wait_for(lambda: _status(db, created.endpoint_id) == "disabled",
                 what="disabled after failing")
    finally:
        worker.stop()
    assert 2 <= len(receiver.received) <= 4


def _status(engine: Engine, endpoint_id: str) -> str:
    table = schema.webhook_endpoints
    with engine.connect() as conn:
        return str(conn.execute(sqlalchemy.select(table.c.status)
                                .where(table.c.endpoint_id == endpoint_id)).scalar_one())


def test_no_subscriber_no_rows_and_replayed_writers_store_once(db: Engine) -> None:
    assert enqueue(db, events_for("nobody", 5)) == 0
    add_endpoint(db, "p-1", "http://127.0.0.1:9/x")
    add_endpoint(db, "live", "http://127.0.0.1:9/y", owner_kind="channel")
    events = events_for("p-1", 4, channel_id="live")
    assert enqueue(db, events) == 8
    assert enqueue(db, events) == 0
    with db.connect() as conn:
        stored = conn.execute(sqlalchemy.select(sqlalchemy.func.count())
                              .select_from(schema.webhook_events)).scalar_one()
    assert stored == 4


def test_two_workers_share_the_endpoints_and_keep_each_in_order(
        db: Engine, receivers: list[Receiver]) -> None:
    receiver = _receiver(receivers, "slow", delay_s=0.005)
    events = []
    for owner in ("p-1", "p-2", "p-3"):
        add_endpoint(db, owner, receiver.url)
        events += events_for(owner, 40)
    enqueue(db, events)
    workers = [WorkerThread(db, push_claim_max=4), WorkerThread(db, push_claim_max=4)]
    try:
        wait_for(lambda: delivery_states(db) == {"delivered": 120}, timeout_s=60,
                 what="every delivery")
    finally:
        for worker in workers:
            worker.stop()
    arrived = receiver.ids(None)
    assert sorted(arrived) == sorted(e.event_id for e in events)  # each once
    for owner in ("p-1", "p-2", "p-3"):
        mine = [e.event_id for e in events if e.promoter_id == owner]
        assert [i for i in arrived if i in set(mine)] == mine
    assert sum(w.worker.delivered for w in workers) == 120  # none delivered twice
