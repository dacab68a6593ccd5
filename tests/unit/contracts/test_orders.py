"""The order message v1 (contracts.orders): every field validated, each error naming its field.

Table-driven: ``VALID`` is one full, valid message; each case changes it at one or more
paths and says which ``OrderSchemaError.field`` must come back and what the message says.
Plus the status / refund tables and a property: whatever a mutated message holds,
``from_dict`` returns an ``OrderMessage`` or raises ``OrderSchemaError``, nothing else.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.orders import (
    ID_PATTERN,
    MAX_AMOUNT_MINOR,
    MAX_ITEMS,
    MAX_OPAQUE_LEN,
    MAX_QUANTITY,
    MAX_REFUNDS,
    MAX_TS_MS,
    MIN_TS_MS,
    SCHEMA_VERSION,
    OrderItem,
    OrderMessage,
    OrderSchemaError,
    OrderStatus,
    Refund,
    RefundStatus,
    can_follow,
    refund_rank,
    status_rank,
)

T0 = 1_700_000_000_000
MINUTE = 60_000

ITEM_1: dict[str, Any] = {"item_id": "i-1", "product_id": "p-1", "category_id": "c-1",
                          "quantity": 1, "paid_amount": 10_000}
ITEM_2: dict[str, Any] = {"item_id": "i-2", "product_id": "p-2", "category_id": "c-2",
                          "quantity": 3, "paid_amount": 4_500}


def refund(refund_id: str, amount: int, status: str = "pending", item_id: str = "i-1",
           requested_at: int = T0 + 5 * MINUTE) -> dict[str, Any]:
    return {"refund_id": refund_id, "item_id": item_id, "amount": amount, "status": status,
            "requested_at": requested_at}


# A final order with every field set; i-1 has a completed and a rejected refund whose sum
# exceeds its paid_amount (rejected refunds do not count), i-2 a pending one.
VALID: dict[str, Any] = {
    "version": 1, "order_id": "o-1", "shop_id": "s-1", "buyer_key": "visitor id ü",
    "buyer_account": "acct-9", "created_at": T0, "status": "final",
    "event_ts": T0 + 10 * MINUTE, "paid_at": T0 + MINUTE, "received_at": T0 + 2 * MINUTE,
    "final_at": T0 + 3 * MINUTE, "channel_id": "live", "fanstype": "fans-1",
    "attribution_token": "c1.AbC-_xyz",
    "items": [ITEM_1, ITEM_2],
    "refunds": [refund("r-1", 2_500, "completed"), refund("r-2", 9_999, "rejected"),
                refund("r-3", 1_000, "pending", item_id="i-2")],
}

# The milestones each status needs (and nothing more).
MILESTONES: dict[OrderStatus, dict[str, Any]] = {
    OrderStatus.CREATED: {},
    OrderStatus.CANCELLED: {},
    OrderStatus.PAID: {"paid_at": T0 + MINUTE},
    OrderStatus.REFUNDED: {"paid_at": T0 + MINUTE},
    OrderStatus.RECEIVED: {"paid_at": T0 + MINUTE, "received_at": T0 + 2 * MINUTE},
    OrderStatus.FINAL: {"paid_at": T0 + MINUTE, "received_at": T0 + 2 * MINUTE,
                        "final_at": T0 + 3 * MINUTE},
}
UNPAID = (OrderStatus.CREATED, OrderStatus.CANCELLED)


def minimal(status: OrderStatus) -> dict[str, Any]:
    """The smallest valid message of ``status``: required fields and its milestones only."""
    obj: dict[str, Any] = {"version": 1, "order_id": "o-1", "shop_id": "s-1",
                           "created_at": T0, "status": status.value, "event_ts": T0 + MINUTE,
                           "items": [dict(ITEM_1)], **MILESTONES[status]}
    return obj


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()
Path = tuple[str | int, ...]


def changed(base: dict[str, Any], *changes: tuple[Path, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``value`` put at each path (``DROP`` deletes it)."""
    obj = copy.deepcopy(base)
    for path, value in changes:
        parent: Any = obj
        for step in path[:-1]:
            parent = parent[step]
        if value is DROP:
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(value)
    return obj


def rejected(obj: Any) -> OrderSchemaError:
    with pytest.raises(OrderSchemaError) as info:
        OrderMessage.from_dict(obj)
    # Whatever from_dict refuses, from_json refuses the same way.
    with pytest.raises(OrderSchemaError) as again:
        OrderMessage.from_json(orjson.dumps(obj))
    assert (again.value.field, again.value.problem) == (info.value.field, info.value.problem)
    return info.value


def assert_names(err: OrderSchemaError, field: str, fragment: str) -> None:
    assert err.field == field, str(err)
    assert str(err) == f"{field}: {err.problem}"
    assert fragment in err.problem, str(err)


# ---------------------------------------------------------------- valid messages


