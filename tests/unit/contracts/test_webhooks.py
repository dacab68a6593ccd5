"""Webhook events v1: deterministic ids, thin masked payloads."""

from __future__ import annotations

import orjson
import pytest

from contracts.webhooks import (
    EventType,
    OrderSnapshot,
    commission_event,
    event_id_for,
    mask_account,
    order_event,
    order_events,
    payout_event,
)


def _order(status: str = "paid", **kw: object) -> OrderSnapshot:
    base: dict[str, object] = dict(
        order_id="o-1", shop_id="s-1", status=status, attribution_type="cps",
        promoter_id="p-1", channel_id="live", position_id=None, buyer_account="user-1239",
        paid_amount=10_000, refunded_amount=0, created_at=1_000, paid_at=2_000,
        received_at=None, final_at=None, updated_at=2_500)
    base.update(kw)
    return OrderSnapshot(**base)  # type: ignore[arg-type]


def test_event_ids_are_deterministic_and_distinct() -> None:
    a = event_id_for(EventType.ORDER_PAID, "o-1", "paid")
    assert a == event_id_for(EventType.ORDER_PAID, "o-1", "paid")
    assert a.startswith("evt_")
    assert len(a) == 4 + 24
    assert a != event_id_for(EventType.ORDER_PAID, "o-2", "paid")
    assert a != event_id_for(EventType.ORDER_RECEIVED, "o-1", "paid")


@pytest.mark.parametrize(("account", "masked"), [("user-1239", "u***9"), ("ab", "***"),
                                                  ("", ""), (None, None)])
def test_buyer_accounts_are_masked(account: str | None, masked: str | None) -> None:
    assert mask_account(account) == masked


def test_an_order_event_is_thin_and_masked() -> None:
    event = order_event(_order(), "paid")
    body = orjson.loads(event.payload)
    assert body["type"] == "order.paid"
    assert body["event_id"] == event.event_id
    assert body["occurred_at"] == 2_000
    assert body["data"]["buyer_account"] == "u***9"
    assert body["data"]["paid_amount"] == 10_000
    assert "buyer_key" not in body["data"]
    assert b"user-1239" not in event.payload
    assert (event.promoter_id, event.channel_id) == ("p-1", "live")


@pytest.mark.parametrize(("status", "types"), [
    ("created", ["order.created"]),
    ("paid", ["order.created", "order.paid"]),
    ("final", ["order.created", "order.paid", "order.received", "order.final"]),
    ("cancelled", ["order.created", "order.cancelled"]),
    ("refunded", ["order.created", "order.paid", "order.refunded"]),
])
def test_a_decision_reports_every_status_reached(status: str, types: list[str]) -> None:
    assert [e.event_type.value for e in order_events(_order(status))] == types


def test_order_event_ids_do_not_depend_on_the_snapshot() -> None:
    assert order_event(_order(), "paid").event_id == \
        order_event(_order(updated_at=9_999), "paid").event_id


def test_commission_events_go_to_their_participant() -> None:
    promoter = commission_event(EventType.COMMISSION_ACCRUED, order_id="o-1", item_id="i-1",
                                account="promoter:p-1", seq=1, amount=300, commission=300,
                                occurred_at_ms=5)
    channel = commission_event(EventType.COMMISSION_SETTLED, order_id="o-1", item_id="i-1",
                               account="channel:live", seq=1, amount=50, commission=50,
                               occurred_at_ms=5)
    assert (promoter.promoter_id, promoter.channel_id) == ("p-1", None)
    assert (channel.promoter_id, channel.channel_id) == (None, "live")
    assert orjson.loads(promoter.payload)["data"]["amount"] == 300


def test_payout_events() -> None:
    event = payout_event(payout_id="2026-12-01.1:promoter:p-1", run_id="2026-12-01.1",
                         account="promoter:p-1", amount=900, occurred_at_ms=7)
    assert event.event_type is EventType.PAYOUT_CREATED
    assert event.promoter_id == "p-1"
    assert event.event_id == payout_event(payout_id="2026-12-01.1:promoter:p-1",
                                          run_id="x", account="promoter:p-1", amount=1,
                                          occurred_at_ms=8).event_id
