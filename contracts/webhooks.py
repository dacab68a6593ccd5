"""Webhook events, version 1: what promoters and channels are pushed, and their ids.

Every event is a thin JSON object (ids, a status, amounts in minor units, times in ms
since the epoch); the receiver fetches anything more from the back-end.  Personal data
is masked: ``buyer_account`` keeps its first and last character (``"u***9"``), the
``buyer_key`` and the attribution token are never sent.

    {"type": "order.paid", "version": 1, "event_id": "evt_3f1c...", "occurred_at": 17...,
     "data": {"order_id": "o-1", "shop_id": "s-1", "status": "paid", ...}}

Types: ``order.created|paid|received|final|cancelled|refunded`` (an attributed order
reached that status), ``commission.accrued|reduced|settled|clawed_back`` (one
participant's share of one order line changed: ``amount`` is the change, ``commission``
the share after it) and ``payout.created`` (a billing run pays a participant).

The event id is ``"evt_"`` + the first 24 hex digits (96 bits) of SHA-256 over
``type/subject/version``: the subject names what changed (an order, a line and account,
a payout) and the version which change it is (the ledger sequence), so a writer that is
replayed, or that re-runs after a crash, produces the same ids and the ledger keeps each
event once.  It is also the Standard Webhooks ``webhook-id``, the same on every retry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

PAYLOAD_VERSION = 1
EVENT_ID_PREFIX = "evt_"
EVENT_ID_HEX_DIGITS = 24


class EventType(StrEnum):
    ORDER_CREATED = "order.created"
    ORDER_PAID = "order.paid"
    ORDER_RECEIVED = "order.received"
    ORDER_FINAL = "order.final"
    ORDER_CANCELLED = "order.cancelled"
    ORDER_REFUNDED = "order.refunded"
    COMMISSION_ACCRUED = "commission.accrued"
    COMMISSION_REDUCED = "commission.reduced"
    COMMISSION_SETTLED = "commission.settled"
    COMMISSION_CLAWED_BACK = "commission.clawed_back"
    PAYOUT_CREATED = "payout.created"


ORDER_EVENTS = {status: EventType(f"order.{status}") for status in
                ("created", "paid", "received", "final", "cancelled", "refunded")}
# The statuses an order passed through to reach each status (SPEC section 6).
STATUS_PATH = {"created": ("created",), "paid": ("created", "paid"),
               "received": ("created", "paid", "received"),
               "final": ("created", "paid", "received", "final"),
               "cancelled": ("created", "cancelled"),
               "refunded": ("created", "paid", "refunded")}


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One event and who it is for (its promoter's and its channel's endpoints)."""

    event_id: str
    event_type: EventType
    order_id: str | None
    promoter_id: str | None
    channel_id: str | None
    occurred_at_ms: int
    payload: bytes  # the JSON body, as sent and signed


def event_id_for(event_type: EventType, subject: str, version: int | str = 1) -> str:
    digest = hashlib.sha256(f"{event_type.value}/{subject}/{version}".encode()).hexdigest()
    return EVENT_ID_PREFIX + digest[:EVENT_ID_HEX_DIGITS]


def mask_account(account: str | None) -> str | None:
    """``"user-1239"`` -> ``"u***9"``; short values keep nothing but the mask."""
    if account is None or account == "":
        return account
    if len(account) <= 2:
        return "***"
    return f"{account[0]}***{account[-1]}"


def make_event(event_type: EventType, subject: str, version: int | str, *,
               occurred_at_ms: int, data: dict[str, Any], order_id: str | None = None,
               promoter_id: str | None = None, channel_id: str | None = None) -> WebhookEvent:
    event_id = event_id_for(event_type, subject, version)
    body = orjson.dumps({"type": event_type.value, "version": PAYLOAD_VERSION,
                         "event_id": event_id, "occurred_at": occurred_at_ms, "data": data})
    return WebhookEvent(event_id, event_type, order_id, promoter_id, channel_id,
                        occurred_at_ms, body)


@dataclass(frozen=True, slots=True)
class OrderSnapshot:
    """What an order event tells: the order as the ledger holds it, and its attribution."""

    order_id: str
    shop_id: str
    status: str
    attribution_type: str
    promoter_id: str | None
    channel_id: str | None
    position_id: str | None
    buyer_account: str | None
    paid_amount: int
    refunded_amount: int
    created_at: int
    paid_at: int | None
    received_at: int | None
    final_at: int | None
    updated_at: int


def order_event(order: OrderSnapshot, status: str) -> WebhookEvent:
    """``order.<status>`` of an attributed order; its id depends on order and status only."""
    occurred = {"paid": order.paid_at, "received": order.received_at,
                "final": order.final_at}.get(status) or (
        order.created_at if status == "created" else order.updated_at)
    data = {"order_id": order.order_id, "shop_id": order.shop_id, "status": status,
            "attribution_type": order.attribution_type, "promoter_id": order.promoter_id,
            "channel_id": order.channel_id, "position_id": order.position_id,
            "buyer_account": mask_account(order.buyer_account),
            "paid_amount": order.paid_amount, "refunded_amount": order.refunded_amount,
            "created_at": order.created_at, "paid_at": order.paid_at,
            "received_at": order.received_at, "final_at": order.final_at}
    return make_event(ORDER_EVENTS[status], order.order_id, status, occurred_at_ms=occurred,
                      data=data, order_id=order.order_id, promoter_id=order.promoter_id,
                      channel_id=order.channel_id)


def order_events(order: OrderSnapshot) -> list[WebhookEvent]:
    """Every status event the order has reached so far (a decision comes after them)."""
    return [order_event(order, status) for status in STATUS_PATH[order.status]]


def commission_event(event_type: EventType, *, order_id: str, item_id: str, account: str,
                     seq: int, amount: int, commission: int | None, occurred_at_ms: int
                     ) -> WebhookEvent:
    """One participant's (``promoter:P`` / ``channel:C``) share of one line changed."""
    kind, _, owner = account.partition(":")
    data = {"order_id": order_id, "item_id": item_id, "participant_kind": kind,
            "participant_id": owner, "amount": amount, "commission": commission,
            "sequence": seq}
    return make_event(event_type, f"{order_id}/{item_id}/{account}", seq,
                      occurred_at_ms=occurred_at_ms, data=data, order_id=order_id,
                      promoter_id=owner if kind == "promoter" else None,
                      channel_id=owner if kind == "channel" else None)


def payout_event(*, payout_id: str, run_id: str, account: str, amount: int,
                 occurred_at_ms: int) -> WebhookEvent:
    kind, _, owner = account.partition(":")
    data = {"payout_id": payout_id, "run_id": run_id, "participant_kind": kind,
            "participant_id": owner, "amount": amount}
    return make_event(EventType.PAYOUT_CREATED, payout_id, 1, occurred_at_ms=occurred_at_ms,
                      data=data, promoter_id=owner if kind == "promoter" else None,
                      channel_id=owner if kind == "channel" else None)
