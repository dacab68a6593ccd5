"""``cps-billing run --as-of DATE``: accrue, re-allocate refunds, settle, pay out, reconcile.

A run is a sequence of small transactions, never one big one:

1. take the run lock (one run per database: a PostgreSQL advisory lock or an ``flock``
   next to the SQLite file; a second run fails at once with ``RunBusy``, or waits up to
   ``wait_s``); both are released by the OS or the server if the run is SIGKILLed;
2. reconcile (``billing_batch.reconcile``); a failed pre-check stops the run before it
   writes anything;
3. open the run: a new ``billing_runs`` row, or the unfinished run of the same as-of
   (a crashed one), which resumes after its cursor;
4. batches of ``batch_size`` orders (default 2,000), each read, planned
   (``billing_batch.plan``, pure) and written in one transaction that also moves the
   run's cursor, followed by ``pause_s`` of rest for the database (replication, other
   writers);
5. payouts: every participant account with a positive posted balance is paid out in
   batches of accounts (``payout`` transfers and ``payouts`` rows, ids from run and
   account); a negative balance (a clawback larger than what was owed) is carried;
   batches and payouts queue their webhook events in their transaction
   (``billing_batch.pushes``: one one-row query per batch when nobody subscribes);
6. reconcile again, record the summary and close the run.

Rerunning a finished as-of opens a new run that finds nothing to do; a crash anywhere
is repaired by running again: the cursor skips finished batches, and a batch that was
interrupted rolled back whole.  ``dry_run`` plans every batch inside a transaction that
is rolled back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from billing_batch import charges, master_data, pushes, reconcile, store
from billing_batch.commission import Decision, FrozenTerms, freeze_terms
from billing_batch.ledger import (
    PAYOUT_ACCOUNT,
    Code,
    Flags,
    Transfer,
    account_kind,
    payout_transfer_id,
)
from billing_batch.plan import ItemFacts, OrderFacts, OrderPlan, plan_order
from billing_batch.pools import ParticipantKind
from billing_batch.rates import ChannelRateBook, FeeBook, RateBook
from billing_batch.schedule import SettlementSchedule, is_due
from contracts.attribution import AttributionType
from contracts.charges import ChargeRequest, charge_id_for
from ledger_db import schema
from ledger_db.locks import DatabaseLock

DAY_MS = 86_400_000
RUN_LOCK_KEY = 0x43505342494C4C52  # "CPSBILLR"
PARTICIPANT_KINDS = tuple(kind.value for kind in ParticipantKind)


class RunBusy(RuntimeError):
    """Another billing run holds the run lock."""


@dataclass(slots=True)
class RunSummary:
    run_id: str = ""
    as_of_ms: int = 0
    dry_run: bool = False
    resumed: bool = False
    batches: int = 0
    orders: int = 0
    lines_accrued: int = 0
    lines_without_commission: int = 0
    lines_reallocated: int = 0
    awaiting_attribution: int = 0
    charges_requested: int = 0
    held: dict[str, int] = field(default_factory=dict)
    transfers: int = 0
    amounts: dict[str, int] = field(default_factory=dict)  # by transfer code, minor units
    payouts: int = 0
    payout_minor: int = 0
    negative_balances: int = 0
    seconds: float = 0.0

    def add_plan(self, plan: OrderPlan) -> None:
        self.orders += 1
        self.lines_accrued += sum(1 for line in plan.new_lines if line.status == "accrued")
        self.lines_without_commission += sum(1 for line in plan.new_lines
                                             if line.status != "accrued")
        self.lines_reallocated += len(plan.changed_lines)
        self.awaiting_attribution += plan.awaiting_attribution
        self.charges_requested += plan.charge is not None
        if plan.held:
            key = plan.held.split(" ")[0] if plan.held.startswith("charge") else plan.held
            self.held[key] = self.held.get(key, 0) + 1
        self.transfers += len(plan.transfers)
        for transfer in plan.transfers:
            self.amounts[transfer.code] = (self.amounts.get(transfer.code, 0)
                                           + transfer.amount_minor)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True, slots=True)
class RunOptions:
    as_of_ms: int
    dry_run: bool = False
    batch_size: int = 2_000
    pause_s: float = 0.0
    wait_s: float = 0.0
    payout_batch_size: int = 1_000


class _Decision:
    """``commission.Decision`` over the run's plain decision facts."""

    __slots__ = ("attribution_type", "channel_id", "promoter_id")

    def __init__(self, attribution_type: str, promoter_id: str | None,
                 channel_id: str | None) -> None:
        self.attribution_type = AttributionType(attribution_type)
        self.promoter_id = promoter_id
        self.channel_id = channel_id


