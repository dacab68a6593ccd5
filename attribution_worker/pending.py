"""The delayed-attribution queue and the decision record, in the ledger database.

An order enters ``attribution_pending`` when order sync first stores it (in the
same transaction, so no order is ever forgotten) and leaves it in the
transaction that stores its decision and queues the decision's outbox message:

    enqueue        (order sync)  attribution_pending += order, due now
    claim_due      (attributor)  due rows, leased: next_attempt_at += lease
    reschedule_many (attributor) no evidence yet: attempts += 1, due at first_seen + delay
    decide_many    (attributor)  attribution_decisions += decision (once: the primary
                                 key is order_id), outbox += its message, pending -= order,
                                 webhook events of a cps/self_operated order
                                 (``attribution_worker.pushes``)

A worker that dies holding a lease loses nothing: its rows fall due again when
the lease (default 60 s) runs out, and another worker decides them; ``decide_many``
inserts with ``ON CONFLICT DO NOTHING`` and writes the outbox row only when its
insert won, so a decision is stored and published once whoever races.  Claims
use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (two workers never claim the same
row); SQLite serializes writers, which makes its claim atomic as it is.

Delays count from ``first_seen_at``: with the schedule (10, 60, 300, 1800) an order
without evidence is looked at on arrival and 10 s, 1 min, 5 min and 30 min after,
and decided ``self_operated`` or ``none`` on that last look.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

from attribution_worker import pushes
from contracts.attribution import AttributionDecision
from contracts.topics import ATTRIBUTIONS_TOPIC
from ledger_db import outbox, schema

DEFAULT_LEASE_MS = 60_000

# PostgreSQL: a whole batch as ONE JSON parameter (orjson builds it in ~1 ms for 1,000
# rows; executemany would cost a Bind/Execute and client-side conversion per row).
# Built from fixed names, never from data: the rows are one bound value.
_PG_ENQUEUE = (
    "INSERT INTO attribution_pending (order_id, first_seen_at, next_attempt_at, attempts) "
    "SELECT order_id, first_seen_at, next_attempt_at, attempts FROM json_to_recordset("
    "%(rows)s::json) AS r(order_id varchar, first_seen_at bigint, next_attempt_at bigint, "
    "attempts integer) ON CONFLICT (order_id) DO NOTHING")
_PG_RESCHEDULE = (
    "UPDATE attribution_pending AS p SET attempts = r.attempts, "
    "next_attempt_at = r.next_attempt_at FROM json_to_recordset(%(rows)s::json) AS "
    "r(order_id varchar, attempts integer, next_attempt_at bigint) "
    "WHERE p.order_id = r.order_id")
_PG_DECIDE = (
    "INSERT INTO attribution_decisions (order_id, attribution_type, promoter_id, channel_id, "
    "position_id, click_id, evidence, reason, order_created_at, decided_at, attempts) "
    "SELECT order_id, attribution_type, promoter_id, channel_id, position_id, click_id, "
    "evidence, reason, order_created_at, decided_at, attempts FROM json_to_recordset("
    "%(rows)s::json) AS r(order_id varchar, attribution_type varchar, promoter_id varchar, "
    "channel_id varchar, position_id varchar, click_id varchar, evidence varchar, "
    "reason varchar, order_created_at bigint, decided_at bigint, attempts integer) "
    "ON CONFLICT (order_id) DO NOTHING RETURNING order_id")
_PG_DEQUEUE = "DELETE FROM attribution_pending WHERE order_id = ANY(%(ids)s)"


def _json(rows: Sequence[Mapping[str, Any]]) -> str:
    return orjson.dumps(rows).decode()


@dataclass(frozen=True, slots=True)
class Claim:
    order_id: str
    first_seen_at: int
    attempts: int  # looks already taken before this one


def _insert(connection: Connection, table: sqlalchemy.Table) -> postgresql.Insert | sqlite.Insert:
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def enqueue(connection: Connection, orders: Iterable[tuple[str, int]]) -> int:
    """Queue ``(order_id, first_seen_at_ms)`` for attribution unless queued or decided."""
    rows = [{"order_id": order_id, "first_seen_at": seen, "next_attempt_at": seen,
             "attempts": 0} for order_id, seen in orders]
    if not rows:
        return 0
    decided = set(connection.scalars(
        sqlalchemy.select(schema.attribution_decisions.c.order_id)
        .where(schema.attribution_decisions.c.order_id.in_([r["order_id"] for r in rows]))))
    rows = [r for r in rows if r["order_id"] not in decided]
    if not rows:
        return 0
    if connection.dialect.name == "postgresql":
        return connection.exec_driver_sql(_PG_ENQUEUE, {"rows": _json(rows)}).rowcount or 0
    statement = _insert(connection, schema.attribution_pending).on_conflict_do_nothing(
        index_elements=["order_id"])
    return connection.execute(statement, rows).rowcount or 0


def sweep(engine: Engine, now_ms: int) -> int:
    """Queue every stored order that has neither a decision nor a queue entry.

    Order sync queues orders as it stores them; this catches the ones stored by
    another path (a dead letter replayed with ``cps-admin deadletters replay``).
    """
    orders, queue = schema.orders, schema.attribution_pending
    decided = schema.attribution_decisions
    missing = (sqlalchemy.select(orders.c.order_id, sqlalchemy.literal(now_ms),
                                 sqlalchemy.literal(now_ms), sqlalchemy.literal(0))
               .where(~sqlalchemy.exists().where(queue.c.order_id == orders.c.order_id))
               .where(~sqlalchemy.exists().where(decided.c.order_id == orders.c.order_id)))
    with engine.begin() as connection:
        result = connection.execute(queue.insert().from_select(
            ["order_id", "first_seen_at", "next_attempt_at", "attempts"], missing))
    return result.rowcount or 0


def claim_due(engine: Engine, now_ms: int, limit: int,
              lease_ms: int = DEFAULT_LEASE_MS) -> list[Claim]:
    """Lease up to ``limit`` due orders, oldest due first.

    One UPDATE with the selection as a subquery: on SQLite the transaction starts
    as a writer (a SELECT first would have to upgrade, which fails under
    concurrency instead of waiting), on PostgreSQL ``SKIP LOCKED`` keeps two
    claimers apart.
    """
    table = schema.attribution_pending
    with engine.begin() as connection:
        due = (sqlalchemy.select(table.c.order_id).where(table.c.next_attempt_at <= now_ms)
               .order_by(table.c.next_attempt_at).limit(limit))
        if connection.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        rows = connection.execute(
            table.update().where(table.c.order_id.in_(due.scalar_subquery()))
            .values(next_attempt_at=now_ms + lease_ms)
            .returning(table.c.order_id, table.c.first_seen_at, table.c.attempts)).all()
    return [Claim(order_id, seen, attempts) for order_id, seen, attempts in rows]


def next_attempt_at(claim: Claim, schedule_s: Sequence[int]) -> int | None:
    """When to look again after this look, or None when this look is the last."""
    done = claim.attempts + 1
    if done > len(schedule_s):
        return None
    return claim.first_seen_at + schedule_s[done - 1] * 1000


def is_final(claim: Claim, schedule_s: Sequence[int]) -> bool:
    return claim.attempts >= len(schedule_s)


def reschedule_many(connection: Connection, later: Sequence[tuple[Claim, int]]) -> None:
    """Each claimed order's next look (attempts + 1), in one executemany."""
    if not later:
        return
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(_PG_RESCHEDULE, {"rows": _json([
            {"order_id": claim.order_id, "attempts": claim.attempts + 1, "next_attempt_at": at}
            for claim, at in later])})
        return
    table = schema.attribution_pending
    statement = (table.update().where(table.c.order_id == sqlalchemy.bindparam("b_order_id"))
                 .values(attempts=sqlalchemy.bindparam("b_attempts"),
                         next_attempt_at=sqlalchemy.bindparam("b_next")))
    connection.execute(statement, [{"b_order_id": claim.order_id, "b_attempts": claim.attempts + 1,
                                    "b_next": at_ms} for claim, at_ms in later])


