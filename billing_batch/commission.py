"""A paid line's frozen commission terms and its allocations (SPEC 8, 9, 10).

At payment the batch freezes everything the line's commission depends on
(``freeze_terms``): the rate rule, its level and rate, the group-leader
activity with its leader and leader rate, the fee settings of the line's
channel, the promoter and the channel.  From then on the commission is a
function of the frozen terms and the line's *effective* paid amount (paid
minus refunded, ``effective_paid``) only (``allocate_line``): a rate or fee
changed after payment never touches the line, and a refund recomputes every
allocation from the reduced amount with the same terms (SPEC 10).

Pools (``allocate_line``), all rounded half to even per amount:

* **CPS, product pool** = ``apply_bp(paid, rate_bp)``; served in this order:
  platform ``platform_share_bp`` of the pool (priority 1), the channel
  ``channel_fee_bp`` of the *paid* amount (priority 2), the channel's fans
  account ``fans_share_bp`` of the pool (priority 3), the promoter takes the
  rest (residual).  SPEC 9: paid 10000 at 2000 bp -> pool 2000: platform 200
  (1000 bp), channel 500 (500 bp of 10000), fans 0, promoter 1300.
* **CPS, group-leader pool**, only when the rate came from a group-leader
  activity = ``apply_bp(paid, leader_rate_bp)``: platform ``platform_share_bp``
  of it, the group leader the rest.  Same platform share as the product pool.
* **Self-operated**: one pool ``apply_bp(paid, rate_bp)`` at the channel rate,
  all of it to the channel; no fees.

``allocate_line`` lists every participant of each pool in that order, zero
amounts included (the batch skips zero transfers): the same terms and amount
always give the same tuple, and a refund's ``line_delta`` lines up entry by
entry.

Refunds: the pool is monotone in the paid amount (never grows when the
effective amount shrinks; a full refund leaves every amount 0), but one
participant's amount may rise by a unit when a refund moves another claim's
rounding (e.g. the channel's fee on the paid amount drops by 1 while the
pool does not): ``line_delta`` (new - old per pool and participant) is then
positive for it and the batch pays it; the deltas of a pool always sum to
the pool's change.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal, Protocol

from billing_batch.money import (
    BP_PER_UNIT,
    apply_bp,
    check_bp,
    check_id,
    check_int,
    coerce_enum,
)
from billing_batch.pools import (
    PLATFORM,
    Basis,
    Claim,
    Participant,
    ParticipantKind,
    PoolKind,
    serving_order,
    split,
)
from billing_batch.rates import (
    ChannelRateBook,
    FeeBook,
    LineKey,
    RateBook,
    RateLevel,
)
from contracts.attribution import AttributionType

CHANNEL_LEVEL: Final = "channel"  # FrozenTerms.level of a self-operated line: the channel rate


class Mode(StrEnum):
    CPS = "cps"
    SELF_OPERATED = "self_operated"


class Decision(Protocol):
    """What ``freeze_terms`` reads of an attribution decision (``AttributionDecision`` fits).

    ``attribution_type`` is an ``AttributionType`` or its text ("cps", ...).
    """

    @property
    def attribution_type(self) -> str: ...
    @property
    def promoter_id(self) -> str | None: ...
    @property
    def channel_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FrozenTerms:
    """Everything a line's commission depends on, frozen at payment (keyword-only)."""

    mode: Mode
    rule_id: str  # the RateRule (cps) or ChannelRate (self_operated)
    level: RateLevel | Literal["channel"]
    rate_bp: int
    leader_id: str | None = None  # group-leader level only, with the two below
    leader_rate_bp: int | None = None
    activity_id: str | None = None
    platform_share_bp: int = 0  # cps only, like every fee field
    channel_fee_bp: int = 0
    fans_share_bp: int = 0
    promoter_id: str | None = None  # cps: required; self_operated: None
    channel_id: str
    platform_share_rule_id: str | None = None  # None: no setting, the bp is 0
    channel_fee_rule_id: str | None = None
    fans_share_rule_id: str | None = None

    def __post_init__(self) -> None:
        owner = "frozen_terms"
        mode = coerce_enum(owner, "mode", Mode, self.mode)
        object.__setattr__(self, "mode", mode)
        check_id(owner, "rule_id", self.rule_id)
        check_bp(owner, "rate_bp", self.rate_bp)
        check_id(owner, "channel_id", self.channel_id)
        if mode is Mode.SELF_OPERATED:
            self._check_self_operated(owner)
        else:
            self._check_cps(owner)

    def _check_self_operated(self, owner: str) -> None:
        if self.level != CHANNEL_LEVEL:
            raise ValueError(f"{owner}.level: a self-operated line is at level "
                             f"{CHANNEL_LEVEL!r}, got {self.level!r}")
        for name in ("promoter_id", "leader_id", "leader_rate_bp", "activity_id",
                     "platform_share_rule_id", "channel_fee_rule_id", "fans_share_rule_id"):
            if getattr(self, name) is not None:
                raise ValueError(f"{owner}.{name}: must be None on a self-operated line")
        for name in ("platform_share_bp", "channel_fee_bp", "fans_share_bp"):
            if getattr(self, name) != 0:
                raise ValueError(f"{owner}.{name}: must be 0 on a self-operated line (no fees)")

    def _check_cps(self, owner: str) -> None:
        level = coerce_enum(owner, "level", RateLevel, self.level)
        object.__setattr__(self, "level", level)
        check_id(owner, "promoter_id", self.promoter_id)
        leader = (self.leader_id, self.leader_rate_bp, self.activity_id)
        if level is RateLevel.GROUP_LEADER:
            check_id(owner, "leader_id", self.leader_id)
            check_bp(owner, "leader_rate_bp", self.leader_rate_bp)
            check_id(owner, "activity_id", self.activity_id)
            assert self.leader_rate_bp is not None
            if self.rate_bp + self.leader_rate_bp > BP_PER_UNIT:
                raise ValueError(f"{owner}.leader_rate_bp: rate_bp + leader_rate_bp exceeds "
                                 f"{BP_PER_UNIT} bp")
        elif leader != (None, None, None):
            raise ValueError(f"{owner}.leader_id: leader_id, leader_rate_bp and activity_id "
                             f"are set only at level {RateLevel.GROUP_LEADER}")
        for kind in ("platform_share", "channel_fee", "fans_share"):
            bp = check_bp(owner, f"{kind}_bp", getattr(self, f"{kind}_bp"))
            rule_id = getattr(self, f"{kind}_rule_id")
            check_id(owner, f"{kind}_rule_id", rule_id, optional=True)
            if rule_id is None and bp != 0:
                raise ValueError(f"{owner}.{kind}_rule_id: {kind}_bp {bp} names no fee setting")


