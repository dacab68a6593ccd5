"""``decode_order`` returns what ``OrderMessage.from_json`` returns and raises what it raises."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution_worker.order_decode import decode_order
from contracts.orders import MAX_ITEMS, MAX_OPAQUE_LEN, OrderMessage, OrderSchemaError, OrderStatus
from tests.unit.contracts.test_orders import (
    _JSON,
    DROP,
    ITEM_1,
    ITEM_2,
    VALID,
    changed,
    minimal,
    mutated_messages,
)

# What the trade system sends most: every field present, no refunds (as the benchmark).
USUAL: dict[str, Any] = {**VALID, "refunds": []}


def oracle(data: bytes | str) -> tuple[Any, ...]:
    try:
        return ("ok", OrderMessage.from_json(data))
    except OrderSchemaError as err:
        return ("bad", type(err), err.field, err.problem, str(err))


def fast(data: bytes | str) -> tuple[Any, ...]:
    try:
        return ("ok", decode_order(data))
    except OrderSchemaError as err:
        return ("bad", type(err), err.field, err.problem, str(err))


def same(obj: Any) -> None:
    try:
        data = orjson.dumps(obj)
    except orjson.JSONEncodeError:  # an int beyond 64 bits: not on the wire
        return
    assert fast(data) == oracle(data)


_OPAQUE = ("buyer_key", "buyer_account", "fanstype", "attribution_token")
# Values at and just beyond every bound the fast path checks itself.
_EDGES: list[Any] = [None, "", "x", "x" * 64, "x" * 65, "a b", 0, 1, -1, True, False, 1.0, [],
                     {}, 10**12 - 1, 10**12, 10**13, 10**13 + 1, 1_000_000, 1_000_001,
                     10**15, 10**15 + 1, "x" * MAX_OPAQUE_LEN, "x" * (MAX_OPAQUE_LEN + 1),
                     *(s.value for s in OrderStatus), "PAID", 2]


@st.composite
def usual_variants(draw: st.DrawFn) -> Any:
    """The usual record (or a minimal one) with a few fields set to edge values or dropped."""
    obj = copy.deepcopy(draw(st.sampled_from([USUAL, *map(minimal, OrderStatus)])))
    paths: list[tuple[str | int, ...]] = [(k,) for k in obj] + [
        ("items", 0, k) for k in ITEM_1] + [("items", 1), ("unknown",), ("items", 0, "extra")]
    for path in draw(st.lists(st.sampled_from(paths), max_size=3, unique=True)):
        kind = draw(st.integers(0, 9))
        value = DROP if kind == 0 else draw(_JSON) if kind == 1 else draw(
            st.sampled_from([ITEM_1, ITEM_2])) if kind == 2 else draw(st.sampled_from(_EDGES))
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier change
            obj = changed(obj, (path, value))  # dropped the path's parent
    return obj


@settings(max_examples=500, deadline=None, database=None)
@given(usual_variants())
def test_same_as_the_contract_near_the_usual_record(obj: Any) -> None:
    same(obj)


@settings(max_examples=300, deadline=None, database=None)
@given(mutated_messages())
def test_same_as_the_contract_on_mutated_messages(obj: Any) -> None:
    same(obj)


@settings(max_examples=100, deadline=None, database=None)
@given(st.binary(max_size=40) | st.text(max_size=40), _JSON)
def test_same_as_the_contract_on_junk(data: bytes | str, obj: Any) -> None:
    assert fast(data) == oracle(data)
    same(obj)


@pytest.mark.parametrize("obj", [USUAL, *map(minimal, OrderStatus),
                                 changed(USUAL, (("items",), [ITEM_1, ITEM_2])),
                                 changed(USUAL, (("refunds",), None)),
                                 changed(USUAL, (("refunds",), DROP)),
                                 *(changed(USUAL, ((name,), "")) for name in _OPAQUE)],
                         ids=["usual", *(s.value for s in OrderStatus), "two items",
                              "refunds null", "refunds missing", *(f"empty {n}" for n in _OPAQUE)])
def test_usual_records_take_the_fast_path(obj: dict[str, Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    expected = OrderMessage.from_json(orjson.dumps(obj))

    def refuse(*_args: object) -> None:
        raise AssertionError("the contract's parser ran for a usual record")

    monkeypatch.setattr(OrderMessage, "from_dict", classmethod(refuse))
    monkeypatch.setattr(OrderMessage, "from_json", classmethod(refuse))
    assert decode_order(orjson.dumps(obj)) == expected
    assert decode_order(orjson.dumps(obj).decode()) == expected


@pytest.mark.parametrize("obj", [
    VALID,  # refunds: the contract decides
    changed(USUAL, (("items",), [ITEM_1, ITEM_1])),
    changed(USUAL, (("items",), [ITEM_1] * (MAX_ITEMS + 1))),
    changed(USUAL, (("refunds",), 0)),
    changed(USUAL, (("paid_at",), DROP)),
    changed(USUAL, (("event_ts",), USUAL["created_at"] - 1)),
    changed(USUAL, (("final_at",), USUAL["created_at"] - 1)),
    changed(USUAL, (("channel_id",), "")),
], ids=["refunds", "repeated item", "too many items", "refunds 0", "paid_at missing",
        "event_ts early", "final_at early", "empty channel_id"])
def test_unusual_records_are_the_contracts_to_judge(obj: dict[str, Any]) -> None:
    same(obj)
