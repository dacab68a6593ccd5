"""The push worker's reads and writes of the webhook outbox (ledger tables, no HTTP).

Claims are leases: ``claim`` takes the first ``limit`` pending deliveries of ONE endpoint
in id order (only the due prefix: an endpoint's next event waits for the current one)
and pushes their ``next_attempt_at`` forward by ``lease_ms``.  A worker that dies holding
a lease loses nothing: the rows fall due again when it runs out and are sent again with
the same ``webhook-id`` (at least once).  The head of the queue must be among the rows
the UPDATE won, else the claim is rolled back: two workers never send one endpoint's
events side by side.  ``record`` writes a batch's outcomes in one transaction: each
delivery's new state, one ``webhook_attempts`` row per attempt, the endpoint's failing
streak (and its disabling), and gives back the rows it claimed but did not send.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy
from sqlalchemy import Connection, Engine, func, select

from ledger_db import schema
from push_worker.policy import Attempt, Transition, Verdict, describe

D = schema.webhook_deliveries
E = schema.webhook_endpoints
V = schema.webhook_events
A = schema.webhook_attempts


@dataclass(frozen=True, slots=True)
class Claimed:
    delivery_id: int
    event_id: str
    attempts: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    deliveries: list[Claimed]
    head_due_at_ms: int | None  # nothing claimed: when the head is due (None: no work)


@dataclass(frozen=True, slots=True)
class Outcome:
    claimed: Claimed
    attempt: Attempt
    transition: Transition
    started_at_ms: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def due_endpoints(engine: Engine, now_ms: int) -> set[str]:
    """Active endpoints with a due pending delivery (one indexed query)."""
    query = (select(D.c.endpoint_id).distinct()
             .where(D.c.status == "pending", D.c.next_attempt_at <= now_ms))
    with engine.connect() as conn:
        due = set(conn.scalars(query))
        if not due:
            return due
        active = set(conn.scalars(select(E.c.endpoint_id).where(
            E.c.status == "active", E.c.endpoint_id.in_(sorted(due)))))
    return due & active


def claim(engine: Engine, endpoint_id: str, now_ms: int, limit: int, lease_ms: int) -> Claim:
    with engine.connect() as conn:
        conn.execution_options(ledger_begin="IMMEDIATE")
        with conn.begin() as transaction:
            rows = conn.execute(
                select(D.c.id, D.c.event_id, D.c.attempts, D.c.next_attempt_at, V.c.payload)
                .join(V, V.c.event_id == D.c.event_id)
                .where(D.c.endpoint_id == endpoint_id, D.c.status == "pending")
                .order_by(D.c.id).limit(limit)).all()
            if not rows:
                return Claim([], None)
            due = []
            for row in rows:
                if row.next_attempt_at > now_ms:
                    break
                due.append(row)
            if not due:
                return Claim([], int(rows[0].next_attempt_at))
            won = set(conn.scalars(
                D.update().where(D.c.id.in_([r.id for r in due]),
                                 D.c.status == "pending", D.c.next_attempt_at <= now_ms)
                .values(next_attempt_at=now_ms + lease_ms).returning(D.c.id)))
            if rows[0].id not in won:  # another worker has this endpoint's head
                transaction.rollback()
                return Claim([], now_ms + lease_ms)
    return Claim([Claimed(r.id, r.event_id, r.attempts, r.payload.encode())
                  for r in due if r.id in won], None)


def record(engine: Engine, endpoint_id: str, outcomes: Sequence[Outcome],
           unsent: Sequence[Claimed], now_ms: int) -> None:
    """The outcomes of one claim, the unsent rows handed back, the endpoint's streak."""
    with engine.connect() as conn:
        conn.execution_options(ledger_begin="IMMEDIATE")
        with conn.begin():
            _write_outcomes(conn, outcomes)
            if unsent:
                conn.execute(D.update().where(D.c.id.in_([c.delivery_id for c in unsent]),
                                              D.c.status == "pending")
                             .values(next_attempt_at=now_ms))
            if outcomes:
                _update_endpoint(conn, endpoint_id, outcomes[-1].transition, now_ms)