def decide_many(connection: Connection, decisions: Sequence[AttributionDecision]) -> set[str]:
    """Store decisions, queue the messages of the new ones; the order ids actually stored.

    Three statements whatever the batch size: the decisions' insert (rows that
    lose a race to another worker are skipped by ``ON CONFLICT DO NOTHING`` and
    absent from ``RETURNING``), the queue delete, and the outbox insert.
    """
    if not decisions:
        return set()
    rows = [{
        "order_id": d.order_id, "attribution_type": d.attribution_type.value,
        "promoter_id": d.promoter_id, "channel_id": d.channel_id,
        "position_id": d.position_id, "click_id": d.click_id, "evidence": d.evidence.value,
        "reason": d.reason[:500], "order_created_at": d.order_created_at,
        "decided_at": d.decided_at, "attempts": d.attempts} for d in decisions]
    table = schema.attribution_decisions
    queue = schema.attribution_pending
    if connection.dialect.name == "postgresql":
        stored = set(connection.exec_driver_sql(_PG_DECIDE, {"rows": _json(rows)}).scalars())
        connection.exec_driver_sql(_PG_DEQUEUE, {"ids": [d.order_id for d in decisions]})
    else:
        statement = (_insert(connection, table)
                     .on_conflict_do_nothing(index_elements=["order_id"])
                     .returning(table.c.order_id))
        stored = set(connection.execute(statement, rows).scalars().all())
        connection.execute(queue.delete().where(queue.c.order_id.in_(
            [d.order_id for d in decisions])))
    fresh = [d for d in decisions if d.order_id in stored]
    outbox.enqueue_many(connection, [(ATTRIBUTIONS_TOPIC, d.order_id.encode(), d.to_json())
                                     for d in fresh])
    pushes.emit_decided(connection, fresh)  # webhooks: the order's statuses so far
    return stored


def depth(engine: Engine) -> int:
    table = schema.attribution_pending
    with engine.connect() as connection:
        return int(connection.execute(
            sqlalchemy.select(sqlalchemy.func.count()).select_from(table)).scalar_one())


def decision_of(engine: Engine, order_id: str) -> dict[str, object] | None:
    table = schema.attribution_decisions
    with engine.connect() as connection:
        row = connection.execute(sqlalchemy.select(table).where(
            table.c.order_id == order_id)).mappings().first()
    return dict(row) if row is not None else None