def test_valid_full_message_round_trips() -> None:
    message = OrderMessage.from_dict(VALID)
    data = message.to_json()
    assert isinstance(data, bytes)
    assert OrderMessage.from_json(data) == message
    assert OrderMessage.from_json(data.decode()) == message  # str input too
    assert OrderMessage.from_json(orjson.dumps(VALID)) == message
    # Nothing lost, nothing added: the wire form is VALID itself.
    assert orjson.loads(data) == VALID
    assert set(message.to_dict()) == set(OrderMessage.__dataclass_fields__)


def test_valid_full_message_parses_into_typed_fields() -> None:
    m = OrderMessage.from_dict(VALID)
    assert m.status is OrderStatus.FINAL
    assert m.version == SCHEMA_VERSION == 1
    assert m.items == (OrderItem("i-1", "p-1", "c-1", 1, 10_000),
                       OrderItem("i-2", "p-2", "c-2", 3, 4_500))
    assert isinstance(m.refunds, tuple)
    assert [type(r.status) for r in m.refunds] == [RefundStatus] * 3
    assert m.refunds[0] == Refund("r-1", "i-1", 2_500, RefundStatus.COMPLETED, T0 + 5 * MINUTE)
    assert (m.order_id, m.shop_id, m.buyer_key, m.buyer_account, m.channel_id, m.fanstype,
            m.attribution_token) == ("o-1", "s-1", "visitor id ü", "acct-9", "live", "fans-1",
                                     "c1.AbC-_xyz")
    assert (m.created_at, m.event_ts, m.paid_at, m.received_at, m.final_at) == (
        T0, T0 + 10 * MINUTE, T0 + MINUTE, T0 + 2 * MINUTE, T0 + 3 * MINUTE)


@pytest.mark.parametrize("status", list(OrderStatus), ids=str)
def test_minimal_message_of_each_status_round_trips(status: OrderStatus) -> None:
    m = OrderMessage.from_dict(minimal(status))
    assert m.status is status
    assert m.refunds == ()
    assert (m.buyer_key, m.buyer_account, m.channel_id, m.fanstype, m.attribution_token) == (
        None,) * 5
    assert OrderMessage.from_json(m.to_json()) == m


@pytest.mark.parametrize("status", [s for s in OrderStatus if s not in UNPAID], ids=str)
def test_paid_statuses_may_carry_refunds(status: OrderStatus) -> None:
    obj = minimal(status) | {"refunds": [refund("r-1", 10_000, "completed")]}
    m = OrderMessage.from_dict(obj)
    assert OrderMessage.from_json(m.to_json()) == m


def test_null_and_missing_optional_fields_are_the_same() -> None:
    base = minimal(OrderStatus.CREATED)
    optional = ("buyer_key", "buyer_account", "channel_id", "fanstype", "attribution_token",
                "paid_at", "received_at", "final_at", "refunds")
    assert OrderMessage.from_dict(base | dict.fromkeys(optional)) == OrderMessage.from_dict(base)


@pytest.mark.parametrize("name", ["buyer_key", "buyer_account", "fanstype", "attribution_token"])
def test_empty_opaque_field_becomes_none(name: str) -> None:
    assert getattr(OrderMessage.from_dict(VALID | {name: ""}), name) is None
    assert getattr(OrderMessage.from_dict(VALID | {name: None}), name) is None
    assert getattr(OrderMessage.from_dict(changed(VALID, ((name,), DROP))), name) is None


@pytest.mark.parametrize("name", ["buyer_key", "buyer_account", "fanstype", "attribution_token"])
@pytest.mark.parametrize("value", ["x" * MAX_OPAQUE_LEN, " ", "a b\tc\n", "空ü😀", "{\"j\":1}"],
                         ids=["max_len", "space", "whitespace", "unicode", "json_text"])
def test_opaque_field_keeps_any_string_up_to_its_limit(name: str, value: str) -> None:
    assert getattr(OrderMessage.from_dict(VALID | {name: value}), name) == value


@pytest.mark.parametrize("value", ["x", "x" * 64, "A-z.0_9:x", "0", "-", "..."])
@pytest.mark.parametrize("name", ["order_id", "shop_id", "channel_id"])
def test_ids_matching_the_pattern_are_accepted(name: str, value: str) -> None:
    assert ID_PATTERN.fullmatch(value)
    assert getattr(OrderMessage.from_dict(VALID | {name: value}), name) == value


@pytest.mark.parametrize("ts", [MIN_TS_MS, MAX_TS_MS], ids=["min", "max"])
def test_timestamp_bounds_are_inclusive(ts: int) -> None:
    stamps = {"created_at": ts, "event_ts": ts, "paid_at": ts, "received_at": ts,
              "final_at": ts}
    obj = changed(VALID, *(((k,), v) for k, v in stamps.items()),
                  *(((("refunds", n, "requested_at")), ts) for n in range(3)))
    m = OrderMessage.from_dict(obj)
    assert (m.created_at, m.event_ts, m.paid_at, m.received_at, m.final_at) == (ts,) * 5
    assert {r.requested_at for r in m.refunds} == {ts}