@dataclass(slots=True)
class BookPricing:
    """``plan.Pricing`` from the rate, channel-rate and fee books and memberships."""

    rates: RateBook
    channel_rates: ChannelRateBook
    fees: FeeBook
    memberships: master_data.Memberships  # bases, and activities joined before payment

    def freeze(self, order: OrderFacts, item: ItemFacts) -> FrozenTerms | str:
        facts = order.decision
        assert facts is not None
        assert order.paid_at is not None
        if facts.channel_id is None:
            return "decision has no channel"
        decision: Decision = _Decision(facts.attribution_type, facts.promoter_id,
                                       facts.channel_id)
        promoter = facts.promoter_id if facts.attribution_type == "cps" else None
        key = self.memberships.line_key(shop_id=order.shop_id, product_id=item.product_id,
                                        category_id=item.category_id, promoter_id=promoter,
                                        paid_at_ms=order.paid_at)
        terms = freeze_terms(decision, key, rates=self.rates, channel_rates=self.channel_rates,
                             fees=self.fees)
        return terms if terms is not None else "no rate matches at payment"


@dataclass(frozen=True, slots=True)
class ScheduleRules:
    """``plan.Schedule`` from the settlement schedule."""

    schedule: SettlementSchedule

    def due(self, channel_id: str | None, kind: ParticipantKind, order: OrderFacts,
            as_of_ms: int) -> bool:
        return is_due(self.schedule.rule_for(channel_id, kind.value), order.received_at,
                      order.final_at, as_of_ms)


Progress = Callable[[str, int, int | None], None]  # phase, done, total (None: unknown)


def run_billing(engine: Engine, options: RunOptions, *,
                progress: Progress | None = None) -> RunSummary:
    """One billing run (see the module docstring); raises ``RunBusy``,
    ``reconcile.ReconciliationFailed`` or ``store.ConcurrentChange``."""
    lock = DatabaseLock(engine, "billing-run", RUN_LOCK_KEY)
    if not lock.acquire(options.wait_s):
        raise RunBusy("another billing run is in progress on this database (it holds the "
                      "run lock); wait for it or pass --wait SECONDS")
    started, started_ms = time.monotonic(), _now_ms()
    try:
        with engine.connect() as conn:
            reconcile.check(conn, phase="before")
        summary = RunSummary(as_of_ms=options.as_of_ms, dry_run=options.dry_run)
        cursor = _open_run(engine, options, summary)
        pricing, schedule = load_books(engine)
        _batches(engine, options, summary, cursor, pricing, schedule, progress)
        if not options.dry_run:
            pay_out(engine, summary, options, progress)
            with engine.connect() as conn:
                reconcile.check(conn, phase="after", started_ms=started_ms,
                                as_of_ms=options.as_of_ms)
        summary.seconds = round(time.monotonic() - started, 3)
        if not options.dry_run:
            _close_run(engine, summary)
        return summary
    finally:
        lock.release()


