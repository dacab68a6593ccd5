"""Frozen terms and line allocations (billing_batch.commission): SPEC 9 and 10 end to end."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_batch.commission import (
    CHANNEL_LEVEL,
    Allocation,
    FrozenTerms,
    Mode,
    account_shares,
    allocate_line,
    effective_paid,
    freeze_terms,
    line_delta,
)
from billing_batch.ledger import participant_account
from billing_batch.money import apply_bp
from billing_batch.pools import PLATFORM, Participant, ParticipantKind, PoolKind
from billing_batch.rates import (
    ChannelRate,
    ChannelRateBook,
    FeeBook,
    FeeKind,
    FeeSetting,
    LineKey,
    RateBook,
    RateLevel,
    RateRule,
)
from contracts.attribution import AttributionDecision, AttributionType, Evidence

K = ParticipantKind
P = PoolKind
T = 1_772_366_400_000
PROMOTER = Participant(K.PROMOTER, "p1")
CHANNEL = Participant(K.CHANNEL, "ch1")
FANS = Participant(K.FANS, "ch1")
LEADER = Participant(K.GROUP_LEADER, "lead")

RATES = RateBook([
    RateRule("r-gp", RateLevel.GENERIC_PRODUCT, "s1", 2000, 0, None, 0, product_id="pr1"),
    RateRule("r-gl", RateLevel.GROUP_LEADER, "s1", 1500, 0, None, 0, product_id="pr2",
             activity_id="a1", leader_id="lead", leader_rate_bp=300),
])
CHANNEL_RATES = ChannelRateBook([ChannelRate("cr-c1", "ch1", "c1", 800, 0, None, 0),
                                 ChannelRate("cr-wide", "ch1", None, 300, 0, None, 0)])
FEES = FeeBook([FeeSetting("f-plat", FeeKind.PLATFORM_SHARE, None, 1000, 0, None, 0),
                FeeSetting("f-chan", FeeKind.CHANNEL_FEE, "ch1", 500, 0, None, 0)])


@dataclass(frozen=True, slots=True)
class Row:
    """A decision as the batch reads it from the database: the type as text."""

    attribution_type: str
    promoter_id: str | None
    channel_id: str | None


def decision(kind: AttributionType, promoter_id: str | None = "p1",
             channel_id: str | None = "ch1") -> AttributionDecision:
    return AttributionDecision(order_id="o1", attribution_type=kind, promoter_id=promoter_id,
                               channel_id=channel_id, click_id=None, evidence=Evidence.CLICK,
                               reason="test", order_created_at=T, decided_at=T)


def key(product_id: str = "pr1", promoter_id: str | None = "p1", category_id: str = "c1",
        activity_ids: frozenset[str] = frozenset()) -> LineKey:
    return LineKey("s1", product_id, category_id, promoter_id, frozenset(), activity_ids, T)


def freeze(kind: AttributionType = AttributionType.CPS, **changes: Any) -> FrozenTerms:
    terms = freeze_terms(decision(kind), replace(key(), **changes), rates=RATES,
                         channel_rates=CHANNEL_RATES, fees=FEES)
    assert terms is not None
    return terms


def amounts(allocations: tuple[Allocation, ...]) -> list[tuple[str, str, int]]:
    return [(str(a.pool), str(a.participant), a.amount_minor) for a in allocations]


# ---------------------------------------------------------------- SPEC 9


def test_spec_9_worked_example() -> None:
    terms = freeze()
    assert terms == FrozenTerms(
        mode=Mode.CPS, rule_id="r-gp", level=RateLevel.GENERIC_PRODUCT, rate_bp=2000,
        platform_share_bp=1000, channel_fee_bp=500, fans_share_bp=0, promoter_id="p1",
        channel_id="ch1", platform_share_rule_id="f-plat", channel_fee_rule_id="f-chan")
    assert amounts(allocate_line(terms, 10000)) == [
        ("product", "platform:platform", 200), ("product", "channel:ch1", 500),
        ("product", "fans:ch1", 0), ("product", "promoter:p1", 1300)]


def test_spec_9_channel_fee_2000() -> None:
    terms = replace(freeze(), channel_fee_bp=2000)
    assert [a.amount_minor for a in allocate_line(terms, 10000)] == [200, 1800, 0, 0]


def test_fans_share_of_the_product_pool() -> None:
    terms = replace(freeze(), fans_share_bp=1000, fans_share_rule_id="f-fans")
    assert allocate_line(terms, 10000) == (
        Allocation(P.PRODUCT, PLATFORM, 200), Allocation(P.PRODUCT, CHANNEL, 500),
        Allocation(P.PRODUCT, FANS, 200), Allocation(P.PRODUCT, PROMOTER, 1100))


def test_group_leader_line_has_both_pools() -> None:
    terms = freeze(product_id="pr2", activity_ids=frozenset({"a1"}))
    assert (terms.level, terms.rate_bp, terms.leader_id, terms.leader_rate_bp,
            terms.activity_id) == (RateLevel.GROUP_LEADER, 1500, "lead", 300, "a1")
    assert allocate_line(terms, 10000) == (
        Allocation(P.PRODUCT, PLATFORM, 150), Allocation(P.PRODUCT, CHANNEL, 500),
        Allocation(P.PRODUCT, FANS, 0), Allocation(P.PRODUCT, PROMOTER, 850),
        Allocation(P.GROUP_LEADER, PLATFORM, 30), Allocation(P.GROUP_LEADER, LEADER, 270))


def test_without_the_activity_no_group_leader_pool() -> None:
    terms = freeze_terms(decision(AttributionType.CPS), key(product_id="pr2"), rates=RATES,
                         channel_rates=CHANNEL_RATES, fees=FEES)
    assert terms is None  # no rule for pr2 except the activity's


def test_self_operated_one_pool_at_the_channel_rate() -> None:
    terms = freeze(AttributionType.SELF_OPERATED, promoter_id=None)
    assert terms == FrozenTerms(mode=Mode.SELF_OPERATED, rule_id="cr-c1", level=CHANNEL_LEVEL,
                                rate_bp=800, channel_id="ch1")
    assert allocate_line(terms, 10000) == (Allocation(P.SELF_OPERATED, CHANNEL, 800),)
    wide = freeze(AttributionType.SELF_OPERATED, category_id="c9")
    assert (wide.rule_id, wide.rate_bp) == ("cr-wide", 300)
    assert allocate_line(wide, 12345) == (Allocation(P.SELF_OPERATED, CHANNEL, 370),)


def test_freeze_terms_reads_decision_rows_as_text() -> None:
    row = Row("cps", "p1", "ch1")
    assert freeze_terms(row, key(), rates=RATES, channel_rates=CHANNEL_RATES,
                        fees=FEES) == freeze()
    row = Row("self_operated", None, "ch1")
    assert freeze_terms(row, key(), rates=RATES, channel_rates=CHANNEL_RATES,
                        fees=FEES) == freeze(AttributionType.SELF_OPERATED)


def test_no_matching_rate_is_none() -> None:
    books: dict[str, Any] = {"rates": RATES, "channel_rates": CHANNEL_RATES, "fees": FEES}
    assert freeze_terms(decision(AttributionType.CPS), key(product_id="pr9"), **books) is None
    assert freeze_terms(decision(AttributionType.SELF_OPERATED, channel_id="ch9"), key(),
                        **books) is None
    assert freeze_terms(decision(AttributionType.CPS), key(), rates=RateBook([]),
                        channel_rates=CHANNEL_RATES, fees=FEES) is None
    # no fee settings: the fees are 0 and the promoter keeps the whole pool
    terms = freeze_terms(decision(AttributionType.CPS), key(), rates=RATES,
                         channel_rates=CHANNEL_RATES, fees=FeeBook([]))
    assert terms is not None
    assert [a.amount_minor for a in allocate_line(terms, 10000)] == [0, 0, 0, 2000]


@pytest.mark.parametrize(("made", "message"), [
    (decision(AttributionType.NONE, None, None), "attribution_type none"),
    (Row("none", None, None), "attribution_type none"),
    (Row("click", "p1", "ch1"), r"attribution_type: must be one of"),
    (decision(AttributionType.CPS, "p1", None), r"decision\.channel_id"),
    (decision(AttributionType.CPS, None, "ch1"), r"decision\.promoter_id"),
    (decision(AttributionType.CPS, "p2", "ch1"), r"key: promoter_id 'p1' is not the decision"),
    (decision(AttributionType.SELF_OPERATED, None, None), r"decision\.channel_id"),
])
def test_freeze_terms_refuses(made: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        freeze_terms(made, key(), rates=RATES, channel_rates=CHANNEL_RATES, fees=FEES)


def test_terms_stay_frozen_when_the_books_change() -> None:
    """SPEC 8/10: a rate or fee changed after payment never touches a frozen line."""
    terms = freeze()
    before = allocate_line(terms, 10000)
    later = RateBook([RateRule("r-new", RateLevel.GENERIC_PRODUCT, "s1", 100, T + 1, None,
                               T + 1, product_id="pr1")])
    assert later.lookup(replace(key(), paid_at_ms=T + 1)) is not None
    assert allocate_line(terms, 6000) == allocate_line(freeze(), 6000)
    assert allocate_line(terms, 10000) == before


# ---------------------------------------------------------------- FrozenTerms checks


CPS_TERMS: dict[str, Any] = {
    "mode": "cps", "rule_id": "r1", "level": "generic_product", "rate_bp": 2000,
    "promoter_id": "p1", "channel_id": "ch1"}
SELF_TERMS: dict[str, Any] = {
    "mode": "self_operated", "rule_id": "cr1", "level": "channel", "rate_bp": 300,
    "channel_id": "ch1"}
LEADER_TERMS = CPS_TERMS | {"level": "group_leader", "leader_id": "lead",
                            "leader_rate_bp": 300, "activity_id": "a1"}


def test_frozen_terms_read_from_text() -> None:
    terms = FrozenTerms(**CPS_TERMS)
    assert (terms.mode, terms.level) == (Mode.CPS, RateLevel.GENERIC_PRODUCT)
    assert FrozenTerms(**SELF_TERMS).mode is Mode.SELF_OPERATED
    assert FrozenTerms(**LEADER_TERMS).level is RateLevel.GROUP_LEADER


@pytest.mark.parametrize(("terms", "field"), [
    (CPS_TERMS | {"mode": "fixed"}, "mode"),
    (CPS_TERMS | {"rule_id": ""}, "rule_id"),
    (CPS_TERMS | {"rate_bp": 10001}, "rate_bp"),
    (CPS_TERMS | {"channel_id": None}, "channel_id"),
    (CPS_TERMS | {"level": "channel"}, "level"),
    (CPS_TERMS | {"promoter_id": None}, "promoter_id"),
    (CPS_TERMS | {"leader_id": "lead"}, "leader_id"),
    (CPS_TERMS | {"activity_id": "a1"}, "leader_id"),
    (CPS_TERMS | {"platform_share_bp": 5}, "platform_share_rule_id"),
    (CPS_TERMS | {"channel_fee_bp": 5}, "channel_fee_rule_id"),
    (CPS_TERMS | {"fans_share_bp": -5, "fans_share_rule_id": "f"}, "fans_share_bp"),
    (CPS_TERMS | {"channel_fee_rule_id": ""}, "channel_fee_rule_id"),
    (LEADER_TERMS | {"leader_id": None}, "leader_id"),
    (LEADER_TERMS | {"activity_id": None}, "activity_id"),
    (LEADER_TERMS | {"leader_rate_bp": None}, "leader_rate_bp"),
    (LEADER_TERMS | {"leader_rate_bp": 8001}, "leader_rate_bp"),
    (SELF_TERMS | {"level": "shop_generic"}, "level"),
    (SELF_TERMS | {"promoter_id": "p1"}, "promoter_id"),
    (SELF_TERMS | {"platform_share_bp": 1}, "platform_share_bp"),
    (SELF_TERMS | {"channel_fee_rule_id": "f"}, "channel_fee_rule_id"),
    (SELF_TERMS | {"leader_rate_bp": 1}, "leader_rate_bp"),
])
def test_frozen_terms_name_the_field(terms: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^frozen_terms\.{field}: "):
        FrozenTerms(**terms)


def test_allocation_checks() -> None:
    assert Allocation("product", PLATFORM, -5).pool is P.PRODUCT  # type: ignore[arg-type]
    for pool, participant, amount, field in (("fees", PLATFORM, 1, "pool"),
                                             (P.PRODUCT, "platform", 1, "participant"),
                                             (P.PRODUCT, PLATFORM, 1.0, "amount_minor")):
        with pytest.raises(ValueError, match=rf"^allocation\.{field}: "):
            Allocation(pool, participant, amount)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="effective_paid_minor"):
        allocate_line(freeze(), -1)
    with pytest.raises(ValueError, match="must be FrozenTerms"):
        allocate_line(CPS_TERMS, 1)  # type: ignore[arg-type]


# ---------------------------------------------------------------- refunds (SPEC 10)


def test_effective_paid() -> None:
    assert effective_paid(10000, 0) == 10000
    assert effective_paid(10000, 2500) == 7500
    assert effective_paid(10000, 10000) == 0
    for paid, refunded, message in ((10000, 10001, "exceeds the paid amount"),
                                    (10000, -1, "refunded_minor"), (-1, 0, "paid_minor")):
        with pytest.raises(ValueError, match=message):
            effective_paid(paid, refunded)


def test_partial_refund_with_frozen_terms() -> None:
    """Half of the SPEC 9 line refunded: every share halves; the delta claws it back."""
    terms = freeze()
    old = allocate_line(terms, 10000)
    new = allocate_line(terms, effective_paid(10000, 5000))
    assert [a.amount_minor for a in new] == [100, 250, 0, 650]
    assert line_delta(old, new) == (
        Allocation(P.PRODUCT, PLATFORM, -100), Allocation(P.PRODUCT, CHANNEL, -250),
        Allocation(P.PRODUCT, FANS, 0), Allocation(P.PRODUCT, PROMOTER, -650))


def test_a_refund_can_raise_one_share_by_rounding() -> None:
    """Paid 150 -> 149 at 10 %, channel fee 5 % of paid: the pool stays 15 (14.9 -> 15) while
    the channel's fee drops from 7.5 -> 8 to 7.45 -> 7, so the promoter gains 1."""
    terms = replace(freeze(), rate_bp=1000, platform_share_bp=0, platform_share_rule_id=None)
    old, new = allocate_line(terms, 150), allocate_line(terms, 149)
    assert [a.amount_minor for a in old] == [0, 8, 0, 7]
    assert [a.amount_minor for a in new] == [0, 7, 0, 8]
    assert [a.amount_minor for a in line_delta(old, new)] == [0, -1, 0, 1]
    old, new = allocate_line(terms, 130), allocate_line(terms, 110)  # pool 13 -> 11
    assert [a.amount_minor for a in old] == [0, 6, 0, 7]  # fee 6.5 -> 6
    assert [a.amount_minor for a in new] == [0, 6, 0, 5]  # fee 5.5 -> 6