def test_milestones_equal_to_created_at_are_accepted() -> None:
    obj = VALID | dict.fromkeys(("event_ts", "paid_at", "received_at", "final_at"), T0)
    assert OrderMessage.from_dict(obj).final_at == T0


@pytest.mark.parametrize(("path", "value"), [
    (("items", 0, "quantity"), 1), (("items", 0, "quantity"), MAX_QUANTITY),
    (("items", 0, "paid_amount"), 0), (("items", 0, "paid_amount"), MAX_AMOUNT_MINOR),
    (("refunds", 0, "amount"), 1), (("refunds", 0, "amount"), 10_000),
])
def test_item_and_refund_number_bounds_are_inclusive(path: Path, value: int) -> None:
    obj = changed(VALID, (path, value))
    if path[-1] == "paid_amount":
        obj["refunds"] = []
    m = OrderMessage.from_dict(obj)
    assert OrderMessage.from_json(m.to_json()) == m


def test_exactly_max_items_and_max_refunds_are_accepted() -> None:
    items = [ITEM_1 | {"item_id": f"i-{n}"} for n in range(MAX_ITEMS)]
    refunds = [refund(f"r-{n}", 1, "completed", item_id="i-0") for n in range(MAX_REFUNDS)]
    m = OrderMessage.from_dict(VALID | {"items": items, "refunds": refunds})
    assert (len(m.items), len(m.refunds)) == (MAX_ITEMS, MAX_REFUNDS)
    assert m.refunded_amount("i-0") == MAX_REFUNDS


def test_refunds_up_to_paid_amount_are_accepted_and_rejected_ones_do_not_count() -> None:
    # i-1 (10000): completed 6000 + pending 4000 = 10000 exactly; rejected 10000 ignored.
    refunds = [refund("r-1", 6_000, "completed"), refund("r-2", 4_000, "pending"),
               refund("r-3", 10_000, "rejected"), refund("r-4", 10_000, "rejected")]
    m = OrderMessage.from_dict(VALID | {"refunds": refunds})
    assert m.refunded_amount("i-1") == 6_000


# ---------------------------------------------------------------- helpers


def test_paid_total_sums_the_lines() -> None:
    assert OrderMessage.from_dict(VALID).paid_total == 14_500
    assert OrderMessage.from_dict(minimal(OrderStatus.CREATED)).paid_total == 10_000
    zero = changed(VALID, (("items", 0, "paid_amount"), 0), (("items", 1, "paid_amount"), 0),
                   (("refunds",), []))
    assert OrderMessage.from_dict(zero).paid_total == 0


def test_refunded_amount_counts_completed_refunds_of_that_item_only() -> None:
    refunds = [refund("r-1", 2_500, "completed"), refund("r-2", 1_000, "completed"),
               refund("r-3", 3_000, "pending"), refund("r-4", 9_000, "rejected"),
               refund("r-5", 700, "completed", item_id="i-2")]
    m = OrderMessage.from_dict(VALID | {"refunds": refunds})
    assert m.refunded_amount("i-1") == 3_500
    assert m.refunded_amount("i-2") == 700
    assert m.refunded_amount("i-404") == 0
    assert OrderMessage.from_dict(minimal(OrderStatus.PAID)).refunded_amount("i-1") == 0


@pytest.mark.parametrize(("statuses", "in_progress"), [
    ([], False),
    (["completed"], False),
    (["rejected"], False),
    (["completed", "rejected"], False),
    (["pending"], True),
    (["completed", "pending", "rejected"], True),
])
def test_refund_in_progress_iff_a_refund_is_pending(statuses: list[str], in_progress: bool
                                                    ) -> None:
    refunds = [refund(f"r-{n}", 1, s) for n, s in enumerate(statuses)]
    assert OrderMessage.from_dict(VALID | {"refunds": refunds}).refund_in_progress is in_progress


# ---------------------------------------------------------------- status tables


def test_status_rank_table() -> None:
    assert {s: status_rank(s) for s in OrderStatus} == {
        OrderStatus.CREATED: 0, OrderStatus.CANCELLED: 1, OrderStatus.PAID: 1,
        OrderStatus.RECEIVED: 2, OrderStatus.FINAL: 3, OrderStatus.REFUNDED: 4}


_C, _X, _P, _R, _F, _D = (OrderStatus.CREATED, OrderStatus.CANCELLED, OrderStatus.PAID,
                          OrderStatus.RECEIVED, OrderStatus.FINAL, OrderStatus.REFUNDED)
