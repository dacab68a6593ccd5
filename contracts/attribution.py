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
        if obj.get("version") != SCHEMA_VERSION or type(obj.get("version")) is not int:
            raise DecisionSchemaError(f"version: unsupported {obj.get('version')!r}")
        unknown = set(obj) - _FIELDS
        if unknown:
            raise DecisionSchemaError(f"unknown fields {sorted(unknown)}")
        try:
            kind = AttributionType(str(obj.get("attribution_type")))
            evidence = Evidence(str(obj.get("evidence")))
        except ValueError as err:
            raise DecisionSchemaError(f"attribution_type/evidence: {err}") from None
        for name in ("order_id",):
            if not isinstance(obj.get(name), str) or not _ID.fullmatch(obj[name]):
                raise DecisionSchemaError(f"{name}: must be an id")
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
        for name in ("order_created_at", "decided_at", "attempts"):
            if type(obj.get(name, 1)) is not int:
                raise DecisionSchemaError(f"{name}: must be an integer")
        if kind is AttributionType.CPS and not (obj.get("promoter_id") and click_id):
            raise DecisionSchemaError("a cps decision names its promoter_id and click_id")
        if kind is AttributionType.SELF_OPERATED and not obj.get("channel_id"):
            raise DecisionSchemaError("a self_operated decision names its channel_id")
        fields = {k: v for k, v in obj.items() if k not in ("attribution_type", "evidence")}
        return cls(attribution_type=kind, evidence=evidence, **fields)


_FIELDS = frozenset(AttributionDecision.__dataclass_fields__)
