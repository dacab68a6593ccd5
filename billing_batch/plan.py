"""What a billing run does to one order: a pure function from facts to new rows.

``plan_order(order, lines, ledgers, pricing, schedule, as_of_ms)`` reads an order (its
items, attribution decision and charge status), the order's commission lines and the
ledger state of each line (``ledger.fold_line``), and returns an ``OrderPlan``: the lines
to insert or update, the transfers to append, the charge to request.  Nothing here reads
a clock or a database, so a run, its rerun after a crash and a dry run plan the same
thing from the same facts, and the money rules are tested without I/O.

Steps, in this order, for an order paid before ``as_of``:

1. **Accrue** each line that has no commission line yet, once the order is decided:
   freeze the terms at payment (``Pricing.freeze``), allocate the effective paid amount
   (paid - refunded), freeze the commission (merchant -> frozen) and pend one transfer
   per participant (frozen -> participant).  A line without commission (decision
   ``none``, no matching rate, a zero pool) is recorded as ``no_commission`` with the
   reason, so no later run looks at it again.  The order's first accrual requests the
   charge of its commission.
2. **Refunds**: a line whose effective paid amount fell below the amount it was accrued
   on is re-allocated with the frozen terms.  A participant not settled yet has its
   pending voided and a new one pended (next sequence), and the frozen account gives
   back (or, by a unit of rounding, takes) the difference; a settled participant is
   clawed back (or adjusted) by a posted transfer: history is never edited.
3. **Settle** each open pending whose participant is due (``Schedule.due``: T+N days
   after ``received`` or monthly, per channel and participant), when the order is
   charged and no refund of it is in progress.

Every transfer id is deterministic (``ledger.transfer_id``), so replaying a plan adds
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from billing_batch.commission import FrozenTerms, account_shares
from billing_batch.ledger import (
    Code,
    Flags,
    LineLedger,
    OpenPending,
    Transfer,
    account_kind,
    frozen_account,
    line_transfer,
    merchant_account,
    transfer_id,
)
from billing_batch.pools import ParticipantKind

CHARGED = "charged"


@dataclass(frozen=True, slots=True)
class ItemFacts:
    item_id: str
    product_id: str
    category_id: str
    paid_amount: int
    refunded_amount: int
    refund_pending_amount: int

    @property
    def effective_paid(self) -> int:
        return self.paid_amount - self.refunded_amount


@dataclass(frozen=True, slots=True)
class DecisionFacts:
    attribution_type: str  # cps | self_operated | none
    promoter_id: str | None
    channel_id: str | None


@dataclass(frozen=True, slots=True)
class OrderFacts:
    order_id: str
    shop_id: str
    status: str
    paid_at: int | None
    received_at: int | None
    final_at: int | None
    items: tuple[ItemFacts, ...]
    decision: DecisionFacts | None
    charge_status: str | None  # pending | charged | failed, None before the first accrual

    @property
    def refund_in_progress(self) -> bool:
        return any(item.refund_pending_amount > 0 for item in self.items)


@dataclass(frozen=True, slots=True)
class CommissionLine:
    """A row of ``commission_lines``: the frozen terms and the line's current commission."""

    order_id: str
    item_id: str
    shop_id: str
    mode: str            # cps | self_operated | none
    status: str          # accrued | no_commission
    reason: str
    terms: FrozenTerms | None
    paid_amount: int
    accrued_paid_amount: int
    commission_amount: int
    version: int
    paid_at: int
    ledger_state: str = "open"  # see ledger_state()


class Pricing(Protocol):
    """Freezes the terms of a paid line (``billing_batch.run`` builds it from the books)."""

    def freeze(self, order: OrderFacts, item: ItemFacts) -> FrozenTerms | str:
        """The line's terms at payment, or the reason it earns no commission."""


class Schedule(Protocol):
    def due(self, channel_id: str | None, kind: ParticipantKind, order: OrderFacts,
            as_of_ms: int) -> bool:
        """Whether ``kind``'s share of an order through ``channel_id`` settles at ``as_of``."""


@dataclass(frozen=True, slots=True)
class ChargeNeed:
    order_id: str
    shop_id: str
    amount_minor: int


@dataclass(slots=True)
class OrderPlan:
    order_id: str
    new_lines: list[CommissionLine] = field(default_factory=list)
    changed_lines: list[tuple[CommissionLine, int]] = field(default_factory=list)  # line, old v
    state_changes: list[CommissionLine] = field(default_factory=list)  # ledger_state only
    transfers: list[Transfer] = field(default_factory=list)
    charge: ChargeNeed | None = None
    awaiting_attribution: bool = False
    held: str | None = None  # why settlement waits: not charged, refund in progress

    @property
    def empty(self) -> bool:
        return not (self.new_lines or self.changed_lines or self.state_changes
                    or self.transfers or self.charge)


