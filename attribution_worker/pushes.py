"""Order events for webhooks, from the attribution service's two writers.

* ``emit_decided(conn, decisions)``: when ``pending.decide_many`` stores a ``cps`` or
  ``self_operated`` decision, every status the order has reached so far
  (``contracts.webhooks.order_events``: created, then paid, ...), since nothing was
  pushed before the order had a promoter;
* ``emit_status_changes(conn, outcomes)``: when order sync moves an order that already
  has such a decision to a new status, that status's event (one per status change in
  the batch, in message order).

Both run in their writer's transaction and cost one indexed one-row query per batch when
no endpoint is active (``ledger_db.webhooks.has_subscribers``).  When some are, the order
rows are read ``FOR UPDATE`` on PostgreSQL (order sync locks them too), so a decision and
a status change committed side by side cannot each miss the other's event; a duplicate
is harmless (deterministic event ids, ``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, func, select

from attribution_worker.order_store import Outcome
from contracts.attribution import AttributionDecision, AttributionType
from contracts.webhooks import OrderSnapshot, WebhookEvent, order_event, order_events
from ledger_db import schema, webhooks

PUSHED_TYPES = (AttributionType.CPS.value, AttributionType.SELF_OPERATED.value)


def emit_decided(conn: Connection, decisions: Sequence[AttributionDecision]) -> int:
    """Order events of newly stored decisions; how many deliveries were queued."""
    pushed = [d for d in decisions if d.attribution_type.value in PUSHED_TYPES]
    if not pushed or not webhooks.has_subscribers(conn):
        return 0
    subs = webhooks.subscriptions(conn, (d.promoter_id for d in pushed),
                                  (d.channel_id for d in pushed))
    wanted = [d for d in pushed if d.promoter_id in subs.promoter_ids()
              or d.channel_id in subs.channel_ids()]
    if not wanted:
        return 0
    snapshots = _snapshots(conn, {d.order_id: (d.attribution_type.value, d.promoter_id,
                                               d.channel_id, d.position_id) for d in wanted})
    events = [e for d in wanted if d.order_id in snapshots
              for e in order_events(snapshots[d.order_id])]
    return webhooks.enqueue_events(conn, events, subs)


def emit_status_changes(conn: Connection, outcomes: Sequence[Outcome]) -> int:
    """``order.<status>`` of attributed orders whose status this batch moved."""
    changed = [o for o in outcomes if o.status_changed and not o.created
               and o.order_id is not None and o.status is not None]
    if not changed or not webhooks.has_subscribers(conn):
        return 0
    table = schema.attribution_decisions
    decided = {row.order_id: (row.attribution_type, row.promoter_id, row.channel_id,
                              row.position_id) for row in conn.execute(
        select(table.c.order_id, table.c.attribution_type, table.c.promoter_id,
               table.c.channel_id, table.c.position_id)
        .where(table.c.order_id.in_(sorted({o.order_id for o in changed if o.order_id})),
               table.c.attribution_type.in_(PUSHED_TYPES)))}
    if not decided:
        return 0
    snapshots = _snapshots(conn, decided)
    events: list[WebhookEvent] = [order_event(snapshots[o.order_id], o.status.value)
                                  for o in changed
                                  if o.order_id in snapshots and o.status is not None]
    return webhooks.enqueue_events(conn, events)


def _snapshots(conn: Connection, decided: dict[str, tuple[str, str | None, str | None,
                                                         str | None]]
               ) -> dict[str, OrderSnapshot]:
    orders, items = schema.orders, schema.order_items
    ids = sorted(decided)
    query = select(orders).where(orders.c.order_id.in_(ids))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    rows = conn.execute(query).mappings().all()
    sums = {order_id: (int(paid or 0), int(refunded or 0)) for order_id, paid, refunded in
            conn.execute(select(items.c.order_id, func.sum(items.c.paid_amount),
                                func.sum(items.c.refunded_amount))
                         .where(items.c.order_id.in_(ids)).group_by(items.c.order_id))}
    out: dict[str, OrderSnapshot] = {}
    for row in rows:
        kind, promoter, channel, position = decided[row["order_id"]]
        paid, refunded = sums.get(row["order_id"], (0, 0))
        out[row["order_id"]] = OrderSnapshot(
            row["order_id"], row["shop_id"], row["status"], kind, promoter,
            channel or row["channel_id"], position, row["buyer_account"], paid, refunded,
            row["created_at"], row["paid_at"], row["received_at"], row["final_at"],
            row["updated_at"])
    return out