def test_line_delta_keys_on_pool_and_participant() -> None:
    a = Allocation(P.PRODUCT, PROMOTER, 10)
    b = Allocation(P.GROUP_LEADER, LEADER, 5)
    c = Allocation(P.GROUP_LEADER, PLATFORM, 1)
    assert line_delta([a, b, c], [replace(a, amount_minor=4)]) == (
        Allocation(P.PRODUCT, PROMOTER, -6), Allocation(P.GROUP_LEADER, LEADER, -5),
        Allocation(P.GROUP_LEADER, PLATFORM, -1))
    assert line_delta([], [a]) == (a,)
    assert line_delta([a], [a]) == (replace(a, amount_minor=0),)
    # the platform in two pools is two keys
    assert line_delta([Allocation(P.PRODUCT, PLATFORM, 3), c],
                      [Allocation(P.PRODUCT, PLATFORM, 2), replace(c, amount_minor=0)]) == (
        Allocation(P.PRODUCT, PLATFORM, -1), Allocation(P.GROUP_LEADER, PLATFORM, -1))
    with pytest.raises(ValueError, match=r"line_delta\.old: promoter:p1 appears twice"):
        line_delta([a, a], [])
    with pytest.raises(ValueError, match=r"line_delta\.new: "):
        line_delta([], [a, replace(a, amount_minor=1)])


