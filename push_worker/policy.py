"""What one delivery attempt's answer does to the delivery and to its endpoint (pure).

``decide(attempt, delivery, endpoint, rules, now_ms, jitter)`` is the whole state
machine; the worker only carries out the ``Transition`` it returns:

=====================  ==========================================  ======================
answer                 delivery                                    endpoint
=====================  ==========================================  ======================
2xx                    delivered (``delivered_at``)                failing streak ends
410 Gone               stays pending, due now (re-enabling         disabled, "410 Gone"
                       resumes with it)
other / timeout /      retry: ``next_attempt_at`` = now + the      streak starts (or goes
connection error       schedule's step for this attempt (5 s,      on); failing for
                       5 min, 30 min, 2 h, 5 h, 10 h, 10 h) with   ``disable_after_ms``
                       up to +``jitter_ratio`` (20 %) of jitter;   (5 days) disables it
                       past the last step: dead (``dead_at``),
                       and the endpoint goes on with the next one
=====================  ==========================================  ======================

A 3xx is a failure (redirects are not followed: the URL is what the owner registered).
``jitter`` is a number in [0, 1) the caller draws, so the function stays deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DEFAULT_SCHEDULE_S = (5, 300, 1800, 7200, 18000, 36000, 36000)
DEFAULT_DISABLE_AFTER_MS = 5 * 86_400_000
DEFAULT_JITTER_RATIO = 0.2
GONE = 410
MAX_ERROR_LEN = 200


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    GONE = "gone"  # the endpoint answered 410: disabled


@dataclass(frozen=True, slots=True)
class Attempt:
    """The answer to one POST: a status code, or the error that prevented one."""

    status_code: int | None
    error: str | None = None
    latency_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class DeliveryState:
    attempts: int  # before this one


@dataclass(frozen=True, slots=True)
class EndpointState:
    failing_since_ms: int | None


@dataclass(frozen=True, slots=True)
class Rules:
    schedule_s: tuple[float, ...] = DEFAULT_SCHEDULE_S
    disable_after_ms: int = DEFAULT_DISABLE_AFTER_MS
    jitter_ratio: float = DEFAULT_JITTER_RATIO

    def __post_init__(self) -> None:
        if not self.schedule_s or any(step < 0 for step in self.schedule_s):
            raise ValueError("the retry schedule needs at least one step, none negative")
        if self.disable_after_ms <= 0 or not 0 <= self.jitter_ratio <= 1:
            raise ValueError("disable_after_ms must be > 0 and jitter_ratio in [0, 1]")


@dataclass(frozen=True, slots=True)
class Transition:
    verdict: Verdict
    attempts: int
    next_attempt_at_ms: int | None  # pending: when it is due again
    failing_since_ms: int | None
    disable_reason: str | None  # the endpoint is disabled, and why

    @property
    def delivery_status(self) -> str:
        return {Verdict.DELIVERED: "delivered", Verdict.DEAD: "dead"}.get(self.verdict,
                                                                            "pending")


def describe(attempt: Attempt) -> str:
    if attempt.status_code is not None:
        return f"HTTP {attempt.status_code}"
    return (attempt.error or "no answer")[:MAX_ERROR_LEN]


def decide(attempt: Attempt, delivery: DeliveryState, endpoint: EndpointState, rules: Rules,
           now_ms: int, jitter: float) -> Transition:
    attempts = delivery.attempts + 1
    if attempt.ok:
        return Transition(Verdict.DELIVERED, attempts, None, None, None)
    if attempt.status_code == GONE:
        return Transition(Verdict.GONE, attempts, now_ms, endpoint.failing_since_ms,
                          "410 Gone")
    since = endpoint.failing_since_ms if endpoint.failing_since_ms is not None else now_ms
    disable = None
    if now_ms - since >= rules.disable_after_ms:
        days = rules.disable_after_ms / 86_400_000
        disable = f"failing for {days:g} days ({describe(attempt)})"
    if attempts > len(rules.schedule_s):
        return Transition(Verdict.DEAD, attempts, None, since, disable)
    step_ms = rules.schedule_s[attempts - 1] * 1000
    delay_ms = round(step_ms * (1 + rules.jitter_ratio * min(max(jitter, 0.0), 1.0)))
    return Transition(Verdict.RETRY, attempts, now_ms + delay_ms, since, disable)


def parse_schedule(text: str) -> tuple[float, ...]:
    """``"5,300,1800"`` (seconds) -> ``(5.0, 300.0, 1800.0)``; ``ValueError`` saying why not."""
    try:
        steps = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError("expected seconds separated by commas, e.g. 5,300,1800") from None
    if not steps or any(step < 0 for step in steps):
        raise ValueError("expected at least one step, none negative")
    return steps