# FOLLOWS[current] = the statuses an order in ``current`` may hold next (itself included).
FOLLOWS: dict[OrderStatus, set[OrderStatus]] = {
    _C: {_C, _X, _P, _R, _F, _D},  # created -> anything
    _X: {_X},  # cancelled is terminal
    _P: {_P, _R, _F, _D},  # never back to created, never cancelled once paid
    _R: {_R, _F, _D},
    _F: {_F, _D},
    _D: {_D},  # refunded is terminal
}


@pytest.mark.parametrize("current", list(OrderStatus), ids=str)
@pytest.mark.parametrize("new", list(OrderStatus), ids=str)
def test_can_follow_table(current: OrderStatus, new: OrderStatus) -> None:
    assert can_follow(current, new) is (new in FOLLOWS[current])


@pytest.mark.parametrize(("current", "new"), [
    (_P, _X), (_R, _X), (_F, _X), (_D, _X),  # a paid order is never cancelled
    (_X, _P), (_X, _C), (_X, _D),  # a cancelled order stays cancelled
    (_D, _F), (_D, _P), (_D, _C),  # refunded is terminal
    (_F, _R), (_R, _P), (_P, _C),  # never backwards
])
def test_can_follow_refuses(current: OrderStatus, new: OrderStatus) -> None:
    assert not can_follow(current, new)


def test_can_follow_is_reflexive_and_never_lowers_the_rank() -> None:
    for current in OrderStatus:
        assert can_follow(current, current)
        assert can_follow(OrderStatus.CREATED, current)
        for new in OrderStatus:
            if can_follow(current, new) and new is not current:
                assert status_rank(new) > status_rank(current), (current, new)


def test_refund_rank_table() -> None:
    assert {s: refund_rank(s) for s in RefundStatus} == {
        RefundStatus.PENDING: 0, RefundStatus.COMPLETED: 1, RefundStatus.REJECTED: 1}


def test_status_enums_parse_their_wire_values() -> None:
    assert [s.value for s in OrderStatus] == ["created", "paid", "received", "final",
                                              "cancelled", "refunded"]
    assert [s.value for s in RefundStatus] == ["pending", "completed", "rejected"]


# ---------------------------------------------------------------- not a message at all


@pytest.mark.parametrize("data", [
    b"", b" ", b"{", b"{not json", b"\xff\xfe", b"{'version': 1}", b"NaN", b"[1,]",
    b'{"version": 1,}', "{", b"1e400",
], ids=repr)
def test_not_json(data: bytes | str) -> None:
    with pytest.raises(OrderSchemaError) as info:
        OrderMessage.from_json(data)
    assert_names(info.value, "(message)", "not JSON")


@pytest.mark.parametrize("data", [b"[]", b"[{}]", b"null", b"1", b"1.5", b'"order"', b"true"],
                         ids=repr)
def test_not_an_object(data: bytes) -> None:
    with pytest.raises(OrderSchemaError) as info:
        OrderMessage.from_json(data)
    assert_names(info.value, "(message)", "JSON object")


def test_limits_are_the_documented_ones() -> None:
    assert (SCHEMA_VERSION, MAX_OPAQUE_LEN, MAX_ITEMS, MAX_REFUNDS, MAX_AMOUNT_MINOR,
            MAX_QUANTITY, MIN_TS_MS, MAX_TS_MS) == (1, 1024, 500, 1000, 10**15, 1_000_000,
                                                    10**12, 10**13)
    assert ID_PATTERN.pattern == r"[A-Za-z0-9._:-]{1,64}"


def test_schema_error_is_a_value_error_with_field_and_problem() -> None:
    err = OrderSchemaError("items[0].quantity", "must be positive")
    assert isinstance(err, ValueError)
    assert (err.field, err.problem, str(err)) == ("items[0].quantity", "must be positive",
                                                  "items[0].quantity: must be positive")


# ---------------------------------------------------------------- the table of bad messages

