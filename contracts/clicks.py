"""The click event (schema version 1) and its Kafka record form.

Every request to the redirect endpoint produces exactly one event, whatever
its verdict.  Only ``valid`` clicks are billable evidence; the others are
kept for fraud analysis and dashboards.

Kafka record: topic ``CLICKS_TOPIC``, key = ``buyer_key`` as UTF-8 (no key
when the buyer is unknown), value = the JSON object below, timestamp = ``ts``.

``click_id`` identifies a click end to end: a consumer that sees the same id
twice (a replay after a failover) keeps one.

Writing and reading live here together, so the edge and the consumers cannot
drift apart.  The edge writes an event in two parts: ``event_head`` holds the
link's fields (computed once per distinct link and cached: during a spike
thousands of buyers click the same link) and ``event_tail`` the request's;
``head + tail`` is the JSON object.  Every event carries every field of the
schema, ``null`` (or ``[]`` for ``sub_ids``) when absent, in a fixed order:

    version, promoter_id, channel_id, position_id, shop_id, product_id, sub_ids,
    target, link_sig, link_kid, link_exp, raw_query,              <- event_head
    click_id, ts, verdict, reason, buyer_key, ip, user_agent, referer   <- event_tail
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from contracts.records import Record
from contracts.verdicts import Verdict as Verdict  # re-exported: readers import it from here

if TYPE_CHECKING:
    from contracts.links import Link

SCHEMA_VERSION = 1
MAX_USER_AGENT = 512
MAX_REFERER = 1024
MAX_RAW_QUERY = 512


class SchemaError(ValueError):
    """A click record that does not follow the schema; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ClickEvent:
    click_id: str
    ts: int
    verdict: Verdict
    reason: str
    buyer_key: str
    ip: str
    user_agent: str
    referer: str
    promoter_id: str | None = None
    channel_id: str | None = None
    position_id: str | None = None
    shop_id: str | None = None
    product_id: str | None = None
    sub_ids: tuple[str, ...] = ()
    target: str | None = None
    link_sig: str | None = None
    link_kid: str | None = None
    link_exp: int | None = None
    # The unverifiable query, truncated, when the link could not be read.
    raw_query: str | None = None
    version: int = field(default=SCHEMA_VERSION)

    @property
    def billable(self) -> bool:
        return self.verdict is Verdict.VALID

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> ClickEvent:
        """Parse and validate one record; raises ``SchemaError`` with the reason."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise SchemaError(f"not JSON: {err}") from None
        if not isinstance(obj, dict):
            raise SchemaError("a click record is a JSON object")
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ClickEvent:
        if type(obj.get("version")) is not int or obj["version"] != SCHEMA_VERSION:
            raise SchemaError(f"unsupported schema version {obj.get('version')!r}")
        unknown = set(obj) - _FIELDS
        if unknown:
            raise SchemaError(f"unknown fields {sorted(unknown)}")
        try:
            verdict = Verdict(obj["verdict"])
        except (KeyError, ValueError):
            raise SchemaError(f"bad verdict {obj.get('verdict')!r}") from None
        for name in _REQUIRED_STR:
            if not isinstance(obj.get(name), str):
                raise SchemaError(f"field {name!r} must be a string")
        if not isinstance(obj.get("ts"), int) or isinstance(obj.get("ts"), bool):
            raise SchemaError("field 'ts' must be an integer (ms)")
        for name in _OPTIONAL_STR:
            if obj.get(name) is not None and not isinstance(obj[name], str):
                raise SchemaError(f"field {name!r} must be a string or null")
        link_exp = obj.get("link_exp")
        if link_exp is not None and type(link_exp) is not int:
            raise SchemaError("field 'link_exp' must be an integer or null")
        subs = obj.get("sub_ids", [])
        if not isinstance(subs, list) or not all(isinstance(s, str) for s in subs):
            raise SchemaError("field 'sub_ids' must be a list of strings")
        if verdict is Verdict.VALID and not (obj.get("buyer_key") and obj.get("promoter_id")):
            raise SchemaError("a valid click needs buyer_key and promoter_id")
        fields = {k: v for k, v in obj.items() if k not in ("verdict", "sub_ids")}
        return cls(verdict=verdict, sub_ids=tuple(subs), **fields)


_FIELDS = frozenset(ClickEvent.__dataclass_fields__)
_REQUIRED_STR = ("click_id", "reason", "buyer_key", "ip", "user_agent", "referer")
_OPTIONAL_STR = ("promoter_id", "channel_id", "position_id", "shop_id", "product_id", "target",
                 "link_sig", "link_kid", "raw_query")


def record_key(buyer_key: str) -> bytes | None:
    """The Kafka key for a click: the buyer, so one buyer's clicks stay in order."""
    return buyer_key.encode("utf-8") if buyer_key else None


# -- the writer's half: the edge builds events with these, nothing else --------


def event_head(link: Link | None = None, *, sig: str | None = None, kid: str | None = None,
               raw_query: str | None = None) -> bytes:
    """The link's fields as a JSON object left open: ``head + event_tail(...)`` is the event.

    ``link`` is None when the link could not be verified; ``raw_query`` (truncated
    to MAX_RAW_QUERY characters) then says what was asked for.
    """
    fields: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "promoter_id": link.promoter_id if link else None,
        "channel_id": link.channel_id if link else None,
        "position_id": link.position_id if link else None,
        "shop_id": link.shop_id if link else None,
        "product_id": link.product_id if link else None,
        "sub_ids": list(link.sub_ids) if link else [],
        "target": link.target if link else None,
        "link_sig": sig if link else None,
        "link_kid": kid if link else None,
        "link_exp": link.expires_at if link else None,
        "raw_query": raw_query[:MAX_RAW_QUERY] if raw_query is not None else None,
    }
    return orjson.dumps(fields)[:-1] + b","


def event_tail(click_id: str, ts_ms: int, verdict: str, reason: str, buyer_key: str, ip: str,
               user_agent: bytes, referer: bytes) -> memoryview:
    """The request's fields, closing the object ``event_head`` opened.

    A memoryview past the opening brace: ``head + tail`` copies the tail once.
    Headers arrive as bytes and are truncated (MAX_USER_AGENT, MAX_REFERER) here.
    """
    return memoryview(orjson.dumps({
        "click_id": click_id, "ts": ts_ms, "verdict": verdict, "reason": reason,
        "buyer_key": buyer_key, "ip": ip,
        "user_agent": user_agent[:MAX_USER_AGENT].decode("utf-8", "replace"),
        "referer": referer[:MAX_REFERER].decode("utf-8", "replace")}))[1:]


def click_record(head: bytes, tail: memoryview, ts_ms: int, buyer_key: str) -> Record:
    """The Kafka record ``(timestamp, key, value)`` of one click event."""
    return (ts_ms, buyer_key.encode() if buyer_key else None, head + tail)
