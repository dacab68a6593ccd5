"""Click records (Kafka values, fallback-stream lines) into ``StoredClick``, fast.

``ClickEvent.from_json`` followed by ``StoredClick.from_event`` costs ~15 us a
record (the validation is cheap; building a 20-field frozen dataclass is not),
which alone would cap one persister process below 70,000 records/s.  This
module accepts exactly what that pair accepts and rejects exactly what it
rejects, with the same reasons: records the edge writes (every schema field
present, the right types) take a fast path on the parsed dict; anything else
goes through ``ClickEvent.from_dict`` itself, so an unusual record is judged,
and its error worded, by the contract.  A property test
(``tests/unit/attribution_worker/test_click_store_decode.py``) holds the two
paths equal on valid, mutated and malformed records.

The fast path checks the twenty field types at once: the tuple of the values'
types (built in C, ``map(type, ...)``) must be one of the 1,024 the schema
allows for that key order (each of ten fields may be null), and the keys must
come in an order seen before (the edge's fixed order, or ``ClickEvent``'s): a
set lookup instead of twenty ``type()`` tests.  Then only
the values no type can vouch for (version, verdict, sub-id items, non-empty
buyer and promoter) are looked at.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from attribution_worker.click_store.base import NotStorable, StoredClick
from contracts.clicks import (
    SCHEMA_VERSION,
    ClickEvent,
    SchemaError,
    Verdict,
    event_head,
    event_tail,
)

_FIELDS = frozenset(ClickEvent.__dataclass_fields__)
_VERDICTS = frozenset(v.value for v in Verdict)
_REQUIRED_STR = ("click_id", "reason", "buyer_key", "ip", "user_agent", "referer")
_OPTIONAL_STR = ("promoter_id", "channel_id", "position_id", "shop_id", "product_id", "target",
                 "link_sig", "link_kid", "raw_query")
_NONE = type(None)
# The types each field may have on the fast path (bool is not int here: the
# contract's ``isinstance`` would take it for ts, so such records go to the contract).
_TYPES: dict[str, tuple[type, ...]] = {
    "version": (int,), "verdict": (str,), "ts": (int,), "sub_ids": (list,),
    "link_exp": (int, _NONE),
    **{name: (str,) for name in _REQUIRED_STR},
    **{name: (str, _NONE) for name in _OPTIONAL_STR},
}
# The edge's key order (head, then tail: ``contracts.clicks``), read off a record
# the edge's own functions build, and ClickEvent's (``to_json``).
_EDGE_ORDER = tuple(orjson.loads(event_head() + event_tail("", 0, "", "", "", "", b"", b"")))
_MAX_ORDERS = 8  # key orders learnt; records in any other order go to the contract


def _signatures(order: tuple[str, ...]) -> frozenset[tuple[type, ...]]:
    """Every tuple of value types the fast path accepts for keys in ``order``."""
    return frozenset(itertools.product(*(_TYPES[name] for name in order)))


# (key order, its signatures): compared in turn, not hashed (a 20-key tuple costs
# more to hash than to compare with the one order that matches).
_ORDERS: list[tuple[tuple[str, ...], frozenset[tuple[type, ...]]]] = [
    (order, _signatures(order)) for order in (_EDGE_ORDER, tuple(ClickEvent.__dataclass_fields__))]


def decode_click(raw: bytes | str) -> StoredClick | None:
    """The stored form of a ``valid`` click record; None for any other verdict.

    Raises ``SchemaError`` for a record ``ClickEvent.from_json`` rejects and
    ``NotStorable`` for a valid click the store cannot hold (e.g. a
    non-canonical click id); either way the message says why.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise SchemaError(f"not JSON: {err}") from None  # ClickEvent.from_json's wording
    if type(obj) is dict:
        if _edge_shaped(obj):
            if obj["verdict"] != "valid":
                return None
            if obj["promoter_id"] is None or obj["channel_id"] is None:
                raise NotStorable("promoter_id/channel_id: a valid click needs both")
            # Positional (0.5 us cheaper than keywords), in field order:
            # click_id, ts_ms, buyer_key, promoter_id, channel_id, position_id,
            # shop_id, product_id, sub_ids, link_exp.
            return StoredClick(obj["click_id"], obj["ts"], obj["buyer_key"], obj["promoter_id"],
                               obj["channel_id"], obj["position_id"], obj["shop_id"],
                               obj["product_id"], tuple(obj["sub_ids"]), obj["link_exp"])
    elif not isinstance(obj, dict):
        raise SchemaError("a click record is a JSON object")
    event = ClickEvent.from_dict(obj)
    return StoredClick.from_event(event) if event.verdict is Verdict.VALID else None


def _edge_shaped(obj: dict[str, Any]) -> bool:
    """Every check of ``ClickEvent.from_dict`` passes, for a record with every field present.

    True means the contract accepts the record; False means "ask the contract".
    """
    keys = tuple(obj)
    for order, known in _ORDERS:
        if keys == order:
            signatures = known
            break
    else:
        # A key order not seen yet: learnt if it is an order of the schema's keys.
        if len(_ORDERS) >= _MAX_ORDERS or obj.keys() != _FIELDS:
            return False
        signatures = _signatures(keys)
        _ORDERS.append((keys, signatures))
    if tuple(map(type, obj.values())) not in signatures:
        return False
    # What the types do not settle.
    verdict = obj["verdict"]
    if obj["version"] != SCHEMA_VERSION or verdict not in _VERDICTS:
        return False
    subs = obj["sub_ids"]
    if subs and not all(type(s) is str for s in subs):
        return False
    return verdict != "valid" or bool(obj["buyer_key"] and obj["promoter_id"])


__all__ = ["NotStorable", "SchemaError", "decode_click"]