def load_books(engine: Engine) -> tuple[BookPricing, ScheduleRules]:
    with engine.connect() as conn:
        memberships = master_data.load_memberships(conn)
        pricing = BookPricing(master_data.load_rate_book(conn),
                              master_data.load_channel_rate_book(conn),
                              master_data.load_fee_book(conn), memberships)
        return pricing, ScheduleRules(master_data.load_schedule(conn))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _open_run(engine: Engine, options: RunOptions, summary: RunSummary) -> str | None:
    """The run id into ``summary``; the cursor to resume after (None: from the start)."""
    runs = schema.billing_runs
    with engine.begin() as conn:
        if not options.dry_run:
            # We hold the run lock, so a run still marked running elsewhere was killed;
            # one of another as-of is not resumed: it is closed as failed.
            conn.execute(runs.update().where(runs.c.status == "running",
                                             runs.c.as_of != options.as_of_ms)
                         .values(status="failed", phase="abandoned", finished_at=_now_ms()))
        unfinished = conn.execute(
            select(runs.c.run_id, runs.c.cursor_order_id)
            .where(runs.c.as_of == options.as_of_ms, runs.c.status == "running")).first()
        if unfinished is not None:
            summary.run_id, summary.resumed = unfinished.run_id, True
            return unfinished.cursor_order_id  # type: ignore[no-any-return]
        count = conn.execute(select(func.count()).select_from(runs)
                             .where(runs.c.as_of == options.as_of_ms)).scalar_one()
        summary.run_id = f"{_day(options.as_of_ms)}.{count + 1}"
        if not options.dry_run:
            conn.execute(runs.insert().values(run_id=summary.run_id, as_of=options.as_of_ms,
                                              status="running", phase="accrue",
                                              started_at=_now_ms()))
    return None


def _day(at_ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at_ms / 1000))


def _batches(engine: Engine, options: RunOptions, summary: RunSummary, cursor: str | None,
             pricing: BookPricing, schedule: ScheduleRules, progress: Progress | None) -> None:
    """Every order in scope after ``cursor`` in keyset batches (the cursor moves with each
    commit), then the finished orders a refund has reached since (``refunded_settled_orders``)."""
    total = _orders_in_scope(engine, options.as_of_ms)
    done = 0 if cursor is None else _orders_in_scope(engine, options.as_of_ms, cursor)
    while True:
        batch = _one_batch(engine, options, summary, pricing, schedule, after=cursor)
        if batch is None:
            break
        cursor = batch.last_order_id
        done += len(batch.orders)
        if progress is not None:
            progress("orders", done, total)
    with engine.connect() as conn:
        refunded = store.refunded_settled_orders(conn, options.as_of_ms)
    for start in range(0, len(refunded), options.batch_size):
        _one_batch(engine, options, summary, pricing, schedule,
                   order_ids=refunded[start:start + options.batch_size])
        if progress is not None:
            progress("refunds", min(start + options.batch_size, len(refunded)), len(refunded))


def _one_batch(engine: Engine, options: RunOptions, summary: RunSummary, pricing: BookPricing,
               schedule: ScheduleRules, *, after: str | None = None,
               order_ids: Sequence[str] | None = None) -> store.Batch | None:
    """Read, plan and write one batch in one transaction (None: nothing left to read)."""
    with engine.connect() as conn:
        conn.execution_options(ledger_begin="IMMEDIATE")
        with conn.begin() as transaction:
            batch = store.read_batch(conn, as_of_ms=options.as_of_ms, after_order_id=after,
                                     batch_size=options.batch_size, order_ids=order_ids)
            if not batch.orders:
                transaction.rollback()
                return None
            plans = [plan_order(order, batch.lines.get(order.order_id, {}),
                                batch.ledgers.get(order.order_id, {}), pricing, schedule,
                                options.as_of_ms) for order in batch.orders]
            if options.dry_run:
                transaction.rollback()
            else:
                write_plans(conn, plans, run_id=summary.run_id, as_of_ms=options.as_of_ms)
                if order_ids is None:
                    _move_cursor(conn, summary.run_id, batch.last_order_id)
    for plan in plans:
        summary.add_plan(plan)
    summary.batches += 1
    if options.pause_s > 0:
        time.sleep(options.pause_s)
    return batch


