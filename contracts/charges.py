"""The charge request and the charge result (schema version 1): taking the merchant's money.

At payment the billing batch asks the funds system to take an order's commission
from the merchant (SPEC section 11).  Both messages are keyed by ``order_id``, so
one order's requests and results stay in order on one partition:

``CHARGE_REQUESTS_TOPIC`` (billing -> funds), written through the ledger's outbox:

    {"version": 1, "charge_id": "o-1:1", "order_id": "o-1", "shop_id": "s-1",
     "amount_minor": 2000, "requested_at": 1700000060000, "attempt": 1}

``CHARGE_RESULTS_TOPIC`` (funds -> billing):

    {"version": 1, "charge_id": "o-1:1", "order_id": "o-1", "status": "charged",
     "reason": "", "processed_at": 1700000060420}

``charge_id`` names one attempt: ``"<order_id>:<attempt>"`` (``charge_id_for``), at
most 64 + 1 + 15 = 80 characters like the ledger column.  The funds system answers
each ``charge_id`` once and the same way every time it sees it again; billing ignores
a result for any charge id but the order's current one, so duplicates and replays on
either topic change nothing.  Money is integer minor units (``amount_minor`` of 2000
is 20.00, 0 .. 10^15); times are integer ms since the epoch.  ``from_json`` validates
every field and raises ``ChargeSchemaError`` whose ``field`` names the culprit, so a
bad message is dead-lettered with a precise reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Self

import orjson

from contracts.orders import ID_PATTERN, MAX_AMOUNT_MINOR, MAX_TS_MS, MIN_TS_MS
from contracts.values import show

SCHEMA_VERSION = 1
# "<order_id>:<attempt>" for an order id of up to 64 characters (the ledger's VARCHAR(80)).
CHARGE_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,80}")
MAX_ATTEMPT = 1_000_000
MAX_REASON_LEN = 500


class ChargeStatus(StrEnum):
    """What the funds system did with one charge request."""

    CHARGED = "charged"  # the merchant's money was taken: final
    FAILED = "failed"  # not taken (insufficient funds, frozen account, ...); may be retried


class ChargeSchemaError(ValueError):
    """A charge message that does not follow the schema; ``field`` names the culprit."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def charge_id_for(order_id: str, attempt: int) -> str:
    """The id of ``order_id``'s ``attempt``-th charge request: ``"o-1:2"``."""
    return f"{order_id}:{attempt}"


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    charge_id: str
    order_id: str
    shop_id: str  # the merchant charged
    amount_minor: int  # the order's commission, minor units
    requested_at: int  # ms
    attempt: int = 1  # 1 for the first request of an order, +1 per retry
    version: int = SCHEMA_VERSION

    @classmethod
    def first(cls, order_id: str, shop_id: str, amount_minor: int, requested_at: int) -> Self:
        """The first request of an order (attempt 1, charge id ``"<order_id>:1"``)."""
        return cls(charge_id_for(order_id, 1), order_id, shop_id, amount_minor, requested_at)

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> ChargeRequest:
        obj = _object(data, "a charge request")
        _header(obj, _REQUEST_FIELDS)
        return cls(charge_id=_charge_id(obj), order_id=_id(obj, "order_id"),
                   shop_id=_id(obj, "shop_id"),
                   amount_minor=_int(obj, "amount_minor", 0, MAX_AMOUNT_MINOR, " (minor units)"),
                   requested_at=_ts(obj, "requested_at"),
                   attempt=_int(obj, "attempt", 1, MAX_ATTEMPT))


@dataclass(frozen=True, slots=True)
class ChargeResult:
    charge_id: str
    order_id: str
    status: ChargeStatus
    reason: str  # why it failed ("" when charged)
    processed_at: int  # ms, when the funds system decided
    version: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> ChargeResult:
        obj = _object(data, "a charge result")
        _header(obj, _RESULT_FIELDS)
        status = obj.get("status")
        if not isinstance(status, str) or status not in ChargeStatus._value2member_map_:
            allowed = ", ".join(s.value for s in ChargeStatus)
            raise ChargeSchemaError("status", f"{show(status)} is not one of {allowed}")
        reason = obj.get("reason")
        if not isinstance(reason, str) or len(reason) > MAX_REASON_LEN:
            raise ChargeSchemaError("reason", f"must be a string of at most {MAX_REASON_LEN} "
                                    "characters")
        return cls(charge_id=_charge_id(obj), order_id=_id(obj, "order_id"),
                   status=ChargeStatus(status), reason=reason,
                   processed_at=_ts(obj, "processed_at"))


_REQUEST_FIELDS = frozenset(ChargeRequest.__dataclass_fields__)
_RESULT_FIELDS = frozenset(ChargeResult.__dataclass_fields__)


def _object(data: bytes | str, what: str) -> Mapping[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise ChargeSchemaError("(message)", f"not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise ChargeSchemaError("(message)", f"{what} is a JSON object")
    return obj


def _header(obj: Mapping[str, Any], fields: frozenset[str]) -> None:
    """The version first (a v2 message fails on its version, not on a new field), then
    unknown and missing fields: every field of v1 is required."""
    version = obj.get("version")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise ChargeSchemaError("version", f"unsupported schema version {show(version)}")
    unknown = set(obj) - fields
    if unknown:
        raise ChargeSchemaError("(message)", f"unknown fields {sorted(unknown)[:10]}")
    missing = fields - set(obj)
    if missing:
        raise ChargeSchemaError(min(missing), "required")


def _id(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ChargeSchemaError(name, f"{show(value)} is not an id matching "
                                f"{ID_PATTERN.pattern}")
    return value


def _charge_id(obj: Mapping[str, Any]) -> str:
    value = obj.get("charge_id")
    if not isinstance(value, str) or not CHARGE_ID_PATTERN.fullmatch(value):
        raise ChargeSchemaError("charge_id", f"{show(value)} is not an id matching "
                                f"{CHARGE_ID_PATTERN.pattern}")
    return value


def _int(obj: Mapping[str, Any], name: str, low: int, high: int, unit: str = "") -> int:
    value = obj.get(name)
    if type(value) is not int or not low <= value <= high:
        raise ChargeSchemaError(name + unit, f"{show(value)} is not an integer from {low} "
                                f"to {high}")
    return value


def _ts(obj: Mapping[str, Any], name: str) -> int:
    return _int(obj, name, MIN_TS_MS, MAX_TS_MS, " (ms since the epoch)")
