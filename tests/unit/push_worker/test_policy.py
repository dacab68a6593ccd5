"""The delivery state machine: every kind of answer, at every point of the schedule."""

from __future__ import annotations

import pytest

from push_worker.policy import (
    DEFAULT_SCHEDULE_S,
    Attempt,
    DeliveryState,
    EndpointState,
    Rules,
    Verdict,
    decide,
    describe,
    parse_schedule,
)

NOW = 1_800_000_000_000
RULES = Rules()
FAILURES = [Attempt(500), Attempt(503), Attempt(404), Attempt(301), Attempt(429),
            Attempt(None, "timeout (ReadTimeout)"), Attempt(None, "ConnectError: refused")]


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
@pytest.mark.parametrize("attempts", range(len(DEFAULT_SCHEDULE_S) + 1))
def test_any_2xx_delivers_and_ends_the_failing_streak(code: int, attempts: int) -> None:
    t = decide(Attempt(code), DeliveryState(attempts), EndpointState(NOW - 10_000), RULES,
               NOW, 0.5)
    assert t.verdict is Verdict.DELIVERED
    assert t.delivery_status == "delivered"
    assert t.attempts == attempts + 1
    assert t.failing_since_ms is None
    assert t.disable_reason is None


@pytest.mark.parametrize("attempt", FAILURES, ids=describe)
@pytest.mark.parametrize("attempts", range(len(DEFAULT_SCHEDULE_S)))
def test_failures_retry_on_the_schedule_with_jitter(attempt: Attempt, attempts: int) -> None:
    step_ms = DEFAULT_SCHEDULE_S[attempts] * 1000
    low = decide(attempt, DeliveryState(attempts), EndpointState(None), RULES, NOW, 0.0)
    high = decide(attempt, DeliveryState(attempts), EndpointState(None), RULES, NOW, 0.999)
    assert low.verdict is Verdict.RETRY
    assert low.delivery_status == "pending"
    assert low.next_attempt_at_ms == NOW + step_ms
    assert high.next_attempt_at_ms is not None
    assert NOW + step_ms < high.next_attempt_at_ms <= NOW + step_ms * 1.2
    assert low.failing_since_ms == NOW


@pytest.mark.parametrize("attempt", FAILURES, ids=describe)
def test_past_the_last_step_the_delivery_is_dead(attempt: Attempt) -> None:
    t = decide(attempt, DeliveryState(len(DEFAULT_SCHEDULE_S)), EndpointState(NOW - 1000),
               RULES, NOW, 0.3)
    assert t.verdict is Verdict.DEAD
    assert t.delivery_status == "dead"
    assert t.next_attempt_at_ms is None
    assert t.failing_since_ms == NOW - 1000


def test_the_whole_schedule_is_seven_retries_then_dead() -> None:
    verdicts = [decide(Attempt(500), DeliveryState(n), EndpointState(None), RULES, NOW,
                       0).verdict for n in range(9)]
    assert verdicts == [Verdict.RETRY] * 7 + [Verdict.DEAD] * 2


@pytest.mark.parametrize("attempts", [0, 3, 7])
def test_410_disables_the_endpoint_and_keeps_the_delivery_pending(attempts: int) -> None:
    t = decide(Attempt(410), DeliveryState(attempts), EndpointState(None), RULES, NOW, 0.5)
    assert t.verdict is Verdict.GONE
    assert t.delivery_status == "pending"
    assert t.next_attempt_at_ms == NOW
    assert t.disable_reason == "410 Gone"


def test_a_failing_streak_continues_from_its_start() -> None:
    t = decide(Attempt(500), DeliveryState(2), EndpointState(NOW - 3_600_000), RULES, NOW, 0)
    assert t.failing_since_ms == NOW - 3_600_000
    assert t.disable_reason is None


@pytest.mark.parametrize("attempt", FAILURES, ids=describe)
@pytest.mark.parametrize("attempts", [0, 7])
def test_five_days_of_failure_disable_the_endpoint(attempt: Attempt, attempts: int) -> None:
    since = NOW - 5 * 86_400_000
    t = decide(attempt, DeliveryState(attempts), EndpointState(since), RULES, NOW, 0)
    assert t.disable_reason is not None
    assert t.disable_reason.startswith("failing for 5 days")
    just_before = decide(attempt, DeliveryState(attempts), EndpointState(since + 1), RULES,
                         NOW, 0)
    assert just_before.disable_reason is None


def test_a_shortened_schedule_and_jitter_bounds() -> None:
    rules = Rules((0.05, 0.1), disable_after_ms=1000, jitter_ratio=0)
    first = decide(Attempt(500), DeliveryState(0), EndpointState(None), rules, NOW, 0.9)
    assert first.next_attempt_at_ms == NOW + 50
    weird = decide(Attempt(500), DeliveryState(1), EndpointState(None), Rules(jitter_ratio=1),
                   NOW, 7.0)
    assert weird.next_attempt_at_ms == NOW + 600_000


@pytest.mark.parametrize("bad", [(), (-1.0,)])
def test_rules_refuse_an_unusable_schedule(bad: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="schedule"):
        Rules(bad)


def test_rules_refuse_bad_limits() -> None:
    with pytest.raises(ValueError, match="disable_after_ms"):
        Rules(disable_after_ms=0)
    with pytest.raises(ValueError, match="jitter_ratio"):
        Rules(jitter_ratio=1.5)


def test_parse_schedule() -> None:
    assert parse_schedule("5, 300,1800") == (5.0, 300.0, 1800.0)
    with pytest.raises(ValueError, match="commas"):
        parse_schedule("5,soon")
    with pytest.raises(ValueError, match="at least one"):
        parse_schedule(" , ")


def test_describe() -> None:
    assert describe(Attempt(503)) == "HTTP 503"
    assert describe(Attempt(None, "x" * 500)) == "x" * 200
    assert describe(Attempt(None)) == "no answer"