def freeze_terms(decision: Decision, key: LineKey, *, rates: RateBook,
                 channel_rates: ChannelRateBook, fees: FeeBook) -> FrozenTerms | None:
    """The terms of a paid line of an attributed order, or None when no rate matches it.

    CPS (promoter and channel): ``rates.lookup(key)`` and the channel's fees at
    ``key.paid_at_ms``; ``key.promoter_id`` must be the decision's promoter.
    Self-operated (channel): ``channel_rates.lookup(channel, key.category_id,
    key.paid_at_ms)``.  A ``none`` decision has nothing to freeze: ValueError.
    """
    kind = coerce_enum("freeze_terms.decision", "attribution_type", AttributionType,
                       decision.attribution_type)
    channel_id = decision.channel_id
    if kind is AttributionType.NONE:
        raise ValueError("freeze_terms.decision: attribution_type none: an order not "
                         "attributed earns no commission, there are no terms to freeze")
    check_id("freeze_terms.decision", "channel_id", channel_id)
    assert channel_id is not None
    if kind is AttributionType.SELF_OPERATED:
        rate = channel_rates.lookup(channel_id, key.category_id, key.paid_at_ms)
        if rate is None:
            return None
        return FrozenTerms(mode=Mode.SELF_OPERATED, rule_id=rate.rule_id, level=CHANNEL_LEVEL,
                           rate_bp=rate.rate_bp, channel_id=channel_id)
    check_id("freeze_terms.decision", "promoter_id", decision.promoter_id)
    if key.promoter_id != decision.promoter_id:
        raise ValueError(f"freeze_terms.key: promoter_id {key.promoter_id!r} is not the "
                         f"decision's promoter {decision.promoter_id!r}")
    choice = rates.lookup(key)
    if choice is None:
        return None
    fee = fees.lookup(channel_id, key.paid_at_ms)
    return FrozenTerms(
        mode=Mode.CPS, rule_id=choice.rule_id, level=choice.level, rate_bp=choice.rate_bp,
        leader_id=choice.leader_id, leader_rate_bp=choice.leader_rate_bp,
        activity_id=choice.activity_id, platform_share_bp=fee.platform_share_bp,
        channel_fee_bp=fee.channel_fee_bp, fans_share_bp=fee.fans_share_bp,
        promoter_id=decision.promoter_id, channel_id=channel_id,
        platform_share_rule_id=fee.platform_share_rule_id,
        channel_fee_rule_id=fee.channel_fee_rule_id, fans_share_rule_id=fee.fans_share_rule_id)


