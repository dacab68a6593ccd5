"""Splitting a commission pool among its participants (SPEC 9).

A pool is an amount of minor units (>= 0) and a list of claims.  Each claim
is ``bp`` basis points either of the pool (``pool_share``) or of the line's
paid amount (``paid_fee``); ``allocate`` serves them by ``priority``
(smaller first; equal priorities in the order given), each taking
``min(its amount, what is left)``, and the residual participant takes what
is left after all claims.  So:

* the amounts always sum to ``pool_minor`` exactly and none is negative: a
  claim larger than what is left gets the rest, later claims get 0;
* rounding is per claim, half to even on its own basis
  (``apply_bp(pool_minor or paid_minor, bp)``), and the residual absorbs
  it: it is the only amount that is not itself rounded;
* the result lists every claim in service order, then the residual, zero
  amounts included, so the same inputs give the same tuple.

SPEC 9 worked example: pool 2000 (paid 10000 at 20 %); platform 1000 bp of
the pool = 200, channel 500 bp of the paid amount = 500, fans 0, promoter
(residual) = 1300.  Channel fee 2000 bp: 2000 of paid is 2000 > the 1800
left, so the channel gets 1800 and the promoter 0.

A participant appears at most once in a pool (claims and residual): the
per-participant deltas of a refund (``commission.line_delta``) key on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from billing_batch.money import apply_bp, check_bp, check_id, check_int, coerce_enum

PLATFORM_ID = "platform"  # the participant_id of the platform


class ParticipantKind(StrEnum):
    PROMOTER = "promoter"
    CHANNEL = "channel"
    PLATFORM = "platform"
    GROUP_LEADER = "group_leader"
    FANS = "fans"  # a channel's fans account: participant_id = the channel id


class PoolKind(StrEnum):
    PRODUCT = "product"
    GROUP_LEADER = "group_leader"
    SELF_OPERATED = "self_operated"


class Basis(StrEnum):
    POOL_SHARE = "pool_share"  # bp of the pool
    PAID_FEE = "paid_fee"  # bp of the line's paid amount


@dataclass(frozen=True, slots=True)
class Participant:
    """Who receives money: a promoter, a channel, "platform", a group leader, a channel's fans."""

    kind: ParticipantKind
    participant_id: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", coerce_enum("participant", "kind", ParticipantKind,
                                                     self.kind))
        check_id("participant", "participant_id", self.participant_id)
        if (self.kind is ParticipantKind.PLATFORM) != (self.participant_id == PLATFORM_ID):
            raise ValueError(f"participant.participant_id: {PLATFORM_ID!r} is the platform's id "
                             f"and only the platform's, got {self.kind}:{self.participant_id}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.participant_id}"


PLATFORM = Participant(ParticipantKind.PLATFORM, PLATFORM_ID)


@dataclass(frozen=True, slots=True)
class Claim:
    """``bp`` of the pool or of the paid amount for ``participant``, served by ``priority``."""

    participant: Participant
    basis: Basis
    bp: int
    priority: int  # smaller = served first

    def __post_init__(self) -> None:
        if not isinstance(self.participant, Participant):
            raise ValueError(f"claim.participant: must be a Participant, got {self.participant!r}")
        object.__setattr__(self, "basis", coerce_enum("claim", "basis", Basis, self.basis))
        check_bp("claim", "bp", self.bp)
        check_int("claim", "priority", self.priority, low=-(1 << 63))


def allocate(pool_minor: int, paid_minor: int, claims: Sequence[Claim],
             residual: Participant) -> tuple[tuple[Participant, int], ...]:
    """The pool's amounts by participant: claims in priority order, then the residual."""
    check_int("allocate", "pool_minor", pool_minor)
    check_int("allocate", "paid_minor", paid_minor)
    return split(pool_minor, paid_minor, serving_order(claims, residual), residual)


def serving_order(claims: Sequence[Claim], residual: Participant) -> tuple[Claim, ...]:
    """``claims`` by priority (stable), checked: no participant twice, residual included."""
    if not isinstance(residual, Participant):
        raise ValueError(f"allocate.residual: must be a Participant, got {residual!r}")
    seen = {residual}
    for claim in claims:
        if not isinstance(claim, Claim):
            raise ValueError(f"allocate.claims: must be Claims, got {claim!r}")
        if claim.participant in seen:
            raise ValueError(f"allocate.claims: {claim.participant} appears twice in one pool")
        seen.add(claim.participant)
    return tuple(sorted(claims, key=lambda c: c.priority))  # stable: ties keep the given order


def split(pool_minor: int, paid_minor: int, ordered: Sequence[Claim],
          residual: Participant) -> tuple[tuple[Participant, int], ...]:
    """``allocate`` over claims already in ``serving_order`` and amounts already checked."""
    left = pool_minor
    out: list[tuple[Participant, int]] = []
    for claim in ordered:
        base = pool_minor if claim.basis is Basis.POOL_SHARE else paid_minor
        take = min(apply_bp(base, claim.bp), left)
        out.append((claim.participant, take))
        left -= take
    out.append((residual, left))
    return tuple(out)
