"""The order message (schema version 1): what the trade system tells us about an order.

Topic ``ORDERS_TOPIC``, key = ``order_id`` (one order's messages stay in order on
one partition), value = the JSON object below.  Every message is a full
snapshot of the order as the trade system saw it at ``event_ts``: consumers
never need an earlier message to apply a later one, so duplicates, replays and
(across a rebalance) reordering are handled by comparing snapshots
(``contracts.orders.status_rank`` and ``event_ts``), never by counting messages.

    {"version": 1, "order_id": "o-1", "shop_id": "s-1", "buyer_key": "visitor id",
     "buyer_account": "acct-9", "created_at": 1700000000000, "status": "paid",
     "event_ts": 1700000060000, "paid_at": 1700000060000, "received_at": null,
     "final_at": null, "channel_id": "live", "fanstype": null,
     "attribution_token": "c1.AbC...",
     "items": [{"item_id": "i-1", "product_id": "p-1", "category_id": "c-1",
                "quantity": 1, "paid_amount": 10000}],
     "refunds": [{"refund_id": "r-1", "item_id": "i-1", "amount": 2500,
                  "status": "completed", "requested_at": 1700000100000}]}

Times are integer milliseconds since the epoch; money is integer minor units
(``paid_amount`` of 10000 is 100.00); ids follow ``ID_PATTERN``.
``OrderMessage.from_json`` validates everything and raises ``OrderSchemaError``
naming the field, so a bad message can be dead-lettered with a precise reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import orjson

from contracts.values import show

SCHEMA_VERSION = 1
ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# A visitor id, account id or token is opaque; only its size is bounded.
MAX_OPAQUE_LEN = 1024
MAX_ITEMS = 500
MAX_REFUNDS = 1000
# 10^15 minor units (10 trillion in a 2-decimal currency): far above any order,
# far below 2^63, so sums of many lines never overflow a BIGINT.
MAX_AMOUNT_MINOR = 10**15
MAX_QUANTITY = 1_000_000
# Timestamps must be plausible milliseconds: 2001-09-09 .. 2286-11-20.
MIN_TS_MS = 10**12
MAX_TS_MS = 10**13


class OrderStatus(StrEnum):
    CREATED = "created"
    PAID = "paid"
    RECEIVED = "received"
    FINAL = "final"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


class RefundStatus(StrEnum):
    PENDING = "pending"  # requested, not decided: holds settlement
    COMPLETED = "completed"  # money returned to the buyer
    REJECTED = "rejected"  # refused by the merchant or the platform


# How far along an order is.  ``cancelled`` ends an unpaid order; ``refunded``
# (every item refunded in full) ends a paid one; a later status never goes back.
_RANK = {
    OrderStatus.CREATED: 0,
    OrderStatus.CANCELLED: 1,
    OrderStatus.PAID: 1,
    OrderStatus.RECEIVED: 2,
    OrderStatus.FINAL: 3,
    OrderStatus.REFUNDED: 4,
}
# Statuses an order may hold after each status (itself included).
_NEXT: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.CREATED: frozenset(OrderStatus),
    OrderStatus.CANCELLED: frozenset({OrderStatus.CANCELLED}),
    OrderStatus.PAID: frozenset({OrderStatus.PAID, OrderStatus.RECEIVED, OrderStatus.FINAL,
                                 OrderStatus.REFUNDED}),
    OrderStatus.RECEIVED: frozenset({OrderStatus.RECEIVED, OrderStatus.FINAL,
                                     OrderStatus.REFUNDED}),
    OrderStatus.FINAL: frozenset({OrderStatus.FINAL, OrderStatus.REFUNDED}),
    OrderStatus.REFUNDED: frozenset({OrderStatus.REFUNDED}),
}
_REFUND_RANK = {RefundStatus.PENDING: 0, RefundStatus.COMPLETED: 1, RefundStatus.REJECTED: 1}


def status_rank(status: OrderStatus) -> int:
    """Progress of an order: a message of lower rank never overwrites a higher one."""
    return _RANK[status]


def can_follow(current: OrderStatus, new: OrderStatus) -> bool:
    """Whether an order in ``current`` may move to (or stay in) ``new``."""
    return new in _NEXT[current]


def refund_rank(status: RefundStatus) -> int:
    return _REFUND_RANK[status]


class OrderSchemaError(ValueError):
    """An order message that does not follow the schema; ``field`` names the culprit."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class OrderItem:
    item_id: str
    product_id: str
    category_id: str
    quantity: int
    paid_amount: int  # minor units, for the whole line (all of its quantity)


