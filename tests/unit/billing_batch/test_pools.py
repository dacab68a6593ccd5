"""Pool allocation (billing_batch.pools): SPEC 9's example, priorities, caps, exact sums."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_batch.money import apply_bp
from billing_batch.pools import (
    PLATFORM,
    PLATFORM_ID,
    Basis,
    Claim,
    Participant,
    ParticipantKind,
    allocate,
)

K = ParticipantKind
PROMOTER = Participant(K.PROMOTER, "p1")
CHANNEL = Participant(K.CHANNEL, "ch1")
FANS = Participant(K.FANS, "ch1")
LEADER = Participant(K.GROUP_LEADER, "lead")


def product_claims(platform_bp: int, channel_bp: int, fans_bp: int) -> list[Claim]:
    return [Claim(PLATFORM, Basis.POOL_SHARE, platform_bp, 1),
            Claim(CHANNEL, Basis.PAID_FEE, channel_bp, 2),
            Claim(FANS, Basis.POOL_SHARE, fans_bp, 3)]


def test_spec_9_worked_example() -> None:
    """Paid 10000 at 20 % -> pool 2000: platform 200, channel 500, fans 0, promoter 1300."""
    pool = apply_bp(10000, 2000)
    assert pool == 2000
    assert allocate(pool, 10000, product_claims(1000, 500, 0), PROMOTER) == (
        (PLATFORM, 200), (CHANNEL, 500), (FANS, 0), (PROMOTER, 1300))


def test_spec_9_channel_fee_larger_than_what_is_left() -> None:
    """Channel fee 2000 bp of 10000 = 2000 > the 1800 left: channel 1800, promoter 0."""
    assert allocate(2000, 10000, product_claims(1000, 2000, 0), PROMOTER) == (
        (PLATFORM, 200), (CHANNEL, 1800), (FANS, 0), (PROMOTER, 0))


@pytest.mark.parametrize(("pool", "paid", "bps", "expected"), [
    (2000, 10000, (1000, 500, 1000), (200, 500, 200, 1100)),  # fans 10 % of the pool
    (2000, 10000, (0, 0, 0), (0, 0, 0, 2000)),
    (2000, 10000, (10000, 500, 0), (2000, 0, 0, 0)),  # platform takes it all
    (2000, 10000, (1000, 10000, 5000), (200, 1800, 0, 0)),  # channel takes the rest
    (2000, 10000, (1000, 1700, 5000), (200, 1700, 100, 0)),  # fans capped
    (0, 10000, (1000, 500, 500), (0, 0, 0, 0)),  # empty pool
    (1, 1, (5000, 5000, 5000), (0, 0, 0, 1)),  # 0.5 -> 0 each: the residual keeps the unit
    (3, 3, (5000, 5000, 5000), (2, 1, 0, 0)),  # 1.5 -> 2, then 1.5 -> 2 capped to 1
    (15, 1000, (1000, 15, 1000), (2, 2, 2, 9)),  # 1.5 -> 2 of the pool and of paid alike
    (25, 0, (1000, 9999, 1000), (2, 0, 2, 21)),  # 2.5 -> 2; no paid: no channel fee
])
def test_table(pool: int, paid: int, bps: tuple[int, int, int],
               expected: tuple[int, int, int, int]) -> None:
    result = allocate(pool, paid, product_claims(*bps), PROMOTER)
    assert [amount for _, amount in result] == list(expected)
    assert sum(expected) == pool


def test_priority_not_input_order_decides_and_ties_keep_the_given_order() -> None:
    claims = product_claims(1000, 2000, 5000)
    reversed_claims = claims[::-1]
    assert allocate(2000, 10000, reversed_claims, PROMOTER) == allocate(
        2000, 10000, claims, PROMOTER)
    a = Claim(Participant(K.PROMOTER, "a"), Basis.POOL_SHARE, 6000, 1)
    b = Claim(Participant(K.PROMOTER, "b"), Basis.POOL_SHARE, 6000, 1)
    assert [amount for _, amount in allocate(100, 0, [a, b], LEADER)] == [60, 40, 0]
    assert [p.participant_id for p, _ in allocate(100, 0, [b, a], LEADER)] == ["b", "a", "lead"]
    assert [amount for _, amount in allocate(100, 0, [b, a], LEADER)] == [60, 40, 0]


def test_group_leader_pool() -> None:
    assert allocate(300, 10000, [Claim(PLATFORM, Basis.POOL_SHARE, 1000, 1)], LEADER) == (
        (PLATFORM, 30), (LEADER, 270))
    assert allocate(0, 10000, [], LEADER) == ((LEADER, 0),)
    assert allocate(7, 10000, [], LEADER) == ((LEADER, 7),)


@pytest.mark.parametrize(("pool", "paid", "message"), [
    (-1, 0, r"allocate\.pool_minor"), (0, -1, r"allocate\.paid_minor"),
    (1.0, 0, r"allocate\.pool_minor"), (0, None, r"allocate\.paid_minor"),
])
def test_amounts_are_checked(pool: Any, paid: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        allocate(pool, paid, [], PROMOTER)


def test_a_participant_appears_once_per_pool() -> None:
    with pytest.raises(ValueError, match="promoter:p1 appears twice"):
        allocate(10, 10, [Claim(PROMOTER, Basis.POOL_SHARE, 1, 1)], PROMOTER)
    with pytest.raises(ValueError, match="platform:platform appears twice"):
        allocate(10, 10, [Claim(PLATFORM, Basis.POOL_SHARE, 1, 1),
                          Claim(PLATFORM, Basis.PAID_FEE, 1, 2)], PROMOTER)
    # a channel and its fans account are two participants
    assert len(allocate(10, 10, product_claims(0, 0, 0), PROMOTER)) == 4
    with pytest.raises(ValueError, match=r"allocate\.residual"):
        allocate(10, 10, [], "promoter")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"allocate\.claims: must be Claims"):
        allocate(10, 10, [(PLATFORM, 1)], PROMOTER)  # type: ignore[list-item]


def test_participant_and_claim_checks() -> None:
    assert Participant("fans", "ch1").kind is K.FANS  # type: ignore[arg-type]
    assert str(Participant(K.FANS, "ch1")) == "fans:ch1"
    assert Participant(K.PLATFORM, PLATFORM_ID) == PLATFORM
    for kind, pid, field in (("buyer", "x", "kind"), (K.PROMOTER, "", "participant_id"),
                             (K.PLATFORM, "p", "participant_id"),
                             (K.PROMOTER, PLATFORM_ID, "participant_id")):
        with pytest.raises(ValueError, match=rf"^participant\.{field}: "):
            Participant(kind, pid)  # type: ignore[arg-type]
    assert Claim(PLATFORM, "paid_fee", 1, 1).basis is Basis.PAID_FEE  # type: ignore[arg-type]
    for participant, basis, bp, priority, field in (
            ("platform", Basis.POOL_SHARE, 1, 1, "participant"),
            (PLATFORM, "pool", 1, 1, "basis"), (PLATFORM, Basis.POOL_SHARE, 10001, 1, "bp"),
            (PLATFORM, Basis.POOL_SHARE, -1, 1, "bp"),
            (PLATFORM, Basis.POOL_SHARE, 1, 1.5, "priority")):
        with pytest.raises(ValueError, match=rf"^claim\.{field}: "):
            Claim(participant, basis, bp, priority)  # type: ignore[arg-type]
    assert Claim(PLATFORM, Basis.POOL_SHARE, 1, -5).priority == -5


_claims = st.lists(
    st.tuples(st.sampled_from(list(Basis)), st.integers(min_value=0, max_value=10000),
              st.integers(min_value=-3, max_value=3)), max_size=6)


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10**12),
       _claims)
def test_pools_sum_exactly_and_never_go_negative(pool: int, paid: int,
                                                 specs: list[tuple[Basis, int, int]]) -> None:
    claims = [Claim(Participant(K.PROMOTER, f"c{i}"), basis, bp, priority)
              for i, (basis, bp, priority) in enumerate(specs)]
    result = allocate(pool, paid, claims, LEADER)
    amounts = [amount for _, amount in result]
    assert sum(amounts) == pool
    assert all(amount >= 0 for amount in amounts)
    served = sorted(claims, key=lambda c: c.priority)
    assert [p for p, _ in result] == [c.participant for c in served] + [LEADER]
    left = pool
    for claim, (_, amount) in zip(served, result, strict=False):
        nominal = apply_bp(pool if claim.basis is Basis.POOL_SHARE else paid, claim.bp)
        assert amount == min(nominal, left)  # its claim, or what is left
        left -= amount
    assert result[-1][1] == left
    assert allocate(pool, paid, claims, LEADER) == result  # deterministic
