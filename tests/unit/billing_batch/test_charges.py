"""What a charge result does to a charge (billing_batch.charges.decide): the pure rule.

The database side (request_charges, apply_results, retry_failed) is tested on SQLite
and PostgreSQL in tests/integration/test_billing_charges.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_batch.charges import (
    IGNORED,
    Charge,
    ChargeState,
    Decision,
    Effect,
    decide,
)
from contracts.charges import ChargeRequest, ChargeResult, ChargeStatus

T0 = 1_700_000_000_000
NOW = T0 + 5_000
PENDING = Charge(order_id="o1", charge_id="o1:1", shop_id="s1", amount_minor=2000,
                 status=ChargeState.PENDING, attempts=1, reason=None, requested_at_ms=T0,
                 updated_at_ms=T0)


def result(status: str, charge_id: str = "o1:1", reason: str = "") -> ChargeResult:
    return ChargeResult(charge_id, "o1", ChargeStatus(status), reason, T0 + 100)


def test_charged_ends_a_pending_charge() -> None:
    decision = decide(PENDING, result("charged"), NOW)
    assert decision == Decision(Effect.CHARGED, replace(
        PENDING, status=ChargeState.CHARGED, updated_at_ms=NOW))


def test_a_failure_with_attempts_left_requests_the_next_attempt() -> None:
    decision = decide(PENDING, result("failed", reason="insufficient funds"), NOW)
    assert decision.effect is Effect.RETRIED
    assert decision.charge == replace(PENDING, charge_id="o1:2", attempts=2,
                                      reason="insufficient funds", requested_at_ms=NOW,
                                      updated_at_ms=NOW)
    assert decision.request == ChargeRequest("o1:2", "o1", "s1", 2000, NOW, 2)


def test_a_failure_of_the_last_attempt_is_final() -> None:
    third = replace(PENDING, charge_id="o1:3", attempts=3)
    decision = decide(third, result("failed", "o1:3", "account frozen"), NOW)
    assert decision == Decision(Effect.FAILED, replace(
        third, status=ChargeState.FAILED, reason="account frozen", updated_at_ms=NOW))
    assert decide(PENDING, result("failed"), NOW, max_attempts=1).effect is Effect.FAILED


CHARGED = replace(PENDING, status=ChargeState.CHARGED)
FAILED = replace(PENDING, status=ChargeState.FAILED, reason="no")


@pytest.mark.parametrize(("charge", "outcome", "effect"), [
    (None, result("charged"), Effect.UNKNOWN),
    (PENDING, result("charged", "o1:0"), Effect.SUPERSEDED),
    (replace(PENDING, charge_id="o1:2", attempts=2), result("failed", "o1:1"),
     Effect.SUPERSEDED),
    (CHARGED, result("charged"), Effect.DUPLICATE),
    (FAILED, result("failed"), Effect.DUPLICATE),
    (CHARGED, result("failed"), Effect.CONFLICT),
    (FAILED, result("charged"), Effect.CONFLICT),
])
def test_ignored_results_leave_the_charge_as_it_is(
        charge: Charge | None, outcome: ChargeResult, effect: Effect) -> None:
    decision = decide(charge, outcome, NOW)
    assert decision == Decision(effect, charge)
    assert effect in IGNORED


results = st.lists(st.builds(result, st.sampled_from(["charged", "failed"]),
                             st.sampled_from([f"o1:{n}" for n in range(1, 6)])),
                   max_size=12)


@given(results, st.integers(1, 4))
def test_any_sequence_of_results_moves_a_charge_forward_only(
        sequence: list[ChargeResult], max_attempts: int) -> None:
    charge = PENDING
    for outcome in sequence:
        decision = decide(charge, outcome, NOW, max_attempts)
        assert decision.charge is not None
        after = decision.charge
        if charge.status is not ChargeState.PENDING:
            assert after == charge, "charged and failed are final"
        assert charge.attempts <= after.attempts <= max(max_attempts, 1)
        assert (decision.request is not None) == (decision.effect is Effect.RETRIED)
        again = decide(after, outcome, NOW, max_attempts)
        assert again.effect in IGNORED, "the same result twice in a row changes nothing"
        assert again.charge == after
        charge = after


@given(st.lists(st.sampled_from(["charged", "failed"]), min_size=1, max_size=6),
       st.integers(1, 4))
def test_a_replayed_answer_stream_changes_nothing(answers: list[str],
                                                  max_attempts: int) -> None:
    """The funds system answers each current request; replaying its answers is a no-op."""
    charge, stream = PENDING, []
    for answer in answers:
        outcome = result(answer, charge.charge_id)
        stream.append(outcome)
        charge = decide(charge, outcome, NOW, max_attempts).charge or charge
    for outcome in stream:
        replayed = decide(charge, outcome, NOW, max_attempts)
        assert replayed.effect in IGNORED
        assert replayed.charge == charge
    assert charge.status is not ChargeState.PENDING or charge.attempts == len(stream) + 1
