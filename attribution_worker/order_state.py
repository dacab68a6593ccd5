"""The order status machine of SPEC section 6, as a pure function over snapshots.

``decide(stored, message)`` says what one order message does to the order the ledger
holds (``None`` before its first message): ``Apply(state)``, ``Ignore(reason)`` or
``Reject(reason, field)`` (the message contradicts the order: dead-letter it).

Every message is a full snapshot (``contracts.orders``), so the ledger's order is the
*join* of the snapshots it has seen, built from two rules that do not depend on the
order in which messages arrive:

* **the newest snapshot wins** for the order's fields and items, newest by
  ``(status_rank(status), event_ts)``: a lower status never overwrites a higher one
  (monotonic), and within one status the later ``event_ts`` wins;
* **refunds merge by refund_id**, and a refund's status only moves forward
  (``refund_rank``: pending -> completed | rejected), so an older snapshot can add a
  refund but never take one back.

Both are commutative, associative and idempotent: duplicates and replays change nothing
(``Ignore``), and any permutation of a valid history ends in the state of its last
snapshot (tests/unit/attribution_worker/test_order_state.py checks this with hypothesis).
Per item, ``refunded_amount`` is the sum of its completed refunds and
``refund_pending_amount`` that of its pending ones.

A message is rejected, whichever of the two arrived first (the checks are symmetric,
so rejection does not depend on arrival order either), when it and the stored order
cannot both be true: a different ``shop_id``, ``created_at``, ``buyer_key`` or
``buyer_account``; statuses that exclude each other (``paid`` and ``cancelled``:
``can_follow`` holds in neither direction); different items once both are paid; a
changed ``paid_at`` / ``received_at`` / ``final_at``; a refund that changed its item,
amount or request time, or that is both completed and rejected; refunds of an item
beyond its ``paid_amount``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from contracts.orders import (
    OrderMessage,
    OrderStatus,
    RefundStatus,
    can_follow,
    refund_rank,
    status_rank,
)

PAID_STATUSES = frozenset({OrderStatus.PAID, OrderStatus.RECEIVED, OrderStatus.FINAL,
                           OrderStatus.REFUNDED})
_IDENTITY = ("shop_id", "created_at", "buyer_key", "buyer_account")
_MILESTONES = ("paid_at", "received_at", "final_at")


@dataclass(frozen=True, slots=True)
class ItemState:
    item_id: str
    product_id: str
    category_id: str
    quantity: int
    paid_amount: int  # minor units, the whole line
    refunded_amount: int = 0  # completed refunds
    refund_pending_amount: int = 0  # pending refunds

    def line(self) -> tuple[str, str, str, int, int]:
        """What the trade system sold, without what the ledger derived from refunds."""
        return (self.item_id, self.product_id, self.category_id, self.quantity,
                self.paid_amount)


@dataclass(frozen=True, slots=True)
class RefundState:
    refund_id: str
    item_id: str
    amount: int
    status: RefundStatus
    requested_at: int


@dataclass(frozen=True, slots=True)
class OrderState:
    """An order as the ledger holds it; items sorted by item_id, refunds by refund_id."""

    order_id: str
    shop_id: str
    buyer_key: str | None
    buyer_account: str | None
    created_at: int
    status: OrderStatus
    event_ts: int
    items: tuple[ItemState, ...]
    refunds: tuple[RefundState, ...] = ()
    paid_at: int | None = None
    received_at: int | None = None
    final_at: int | None = None
    channel_id: str | None = None
    fanstype: str | None = None
    attribution_token: str | None = None


@dataclass(frozen=True, slots=True)
class Apply:
    state: OrderState
    previous: OrderState | None  # None: the order is new to the ledger

    @property
    def created(self) -> bool:
        return self.previous is None


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str
    field: str


Decision = Apply | Ignore | Reject


def decide(stored: OrderState | None, message: OrderMessage) -> Decision:
    """What ``message`` does to the ``stored`` order (see the module docstring)."""
    incoming = state_of(message)
    if stored is None:
        return Apply(incoming, None)
    if incoming.order_id != stored.order_id:
        raise ValueError(f"message for order {incoming.order_id!r} decided against "
                         f"order {stored.order_id!r}")
    conflict = _conflict(stored, incoming)
    if conflict is not None:
        return conflict
    newer = _newness(incoming) > _newness(stored)
    refunds = _merge_refunds(stored.refunds, incoming.refunds)
    if isinstance(refunds, Reject):
        return refunds
    merged = _with_refunds(incoming if newer else stored, refunds)
    if isinstance(merged, Reject):
        return merged
    if merged == stored:
        return Ignore(_why_ignored(stored, incoming))
    return Apply(merged, stored)


def state_of(message: OrderMessage) -> OrderState:
    """The order exactly as one snapshot describes it."""
    refunds = tuple(sorted((RefundState(r.refund_id, r.item_id, r.amount, r.status,
                                        r.requested_at) for r in message.refunds),
                           key=lambda r: r.refund_id))
    # The schema already bounds one message's refunds by each item's paid_amount.
    completed, pending = _refund_sums(refunds)
    items = tuple(sorted((ItemState(i.item_id, i.product_id, i.category_id, i.quantity,
                                    i.paid_amount, completed.get(i.item_id, 0),
                                    pending.get(i.item_id, 0)) for i in message.items),
                         key=lambda i: i.item_id))
    return OrderState(
        order_id=message.order_id, shop_id=message.shop_id, buyer_key=message.buyer_key,
        buyer_account=message.buyer_account, created_at=message.created_at,
        status=message.status, event_ts=message.event_ts, items=items, refunds=refunds,
        paid_at=message.paid_at, received_at=message.received_at, final_at=message.final_at,
        channel_id=message.channel_id, fanstype=message.fanstype,
        attribution_token=message.attribution_token)


def _newness(state: OrderState) -> tuple[int, int]:
    return status_rank(state.status), state.event_ts


def _conflict(stored: OrderState, incoming: OrderState) -> Reject | None:
    for name in _IDENTITY:
        have, got = getattr(stored, name), getattr(incoming, name)
        if have != got:
            return Reject(f"{name} {got!r} differs from the ledger's {have!r} for this order",
                          name)
    if not (can_follow(stored.status, incoming.status)
            or can_follow(incoming.status, stored.status)):
        return Reject(f"status {incoming.status.value} cannot happen to an order that is "
                      f"{stored.status.value}", "status")
    if stored.status in PAID_STATUSES and incoming.status in PAID_STATUSES \
            and [i.line() for i in stored.items] != [i.line() for i in incoming.items]:
        return Reject("items changed after payment", "items")
    for name in _MILESTONES:
        have, got = getattr(stored, name), getattr(incoming, name)
        if have is not None and got is not None and have != got:
            return Reject(f"{name} {got} differs from the ledger's {have}", name)
    return None


def _merge_refunds(stored: Iterable[RefundState],
                   incoming: Iterable[RefundState]) -> tuple[RefundState, ...] | Reject:
    merged = {r.refund_id: r for r in stored}
    for refund in incoming:
        have = merged.get(refund.refund_id)
        if have is None:
            merged[refund.refund_id] = refund
            continue
        if (have.item_id, have.amount, have.requested_at) != \
                (refund.item_id, refund.amount, refund.requested_at):
            return Reject(f"refund {refund.refund_id!r} changed its item, amount or "
                          "requested_at", "refunds")
        if refund_rank(refund.status) > refund_rank(have.status):
            merged[refund.refund_id] = refund
        elif refund_rank(refund.status) == refund_rank(have.status) \
                and refund.status is not have.status:
            return Reject(f"refund {refund.refund_id!r} is both {have.status.value} and "
                          f"{refund.status.value}", "refunds")
    return tuple(merged[key] for key in sorted(merged))


def _with_refunds(base: OrderState, refunds: tuple[RefundState, ...]) -> OrderState | Reject:
    known = {i.item_id for i in base.items}
    for refund in refunds:
        if refund.item_id not in known:
            return Reject(f"refund {refund.refund_id!r} is of item {refund.item_id!r}, which "
                          "the order does not have", "refunds")
    items = _item_refunds(base.items, refunds)
    for item in items:
        if item.refunded_amount + item.refund_pending_amount > item.paid_amount:
            return Reject(f"refunds of item {item.item_id!r} exceed its paid_amount "
                          f"({item.refunded_amount + item.refund_pending_amount} > "
                          f"{item.paid_amount})", "refunds")
    if items == base.items and refunds == base.refunds:
        return base
    return replace(base, items=items, refunds=refunds)


def _refund_sums(refunds: Iterable[RefundState]) -> tuple[dict[str, int], dict[str, int]]:
    """Per item id: the amounts of completed and of pending refunds."""
    completed: dict[str, int] = {}
    pending: dict[str, int] = {}
    for refund in refunds:
        if refund.status is RefundStatus.COMPLETED:
            completed[refund.item_id] = completed.get(refund.item_id, 0) + refund.amount
        elif refund.status is RefundStatus.PENDING:
            pending[refund.item_id] = pending.get(refund.item_id, 0) + refund.amount
    return completed, pending


def _item_refunds(items: tuple[ItemState, ...],
                  refunds: tuple[RefundState, ...]) -> tuple[ItemState, ...]:
    completed, pending = _refund_sums(refunds)
    if all(i.refunded_amount == completed.get(i.item_id, 0)
           and i.refund_pending_amount == pending.get(i.item_id, 0) for i in items):
        return items  # the common case: nothing changed (no allocation on the hot path)
    return tuple(ItemState(i.item_id, i.product_id, i.category_id, i.quantity, i.paid_amount,
                           completed.get(i.item_id, 0), pending.get(i.item_id, 0))
                 for i in items)


def _why_ignored(stored: OrderState, incoming: OrderState) -> str:
    if incoming == stored:
        return "duplicate of the applied snapshot"
    if status_rank(incoming.status) < status_rank(stored.status):
        return (f"older status: {incoming.status.value} after the ledger's "
                f"{stored.status.value}")
    return (f"not newer: {incoming.status.value} at event_ts {incoming.event_ts}, the ledger "
            f"has {stored.status.value} at event_ts {stored.event_ts}")
