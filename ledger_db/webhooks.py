"""The webhook outbox's write side, shared by every writer (attribution, billing).

``enqueue_events(conn, events)`` runs inside the caller's transaction, so an event is
stored if and only if the change it reports is: it inserts each new event into
``webhook_events`` and one ``webhook_deliveries`` row (pending, due now) per *active*
endpoint of the event's promoter and of its channel, in the order of ``events`` (ids
ascend, and the push worker delivers each endpoint's rows in id order).

Cost when nobody subscribes (the common case: a billing run of 2,000 orders a batch
over promoters without endpoints): a writer asks ``has_subscribers`` (one indexed
one-row query per batch) and, with no active endpoint anywhere, builds no event at all;
otherwise ``subscriptions`` (one query per 500 owners) finds whose endpoints are active
and only their events are built.  Both inserts are ``ON CONFLICT DO NOTHING`` and a
delivery is added only for an event whose insert won, so a replayed writer (a batch
re-run after a crash, a dead letter replayed) stores and pushes each event once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from contracts.webhooks import WebhookEvent
from ledger_db import schema

IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Subscriptions:
    """Active endpoint ids by owner: ``("promoter", "p-1") -> ("wh_1", ...)``."""

    by_owner: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.by_owner)

    def promoter_ids(self) -> set[str]:
        return {owner for kind, owner in self.by_owner if kind == "promoter"}

    def channel_ids(self) -> set[str]:
        return {owner for kind, owner in self.by_owner if kind == "channel"}

    def endpoints_for(self, event: WebhookEvent) -> list[str]:
        found: list[str] = []
        for key in (("promoter", event.promoter_id), ("channel", event.channel_id)):
            if key[1] is not None:
                found.extend(e for e in self.by_owner.get((key[0], key[1]), ())
                             if e not in found)
        return found


def subscriptions(conn: Connection, promoter_ids: Iterable[str | None],
                  channel_ids: Iterable[str | None]) -> Subscriptions:
    """The active endpoints of these promoters and channels (one query per 500 owners)."""
    table = schema.webhook_endpoints
    wanted = [("promoter", p) for p in sorted({p for p in promoter_ids if p})]
    wanted += [("channel", c) for c in sorted({c for c in channel_ids if c})]
    by_owner: dict[tuple[str, str], list[str]] = {}
    for start in range(0, len(wanted), IN_CHUNK):
        chunk = wanted[start:start + IN_CHUNK]
        owners = sqlalchemy.tuple_(table.c.owner_kind, table.c.owner_id).in_(chunk)
        rows = conn.execute(sqlalchemy.select(table.c.owner_kind, table.c.owner_id,
                                              table.c.endpoint_id)
                            .where(table.c.status == "active", owners)
                            .order_by(table.c.endpoint_id))
        for kind, owner, endpoint_id in rows:
            by_owner.setdefault((kind, owner), []).append(endpoint_id)
    return Subscriptions({key: tuple(ids) for key, ids in by_owner.items()})


def subscriptions_for(conn: Connection, events: Sequence[WebhookEvent]) -> Subscriptions:
    return subscriptions(conn, (e.promoter_id for e in events), (e.channel_id for e in events))


def enqueue_events(conn: Connection, events: Sequence[WebhookEvent],
                   subs: Subscriptions | None = None, *, now_ms: int | None = None) -> int:
    """Store the subscribed events and their deliveries; how many deliveries were added.

    ``subs``: the writer's ``subscriptions`` if it already asked (saves the query)."""
    if not events:
        return 0
    subs = subscriptions_for(conn, events) if subs is None else subs
    wanted = [(event, subs.endpoints_for(event)) for event in events]
    wanted = [(event, endpoints) for event, endpoints in wanted if endpoints]
    if not wanted:
        return 0
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    unique: dict[str, tuple[WebhookEvent, list[str]]] = {}
    for event, endpoints in wanted:
        unique.setdefault(event.event_id, (event, endpoints))
    insert = _insert(conn, schema.webhook_events)
    stored = set(conn.execute(
        insert.on_conflict_do_nothing(index_elements=["event_id"])
        .returning(schema.webhook_events.c.event_id),
        [{"event_id": e.event_id, "event_type": e.event_type.value, "order_id": e.order_id,
          "promoter_id": e.promoter_id, "channel_id": e.channel_id,
          "payload": e.payload.decode(), "occurred_at": e.occurred_at_ms, "created_at": now}
         for e, _ in unique.values()]).scalars())
    rows = [{"event_id": e.event_id, "endpoint_id": endpoint, "status": "pending",
             "attempts": 0, "next_attempt_at": now, "created_at": now}
            for e, endpoints in unique.values() if e.event_id in stored
            for endpoint in endpoints]
    if not rows:
        return 0
    # One row at a time keeps the ids in the events' order on every dialect.
    deliveries = _insert(conn, schema.webhook_deliveries).on_conflict_do_nothing(
        index_elements=["event_id", "endpoint_id"])
    conn.execute(deliveries, rows)
    return len(rows)


def _insert(conn: Connection, table: sqlalchemy.Table) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def has_subscribers(conn: Connection) -> bool:
    """Whether any endpoint is active: a writer's first, one-row, indexed question."""
    table = schema.webhook_endpoints
    return conn.execute(sqlalchemy.select(table.c.endpoint_id)
                        .where(table.c.status == "active").limit(1)).first() is not None