def pool_totals(allocations: tuple[Allocation, ...]) -> dict[PoolKind, int]:
    totals: dict[PoolKind, int] = {}
    for a in allocations:
        totals[a.pool] = totals.get(a.pool, 0) + a.amount_minor
    return totals


_bp = st.integers(min_value=0, max_value=10000)


@st.composite
def frozen_terms(draw: st.DrawFn) -> FrozenTerms:
    if draw(st.booleans()):
        return FrozenTerms(**SELF_TERMS | {"rate_bp": draw(_bp)})
    rate = draw(_bp)
    fees = {f"{kind}_bp": draw(_bp) for kind in ("platform_share", "channel_fee", "fans_share")}
    ids = {f"{kind}_rule_id": "f" for kind in ("platform_share", "channel_fee", "fans_share")}
    if draw(st.booleans()):
        leader = draw(st.integers(min_value=0, max_value=10000 - rate))
        return FrozenTerms(**LEADER_TERMS | fees | ids | {"rate_bp": rate,
                                                           "leader_rate_bp": leader})
    return FrozenTerms(**CPS_TERMS | fees | ids | {"rate_bp": rate})


@given(frozen_terms(), st.integers(min_value=0, max_value=10**9),
       st.lists(st.integers(min_value=0, max_value=10**9), max_size=6))