_ID_MSG = "must be an id matching"
_TS = " (ms since the epoch)"
_TS_MSG = f"must be an integer from {MIN_TS_MS} to {MAX_TS_MS}"
_BAD_IDS: list[tuple[str, Any]] = [
    ("empty", ""), ("space", "a b"), ("too_long", "x" * 65), ("unicode", "ü"),
    ("slash", "a/b"), ("newline", "a\n"), ("int", 1), ("bool", True), ("list", ["o-1"]),
    ("object", {"id": "o-1"}), ("float", 1.0),
]
_BAD_TS: list[tuple[str, Any]] = [
    ("string", str(T0)), ("float", float(T0)), ("float_frac", T0 + 0.5), ("bool", True),
    ("below_min", MIN_TS_MS - 1), ("above_max", MAX_TS_MS + 1), ("zero", 0), ("negative", -T0),
    ("seconds", T0 // 1000), ("microseconds", T0 * 1000), ("list", [T0]),
]
_BAD_OPAQUE: list[tuple[str, Any]] = [
    ("too_long", "x" * (MAX_OPAQUE_LEN + 1)), ("int", 5), ("zero", 0), ("bool", True),
    ("false", False), ("list", []), ("object", {}), ("float", 1.5),
]
_BAD_STATUS: list[tuple[str, Any]] = [
    ("missing", DROP), ("null", None), ("upper", "PAID"), ("unknown", "shipped"),
    ("padded", " paid"), ("empty", ""), ("int", 1), ("bool", True), ("list", ["paid"]),
    ("refund_status", "pending"), ("none_string", "None"),
]
_BAD_LIST: list[tuple[str, Any]] = [
    ("object", {}), ("string", "i-1"), ("int", 1), ("bool", True),
]


def _case(case_id: str, changes: list[tuple[Path, Any]], field: str, fragment: str,
          base: dict[str, Any] | None = None) -> Any:
    return pytest.param(changes, field, fragment, base, id=case_id)


def _cases() -> list[Any]:
    cases: list[Any] = []
    # required ids
    for name in ("order_id", "shop_id"):
        cases.append(_case(f"{name}-missing", [((name,), DROP)], name, _ID_MSG))
        cases.append(_case(f"{name}-null", [((name,), None)], name, _ID_MSG))
        cases += [_case(f"{name}-{k}", [((name,), v)], name, _ID_MSG) for k, v in _BAD_IDS]
    # optional id: null/missing fine, anything else must match
    cases += [_case(f"channel_id-{k}", [(("channel_id",), v)], "channel_id", _ID_MSG)
              for k, v in _BAD_IDS]
    # opaque strings
    for name in ("buyer_key", "buyer_account", "fanstype", "attribution_token"):
        cases += [_case(f"{name}-{k}", [((name,), v)], name, f"at most {MAX_OPAQUE_LEN}")
                  for k, v in _BAD_OPAQUE]
    # required timestamps
    for name in ("created_at", "event_ts"):
        cases.append(_case(f"{name}-missing", [((name,), DROP)], name + _TS, _TS_MSG))
        cases.append(_case(f"{name}-null", [((name,), None)], name + _TS, _TS_MSG))
        cases += [_case(f"{name}-{k}", [((name,), v)], name + _TS, _TS_MSG) for k, v in _BAD_TS]
    # optional timestamps: checked whenever present, even when the status needs none
    for name in ("paid_at", "received_at", "final_at"):
        for k, v in _BAD_TS:
            cases.append(_case(f"{name}-{k}", [((name,), v)], name + _TS, _TS_MSG))
            cases.append(_case(f"{name}-{k}-on-created", [((name,), v)], name + _TS, _TS_MSG,
                               base=minimal(OrderStatus.CREATED)))
    # status
    cases += [_case(f"status-{k}", [(("status",), v)], "status",
                    "is not one of created, paid, received, final, cancelled, refunded")
              for k, v in _BAD_STATUS]
    # unknown fields
    cases.append(_case("unknown-top", [(("extra",), 1)], "(message)", "unknown fields ['extra']"))
    cases.append(_case("unknown-top-null", [(("zz",), None), (("aa",), None)], "(message)",
                       "unknown fields ['aa', 'zz']"))
    cases.append(_case("unknown-top-paid-total", [(("paid_total",), 14_500)], "(message)",
                       "['paid_total']"))
    cases.append(_case("unknown-top-case", [(("Status",), "paid")], "(message)", "['Status']"))
    cases.append(_case("unknown-in-item", [(("items", 0, "price"), 1)], "items[0]",
                       "unknown fields ['price']"))
    cases.append(_case("unknown-in-second-item", [(("items", 1, "sku"), None)], "items[1]",
                       "unknown fields ['sku']"))
    cases.append(_case("unknown-in-refund", [(("refunds", 0, "reason"), "broken")], "refunds[0]",
                       "unknown fields ['reason']"))
    cases.append(_case("unknown-in-third-refund", [(("refunds", 2, "x"), 1)], "refunds[2]",
                       "unknown fields ['x']"))
    # items: the list
    cases.append(_case("items-missing", [(("items",), DROP)], "items", "must be a list"))
    cases.append(_case("items-null", [(("items",), None)], "items", "must be a list"))
    cases += [_case(f"items-{k}", [(("items",), v)], "items", "must be a list")
              for k, v in _BAD_LIST]
    cases.append(_case("items-empty", [(("items",), []), (("refunds",), [])], "items",
                       "at least one item"))
    cases.append(_case("items-too-many",
                       [(("items",), [ITEM_1 | {"item_id": f"i-{n}"}
                                      for n in range(MAX_ITEMS + 1)])],
                       "items", f"at most {MAX_ITEMS} entries"))
    for k, v in [("null", None), ("int", 1), ("string", "i-1"), ("list", [ITEM_1])]:
        cases.append(_case(f"item-{k}", [(("items", 0), v)], "items[0]",
                           "an item is a JSON object"))
        cases.append(_case(f"second-item-{k}", [(("items", 1), v)], "items[1]",
                           "an item is a JSON object"))
    cases.append(_case("items-duplicate-id", [(("items", 1, "item_id"), "i-1")], "items",
                       "item_id values repeat"))
    # items: their fields
    for name in ("item_id", "product_id", "category_id"):
        field = f"items[0].{name}"
        cases.append(_case(f"{field}-missing", [(("items", 0, name), DROP)], field, _ID_MSG))
        cases.append(_case(f"{field}-null", [(("items", 0, name), None)], field, _ID_MSG))
        cases += [_case(f"{field}-{k}", [(("items", 0, name), v)], field, _ID_MSG)
                  for k, v in _BAD_IDS]
        cases.append(_case(f"items[1].{name}-empty", [(("items", 1, name), "")],
                           f"items[1].{name}", _ID_MSG))
    q_msg = f"must be an integer from 1 to {MAX_QUANTITY}"
    for k, v in [("missing", DROP), ("null", None), ("zero", 0), ("negative", -1),
                 ("too_large", MAX_QUANTITY + 1), ("float", 1.0), ("float_frac", 1.5),
                 ("bool", True), ("string", "1"), ("list", [1])]:
        cases.append(_case(f"quantity-{k}", [(("items", 0, "quantity"), v)], "items[0].quantity",
                           q_msg))
    amount_field = "items[0].paid_amount (minor units)"
    a_msg = f"must be an integer from 0 to {MAX_AMOUNT_MINOR}"
    for k, v in [("missing", DROP), ("null", None), ("negative", -1),
                 ("too_large", MAX_AMOUNT_MINOR + 1), ("int64_max", 2**63 - 1),
                 ("float", 10_000.0), ("float_frac", 99.5), ("float_zero", 0.0),
                 ("bool_true", True), ("bool_false", False), ("string", "10000"),
                 ("decimal_string", "100.00"), ("object", {"amount": 1})]:
        cases.append(_case(f"paid_amount-{k}", [(("items", 0, "paid_amount"), v)],
                           amount_field, a_msg))
    cases.append(_case("second-item-paid_amount-float", [(("items", 1, "paid_amount"), 4500.0)],
                       "items[1].paid_amount (minor units)", a_msg))
    # refunds: the list
    cases += [_case(f"refunds-{k}", [(("refunds",), v)], "refunds", "must be a list")
              for k, v in _BAD_LIST]
    cases.append(_case("refunds-too-many",
                       [(("refunds",), [refund(f"r-{n}", 1) for n in range(MAX_REFUNDS + 1)])],
                       "refunds", f"at most {MAX_REFUNDS} entries"))
    for k, v in [("null", None), ("int", 1), ("string", "r-1"), ("list", [])]:
        cases.append(_case(f"refund-{k}", [(("refunds", 0), v)], "refunds[0]",
                           "a refund is a JSON object"))
    cases.append(_case("refunds-duplicate-id", [(("refunds", 2, "refund_id"), "r-1")],
                       "refunds", "refund_id values repeat"))
    cases.append(_case("refunds-duplicate-id-other-item",
                       [(("refunds",), [refund("r-1", 1), refund("r-1", 1, item_id="i-2")])],
                       "refunds", "refund_id values repeat"))
    # refunds: their fields
    for name in ("refund_id", "item_id"):
        field = f"refunds[0].{name}"
        cases.append(_case(f"{field}-missing", [(("refunds", 0, name), DROP)], field, _ID_MSG))
        cases.append(_case(f"{field}-null", [(("refunds", 0, name), None)], field, _ID_MSG))
        cases += [_case(f"{field}-{k}", [(("refunds", 0, name), v)], field, _ID_MSG)
                  for k, v in _BAD_IDS]
    cases.append(_case("refund-unknown-item", [(("refunds", 1, "item_id"), "i-9")],
                       "refunds[1].item_id", "no item 'i-9' in this order"))
    cases.append(_case("refund-item-is-a-product-id", [(("refunds", 0, "item_id"), "p-1")],
                       "refunds[0].item_id", "no item 'p-1'"))
    r_amount = "refunds[0].amount (minor units)"
    r_msg = f"must be an integer from 1 to {MAX_AMOUNT_MINOR}"
    for k, v in [("missing", DROP), ("null", None), ("zero", 0), ("negative", -1),
                 ("too_large", MAX_AMOUNT_MINOR + 1), ("float", 2500.0), ("float_frac", 0.5),
                 ("bool", True), ("string", "2500")]:
        cases.append(_case(f"refund-amount-{k}", [(("refunds", 0, "amount"), v)], r_amount,
                           r_msg))
    for k, v in [("missing", DROP), ("null", None), ("upper", "COMPLETED"), ("unknown", "done"),
                 ("order_status", "refunded"), ("int", 1), ("bool", True), ("list", ["pending"])]:
        cases.append(_case(f"refund-status-{k}", [(("refunds", 0, "status"), v)],
                           "refunds[0].status", "is not one of pending, completed, rejected"))
    for k, v in [("missing", DROP), ("null", None), *_BAD_TS]:
        cases.append(_case(f"refund-requested_at-{k}", [(("refunds", 0, "requested_at"), v)],
                           "refunds[0].requested_at", "must be ms since the epoch"))
    # refunds: sums and statuses
    cases.append(_case("refunds-exceed-paid_amount-completed",
                       [(("refunds",), [refund("r-1", 10_001, "completed")])],
                       "refunds", "refunds of item 'i-1' exceed its paid_amount (10001 > 10000)"))
    cases.append(_case("refunds-exceed-paid_amount-pending-counts",
                       [(("refunds",), [refund("r-1", 6_000, "completed"),
                                        refund("r-2", 4_001, "pending")])],
                       "refunds", "(10001 > 10000)"))
    cases.append(_case("refunds-exceed-paid_amount-rejected-ignored-but-rest-exceeds",
                       [(("refunds",), [refund("r-1", 9_000, "rejected"),
                                        refund("r-2", 4_501, "completed", item_id="i-2")])],
                       "refunds", "refunds of item 'i-2' exceed its paid_amount (4501 > 4500)"))
    cases.append(_case("refunds-on-free-item",
                       [(("items", 1, "paid_amount"), 0),
                        (("refunds",), [refund("r-1", 1, "pending", item_id="i-2")])],
                       "refunds", "(1 > 0)"))
    for status in UNPAID:
        for rs in ("pending", "completed", "rejected"):
            cases.append(_case(f"refunds-on-{status}-{rs}",
                               [(("refunds",), [refund("r-1", 1, rs)])], "refunds",
                               f"an order that is {status.value} was never paid",
                               base=minimal(status)))
    # milestones each status needs
    for status in OrderStatus:
        if status in UNPAID:
            continue
        base = minimal(status)
        cases.append(_case(f"{status}-without-paid_at", [(("paid_at",), DROP)], "paid_at",
                           f"required once the order is {status.value}", base=base))
        cases.append(_case(f"{status}-with-null-paid_at", [(("paid_at",), None)], "paid_at",
                           f"required once the order is {status.value}", base=base))
    for status in (OrderStatus.RECEIVED, OrderStatus.FINAL):
        cases.append(_case(f"{status}-without-received_at", [(("received_at",), DROP)],
                           "received_at", f"required once the order is {status.value}",
                           base=minimal(status)))
    cases.append(_case("final-without-final_at", [(("final_at",), None)], "final_at",
                       "required once the order is final", base=minimal(OrderStatus.FINAL)))
    # ordering against created_at
    for name in ("event_ts", "paid_at", "received_at", "final_at"):
        cases.append(_case(f"{name}-before-created_at", [((name,), T0 - 1)], name,
                           "is before created_at"))
    cases.append(_case("paid_at-before-created_at-on-created", [(("paid_at",), T0 - 1)],
                       "paid_at", "is before created_at", base=minimal(OrderStatus.CREATED)))
    # version
    for k, v in [("missing", DROP), ("null", None), ("two", 2), ("zero", 0), ("string", "1"),
                 ("bool", True), ("float", 1.0), ("list", [1]), ("negative", -1)]:
        cases.append(_case(f"version-{k}", [(("version",), v)], "version",
                           "unsupported schema version"))
    return cases


CASES = _cases()


@pytest.mark.parametrize(("changes", "field", "fragment", "base"), CASES)
def test_bad_message_names_its_field(changes: list[tuple[Path, Any]], field: str,
                                     fragment: str, base: dict[str, Any] | None) -> None:
    start = VALID if base is None else base
    OrderMessage.from_dict(start)  # the base itself is valid
    assert_names(rejected(changed(start, *changes)), field, fragment)


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_version_is_checked_before_anything_else() -> None:
    err = rejected({"version": 2, "extra": 1, "items": "nope"})
    assert_names(err, "version", "unsupported schema version 2")
    assert_names(rejected({}), "version", "unsupported schema version null")
    assert_names(rejected({"version": "1"}), "version", "'1'")


def test_error_messages_quote_the_bad_value_where_it_helps() -> None:
    assert str(rejected(VALID | {"status": "shipped"})) == (
        "status: 'shipped' is not one of created, paid, received, final, cancelled, refunded")
    assert str(rejected(VALID | {"order_id": "a b"})) == (
        f"order_id: must be an id matching {ID_PATTERN.pattern}")
    assert str(rejected(VALID | {"created_at": 5})) == (
        f"created_at (ms since the epoch): must be an integer from {MIN_TS_MS} to {MAX_TS_MS}")
    assert str(rejected(minimal(OrderStatus.PAID) | {"paid_at": None})) == (
        "paid_at: required once the order is paid")


def test_refunded_order_needs_no_received_at() -> None:
    m = OrderMessage.from_dict(minimal(OrderStatus.REFUNDED))
    assert (m.received_at, m.final_at) == (None, None)


def test_created_order_may_already_carry_later_milestones() -> None:
    # Only the milestones a status requires are enforced; extra ones are not an error.
    m = OrderMessage.from_dict(minimal(OrderStatus.CREATED) | MILESTONES[OrderStatus.FINAL])
    assert m.final_at == T0 + 3 * MINUTE


# ---------------------------------------------------------------- known bugs


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("key", ["version", "status"])
def test_deeply_nested_value_is_a_schema_error(key: str) -> None:
    obj = VALID | {key: "@"}
    data = orjson.dumps(obj).replace(b'"@"', _nested(1020))
    with pytest.raises(OrderSchemaError) as info:
        OrderMessage.from_json(data)
    assert info.value.field == key


def test_deeply_nested_refund_status_is_a_schema_error() -> None:
    obj = changed(VALID, (("refunds", 0, "status"), "@"))
    data = orjson.dumps(obj).replace(b'"@"', _nested(1020))
    with pytest.raises(OrderSchemaError) as info:
        OrderMessage.from_json(data)
    assert info.value.field == "refunds[0].status"


@pytest.mark.parametrize("path", [("version",), ("status",), ("refunds", 0, "status")],
                         ids=["version", "status", "refund_status"])
def test_huge_int_is_a_schema_error(path: Path) -> None:
    try:
        OrderMessage.from_dict(changed(VALID, (path, 10**5000)))
    except OrderSchemaError:
        return
    pytest.fail("accepted")


# ---------------------------------------------------------------- property

_KEYS = sorted(set(OrderMessage.__dataclass_fields__) | set(OrderItem.__dataclass_fields__)
               | set(Refund.__dataclass_fields__))
_INTERESTING: list[Any] = [
    *(s.value for s in OrderStatus), *(s.value for s in RefundStatus), "i-1", "i-2", "r-1",
    "", "x" * 65, MIN_TS_MS, MAX_TS_MS, MIN_TS_MS - 1, MAX_TS_MS + 1, T0, T0 - 1, 0, 1, -1,
    MAX_AMOUNT_MINOR, MAX_AMOUNT_MINOR + 1, 1.0, True, False, None, [], {},
]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    | st.sampled_from(_INTERESTING),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(_KEYS), inner, max_size=4),
    max_leaves=12)


