"""When frozen commission becomes due for settlement (SPEC 11): per channel and participant.

Pure: rules in, answers out; ``billing_batch.master_data.load_schedule`` reads the rules
from ``settlement_schedules`` once per run.

**Modes.**

* ``delay``: an allocation is due ``delay_days`` whole days (``DAY_MS`` = 86,400,000 ms)
  after the order reached ``received``: due when ``received_at_ms + delay_days * DAY_MS
  <= as_of_ms``.  T+15 received at 2024-06-01T10:00:00.000Z is due from
  2024-06-16T10:00:00.000Z on, not one millisecond earlier.  No ``received_at``: never due.
* ``monthly``: the run on the 1st settles every order that became ``final`` before that
  day: due when ``final_at_ms < first_of_month(as_of_ms)`` (00:00:00.000 UTC of the first
  day of ``as_of``'s month).  An order final at 2024-05-31T23:59:59.999Z is due from
  2024-06-01T00:00:00.000Z; one final exactly at 2024-06-01T00:00:00.000Z waits for
  2024-07-01.  A run missed on the 1st catches up on the 2nd (or any later day of the
  month): the test is "before this month", not "run on the 1st".  No ``final_at``: never.

Equivalently ``due_at_ms(rule, received_at_ms, final_at_ms)`` is the first instant the
allocation is due (``None``: not yet known) and ``is_due`` is ``due_at <= as_of``; the
batch may use ``due_at_ms`` to pre-filter in SQL.  ``SettlementSchedule.due(channel,
kind, order, as_of_ms)`` is ``is_due`` under ``rule_for`` (the batch's ``Schedule``).
A pending refund holding the order and the charge having to be ``charged`` are the
batch's business, not this module's.

**Which rule** (``SettlementSchedule.rule_for``): the most specific one wins, ``ANY``
("*") matching every channel or participant kind:

    (channel, kind) > (channel, "*") > ("*", kind) > ("*", "*") > default (delay, 15 days)

so "the promoter on channel live-1 at T+7, everyone else T+15" is one rule
``("live-1", "promoter", delay, 7)``; "channel live-2 monthly" is ``("live-2", "*",
monthly)``.  An order without a channel only matches ``("*", ...)`` rules.  Two rules for
the same (channel, kind) are refused (the table's primary key says the same).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Protocol

from billing_batch.money import check_id, check_int
from billing_batch.pools import ParticipantKind

ANY = "*"  # every channel, or every participant kind
DAY_MS = 86_400_000
DEFAULT_DELAY_DAYS = 15  # SPEC 11: T+15 after received
MAX_DELAY_DAYS = 3650  # ten years: anything longer is a typo
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


class Reached(Protocol):
    """What the schedule reads of an order (``billing_batch.plan.OrderFacts`` has both)."""

    @property
    def received_at(self) -> int | None: ...

    @property
    def final_at(self) -> int | None: ...


class ScheduleMode(StrEnum):
    DELAY = "delay"  # T + delay_days after received
    MONTHLY = "monthly"  # on the 1st: every order final before that month


@dataclass(frozen=True, slots=True)
class ScheduleRule:
    """When one channel's (or every channel's) participants of one (or every) kind are paid."""

    channel_id: str  # a channel id, or ANY
    participant_kind: str  # a ParticipantKind value, or ANY
    mode: ScheduleMode = ScheduleMode.DELAY
    delay_days: int = DEFAULT_DELAY_DAYS  # delay mode only; kept (and ignored) when monthly

    def __post_init__(self) -> None:
        owner = "schedule_rule"
        if self.channel_id != ANY:
            check_id(owner, "channel_id", self.channel_id)
        if self.participant_kind != ANY and self.participant_kind not in set(ParticipantKind):
            raise ValueError(f"{owner}.participant_kind: must be {ANY!r} or one of "
                             f"{', '.join(ParticipantKind)}, got {self.participant_kind!r}")
        try:
            object.__setattr__(self, "mode", ScheduleMode(self.mode))
        except ValueError:
            raise ValueError(f"{owner}.mode: must be one of {', '.join(ScheduleMode)}, "
                             f"got {self.mode!r}") from None
        check_int(owner, "delay_days", self.delay_days)
        if self.delay_days > MAX_DELAY_DAYS:
            raise ValueError(f"{owner}.delay_days: at most {MAX_DELAY_DAYS}, "
                             f"got {self.delay_days}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.channel_id, self.participant_kind)

    def describe(self) -> str:
        """``T+7 days`` or ``monthly (1st)``."""
        if self.mode is ScheduleMode.MONTHLY:
            return "monthly (1st)"
        return f"T+{self.delay_days} day{'' if self.delay_days == 1 else 's'}"


class SettlementSchedule:
    """The schedule rules indexed by (channel, kind); ``rule_for`` is at most four dict gets."""

    def __init__(self, rules: Iterable[ScheduleRule],
                 default_delay_days: int = DEFAULT_DELAY_DAYS) -> None:
        self._rules: dict[tuple[str, str], ScheduleRule] = {}
        for rule in rules:
            if not isinstance(rule, ScheduleRule):
                raise ValueError(f"settlement_schedule: expected ScheduleRule, got "
                                 f"{type(rule).__name__}")
            if rule.key in self._rules:
                raise ValueError(f"settlement_schedule: two rules for channel "
                                 f"{rule.channel_id!r} and participant {rule.participant_kind!r}")
            self._rules[rule.key] = rule
        self.default = ScheduleRule(ANY, ANY, ScheduleMode.DELAY, default_delay_days)

    @property
    def rules(self) -> Mapping[tuple[str, str], ScheduleRule]:
        return self._rules

    def rule_for(self, channel_id: str | None, participant_kind: str) -> ScheduleRule:
        """The most specific rule for a participant of ``participant_kind`` on ``channel_id``."""
        rules = self._rules
        if channel_id is not None:
            found = rules.get((channel_id, participant_kind)) or rules.get((channel_id, ANY))
            if found is not None:
                return found
        return rules.get((ANY, participant_kind)) or rules.get((ANY, ANY)) or self.default

    def due(self, channel_id: str | None, kind: str, order: Reached, as_of_ms: int) -> bool:
        """Whether ``kind``'s share of ``order`` through ``channel_id`` settles at ``as_of``."""
        return is_due(self.rule_for(channel_id, kind), order.received_at, order.final_at,
                      as_of_ms)


