"""The ledger's vocabulary (billing_batch.ledger): ids, transfer checks, folding a line."""

from __future__ import annotations

import pickle
import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_batch.ledger import (
    PAYOUT_ACCOUNT,
    PLATFORM_ACCOUNT,
    TRANSFER_NAMESPACE,
    Code,
    Flags,
    LineLedger,
    OpenPending,
    Transfer,
    account_kind,
    fold_line,
    frozen_account,
    line_transfer,
    merchant_account,
    participant_account,
    payout_transfer_id,
    transfer_id,
)
from billing_batch.pools import PLATFORM, Participant, ParticipantKind

MERCHANT, FROZEN, PROMOTER, CHANNEL = "merchant:S1", "frozen:S1", "promoter:P1", "channel:C1"


def test_account_ids() -> None:
    assert merchant_account("S1") == MERCHANT
    assert frozen_account("S1") == FROZEN
    assert participant_account(PLATFORM) == PLATFORM_ACCOUNT == "platform"
    assert participant_account(Participant(ParticipantKind.PROMOTER, "P1")) == PROMOTER
    assert participant_account(Participant(ParticipantKind.FANS, "C1")) == "fans:C1"
    assert participant_account(Participant(ParticipantKind.GROUP_LEADER, "L1")) == (
        "group_leader:L1")
    assert account_kind(PROMOTER) == ("promoter", "P1")
    assert account_kind("platform") == ("platform", None)
    assert account_kind(PAYOUT_ACCOUNT) == ("payout", None)
    assert account_kind("channel:C1:x") == ("channel", "C1:x")


def test_transfer_ids_are_fixed_forever() -> None:
    # Changing the namespace or the key format would pay every open pending twice.
    assert uuid.UUID("6f1c2a57-3d0e-5b8e-9f43-8a1d2c3b4e5f") == TRANSFER_NAMESPACE
    assert transfer_id("O1", "I1", PROMOTER, Code.COMMISSION, 1) == uuid.uuid5(
        TRANSFER_NAMESPACE, "O1/I1/promoter:P1/commission/1")
    assert payout_transfer_id("2026-01-16.1", PROMOTER) == uuid.uuid5(
        TRANSFER_NAMESPACE, "payout/2026-01-16.1/promoter:P1")


def test_every_part_of_the_key_changes_the_id() -> None:
    base = ("O1", "I1", PROMOTER, Code.COMMISSION, 1)
    variants = [("O2", "I1", PROMOTER, Code.COMMISSION, 1),
                ("O1", "I2", PROMOTER, Code.COMMISSION, 1),
                ("O1", "I1", CHANNEL, Code.COMMISSION, 1),
                ("O1", "I1", PROMOTER, Code.SETTLE, 1),
                ("O1", "I1", PROMOTER, Code.COMMISSION, 2)]
    ids = {transfer_id(*base), *(transfer_id(*variant) for variant in variants)}
    assert len(ids) == 1 + len(variants)
    assert transfer_id(*base) == transfer_id(*base)
    assert payout_transfer_id("r1", PROMOTER) != payout_transfer_id("r2", PROMOTER)
    assert payout_transfer_id("r1", PROMOTER) != payout_transfer_id("r1", CHANNEL)


@given(st.text(max_size=40), st.text(max_size=12), st.text(max_size=20),
       st.sampled_from(Code), st.integers(0, 10**6))
def test_ids_are_exactly_uuid5(order_id: str, item_id: str, account_id: str, code: Code,
                               seq: int) -> None:
    # Computed without uuid.uuid5, the ids are still its values, versions and variants.
    made = transfer_id(order_id, item_id, account_id, code, seq)
    expected = uuid.uuid5(TRANSFER_NAMESPACE, f"{order_id}/{item_id}/{account_id}/"
                                              f"{code.value}/{seq}")
    assert made == expected
    assert (made.version, made.variant, str(made), made.bytes) == (
        5, uuid.RFC_4122, str(expected), expected.bytes)
    assert hash(made) == hash(expected)
    assert payout_transfer_id(order_id, account_id) == uuid.uuid5(
        TRANSFER_NAMESPACE, f"payout/{order_id}/{account_id}")


