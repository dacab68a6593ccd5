"""The order status machine (attribution_worker.order_state): table of transitions, refunds,
rejections, and the convergence property over permutations and duplicates of histories."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution_worker.order_state import (
    Apply,
    Decision,
    Ignore,
    OrderState,
    Reject,
    decide,
    state_of,
)
from contracts.orders import OrderMessage, OrderStatus, RefundStatus, status_rank

T0 = 1_700_000_000_000
MINUTE = 60_000
ITEMS = [{"item_id": "i-1", "product_id": "p-1", "category_id": "c-1", "quantity": 1,
          "paid_amount": 10_000},
         {"item_id": "i-2", "product_id": "p-2", "category_id": "c-2", "quantity": 3,
          "paid_amount": 4_500}]
MILESTONES = {
    OrderStatus.CREATED: {},
    OrderStatus.CANCELLED: {},
    OrderStatus.PAID: {"paid_at": T0 + MINUTE},
    OrderStatus.REFUNDED: {"paid_at": T0 + MINUTE},
    OrderStatus.RECEIVED: {"paid_at": T0 + MINUTE, "received_at": T0 + 2 * MINUTE},
    OrderStatus.FINAL: {"paid_at": T0 + MINUTE, "received_at": T0 + 2 * MINUTE,
                        "final_at": T0 + 3 * MINUTE},
}


def message(status: OrderStatus = OrderStatus.CREATED, event_ts: int = T0, **fields: Any
            ) -> OrderMessage:
    obj: dict[str, Any] = {
        "version": 1, "order_id": "o-1", "shop_id": "s-1", "buyer_key": "visitor-1",
        "buyer_account": "acct-1", "created_at": T0, "status": status.value,
        "event_ts": event_ts, "channel_id": "live", "items": ITEMS, **MILESTONES[status]}
    obj.update(fields)
    return OrderMessage.from_dict(obj)


def refund(refund_id: str, amount: int, status: str = "pending", item_id: str = "i-1",
           requested_at: int = T0 + 5 * MINUTE) -> dict[str, Any]:
    return {"refund_id": refund_id, "item_id": item_id, "amount": amount, "status": status,
            "requested_at": requested_at}


def applied(stored: OrderState | None, msg: OrderMessage) -> OrderState:
    decision = decide(stored, msg)
    assert isinstance(decision, Apply), decision
    return decision.state


def fold(messages: list[OrderMessage]) -> tuple[OrderState | None, list[Decision]]:
    state: OrderState | None = None
    decisions = []
    for msg in messages:
        decision = decide(state, msg)
        decisions.append(decision)
        if isinstance(decision, Apply):
            state = decision.state
    return state, decisions


# ---------------------------------------------------------------- transitions

S = OrderStatus
# stored status -> incoming status (event_ts one minute later) -> A(pply) I(gnore) R(eject)
TABLE = {
    S.CREATED:   {S.CREATED: "A", S.PAID: "A", S.RECEIVED: "A", S.FINAL: "A",
                  S.CANCELLED: "A", S.REFUNDED: "A"},
    S.PAID:      {S.CREATED: "I", S.PAID: "A", S.RECEIVED: "A", S.FINAL: "A",
                  S.CANCELLED: "R", S.REFUNDED: "A"},
    S.RECEIVED:  {S.CREATED: "I", S.PAID: "I", S.RECEIVED: "A", S.FINAL: "A",
                  S.CANCELLED: "R", S.REFUNDED: "A"},
    S.FINAL:     {S.CREATED: "I", S.PAID: "I", S.RECEIVED: "I", S.FINAL: "A",
                  S.CANCELLED: "R", S.REFUNDED: "A"},
    S.CANCELLED: {S.CREATED: "I", S.PAID: "R", S.RECEIVED: "R", S.FINAL: "R",
                  S.CANCELLED: "A", S.REFUNDED: "R"},
    S.REFUNDED:  {S.CREATED: "I", S.PAID: "I", S.RECEIVED: "I", S.FINAL: "I",
                  S.CANCELLED: "R", S.REFUNDED: "A"},
}
KIND = {"A": Apply, "I": Ignore, "R": Reject}


@pytest.mark.parametrize(("stored_status", "incoming_status"),
                         [(a, b) for a in S for b in S])
def test_every_status_pair_later_event(stored_status: OrderStatus,
                                       incoming_status: OrderStatus) -> None:
    stored = applied(None, message(stored_status, T0 + 10 * MINUTE))
    decision = decide(stored, message(incoming_status, T0 + 11 * MINUTE))
    assert isinstance(decision, KIND[TABLE[stored_status][incoming_status]]), decision
    if isinstance(decision, Apply):
        assert decision.state.status is incoming_status
        assert decision.previous == stored
        assert not decision.created
    if isinstance(decision, Reject):
        assert decision.field == "status"


@pytest.mark.parametrize(("stored_status", "incoming_status"),
                         [(a, b) for a in S for b in S])
def test_every_status_pair_earlier_event(stored_status: OrderStatus,
                                         incoming_status: OrderStatus) -> None:
    """An earlier snapshot applies only with a strictly higher status (a reordered pair
    whose newer half carries the older clock cannot exist in a valid history, but rank
    decides: the status never goes back)."""
    stored = applied(None, message(stored_status, T0 + 10 * MINUTE))
    decision = decide(stored, message(incoming_status, T0 + 9 * MINUTE))
    expected = TABLE[stored_status][incoming_status]
    if stored_status is incoming_status:
        expected = "I"
    assert isinstance(decision, KIND[expected]), decision


@pytest.mark.parametrize("status", list(S))
def test_first_message_of_any_status_creates_the_order(status: OrderStatus) -> None:
    decision = decide(None, message(status))
    assert isinstance(decision, Apply)
    assert decision.created
    assert decision.previous is None
    assert decision.state.status is status


@pytest.mark.parametrize("status", list(S))
def test_a_duplicate_is_ignored(status: OrderStatus) -> None:
    msg = message(status, T0 + 7 * MINUTE)
    decision = decide(applied(None, msg), msg)
    assert decision == Ignore("duplicate of the applied snapshot")


def test_out_of_order_paid_before_created() -> None:
    paid = applied(None, message(S.PAID, T0 + MINUTE))
    decision = decide(paid, message(S.CREATED, T0))
    assert isinstance(decision, Ignore)
    assert "older status: created after the ledger's paid" in decision.reason


def test_same_status_older_or_equal_event_is_ignored_newer_applies() -> None:
    stored = applied(None, message(S.PAID, T0 + 5 * MINUTE, fanstype="fan"))
    older = decide(stored, message(S.PAID, T0 + 4 * MINUTE, fanstype="other"))
    assert isinstance(older, Ignore)
    assert "not newer" in older.reason
    same_ts = decide(stored, message(S.PAID, T0 + 5 * MINUTE, fanstype="other"))
    assert isinstance(same_ts, Ignore)
    newer = applied(stored, message(S.PAID, T0 + 6 * MINUTE, fanstype="other"))
    assert newer.fanstype == "other"
    assert newer.event_ts == T0 + 6 * MINUTE


def test_environment_fields_follow_the_newest_snapshot() -> None:
    stored = applied(None, message(S.CREATED, T0, attribution_token="tok-1", fanstype=None))
    newer = applied(stored, message(S.PAID, T0 + MINUTE, attribution_token=None,
                                    fanstype="fan", channel_id="chat"))
    assert (newer.attribution_token, newer.fanstype, newer.channel_id) == (None, "fan", "chat")


@pytest.mark.parametrize(("field", "value"), [
    ("shop_id", "s-2"), ("created_at", T0 - 1), ("buyer_key", "visitor-2"),
    ("buyer_key", None), ("buyer_account", "acct-2"), ("buyer_account", None)])
@pytest.mark.parametrize("later", [True, False])
def test_a_different_identity_is_rejected(field: str, value: Any, later: bool) -> None:
    stored = applied(None, message(S.PAID, T0 + 5 * MINUTE))
    event_ts = T0 + (6 if later else 4) * MINUTE
    decision = decide(stored, message(S.PAID, event_ts, **{field: value}))
    assert isinstance(decision, Reject)
    assert decision.field == field


def test_paid_then_cancelled_is_rejected_either_way_round() -> None:
    paid = message(S.PAID, T0 + MINUTE)
    cancelled = message(S.CANCELLED, T0 + 2 * MINUTE)
    for first, second in ((paid, cancelled), (cancelled, paid)):
        decision = decide(applied(None, first), second)
        assert isinstance(decision, Reject)
        assert decision.field == "status"
        assert "cannot happen" in decision.reason


def test_items_may_change_before_payment_not_after() -> None:
    repriced = [dict(ITEMS[0], paid_amount=9_000), ITEMS[1]]
    stored = applied(None, message(S.CREATED, T0))
    changed = applied(stored, message(S.CREATED, T0 + MINUTE, items=repriced))
    assert changed.items[0].paid_amount == 9_000
    paid = applied(changed, message(S.PAID, T0 + 2 * MINUTE, items=ITEMS))
    assert paid.items[0].paid_amount == 10_000
    for incoming_status, event_ts in ((S.RECEIVED, 3), (S.PAID, 1), (S.PAID, 3)):
        decision = decide(paid, message(incoming_status, T0 + event_ts * MINUTE,
                                        items=repriced))
        assert isinstance(decision, Reject), decision
        assert decision.field == "items"
    # An older unpaid snapshot with the old price is just old.
    assert isinstance(decide(paid, message(S.CREATED, T0, items=repriced)), Ignore)


def test_items_removed_or_added_after_payment_are_rejected() -> None:
    paid = applied(None, message(S.PAID, T0 + MINUTE))
    decision = decide(paid, message(S.RECEIVED, T0 + 3 * MINUTE, items=ITEMS[:1]))
    assert isinstance(decision, Reject)
    assert decision.field == "items"


@pytest.mark.parametrize("name", ["paid_at", "received_at", "final_at"])
def test_a_changed_milestone_time_is_rejected(name: str) -> None:
    stored = applied(None, message(S.FINAL, T0 + 10 * MINUTE))
    decision = decide(stored, message(S.FINAL, T0 + 11 * MINUTE, **{name: T0 + 4 * MINUTE}))
    assert isinstance(decision, Reject)
    assert decision.field == name


def test_a_milestone_appears_once_reached() -> None:
    paid = applied(None, message(S.PAID, T0 + MINUTE))
    received = applied(paid, message(S.RECEIVED, T0 + 2 * MINUTE))
    assert (received.paid_at, received.received_at) == (T0 + MINUTE, T0 + 2 * MINUTE)


def test_order_id_mismatch_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="decided against"):
        decide(applied(None, message()), message(order_id="o-2"))


# ---------------------------------------------------------------- refunds


def test_partial_refund_pending_then_completed() -> None:
    paid = applied(None, message(S.PAID, T0 + MINUTE))
    pending = applied(paid, message(S.PAID, T0 + 5 * MINUTE, refunds=[refund("r-1", 2_500)]))
    item = pending.items[0]
    assert (item.item_id, item.refunded_amount, item.refund_pending_amount) == ("i-1", 0, 2_500)
    assert pending.items[1].refund_pending_amount == 0
    done = applied(pending, message(S.PAID, T0 + 6 * MINUTE,
                                    refunds=[refund("r-1", 2_500, "completed")]))
    assert (done.items[0].refunded_amount, done.items[0].refund_pending_amount) == (2_500, 0)
    assert done.refunds[0].status is RefundStatus.COMPLETED
    # The older pending snapshot, arriving late, does not reopen the refund.
    late = decide(done, message(S.PAID, T0 + 5 * MINUTE, refunds=[refund("r-1", 2_500)]))
    assert isinstance(late, Ignore)


def test_rejected_refund_counts_nowhere() -> None:
    paid = applied(None, message(S.PAID, T0 + MINUTE, refunds=[refund("r-1", 2_500)]))
    rejected = applied(paid, message(S.PAID, T0 + 2 * MINUTE,
                                     refunds=[refund("r-1", 2_500, "rejected")]))
    assert (rejected.items[0].refunded_amount, rejected.items[0].refund_pending_amount) == (0, 0)


def test_refunds_on_several_items_sum_per_item() -> None:
    refunds = [refund("r-1", 1_000, "completed"), refund("r-2", 2_000, "completed"),
               refund("r-3", 500, "pending", item_id="i-2"),
               refund("r-4", 700, "completed", item_id="i-2"),
               refund("r-5", 9_999, "rejected")]
    state = applied(None, message(S.RECEIVED, T0 + 9 * MINUTE, refunds=refunds))
    amounts = [(i.refunded_amount, i.refund_pending_amount) for i in state.items]
    assert amounts == [(3_000, 0), (700, 500)]
    assert [r.refund_id for r in state.refunds] == ["r-1", "r-2", "r-3", "r-4", "r-5"]


def test_refund_completed_and_rejected_is_rejected() -> None:
    stored = applied(None, message(S.PAID, T0 + MINUTE,
                                   refunds=[refund("r-1", 100, "completed")]))
    decision = decide(stored, message(S.PAID, T0 + 2 * MINUTE,
                                      refunds=[refund("r-1", 100, "rejected")]))
    assert isinstance(decision, Reject)
    assert decision.field == "refunds"


@pytest.mark.parametrize("changed", [{"amount": 200}, {"item_id": "i-2"},
                                     {"requested_at": T0 + 9 * MINUTE}])
def test_a_refund_that_changes_is_rejected(changed: dict[str, Any]) -> None:
    stored = applied(None, message(S.PAID, T0 + MINUTE, refunds=[refund("r-1", 100)]))
    decision = decide(stored, message(S.PAID, T0 + 2 * MINUTE,
                                      refunds=[{**refund("r-1", 100), **changed}]))
    assert isinstance(decision, Reject)
    assert decision.field == "refunds"


def test_an_older_snapshot_can_add_a_refund_the_newer_dropped() -> None:
    stored = applied(None, message(S.RECEIVED, T0 + 9 * MINUTE))
    decision = decide(stored, message(S.PAID, T0 + 6 * MINUTE, refunds=[refund("r-1", 300)]))
    assert isinstance(decision, Apply)
    assert decision.state.status is S.RECEIVED
    assert decision.state.event_ts == T0 + 9 * MINUTE
    assert decision.state.items[0].refund_pending_amount == 300


def test_merged_refunds_beyond_the_paid_amount_are_rejected() -> None:
    stored = applied(None, message(S.PAID, T0 + MINUTE, refunds=[refund("r-1", 6_000)]))
    decision = decide(stored, message(S.PAID, T0 + 2 * MINUTE, refunds=[refund("r-2", 6_000)]))
    assert isinstance(decision, Reject)
    assert "exceed" in decision.reason


def test_fully_refunded_order() -> None:
    refunds = [refund("r-1", 10_000, "completed"), refund("r-2", 4_500, "completed", "i-2")]
    state = applied(applied(None, message(S.PAID, T0 + MINUTE)),
                    message(S.REFUNDED, T0 + 9 * MINUTE, refunds=refunds))
    assert state.status is S.REFUNDED
    assert [i.refunded_amount for i in state.items] == [10_000, 4_500]
    # A final snapshot from before the refund cannot take the order back.
    assert isinstance(decide(state, message(S.FINAL, T0 + 8 * MINUTE)), Ignore)


# ---------------------------------------------------------------- convergence


@st.composite
def histories(draw: st.DrawFn) -> list[OrderMessage]:
    """A valid life of one order: snapshots with strictly increasing event_ts."""
    n_items = draw(st.integers(1, 3))
    items = [{"item_id": f"i-{n}", "product_id": f"p-{n}", "category_id": "c-1",
              "quantity": 1, "paid_amount": draw(st.integers(1, 10_000))}
             for n in range(n_items)]
    clock = [T0]
    snapshots: list[OrderMessage] = []
    fields: dict[str, Any] = {"items": items}

    def snap(status: OrderStatus) -> None:
        clock[0] += draw(st.integers(1, 10 * MINUTE))
        obj = {"version": 1, "order_id": "o-1", "shop_id": "s-1", "buyer_key": "v",
               "buyer_account": None, "created_at": T0, "status": status.value,
               "event_ts": clock[0], **fields,
               "refunds": [dict(r) for r in fields.get("refunds", [])]}
        snapshots.append(OrderMessage.from_dict(obj))

    fields["items"] = [dict(i) for i in items]
    snap(S.CREATED)
    for _ in range(draw(st.integers(0, 2))):  # price changes before payment
        fields["items"] = [dict(i, paid_amount=draw(st.integers(0, 10_000))) for i in items]
        snap(S.CREATED)
    if draw(st.booleans()) and draw(st.booleans()):
        snap(S.CANCELLED)
        return snapshots
    fields["paid_at"] = clock[0] + 1
    status = S.PAID
    snap(status)
    refunds: list[dict[str, Any]] = []
    fields["refunds"] = refunds
    for _ in range(draw(st.integers(0, 6))):
        step = draw(st.sampled_from(["advance", "request", "decide"]))
        if step == "advance" and status in (S.PAID, S.RECEIVED):
            status = S.RECEIVED if status is S.PAID else S.FINAL
            fields["received_at" if status is S.RECEIVED else "final_at"] = clock[0] + 1
        elif step == "request":
            item = draw(st.sampled_from(fields["items"]))
            held = sum(r["amount"] for r in refunds
                       if r["item_id"] == item["item_id"] and r["status"] != "rejected")
            if held >= item["paid_amount"]:
                continue
            refunds.append(refund(f"r-{len(refunds)}", draw(st.integers(
                1, item["paid_amount"] - held)), "pending", item["item_id"], clock[0]))
        elif step == "decide":
            open_refunds = [r for r in refunds if r["status"] == "pending"]
            if not open_refunds:
                continue
            draw(st.sampled_from(open_refunds))["status"] = draw(
                st.sampled_from(["completed", "rejected"]))
        snap(status)
    if draw(st.booleans()):
        for item in fields["items"]:
            held = sum(r["amount"] for r in refunds if r["item_id"] == item["item_id"]
                       and r["status"] != "rejected")
            for r in refunds:
                if r["item_id"] == item["item_id"] and r["status"] == "pending":
                    r["status"] = "completed"
            if item["paid_amount"] > held:
                refunds.append(refund(f"r-{len(refunds)}", item["paid_amount"] - held,
                                      "completed", item["item_id"], clock[0]))
        snap(S.REFUNDED)
    return snapshots


@settings(max_examples=300, deadline=None)
@given(histories())
def test_a_valid_history_applies_in_order(history: list[OrderMessage]) -> None:
    final, decisions = fold(history)
    assert all(isinstance(d, Apply) for d in decisions), decisions
    assert final == state_of(history[-1])
    assert isinstance(decide(final, history[-1]), Ignore)


@settings(max_examples=300, deadline=None)
@given(histories(), st.randoms(use_true_random=False), st.integers(0, 10))
def test_any_permutation_with_duplicates_converges(history: list[OrderMessage],
                                                   rng: random.Random, extra: int) -> None:
    in_order, _ = fold(history)
    shuffled = history + [rng.choice(history) for _ in range(extra)]
    rng.shuffle(shuffled)
    final, decisions = fold(shuffled)
    assert not any(isinstance(d, Reject) for d in decisions), decisions
    assert final == in_order
    # Replaying everything once more changes nothing.
    assert all(isinstance(decide(final, m), Ignore) for m in history)


@settings(max_examples=200, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_status_never_goes_back(history: list[OrderMessage], rng: random.Random) -> None:
    shuffled = list(history)
    rng.shuffle(shuffled)
    state: OrderState | None = None
    for msg in shuffled:
        decision = decide(state, msg)
        if isinstance(decision, Apply):
            if state is not None:
                assert status_rank(decision.state.status) >= status_rank(state.status)
                assert decision.state.event_ts >= state.event_ts or \
                    status_rank(decision.state.status) > status_rank(state.status)
            state = decision.state
