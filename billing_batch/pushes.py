"""Commission and payout events for webhooks, from a billing run's plans and payouts.

Events are per order line and participant (a ``promoter:P`` or ``channel:C`` account;
other participants have no endpoints) and go to that participant's endpoints only, read
off the transfers a batch writes (``plan.transfers``), so nothing more is queried:

=========================  =====================================================
``commission.accrued``     a ``commission`` pending of sequence 1: a new line
``commission.reduced``     a ``void`` of a pending (a refund re-allocated the
                           line): ``amount`` is the change (negative), ``commission``
                           the share after it (the new pending, or 0)
``commission.settled``     a ``settle`` post
``commission.clawed_back`` a ``clawback`` after settlement (``amount`` < 0)
``payout.created``         a payout of the run to that participant
=========================  =====================================================

Ids come from (type, order/item/account, ledger sequence) and (payout id), so a batch
replayed after a crash produces the same events, stored once.  With no active endpoint
the batch costs one one-row query (``ledger_db.webhooks.has_subscribers``) and builds
nothing: the billing run's benchmark path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection

from billing_batch.ledger import Code, Flags, Transfer
from contracts.webhooks import EventType, WebhookEvent, commission_event, payout_event
from ledger_db import webhooks

PUSHED_KINDS = ("promoter", "channel")


def _pushed(account: str) -> bool:
    return account.partition(":")[0] in PUSHED_KINDS


def commission_events(transfers: Iterable[Transfer], now_ms: int) -> list[WebhookEvent]:
    """The events of one batch's transfers (pure), in transfer order."""
    listed = list(transfers)
    new_pending = {(t.order_id, t.item_id, t.credit_account_id, t.seq): t.amount_minor
                   for t in listed if t.code is Code.COMMISSION and t.flags is Flags.PENDING}
    events: list[WebhookEvent] = []
    for t in listed:
        if t.order_id is None or t.item_id is None:
            continue
        kind, account, amount, commission = _classify(t, listed, new_pending)
        if kind is None or not _pushed(account):
            continue
        events.append(commission_event(kind, order_id=t.order_id, item_id=t.item_id,
                                       account=account, seq=t.seq, amount=amount,
                                       commission=commission, occurred_at_ms=now_ms))
    return events


def _classify(t: Transfer, listed: Sequence[Transfer],
              new_pending: dict[tuple[str | None, str | None, str, int], int]
              ) -> tuple[EventType | None, str, int, int | None]:
    if t.code is Code.COMMISSION and t.flags is Flags.PENDING and t.seq == 1:
        return EventType.COMMISSION_ACCRUED, t.credit_account_id, t.amount_minor, \
            t.amount_minor
    if t.code is Code.VOID:
        later = [amount for (o, i, a, s), amount in new_pending.items()
                 if (o, i, a) == (t.order_id, t.item_id, t.credit_account_id) and s > t.seq]
        after = later[0] if later else 0
        return EventType.COMMISSION_REDUCED, t.credit_account_id, after - t.amount_minor, after
    if t.code is Code.SETTLE:
        return EventType.COMMISSION_SETTLED, t.credit_account_id, t.amount_minor, \
            t.amount_minor
    if t.code is Code.CLAWBACK:
        return EventType.COMMISSION_CLAWED_BACK, t.debit_account_id, -t.amount_minor, None
    return None, "", 0, 0


def emit_transfers(conn: Connection, transfers: Sequence[Transfer], now_ms: int) -> int:
    """Queue a batch's commission events in its transaction; deliveries queued."""
    if not transfers or not webhooks.has_subscribers(conn):
        return 0
    events = commission_events(transfers, now_ms)
    return webhooks.enqueue_events(conn, events) if events else 0


def emit_payouts(conn: Connection, run_id: str, payouts: Sequence[tuple[str, int]],
                 now_ms: int) -> int:
    """``payout.created`` of (account, amount) payouts of one run, in its transaction."""
    pushed = [(account, amount) for account, amount in payouts if _pushed(account)]
    if not pushed or not webhooks.has_subscribers(conn):
        return 0
    return webhooks.enqueue_events(conn, [
        payout_event(payout_id=f"{run_id}:{account}", run_id=run_id, account=account,
                     amount=amount, occurred_at_ms=now_ms) for account, amount in pushed])