def test_fast_ids_behave_like_uuids() -> None:
    made = transfer_id("O1", "I1", PROMOTER, Code.COMMISSION, 1)
    assert type(made) is uuid.UUID
    assert pickle.loads(pickle.dumps(made)) == made  # noqa: S301 (our own bytes)
    assert uuid.UUID(str(made)) == made
    assert made.is_safe is uuid.SafeUUID.unknown
    with pytest.raises(TypeError):
        made.int = 0  # type: ignore[misc]


@given(st.lists(st.tuples(st.text(min_size=1, max_size=6), st.text(min_size=1, max_size=6),
                          st.sampled_from([PROMOTER, CHANNEL, FROZEN]), st.sampled_from(Code),
                          st.integers(0, 5)), unique=True, max_size=30))
def test_distinct_keys_give_distinct_ids(keys: list[tuple[str, str, str, Code, int]]) -> None:
    # Ids of different keys collide only if a key's parts contain "/" ambiguously.
    clean = [key for key in keys if "/" not in key[0] + key[1]]
    assert len({transfer_id(*key) for key in clean}) == len(clean)


def pending(account: str = PROMOTER, amount: int = 1300, seq: int = 1) -> Transfer:
    return line_transfer("O1", "I1", debit=FROZEN, credit=account, amount_minor=amount,
                         flags=Flags.PENDING, code=Code.COMMISSION, seq=seq, key_account=account)


def resolve(of: Transfer, code: Code) -> Transfer:
    return line_transfer("O1", "I1", debit=of.debit_account_id, credit=of.credit_account_id,
                         amount_minor=of.amount_minor,
                         flags=Flags.POST if code is Code.SETTLE else Flags.VOID, code=code,
                         seq=of.seq, key_account=of.credit_account_id, pending_id=of.transfer_id)


def posted(code: Code, debit: str, credit: str, amount: int, seq: int = 1,
           key: str = FROZEN) -> Transfer:
    return line_transfer("O1", "I1", debit=debit, credit=credit, amount_minor=amount,
                         flags=Flags.POSTED, code=code, seq=seq, key_account=key)