@dataclass(frozen=True, slots=True)
class Refund:
    refund_id: str
    item_id: str
    amount: int  # minor units refunded of that item's paid_amount
    status: RefundStatus
    requested_at: int  # ms


@dataclass(frozen=True, slots=True)
class OrderMessage:
    order_id: str
    shop_id: str
    buyer_key: str | None  # the cookie's visitor id (None when the buyer had none)
    buyer_account: str | None  # the trade system's account id of the buyer
    created_at: int
    status: OrderStatus
    event_ts: int  # when the trade system produced this snapshot
    items: tuple[OrderItem, ...]
    refunds: tuple[Refund, ...] = ()
    paid_at: int | None = None
    received_at: int | None = None
    final_at: int | None = None
    channel_id: str | None = None  # the channel of the order's environment
    fanstype: str | None = None
    attribution_token: str | None = None
    version: int = SCHEMA_VERSION

    @property
    def paid_total(self) -> int:
        return sum(item.paid_amount for item in self.items)

    def refunded_amount(self, item_id: str) -> int:
        """Minor units of ``item_id`` refunded for good (completed refunds)."""
        return sum(r.amount for r in self.refunds
                   if r.item_id == item_id and r.status is RefundStatus.COMPLETED)

    @property
    def refund_in_progress(self) -> bool:
        return any(r.status is RefundStatus.PENDING for r in self.refunds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> OrderMessage:
        """Parse and validate one message; raises ``OrderSchemaError`` with the field."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise OrderSchemaError("(message)", f"not JSON: {err}") from None
        if not isinstance(obj, dict):
            raise OrderSchemaError("(message)", "an order message is a JSON object")
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> OrderMessage:
        version = obj.get("version")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise OrderSchemaError("version", f"unsupported schema version {show(version)}")
        _no_unknown(obj, _FIELDS, "(message)")
        status = _enum(obj, "status", OrderStatus)
        items = _list(obj, "items", MAX_ITEMS, required=True)
        if not items:
            raise OrderSchemaError("items", "an order has at least one item")
        parsed_items = tuple(_item(raw, f"items[{n}]") for n, raw in enumerate(items))
        item_ids = [i.item_id for i in parsed_items]
        if len(set(item_ids)) != len(item_ids):
            raise OrderSchemaError("items", "item_id values repeat")
        refunds = tuple(_refund(raw, f"refunds[{n}]", parsed_items)
                        for n, raw in enumerate(_list(obj, "refunds", MAX_REFUNDS)))
        if len({r.refund_id for r in refunds}) != len(refunds):
            raise OrderSchemaError("refunds", "refund_id values repeat")
        message = cls(
            order_id=_id(obj, "order_id"), shop_id=_id(obj, "shop_id"),
            buyer_key=_opaque(obj, "buyer_key"), buyer_account=_opaque(obj, "buyer_account"),
            created_at=_ts(obj, "created_at"), status=status, event_ts=_ts(obj, "event_ts"),
            items=parsed_items, refunds=refunds,
            paid_at=_ts(obj, "paid_at", optional=True),
            received_at=_ts(obj, "received_at", optional=True),
            final_at=_ts(obj, "final_at", optional=True),
            channel_id=_id(obj, "channel_id", optional=True),
            fanstype=_opaque(obj, "fanstype"),
            attribution_token=_opaque(obj, "attribution_token"))
        _check_consistency(message)
        return message


_FIELDS = frozenset(OrderMessage.__dataclass_fields__)
_ITEM_FIELDS = frozenset(OrderItem.__dataclass_fields__)
_REFUND_FIELDS = frozenset(Refund.__dataclass_fields__)
_NEEDS_PAID_AT = frozenset({OrderStatus.PAID, OrderStatus.RECEIVED, OrderStatus.FINAL,
                            OrderStatus.REFUNDED})


def _check_consistency(m: OrderMessage) -> None:
    if m.event_ts < m.created_at:
        raise OrderSchemaError("event_ts", "is before created_at")
    if m.status in _NEEDS_PAID_AT and m.paid_at is None:
        raise OrderSchemaError("paid_at", f"required once the order is {m.status.value}")
    if m.status in (OrderStatus.RECEIVED, OrderStatus.FINAL) and m.received_at is None:
        raise OrderSchemaError("received_at", f"required once the order is {m.status.value}")
    if m.status is OrderStatus.FINAL and m.final_at is None:
        raise OrderSchemaError("final_at", "required once the order is final")
    for name in ("paid_at", "received_at", "final_at"):
        value = getattr(m, name)
        if value is not None and value < m.created_at:
            raise OrderSchemaError(name, "is before created_at")
    if m.refunds and m.status in (OrderStatus.CREATED, OrderStatus.CANCELLED):
        raise OrderSchemaError("refunds", f"an order that is {m.status.value} was never paid")
    for item in m.items:
        settled = sum(r.amount for r in m.refunds if r.item_id == item.item_id
                      and r.status is not RefundStatus.REJECTED)
        if settled > item.paid_amount:
            raise OrderSchemaError("refunds", f"refunds of item {item.item_id!r} exceed its "
                                   f"paid_amount ({settled} > {item.paid_amount})")


def _no_unknown(obj: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = set(obj) - known
    if unknown:
        raise OrderSchemaError(where, f"unknown fields {sorted(unknown)}")


def _id(obj: Mapping[str, Any], name: str, *, optional: bool = False, where: str = "") -> Any:
    value = obj.get(name)
    field = f"{where}.{name}" if where else name
    if value is None and optional:
        return None
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise OrderSchemaError(field, f"must be an id matching {ID_PATTERN.pattern}")
    return value


def _opaque(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_OPAQUE_LEN:
        raise OrderSchemaError(name, f"must be a string of at most {MAX_OPAQUE_LEN} characters "
                               "or null")
    return value


def _int(obj: Mapping[str, Any], name: str, low: int, high: int, field: str) -> int:
    value = obj.get(name)
    if type(value) is not int or not low <= value <= high:
        raise OrderSchemaError(field, f"must be an integer from {low} to {high}")
    return value


def _ts(obj: Mapping[str, Any], name: str, *, optional: bool = False) -> Any:
    if obj.get(name) is None and optional:
        return None
    return _int(obj, name, MIN_TS_MS, MAX_TS_MS, name + " (ms since the epoch)")


def _enum(obj: Mapping[str, Any], name: str, kind: type[OrderStatus] | type[RefundStatus],
          field: str = "") -> Any:
    value = obj.get(name)
    if isinstance(value, str) and value in kind._value2member_map_:
        return kind(value)
    allowed = ", ".join(s.value for s in kind)
    raise OrderSchemaError(field or name, f"{show(value)} is not one of {allowed}")


def _list(obj: Mapping[str, Any], name: str, limit: int, *, required: bool = False) -> list[Any]:
    value = obj.get(name)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise OrderSchemaError(name, "must be a list")
    if len(value) > limit:
        raise OrderSchemaError(name, f"at most {limit} entries")
    return value


def _item(raw: Any, where: str) -> OrderItem:
    if not isinstance(raw, dict):
        raise OrderSchemaError(where, "an item is a JSON object")
    _no_unknown(raw, _ITEM_FIELDS, where)
    return OrderItem(
        item_id=_id(raw, "item_id", where=where), product_id=_id(raw, "product_id", where=where),
        category_id=_id(raw, "category_id", where=where),
        quantity=_int(raw, "quantity", 1, MAX_QUANTITY, f"{where}.quantity"),
        paid_amount=_int(raw, "paid_amount", 0, MAX_AMOUNT_MINOR,
                         f"{where}.paid_amount (minor units)"))


def _refund(raw: Any, where: str, items: tuple[OrderItem, ...]) -> Refund:
    if not isinstance(raw, dict):
        raise OrderSchemaError(where, "a refund is a JSON object")
    _no_unknown(raw, _REFUND_FIELDS, where)
    item_id = _id(raw, "item_id", where=where)
    if all(i.item_id != item_id for i in items):
        raise OrderSchemaError(f"{where}.item_id", f"no item {item_id!r} in this order")
    requested = raw.get("requested_at")
    if type(requested) is not int or not MIN_TS_MS <= requested <= MAX_TS_MS:
        raise OrderSchemaError(f"{where}.requested_at", "must be ms since the epoch")
    return Refund(
        refund_id=_id(raw, "refund_id", where=where), item_id=item_id,
        amount=_int(raw, "amount", 1, MAX_AMOUNT_MINOR, f"{where}.amount (minor units)"),
        status=_enum(raw, "status", RefundStatus, f"{where}.status"), requested_at=requested)
