"""Commission events read off a batch's transfers (pure)."""

from __future__ import annotations

import orjson

from billing_batch.ledger import Code, Flags, line_transfer
from billing_batch.pushes import commission_events

NOW = 1_800_000_000_000


def _t(code: Code, flags: Flags, debit: str, credit: str, amount: int, seq: int = 1,
       key: str | None = None) -> object:
    import uuid
    pending = uuid.uuid4() if flags in (Flags.POST, Flags.VOID) else None
    return line_transfer("o-1", "i-1", debit=debit, credit=credit, amount_minor=amount,
                         flags=flags, code=code, seq=seq, key_account=key or credit,
                         pending_id=pending)


def _summary(transfers: list[object]) -> list[tuple[str, str, int, int | None]]:
    out = []
    for event in commission_events(transfers, NOW):  # type: ignore[arg-type]
        data = orjson.loads(event.payload)["data"]
        out.append((event.event_type.value, f"{data['participant_kind']}:"
                    f"{data['participant_id']}", data["amount"], data["commission"]))
    return out


def test_a_new_line_accrues_for_the_promoter_and_the_channel_only() -> None:
    transfers = [_t(Code.FREEZE, Flags.POSTED, "merchant:s", "frozen:s", 1000),
                 _t(Code.COMMISSION, Flags.PENDING, "frozen:s", "promoter:p-1", 700),
                 _t(Code.COMMISSION, Flags.PENDING, "frozen:s", "channel:live", 200),
                 _t(Code.COMMISSION, Flags.PENDING, "frozen:s", "platform", 100)]
    assert _summary(transfers) == [("commission.accrued", "promoter:p-1", 700, 700),
                                   ("commission.accrued", "channel:live", 200, 200)]


def test_a_refund_before_settlement_reduces() -> None:
    transfers = [_t(Code.UNFREEZE, Flags.POSTED, "frozen:s", "merchant:s", 350, seq=2,
                    key="frozen:s"),
                 _t(Code.VOID, Flags.VOID, "frozen:s", "promoter:p-1", 700, seq=1),
                 _t(Code.COMMISSION, Flags.PENDING, "frozen:s", "promoter:p-1", 350, seq=2),
                 _t(Code.VOID, Flags.VOID, "frozen:s", "channel:live", 200, seq=1)]
    assert _summary(transfers) == [("commission.reduced", "promoter:p-1", -350, 350),
                                   ("commission.reduced", "channel:live", -200, 0)]


def test_settle_and_clawback() -> None:
    transfers = [_t(Code.SETTLE, Flags.POST, "frozen:s", "promoter:p-1", 700),
                 _t(Code.CLAWBACK, Flags.POSTED, "promoter:p-1", "merchant:s", 300, seq=2,
                    key="promoter:p-1")]
    assert _summary(transfers) == [("commission.settled", "promoter:p-1", 700, 700),
                                   ("commission.clawed_back", "promoter:p-1", -300, None)]


def test_the_same_transfers_give_the_same_ids() -> None:
    transfers = [_t(Code.SETTLE, Flags.POST, "frozen:s", "promoter:p-1", 700)]
    first = commission_events(transfers, NOW)  # type: ignore[arg-type]
    again = commission_events(transfers, NOW + 5)  # type: ignore[arg-type]
    assert [e.event_id for e in first] == [e.event_id for e in again]