@dataclass(frozen=True, slots=True)
class Allocation:
    """``amount_minor`` of ``pool`` for ``participant`` (a delta may be negative)."""

    pool: PoolKind
    participant: Participant
    amount_minor: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool", coerce_enum("allocation", "pool", PoolKind, self.pool))
        if not isinstance(self.participant, Participant):
            raise ValueError(f"allocation.participant: must be a Participant, "
                             f"got {self.participant!r}")
        if type(self.amount_minor) is not int:
            raise ValueError(f"allocation.amount_minor: must be an int, got "
                             f"{self.amount_minor!r}")


def effective_paid(paid_minor: int, refunded_minor: int) -> int:
    """The paid amount left after refunds: ``paid - refunded``, refunds within ``0..paid``."""
    check_int("effective_paid", "paid_minor", paid_minor)
    check_int("effective_paid", "refunded_minor", refunded_minor)
    if refunded_minor > paid_minor:
        raise ValueError(f"effective_paid.refunded_minor: {refunded_minor} exceeds the paid "
                         f"amount {paid_minor}")
    return paid_minor - refunded_minor


@dataclass(frozen=True, slots=True)
class _PoolPlan:
    kind: PoolKind
    rate_bp: int  # the pool is apply_bp(paid, rate_bp)
    claims: tuple[Claim, ...]  # in serving order
    residual: Participant


@functools.lru_cache(maxsize=4096)
def _plans(terms: FrozenTerms) -> tuple[_PoolPlan, ...]:
    """The pools of a line under ``terms``: built once per distinct terms, not per line."""
    channel = Participant(ParticipantKind.CHANNEL, terms.channel_id)
    if terms.mode is Mode.SELF_OPERATED:
        return (_PoolPlan(PoolKind.SELF_OPERATED, terms.rate_bp, (), channel),)
    assert terms.promoter_id is not None
    platform = Claim(PLATFORM, Basis.POOL_SHARE, terms.platform_share_bp, 1)
    product = (platform, Claim(channel, Basis.PAID_FEE, terms.channel_fee_bp, 2),
               Claim(Participant(ParticipantKind.FANS, terms.channel_id), Basis.POOL_SHARE,
                     terms.fans_share_bp, 3))
    promoter = Participant(ParticipantKind.PROMOTER, terms.promoter_id)
    plans = [_PoolPlan(PoolKind.PRODUCT, terms.rate_bp, serving_order(product, promoter),
                       promoter)]
    if terms.leader_id is not None and terms.leader_rate_bp is not None:
        leader = Participant(ParticipantKind.GROUP_LEADER, terms.leader_id)
        plans.append(_PoolPlan(PoolKind.GROUP_LEADER, terms.leader_rate_bp,
                               serving_order((platform,), leader), leader))
    return tuple(plans)


def allocate_line(terms: FrozenTerms, effective_paid_minor: int) -> tuple[Allocation, ...]:
    """Every pool's allocations of a line paid ``effective_paid_minor`` under ``terms``."""
    if not isinstance(terms, FrozenTerms):
        raise ValueError(f"allocate_line.terms: must be FrozenTerms, got {terms!r}")
    check_int("allocate_line", "effective_paid_minor", effective_paid_minor)
    paid = effective_paid_minor
    return tuple(Allocation(plan.kind, participant, amount) for plan in _plans(terms)
                 for participant, amount in split(apply_bp(paid, plan.rate_bp), paid,
                                                  plan.claims, plan.residual))


def line_delta(old: Sequence[Allocation], new: Sequence[Allocation]) -> tuple[Allocation, ...]:
    """``new - old`` per (pool, participant): new's entries in order, then those only in old."""
    def index(allocations: Sequence[Allocation], name: str) -> dict[tuple[PoolKind, Participant],
                                                                      int]:
        amounts: dict[tuple[PoolKind, Participant], int] = {}
        for allocation in allocations:
            key = (allocation.pool, allocation.participant)
            if key in amounts:
                raise ValueError(f"line_delta.{name}: {allocation.participant} appears twice "
                                 f"in the {allocation.pool} pool")
            amounts[key] = allocation.amount_minor
        return amounts

    before, after = index(old, "old"), index(new, "new")
    out = [Allocation(pool, participant, amount - before.get((pool, participant), 0))
           for (pool, participant), amount in after.items()]
    out += [Allocation(pool, participant, -amount)
            for (pool, participant), amount in before.items() if (pool, participant) not in after]
    return tuple(out)
