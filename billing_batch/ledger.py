"""The ledger's vocabulary: accounts, two-phase transfers and their deterministic ids.

The model is TigerBeetle's: a transfer moves ``amount_minor`` (> 0) from a debit to a
credit account and is never edited.  A ``pending`` transfer reserves money; exactly one
later ``post`` or ``void`` (``pending_id`` is unique in the table) resolves it.  A
correction is a new transfer, never an update.

Money of one order line moves like this (accounts in ``account_id`` form)::

    payment        merchant:S -> frozen:S           freeze      posted, the line's commission
                   frozen:S   -> promoter:P ...     commission  pending, one per participant
    refund before  void the changed pendings, pend the new shares (sequence + 1),
    settlement     frozen:S   -> merchant:S         unfreeze    posted, what the pendings shrank
    settlement     post each due pending            settle      (same accounts and amount)
    refund after   promoter:P -> merchant:S         clawback    posted, the share's decrease
    settlement     merchant:S -> promoter:P         adjust      posted, a rare +1 of rounding
    payout         promoter:P -> payout             payout      posted, the positive balance

so at any moment, per line: open pendings + settled - clawed back = the line's
commission, and the frozen account of a shop holds exactly its lines' open pendings.

Transfer ids are UUIDv5 of ``order/item/account/code/sequence`` (payouts:
``payout/run/account``): a batch replayed after a crash computes the same ids, so the
primary key refuses a second copy instead of paying twice.  They are exactly
``uuid.uuid5(TRANSFER_NAMESPACE, key)``, computed for less (``_uuid5``: the namespace's
SHA-1 state copied instead of rehashed, the UUID built without ``UUID.__init__``'s
argument parsing), since the batch makes millions of them.

``Transfer(...)`` checks its three rules (also the table's CHECK constraints);
``Transfer.trusted(...)`` skips them for transfers whose rules the caller already
guarantees: ``line_transfer``'s, the planner's (it would fit rows read back from the
table, too).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from billing_batch.pools import Participant, ParticipantKind

# Fixed forever: changing it would change every transfer id.
TRANSFER_NAMESPACE = uuid.UUID("6f1c2a57-3d0e-5b8e-9f43-8a1d2c3b4e5f")
PLATFORM_ACCOUNT = "platform"
PAYOUT_ACCOUNT = "payout"


class Flags(StrEnum):
    POSTED = "posted"    # single-phase
    PENDING = "pending"
    POST = "post"        # resolves a pending: the money moves
    VOID = "void"        # resolves a pending: the reservation is released


class Code(StrEnum):
    FREEZE = "freeze"
    COMMISSION = "commission"
    SETTLE = "settle"
    VOID = "void"
    UNFREEZE = "unfreeze"
    CLAWBACK = "clawback"
    ADJUST = "adjust"
    PAYOUT = "payout"


def merchant_account(shop_id: str) -> str:
    return f"merchant:{shop_id}"


def frozen_account(shop_id: str) -> str:
    return f"frozen:{shop_id}"


def participant_account(participant: Participant) -> str:
    if participant.kind is ParticipantKind.PLATFORM:
        return PLATFORM_ACCOUNT
    return f"{participant.kind.value}:{participant.participant_id}"


def account_kind(account_id: str) -> tuple[str, str | None]:
    """(kind, owner) of an account id: ``"promoter:P1"`` -> ("promoter", "P1")."""
    kind, _, owner = account_id.partition(":")
    return kind, owner or None


def transfer_id(order_id: str, item_id: str, account_id: str, code: Code, seq: int) -> uuid.UUID:
    """``uuid5(TRANSFER_NAMESPACE, "order/item/account/code/seq")``."""
    # join takes the StrEnum's text as is (an f-string would run Enum.__format__).
    return _uuid5("/".join((order_id, item_id, account_id, code, str(seq))))


def payout_transfer_id(run_id: str, account_id: str) -> uuid.UUID:
    """``uuid5(TRANSFER_NAMESPACE, "payout/run/account")``."""
    return _uuid5("/".join(("payout", run_id, account_id)))


# Copied per id, never updated itself.  SHA-1 because UUIDv5 is: an id, not a secret.
_NAMESPACE_SHA1 = hashlib.sha1(TRANSFER_NAMESPACE.bytes, usedforsecurity=False)
# RFC 4122 version 5 and variant bits, as UUID(bytes=..., version=5) sets them.
_KEEP_BITS = ~((0xC000 << 48) | (0xF000 << 64))
_V5_BITS = (0x8000 << 48) | (5 << 76)
_SAFE_UNKNOWN = uuid.SafeUUID.unknown
_new = object.__new__
_set = object.__setattr__


def _uuid5(name: str) -> uuid.UUID:
    """``uuid.uuid5(TRANSFER_NAMESPACE, name)``, equal value, about half the cost."""
    sha = _NAMESPACE_SHA1.copy()
    sha.update(name.encode())
    value: uuid.UUID = _new(uuid.UUID)
    # UUID is immutable (its __setattr__ refuses); its own __init__ sets the slots this way.
    _set(value, "int", int.from_bytes(sha.digest()[:16]) & _KEEP_BITS | _V5_BITS)
    _set(value, "is_safe", _SAFE_UNKNOWN)
    return value


@dataclass(frozen=True, slots=True)
class Transfer:
    transfer_id: uuid.UUID
    debit_account_id: str
    credit_account_id: str
    amount_minor: int
    flags: Flags
    code: Code
    order_id: str | None
    item_id: str | None
    seq: int
    pending_id: uuid.UUID | None = None

    def __post_init__(self) -> None:
        if self.amount_minor <= 0:
            raise ValueError(f"transfer amount must be positive, got {self.amount_minor}")
        if self.debit_account_id == self.credit_account_id:
            raise ValueError(f"transfer from {self.debit_account_id} to itself")
        if (self.flags in (Flags.POST, Flags.VOID)) != (self.pending_id is not None):
            raise ValueError("post and void, and only they, name a pending transfer")

    @classmethod
    def trusted(cls, transfer_id: uuid.UUID, debit_account_id: str, credit_account_id: str,
                amount_minor: int, flags: Flags, code: Code, order_id: str | None,
                item_id: str | None, seq: int, pending_id: uuid.UUID | None = None) -> Transfer:
        """A transfer built without ``__post_init__``'s checks: only for callers whose
        transfers satisfy them by construction (the planner's, rows read back from
        ``ledger_transfers``, whose CHECK constraints are the same rules)."""
        transfer = _new(cls)
        _set(transfer, "transfer_id", transfer_id)
        _set(transfer, "debit_account_id", debit_account_id)
        _set(transfer, "credit_account_id", credit_account_id)
        _set(transfer, "amount_minor", amount_minor)
        _set(transfer, "flags", flags)
        _set(transfer, "code", code)
        _set(transfer, "order_id", order_id)
        _set(transfer, "item_id", item_id)
        _set(transfer, "seq", seq)
        _set(transfer, "pending_id", pending_id)
        return transfer


def line_transfer(order_id: str, item_id: str, *, debit: str, credit: str, amount_minor: int,
                  flags: Flags, code: Code, seq: int, key_account: str,
                  pending_id: uuid.UUID | None = None) -> Transfer:
    """A transfer of one order line; ``key_account`` is the account its id is keyed by.

    Built by the planner (``plan``), whose amounts are positive shares, accounts two
    different ones and ``pending_id`` set exactly for a post or void, so it is not
    checked again (``Transfer.trusted``); ``Transfer(...)`` still checks everyone else's.
    """
    return Transfer.trusted(transfer_id(order_id, item_id, key_account, code, seq), debit,
                            credit, amount_minor, flags, code, order_id, item_id, seq,
                            pending_id)


@dataclass(frozen=True, slots=True)
class OpenPending:
    transfer_id: uuid.UUID
    amount_minor: int
    seq: int


@dataclass(slots=True)
class LineLedger:
    """What the ledger holds for one order line, folded from its transfers."""

    open_pending: dict[str, OpenPending] = field(default_factory=dict)  # by participant account
    settled_minor: dict[str, int] = field(default_factory=dict)         # net, by account
    frozen_minor: int = 0
    seq: int = 0

    @property
    def settled_accounts(self) -> frozenset[str]:
        return frozenset(self.settled_minor)

    def share_of(self, account: str) -> int:
        """The account's current share: its open pending, or what it was settled net."""
        pending = self.open_pending.get(account)
        return (pending.amount_minor if pending else 0) + self.settled_minor.get(account, 0)

    def total_minor(self) -> int:
        return (sum(p.amount_minor for p in self.open_pending.values())
                + sum(self.settled_minor.values()))

    def copy(self) -> LineLedger:
        return LineLedger(dict(self.open_pending), dict(self.settled_minor), self.frozen_minor,
                          self.seq)

    def apply(self, transfer: Transfer) -> None:
        """Fold one more transfer of this line in (its pending, if any, already folded)."""
        self.seq = max(self.seq, transfer.seq)
        code, amount = transfer.code, transfer.amount_minor
        if code is Code.COMMISSION:
            self.open_pending[transfer.credit_account_id] = OpenPending(
                transfer.transfer_id, amount, transfer.seq)
        elif code in (Code.SETTLE, Code.VOID):
            account = transfer.credit_account_id
            pending = self.open_pending.get(account)
            if pending is None or pending.transfer_id != transfer.pending_id:
                raise ValueError(f"{code} of {transfer.pending_id}: no such open pending "
                                 f"for {account}")
            del self.open_pending[account]
            if code is Code.SETTLE:
                self.settled_minor[account] = self.settled_minor.get(account, 0) + amount
                self.frozen_minor -= amount
        elif code is Code.FREEZE:
            self.frozen_minor += amount
        elif code is Code.UNFREEZE:
            self.frozen_minor -= amount
        elif code is Code.CLAWBACK:
            account = transfer.debit_account_id
            self.settled_minor[account] = self.settled_minor.get(account, 0) - amount
        elif code is Code.ADJUST:
            account = transfer.credit_account_id
            self.settled_minor[account] = self.settled_minor.get(account, 0) + amount


def fold_line(transfers: Iterable[Transfer]) -> LineLedger:
    """The state of one line from all of its transfers, in any order."""
    ledger = LineLedger()
    for transfer in sorted(transfers, key=_fold_order):
        ledger.apply(transfer)
    return ledger


def _fold_order(transfer: Transfer) -> tuple[int, int]:
    # A pending and its post or void share a sequence number; the pending goes first.
    return transfer.seq, transfer.pending_id is not None