def _write_outcomes(conn: Connection, outcomes: Sequence[Outcome]) -> None:
    if not outcomes:
        return
    conn.execute(A.insert(), [
        {"delivery_id": o.claimed.delivery_id, "attempt": o.transition.attempts,
         "started_at": o.started_at_ms, "latency_ms": o.attempt.latency_ms,
         "status_code": o.attempt.status_code,
         "error": None if o.attempt.error is None else o.attempt.error[:200]}
        for o in outcomes])
    conn.execute(D.update().where(D.c.id == sqlalchemy.bindparam("b_id")).values(
        status=sqlalchemy.bindparam("b_status"), attempts=sqlalchemy.bindparam("b_attempts"),
        next_attempt_at=sqlalchemy.bindparam("b_next"),
        last_status_code=sqlalchemy.bindparam("b_code"),
        last_error=sqlalchemy.bindparam("b_error"),
        delivered_at=sqlalchemy.bindparam("b_delivered"), dead_at=sqlalchemy.bindparam("b_end")), [
        {"b_id": o.claimed.delivery_id, "b_status": o.transition.delivery_status,
         "b_attempts": o.transition.attempts,
         "b_next": o.transition.next_attempt_at_ms or o.started_at_ms,
         "b_code": o.attempt.status_code,
         "b_error": None if o.attempt.ok else describe(o.attempt),
         "b_delivered": o.started_at_ms + o.attempt.latency_ms
         if o.transition.verdict is Verdict.DELIVERED else None,
         "b_end": o.started_at_ms if o.transition.verdict is Verdict.DEAD else None}
        for o in outcomes])


def _update_endpoint(conn: Connection, endpoint_id: str, last: Transition,
                     now_ms: int) -> None:
    values: dict[str, object] = {"failing_since": last.failing_since_ms}
    if last.disable_reason is not None:
        values |= {"status": "disabled", "disabled_reason": last.disable_reason,
                   "disabled_at": now_ms, "updated_at": now_ms}
    conn.execute(E.update().where(E.c.endpoint_id == endpoint_id).values(**values))


# -- listings and replays (the CLI) -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    event_id: str
    event_type: str
    endpoint_id: str
    status: str
    attempts: int
    next_attempt_at: int
    last_status_code: int | None
    last_error: str | None
    created_at: int


def list_deliveries(conn: Connection, *, dead: bool = False, limit: int = 100,
                    endpoint_id: str | None = None) -> list[DeliveryRow]:
    query = (select(D.c.id, D.c.event_id, V.c.event_type, D.c.endpoint_id, D.c.status,
                    D.c.attempts, D.c.next_attempt_at, D.c.last_status_code, D.c.last_error,
                    D.c.created_at).join(V, V.c.event_id == D.c.event_id)
             .order_by(D.c.id.desc()).limit(limit))
    if dead:
        query = query.where(D.c.status == "dead")
    if endpoint_id is not None:
        query = query.where(D.c.endpoint_id == endpoint_id)
    return [DeliveryRow(**row._mapping) for row in conn.execute(query)]


def delivery_log(conn: Connection, event_id: str) -> list[dict[str, object]]:
    """Every attempt of every delivery of ``event_id``, in order."""
    query = (select(D.c.id.label("delivery_id"), D.c.endpoint_id, D.c.status, A.c.attempt,
                    A.c.started_at, A.c.latency_ms, A.c.status_code, A.c.error)
             .select_from(D.outerjoin(A, A.c.delivery_id == D.c.id))
             .where(D.c.event_id == event_id).order_by(D.c.id, A.c.id))
    return [dict(row._mapping) for row in conn.execute(query)]


def replay(conn: Connection, *, delivery_id: int | None = None, all_dead: bool = False,
           now_ms: int | None = None) -> int:
    """Dead deliveries back to pending, due now, with a fresh schedule; how many."""
    now = _now_ms() if now_ms is None else now_ms
    query = D.update().where(D.c.status == "dead")
    if delivery_id is not None:
        query = query.where(D.c.id == delivery_id)
    elif not all_dead:
        return 0
    result = conn.execute(query.values(status="pending", attempts=0, next_attempt_at=now,
                                       dead_at=None))
    return result.rowcount or 0


def backlog(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {status: int(count) for status, count in conn.execute(
            select(D.c.status, func.count()).where(D.c.status != "delivered")
            .group_by(D.c.status))}
