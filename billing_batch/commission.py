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

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Literal, Protocol

from billing_batch.ledger import participant_account
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
    # Not a term: allocate_line's pools under these terms, set on first use (_plans), so
    # a line's allocation neither rebuilds nor looks them up.  replace() starts it afresh.
    _pool_plans: tuple[_PoolPlan, ...] | None = field(default=None, init=False, repr=False,
                                                      compare=False)

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
    key.paid_at_ms)``.  A ``none`` decision has nothing to freeze: ValueError.  Equal
    terms are one shared (immutable) object: built and checked once, not per line.
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
        self_key: _TermsKey = (rate.rule_id, rate.rate_bp, channel_id)
        terms = _SHARED_TERMS.get(self_key)
        if terms is None:
            terms = _share(self_key, FrozenTerms(
                mode=Mode.SELF_OPERATED, rule_id=rate.rule_id, level=CHANNEL_LEVEL,
                rate_bp=rate.rate_bp, channel_id=channel_id))
        return terms
    check_id("freeze_terms.decision", "promoter_id", decision.promoter_id)
    if key.promoter_id != decision.promoter_id:
        raise ValueError(f"freeze_terms.key: promoter_id {key.promoter_id!r} is not the "
                         f"decision's promoter {decision.promoter_id!r}")
    choice = rates.lookup(key)
    if choice is None:
        return None
    fee = fees.lookup(channel_id, key.paid_at_ms)
    cps_key: _TermsKey = (
        choice.rule_id, choice.level, choice.rate_bp, choice.leader_id, choice.leader_rate_bp,
        choice.activity_id, fee.platform_share_bp, fee.channel_fee_bp, fee.fans_share_bp,
        decision.promoter_id, channel_id, fee.platform_share_rule_id, fee.channel_fee_rule_id,
        fee.fans_share_rule_id)
    terms = _SHARED_TERMS.get(cps_key)
    if terms is None:
        terms = _share(cps_key, FrozenTerms(
            mode=Mode.CPS, rule_id=choice.rule_id, level=choice.level, rate_bp=choice.rate_bp,
            leader_id=choice.leader_id, leader_rate_bp=choice.leader_rate_bp,
            activity_id=choice.activity_id, platform_share_bp=fee.platform_share_bp,
            channel_fee_bp=fee.channel_fee_bp, fans_share_bp=fee.fans_share_bp,
            promoter_id=decision.promoter_id, channel_id=channel_id,
            platform_share_rule_id=fee.platform_share_rule_id,
            channel_fee_rule_id=fee.channel_fee_rule_id,
            fans_share_rule_id=fee.fans_share_rule_id))
    return terms


# Lines share few distinct terms (rule, fees, promoter, channel): freeze_terms builds and
# checks each once and hands out the same immutable object (whose pool plans are then
# built once, too).  Keyed by every value the terms are made of (a self-operated key has
# 3 of them, a cps key 14), so equal keys are equal terms.
_TermsKey = tuple[object, ...]
_SHARED_TERMS: dict[_TermsKey, FrozenTerms] = {}
_SHARED_TERMS_MAX = 100_000


def _share(key: _TermsKey, terms: FrozenTerms) -> FrozenTerms:
    if len(_SHARED_TERMS) >= _SHARED_TERMS_MAX:
        _SHARED_TERMS.clear()
    _SHARED_TERMS[key] = terms
    return terms


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


_new = object.__new__
_set = object.__setattr__


def _allocation(pool: PoolKind, participant: Participant, amount_minor: int) -> Allocation:
    """An ``Allocation`` of values already checked (a plan's pool and participants)."""
    allocation: Allocation = _new(Allocation)
    _set(allocation, "pool", pool)
    _set(allocation, "participant", participant)
    _set(allocation, "amount_minor", amount_minor)
    return allocation


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
    # The same, for account_shares: per claim (its participant's account, a bp of the
    # pool rather than of the paid amount, bp), and the residual's account.
    account_claims: tuple[tuple[str, bool, int], ...]
    residual_account: str


def _pool_plan(kind: PoolKind, rate_bp: int, claims: tuple[Claim, ...],
               residual: Participant) -> _PoolPlan:
    return _PoolPlan(kind, rate_bp, claims, residual,
                     tuple((participant_account(c.participant), c.basis is Basis.POOL_SHARE, c.bp)
                           for c in claims), participant_account(residual))