def plan_order(order: OrderFacts, lines: Mapping[str, CommissionLine],
               ledgers: Mapping[str, LineLedger], pricing: Pricing, schedule: Schedule,
               as_of_ms: int) -> OrderPlan:
    """``ledgers`` holds the folded transfers of the lines whose ``ledger_state`` is not
    ``open`` (an open line's ledger is rebuilt from the line: ``open_ledger``)."""
    plan = OrderPlan(order.order_id)
    if order.paid_at is None or order.paid_at >= as_of_ms:
        return plan
    # A new line's ledger is rebuilt only if settlement looks at it (it rarely does: the
    # order's charge is requested by this very plan): None until then.
    current: dict[str, tuple[CommissionLine, LineLedger | None]] = {}
    for item in order.items:
        line = lines.get(item.item_id)
        if line is None:
            if order.decision is None:
                plan.awaiting_attribution = True
                continue
            line, transfers = accrue_line(order, item, pricing)
            plan.new_lines.append(line)
            plan.transfers.extend(transfers)
            if line.ledger_state == "open":
                current[item.item_id] = (line, None)
            continue
        refunded = line.status == "accrued" and item.effective_paid < line.accrued_paid_amount
        if line.ledger_state == "none" and not refunded:
            continue
        ledger = ledgers.get(item.item_id) or (
            open_ledger(line) if line.ledger_state == "open" else LineLedger())
        if refunded:
            changed, transfers = reallocate_line(line, ledger, item.effective_paid)
            ledger = ledger.copy()
            for transfer in transfers:
                ledger.apply(transfer)
            changed = replace(changed, ledger_state=ledger_state(changed, ledger))
            plan.changed_lines.append((changed, line.version))
            plan.transfers.extend(transfers)
            line = changed
        current[item.item_id] = (line, ledger)
    if plan.new_lines and not lines:
        total = sum(line.commission_amount for line in plan.new_lines)
        if total > 0:
            plan.charge = ChargeNeed(order.order_id, order.shop_id, total)
    settled = _settle(order, current, schedule, as_of_ms, plan)
    plan.transfers.extend(settled)
    if settled:
        _record_states(plan, current, settled)
    return plan


def _record_states(plan: OrderPlan,
                   current: Mapping[str, tuple[CommissionLine, LineLedger | None]],
                   settled: list[Transfer]) -> None:
    """The new ``ledger_state`` of every line settlement touched, into the plan."""
    by_item: dict[str, list[Transfer]] = {}
    for transfer in settled:
        by_item.setdefault(transfer.item_id or "", []).append(transfer)
    new = {id(line): index for index, line in enumerate(plan.new_lines)}
    changed = {id(line): index for index, (line, _) in enumerate(plan.changed_lines)}
    for item_id, transfers in by_item.items():
        line, ledger = current[item_id]
        assert ledger is not None  # _settle rebuilt it
        after = ledger.copy()
        for transfer in transfers:
            after.apply(transfer)
        updated = replace(line, ledger_state=ledger_state(line, after))
        if id(line) in new:
            plan.new_lines[new[id(line)]] = updated
        elif id(line) in changed:
            old_version = plan.changed_lines[changed[id(line)]][1]
            plan.changed_lines[changed[id(line)]] = (updated, old_version)
        elif updated.ledger_state != line.ledger_state:
            plan.state_changes.append(updated)


def ledger_state(line: CommissionLine, ledger: LineLedger) -> str:
    """``open`` when the ledger holds exactly the pendings ``open_ledger(line)`` rebuilds
    (every share of the line pending at its version, nothing settled), ``partial`` for
    any other ledger with open pendings, ``settled`` when nothing is pending any more
    and something was settled, ``none`` when the line never holds money again."""
    if not ledger.open_pending:
        return "settled" if ledger.settled_minor else "none"
    if not ledger.settled_minor and line.terms is not None:
        rebuilt = open_ledger(line)
        if rebuilt.open_pending == ledger.open_pending:
            return "open"
    return "partial"


def open_ledger(line: CommissionLine) -> LineLedger:
    """The ledger of a line in state ``open``, rebuilt from the line alone: each nonzero
    share of ``accrued_paid_amount`` pending at ``version``, ids as the planner made them."""
    ledger = LineLedger(seq=line.version)
    if line.terms is None:
        return ledger
    for account, amount in shares_of(line.terms, line.accrued_paid_amount).items():
        if amount > 0:
            ledger.open_pending[account] = OpenPending(
                transfer_id(line.order_id, line.item_id, account, Code.COMMISSION, line.version),
                amount, line.version)
    ledger.frozen_minor = sum(p.amount_minor for p in ledger.open_pending.values())
    return ledger


