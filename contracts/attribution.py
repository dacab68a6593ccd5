"""The attribution decision (schema version 1): who, if anyone, an order is credited to.

Topic ``ATTRIBUTIONS_TOPIC``, key = ``order_id``, value = the JSON object below.
One decision per order, made once and final (SPEC section 7); it reaches the
topic through the attribution service's outbox, so a consumer sees it at least
once and deduplicates by ``order_id``.

    {"version": 1, "order_id": "o-1", "attribution_type": "cps",
     "promoter_id": "p-1", "channel_id": "live", "position_id": null,
     "click_id": "0190...", "evidence": "click", "reason": "last valid click ...",
     "order_created_at": 1700000000000, "decided_at": 1700000000420,
     "attempts": 1}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from contracts.values import show

SCHEMA_VERSION = 1
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_CLICK_ID = re.compile(r"[0-9a-f]{28}")
MAX_REASON_LEN = 500


class AttributionType(StrEnum):
    CPS = "cps"
    SELF_OPERATED = "self_operated"
    NONE = "none"


class Evidence(StrEnum):
    """What the decision rests on."""

    CLICK = "click"  # a valid click found in the click store by buyer_key
    TOKEN = "token"  # noqa: S105 - the sealed attribution_token the order carried
    FANSTYPE = "fanstype"  # the order's environment (self-operated)
    NONE = "none"


class DecisionSchemaError(ValueError):
    """A decision record that does not follow the schema; the message names the field."""


@dataclass(frozen=True, slots=True)
class AttributionDecision:
    order_id: str
    attribution_type: AttributionType
    promoter_id: str | None
    channel_id: str | None
    click_id: str | None
    evidence: Evidence
    reason: str
    order_created_at: int  # ms
    decided_at: int  # ms
    position_id: str | None = None
    attempts: int = 1  # lookups made (delayed attribution retries included)
    version: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        # orjson serializes the slotted dataclass itself: ~1.5 µs, asdict() costs ~20.
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> AttributionDecision:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise DecisionSchemaError(f"not JSON: {err}") from None
        if not isinstance(obj, dict):
            raise DecisionSchemaError("a decision is a JSON object")
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> AttributionDecision:
        version = obj.get("version")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise DecisionSchemaError(f"version: unsupported {show(version)}")
        unknown = set(obj) - _FIELDS
        if unknown:
            raise DecisionSchemaError(f"unknown fields {sorted(unknown)[:10]}")
        kind = _enum(obj, "attribution_type", AttributionType)
        evidence = _enum(obj, "evidence", Evidence)
        order_id = obj.get("order_id")
        if not isinstance(order_id, str) or not _ID.fullmatch(order_id):
            raise DecisionSchemaError("order_id: must be an id")
        for name in ("promoter_id", "channel_id", "position_id"):
            value = obj.get(name)
            if value is not None and (not isinstance(value, str) or not _ID.fullmatch(value)):
                raise DecisionSchemaError(f"{name}: must be an id or null")
        click_id = obj.get("click_id")
        if click_id is not None and (not isinstance(click_id, str)
                                     or not _CLICK_ID.fullmatch(click_id)):
            raise DecisionSchemaError("click_id: must be 28 lowercase hex digits or null")
        reason = obj.get("reason")
        if not isinstance(reason, str) or len(reason) > MAX_REASON_LEN:
            raise DecisionSchemaError(f"reason: a string of at most {MAX_REASON_LEN} characters")
        attempts = obj.get("attempts", 1)  # absent in the first writers' records
        for name, value in (("order_created_at", obj.get("order_created_at")),
                            ("decided_at", obj.get("decided_at")), ("attempts", attempts)):
            if type(value) is not int:
                raise DecisionSchemaError(f"{name}: must be an integer")
        # The writer always writes every field, null when absent: a nullable field that
        # is missing altogether is damage (the others fail their own checks above).
        missing = _NULLABLE - set(obj)
        if missing:
            raise DecisionSchemaError(f"missing fields {sorted(missing)}")
        if kind is AttributionType.CPS and not (obj.get("promoter_id") and click_id):
            raise DecisionSchemaError("a cps decision names its promoter_id and click_id")
        if kind is AttributionType.SELF_OPERATED and not obj.get("channel_id"):
            raise DecisionSchemaError("a self_operated decision names its channel_id")
        return cls(order_id=order_id, attribution_type=kind, promoter_id=obj.get("promoter_id"),
                   channel_id=obj.get("channel_id"), click_id=click_id, evidence=evidence,
                   reason=reason, order_created_at=obj["order_created_at"],
                   decided_at=obj["decided_at"], position_id=obj.get("position_id"),
                   attempts=attempts)


def _enum(obj: Mapping[str, Any], name: str,
          kind: type[AttributionType] | type[Evidence]) -> Any:
    value = obj.get(name)
    if isinstance(value, str) and value in kind._value2member_map_:
        return kind(value)
    allowed = ", ".join(member.value for member in kind)
    raise DecisionSchemaError(f"{name}: {show(value)} is not one of {allowed}")


_FIELDS = frozenset(AttributionDecision.__dataclass_fields__)
_NULLABLE = frozenset({"promoter_id", "channel_id", "click_id"})