def test_refunds_never_increase_the_pool(terms: FrozenTerms, paid: int,
                                         refunds: list[int]) -> None:
    """Any sequence of partial refunds: pools shrink or stay, deltas sum to the change."""
    allocations = allocate_line(terms, paid)
    expected_pools = {P.PRODUCT, P.GROUP_LEADER} if terms.leader_id else (
        {P.SELF_OPERATED} if terms.mode is Mode.SELF_OPERATED else {P.PRODUCT})
    assert set(pool_totals(allocations)) == expected_pools
    left = paid
    for refund in refunds:
        left = effective_paid(left, min(refund, left))
        after = allocate_line(terms, left)
        before_totals, after_totals = pool_totals(allocations), pool_totals(after)
        for pool, total in after_totals.items():
            assert total <= before_totals[pool]
            rate = terms.leader_rate_bp if pool is P.GROUP_LEADER else terms.rate_bp
            assert rate is not None
            assert total == apply_bp(left, rate)  # always the frozen rate
        assert all(a.amount_minor >= 0 for a in after)
        delta = line_delta(allocations, after)
        assert [(d.pool, d.participant) for d in delta] == [
            (a.pool, a.participant) for a in after]
        assert pool_totals(delta) == {pool: after_totals[pool] - before_totals[pool]
                                      for pool in after_totals}
        assert [a.amount_minor + d.amount_minor for a, d in zip(
            allocations, delta, strict=True)] == [a.amount_minor for a in after]
        allocations = after
    full = allocate_line(terms, effective_paid(paid, paid))
    assert all(a.amount_minor == 0 for a in full)
    assert sum(d.amount_minor for d in line_delta(allocate_line(terms, paid), full)) == -sum(
        a.amount_minor for a in allocate_line(terms, paid))