def first_of_month_ms(at_ms: int) -> int:
    """00:00:00.000 UTC of the first day of ``at_ms``'s month, in ms (integers only)."""
    day = date.fromordinal(_EPOCH_ORDINAL + at_ms // DAY_MS)
    return (day.replace(day=1).toordinal() - _EPOCH_ORDINAL) * DAY_MS


def first_of_next_month_ms(at_ms: int) -> int:
    """00:00:00.000 UTC of the first day of the month after ``at_ms``'s month."""
    day = date.fromordinal(_EPOCH_ORDINAL + at_ms // DAY_MS)
    following = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return (following.toordinal() - _EPOCH_ORDINAL) * DAY_MS


def due_at_ms(rule: ScheduleRule, received_at_ms: int | None,
              final_at_ms: int | None) -> int | None:
    """The first instant an allocation under ``rule`` is due; None until the order gets there.

    Delay: ``received_at + delay_days * DAY_MS``.  Monthly: the 1st of the month after the
    month ``final_at`` falls in (``final_at < first_of_month(as_of)`` exactly then).
    """
    if rule.mode is ScheduleMode.MONTHLY:
        return None if final_at_ms is None else first_of_next_month_ms(final_at_ms)
    return None if received_at_ms is None else received_at_ms + rule.delay_days * DAY_MS


def is_due(rule: ScheduleRule, received_at_ms: int | None, final_at_ms: int | None,
           as_of_ms: int) -> bool:
    """Whether an allocation under ``rule`` settles in a run as of ``as_of_ms`` (see above)."""
    if rule.mode is ScheduleMode.MONTHLY:
        return final_at_ms is not None and final_at_ms < first_of_month_ms(as_of_ms)
    return received_at_ms is not None and received_at_ms + rule.delay_days * DAY_MS <= as_of_ms