def accrue_line(order: OrderFacts, item: ItemFacts,
                pricing: Pricing) -> tuple[CommissionLine, list[Transfer]]:
    assert order.decision is not None
    assert order.paid_at is not None
    decision = order.decision
    terms = pricing.freeze(order, item) if decision.attribution_type != "none" else (
        "not attributed")
    if isinstance(terms, str):
        return _no_commission(order, item, decision.attribution_type, terms), []
    shares = shares_of(terms, item.effective_paid)
    total = sum(shares.values())
    line = CommissionLine(
        order.order_id, item.item_id, order.shop_id, terms.mode.value,
        "accrued" if total > 0 else "no_commission", "" if total > 0 else "zero commission",
        terms, item.paid_amount, item.effective_paid, total, 1, order.paid_at,
        "open" if total > 0 else "none")
    if total == 0:
        return line, []
    frozen = frozen_account(order.shop_id)
    transfers = [line_transfer(order.order_id, item.item_id, debit=merchant_account(order.shop_id),
                               credit=frozen, amount_minor=total, flags=Flags.POSTED,
                               code=Code.FREEZE, seq=1, key_account=frozen)]
    transfers += [line_transfer(order.order_id, item.item_id, debit=frozen, credit=account,
                                amount_minor=amount, flags=Flags.PENDING, code=Code.COMMISSION,
                                seq=1, key_account=account)
                  for account, amount in shares.items() if amount > 0]
    return line, transfers


def _no_commission(order: OrderFacts, item: ItemFacts, mode: str, reason: str) -> CommissionLine:
    assert order.paid_at is not None
    return CommissionLine(order.order_id, item.item_id, order.shop_id,
                          mode if mode in ("cps", "self_operated") else "none", "no_commission",
                          reason, None, item.paid_amount, item.effective_paid, 0, 1,
                          order.paid_at, "none")


def shares_of(terms: FrozenTerms, effective_paid_minor: int) -> dict[str, int]:
    """Each participant account's share of a line (a participant in two pools: the sum)."""
    return account_shares(terms, effective_paid_minor)


def reallocate_line(line: CommissionLine, ledger: LineLedger,
                    effective_paid_minor: int) -> tuple[CommissionLine, list[Transfer]]:
    """The line after a refund, and the transfers that move the ledger there."""
    assert line.terms is not None
    shares = shares_of(line.terms, effective_paid_minor)
    seq = max(line.version, ledger.seq) + 1
    order_id, item_id, shop_id = line.order_id, line.item_id, line.shop_id
    merchant, frozen = merchant_account(shop_id), frozen_account(shop_id)
    transfers: list[Transfer] = []
    frozen_delta = 0
    for account in sorted({*shares, *ledger.open_pending, *ledger.settled_minor}):
        target = shares.get(account, 0)
        if account in ledger.settled_minor:
            delta = target - ledger.settled_minor[account]
            if delta:
                transfers.append(line_transfer(
                    order_id, item_id, debit=account if delta < 0 else merchant,
                    credit=merchant if delta < 0 else account, amount_minor=abs(delta),
                    flags=Flags.POSTED, code=Code.CLAWBACK if delta < 0 else Code.ADJUST,
                    seq=seq, key_account=account))
            continue
        pending = ledger.open_pending.get(account)
        old = pending.amount_minor if pending else 0
        if target == old:
            continue
        if pending is not None:
            transfers.append(line_transfer(
                order_id, item_id, debit=frozen, credit=account, amount_minor=old,
                flags=Flags.VOID, code=Code.VOID, seq=pending.seq, key_account=account,
                pending_id=pending.transfer_id))
        if target > 0:
            transfers.append(line_transfer(
                order_id, item_id, debit=frozen, credit=account, amount_minor=target,
                flags=Flags.PENDING, code=Code.COMMISSION, seq=seq, key_account=account))
        frozen_delta += target - old
    if frozen_delta:
        transfers.insert(0, line_transfer(
            order_id, item_id, debit=merchant if frozen_delta > 0 else frozen,
            credit=frozen if frozen_delta > 0 else merchant, amount_minor=abs(frozen_delta),
            flags=Flags.POSTED, code=Code.FREEZE if frozen_delta > 0 else Code.UNFREEZE,
            seq=seq, key_account=frozen))
    changed = replace(line, accrued_paid_amount=effective_paid_minor,
                      commission_amount=sum(shares.values()), version=seq)
    return changed, transfers


_KINDS = {kind.value: kind for kind in ParticipantKind}


def _settle(order: OrderFacts, lines: dict[str, tuple[CommissionLine, LineLedger | None]],
            schedule: Schedule, as_of_ms: int, plan: OrderPlan) -> list[Transfer]:
    """The settle posts due now; a line's ledger rebuilt on the way is kept in ``lines``."""
    if order.charge_status != CHARGED:
        plan.held = f"charge {order.charge_status or 'not requested'}"
        return []
    if order.refund_in_progress:
        plan.held = "refund in progress"
        return []
    out: list[Transfer] = []
    for item_id, (line, known) in lines.items():
        ledger = known if known is not None else open_ledger(line)
        lines[item_id] = (line, ledger)
        frozen = frozen_account(line.shop_id)
        channel_id = line.terms.channel_id if line.terms else None
        for account, pending in sorted(ledger.open_pending.items()):
            kind = _KINDS[account_kind(account)[0]]
            if not schedule.due(channel_id, kind, order, as_of_ms):
                continue
            out.append(line_transfer(
                line.order_id, line.item_id, debit=frozen, credit=account,
                amount_minor=pending.amount_minor, flags=Flags.POST, code=Code.SETTLE,
                seq=pending.seq, key_account=account, pending_id=pending.transfer_id))
    return out