# ---------------------------------------------------------------- the batch's fast paths


def summed_by_account(allocations: tuple[Allocation, ...]) -> dict[str, int]:
    shares: dict[str, int] = {}
    for a in allocations:
        account = participant_account(a.participant)
        shares[account] = shares.get(account, 0) + a.amount_minor
    return shares


@given(frozen_terms(), st.integers(min_value=0, max_value=10**9))
def test_account_shares_are_allocate_line_summed_per_account(terms: FrozenTerms,
                                                             paid: int) -> None:
    shares = account_shares(terms, paid)
    expected = summed_by_account(allocate_line(terms, paid))
    assert list(shares.items()) == list(expected.items())  # same order, zeros included


def test_account_shares_of_a_group_leader_line() -> None:
    terms = freeze(product_id="pr2", activity_ids=frozenset({"a1"}))
    assert account_shares(terms, 10000) == {"platform": 150 + 30, "channel:ch1": 500,
                                            "fans:ch1": 0, "promoter:p1": 850,
                                            "group_leader:lead": 270}
    with pytest.raises(ValueError, match="effective_paid_minor"):
        account_shares(terms, -1)
    with pytest.raises(ValueError, match="must be FrozenTerms"):
        account_shares(CPS_TERMS, 1)  # type: ignore[arg-type]


