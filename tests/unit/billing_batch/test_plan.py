"""The pure per-order plan (billing_batch.plan): accrue, re-allocate refunds, settle.

Table-driven cases with a fake ``Pricing`` and ``Schedule`` (plain classes), then
hypothesis: any sequence of payments, refunds (partial, full, pending, before and
after settlement), charge results and runs at increasing as-of dates, planned by
``plan_order`` and applied to an in-memory ledger (``InMemoryBooks``), keeps the books:

* per line: open pending + settled - clawed back = the line's commission =
  ``allocate_line(terms, paid - refunded)`` total, and its frozen money = its open
  pendings; every account's posted balances sum to zero;
* no transfer id twice, no pending resolved twice (and only with its own accounts and
  amount), a second plan over the same facts adds nothing (nobody settled twice);
* nothing settles unless the order is charged, no refund of it is pending and the
  participant is due; once every condition holds, everything settles.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_batch.commission import CHANNEL_LEVEL, FrozenTerms, Mode, allocate_line
from billing_batch.ledger import (
    Code,
    Flags,
    LineLedger,
    Transfer,
    account_kind,
    fold_line,
    frozen_account,
    merchant_account,
)
from billing_batch.plan import (
    CHARGED,
    CommissionLine,
    DecisionFacts,
    ItemFacts,
    OrderFacts,
    OrderPlan,
    accrue_line,
    ledger_state,
    open_ledger,
    plan_order,
    reallocate_line,
    shares_of,
)
from billing_batch.pools import ParticipantKind
from billing_batch.rates import RateLevel

K = ParticipantKind
DAY_MS = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, the payment
SHOP = "S1"
CPS = DecisionFacts("cps", "P1", "C1")
SELF = DecisionFacts("self_operated", None, "C1")
NONE = DecisionFacts("none", None, None)

CPS_TERMS = FrozenTerms(mode=Mode.CPS, rule_id="R1", level=RateLevel.SHOP_GENERIC,
                        rate_bp=2000, platform_share_bp=1000, channel_fee_bp=500,
                        promoter_id="P1", channel_id="C1", platform_share_rule_id="F-p",
                        channel_fee_rule_id="F-c")
FANS_TERMS = replace(CPS_TERMS, fans_share_bp=1500, fans_share_rule_id="F-f")
GREEDY_TERMS = replace(CPS_TERMS, channel_fee_bp=2500)  # the channel takes the whole pool
LEADER_TERMS = replace(CPS_TERMS, level=RateLevel.GROUP_LEADER, rate_bp=1500, leader_id="L1",
                       leader_rate_bp=300, activity_id="A1")
SELF_TERMS = FrozenTerms(mode=Mode.SELF_OPERATED, rule_id="CR1", level=CHANNEL_LEVEL,
                         rate_bp=300, channel_id="C1")
# SPEC 9: paid 10000 at 20 %: platform 200, channel 500, promoter 1300.
SPEC9 = {"platform": 200, "channel:C1": 500, "promoter:P1": 1300}


class FakePricing:
    """Terms by item id (a string: the reason there is no commission); records the calls."""

    def __init__(self, terms: Mapping[str, FrozenTerms | str] | None = None,
                 default: FrozenTerms | str = CPS_TERMS) -> None:
        self.terms = dict(terms or {})
        self.default = default
        self.calls: list[str] = []

    def freeze(self, order: OrderFacts, item: ItemFacts) -> FrozenTerms | str:
        self.calls.append(item.item_id)
        return self.terms.get(item.item_id, self.default)


@dataclass(frozen=True)
class FakeSchedule:
    """T + ``delays[kind]`` days after received (default 15), or monthly for everyone."""

    delays: Mapping[ParticipantKind, int] = field(default_factory=dict)
    monthly: bool = False

    def due(self, channel_id: str | None, kind: ParticipantKind, order: OrderFacts,
            as_of_ms: int) -> bool:
        if self.monthly:
            return order.final_at is not None and order.final_at < first_of_month_ms(as_of_ms)
        return (order.received_at is not None
                and order.received_at + self.delays.get(kind, 15) * DAY_MS <= as_of_ms)


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def first_of_month_ms(at_ms: int) -> int:
    moment = EPOCH + dt.timedelta(milliseconds=at_ms)
    first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - EPOCH) // dt.timedelta(milliseconds=1)


def item(item_id: str = "I1", paid: int = 10_000, refunded: int = 0,
         pending: int = 0) -> ItemFacts:
    return ItemFacts(item_id, f"prod-{item_id}", "cat-1", paid, refunded, pending)


def order(*items: ItemFacts, decision: DecisionFacts | None = CPS, charge: str | None = None,
          paid_at: int | None = T0, received_at: int | None = None,
          final_at: int | None = None) -> OrderFacts:
    return OrderFacts("O1", SHOP, "paid", paid_at, received_at, final_at,
                      items or (item(),), decision, charge)


class InMemoryBooks:
    """The commission lines and ledger of one order, written the way the run writes plans."""

    def __init__(self) -> None:
        self.lines: dict[str, CommissionLine] = {}
        self.transfers: list[Transfer] = []
        self.ledgers: dict[str, LineLedger] = {}
        self.charge_status: str | None = None

    def plan(self, facts: OrderFacts, pricing: FakePricing, schedule: FakeSchedule,
             as_of_ms: int) -> OrderPlan:
        facts = replace(facts, charge_status=self.charge_status)
        # Like the store: transfers are read only for an order with a ``partial`` line or a
        # ``settled`` one a refund re-allocates; ``open`` lines are rebuilt from the line.
        refunded = {i.item_id for i in facts.items if i.item_id in self.lines
                    and i.effective_paid < self.lines[i.item_id].accrued_paid_amount}
        needed = any(line.ledger_state == "partial"
                     or (line.ledger_state == "settled" and line.item_id in refunded)
                     for line in self.lines.values())
        return plan_order(facts, self.lines, self.ledgers if needed else {}, pricing, schedule,
                          as_of_ms)

    def apply(self, plan: OrderPlan) -> None:
        for line in plan.new_lines:
            assert line.item_id not in self.lines, "a line accrued twice"
            self.lines[line.item_id] = line
        for line, old_version in plan.changed_lines:
            assert self.lines[line.item_id].version == old_version  # the store's guard
            assert line.version > old_version
            self.lines[line.item_id] = line
        for line in plan.state_changes:
            assert self.lines[line.item_id].version == line.version  # the store's guard
            assert self.lines[line.item_id].ledger_state != line.ledger_state
            self.lines[line.item_id] = line
        seen = {t.transfer_id for t in self.transfers}
        for transfer in plan.transfers:
            assert transfer.transfer_id not in seen, f"transfer written twice: {transfer}"
            seen.add(transfer.transfer_id)
            self.transfers.append(transfer)
            assert transfer.item_id is not None
            self.ledgers.setdefault(transfer.item_id, LineLedger()).apply(transfer)
        if plan.charge is not None:
            assert self.charge_status is None, "a second charge requested"
            self.charge_status = "pending"

    def of_line(self, item_id: str) -> list[Transfer]:
        return [t for t in self.transfers if t.item_id == item_id]

    def posted_balances(self) -> dict[str, int]:
        balances: dict[str, int] = {}
        for t in self.transfers:
            if t.flags in (Flags.POSTED, Flags.POST):
                for account, amount in ((t.credit_account_id, t.amount_minor),
                                        (t.debit_account_id, -t.amount_minor)):
                    balances[account] = balances.get(account, 0) + amount
        return balances


def pendings(transfers: Iterable[Transfer]) -> dict[str, int]:
    return {t.credit_account_id: t.amount_minor for t in transfers if t.flags is Flags.PENDING}


def codes(transfers: Iterable[Transfer]) -> list[tuple[str, str, int]]:
    out = []
    for t in transfers:
        account = t.debit_account_id if t.code is Code.CLAWBACK else t.credit_account_id
        if t.code in (Code.FREEZE, Code.UNFREEZE):
            account = "frozen"
        out.append((t.code.value, account, t.amount_minor))
    return sorted(out)


# -- accrual ---------------------------------------------------------------------------------

ACCRUALS = [
    # (case, facts, pricing, status, reason, commission, pendings)
    ("spec 9", order(), FakePricing(), "accrued", "", 2000, SPEC9),
    ("fans share", order(), FakePricing(default=FANS_TERMS), "accrued", "", 2000,
     {"platform": 200, "channel:C1": 500, "fans:C1": 300, "promoter:P1": 1000}),
    ("channel fee above the pool", order(), FakePricing(default=GREEDY_TERMS), "accrued", "",
     2000, {"platform": 200, "channel:C1": 1800}),
    ("group leader pool", order(), FakePricing(default=LEADER_TERMS), "accrued", "", 1800,
     {"platform": 150 + 30, "channel:C1": 500, "promoter:P1": 850, "group_leader:L1": 270}),
    ("self-operated", order(decision=SELF), FakePricing(default=SELF_TERMS), "accrued", "",
     300, {"channel:C1": 300}),
    ("refunded before accrual", order(item(refunded=5_000)), FakePricing(), "accrued", "",
     1000, {"platform": 100, "channel:C1": 250, "promoter:P1": 650}),
    ("decided none", order(decision=NONE), FakePricing(), "no_commission", "not attributed",
     0, {}),
    ("no rate at payment", order(), FakePricing(default="no rate matches at payment"),
     "no_commission", "no rate matches at payment", 0, {}),
    ("zero pool", order(item(paid=2)), FakePricing(), "no_commission", "zero commission", 0,
     {}),
    ("fully refunded before accrual", order(item(refunded=10_000)), FakePricing(),
     "no_commission", "zero commission", 0, {}),
]


@pytest.mark.parametrize(("case", "facts", "pricing", "status", "reason", "commission",
                          "pending"), ACCRUALS, ids=[case[0] for case in ACCRUALS])
def test_accrual(case: str, facts: OrderFacts, pricing: FakePricing, status: str, reason: str,
                 commission: int, pending: dict[str, int]) -> None:
    plan = plan_order(facts, {}, {}, pricing, FakeSchedule(), T0 + DAY_MS)
    [line] = plan.new_lines
    assert (line.status, line.reason, line.commission_amount) == (status, reason, commission)
    assert line.accrued_paid_amount == facts.items[0].effective_paid
    assert line.paid_amount == facts.items[0].paid_amount
    assert line.version == 1
    assert line.paid_at == T0
    assert pendings(plan.transfers) == pending
    freezes = [t for t in plan.transfers if t.code is Code.FREEZE]
    if commission:
        [freeze] = freezes
        assert (freeze.debit_account_id, freeze.credit_account_id, freeze.amount_minor) == (
            merchant_account(SHOP), frozen_account(SHOP), commission)
        assert plan.charge is not None
        assert plan.charge.amount_minor == commission
    else:
        assert freezes == []
        assert plan.charge is None
    assert plan.held == "charge not requested"


@pytest.mark.parametrize(("facts", "as_of_ms"), [
    (order(paid_at=None), T0 + DAY_MS),        # not paid
    (order(), T0),                              # paid exactly at as_of: the next run
    (order(), T0 - 1),
])
def test_orders_not_paid_before_as_of_are_left_alone(facts: OrderFacts, as_of_ms: int) -> None:
    pricing = FakePricing()
    plan = plan_order(facts, {}, {}, pricing, FakeSchedule(), as_of_ms)
    assert plan.empty
    assert not plan.awaiting_attribution
    assert plan.held is None
    assert pricing.calls == []


def test_an_undecided_order_waits_for_its_attribution() -> None:
    pricing = FakePricing()
    plan = plan_order(order(decision=None), {}, {}, pricing, FakeSchedule(), T0 + DAY_MS)
    assert plan.awaiting_attribution
    assert plan.new_lines == []
    assert plan.transfers == []
    assert plan.charge is None
    assert pricing.calls == []


def test_the_charge_is_the_order_total_requested_once() -> None:
    books = InMemoryBooks()
    facts = order(item("I1", 10_000), item("I2", 333), item("I3", 1))
    pricing = FakePricing({"I3": "no rate matches at payment"})
    plan = books.plan(facts, pricing, FakeSchedule(), T0 + DAY_MS)
    assert plan.charge is not None
    assert (plan.charge.order_id, plan.charge.shop_id, plan.charge.amount_minor) == (
        "O1", SHOP, 2000 + 67)
    books.apply(plan)
    again = books.plan(facts, pricing, FakeSchedule(), T0 + 2 * DAY_MS)
    assert again.empty
    assert pricing.calls == ["I1", "I2", "I3"]


def test_accrue_line_ids_are_deterministic() -> None:
    facts = order()
    first = accrue_line(facts, facts.items[0], FakePricing())
    second = accrue_line(facts, facts.items[0], FakePricing())
    assert first == second
    assert len({t.transfer_id for t in first[1]}) == len(first[1]) == 4


# -- settlement ------------------------------------------------------------------------------

RECEIVED = T0 + DAY_MS
SETTLEMENTS = [
    # (case, charge, pending refund, received, final, schedule, as-of (ms after T0),
    #  settled, held)
    ("T+15 due", CHARGED, 0, RECEIVED, None, FakeSchedule(), 16 * DAY_MS, set(SPEC9), None),
    ("T+15 one ms early", CHARGED, 0, RECEIVED, None, FakeSchedule(), 16 * DAY_MS - 1,
     set(), None),
    ("not received", CHARGED, 0, None, None, FakeSchedule(), 400 * DAY_MS, set(), None),
    ("promoter at T+7", CHARGED, 0, RECEIVED, None, FakeSchedule({K.PROMOTER: 7}), 8 * DAY_MS,
     {"promoter:P1"}, None),
    ("charge pending", "pending", 0, RECEIVED, None, FakeSchedule(), 400 * DAY_MS, set(),
     "charge pending"),
    ("charge failed", "failed", 0, RECEIVED, None, FakeSchedule(), 400 * DAY_MS, set(),
     "charge failed"),
    ("refund in progress", CHARGED, 1, RECEIVED, None, FakeSchedule(), 400 * DAY_MS, set(),
     "refund in progress"),
    ("monthly, final in the month", CHARGED, 0, RECEIVED, T0 + 10 * DAY_MS,
     FakeSchedule(monthly=True), 30 * DAY_MS, set(), None),
    ("monthly, on the 1st", CHARGED, 0, RECEIVED, T0 + 10 * DAY_MS,
     FakeSchedule(monthly=True), 31 * DAY_MS, set(SPEC9), None),
    ("monthly, never final", CHARGED, 0, RECEIVED, None, FakeSchedule(monthly=True), 400 * DAY_MS,
     set(), None),
]


@pytest.mark.parametrize(("case", "charge", "refund_pending", "received", "final", "schedule",
                          "after_ms", "settled", "held"), SETTLEMENTS,
                         ids=[case[0] for case in SETTLEMENTS])
def test_settlement(case: str, charge: str, refund_pending: int, received: int | None,
                    final: int | None, schedule: FakeSchedule, after_ms: int, settled: set[str],
                    held: str | None) -> None:
    books = InMemoryBooks()
    books.apply(books.plan(order(), FakePricing(), schedule, T0 + DAY_MS))
    books.charge_status = charge
    facts = order(item(pending=refund_pending), received_at=received, final_at=final)
    plan = books.plan(facts, FakePricing(), schedule, T0 + after_ms)
    assert plan.held == held
    assert {t.credit_account_id for t in plan.transfers} == settled
    assert all(t.code is Code.SETTLE and t.flags is Flags.POST for t in plan.transfers)
    opened = {t.transfer_id: t for t in books.transfers if t.flags is Flags.PENDING}
    for post in plan.transfers:
        pending = opened[post.pending_id]  # type: ignore[index]
        assert (post.debit_account_id, post.credit_account_id, post.amount_minor, post.seq) == (
            pending.debit_account_id, pending.credit_account_id, pending.amount_minor,
            pending.seq)


# -- refunds ---------------------------------------------------------------------------------

def accrued(facts: OrderFacts, schedule: FakeSchedule | None = None,
            settle_day: float | None = None) -> InMemoryBooks:
    """Books after the accrual and, with ``settle_day``, a charged settlement run."""
    books = InMemoryBooks()
    books.apply(books.plan(facts, FakePricing(), schedule or FakeSchedule(), T0 + DAY_MS))
    if settle_day is not None:
        books.charge_status = CHARGED
        books.apply(books.plan(replace(facts, received_at=RECEIVED), FakePricing(),
                               schedule or FakeSchedule(), T0 + int(settle_day * DAY_MS)))
    return books


REFUNDS = [
    # (case, paid, refund, schedule, settled on day, transfers of the refund's plan)
    ("half before settlement", 10_000, 5_000, None, None, [
        ("commission", "channel:C1", 250), ("commission", "platform", 100),
        ("commission", "promoter:P1", 650), ("unfreeze", "frozen", 1000),
        ("void", "channel:C1", 500), ("void", "platform", 200), ("void", "promoter:P1", 1300)]),
    ("full before settlement", 10_000, 10_000, None, None, [
        ("unfreeze", "frozen", 2000), ("void", "channel:C1", 500), ("void", "platform", 200),
        ("void", "promoter:P1", 1300)]),
    ("half after settlement", 10_000, 5_000, None, 16, [
        ("clawback", "channel:C1", 250), ("clawback", "platform", 100),
        ("clawback", "promoter:P1", 650)]),
    ("full after settlement", 10_000, 10_000, None, 16, [
        ("clawback", "channel:C1", 500), ("clawback", "platform", 200),
        ("clawback", "promoter:P1", 1300)]),
    ("promoter settled at T+7, the others pending", 10_000, 5_000,
     FakeSchedule({K.PROMOTER: 7}), 8, [
         ("clawback", "promoter:P1", 650), ("commission", "channel:C1", 250),
         ("commission", "platform", 100), ("unfreeze", "frozen", 350),
         ("void", "channel:C1", 500), ("void", "platform", 200)]),
    # Paid 11 -> 10: the channel's fee (500 bp of paid) rounds 1 -> 0 while the pool stays
    # 2, so the settled promoter's share rises 1 -> 2: adjusted, paid by the merchant.
    ("rounding moves a unit to a settled promoter", 11, 1, FakeSchedule({K.PROMOTER: 7}), 8, [
        ("adjust", "promoter:P1", 1), ("unfreeze", "frozen", 1), ("void", "channel:C1", 1)]),
]


@pytest.mark.parametrize(("case", "paid", "refund", "schedule", "settle_day", "expected"),
                         REFUNDS, ids=[case[0] for case in REFUNDS])
def test_refund(case: str, paid: int, refund: int, schedule: FakeSchedule | None,
                settle_day: float | None, expected: list[tuple[str, str, int]]) -> None:
    books = accrued(order(item(paid=paid)), schedule, settle_day)
    before = books.lines["I1"]
    facts = order(item(paid=paid, refunded=refund))  # not received: nothing more settles
    plan = books.plan(facts, FakePricing(), schedule or FakeSchedule(), T0 + 20 * DAY_MS)
    assert codes(plan.transfers) == expected
    [(line, old_version)] = plan.changed_lines
    assert old_version == before.version
    assert line.version == before.version + 1
    assert line.accrued_paid_amount == paid - refund
    assert line.commission_amount == sum(shares_of(CPS_TERMS, paid - refund).values())
    assert {t.seq for t in plan.transfers if t.code not in (Code.VOID,)} == {line.version}
    books.apply(plan)
    check_books(books, facts)
    assert books.plan(facts, FakePricing(), FakeSchedule(), T0 + 20 * DAY_MS).empty


def test_two_refunds_use_the_frozen_terms_and_the_next_sequence() -> None:
    books = accrued(order())
    for day, refunded in ((2, 2_500), (3, 5_000)):
        facts = order(item(refunded=refunded))
        # Today's pricing would give another rate; the line's frozen terms decide.
        books.apply(books.plan(facts, FakePricing(default=FANS_TERMS), FakeSchedule(),
                               T0 + day * DAY_MS))
    line = books.lines["I1"]
    assert (line.version, line.commission_amount, line.terms) == (3, 1000, CPS_TERMS)
    assert {account: p.amount_minor for account, p in books.ledgers["I1"].open_pending.items()
            } == {"platform": 100, "channel:C1": 250, "promoter:P1": 650}
    assert {p.seq for p in books.ledgers["I1"].open_pending.values()} == {3}


def test_reallocate_line_over_a_settled_and_a_pending_participant() -> None:
    books = accrued(order(), FakeSchedule({K.PROMOTER: 7}), settle_day=8)
    line, ledger = books.lines["I1"], books.ledgers["I1"]
    assert ledger.settled_minor == {"promoter:P1": 1300}
    changed, transfers = reallocate_line(line, ledger, 0)
    assert changed.commission_amount == 0
    assert changed.accrued_paid_amount == 0
    assert codes(transfers) == [("clawback", "promoter:P1", 1300), ("unfreeze", "frozen", 700),
                                ("void", "channel:C1", 500), ("void", "platform", 200)]
    assert reallocate_line(line, ledger, 0) == (changed, transfers)   # deterministic


# -- the books' invariants, and hypothesis over whole histories ------------------------------

def check_books(books: InMemoryBooks, facts: OrderFacts) -> None:
    """Money is conserved on every line and across the accounts (see the module docstring)."""
    by_id = {t.transfer_id: t for t in books.transfers}
    assert len(by_id) == len(books.transfers)
    resolved = [t.pending_id for t in books.transfers if t.pending_id is not None]
    assert len(resolved) == len(set(resolved)), "a pending resolved twice"
    for t in books.transfers:
        if t.pending_id is not None:
            pending = by_id[t.pending_id]
            assert pending.flags is Flags.PENDING
            assert (pending.debit_account_id, pending.credit_account_id, pending.amount_minor) == (
                t.debit_account_id, t.credit_account_id, t.amount_minor)
    open_total = 0
    for item_facts in facts.items:
        line = books.lines.get(item_facts.item_id)
        if line is None:
            assert books.of_line(item_facts.item_id) == []
            continue
        ledger = fold_line(reversed(books.of_line(item_facts.item_id)))
        assert ledger == books.ledgers.get(item_facts.item_id, LineLedger())  # any order
        assert line.ledger_state == ledger_state(line, ledger)
        if line.ledger_state == "open":  # the run rebuilds it from the line alone
            assert open_ledger(line).open_pending == ledger.open_pending
        assert ledger.total_minor() == line.commission_amount
        assert ledger.frozen_minor == sum(p.amount_minor for p in ledger.open_pending.values())
        open_total += ledger.frozen_minor
        if line.status == "accrued":
            assert line.terms is not None
            assert line.accrued_paid_amount == item_facts.effective_paid
            allocated = sum(a.amount_minor for a in allocate_line(line.terms,
                                                                   item_facts.effective_paid))
            assert line.commission_amount == allocated
            assert {a: ledger.share_of(a) for a in ledger.open_pending} == {
                a: amount for a, amount in shares_of(line.terms, item_facts.effective_paid).items()
                if a in ledger.open_pending}
        else:
            assert line.commission_amount == 0
            assert books.of_line(item_facts.item_id) == []
    balances = books.posted_balances()
    assert sum(balances.values()) == 0
    assert balances.get(frozen_account(SHOP), 0) == open_total
    assert balances.get(merchant_account(SHOP), 0) == -sum(
        line.commission_amount for line in books.lines.values())


@dataclass
class World:
    """The facts of one order as they change between runs."""

    paid: list[int]
    refunded: list[int]
    refund_pending: list[int]
    decided: bool
    now_ms: int = T0 + 3_600_000
    received_at: int | None = None
    final_at: int | None = None
    charge_outcome: str = "pending"  # the charge result that follows the request

    def facts(self, decision: DecisionFacts) -> OrderFacts:
        items = tuple(ItemFacts(f"I{i}", f"prod-{i}", "cat-1", paid, refunded, pending)
                      for i, (paid, refunded, pending) in enumerate(
                          zip(self.paid, self.refunded, self.refund_pending, strict=True)))
        return OrderFacts("O1", SHOP, "paid", T0, self.received_at, self.final_at, items,
                          decision if self.decided else None, None)

    def refundable(self, index: int) -> int:
        return self.paid[index] - self.refunded[index] - self.refund_pending[index]


TERMS: st.SearchStrategy[FrozenTerms | str] = st.sampled_from(
    [CPS_TERMS, FANS_TERMS, GREEDY_TERMS, LEADER_TERMS, LEADER_TERMS, "no rate"])
FACT_EVENTS = st.one_of(
    st.tuples(st.just("refund"), st.integers(0, 2), st.integers(1, 10_000), st.booleans()),
    st.tuples(st.just("full refund"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("refund done"), st.integers(0, 2), st.booleans()),  # False: rejected
    st.tuples(st.just("charge"), st.sampled_from([CHARGED, "failed"])),
    st.tuples(st.just("receive")), st.tuples(st.just("final")), st.tuples(st.just("decide")),
)
RUN = st.tuples(st.just("run"), st.integers(0, 20), st.integers(0, 23))  # days, hours later
ROUNDS = st.lists(st.tuples(st.lists(FACT_EVENTS, max_size=3), RUN), min_size=1, max_size=8)
SCHEDULES = st.sampled_from([FakeSchedule(), FakeSchedule({K.PROMOTER: 7}),
                             FakeSchedule({K.CHANNEL: 0, K.PLATFORM: 30}),
                             FakeSchedule(monthly=True)])


@st.composite
def histories(draw: st.DrawFn) -> tuple[World, FakePricing, DecisionFacts, FakeSchedule,
                                        list[tuple[object, ...]]]:
    paid = draw(st.lists(st.integers(0, 50_000) | st.integers(0, 40), min_size=1,
                         max_size=3))
    self_operated = draw(st.booleans())
    if self_operated:
        pricing, decision = FakePricing(default=SELF_TERMS), SELF
    else:
        pricing = FakePricing({f"I{i}": draw(TERMS) for i in range(len(paid))})
        decision = CPS
    world = World(paid, [0] * len(paid), [0] * len(paid), decided=draw(st.integers(0, 3)) > 0)
    # Most orders are received and charged early, so refunds meet settled lines.
    events: list[tuple[object, ...]] = []
    if draw(st.integers(0, 3)):
        events.append(("receive",))
    world.charge_outcome = draw(st.sampled_from([CHARGED, CHARGED, CHARGED, "failed",
                                                 "pending"]))
    events.append(("run", 0, 1))
    for facts, run in draw(ROUNDS):
        events += [*facts, run]
    return world, pricing, decision, draw(SCHEDULES), events


def step(world: World, books: InMemoryBooks, event: Sequence[object]) -> bool:
    """Apply one event to the facts; whether it was a run."""
    kind, *args = event
    count = len(world.paid)
    if kind in ("refund", "full refund", "refund done"):
        index = int(args[0]) % count  # type: ignore[call-overload]
        if kind == "refund done":
            if args[1]:
                world.refunded[index] += world.refund_pending[index]
            world.refund_pending[index] = 0
            return False
        amount = world.refundable(index) if kind == "full refund" else min(
            int(args[1]), world.refundable(index))  # type: ignore[call-overload]
        pending = bool(args[-1])
        (world.refund_pending if pending else world.refunded)[index] += amount
    elif kind == "charge":
        if books.charge_status not in (None, CHARGED):
            books.charge_status = str(args[0])
    elif kind == "receive":
        world.received_at = world.received_at or world.now_ms
    elif kind == "final":
        if world.received_at is not None:
            world.final_at = world.final_at or world.now_ms
    elif kind == "decide":
        world.decided = True
    else:
        world.now_ms += int(args[0]) * DAY_MS + int(args[1]) * 3_600_000  # type: ignore[call-overload]
        return True
    return False


def run_once(world: World, books: InMemoryBooks, pricing: FakePricing,
             decision: DecisionFacts, schedule: FakeSchedule) -> OrderPlan:
    facts = replace(world.facts(decision), charge_status=books.charge_status)
    before = {t.pending_id for t in books.transfers if t.code is Code.SETTLE}
    plan = books.plan(facts, pricing, schedule, world.now_ms)
    settles = [t for t in plan.transfers if t.code is Code.SETTLE]
    if settles:
        assert books.charge_status == CHARGED, "settled an order that is not charged"
        assert not facts.refund_in_progress, "settled while a refund is pending"
    for settle in settles:
        assert settle.pending_id not in before, "settled twice"
        kind = ParticipantKind(account_kind(settle.credit_account_id)[0])
        assert schedule.due("C1", kind, facts, world.now_ms)
    books.apply(plan)
    check_books(books, facts)
    again = books.plan(facts, pricing, schedule, world.now_ms)
    assert again.empty, f"a second plan over the same facts adds {again}"
    if plan.charge is not None:  # the charge result arrives before the next run
        books.charge_status = world.charge_outcome
    return plan


@settings(max_examples=300, deadline=None)
@given(histories())
def test_money_is_conserved_over_any_history(
        history: tuple[World, FakePricing, DecisionFacts, FakeSchedule,
                       list[tuple[object, ...]]]) -> None:
    world, pricing, decision, schedule, events = history
    books = InMemoryBooks()
    for event in events:
        if step(world, books, event):
            run_once(world, books, pricing, decision, schedule)
    # Then everything completes: decided, refunds settled, charged, final, long past due.
    world.decided = True
    for index in range(len(world.paid)):
        step(world, books, ("refund done", index, True))
    run_once(world, books, pricing, decision, schedule)   # accrues an undecided order
    if books.charge_status is not None:
        books.charge_status = CHARGED
    step(world, books, ("receive",))
    step(world, books, ("final",))
    world.now_ms += 62 * DAY_MS
    run_once(world, books, pricing, decision, schedule)
    for item_id, line in books.lines.items():
        ledger = books.ledgers.get(item_id, LineLedger())
        assert ledger.open_pending == {}, f"{item_id} still pending after everything is due"
        assert sum(ledger.settled_minor.values()) == line.commission_amount