# Plans by what they depend on, shared by equal terms (the batch freezes new terms per line).
_PlanKey = tuple[Mode, int, str, str | None, int, int, int, str | None, int | None]
_SHARED_PLANS: dict[_PlanKey, tuple[_PoolPlan, ...]] = {}
_SHARED_PLANS_MAX = 4096


def _plans(terms: FrozenTerms) -> tuple[_PoolPlan, ...]:
    """The pools of a line under ``terms``: kept on the terms after their first line, built
    once per distinct terms."""
    plans = terms._pool_plans
    if plans is None:
        key: _PlanKey = (terms.mode, terms.rate_bp, terms.channel_id, terms.promoter_id,
                         terms.platform_share_bp, terms.channel_fee_bp, terms.fans_share_bp,
                         terms.leader_id, terms.leader_rate_bp)
        plans = _SHARED_PLANS.get(key)
        if plans is None:
            if len(_SHARED_PLANS) >= _SHARED_PLANS_MAX:
                _SHARED_PLANS.clear()
            plans = _SHARED_PLANS[key] = _build_plans(terms)
        _set(terms, "_pool_plans", plans)
    return plans


def _build_plans(terms: FrozenTerms) -> tuple[_PoolPlan, ...]:
    channel = Participant(ParticipantKind.CHANNEL, terms.channel_id)
    if terms.mode is Mode.SELF_OPERATED:
        return (_pool_plan(PoolKind.SELF_OPERATED, terms.rate_bp, (), channel),)
    assert terms.promoter_id is not None
    platform = Claim(PLATFORM, Basis.POOL_SHARE, terms.platform_share_bp, 1)
    product = (platform, Claim(channel, Basis.PAID_FEE, terms.channel_fee_bp, 2),
               Claim(Participant(ParticipantKind.FANS, terms.channel_id), Basis.POOL_SHARE,
                     terms.fans_share_bp, 3))
    promoter = Participant(ParticipantKind.PROMOTER, terms.promoter_id)
    plans = [_pool_plan(PoolKind.PRODUCT, terms.rate_bp, serving_order(product, promoter),
                        promoter)]
    if terms.leader_id is not None and terms.leader_rate_bp is not None:
        leader = Participant(ParticipantKind.GROUP_LEADER, terms.leader_id)
        plans.append(_pool_plan(PoolKind.GROUP_LEADER, terms.leader_rate_bp,
                                serving_order((platform,), leader), leader))
    return tuple(plans)


def allocate_line(terms: FrozenTerms, effective_paid_minor: int) -> tuple[Allocation, ...]:
    """Every pool's allocations of a line paid ``effective_paid_minor`` under ``terms``."""
    if not isinstance(terms, FrozenTerms):
        raise ValueError(f"allocate_line.terms: must be FrozenTerms, got {terms!r}")
    check_int("allocate_line", "effective_paid_minor", effective_paid_minor)
    paid = effective_paid_minor
    return tuple(_allocation(plan.kind, participant, amount) for plan in _plans(terms)
                 for participant, amount in split(apply_bp(paid, plan.rate_bp), paid,
                                                  plan.claims, plan.residual))


def account_shares(terms: FrozenTerms, effective_paid_minor: int) -> dict[str, int]:
    """``allocate_line``'s amounts summed per participant account (``ledger.
    participant_account``; the platform's of two pools is one share), in the order the
    accounts first appear there, zero amounts included: what a line's ledger pends,
    without building an ``Allocation`` per share."""
    if not isinstance(terms, FrozenTerms):
        raise ValueError(f"account_shares.terms: must be FrozenTerms, got {terms!r}")
    check_int("account_shares", "effective_paid_minor", effective_paid_minor)
    paid = effective_paid_minor
    shares: dict[str, int] = {}
    for plan in _plans(terms):
        # pools.split over the plan's accounts: each claim takes min(its amount, the rest).
        pool = left = apply_bp(paid, plan.rate_bp)
        for account, of_pool, bp in plan.account_claims:
            take = min(apply_bp(pool if of_pool else paid, bp), left)
            shares[account] = shares.get(account, 0) + take
            left -= take
        account = plan.residual_account
        shares[account] = shares.get(account, 0) + left
    return shares


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