def _containers(node: Any) -> list[Any]:
    found: list[Any] = []
    if isinstance(node, dict | list):
        found.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            found += _containers(child)
    return found


@st.composite
def mutated_messages(draw: st.DrawFn) -> Any:
    obj: Any = copy.deepcopy(draw(st.sampled_from([VALID, *map(minimal, OrderStatus)])))
    for _ in range(draw(st.integers(0, 4))):
        # Half the time the top level, else any object or array in the tree.
        target = obj if draw(st.booleans()) else draw(st.sampled_from(_containers(obj)))
        action = draw(st.sampled_from(["drop", "replace", "insert"]))
        if isinstance(target, dict):
            if action == "insert" or not target:
                target[draw(st.sampled_from(_KEYS) | st.text(max_size=8))] = draw(_JSON)
            else:
                key = draw(st.sampled_from(sorted(target)))
                if action == "drop":
                    del target[key]
                else:
                    target[key] = draw(_JSON)
        elif action == "insert" or not target:
            target.insert(draw(st.integers(0, len(target))), draw(_JSON))
        else:
            index = draw(st.integers(0, len(target) - 1))
            if action == "drop":
                del target[index]
            else:
                target[index] = draw(_JSON)
    if draw(st.sampled_from([False] * 19 + [True])):
        obj = draw(_JSON)  # now and then not even an object
    return obj


@settings(max_examples=300, deadline=None, database=None)
@given(mutated_messages())
def test_property_from_dict_returns_a_message_or_raises_schema_error(obj: Any) -> None:
    if not isinstance(obj, dict):
        try:
            data = orjson.dumps(obj)
        except orjson.JSONEncodeError:  # an int beyond 64 bits: not on the wire
            return
        with pytest.raises(OrderSchemaError):
            OrderMessage.from_json(data)
        return
    error: OrderSchemaError | None = None
    parsed: OrderMessage | None = None
    try:
        parsed = OrderMessage.from_dict(obj)
    except OrderSchemaError as err:
        error = err
    if error is not None:
        assert error.field
        assert error.problem
    else:
        assert parsed is not None
        assert OrderMessage.from_json(parsed.to_json()) == parsed
    try:
        data = orjson.dumps(obj)
    except orjson.JSONEncodeError:  # an int beyond 64 bits: not on the wire
        return
    try:
        again: OrderMessage | None = OrderMessage.from_json(data)
    except OrderSchemaError:
        again = None
    assert again == parsed
