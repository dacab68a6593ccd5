"""Settlement schedules: the most specific rule wins; delay and monthly due dates to the ms."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_batch.schedule import (
    ANY,
    DAY_MS,
    ScheduleMode,
    ScheduleRule,
    SettlementSchedule,
    due_at_ms,
    first_of_month_ms,
    first_of_next_month_ms,
    is_due,
)

LIVE = "live-1"
OTHER = "live-2"


def ms(text: str) -> int:
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


RECEIVED = ms("2024-06-01T10:00:00")
T7 = ScheduleRule(LIVE, "promoter", ScheduleMode.DELAY, 7)
MONTHLY = ScheduleRule(OTHER, ANY, ScheduleMode.MONTHLY)


def test_the_default_is_t_plus_15_after_received() -> None:
    rule = SettlementSchedule([]).rule_for(LIVE, "promoter")
    assert (rule.mode, rule.delay_days) == (ScheduleMode.DELAY, 15)
    assert not is_due(rule, RECEIVED, None, RECEIVED + 15 * DAY_MS - 1)
    assert is_due(rule, RECEIVED, None, RECEIVED + 15 * DAY_MS)
    assert is_due(rule, RECEIVED, None, ms("2024-06-16T10:00:00"))
    assert not is_due(rule, RECEIVED, None, ms("2024-06-16T09:59:59.999"))
    assert SettlementSchedule([], default_delay_days=3).rule_for(None, "fans").delay_days == 3


def test_one_channels_promoter_at_t_plus_7_everyone_else_t_plus_15() -> None:
    schedule = SettlementSchedule([T7])
    promoter = schedule.rule_for(LIVE, "promoter")
    assert promoter is T7
    assert not is_due(promoter, RECEIVED, None, RECEIVED + 7 * DAY_MS - 1)
    assert is_due(promoter, RECEIVED, None, RECEIVED + 7 * DAY_MS)
    for channel, kind in ((LIVE, "channel"), (LIVE, "platform"), (LIVE, "fans"),
                          (LIVE, "group_leader"), (OTHER, "promoter"), (None, "promoter")):
        rule = schedule.rule_for(channel, kind)
        assert rule.delay_days == 15, (channel, kind)
        assert not is_due(rule, RECEIVED, None, RECEIVED + 15 * DAY_MS - 1)
        assert is_due(rule, RECEIVED, None, RECEIVED + 15 * DAY_MS)


@pytest.mark.parametrize(("channel", "kind", "expected"), [
    (LIVE, "promoter", 1),  # (channel, kind)
    (LIVE, "fans", 2),  # (channel, *)
    (OTHER, "promoter", 3),  # (*, kind)
    (OTHER, "fans", 4),  # (*, *)
    (None, "promoter", 3),  # no channel: only '*' rules
    (None, "fans", 4),
])
def test_most_specific_rule_wins(channel: str | None, kind: str, expected: int) -> None:
    schedule = SettlementSchedule([ScheduleRule(ANY, ANY, ScheduleMode.DELAY, 4),
                                   ScheduleRule(ANY, "promoter", ScheduleMode.DELAY, 3),
                                   ScheduleRule(LIVE, ANY, ScheduleMode.DELAY, 2),
                                   ScheduleRule(LIVE, "promoter", ScheduleMode.DELAY, 1)])
    assert schedule.rule_for(channel, kind).delay_days == expected


def test_without_catch_all_rules_the_default_applies() -> None:
    schedule = SettlementSchedule([ScheduleRule(LIVE, ANY, ScheduleMode.DELAY, 2)])
    assert schedule.rule_for(OTHER, "promoter") is schedule.default
    assert schedule.default == ScheduleRule(ANY, ANY, ScheduleMode.DELAY, 15)


def test_no_received_at_is_never_due_in_delay_mode() -> None:
    assert not is_due(T7, None, RECEIVED, RECEIVED + 1000 * DAY_MS)
    assert due_at_ms(T7, None, RECEIVED) is None


def test_zero_days_is_due_at_received() -> None:
    rule = ScheduleRule(ANY, ANY, ScheduleMode.DELAY, 0)
    assert not is_due(rule, RECEIVED, None, RECEIVED - 1)
    assert is_due(rule, RECEIVED, None, RECEIVED)


@pytest.mark.parametrize(("final_at", "as_of", "due"), [
    ("2024-05-31T23:59:59.999", "2024-06-01T00:00:00", True),  # the run on the 1st
    ("2024-05-31T23:59:59.999", "2024-05-31T23:59:59.999", False),
    ("2024-05-31T23:59:59.999", "2024-06-02T03:00:00", True),  # a missed 1st: caught up
    ("2024-06-01T00:00:00", "2024-06-01T00:00:00", False),  # final on the 1st: next month
    ("2024-06-01T00:00:00", "2024-06-30T23:59:59.999", False),
    ("2024-06-01T00:00:00", "2024-07-01T00:00:00", True),
    ("2024-05-10T12:00:00", "2024-05-31T23:59:59.999", False),  # same month: not yet
    ("2024-01-15T00:00:00", "2024-06-01T00:00:00", True),  # long ago: still due
    ("2024-12-31T23:59:59.999", "2025-01-01T00:00:00", True),  # over the year's end
    ("2024-12-31T23:59:59.999", "2024-12-31T23:59:59.999", False),
    ("2024-02-29T12:00:00", "2024-03-01T00:00:00", True),  # leap day
])
def test_monthly_settles_what_became_final_before_the_month(final_at: str, as_of: str,
                                                           due: bool) -> None:
    assert is_due(MONTHLY, RECEIVED, ms(final_at), ms(as_of)) is due
    due_at = due_at_ms(MONTHLY, RECEIVED, ms(final_at))
    assert due_at is not None
    assert (due_at <= ms(as_of)) is due


def test_monthly_ignores_received_and_needs_final() -> None:
    assert not is_due(MONTHLY, RECEIVED, None, ms("2030-01-01T00:00:00"))
    assert due_at_ms(MONTHLY, RECEIVED, None) is None


def test_monthly_per_channel_others_stay_on_delay() -> None:
    schedule = SettlementSchedule([T7, MONTHLY])
    assert schedule.rule_for(OTHER, "promoter").mode is ScheduleMode.MONTHLY
    assert schedule.rule_for(OTHER, "channel").mode is ScheduleMode.MONTHLY
    assert schedule.rule_for(LIVE, "channel").mode is ScheduleMode.DELAY


def test_month_starts() -> None:
    assert first_of_month_ms(ms("2024-06-17T08:30:00.123")) == ms("2024-06-01T00:00:00")
    assert first_of_month_ms(ms("2024-06-01T00:00:00")) == ms("2024-06-01T00:00:00")
    assert first_of_month_ms(ms("2024-06-01T00:00:00") - 1) == ms("2024-05-01T00:00:00")
    assert first_of_next_month_ms(ms("2024-12-01T00:00:00")) == ms("2025-01-01T00:00:00")
    assert first_of_next_month_ms(ms("2024-01-31T23:59:59.999")) == ms("2024-02-01T00:00:00")


@given(st.integers(min_value=0, max_value=10**13), st.integers(min_value=0, max_value=10**13),
       st.integers(min_value=0, max_value=3650))
def test_due_at_agrees_with_is_due(event_ms: int, as_of_ms: int, days: int) -> None:
    for rule in (ScheduleRule(ANY, ANY, ScheduleMode.DELAY, days),
                 ScheduleRule(ANY, ANY, ScheduleMode.MONTHLY)):
        due_at = due_at_ms(rule, event_ms, event_ms)
        assert due_at is not None
        assert is_due(rule, event_ms, event_ms, as_of_ms) is (due_at <= as_of_ms)


@given(st.integers(min_value=0, max_value=10**13))
def test_month_start_is_a_utc_midnight_on_the_first(at_ms: int) -> None:
    start = first_of_month_ms(at_ms)
    moment = datetime.fromtimestamp(start // 1000, UTC)
    assert start <= at_ms < first_of_next_month_ms(at_ms)
    assert (moment.day, moment.hour, moment.minute, moment.second, start % 1000) == (1, 0, 0, 0, 0)
    assert first_of_month_ms(start - 1) < start


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"channel_id": " x"}, "channel_id"),
    ({"channel_id": ""}, "channel_id"),
    ({"participant_kind": "merchant"}, "participant_kind"),
    ({"mode": "weekly"}, "mode"),
    ({"delay_days": -1}, "delay_days"),
    ({"delay_days": 3651}, "delay_days"),
    ({"delay_days": True}, "delay_days"),
])
def test_bad_rules_are_refused(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"channel_id": LIVE, "participant_kind": "promoter",
                                 "mode": "delay", "delay_days": 7, **kwargs}
    with pytest.raises(ValueError, match=message):
        ScheduleRule(**fields)  # type: ignore[arg-type]


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="two rules"):
        SettlementSchedule([T7, ScheduleRule(LIVE, "promoter", ScheduleMode.MONTHLY)])


def test_mode_text_becomes_the_enum_and_describes_itself() -> None:
    rule = ScheduleRule(LIVE, ANY, "monthly")  # type: ignore[arg-type]
    assert rule.mode is ScheduleMode.MONTHLY
    assert rule.describe() == "monthly (1st)"
    assert T7.describe() == "T+7 days"
    assert ScheduleRule(ANY, ANY, ScheduleMode.DELAY, 1).describe() == "T+1 day"


def test_due_reads_the_order() -> None:
    @dataclass(frozen=True)
    class Order:
        received_at: int | None
        final_at: int | None

    schedule = SettlementSchedule([T7, MONTHLY])
    order = Order(RECEIVED, ms("2024-06-20T00:00:00"))
    assert not schedule.due(LIVE, "promoter", order, RECEIVED + 7 * DAY_MS - 1)
    assert schedule.due(LIVE, "promoter", order, RECEIVED + 7 * DAY_MS)
    assert not schedule.due(LIVE, "channel", order, RECEIVED + 7 * DAY_MS)
    assert not schedule.due(OTHER, "promoter", order, ms("2024-06-30T23:59:59.999"))
    assert schedule.due(OTHER, "promoter", order, ms("2024-07-01T00:00:00"))
