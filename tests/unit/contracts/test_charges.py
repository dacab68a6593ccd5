"""The charge request and result v1 (contracts.charges): round trips, every field validated."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.charges import (
    MAX_REASON_LEN,
    ChargeRequest,
    ChargeResult,
    ChargeSchemaError,
    ChargeStatus,
    charge_id_for,
)
from contracts.orders import MAX_AMOUNT_MINOR
from contracts.topics import CHARGE_REQUESTS_TOPIC, CHARGE_RESULTS_TOPIC

T0 = 1_700_000_000_000
REQUEST: dict[str, Any] = {"version": 1, "charge_id": "o-1:1", "order_id": "o-1",
                           "shop_id": "s-1", "amount_minor": 2000, "requested_at": T0,
                           "attempt": 1}
RESULT: dict[str, Any] = {"version": 1, "charge_id": "o-1:1", "order_id": "o-1",
                          "status": "failed", "reason": "insufficient funds",
                          "processed_at": T0 + 420}


def raw(base: dict[str, Any], **changes: Any) -> bytes:
    return orjson.dumps(base | changes)


def without(base: dict[str, Any], name: str) -> bytes:
    return orjson.dumps({k: v for k, v in base.items() if k != name})


def test_topics_are_versioned_and_distinct() -> None:
    assert CHARGE_REQUESTS_TOPIC == "cps.charge-requests.v1"
    assert CHARGE_RESULTS_TOPIC == "cps.charge-results.v1"


def test_request_round_trip_and_the_documented_example() -> None:
    request = ChargeRequest.first("o-1", "s-1", 2000, T0)
    assert request.charge_id == "o-1:1" == charge_id_for("o-1", 1)
    assert orjson.loads(request.to_json()) == REQUEST
    assert ChargeRequest.from_json(request.to_json()) == request
    assert ChargeRequest.from_json(raw(REQUEST)) == request


def test_result_round_trip() -> None:
    result = ChargeResult.from_json(raw(RESULT))
    assert result.status is ChargeStatus.FAILED
    assert orjson.loads(result.to_json()) == RESULT
    assert ChargeResult.from_json(result.to_json().decode()) == result


@given(order_id=st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
       attempt=st.integers(1, 10**6), amount=st.integers(0, MAX_AMOUNT_MINOR))
def test_every_valid_request_round_trips(order_id: str, attempt: int, amount: int) -> None:
    request = ChargeRequest(charge_id_for(order_id, attempt), order_id, "s", amount, T0, attempt)
    assert ChargeRequest.from_json(request.to_json()) == request


REQUEST_ERRORS = [
    (b"not json", "(message)"),
    (b"[1, 2]", "(message)"),
    (raw(REQUEST, version=2), "version"),
    (raw(REQUEST, version="1"), "version"),
    (raw(REQUEST, extra=1), "(message)"),
    (without(REQUEST, "shop_id"), "shop_id"),
    (without(REQUEST, "attempt"), "attempt"),
    (raw(REQUEST, charge_id=""), "charge_id"),
    (raw(REQUEST, charge_id="x" * 81), "charge_id"),
    (raw(REQUEST, charge_id="o 1"), "charge_id"),
    (raw(REQUEST, order_id="x" * 65), "order_id"),
    (raw(REQUEST, order_id=None), "order_id"),
    (raw(REQUEST, shop_id=7), "shop_id"),
    (raw(REQUEST, amount_minor=-1), "amount_minor (minor units)"),
    (raw(REQUEST, amount_minor=12.5), "amount_minor (minor units)"),
    (raw(REQUEST, amount_minor="2000"), "amount_minor (minor units)"),
    (raw(REQUEST, amount_minor=True), "amount_minor (minor units)"),
    (raw(REQUEST, amount_minor=MAX_AMOUNT_MINOR + 1), "amount_minor (minor units)"),
    (raw(REQUEST, requested_at=T0 // 1000), "requested_at (ms since the epoch)"),
    (raw(REQUEST, attempt=0), "attempt"),
]


RESULT_ERRORS = [
    (raw(RESULT, status="pending"), "status"),
    (raw(RESULT, status=None), "status"),
    (raw(RESULT, reason=None), "reason"),
    (raw(RESULT, reason="x" * (MAX_REASON_LEN + 1)), "reason"),
    (without(RESULT, "reason"), "reason"),
    (raw(RESULT, processed_at="soon"), "processed_at (ms since the epoch)"),
    (raw(RESULT, charge_id=["o-1:1"]), "charge_id"),
    (raw(RESULT, amount_minor=1), "(message)"),
]


@pytest.mark.parametrize(("kind", "data", "field"),
                         [(ChargeRequest, d, f) for d, f in REQUEST_ERRORS]
                         + [(ChargeResult, d, f) for d, f in RESULT_ERRORS])
def test_a_bad_message_names_its_field(kind: type[ChargeRequest] | type[ChargeResult],
                                       data: bytes, field: str) -> None:
    with pytest.raises(ChargeSchemaError) as caught:
        kind.from_json(data)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_huge_and_nested_values_are_shown_safely() -> None:
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ChargeSchemaError, match="a list of 1"):
        ChargeResult.from_json(raw(RESULT, order_id=deep))
    with pytest.raises(ChargeSchemaError):  # orjson refuses it: never an OverflowError
        ChargeRequest.from_json(b'{"version": 1, "charge_id": "o:1", "order_id": "o", '
                                b'"shop_id": "s", "requested_at": 1700000000000, "attempt": 1, '
                                b'"amount_minor": ' + b"9" * 500 + b"}")