def test_allocations_are_ordinary_allocations() -> None:
    # Built without re-running Allocation's checks, they are still equal, hashable values.
    for allocation in allocate_line(freeze(product_id="pr2", activity_ids=frozenset({"a1"})),
                                    10000):
        checked = Allocation(allocation.pool, allocation.participant, allocation.amount_minor)
        assert allocation == checked
        assert hash(allocation) == hash(checked)
        assert type(allocation.pool) is PoolKind
        assert type(allocation.amount_minor) is int


def test_pool_plans_are_kept_on_the_terms_and_are_not_a_term() -> None:
    terms = freeze()
    twin = FrozenTerms(**{name: getattr(terms, name) for name in (
        "mode", "rule_id", "level", "rate_bp", "platform_share_bp", "channel_fee_bp",
        "fans_share_bp", "promoter_id", "channel_id", "platform_share_rule_id",
        "channel_fee_rule_id")})
    assert terms is not twin
    allocate_line(terms, 10000)
    assert terms == twin
    assert hash(terms) == hash(twin)
    assert "_pool_plans" not in repr(terms)
    assert allocate_line(terms, 10000) == allocate_line(twin, 10000)
    # replace() never carries the plans of other terms along
    cheaper = replace(terms, channel_fee_bp=2000)
    assert [a.amount_minor for a in allocate_line(cheaper, 10000)] == [200, 1800, 0, 0]
    assert [a.amount_minor for a in allocate_line(terms, 10000)] == [200, 500, 0, 1300]
    assert account_shares(replace(terms, promoter_id="p2"), 10000)["promoter:p2"] == 1300


def test_equal_frozen_terms_are_one_shared_object() -> None:
    # Lines of the same rule, fees, promoter and channel share their (immutable) terms.
    assert freeze() is freeze()
    assert freeze(AttributionType.SELF_OPERATED) is freeze(AttributionType.SELF_OPERATED)
    leader = freeze(product_id="pr2", activity_ids=frozenset({"a1"}))
    assert leader is freeze(product_id="pr2", activity_ids=frozenset({"a1"}))
    assert len({id(freeze()), id(leader), id(freeze(AttributionType.SELF_OPERATED)),
                id(freeze(AttributionType.SELF_OPERATED, category_id="c9"))}) == 4
    other = freeze_terms(decision(AttributionType.CPS, promoter_id="p2"),
                         key(promoter_id="p2"), rates=RATES, channel_rates=CHANNEL_RATES,
                         fees=FEES)
    assert other is not None
    assert (other.promoter_id, freeze().promoter_id) == ("p2", "p1")
    no_fees = freeze_terms(decision(AttributionType.CPS), key(), rates=RATES,
                           channel_rates=CHANNEL_RATES, fees=FeeBook([]))
    assert no_fees is not None
    assert (no_fees.platform_share_bp, freeze().platform_share_bp) == (0, 1000)