def _orders_in_scope(engine: Engine, as_of_ms: int, through: str | None = None) -> int:
    orders = schema.orders
    query = select(func.count()).select_from(orders).where(*store.in_scope(as_of_ms))
    if through is not None:
        query = query.where(orders.c.order_id <= through)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def write_plans(conn: Connection, plans: list[OrderPlan], *, run_id: str, as_of_ms: int) -> None:
    """Everything the plans of one batch write, in the caller's transaction."""
    now = _now_ms()
    transfers = [transfer for plan in plans for transfer in plan.transfers]
    store.ensure_accounts(conn, {account for transfer in transfers for account in
                                 (transfer.debit_account_id, transfer.credit_account_id)},
                          now_ms=now)
    store.insert_lines(conn, [line for plan in plans for line in plan.new_lines],
                       run_id=run_id, now_ms=now)
    store.update_lines(conn, [change for plan in plans for change in plan.changed_lines],
                       run_id=run_id, now_ms=now)
    store.update_states(conn, [line for plan in plans for line in plan.state_changes],
                        run_id=run_id, now_ms=now)
    store.insert_transfers(conn, transfers, run_id=run_id, as_of_ms=as_of_ms)
    pushes.emit_transfers(conn, transfers, now)  # webhooks: commission.*, if subscribed
    requests = [ChargeRequest(charge_id=charge_id_for(plan.charge.order_id, 1),
                              order_id=plan.charge.order_id, shop_id=plan.charge.shop_id,
                              amount_minor=plan.charge.amount_minor, requested_at=now,
                              attempt=1)
                for plan in plans if plan.charge is not None]
    if requests:
        charges.request_charges(conn, requests)


def _move_cursor(conn: Connection, run_id: str, cursor: str | None) -> None:
    runs = schema.billing_runs
    conn.execute(runs.update().where(runs.c.run_id == run_id).values(cursor_order_id=cursor))


def pay_out(engine: Engine, summary: RunSummary, options: RunOptions,
            progress: Progress | None) -> None:
    """A payout of every positive posted participant balance; negatives are carried."""
    with engine.connect() as conn:
        balances = participant_balances(conn)
    summary.negative_balances = sum(1 for amount in balances.values() if amount < 0)
    due = sorted((account, amount) for account, amount in balances.items() if amount > 0)
    size = options.payout_batch_size
    for start in range(0, len(due), size):
        chunk = due[start:start + size]
        transfers = [Transfer(payout_transfer_id(summary.run_id, account), account,
                              PAYOUT_ACCOUNT, amount, Flags.POSTED, Code.PAYOUT, None, None, 0)
                     for account, amount in chunk]
        with engine.connect() as conn:
            conn.execution_options(ledger_begin="IMMEDIATE")
            with conn.begin():
                store.ensure_accounts(conn, [PAYOUT_ACCOUNT], now_ms=_now_ms())
                store.insert_transfers(conn, transfers, run_id=summary.run_id,
                                       as_of_ms=options.as_of_ms)
                conn.execute(schema.payouts.insert(), [
                    {"payout_id": f"{summary.run_id}:{t.debit_account_id}",
                     "run_id": summary.run_id, "account_id": t.debit_account_id,
                     "amount": t.amount_minor, "transfer_id": t.transfer_id,
                     "as_of": options.as_of_ms} for t in transfers])
                pushes.emit_payouts(conn, summary.run_id, chunk, _now_ms())
        summary.payouts += len(chunk)
        summary.payout_minor += sum(amount for _, amount in chunk)
        if progress is not None:
            progress("payouts", start + len(chunk), len(due))


def participant_balances(conn: Connection) -> dict[str, int]:
    """Posted balance (credits - debits) of every participant account.

    Each side is summed per account first (two aggregates over the ledger, a few
    thousand rows out), then netted here: joining the raw union of both sides with
    the accounts cost 20 s at 50,000 lines."""
    transfers = schema.ledger_transfers
    posted = transfers.c.flags.in_(("posted", "post"))
    balances: dict[str, int] = {}
    for column, sign in ((transfers.c.credit_account_id, 1), (transfers.c.debit_account_id, -1)):
        for account, amount in conn.execute(select(column, func.sum(transfers.c.amount))
                                            .where(posted).group_by(column)):
            balances[account] = balances.get(account, 0) + sign * int(amount)
    return {account: amount for account, amount in balances.items()
            if account_kind(account)[0] in PARTICIPANT_KINDS}


def _close_run(engine: Engine, summary: RunSummary) -> None:
    runs = schema.billing_runs
    with engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.run_id == summary.run_id).values(
            status="finished", phase="done", finished_at=_now_ms(),
            summary=summary.to_json()))


def summary_of(row: Any) -> dict[str, Any]:
    return dict(json.loads(row.summary)) if row.summary else {}