@pytest.mark.parametrize(("changes", "message"), [
    ({"amount_minor": 0}, "must be positive"),
    ({"amount_minor": -5}, "must be positive"),
    ({"credit_account_id": FROZEN}, "to itself"),
    ({"flags": Flags.POST}, "name a pending"),
    ({"flags": Flags.VOID}, "name a pending"),
    ({"pending_id": uuid.uuid4()}, "name a pending"),
])
def test_transfer_validation(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "transfer_id": uuid.uuid4(), "debit_account_id": FROZEN, "credit_account_id": PROMOTER,
        "amount_minor": 100, "flags": Flags.PENDING, "code": Code.COMMISSION, "order_id": "O1",
        "item_id": "I1", "seq": 1, "pending_id": None}
    Transfer(**fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        Transfer(**{**fields, **changes})  # type: ignore[arg-type]


def test_trusted_transfers_equal_checked_ones() -> None:
    transfer = line_transfer("O1", "I1", debit=FROZEN, credit=PROMOTER, amount_minor=1300,
                             flags=Flags.PENDING, code=Code.COMMISSION, seq=1,
                             key_account=PROMOTER)
    checked = Transfer(transfer_id("O1", "I1", PROMOTER, Code.COMMISSION, 1), FROZEN, PROMOTER,
                       1300, Flags.PENDING, Code.COMMISSION, "O1", "I1", 1)
    assert transfer == checked
    assert hash(transfer) == hash(checked)
    assert repr(transfer) == repr(checked)
    assert Transfer.trusted(*(getattr(checked, name) for name in checked.__dataclass_fields__)
                            ) == checked
    # trusted means unchecked: only for transfers right by construction
    assert Transfer.trusted(uuid.uuid4(), FROZEN, FROZEN, 0, Flags.POST, Code.SETTLE, None,
                            None, 1).amount_minor == 0


def test_a_post_names_its_pending() -> None:
    commission = pending()
    settle = resolve(commission, Code.SETTLE)
    assert settle.pending_id == commission.transfer_id
    assert settle.transfer_id != commission.transfer_id
    assert settle.transfer_id != resolve(commission, Code.VOID).transfer_id


def accrued_line() -> list[Transfer]:
    return [posted(Code.FREEZE, MERCHANT, FROZEN, 2000), pending(PROMOTER, 1300),
            pending(CHANNEL, 500), pending("platform", 200)]


def test_fold_an_accrued_line() -> None:
    ledger = fold_line(accrued_line())
    assert ledger.frozen_minor == 2000 == ledger.total_minor()
    assert {a: p.amount_minor for a, p in ledger.open_pending.items()} == {
        PROMOTER: 1300, CHANNEL: 500, "platform": 200}
    assert ledger.settled_minor == {}
    assert ledger.seq == 1
    assert ledger.open_pending[PROMOTER] == OpenPending(pending(PROMOTER).transfer_id, 1300, 1)


def full_history() -> list[Transfer]:
    """Accrue 2000; refund half before settling the channel (void + re-pend, unfreeze 350)
    after the promoter settled (clawback 650); settle the channel; a unit of rounding."""
    transfers = accrued_line()
    promoter, channel, platform = transfers[1], transfers[2], transfers[3]
    new_channel, new_platform = pending(CHANNEL, 250, seq=2), pending("platform", 100, seq=2)
    return [*transfers, resolve(promoter, Code.SETTLE),
            posted(Code.CLAWBACK, PROMOTER, MERCHANT, 650, seq=2, key=PROMOTER),
            resolve(channel, Code.VOID), resolve(platform, Code.VOID), new_channel, new_platform,
            posted(Code.UNFREEZE, FROZEN, MERCHANT, 350, seq=2),
            resolve(new_channel, Code.SETTLE),
            posted(Code.ADJUST, MERCHANT, PROMOTER, 1, seq=3, key=PROMOTER)]


def test_fold_a_full_history() -> None:
    ledger = fold_line(full_history())
    assert ledger.settled_minor == {PROMOTER: 1300 - 650 + 1, CHANNEL: 250}
    assert {a: (p.amount_minor, p.seq) for a, p in ledger.open_pending.items()} == {
        "platform": (100, 2)}
    assert ledger.frozen_minor == 100  # exactly the open pendings
    assert ledger.total_minor() == 651 + 250 + 100
    assert ledger.share_of(PROMOTER) == 651
    assert ledger.share_of("platform") == 100
    assert ledger.share_of("fans:C1") == 0
    assert ledger.settled_accounts == frozenset({PROMOTER, CHANNEL})
    assert ledger.seq == 3


@given(st.randoms(use_true_random=False))
def test_fold_line_does_not_depend_on_the_order_rows_come_in(rng: random.Random) -> None:
    transfers = full_history()
    shuffled = list(transfers)
    rng.shuffle(shuffled)
    assert fold_line(shuffled) == fold_line(transfers)


def test_apply_refuses_a_resolution_of_no_open_pending() -> None:
    transfers = accrued_line()
    ledger = fold_line([*transfers, resolve(transfers[1], Code.SETTLE)])
    with pytest.raises(ValueError, match="no such open pending"):
        ledger.apply(resolve(transfers[1], Code.SETTLE))       # settled twice
    stale = pending(CHANNEL, 500, seq=7)
    with pytest.raises(ValueError, match="no such open pending"):
        ledger.apply(resolve(stale, Code.VOID))                # another pending's id
    with pytest.raises(ValueError, match="no such open pending"):
        LineLedger().apply(resolve(stale, Code.SETTLE))


def test_copy_is_independent() -> None:
    ledger = fold_line(accrued_line())
    copy = ledger.copy()
    copy.apply(resolve(accrued_line()[1], Code.SETTLE))
    assert PROMOTER in ledger.open_pending
    assert ledger.settled_minor == {}
    assert copy.settled_minor == {PROMOTER: 1300}
    assert copy.frozen_minor == 700
